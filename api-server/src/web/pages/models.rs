//! Models of the organization: provider keys (tested before they are saved; the key is never sent back
//! to the page), the models on them with their prices, the organization's default, and the model of each
//! agent in this application with the one its runs use now.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Serialize;

use super::{agent_choices, form_viewer, value, viewer_or};
use crate::config::LlmPricing;
use crate::domain::{DomainError, FieldError};
use crate::models::{self, resolve, NewCredential, NewModel, PROVIDERS};
use crate::state::AppState;
use crate::web::context::Viewer;
use crate::web::form::form_errors;
use crate::web::{error_page, render_status, see_other};

/// The add-a-key form as submitted, without the key.
#[derive(Serialize, Default)]
struct KeyDraft {
    provider: String,
    label: String,
    base_url: String,
}

/// The add-a-model form as submitted.
#[derive(Serialize, Default)]
struct ModelDraft {
    credential: String,
    model_id: String,
    label: String,
    context_window: String,
    input_price: String,
    output_price: String,
}

#[derive(Serialize)]
struct AgentModel {
    id: String,
    label: String,
    chosen: Option<String>,
    effective: Option<String>,
    source: Option<String>,
    error: Option<String>,
}

#[derive(Default)]
struct Outcome {
    status: Option<StatusCode>,
    notice: Option<String>,
    /// Which form the error belongs to (`key`, `model`, `default`, `agent`).
    form: Option<&'static str>,
    error: Option<String>,
    errors: HashMap<String, String>,
    key: KeyDraft,
    model: ModelDraft,
    tested: Option<models::TestResult>,
}

impl Outcome {
    fn failed(form: &'static str, e: DomainError, known: &[&str]) -> Outcome {
        let (errors, error) = form_errors(&e, known);
        Outcome {
            status: Some(crate::web::status_for(&e)),
            form: Some(form),
            error,
            errors,
            ..Default::default()
        }
    }
}

async fn agent_models(state: &AppState, v: &Viewer) -> Vec<AgentModel> {
    let app = v.app();
    let mut out = Vec::new();
    for a in agent_choices(state, &v.principal).await {
        let chosen = state
            .infra
            .db
            .model_choices(&v.principal.org_id, Some(&app.id), Some(&a.id))
            .await
            .ok()
            .and_then(|c| c.agent);
        let resolved = resolve::resolve(
            state,
            &resolve::Request {
                org_id: &v.principal.org_id,
                application_id: &app.id,
                agent_id: Some(&a.id),
                run_model: None,
            },
        )
        .await;
        let (effective, source, error) = match resolved {
            Ok(r) => (Some(r.label), Some(r.source.as_str().to_string()), None),
            Err(e) => (None, None, Some(e.to_string())),
        };
        out.push(AgentModel {
            id: a.id,
            label: a.label,
            chosen,
            effective,
            source,
            error,
        });
    }
    out
}

async fn page(state: &AppState, v: &Viewer, out: Outcome) -> Response {
    let org = &v.principal.org_id;
    let loaded = async {
        v.principal.require_scope("models:read")?;
        let keys = models::list_credentials(state, org).await?;
        let list = models::list_models(state, org).await?;
        Ok::<_, DomainError>((keys, list))
    };
    let (keys, list) = match loaded.await {
        Ok(x) => x,
        Err(e) => return error_page(&e, Some(&v.ctx)),
    };
    let can_write = v.principal.require_permission("models:write").is_ok();
    let providers: Vec<(&str, &str, bool)> = PROVIDERS
        .iter()
        .map(|p| (p.provider_id, p.display_name, p.default_base_url.is_none()))
        .collect();
    let agents = agent_models(state, v).await;
    let instance_default = state.config.llm.as_ref().map(|l| l.model.clone());
    render_status(
        out.status.unwrap_or(StatusCode::OK),
        "models.html",
        minijinja::context! {
            title => "Models", section => "models", ctx => &v.ctx, keys, models => list.models,
            default_model => list.default_model_id, providers, agents, can_write,
            can_choose => v.can("packages:write"), instance_default,
            notice => out.notice, form => out.form, error => out.error, errors => out.errors,
            key => out.key, model => out.model, tested => out.tested,
        },
    )
}

/// `GET /models`
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match viewer_or(&state, &headers, "/models").await {
        Ok(v) => page(&state, &v, Outcome::default()).await,
        Err(res) => res,
    }
}

