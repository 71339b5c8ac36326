//! The callback's refusals: tampered state, replays, PKCE mismatch, other redirect URIs, denial.

use super::*;
use serde_json::json;
use test_support::fake_llm::FakeLlm;
use test_support::fake_oauth::{Consent, FakeOAuth};

use crate::runs::llm_app;

#[tokio::test]
async fn the_callback_refuses_tampering_replays_pkce_mismatch_denial_and_other_redirects() {
    let oauth = FakeOAuth::start().await;
    let fake = FakeLlm::start(vec![]).await;
    let app = llm_app(&fake, &[]).await;
    install(&app, &oauth, json!({})).await;
    register_client(&app, &oauth).await;

    // Tampered state.
    let started = start_connect(&app).await;
    let back = authorize(started["authorizationUrl"].as_str().unwrap()).await;
    let tampered = back.replace("state=", "state=x");
    let (status, e) = callback_json(&tampered).await;
    assert_eq!(status, 400);
    assert_eq!(e["code"], "invalid_state");
    assert!(e["detail"]
        .as_str()
        .unwrap()
        .contains("start the connection again"));
    // The untouched redirect still works once; replayed, it is refused.
    let (status, _) = callback_json(&back).await;
    assert_eq!(status, 200);
    let (status, e) = callback_json(&back).await;
    assert_eq!(status, 400);
    assert_eq!(e["code"], "invalid_state");

    // PKCE mismatch: the code of one request redeemed with the state (and verifier) of another.
    let one = start_connect(&app).await;
    let two = start_connect(&app).await;
    let back_one =
        url::Url::parse(&authorize(one["authorizationUrl"].as_str().unwrap()).await).unwrap();
    let back_two =
        url::Url::parse(&authorize(two["authorizationUrl"].as_str().unwrap()).await).unwrap();
    let param = |u: &url::Url, k: &str| {
        u.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let mut crossed = back_one.clone();
    crossed
        .query_pairs_mut()
        .clear()
        .append_pair("code", &param(&back_one, "code"))
        .append_pair("state", &param(&back_two, "state"));
    let (status, e) = callback_json(crossed.as_str()).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["code"], "code_exchange_failed");
    assert!(e["detail"].as_str().unwrap().contains("PKCE"), "{e}");

    // A code issued for another redirect URI.
    let three = start_connect(&app).await;
    let mut auth_url = url::Url::parse(three["authorizationUrl"].as_str().unwrap()).unwrap();
    let pairs: Vec<(String, String)> = auth_url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "redirect_uri" {
                format!("{v}?elsewhere=1")
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    auth_url.query_pairs_mut().clear().extend_pairs(pairs);
    let back = authorize(auth_url.as_str()).await;
    let (status, e) = callback_json(&back).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["code"], "code_exchange_failed");
    let detail = e["detail"].as_str().unwrap();
    assert!(detail.contains("redirect_uri"), "{detail}");
    assert!(
        detail.contains(&format!("{}/api/integrations/callback", app.address)),
        "{detail}"
    );

    // A provider that has another redirect URI registered stops at its own error page.
    oauth.register_redirect("https://elsewhere.example/callback");
    let four = start_connect(&app).await;
    let r = browser()
        .get(four["authorizationUrl"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("redirect_uri_mismatch"));
    oauth.register_redirect(&format!("{}/api/integrations/callback", app.address));

    // Denied consent: a page that says so and what to do.
    oauth.set_consent(Consent::Deny);
    let five = start_connect(&app).await;
    let back = authorize(five["authorizationUrl"].as_str().unwrap()).await;
    let r = browser().get(&back).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = r.text().await.unwrap();
    assert!(
        page.contains("access_denied") && page.contains("approve"),
        "{page}"
    );
    assert_eq!(oauth.counters().code_exchanges, 3);
}
