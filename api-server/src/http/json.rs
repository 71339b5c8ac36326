//! Strict JSON bodies (§8): the content type is checked, the size is bounded, unparseable JSON is
//! `invalid_request`, and [`Fields`] reports every bad or unknown field at once.

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::error::ApiError;
pub use crate::domain::Fields;

/// A request body parsed as JSON. An empty body is read as `{}`.
pub struct JsonBody(pub Value);

pub fn payload_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "Request body exceeds the size limit (API_BODY_LIMIT_BYTES)",
    )
}

/// Reads the whole body, mapping the body-limit rejection to 413.
pub async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, &()).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            payload_too_large()
        } else {
            ApiError::invalid_request(format!("Could not read the request body: {e}"))
        }
    })
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| {
                s.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        let bytes = read_body(req).await?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(JsonBody(Value::Object(Map::new())));
        }
        match content_type.as_deref() {
            Some("application/json") => {}
            Some(ct) if ct.ends_with("+json") => {}
            other => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!(
                        "Expected Content-Type application/json, got {}",
                        other.unwrap_or("none")
                    ),
                ))
            }
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid_request(format!("Malformed JSON body: {e}")))
    }
}
