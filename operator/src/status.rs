//! Pure derivation of the status (§20.5) from what the reconciler observed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::health::ApiHealth;
use crate::v1alpha1::{AppstrateStatus, Phase, SidecarPoolStatus};

pub const DATABASE_READY: &str = "DatabaseReady";
pub const REDIS_READY: &str = "RedisReady";
pub const STORAGE_READY: &str = "StorageReady";
pub const API_READY: &str = "ApiReady";
pub const SIDECAR_POOL_READY: &str = "SidecarPoolReady";
pub const READY: &str = "Ready";

/// Condition types in the order `Ready` reports the first failing one.
pub const CONDITION_TYPES: [&str; 5] = [
    DATABASE_READY,
    REDIS_READY,
    STORAGE_READY,
    API_READY,
    SIDECAR_POOL_READY,
];

/// A condition before timestamps are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    fn new(type_: &'static str, ok: bool, reason: &str, message: impl Into<String>) -> Cond {
        Cond {
            type_,
            ok,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// What was seen of a database, Redis or storage backing service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    NotRequired {
        why: String,
    },
    /// Supplied by the user through a Secret; `missing` names what is absent.
    External {
        secret: String,
        missing: Option<String>,
    },
    /// Run by the operator as a StatefulSet.
    Managed {
        statefulset: String,
        ready: i32,
        missing: Option<String>,
    },
    /// Run by the operator, but its generated credentials are gone while its volume holds
    /// data initialised with them; `message` says how to recover.
    CredentialsLost {
        message: String,
    },
}

/// Reason of a backing condition whose credentials were deleted while data exists.
pub const CREDENTIALS_LOST: &str = "CredentialsLost";

pub fn backing_condition(type_: &'static str, b: &Backing) -> Cond {
    match b {
        Backing::NotRequired { why } => Cond::new(type_, true, "NotRequired", why.clone()),
        Backing::CredentialsLost { message } => {
            Cond::new(type_, false, CREDENTIALS_LOST, message.clone())
        }
        Backing::External {
            missing: Some(m), ..
        }
        | Backing::Managed {
            missing: Some(m), ..
        } => Cond::new(type_, false, "SecretMissing", m.clone()),
        Backing::External {
            secret,
            missing: None,
        } => Cond::new(
            type_,
            true,
            "External",
            format!("external, connection from Secret {secret}"),
        ),
        Backing::Managed {
            statefulset, ready, ..
        } if *ready >= 1 => Cond::new(
            type_,
            true,
            "StatefulSetReady",
            format!("StatefulSet {statefulset}: {ready}/1 ready"),
        ),
        Backing::Managed {
            statefulset, ready, ..
        } => Cond::new(
            type_,
            false,
            "StatefulSetNotReady",
            format!("StatefulSet {statefulset}: {ready}/1 ready"),
        ),
    }
}

/// What was seen of the API Deployment and its `/health`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiObservation {
    pub deployment: String,
    pub desired: i32,
    pub ready: i32,
    /// `None` when no replica was ready, so `/health` was not asked.
    pub health: Option<Result<ApiHealth, String>>,
    /// Set when the requested replicas were overridden (tiers 0 and 1).
    pub forced_replicas: Option<(i32, i32)>,
    /// A boot-secret problem that keeps pods from starting.
    pub missing_secret: Option<String>,
    /// Why the Deployment's ReplicaSet cannot create pods (its `ReplicaFailure` condition).
    pub pods_failed: Option<String>,
}

/// Reason of `ApiReady=False` when the API's pods cannot be created.
pub const FAILED_CREATE: &str = "FailedCreate";

pub fn api_condition(o: &ApiObservation) -> Cond {
    let mut note = String::new();
    if let Some((requested, tier)) = o.forced_replicas {
        note = format!("; replicas forced to 1 at tier {tier} (requested {requested})");
    }
    if let Some(m) = &o.pods_failed {
        return Cond::new(
            API_READY,
            false,
            FAILED_CREATE,
            format!(
                "{m}; Deployment {}: {}/{} ready{note}",
                o.deployment, o.ready, o.desired
            ),
        );
    }
    if let Some(m) = &o.missing_secret {
        return Cond::new(
            API_READY,
            false,
            "DeploymentProgressing",
            format!(
                "{m}; Deployment {}: {}/{} ready{note}",
                o.deployment, o.ready, o.desired
            ),
        );
    }
    match &o.health {
        Some(Err(e)) => Cond::new(
            API_READY,
            false,
            "HealthCheckFailed",
            format!("/health: {e}{note}"),
        ),
        Some(Ok(h)) if !h.is_serving() => Cond::new(
            API_READY,
            false,
            "HealthCheckFailed",
            format!("/health reports status {:?}{note}", h.status),
        ),
        Some(Ok(_)) if o.ready >= o.desired => Cond::new(
            API_READY,
            true,
            "DeploymentAvailable",
            format!(
                "Deployment {}: {}/{} ready, /health ok{note}",
                o.deployment, o.ready, o.desired
            ),
        ),
        _ => Cond::new(
            API_READY,
            false,
            "DeploymentProgressing",
            format!(
                "Deployment {}: {}/{} ready{note}",
                o.deployment, o.ready, o.desired
            ),
        ),
    }
}

