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

use crate::api::extract_host::HostHeader;
use crate::auth::{ROOT_PREFIX, Secret};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::hsm::Hsm;
use crate::jwt::TokenService;
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
    /// Public base URL, if configured.
    pub public_url: Option<String>,
    /// JWKS `max-age`, seconds.
    pub jwks_max_age: u64,
    /// Seconds an audit record may stay unsealed before `GET /audit/verify` fails on it.
    pub audit_seal_max_lag: i64,
}

/// Shared state handed to every handler.
#[derive(Clone)]
pub struct AppState {
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
    /// Per-address limit on authentication failures.
    pub limiter: Arc<crate::api::AuthLimiter>,
    /// What `GET /metrics` exposes.
    pub metrics: prometheus::Registry,
    /// What this process's scheduler last did (replica id, leader, last tick).
    pub scheduler: Arc<crate::keys::scheduler::SchedulerStatus>,
}

impl AppState {
    /// Whether the store answers (`Err` carries a printable reason).
    pub async fn store_ready(&self) -> Result<(), String> {
        self.store.ping().await.map_err(|e| e.to_string())
    }

    /// Base URL: `public_url`, else `http://<Host>`.
    pub fn base_url(&self, host: &HostHeader) -> String {
        match (&self.settings.public_url, &host.0) {
            (Some(u), _) => u.trim_end_matches('/').to_owned(),
            (None, Some(h)) => format!("http://{h}"),
            (None, None) => "http://localhost".to_owned(),
        }
    }

    /// An app's issuer: `<base>/apps/<id>`; the `iss` of every token of the app.
    pub fn issuer(&self, host: &HostHeader, app_id: &str) -> String {
        format!("{}/apps/{app_id}", self.base_url(host))
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
        let registry = Arc::new(
            Registry::load(store.clone(), clock.now())
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
        );
        let tokens = TokenService::new(
            store.clone(),
            hsm.clone(),
            registry.clone(),
            clock.clone(),
            keys.audit().clone(),
        );
        Ok(Self {
            hsm,
            store,
            registry,
            keys,
            tokens,
            clock,
            limiter: Arc::default(),
            metrics: crate::metrics::registry().context("Failed to set up metrics")?,
            scheduler: Arc::default(),
            settings: Arc::new(Settings {
                public_url: cfg.public_url.clone(),
                jwks_max_age: cfg.jwks_max_age,
                audit_seal_max_lag: cfg.audit_max_lag(),
            }),
        })
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

/// A built, bound, not yet serving application.
pub struct Application {
    listener: TcpListener,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
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
        let state = AppState::connect(cfg, Arc::new(SystemClock)).await?;
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
        let router = crate::api::router(state.clone());
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("Failed to listen on {}", cfg.listen))?;
        let tls = cfg.tls_cert.clone().zip(cfg.tls_key.clone());
        Ok(Self {
            listener,
            tls,
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
            router,
            state,
            store_lock,
        } = self;
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let mut graceful = stop_rx.clone();
        let make = router.into_make_service_with_connect_info::<crate::tls::ClientAddr>();
        let graceful = async move {
            let _ = graceful.wait_for(|stop| *stop).await;
        };
        let serve: std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>,
        > = match tls {
            Some((cert, key)) => {
                let listener = crate::tls::TlsListener::new(listener, &cert, &key)?;
                Box::pin(
                    axum::serve(listener, make)
                        .with_graceful_shutdown(graceful)
                        .into_future(),
                )
            }
            None => Box::pin(
                axum::serve(listener, make)
                    .with_graceful_shutdown(graceful)
                    .into_future(),
            ),
        };
        // Requests in flight get SHUTDOWN_GRACE to finish; then the process exits anyway.
        let deadline = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            r = serve => r.context("HTTP server failed")?,
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
