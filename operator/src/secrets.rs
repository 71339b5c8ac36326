//! Secrets the operator generates: created once when absent, never updated, never logged.
//!
//! Which Secrets an installation needs is pure ([`generated_secrets`]); their random values are
//! drawn only when one is missing ([`new_secret`]). A regenerated password would lock the API out
//! of its own database, so an existing Secret is never touched — not even its labels.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::ObjectMeta;
use kube::ResourceExt;
use rand::distributions::{Alphanumeric, DistString};
use rand::{Rng, RngCore};

use crate::desired::Plan;
use crate::labels::{self, child_name, Component};
use crate::v1alpha1::Appstrate;

/// A Secret the operator must make sure exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedSecret {
    pub name: String,
    pub component: Component,
}

/// The generated Secrets an installation needs, in creation order.
pub fn generated_secrets(app: &Appstrate) -> Vec<GeneratedSecret> {
    let name = app.name_any();
    let plan = Plan::of(&app.spec);
    let mut out = Vec::new();
    if app.spec.secrets_ref.is_none() {
        out.push(GeneratedSecret {
            name: labels::boot_secret_name(&name),
            component: Component::BootSecrets,
        });
    }
    for (needed, component) in [
        (plan.postgres_managed, Component::Postgres),
        (plan.redis_managed, Component::Redis),
        (plan.storage_managed, Component::Minio),
    ] {
        if needed {
            out.push(GeneratedSecret {
                name: child_name(&name, component.as_str()),
                component,
            });
        }
    }
    out
}

fn token(rng: &mut impl Rng, len: usize) -> String {
    Alphanumeric.sample_string(rng, len)
}

/// A new Secret with fresh random values for `which`.
pub fn new_secret(app: &Appstrate, which: &GeneratedSecret, rng: &mut impl RngCore) -> Secret {
    let name = app.name_any();
    let ns = app.namespace().unwrap_or_default();
    let mut data: BTreeMap<String, String> = BTreeMap::new();
    match which.component {
        Component::BootSecrets => {
            let mut key = [0u8; 32];
            rng.fill_bytes(&mut key);
            data.insert("BETTER_AUTH_SECRET".into(), token(rng, 48));
            data.insert("UPLOAD_SIGNING_SECRET".into(), token(rng, 48));
            data.insert(
                "CONNECTION_ENCRYPTION_KEY".into(),
                base64::engine::general_purpose::STANDARD.encode(key),
            );
        }
        Component::Postgres => {
            let password = token(rng, 32);
            let host = format!("{}.{ns}.svc", child_name(&name, "postgres"));
            data.insert("username".into(), "appstrate".into());
            data.insert(
                "url".into(),
                format!("postgres://appstrate:{password}@{host}:5432/appstrate"),
            );
            data.insert("password".into(), password);
        }
        Component::Redis => {
            let password = token(rng, 32);
            let host = format!("{}.{ns}.svc", child_name(&name, "redis"));
            data.insert("url".into(), format!("redis://:{password}@{host}:6379"));
            data.insert("password".into(), password);
        }
        Component::Minio => {
            data.insert("accessKeyId".into(), token(rng, 20));
            data.insert("secretAccessKey".into(), token(rng, 40));
        }
        Component::Api => {}
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(which.name.clone()),
            namespace: Some(ns),
            labels: Some(labels::labels(&name, which.component)),
            // No owner reference: credentials outlive the resource unless deletionPolicy is Delete.
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Keys a Secret must hold for the API to boot from it.
pub fn required_keys(component: Component) -> &'static [&'static str] {
    match component {
        Component::BootSecrets => &[
            "BETTER_AUTH_SECRET",
            "UPLOAD_SIGNING_SECRET",
            "CONNECTION_ENCRYPTION_KEY",
        ],
        Component::Postgres => &["username", "password", "url"],
        Component::Redis => &["password", "url"],
        Component::Minio => &["accessKeyId", "secretAccessKey"],
        Component::Api => &[],
    }
}

/// Whether `secret` holds `key` (in `data` or, before the server folds it, `stringData`).
pub fn has_key(secret: &Secret, key: &str) -> bool {
    secret.data.as_ref().is_some_and(|d| d.contains_key(key))
        || secret
            .string_data
            .as_ref()
            .is_some_and(|d| d.contains_key(key))
}

/// `Secret <name> lacks key(s) …` when `secret` misses any of `keys`.
pub fn missing_keys_message(secret: &Secret, name: &str, keys: &[&str]) -> Option<String> {
    let missing: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !has_key(secret, k))
        .collect();
    (!missing.is_empty()).then(|| format!("Secret {name} lacks key(s) {}", missing.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn app(yaml: &str) -> Appstrate {
        let mut a: Appstrate = serde_yaml::from_str(yaml).unwrap();
        a.metadata.namespace = Some("ns1".into());
        a
    }

    const T3: &str = "apiVersion: appstrate.dev/v1alpha1\nkind: Appstrate\nmetadata: {name: demo}\nspec: {tier: 3, image: i, appUrl: 'https://a.example', postgres: {managed: {}}, redis: {managed: {}}, storage: {managed: {}}}\n";

    #[test]
    fn needed_secrets_follow_tier_and_secrets_ref() {
        let names = |y: &str| {
            generated_secrets(&app(y))
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(T3),
            vec![
                "demo-boot-secrets",
                "demo-postgres",
                "demo-redis",
                "demo-minio"
            ]
        );
        assert_eq!(
            names(&T3.replace("tier: 3", "tier: 1")),
            vec!["demo-boot-secrets", "demo-postgres"]
        );
        let with_ref = T3.replace("tier: 3,", "tier: 0, secretsRef: {name: mine},");
        assert_eq!(names(&with_ref), Vec::<String>::new());
    }

    #[test]
    fn boot_secrets_meet_the_api_server_rules() {
        let a = app(T3);
        let s = new_secret(&a, &generated_secrets(&a)[0], &mut StdRng::seed_from_u64(7));
        let data = s.data.unwrap();
        assert!(!data["BETTER_AUTH_SECRET"].0.is_empty());
        assert!(data["UPLOAD_SIGNING_SECRET"].0.len() >= 16);
        let key = base64::engine::general_purpose::STANDARD
            .decode(&data["CONNECTION_ENCRYPTION_KEY"].0)
            .unwrap();
        assert_eq!(key.len(), 32);
        assert_eq!(s.metadata.owner_references, None);
        assert_eq!(
            s.metadata.labels.unwrap()[labels::COMPONENT],
            "boot-secrets"
        );
    }

    #[test]
    fn credential_urls_point_at_the_managed_services() {
        let a = app(T3);
        let all = generated_secrets(&a);
        let mut rng = StdRng::seed_from_u64(1);
        let pg = new_secret(&a, &all[1], &mut rng).data.unwrap();
        let url = String::from_utf8(pg["url"].0.clone()).unwrap();
        let pw = String::from_utf8(pg["password"].0.clone()).unwrap();
        assert_eq!(
            url,
            format!("postgres://appstrate:{pw}@demo-postgres.ns1.svc:5432/appstrate")
        );
        let redis = new_secret(&a, &all[2], &mut rng).data.unwrap();
        assert!(String::from_utf8(redis["url"].0.clone())
            .unwrap()
            .ends_with("@demo-redis.ns1.svc:6379"));
        // Two draws never produce the same password.
        let again = new_secret(&a, &all[1], &mut rng).data.unwrap();
        assert_ne!(again["password"], pg["password"]);
    }
}
