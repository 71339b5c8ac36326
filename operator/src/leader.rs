//! Leader election through the coordination.k8s.io Lease `appstrate-operator`, so several
//! operator replicas never reconcile at once. Plain get/create/replace: optimistic concurrency
//! on the Lease's resourceVersion decides races.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta};
use kube::Client;

pub const LEASE_NAME: &str = "appstrate-operator";
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

pub struct LeaderElector {
    api: Api<Lease>,
    identity: String,
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, identity: &str) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            identity: identity.to_string(),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Acquires the Lease if it is free or expired, renews it if held; `Ok(true)` means leader.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        match self.api.get_opt(LEASE_NAME).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                match self
                    .api
                    .create(&crate::credentials::post_params(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                let held_by_me = spec.holder_identity.as_deref() == Some(self.identity.as_str());
                if !held_by_me && !is_free(spec, now) {
                    return Ok(false);
                }
                if !held_by_me {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
                spec.renew_time = Some(MicroTime(now));
                match self
                    .api
                    .replace(LEASE_NAME, &crate::credentials::post_params(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Gives the Lease up on shutdown so another replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        if let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                self.api
                    .replace(LEASE_NAME, &crate::credentials::post_params(), &lease)
                    .await?;
            }
        }
        Ok(())
    }
}

/// A Lease without holder, or whose holder did not renew within its duration.
pub fn is_free(spec: &LeaseSpec, now: Timestamp) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return true;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    match &spec.renew_time {
        None => true,
        Some(MicroTime(renewed)) => renewed
            .checked_add(duration)
            .map_or(true, |expiry| expiry < now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago),
            )),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn lease_is_free_when_empty_or_expired() {
        let now = Timestamp::now();
        assert!(is_free(&spec(None, 0), now));
        assert!(is_free(&spec(Some(""), 0), now));
        assert!(!is_free(&spec(Some("other"), 3), now));
        assert!(is_free(&spec(Some("other"), 16), now));
    }

    #[tokio::test]
    async fn two_replicas_one_leader() {
        let client = kube_fake_client::ClientBuilder::new()
            .build()
            .await
            .expect("fake client");
        let a = LeaderElector::new(client.clone(), "ops", "a");
        let b = LeaderElector::new(client.clone(), "ops", "b");
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        assert!(a.try_acquire_or_renew().await.unwrap(), "holder renews");
        a.release().await.unwrap();
        assert!(
            b.try_acquire_or_renew().await.unwrap(),
            "released lease is taken at once"
        );
        let lease: Lease = Api::namespaced(client, "ops")
            .get(LEASE_NAME)
            .await
            .unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(1));
    }
}
