//! Logging, metrics and the operations HTTP server (`/metrics`, `/healthz`, `/readyz`).
//!
//! Log lines and metrics carry names, versions, reasons and counts, never secret values:
//! the types that hold secrets redact themselves in `Debug`, and metric labels are
//! low-cardinality words (kinds, states, error categories), never error text.

pub mod metrics;
pub mod server;

use tracing_subscriber::EnvFilter;

pub use metrics::Metrics;

/// Structured logs to stderr; `RUST_LOG` filters, `MONIVAULT_LOG_FORMAT=json` for JSON.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("MONIVAULT_LOG_FORMAT").is_ok_and(|v| v == "json");
    // A second init (e.g. in tests) is harmless, so its error is ignored.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
