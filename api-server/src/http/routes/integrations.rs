//! Integration connections over OAuth2 (docs/connections.md): OAuth clients per application, the connect
//! flow and its callback, the connections' status, and the sidecar's refresh endpoint. Thin: every rule
//! lives in `crate::integrations`. `{packageId}` is `@scope/name` URL-encoded as one segment
//! (`%40scope%2Fname`).

use axum::extract::{Path, Query, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde_json::json;

use crate::domain::DomainError;
use crate::http::auth::Auth;
use crate::http::error::{status_of, ApiError};
use crate::http::json::JsonBody;
use crate::integrations::connect::CallbackQuery;
use crate::integrations::{clients, connect, parse_package_id, refresh, session, status};
use crate::state::AppState;

/// The authenticated routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/integrations/{package_id}/auths/{auth_key}/oauth-clients",
            post(create_client),
        )
        .route(
            "/api/integrations/{package_id}/oauth-clients/{client_id}",
            put(update_client).delete(delete_client),
        )
        .route(
            "/api/integrations/{package_id}/auths/{auth_key}/clients",
            get(list_clients),
        )
        .route(
            "/api/integrations/{package_id}/auths/{auth_key}/default-client",
            put(set_default_client),
        )
        .route(
            "/api/integrations/{package_id}/auths/{auth_key}/connect/oauth2",
            post(connect_oauth2),
        )
        .route(
            "/api/integrations/{package_id}/auths/{auth_key}/connect/session",
            post(connect_session),
        )
        .route(
            "/api/integrations/{package_id}/connections",
            get(list_connections),
        )
}

/// The routes reached without an API credential: the provider's redirect (bound by its state) and the
/// sidecar's refresh (bound by its run token).
pub fn public_router() -> Router<AppState> {
    Router::new()
        .route("/api/integrations/callback", get(callback))
        .route("/api/integrations/connect/start", get(connect_start))
        .route(
            "/internal/oauth-token/{connection_id}/refresh",
            post(sidecar_refresh),
        )
}

#[utoipa::path(post, path = "/api/integrations/{packageId}/auths/{authKey}/oauth-clients", tag = "integrations",
    operation_id = "createOAuthClient", summary = "Register the provider's OAuth client for an integration auth",
    params(("packageId" = String, Path, description = "@scope/name, URL-encoded"), ("authKey" = String, Path)),
    request_body(content = crate::http::openapi::CreateOAuthClientRequest),
    responses((status = 201, body = clients::OAuthClientView), (status = 400), (status = 404), (status = 422)))]
