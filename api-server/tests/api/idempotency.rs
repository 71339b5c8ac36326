//! `Idempotency-Key` records belong to the caller's full identity and are authorized like a first request;
//! the stored answers (a new webhook's one-time secret among them) are encrypted at rest.

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::TestApp;
use test_support::fake_llm::FakeLlm;
use test_support::{spawn_app_on, Backend};

use crate::runs::{llm_app, wait_terminal};

async fn answer(r: reqwest::RequestBuilder) -> (u16, Value, bool) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (status, r.json().await.unwrap_or(Value::Null), replayed)
}

/// A new API key of the default application with `scopes`.
async fn key_with(app: &TestApp, name: &str, scopes: &[&str]) -> String {
    let (s, b, _) = answer(
        app.admin(Method::POST, "/api/api-keys")
            .json(&json!({"name": name, "scopes": scopes})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    b["key"].as_str().unwrap().to_string()
}

const HOOK: &str = r#"{"url": "https://example.com/hook", "events": ["run.success"]}"#;

fn create_hook(app: &TestApp, bearer: &str) -> reqwest::RequestBuilder {
    app.client
        .post(app.url("/api/webhooks"))
        .bearer_auth(bearer)
        .header("Idempotency-Key", "hook-once")
        .header("content-type", "application/json")
        .body(HOOK)
}

#[tokio::test]
async fn a_repeat_goes_through_scope_checks_and_is_keyed_by_credential() {
    let app = test_support::spawn_app().await;
    let (s, first, replayed) = answer(create_hook(&app, &app.api_key)).await;
    assert_eq!(s, 201, "{first}");
    assert!(!replayed);
    assert!(first["secret"].as_str().unwrap().starts_with("whsec_"));

    // The same caller gets the stored answer.
    let (s, again, replayed) = answer(create_hook(&app, &app.api_key)).await;
    assert_eq!((s, replayed), (201, true));
    assert_eq!(again, first);

    // A key that may only read runs gets the scope refusal, not the stored answer and its secret.
    let reader = key_with(&app, "reader", &["runs:read"]).await;
    let (s, refused, replayed) = answer(create_hook(&app, &reader)).await;
    assert_eq!((s, replayed), (403, false), "{refused}");
    assert_eq!(
        refused["detail"],
        "Insufficient permissions: webhooks:write required"
    );
    assert!(!refused.to_string().contains("whsec_"), "{refused}");

    // Another key that may create webhooks, or the admin token, repeating the key: a request of its own.
    let writer = key_with(&app, "writer", &["webhooks:write"]).await;
    let (s, own, replayed) = answer(create_hook(&app, &writer)).await;
    assert_eq!((s, replayed), (201, false), "{own}");
    assert_ne!(own["id"], first["id"]);
    assert_ne!(own["secret"], first["secret"]);
    let (s, by_admin, replayed) =
        answer(create_hook(&app, &app.admin_token).header("X-App-Id", &app.app_id)).await;
    assert_eq!((s, replayed), (201, false), "{by_admin}");
    assert_ne!(by_admin["id"], first["id"]);

    // The same key on another route is a different request, not a replay of this one.
    let (s, b, _) = answer(
        app.key(Method::POST, "/api/end-users")
            .header("Idempotency-Key", "hook-once")
            .header("content-type", "application/json")
            .body(HOOK),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["code"], "idempotency_conflict");
}

#[tokio::test]
async fn an_end_user_cannot_replay_another_end_users_run() {
    let fake = FakeLlm::start(vec![]).await;
    let app = llm_app(&fake, &[]).await;
    let (s, b, _) = answer(app.key(Method::POST, "/api/packages").json(&json!({
        "manifest": {"schema_version": "0.1", "name": "@idem/agent", "version": "1.0.0",
                     "type": "agent", "display_name": "Agent"},
        "files": {"prompt.md": "Hello"},
    })))
    .await;
    assert_eq!(s, 201, "{b}");
    let mut end_users = Vec::new();
    for name in ["Ann", "Bob"] {
        let (s, eu, _) = answer(
            app.key(Method::POST, "/api/end-users")
                .json(&json!({ "name": name })),
        )
        .await;
        assert_eq!(s, 201, "{eu}");
        end_users.push(eu["id"].as_str().unwrap().to_string());
    }
    let run_as = |eu: &str| {
        app.key(Method::POST, "/api/agents/@idem/agent/run")
            .header("Appstrate-User", eu)
            .header("Idempotency-Key", "run-once")
            .json(&json!({}))
    };
    let (s, ann, replayed) = answer(run_as(&end_users[0])).await;
    assert_eq!((s, replayed), (201, false), "{ann}");
    assert_eq!(ann["endUserId"], end_users[0].as_str());
    let (s, bob, replayed) = answer(run_as(&end_users[1])).await;
    assert_eq!((s, replayed), (201, false), "{bob}");
    assert_eq!(bob["endUserId"], end_users[1].as_str());
    assert_ne!(bob["id"], ann["id"]);
    // Ann repeating her own request gets her run back.
    let (s, again, replayed) = answer(run_as(&end_users[0])).await;
    assert_eq!((s, replayed), (201, true));
    assert_eq!(again["id"], ann["id"]);
    for run in [&ann, &bob] {
        wait_terminal(&app, run["id"].as_str().unwrap()).await;
    }
}

/// The stored answer columns, as text.
async fn stored_answers(app: &TestApp) -> Vec<String> {
    let sql = "SELECT response_enc FROM idempotency_keys WHERE response_enc IS NOT NULL";
    match app.env.get("DATABASE_URL") {
        Some(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap()
        }
        None => {
            let path = app.data_dir.join("appstrate.db");
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap()
        }
    }
}

on_both_backends!(a_webhook_secret_is_not_stored_in_plaintext_for_replays);
async fn a_webhook_secret_is_not_stored_in_plaintext_for_replays(backend: Backend) {
    let app = test_support::require!(spawn_app_on(backend, &[]).await);
    let (s, first, _) = answer(create_hook(&app, &app.api_key)).await;
    assert_eq!(s, 201, "{first}");
    let secret = first["secret"].as_str().unwrap().to_string();
    let secret_b64 = secret.trim_start_matches("whsec_").to_string();

    let stored = stored_answers(&app).await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].starts_with("v1:"), "a keyring envelope");
    assert!(!stored[0].contains(&secret_b64));
    if backend == Backend::Sqlite {
        // Nowhere in the database files either.
        let dir = &app.data_dir;
        let bytes = [
            std::fs::read(dir.join("appstrate.db")).unwrap(),
            std::fs::read(dir.join("appstrate.db-wal")).unwrap_or_default(),
        ]
        .concat();
        assert!(!bytes
            .windows(secret_b64.len())
            .any(|w| w == secret_b64.as_bytes()));
    }

    // The replay still answers the original body, secret included, to the caller that made it.
    let (s, again, replayed) = answer(create_hook(&app, &app.api_key)).await;
    assert_eq!((s, replayed), (201, true));
    assert_eq!(again["secret"], secret.as_str());
}
