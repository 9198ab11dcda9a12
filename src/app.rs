//! Application assembly: state, router, listener, graceful shutdown.
//!
//! `Application::build` → `local_addr()` → `run_until_stopped()` (zero2prod's shape), so
//! the binary and black-box tests start the service the same way.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::hsm::Hsm;

/// Shared state handed to every handler.
#[derive(Clone)]
pub struct AppState {
    /// The token.
    pub hsm: Hsm,
    /// Time source.
    pub clock: Arc<dyn Clock>,
}

impl AppState {
    /// Whether the store answers (`Err` carries a printable reason).
    pub async fn store_ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A built, bound, not yet serving application.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
}

impl Application {
    /// Connect to the HSM and the store, bind the listener.
    ///
    /// # Errors
    /// Any start-up failure, with context.
    pub async fn build(cfg: &Config) -> anyhow::Result<Self> {
        let hsm = Hsm::connect(cfg.hsm()?)
            .await
            .context("Failed to open the HSM token")?;
        let state = AppState {
            hsm,
            clock: Arc::new(SystemClock),
        };
        let router = crate::api::router(state.clone());
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("Failed to listen on {}", cfg.listen))?;
        Ok(Self {
            listener,
            router,
            state,
        })
    }

    /// The bound address (the real port when `listen` asked for port 0).
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serve until SIGTERM or Ctrl-C, then finish requests in flight and close the HSM.
    ///
    /// # Errors
    /// If serving fails.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            state,
        } = self;
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed")?;
        state.hsm.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

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
