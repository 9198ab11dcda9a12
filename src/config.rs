//! Configuration: a TOML file, each key overridable by an `HSM_ROTATOR_<KEY>` environment
//! variable, with defaults that run a local SoftHSM2 token and a SQLite file.
//!
//! The PIN is a [`SecretString`], read from `HSM_ROTATOR_PIN` or `pin_file`, and never
//! appears in `Debug` output or errors.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

use crate::hsm::{DEFAULT_MODULE, HsmConfig};

/// Every configuration key, with the type its environment override is parsed as.
const KEYS: &[(&str, Kind)] = &[
    ("listen", Kind::Str),
    ("public_url", Kind::Str),
    ("issuer_aliases", Kind::List),
    ("pkcs11_module", Kind::Str),
    ("token_label", Kind::Str),
    ("pin", Kind::Str),
    ("pin_file", Kind::Str),
    ("data_dir", Kind::Str),
    ("database_url", Kind::Str),
    ("sessions", Kind::Int),
    ("spare_keys", Kind::Int),
    ("jwks_max_age", Kind::Int),
    ("scheduler_interval", Kind::Int),
    ("log_format", Kind::Str),
    ("log_level", Kind::Str),
    ("tls_cert", Kind::Str),
    ("tls_key", Kind::Str),
];

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    /// Comma-separated in the environment.
    List,
}

/// Service configuration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Public base URL (`https://keys.example.com`) of issuers, discovery and JWKS URLs;
    /// default: the address bound at start-up (`http://127.0.0.1:8080`).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Earlier base URLs (an old `public_url`, or the address served before): tokens whose
    /// `iss` is under one of them keep verifying until they expire; new tokens carry the
    /// current issuer.
    #[serde(default)]
    pub issuer_aliases: Vec<String>,
    /// PKCS#11 module path.
    #[serde(default = "default_module")]
    pub pkcs11_module: PathBuf,
    /// Label of the token holding the keys.
    #[serde(default = "default_token_label")]
    pub token_label: String,
    /// User PIN (prefer `pin_file` or the `HSM_ROTATOR_PIN` environment variable).
    #[serde(default)]
    pin: Option<SecretString>,
    /// File holding the user PIN; must not be readable by group or others.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Directory for the SQLite database and other local state.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; default: SQLite in `data_dir`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Pooled HSM sessions (default: 2 × cores).
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Pre-generated spare key pairs kept per key type in use.
    #[serde(default = "default_spare_keys")]
    pub spare_keys: usize,
    /// `Cache-Control: max-age` of the JWKS, seconds. A `next` key is published at least
    /// this long before it signs.
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age: u64,
    /// Seconds between scheduler ticks (rotation, retirement, purge, spare refill).
    #[serde(default = "default_scheduler_interval")]
    pub scheduler_interval: u64,
    /// `human` or `json`.
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// Log filter (`info`, `hsm_rotator=debug`, ...); `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// PEM certificate chain: with `tls_key`, serve HTTPS (rustls).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_module() -> PathBuf {
    PathBuf::from(DEFAULT_MODULE)
}
fn default_token_label() -> String {
    "hsm-rotator".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("var")
}
fn default_sessions() -> usize {
    2 * std::thread::available_parallelism().map_or(1, usize::from)
}
fn default_spare_keys() -> usize {
    2
}
fn default_jwks_max_age() -> u64 {
    60
}
fn default_scheduler_interval() -> u64 {
    30
}
fn default_log_format() -> String {
    "human".into()
}
fn default_log_level() -> String {
    "info".into()
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("issuer_aliases", &self.issuer_aliases)
            .field("pkcs11_module", &self.pkcs11_module)
            .field("token_label", &self.token_label)
            .field("pin", &self.pin.as_ref().map(|_| "<redacted>"))
            .field("pin_file", &self.pin_file)
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|u| redact_url(u)),
            )
            .field("sessions", &self.sessions)
            .field("spare_keys", &self.spare_keys)
            .finish_non_exhaustive()
    }
}

