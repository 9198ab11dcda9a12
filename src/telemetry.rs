//! Logging setup: `tracing` to stderr, human or JSON. Stdout is reserved for the lines
//! scripts read (`listening on ...`, `root key: ...`).

use tracing_subscriber::EnvFilter;

/// Install the global subscriber (once; later calls are no-ops).
pub fn init(format: &str, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
