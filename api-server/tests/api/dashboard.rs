//! The web dashboard in a real browser (headless Chromium over WebDriver): a person signs up on a fresh
//! instance, claims it, imports the example agent by upload, runs it through the form generated from its
//! input schema (a validation error first), watches the log lines arrive live and reads the output, all
//! against the scripted fake LLM. Every page is checked for console errors and failed requests, and
//! screenshots go to `target/screenshots`.

use std::path::PathBuf;

use std::time::Duration;

use serde_json::{json, Value};
use test_support::browser::WebBrowser;
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::webhook_receiver::{Reply, WebhookReceiver};

fn example_agent() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/agents/hello.afps")
}

#[tokio::test]
async fn a_new_user_claims_the_instance_imports_and_runs_an_agent_live() {
    let fake = FakeLlm::start(vec![
        Turn::tool_call(
            "log",
            json!({"level": "info", "message": "Choosing the language"}),
        )
        .with_delay(1500),
        Turn::tool_call(
            "log",
            json!({"level": "info", "message": "Greeting chosen"}),
        )
        .with_delay(1500),
        Turn::tool_call(
            "output",
            json!({"data": {"greeting": "Hello, Ada!", "language": "en"}}),
        )
        .with_delay(300),
    ])
    .await;
    let llm = fake.url();
    let app = test_support::app::start_with(&[
        ("LLM_BASE_URL", llm.as_str()),
        ("LLM_API_KEY", "sk-dashboard-test"),
        ("LLM_MODEL", "fake-model"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1"),
    ])
    .await;
    let web = test_support::require!(WebBrowser::start().await);
    let base = app.address.trim_end_matches('/').to_string();

    // A fresh instance sends a visitor to sign in; the sign-up page claims it.
    web.goto(&format!("{base}/")).await;
    assert_eq!(web.path().await, "/sign-in");
    web.screenshot("sign-in").await;
    web.assert_clean("/sign-in").await;
    web.click("a[href^='/sign-up']").await;
    web.fill("#name", "Ada").await;
    web.fill("#email", "ada@example.com").await;
    web.fill("#password", "short").await;
    web.click("#submit").await;
    assert!(
        web.text("#password-error")
            .await
            .contains("8 to 128 characters"),
        "a short password is refused next to its field"
    );
    // The refused form answered 400 on purpose: that one console line is expected.
    let expected = web.console().await;
    assert!(
        expected.iter().all(|(_, m)| m.contains("400")),
        "{expected:?}"
    );
    web.fill("#password", "correct horse battery staple").await;
    web.click("#submit").await;
    web.find("#no-agents").await;
    assert_eq!(web.path().await, "/agents");
    let org = web.text("#ctx-org option[selected]").await;
    assert!(org.contains("Ada's organization (owner)"), "{org}");
    web.screenshot("agents-empty").await;
    web.assert_clean("/agents").await;

    // Import by upload: the agent's page opens.
    web.find("#file")
        .await
        .send_keys(&example_agent().canonicalize().unwrap().to_string_lossy())
        .await
        .unwrap();
    web.click("#import").await;
    web.find("#run-form").await;
    assert_eq!(web.path().await, "/agents/@examples/hello");
    assert_eq!(
        web.eval("return document.getElementById('in-language').value")
            .await,
        "en",
        "the schema's default is preselected"
    );
    web.screenshot("agent").await;
    web.assert_clean("/agents/@examples/hello").await;

    // The generated form: a required field left empty is reported next to it by the server.
    web.click("#run").await;
    let message = web.text("#in-name-error").await;
    assert!(
        !message.is_empty(),
        "a validation message next to the name field"
    );
    assert_eq!(
        web.eval("return document.getElementById('in-name').getAttribute('aria-invalid')")
            .await,
        "true"
    );
    assert!(fake.requests().is_empty(), "no run was started");
    let expected = web.console().await;
    assert!(
        expected.iter().all(|(_, m)| m.contains("400")),
        "{expected:?}"
    );

    // Valid input: the run page follows the run live.
    web.fill("#in-name", "Ada").await;
    web.click("#run").await;
    web.find("#run-status").await;
    let run_path = web.path().await;
    assert!(run_path.starts_with("/runs/"), "{run_path}");
    // A marker on the window: it survives only if the page is never reloaded.
    web.eval("window.__sameDocument = true; return true").await;
    web.wait_until(30, "the second log line", || async {
        web.text("#logs").await.contains("Greeting chosen")
    })
    .await;
    web.wait_until(30, "the output", || async {
        web.has("#run-output").await && web.text("#run-output").await.contains("Hello, Ada!")
    })
    .await;
    assert_eq!(
        web.eval("return window.__sameDocument === true").await,
        true,
        "the log lines and the result arrived without a reload"
    );
    let logs = web.text("#logs").await;
    let (first, second) = (
        logs.find("Choosing the language").expect("first line"),
        logs.find("Greeting chosen").expect("second line"),
    );
    assert!(first < second, "log lines in order: {logs}");
    assert_eq!(web.text("#run-status").await, "success");
    assert!(
        !web.find("#cancel").await.is_displayed().await.unwrap(),
        "a finished run offers no cancel"
    );
    let output = web.text("#run-output").await;
    assert!(
        output.contains("\"language\": \"en\""),
        "pretty-printed JSON: {output}"
    );
    web.screenshot("run").await;
    web.assert_clean(&run_path).await;

    // The runs list shows it; pages carry the security headers.
    web.goto(&format!("{base}/runs?status=success")).await;
    assert!(web.text("#runs").await.contains("@examples/hello"));
    web.screenshot("runs").await;
    web.assert_clean("/runs").await;
    let res = app
        .client
        .get(format!("{base}/sign-in"))
        .send()
        .await
        .unwrap();
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");

    // Signing out ends the session: the dashboard asks to sign in again.
    web.click("header form[action='/sign-out'] button").await;
    web.find("#email").await;
    web.goto(&format!("{base}/agents")).await;
    assert!(web.path().await.starts_with("/sign-in"));
    web.close().await;
}

/// An owner invites a second person as a viewer; they accept in a second browser and can read the agent
/// but not run it: the run form is absent, and the server refuses a forged post anyway.
#[tokio::test]
async fn an_invited_viewer_reads_but_cannot_run() {
    let fake = FakeLlm::start(vec![]).await;
    let llm = fake.url();
    let app = test_support::app::start_with(&[
        ("LLM_BASE_URL", llm.as_str()),
        ("LLM_API_KEY", "sk-dashboard-test"),
        ("LLM_MODEL", "fake-model"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1"),
    ])
    .await;
    let ada = test_support::require!(WebBrowser::start().await);
    let base = app.address.trim_end_matches('/').to_string();
    ada.goto(&format!("{base}/sign-up")).await;
    ada.fill("#name", "Ada").await;
    ada.fill("#email", "ada@example.com").await;
    ada.fill("#password", "correct horse battery staple").await;
    ada.click("#submit").await;
    ada.find("#no-agents").await;
    ada.find("#file")
        .await
        .send_keys(&example_agent().canonicalize().unwrap().to_string_lossy())
        .await
        .unwrap();
    ada.click("#import").await;
    ada.find("#run-form").await;

    // The invitation: no SMTP here, so the link is shown once to the inviter.
    ada.click("nav.main a[href='/members']").await;
    ada.fill("#invite-email", "bob@example.com").await;
    ada.find("#invite-role option[value='viewer']")
        .await
        .click()
        .await
        .unwrap();
    ada.click("#invite").await;
    let link = ada.text("#invite-link").await;
    assert!(link.starts_with(&format!("{base}/invite/")), "{link}");
    assert!(ada.text("#invitations").await.contains("bob@example.com"));
    ada.screenshot("members").await;
    ada.assert_clean("/members").await;

    // Bob, in his own browser, follows the link and creates his account from it.
    let bob = WebBrowser::start().await.expect("a second browser");
    bob.goto(&link).await;
    assert!(bob.text("#invite-org").await.contains("Ada's organization"));
    assert_eq!(bob.text("#invite-role").await, "viewer");
    bob.click("#sign-up").await;
    bob.fill("#name", "Bob").await;
    bob.fill("#email", "bob@example.com").await;
    bob.fill("#password", "another correct horse battery").await;
    bob.click("#submit").await;
    bob.find("#ctx-org").await;
    assert_eq!(bob.path().await, "/agents");
    assert!(bob
        .text("#ctx-org option[selected]")
        .await
        .contains("(viewer)"));
    assert!(!bob.has("#import").await, "a viewer cannot import");
    bob.click("a[href='/agents/@examples/hello']").await;
    bob.find("#main h1").await;
    assert!(!bob.has("#run-form").await, "no run form for a viewer");
    bob.assert_clean("/agents/@examples/hello").await;
    // A forged post with Bob's own CSRF token is refused by the server.
    let status = bob
        .eval(
            "const t = document.querySelector('input[name=_csrf]').value;
             return fetch('/agents/@examples/hello/run', {method: 'POST',
               headers: {'Content-Type': 'application/x-www-form-urlencoded'},
               body: '_csrf=' + encodeURIComponent(t) + '&input.name=Bob'}).then(r => r.status);",
        )
        .await;
    assert_eq!(status, 403);
    assert!(fake.requests().is_empty(), "no run reached the model");
    bob.console().await;

    // The owner makes Bob a member: his next page offers the run form.
    ada.goto(&format!("{base}/members")).await;
    ada.find("form.member-role select option[value='member']")
        .await
        .click()
        .await
        .unwrap();
    ada.submit("form.member-role button").await;
    assert!(ada.text("#members").await.contains("bob@example.com"));
    assert_eq!(
        ada.eval("return document.querySelector('form.member-role select').value")
            .await,
        "member"
    );
    ada.assert_clean("/members").await;
    bob.goto(&format!("{base}/agents/@examples/hello")).await;
    bob.find("#run-form").await;
    ada.close().await;
    bob.close().await;
}

/// Signs up on a fresh instance and imports the example agent; the browser is on its page.
pub(crate) async fn owner_with_agent(web: &WebBrowser, base: &str) {
    web.goto(&format!("{base}/sign-up")).await;
    web.fill("#name", "Ada").await;
    web.fill("#email", "ada@example.com").await;
    web.fill("#password", "correct horse battery staple").await;
    web.click("#submit").await;
    web.find("#no-agents").await;
    web.find("#file")
        .await
        .send_keys(&example_agent().canonicalize().unwrap().to_string_lossy())
        .await
        .unwrap();
    web.click("#import").await;
    web.find("#run-form").await;
}

/// A schedule with its next occurrences shown before saving; a webhook whose secret is shown once and
/// signs the deliveries the page then lists (a failed attempt, then its retry); an API key shown once and
/// used from here over HTTP to start the run those deliveries are about.
#[tokio::test]
async fn schedules_webhooks_and_api_keys_from_the_dashboard() {
    let fake = FakeLlm::start(vec![Turn::tool_call(
        "output",
        json!({"data": {"greeting": "Hello, Key!", "language": "en"}}),
    )])
    .await;
    let llm = fake.url();
    let app = test_support::app::start_with(&[
        ("LLM_BASE_URL", llm.as_str()),
        ("LLM_API_KEY", "sk-dashboard-test"),
        ("LLM_MODEL", "fake-model"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1"),
        ("WEBHOOK_RETRY_DELAYS_SECONDS", "1,1"),
    ])
    .await;
    let receiver = WebhookReceiver::start(vec![Reply::Status(500)]).await;
    let web = test_support::require!(WebBrowser::start().await);
    let base = app.address.trim_end_matches('/').to_string();
    owner_with_agent(&web, &base).await;

    // Schedules: a bad expression is reported next to its field; a good one previews its occurrences.
    web.click("nav.main a[href='/schedules']").await;
    web.find("#no-schedules").await;
    web.fill("#s-cron", "every morning").await;
    web.click("#preview-button").await;
    assert!(!web.text("#s-cron-error").await.is_empty());
    web.console().await; // the refused preview answered 400 on purpose
    web.fill("#s-name", "Weekday greeting").await;
    web.fill("#s-cron", "0 9 * * 1-5").await;
    web.fill("#s-tz", "Europe/Paris").await;
    web.fill("#s-input", r#"{"name": "Ada"}"#).await;
    web.click("#preview-button").await;
    let preview = web.text("#preview").await;
    let lines: Vec<&str> = preview.lines().filter(|l| l.contains(" 09:00 ")).collect();
    assert_eq!(
        lines.len(),
        5,
        "five weekday mornings, Paris time: {preview}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.starts_with("Sat") && !l.starts_with("Sun")),
        "{preview}"
    );
    assert!(!web.has("#schedules").await, "nothing saved by a preview");
    web.screenshot("schedule-preview").await;
    web.click("#create-schedule").await;
    let row = web.text("#schedules").await;
    assert!(
        row.contains("Weekday greeting") && row.contains("enabled"),
        "{row}"
    );
    assert!(row.contains("0 9 * * 1-5") && row.contains("Europe/Paris"));
    web.click("#schedules button.secondary:not(.danger)").await;
    web.wait_until(10, "the schedule disabled", || async {
        web.text("#schedules").await.contains("disabled")
    })
    .await;
    web.screenshot("schedules").await;
    web.assert_clean("/schedules").await;

    // Webhooks: the secret once, never again.
    web.click("nav.main a[href='/webhooks']").await;
    web.fill("#w-url", &receiver.url("/hook")).await;
    web.click("#create-webhook").await;
    let secret = web.text("#webhook-secret").await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    web.screenshot("webhook-created").await;
    web.goto(&format!("{base}/webhooks")).await;
    assert!(!web.has("#webhook-secret").await);
    let source = web.eval("return document.documentElement.outerHTML").await;
    assert!(!source.as_str().unwrap().contains(&secret));
    web.assert_clean("/webhooks").await;

    // API keys: shown once, then used over HTTP.
    web.click("nav.main a[href='/api-keys']").await;
    web.find("#no-keys").await;
    web.fill("#k-name", "CI pipeline").await;
    web.click("#create-key").await;
    let key = web.text("#api-key").await;
    assert!(key.starts_with("ask_"), "{key}");
    assert!(web.text("#api-keys").await.contains("CI pipeline"));
    web.screenshot("api-keys").await;
    web.goto(&format!("{base}/api-keys")).await;
    let source = web.eval("return document.documentElement.outerHTML").await;
    assert!(!source.as_str().unwrap().contains(&key));
    web.assert_clean("/api-keys").await;
    let run: Value = app
        .client
        .post(format!("{base}/api/agents/@examples/hello/run"))
        .bearer_auth(&key)
        .json(&json!({"input": {"name": "Key"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = run["id"].as_str().expect("a run started with the key");
    assert!(
        app.client
            .get(format!("{base}/api/agents"))
            .bearer_auth("ask_not-a-real-key")
            .send()
            .await
            .unwrap()
            .status()
            == 401
    );

    // The run's deliveries are signed with the secret the page showed; the page lists each attempt.
    let got = receiver.wait_for(3, Duration::from_secs(60)).await;
    assert!(got.iter().all(|r| r.signed_with(&secret)));
    assert!(got.iter().any(|r| r.json()["data"]["id"] == run_id
        || r.json()["data"]["object"]["id"] == run_id
        || r.json().to_string().contains(run_id)));
    web.goto(&format!("{base}/webhooks")).await;
    web.click("#webhooks a").await;
    web.wait_until(20, "the retried delivery", || async {
        web.goto(&web.url().await).await;
        let t = web.text("#main").await;
        t.contains("HTTP 500") && t.matches("success").count() >= 2
    })
    .await;
    let deliveries = web.text("#deliveries").await;
    assert!(
        deliveries.contains("run.started") && deliveries.contains("run.success"),
        "{deliveries}"
    );
    web.screenshot("webhook").await;
    web.assert_clean("/webhooks/{id}").await;

    // Rotation shows a new secret, once.
    web.click("#rotate").await;
    let rotated = web.text("#webhook-secret").await;
    assert!(rotated.starts_with("whsec_") && rotated != secret);

    // An end-user a program creates with the key is listed, and found by email.
    let r = app
        .client
        .post(format!("{base}/api/end-users"))
        .bearer_auth(&key)
        .json(&json!({"name": "Grace", "email": "grace@example.com", "externalId": "crm-42"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    web.click("nav.main a[href='/end-users']").await;
    assert!(web.text("#end-users").await.contains("crm-42"));
    web.fill("#eu-email", "nobody@example.com").await;
    web.submit(".filters button").await;
    web.find("#no-end-users").await;
    web.fill("#eu-email", "grace@example.com").await;
    web.submit(".filters button").await;
    assert!(web.text("#end-users").await.contains("Grace"));
    web.assert_clean("/end-users").await;

    // The account page lists this browser's session; the instance page what /health knows.
    web.click("header a[href='/profile']").await;
    assert!(web.text("#sessions").await.contains("this browser"));
    web.screenshot("profile").await;
    web.assert_clean("/profile").await;
    web.click("nav.main a[href='/instance']").await;
    let adapters = web.text("#instance-adapters").await;
    assert!(
        adapters.contains("sqlite") && adapters.contains("process"),
        "{adapters}"
    );
    assert_eq!(web.text("#instance-status").await, "healthy");
    web.screenshot("instance").await;
    web.assert_clean("/instance").await;
    web.close().await;
}
