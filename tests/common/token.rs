#![allow(dead_code)]

//! A PKCS#11 token of its own for each test, on the module `HSM_ROTATOR_TEST_MODULE` names:
//! `softhsm2` (the default; made by `softhsm/create-token`) or `kryoptic` (built by
//! `scripts/kryoptic`; its path from `HSM_ROTATOR_TEST_KRYOPTIC`, else that script's cache).
//!
//! Both modules read their configuration file from an environment variable once, at
//! `C_Initialize` (`SOFTHSM2_CONF`, `KRYOPTIC_CONF`); so each test gets its own token
//! directory, black-box tests pass [`TestToken::env`] to a child process, and in-process
//! HSM tests run one per process (cargo nextest).
//!
//! What a module can do is asked from the module itself ([`TestToken::lacks`]: the
//! mechanism list, read through OpenSC's `pkcs11-tool`), never decided from its name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use hsm_rotator::alg::{Algorithm, Curve, KeyFamily};
use tempfile::TempDir;

/// Which PKCS#11 module the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    /// Debian's SoftHSM2.
    SoftHsm2,
    /// kryoptic, built from its crates.io source by `scripts/kryoptic`.
    Kryoptic,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Module {
    /// The module this test run uses (`HSM_ROTATOR_TEST_MODULE`).
    pub fn from_env() -> Self {
        match std::env::var("HSM_ROTATOR_TEST_MODULE").as_deref() {
            Err(_) | Ok("" | "softhsm2" | "softhsm") => Self::SoftHsm2,
            Ok("kryoptic") => Self::Kryoptic,
            Ok(other) => panic!("HSM_ROTATOR_TEST_MODULE={other}: use softhsm2 or kryoptic"),
        }
    }

    /// Path of the module's shared library.
    pub fn path(self) -> PathBuf {
        match self {
            Self::SoftHsm2 => PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
            Self::Kryoptic => std::env::var_os("HSM_ROTATOR_TEST_KRYOPTIC")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root().join("target/kryoptic/libkryoptic_pkcs11.so")),
        }
    }

    /// The environment variable the module reads its configuration file from.
    pub fn conf_var(self) -> &'static str {
        match self {
            Self::SoftHsm2 => "SOFTHSM2_CONF",
            Self::Kryoptic => "KRYOPTIC_CONF",
        }
    }

    /// Human name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::SoftHsm2 => "SoftHSM2",
            Self::Kryoptic => "kryoptic",
        }
    }
}

/// A fresh, initialised token with a user PIN, in a temporary directory deleted on drop.
pub struct TestToken {
    pub dir: TempDir,
    pub module: Module,
    /// The module's configuration file (what [`Module::conf_var`] points at).
    pub conf: PathBuf,
    pub label: String,
    pub pin: String,
    mechanisms: Mutex<Option<Vec<Mechanism>>>,
}

/// 24 random alphanumeric characters.
fn random_pin() -> String {
    ulid::Ulid::new().to_string()[2..].to_owned() + "xY"
}

impl TestToken {
    /// A token labelled after the test, with a distinctive PIN.
    pub fn new(test_name: &str) -> Self {
        Self::with_denied(test_name, &[])
    }

    /// A token whose module is configured to leave out `mechanisms` (`CKM_*` names), as
    /// a token that lacks them would.
    pub fn with_denied(test_name: &str, mechanisms: &[&str]) -> Self {
        let module = Module::from_env();
        let dir = tempfile::Builder::new()
            .prefix(&format!("hsmr-{test_name}-"))
            .tempdir()
            .expect("tempdir");
        let label: String = test_name.chars().take(32).collect();
        let pin = format!("Pin{}Zq", ulid::Ulid::new().to_string().to_lowercase());
        let conf = match module {
            Module::SoftHsm2 => {
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
                dir.path().join("hsm/softhsm2.conf")
            }
            Module::Kryoptic => {
                assert!(
                    module.path().exists(),
                    "kryoptic module {} missing: run scripts/kryoptic (or set HSM_ROTATOR_TEST_KRYOPTIC)",
                    module.path().display()
                );
                dir.path().join("kryoptic.conf")
            }
        };
        let token = Self {
            dir,
            module,
            conf,
            label,
            pin,
            mechanisms: Mutex::new(None),
        };
        token.deny(mechanisms);
        if module == Module::Kryoptic {
            token.init_kryoptic();
        }
        assert!(token.conf.exists(), "no module configuration written");
        token
    }

