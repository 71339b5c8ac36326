//! Application context, credentials, scopes and impersonation (§7).

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use test_support::{spawn_app_on, Backend};

async fn body(r: reqwest::Response) -> Value {
    r.json().await.unwrap()
}

on_both_backends!(application_context_rules);
async fn application_context_rules(backend: Backend) {
    let app = test_support::require!(spawn_app_on(backend, &[]).await);
    // Admin token without X-App-Id on an app-scoped route.
    let r = app
        .client
        .get(app.url("/api/end-users"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b = body(r).await;
    assert_eq!(b["code"], "invalid_request");
    assert_eq!(b["param"], "X-App-Id");

    // The alias works.
    let r = app
        .client
        .get(app.url("/api/end-users"))
        .bearer_auth(&app.admin_token)
        .header("X-Application-Id", &app.app_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Both headers, different values.
    let r = app
        .admin(Method::GET, "/api/end-users")
        .header("X-Application-Id", "app_other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(body(r).await["param"], "X-App-Id");

    // Admin token, unknown or malformed application → 404.
    for bad in ["app_00000000-0000-0000-0000-000000000000", "not-an-id"] {
        let r = app
            .client
            .get(app.url("/api/end-users"))
            .bearer_auth(&app.admin_token)
            .header("X-App-Id", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(body(r).await["code"], "not_found");
    }

    // API key without a header uses its pinned application; with the same header it is fine.
    let r = app.key(Method::GET, "/api/end-users").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .key(Method::GET, "/api/end-users")
        .header("X-App-Id", &app.app_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Another application of the org: the API key may not use it.
    let r = app
        .admin(Method::POST, "/api/applications")
        .json(&json!({"name": "Second"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let second = body(r).await;
    let second_id = second["id"].as_str().unwrap();
    assert!(second_id.starts_with("app_"));
    assert_eq!(second["isDefault"], false);
    let r = app
        .key(Method::GET, "/api/end-users")
        .header("X-App-Id", second_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let b = body(r).await;
    assert_eq!(b["code"], "forbidden");
    assert_eq!(
        b["detail"],
        "Application header does not match the API key's application"
    );

    // An end-user created in the second application is not visible from the first.
    let r = app
        .client
        .post(app.url("/api/end-users"))
        .bearer_auth(&app.admin_token)
        .header("X-App-Id", second_id)
        .json(&json!({"name": "Other"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let other_eu = body(r).await["id"].as_str().unwrap().to_string();
    let r = app
        .key(Method::GET, &format!("/api/end-users/{other_eu}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Application list: the admin sees both, the API key only its own.
    let all = body(
        app.admin(Method::GET, "/api/applications")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    let mine = body(
        app.key(Method::GET, "/api/applications")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 1);
    assert_eq!(mine["data"][0]["id"], app.app_id.as_str());
    let r = app
        .key(Method::GET, &format!("/api/applications/{second_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The default application cannot be deleted; the second one can, and its end-users go with it.
    let r = app
        .admin(Method::DELETE, &format!("/api/applications/{}", app.app_id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(body(r).await["code"], "default_application");
    let r = app
        .admin(Method::PATCH, &format!("/api/applications/{second_id}"))
        .json(&json!({"name": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(body(r).await["name"], "Renamed");
    let r = app
        .admin(Method::DELETE, &format!("/api/applications/{second_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .admin(Method::GET, &format!("/api/applications/{second_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

on_both_backends!(credentials_revocation_expiry_and_scopes);
async fn credentials_revocation_expiry_and_scopes(backend: Backend) {
    let app = test_support::require!(spawn_app_on(backend, &[]).await);
    // No credentials; an unknown key.
    let r = app
        .client
        .get(app.url("/api/end-users"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(body(r).await["detail"], "Invalid or missing credentials");
    let r = app
        .client
        .get(app.url("/api/end-users"))
        .bearer_auth(format!("ask_{}", "0".repeat(48)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    assert_eq!(body(r).await["detail"], "Invalid or expired API key");

    // A key with one scope.
    let r = app
        .admin(Method::POST, "/api/api-keys")
        .json(&json!({"name": "reader", "scopes": ["end-users:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created = body(r).await;
    let key = created["key"].as_str().unwrap().to_string();
    let key_id = created["id"].as_str().unwrap().to_string();
    assert!(regex_like_key(&key));
    assert_eq!(created["keyPrefix"], &key[..8]);
    assert_eq!(created["scopes"], json!(["end-users:read"]));

    let as_reader = |m: Method, p: &str| app.client.request(m, app.url(p)).bearer_auth(&key);
    assert_eq!(
        as_reader(Method::GET, "/api/end-users")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = as_reader(Method::POST, "/api/end-users")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        body(r).await["detail"],
        "Insufficient permissions: end-users:write required"
    );

    // API keys cannot reach admin-only routes.
    let r = app
        .key(Method::POST, "/api/api-keys")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = app
        .key(Method::POST, "/api/applications")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The list never shows the secret; revocation takes effect at once; a second revoke is 404.
    let list = body(
        app.admin(Method::GET, "/api/api-keys")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(!list.to_string().contains(&key));
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let r = app
        .admin(Method::DELETE, &format!("/api/api-keys/{key_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        as_reader(Method::GET, "/api/end-users")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = app
        .admin(Method::DELETE, &format!("/api/api-keys/{key_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let list = body(
        app.admin(Method::GET, "/api/api-keys")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    // Validation of scopes and expiry.
    let r = app
        .admin(Method::POST, "/api/api-keys")
        .json(&json!({"name": "bad", "scopes": ["runs:read", "nope"], "expiresAt": "2000-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b = body(r).await;
    let fields: Vec<&str> = b["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["scopes[1]", "expiresAt"]);

    // An expired key is refused: create one expiring in a second.
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(3000)).to_rfc3339();
    let r = app
        .admin(Method::POST, "/api/api-keys")
        .json(&json!({"name": "short", "expiresAt": soon}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let b = body(r).await;
    assert_eq!(b["scopes"].as_array().unwrap().len(), 12);
    let short = b["key"].as_str().unwrap().to_string();
    let get = || {
        app.client
            .get(app.url("/api/end-users"))
            .bearer_auth(&short)
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    assert_eq!(get().await.unwrap().status(), 401);

    let scopes = body(
        app.admin(Method::GET, "/api/api-keys/available-scopes")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(scopes["scopes"].as_array().unwrap().len(), 12);
}

/// A 401 for a rejected credential: problem+json `unauthorized` with the §7.1 detail and challenge.
async fn assert_invalid_token(r: reqwest::Response, what: &str) {
    assert_eq!(r.status(), 401, "{what}");
    assert_eq!(
        r.headers()["www-authenticate"],
        r#"Bearer error="invalid_token""#,
        "{what}"
    );
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    let rid = r.headers()["request-id"].to_str().unwrap().to_string();
    let b = body(r).await;
    assert_eq!(b["code"], "unauthorized", "{what}");
    assert_eq!(b["detail"], "Invalid or expired API key", "{what}");
    assert_eq!(b["requestId"], rid.as_str(), "{what}");
}

on_both_backends!(revoked_and_expired_credentials_get_401_problems);
async fn revoked_and_expired_credentials_get_401_problems(backend: Backend) {
    use appstrate::crypto::{new_token, sha256_hex};
    let app = test_support::require!(spawn_app_on(backend, &[]).await);
    let db = app.state().infra.db.clone();

    // A key that expired an hour ago (the API refuses past dates, so it is stored directly).
    let expired = new_token("ask_");
    db.insert_api_key(&appstrate::infra::database::NewApiKey {
        id: uuid::Uuid::new_v4().to_string(),
        org_id: app.org_id.clone(),
        application_id: app.app_id.clone(),
        name: "expired".into(),
        key_hash: sha256_hex(&expired),
        key_prefix: expired[..8].to_string(),
        scopes: vec!["end-users:read".into()],
        expires_at: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
    })
    .await
    .unwrap();
    let r = app
        .client
        .get(app.url("/api/end-users"))
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_invalid_token(r, "expired API key").await;

    // A revoked key: it worked just before its revocation.
    let created = body(
        app.admin(Method::POST, "/api/api-keys")
            .json(&json!({"name": "soon revoked"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let key = created["key"].as_str().unwrap().to_string();
    let call = |token: String| {
        app.client
            .get(app.url("/api/end-users"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(call(key.clone()).await.unwrap().status(), 200);
    let r = app
        .admin(
            Method::DELETE,
            &format!("/api/api-keys/{}", created["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_invalid_token(call(key).await.unwrap(), "revoked API key").await;

    // A revoked admin token (as `appstrate admin-token revoke` does); another token of the org still works.
    let before: Vec<String> = db
        .list_admin_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    let second = appstrate::cli::mint_admin_token(db.as_ref(), &app.org_id)
        .await
        .unwrap();
    let admin_call = |token: String| {
        app.client
            .get(app.url("/api/applications"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(admin_call(second.clone()).await.unwrap().status(), 200);
    let id = db
        .list_admin_tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| !before.contains(&t.id))
        .unwrap()
        .id;
    db.revoke_admin_token(&id).await.unwrap();
    assert_invalid_token(admin_call(second).await.unwrap(), "revoked admin token").await;
    assert_eq!(
        admin_call(app.admin_token.clone()).await.unwrap().status(),
        200
    );
    // An unknown admin token is refused the same way.
    assert_invalid_token(
        admin_call(format!("adm_{}", "0".repeat(48))).await.unwrap(),
        "unknown admin token",
    )
    .await;
}

fn regex_like_key(k: &str) -> bool {
    k.len() == 52
        && k.starts_with("ask_")
        && k[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

on_both_backends!(impersonation_header_rules);
async fn impersonation_header_rules(backend: Backend) {
    let app = test_support::require!(spawn_app_on(backend, &[]).await);
    let eu = body(
        app.key(Method::POST, "/api/end-users")
            .json(&json!({"name": "Ann"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let eu_id = eu["id"].as_str().unwrap();
    assert!(eu_id.starts_with("eu_"));
    // Not honoured on end-user routes.
    let r = app
        .key(Method::GET, "/api/end-users")
        .header("Appstrate-User", eu_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(body(r).await["code"], "header_not_allowed");
    // Bad prefix.
    let r = app
        .key(Method::GET, "/api/end-users")
        .header("Appstrate-User", "user_1")
        .send()
        .await
        .unwrap();
    assert_eq!(body(r).await["code"], "invalid_end_user_id");
    // With the admin token.
    let r = app
        .admin(Method::GET, "/api/applications")
        .header("Appstrate-User", eu_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(body(r).await["code"], "header_not_allowed");
}

on_both_backends!(end_user_crud_conflicts_and_persistence);
async fn end_user_crud_conflicts_and_persistence(backend: Backend) {
    let mut app = test_support::require!(spawn_app_on(backend, &[]).await);
    let r = app
        .key(Method::POST, "/api/end-users")
        .json(&json!({"name": "Ann", "email": "ann@example.com", "externalId": "ext-1", "metadata": {"plan": "pro", "seats": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let ann = body(r).await;
    assert_eq!(ann["object"], "end_user");
    assert_eq!(ann["applicationId"], app.app_id.as_str());
    assert_eq!(ann["metadata"]["seats"], 3);
    let id = ann["id"].as_str().unwrap().to_string();
    assert!(ann["createdAt"].as_str().unwrap().ends_with('Z'));

    for (payload, code) in [
        (json!({"externalId": "ext-1"}), "external_id_taken"),
        (json!({"email": "ann@example.com"}), "email_taken"),
    ] {
        let r = app
            .key(Method::POST, "/api/end-users")
            .json(&payload)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        assert_eq!(body(r).await["code"], code);
    }

    // Filters, update with null clearing a field.
    let found = body(
        app.key(Method::GET, "/api/end-users?externalId=ext-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    let r = app
        .key(Method::PATCH, &format!("/api/end-users/{id}"))
        .json(&json!({"email": null, "name": "Ann B"}))
        .send()
        .await
        .unwrap();
    let updated = body(r).await;
    assert_eq!(updated["email"], Value::Null);
    assert_eq!(updated["name"], "Ann B");
    assert_eq!(updated["externalId"], "ext-1");

    // Data survives a restart of the server on the same data directory.
    app.restart().await;
    let again = body(
        app.key(Method::GET, &format!("/api/end-users/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(again["name"], "Ann B");

    let r = app
        .key(Method::DELETE, &format!("/api/end-users/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .key(Method::GET, &format!("/api/end-users/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .key(Method::DELETE, &format!("/api/end-users/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
