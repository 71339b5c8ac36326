//! The connections page in a real browser, against the fake OAuth2 provider of test-support: an
//! integration imported by upload, its OAuth client registered with the redirect URI the page shows, the
//! Connect button through the real redirects (provider consent, the callback), the connection listed with
//! its status and account, and Disconnect revoking the grant at the provider.

use appstrate::packages::afps::build_zip;
use serde_json::json;
use test_support::browser::WebBrowser;
use test_support::fake_oauth::FakeOAuth;

#[tokio::test]
async fn the_connect_button_connects_through_the_provider_and_disconnect_revokes() {
    let oauth = FakeOAuth::start().await;
    let app = test_support::app::start_with(&[("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1")]).await;
    let web = test_support::require!(WebBrowser::start().await);
    let base = app.address.trim_end_matches('/').to_string();

    let manifest = crate::oauth::integration(&oauth.base, json!({})).to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("oauthapi.afps");
    std::fs::write(&file, build_zip(&[("manifest.json", manifest.as_bytes())])).unwrap();
    let agent = json!({
        "schema_version": "0.1", "name": "@tests/oauthcaller", "version": "1.0.0", "type": "agent",
        "display_name": "Caller", "dependencies": {"integrations": {crate::oauth::API: "^1.0.0"}}
    })
    .to_string();
    let agent_file = dir.path().join("caller.afps");
    std::fs::write(
        &agent_file,
        build_zip(&[
            ("manifest.json", agent.as_bytes()),
            ("prompt.md", b"Call the API.".as_slice()),
        ]),
    )
    .unwrap();

    web.goto(&format!("{base}/sign-up")).await;
    web.fill("#name", "Ada").await;
    web.fill("#email", "ada@example.com").await;
    web.fill("#password", "correct horse battery staple").await;
    web.click("#submit").await;
    web.find("#no-agents").await;
    web.find("#file")
        .await
        .send_keys(&file.to_string_lossy())
        .await
        .unwrap();
    web.submit("#import").await;
    web.find("#file")
        .await
        .send_keys(&agent_file.to_string_lossy())
        .await
        .unwrap();
    web.submit("#import").await;
    // The agent's page says what it needs and that it is not connected yet.
    assert_eq!(web.path().await, "/agents/@tests/oauthcaller");
    let requires = web.text("#requires").await;
    assert!(
        requires.contains("@tests/oauthapi") && requires.contains("not connected"),
        "{requires}"
    );

    web.click("nav.main a[href='/connections']").await;
    let card = "#integration-tests-oauthapi";
    assert!(web.text(card).await.contains("Not connected"));
    assert!(
        !web.has(&format!("{card} button.connect")).await,
        "no Connect before a client"
    );
    let callback = web.text(&format!("{card} .callback-url")).await;
    assert_eq!(callback, format!("{base}/api/integrations/callback"));
    // The provider accepts only the redirect URI the page told to register.
    oauth.register_redirect(&callback);
    web.fill(&format!("{card} .client-id"), &oauth.client_id)
        .await;
    web.fill(&format!("{card} .client-secret"), &oauth.client_secret)
        .await;
    web.submit(&format!("{card} .register-client")).await;
    assert!(web.text("#connections-notice").await.contains(&callback));
    let source = web.eval("return document.documentElement.outerHTML").await;
    assert!(
        !source.as_str().unwrap().contains(&oauth.client_secret),
        "the client secret is never sent back"
    );
    web.screenshot("connections").await;
    web.assert_clean("/connections").await;

    // Connect: the provider's consent (automatic here), then the callback, then back to the page.
    web.click(&format!("{card} button.connect")).await;
    web.wait_until(20, "the callback page", || async {
        web.path().await.starts_with("/api/integrations/callback") && web.has("#back").await
    })
    .await;
    let message = web.text("#message").await;
    assert!(message.contains("@tests/oauthapi"), "{message}");
    assert_eq!(oauth.counters().code_exchanges, 1);
    web.click("#back").await;
    web.find(card).await;
    let listed = web.text(card).await;
    assert!(listed.contains("connected"), "{listed}");
    assert_eq!(
        web.text(&format!("{card} .connection-status")).await,
        "connected"
    );
    web.screenshot("connections-connected").await;
    web.assert_clean("/connections").await;
    web.goto(&format!("{base}/agents/@tests/oauthcaller")).await;
    let requires = web.text("#requires").await;
    assert!(
        requires.contains("connected") && !requires.contains("not connected"),
        "{requires}"
    );
    web.click("nav.main a[href='/connections']").await;
    web.find(card).await;

    // Disconnect revokes the grant at the provider.
    web.submit(&format!("{card} button.danger")).await;
    assert!(web.text(card).await.contains("Not connected"));
    assert_eq!(oauth.counters().revocations, 1);
    web.close().await;
}
