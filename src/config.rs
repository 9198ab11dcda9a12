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
    ("status_list_refresh", Kind::Int),
    ("log_format", Kind::Str),
    ("log_level", Kind::Str),
    ("tls_cert", Kind::Str),
    ("tls_key", Kind::Str),
    ("orphan_grace", Kind::Int),
    ("imported_key_max_life", Kind::Int),
    ("header_read_timeout", Kind::Int),
    ("idle_timeout", Kind::Int),
    ("max_connections", Kind::Int),
    ("trusted_proxies", Kind::List),
    ("audit_seal_max_lag", Kind::Int),
    ("refresh_reuse_grace", Kind::Int),
];

/// Keys holding file paths: relative ones in a config file are taken from the file's
/// directory, not from wherever the process happens to start.
const PATH_KEYS: &[&str] = &[
    "pkcs11_module",
    "pin_file",
    "data_dir",
    "tls_cert",
    "tls_key",
];

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    /// Comma-separated in the environment, an array in the file.
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
    #[serde(default, deserialize_with = "secret_string")]
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
    /// Seconds between re-signings of the Token Status Lists (at most one per list per
    /// interval), and their `ttl`.
    #[serde(default = "default_status_list_refresh")]
    pub status_list_refresh: u64,
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
    /// Seconds an HSM object of this store that no key row knows must have been seen by
    /// the reconciler (in several passes) before it is destroyed.
    #[serde(default = "default_orphan_grace")]
    pub orphan_grace: u64,
    /// Seconds an imported key (born outside the token) may sign at most: its app's next
    /// rotation is brought forward to this long after the import.
    #[serde(default = "default_imported_key_max_life")]
    pub imported_key_max_life: u64,
    /// Seconds a client has to send a request's headers (and, with TLS, to complete its
    /// handshake) once it connects or starts a request; then the connection is closed.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: u64,
    /// Seconds a keep-alive connection may wait, idle, for its next request.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: u64,
    /// Open client connections at most; beyond it new connections wait in the listen
    /// backlog until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Address blocks (CIDR) of reverse proxies whose `Forwarded` / `X-Forwarded-For` are
    /// believed; empty (the default): those headers are ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Seconds an audit record may stay unsealed (no HSM MAC yet) before `audit verify`
    /// fails on it. The sealer runs moments after every append, so only a stopped sealer
    /// (or a record added outside the service) gets that old.
    #[serde(default = "default_audit_seal_max_lag")]
    pub audit_seal_max_lag: u64,
    /// Seconds after a refresh token is spent during which presenting it again is taken
    /// as a retry of an answer the client never got (a fresh pair, the unused successor
    /// superseded) rather than as reuse that revokes the family; 0 turns retries off.
    #[serde(default = "default_refresh_reuse_grace")]
    pub refresh_reuse_grace: u64,
}

/// A PIN as a string. Any other TOML type is refused with a message that never shows the
/// value (serde's own would: "invalid type: integer `987654`").
fn secret_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    struct Visit;
    impl<'v> serde::de::Visitor<'v> for Visit {
        type Value = SecretString;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(SecretString::from(v.to_owned()))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(SecretString::from(v))
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(E::custom(PIN_NOT_A_STRING))
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(E::custom(PIN_NOT_A_STRING))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(E::custom(PIN_NOT_A_STRING))
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(E::custom(PIN_NOT_A_STRING))
        }
        fn visit_map<A: serde::de::MapAccess<'v>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(serde::de::Error::custom(PIN_NOT_A_STRING))
        }
        fn visit_seq<A: serde::de::SeqAccess<'v>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(serde::de::Error::custom(PIN_NOT_A_STRING))
        }
    }
    d.deserialize_any(Visit).map(Some)
}

