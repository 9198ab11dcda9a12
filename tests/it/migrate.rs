//! `hsm-rotator migrate jwtplus` (issue 23) against a real MariaDB holding JWTPlus's schema
//! (`peer-apis.md` A.5): apps of every JWTPlus algorithm with keys made by `openssl`, tokens
//! signed as JWTPlus signs them (A.4: `jid`, `iss` = app name, body claims merged in). After
//! the migration the tokens verify, the old credentials work until rotated, the keys sit in
//! the HSM sensitive and not extractable; bad input changes nothing.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::Rng as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha512};
use sqlx::Connection as _;

use crate::common::app::{Engine, TestApp, command, fresh_postgres_db, init_store};
use crate::common::token::TestToken;

/// The MariaDB server the tests use: `TEST_MYSQL_URL`, else the local default.
fn mysql_admin_url() -> String {
    std::env::var("TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// JWTPlus's schema (A.5), in a fresh database of its own; returns the database's URL.
async fn jwtplus_db() -> String {
    let admin = mysql_admin_url();
    let name = format!("test_{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut conn = sqlx::MySqlConnection::connect(&admin)
        .await
        .expect("connect to TEST_MYSQL_URL (scripts/lib.sh ensure_mariadb)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    let url = match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("TEST_MYSQL_URL has no database path"),
    };
    let mut db = sqlx::MySqlConnection::connect(&url).await.expect("connect");
    for ddl in [
        "CREATE TABLE settings (setting_key VARCHAR(64) PRIMARY KEY, setting_value LONGTEXT) ENGINE=InnoDB",
        "CREATE TABLE apps (app_id VARCHAR(26) PRIMARY KEY, app_name VARCHAR(255) NOT NULL, \
         app_description VARCHAR(255) NULL, app_key VARCHAR(128) NOT NULL, token_expiry INT NOT NULL, \
         token_nbf INT NOT NULL DEFAULT 0, refresh_expiry INT NOT NULL, refresh_nbf INT NOT NULL DEFAULT 300, \
         key_type ENUM('RSA','ECDSA') NOT NULL, \
         algo ENUM('RS256','RS384','RS512','PS256','PS384','PS512','ES256','ES384','ES512') NOT NULL, \
         rotation_period INT NOT NULL, add_time INT NOT NULL, update_time INT NULL, last_rotate_time INT NULL) ENGINE=InnoDB",
        "CREATE TABLE app_keys (key_id VARCHAR(26) PRIMARY KEY, app_id VARCHAR(26) NOT NULL, \
         public_key TEXT NOT NULL, private_key TEXT NOT NULL, key_type ENUM('RSA','ECDSA') NOT NULL, \
         key_algo VARCHAR(8) NOT NULL, add_time INT NOT NULL, exp_time INT NOT NULL, \
         is_revoked ENUM('yes','no') NOT NULL DEFAULT 'no', is_expired ENUM('yes','no') NOT NULL DEFAULT 'no', \
         FOREIGN KEY (app_id) REFERENCES apps (app_id) ON DELETE CASCADE) ENGINE=InnoDB",
        "CREATE TABLE tokens (token_id VARCHAR(26) PRIMARY KEY, apps_id VARCHAR(26) NOT NULL, \
         key_id VARCHAR(26) NOT NULL, sub VARCHAR(128) NOT NULL, auth_token TEXT NOT NULL, \
         auth_token_hash VARCHAR(128) NOT NULL, auth_token_iat INT NOT NULL, auth_token_nbf INT NOT NULL, \
         auth_token_exp INT NOT NULL, refresh_token TEXT NOT NULL, refresh_token_hash VARCHAR(128) NOT NULL, \
         refresh_token_iat INT NOT NULL, refresh_token_nbf INT NOT NULL, refresh_token_exp INT NOT NULL, \
         ip_address VARCHAR(24) NOT NULL, user_agent VARCHAR(255) NOT NULL, \
         FOREIGN KEY (apps_id) REFERENCES apps (app_id) ON DELETE CASCADE, \
         FOREIGN KEY (key_id) REFERENCES app_keys (key_id) ON DELETE CASCADE) ENGINE=InnoDB",
    ] {
        sqlx::query(ddl)
            .execute(&mut db)
            .await
            .expect("JWTPlus schema");
    }
    url
}

fn sha512_hex(s: &str) -> String {
    hsm_rotator::pubkey::hex(&Sha512::digest(s.as_bytes()))
}

/// A JWTPlus key (`GenRandomString(128)`).
fn jwtplus_key() -> String {
    let mut bytes = [0u8; 128];
    rand::rng().fill(&mut bytes[..]);
    STANDARD.encode(bytes)[..128].to_owned()
}

fn now() -> i64 {
    hsm_rotator::clock::Clock::now(&hsm_rotator::clock::SystemClock)
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A key pair as JWTPlus makes it: private PKCS#1 or SEC1 PEM, public PKIX PEM.
struct Pair {
    private_pem: String,
    public_pem: String,
    /// PKCS#8 of the private key (what `jsonwebtoken` reads).
    pkcs8_pem: String,
}

fn pair(dir: &Path, name: &str, gen_args: &[&str]) -> Pair {
    let file = format!("{name}.pem");
    // `-out` right after the command: genrsa takes the key size last.
    let mut args = vec![gen_args[0], "-out", &file];
    args.extend(&gen_args[1..]);
    openssl(dir, &args);
    let public = openssl(dir, &["pkey", "-in", &file, "-pubout"]);
    let pkcs8 = openssl(dir, &["pkcs8", "-topk8", "-nocrypt", "-in", &file]);
    Pair {
        private_pem: std::fs::read_to_string(dir.join(&file)).unwrap(),
        public_pem: String::from_utf8(public).unwrap(),
        pkcs8_pem: String::from_utf8(pkcs8).unwrap(),
    }
}

/// The `openssl` arguments JWTPlus's key for `alg` corresponds to (A.4).
fn gen_args(alg: &str) -> Vec<&'static str> {
    match alg {
        "RS512" | "PS512" => vec!["genrsa", "-traditional", "4096"],
        a if a.starts_with("RS") || a.starts_with("PS") => vec!["genrsa", "-traditional", "2048"],
        "ES256" => vec!["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
        "ES384" => vec!["ecparam", "-name", "secp384r1", "-genkey", "-noout"],
        "ES512" => vec!["ecparam", "-name", "secp521r1", "-genkey", "-noout"],
        other => panic!("{other}"),
    }
}

/// Sign `claims` as JWTPlus does (`golang-jwt`: header `alg`, `kid`, `typ: JWT`).
fn sign(alg: &str, kid: &str, key: &Pair, claims: &Value) -> String {
    if alg == "ES512" {
        // `jsonwebtoken` has no ES512: openssl signs (SHA-512, DER), turned into r || s.
        use der::Decode as _;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("k.pem"), &key.private_pem).unwrap();
        let head =
            URL_SAFE_NO_PAD.encode(json!({"alg": "ES512", "kid": kid, "typ": "JWT"}).to_string());
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{head}.{body}");
        std::fs::write(dir.path().join("in"), &input).unwrap();
        let sig = openssl(dir.path(), &["dgst", "-sha512", "-sign", "k.pem", "in"]);
        let parts = Vec::<der::asn1::UintRef<'_>>::from_der(&sig).expect("ECDSA DER");
        let mut raw = Vec::new();
        for p in parts {
            let b = p.as_bytes();
            raw.extend(std::iter::repeat_n(0u8, 66 - b.len()));
            raw.extend_from_slice(b);
        }
        return format!("{input}.{}", URL_SAFE_NO_PAD.encode(raw));
    }
    let a: jsonwebtoken::Algorithm = alg.parse().unwrap();
    let mut header = jsonwebtoken::Header::new(a);
    header.kid = Some(kid.to_owned());
    // PKCS#8 DER for EC keys, PKCS#1 DER for RSA ones.
    let der = |pem: &str| der::pem::decode_vec(pem.trim().as_bytes()).expect("PEM").1;
    let ek = if alg.starts_with("ES") {
        jsonwebtoken::EncodingKey::from_ec_der(&der(&key.pkcs8_pem))
    } else {
        jsonwebtoken::EncodingKey::from_rsa_der(&der(&key.private_pem))
    };
    jsonwebtoken::encode(&header, claims, &ek).expect("sign")
}

/// One JWTPlus app as the fixture made it.
struct JpApp {
    id: String,
    name: String,
    alg: String,
    app_key: String,
    /// `(key_id, state)` of its keys.
    keys: Vec<(String, &'static str)>,
    /// Live access tokens with their refresh token and subject.
    tokens: Vec<(String, String, String)>,
}

/// Writes JWTPlus rows.
struct Fixture {
    url: String,
    db: sqlx::MySqlConnection,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        let url = jwtplus_db().await;
        let db = sqlx::MySqlConnection::connect(&url).await.expect("connect");
        Self {
            url,
            db,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    async fn root_key(&mut self) -> String {
        let root = jwtplus_key();
        sqlx::query("INSERT INTO settings VALUES ('ROOT-KEY', ?), ('APP-VERSION', '1.1')")
            .bind(sha512_hex(&root))
            .execute(&mut self.db)
            .await
            .unwrap();
        root
    }

    async fn app(&mut self, name: &str, alg: &str) -> JpApp {
        let id = ulid::Ulid::new().to_string();
        let app_key = jwtplus_key();
        let t = now();
        sqlx::query(
            "INSERT INTO apps (app_id, app_name, app_description, app_key, token_expiry, token_nbf, \
             refresh_expiry, refresh_nbf, key_type, algo, rotation_period, add_time) \
             VALUES (?, ?, NULL, ?, 3600, 0, 86400, 0, ?, ?, 2592000, ?)",
        )
        .bind(&id)
        .bind(name)
        .bind(sha512_hex(&app_key))
        .bind(if alg.starts_with("ES") { "ECDSA" } else { "RSA" })
        .bind(alg)
        .bind(t - 100)
        .execute(&mut self.db)
        .await
        .unwrap();
        JpApp {
            id,
            name: name.into(),
            alg: alg.into(),
            app_key,
            keys: Vec::new(),
            tokens: Vec::new(),
        }
    }

    /// A key row (`state`: active, expired or revoked) from PEM texts.
    async fn key_rows(
        &mut self,
        app: &mut JpApp,
        state: &'static str,
        private: &str,
        public: &str,
    ) -> String {
        let key_id = ulid::Ulid::new().to_string();
        let t = now();
        sqlx::query(
            "INSERT INTO app_keys (key_id, app_id, public_key, private_key, key_type, key_algo, \
             add_time, exp_time, is_revoked, is_expired) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key_id)
        .bind(&app.id)
        .bind(STANDARD.encode(public))
        .bind(STANDARD.encode(private))
        .bind(if app.alg.starts_with("ES") {
            "ECDSA"
        } else {
            "RSA"
        })
        .bind(&app.alg)
        .bind(t - 50)
        .bind(t + 2_592_000)
        .bind(if state == "revoked" { "yes" } else { "no" })
        .bind(if state == "expired" { "yes" } else { "no" })
        .execute(&mut self.db)
        .await
        .unwrap();
        app.keys.push((key_id.clone(), state));
        key_id
    }

    /// A key made by `openssl` for the app's algorithm.
    async fn key(&mut self, app: &mut JpApp, state: &'static str) -> (String, Pair) {
        let p = pair(
            self.dir.path(),
            &ulid::Ulid::new().to_string(),
            &gen_args(&app.alg),
        );
        let kid = self
            .key_rows(app, state, &p.private_pem, &p.public_pem)
            .await;
        (kid, p)
    }

    /// A session signed as JWTPlus signs it (A.4), with its `tokens` row.
    async fn token(&mut self, app: &mut JpApp, kid: &str, key: &Pair, sub: &str) {
        self.token_with_refresh_nbf(app, kid, key, sub, 0).await;
    }

    /// [`Self::token`] whose refresh token becomes usable `refresh_nbf` seconds after
    /// issuance (JWTPlus's `refresh_nbf`).
    async fn token_with_refresh_nbf(
        &mut self,
        app: &mut JpApp,
        kid: &str,
        key: &Pair,
        sub: &str,
        refresh_nbf: i64,
    ) {
        let jid = ulid::Ulid::new().to_string();
        let iat = now() - 10;
        let (exp, rexp, rnbf) = (iat + 3600, iat + 86_400, iat + refresh_nbf);
        // Reserved claims first, then every body member merged over them.
        let auth = json!({"jid": jid, "iat": iat, "nbf": iat, "exp": exp, "iss": app.name,
            "sub": sub, "aud": "shop", "ip": "10.0.0.7", "useragent": "curl/8", "plan": "gold"});
        let refresh = json!({"jid": jid, "iat": iat, "nbf": rnbf, "exp": rexp, "iss": app.name, "type": "refresh"});
        let (at, rt) = (
            sign(&app.alg, kid, key, &auth),
            sign(&app.alg, kid, key, &refresh),
        );
        sqlx::query(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '10.0.0.7', 'curl/8')",
        )
        .bind(&jid)
        .bind(&app.id)
        .bind(kid)
        .bind(sha512_hex(sub))
        .bind(&at)
        .bind(sha512_hex(&at))
        .bind(iat)
        .bind(iat)
        .bind(exp)
        .bind(&rt)
        .bind(sha512_hex(&rt))
        .bind(iat)
        .bind(rnbf)
        .bind(rexp)
        .execute(&mut self.db)
        .await
        .unwrap();
        app.tokens.push((at, rt, sub.to_owned()));
    }
}

/// `hsm-rotator <args>` on the store (direct mode).
async fn cli(token: &TestToken, db: &str, args: &[&str]) -> Output {
    command(token, db, &[])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run hsm-rotator")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// The store's apps, as `app list --json` shows them (read only: no lock).
async fn app_list(token: &TestToken, db: &str) -> Value {
    json_of(&cli(token, db, &["--json", "app", "list"]).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwtplus_deployment_moves_in_and_nobody_logs_in_again_sqlite() {
    moves_in(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwtplus_deployment_moves_in_and_nobody_logs_in_again_postgres() {
    moves_in(Engine::Postgres).await;
}

async fn moves_in(engine: Engine) {
    let test = "migrate_jwtplus";
    let token = Arc::new(TestToken::new(&format!("{test}_{engine:?}")));
    let db = match engine {
        Engine::Sqlite => format!("sqlite://{}/store.db?mode=rwc", token.path().display()),
        Engine::Postgres => fresh_postgres_db().await,
    };
    let root = init_store(&token, &db, &[]).await;

    let mut f = Fixture::new().await;
    let jp_root = f.root_key().await;
    let mut apps = Vec::new();
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
    ] {
        if !token.can(test, alg.parse().unwrap()) {
            continue;
        }
        let mut a = f.app(&format!("Shop {alg}"), alg).await;
        let (kid, key) = f.key(&mut a, "active").await;
        f.token(&mut a, &kid, &key, &format!("user-{alg}@example.com"))
            .await;
        if alg == "RS256" {
            // A session renewed only after JWTPlus's refresh not-before (an hour here).
            f.token_with_refresh_nbf(&mut a, &kid, &key, "carol@example.com", 3600)
                .await;
        }
        if alg == "ES256" {
            // Rotated before: an expired key whose token is still alive comes along as
            // `previous`; a revoked key and an expired one without live tokens stay behind.
            let (old, old_key) = f.key(&mut a, "expired").await;
            f.token(&mut a, &old, &old_key, "bob@example.com").await;
            f.key(&mut a, "revoked").await;
            f.key(&mut a, "expired").await;
        }
        apps.push(a);
    }
    assert!(
        !apps.is_empty(),
        "the token signs none of JWTPlus's algorithms"
    );
    let labels = sorted_labels(&token);

    // --dry-run prints the plan and changes nothing.
    let plan = json_of(
        &cli(
            &token,
            &db,
            &[
                "--json",
                "migrate",
                "jwtplus",
                "--from",
                &f.url,
                "--dry-run",
            ],
        )
        .await,
    );
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert_eq!(plan["apps"].as_array().unwrap().len(), apps.len(), "{plan}");
    let es = plan["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["algorithm"] == "ES256");
    if let Some(es) = es {
        let states: Vec<&str> = es["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["current", "previous"], "{es}");
        assert_eq!(es["skipped_keys"].as_array().unwrap().len(), 2, "{es}");
        assert_eq!(es["sessions"], 2, "{es}");
    }
    assert_eq!(app_list(&token, &db).await["apps"], json!([]), "dry run");
    assert_eq!(sorted_labels(&token), labels, "dry run touched the HSM");

    // The migration.
    let out = cli(
        &token,
        &db,
        &["--json", "migrate", "jwtplus", "--from", &f.url],
    )
    .await;
    let done = json_of(&out);
    assert_eq!(
        done["migrated"].as_array().unwrap().len(),
        apps.len(),
        "{done}"
    );
    let after = app_list(&token, &db).await;
    let labels_after = sorted_labels(&token);
    assert!(labels_after.len() > labels.len());

    // A second run is a no-op.
    let again = json_of(
        &cli(
            &token,
            &db,
            &["--json", "migrate", "jwtplus", "--from", &f.url],
        )
        .await,
    );
    assert_eq!(again["migrated"], json!([]), "{again}");
    assert!(
        again["apps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["action"] == "already migrated"),
        "{again}"
    );
    assert_eq!(app_list(&token, &db).await, after, "second run");
    assert_eq!(
        sorted_labels(&token),
        labels_after,
        "second run touched the HSM"
    );

    let app = TestApp::start(token.clone(), db.clone(), &[])
        .await
        .with_root(&root);
    for a in &apps {
        // Same id, name, algorithm; the JWTPlus keys imported, a generated next.
        let (s, shown) = app
            .call("GET", &format!("/app/{}", a.id), Some(&a.app_key), None)
            .await;
        assert_eq!(s, 200, "{}: the old app key authenticates: {shown}", a.name);
        assert_eq!(
            (shown["app"]["name"].as_str(), shown["app"]["algo"].as_str()),
            (Some(a.name.as_str()), Some(a.alg.as_str()))
        );
        let keys = app.keys(&a.id).await;
        for (kid, state) in &a.keys {
            let k = keys.iter().find(|k| k["kid"] == kid.as_str());
            match (*state, k) {
                ("active", Some(k)) => assert_eq!(
                    (k["state"].as_str(), k["origin"].as_str()),
                    (Some("current"), Some("imported")),
                    "{k}"
                ),
                ("expired", Some(k)) => assert_eq!(k["state"], "previous", "{k}"),
                ("expired" | "revoked", None) => {}
                (s, k) => panic!("{}: key {kid} ({s}) came over as {k:?}", a.name),
            }
        }
        let next: Vec<&Value> = keys.iter().filter(|k| k["state"] == "next").collect();
        assert_eq!(next.len(), 1, "{keys:?}");
        assert_eq!(next[0]["origin"], "generated");
        for (at, _, _) in &a.tokens {
            // Introspection on the native API, with the JWTPlus app key as credential.
            assert!(
                app.active(&a.id, &a.app_key, at).await,
                "{}: token inactive\n{}",
                a.name,
                app.log_tail()
            );
            let (s, v) = app
                .call(
                    "POST",
                    &format!("/app/{}/verify", a.id),
                    Some(&a.app_key),
                    Some(json!({"token": at})),
                )
                .await;
            assert_eq!((s, &v), (200, &json!({"verified": true})), "{}", a.name);
        }
        // A JWTPlus refresh token is not an access token, here as there.
        let (_, rt, _) = &a.tokens[0];
        assert!(!app.active(&a.id, &a.app_key, rt).await, "{}", a.name);
    }

    // Sessions: listed by the plain subject (JWTPlus kept only its SHA-512), and a refresh
    // token JWTPlus issued is exchanged once.
    let a = &apps[0];
    let (at, rt, sub) = &a.tokens[0];
    let (s, v) = app
        .call(
            "POST",
            &format!("/app/{}/get-session", a.id),
            Some(&a.app_key),
            Some(json!({"sub": sub})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let sessions = v["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions: {v}"));
    assert_eq!(sessions.len(), 1, "{v}");
    assert_eq!(
        (
            sessions[0]["ip_address"].as_str(),
            sessions[0]["user_agent"].as_str()
        ),
        (Some("10.0.0.7"), Some("curl/8"))
    );
    let renew = json!({"refresh_token": rt, "ip": "10.0.0.8", "useragent": "curl/9"});
    let (s, v) = app
        .call(
            "POST",
            &format!("/app/{}/renew", a.id),
            Some(&a.app_key),
            Some(renew.clone()),
        )
        .await;
    assert_eq!(s, 200, "renew: {v}\n{}", app.log_tail());
    let renewed = v["auth_token"].as_str().unwrap().to_owned();
    assert!(app.active(&a.id, &a.app_key, &renewed).await);
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(renewed.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (claims["sub"].as_str(), claims["plan"].as_str()),
        (Some(sub.as_str()), Some("gold")),
        "{claims}"
    );
    let (s, _) = app
        .call(
            "POST",
            &format!("/app/{}/renew", a.id),
            Some(&a.app_key),
            Some(renew),
        )
        .await;
    assert_eq!(s, 404, "a refresh token is single use");
    // Renewal ended the old access token, as in JWTPlus.
    assert!(!app.active(&a.id, &a.app_key, at).await);
    assert!(
        app.active(&a.id, &a.app_key, &renewed).await,
        "renewing a renewed token revokes nothing, as in JWTPlus (no reuse detection there)"
    );

    // A migrated refresh token before its JWTPlus not-before: 404 as there, twice, and
    // nothing changes (no reuse revokes its family, so its access token lives on).
    if let Some(rs) = apps.iter().find(|a| a.alg == "RS256") {
        let (at, rt, _) = &rs.tokens[1];
        let renew = json!({"refresh_token": rt, "ip": "10.0.0.8", "useragent": "curl/9"});
        for _ in 0..2 {
            let (s, v) = app
                .call(
                    "POST",
                    &format!("/app/{}/renew", rs.id),
                    Some(&rs.app_key),
                    Some(renew.clone()),
                )
                .await;
            assert_eq!(
                (s, v),
                (404, json!({"message": "invalid refresh token"})),
                "renew before the refresh not-before"
            );
        }
        assert!(app.active(&rs.id, &rs.app_key, at).await);
    }

    // Logging a subject out by its plain name reaches its migrated tokens (the ledger and
    // the cut-off key subjects by the SHA-256 of the `sub` read back from each token).
    if let Some(es) = apps.iter().find(|a| a.alg == "ES256") {
        let (s, v) = app
            .bearer(
                &es.app_key,
                "DELETE",
                &format!("/apps/{}/sessions?sub=bob@example.com", es.id),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        for (at, _, sub) in &es.tokens {
            assert_eq!(
                app.active(&es.id, &es.app_key, at).await,
                sub != "bob@example.com",
                "{sub}"
            );
        }
    }

    // The imported private keys: sensitive, not extractable, born outside the token.
    let out = app
        .token
        .pkcs11_tool_login(&["--list-objects", "--type", "privkey"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for (kid, state) in apps.iter().flat_map(|a| a.keys.iter()) {
        let block = text
            .split("Private Key Object")
            .find(|b| b.contains(kid.as_str()));
        let Some(block) = block else {
            assert!(*state != "active", "{kid} not on the token:\n{text}");
            continue;
        };
        let access = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("Access:"))
            .unwrap_or_default();
        let items: Vec<&str> = access.split(',').map(str::trim).collect();
        assert!(items.contains(&"sensitive"), "{kid}: {block}");
        assert!(!items.contains(&"extractable"), "{kid}: {block}");
        assert!(!items.contains(&"local"), "{kid} is imported: {block}");
    }

    // The audit log: one migrate.app record per app, one for the root key.
    let (s, audit) = app
        .call("GET", "/audit?action=migrate.app", Some(&jp_root), None)
        .await;
    assert_eq!(
        s, 200,
        "the JWTPlus root key authenticates on native routes: {audit}"
    );
    let records = audit["records"].as_array().unwrap();
    for a in &apps {
        let r = records
            .iter()
            .find(|r| r["target"] == a.id.as_str())
            .unwrap_or_else(|| panic!("{audit}"));
        let d: Value = serde_json::from_str(r["details"].as_str().unwrap()).unwrap();
        assert_eq!(d["from"], "jwtplus", "{d}");
        assert_eq!(d["sessions"], a.tokens.len(), "{d}");
    }
    let (_, audit) = app
        .root("GET", "/audit?action=migrate.root_key", None)
        .await;
    assert_eq!(audit["records"].as_array().unwrap().len(), 1, "{audit}");

    // `/root/{app_id}/rotate/pki` (with the JWTPlus root key) kills the app's tokens.
    let b = apps.last().unwrap();
    let (s, v) = app
        .call(
            "GET",
            &format!("/root/{}/rotate/pki", b.id),
            Some(&jp_root),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for (at, _, _) in &b.tokens {
        let (_, v) = app
            .call(
                "POST",
                &format!("/app/{}/verify", b.id),
                Some(&b.app_key),
                Some(json!({"token": at})),
            )
            .await;
        assert_eq!(v, json!({"verified": false}));
    }
    // The app key lives until the app gets a new one; the root key until it rotates.
    let (s, v) = app
        .call(
            "GET",
            &format!("/root/{}/rotate/key", b.id),
            Some(&jp_root),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = app
        .call("GET", &format!("/app/{}", b.id), Some(&b.app_key), None)
        .await;
    assert_eq!(s, 403, "the old app key died with the new one");
    let (s, _) = app
        .call(
            "GET",
            &format!("/app/{}", b.id),
            Some(v["app_key"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = app.call("GET", "/root/rotate", Some(&jp_root), None).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = app.call("GET", "/root/list", Some(&jp_root), None).await;
    assert_eq!(s, 403, "the JWTPlus root key died with the rotation");
    let (s, _) = app
        .call(
            "GET",
            "/root/list",
            Some(v["new-key"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jwtplus_input_is_refused_clearly_and_changes_nothing() {
    let token = TestToken::new("migrate_jwtplus_bad");
    let db = format!("sqlite://{}/store.db?mode=rwc", token.path().display());
    init_store(&token, &db, &[]).await;
    let labels = sorted_labels(&token);
    let gen_ok = ["ecparam", "-name", "prime256v1", "-genkey", "-noout"];
    let cases: [(&str, &str, &str); 4] = [
        ("unparseable", "RS256", "malformed RSA private key"),
        ("rsa1024", "RS256", "1024 bits"),
        ("secp256k1", "ES256", "secp256k1"),
        ("mismatch", "ES256", "does not match"),
    ];
    for (case, alg, expect) in cases {
        let mut f = Fixture::new().await;
        f.root_key().await;
        // A good app next to the bad one: it does not come over either.
        let mut good = f.app("Good", "ES256").await;
        let p = pair(f.dir.path(), "good", &gen_ok);
        f.key_rows(&mut good, "active", &p.private_pem, &p.public_pem)
            .await;
        let mut a = f.app("Bad", alg).await;
        let d = f.dir.path().to_owned();
        let (private, public) = match case {
            "unparseable" => (
                "-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n-----END RSA PRIVATE KEY-----\n"
                    .to_owned(),
                p.public_pem.clone(),
            ),
            "rsa1024" => {
                let k = pair(&d, "small", &["genrsa", "-traditional", "1024"]);
                (k.private_pem, k.public_pem)
            }
            "secp256k1" => {
                let k = pair(
                    &d,
                    "k1",
                    &["ecparam", "-name", "secp256k1", "-genkey", "-noout"],
                );
                (k.private_pem, k.public_pem)
            }
            _ => {
                let k = pair(&d, "other", &gen_ok);
                (k.private_pem, p.public_pem.clone())
            }
        };
        f.key_rows(&mut a, "active", &private, &public).await;
        let out = cli(&token, &db, &["migrate", "jwtplus", "--from", &f.url]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: accepted");
        assert!(err.contains(expect) && err.contains(&a.id), "{case}: {err}");
        assert!(
            !err.contains("PRIVATE KEY-----\n"),
            "{case}: key material in the error: {err}"
        );
        assert_eq!(app_list(&token, &db).await["apps"], json!([]), "{case}");
        assert_eq!(sorted_labels(&token), labels, "{case}: the HSM changed");
    }
    // A MySQL it cannot reach; the password never shows.
    let out = cli(
        &token,
        &db,
        &[
            "migrate",
            "jwtplus",
            "--from",
            "mysql://jp:s3cret@127.0.0.1:1/jwtplus",
        ],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach the JWTPlus database") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
    assert_eq!(app_list(&token, &db).await["apps"], json!([]));
    // The store itself refuses a MySQL URL.
    let out = cli(
        &token,
        "mysql://root@127.0.0.1:3306/test",
        &["--json", "app", "list"],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("database_url must be sqlite"), "{err}");
}

/// The token's object labels, sorted (the listing order changes when the audit mark is
/// rewritten).
fn sorted_labels(token: &TestToken) -> Vec<String> {
    let mut l = token.labels();
    l.sort();
    l
}

/// The `jid` of a JWT (its payload read without checking).
fn jid_of(jwt: &str) -> String {
    let payload = URL_SAFE_NO_PAD
        .decode(jwt.split('.').nth(1).unwrap())
        .unwrap();
    serde_json::from_slice::<Value>(&payload).unwrap()["jid"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn sqlite(db: &str, sql: &str, binds: &[&str]) -> u64 {
    let mut conn = sqlx::SqliteConnection::connect(db).await.expect("sqlite");
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
    for b in binds {
        q = q.bind(*b);
    }
    q.execute(&mut conn).await.expect(sql).rows_affected()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_fails_half_way_leaves_no_orphans_and_runs_again() {
    let token = TestToken::new("migrate_jwtplus_half");
    let db = format!("sqlite://{}/store.db?mode=rwc", token.path().display());
    init_store(&token, &db, &[]).await;
    let mut f = Fixture::new().await;
    f.root_key().await;
    let mut first = f.app("First", "ES256").await;
    let (kid_a, key_a) = f.key(&mut first, "active").await;
    f.token(&mut first, &kid_a, &key_a, "ann").await;
    let mut second = f.app("Second", "ES256").await;
    let (kid_b, key_b) = f.key(&mut second, "active").await;
    f.token(&mut second, &kid_b, &key_b, "ben").await;

    // A run that died after importing the first app's key left its pending row (the
    // reconciler's case); and the second app's transaction will fail: a ledger row with its
    // session's id is in the way.
    sqlite(
        &db,
        "INSERT INTO keys (kid, app_id, algorithm, rsa_bits, state, created_at, origin) \
         VALUES ($1, NULL, 'ES256', 0, 'pending', 0, 'imported')",
        &[&kid_a],
    )
    .await;
    // Without --json: short lines for people.
    let out = cli(
        &token,
        &db,
        &["migrate", "jwtplus", "--from", &f.url, "--dry-run"],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("dry run, nothing changed."), "{text}");
    assert!(
        text.contains(&format!(
            "app {} \"Second\" ES256: migrate; imported keys [{kid_b} current]",
            second.id
        )),
        "{text}"
    );
    let jid_b = jid_of(&second.tokens[0].0);
    sqlite(
        &db,
        "INSERT INTO tokens (jti, app_id, kid, iat, exp) VALUES ($1, 'elsewhere', 'x', 0, 0)",
        &[&jid_b],
    )
    .await;
    let out = cli(
        &token,
        &db,
        &["--json", "migrate", "jwtplus", "--from", &f.url],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&second.id) && err.contains("UNIQUE"), "{err}");
    let apps = app_list(&token, &db).await;
    let ids: Vec<&str> = apps["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first.id.as_str()], "{apps}");
    // No orphan: the second app's imported objects were destroyed, its row deleted.
    assert!(
        !token.labels().iter().any(|l| l.ends_with(kid_b.as_str())),
        "{:?}",
        token.labels()
    );
    assert_eq!(
        sqlite(&db, "UPDATE keys SET cert = cert WHERE kid = $1", &[&kid_b]).await,
        0,
        "no key row of the second app's key"
    );
    // The first app's leftover pending row was undone and its key imported properly.
    assert_eq!(
        sqlite(
            &db,
            "UPDATE keys SET cert = cert WHERE kid = $1 AND state = 'current' AND app_id = $2",
            &[&kid_a, &first.id]
        )
        .await,
        1
    );
    let out = cli(&token, &db, &["--json", "keys", "list", &second.id]).await;
    assert!(!out.status.success(), "the second app does not exist");
    let mut conn = sqlx::SqliteConnection::connect(&db).await.expect("sqlite");
    let failed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'migrate.app' AND outcome = 'failed' AND target = $1",
    )
    .bind(&second.id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    drop(conn);
    assert_eq!(failed, 1, "the failure is audited");

    // Run again once the obstacle is gone: only the second app is migrated.
    sqlite(&db, "DELETE FROM tokens WHERE jti = $1", &[&jid_b]).await;
    let done = json_of(
        &cli(
            &token,
            &db,
            &["--json", "migrate", "jwtplus", "--from", &f.url],
        )
        .await,
    );
    let migrated: Vec<&str> = done["migrated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["app_id"].as_str().unwrap())
        .collect();
    assert_eq!(migrated, [second.id.as_str()], "{done}");
    assert!(token.labels().iter().any(|l| l.ends_with(kid_b.as_str())));
    let keys = json_of(&cli(&token, &db, &["--json", "keys", "list", &second.id]).await);
    assert!(
        keys.to_string().contains(&kid_b),
        "the JWTPlus key came over: {keys}"
    );
}
