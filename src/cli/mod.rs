//! Command line (docs/cli.md): `serve`, `init`, `app`, `keys`, `token`, `root-key rotate`,
//! `audit verify`, `reconcile` and `config check`.
//!
//! The operator commands (`app`, `keys`, `token`, `root-key`) work in two modes. By default they open
//! the store and the HSM themselves, through the same [`AppState`] and services as the
//! server; with `--url` they call a running server instead, with credentials from the
//! environment (`HSM_ROTATOR_ROOT_KEY`, `HSM_ROTATOR_ACCESS_TOKEN`), never from argv where
//! `ps` would show them. Both modes produce the API's JSON shapes: `--json` prints them,
//! otherwise they are turned into short human lines. A failure exits non-zero with one
//! plain sentence on stderr.
//!
//! With SQLite, a direct-mode change would not reach a running server's in-memory view,
//! so lifecycle changes take the store's lock ([`crate::store::StoreLock`]) and are
//! refused while a server holds it, naming `--url` as the way through.
//!
//! Files: [`apps`] (app and keys), [`tokens`] (token), [`root_key`] (root-key rotate),
//! [`check`] (config check), [`remote`] (the HTTP client), [`direct`] (the in-process mode).

mod apps;
mod check;
mod direct;
mod migrate;
mod offline;
mod output;
mod remote;
mod root_key;
mod tokens;

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::app::Application;
use crate::config::Config;

pub use direct::Direct;
pub use remote::{ACCESS_TOKEN_ENV, ROOT_KEY_ENV, Remote};

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
    /// Talk to the server at this base URL instead of opening the store and the HSM.
    /// Credentials come from HSM_ROTATOR_ROOT_KEY / HSM_ROTATOR_ACCESS_TOKEN.
    #[arg(long, global = true, env = "HSM_ROTATOR_URL", value_name = "URL")]
    pub url: Option<String>,
    /// With an https --url: trust only the CA certificates in this PEM file (a private CA),
    /// instead of the system's trust store.
    #[arg(long, global = true, env = "HSM_ROTATOR_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Print machine-readable JSON on stdout (the API's shapes where there is one).
    #[arg(long, global = true)]
    pub json: bool,
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
    /// Create the store (with its id) and its root key, shown once: on a terminal, as JSON
    /// with `--json`, or into a new 0600 file with `--root-key-file`. `serve` never creates
    /// a store nor shows a secret.
    Init {
        /// Write the root key into this new file (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        root_key_file: Option<PathBuf>,
    },
    /// Apps: create, list, show, a new access token.
    App {
        /// What to do.
        #[command(subcommand)]
        command: AppCommand,
    },
    /// An app's signing keys: list, rotate, revoke, emergency-rotate, import.
    Keys {
        /// What to do.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// An app's tokens: issue, verify.
    Token {
        /// What to do.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The root key: rotate it (the new one is shown once, the old one stops working).
    RootKey {
        /// What to do.
        #[command(subcommand)]
        command: RootKeyCommand,
    },
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
        /// Destroy every object of this store that no key row knows now, without the grace
        /// period or the per-pass limit (each destruction is audited).
        #[arg(long)]
        force: bool,
        /// Also destroy objects with the legacy label (from before store ids) that no key row
        /// of this store knows. Only when no other deployment shares the token.
        #[arg(long)]
        destroy_legacy: bool,
    },
    /// The configuration.
    Config {
        /// What to do with it.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check that the HSM token can be opened and list our objects in it (see also
    /// `config check`).
    CheckHsm,
    /// Move another system's deployment in: keys into the HSM, apps, live sessions and
    /// credentials into the store (docs/migrating.md).
    Migrate {
        /// From what.
        #[command(subcommand)]
        command: MigrateCommand,
    },
}

/// `hsm-rotator migrate ...`.
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// A JWTPlus deployment, read from its MySQL/MariaDB database: every app with its keys
    /// (imported into the HSM), live sessions, root key and app keys. A second run changes
    /// nothing; a run that stopped half way can be run again.
    Jwtplus {
        /// The JWTPlus database, mysql://user:pass@host:3306/db (read only). Prefer the
        /// environment variable: a password on the command line shows in `ps`.
        #[arg(
            long,
            env = "HSM_ROTATOR_MIGRATE_FROM",
            value_name = "URL",
            hide_env_values = true
        )]
        from: String,
        /// Print what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `hsm-rotator app ...`.
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Create an app (or `--count` apps); its access token is printed once.
    Create(CreateArgs),
    /// List apps with their policy and key summary.
    List,
    /// Show one app.
    Show {
        /// App id.
        id: String,
    },
    /// Give an app a new access token, printed once; the old one stops working at once.
    AccessToken {
        /// App id.
        id: String,
    },
}

