//! Pure re-check of every rule the CRD schema and its CEL rules enforce.
//!
//! The API server normally refuses a bad resource, but a CRD installed without its rules, an
//! older schema, or a resource written before a rule existed still reaches the operator. A
//! violation becomes phase `Failed` with `Ready=False` (reason `InvalidSpec`); no child changes.

use std::fmt;

use kube::ResourceExt;

use crate::v1alpha1::{
    AccessMode, Appstrate, AppstrateSpec, RunAdapter, MAX_NAME_LEN, RESERVED_ENV,
    RESERVED_ENV_PREFIX,
};

/// One rule a spec breaks, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All violations of a spec, in field order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSpec(pub Vec<Violation>);

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for InvalidSpec {}

/// Checks a spec; `Ok` means every desired object can be built from it.
pub fn validate(spec: &AppstrateSpec) -> Result<(), InvalidSpec> {
    let mut v = Vec::new();
    let mut bad = |field: &'static str, message: String| v.push(Violation { field, message });

    if !(0..=3).contains(&spec.tier) {
        bad(
            "spec.tier",
            format!("must be between 0 and 3, got {}", spec.tier),
        );
    }
    if spec.image.trim().is_empty() {
        bad("spec.image", "must not be empty".into());
    }
    if !(1..=100).contains(&spec.replicas) {
        bad(
            "spec.replicas",
            format!("must be between 1 and 100, got {}", spec.replicas),
        );
    }
    if let Err(reason) = check_app_url(&spec.app_url) {
        bad("spec.appUrl", reason);
    }
    if !is_quantity(&spec.data_volume.size) {
        bad(
            "spec.dataVolume.size",
            format!("{:?} is not a quantity such as 1Gi", spec.data_volume.size),
        );
    }

    if let Some(pg) = &spec.postgres {
        match (&pg.managed, &pg.external) {
            (Some(_), Some(_)) | (None, None) => bad(
                "spec.postgres",
                "exactly one of managed or external must be set".into(),
            ),
            (Some(m), None) => {
                if m.image.trim().is_empty() {
                    bad("spec.postgres.managed.image", "must not be empty".into());
                }
                if !is_quantity(&m.storage) {
                    bad(
                        "spec.postgres.managed.storage",
                        format!("{:?} is not a quantity", m.storage),
                    );
                }
            }
            (None, Some(e)) => {
                if e.secret_ref.name.is_empty() || e.secret_ref.key.is_empty() {
                    bad(
                        "spec.postgres.external.secretRef",
                        "name and key must not be empty".into(),
                    );
                }
            }
        }
    } else if spec.tier >= 1 {
        bad("spec.postgres", "is required when tier >= 1".into());
    }

    if let Some(redis) = &spec.redis {
        match (&redis.managed, &redis.external) {
            (Some(_), Some(_)) | (None, None) => bad(
                "spec.redis",
                "exactly one of managed or external must be set".into(),
            ),
            (Some(m), None) => {
                if m.image.trim().is_empty() {
                    bad("spec.redis.managed.image", "must not be empty".into());
                }
                if !is_quantity(&m.storage) {
                    bad(
                        "spec.redis.managed.storage",
                        format!("{:?} is not a quantity", m.storage),
                    );
                }
            }
            (None, Some(e)) => {
                if e.secret_ref.name.is_empty() || e.secret_ref.key.is_empty() {
                    bad(
                        "spec.redis.external.secretRef",
                        "name and key must not be empty".into(),
                    );
                }
            }
        }
    } else if spec.tier >= 2 {
        bad("spec.redis", "is required when tier >= 2".into());
    }

    if let Some(storage) = &spec.storage {
        match (&storage.managed, &storage.external) {
            (Some(_), Some(_)) | (None, None) => bad(
                "spec.storage",
                "exactly one of managed or external must be set".into(),
            ),
            (Some(m), None) => {
                if m.image.trim().is_empty() {
                    bad("spec.storage.managed.image", "must not be empty".into());
                }
                if !is_quantity(&m.storage) {
                    bad(
                        "spec.storage.managed.storage",
                        format!("{:?} is not a quantity", m.storage),
                    );
                }
                if !is_bucket_name(&m.bucket) {
                    bad(
                        "spec.storage.managed.bucket",
                        format!("{:?} is not a valid bucket name", m.bucket),
                    );
                }
            }
            (None, Some(e)) => {
                if e.secret_ref.name.is_empty() {
                    bad(
                        "spec.storage.external.secretRef.name",
                        "must not be empty".into(),
                    );
                }
            }
        }
    }

    if spec.run_adapter == RunAdapter::Docker && spec.tier != 3 {
        bad(
            "spec.runAdapter",
            format!("docker requires tier 3, got tier {}", spec.tier),
        );
    }
    if let Some(docker) = &spec.docker {
        if docker.image.trim().is_empty() {
            bad("spec.docker.image", "must not be empty".into());
        }
    }
    if spec.tier == 3 && spec.storage.is_none() && spec.run_adapter != RunAdapter::Docker {
        bad(
            "spec.storage",
            "tier 3 requires spec.storage or spec.runAdapter: docker".into(),
        );
    }
    if spec.replicas > 1
        && spec.tier >= 2
        && !(spec.tier == 3 && spec.storage.is_some())
        && spec.data_volume.access_mode != AccessMode::ReadWriteMany
    {
        bad(
            "spec.replicas",
            "more than 1 replica requires S3 storage or spec.dataVolume.accessMode: ReadWriteMany"
                .into(),
        );
    }
    if !(0..=64).contains(&spec.sidecar_pool.size) {
        bad(
            "spec.sidecarPool.size",
            format!("must be between 0 and 64, got {}", spec.sidecar_pool.size),
        );
    }
    if let Some(r) = &spec.secrets_ref {
        if r.name.is_empty() {
            bad("spec.secretsRef.name", "must not be empty".into());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, env) in spec.extra_env.iter().enumerate() {
        if env.name.is_empty() {
            bad("spec.extraEnv", format!("entry {i} has an empty name"));
        } else if is_reserved_env(&env.name) {
            bad(
                "spec.extraEnv",
                format!(
                    "{} is set by the operator and cannot be overridden; configure it through the spec instead",
                    env.name
                ),
            );
        } else if !seen.insert(env.name.as_str()) {
            bad("spec.extraEnv", format!("{} is listed twice", env.name));
        }
    }

    if v.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec(v))
    }
}

