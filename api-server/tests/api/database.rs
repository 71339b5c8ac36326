//! The `Database` conformance suite (SPEC §4.3): every case is written once against `Arc<dyn Database>`
//! and instantiated for SQLite (`database::sqlite::*`) and PostgreSQL (`database::postgres::*`). Plus the
//! schema-equivalence test, concurrent migrations on PostgreSQL, and the boot error for an unreachable
//! `DATABASE_URL`.

use std::sync::Arc;
use std::time::Duration;

use appstrate::infra::database::runs::{
    EventEffects, Finalization, InsertRunError, NewLog, RunFilter, RunRow,
};
use appstrate::infra::database::schedules::{ScheduleFilter, ScheduleRow};
use appstrate::infra::database::schema::{introspect_postgres, introspect_sqlite};
use appstrate::infra::database::{
    connect_postgres, connect_sqlite, now, ConnectionRow, Database, DbError, EndUserFilter,
    EndUserPatch, EndUserRow, IdempotencyScope, IdempotencyState, NewApiKey, NewPackageVersion,
    PackageFilter, Page, Timestamp,
};
use serde_json::{json, Value};
use sqlx::types::Json;
use test_support::services;

async fn sqlite_db() -> (Arc<dyn Database>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = connect_sqlite(&dir.path().join("conformance.db"))
        .await
        .unwrap();
    db.migrate().await.unwrap();
    (Arc::new(db), dir)
}

async fn postgres_db() -> Option<Arc<dyn Database>> {
    let url = services::postgres_database().await?;
    let db = connect_postgres(&url).await.unwrap();
    db.migrate().await.unwrap();
    Some(Arc::new(db))
}

/// Generates `sqlite::<case>` and `postgres::<case>` tests for each case function.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let (db, _dir) = super::sqlite_db().await;
                    super::$case(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = test_support::require!(super::postgres_db().await);
                    super::$case(db).await;
                }
            )*
        }
    };
}

conformance!(
    organizations_and_admin_tokens,
    applications_and_pagination,
    api_keys,
    end_users_and_uniqueness,
    idempotency_records,
    packages_versions_and_visibility,
    connections_with_and_without_end_user,
    runs_numbering_limits_and_single_terminal_write,
    run_events_are_compare_and_set,
    values_round_trip_exactly,
    schedules_crud_and_firing,
    deleting_an_application_cascades,
);

fn page(limit: u32, after: Option<&str>) -> Page {
    Page {
        limit,
        starting_after: after.map(str::to_string),
    }
}

async fn org(db: &Arc<dyn Database>) -> (String, String) {
    let b = db.ensure_org("Acme, Inc.", "Main").await.unwrap();
    (b.org.id, b.application.id)
}

async fn organizations_and_admin_tokens(db: Arc<dyn Database>) {
    db.ping().await.unwrap();
    let first = db.ensure_org("Acme, Inc.", "Main").await.unwrap();
    assert!(first.org_created);
    assert_eq!(first.org.slug, "acme-inc");
    assert!(first.application.is_default);
    assert!(first.application.id.starts_with("app_"));
    let again = db.ensure_org("Acme, Inc.", "Other").await.unwrap();
    assert!(!again.org_created);
    assert_eq!(again.org.id, first.org.id);
    assert_eq!(again.application.id, first.application.id);
    // Same slug base, another name: a suffixed slug.
    let other = db.ensure_org("acme inc", "Main").await.unwrap();
    assert!(other.org_created);
    assert_ne!(other.org.slug, "acme-inc");
    assert!(other.org.slug.starts_with("acme-inc-"));
    assert_eq!(
        db.find_org_by_name("Acme, Inc.").await.unwrap().unwrap().id,
        first.org.id
    );
    assert!(db.find_org_by_name("nobody").await.unwrap().is_none());

    db.insert_admin_token("tok-1", &first.org.id, "hash-1", "adm_1234")
        .await
        .unwrap();
    assert!(matches!(
        db.insert_admin_token("tok-2", &first.org.id, "hash-1", "adm_1234")
            .await,
        Err(DbError::Conflict(_))
    ));
    let t = db.find_admin_token("hash-1").await.unwrap().unwrap();
    assert_eq!(t.token_prefix, "adm_1234");
    assert!(t.last_used_at.is_none());
    let at = now();
    db.touch_admin_token("tok-1", at).await.unwrap();
    let listed = db.list_admin_tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_used_at, Some(at));
    db.revoke_admin_token("tok-1").await.unwrap();
    assert!(db.find_admin_token("hash-1").await.unwrap().is_none());
    assert!(matches!(
        db.revoke_admin_token("tok-1").await,
        Err(DbError::NotFound)
    ));
    assert!(db.list_admin_tokens().await.unwrap()[0]
        .revoked_at
        .is_some());
}