pub async fn create_client(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((package_id, auth_key)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:write")?;
    let id = parse_package_id(&package_id)?;
    let view = clients::create_client(&state, &auth, &id, &auth_key, &body).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[utoipa::path(put, path = "/api/integrations/{packageId}/oauth-clients/{clientId}", tag = "integrations",
    operation_id = "updateOAuthClient", summary = "Change an OAuth client's label, client id or secret",
    params(("packageId" = String, Path), ("clientId" = String, Path, description = "oac_…")),
    request_body(content = crate::http::openapi::UpdateOAuthClientRequest),
    responses((status = 200, body = clients::OAuthClientView), (status = 400), (status = 404)))]
pub async fn update_client(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((package_id, client_id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:write")?;
    let id = parse_package_id(&package_id)?;
    let view = clients::update_client(&state, &auth, &id, &client_id, &body).await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(delete, path = "/api/integrations/{packageId}/oauth-clients/{clientId}", tag = "integrations",
    operation_id = "deleteOAuthClient", summary = "Delete an OAuth client (its connections will need a reconnect)",
    params(("packageId" = String, Path), ("clientId" = String, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_client(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((package_id, client_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:write")?;
    let id = parse_package_id(&package_id)?;
    clients::delete_client(&state, &auth, &id, &client_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/api/integrations/{packageId}/auths/{authKey}/clients", tag = "integrations",
    operation_id = "listOAuthClients", summary = "List the OAuth clients of an integration auth (never their secrets)",
    params(("packageId" = String, Path), ("authKey" = String, Path)),
    responses((status = 200, body = crate::http::openapi::OAuthClientList), (status = 404)))]
pub async fn list_clients(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((package_id, auth_key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:read")?;
    let id = parse_package_id(&package_id)?;
    let data = clients::list_clients(&state, &auth, &id, &auth_key).await?;
    Ok(Json(json!({"object": "list", "data": data, "hasMore": false})).into_response())
}

#[utoipa::path(put, path = "/api/integrations/{packageId}/auths/{authKey}/default-client", tag = "integrations",
    operation_id = "setDefaultOAuthClient", summary = "Choose the OAuth client new connections use",
    params(("packageId" = String, Path), ("authKey" = String, Path)),
    request_body(content = crate::http::openapi::DefaultOAuthClientRequest),
    responses((status = 200, body = clients::OAuthClientView), (status = 400), (status = 404)))]
pub async fn set_default_client(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((package_id, auth_key)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:write")?;
    let id = parse_package_id(&package_id)?;
    let view = clients::set_default_client(&state, &auth, &id, &auth_key, &body).await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(post, path = "/api/integrations/{packageId}/auths/{authKey}/connect/oauth2", tag = "integrations",
    operation_id = "connectOAuth2", summary = "Start an OAuth2 connection: the provider's authorization URL",
    params(("packageId" = String, Path), ("authKey" = String, Path)),
    request_body(content = crate::http::openapi::ConnectOAuth2Request),
    responses((status = 200, body = connect::ConnectStarted), (status = 400), (status = 404),
              (status = 412, description = "oauth_client_missing: register the provider's client first"),
              (status = 422, description = "unsupported_oauth: the manifest's auth cannot be connected"),
              (status = 502, description = "provider_error: discovery failed")))]
pub async fn connect_oauth2(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((package_id, auth_key)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:write")?;
    let id = parse_package_id(&package_id)?;
    let started = connect::start(&state, &auth, &id, &auth_key, &body).await?;
    Ok(Json(started).into_response())
}

#[utoipa::path(post, path = "/api/integrations/{packageId}/auths/{authKey}/connect/session", tag = "integrations",
    operation_id = "createConnectSession", summary = "A short-lived connect link for an end-user (Appstrate-User)",
    params(("packageId" = String, Path), ("authKey" = String, Path), ("Appstrate-User" = String, Header, description = "eu_…")),
    request_body(content = crate::http::openapi::ConnectSessionRequest),
    responses((status = 201, body = session::ConnectSession), (status = 400, description = "end_user_required"), (status = 404),
              (status = 422, description = "unsupported_oauth")))]
pub async fn connect_session(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((package_id, auth_key)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:write")?;
    let id = parse_package_id(&package_id)?;
    let created = session::create(&state, &auth, &id, &auth_key, &body).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `?session=cs_…`
#[derive(Debug, serde::Deserialize)]
pub struct StartQuery {
    session: Option<String>,
}

/// `GET /api/integrations/connect/start?session=cs_…`: the end-user's browser opens the link and is
/// redirected to the provider (302), or shown a page saying why not. A browser route, like
/// `/api/auth/sign-in/{provider}`, so not an operation of the JSON API's document.
pub async fn connect_start(State(state): State<AppState>, Query(q): Query<StartQuery>) -> Response {
    match session::open(&state, q.session.as_deref().unwrap_or("")).await {
        Ok(started) => {
            let mut res = StatusCode::FOUND.into_response();
            if let Ok(v) = HeaderValue::from_str(&started.authorization_url) {
                res.headers_mut().insert(axum::http::header::LOCATION, v);
            }
            res.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        Err(e) => {
            tracing::info!(code = %e.code, "connect link refused");
            page(&state, status_of(e.kind), "Connection failed", &e.detail)
        }
    }
}

#[utoipa::path(get, path = "/api/integrations/{packageId}/connections", tag = "integrations",
    operation_id = "listIntegrationConnections", summary = "The integration's connections and their status",
    params(("packageId" = String, Path)),
    responses((status = 200, body = crate::http::openapi::ConnectionStatusList), (status = 404)))]
pub async fn list_connections(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(package_id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:read")?;
    let id = parse_package_id(&package_id)?;
    let data = status::list(&state, &auth, &id).await?;
    Ok(Json(json!({"object": "list", "data": data, "hasMore": false})).into_response())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(state: &AppState, status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · Appstrate</title>\
         </head><body><main><h1>{title}</h1><p id=\"message\">{}</p>\
         <p>You can close this window.</p><p><a id=\"back\" href=\"{}/connections\">Back to the connections</a></p></main></body></html>",
        escape(text),
        escape(&state.config.app_url),
    );
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Not a problem document: the outer layer leaves this page alone.
    res.extensions_mut()
        .insert(crate::http::middleware::OwnErrorBody);
    res
}

#[utoipa::path(get, path = "/api/integrations/callback", tag = "integrations",
    operation_id = "oauthCallback", summary = "Where the provider sends the browser back (register this URI)",
    security(()),
    params(("code" = Option<String>, Query), ("state" = Option<String>, Query),
           ("error" = Option<String>, Query), ("error_description" = Option<String>, Query)),
    responses((status = 200, description = "An HTML page (JSON with Accept: application/json) saying the integration is connected", body = connect::Connected),
              (status = 400, description = "invalid_state, provider_refused or code_exchange_failed, with what to do"),
              (status = 502, description = "provider_error")))]
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let wants_json = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    match connect::finish(&state, &q).await {
        Ok(done) if wants_json => Json(done).into_response(),
        Ok(done) => {
            let who = done
                .account
                .get("email")
                .or_else(|| done.account.get("accountId"))
                .and_then(|v| v.as_str())
                .map(|a| format!(" as {a}"))
                .unwrap_or_default();
            page(
                &state,
                StatusCode::OK,
                "Connected",
                &format!("{} is connected{who}.", done.package_id),
            )
        }
        Err(e) => {
            tracing::info!(code = %e.code, detail = %e.detail, "integration connect failed");
            if wants_json {
                ApiError::from(e).into_response()
            } else {
                let status = status_of(e.kind);
                page(&state, status, "Connection failed", &e.detail)
            }
        }
    }
}

#[utoipa::path(post, path = "/internal/oauth-token/{connectionId}/refresh", tag = "runner",
    operation_id = "refreshRunOAuthToken", summary = "A fresh credential header for a run's sidecar (after a 401)",
    security(()),
    params(("connectionId" = String, Path), ("X-Run-Id" = String, Header)),
    responses((status = 200, description = "`{name, value}`: the re-rendered credential header", body = Object),
              (status = 401), (status = 404), (status = 412, description = "connection_needs_reconnect")))]
pub async fn sidecar_refresh(
    State(state): State<AppState>,
    Path(connection_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let run_id = headers
        .get("x-run-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if token.is_empty() || run_id.is_empty() {
        return Err(DomainError::unauthorized("A run's refresh token is required").into());
    }
    let (name, value) = refresh::refresh_for_sidecar(&state, run_id, &connection_id, token).await?;
    let mut res = Json(json!({"name": name, "value": value})).into_response();
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
