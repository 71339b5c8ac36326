//! People: accounts, sessions, CSRF, organizations, roles, invitations, closed mode and sign-in limits.

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::spawn_fresh_on;
use test_support::people::{session_set_cookie, Browser, PASSWORD};
use test_support::Backend;

/// The first sign-up of a fresh instance, and that person's org and default application.
pub(crate) async fn owner(app: &test_support::TestApp, email: &str) -> (Browser, String, String) {
    let mut b = Browser::new(app, email);
    let up = b.sign_up().await;
    let org_id = up["claimedOrgId"]
        .as_str()
        .expect("first sign-up claims the instance")
        .to_string();
    let (s, orgs) = b.get("/api/me/orgs", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(orgs["data"][0]["id"], org_id.as_str());
    assert_eq!(orgs["data"][0]["role"], "owner");
    let (s, apps) = b.get("/api/applications", &[("X-Org-Id", &org_id)]).await;
    assert_eq!(s, 200, "{apps}");
    let app_id = apps["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(apps["data"][0]["isDefault"], true);
    (b, org_id, app_id)
}

/// `inviter` invites `email` as `role` into `org_id`; the new person signs up and accepts.
pub(crate) async fn invite_and_join(
    app: &test_support::TestApp,
    inviter: &Browser,
    org_id: &str,
    email: &str,
    role: &str,
) -> Browser {
    let (s, inv) = inviter
        .send(
            Method::POST,
            &format!("/api/orgs/{org_id}/members"),
            &[],
            Some(json!({"email": email, "role": role})),
        )
        .await;
    assert_eq!(s, 201, "{inv}");
    let token = token_of(&inv);
    let mut b = Browser::new(app, email);
    b.sign_up().await;
    let (s, body) = b
        .send(Method::POST, &format!("/invite/{token}/accept"), &[], None)
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["role"], role);
    b
}

fn token_of(inv: &Value) -> String {
    let url = inv["inviteUrl"]
        .as_str()
        .expect("without SMTP the link is returned");
    url.rsplit('/').next().unwrap().to_string()
}

on_both_backends!(accounts_and_sessions);
async fn accounts_and_sessions(backend: Backend) {
    let app = test_support::require!(spawn_fresh_on(backend, &[]).await);
    let mut ada = Browser::new(&app, "Ada@Example.com");
    let r = ada
        .req(Method::POST, "/api/auth/sign-up/email")
        .json(&json!({"email": "Ada@Example.com", "password": PASSWORD, "name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, line) = session_set_cookie(&r).expect("a session cookie");
    assert!(line.contains("HttpOnly"), "{line}");
    assert!(line.contains("SameSite=Lax"), "{line}");
    assert!(line.contains("Path=/"), "{line}");
    assert!(
        !line.contains("Secure"),
        "http APP_URL: no Secure flag: {line}"
    );
    ada.remember(&r);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["user"]["email"], "ada@example.com");
    assert!(body["user"].get("passwordHash").is_none());
    assert!(!body.to_string().contains("argon2"), "no hash in answers");

    let (s, me) = ada.get("/api/auth/get-session", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(me["user"]["name"], "Ada");

    // Wrong password and unknown email: one answer.
    let mut stranger = Browser::new(&app, "nobody@example.com");
    let r1 = stranger.sign_in(PASSWORD).await;
    let mut ada2 = Browser::new(&app, "ada@example.com");
    let r2 = ada2.sign_in("wrong password!").await;
    assert_eq!((r1.status().as_u16(), r2.status().as_u16()), (401, 401));
    let (b1, b2): (Value, Value) = (r1.json().await.unwrap(), r2.json().await.unwrap());
    assert_eq!(b1["code"], "invalid_credentials");
    assert_eq!(
        (b1["detail"].clone(), b1["code"].clone()),
        (b2["detail"].clone(), b2["code"].clone())
    );

    // A second browser signs in; both sessions are listed.
    let r = ada2.sign_in(PASSWORD).await;
    assert_eq!(r.status(), 200);
    let (s, list) = ada.get("/api/auth/sessions", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let other = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Revoking it signs that browser out.
    let (s, _) = ada
        .send(
            Method::DELETE,
            &format!("/api/auth/sessions/{other}"),
            &[],
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, body) = ada2.get("/api/profile", &[]).await;
    assert_eq!(s, 401, "revoked session refused: {body}");
    let (s, body) = ada2.get("/api/auth/get-session", &[]).await;
    assert_eq!((s, body), (200, Value::Null));

    // Profile and password.
    let (s, p) = ada
        .send(
            Method::PATCH,
            "/api/profile",
            &[],
            Some(json!({"name": "Ada L."})),
        )
        .await;
    assert_eq!((s, p["name"].as_str()), (200, Some("Ada L.")));
    ada2.sign_in(PASSWORD).await;
    let (s, e) = ada
        .send(
            Method::POST,
            "/api/profile/password",
            &[],
            Some(
                json!({"currentPassword": "not it at all", "newPassword": "another long password"}),
            ),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["errors"][0]["field"], "currentPassword");
    let (s, _) = ada
        .send(
            Method::POST,
            "/api/profile/password",
            &[],
            Some(json!({"currentPassword": PASSWORD, "newPassword": "another long password"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        ada.get("/api/profile", &[]).await.0,
        200,
        "the changing session stays"
    );
    assert_eq!(
        ada2.get("/api/profile", &[]).await.0,
        401,
        "other sessions are signed out"
    );
    assert_eq!(ada2.sign_in(PASSWORD).await.status(), 401);
    assert_eq!(ada2.sign_in("another long password").await.status(), 200);

    // Sign-out revokes the session server-side: the old cookie no longer works.
    let old = ada.cookie.clone();
    let r = ada
        .req(Method::POST, "/api/auth/sign-out")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    ada.remember(&r);
    assert!(ada.cookie.is_none(), "sign-out clears the cookie");
    ada.cookie = old;
    assert_eq!(ada.get("/api/profile", &[]).await.0, 401);

    // No SMTP: password reset is reported unavailable.
    let (s, e) = ada
        .send(
            Method::POST,
            "/api/auth/forget-password",
            &[],
            Some(json!({"email": "ada@example.com"})),
        )
        .await;
    assert_eq!((s, e["code"].as_str()), (503, Some("email_unavailable")));

    // A second account on a claimed instance gets no organization.
    let mut bob = Browser::new(&app, "bob@example.com");
    let up = bob.sign_up().await;
    assert!(up["claimedOrgId"].is_null());
    let (_, orgs) = bob.get("/api/me/orgs", &[]).await;
    assert_eq!(orgs["data"], json!([]));
    // Email taken.
    let (s, e) = Browser::new(&app, "bob@example.com")
        .send(
            Method::POST,
            "/api/auth/sign-up/email",
            &[],
            Some(json!({"email": "BOB@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!((s, e["code"].as_str()), (409, Some("email_taken")));
}

#[tokio::test]
async fn secure_cookie_when_app_url_is_https() {
    let app = test_support::app::start_with(&[("APP_URL", "https://appstrate.example.com")]).await;
    let b = Browser::new(&app, "ada@example.com");
    assert_eq!(b.origin, "https://appstrate.example.com");
    let r = b
        .req(Method::POST, "/api/auth/sign-up/email")
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, line) = session_set_cookie(&r).unwrap();
    assert!(line.contains("Secure"), "{line}");
    assert!(
        line.contains("HttpOnly") && line.contains("SameSite=Lax"),
        "{line}"
    );
}

#[tokio::test]
async fn expired_session_is_refused() {
    let app = test_support::app::start_with(&[("AUTH_SESSION_TTL_SECONDS", "1")]).await;
    let mut b = Browser::new(&app, "ada@example.com");
    b.sign_up().await;
    assert_eq!(b.get("/api/profile", &[]).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (s, e) = b.get("/api/profile", &[]).await;
    assert_eq!(s, 401, "{e}");
    let (s, body) = b.get("/api/auth/get-session", &[]).await;
    assert_eq!((s, body), (200, Value::Null));
}

#[tokio::test]
async fn rotating_the_secret_signs_everyone_out_and_nothing_else() {
    let mut app = test_support::spawn_app().await;
    let mut b = Browser::new(&app, "ada@example.com");
    b.sign_up().await;
    assert_eq!(b.get("/api/profile", &[]).await.0, 200);
    app.restart_with(&[("BETTER_AUTH_SECRET", "a-brand-new-secret")], &[])
        .await;
    assert_eq!(
        b.get("/api/profile", &[]).await.0,
        401,
        "old cookie refused"
    );
    // API keys and admin tokens are untouched.
    let r = app.key(Method::GET, "/api/end-users").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The account itself still works.
    assert_eq!(b.sign_in(PASSWORD).await.status(), 200);
    assert_eq!(b.get("/api/profile", &[]).await.0, 200);
}

#[tokio::test]
async fn csrf_from_another_origin_is_refused() {
    let app = test_support::app::start_with(&[]).await;
    let (mut ada, _org, app_id) = owner(&app, "ada@example.com").await;
    let body = json!({"name": "Mallory's choice"});
    for origin in [Some("https://evil.example"), Some("null"), None] {
        let mut r = app
            .client
            .patch(app.url("/api/profile"))
            .header("Cookie", ada.cookie.clone().unwrap())
            .json(&body);
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 403, "origin {origin:?}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "csrf_rejected");
    }
    // The same on the app-scoped API with the cookie.
    let r = app
        .client
        .post(app.url("/api/end-users"))
        .header("Cookie", ada.cookie.clone().unwrap())
        .header("X-App-Id", &app_id)
        .header("Origin", "https://evil.example")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A Referer from the instance is accepted when there is no Origin; reads need no Origin.
    let r = app
        .client
        .patch(app.url("/api/profile"))
        .header("Cookie", ada.cookie.clone().unwrap())
        .header("Referer", format!("{}/settings", app.address))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(app.url("/api/profile"))
        .header("Cookie", ada.cookie.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, p) = ada.get("/api/profile", &[]).await;
    assert_eq!(p["name"], "Mallory's choice");
    // A sign-in form posted from another site is refused.
    ada.origin = "https://evil.example".into();
    let r = ada.sign_in(PASSWORD).await;
    assert_eq!(r.status(), 403);
}

on_both_backends!(roles_and_tenancy_with_sessions);
async fn roles_and_tenancy_with_sessions(backend: Backend) {
    let app = test_support::require!(spawn_fresh_on(backend, &[]).await);
    let (ada, org_a, app_a) = owner(&app, "ada@example.com").await;
    let viewer = invite_and_join(&app, &ada, &org_a, "vic@example.com", "viewer").await;
    let member = invite_and_join(&app, &ada, &org_a, "meg@example.com", "member").await;

    // A viewer reads, and cannot write.
    let (s, _) = viewer.get("/api/end-users", &[("X-App-Id", &app_a)]).await;
    assert_eq!(s, 200);
    let (s, e) = viewer
        .send(
            Method::POST,
            "/api/end-users",
            &[("X-App-Id", &app_a)],
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!((s, e["code"].as_str()), (403, Some("forbidden")), "{e}");
    let (s, _) = viewer
        .send(
            Method::POST,
            "/api/applications",
            &[("X-Org-Id", &org_a)],
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(s, 403);
    // A member writes resources but manages neither applications nor members.
    let (s, eu) = member
        .send(
            Method::POST,
            "/api/end-users",
            &[("X-App-Id", &app_a)],
            Some(json!({"name": "Eve"})),
        )
        .await;
    assert_eq!(s, 201, "{eu}");
    let (s, _) = member
        .send(
            Method::POST,
            "/api/applications",
            &[("X-Org-Id", &org_a)],
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = member
        .send(
            Method::POST,
            &format!("/api/orgs/{org_a}/members"),
            &[],
            Some(json!({"email": "z@example.com"})),
        )
        .await;
    assert_eq!(s, 403);
    // The owner does.
    let (s, _) = ada
        .send(
            Method::POST,
            "/api/applications",
            &[("X-Org-Id", &org_a)],
            Some(json!({"name": "Second"})),
        )
        .await;
    assert_eq!(s, 201);

    // A second organization, created by someone else.
    let mut bob = Browser::new(&app, "bob@example.com");
    bob.sign_up().await;
    let (s, org_b) = bob
        .send(
            Method::POST,
            "/api/orgs",
            &[],
            Some(json!({"name": "Bob's"})),
        )
        .await;
    assert_eq!(s, 201, "{org_b}");
    let app_b = org_b["defaultApplication"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let org_b = org_b["id"].as_str().unwrap().to_string();
    let (s, eu_b) = bob
        .send(
            Method::POST,
            "/api/end-users",
            &[("X-App-Id", &app_b)],
            Some(json!({"name": "B"})),
        )
        .await;
    assert_eq!(s, 201);
    let eu_b = eu_b["id"].as_str().unwrap();

    // X-App-Id with the cookie: missing → 400, another org's application → 403.
    let (s, e) = ada.get("/api/end-users", &[]).await;
    assert_eq!((s, e["param"].as_str()), (400, Some("X-App-Id")));
    let (s, e) = ada.get("/api/end-users", &[("X-App-Id", &app_b)]).await;
    assert_eq!((s, e["code"].as_str()), (403, Some("forbidden")));
    let (s, _) = ada
        .get("/api/end-users", &[("X-App-Id", "app_no-such-app")])
        .await;
    assert_eq!(s, 403);
    // X-Org-Id on org routes: missing → 400, another org → 403; org B by id is refused too.
    let (s, e) = ada.get("/api/applications", &[]).await;
    assert_eq!((s, e["param"].as_str()), (400, Some("X-Org-Id")));
    let (s, _) = ada.get("/api/applications", &[("X-Org-Id", &org_b)]).await;
    assert_eq!(s, 403);
    let (s, _) = ada.get(&format!("/api/orgs/{org_b}"), &[]).await;
    assert_eq!(s, 403);
    // Org B's resources by id, asked in org A's context: 404.
    let (s, _) = ada
        .get(&format!("/api/end-users/{eu_b}"), &[("X-App-Id", &app_a)])
        .await;
    assert_eq!(s, 404);
    let (s, _) = ada
        .get(
            &format!("/api/applications/{app_b}"),
            &[("X-Org-Id", &org_a)],
        )
        .await;
    assert_eq!(s, 404);

    // Roles: the last owner can neither leave nor be demoted.
    let ada_id = ada.get("/api/profile", &[]).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, e) = ada
        .send(
            Method::PUT,
            &format!("/api/orgs/{org_a}/members/{ada_id}"),
            &[],
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!((s, e["code"].as_str()), (409, Some("last_owner")));
    let (s, e) = ada
        .send(
            Method::DELETE,
            &format!("/api/orgs/{org_a}/members/{ada_id}"),
            &[],
            None,
        )
        .await;
    assert_eq!((s, e["code"].as_str()), (409, Some("last_owner")));
    // A member may leave.
    let meg_id = member.get("/api/profile", &[]).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = member
        .send(
            Method::DELETE,
            &format!("/api/orgs/{org_a}/members/{meg_id}"),
            &[],
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = member.get("/api/end-users", &[("X-App-Id", &app_a)]).await;
    assert_eq!(s, 403, "a former member reads nothing");
    let (_, detail) = ada.get(&format!("/api/orgs/{org_a}"), &[]).await;
    let roles: Vec<&str> = detail["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["owner", "viewer"]);
}

on_both_backends!(user_api_keys_are_capped_by_the_role);
async fn user_api_keys_are_capped_by_the_role(backend: Backend) {
    let app = test_support::require!(spawn_fresh_on(backend, &[]).await);
    let (ada, org, app_id) = owner(&app, "ada@example.com").await;
    let admin = invite_and_join(&app, &ada, &org, "adam@example.com", "admin").await;
    let (s, key) = admin
        .send(
            Method::POST,
            "/api/api-keys",
            &[("X-App-Id", &app_id)],
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(s, 201, "{key}");
    let key = key["key"].as_str().unwrap().to_string();
    let write = |k: &str| {
        app.client
            .post(app.url("/api/end-users"))
            .bearer_auth(k)
            .json(&json!({"name": "via key"}))
            .send()
    };
    assert_eq!(write(&key).await.unwrap().status(), 201);
    // The creator becomes a viewer: the key keeps only reads.
    let adam_id = admin.get("/api/profile", &[]).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = ada
        .send(
            Method::PUT,
            &format!("/api/orgs/{org}/members/{adam_id}"),
            &[],
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(write(&key).await.unwrap().status(), 403);
    let r = app
        .client
        .get(app.url("/api/end-users"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The creator leaves: the key is dead.
    let (s, _) = ada
        .send(
            Method::DELETE,
            &format!("/api/orgs/{org}/members/{adam_id}"),
            &[],
            None,
        )
        .await;
    assert_eq!(s, 204);
    let r = app
        .client
        .get(app.url("/api/end-users"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn invitations_accept_expired_used_and_wrong_account() {
    let app = test_support::app::start_with(&[]).await;
    let (ada, org, _) = owner(&app, "ada@example.com").await;
    let invite = |email: &'static str| {
        let ada = ada.clone();
        let org = org.clone();
        async move {
            let (s, inv) = ada
                .send(
                    Method::POST,
                    &format!("/api/orgs/{org}/members"),
                    &[],
                    Some(json!({"email": email, "role": "member"})),
                )
                .await;
            assert_eq!(s, 201, "{inv}");
            assert_eq!(inv["emailed"], false);
            token_of(&inv)
        }
    };
    let token = invite("meg@example.com").await;
    // Anyone with the link sees what it is for.
    let r = app
        .client
        .get(app.url(&format!("/invite/{token}/info")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(
        (
            info["email"].as_str(),
            info["role"].as_str(),
            info["status"].as_str()
        ),
        (Some("meg@example.com"), Some("member"), Some("pending"))
    );
    // The wrong account cannot accept it.
    let mut bob = Browser::new(&app, "bob@example.com");
    bob.sign_up().await;
    let (s, e) = bob
        .send(Method::POST, &format!("/invite/{token}/accept"), &[], None)
        .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (403, Some("invitation_wrong_account"))
    );
    // Accepting needs a session.
    let r = app
        .client
        .post(app.url(&format!("/invite/{token}/accept")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The right one can, once.
    let mut meg = Browser::new(&app, "meg@example.com");
    meg.sign_up().await;
    let (s, _) = meg
        .send(Method::POST, &format!("/invite/{token}/accept"), &[], None)
        .await;
    assert_eq!(s, 200);
    let (s, e) = meg
        .send(Method::POST, &format!("/invite/{token}/accept"), &[], None)
        .await;
    assert_eq!((s, e["code"].as_str()), (409, Some("invitation_used")));
    let (_, info) = meg.get(&format!("/invite/{token}/info"), &[]).await;
    assert_eq!(info["status"], "accepted");
    let (_, orgs) = meg.get("/api/me/orgs", &[]).await;
    assert_eq!(orgs["data"][0]["role"], "member");
    // A withdrawn invitation cannot be used.
    let (s, inv) = ada
        .send(
            Method::POST,
            &format!("/api/orgs/{org}/members"),
            &[],
            Some(json!({"email": "bob@example.com"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = ada
        .send(
            Method::DELETE,
            &format!(
                "/api/orgs/{org}/invitations/{}",
                inv["id"].as_str().unwrap()
            ),
            &[],
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = bob
        .send(
            Method::POST,
            &format!("/invite/{}/accept", token_of(&inv)),
            &[],
            None,
        )
        .await;
    assert_eq!(s, 409);
    // Unknown token.
    let (s, _) = bob.get("/invite/inv_nope/info", &[]).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn an_expired_invitation_is_refused() {
    let app = test_support::app::start_with(&[("AUTH_INVITATION_TTL_SECONDS", "1")]).await;
    let (ada, org, _) = owner(&app, "ada@example.com").await;
    let (s, inv) = ada
        .send(
            Method::POST,
            &format!("/api/orgs/{org}/members"),
            &[],
            Some(json!({"email": "meg@example.com"})),
        )
        .await;
    assert_eq!(s, 201);
    let mut meg = Browser::new(&app, "meg@example.com");
    meg.sign_up().await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let token = token_of(&inv);
    let (s, e) = meg
        .send(Method::POST, &format!("/invite/{token}/accept"), &[], None)
        .await;
    assert_eq!((s, e["code"].as_str()), (410, Some("invitation_expired")));
    let (_, info) = meg.get(&format!("/invite/{token}/info"), &[]).await;
    assert_eq!(info["status"], "expired");
}

#[tokio::test]
async fn closed_sign_up_still_admits_the_first_owner_and_invited_people() {
    let app = test_support::app::start_with(&[("AUTH_DISABLE_SIGNUP", "true")]).await;
    let (ada, org, _) = owner(&app, "ada@example.com").await;
    let (s, e) = Browser::new(&app, "bob@example.com")
        .send(
            Method::POST,
            "/api/auth/sign-up/email",
            &[],
            Some(json!({"email": "bob@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!((s, e["code"].as_str()), (403, Some("sign_up_disabled")));
    invite_and_join(&app, &ada, &org, "bob@example.com", "member").await;

    let app = test_support::app::start_with(&[("AUTH_ALLOWED_SIGNUP_DOMAINS", "corp.io")]).await;
    owner(&app, "founder@anywhere.org").await;
    let (s, e) = Browser::new(&app, "x@example.com")
        .send(
            Method::POST,
            "/api/auth/sign-up/email",
            &[],
            Some(json!({"email": "x@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (403, Some("email_domain_not_allowed"))
    );
    assert!(e["detail"].as_str().unwrap().contains("corp.io"));
    Browser::new(&app, "y@corp.io").sign_up().await;
}

#[tokio::test]
async fn sign_in_is_rate_limited_per_email_and_per_ip() {
    let app = test_support::app::start_with(&[
        ("AUTH_ARGON2_MEMORY_KIB", "1024"),
        ("AUTH_ARGON2_ITERATIONS", "1"),
    ])
    .await;
    Browser::new(&app, "ada@example.com").sign_up().await;
    let mut ada = Browser::new(&app, "ada@example.com");
    for i in 0..10 {
        assert_eq!(
            ada.sign_in("wrong password").await.status(),
            401,
            "attempt {i}"
        );
    }
    let r = ada.sign_in(PASSWORD).await;
    assert_eq!(r.status(), 429, "11th attempt for one email");
    let h = r.headers();
    assert!(h.get("retry-after").is_some());
    assert_eq!(h.get("ratelimit-policy").unwrap(), "10;w=300");
    assert!(h
        .get("ratelimit")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("limit=10, remaining=0"));
    // Per IP: other emails from the same address, 20 a minute in all.
    let mut statuses = Vec::new();
    for i in 0..10 {
        statuses.push(
            Browser::new(&app, &format!("u{i}@example.com"))
                .sign_in(PASSWORD)
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 9);
}
