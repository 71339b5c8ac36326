//! The dashboard's static files, embedded in the binary and served under content-hashed names
//! (`/assets/app.<hash>.css`) with a one-year immutable cache: a new build changes the name, never the
//! bytes behind a name. Nothing is fetched from elsewhere, so the dashboard works with the network cut.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

struct Asset {
    /// The logical name templates ask for (`app.css`).
    name: &'static str,
    /// The served name with its content hash (`app.1a2b3c4d5e6f.css`).
    hashed: String,
    content_type: &'static str,
    bytes: &'static [u8],
}

const FILES: [(&str, &str, &[u8]); 3] = [
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/assets/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/assets/app.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../web/assets/favicon.svg"),
    ),
];

fn assets() -> &'static [Asset] {
    static ASSETS: OnceLock<Vec<Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|(name, content_type, bytes)| {
                let hash = hex::encode(Sha256::digest(bytes));
                let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
                Asset {
                    name,
                    hashed: format!("{stem}.{}.{ext}", &hash[..12]),
                    content_type,
                    bytes,
                }
            })
            .collect()
    })
}

/// The URL of the asset `name` (`/assets/app.<hash>.css`); an unknown name is a template bug.
pub fn url(name: &str) -> String {
    match assets().iter().find(|a| a.name == name) {
        Some(a) => format!("/assets/{}", a.hashed),
        None => {
            tracing::error!(asset = name, "a template names an unknown asset");
            format!("/assets/{name}")
        }
    }
}

/// `GET /assets/{file}`: only the hashed names are served.
pub async fn serve(Path(file): Path<String>) -> Response {
    match assets().iter().find(|a| a.hashed == file) {
        Some(a) => (
            [
                (CONTENT_TYPE, a.content_type),
                (CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            a.bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// `GET /favicon.ico`: what browsers ask for on pages that name no icon (the OAuth callback page, JSON
/// answers opened in a tab): a redirect to the hashed icon.
pub async fn favicon() -> Response {
    (
        StatusCode::MOVED_PERMANENTLY,
        [
            (axum::http::header::LOCATION, url("favicon.svg")),
            (CACHE_CONTROL, "public, max-age=86400".to_string()),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_content_hash() {
        let css = url("app.css");
        assert!(
            css.starts_with("/assets/app.") && css.ends_with(".css"),
            "{css}"
        );
        assert_eq!(css.len(), "/assets/app..css".len() + 12);
        assert_ne!(url("app.js"), url("app.css"));
    }
}
