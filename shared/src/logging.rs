//! Structured logs: one JSON object per line on stdout (CloudWatch on Lambda, the terminal or
//! a collector locally). `SLUICE_LOG` takes `RUST_LOG` syntax, default `info`.

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber for this process. Call once, first thing in `main`.
pub fn init() {
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .init();
}
