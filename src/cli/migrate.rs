//! `hsm-rotator migrate jwtplus --from mysql://user:pass@host:3306/db [--dry-run]`: see
//! [`crate::migrate`]. The plan or the result goes to stdout (JSON with `--json`), progress
//! to stderr.

use serde_json::Value;

use super::output::{self, Output, s};
use super::{Direct, MigrateCommand};
use crate::config::Config;
use crate::migrate::Progress;

/// Run a `migrate` command.
///
/// # Errors
/// Whatever stopped the migration, as one sentence (or one line per key that cannot be
/// imported).
pub(super) async fn run(cfg: &Config, command: MigrateCommand, out: &Output) -> anyhow::Result<()> {
    let MigrateCommand::Jwtplus { from, dry_run } = command;
    let d = Direct::open(cfg, !dry_run).await?;
    let pb = output::bar(0, "migrate jwtplus");
    let progress = |p: Progress<'_>| match p {
        Progress::Start(n) => pb.set_length(n as u64),
        Progress::App(name) => pb.set_message(format!("migrate jwtplus: {name}")),
        Progress::Done => pb.inc(1),
    };
    let r = crate::migrate::jwtplus(d.state(), &from, dry_run, &progress).await;
    pb.finish_and_clear();
    d.close().await;
    let report = r?;
    if out.json {
        return out.json(&report);
    }
    print_human(&report);
    Ok(())
}

fn print_human(r: &Value) {
    let dry = r.get("dry_run").and_then(Value::as_bool).unwrap_or(false);
    println!(
        "{}JWTPlus root key: {}",
        if dry {
            "dry run, nothing changed. "
        } else {
            ""
        },
        s(r, "root_key")
    );
    for a in r
        .get("apps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let keys: Vec<String> = a
            .get("keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|k| format!("{} {}", s(k, "kid"), s(k, "state")))
            .collect();
        let n = |k: &str| a.get(k).and_then(Value::as_u64).unwrap_or(0);
        println!(
            "app {} {:?} {}: {}; imported keys [{}], skipped {}, sessions {} (refresh {}, dropped {})",
            s(a, "app_id"),
            s(a, "name"),
            s(a, "algorithm"),
            s(a, "action"),
            keys.join(", "),
            a.get("skipped_keys")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            n("sessions"),
            n("refresh_tokens"),
            n("dropped_sessions"),
        );
    }
    if let Some(m) = r.get("migrated").and_then(Value::as_array) {
        println!("migrated {} app(s)", m.len());
    }
}
