//! Fixtures written straight into a running Tier 0 server's SQLite database (WAL lets the server keep
//! running), for volumes that the API's own rate limits would make slow to create over HTTP.

use std::path::Path;

use appstrate::crypto::{new_token, sha256_hex};
use appstrate::http::auth::SCOPES;
use appstrate::infra::database::{connect_sqlite, Database, NewApiKey};

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
