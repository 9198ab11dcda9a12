//! A TCP proxy that a test can cut and restore: a database "going away" without touching
//! the shared PostgreSQL server other tests use.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};

/// Forwards `127.0.0.1:<port>` to a target while not cut.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
}

impl Proxy {
    /// Start forwarding to `target` (`host:port`).
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let (c, e) = (cut.clone(), epoch.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (c, e, target) = (c.clone(), e.clone(), target.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let my_epoch = e.load(Ordering::SeqCst);
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let watch = {
                        let (c, e) = (c.clone(), e.clone());
                        async move {
                            while !c.load(Ordering::SeqCst) && e.load(Ordering::SeqCst) == my_epoch
                            {
                                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            }
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy(&mut ri, &mut wo) => {},
                        _ = tokio::io::copy(&mut ro, &mut wi) => {},
                        () = watch => {},
                    }
                });
            }
        });
        Self { port, cut, epoch }
    }

    /// Drop every open connection and refuse new ones.
    pub fn cut(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forward again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