/// `required` is false for the process adapter or a pool size of 0.
pub fn sidecar_condition(
    required: bool,
    health: Option<&Result<ApiHealth, String>>,
) -> (Cond, Option<SidecarPoolStatus>) {
    let pool = health
        .and_then(|h| h.as_ref().ok())
        .and_then(|h| h.sidecar_pool.as_ref())
        .map(|p| SidecarPoolStatus {
            desired: p.desired,
            ready: p.ready,
        });
    if !required {
        let c = Cond::new(
            SIDECAR_POOL_READY,
            true,
            "NotRequired",
            "process adapter or pool size 0",
        );
        return (c, pool);
    }
    let c = match &pool {
        None => Cond::new(
            SIDECAR_POOL_READY,
            false,
            "HealthUnavailable",
            "the API's /health is not available",
        ),
        Some(p) if p.ready >= p.desired => Cond::new(
            SIDECAR_POOL_READY,
            true,
            "PoolWarm",
            format!("{}/{} sidecars ready", p.ready, p.desired),
        ),
        Some(p) => Cond::new(
            SIDECAR_POOL_READY,
            false,
            "PoolWarming",
            format!("{}/{} sidecars ready", p.ready, p.desired),
        ),
    };
    (c, pool)
}

/// The `Ready` condition: `AllReady`, or `<Type>NotReady` naming the first failing condition.
pub fn ready_condition(conds: &[Cond]) -> Cond {
    match conds.iter().find(|c| !c.ok) {
        None => Cond::new(READY, true, "AllReady", "all conditions are true"),
        Some(c) => Cond::new(
            READY,
            false,
            &format!("{}NotReady", c.type_.trim_end_matches("Ready")),
            format!("{}: {}", c.type_, c.message),
        ),
    }
}

/// Reason of `Ready=False` when the API server refuses the apply of a child.
pub const APPLY_FAILED: &str = "ApplyFailed";

pub fn apply_failed_condition(message: &str) -> Cond {
    Cond::new(READY, false, APPLY_FAILED, message)
}

pub fn invalid_spec_condition(message: &str) -> Cond {
    Cond::new(READY, false, "InvalidSpec", message)
}

/// Phase from readiness and the previous phase: `Degraded` means it was Ready and is not now.
pub fn phase(ready: bool, previous: Option<Phase>, waiting_for_user_secret: bool) -> Phase {
    if ready {
        Phase::Ready
    } else if matches!(previous, Some(Phase::Ready | Phase::Degraded)) {
        Phase::Degraded
    } else if waiting_for_user_secret {
        Phase::Pending
    } else {
        Phase::Provisioning
    }
}