/// A configuration problem, in plain words.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file or an override is not valid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Load `path` (if any), then apply `HSM_ROTATOR_*` overrides from the environment.
    ///
    /// # Errors
    /// [`ConfigError`] for an unreadable file, unknown keys or bad values.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(path, |k| std::env::var(k).ok())
    }

    /// As [`Self::load`], with the environment given as a function (for tests).
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn load_with(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", p.display())))?
            }
            None => toml::Table::new(),
        };
        for (key, kind) in KEYS {
            let var = format!("HSM_ROTATOR_{}", key.to_ascii_uppercase());
            let Some(value) = env(&var) else { continue };
            let v =
                match kind {
                    Kind::Str => toml::Value::String(value),
                    Kind::Int => toml::Value::Integer(value.trim().parse().map_err(|_| {
                        ConfigError::Invalid(format!("{var} must be a whole number"))
                    })?),
                    Kind::List => toml::Value::Array(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|v| !v.is_empty())
                            .map(|v| toml::Value::String(v.to_owned()))
                            .collect(),
                    ),
                };
            table.insert((*key).to_owned(), v);
        }
        let cfg: Self = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check values that serde cannot.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.sessions == 0 || self.sessions > 1024 {
            return bad("sessions must be between 1 and 1024");
        }
        if self.spare_keys > 64 {
            return bad("spare_keys must be at most 64");
        }
        if self.token_label.is_empty() || self.token_label.len() > 32 {
            return bad("token_label must be 1 to 32 characters");
        }
        if !matches!(self.log_format.as_str(), "human" | "json") {
            return bad("log_format must be \"human\" or \"json\"");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key go together");
        }
        if self.scheduler_interval == 0 {
            return bad("scheduler_interval must be at least 1 second");
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return bad("public_url must start with http:// or https://");
        }
        if self
            .issuer_aliases
            .iter()
            .any(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return bad("issuer_aliases must be URLs starting with http:// or https://");
        }
        if let Some(u) = &self.database_url
            && !(u.starts_with("sqlite:")
                || u.starts_with("postgres://")
                || u.starts_with("postgresql://"))
        {
            return bad("database_url must be sqlite:... or postgres://...");
        }
        Ok(())
    }

    /// The database URL, defaulting to SQLite in `data_dir`.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("hsm-rotator.db").display()
            ),
        }
    }

    /// The user PIN: `pin` (or `HSM_ROTATOR_PIN`), else the contents of `pin_file`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] if neither is set, or the file is unreadable or readable
    /// by group or others.
    pub fn pin(&self) -> Result<SecretString, ConfigError> {
        if let Some(p) = &self.pin {
            return Ok(p.clone());
        }
        let Some(path) = &self.pin_file else {
            return Err(ConfigError::Invalid(
                "no HSM PIN: set HSM_ROTATOR_PIN or pin_file".into(),
            ));
        };
        check_private_file(path)?;
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            ConfigError::Read {
                path: path.clone(),
                source,
            }
        })?);
        let pin = text.trim_end_matches(['\n', '\r']);
        if pin.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "pin_file {} is empty",
                path.display()
            )));
        }
        Ok(SecretString::from(pin.to_owned()))
    }

    /// The HSM part of the configuration.
    ///
    /// # Errors
    /// As [`Self::pin`].
    pub fn hsm(&self) -> Result<HsmConfig, ConfigError> {
        Ok(HsmConfig {
            module: self.pkcs11_module.clone(),
            token_label: self.token_label.clone(),
            pin: self.pin()?,
            sessions: self.sessions,
        })
    }
}