fn opt(pairs: &[(String, String)], name: &str) -> Option<String> {
    value(pairs, name)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `POST /models/credentials`: tests the key against the provider and saves it only when the test passes.
pub async fn add_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/models", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let draft = KeyDraft {
        provider: value(&pairs, "provider").unwrap_or("").to_string(),
        label: opt(&pairs, "label").unwrap_or_default(),
        base_url: opt(&pairs, "base_url").unwrap_or_default(),
    };
    let input = || NewCredential {
        label: opt(&pairs, "label"),
        provider_id: draft.provider.clone(),
        api_key: value(&pairs, "api_key").unwrap_or("").trim().to_string(),
        base_url: opt(&pairs, "base_url"),
    };
    const KNOWN: [&str; 4] = ["providerId", "label", "apiKey", "baseUrl"];
    let tested = async {
        v.principal.require_permission("models:write")?;
        if input().api_key.is_empty() {
            return Err(DomainError::validation(vec![FieldError::new(
                "apiKey",
                "required",
                "enter the provider's API key",
            )]));
        }
        Ok(models::test_inline(&state, input()).await?)
    };
    let result = match tested.await {
        Ok(r) => r,
        Err(e) => {
            let mut out = Outcome::failed("key", e, &KNOWN);
            out.key = draft;
            return page(&state, &v, out).await;
        }
    };
    if !result.ok {
        let out = Outcome {
            status: Some(StatusCode::BAD_REQUEST),
            form: Some("key"),
            key: draft,
            tested: Some(result),
            ..Default::default()
        };
        return page(&state, &v, out).await;
    }
    let out = match models::create_credential(&state, &v.principal.org_id, input()).await {
        Ok(c) => Outcome {
            status: Some(StatusCode::CREATED),
            notice: Some(format!(
                "Provider key “{}” saved after a successful test ({} ms).",
                c.label, result.latency_ms
            )),
            tested: Some(result),
            form: Some("key"),
            ..Default::default()
        },
        Err(e) => {
            let mut out = Outcome::failed("key", DomainError::from(e), &KNOWN);
            out.key = draft;
            out
        }
    };
    page(&state, &v, out).await
}

fn price(raw: &str, field: &str, errors: &mut Vec<FieldError>) -> Option<f64> {
    match raw.trim().parse::<f64>() {
        Ok(p) if p >= 0.0 && p.is_finite() => Some(p),
        _ => {
            errors.push(FieldError::new(
                field,
                "invalid_value",
                "a price in dollars per million tokens, e.g. 0.15",
            ));
            None
        }
    }
}

/// `POST /models/models`: adds a model on a saved key.
pub async fn add_model(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/models", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let get = |k: &str| value(&pairs, k).unwrap_or("").trim().to_string();
    let draft = ModelDraft {
        credential: get("credential"),
        model_id: get("model_id"),
        label: get("label"),
        context_window: get("context_window"),
        input_price: get("input_price"),
        output_price: get("output_price"),
    };
    const KNOWN: [&str; 6] = [
        "credentialId",
        "modelId",
        "label",
        "contextWindow",
        "inputPrice",
        "outputPrice",
    ];
    let added = async {
        v.principal.require_permission("models:write")?;
        let mut errors = Vec::new();
        let context_window = match draft.context_window.as_str() {
            "" => None,
            raw => match raw.parse::<i64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    errors.push(FieldError::new(
                        "contextWindow",
                        "invalid_value",
                        "a whole number of tokens, e.g. 128000",
                    ));
                    None
                }
            },
        };
        let pricing = match (draft.input_price.as_str(), draft.output_price.as_str()) {
            ("", "") => None,
            (i, o) => {
                let input = price(i, "inputPrice", &mut errors);
                let output = price(o, "outputPrice", &mut errors);
                input.zip(output).map(|(input, output)| LlmPricing {
                    input,
                    output,
                    cache_read: None,
                    cache_write: None,
                })
            }
        };
        if !errors.is_empty() {
            return Err(DomainError::validation(errors));
        }
        let m = models::create_model(
            &state,
            &v.principal.org_id,
            NewModel {
                credential_id: draft.credential.clone(),
                model_id: draft.model_id.clone(),
                label: (!draft.label.is_empty()).then(|| draft.label.clone()),
                context_window,
                pricing,
            },
        )
        .await?;
        Ok::<_, DomainError>(m)
    };
    let out = match added.await {
        Ok(m) => Outcome {
            status: Some(StatusCode::CREATED),
            notice: Some(format!("Model “{}” added.", m.label)),
            ..Default::default()
        },
        Err(e) => {
            let mut out = Outcome::failed("model", e, &KNOWN);
            out.model = draft;
            out
        }
    };
    page(&state, &v, out).await
}

/// `POST /models/default` (`model`: a model id, or empty for none): the organization's default.
pub async fn set_default(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/models", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let model = opt(&pairs, "model");
    let done = async {
        v.principal.require_permission("models:write")?;
        Ok::<_, DomainError>(
            models::set_default(&state, &v.principal.org_id, model.as_deref(), None).await?,
        )
    };
    match done.await {
        Ok(()) => see_other("/models"),
        Err(e) => page(&state, &v, Outcome::failed("default", e, &["modelId"])).await,
    }
}

/// `POST /models/agent` (`agent`, `model`: a model id, or empty to inherit): the agent's model in this
/// application.
pub async fn set_agent(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/models", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let model = opt(&pairs, "model");
    let agent = value(&pairs, "agent").unwrap_or("").to_string();
    let done = async {
        v.principal.require_scope("packages:write")?;
        let resolved = crate::packages::resolve_agent(&state, &v.principal, &agent, None).await?;
        models::set_agent_model(
            &state,
            &v.principal.org_id,
            &v.app().id,
            &resolved.package_id,
            model.as_deref(),
        )
        .await
        .map_err(DomainError::from)
    };
    match done.await {
        Ok(()) => see_other("/models"),
        Err(e) => page(&state, &v, Outcome::failed("agent", e, &["modelId"])).await,
    }
}
