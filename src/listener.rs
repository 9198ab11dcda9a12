//! The HTTP listener: an accept loop that never waits on a client, TLS handshakes in each
//! connection's own task, HTTP/1.1 through hyper with a header-read and an idle timeout, a
//! cap on open connections, and graceful shutdown. axum only routes.
//!
//! Why not `axum::serve`: it sets no timer, so a client that never finishes its headers
//! holds its connection for ever, and a listener whose `accept` runs the TLS handshake
//! makes every new client wait behind a silent one.
//!
//! Timeouts, per connection (a watchdog in the connection's task, which sees every byte
//! read and every request start and end):
//! - *header read*: from accept (after the TLS handshake) or from the first byte of a
//!   request until its headers are in and the handler runs. hyper's own
//!   `header_read_timeout` is not used: it also runs while a keep-alive connection is idle,
//!   so it could not be shorter than the idle timeout.
//! - *idle*: from the end of a response until the first byte of the next request.
//! - The TLS handshake (including the wait for a handshake slot) has the header-read limit.
//!
//! A handler's own time is bounded by the request timeout layer (`api::layers`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::tls::ClientAddr;

/// TLS handshakes in progress at once. Further connections wait for a slot in their own
/// task (within their handshake time limit), never in the accept loop.
pub const MAX_HANDSHAKES: usize = 64;

/// `Strict-Transport-Security`, on every response served over TLS.
pub const HSTS: &str = "max-age=31536000";

/// At most one "connection limit reached" warning per this long.
const LIMIT_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Per-connection limits (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to send a request's headers (and to complete the TLS handshake).
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may stay idle between requests.
    pub idle_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
}

impl Limits {
    /// The limits `cfg` sets.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(cfg.header_read_timeout),
            idle_timeout: Duration::from_secs(cfg.idle_timeout),
            max_connections: cfg.max_connections,
        }
    }
}

/// What every connection task shares.
struct Shared {
    router: Router,
    tls: Option<TlsAcceptor>,
    handshakes: Semaphore,
    limits: Limits,
    stop: watch::Receiver<bool>,
}

/// Resolves once `stop` says so (never, if its sender is gone without saying it).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Serve `router` on `listener` until `stop` turns true, then stop accepting, let every
/// connection finish its request in flight, and return once all have closed.
///
/// At `max_connections` open connections the loop stops accepting until one closes: new
/// clients wait in the kernel's listen backlog (no file descriptor used, nothing refused)
/// and are served as soon as there is room, rather than being accepted and closed at once.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let shared = Arc::new(Shared {
        router,
        tls,
        handshakes: Semaphore::new(MAX_HANDSHAKES),
        limits,
        stop: stop.clone(),
    });
    let mut warned: Option<Instant> = None;
    loop {
        let permit = match open.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => {
                if warned.is_none_or(|w| w.elapsed() >= LIMIT_WARNING_EVERY) {
                    warned = Some(Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    p = open.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = stopped(&mut stop) => break,
                }
            }
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stopped(&mut stop) => break,
        };
        let (tcp, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Responses are written whole; do not hold their last segment back.
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(tcp, addr, shared.clone(), permit));
    }
    drop(listener);
    // Each connection holds one permit until it closes: all of them back means all closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = open.acquire_many(all).await;
}

/// One connection, in its own task: the TLS handshake if any, then HTTP.
async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    _open: OwnedSemaphorePermit,
) {
    let Some(acceptor) = &shared.tls else {
        return serve_connection(tcp, addr, &shared).await;
    };
    let handshake = async {
        let _slot = shared.handshakes.acquire().await.ok()?;
        acceptor
            .accept(tcp)
            .await
            .map_err(|e| tracing::debug!(%addr, error = %e, "TLS handshake failed"))
            .ok()
    };
    match tokio::time::timeout(shared.limits.header_read_timeout, handshake).await {
        Ok(Some(stream)) => serve_connection(stream, addr, &shared).await,
        Ok(None) => {}
        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
    }
}

/// HTTP/1.1 on an established connection until the client closes it, a timeout closes it,
/// or shutdown lets its request in flight finish.
async fn serve_connection<S>(io: S, addr: SocketAddr, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        io,
        activity: activity.clone(),
    });
    let router = shared.router.clone();
    let hsts = shared.tls.is_some();
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        seen.set(Phase::Busy);
        req.extensions_mut().insert(ConnectInfo(ClientAddr(addr)));
        let mut router = router.clone();
        let seen = seen.clone();
        async move {
            let mut res = match tower_service::Service::call(&mut router, req).await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            if hsts {
                res.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static(HSTS),
                );
            }
            seen.set(Phase::Idle);
            Ok::<_, Infallible>(res)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut stop = shared.stop.clone();
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%addr, error = %e, "connection closed with an error");
                }
                return;
            }
            why = activity.expired(shared.limits) => {
                // Dropping the connection closes the socket.
                tracing::debug!(%addr, why, "closing connection");
                return;
            }
            () = stopped(&mut stop), if !stopping => {
                // Closes it now if idle, else after the response in flight.
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
}

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Waiting for (the rest of) a request's headers: header-read timeout.
    Head = 0,
    /// A handler is running: the request timeout layer bounds it.
    Busy = 1,
    /// Between requests: idle timeout.
    Idle = 2,
}

/// A connection's phase and since when (milliseconds after it started). Written and read
/// only from the connection's own task (hyper polls the service and the I/O there, and so
/// does the watchdog); atomics only make it shareable.
struct Activity {
    born: Instant,
    phase: AtomicU8,
    since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            phase: AtomicU8::new(Phase::Head as u8),
            since_ms: AtomicU64::new(0),
        }
    }

    fn set(&self, phase: Phase) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.since_ms.store(ms, Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Head,
            1 => Phase::Busy,
            _ => Phase::Idle,
        }
    }

    /// Bytes arrived: an idle connection has started its next request.
    fn read(&self) {
        if self.phase() == Phase::Idle {
            self.set(Phase::Head);
        }
    }

    /// Resolves with the reason once the connection has overstayed its current phase.
    async fn expired(&self, limits: Limits) -> &'static str {
        loop {
            let (limit, why) = match self.phase() {
                Phase::Head => (limits.header_read_timeout, "header read timeout"),
                Phase::Idle => (limits.idle_timeout, "idle timeout"),
                Phase::Busy => {
                    tokio::time::sleep(limits.header_read_timeout).await;
                    continue;
                }
            };
            let since = Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
            let deadline = self.born + since + limit;
            if Instant::now() >= deadline {
                return why;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// The connection's I/O, telling [`Activity`] when bytes arrive.
struct Watched<S> {
    io: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