/// Checks the whole resource: its name (children are named after it), then its spec.
pub fn validate_resource(app: &Appstrate) -> Result<(), InvalidSpec> {
    let mut v = Vec::new();
    if let Err(message) = check_name(&app.name_any()) {
        v.push(Violation {
            field: "metadata.name",
            message,
        });
    }
    if let Err(InvalidSpec(spec)) = validate(&app.spec) {
        v.extend(spec);
    }
    if v.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec(v))
    }
}

/// A DNS-1035 label of at most [`MAX_NAME_LEN`] characters, the rule of the CRD's root CEL rule.
pub fn check_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be a DNS-1035 label of at most {MAX_NAME_LEN} characters (a lowercase letter first, then lowercase letters, digits or '-'): children are named after it, such as the StatefulSet {name}-postgres, which must fit in 52 characters"
        ))
    }
}

/// Whether `spec.extraEnv` may not use this name (the operator sets it).
pub fn is_reserved_env(name: &str) -> bool {
    RESERVED_ENV.contains(&name) || name.starts_with(RESERVED_ENV_PREFIX)
}

/// `https://host[:port][/path]`, or plain http on localhost / 127.0.0.1 only.
fn check_app_url(url: &str) -> Result<(), String> {
    if url.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    let (rest, local_only) = if let Some(rest) = url.strip_prefix("https://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (rest, true)
    } else {
        return Err(format!(
            "{url:?} must start with https:// (or http://localhost)"
        ));
    };
    if url.contains(['?', '#']) {
        return Err(format!("{url:?} must not have a query or fragment"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!("{url:?} must not carry credentials"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(format!("{url:?} has no valid host"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{url:?} has an invalid port"));
        }
    }
    if local_only && host != "localhost" && host != "127.0.0.1" {
        return Err(format!(
            "{url:?} must use https (http is allowed for localhost and 127.0.0.1 only)"
        ));
    }
    Ok(())
}

/// A Kubernetes quantity in the forms the schema accepts (`1Gi`, `500M`, `1.5Gi`, `1024`).
pub fn is_quantity(q: &str) -> bool {
    const SUFFIXES: [&str; 12] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
    ];
    let number = SUFFIXES.iter().find_map(|s| q.strip_suffix(s)).unwrap_or(q);
    let mut parts = number.splitn(2, '.');
    let int = parts.next().unwrap_or_default();
    let frac = parts.next();
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

fn is_bucket_name(b: &str) -> bool {
    let bytes = b.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> AppstrateSpec {
        serde_yaml::from_str(yaml).expect("fixture spec parses")
    }

    fn fields(yaml: &str) -> Vec<&'static str> {
        match validate(&spec(yaml)) {
            Ok(()) => vec![],
            Err(InvalidSpec(v)) => v.into_iter().map(|v| v.field).collect(),
        }
    }

    const BASE: &str = "tier: 0\nimage: appstrate:1\nappUrl: https://appstrate.example.com\n";

    #[test]
    fn minimal_tier0_is_valid() {
        assert_eq!(fields(BASE), Vec::<&str>::new());
    }

    #[test]
    fn app_url_rules() {
        for ok in [
            "https://a.example.com",
            "https://a.example.com:8443/base",
            "http://localhost",
            "http://localhost:3000",
            "http://127.0.0.1:3000/",
        ] {
            assert_eq!(check_app_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "appstrate.example.com",
            "http://x.example",
            "https://user:pw@a.example.com",
            "https://a.example.com/?q=1",
            "https://a.example.com:0",
            "https://",
            "ftp://localhost",
        ] {
            assert!(check_app_url(bad).is_err(), "{bad}");
        }
        let bad = BASE.replace("https://appstrate.example.com", "http://x.example");
        assert_eq!(fields(&bad), vec!["spec.appUrl"]);
    }

    #[test]
    fn tier_ranges_and_required_sections() {
        assert_eq!(
            fields(&BASE.replace("tier: 0", "tier: -1")),
            vec!["spec.tier"]
        );
        assert_eq!(fields(&BASE.replace("tier: 0", "tier: 4"))[0], "spec.tier");
        assert_eq!(
            fields(&BASE.replace("tier: 0", "tier: 1")),
            vec!["spec.postgres"]
        );
        assert_eq!(
            fields(&format!(
                "{}postgres: {{managed: {{}}}}\n",
                BASE.replace("tier: 0", "tier: 2")
            )),
            vec!["spec.redis"]
        );
    }

    #[test]
    fn exactly_one_of_managed_or_external() {
        let both = format!(
            "{}postgres:\n  managed: {{}}\n  external: {{secretRef: {{name: db}}}}\n",
            BASE.replace("tier: 0", "tier: 1")
        );
        assert_eq!(fields(&both), vec!["spec.postgres"]);
        let neither = format!("{}postgres: {{}}\n", BASE.replace("tier: 0", "tier: 1"));
        assert_eq!(fields(&neither), vec!["spec.postgres"]);
    }

    #[test]
    fn docker_requires_tier3_and_tier3_requires_storage_or_docker() {
        let docker_t0 = format!("{BASE}runAdapter: docker\n");
        assert_eq!(fields(&docker_t0), vec!["spec.runAdapter"]);
        let t3 = "tier: 3\nimage: i\nappUrl: https://a.example\npostgres: {managed: {}}\nredis: {managed: {}}\n";
        assert_eq!(fields(t3), vec!["spec.storage"]);
        assert_eq!(
            fields(&format!("{t3}runAdapter: docker\n")),
            Vec::<&str>::new()
        );
        assert_eq!(
            fields(&format!("{t3}storage: {{managed: {{}}}}\n")),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn replicas_above_one_need_s3_or_rwx() {
        let t2 = "tier: 2\nimage: i\nappUrl: https://a.example\npostgres: {managed: {}}\nredis: {managed: {}}\nreplicas: 2\n";
        assert_eq!(fields(t2), vec!["spec.replicas"]);
        assert_eq!(
            fields(&format!("{t2}dataVolume: {{accessMode: ReadWriteMany}}\n")),
            Vec::<&str>::new()
        );
        // Tiers 0 and 1 force one replica instead of refusing.
        assert_eq!(fields(&format!("{BASE}replicas: 3\n")), Vec::<&str>::new());
    }

    #[test]
    fn names_are_dns1035_labels_of_at_most_43_characters() {
        for ok in ["a", "appstrate", "my-app-2", &"a".repeat(43)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "2app", "my.app", "-app", "app-", "App", &"a".repeat(44)] {
            let err = check_name(bad).expect_err(bad);
            assert!(
                err.contains("DNS-1035") && err.contains("52 characters"),
                "{err}"
            );
        }
    }

    #[test]
    fn extra_env_cannot_override_what_the_operator_sets() {
        let with = |name: &str| format!("{BASE}extraEnv: [{{name: {name}, value: x}}]\n");
        assert_eq!(fields(&with("FEATURE_FLAG")), Vec::<&str>::new());
        for reserved in [
            "DATABASE_URL",
            "REDIS_URL",
            "S3_BUCKET",
            "S3_ANYTHING",
            "PORT",
            "APP_URL",
            "BETTER_AUTH_SECRET",
            "RUN_ADAPTER",
            "SIDECAR_POOL_SIZE",
            "RUN_SLOT_POOL_SIZE",
        ] {
            let invalid = validate(&spec(&with(reserved))).expect_err(reserved);
            assert_eq!(invalid.0[0].field, "spec.extraEnv");
            assert!(
                invalid.0[0].message.contains(reserved)
                    && invalid.0[0].message.contains("set by the operator"),
                "{invalid}"
            );
        }
        let twice = format!("{BASE}extraEnv: [{{name: A, value: x}}, {{name: A, value: y}}]\n");
        assert!(validate(&spec(&twice))
            .unwrap_err()
            .to_string()
            .contains("A is listed twice"));
    }

    #[test]
    fn quantities_and_names() {
        assert!(
            is_quantity("1Gi")
                && is_quantity("1.5Gi")
                && is_quantity("1024")
                && is_quantity("500M")
        );
        assert!(
            !is_quantity("") && !is_quantity("Gi") && !is_quantity("1.Gi") && !is_quantity("1 Gi")
        );
        let bad = format!("{BASE}dataVolume: {{size: lots}}\nsidecarPool: {{size: -1}}\n");
        assert_eq!(
            fields(&bad),
            vec!["spec.dataVolume.size", "spec.sidecarPool.size"]
        );
        let msg = validate(&spec(&bad)).unwrap_err().to_string();
        assert!(
            msg.contains("spec.dataVolume.size") && msg.contains("spec.sidecarPool.size"),
            "{msg}"
        );
    }
}
