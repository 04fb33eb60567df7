//! Logging: `tracing` to stdout as JSON (or pretty for humans). Secrets never reach it:
//! handlers and use-cases skip them in spans, and secret types print as `[redacted]`.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogSettings;

/// Installs the global subscriber once; later calls (tests) are ignored. CLI commands log
/// plain lines to stderr.
pub fn init(settings: &LogSettings, to_stderr: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let result = if to_stderr {
        fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init()
    } else if settings.format == "pretty" {
        fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .try_init()
    } else {
        fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .try_init()
    };
    if result.is_ok() {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()));
            tracing::error!(location = ?location, "panic");
        }));
    }
}
