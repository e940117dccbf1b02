//! Logging: `tracing` to journald when systemd connected our stderr to the
//! journal (`JOURNAL_STREAM`), to stderr otherwise. `RUST_LOG` filters
//! (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. Call once, first thing in `main`.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        // The layer fails where no journald socket exists: fall back to stderr.
        match tracing_journald::layer() {
            Ok(layer) => {
                registry
                    .with(layer.with_syslog_identifier(service.to_string()))
                    .init();
                return;
            }
            Err(e) => eprintln!("{service}: journald unavailable ({e}); logging to stderr"),
        }
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .init();
}
