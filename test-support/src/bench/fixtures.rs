//! Fixtures written straight into a running Tier 0 server's SQLite database (WAL lets the server keep
//! running), for volumes that the API's own rate limits would make slow to create over HTTP.

use std::path::Path;

use appstrate::crypto::{new_token, sha256_hex};
use appstrate::http::auth::SCOPES;
use appstrate::infra::database::people::InvitationRow;
use appstrate::infra::database::{connect_sqlite, now, Database, NewApiKey, PeopleRepo};

use super::server::Credentials;

/// Inserts `n` API keys with every scope, pinned to the bootstrap application, and returns their secrets.
pub async fn mint_api_keys(
    db_path: &Path,
    creds: &Credentials,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let db = connect_sqlite(db_path).await?;
    let scopes: Vec<String> = SCOPES.iter().map(|s| s.to_string()).collect();
    let mut secrets = Vec::with_capacity(n);
    for i in 0..n {
        let secret = new_token("ask_");
        db.insert_api_key(&NewApiKey {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: creds.org_id.clone(),
            application_id: creds.application_id.clone(),
            name: format!("bench-{i}"),
            key_hash: sha256_hex(&secret),
            key_prefix: secret[..8].to_string(),
            scopes: scopes.clone(),
            expires_at: None,
        })
        .await?;
        secrets.push(secret);
    }
    db.pool().close().await;
    Ok(secrets)
}

/// Makes `user_id` a member of the bootstrap organization with `role` (through an invitation row, as
/// accepting one would).
pub async fn add_member(
    db_path: &Path,
    creds: &Credentials,
    user_id: &str,
    role: &str,
) -> anyhow::Result<()> {
    let db = connect_sqlite(db_path).await?;
    let at = now();
    let inv = InvitationRow {
        id: format!("invit_{}", uuid::Uuid::new_v4()),
        org_id: creds.org_id.clone(),
        email: format!("{user_id}@bench.invalid"),
        role: role.to_string(),
        invited_by: None,
        created_at: at,
        expires_at: at + chrono::Duration::hours(1),
        accepted_at: None,
        accepted_by: None,
        revoked_at: None,
    };
    db.insert_invitation(&inv, &sha256_hex(&new_token("inv_")))
        .await?;
    db.accept_invitation(&inv, user_id).await?;
    db.pool().close().await;
    Ok(())
}
