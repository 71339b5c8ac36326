//! The models page in a real browser: a provider key is tested before it is saved (a bad key is reported
//! with the provider's answer and not kept), models are added, the organization's default and an agent's
//! own model are chosen, and a run started from the dashboard reaches the provider with the organization's
//! key and the agent's model — with no model in the environment.

use serde_json::{json, Value};
use test_support::browser::WebBrowser;
use test_support::fake_llm::{FakeLlm, Turn};

use crate::dashboard::owner_with_agent;

/// Text with its runs of whitespace made single spaces.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn choose(web: &WebBrowser, css: &str) {
    web.find(css).await.click().await.unwrap();
}

#[tokio::test]
async fn an_admin_adds_a_tested_key_models_and_an_agents_model() {
    let fake = FakeLlm::start(vec![Turn::tool_call(
        "output",
        json!({"data": {"greeting": "Hello from the org's model", "language": "en"}}),
    )])
    .await;
    fake.require_key("sk-org-key-7d1e");
    fake.set_models(&["fake-small", "fake-large"]);
    let app = test_support::app::start_with(&[("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1")]).await;
    let web = test_support::require!(WebBrowser::start().await);
    let base = app.address.trim_end_matches('/').to_string();
    owner_with_agent(&web, &base).await;

    web.click("nav.main a[href='/models']").await;
    web.find("#no-keys").await;
    assert!(
        web.text("#agent-models")
            .await
            .contains("No model is configured"),
        "the agent says what is missing"
    );
    web.assert_clean("/models").await;

    // A bad key: the provider's refusal is shown and nothing is saved.
    choose(&web, "#p-provider option[value='openai-compatible']").await;
    web.fill("#p-base", &fake.url()).await;
    web.fill("#p-label", "Team LLM").await;
    web.fill("#p-key", "sk-wrong-key-0000").await;
    web.submit("#save-key").await;
    let refused = web.text("#key-test").await;
    assert!(
        refused.contains("HTTP 401") && refused.contains("not saved"),
        "{refused}"
    );
    assert!(web.has("#no-keys").await);
    let source = web.eval("return document.documentElement.outerHTML").await;
    assert!(
        !source.as_str().unwrap().contains("sk-wrong-key-0000"),
        "a key is never sent back to the page"
    );
    assert_eq!(
        web.eval("return document.getElementById('p-base').value")
            .await,
        fake.url(),
        "the rest of the form is kept"
    );
    web.console().await; // the refused form answered 400 on purpose

    // The right key passes the test and is saved; the models it lists are offered.
    web.fill("#p-key", "sk-org-key-7d1e").await;
    web.submit("#save-key").await;
    assert!(web.text("#key-test").await.contains("lists 2 models"));
    let keys = flat(&web.text("#provider-keys").await);
    assert!(
        keys.contains("Team LLM openai-compatible") && keys.contains(&fake.url()),
        "{keys}"
    );

    for (id, label, input, output) in [
        ("fake-small", "Small", "0.15", "0.6"),
        ("fake-large", "Large", "3", "15"),
    ] {
        web.fill("#md-id", id).await;
        web.fill("#md-label", label).await;
        web.fill("#md-in", input).await;
        web.fill("#md-out", output).await;
        web.submit("#add-model-button").await;
        web.wait_until(10, "the model listed", || async {
            web.has("#models").await && web.text("#models").await.contains(label)
        })
        .await;
    }
    // A bad price is reported next to its field.
    web.fill("#md-id", "fake-small").await;
    web.fill("#md-in", "cheap").await;
    web.fill("#md-out", "1").await;
    web.submit("#add-model-button").await;
    assert!(web.text("#md-in-error").await.contains("per million"));
    web.console().await;

    // The organization's default, then the agent's own model.
    choose(&web, "#d-model option:nth-child(2)").await;
    web.submit("#save-default").await;
    let agents = flat(&web.text("#agent-models").await);
    assert!(agents.contains("Small from the organization"), "{agents}");
    let listed = flat(&web.text("#models").await);
    assert!(
        listed.contains("Small default") && listed.contains("$0.15 / $0.6"),
        "{listed}"
    );
    let large = web
        .eval("return [...document.querySelectorAll('#d-model option')].find(o => o.textContent === 'Large').value")
        .await;
    web.find(&format!(
        "#am-1 option[value='{}']",
        large.as_str().unwrap()
    ))
    .await
    .click()
    .await
    .unwrap();
    web.submit("form.agent-model button").await;
    let agents = flat(&web.text("#agent-models").await);
    assert!(agents.contains("Large from the agent"), "{agents}");
    web.screenshot("models").await;
    web.assert_clean("/models").await;

    // A run from the dashboard reaches the provider with the organization's key and the agent's model.
    web.goto(&format!("{base}/agents/@examples/hello")).await;
    web.fill("#in-name", "Ada").await;
    web.click("#run").await;
    web.wait_until(30, "the output", || async {
        web.has("#run-output").await
            && web
                .text("#run-output")
                .await
                .contains("Hello from the org's model")
    })
    .await;
    let calls: Vec<Value> = fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(!calls.is_empty());
    assert!(
        calls.iter().all(|c| c["model"] == "fake-large"),
        "{calls:?}"
    );
    assert!(fake
        .authorizations()
        .iter()
        .filter(|a| !a.is_empty())
        .all(|a| a == "Bearer sk-org-key-7d1e" || a == "Bearer sk-wrong-key-0000"));
    web.assert_clean("/runs/{id}").await;
    web.close().await;
}
