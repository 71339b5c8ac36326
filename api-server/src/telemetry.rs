//! Logging through `tracing`: text or one JSON object per line, on stderr (stdout is kept for command
//! output such as `appstrate bootstrap`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `level` is one of error, warn, info, debug, trace.
pub fn init(level: &str, format: LogFormat) {
    // Our own crates at the chosen level; chatty dependencies stay at warn unless tracing everything.
    let deps = if level == "trace" { "trace" } else { "warn" };
    let filter = EnvFilter::new(format!(
        "{deps},appstrate={level},api_server={level},sidecar={level},runner={level}"
    ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
