//! Operator metrics (§22.2), served as Prometheus text on `:8080/metrics`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::v1alpha1::Phase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

pub struct Metrics {
    registry: Registry,
    reconcile_total: Family<ResultLabel, Counter>,
    reconcile_duration: Histogram,
    reconcile_errors: Family<ReasonLabel, Counter>,
    instances: Family<PhaseLabel, Gauge>,
    phases: Mutex<HashMap<String, Phase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconcile_total = Family::<ResultLabel, Counter>::default();
        let reconcile_duration =
            Histogram::new([0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let reconcile_errors = Family::<ReasonLabel, Counter>::default();
        let instances = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "appstrate_operator_reconcile",
            "Reconciles of Appstrate resources by result",
            reconcile_total.clone(),
        );
        registry.register(
            "appstrate_operator_reconcile_duration_seconds",
            "Duration of one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "appstrate_operator_reconcile_errors",
            "Failed reconciles by error reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "appstrate_operator_instances",
            "Appstrate resources by phase",
            instances.clone(),
        );
        for p in Phase::ALL {
            instances
                .get_or_create(&PhaseLabel {
                    phase: p.as_str().into(),
                })
                .set(0);
        }
        Metrics {
            registry,
            reconcile_total,
            reconcile_duration,
            reconcile_errors,
            instances,
            phases: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, elapsed: Duration, error_reason: Option<&str>) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
        let result = if error_reason.is_some() {
            "error"
        } else {
            "success"
        };
        self.reconcile_total
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        if let Some(reason) = error_reason {
            self.reconcile_errors
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc();
        }
    }

    /// Records the phase of one resource (`None` once it is gone) and refreshes the gauges.
    pub fn set_phase(&self, key: &str, phase: Option<Phase>) {
        let Ok(mut phases) = self.phases.lock() else {
            return;
        };
        match phase {
            Some(p) => phases.insert(key.to_string(), p),
            None => phases.remove(key),
        };
        for p in Phase::ALL {
            let n = phases.values().filter(|v| **v == p).count();
            self.instances
                .get_or_create(&PhaseLabel {
                    phase: p.as_str().into(),
                })
                .set(n as i64);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_documented_metric_names() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(3), None);
        m.reconciled(Duration::from_millis(3), Some("kube_api"));
        m.set_phase("ns/a", Some(Phase::Ready));
        m.set_phase("ns/b", Some(Phase::Ready));
        m.set_phase("ns/b", None);
        let text = m.render();
        for needle in [
            "appstrate_operator_reconcile_total{result=\"success\"} 1",
            "appstrate_operator_reconcile_total{result=\"error\"} 1",
            "appstrate_operator_reconcile_errors_total{reason=\"kube_api\"} 1",
            "appstrate_operator_reconcile_duration_seconds_count 2",
            "appstrate_operator_instances{phase=\"Ready\"} 1",
            "appstrate_operator_instances{phase=\"Failed\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