/// `app create` options; absent ones take the server's defaults.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Display name (with `--count N`, apps are named NAME-1 .. NAME-N).
    #[arg(long)]
    pub name: String,
    /// Signing algorithm: RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA.
    #[arg(long = "alg", value_name = "ALG")]
    pub signing_alg: Option<String>,
    /// RSA modulus bits: 2048, 3072 or 4096.
    #[arg(long)]
    pub rsa_bits: Option<u32>,
    /// Seconds between scheduled rotations.
    #[arg(long)]
    pub rotation_period: Option<i64>,
    /// Seconds a key keeps verifying after it stopped signing.
    #[arg(long)]
    pub verification_ttl: Option<i64>,
    /// Longest token lifetime, seconds.
    #[arg(long)]
    pub token_ttl: Option<i64>,
    /// Refresh-token lifetime, seconds (0: none).
    #[arg(long)]
    pub refresh_ttl: Option<i64>,
    /// Certificate subject (default CN=<name>).
    #[arg(long)]
    pub subject_dn: Option<String>,
    /// How many apps to create.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
}

/// `hsm-rotator keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Every key of an app with its state and timestamps.
    List {
        /// App id.
        app: String,
    },
    /// Graceful rotation: next becomes current, current becomes previous.
    Rotate {
        /// App id.
        app: String,
        /// Rotate even though the next key may still be missing from verifiers' cached
        /// JWKS (refused otherwise, with the time left); audited as an early rotation.
        #[arg(long)]
        force: bool,
    },
    /// Revoke one key: every token it signed is rejected, its HSM objects destroyed.
    Revoke {
        /// App id.
        app: String,
        /// Key id.
        kid: String,
    },
    /// Emergency rotation, for key compromise: every key of the app revoked and destroyed,
    /// every token of the app rejected, fresh current and next keys.
    EmergencyRotate {
        /// App id.
        app: String,
    },
    /// Import an existing private key into the HSM (sensitive, non-extractable, marked
    /// imported); the app rotates it out within `imported_key_max_life`.
    Import(ImportArgs),
}

/// `keys import` options.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// App id.
    pub app: String,
    /// Unencrypted PEM private key file: PKCS#8, PKCS#1 (RSA PRIVATE KEY) or SEC1 (EC PRIVATE
    /// KEY).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "jwk",
        conflicts_with = "jwk"
    )]
    pub pem: Option<PathBuf>,
    /// A private JWK file instead of a PEM.
    #[arg(long, value_name = "FILE")]
    pub jwk: Option<PathBuf>,
    /// Key id (a ULID; default a new one): the `kid` of the tokens it signs.
    #[arg(long)]
    pub kid: Option<String>,
    /// current (signs from now), next, or previous (verifies only).
    #[arg(long, default_value = "current", value_parser = ["current", "next", "previous"])]
    pub state: String,
}

/// `hsm-rotator root-key ...`.
#[derive(Debug, Subcommand)]
pub enum RootKeyCommand {
    /// Replace the root key: the new one is shown once (on a terminal, as JSON with
    /// `--json`, or into a new 0600 file), the old one stops working at once.
    Rotate {
        /// Write the new root key into this new file (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        root_key_file: Option<PathBuf>,
    },
}

