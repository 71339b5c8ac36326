//! Email delivery through a real SMTP conversation (the scripted server in test-support): invitations
//! and password resets are mailed, and the links in the mails are the ones that work.

use reqwest::Method;
use serde_json::json;
use test_support::fake_smtp::FakeSmtp;
use test_support::people::{Browser, PASSWORD};

use crate::people::owner;

#[tokio::test]
async fn invitations_and_password_resets_are_mailed_and_their_links_work() {
    let smtp = FakeSmtp::start().await;
    let port = smtp.port.to_string();
    let app = test_support::app::start_with(&[
        ("SMTP_HOST", "127.0.0.1"),
        ("SMTP_PORT", port.as_str()),
        ("SMTP_SECURITY", "none"),
        ("SMTP_FROM", "Appstrate <noreply@example.test>"),
    ])
    .await;
    let (mut ada, org, _) = owner(&app, "ada@example.com").await;

    // The invitation is mailed, so the link is not handed back to the inviter.
    let (s, inv) = ada
        .send(
            Method::POST,
            &format!("/api/orgs/{org}/members"),
            &[],
            Some(json!({"email": "carol@example.com", "role": "member"})),
        )
        .await;
    assert_eq!(s, 201, "{inv}");
    assert_eq!(inv["emailed"], true, "{inv}");
    assert!(inv.get("inviteUrl").is_none(), "{inv}");
    let mail = smtp.wait_for("carol@example.com").await;
    assert_eq!(mail.from, "noreply@example.test");
    let link = mail
        .link_containing("/invite/")
        .unwrap_or_else(|| panic!("no invitation link in {}", mail.decoded()));
    let token = link.rsplit('/').next().unwrap().to_string();
    let mut carol = Browser::new(&app, "carol@example.com");
    carol.sign_up().await;
    let (s, joined) = carol
        .send(Method::POST, &format!("/invite/{token}/accept"), &[], None)
        .await;
    assert_eq!(s, 200, "{joined}");
    assert_eq!(joined["role"], "member");

    // Password reset: the same answer for a stranger, and no mail to them.
    let stranger = Browser::new(&app, "nobody@example.com");
    let (s, body) = stranger
        .send(
            Method::POST,
            "/api/auth/forget-password",
            &[],
            Some(json!({"email": "nobody@example.com"})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, same) = ada
        .send(
            Method::POST,
            "/api/auth/forget-password",
            &[],
            Some(json!({"email": "ada@example.com"})),
        )
        .await;
    assert_eq!((s, &same), (200, &body));
    let mail = smtp.wait_for("ada@example.com").await;
    assert!(
        smtp.mails()
            .iter()
            .all(|m| !m.to.iter().any(|t| t == "nobody@example.com")),
        "no mail for an address without an account"
    );
    let link = mail
        .link_containing("reset-password?token=")
        .unwrap_or_else(|| panic!("no reset link in {}", mail.decoded()));
    let token = link.split("token=").nth(1).unwrap().to_string();
    let new_password = "a brand new correct horse";
    let (s, b) = stranger
        .send(
            Method::POST,
            "/api/auth/reset-password",
            &[],
            Some(json!({"token": token, "newPassword": new_password})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // Every session of the account is signed out; the old password is gone, the new one works.
    let (s, _) = ada.get("/api/profile", &[]).await;
    assert_eq!(s, 401, "a reset signs out the sessions of the account");
    assert_eq!(ada.sign_in(PASSWORD).await.status(), 401);
    assert_eq!(ada.sign_in(new_password).await.status(), 200);
    // The link is good once.
    let (s, b) = stranger
        .send(
            Method::POST,
            "/api/auth/reset-password",
            &[],
            Some(json!({"token": token, "newPassword": "yet another long password"})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["errors"][0]["field"], "token", "{b}");
}
