//! Social and OIDC sign-in through the real redirects, against the fake providers of test-support.

use reqwest::Method;
use serde_json::json;
use test_support::fake_oidc::{FakeIdentity, FakeProvider, Tamper};
use test_support::people::{no_redirect_client, Browser, PASSWORD};

async fn app_with(provider: &FakeProvider, github: bool) -> test_support::TestApp {
    let env = if github {
        provider.github_env()
    } else {
        provider.oidc_env()
    };
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    test_support::app::start_with(&pairs).await
}

#[tokio::test]
async fn oidc_sign_in_creates_then_finds_the_account_and_links_by_verified_email() {
    let idp = FakeProvider::start().await;
    let app = app_with(&idp, false).await;
    // The providers list names the redirect URI to register.
    let (_, list) = Browser::new(&app, "x@example.com")
        .get("/api/auth/providers", &[])
        .await;
    assert_eq!(list["data"][0]["id"], "oidc");
    assert_eq!(
        list["data"][0]["redirectUri"],
        format!("{}/api/auth/callback/oidc", app.address)
    );

    // First sign-in: a new account, owner of the fresh instance.
    idp.set_identity(FakeIdentity::new("sub-ada", "ada@example.com"));
    let mut ada = Browser::new(&app, "ada@example.com");
    let done = ada.social_sign_in("oidc", |u| u).await;
    assert_eq!(done.status, 302, "{}", done.body);
    assert_eq!(
        done.location.as_deref(),
        Some(format!("{}/", app.address).as_str())
    );
    let (s, me) = ada.get("/api/auth/get-session", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(me["user"]["email"], "ada@example.com");
    assert_eq!(me["user"]["emailVerified"], true);
    assert_eq!(me["user"]["hasPassword"], false);
    let (_, orgs) = ada.get("/api/me/orgs", &[]).await;
    assert_eq!(orgs["data"][0]["role"], "owner");

    // Again: the same account (by subject).
    let mut again = Browser::new(&app, "ada@example.com");
    assert_eq!(again.social_sign_in("oidc", |u| u).await.status, 302);
    let (_, me2) = again.get("/api/auth/get-session", &[]).await;
    assert_eq!(me2["user"]["id"], me["user"]["id"]);

    // A password account with the same email, verified by an invitation, is linked, not duplicated.
    let (_, org) = ada.get("/api/me/orgs", &[]).await;
    let org_id = org["data"][0]["id"].as_str().unwrap().to_string();
    let (s, inv) = ada
        .send(
            Method::POST,
            &format!("/api/orgs/{org_id}/members"),
            &[],
            Some(json!({"email": "bob@example.com"})),
        )
        .await;
    assert_eq!(s, 201);
    let mut bob = Browser::new(&app, "bob@example.com");
    bob.sign_up().await;
    let token = inv["inviteUrl"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        bob.send(Method::POST, &format!("/invite/{token}/accept"), &[], None)
            .await
            .0,
        200
    );
    let bob_id = bob.get("/api/profile", &[]).await.1["id"].clone();
    idp.set_identity(FakeIdentity::new("sub-bob", "Bob@Example.com"));
    let mut bob_sso = Browser::new(&app, "bob@example.com");
    assert_eq!(bob_sso.social_sign_in("oidc", |u| u).await.status, 302);
    let (_, p) = bob_sso.get("/api/profile", &[]).await;
    assert_eq!(p["id"], bob_id, "linked to the existing account");
    assert_eq!(
        p["hasPassword"], true,
        "a verified account keeps its password"
    );
    assert_eq!(bob.sign_in(PASSWORD).await.status(), 200);

    // An unverified email is not linked to anything.
    idp.set_identity(FakeIdentity {
        email_verified: false,
        ..FakeIdentity::new("sub-eve", "ada@example.com")
    });
    let done = Browser::new(&app, "eve@example.com")
        .social_sign_in("oidc", |u| u)
        .await;
    assert_eq!(done.status, 400);
    assert!(
        done.body.contains("did not confirm an email"),
        "{}",
        done.body
    );
}

#[tokio::test]
async fn github_sign_in_uses_the_primary_verified_email() {
    let idp = FakeProvider::start().await;
    let app = app_with(&idp, true).await;
    idp.set_identity(FakeIdentity::new("4242", "octo@example.com"));
    let mut octo = Browser::new(&app, "octo@example.com");
    let done = octo.social_sign_in("github", |u| u).await;
    assert_eq!(done.status, 302, "{}", done.body);
    let (_, p) = octo.get("/api/profile", &[]).await;
    assert_eq!(p["email"], "octo@example.com");
    // Not configured: a page saying so.
    let r = no_redirect_client()
        .get(app.url("/api/auth/sign-in/google"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("not configured"));
}

#[tokio::test]
async fn tampered_state_replayed_code_wrong_nonce_and_foreign_key_are_refused() {
    let idp = FakeProvider::start().await;
    let app = app_with(&idp, false).await;
    let mut b = Browser::new(&app, "ada@example.com");

    // A tampered state.
    let done = b
        .social_sign_in("oidc", |u| u.replace("state=", "state=x"))
        .await;
    assert_eq!(done.status, 400, "{}", done.body);
    assert!(done.body.contains("state mismatch"), "{}", done.body);
    assert!(b.cookie.is_none());
    // The right state without the browser's state cookie (a link planted by someone else).
    let done = b.social_sign_in("oidc", |u| u).await;
    assert_eq!(done.status, 302);
    let planted = b.finish_callback(&done.callback_url, None).await;
    assert_eq!(planted.status, 400);

    // A replayed callback (same state and code): refused; the state is good once.
    let mut b2 = Browser::new(&app, "ada@example.com");
    let replay = b2
        .finish_callback(&done.callback_url, done.state_cookie.clone())
        .await;
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert!(b2.cookie.is_none());

    // A replayed code with a fresh state: the provider refuses it.
    let mut b3 = Browser::new(&app, "ada@example.com");
    let fresh = b3.social_sign_in("oidc", |u| u).await;
    assert_eq!(fresh.status, 302);
    let old_code = url::Url::parse(&done.callback_url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let mut b4 = Browser::new(&app, "ada@example.com");
    let done4 = b4
        .social_sign_in("oidc", move |u| {
            let url = url::Url::parse(&u).unwrap();
            let state = url
                .query_pairs()
                .find(|(k, _)| k == "state")
                .unwrap()
                .1
                .into_owned();
            format!(
                "{}?code={old_code}&state={state}",
                u.split('?').next().unwrap()
            )
        })
        .await;
    assert_eq!(done4.status, 502, "{}", done4.body);
    assert!(done4.body.contains("invalid_grant"), "{}", done4.body);
    assert!(b4.cookie.is_none());

    // An ID token with another nonce.
    idp.tamper(Tamper {
        wrong_nonce: true,
        ..Default::default()
    });
    let mut b5 = Browser::new(&app, "ada@example.com");
    let d = b5.social_sign_in("oidc", |u| u).await;
    assert_eq!(d.status, 400, "{}", d.body);
    assert!(
        d.body.contains("ID token") && d.body.to_lowercase().contains("nonce"),
        "{}",
        d.body
    );
    assert!(b5.cookie.is_none());

    // An ID token signed by a key the JWKS does not publish.
    idp.tamper(Tamper {
        foreign_key: true,
        ..Default::default()
    });
    let mut b6 = Browser::new(&app, "ada@example.com");
    let d = b6.social_sign_in("oidc", |u| u).await;
    assert_eq!(d.status, 400, "{}", d.body);
    assert!(d.body.contains("ID token"), "{}", d.body);
    assert!(b6.cookie.is_none());

    // Untampered, it works.
    idp.tamper(Tamper::default());
    let mut ok = Browser::new(&app, "ada@example.com");
    assert_eq!(ok.social_sign_in("oidc", |u| u).await.status, 302);
    assert!(ok.cookie.is_some());
}

#[tokio::test]
async fn a_mismatched_app_url_names_the_redirect_uri_to_register() {
    let idp = FakeProvider::start().await;
    let mut env = idp.oidc_env();
    env.push(("APP_URL".into(), "https://appstrate.example.com".into()));
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = test_support::app::start_with(&pairs).await;
    let r = no_redirect_client()
        .get(app.url("/api/auth/sign-in/oidc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = r.text().await.unwrap();
    assert!(
        page.contains("https://appstrate.example.com/api/auth/callback/oidc"),
        "{page}"
    );
    let host = app.address.trim_start_matches("http://");
    assert!(
        page.contains(host),
        "names the address the page was opened at: {page}"
    );
    assert!(page.contains("APP_URL"), "{page}");
    assert_eq!(idp.token_requests(), 0);
}
