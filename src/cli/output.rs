//! What the CLI prints: JSON on stdout for scripts, short lines for people, and progress
//! on stderr only when stderr is a terminal (so pipes and logs stay clean).

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::io::{IsTerminal as _, Write as _};

/// Output mode of one invocation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    /// `--json`: print the API's JSON shapes.
    pub(crate) json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    /// Print `v` as pretty JSON on stdout.
    pub(crate) fn json(&self, v: &Value) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, v).context("Failed to write to stdout")?;
        writeln!(out).context("Failed to write to stdout")?;
        out.flush().context("Failed to flush stdout")
    }
}

fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A bar of `len` steps on stderr (hidden when stderr is not a terminal).
pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), target());
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_owned());
    pb
}

/// A JSON string field, or `-`.
pub(crate) fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}
