//! Provider credentials of an organization: the key encrypted with the connection keyring and never
//! returned, its test call and the provider's model listing.

use serde::Serialize;

use super::{
    api_of, check_api_key, check_base_url, invalid, label_taken, new_id, policy, provider,
    provider_kind, ModelsError, ProviderKind, TestResult, PROVIDERS,
};
use crate::config::LlmApi;
use crate::infra::database::models::ProviderCredentialRow;
use crate::infra::database::{now, DbError};
use crate::state::AppState;

/// A provider credential as returned: never the key.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialView {
    pub object: &'static str,
    pub id: String,
    pub label: String,
    pub provider_id: String,
    pub api: &'static str,
    pub base_url: String,
    /// The model ids the provider listed at the last refresh, or null before any.
    pub available_models: Option<Vec<String>>,
    pub models_refreshed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<ProviderCredentialRow> for CredentialView {
    fn from(r: ProviderCredentialRow) -> Self {
        let api = provider_kind(&r.provider_id)
            .map(|k| k.api)
            .unwrap_or("openai-completions");
        CredentialView {
            object: "model_provider_credential",
            id: r.id,
            label: r.label,
            provider_id: r.provider_id,
            api,
            base_url: r.base_url,
            available_models: r.available_models.map(|j| j.0),
            models_refreshed_at: r.models_refreshed_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// What creating a credential takes.
pub struct NewCredential {
    pub label: Option<String>,
    pub provider_id: String,
    pub api_key: String,
    pub base_url: Option<String>,
}

/// A credential's editable parts; `None` leaves a part alone.
#[derive(Default)]
pub struct CredentialPatch {
    pub label: Option<String>,
    pub api_key: Option<String>,
    pub base_url: Option<String>,
}

fn kind_field(provider_id: &str) -> Result<&'static ProviderKind, ModelsError> {
    provider_kind(provider_id).ok_or_else(|| {
        invalid(
            "providerId",
            "invalid_value",
            format!(
                "must be one of {}",
                PROVIDERS
                    .iter()
                    .map(|p| p.provider_id)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

/// The endpoint of an inline (unsaved) credential, validated.
fn inline_endpoint(
    state: &AppState,
    input: &NewCredential,
) -> Result<(LlmApi, String), ModelsError> {
    let kind = kind_field(&input.provider_id)?;
    check_api_key(&input.api_key)?;
    let base = match (&input.base_url, kind.default_base_url) {
        (Some(b), _) => check_base_url(b, &state.config)?,
        (None, Some(d)) => d.to_string(),
        (None, None) => {
            return Err(invalid(
                "baseUrl",
                "required",
                format!("is required for provider {}", kind.provider_id),
            ))
        }
    };
    Ok((api_of(kind), base))
}

/// `POST /api/model-provider-credentials`.
pub async fn create_credential(
    state: &AppState,
    org_id: &str,
    input: NewCredential,
) -> Result<CredentialView, ModelsError> {
    let (_, base_url) = inline_endpoint(state, &input)?;
    let kind = kind_field(&input.provider_id)?;
    let db = &state.infra.db;
    let label = match &input.label {
        Some(l) => l.trim().to_string(),
        None => {
            // Derived from the provider (and the host of a custom endpoint), made unique.
            let mut base = kind.display_name.to_string();
            if input.base_url.is_some() {
                if let Some(host) = url::Url::parse(&base_url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
                {
                    base = format!("{base} ({host})");
                }
            }
            let taken: Vec<String> = db
                .list_provider_credentials(org_id)
                .await?
                .into_iter()
                .map(|c| c.label)
                .collect();
            let mut label = base.clone();
            let mut n = 2;
            while taken.contains(&label) {
                label = format!("{base} {n}");
                n += 1;
            }
            label
        }
    };
    let at = now();
    let row = ProviderCredentialRow {
        id: new_id("mpc"),
        org_id: org_id.to_string(),
        label: label.clone(),
        provider_id: kind.provider_id.to_string(),
        base_url,
        api_key_encrypted: state.keyring.encrypt(input.api_key.as_bytes()),
        available_models: None,
        models_refreshed_at: None,
        created_at: at,
        updated_at: at,
    };
    match db.insert_provider_credential(&row).await {
        Ok(r) => Ok(r.into()),
        Err(DbError::Conflict(_)) => Err(label_taken("provider credential", &label)),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn load_credential(
    state: &AppState,
    org_id: &str,
    id: &str,
) -> Result<ProviderCredentialRow, ModelsError> {
    state
        .infra
        .db
        .get_provider_credential(org_id, id)
        .await?
        .ok_or_else(|| ModelsError::NotFound(format!("Model provider credential {id} not found")))
}

/// The key of a stored credential, decrypted for one use.
pub(crate) fn credential_key(
    state: &AppState,
    c: &ProviderCredentialRow,
) -> Result<String, ModelsError> {
    state
        .keyring
        .decrypt(&c.api_key_encrypted)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ModelsError::Internal(format!(
                "The key of model provider credential {} cannot be decrypted (was \
                 CONNECTION_ENCRYPTION_KEY changed without keeping the old key in \
                 CONNECTION_ENCRYPTION_KEYS?); enter the key again",
                c.id
            ))
        })
}

pub(crate) fn credential_api(c: &ProviderCredentialRow) -> LlmApi {
    provider_kind(&c.provider_id)
        .map(api_of)
        .unwrap_or(LlmApi::OpenAiCompletions)
}

pub async fn list_credentials(
    state: &AppState,
    org_id: &str,
) -> Result<Vec<CredentialView>, ModelsError> {
    Ok(state
        .infra
        .db
        .list_provider_credentials(org_id)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// `PUT /api/model-provider-credentials/{id}`: a new label, key or base URL. The provider stays.
pub async fn update_credential(
    state: &AppState,
    org_id: &str,
    id: &str,
    patch: CredentialPatch,
) -> Result<CredentialView, ModelsError> {
    let mut row = load_credential(state, org_id, id).await?;
    if let Some(l) = patch.label {
        row.label = l.trim().to_string();
    }
    if let Some(k) = patch.api_key {
        check_api_key(&k)?;
        row.api_key_encrypted = state.keyring.encrypt(k.as_bytes());
    } else {
        // A rewritten row is re-encrypted with the active key (§17).
        let key = credential_key(state, &row)?;
        row.api_key_encrypted = state.keyring.encrypt(key.as_bytes());
    }
    if let Some(b) = patch.base_url {
        row.base_url = check_base_url(&b, &state.config)?;
    }
    row.updated_at = now();
    let label = row.label.clone();
    match state.infra.db.update_provider_credential(&row).await {
        Ok(r) => Ok(r.into()),
        Err(DbError::Conflict(_)) => Err(label_taken("provider credential", &label)),
        Err(DbError::NotFound) => Err(ModelsError::NotFound(format!(
            "Model provider credential {id} not found"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `DELETE /api/model-provider-credentials/{id}`: the credential and its models. Choices naming those
/// models stay, and runs that would use them fail saying which choice to change.
pub async fn delete_credential(
    state: &AppState,
    org_id: &str,
    id: &str,
) -> Result<(), ModelsError> {
    state
        .infra
        .db
        .delete_provider_credential(org_id, id)
        .await
        .map_err(|e| match e {
            DbError::NotFound => {
                ModelsError::NotFound(format!("Model provider credential {id} not found"))
            }
            other => other.into(),
        })
}

/// `POST /api/model-provider-credentials/test`: tests a key before saving it.
pub async fn test_inline(
    state: &AppState,
    input: NewCredential,
) -> Result<TestResult, ModelsError> {
    let (api, base_url) = inline_endpoint(state, &input)?;
    let endpoint = provider::Endpoint {
        api,
        base_url: &base_url,
        api_key: &input.api_key,
    };
    Ok(provider::list_models(&endpoint, &policy(&state.config)).await)
}

/// `POST /api/model-provider-credentials/{id}/test`.
pub async fn test_credential(
    state: &AppState,
    org_id: &str,
    id: &str,
) -> Result<TestResult, ModelsError> {
    let row = load_credential(state, org_id, id).await?;
    let key = credential_key(state, &row)?;
    let endpoint = provider::Endpoint {
        api: credential_api(&row),
        base_url: &row.base_url,
        api_key: &key,
    };
    Ok(provider::list_models(&endpoint, &policy(&state.config)).await)
}

/// `POST /api/model-provider-credentials/{id}/refresh-models`: asks the provider for its models and
/// keeps the list on the credential.
pub async fn refresh_models(
    state: &AppState,
    org_id: &str,
    id: &str,
) -> Result<CredentialView, ModelsError> {
    let mut row = load_credential(state, org_id, id).await?;
    let key = credential_key(state, &row)?;
    let endpoint = provider::Endpoint {
        api: credential_api(&row),
        base_url: &row.base_url,
        api_key: &key,
    };
    let result = provider::list_models(&endpoint, &policy(&state.config)).await;
    let Some(models) = result.models else {
        return Err(ModelsError::Provider {
            code: result.error.unwrap_or_else(|| "provider_error".into()),
            message: result
                .message
                .unwrap_or_else(|| "The provider did not list its models".into()),
        });
    };
    row.available_models = Some(sqlx::types::Json(models));
    row.models_refreshed_at = Some(now());
    row.api_key_encrypted = state.keyring.encrypt(key.as_bytes());
    row.updated_at = now();
    Ok(state
        .infra
        .db
        .update_provider_credential(&row)
        .await?
        .into())
}
