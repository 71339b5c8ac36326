//! List envelope and cursor pagination (§8): `{"object":"list","data":[…],"hasMore":bool}` with a
//! `Link: <…>; rel="next"` header when there is more.

use std::collections::HashMap;

use axum::http::header::LINK;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use crate::infra::database::Page;

/// Parsed list query: the page plus every other query parameter (filters).
pub struct ListQuery {
    pub page: Page,
    pub params: HashMap<String, String>,
}

impl ListQuery {
    pub fn parse(query: Option<&str>) -> Result<ListQuery, ApiError> {
        let params: HashMap<String, String> =
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let limit = match params.get("limit").map(String::as_str) {
            None | Some("") => 20,
            Some(raw) => match raw.parse::<u32>() {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid_request(format!(
                        "limit must be an integer from 1 to 100, got {raw:?}"
                    ))
                    .with_param("limit"))
                }
            },
        };
        let starting_after = params
            .get("startingAfter")
            .filter(|s| !s.is_empty())
            .cloned();
        Ok(ListQuery {
            page: Page {
                limit,
                starting_after,
            },
            params,
        })
    }

    /// A filter parameter, if present and non-empty.
    pub fn param(&self, name: &str) -> Option<String> {
        self.params.get(name).filter(|s| !s.is_empty()).cloned()
    }
}

/// The list answer for one page of rows: `id` names a row (the next-page cursor), `dto` renders it.
pub fn paged_response<T, D: Serialize>(
    app_url: &str,
    path: &str,
    query: &ListQuery,
    page: crate::infra::database::Paged<T>,
    id: impl Fn(&T) -> &str,
    dto: impl Fn(T) -> D,
) -> Response {
    let last = page.items.last().map(|r| id(r).to_string());
    let data: Vec<D> = page.items.into_iter().map(dto).collect();
    list_response(app_url, path, query, data, page.has_more, last.as_deref())
}

/// Builds the list answer. `last_id` is the id of the last item, used for the next-page link.
pub fn list_response<T: Serialize>(
    app_url: &str,
    path: &str,
    query: &ListQuery,
    data: Vec<T>,
    has_more: bool,
    last_id: Option<&str>,
) -> Response {
    let mut res =
        Json(json!({"object": "list", "data": data, "hasMore": has_more})).into_response();
    if let (true, Some(last)) = (has_more, last_id) {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        let mut keys: Vec<&String> = query.params.keys().collect();
        keys.sort();
        for k in keys {
            if k != "limit" && k != "startingAfter" {
                ser.append_pair(k, &query.params[k]);
            }
        }
        ser.append_pair("limit", &query.page.limit.to_string());
        ser.append_pair("startingAfter", last);
        let link = format!("<{app_url}{path}?{}>; rel=\"next\"", ser.finish());
        if let Ok(v) = HeaderValue::from_str(&link) {
            res.headers_mut().insert(LINK, v);
        }
    }
    res
}
