//! `TestApp`: the real binary as a child process, on a free port, with its own PKCS#11
//! token (on the module `HSM_ROTATOR_TEST_MODULE` names, see [`super::token`]) and its own
//! database (a SQLite file, or a fresh PostgreSQL database).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::token::TestToken;

/// Which store engine a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A running service.
pub struct TestApp {
    pub token: std::sync::Arc<TestToken>,
    pub base: String,
    pub root_key: String,
    pub client: reqwest::Client,
    pub database_url: String,
    pub stderr_path: PathBuf,
    child: Child,
}

/// The PostgreSQL server tests use: `TEST_DATABASE_URL`, else the local default.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh, empty PostgreSQL database; returns its URL.
pub async fn fresh_postgres_db() -> String {
    use sqlx::Connection as _;
    let admin = postgres_admin_url();
    let name = format!("hsmr_{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to TEST_DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("TEST_DATABASE_URL has no database path"),
    }
}

/// The binary with the environment every test process gets: the test's token, `database_url`,
/// a data directory in the token's, small pools, then `env`.
pub fn command(token: &TestToken, database_url: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hsm-rotator"));
    cmd.envs(token.env())
        .env("HSM_ROTATOR_PKCS11_MODULE", token.module.path())
        .env("HSM_ROTATOR_PIN", &token.pin)
        .env("HSM_ROTATOR_TOKEN_LABEL", &token.label)
        .env("HSM_ROTATOR_DATA_DIR", token.path().join("data"))
        .env("HSM_ROTATOR_DATABASE_URL", database_url)
        .env("HSM_ROTATOR_SESSIONS", "4")
        // Tests rotate back to back; the guardrail has its own test.
        .env("HSM_ROTATOR_JWKS_MAX_AGE", "0")
        .env(
            "RUST_LOG",
            std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `hsm-rotator init --json` on `database_url`: the store, as an operator makes it before
/// the first `serve`. Returns the root key.
pub async fn init_store(token: &TestToken, database_url: &str, env: &[(&str, &str)]) -> String {
    let out = command(token, database_url, env)
        .args(["init", "--json"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run hsm-rotator init");
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("init --json prints JSON");
    v["root_key"]
        .as_str()
        .expect("a new store has a root key")
        .to_owned()
}

impl TestApp {
    /// Start the service for `test_name` on `engine`.
    pub async fn spawn(test_name: &str, engine: Engine) -> Self {
        Self::spawn_with(test_name, engine, &[]).await
    }

    /// Start with extra `HSM_ROTATOR_*` environment.
    pub async fn spawn_with(test_name: &str, engine: Engine, env: &[(&str, &str)]) -> Self {
        Self::spawn_on(TestToken::new(test_name), engine, env).await
    }

    /// Start on a token the test prepared (e.g. [`TestToken::with_denied`]).
    pub async fn spawn_on(token: TestToken, engine: Engine, env: &[(&str, &str)]) -> Self {
        let database_url = match engine {
            Engine::Sqlite => format!("sqlite://{}/store.db?mode=rwc", token.path().display()),
            Engine::Postgres => fresh_postgres_db().await,
        };
        let token = std::sync::Arc::new(token);
        let root_key = init_store(&token, &database_url, env).await;
        Self::start(token, database_url, env)
            .await
            .with_root(&root_key)
    }

    /// Start a (second) process on an existing token and database.
    pub async fn start(
        token: std::sync::Arc<TestToken>,
        database_url: String,
        env: &[(&str, &str)],
    ) -> Self {
        let stderr_path = token
            .path()
            .join(format!("stderr-{}.log", ulid::Ulid::new()));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        // `HSM_ROTATOR_LISTEN` in `env` fixes the address (a restart on the same port);
        // otherwise a free port.
        let listen = env
            .iter()
            .find(|(k, _)| *k == "HSM_ROTATOR_LISTEN")
            .map_or("127.0.0.1:0", |(_, v)| *v);
        let mut cmd = command(&token, &database_url, env);
        cmd.args(["serve", "--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn hsm-rotator");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                assert!(
                    !line.contains("rk_"),
                    "serve printed a root key on stdout: {line}"
                );
                if let Some(url) = line.strip_prefix("listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!(
                "hsm-rotator exited: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        })
        .await
        .expect("service did not start in 60 s");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            token,
            base,
            root_key: String::new(),
            client: reqwest::Client::new(),
            database_url,
            stderr_path,
            child,
        }
    }

    /// Send SIGTERM and wait (bounded) for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("exit within 20 s")
            .unwrap()
    }

    /// Another replica: a second process on the same token and database.
    pub async fn replica(&self, env: &[(&str, &str)]) -> Self {
        Self::start(self.token.clone(), self.database_url.clone(), env)
            .await
            .with_root(&self.root_key)
    }

    pub fn with_root(mut self, root: &str) -> Self {
        self.root_key = root.to_owned();
        self
    }

    /// Kill the server and start it again on the same token and store, signed in as before.
    pub async fn restart(self) -> Self {
        let root = self.root_key.clone();
        let url = self.database_url.clone();
        let token = self.kill().await;
        Self::start(token, url, &[]).await.with_root(&root)
    }

    /// Stop the process (SIGKILL) and hand back its token.
    pub async fn kill(mut self) -> std::sync::Arc<TestToken> {
        let _ = self.child.kill().await;
        self.token
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The last lines of the server's log, newest first, for a failure message.
    pub fn log_tail(&self) -> String {
        let log = self.stderr();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        format!(
            "--- server log (last lines, newest first) ---\n{}",
            tail.join("\n")
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with a raw `Authorization` value.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.client.request(m, self.url(path));
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let res = match rb.send().await {
            Ok(res) => res,
            // The process may have died: say how, not just that the connection went.
            Err(e) => panic!("{method} {path}: {e}\n{}", self.log_tail()),
        };
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn root(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, Some(&self.root_key.clone()), body)
            .await
    }

    pub async fn bearer(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call(method, path, Some(&format!("Bearer {token}")), body)
            .await
    }

    /// Create an app; returns `(id, access_token, body)`.
    pub async fn create_app(&self, body: Value) -> (String, String, Value) {
        let (s, v) = self.root("POST", "/apps", Some(body)).await;
        if s != 201 {
            panic!("create app answered {s}: {v}\n{}", self.log_tail());
        }
        (
            v["id"].as_str().unwrap().to_owned(),
            v["access_token"].as_str().unwrap().to_owned(),
            v,
        )
    }

    /// Issue a token with `claims`; returns the response body.
    pub async fn issue(&self, app: &str, pk: &str, claims: Value) -> Value {
        let (s, v) = self
            .bearer(
                pk,
                "POST",
                &format!("/apps/{app}/tokens"),
                Some(json!({"claims": claims})),
            )
            .await;
        assert_eq!(s, 201, "issue: {v}");
        v
    }

    /// Introspect; returns `active`.
    pub async fn active(&self, app: &str, pk: &str, token: &str) -> bool {
        let (s, v) = self
            .bearer(
                pk,
                "POST",
                &format!("/apps/{app}/tokens/introspect"),
                Some(json!({"token": token})),
            )
            .await;
        assert_eq!(s, 200, "introspect: {v}");
        v["active"].as_bool().unwrap()
    }

    /// The app's keys as the API lists them.
    pub async fn keys(&self, app: &str) -> Vec<Value> {
        let (s, v) = self.root("GET", &format!("/apps/{app}/keys"), None).await;
        assert_eq!(s, 200, "keys: {v}");
        v["keys"].as_array().unwrap().clone()
    }

    pub async fn jwks(&self, app: &str) -> Value {
        let (s, v) = self
            .call(
                "GET",
                &format!("/apps/{app}/.well-known/jwks.json"),
                None,
                None,
            )
            .await;
        assert_eq!(s, 200, "jwks: {v}");
        v
    }

    /// Labels of the token's key objects, read by a second process (pkcs11-tool), each of
    /// ours written `hsm-rotator/<kid>` whatever store id it carries (tests of the store id
    /// read [`TestToken::labels`]). The audit log's MAC key and mark are left out: the
    /// sealer makes and moves them moments after any change.
    pub fn token_labels(&self) -> Vec<String> {
        self.token
            .labels()
            .into_iter()
            .filter(|l| {
                let l = l.trim_matches('\'');
                !(l.ends_with("/audit-mac") || l.ends_with("/audit-mark"))
            })
            .map(|l| {
                match l
                    .strip_prefix("hsm-rotator/")
                    .and_then(|r| r.split_once('/'))
                {
                    Some((_, kid)) => format!("hsm-rotator/{kid}"),
                    None => l,
                }
            })
            .collect()
    }
}

/// Kids in `keys` with `state`.
pub fn kids_in(keys: &[Value], state: &str) -> Vec<String> {
    keys.iter()
        .filter(|k| k["state"] == state)
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// A connection to a test store, SQLite or PostgreSQL (what a database writer holds).
pub async fn any_conn(url: &str) -> sqlx::AnyConnection {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url).await.unwrap()
}

/// A loopback address with a port free now, for a server that must restart on the same
/// address (its issuer names it).
pub fn free_listen() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}
