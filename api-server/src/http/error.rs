//! RFC 9457 problem details (§8). Handlers return [`ApiError`]; the outer middleware renders it with the
//! request id, so every error body carries `requestId` and `instance`.

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::domain::{DomainError, ErrorKind};
use crate::infra::database::DbError;

pub use crate::domain::FieldError;

/// An error answer. Rendered as `application/problem+json` by [`render_problem`].
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub title: Option<String>,
    pub detail: String,
    pub param: Option<String>,
    pub errors: Option<Vec<FieldError>>,
    pub retry_after: Option<u64>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            title: None,
            detail: detail.into(),
            param: None,
            errors: None,
            retry_after: None,
            headers: Vec::new(),
        }
    }

    pub fn with_code(mut self, code: &str) -> Self {
        self.code = code.to_string();
        self
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    // The constructors are the domain's: an answer built here reads exactly like a mapped domain error.
    pub fn bad_request(code: &str, detail: impl Into<String>) -> Self {
        DomainError::bad_request(code, detail).into()
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        DomainError::invalid_request(detail).into()
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        DomainError::validation(errors).into()
    }

    pub fn unauthorized(detail: &str) -> Self {
        DomainError::unauthorized(detail).into()
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        DomainError::forbidden(detail).into()
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        DomainError::not_found(detail).into()
    }

    pub fn conflict(code: &str, detail: impl Into<String>) -> Self {
        DomainError::conflict(code, detail).into()
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        DomainError::internal(err).into()
    }

    pub fn unavailable(code: &str, detail: impl Into<String>) -> Self {
        DomainError::unavailable(code, detail).into()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        DomainError::from(e).into()
    }
}

impl From<crate::people::PeopleError> for ApiError {
    fn from(e: crate::people::PeopleError) -> Self {
        DomainError::from(e).into()
    }
}

/// The one status each domain error kind is answered with.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let mut out = ApiError::new(status_of(e.kind), &e.code, e.detail);
        out.param = e.param;
        out.errors = e.errors;
        if let Some(secs) = e.retry_after {
            out = out.with_header(RETRY_AFTER, &secs.to_string());
            out.retry_after = Some(secs);
        }
        out
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = self.status.into_response();
        for (k, v) in &self.headers {
            res.headers_mut().append(k.clone(), v.clone());
        }
        res.extensions_mut().insert(self);
        res
    }
}

fn title_for(status: StatusCode) -> String {
    match status.as_u16() {
        429 => "Rate Limited".into(),
        _ => status.canonical_reason().unwrap_or("Error").to_string(),
    }
}

/// The problem+json body of `err` for the request `request_id`.
pub fn render_problem(err: &ApiError, request_id: &str) -> Value {
    let mut body = json!({
        "type": format!("https://docs.appstrate.dev/errors/{}", err.code.replace('_', "-")),
        "title": err.title.clone().unwrap_or_else(|| title_for(err.status)),
        "status": err.status.as_u16(),
        "detail": err.detail,
        "instance": format!("urn:appstrate:request:{request_id}"),
        "code": err.code,
        "requestId": request_id,
    });
    let obj = body.as_object_mut().expect("object literal");
    if let Some(p) = &err.param {
        obj.insert("param".into(), json!(p));
    }
    if let Some(r) = err.retry_after {
        obj.insert("retryAfter".into(), json!(r));
    }
    if let Some(errors) = &err.errors {
        obj.insert("errors".into(), json!(errors));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_shape() {
        let e = ApiError::validation(vec![FieldError::new("name", "required", "is required")]);
        let v = render_problem(&e, "req_1");
        assert_eq!(
            v["type"],
            "https://docs.appstrate.dev/errors/validation-failed"
        );
        assert_eq!(v["title"], "Bad Request");
        assert_eq!(v["status"], 400);
        assert_eq!(v["instance"], "urn:appstrate:request:req_1");
        assert_eq!(v["requestId"], "req_1");
        assert_eq!(v["errors"][0]["field"], "name");
        let r = render_problem(
            &ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "x"),
            "req_2",
        );
        assert_eq!(r["title"], "Rate Limited");
    }
}