const PIN_NOT_A_STRING: &str =
    "pin must be a quoted string (pin = \"...\"); its value is not shown";

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
fn default_status_list_refresh() -> u64 {
    10
}
fn default_scheduler_interval() -> u64 {
    30
}
fn default_header_read_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_max_connections() -> usize {
    1024
}
fn default_log_format() -> String {
    "human".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_imported_key_max_life() -> u64 {
    crate::keys::import::DEFAULT_IMPORTED_MAX_LIFE.unsigned_abs()
}
fn default_audit_seal_max_lag() -> u64 {
    300
}
fn default_refresh_reuse_grace() -> u64 {
    10
}

fn default_orphan_grace() -> u64 {
    crate::keys::reconcile::DEFAULT_ORPHAN_GRACE.unsigned_abs()
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
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("trusted_proxies", &self.trusted_proxies)
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
                // The message and line only: toml's own rendering quotes the line, which
                // may hold the PIN.
                let mut table = text.parse::<toml::Table>().map_err(|e| {
                    let line = e.span().map_or(0, |sp| {
                        text[..sp.start.min(text.len())].matches('\n').count() + 1
                    });
                    ConfigError::Invalid(format!("{} line {line}: {}", p.display(), e.message()))
                })?;
                resolve_paths(&mut table, p);
                table
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
        if let Err(e) = self.trusted_proxies() {
            return Err(ConfigError::Invalid(format!("trusted_proxies: {e}")));
        }
        if !(60..=31_536_000).contains(&self.imported_key_max_life) {
            return bad("imported_key_max_life must be between 60 and 31536000 seconds");
        }
        if self.scheduler_interval == 0 {
            return bad("scheduler_interval must be at least 1 second");
        }
        if !(1..=3600).contains(&self.status_list_refresh) {
            return bad("status_list_refresh must be between 1 and 3600 seconds");
        }
        if self.refresh_reuse_grace > 300 {
            return bad("refresh_reuse_grace must be between 0 and 300 seconds");
        }
        if !(1..=300).contains(&self.header_read_timeout) {
            return bad("header_read_timeout must be between 1 and 300 seconds");
        }
        if !(1..=3600).contains(&self.idle_timeout) {
            return bad("idle_timeout must be between 1 and 3600 seconds");
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return bad("max_connections must be between 1 and 1000000");
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

    /// The database URL, defaulting to SQLite in `data_dir`. Opening it never creates a
    /// store: `hsm-rotator init` does ([`crate::store::Store::connect`]).
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!(
                "sqlite://{}",
                std::path::absolute(self.data_dir.join("hsm-rotator.db"))
                    .unwrap_or_else(|_| self.data_dir.join("hsm-rotator.db"))
                    .display()
            ),
        }
    }

    /// `trusted_proxies`, parsed.
    ///
    /// # Errors
    /// The first entry that is not an address block.
    pub fn trusted_proxies(
        &self,
    ) -> Result<Vec<crate::auth::proxies::Cidr>, crate::auth::proxies::BadCidr> {
        crate::auth::proxies::parse_list(&self.trusted_proxies)
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

    /// [`Self::audit_seal_max_lag`] in seconds, as `audit::verify` takes it.
    pub fn audit_max_lag(&self) -> i64 {
        i64::try_from(self.audit_seal_max_lag).unwrap_or(i64::MAX)
    }

    /// [`Self::refresh_reuse_grace`] in seconds, as the token service takes it.
    pub fn refresh_grace(&self) -> i64 {
        i64::try_from(self.refresh_reuse_grace).unwrap_or(i64::MAX)
    }

    /// Reconciler options with this configuration's orphan grace.
    pub fn reconcile_options(
        &self,
        dry_run: bool,
        min_pending_age: i64,
    ) -> crate::keys::reconcile::Options {
        crate::keys::reconcile::Options {
            orphan_grace: i64::try_from(self.orphan_grace).unwrap_or(i64::MAX),
            ..crate::keys::reconcile::Options::new(dry_run, min_pending_age)
        }
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
            store_id: None,
        })
    }
}

