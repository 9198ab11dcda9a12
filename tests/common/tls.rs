//! TLS material for tests of the HTTPS listener.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A self-signed P-256 certificate for 127.0.0.1 made by openssl in `dir`: `(cert, key)`.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl")
        .status
        .success();
    assert!(ok, "openssl req");
    (cert, key)
}