async fn applications_and_pagination(db: Arc<dyn Database>) {
    let (org_id, default_app) = org(&db).await;
    let mut ids = vec![default_app.clone()];
    for i in 0..4 {
        ids.push(
            db.insert_application(&org_id, &format!("app {i}"), false)
                .await
                .unwrap()
                .id,
        );
    }
    // Newest first, two per page, cursor by id; the pages cover every application exactly once.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let p = db
            .list_applications(&org_id, None, &page(2, after.as_deref()))
            .await
            .unwrap();
        assert!(p.items.len() <= 2);
        seen.extend(p.items.iter().map(|a| a.id.clone()));
        if !p.has_more {
            break;
        }
        after = Some(p.items.last().unwrap().id.clone());
    }
    assert_eq!(seen.len(), 5);
    let mut expected = ids.clone();
    expected.reverse();
    let mut sorted_seen = seen.clone();
    sorted_seen.sort();
    let mut sorted_ids = ids.clone();
    sorted_ids.sort();
    assert_eq!(sorted_seen, sorted_ids);
    assert_eq!(seen[4], default_app, "the oldest comes last");
    assert!(matches!(
        db.list_applications(&org_id, None, &page(2, Some("app_unknown")))
            .await,
        Err(DbError::UnknownCursor)
    ));
    let only = db
        .list_applications(&org_id, Some(&ids[2]), &page(10, None))
        .await
        .unwrap();
    assert_eq!(only.items.len(), 1);

    let renamed = db
        .rename_application(&org_id, &ids[1], "renamed")
        .await
        .unwrap();
    assert_eq!(renamed.name, "renamed");
    assert!(renamed.updated_at >= renamed.created_at);
    assert!(matches!(
        db.rename_application("other-org", &ids[1], "x").await,
        Err(DbError::NotFound)
    ));
    assert!(db
        .get_application("other-org", &ids[1])
        .await
        .unwrap()
        .is_none());
    db.delete_application(&org_id, &ids[1]).await.unwrap();
    assert!(db
        .get_application(&org_id, &ids[1])
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        db.delete_application(&org_id, &ids[1]).await,
        Err(DbError::NotFound)
    ));
}

fn new_key(org_id: &str, app_id: &str, id: &str, hash: &str) -> NewApiKey {
    NewApiKey {
        id: id.into(),
        org_id: org_id.into(),
        application_id: app_id.into(),
        name: format!("key {id}"),
        key_hash: hash.into(),
        key_prefix: "ask_abcd".into(),
        scopes: vec!["runs:read".into(), "runs:write".into()],
        expires_at: Some(now() + chrono::Duration::days(30)),
    }
}

