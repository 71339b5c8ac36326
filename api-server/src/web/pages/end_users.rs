//! End-users of the application (the people an application acts for, `Appstrate-User` on the API): the
//! list, filtered by email or external id.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::viewer_or;
use crate::domain::DomainError;
use crate::infra::database::{EndUserFilter, Page};
use crate::state::AppState;
use crate::web::{error_page, render_status};

#[derive(Deserialize, Default)]
pub struct Filters {
    #[serde(default)]
    email: String,
    #[serde(default)]
    external_id: String,
}

#[derive(Serialize)]
struct Row {
    id: String,
    name: Option<String>,
    email: Option<String>,
    external_id: Option<String>,
    created: String,
}

/// `GET /end-users`
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<Filters>,
) -> Response {
    let v = match viewer_or(&state, &headers, "/end-users").await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let listed = async {
        v.principal.require_scope("end-users:read")?;
        let filter = EndUserFilter {
            email: Some(f.email.trim().to_string()).filter(|s| !s.is_empty()),
            external_id: Some(f.external_id.trim().to_string()).filter(|s| !s.is_empty()),
        };
        let page = Page {
            limit: 100,
            starting_after: None,
        };
        Ok::<_, DomainError>(
            state
                .infra
                .db
                .list_end_users(&v.app().id, &filter, &page)
                .await?,
        )
    };
    let page = match listed.await {
        Ok(p) => p,
        Err(e) => return error_page(&e, Some(&v.ctx)),
    };
    let rows: Vec<Row> = page
        .items
        .into_iter()
        .map(|e| Row {
            id: e.id,
            name: e.name,
            email: e.email,
            external_id: e.external_id,
            created: e.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        })
        .collect();
    render_status(
        StatusCode::OK,
        "end_users.html",
        minijinja::context! {
            title => "End-users", section => "end-users", ctx => &v.ctx, rows,
            more => page.has_more, email => f.email, external_id => f.external_id,
        },
    )
}