/// Attaches timestamps, keeping `lastTransitionTime` of conditions whose status did not change.
pub fn to_conditions(
    conds: &[Cond],
    previous: Option<&AppstrateStatus>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    conds
        .iter()
        .map(|c| {
            let status = if c.ok { "True" } else { "False" };
            let last = previous
                .and_then(|p| p.conditions.iter().find(|old| old.type_ == c.type_))
                .filter(|old| old.status == status)
                .map(|old| old.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: c.type_.to_string(),
                status: status.to_string(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                last_transition_time: last,
                observed_generation: generation,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::PoolHealth;

    fn healthy(pool: Option<(i64, i64)>) -> ApiHealth {
        ApiHealth {
            status: "healthy".into(),
            tier: Some(3),
            sidecar_pool: pool.map(|(desired, ready)| PoolHealth {
                enabled: true,
                desired,
                ready,
            }),
        }
    }

    #[test]
    fn backing_reasons() {
        let nr = backing_condition(
            DATABASE_READY,
            &Backing::NotRequired {
                why: "tier 0".into(),
            },
        );
        assert!(nr.ok && nr.reason == "NotRequired");
        let ext = backing_condition(
            REDIS_READY,
            &Backing::External {
                secret: "r".into(),
                missing: None,
            },
        );
        assert!(ext.ok && ext.reason == "External");
        let missing = backing_condition(
            REDIS_READY,
            &Backing::External {
                secret: "r".into(),
                missing: Some("Secret r not found".into()),
            },
        );
        assert!(
            !missing.ok
                && missing.reason == "SecretMissing"
                && missing.message.contains("Secret r")
        );
        let nready = backing_condition(
            STORAGE_READY,
            &Backing::Managed {
                statefulset: "x-minio".into(),
                ready: 0,
                missing: None,
            },
        );
        assert_eq!(
            (nready.ok, nready.reason.as_str()),
            (false, "StatefulSetNotReady")
        );
        let ready = backing_condition(
            STORAGE_READY,
            &Backing::Managed {
                statefulset: "x".into(),
                ready: 1,
                missing: None,
            },
        );
        assert_eq!(
            (ready.ok, ready.reason.as_str()),
            (true, "StatefulSetReady")
        );
    }

    #[test]
    fn api_reasons_and_forced_replicas_message() {
        let mut o = ApiObservation {
            deployment: "d".into(),
            desired: 1,
            ready: 0,
            health: None,
            forced_replicas: Some((3, 1)),
            missing_secret: None,
            pods_failed: None,
        };
        let c = api_condition(&o);
        assert_eq!((c.ok, c.reason.as_str()), (false, "DeploymentProgressing"));
        assert!(
            c.message
                .contains("replicas forced to 1 at tier 1 (requested 3)"),
            "{}",
            c.message
        );
        o.ready = 1;
        o.health = Some(Err("no answer within 2 s".into()));
        assert_eq!(api_condition(&o).reason, "HealthCheckFailed");
        o.health = Some(Ok(healthy(None)));
        let c = api_condition(&o);
        assert_eq!((c.ok, c.reason.as_str()), (true, "DeploymentAvailable"));
        o.ready = 0;
        o.health = None;
        o.pods_failed = Some("ReplicaSet d-1: FailedCreate: forbidden".into());
        let c = api_condition(&o);
        assert_eq!((c.ok, c.reason.as_str()), (false, FAILED_CREATE));
        assert!(
            c.message
                .starts_with("ReplicaSet d-1: FailedCreate: forbidden; Deployment d: 0/1 ready"),
            "{}",
            c.message
        );
    }

    #[test]
    fn sidecar_pool_and_ready_rollup() {
        let (c, pool) = sidecar_condition(false, None);
        assert_eq!((c.ok, c.reason.as_str(), pool), (true, "NotRequired", None));
        let (c, _) = sidecar_condition(true, None);
        assert_eq!(c.reason, "HealthUnavailable");
        let h = Ok(healthy(Some((2, 1))));
        let (c, pool) = sidecar_condition(true, Some(&h));
        assert_eq!((c.ok, c.reason.as_str()), (false, "PoolWarming"));
        assert_eq!(
            pool,
            Some(SidecarPoolStatus {
                desired: 2,
                ready: 1
            })
        );
        let (warm, _) = sidecar_condition(true, Some(&Ok(healthy(Some((2, 2))))));
        assert_eq!(warm.reason, "PoolWarm");

        let db = backing_condition(
            DATABASE_READY,
            &Backing::NotRequired {
                why: "tier 0".into(),
            },
        );
        let r = ready_condition(&[db.clone(), c.clone()]);
        assert_eq!((r.ok, r.reason.as_str()), (false, "SidecarPoolNotReady"));
        assert_eq!(ready_condition(&[db, warm]).reason, "AllReady");
    }

    #[test]
    fn phases() {
        assert_eq!(phase(true, None, false), Phase::Ready);
        assert_eq!(phase(false, None, false), Phase::Provisioning);
        assert_eq!(phase(false, Some(Phase::Ready), false), Phase::Degraded);
        assert_eq!(
            phase(false, Some(Phase::Provisioning), true),
            Phase::Pending
        );
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap());
        let c = vec![Cond::new(READY, false, "DatabaseNotReady", "x")];
        let first = to_conditions(&c, None, Some(1), &t0);
        let prev = AppstrateStatus {
            conditions: first,
            ..Default::default()
        };
        let same = to_conditions(&c, Some(&prev), Some(2), &t1);
        assert_eq!(same[0].last_transition_time, t0);
        let flipped = to_conditions(
            &[Cond::new(READY, true, "AllReady", "")],
            Some(&prev),
            Some(2),
            &t1,
        );
        assert_eq!(flipped[0].last_transition_time, t1);
    }
}