async fn api_keys(db: Arc<dyn Database>) {
    let (org_id, app_id) = org(&db).await;
    let k = db
        .insert_api_key(&new_key(&org_id, &app_id, "k1", "h1"))
        .await
        .unwrap();
    assert_eq!(k.scopes.0, ["runs:read", "runs:write"]);
    assert!(k.expires_at.is_some() && k.revoked_at.is_none());
    db.insert_api_key(&new_key(&org_id, &app_id, "k2", "h2"))
        .await
        .unwrap();
    assert!(matches!(
        db.insert_api_key(&new_key(&org_id, &app_id, "k3", "h1"))
            .await,
        Err(DbError::Conflict(_))
    ));
    let (key, app) = db
        .find_api_key_with_application("h1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(key.id, "k1");
    assert_eq!(app.id, app_id);
    assert!(app.is_default);
    assert_eq!(app.name, "Main");
    let at = now();
    db.touch_api_key("k1", at).await.unwrap();
    assert_eq!(
        db.find_api_key("h1").await.unwrap().unwrap().last_used_at,
        Some(at)
    );
    assert_eq!(
        db.list_api_keys(&org_id, &app_id, &page(10, None))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    db.revoke_api_key(&org_id, &app_id, "k1").await.unwrap();
    assert!(matches!(
        db.revoke_api_key(&org_id, &app_id, "k1").await,
        Err(DbError::NotFound)
    ));
    let listed = db
        .list_api_keys(&org_id, &app_id, &page(10, None))
        .await
        .unwrap();
    assert_eq!(
        listed
            .items
            .iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>(),
        ["k2"]
    );
    // Revoked keys are still found by hash (the caller answers 401) and by id (schedule actors).
    assert!(db
        .find_api_key("h1")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    assert!(db.get_api_key_by_id("k1").await.unwrap().is_some());
}

fn end_user(
    org_id: &str,
    app_id: &str,
    id: &str,
    email: Option<&str>,
    ext: Option<&str>,
) -> EndUserRow {
    let at = now();
    EndUserRow {
        id: id.into(),
        org_id: org_id.into(),
        application_id: app_id.into(),
        name: Some("Ada".into()),
        email: email.map(str::to_string),
        external_id: ext.map(str::to_string),
        metadata: Json(json!({"plan": "pro", "n": 3})),
        created_at: at,
        updated_at: at,
    }
}

async fn end_users_and_uniqueness(db: Arc<dyn Database>) {
    let (org_id, app_id) = org(&db).await;
    let other_app = db
        .insert_application(&org_id, "other", false)
        .await
        .unwrap()
        .id;
    let a = db
        .insert_end_user(&end_user(
            &org_id,
            &app_id,
            "eu_a",
            Some("a@x.io"),
            Some("ext-a"),
        ))
        .await
        .unwrap();
    assert_eq!(a.metadata.0, json!({"plan": "pro", "n": 3}));
    // Unique per application when not null.
    for dup in [
        end_user(&org_id, &app_id, "eu_b", Some("a@x.io"), None),
        end_user(&org_id, &app_id, "eu_c", None, Some("ext-a")),
    ] {
        assert!(matches!(
            db.insert_end_user(&dup).await,
            Err(DbError::Conflict(_))
        ));
    }
    // NULLs never collide, and another application may reuse both.
    db.insert_end_user(&end_user(&org_id, &app_id, "eu_d", None, None))
        .await
        .unwrap();
    db.insert_end_user(&end_user(&org_id, &app_id, "eu_e", None, None))
        .await
        .unwrap();
    db.insert_end_user(&end_user(
        &org_id,
        &other_app,
        "eu_f",
        Some("a@x.io"),
        Some("ext-a"),
    ))
    .await
    .unwrap();

    let filtered = db
        .list_end_users(
            &app_id,
            &EndUserFilter {
                email: Some("a@x.io".into()),
                external_id: None,
            },
            &page(10, None),
        )
        .await
        .unwrap();
    assert_eq!(filtered.items.len(), 1);
    assert_eq!(filtered.items[0].id, "eu_a");
    assert_eq!(
        db.list_end_users(&app_id, &EndUserFilter::default(), &page(10, None))
            .await
            .unwrap()
            .items
            .len(),
        3
    );

    let patched = db
        .update_end_user(
            &app_id,
            "eu_a",
            &EndUserPatch {
                name: Some(None),
                email: Some(Some("new@x.io".into())),
                external_id: None,
                metadata: Some(json!({"k": [1, 2]})),
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.name, None);
    assert_eq!(patched.email.as_deref(), Some("new@x.io"));
    assert_eq!(patched.external_id.as_deref(), Some("ext-a"));
    assert_eq!(patched.metadata.0, json!({"k": [1, 2]}));
    assert!(matches!(
        db.update_end_user(
            &app_id,
            "eu_d",
            &EndUserPatch {
                email: Some(Some("new@x.io".into())),
                ..Default::default()
            }
        )
        .await,
        Err(DbError::Conflict(_))
    ));
    assert!(matches!(
        db.update_end_user(&other_app, "eu_a", &EndUserPatch::default())
            .await,
        Err(DbError::NotFound)
    ));
    assert!(db.get_end_user(&other_app, "eu_a").await.unwrap().is_none());
    db.delete_end_user(&app_id, "eu_a").await.unwrap();
    assert!(db.get_end_user(&app_id, "eu_a").await.unwrap().is_none());
    assert!(matches!(
        db.delete_end_user(&app_id, "eu_a").await,
        Err(DbError::NotFound)
    ));
}

async fn idempotency_records(db: Arc<dyn Database>) {
    let (org_id, app_id) = org(&db).await;
    let scope = |credential: &str, end_user: &str, key: &str| IdempotencyScope {
        org_id: org_id.clone(),
        application_id: app_id.clone(),
        credential: credential.into(),
        end_user_id: end_user.into(),
        key: key.into(),
    };
    let k = scope("apikey:1", "", "k");
    assert_eq!(
        db.idempotency_begin(&k, "body-1").await.unwrap(),
        IdempotencyState::Acquired
    );
    assert_eq!(
        db.idempotency_begin(&k, "body-2").await.unwrap(),
        IdempotencyState::InProgress {
            body_hash: "body-1".into()
        }
    );
    db.idempotency_complete(&k, 201, "v1:k:sealed")
        .await
        .unwrap();
    assert_eq!(
        db.idempotency_begin(&k, "body-1").await.unwrap(),
        IdempotencyState::Completed {
            body_hash: "body-1".into(),
            status: 201,
            body: "v1:k:sealed".into()
        }
    );
    // The same key from another credential, or for another end-user of the same key, is another record.
    for other in [scope("apikey:2", "", "k"), scope("apikey:1", "eu_1", "k")] {
        assert_eq!(
            db.idempotency_begin(&other, "body-1").await.unwrap(),
            IdempotencyState::Acquired,
            "{other:?}"
        );
    }
    // Another key, released after a failure: free again.
    let k2 = scope("apikey:1", "", "k2");
    assert_eq!(
        db.idempotency_begin(&k2, "b").await.unwrap(),
        IdempotencyState::Acquired
    );
    db.idempotency_release(&k2).await.unwrap();
    assert_eq!(
        db.idempotency_begin(&k2, "b").await.unwrap(),
        IdempotencyState::Acquired
    );
    // The sweep deletes records once they expire (24 h), whether or not their key comes back.
    assert_eq!(db.idempotency_sweep(now()).await.unwrap(), 0);
    assert_eq!(
        db.idempotency_sweep(now() + chrono::Duration::hours(25))
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        db.idempotency_begin(&k, "body-2").await.unwrap(),
        IdempotencyState::Acquired
    );
}

fn version(org_id: Option<&str>, id: &str, v: &str, is_latest: bool) -> NewPackageVersion {
    let (scope, name) = id.split_once('/').unwrap();
    NewPackageVersion {
        org_id: org_id.map(str::to_string),
        package_id: id.into(),
        scope: scope.into(),
        name: name.into(),
        kind: "agent".into(),
        source: if org_id.is_some() { "local" } else { "system" }.into(),
        version: v.into(),
        integrity: format!("sha256-{v}"),
        size: 1234,
        manifest: json!({"name": id, "version": v, "nested": {"a": [1, true, null]}}),
        storage_key: format!("packages/{}/{id}/{v}.afps", org_id.unwrap_or("_system")),
        display_name: Some(format!("{id} {v}")),
        description: None,
        is_latest,
    }
}

async fn packages_versions_and_visibility(db: Arc<dyn Database>) {
    let (org_id, app_id) = org(&db).await;
    let other_app = db
        .insert_application(&org_id, "other", false)
        .await
        .unwrap()
        .id;
    let (sys, _) = db
        .insert_package_version(&version(None, "@appstrate/github", "1.0.0", true))
        .await
        .unwrap();
    assert_eq!(sys.org_id, None);
    let (p, v1) = db
        .insert_package_version(&version(Some(&org_id), "@acme/agent", "1.0.0", true))
        .await
        .unwrap();
    let (p2, v2) = db
        .insert_package_version(&version(Some(&org_id), "@acme/agent", "1.1.0", true))
        .await
        .unwrap();
    assert_eq!(p2.id, p.id);
    assert_eq!(p2.latest_version, "1.1.0");
    assert!(v2.id > v1.id, "serial ids increase");
    // An older version imported later does not move latest.
    let (p3, _) = db
        .insert_package_version(&version(Some(&org_id), "@acme/agent", "0.9.0", false))
        .await
        .unwrap();
    assert_eq!(p3.latest_version, "1.1.0");
    assert!(matches!(
        db.insert_package_version(&version(Some(&org_id), "@acme/agent", "1.0.0", false))
            .await,
        Err(DbError::Conflict(_))
    ));
    // The system id stays unique too.
    let dup = db
        .insert_package_version(&version(None, "@appstrate/github", "1.0.0", true))
        .await;
    assert!(matches!(dup, Err(DbError::Conflict(_))), "{dup:?}");
    assert_eq!(
        db.get_package_version(&p.id, "1.0.0")
            .await
            .unwrap()
            .unwrap()
            .manifest
            .0["nested"],
        json!({"a": [1, true, null]})
    );
    assert_eq!(db.list_package_versions(&p.id).await.unwrap().len(), 3);

    // Not installed: only the system package is visible.
    assert!(db
        .find_visible_package(&app_id, "@acme/agent")
        .await
        .unwrap()
        .is_none());
    db.install_package(&app_id, &p.id).await.unwrap();
    db.install_package(&app_id, &p.id).await.unwrap();
    db.install_package(&other_app, &p.id).await.unwrap();
    assert_eq!(
        db.find_visible_package(&app_id, "@acme/agent")
            .await
            .unwrap()
            .unwrap()
            .id,
        p.id
    );
    assert!(db
        .find_system_package("@appstrate/github")
        .await
        .unwrap()
        .is_some());
    assert!(db
        .find_org_package(&org_id, "@acme/agent")
        .await
        .unwrap()
        .is_some());
    let listed = db
        .list_visible_packages(&app_id, &PackageFilter::default(), &page(1, None))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(listed.has_more);
    assert_eq!(
        listed.items[0].package.package_id, "@acme/agent",
        "newest first"
    );
    assert_eq!(listed.items[0].manifest.0["version"], "1.1.0");
    let next = db
        .list_visible_packages(
            &app_id,
            &PackageFilter::default(),
            &page(1, Some("@acme/agent")),
        )
        .await
        .unwrap();
    assert_eq!(next.items[0].package.package_id, "@appstrate/github");
    assert!(!next.has_more);
    let skills = db
        .list_visible_packages(
            &app_id,
            &PackageFilter {
                kind: Some("skill".into()),
            },
            &page(10, None),
        )
        .await
        .unwrap();
    assert!(skills.items.is_empty());

    // Removing from one application keeps the package for the other; from the last one deletes it.
    assert_eq!(db.remove_package(&app_id, &p).await.unwrap(), None);
    assert!(matches!(
        db.remove_package(&app_id, &p).await,
        Err(DbError::NotFound)
    ));
    let mut keys = db.remove_package(&other_app, &p).await.unwrap().unwrap();
    keys.sort();
    assert_eq!(keys.len(), 3);
    assert!(keys[0].starts_with(&format!("packages/{org_id}/@acme/agent/")));
    assert!(db
        .find_org_package(&org_id, "@acme/agent")
        .await
        .unwrap()
        .is_none());
}

fn connection(org_id: &str, app_id: &str, eu: Option<&str>, cred: &str) -> ConnectionRow {
    let at = now();
    ConnectionRow {
        id: uuid::Uuid::new_v4().to_string(),
        org_id: org_id.into(),
        application_id: app_id.into(),
        end_user_id: eu.map(str::to_string),
        package_id: "@appstrate/github".into(),
        auth_key: "token".into(),
        credentials_encrypted: cred.into(),
        fields: Json(vec!["token".into()]),
        created_at: at,
        updated_at: at,
    }
}

async fn connections_with_and_without_end_user(db: Arc<dyn Database>) {
    let (org_id, app_id) = org(&db).await;
    db.insert_end_user(&end_user(&org_id, &app_id, "eu_1", None, None))
        .await
        .unwrap();
    let app_conn = db
        .upsert_connection(&connection(&org_id, &app_id, None, "v1:k1:AAA"))
        .await
        .unwrap();
    let eu_conn = db
        .upsert_connection(&connection(&org_id, &app_id, Some("eu_1"), "v1:k1:BBB"))
        .await
        .unwrap();
    assert_ne!(app_conn.id, eu_conn.id);
    // Upserting the application's connection again (end_user_id NULL) updates it in place.
    let again = db
        .upsert_connection(&connection(&org_id, &app_id, None, "v1:k1:CCC"))
        .await
        .unwrap();
    assert_eq!(again.id, app_conn.id);
    assert_eq!(again.created_at, app_conn.created_at);
    assert_eq!(again.credentials_encrypted, "v1:k1:CCC");
    let got = db
        .get_connection(&app_id, None, "@appstrate/github", "token")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.credentials_encrypted, "v1:k1:CCC");
    assert_eq!(got.fields.0, ["token"]);
    assert_eq!(
        db.get_connection(&app_id, Some("eu_1"), "@appstrate/github", "token")
            .await
            .unwrap()
            .unwrap()
            .credentials_encrypted,
        "v1:k1:BBB"
    );
    // Deleting the end-user deletes its connection (foreign key cascade).
    db.delete_end_user(&app_id, "eu_1").await.unwrap();
    assert!(db
        .get_connection(&app_id, Some("eu_1"), "@appstrate/github", "token")
        .await
        .unwrap()
        .is_none());
    db.delete_connection(&app_id, None, "@appstrate/github", "token")
        .await
        .unwrap();
    assert!(matches!(
        db.delete_connection(&app_id, None, "@appstrate/github", "token")
            .await,
        Err(DbError::NotFound)
    ));
}

fn run(org_id: &str, app_id: &str, id: &str) -> RunRow {
    let at = now();
    RunRow {
        id: id.into(),
        org_id: org_id.into(),
        application_id: app_id.into(),
        package_id: Some("@acme/agent".into()),
        end_user_id: None,
        api_key_id: Some("k1".into()),
        schedule_id: None,
        kind: "package".into(),
        agent_scope: "@acme".into(),
        agent_name: "agent".into(),
        version_ref: Some("1.0.0".into()),
        run_number: 0,
        status: "pending".into(),
        input: Json(json!({"topic": "Rust", "n": 1.5})),
        result: None,
        error: None,
        model_label: Some("fake".into()),
        timeout_seconds: 300,
        started_at: None,
        completed_at: None,
        duration: None,
        created_at: at,
        token_usage: Json(json!({})),
        cost: None,
        cost_pricing_status: "unpriced".into(),
        sink_secret_encrypted: "v1:k1:secret".into(),
        sink_closed_at: None,
        last_event_sequence: 0,
        last_heartbeat_at: Some(at),
        first_event_at: None,
        boot_deadline_at: Some(at + chrono::Duration::seconds(300)),
        scheduled_for: None,
        inline_manifest: None,
        inline_prompt: None,
        output_schema: Some(Json(json!({"type": "object"}))),
        last_output: None,
    }
}

fn finalization(status: &str) -> Finalization {
    Finalization {
        status: status.into(),
        result: Some(json!({"output": {"ok": true}})),
        error: None,
        completed_at: now(),
        duration_ms: Some(1234),
        token_usage: json!({"input_tokens": 10, "output_tokens": 5}),
        cost: Some(0.000123),
        cost_pricing_status: "priced".into(),
    }
}

async fn runs_numbering_limits_and_single_terminal_write(db: Arc<dyn Database>) {
    let (org_id, app_id) = org(&db).await;
    let r1 = db
        .insert_run(&run(&org_id, &app_id, "run_1"), 2)
        .await
        .unwrap();
    let r2 = db
        .insert_run(&run(&org_id, &app_id, "run_2"), 2)
        .await
        .unwrap();
    assert_eq!((r1.run_number, r2.run_number), (1, 2));
    assert!(matches!(
        db.insert_run(&run(&org_id, &app_id, "run_3"), 2).await,
        Err(InsertRunError::ConcurrencyExceeded)
    ));
    assert_eq!(db.count_open_runs(&org_id).await.unwrap(), 2);
    assert_eq!(
        db.open_runs_by_package(&app_id).await.unwrap(),
        vec![("@acme/agent".to_string(), 2)]
    );

    assert!(db.mark_running("run_1", now()).await.unwrap());
    assert!(!db.mark_running("run_1", now()).await.unwrap());
    // Many concurrent finalizers: exactly one wins.
    let mut tasks = Vec::new();
    for status in [
        "success",
        "failed",
        "cancelled",
        "timeout",
        "success",
        "failed",
    ] {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            db.finalize_run("run_1", &finalization(status))
                .await
                .unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        if t.await.unwrap() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
    let done = db.get_run("run_1").await.unwrap().unwrap();
    assert!(done.is_terminal());
    assert_eq!(done.duration, Some(1234));
    assert_eq!(done.cost, Some(0.000123));
    assert_eq!(done.sink_closed_at, done.completed_at);
    // A slot is free again; numbering continues.
    let r3 = db
        .insert_run(&run(&org_id, &app_id, "run_3"), 2)
        .await
        .unwrap();
    assert_eq!(r3.run_number, 3);

    // Concurrent inserts against the limit never overshoot it.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let db = db.clone();
        let row = run(&org_id, &app_id, &format!("run_c{i}"));
        tasks.push(tokio::spawn(async move { db.insert_run(&row, 5).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(InsertRunError::ConcurrencyExceeded) => {}
            Err(InsertRunError::Db(e)) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 3, "2 open + 3 = the limit of 5");
    assert_eq!(db.count_open_runs(&org_id).await.unwrap(), 5);
    assert_eq!(db.open_runs().await.unwrap().len(), 5);

    let filtered = db
        .list_runs(
            &app_id,
            &RunFilter {
                status: Some("pending".into()),
                ..Default::default()
            },
            &page(100, None),
        )
        .await
        .unwrap();
    assert_eq!(filtered.items.len(), 5);
    let mut numbers: Vec<i64> = db
        .list_runs(&app_id, &RunFilter::default(), &page(100, None))
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| r.run_number)
        .collect();
    numbers.sort();
    assert_eq!(
        numbers,
        (1..=6).collect::<Vec<i64>>(),
        "run numbers are unique"
    );
}

fn log(message: &str, level: &str) -> NewLog {
    NewLog {
        log_type: "progress".into(),
        level: level.into(),
        event: "progress".into(),
        message: message.into(),
        data: Some(json!({"step": message})),
    }
}

async fn run_events_are_compare_and_set(db: Arc<dyn Database>) {
    let (org_id, app_id) = org(&db).await;
    db.insert_run(&run(&org_id, &app_id, "run_e"), 10)
        .await
        .unwrap();
    let at = now();
    let effects = |m: &str| EventEffects {
        log: Some(log(m, "info")),
        ..Default::default()
    };
    let (won, row) = db
        .persist_event("run_e", 1, false, &effects("one"), at)
        .await
        .unwrap();
    assert!(won);
    let first = row.unwrap();
    // A gap or a replay loses, and writes no log.
    assert!(
        !db.persist_event("run_e", 3, false, &effects("three"), at)
            .await
            .unwrap()
            .0
    );
    assert!(
        !db.persist_event("run_e", 1, false, &effects("again"), at)
            .await
            .unwrap()
            .0
    );
    let (won, _) = db
        .persist_event(
            "run_e",
            2,
            false,
            &EventEffects {
                log: Some(log("two", "debug")),
                token_usage: Some(json!({"input_tokens": 7})),
                cost: Some(Some(0.5)),
                output: Some(json!({"partial": [1, 2]})),
                usage: None,
            },
            at,
        )
        .await
        .unwrap();
    assert!(won);
    // Draining at finalize accepts a gap.
    assert!(
        db.persist_event("run_e", 5, true, &effects("five"), at)
            .await
            .unwrap()
            .0
    );
    let r = db.get_run("run_e").await.unwrap().unwrap();
    assert_eq!(r.last_event_sequence, 5);
    assert_eq!(r.token_usage.0, json!({"input_tokens": 7}));
    assert_eq!(r.cost, Some(0.5));
    assert_eq!(r.last_output.unwrap().0, json!({"partial": [1, 2]}));
    assert_eq!(r.first_event_at, Some(at));

    let platform = db
        .insert_log("run_e", &log("platform", "warn"), now())
        .await
        .unwrap();
    assert!(platform.id > first.id);
    let all = db.list_logs("run_e", None, &[], 100).await.unwrap();
    assert_eq!(
        all.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(),
        ["one", "two", "five", "platform"]
    );
    let since = db
        .list_logs("run_e", Some(first.id), &[], 100)
        .await
        .unwrap();
    assert_eq!(since.len(), 3);
    let warn = db
        .list_logs("run_e", None, &["warn", "debug"], 100)
        .await
        .unwrap();
    assert_eq!(warn.len(), 2);
    assert_eq!(db.list_logs("run_e", None, &[], 2).await.unwrap().len(), 2);

    // After finalize the sink is closed: no event, no heartbeat moves it.
    assert!(db
        .finalize_run("run_e", &finalization("success"))
        .await
        .unwrap());
    assert!(
        !db.persist_event("run_e", 6, true, &effects("late"), now())
            .await
            .unwrap()
            .0
    );
    db.heartbeat("run_e", now()).await.unwrap();
    assert_eq!(
        db.get_run("run_e")
            .await
            .unwrap()
            .unwrap()
            .last_heartbeat_at,
        r.last_heartbeat_at
    );
}

async fn values_round_trip_exactly(db: Arc<dyn Database>) {
    let (org_id, app_id) = org(&db).await;
    let mut row = run(&org_id, &app_id, "run_v");
    let awkward = json!({
        "unicode": "héllo — 世界 \u{1F600}",
        "quotes": "a \"quoted\" 'string' \\ back",
        "big": 9007199254740991_i64,
        "neg": -0.25,
        "empty": {},
        "list": [null, false, 1e-7],
    });
    row.input = Json(awkward.clone());
    row.inline_prompt = Some("line 1\nline 2\ttab — ünïcödé".into());
    // A timestamp with microseconds, before 1970 and far in the future.
    let micro: Timestamp = "2024-02-29T23:59:59.123456Z".parse().unwrap();
    row.created_at = micro;
    row.scheduled_for = Some("1969-07-20T20:17:40Z".parse().unwrap());
    row.boot_deadline_at = Some("2999-12-31T23:59:59.999999Z".parse().unwrap());
    db.insert_run(&row, 10).await.unwrap();
    let back = db.get_run("run_v").await.unwrap().unwrap();
    assert_eq!(back.input.0, awkward);
    assert_eq!(back.inline_prompt, row.inline_prompt);
    assert_eq!(back.created_at, micro);
    assert_eq!(back.scheduled_for, row.scheduled_for);
    assert_eq!(back.boot_deadline_at, row.boot_deadline_at);
    assert_eq!(back.output_schema.unwrap().0, json!({"type": "object"}));
    assert!(back.result.is_none() && back.cost.is_none());
    let mut f = finalization("failed");
    f.result = None;
    f.error = Some("Agent process exited with code 1".into());
    f.cost = Some(f64::MAX);
    db.finalize_run("run_v", &f).await.unwrap();
    let back = db.get_run("run_v").await.unwrap().unwrap();
    assert_eq!(back.cost, Some(f64::MAX));
    assert!(back.result.is_none());
    assert_eq!(back.error, f.error);
    assert_eq!(back.completed_at, Some(f.completed_at));
}

fn schedule(org_id: &str, app_id: &str, id: &str, next: Option<Timestamp>) -> ScheduleRow {
    let at = now();
    ScheduleRow {
        id: id.into(),
        org_id: org_id.into(),
        application_id: app_id.into(),
        package_id: "@acme/agent".into(),
        end_user_id: None,
        api_key_id: Some("k1".into()),
        actor_type: "api_key".into(),
        name: Some("nightly".into()),
        enabled: true,
        cron_expression: "0 3 * * *".into(),
        timezone: "Europe/Paris".into(),
        input: Json(json!({"topic": "news"})),
        version_override: None,
        last_run_at: None,
        next_run_at: next,
        created_at: at,
        updated_at: at,
        admin_token_id: None,
        disabled_reason: None,
        user_id: None,
    }
}

async fn schedules_crud_and_firing(db: Arc<dyn Database>) {
    let (org_id, app_id) = org(&db).await;
    let next = now() + chrono::Duration::hours(1);
    let s = db
        .insert_schedule(&schedule(&org_id, &app_id, "sched_1", Some(next)))
        .await
        .unwrap();
    assert!(s.enabled);
    assert_eq!(s.next_run_at, Some(next));
    db.insert_schedule(&schedule(&org_id, &app_id, "sched_2", None))
        .await
        .unwrap();
    let mut edited = s.clone();
    edited.name = None;
    edited.cron_expression = "*/5 * * * *".into();
    edited.input = Json(json!({"topic": "sport"}));
    edited.enabled = false;
    edited.next_run_at = None;
    edited.updated_at = now();
    let e = db.update_schedule(&edited).await.unwrap();
    assert_eq!(e.name, None);
    assert!(!e.enabled);
    assert_eq!(e.input.0, json!({"topic": "sport"}));
    assert_eq!(e.created_at, s.created_at);
    let enabled: Vec<String> = db
        .enabled_schedules()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(enabled, ["sched_2"]);
    // A fire on a disabled schedule keeps no next run.
    let fired_at = now();
    db.mark_schedule_fired("sched_1", fired_at, Some(next))
        .await
        .unwrap();
    let got = db.get_schedule(&app_id, "sched_1").await.unwrap().unwrap();
    assert_eq!(got.last_run_at, Some(fired_at));
    assert_eq!(got.next_run_at, None);
    db.mark_schedule_fired("sched_2", fired_at, Some(next))
        .await
        .unwrap();
    assert_eq!(
        db.get_schedule(&app_id, "sched_2")
            .await
            .unwrap()
            .unwrap()
            .next_run_at,
        Some(next)
    );
    db.set_schedule_next_run("sched_2", None).await.unwrap();
    db.disable_schedule("sched_2", now(), "The schedule's API key was revoked")
        .await
        .unwrap();
    assert!(db.enabled_schedules().await.unwrap().is_empty());
    let disabled = db.get_schedule(&app_id, "sched_2").await.unwrap().unwrap();
    assert_eq!(
        disabled.disabled_reason.as_deref(),
        Some("The schedule's API key was revoked")
    );
    assert_eq!(
        db.list_schedules(
            &app_id,
            &ScheduleFilter {
                package_id: Some("@acme/agent".into()),
                end_user_id: None
            },
            &page(10, None)
        )
        .await
        .unwrap()
        .items
        .len(),
        2
    );

    // One run per (schedule, occurrence): a duplicate fire conflicts.
    let occurrence: Timestamp = "2030-01-01T03:00:00Z".parse().unwrap();
    let mut r = run(&org_id, &app_id, "run_s1");
    r.schedule_id = Some("sched_1".into());
    r.scheduled_for = Some(occurrence);
    db.insert_run(&r, 10).await.unwrap();
    let mut dup = r.clone();
    dup.id = "run_s2".into();
    assert!(matches!(
        db.insert_run(&dup, 10).await,
        Err(InsertRunError::Db(DbError::Conflict(_)))
    ));
    assert_eq!(
        db.list_runs(
            &app_id,
            &RunFilter {
                schedule_id: Some("sched_1".into()),
                ..Default::default()
            },
            &page(10, None)
        )
        .await
        .unwrap()
        .items
        .len(),
        1
    );
    db.delete_schedule(&app_id, "sched_1").await.unwrap();
    assert!(matches!(
        db.delete_schedule(&app_id, "sched_1").await,
        Err(DbError::NotFound)
    ));
}

async fn deleting_an_application_cascades(db: Arc<dyn Database>) {
    let (org_id, _) = org(&db).await;
    let app = db
        .insert_application(&org_id, "doomed", false)
        .await
        .unwrap()
        .id;
    db.insert_api_key(&new_key(&org_id, &app, "kd", "hd"))
        .await
        .unwrap();
    db.insert_end_user(&end_user(&org_id, &app, "eu_d", None, None))
        .await
        .unwrap();
    db.upsert_connection(&connection(&org_id, &app, Some("eu_d"), "v1:k1:x"))
        .await
        .unwrap();
    db.insert_schedule(&schedule(&org_id, &app, "sched_d", None))
        .await
        .unwrap();
    let mut r = run(&org_id, &app, "run_d");
    r.end_user_id = Some("eu_d".into());
    db.insert_run(&r, 10).await.unwrap();
    db.insert_log("run_d", &log("x", "info"), now())
        .await
        .unwrap();
    // Deleting the end-user keeps its runs (end_user_id cleared) and disables its schedules.
    let mut s = schedule(&org_id, &app, "sched_eu", Some(now()));
    s.end_user_id = Some("eu_d".into());
    s.actor_type = "end_user".into();
    db.insert_schedule(&s).await.unwrap();
    db.delete_end_user(&app, "eu_d").await.unwrap();
    let kept = db.get_run("run_d").await.unwrap().unwrap();
    assert_eq!(kept.end_user_id, None);
    let s = db.get_schedule(&app, "sched_eu").await.unwrap().unwrap();
    assert!(!s.enabled);
    assert_eq!(s.end_user_id, None);

    db.delete_application(&org_id, &app).await.unwrap();
    assert!(db.find_api_key("hd").await.unwrap().is_none());
    assert!(db.get_run("run_d").await.unwrap().is_none());
    assert!(db
        .list_logs("run_d", None, &[], 10)
        .await
        .unwrap()
        .is_empty());
    assert!(db.get_schedule(&app, "sched_d").await.unwrap().is_none());
}

/// SPEC §4.3: both migration sets give the same tables, columns, nullability, keys, unique constraints,
/// indexes and foreign keys once storage types are normalised.
#[tokio::test]
async fn sqlite_and_postgres_schemas_are_equivalent() {
    let url = test_support::require!(services::postgres_database().await);
    let dir = tempfile::tempdir().unwrap();
    let lite = connect_sqlite(&dir.path().join("schema.db")).await.unwrap();
    lite.migrate().await.unwrap();
    let pg = connect_postgres(&url).await.unwrap();
    pg.migrate().await.unwrap();
    let a = introspect_sqlite(lite.pool()).await.unwrap();
    let (b, _) = introspect_postgres(pg.pool()).await.unwrap();
    assert!(a.tables.len() >= 13, "{a}");
    assert!(a.tables["run_logs"]
        .foreign_keys
        .iter()
        .any(|f| f.ref_table == "runs"));
    assert!(b.tables["packages"].uniques.iter().any(|u| u.partial));
    let diff = a.diff(&b, "sqlite", "postgres");
    assert!(diff.is_empty(), "schemas differ:\n{}", diff.join("\n"));

    // The comparison notices a column added to one side only, or a dropped constraint.
    sqlx::query("ALTER TABLE runs ADD COLUMN extra TEXT")
        .execute(lite.pool())
        .await
        .unwrap();
    sqlx::query("ALTER TABLE end_users DROP CONSTRAINT end_users_application_email_key")
        .execute(pg.pool())
        .await
        .unwrap();
    let a = introspect_sqlite(lite.pool()).await.unwrap();
    let (b, _) = introspect_postgres(pg.pool()).await.unwrap();
    let diff = a.diff(&b, "sqlite", "postgres");
    assert_eq!(diff.len(), 2, "{diff:?}");
    assert!(diff
        .iter()
        .any(|d| d == "runs.extra: column only in sqlite"));
    assert!(diff
        .iter()
        .any(|d| d.starts_with("end_users: unique") && d.contains("email")));
}

/// SPEC §4.3: migrations hold sqlx's advisory lock, so replicas booting together on one fresh database
/// all come up, the migrations are applied once, and the system packages are synced once.
#[tokio::test]
async fn three_servers_booting_together_on_a_fresh_database() {
    let url = test_support::require!(services::postgres_database().await);
    let packages = test_support::app::system_packages_dir()
        .to_string_lossy()
        .into_owned();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("SYSTEM_PACKAGES_DIR", packages.as_str()),
    ];
    let (a, b, c) = tokio::join!(
        test_support::app::start_with(&env),
        test_support::app::start_with(&env),
        test_support::app::start_with(&env),
    );
    let pg = connect_postgres(&url).await.unwrap();
    let (applied,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pg.pool())
        .await
        .unwrap();
    assert_eq!(
        applied as usize,
        appstrate::infra::database::POSTGRES_MIGRATOR.iter().count()
    );
    let (system,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM packages WHERE org_id IS NULL")
        .fetch_one(pg.pool())
        .await
        .unwrap();
    assert_eq!(system, 12, "each system package exactly once");
    for app in [&a, &b, &c] {
        let h: Value = app
            .client
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(h["status"], "healthy", "{h}");
        assert_eq!(h["adapters"]["database"], "postgres");
        assert_eq!(h["tier"], 1);
    }
    for app in [a, b, c] {
        assert!(app.shutdown().await);
    }
}

/// A refused connection names DATABASE_URL (never its password) and the checks to make.
#[tokio::test]
async fn an_unreachable_database_url_stops_boot_with_the_checks_to_make() {
    let port = services::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut env = test_support::app::base_env(dir.path());
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://appstrate:hunter2-secret@127.0.0.1:{port}/appstrate"),
    );
    env.insert("PORT".into(), "3999".into());
    env.insert("APP_URL".into(), "http://127.0.0.1:1".into());
    let config = appstrate::config::Config::from_map(&env).unwrap();
    let started = std::time::Instant::now();
    let err = appstrate::infra::Infra::connect(&config)
        .await
        .err()
        .expect("boot must fail");
    let text = err.to_string();
    assert!(
        text.starts_with("DATABASE_URL: cannot connect to PostgreSQL at "),
        "{text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{port}/appstrate")),
        "{text}"
    );
    assert!(text.contains("psql"), "{text}");
    assert!(text.contains("server is running"), "{text}");
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
    // Refusals are retried for a while (a server still starting), then reported.
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// The same through the real binary: exit 1 before serving, the message on stderr.
#[tokio::test]
async fn serve_exits_1_when_the_database_refuses_connections() {
    let dir = tempfile::tempdir().unwrap();
    let db_port = services::free_port();
    let port = services::free_port();
    let env = [
        ("BETTER_AUTH_SECRET", "better-auth-secret".to_string()),
        (
            "UPLOAD_SIGNING_SECRET",
            "upload-secret-0123456789".to_string(),
        ),
        (
            "CONNECTION_ENCRYPTION_KEY",
            test_support::app::TEST_ENCRYPTION_KEY.to_string(),
        ),
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", port.to_string()),
        (
            "DATABASE_URL",
            format!("postgresql://app:pw-canary-31@127.0.0.1:{db_port}/appstrate"),
        ),
    ];
    let path = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_appstrate"))
            .arg("serve")
            .current_dir(&path)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("DATABASE_URL: cannot connect to PostgreSQL at postgresql://app@127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("psql \"$DATABASE_URL\""), "{stderr}");
    assert!(
        !stderr.contains("pw-canary-31"),
        "password leaked: {stderr}"
    );
    assert!(
        !dir.path().join("data/appstrate.db").exists(),
        "no SQLite fallback"
    );
}
