//! Logging through `tracing`: text or one JSON object per line, on stderr (stdout is kept for command
//! output such as `appstrate bootstrap`). With `OTEL_EXPORTER_OTLP_ENDPOINT`, spans are also exported
//! as OpenTelemetry traces over OTLP/HTTP (protobuf); without it no OpenTelemetry layer is installed.

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// The exporter's provider, flushed by [`shutdown`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber for a command. `level` is one of error, warn, info, debug, trace.
pub fn init(level: &str, format: LogFormat) {
    install(level, format, false)
}

/// Installs the global subscriber for the server: as [`init`], plus the OTLP trace export when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init_server(level: &str, format: LogFormat) {
    install(level, format, true)
}

fn install(level: &str, format: LogFormat, server: bool) {
    // Our own crates at the chosen level; chatty dependencies stay at warn unless tracing everything.
    let deps = if level == "trace" { "trace" } else { "warn" };
    let filter = EnvFilter::new(format!(
        "{deps},appstrate={level},api_server={level},sidecar={level},runner={level}"
    ));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    // Built on a thread of its own: the exporter's blocking HTTP client must not be created inside
    // the async runtime.
    let otel = otlp_endpoint().filter(|_| server).and_then(|endpoint| {
        let built = {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || exporter(&endpoint))
                .join()
                .unwrap_or_else(|_| Err("the exporter panicked".into()))
        };
        match built {
        Ok(provider) => {
            let tracer = provider.tracer("appstrate");
            let _ = PROVIDER.set(provider);
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_tracked_inactivity(false)
                    // Spans are exported whatever LOG_LEVEL says: request, run and sidecar spans are
                    // at info.
                    .with_filter(EnvFilter::new(
                        "warn,appstrate=info,api_server=info,sidecar=info,runner=info",
                    )),
            )
        }
        Err(e) => {
            eprintln!(
                "OTEL_EXPORTER_OTLP_ENDPOINT: cannot export traces to {endpoint}: {e}; continuing without"
            );
            None
        }
        }
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-only `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), if set.
fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}

fn exporter(endpoint: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    let url = url::Url::parse(endpoint).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the scheme must be http or https".into());
    }
    // The general variable names the collector; the traces one names the full traces URL (OTLP spec).
    let traces_url =
        if std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_ok_and(|v| !v.is_empty()) {
            endpoint.to_string()
        } else {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url)
        .build()
        .map_err(|e| e.to_string())?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "appstrate".into());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service)
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
    ]));
    Ok(provider)
}

/// Whether spans are exported (`OTEL_EXPORTER_OTLP_ENDPOINT` was set and the exporter started).
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// Exports the spans still buffered; call once before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let provider = provider.clone();
        // Blocking export, off the async runtime's threads.
        let _ = std::thread::spawn(move || {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        })
        .join();
    }
}

/// The W3C `traceparent` of `span`, to hand to the runner and the sidecar; `None` when not exporting.
/// It carries only the trace and span ids and the sampled flag, never anything secret.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !exporting() {
        return None;
    }
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&span.context(), &mut carrier)
    });
    carrier.remove("traceparent")
}

/// Renames the exported span of `span` (a name known only once it has started, such as a request's
/// route template).
pub fn rename(span: &tracing::Span, name: String) {
    use opentelemetry::trace::TraceContextExt;
    span.context().span().update_name(name);
}

/// Makes the context of an incoming `traceparent` header the parent of `span` (a no-op when not
/// exporting or when the header is absent or malformed).
pub fn adopt_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(value) = traceparent.filter(|_| exporting()) else {
        return;
    };
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), value.to_string());
    let parent: Context = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    use opentelemetry::trace::TraceContextExt;
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}
