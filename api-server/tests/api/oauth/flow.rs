//! Connect, run through the sidecar, refresh (on 401, before expiry, single-flight), revoked refresh
//! tokens and hosted end-user links.

use std::time::Duration;

use super::*;
use reqwest::Method;
use serde_json::{json, Value};
use test_support::fake_llm::FakeLlm;
use test_support::webhook_receiver::WebhookReceiver;
use test_support::Backend;

use crate::runs::{llm_app, llm_app_on, start, wait_terminal};

#[tokio::test]
async fn connect_through_the_redirects_then_a_run_calls_the_api_with_the_token() {
    let oauth = FakeOAuth::start().await;
    let fake = FakeLlm::start(vec![api_call(&oauth.base), output()]).await;
    let app = llm_app(&fake, &[]).await;
    install(&app, &oauth, json!({})).await;
    let callback = format!("{}/api/integrations/callback", app.address);
    oauth.register_redirect(&callback);

    // Connecting before a client is registered says what to do, naming the redirect URI.
    let r = app
        .key(
            Method::POST,
            &format!("/api/integrations/{API_PATH}/auths/primary/connect/oauth2"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "oauth_client_missing");
    assert!(e["detail"].as_str().unwrap().contains(&callback), "{e}");

    let client = register_client(&app, &oauth).await;
    assert_eq!(client["callbackUrl"], callback);
    assert_eq!(
        client["callbackUrlHint"],
        format!("Register exactly: {callback}")
    );
    assert_eq!(client["hasSecret"], true);
    assert_eq!(client["isDefault"], true);

    // An unknown scope is refused naming it.
    let r = app
        .key(
            Method::POST,
            &format!("/api/integrations/{API_PATH}/auths/primary/connect/oauth2"),
        )
        .json(&json!({"scopes": ["items:read", "admin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["errors"][0]["field"], "scopes[1]");

    let started = start_connect(&app).await;
    assert_eq!(started["callbackUrl"], callback);
    let r = reqwest::Client::new()
        .get(started["authorizationUrl"].as_str().unwrap())
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["status"], "connected", "{done}");
    assert_eq!(done["account"]["accountId"], "ada");
    assert_eq!(done["account"]["email"], "ada@example.com");
    assert_eq!(done["scopes"], json!(["items:read"]));

    // What the provider was asked: PKCE S256, the default scopes, the extra parameter, our callback.
    let asked = oauth.last_authorize().unwrap();
    assert_eq!(asked["code_challenge_method"], "S256");
    assert_eq!(asked["scope"], "items:read");
    assert_eq!(asked["access_type"], "offline");
    assert_eq!(asked["redirect_uri"], callback);
    assert_eq!(oauth.counters().code_exchanges, 1);

    let list = connections(&app).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["status"], "connected");
    assert_eq!(list[0]["source"], "oauth2");
    assert!(list[0]["expiresAt"].is_string());
    assert_eq!(
        list[0]["fields"],
        json!(["access_token", "refresh_token", "token_type"])
    );

    // A run reaches the provider's API through the sidecar with the token.
    let run = start(&app, &format!("/api/agents/{AGENT}/run"), json!({})).await;
    let done = wait_terminal(&app, run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(oauth.counters().api_ok, 1);
    assert_eq!(oauth.counters().api_unauthorized, 0);
    let bodies: Vec<String> = fake.requests().iter().map(|r| r.body_text()).collect();
    assert!(bodies[1].contains("alpha"), "{}", bodies[1]);
    for b in &bodies {
        assert!(
            !b.contains("\"at-") && !b.contains("Bearer at-"),
            "the token reached the model"
        );
    }
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_when_the_sidecar_sees_a_401() {
    let oauth = FakeOAuth::start().await;
    let fake = FakeLlm::start(vec![api_call(&oauth.base), output()]).await;
    let app = llm_app(&fake, &[]).await;
    install(&app, &oauth, json!({})).await;
    connect(&app, &oauth).await;
    // The provider expires the token early (our record says an hour is left).
    oauth.expire_access_tokens();

    let run = start(&app, &format!("/api/agents/{AGENT}/run"), json!({})).await;
    let done = wait_terminal(&app, run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "success", "{done}");
    let c = oauth.counters();
    assert_eq!(c.api_unauthorized, 1, "{c:?}");
    assert_eq!(c.refreshes, 1, "{c:?}");
    assert_eq!(c.api_ok, 1, "{c:?}");
    let bodies: Vec<String> = fake.requests().iter().map(|r| r.body_text()).collect();
    assert!(bodies[1].contains("alpha"), "{}", bodies[1]);
    assert_eq!(connections(&app).await[0]["status"], "connected");
}

async fn concurrent_refreshes_are_single_flight(backend: Backend) {
    let oauth = FakeOAuth::start().await;
    // Tokens that expire within the refresh margin: each run start refreshes.
    oauth.set_expires_in(60);
    oauth.set_refresh_delay(Duration::from_millis(800));
    let fake = FakeLlm::start(vec![output(), output()]).await;
    let Some(app) = llm_app_on(backend, &fake, &[]).await else {
        return;
    };
    install(&app, &oauth, json!({})).await;
    connect(&app, &oauth).await;
    assert_eq!(connections(&app).await[0]["status"], "expiring");
    // PostgreSQL: a second instance on the same database; SQLite: two requests on one.
    let other = match backend {
        Backend::Postgres => Some(app.sibling(&[]).await),
        Backend::Sqlite => None,
    };
    let second = other.as_ref().unwrap_or(&app);
    let path = format!("/api/agents/{AGENT}/run");
    let (a, b) = tokio::join!(
        app.key(Method::POST, &path).json(&json!({})).send(),
        second.key(Method::POST, &path).json(&json!({})).send(),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.status(), 201, "{}", a.text().await.unwrap());
    assert_eq!(b.status(), 201, "{}", b.text().await.unwrap());
    assert_eq!(oauth.counters().refreshes, 1, "one refresh at the provider");
    let list = connections(&app).await;
    assert_eq!(list[0]["status"], "expiring");
    assert!(list[0]["statusMessage"].is_null());
}

on_both_backends!(concurrent_refreshes_are_single_flight);

#[tokio::test]
async fn a_revoked_refresh_token_needs_a_reconnect_and_runs_fail_fast_with_a_webhook() {
    let oauth = FakeOAuth::start().await;
    oauth.set_expires_in(60);
    let fake = FakeLlm::start(vec![]).await;
    let app = llm_app(&fake, &[]).await;
    install(&app, &oauth, json!({})).await;
    let hooks = WebhookReceiver::start(vec![]).await;
    let r = app
        .key(Method::POST, "/api/webhooks")
        .json(&json!({"url": hooks.url("/hook"), "events": ["run.connection_missing"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    connect(&app, &oauth).await;
    // The user removed the application at the provider.
    oauth.revoke_all_refresh_tokens();

    let path = format!("/api/agents/{AGENT}/run");
    for attempt in 0..2 {
        let r = app
            .key(Method::POST, &path)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 412, "attempt {attempt}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "connection_needs_reconnect");
        let detail = e["detail"].as_str().unwrap();
        assert!(
            detail.contains(API) && detail.contains("primary"),
            "{detail}"
        );
        assert!(detail.contains("expired or revoked"), "{detail}");
    }
    // The second run failed fast: no second refresh at the provider.
    assert_eq!(oauth.counters().refreshes, 1);
    let list = connections(&app).await;
    assert_eq!(list[0]["status"], "needs_reconnect");
    assert!(list[0]["statusMessage"]
        .as_str()
        .unwrap()
        .contains("invalid_grant"));

    let got = hooks.wait_for(2, Duration::from_secs(20)).await;
    let event = got[0].json();
    assert_eq!(event["type"], "run.connection_missing");
    assert_eq!(event["data"]["object"]["packageId"], API);
    assert_eq!(event["data"]["object"]["authKey"], "primary");
    assert_eq!(event["data"]["object"]["agentId"], AGENT);
    assert_eq!(
        event["data"]["object"]["code"],
        "connection_needs_reconnect"
    );

    // Reconnecting makes runs possible again.
    let started = start_connect(&app).await;
    let back = authorize(started["authorizationUrl"].as_str().unwrap()).await;
    let (status, done) = callback_json(&back).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(connections(&app).await[0]["status"], "expiring");
}

#[tokio::test]
async fn an_end_user_connects_through_a_hosted_link_and_its_runs_use_its_connection() {
    let oauth = FakeOAuth::start().await;
    let fake = FakeLlm::start(vec![api_call(&oauth.base), output()]).await;
    let app = llm_app(&fake, &[]).await;
    install(&app, &oauth, json!({})).await;
    register_client(&app, &oauth).await;
    let r = app
        .key(Method::POST, "/api/end-users")
        .json(&json!({"name": "Grace"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let eu = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let session_path = format!("/api/integrations/{API_PATH}/auths/primary/connect/session");

    // A link is for one end-user.
    let r = app.key(Method::POST, &session_path).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "end_user_required"
    );

    let r = app
        .key(Method::POST, &session_path)
        .header("Appstrate-User", eu.as_str())
        .json(&json!({"expiresIn": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let link: Value = r.json().await.unwrap();
    assert_eq!(link["endUserId"], eu.as_str());
    let url = link["url"].as_str().unwrap();
    assert!(url.starts_with(&format!(
        "{}/api/integrations/connect/start?session=cs_",
        app.address
    )));

    // The end-user's browser: no API key, through the provider and back.
    let r = reqwest::Client::new()
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["endUserId"], eu.as_str(), "{done}");

    // An altered link is refused with a page.
    let r = browser().get(format!("{url}x")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not valid"));

    // The application itself has no connection; the end-user's runs use the end-user's.
    let run_path = format!("/api/agents/{AGENT}/run");
    let r = app
        .key(Method::POST, &run_path)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let r = app
        .key(Method::POST, &run_path)
        .header("Appstrate-User", eu.as_str())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let run: Value = r.json().await.unwrap();
    let done = wait_terminal(&app, run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(oauth.counters().api_ok, 1);
    let list = connections(&app).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["endUserId"], eu.as_str());
}
