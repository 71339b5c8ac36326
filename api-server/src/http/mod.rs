//! The HTTP API: thin handlers over the domain and infrastructure, assembled into one router.

pub mod auth;
pub mod error;
pub mod idempotency;
pub mod json;
pub mod list;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod session;

use std::any::Any;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::Server;
use utoipa::OpenApi;

use self::error::ApiError;
use self::idempotency::idempotency;
use self::middleware::{outer, rate_limit, record_route, shutdown_gate, Limit};
use self::openapi::Conventions;
use self::routes::{
    api_keys, applications, end_users, meta, models, packages, realtime, runs, schedules, webhooks,
};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Appstrate API", description = "Run AI agents packaged as AFPS archives."),
    paths(
        meta::health, meta::metrics, meta::openapi, meta::api_docs, meta::api_docs_asset, meta::llms_txt,
        applications::list, applications::create, applications::get, applications::update, applications::delete,
        api_keys::list, api_keys::available_scopes, api_keys::create, api_keys::revoke,
        end_users::create, end_users::list, end_users::get, end_users::update, end_users::delete,
        packages::import, packages::list, packages::get_package, packages::versions,
        packages::create, packages::publish, packages::delete_package,
        packages::put_connection, packages::get_connection, packages::delete_connection,
        packages::list_agents,
        runs::start_package_run, runs::start_inline_run, runs::list_runs, runs::list_agent_runs, runs::get_run,
        runs::run_logs, runs::cancel_run, realtime::run_stream, realtime::runs_stream,
        schedules::create_schedule, schedules::list_schedules, schedules::list_agent_schedules,
        schedules::get_schedule, schedules::update_schedule, schedules::delete_schedule,
        webhooks::create_webhook, webhooks::list_webhooks, webhooks::get_webhook,
        webhooks::update_webhook, webhooks::delete_webhook, webhooks::rotate_secret,
        webhooks::list_deliveries,
        routes::sink::workspace, routes::sink::event, routes::sink::heartbeat, routes::sink::finalize,
        routes::persistence::get_persistence, routes::persistence::wipe_persistence,
        routes::persistence::delete_memory, routes::persistence::delete_pinned,
        routes::documents::list_documents, routes::documents::list_run_documents,
        routes::documents::get_document, routes::documents::delete_document,
        routes::documents::document_content, routes::documents::download_signed,
        routes::documents::publish_content, routes::documents::create_upload,
        routes::documents::upload_content,
        routes::run_tools::context, routes::run_tools::remember_memory, routes::run_tools::recall_memory,
        routes::run_tools::pin, routes::run_tools::publish_document, routes::run_tools::input_file,
        models::registry, models::list_credentials, models::create_credential, models::test_inline,
        models::update_credential, models::delete_credential, models::test_credential,
        models::refresh_models, models::list_models, models::create_model, models::set_default,
        models::update_model, models::delete_model, models::test_model, models::test_model_inline, models::get_agent_model,
        models::put_agent_model, routes::usage::usage,
        routes::integrations::create_client, routes::integrations::update_client,
        routes::integrations::delete_client, routes::integrations::list_clients,
        routes::integrations::set_default_client, routes::integrations::connect_oauth2,
        routes::integrations::list_connections, routes::integrations::callback,
        routes::integrations::sidecar_refresh, routes::integrations::connect_session,
    ),
    components(schemas(applications::ApplicationDto, api_keys::ApiKeyDto, end_users::EndUserDto,
        packages::PackageDto, packages::VersionDto, crate::packages::ConnectionView,
        crate::packages::AgentSummary, openapi::Problem, openapi::ProblemFieldError,
        crate::models::CredentialView, crate::models::ModelView, crate::models::PricingView,
        crate::models::ProviderKind, crate::models::TestResult, crate::models::usage::UsageReport,
        crate::models::usage::UsageTotals, crate::integrations::clients::OAuthClientView,
        crate::integrations::connect::ConnectStarted, crate::integrations::connect::Connected,
        crate::integrations::status::ConnectionStatusView,
        crate::integrations::session::ConnectSession)),
    modifiers(&Conventions),
    security(("apiKey" = []), ("adminToken" = []))
)]
struct ApiDoc;

