//! /api routes of the packages area.

use axum::Router;

use crate::state::AppState;

/// The authenticated routes of this area (mounted under the auth layer).
pub fn router(_state: &AppState) -> Router<AppState> {
    Router::new()
}
