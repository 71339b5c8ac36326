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
pub struct RouteOnly {
    pub route: String,
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
}

impl Default for Metrics {
    fn default() -> Self {
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
        Self {
            registry,
            http_requests,
            http_duration,
            rate_limited,
            rate_limiter_errors,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }
}