/// The OpenAPI 3.1 document with `APP_URL` as its server.
pub fn openapi_json(app_url: &str) -> String {
    let mut doc = ApiDoc::openapi();
    doc.servers = Some(vec![Server::new(app_url)]);
    doc.to_json().unwrap_or_else(|_| "{}".into())
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "API endpoint not found: {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// The complete application router.
pub fn router(state: AppState) -> Router {
    let rl = |limit: u32, window_secs: u64| {
        from_fn_with_state((state.clone(), Limit { limit, window_secs }), rate_limit)
    };
    let idem = |scope: &'static str| from_fn_with_state((state.clone(), scope), idempotency);

    let api = Router::new()
        .route(
            "/api/applications",
            get(applications::list).post(applications::create),
        )
        .route(
            "/api/applications/{id}",
            get(applications::get)
                .patch(applications::update)
                .delete(applications::delete),
        )
        .route(
            "/api/api-keys",
            get(api_keys::list).merge(post(api_keys::create).route_layer(rl(10, 60))),
        )
        .route(
            "/api/api-keys/available-scopes",
            get(api_keys::available_scopes),
        )
        .route(
            "/api/api-keys/{id}",
            axum::routing::delete(api_keys::revoke),
        )
        .route(
            "/api/end-users",
            get(end_users::list).route_layer(rl(300, 60)).merge(
                post(end_users::create)
                    .route_layer(idem("end-users:write"))
                    .route_layer(rl(60, 60)),
            ),
        )
        .route(
            "/api/end-users/{id}",
            get(end_users::get).route_layer(rl(300, 60)).merge(
                axum::routing::patch(end_users::update)
                    .delete(end_users::delete)
                    .route_layer(rl(60, 60)),
            ),
        )
        .merge(routes::packages::router(&state))
        .merge(routes::runs::router(&state))
        .merge(routes::schedules::router(&state))
        .merge(routes::webhooks::router(&state))
        .merge(routes::persistence::router())
        .merge(routes::documents::router())
        .merge(routes::models::router(&state))
        .merge(routes::integrations::router())
        .route_layer(from_fn_with_state(state.clone(), auth::require_auth))
        // Outside authentication: a mutating API request during shutdown is refused before any work.
        // The sink routes below are not gated (§5.3: runs may still finish during the grace).
        .route_layer(from_fn_with_state(state.clone(), shutdown_gate));

    let public = Router::new()
        .route("/health", get(meta::health))
        .route("/metrics", get(meta::metrics))
        .route("/api/openapi.json", get(meta::openapi))
        .route("/api/docs", get(meta::api_docs))
        .route("/api/docs/{file}", get(meta::api_docs_asset))
        .route("/llms.txt", get(meta::llms_txt));

    let routes = Router::new()
        .merge(public)
        .merge(routes::people::router(&state))
        .merge(routes::orgs::router(&state))
        .merge(routes::sso::router())
        .merge(routes::integrations::public_router())
        .merge(api)
        .merge(routes::sink::router())
        .merge(routes::run_tools::router())
        .merge(routes::documents::signed_router())
        .merge(crate::web::router());
    with_request_handling(routes, state)
}

/// The layers every route shares, around `routes`: the route-template recorder, the `/api` 404 fallback,
/// panic recovery, the body limit and the outermost request handling (request id, problem rendering,
/// access log, metrics).
pub fn with_request_handling(routes: Router<AppState>, state: AppState) -> Router {
    routes
        // Inside the recorder, so that a panicking route is still counted under its template; the outer
        // one covers the fallback.
        .route_layer(CatchPanicLayer::custom(panic_response))
        .route_layer(from_fn(record_route))
        .fallback(not_found)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(DefaultBodyLimit::max(state.config.api_body_limit_bytes))
        .layer(from_fn_with_state(state.clone(), outer))
        .with_state(state)
}

/// A handler panic becomes a 500 `internal_error` problem (rendered with the request id by `outer`). The
/// log line carries the panic message and, through the request span, the request id; never the request.
fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = %message, "request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "An unexpected error occurred.",
    )
    .into_response()
}
