//! Command line: `serve`, `init`, and the operator subcommands.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::config::Config;

/// hsm-rotator: JWT signing keys kept in a PKCS#11 HSM.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Configuration file (TOML); every key can be overridden by HSM_ROTATOR_<KEY>.
    #[arg(long, global = true, env = "HSM_ROTATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: human or json (overrides the config file).
    #[arg(long, global = true, value_parser = ["human", "json"])]
    pub log_format: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve {
        /// Address to listen on (overrides `listen`); port 0 picks a free port.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Create the store and print the root key once (if it has none yet).
    Init,
    /// Check that the HSM token can be opened and list our objects in it.
    CheckHsm,
    /// The audit log.
    Audit {
        /// What to do with it.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Make the store and the HSM agree once, and print what was found and done.
    Reconcile {
        /// Only report; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `hsm-rotator audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and the HSM seals; name the first broken record.
    Verify {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Run the parsed command line.
///
/// # Errors
/// Any failure, with context for the operator.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(f) = cli.log_format {
        cfg.log_format = f;
    }
    crate::telemetry::init(&cfg.log_format, &cfg.log_level);
    match cli.command {
        Command::Serve { listen } => {
            if let Some(l) = listen {
                cfg.listen = l;
            }
            let app = Application::build(&cfg).await?;
            let addr = app.local_addr()?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {}://{addr}", app.scheme())
                .context("Failed to write to stdout")?;
            out.flush().context("Failed to flush stdout")?;
            drop(out);
            tracing::info!(%addr, "serving");
            app.run_until_stopped().await
        }
        Command::Init => {
            let store = crate::store::Store::connect(&cfg.database_url())
                .await
                .context("Failed to open the store")?;
            match crate::app::init_root_key(&store, None).await? {
                Some(root) => announce_root_key(&root)?,
                None => println!("already initialised; rotate the root key with POST /root/rotate"),
            }
            Ok(())
        }
        Command::Reconcile { dry_run, json } => {
            let state =
                crate::app::AppState::connect(&cfg, std::sync::Arc::new(crate::clock::SystemClock))
                    .await?;
            // A server may be running next to us and generating spares right now: leave
            // young pending keys alone (the server's start-up pass handles a crash's).
            let report = crate::keys::reconcile::reconcile(
                &state.keys,
                &state.hsm,
                dry_run,
                crate::app::PENDING_GRACE,
            )
            .await
            .context("Reconciliation failed")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_reconcile(&report);
            }
            state.hsm.close().await;
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { json },
        } => {
            let store = crate::store::Store::connect(&cfg.database_url())
                .await
                .context("Failed to open the store")?;
            let v = crate::audit::verify(&store)
                .await
                .context("Failed to read the audit log")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if let Some((seq, what)) = &v.broken {
                println!("audit log BROKEN at record {seq}: {what}");
            } else {
                println!(
                    "audit log intact: {} records, {} seals verified",
                    v.records, v.seals
                );
            }
            if v.broken.is_some() {
                anyhow::bail!("the audit log does not verify");
            }
            Ok(())
        }
        Command::CheckHsm => {
            let hsm = crate::hsm::Hsm::connect(cfg.hsm()?)
                .await
                .context("Failed to open the HSM token")?;
            hsm.ready().await.context("HSM session is not usable")?;
            let objects = hsm.list().await.context("Failed to list token objects")?;
            println!(
                "token {:?}: ok, {} hsm-rotator objects ({} key pairs cached)",
                cfg.token_label,
                objects.len(),
                hsm.cached_keys()
            );
            hsm.close().await;
            Ok(())
        }
    }
}

/// Print the new root key on stdout, once, as `root key: rk_...`.
///
/// # Errors
/// If stdout cannot be written.
pub fn announce_root_key(root: &crate::auth::Secret) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "root key: {}", root.expose()).context("Failed to write to stdout")?;
    writeln!(out, "(shown once: store it now; only its SHA-256 is kept)")
        .context("Failed to write to stdout")?;
    out.flush().context("Failed to flush stdout")?;
    Ok(())
}

fn print_reconcile(r: &crate::keys::reconcile::ReconcileReport) {
    let verb = if r.dry_run { "would" } else { "did" };
    println!(
        "reconcile ({}): {} finding(s)",
        if r.dry_run { "dry run" } else { "applied" },
        r.actions()
    );
    let show = |what: &str, items: &[String]| {
        if !items.is_empty() {
            println!("  {what} ({}): {}", items.len(), items.join(" "));
        }
    };
    show(
        &format!("pending keys finished ({verb} mark spare)"),
        &r.pending_finished,
    );
    show(
        &format!("pending keys undone ({verb} delete)"),
        &r.pending_undone,
    );
    show(
        &format!("orphan objects ({verb} destroy)"),
        &r.orphans_destroyed,
    );
    let missing: Vec<String> = r.missing.iter().map(|(k, s)| format!("{k}({s})")).collect();
    show("rows whose HSM objects are missing", &missing);
    show("current/next keys replaced", &r.replaced);
    show(
        &format!("destroys retried ({verb} destroy)"),
        &r.destroys_retried,
    );
    show("apps given certificates", &r.certified_apps);
}
