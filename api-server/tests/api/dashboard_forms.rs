//! The dashboard's forms without a browser: the CSRF rules and the sign-in limits shared with the JSON API, posted as a
//! browser would (form encoding, session cookie, `Origin`).

use reqwest::Method;
use test_support::people::{Browser, PASSWORD};

/// The `_csrf` token in a dashboard page.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"_csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 20;
    html[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn forms_need_the_sessions_csrf_token_and_this_origin() {
    let app = test_support::app::start_with(&[]).await;
    let mut ada = Browser::new(&app, "ada@example.com");
    ada.sign_up().await;
    let page = ada
        .req(Method::GET, "/agents")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = csrf_of(&page);
    let cookie = ada.cookie.clone().expect("signed in");
    let post = |csrf: &str, origin: &str| {
        app.client
            .post(app.url("/sign-out"))
            .header("Cookie", &cookie)
            .header("Origin", origin)
            .form(&[("_csrf", csrf)])
            .send()
    };
    let r = post("", &ada.origin).await.unwrap();
    assert_eq!(r.status(), 403, "no token");
    assert!(r.text().await.unwrap().contains("reload the page"));
    let r = post(&"0".repeat(token.len()), &ada.origin).await.unwrap();
    assert_eq!(r.status(), 403, "a wrong token");
    let r = post(&token, "https://evil.example").await.unwrap();
    assert_eq!(r.status(), 403, "another origin");
    // The session is still alive after the refused posts; the right token and origin sign out.
    let (s, _) = ada.get("/api/profile", &[]).await;
    assert_eq!(s, 200);
    let r = post(&token, &ada.origin).await.unwrap();
    assert_eq!(r.url().path(), "/sign-in", "redirected to sign in");
    let (s, _) = ada.get("/api/profile", &[]).await;
    assert_eq!(s, 401, "signed out");
}

#[tokio::test]
async fn the_dashboard_sign_in_shares_the_apis_per_email_limit() {
    let app = test_support::app::start_with(&[]).await;
    let mut ada = Browser::new(&app, "ada@example.com");
    ada.sign_up().await;
    // Ten wrong passwords through the JSON API use up the per-email bucket (10 per 5 minutes)…
    for _ in 0..10 {
        assert_eq!(ada.sign_in("wrong password!").await.status(), 401);
    }
    // …so the dashboard's form refuses the eleventh, even with the right password.
    let r = ada
        .req(Method::POST, "/sign-in")
        .form(&[("email", "ada@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("Too many attempts"));
}