/// Make the relative paths of a config file's [`PATH_KEYS`] relative to the file's
/// directory (environment overrides, applied later, stay relative to the working directory).
fn resolve_paths(table: &mut toml::Table, file: &Path) {
    let dir = std::path::absolute(file)
        .ok()
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    for key in PATH_KEYS {
        if let Some(toml::Value::String(v)) = table.get_mut(*key)
            && Path::new(v.as_str()).is_relative()
            // A bare module name is for the dynamic loader's search path.
            && (*key != "pkcs11_module" || v.contains('/'))
        {
            *v = dir.join(v.as_str()).display().to_string();
        }
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
                    "HSM_ROTATOR_JWKS_MAX_AGE"
                    | "HSM_ROTATOR_SCHEDULER_INTERVAL"
                    | "HSM_ROTATOR_STATUS_LIST_REFRESH"
                    | "HSM_ROTATOR_ORPHAN_GRACE" => "9",
                    "HSM_ROTATOR_IMPORTED_KEY_MAX_LIFE" => "3600",
                    "HSM_ROTATOR_HEADER_READ_TIMEOUT" => "4",
                    "HSM_ROTATOR_IDLE_TIMEOUT" => "5",
                    "HSM_ROTATOR_MAX_CONNECTIONS" => "6",
                    "HSM_ROTATOR_TRUSTED_PROXIES" => "10.0.0.0/8, 2001:db8::/32",
                    "HSM_ROTATOR_AUDIT_SEAL_MAX_LAG" => "11",
                    "HSM_ROTATOR_REFRESH_REUSE_GRACE" => "12",
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
        assert_eq!(cfg.status_list_refresh, 9);
        assert_eq!(cfg.orphan_grace, 9);
        assert_eq!(cfg.imported_key_max_life, 3600);
        assert_eq!(
            (
                cfg.header_read_timeout,
                cfg.idle_timeout,
                cfg.max_connections
            ),
            (4, 5, 6)
        );
        assert_eq!(
            (cfg.log_format.as_str(), cfg.log_level.as_str()),
            ("json", "HSM_ROTATOR_LOG_LEVEL")
        );
        assert_eq!(cfg.tls_cert, Some(PathBuf::from("HSM_ROTATOR_TLS_CERT")));
        assert_eq!(cfg.tls_key, Some(PathBuf::from("HSM_ROTATOR_TLS_KEY")));
        assert_eq!(cfg.pin().expect("pin").expose_secret(), "HSM_ROTATOR_PIN");
        assert_eq!(cfg.trusted_proxies, ["10.0.0.0/8", "2001:db8::/32"]);
        assert_eq!(cfg.audit_seal_max_lag, 11);
        assert_eq!(cfg.refresh_reuse_grace, 12);
    }

    #[test]
    fn trusted_proxies_must_be_address_blocks() {
        let bad = Config::load_with(None, |k| {
            (k == "HSM_ROTATOR_TRUSTED_PROXIES").then(|| "10.0.0.0/8,proxy.internal".into())
        });
        let msg = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("trusted_proxies") && msg.contains("proxy.internal"),
            "{msg}"
        );
        let cfg = Config::load_with(None, |_| None).expect("defaults");
        assert!(
            cfg.trusted_proxies.is_empty(),
            "no proxy is trusted by default"
        );
    }

    #[test]
    fn a_numeric_pin_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "pin = 987654\n").expect("write");
        let e = Config::load_with(Some(&p), |_| None)
            .expect_err("a numeric pin is refused")
            .to_string();
        assert!(!e.contains("987654"), "{e}");
        assert!(e.contains("pin must be a quoted string"), "{e}");
        // A line toml cannot parse is not quoted back either.
        std::fs::write(&p, "token_label = \"t\"\npin = 98765x4\n").expect("write");
        let e = Config::load_with(Some(&p), |_| None)
            .expect_err("unparsable")
            .to_string();
        assert!(!e.contains("98765x4"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn relative_paths_in_a_file_are_taken_from_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "data_dir = \"state\"\npin_file = \"secrets/pin\"\npkcs11_module = \"libsofthsm2.so\"\n",
        )
        .expect("write");
        let cfg = Config::load_with(Some(&p), |_| None).expect("config");
        let base = std::path::absolute(dir.path()).expect("absolute");
        assert_eq!(cfg.data_dir, base.join("state"));
        assert_eq!(cfg.pin_file, Some(base.join("secrets/pin")));
        assert_eq!(cfg.pkcs11_module, PathBuf::from("libsofthsm2.so"));
        assert!(
            cfg.database_url()
                .starts_with(&format!("sqlite://{}", base.display()))
        );
        assert!(!cfg.database_url().contains("mode=rwc"));
        // An environment override stays as given.
        let cfg = Config::load_with(Some(&p), |k| {
            (k == "HSM_ROTATOR_DATA_DIR").then(|| "elsewhere".into())
        })
        .expect("config");
        assert_eq!(cfg.data_dir, PathBuf::from("elsewhere"));
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
