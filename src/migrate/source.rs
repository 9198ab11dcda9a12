//! Reading a JWTPlus database (`peer-apis.md` A.5) with sqlx's MySQL driver: `settings`,
//! `apps`, `app_keys`, and the `tokens` rows of sessions still alive. Read only; the
//! private keys stay in zeroised buffers.

use std::time::Duration;

use sqlx::Row as _;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use zeroize::Zeroizing;

/// What the migration needs from a JWTPlus database.
#[derive(Debug)]
pub struct Source {
    /// `settings.ROOT-KEY`: SHA-512 (hex) of the root key.
    pub root_key_sha512: Option<String>,
    /// `settings.APP-VERSION`.
    pub version: Option<String>,
    /// Every app, with its keys and live sessions.
    pub apps: Vec<SrcApp>,
}

/// A row of `apps`.
#[derive(Debug)]
pub struct SrcApp {
    /// ULID.
    pub id: String,
    /// `app_name`: also the `iss` of its tokens.
    pub name: String,
    /// `app_description` (`""` for NULL).
    pub description: String,
    /// SHA-512 (hex) of the app key.
    pub app_key_sha512: String,
    /// Seconds.
    pub token_expiry: i64,
    /// Seconds.
    pub token_nbf: i64,
    /// Seconds.
    pub refresh_expiry: i64,
    /// Seconds.
    pub refresh_nbf: i64,
    /// `algo`.
    pub algo: String,
    /// Seconds.
    pub rotation_period: i64,
    /// Unix seconds.
    pub add_time: i64,
    /// Its keys.
    pub keys: Vec<SrcKey>,
    /// Its sessions still alive (access or refresh token unexpired).
    pub tokens: Vec<SrcToken>,
}

/// A row of `app_keys`.
pub struct SrcKey {
    /// ULID: the `kid` of its tokens.
    pub key_id: String,
    /// base64 of the PEM private key.
    pub private_key_b64: Zeroizing<String>,
    /// base64 of the PEM public key (PKIX).
    pub public_key_b64: String,
    /// `key_algo`.
    pub algo: String,
    /// Unix seconds.
    pub add_time: i64,
    /// `is_revoked = 'yes'`.
    pub revoked: bool,
    /// `is_expired = 'yes'`.
    pub expired: bool,
}

impl std::fmt::Debug for SrcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrcKey")
            .field("key_id", &self.key_id)
            .field("algo", &self.algo)
            .field("revoked", &self.revoked)
            .field("expired", &self.expired)
            .finish_non_exhaustive()
    }
}

/// A row of `tokens` (one access + refresh pair).
pub struct SrcToken {
    /// `token_id` = the tokens' `jid`.
    pub token_id: String,
    /// Signing key.
    pub key_id: String,
    /// SHA-512 (hex) of `sub`.
    pub sub_sha512: String,
    /// The access token itself (JWTPlus keeps it in clear).
    pub auth_token: Zeroizing<String>,
    /// Unix seconds.
    pub auth_iat: i64,
    /// Unix seconds.
    pub auth_exp: i64,
    /// The refresh token itself.
    pub refresh_token: Zeroizing<String>,
    /// Unix seconds.
    pub refresh_exp: i64,
    /// `ip_address`.
    pub ip: String,
    /// `user_agent`.
    pub user_agent: String,
}