/// `hsm-rotator token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a JWT signed by the app's current key; prints the token.
    Issue {
        /// App id.
        app: String,
        /// The `sub` claim.
        #[arg(long)]
        sub: Option<String>,
        /// Other claims, as a JSON object (`iss iat nbf exp jti` are set by the service).
        #[arg(long, value_name = "JSON")]
        claims: Option<String>,
        /// Lifetime in seconds (at most the app's token_ttl).
        #[arg(long)]
        ttl: Option<i64>,
    },
    /// Verify a JWT of the app (read from stdin, or --token-file); exits 1 if inactive.
    Verify {
        /// App id.
        app: String,
        /// File holding the token (`-`: stdin, the default).
        #[arg(long, value_name = "FILE", default_value = "-")]
        token_file: String,
        /// Verify as a relying party that never calls the token endpoints: signature
        /// against the app's JWKS, expiry, and the token's bit in its status list, all
        /// fetched from --url (else the configured public_url or listen address) and
        /// cached on disk.
        #[arg(long)]
        offline: bool,
        /// With --offline: where the JWKS and lists are cached (default
        /// $XDG_CACHE_HOME/hsm-rotator, else ~/.cache/hsm-rotator).
        #[arg(long, value_name = "DIR", requires = "offline")]
        cache_dir: Option<PathBuf>,
        /// With --offline: an earlier base URL (or an app's earlier issuer) whose tokens
        /// still verify, as the server's `issuer_aliases`; repeatable. Without --url the
        /// configured `issuer_aliases` count too.
        #[arg(long = "issuer-alias", value_name = "URL", requires = "offline")]
        issuer_alias: Vec<String>,
    },
}

/// `hsm-rotator audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and every record's HSM seal (needs the HSM); name the first
    /// broken record.
    Verify,
}

/// `hsm-rotator config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration, then check the PKCS#11 module, token, PIN, mechanisms
    /// and store; print each check and exit non-zero if any failed.
    Check,
}

/// Load the configuration named on the command line.
fn load_config(cli_config: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(Config::load(cli_config)?)
}

/// Run the parsed command line.
///
/// # Errors
/// Any failure, with context for the operator.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = output::Output::new(cli.json);
    // `config check` reports a broken file as one of its checks; everything else needs a
    // valid configuration first (`--url` commands only for logging).
    if let Command::Config {
        command: ConfigCommand::Check,
    } = cli.command
    {
        init_quiet_logs(cli.log_format.as_deref(), None);
        return check::run(cli.config.as_deref(), &out).await;
    }
    if let Some(url) = cli.url.as_deref() {
        init_quiet_logs(cli.log_format.as_deref(), None);
        let remote = Remote::new(url, cli.ca_cert.as_deref())?;
        return match cli.command {
            Command::App { command } => {
                apps::app(apps::Target::Remote(remote), command, &out).await
            }
            Command::Keys { command } => {
                apps::keys(apps::Target::Remote(remote), command, &out).await
            }
            Command::Token { command } => {
                tokens::run(apps::Target::Remote(remote), command, &out).await
            }
            Command::RootKey { command } => {
                root_key::run(apps::Target::Remote(remote), command, &out).await
            }
            _ => anyhow::bail!(
                "this command works on the store and the HSM directly; run it without --url"
            ),
        };
    }
    let mut cfg = load_config(cli.config.as_deref())?;
    if let Some(f) = &cli.log_format {
        cfg.log_format.clone_from(f);
    }
    match cli.command {
        Command::Serve { listen } => {
            crate::telemetry::init(&cfg.log_format, &cfg.log_level);
            if let Some(l) = listen {
                cfg.listen = l;
            }
            serve(&cfg).await
        }
        other => {
            init_quiet_logs(Some(&cfg.log_format), Some(&cfg.log_level));
            operate(&cfg, other, &out).await
        }
    }
}

/// Logs of one-shot commands: errors only unless `RUST_LOG` or a non-default `log_level`
/// asks for more (their output is what they print, not the service's chatter).
fn init_quiet_logs(format: Option<&str>, level: Option<&str>) {
    // cryptoki logs every mechanism of the token it has no name for, at error level.
    let level = match level {
        Some(l) if l != "info" => l,
        _ => "error,cryptoki::mechanism=off",
    };
    crate::telemetry::init(format.unwrap_or("human"), level);
}

async fn serve(cfg: &Config) -> anyhow::Result<()> {
    let app = Application::build(cfg).await?;
    let addr = app.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}://{addr}", app.scheme()).context("Failed to write to stdout")?;
    writeln!(
        out,
        "issuer base {} (each app's issuer is <base>/apps/<id>)",
        app.base_url()
    )
    .context("Failed to write to stdout")?;
    out.flush().context("Failed to flush stdout")?;
    drop(out);
    tracing::info!(%addr, issuer_base = app.base_url(), "serving");
    app.run_until_stopped().await
}

