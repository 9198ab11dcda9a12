//! Application assembly: state, router, listener, graceful shutdown.
//!
//! `Application::build` → `local_addr()` → `run_until_stopped()` (zero2prod's shape), so
//! the binary and black-box tests start the service the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;

use crate::auth::{ROOT_PREFIX, Secret};
use crate::clock::{Clock, DatabaseClock, SkewedClock, SystemClock};
use crate::config::Config;
use crate::hsm::Hsm;
use crate::jwt::{Issuers, TokenService};
use crate::keys::registry::ROOT_SETTING;
use crate::keys::{KeyService, Registry};
use crate::store::{Store, StoreError};

/// Seconds a `pending` key row is left alone by timed reconciler passes (its generation
/// may still be running in another request or replica).
pub const PENDING_GRACE: i64 = 120;

/// Seconds between full registry reloads on PostgreSQL (bounds staleness if a change
/// notification is lost).
pub const FULL_RELOAD_SECS: u64 = 30;

/// The reconciler runs every this many scheduler ticks.
pub const RECONCILE_EVERY: u64 = 10;

/// Settings the handlers read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The base URL of issuers, discovery and JWKS URLs, and its aliases.
    pub issuers: Issuers,
    /// JWKS `max-age`, seconds.
    pub jwks_max_age: u64,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` are believed.
    pub trusted_proxies: Vec<crate::auth::proxies::Cidr>,
    /// Seconds an audit record may stay unsealed before `GET /audit/verify` fails on it.
    pub audit_seal_max_lag: i64,
    /// Seconds during which a spent refresh token presented again is a retry, not reuse.
    pub refresh_reuse_grace: i64,
}

/// Shared state handed to every handler: one `Arc`, so the clone that each extractor and
/// middleware makes per request is one reference count, not one per service (the clone and
/// drop of the whole struct took 2.3 % of the server's CPU per ES256 token under perf,
/// 2026-12-06).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Services {
    /// The token.
    pub hsm: Hsm,
    /// The store.
    pub store: Store,
    /// In-memory view of apps, keys and revocations.
    pub registry: Arc<Registry>,
    /// Key lifecycle.
    pub keys: KeyService,
    /// Token issuance and verification.
    pub tokens: TokenService,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Handler settings.
    pub settings: Arc<Settings>,
    /// Per-source budget of authentication failures.
    pub limiter: Arc<crate::api::AuthLimiter>,
    /// The last `GET /readyz` probe (shared, reused while fresh).
    pub readiness: Arc<crate::api::Readiness>,
    /// Per-app budget of key-changing calls made with an app's own token.
    pub key_changes: Arc<crate::api::KeyChangeLimiter>,
    /// What `GET /metrics` exposes.
    pub metrics: prometheus::Registry,
    /// What this process's scheduler last did (replica id, leader, last tick).
    pub scheduler: Arc<crate::keys::scheduler::SchedulerStatus>,
    /// Token Status Lists: built, signed and served here.
    pub statuslists: Arc<crate::statuslist::Publisher>,
}

impl AppState {
    /// Whether the store answers (`Err` carries a printable reason).
    pub async fn store_ready(&self) -> Result<(), String> {
        self.store.ping().await.map_err(|e| e.to_string())
    }

    /// Base URL: `public_url`, else the address bound at start-up; never the request's
    /// `Host` (see [`Issuers`]).
    pub fn base_url(&self) -> &str {
        self.settings.issuers.base()
    }

    /// An app's issuer: `<base>/apps/<id>`; the `iss` of every token of the app.
    pub fn issuer(&self, app_id: &str) -> String {
        self.settings.issuers.issuer(app_id)
    }

    /// The issuers whose tokens verify: the current one and `issuer_aliases`.
    pub fn issuers(&self) -> &Issuers {
        &self.settings.issuers
    }

    /// Connect the store and the HSM and assemble the services.
    ///
    /// # Errors
    /// Start-up failures, with context.
    pub async fn connect(cfg: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let store = Store::open(&cfg.database_url()).await.with_context(|| {
            format!(
                "Failed to open the store at {}",
                crate::config::redact_url(&cfg.database_url())
            )
        })?;
        let mut hsm_cfg = cfg.hsm()?;
        hsm_cfg.store_id = Some(store.store_id().await?);
        let hsm = Hsm::connect(hsm_cfg)
            .await
            .context("Failed to open the HSM token")?;
        let audit = crate::audit::Audit::new(store.clone(), clock.clone());
        let registry = Arc::new(
            Registry::load(store.clone(), hsm.clone(), audit, clock.now())
                .await
                .context("Failed to load keys from the store")?,
        );
        let keys = KeyService::new(
            store.clone(),
            hsm.clone(),
            registry.clone(),
            clock.clone(),
            cfg.spare_keys,
            i64::try_from(cfg.jwks_max_age).unwrap_or(i64::MAX),
            i64::try_from(cfg.imported_key_max_life).unwrap_or(i64::MAX),
        );
        let tokens = TokenService::new(
            store.clone(),
            hsm.clone(),
            registry.clone(),
            clock.clone(),
            keys.audit().clone(),
        );
        let statuslists = Arc::new(crate::statuslist::Publisher::new(
            store.clone(),
            registry.clone(),
            tokens.clone(),
            clock.clone(),
            cfg.status_list_refresh,
        ));
        Ok(Self(Arc::new(Services {
            hsm,
            store,
            registry,
            keys,
            tokens,
            statuslists,
            clock,
            limiter: Arc::default(),
            readiness: Arc::default(),
            key_changes: Arc::default(),
            metrics: crate::metrics::registry().context("Failed to set up metrics")?,
            scheduler: Arc::default(),
            settings: Arc::new(Settings {
                issuers: configured_issuers(cfg, &cfg.listen),
                jwks_max_age: cfg.jwks_max_age,
                trusted_proxies: cfg.trusted_proxies().context("Invalid trusted_proxies")?,
                audit_seal_max_lag: cfg.audit_max_lag(),
                refresh_reuse_grace: cfg.refresh_grace(),
            }),
        })))
    }
}

/// Create the store at `url` as `hsm-rotator init` does: schema, store id and root key
/// (returned when made now, to be shown once).
///
/// # Errors
/// Store failures.
pub async fn init_store(url: &str) -> Result<(Store, Option<Secret>), StoreError> {
    let store = Store::connect(url).await?;
    let root = init_root_key(&store, None).await?;
    Ok((store, root))
}

/// The issuers of `cfg` for a service listening on `listen` (an address as configured, or
/// the one bound).
pub fn configured_issuers(cfg: &Config, listen: &str) -> Issuers {
    Issuers::new(
        cfg.public_url.as_deref(),
        listen,
        cfg.tls_cert.is_some(),
        &cfg.issuer_aliases,
    )
}

/// Why the issuer base may be wrong for clients: `public_url` unset while listening on a
/// non-loopback address (the issuer then names that address, which clients elsewhere may
/// reach by another name).
pub fn issuer_warning(cfg: &Config, bound: Option<SocketAddr>) -> Option<String> {
    if cfg.public_url.is_some() {
        return None;
    }
    let loopback = match bound {
        Some(a) => a.ip().is_loopback(),
        None => {
            let host = cfg
                .listen
                .rsplit_once(':')
                .map_or(cfg.listen.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    };
    (!loopback).then(|| {
        format!(
            "public_url is not set and the service listens on {}, not a loopback address: token issuers and discovery URLs name that address; set public_url to the URL clients use",
            bound.map_or_else(|| cfg.listen.clone(), |a| a.to_string())
        )
    })
}

/// Create the root key if the store has none; returns it (to be shown once).
///
/// # Errors
/// Store failures.
pub async fn init_root_key(
    store: &Store,
    registry: Option<&Registry>,
) -> Result<Option<Secret>, StoreError> {
    if store.setting(ROOT_SETTING).await?.is_some() {
        return Ok(None);
    }
    let key = Secret::generate(ROOT_PREFIX);
    if !store
        .insert_setting_if_absent(ROOT_SETTING, &key.digest())
        .await?
    {
        return Ok(None);
    }
    if let Some(r) = registry {
        r.set_root_digest(key.digest());
    }
    Ok(Some(key))
}

/// How often a server measures its clock's offset to the database's again.
const CLOCK_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// This host's clock; in tests, `HSM_ROTATOR_TEST_CLOCK_SKEW_MS` milliseconds off, to
/// stand for a replica whose host clock is wrong.
///
/// # Errors
/// A skew that is not an integer.
pub(crate) fn host_clock() -> anyhow::Result<Arc<dyn Clock>> {
    Ok(match std::env::var("HSM_ROTATOR_TEST_CLOCK_SKEW_MS") {
        Ok(v) => {
            let skew: i64 = v
                .trim()
                .parse()
                .context("HSM_ROTATOR_TEST_CLOCK_SKEW_MS must be an integer (milliseconds)")?;
            Arc::new(SkewedClock::new(Arc::new(SystemClock), skew))
        }
        Err(_) => Arc::new(SystemClock),
    })
}

/// Measure `clock`'s offset to the database's clock again; on failure keep the last one.
/// Of a few readings the one with the shortest round trip wins (its error is at most half
/// of it): a reading delayed in a busy pool would otherwise put the clock off by the delay.
pub(crate) async fn sync_clock(store: &crate::store::Store, clock: &DatabaseClock) {
    let mut best: Option<(i64, i64)> = None;
    let mut failure = None;
    for _ in 0..5 {
        match store.clock_offset_ms(clock.base()).await {
            Ok((offset, rtt)) if best.is_none_or(|(_, r)| rtt < r) => best = Some((offset, rtt)),
            Ok(_) => {}
            Err(e) => failure = Some(e),
        }
    }
    match best
        .map(|(o, _)| o)
        .ok_or_else(|| failure.map_or_else(String::new, |e| e.to_string()))
    {
        Ok(offset) => {
            if (offset - clock.offset_ms()).abs() >= 1_000 {
                tracing::info!(
                    offset_ms = offset,
                    "host clock is off the database's; tokens are stamped on the database's"
                );
            }
            clock.set_offset_ms(offset);
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the database's clock; keeping the last offset")
        }
    }
}

/// A built, bound, not yet serving application.
pub struct Application {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: crate::listener::Limits,
    router: Router,
    state: AppState,
    /// On SQLite, this process's exclusive hold on the store (see [`crate::store::lock`]).
    store_lock: Option<crate::store::StoreLock>,
}

impl Application {
    /// Connect to the HSM and the store, bind the listener.
    ///
    /// # Errors
    /// Any start-up failure, with context.
    pub async fn build(cfg: &Config) -> anyhow::Result<Self> {
        let started = std::time::Instant::now();
        // SQLite serves one process: a second server, or a CLI command writing directly,
        // would change keys behind this one's in-memory registry.
        let store_lock = crate::store::StoreLock::try_acquire(&cfg.database_url()).map_err(|e| {
            anyhow::anyhow!(
                "{e}. SQLite serves one process at a time: stop the other one (or use PostgreSQL for several replicas)"
            )
        })?;
        // `serve` never creates a store nor a root key (`init` does, and shows the key once):
        // `AppState::connect` refuses a store that `init` has not made.
        let clock = Arc::new(DatabaseClock::new(host_clock()?));
        let mut state = AppState::connect(cfg, clock.clone()).await?;
        // Stamp tokens on the database's clock before the first one is issued; then keep
        // the offset fresh (a host clock may be stepped or drift).
        sync_clock(&state.store, &clock).await;
        tokio::spawn({
            let (store, clock) = (state.store.clone(), clock.clone());
            async move {
                loop {
                    tokio::time::sleep(CLOCK_SYNC_EVERY).await;
                    sync_clock(&store, &clock).await;
                }
            }
        });
        let connected = started.elapsed();
        // Make the store and the HSM agree before serving (a crash may have left work half
        // done). With SQLite this is the only process, so no pending key is in flight.
        let min_pending_age = match state.store.dialect() {
            crate::store::Dialect::Sqlite => 0,
            crate::store::Dialect::Postgres => PENDING_GRACE,
        };
        let opts = cfg.reconcile_options(false, min_pending_age);
        if let Err(e) =
            crate::keys::reconcile::reconcile_at_start(&state.keys, &state.hsm, opts).await
        {
            tracing::warn!(error = %e, "start-up reconciliation failed; the scheduler will retry");
        }
        tracing::info!(
            connect_ms = connected.as_millis(),
            reconcile_ms = (started.elapsed() - connected).as_millis(),
            apps = state.registry.apps().len(),
            hsm_keys = state.hsm.cached_keys(),
            "start-up: store, token, caches and reconciliation done"
        );
        tokio::spawn(state.keys.spares().clone().run());
        tokio::spawn(state.keys.audit().clone().run_sealer(state.hsm.clone()));
        tokio::spawn(
            state
                .store
                .clone()
                .run_checkpointer(crate::store::CHECKPOINT_EVERY),
        );
        if state.store.dialect() == crate::store::Dialect::Postgres {
            tokio::spawn(state.registry.clone().follow(
                cfg.database_url(),
                state.clock.clone(),
                Duration::from_secs(FULL_RELOAD_SECS),
            ));
        }
        let scheduler = crate::keys::scheduler::Scheduler::new(
            state.keys.clone(),
            RECONCILE_EVERY,
            PENDING_GRACE,
        )
        .with_orphan_grace(cfg.reconcile_options(false, PENDING_GRACE).orphan_grace)
        .with_status(state.scheduler.clone());
        tokio::spawn(scheduler.run(Duration::from_secs(cfg.scheduler_interval)));
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("Failed to listen on {}", cfg.listen))?;
        // The issuer is fixed now, from the address actually bound (port 0 resolved).
        let bound = listener.local_addr().ok();
        if let Some(addr) = bound {
            let settings = Arc::new(Settings {
                issuers: configured_issuers(cfg, &addr.to_string()),
                ..(*state.settings).clone()
            });
            // Nothing holds the state before the router does: a copy made earlier would
            // keep the old issuer, so that is refused, never papered over.
            Arc::get_mut(&mut state.0)
                .context("the application state was shared before its issuer was fixed")?
                .settings = settings;
        }
        if let Some(w) = issuer_warning(cfg, bound) {
            tracing::warn!("{w}");
        }
        tokio::spawn(
            state
                .statuslists
                .clone()
                .run(state.settings.issuers.clone()),
        );
        let router = crate::api::router(state.clone());
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        Ok(Self {
            listener,
            tls,
            limits: crate::listener::Limits::from_config(cfg),
            router,
            state,
            store_lock,
        })
    }

    /// The bound address (the real port when `listen` asked for port 0).
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The base URL of every issuer, discovery document and JWKS URL.
    pub fn base_url(&self) -> &str {
        self.state.base_url()
    }

    /// `https` when TLS is configured, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Serve until SIGTERM or Ctrl-C, then finish requests in flight and close the HSM.
    ///
    /// # Errors
    /// If serving fails.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            tls,
            limits,
            router,
            state,
            store_lock,
        } = self;
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let spares = state.keys.spares().clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            // No new spare key is started from now on (one in flight still ends).
            spares.stop();
            let _ = stop_tx.send(true);
        });
        let serve = crate::listener::serve(listener, tls, router, limits, stop_rx.clone());
        // Requests in flight get SHUTDOWN_GRACE to finish; then the process exits anyway.
        let deadline = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            () = serve => {},
            () = deadline => tracing::warn!("requests still in flight after the shutdown grace period; exiting"),
        }
        state.hsm.close().await;
        drop(store_lock);
        tracing::info!("stopped");
        Ok(())
    }
}

/// How long requests in flight may take to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; finishing requests in flight");
}