#[cfg(unix)]
fn check_private_file(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ConfigError::Invalid(format!(
            "pin_file {} is accessible by group or others; run chmod 600 on it",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_file(_: &Path) -> Result<(), ConfigError> {
    Ok(())
}

/// A database URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    #[test]
    fn env_overrides_file_and_defaults() {
        let cfg = Config::load_with(None, |k| match k {
            "HSM_ROTATOR_SESSIONS" => Some("3".into()),
            "HSM_ROTATOR_PIN" => Some("s3cret-pin".into()),
            _ => None,
        })
        .expect("config");
        assert_eq!(cfg.sessions, 3);
        assert_eq!(cfg.token_label, "hsm-rotator");
        assert_eq!(cfg.pin().expect("pin").expose_secret(), "s3cret-pin");
        assert!(!format!("{cfg:?}").contains("s3cret-pin"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "listn = \"x\"\n").expect("write");
        assert!(Config::load_with(Some(&p), |_| None).is_err());
        assert!(
            Config::load_with(None, |k| (k == "HSM_ROTATOR_SESSIONS")
                .then(|| "many".into()))
            .is_err()
        );
    }

    /// `config/example.toml` documents every key (active or as a commented example), and
    /// the file, with every commented example switched on, is a valid configuration.
    #[test]
    fn example_file_documents_every_key() {
        let text = include_str!("../config/example.toml");
        let mut enabled = String::new();
        for line in text.lines() {
            let body = line.strip_prefix("# ").unwrap_or(line);
            let is_key = KEYS
                .iter()
                .any(|(k, _)| body.starts_with(&format!("{k} = ")));
            if is_key {
                enabled.push_str(body);
                enabled.push('\n');
            }
        }
        let table: toml::Table = enabled.parse().expect("example keys parse");
        for (key, _) in KEYS {
            assert!(
                table.contains_key(*key),
                "config/example.toml does not document {key}"
            );
        }
        assert_eq!(table.len(), KEYS.len(), "every example line is a known key");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("example.toml");
        std::fs::write(&p, text).expect("write");
        Config::load_with(Some(&p), |_| None).expect("the example file as shipped");
        std::fs::write(&p, &enabled).expect("write");
        Config::load_with(Some(&p), |_| None).expect("every example switched on");
    }

    /// Every documented key is read from its `HSM_ROTATOR_<KEY>` variable, and an override
    /// of each one lands in the configuration (the example test shows they are all fields).
    #[test]
    fn every_key_has_an_environment_override() {
        let asked = std::cell::RefCell::new(Vec::new());
        let samples = |k: &str| -> Option<String> {
            asked.borrow_mut().push(k.to_owned());
            Some(
                match k {
                    "HSM_ROTATOR_PUBLIC_URL" => "https://keys.example.com",
                    "HSM_ROTATOR_ISSUER_ALIASES" => {
                        "http://127.0.0.1:8080, https://old.example.com"
                    }
                    "HSM_ROTATOR_DATABASE_URL" => "postgres://u@h/db",
                    "HSM_ROTATOR_LOG_FORMAT" => "json",
                    "HSM_ROTATOR_SESSIONS" | "HSM_ROTATOR_SPARE_KEYS" => "7",
                    "HSM_ROTATOR_JWKS_MAX_AGE" | "HSM_ROTATOR_SCHEDULER_INTERVAL" => "9",
                    other => other,
                }
                .to_owned(),
            )
        };
        let cfg = Config::load_with(None, samples).expect("every override at once");
        let expected: Vec<String> = KEYS
            .iter()
            .map(|(k, _)| format!("HSM_ROTATOR_{}", k.to_ascii_uppercase()))
            .collect();
        assert_eq!(*asked.borrow(), expected);
        assert_eq!(cfg.listen, "HSM_ROTATOR_LISTEN");
        assert_eq!(cfg.token_label, "HSM_ROTATOR_TOKEN_LABEL");
        assert_eq!(
            cfg.pkcs11_module,
            PathBuf::from("HSM_ROTATOR_PKCS11_MODULE")
        );
        assert_eq!(cfg.pin_file, Some(PathBuf::from("HSM_ROTATOR_PIN_FILE")));
        assert_eq!(cfg.data_dir, PathBuf::from("HSM_ROTATOR_DATA_DIR"));
        assert_eq!(cfg.database_url.as_deref(), Some("postgres://u@h/db"));
        assert_eq!(cfg.public_url.as_deref(), Some("https://keys.example.com"));
        assert_eq!(
            cfg.issuer_aliases,
            ["http://127.0.0.1:8080", "https://old.example.com"]
        );
        assert_eq!((cfg.sessions, cfg.spare_keys), (7, 7));
        assert_eq!((cfg.jwks_max_age, cfg.scheduler_interval), (9, 9));
        assert_eq!(
            (cfg.log_format.as_str(), cfg.log_level.as_str()),
            ("json", "HSM_ROTATOR_LOG_LEVEL")
        );
        assert_eq!(cfg.tls_cert, Some(PathBuf::from("HSM_ROTATOR_TLS_CERT")));
        assert_eq!(cfg.tls_key, Some(PathBuf::from("HSM_ROTATOR_TLS_KEY")));
        assert_eq!(cfg.pin().expect("pin").expose_secret(), "HSM_ROTATOR_PIN");
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