/// The commands that open the store (and the HSM) in this process.
async fn operate(cfg: &Config, command: Command, out: &output::Output) -> anyhow::Result<()> {
    match command {
        Command::Serve { .. } | Command::Config { .. } => Ok(()),
        Command::Init { root_key_file } => init(cfg, root_key_file.as_deref(), out).await,
        Command::App { command } => {
            let write = matches!(
                command,
                AppCommand::Create(_) | AppCommand::AccessToken { .. }
            );
            let d = Direct::open(cfg, write).await?;
            let r = apps::app(apps::Target::Direct(&d), command, out).await;
            d.close().await;
            r
        }
        Command::Keys { command } => {
            let write = !matches!(command, KeysCommand::List { .. });
            let d = Direct::open(cfg, write).await?;
            let r = apps::keys(apps::Target::Direct(&d), command, out).await;
            d.close().await;
            r
        }
        Command::RootKey { command } => {
            let d = Direct::open(cfg, true).await?;
            let r = root_key::run(apps::Target::Direct(&d), command, out).await;
            d.close().await;
            r
        }
        Command::Token {
            command: mut command @ TokenCommand::Verify { offline: true, .. },
        } => {
            // Offline verification opens neither the store nor the HSM: it reads the
            // server's public documents, at the base its tokens' issuers name, and accepts
            // the issuers the server would.
            let issuers = crate::app::configured_issuers(cfg, &cfg.listen);
            let remote = Remote::new(issuers.base(), None)?;
            if let TokenCommand::Verify { issuer_alias, .. } = &mut command {
                issuer_alias.extend(cfg.issuer_aliases.iter().cloned());
            }
            tokens::run(apps::Target::Remote(remote), command, out).await
        }
        Command::Token { command } => {
            // Issuing writes only the token ledger, which no server caches: no lock needed.
            let d = Direct::open(cfg, false).await?;
            let r = tokens::run(apps::Target::Direct(&d), command, out).await;
            d.close().await;
            r
        }
        Command::Migrate { command } => migrate::run(cfg, command, out).await,
        Command::Reconcile {
            dry_run,
            force,
            destroy_legacy,
        } => {
            let d = Direct::open(cfg, !dry_run).await?;
            let pb = output::bar(1, "reconcile");
            let progress = |phase: &str, done: usize, total: usize| {
                pb.set_message(phase.to_owned());
                pb.set_length(total as u64);
                pb.set_position(done as u64);
            };
            // A server may be running next to us (PostgreSQL) and generating spares right
            // now: leave young pending keys alone (the server's start-up pass handles a
            // crash's).
            let opts = crate::keys::reconcile::Options {
                force,
                destroy_legacy,
                ..cfg.reconcile_options(dry_run, crate::app::PENDING_GRACE)
            };
            let report = crate::keys::reconcile::reconcile_with_progress(
                &d.state().keys,
                &d.state().hsm,
                opts,
                &progress,
            )
            .await
            .context("Reconciliation failed");
            pb.finish_and_clear();
            d.close().await;
            let report = report?;
            if out.json {
                out.json(&serde_json::to_value(&report)?)
            } else {
                print_reconcile(&report);
                Ok(())
            }
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let store = crate::store::Store::open(&cfg.database_url())
                .await
                .context("Failed to open the store")?;
            let mut hsm_cfg = cfg.hsm()?;
            hsm_cfg.store_id = Some(store.store_id().await?);
            // The seals are HMACs only the HSM can compute: checking them needs it.
            let hsm = crate::hsm::Hsm::connect(hsm_cfg)
                .await
                .context("Failed to open the HSM token (audit seals are checked in it)")?;
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            let v = crate::audit::verify(&store, &hsm, cfg.audit_max_lag(), now).await;
            hsm.close().await;
            let v = v.context("Failed to read the audit log")?;
            if out.json {
                out.json(&serde_json::to_value(&v)?)?;
            } else if let Some((seq, what)) = &v.broken {
                println!("audit log BROKEN at record {seq}: {what}");
            } else {
                println!(
                    "audit log intact: {} records, {} sealed in the HSM (its mark: {}), {} not sealed yet",
                    v.records,
                    v.seals,
                    v.hsm_mark
                        .map_or_else(|| "none".to_owned(), |m| format!("record {m}")),
                    v.unsealed
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
            let mut per_owner = std::collections::BTreeMap::<String, usize>::new();
            for o in &objects {
                let owner = match &o.owner {
                    Some(crate::keys::LabelOwner::Store(s)) => format!("store {s}"),
                    Some(crate::keys::LabelOwner::Legacy) => "no store id (legacy)".into(),
                    None => "unreadable label".into(),
                };
                *per_owner.entry(owner).or_default() += 1;
            }
            println!(
                "token {:?}: ok, {} hsm-rotator objects",
                cfg.token_label,
                objects.len(),
            );
            for (owner, n) in per_owner {
                println!("  {n} of {owner}");
            }
            hsm.close().await;
            Ok(())
        }
    }
}

/// `hsm-rotator init`: create the store and its root key, and show the key once where it
/// cannot end up in a log: on a terminal, as JSON the caller asked for, or in a new 0600
/// file. Where it would go is settled before anything is created.
async fn init(
    cfg: &Config,
    root_key_file: Option<&std::path::Path>,
    out: &output::Output,
) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    if root_key_file.is_none() && !out.json && !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "stdout is not a terminal, so the root key would land in a pipe or a log: pass \
             --root-key-file FILE (written with mode 0600) or --json"
        );
    }
    if let Some(f) = root_key_file
        && f.exists()
    {
        anyhow::bail!("{} exists; the root key goes into a new file", f.display());
    }
    let url = cfg.database_url();
    let shown = crate::config::redact_url(&url);
    let (store, root) = crate::app::init_store(&url)
        .await
        .with_context(|| format!("Failed to create the store at {shown}"))?;
    let store_id = store.store_id().await?;
    match (root, root_key_file, out.json) {
        (Some(root), Some(file), json) => {
            write_private_file(file, &format!("{}\n", root.expose()))?;
            if json {
                out.json(&serde_json::json!({
                    "initialised": true, "store": shown, "store_id": store_id,
                    "root_key_file": file,
                }))?;
            } else {
                println!("store created at {shown} (store id {store_id})");
                println!(
                    "root key written to {} (mode 0600; only its SHA-256 is kept)",
                    file.display()
                );
            }
        }
        (Some(root), None, true) => {
            out.json(&serde_json::json!({
                "initialised": true, "store": shown, "store_id": store_id,
                "root_key": root.expose(),
            }))?;
        }
        (Some(root), None, false) => {
            println!("store created at {shown} (store id {store_id})");
            announce_root_key(&root)?;
        }
        (None, _, true) => out.json(&serde_json::json!({
            "initialised": false, "store": shown, "store_id": store_id,
        }))?,
        (None, _, false) => println!(
            "{shown} is already initialised (store id {store_id}); rotate the root key with \
             `hsm-rotator root-key rotate` (or POST /root-key/rotate)"
        ),
    }
    Ok(())
}

/// Create `path` with mode 0600 (failing if it exists) holding `text`.
fn write_private_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let f = create_private_file(path)?;
    fill_private_file(f, path, text)
}

/// Create `path`, empty, with mode 0600, failing if it exists.
fn create_private_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
        .with_context(|| format!("Failed to create {}", path.display()))
}

/// Write `text` into a file made by [`create_private_file`] and sync it.
fn fill_private_file(
    mut f: std::fs::File,
    path: &std::path::Path,
    text: &str,
) -> anyhow::Result<()> {
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("Failed to write {}", path.display()))
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
    let mismatch: Vec<String> = r
        .hsm_mismatch
        .iter()
        .map(|(k, s)| format!("{k}({s})"))
        .collect();
    show(
        "keys whose stored public key differs from the HSM's (refused)",
        &mismatch,
    );
    show("current/next keys replaced", &r.replaced);
    show(
        &format!("destroys retried ({verb} destroy)"),
        &r.destroys_retried,
    );
    show("apps given certificates", &r.certified_apps);
}