impl std::fmt::Debug for SrcToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrcToken")
            .field("token_id", &self.token_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Open the JWTPlus database at `url` (`mysql://user:pass@host:3306/db`).
///
/// # Errors
/// A sentence naming the database (password hidden) and the driver's reason.
pub async fn connect(url: &str) -> anyhow::Result<MySqlPool> {
    let shown = crate::config::redact_url(url);
    if !(url.starts_with("mysql://") || url.starts_with("mariadb://")) {
        anyhow::bail!("--from must be a mysql://user:pass@host:3306/db URL, not {shown}");
    }
    let url = url.replacen("mariadb://", "mysql://", 1);
    MySqlPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the JWTPlus database at {shown}: {e}"))
}

/// Read everything the migration needs, sessions alive at `now`.
///
/// # Errors
/// A table or column of A.5 missing, or the database failing.
pub async fn read(pool: &MySqlPool, now: i64) -> anyhow::Result<Source> {
    let schema = |e: sqlx::Error| {
        anyhow::anyhow!(
            "the database does not hold JWTPlus's schema (settings, apps, app_keys, tokens): {e}"
        )
    };
    let mut root_key_sha512 = None;
    let mut version = None;
    for r in sqlx::query(
        "SELECT CAST(setting_key AS CHAR) AS k, CAST(setting_value AS CHAR) AS v FROM settings",
    )
    .fetch_all(pool)
    .await
    .map_err(schema)?
    {
        let k: String = r.try_get("k")?;
        let v: Option<String> = r.try_get("v")?;
        match k.as_str() {
            "ROOT-KEY" => root_key_sha512 = v.map(|v| v.trim().to_ascii_lowercase()),
            "APP-VERSION" => version = v,
            _ => {}
        }
    }
    let mut apps = Vec::new();
    for r in sqlx::query(
        "SELECT CAST(app_id AS CHAR) AS id, CAST(app_name AS CHAR) AS name, \
         CAST(COALESCE(app_description, '') AS CHAR) AS descr, CAST(app_key AS CHAR) AS k, \
         CAST(token_expiry AS SIGNED) AS te, CAST(token_nbf AS SIGNED) AS tn, \
         CAST(refresh_expiry AS SIGNED) AS re, CAST(refresh_nbf AS SIGNED) AS rn, \
         CAST(algo AS CHAR) AS algo, CAST(rotation_period AS SIGNED) AS rp, \
         CAST(add_time AS SIGNED) AS at FROM apps ORDER BY app_id",
    )
    .fetch_all(pool)
    .await
    .map_err(schema)?
    {
        apps.push(SrcApp {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            description: r.try_get("descr")?,
            app_key_sha512: r.try_get::<String, _>("k")?.trim().to_ascii_lowercase(),
            token_expiry: r.try_get("te")?,
            token_nbf: r.try_get("tn")?,
            refresh_expiry: r.try_get("re")?,
            refresh_nbf: r.try_get("rn")?,
            algo: r.try_get("algo")?,
            rotation_period: r.try_get("rp")?,
            add_time: r.try_get("at")?,
            keys: Vec::new(),
            tokens: Vec::new(),
        });
    }
    for app in &mut apps {
        for r in sqlx::query(
            "SELECT CAST(key_id AS CHAR) AS id, CAST(private_key AS CHAR) AS prv, \
             CAST(public_key AS CHAR) AS pb, CAST(key_algo AS CHAR) AS algo, \
             CAST(add_time AS SIGNED) AS at, CAST(is_revoked AS CHAR) AS rv, \
             CAST(is_expired AS CHAR) AS ex FROM app_keys WHERE app_id = ? ORDER BY add_time, key_id",
        )
        .bind(&app.id)
        .fetch_all(pool)
        .await
        .map_err(schema)?
        {
            app.keys.push(SrcKey {
                key_id: r.try_get("id")?,
                private_key_b64: Zeroizing::new(r.try_get("prv")?),
                public_key_b64: r.try_get("pb")?,
                algo: r.try_get("algo")?,
                add_time: r.try_get("at")?,
                revoked: r.try_get::<String, _>("rv")? == "yes",
                expired: r.try_get::<String, _>("ex")? == "yes",
            });
        }
        for r in sqlx::query(
            "SELECT CAST(token_id AS CHAR) AS id, CAST(key_id AS CHAR) AS kid, CAST(sub AS CHAR) AS sub, \
             CAST(auth_token AS CHAR) AS at, CAST(auth_token_iat AS SIGNED) AS aiat, \
             CAST(auth_token_exp AS SIGNED) AS aexp, CAST(refresh_token AS CHAR) AS rt, \
             CAST(refresh_token_exp AS SIGNED) AS rexp, CAST(COALESCE(ip_address, '') AS CHAR) AS ip, \
             CAST(COALESCE(user_agent, '') AS CHAR) AS ua FROM tokens \
             WHERE apps_id = ? AND (auth_token_exp > ? OR refresh_token_exp > ?) ORDER BY token_id",
        )
        .bind(&app.id)
        .bind(now)
        .bind(now)
        .fetch_all(pool)
        .await
        .map_err(schema)?
        {
            app.tokens.push(SrcToken {
                token_id: r.try_get("id")?,
                key_id: r.try_get("kid")?,
                sub_sha512: r.try_get::<String, _>("sub")?.trim().to_ascii_lowercase(),
                auth_token: Zeroizing::new(r.try_get("at")?),
                auth_iat: r.try_get("aiat")?,
                auth_exp: r.try_get("aexp")?,
                refresh_token: Zeroizing::new(r.try_get("rt")?),
                refresh_exp: r.try_get("rexp")?,
                ip: r.try_get("ip")?,
                user_agent: r.try_get("ua")?,
            });
        }
    }
    Ok(Source {
        root_key_sha512,
        version,
        apps,
    })
}