    /// (Re)write the module configuration so that it leaves out `mechanisms` from now on
    /// (for the next process that initialises the module).
    pub fn deny(&self, mechanisms: &[&str]) {
        match self.module {
            Module::SoftHsm2 => {
                let text = std::fs::read_to_string(&self.conf).expect("read softhsm2.conf");
                let mut kept: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.starts_with("slots.mechanisms"))
                    .collect();
                // A leading '-' makes the list a deny list. SoftHSM 2.6.1 does not strip
                // it from the first name, so the first entry is left empty on purpose.
                let line = format!("slots.mechanisms = -,{}", mechanisms.join(","));
                if !mechanisms.is_empty() {
                    kept.push(&line);
                }
                std::fs::write(&self.conf, kept.join("\n") + "\n").expect("write softhsm2.conf");
            }
            Module::Kryoptic => {
                let deny = if mechanisms.is_empty() {
                    String::new()
                } else {
                    let names: Vec<String> = std::iter::once("DENY")
                        .chain(mechanisms.iter().copied())
                        .map(|m| format!("{m:?}"))
                        .collect();
                    format!("mechanisms = [{}]\n", names.join(", "))
                };
                let db = self.path().join("token.sql");
                std::fs::write(
                    &self.conf,
                    format!(
                        "[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = {:?}\n{deny}",
                        db.display().to_string()
                    ),
                )
                .expect("write kryoptic.conf");
            }
        }
        *self.mechanisms.lock().unwrap() = None;
    }

    /// Initialise the kryoptic token and set its user PIN (the SO PIN is thrown away).
    fn init_kryoptic(&self) {
        let so_pin = random_pin();
        for args in [
            vec!["--init-token", "--label", &self.label, "--so-pin", &so_pin],
            vec![
                "--init-pin",
                "--login",
                "--login-type",
                "so",
                "--so-pin",
                &so_pin,
                "--pin",
                &self.pin,
            ],
        ] {
            let out = Command::new("pkcs11-tool")
                .arg("--module")
                .arg(self.module.path())
                .args(&args)
                .env(self.module.conf_var(), &self.conf)
                .output()
                .expect("run pkcs11-tool");
            assert!(
                out.status.success(),
                "pkcs11-tool {}: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The temporary directory (for a database file, logs, ...).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// What a process using this token needs in its environment.
    pub fn env(&self) -> [(&'static str, &Path); 1] {
        [(self.module.conf_var(), self.conf.as_path())]
    }

    /// Run `pkcs11-tool` against this token (as "a second process").
    pub fn pkcs11_tool(&self, args: &[&str]) -> Output {
        Command::new("pkcs11-tool")
            .arg("--module")
            .arg(self.module.path())
            .args(["--token-label", &self.label])
            .args(args)
            .env(self.module.conf_var(), &self.conf)
            .output()
            .expect("run pkcs11-tool")
    }

    /// `pkcs11-tool`, logged in.
    pub fn pkcs11_tool_login(&self, args: &[&str]) -> Output {
        let mut all = vec!["--login", "--pin", self.pin.as_str()];
        all.extend_from_slice(args);
        self.pkcs11_tool(&all)
    }

    /// Labels of every object in the token, as `pkcs11-tool --list-objects` shows them.
    /// An object caught half made by a running service (SoftHSM2 2.6.1 lists it without
    /// attributes) has no label yet, and is left out; so is a data object destroyed between
    /// the listing's search and its read of the label, which pkcs11-tool prints as
    /// `<empty>` (the audit mark moves on SoftHSM2 by a new object and the old one's end,
    /// at any moment after a change).
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
            .filter(|l| !l.is_empty() && *l != "<empty>")
            .collect()
    }

    /// The token's mechanisms as it lists them (`C_GetMechanismList` and
    /// `C_GetMechanismInfo`, through `pkcs11-tool --list-mechanisms`), read once.
    fn mechanisms(&self) -> Vec<Mechanism> {
        let mut cached = self.mechanisms.lock().unwrap();
        cached
            .get_or_insert_with(|| {
                let out = self.pkcs11_tool(&["--list-mechanisms"]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(Mechanism::parse)
                    .collect()
            })
            .clone()
    }

    /// `Some(reason)` when the token lacks what `alg` needs (key-pair generation and
    /// signing mechanisms, and its curve's key size); `None` when it can do `alg`.
    pub fn lacks(&self, alg: Algorithm) -> Option<String> {
        let (keygen, sign, bits) = match alg.family() {
            KeyFamily::Rsa => ("RSA-PKCS-KEY-PAIR-GEN", rsa_sign(alg), 2048),
            KeyFamily::Ec(c) => ("ECDSA-KEY-PAIR-GEN", "ECDSA", curve_bits(c)),
            KeyFamily::Ed(_) => ("EC-EDWARDS-KEY-PAIR-GEN", "EDDSA", 256),
        };
        let mechanisms = self.mechanisms();
        for (name, flag) in [(keygen, "generate_key_pair"), (sign, "sign")] {
            let Some(m) = mechanisms.iter().find(|m| m.name == name) else {
                return Some(format!("{} lists no {name} mechanism", self.module.name()));
            };
            if !m.flags.iter().any(|f| f == flag) {
                return Some(format!("{}'s {name} lacks {flag}", self.module.name()));
            }
            if let Some((lo, hi)) = m.key_size
                && hi > 0
                && !(lo..=hi).contains(&bits)
            {
                return Some(format!(
                    "{}'s {name} takes {lo}..{hi} bit keys, not {bits}",
                    self.module.name()
                ));
            }
        }
        None
    }

    /// The algorithms of `algs` this token can do; prints each one left out, and why.
    pub fn supported(&self, test: &str, algs: &[Algorithm]) -> Vec<Algorithm> {
        algs.iter()
            .copied()
            .filter(|&a| match self.lacks(a) {
                Some(why) => {
                    skip_note(test, a, &why);
                    false
                }
                None => true,
            })
            .collect()
    }

    /// `alg` when the token can do it, else `fallback` (saying so on the test output).
    pub fn prefer(&self, test: &str, alg: Algorithm, fallback: Algorithm) -> Algorithm {
        match self.lacks(alg) {
            None => alg,
            Some(why) => {
                println!(
                    "SKIP {test}: {alg} ({why}; asked the token's mechanism list); using {fallback} instead"
                );
                fallback
            }
        }
    }

    /// Whether the token can do `alg`; prints that `test` skips it, and why, when not.
    pub fn can(&self, test: &str, alg: Algorithm) -> bool {
        !self.supported(test, &[alg]).is_empty()
    }
}

/// Say on the test output what is skipped and why (nextest shows it with the test).
pub fn skip_note(test: &str, alg: Algorithm, why: &str) {
    println!("SKIP {test}: {alg} ({why}; asked the token's mechanism list)");
}

fn curve_bits(c: Curve) -> usize {
    match c {
        Curve::P256 | Curve::Ed25519 => 256,
        Curve::P384 => 384,
        Curve::P521 => 521,
    }
}

fn rsa_sign(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "SHA256-RSA-PKCS",
        Algorithm::RS384 => "SHA384-RSA-PKCS",
        Algorithm::RS512 => "SHA512-RSA-PKCS",
        Algorithm::PS256 => "SHA256-RSA-PKCS-PSS",
        Algorithm::PS384 => "SHA384-RSA-PKCS-PSS",
        _ => "SHA512-RSA-PKCS-PSS",
    }
}

/// One line of `pkcs11-tool --list-mechanisms`:
/// `  ECDSA, keySize={256,521}, sign, verify, EC F_P, ...`.
#[derive(Debug, Clone)]
struct Mechanism {
    name: String,
    key_size: Option<(usize, usize)>,
    flags: Vec<String>,
}

impl Mechanism {
    fn parse(line: &str) -> Option<Self> {
        let line = line.strip_prefix("  ")?;
        let mut parts = line.split(", ");
        let name = parts.next()?.trim().to_owned();
        let mut key_size = None;
        let mut flags = Vec::new();
        for p in parts {
            if let Some(range) = p
                .strip_prefix("keySize={")
                .and_then(|r| r.strip_suffix('}'))
            {
                let (lo, hi) = range.split_once(',')?;
                key_size = Some((lo.parse().unwrap_or(0), hi.parse().unwrap_or(0)));
            } else {
                flags.push(p.trim().to_owned());
            }
        }
        Some(Self {
            name,
            key_size,
            flags,
        })
    }
}
