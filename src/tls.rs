//! Optional TLS (rustls) for the HTTP listener, from PEM files named in the config. The
//! handshake itself runs in each connection's task (see [`crate::listener`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The client's address, whatever the listener (what rate limits and audit records use).
/// The listener puts it in every request's extensions as `ConnectInfo<ClientAddr>`.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// A TLS acceptor for the certificate chain and key in `cert` and `key` (PEM).
///
/// # Errors
/// Unreadable or invalid PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("Failed to read tls_cert {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("Invalid certificate in {}", cert.display()))?;
    // The error names the file, never its contents.
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "Failed to read a private key from tls_key {}",
            key.display()
        )
    })?;
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("The TLS certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
