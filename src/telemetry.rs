//! Logging setup: `tracing` to stderr, human or JSON. Stdout is reserved for the lines
//! scripts read (`listening on ...`, `root key: ...`).

use tracing_subscriber::EnvFilter;

/// Install the global subscriber (once; later calls are no-ops).
pub fn init(format: &str, level: &str) {
    // cryptoki logs an error for every mechanism in a token's list that it has no name
    // for (vendor mechanisms); they are not errors of ours, so they stay out unless
    // RUST_LOG asks for them.
    let quiet = "cryptoki::mechanism=off";
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},{quiet}")))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{quiet}")));
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
