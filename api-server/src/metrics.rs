//! Prometheus metrics of the API (§22.2), exposed on `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunCreatedLabels {
    pub kind: String,
    pub origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

/// The run slot pool's metrics (§13.3, docs/docker.md "Run slots"), shared with the Docker adapter
/// that updates them.
#[derive(Clone)]
pub struct SidecarMetrics {
    pub pool_desired: prometheus_client::metrics::gauge::Gauge,
    pub pool_ready: prometheus_client::metrics::gauge::Gauge,
    pub slots_creating: prometheus_client::metrics::gauge::Gauge,
    pub slots_failed: Counter,
    pub acquire_total: Family<SourceLabel, Counter>,
    pub acquire_seconds: Histogram,
}

impl Default for SidecarMetrics {
    fn default() -> Self {
        Self {
            pool_desired: Default::default(),
            pool_ready: Default::default(),
            slots_creating: Default::default(),
            slots_failed: Default::default(),
            acquire_total: Default::default(),
            acquire_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

impl SidecarMetrics {
    /// A run got its sandbox: a ready slot (`pool`) or one created on the hot path (`fresh`).
    pub fn acquired(&self, source: &str, took: std::time::Duration) {
        self.acquire_total
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .inc();
        self.acquire_seconds.observe(took.as_secs_f64());
    }
}

/// The `method` label of an HTTP request: one of the standard methods, or `other` for any extension
/// method, so that clients cannot grow the number of series.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub rate_limited: Family<RouteOnly, Counter>,
    pub rate_limiter_errors: Counter,
    pub runs_created_total: Family<RunCreatedLabels, Counter>,
    pub runs_finished_total: Family<StatusLabel, Counter>,
    pub runs_active: prometheus_client::metrics::gauge::Gauge,
    pub run_duration: Histogram,
    pub llm_tokens: Family<DirectionLabel, Counter>,
    pub webhook_deliveries: Family<ResultLabel, Counter>,
    pub retention_deleted: Family<KindLabel, Counter>,
    pub retention_batches: Counter,
    pub sidecar: SidecarMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(SidecarMetrics::default())
    }
}

impl Metrics {
    /// The registry, with the sidecar pool metrics the run adapter updates.
    pub fn new(sidecar: SidecarMetrics) -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let rate_limited = Family::<RouteOnly, Counter>::default();
        let rate_limiter_errors = Counter::default();
        registry.register(
            "appstrate_http_requests",
            "HTTP requests by method, route template and status",
            http_requests.clone(),
        );
        registry.register(
            "appstrate_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            http_duration.clone(),
        );
        registry.register(
            "appstrate_rate_limited",
            "Requests refused with 429 by route template",
            rate_limited.clone(),
        );
        registry.register(
            "appstrate_rate_limiter_errors",
            "Rate limiter backend errors (the request was let through)",
            rate_limiter_errors.clone(),
        );
        let runs_created_total = Family::<RunCreatedLabels, Counter>::default();
        let runs_finished_total = Family::<StatusLabel, Counter>::default();
        let runs_active = prometheus_client::metrics::gauge::Gauge::default();
        let run_duration = Histogram::new(exponential_buckets(0.05, 2.0, 16));
        let llm_tokens = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "appstrate_runs_created",
            "Runs created by kind and origin",
            runs_created_total.clone(),
        );
        registry.register(
            "appstrate_runs_finished",
            "Runs finalized by status",
            runs_finished_total.clone(),
        );
        registry.register(
            "appstrate_runs_active",
            "Runs whose workload runs on this instance",
            runs_active.clone(),
        );
        registry.register(
            "appstrate_run_duration_seconds",
            "Run duration from start to finalize",
            run_duration.clone(),
        );
        registry.register(
            "appstrate_llm_tokens",
            "LLM tokens by direction",
            llm_tokens.clone(),
        );
        let webhook_deliveries = Family::<ResultLabel, Counter>::default();
        registry.register(
            "appstrate_webhook_deliveries",
            "Webhook delivery attempts by result (success, retrying, failed)",
            webhook_deliveries.clone(),
        );
        let retention_deleted = Family::<KindLabel, Counter>::default();
        let retention_batches = Counter::default();
        registry.register(
            "appstrate_retention_deleted",
            "Rows deleted by retention, by kind (runs, run_logs, webhook_deliveries)",
            retention_deleted.clone(),
        );
        registry.register(
            "appstrate_retention_batches",
            "Retention batches run by this instance",
            retention_batches.clone(),
        );
        registry.register(
            "appstrate_run_slots_desired",
            "Run slots the pool keeps ready (RUN_SLOT_POOL_SIZE)",
            sidecar.pool_desired.clone(),
        );
        registry.register(
            "appstrate_run_slots_ready",
            "Run slots ready to be taken by a run",
            sidecar.pool_ready.clone(),
        );
        registry.register(
            "appstrate_run_slots_creating",
            "Run slots being created",
            sidecar.slots_creating.clone(),
        );
        registry.register(
            "appstrate_run_slots_failed",
            "Run slots that could not be created or failed a health check",
            sidecar.slots_failed.clone(),
        );
        // The seed's names (§13.3): the ready slots hold the pooled sidecars.
        registry.register(
            "appstrate_sidecar_pool_desired",
            "Same as appstrate_run_slots_desired",
            sidecar.pool_desired.clone(),
        );
        registry.register(
            "appstrate_sidecar_pool_ready",
            "Same as appstrate_run_slots_ready",
            sidecar.pool_ready.clone(),
        );
        registry.register(
            "appstrate_sidecar_acquire",
            "Run sandboxes acquired, by source (pool: a ready slot, fresh: created on the hot path)",
            sidecar.acquire_total.clone(),
        );
        registry.register(
            "appstrate_sidecar_acquire_seconds",
            "Time to acquire and configure a run's sandbox (a slot's configure, or a fresh sidecar)",
            sidecar.acquire_seconds.clone(),
        );
        Self {
            registry,
            sidecar,
            webhook_deliveries,
            retention_deleted,
            retention_batches,
            runs_created_total,
            runs_finished_total,
            runs_active,
            run_duration,
            llm_tokens,
            http_requests,
            http_duration,
            rate_limited,
            rate_limiter_errors,
        }
    }
}

impl Metrics {
    pub fn runs_created(&self, kind: &str, origin: &str) {
        self.runs_created_total
            .get_or_create(&RunCreatedLabels {
                kind: kind.into(),
                origin: origin.into(),
            })
            .inc();
    }

    pub fn runs_active_delta(&self, delta: i64) {
        self.runs_active.inc_by(delta);
    }

    /// Records a finalized run; `was_running` says whether it counted as active.
    pub fn run_finished(&self, run: &crate::infra::database::runs::RunRow, was_running: bool) {
        self.runs_finished_total
            .get_or_create(&StatusLabel {
                status: run.status.clone(),
            })
            .inc();
        if was_running {
            self.runs_active.dec();
        }
        if let Some(ms) = run.duration {
            self.run_duration.observe(ms as f64 / 1000.0);
        }
        for (direction, key) in [("input", "input_tokens"), ("output", "output_tokens")] {
            let n = run
                .token_usage
                .0
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            self.llm_tokens
                .get_or_create(&DirectionLabel {
                    direction: direction.into(),
                })
                .inc_by(n);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }
}
