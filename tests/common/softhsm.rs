#![allow(dead_code)]

//! A SoftHSM2 token of its own for each test, made by `softhsm/create-token`.
//!
//! libsofthsm2 reads `SOFTHSM2_CONF` once, at `C_Initialize`; so each test gets its own
//! token directory, black-box tests pass it to a child process, and in-process HSM tests
//! run one per process (cargo nextest).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// The SoftHSM2 module the tests use.
pub(crate) const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A fresh token in a temporary directory, deleted on drop.
pub struct SoftHsm {
    pub dir: TempDir,
    pub conf: PathBuf,
    pub label: String,
    pub pin: String,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl SoftHsm {
    /// A token labelled after the test, with a distinctive PIN.
    pub fn new(test_name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hsmr-{test_name}-"))
            .tempdir()
            .expect("tempdir");
        let label: String = test_name.chars().take(32).collect();
        let pin = format!("Pin{}Zq", ulid::Ulid::new().to_string().to_lowercase());
        let out = Command::new(repo_root().join("softhsm/create-token"))
            .arg(dir.path().join("hsm"))
            .arg(&label)
            .env("HSM_ROTATOR_PIN", &pin)
            .output()
            .expect("run softhsm/create-token");
        assert!(
            out.status.success(),
            "create-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.path().join("hsm/softhsm2.conf");
        assert!(conf.exists(), "create-token wrote no softhsm2.conf");
        Self {
            dir,
            conf,
            label,
            pin,
        }
    }

    /// The temporary directory (for a database file, logs, ...).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Run `pkcs11-tool` against this token (as "a second process").
    pub fn pkcs11_tool(&self, args: &[&str]) -> Output {
        Command::new("pkcs11-tool")
            .args(["--module", MODULE, "--token-label", &self.label])
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .expect("run pkcs11-tool")
    }

    /// `pkcs11-tool`, logged in.
    pub fn pkcs11_tool_login(&self, args: &[&str]) -> Output {
        let mut all = vec!["--login", "--pin", self.pin.as_str()];
        all.extend_from_slice(args);
        self.pkcs11_tool(&all)
    }
}

impl SoftHsm {
    /// Labels of every object in the token, as `pkcs11-tool --list-objects` shows them.
    pub fn labels(&self) -> Vec<String> {
        let out = self.pkcs11_tool_login(&["--list-objects"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("label:"))
            .map(|l| l.trim().to_owned())
            .collect()
    }
}
