//! The command line, run as the real binary: direct mode on a fresh token and SQLite
//! store, `--url` mode against a running server, the SQLite one-writer rule between them,
//! and `config check` on good and broken configurations. No secret other than the access
//! token `app create` shows once may appear in anything the CLI prints.

use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::common::app::{Engine, TestApp};
use crate::common::token::TestToken;

/// One run of the CLI.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}): {}\n{}", self.stdout, self.stderr)
        })
    }

    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Environment of a direct-mode run on `token` with the store at `db`.
fn direct_env(token: &TestToken, db: &str) -> Vec<(String, String)> {
    [
        ("SOFTHSM2_CONF", token.conf.display().to_string()),
        ("HSM_ROTATOR_PIN", token.pin.clone()),
        ("HSM_ROTATOR_TOKEN_LABEL", token.label.clone()),
        (
            "HSM_ROTATOR_DATA_DIR",
            token.path().join("data").display().to_string(),
        ),
        ("HSM_ROTATOR_DATABASE_URL", db.to_owned()),
        ("HSM_ROTATOR_SESSIONS", "2".into()),
        ("HSM_ROTATOR_SPARE_KEYS", "1".into()),
        ("HSM_ROTATOR_JWKS_MAX_AGE", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Run `hsm-rotator args` with exactly `env` (plus PATH), feeding `stdin`.
async fn cli(env: &[(String, String)], args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hsm-rotator"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn hsm-rotator");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.expect("write stdin");
    }
    drop(input);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        child.wait_with_output(),
    )
    .await
    .expect("the CLI finished within 120 s")
    .expect("wait for the CLI");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn kid_in(keys: &Value, state: &str) -> String {
    keys.as_array()
        .unwrap()
        .iter()
        .find(|k| k["state"] == state)
        .unwrap_or_else(|| panic!("no {state} key in {keys}"))["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Everything printed must be free of `secrets`.
fn assert_clean(runs: &[Run], secrets: &[(&str, &str)]) {
    for r in runs {
        for (what, s) in secrets {
            assert!(!r.all().contains(s), "{what} was printed: {}", r.all());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_creates_rotates_issues_verifies_and_revokes() {
    let token = TestToken::new("cli_direct");
    let db = format!("sqlite://{}/store.db?mode=rwc", token.path().display());
    let env = direct_env(&token, &db);
    let mut runs = Vec::new();

    // Not a terminal: init refuses to print the root key into a pipe, and makes nothing.
    let piped = cli(&env, &["init"], None).await;
    assert!(!piped.ok, "{}", piped.all());
    assert!(piped.stderr.contains("--root-key-file"), "{}", piped.all());
    assert!(!piped.all().contains("rk_"), "{}", piped.all());
    assert!(
        !token.path().join("store.db").exists(),
        "init made a store anyway"
    );
    let key_file = token.path().join("root-key");
    let init = cli(
        &env,
        &["init", "--root-key-file", key_file.to_str().unwrap()],
        None,
    )
    .await;
    assert!(init.ok, "{}", init.all());
    assert!(!init.all().contains("rk_"), "{}", init.all());
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "root key file mode {mode:o}");
    }
    let root = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(root.starts_with("rk_"), "the file holds the root key");

    let created = cli(
        &env,
        &[
            "app", "create", "--name", "Billing", "--alg", "ES256", "--json",
        ],
        None,
    )
    .await;
    assert!(created.ok, "{}", created.all());
    let app = created.json();
    let id = app["id"].as_str().unwrap().to_owned();
    let pk = app["access_token"].as_str().unwrap().to_owned();
    assert!(pk.starts_with("pk_") && pk.len() == 46, "{app}");
    assert_eq!(app["signing_alg"], "ES256");
    let first_next = kid_in(&app["keys"], "next");

    let list = cli(&env, &["app", "list", "--json"], None).await;
    assert!(list.ok, "{}", list.all());
    let listed = list.json();
    assert_eq!(listed["apps"].as_array().unwrap().len(), 1);
    assert_eq!(listed["apps"][0]["id"], id.as_str());
    assert!(listed["apps"][0].get("access_token").is_none());
    runs.push(list);

    let show = cli(&env, &["app", "show", &id], None).await;
    assert!(show.ok && show.stdout.contains("Billing"), "{}", show.all());
    runs.push(show);

    let rotated = cli(&env, &["keys", "rotate", &id, "--json"], None).await;
    assert!(rotated.ok, "{}", rotated.all());
    let r = rotated.json();
    assert_eq!(
        r["current"]["kid"],
        first_next.as_str(),
        "next became current"
    );
    assert_eq!(r["previous"].as_array().unwrap().len(), 1);
    runs.push(rotated);

    let keys = cli(&env, &["keys", "list", &id, "--json"], None).await;
    assert!(keys.ok, "{}", keys.all());
    assert_eq!(keys.json()["keys"].as_array().unwrap().len(), 3);
    runs.push(keys);

    let issued = cli(
        &env,
        &[
            "token",
            "issue",
            &id,
            "--sub",
            "alice",
            "--claims",
            r#"{"aud":"api"}"#,
            "--json",
        ],
        None,
    )
    .await;
    assert!(issued.ok, "{}", issued.all());
    let t = issued.json();
    assert_eq!(t["kid"], first_next.as_str(), "signed by the current key");
    let jwt = t["token"].as_str().unwrap().to_owned();
    runs.push(issued);

    let verified = cli(&env, &["token", "verify", &id, "--json"], Some(&jwt)).await;
    assert!(verified.ok, "{}", verified.all());
    let claims = verified.json();
    assert_eq!(claims["active"], true);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "api");
    runs.push(verified);

    let revoked = cli(&env, &["keys", "revoke", &id, &first_next], None).await;
    assert!(revoked.ok, "{}", revoked.all());
    assert!(
        revoked.stdout.contains("1 live token(s)"),
        "{}",
        revoked.all()
    );
    runs.push(revoked);

    let after = cli(&env, &["token", "verify", &id, "--json"], Some(&jwt)).await;
    assert!(!after.ok, "a token of a revoked key must not verify");
    assert_eq!(after.json(), serde_json::json!({"active": false}));
    assert!(after.stderr.contains("not active"), "{}", after.all());
    runs.push(after);

    let human = cli(&env, &["token", "verify", &id], Some(&jwt)).await;
    assert!(!human.ok);
    assert!(human.stderr.contains("revoked"), "{}", human.all());
    runs.push(human);

    // The revoked key's objects left the token; its row stays, marked revoked.
    let keys = cli(&env, &["keys", "list", &id, "--json"], None).await;
    let states: Vec<String> = keys.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kid"] == first_next.as_str())
        .map(|k| k["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["revoked"]);
    assert!(!token.labels().iter().any(|l| l.contains(&first_next)));
    runs.push(keys);

    let bad = cli(
        &env,
        &["keys", "revoke", &id, "01ARZ3NDEKTSV4RRFFQ69G5FAV"],
        None,
    )
    .await;
    assert!(!bad.ok);
    assert!(bad.stderr.contains("key not found"), "{}", bad.all());
    runs.push(bad);

    for args in [
        &["reconcile", "--dry-run", "--json"][..],
        &["reconcile", "--json"],
    ] {
        let rec = cli(&env, args, None).await;
        assert!(rec.ok, "{}", rec.all());
        let report = rec.json();
        assert_eq!(report["dry_run"], args.contains(&"--dry-run"));
        assert_eq!(
            report["orphans_destroyed"],
            serde_json::json!([]),
            "{report}"
        );
        assert_eq!(report["missing"], serde_json::json!([]), "{report}");
        runs.push(rec);
    }

    let audit = cli(&env, &["audit", "verify"], None).await;
    assert!(
        audit.ok && audit.stdout.contains("intact"),
        "{}",
        audit.all()
    );
    runs.push(audit);

    assert_clean(
        &runs,
        &[
            ("PIN", &token.pin),
            ("root key", &root),
            ("access token", &pk),
        ],
    );
    assert_clean(&[created], &[("PIN", &token.pin), ("root key", &root)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_apps_in_one_command() {
    let token = TestToken::new("cli_count");
    let db = format!("sqlite://{}/store.db?mode=rwc", token.path().display());
    let env = direct_env(&token, &db);
    assert!(cli(&env, &["init", "--json"], None).await.ok);
    let out = cli(
        &env,
        &[
            "app", "create", "--name", "bulk", "--alg", "EdDSA", "--count", "3", "--json",
        ],
        None,
    )
    .await;
    assert!(out.ok, "{}", out.all());
    let names: Vec<String> = out.json()["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["bulk-1", "bulk-2", "bulk-3"]);
    let list = cli(&env, &["app", "list", "--json"], None).await;
    assert_eq!(list.json()["apps"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_mode_drives_a_running_server_and_direct_writes_are_refused_meanwhile() {
    let server = TestApp::spawn("cli_url", Engine::Sqlite).await;
    let url = server.base.clone();
    let root_env = vec![("HSM_ROTATOR_ROOT_KEY".to_owned(), server.root_key.clone())];
    let mut runs = Vec::new();

    let no_cred = cli(&[], &["--url", &url, "app", "list"], None).await;
    assert!(!no_cred.ok);
    assert!(
        no_cred.stderr.contains("HSM_ROTATOR_ROOT_KEY"),
        "{}",
        no_cred.all()
    );
    runs.push(no_cred);

    let created = cli(
        &root_env,
        &[
            "--url", &url, "app", "create", "--name", "Remote", "--alg", "ES384", "--json",
        ],
        None,
    )
    .await;
    assert!(created.ok, "{}", created.all());
    let app = created.json();
    let id = app["id"].as_str().unwrap().to_owned();
    let pk = app["access_token"].as_str().unwrap().to_owned();
    let current = kid_in(&app["keys"], "current");

    let list = cli(&root_env, &["--url", &url, "app", "list", "--json"], None).await;
    assert!(list.ok, "{}", list.all());
    assert_eq!(list.json()["apps"][0]["id"], id.as_str());
    runs.push(list);

    let show = cli(
        &root_env,
        &["--url", &url, "app", "show", &id, "--json"],
        None,
    )
    .await;
    assert!(show.ok, "{}", show.all());
    assert_eq!(show.json()["key_summary"]["current"], current.as_str());
    runs.push(show);

    let app_env = vec![("HSM_ROTATOR_ACCESS_TOKEN".to_owned(), pk.clone())];
    let issued = cli(
        &app_env,
        &["--url", &url, "token", "issue", &id, "--sub", "bob"],
        None,
    )
    .await;
    assert!(issued.ok, "{}", issued.all());
    let jwt = issued.stdout.trim().to_owned();
    assert_eq!(
        jwt.split('.').count(),
        3,
        "stdout is the bare JWT: {}",
        issued.stdout
    );
    runs.push(issued);

    let verified = cli(
        &app_env,
        &["--url", &url, "token", "verify", &id],
        Some(&jwt),
    )
    .await;
    assert!(verified.ok, "{}", verified.all());
    assert!(
        verified.stdout.contains("active: sub bob"),
        "{}",
        verified.all()
    );
    runs.push(verified);

    // With SQLite the server keeps its own view of keys: a direct write would not reach
    // it, so it is refused and the operator is pointed at --url.
    let direct = direct_env(&server.token, &server.database_url);
    let refused = cli(&direct, &["keys", "revoke", &id, &current], None).await;
    assert!(
        !refused.ok,
        "a direct write next to a running SQLite server must fail"
    );
    assert!(refused.stderr.contains("--url"), "{}", refused.all());
    assert!(server.active(&id, &pk, &jwt).await, "nothing was revoked");
    runs.push(refused);
    // Reading directly is fine.
    let read = cli(&direct, &["keys", "list", &id, "--json"], None).await;
    assert!(read.ok, "{}", read.all());
    assert_eq!(read.json()["keys"].as_array().unwrap().len(), 2);
    runs.push(read);
    // Verifying directly works too, once the CLI knows the issuer the server advertises.
    let guess = cli(&direct, &["token", "verify", &id], Some(&jwt)).await;
    assert!(
        !guess.ok,
        "the default issuer is http://<listen>, not the server's"
    );
    assert!(guess.stderr.contains("public_url"), "{}", guess.all());
    runs.push(guess);
    let mut with_public = direct.clone();
    with_public.push(("HSM_ROTATOR_PUBLIC_URL".to_owned(), url.clone()));
    let direct_verify = cli(
        &with_public,
        &["token", "verify", &id, "--json"],
        Some(&jwt),
    )
    .await;
    assert!(direct_verify.ok, "{}", direct_verify.all());
    assert_eq!(direct_verify.json()["sub"], "bob");
    runs.push(direct_verify);
    // Nor may a second server start on the same SQLite file.
    let second = cli(&direct, &["serve", "--listen", "127.0.0.1:0"], None).await;
    assert!(
        !second.ok,
        "a second server on one SQLite store must refuse to start"
    );
    assert!(
        second.stderr.contains("SQLite serves one process"),
        "{}",
        second.all()
    );
    runs.push(second);

    let keys = cli(
        &app_env,
        &["--url", &url, "keys", "list", &id, "--json"],
        None,
    )
    .await;
    assert!(keys.ok, "{}", keys.all());
    assert_eq!(
        keys.json()["keys"],
        serde_json::json!(server.keys(&id).await)
    );
    assert_eq!(
        keys.json()["rotation_safe_in"],
        0,
        "the harness's max-age is 0"
    );
    runs.push(keys);

    let rotated = cli(
        &root_env,
        &["--url", &url, "keys", "rotate", &id, "--json"],
        None,
    )
    .await;
    assert!(rotated.ok, "{}", rotated.all());
    assert_eq!(rotated.json()["previous"][0]["kid"], current.as_str());
    runs.push(rotated);

    let revoked = cli(
        &root_env,
        &["--url", &url, "keys", "revoke", &id, &current, "--json"],
        None,
    )
    .await;
    assert!(revoked.ok, "{}", revoked.all());
    assert_eq!(revoked.json()["revoked"]["state"], "revoked");
    runs.push(revoked);

    let after = cli(
        &app_env,
        &["--url", &url, "token", "verify", &id, "--json"],
        Some(&jwt),
    )
    .await;
    assert!(!after.ok, "a token of a revoked key must not verify");
    assert_eq!(after.json(), serde_json::json!({"active": false}));
    assert!(!server.active(&id, &pk, &jwt).await);
    runs.push(after);

    let refused = cli(&app_env, &["--url", &url, "app", "list"], None).await;
    assert!(!refused.ok, "an access token is not the root key");
    assert!(
        refused.stderr.contains("HSM_ROTATOR_ROOT_KEY"),
        "{}",
        refused.all()
    );

    assert_clean(
        &runs,
        &[
            ("PIN", &server.token.pin),
            ("root key", &server.root_key),
            ("access token", &pk),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_reach_a_running_postgres_server() {
    let server = TestApp::spawn("cli_pg", Engine::Postgres).await;
    let (id, pk, body) = server
        .create_app(serde_json::json!({"name": "Pg", "signing_alg": "ES256"}))
        .await;
    let current = kid_in(&body["keys"], "current");
    let jwt = server
        .issue(&id, &pk, serde_json::json!({"sub": "carol"}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(server.active(&id, &pk, &jwt).await);
    // PostgreSQL publishes every change: a revocation written by the CLI reaches the
    // server's view (within a second; introspection is polled, bounded).
    let env = direct_env(&server.token, &server.database_url);
    let revoked = cli(&env, &["keys", "revoke", &id, &current], None).await;
    assert!(revoked.ok, "{}", revoked.all());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.active(&id, &pk, &jwt).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the server still accepts a token of a key revoked directly"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_passes_on_a_good_config_and_names_each_problem() {
    let token = TestToken::new("cli_check");
    let db = format!("sqlite://{}/store.db?mode=rwc", token.path().display());
    let env = direct_env(&token, &db);
    let mut runs = Vec::new();

    let fresh = cli(&env, &["config", "check"], None).await;
    assert!(!fresh.ok, "an uninitialised store is reported");
    assert!(fresh.stdout.contains("hsm-rotator init"), "{}", fresh.all());
    runs.push(fresh);

    assert!(cli(&env, &["init", "--json"], None).await.ok);
    let good = cli(&env, &["config", "check", "--json"], None).await;
    assert!(good.ok, "{}", good.all());
    let report = good.json();
    assert_eq!(report["ok"], true);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|c| assert_eq!(c["status"], "ok", "{c}"))
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "config",
            "issuer",
            "pin",
            "pkcs11 module",
            "token",
            "login",
            "mechanisms",
            "store"
        ]
    );
    runs.push(good);

    let with = |k: &str, v: &str| {
        let mut e = env.clone();
        e.retain(|(n, _)| n != k);
        e.push((k.to_owned(), v.to_owned()));
        e
    };
    let failed = |run: &Run, name: &str| -> String {
        let report = run.json();
        let check = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {report}"))
            .clone();
        assert_eq!(check["status"], "FAILED", "{report}");
        assert!(!run.ok, "a failed check exits non-zero");
        check["detail"].as_str().unwrap().to_owned()
    };

    // Listening on every address without public_url: tokens would name 0.0.0.0, which no
    // client uses. A warning, not a failure.
    let open = cli(
        &with("HSM_ROTATOR_LISTEN", "0.0.0.0:8080"),
        &["config", "check", "--json"],
        None,
    )
    .await;
    assert!(open.ok, "a warning does not fail the check: {}", open.all());
    let issuer = open.json()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "issuer")
        .cloned()
        .unwrap();
    assert_eq!(issuer["status"], "WARNING", "{issuer}");
    assert!(
        issuer["detail"].as_str().unwrap().contains("public_url"),
        "{issuer}"
    );
    runs.push(open);

    let wrong_pin = "WrongPin-5e1d7c";
    let bad_pin = cli(
        &with("HSM_ROTATOR_PIN", wrong_pin),
        &["config", "check", "--json"],
        None,
    )
    .await;
    assert!(
        failed(&bad_pin, "login").contains("refused the PIN"),
        "{}",
        bad_pin.all()
    );
    assert!(
        !bad_pin.all().contains(wrong_pin),
        "the wrong PIN was printed"
    );
    runs.push(bad_pin);

    let bad_label = cli(
        &with("HSM_ROTATOR_TOKEN_LABEL", "no-such-token"),
        &["config", "check", "--json"],
        None,
    )
    .await;
    let why = failed(&bad_label, "token");
    assert!(
        why.contains("no-such-token") && why.contains(&token.label),
        "{why}"
    );
    runs.push(bad_label);

    let bad_module = cli(
        &with("HSM_ROTATOR_PKCS11_MODULE", "/nonexistent/libpkcs11.so"),
        &["config", "check"],
        None,
    )
    .await;
    assert!(!bad_module.ok);
    assert!(
        bad_module
            .stdout
            .lines()
            .any(|l| l.starts_with("pkcs11 module")
                && l.contains("FAILED")
                && l.contains("/nonexistent/libpkcs11.so does not exist")),
        "{}",
        bad_module.all()
    );
    runs.push(bad_module);

    let file = token.path().join("bad.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:8080\"\ntoken_lable = \"typo\"\n",
    )
    .unwrap();
    let bad_file = cli(
        &env,
        &[
            "config",
            "check",
            "--json",
            "--config",
            file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(
        failed(&bad_file, "config").contains("token_lable"),
        "{}",
        bad_file.all()
    );
    runs.push(bad_file);

    assert_clean(&runs, &[("PIN", &token.pin)]);
}

/// `openssl` with `args`, which must succeed.
fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_mode_over_https_trusts_the_ca_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=cli test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&ca, d);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "key.pem", "-out", "leaf.csr"]);
    openssl(&csr, d);
    std::fs::write(
        d.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
        d,
    );
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    let server = TestApp::spawn_with(
        "cli_https",
        Engine::Sqlite,
        &[
            ("HSM_ROTATOR_TLS_CERT", cert.to_str().unwrap()),
            ("HSM_ROTATOR_TLS_KEY", key.to_str().unwrap()),
        ],
    )
    .await;
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let env = vec![("HSM_ROTATOR_ROOT_KEY".to_owned(), server.root_key.clone())];
    let ca_pem = d.join("ca.pem");
    let trusted = cli(
        &env,
        &[
            "--url",
            &server.base,
            "--ca-cert",
            ca_pem.to_str().unwrap(),
            "app",
            "list",
            "--json",
        ],
        None,
    )
    .await;
    assert!(trusted.ok, "{}", trusted.all());
    assert_eq!(trusted.json(), serde_json::json!({"apps": []}));
    // The system does not trust this CA: the server is refused, in a sentence.
    let untrusted = cli(&env, &["--url", &server.base, "app", "list"], None).await;
    assert!(!untrusted.ok);
    assert!(
        untrusted.stderr.contains("cannot reach the server"),
        "{}",
        untrusted.all()
    );
    assert_clean(&[trusted, untrusted], &[("root key", &server.root_key)]);
}

/// The audit records of `action` about app `id`, with their details parsed.
async fn audit_details(server: &TestApp, id: &str, action: &str) -> Vec<Value> {
    let (s, v) = server
        .root("GET", &format!("/audit?app={id}&action={action}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match &r["details"] {
            Value::String(d) => serde_json::from_str(d).unwrap(),
            other => other.clone(),
        })
        .collect()
}

/// The README's quick start on a fresh token and store, with the default `jwks_max_age`:
/// `app create` then `keys rotate` succeeds at once (the first pair's next key was in every
/// JWKS ever served, even though a verifier fetched it). The key published by that rotation
/// was not in the JWKS the verifier holds, so a second rotation at once is refused (409
/// with `Retry-After`, and the CLI says how long and offers `--force`); `--force` carries
/// it out, and the audit log marks it early with the promoted key's age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_rotates_at_once_and_an_early_rotation_needs_force() {
    let server = TestApp::spawn_with(
        "cli_quick",
        Engine::Sqlite,
        &[("HSM_ROTATOR_JWKS_MAX_AGE", "60")],
    )
    .await;
    let url = server.base.clone();
    let root_env = vec![("HSM_ROTATOR_ROOT_KEY".to_owned(), server.root_key.clone())];
    let created = cli(
        &root_env,
        &[
            "--url", &url, "app", "create", "--name", "Billing", "--alg", "ES256", "--json",
        ],
        None,
    )
    .await;
    assert!(created.ok, "{}", created.all());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    // A verifier fetches the JWKS (and caches it for 60 s).
    server.jwks(&id).await;

    let first = cli(&root_env, &["--url", &url, "keys", "rotate", &id], None).await;
    assert!(first.ok, "the first pair rotates at once: {}", first.all());

    let list = cli(&root_env, &["--url", &url, "keys", "list", &id], None).await;
    assert!(list.ok, "{}", list.all());
    assert!(
        list.stdout.contains("a rotation is safe from") && list.stdout.contains("--force"),
        "keys list says when a rotation is safe: {}",
        list.all()
    );

    let second = cli(&root_env, &["--url", &url, "keys", "rotate", &id], None).await;
    assert!(!second.ok, "a truly early rotation is refused");
    assert!(
        second.stderr.contains("409")
            && second.stderr.contains("may sign in")
            && second.stderr.contains("--force"),
        "{}",
        second.all()
    );
    let res = server
        .client
        .post(server.url(&format!("/apps/{id}/keys/rotate")))
        .header("Authorization", format!("Bearer {}", server.root_key))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 409);
    let retry: i64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=62).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "rotation_too_soon"
    );

    let forced = cli(
        &root_env,
        &["--url", &url, "keys", "rotate", &id, "--force"],
        None,
    )
    .await;
    assert!(forced.ok, "{}", forced.all());

    let rotations = audit_details(&server, &id, "key.rotate").await;
    assert_eq!(rotations.len(), 2, "{rotations:?}");
    let early: Vec<&Value> = rotations.iter().filter(|d| d["early"] == true).collect();
    assert_eq!(
        early.len(),
        1,
        "only the forced rotation is early: {rotations:?}"
    );
    assert_eq!(early[0]["allowed_by"], "force");
    assert!(early[0]["promoted_age"].as_i64().unwrap() >= 0, "{early:?}");
    assert!(early[0]["safe_in"].as_i64().unwrap() > 0, "{early:?}");
}

/// `keys emergency-rotate`, `app access-token` and `root-key rotate`, over `--url` against a
/// running server and then in direct mode on the same store once it has stopped. Each new
/// secret is printed once (the root key only where it cannot land in a log) and the old
/// one stops working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_rotation_access_token_and_root_key_in_both_modes() {
    let mut server = TestApp::spawn("cli_native_ops", Engine::Sqlite).await;
    let url = server.base.clone();
    let root_env = vec![("HSM_ROTATOR_ROOT_KEY".to_owned(), server.root_key.clone())];
    let (id, pk, created) = server
        .create_app(serde_json::json!({"name": "Ops", "signing_alg": "ES256"}))
        .await;
    let old_current = kid_in(&created["keys"], "current");
    let jwt = server
        .issue(&id, &pk, serde_json::json!({"sub": "x"}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // --url: the app's own token may run an emergency rotation.
    let app_env = vec![("HSM_ROTATOR_ACCESS_TOKEN".to_owned(), pk.clone())];
    let er = cli(
        &app_env,
        &["--url", &url, "keys", "emergency-rotate", &id],
        None,
    )
    .await;
    assert!(er.ok, "{}", er.all());
    assert!(
        er.stdout.contains("2 key(s) revoked")
            && er.stdout.contains(&old_current)
            && er.stdout.contains("1 live token(s) of 1 subject(s)"),
        "{}",
        er.all()
    );
    assert!(
        !server.active(&id, &pk, &jwt).await,
        "earlier tokens rejected"
    );

    let at = cli(
        &root_env,
        &["--url", &url, "app", "access-token", &id, "--json"],
        None,
    )
    .await;
    assert!(at.ok, "{}", at.all());
    let pk2 = at.json()["access_token"].as_str().unwrap().to_owned();
    assert!(pk2.starts_with("pk_") && pk2 != pk);
    let (s, _) = server
        .bearer(&pk, "GET", &format!("/apps/{id}/keys"), None)
        .await;
    assert_eq!(s, 401, "the old access token is dead");

    // The root key never goes into a pipe unasked, and nothing is rotated then.
    let piped = cli(&root_env, &["--url", &url, "root-key", "rotate"], None).await;
    assert!(
        !piped.ok && piped.stderr.contains("--json"),
        "{}",
        piped.all()
    );
    let (s, _) = server.root("GET", "/apps", None).await;
    assert_eq!(s, 200, "a refused command rotates nothing");
    let rk = cli(
        &root_env,
        &["--url", &url, "root-key", "rotate", "--json"],
        None,
    )
    .await;
    assert!(rk.ok, "{}", rk.all());
    let root2 = rk.json()["root_key"].as_str().unwrap().to_owned();
    assert!(root2.starts_with("rk_"));
    let (s, _) = server.root("GET", "/apps", None).await;
    assert_eq!(s, 401, "the old root key is dead");
    let stale = cli(&root_env, &["--url", &url, "app", "list"], None).await;
    assert!(!stale.ok && stale.stderr.contains("401"), "{}", stale.all());

    // Direct mode, once the server has stopped (SQLite has one writer).
    server.terminate().await;
    let direct = direct_env(&server.token, &server.database_url);
    let er = cli(&direct, &["keys", "emergency-rotate", &id, "--json"], None).await;
    assert!(er.ok, "{}", er.all());
    let v = er.json();
    assert_eq!(v["revoked_kids"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["current"]["state"], "current");
    let at = cli(&direct, &["app", "access-token", &id], None).await;
    assert!(at.ok, "{}", at.all());
    assert!(
        at.stdout.contains("shown once") && at.stdout.contains("pk_"),
        "{}",
        at.all()
    );
    let key_file = server.token.path().join("new-root-key");
    let rk = cli(
        &direct,
        &[
            "root-key",
            "rotate",
            "--root-key-file",
            key_file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(rk.ok, "{}", rk.all());
    assert!(!rk.all().contains("rk_"), "{}", rk.all());
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "root key file mode {mode:o}");
    }
    let root3 = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(root3.starts_with("rk_") && root3 != root2);
    // An existing file is refused before anything is rotated.
    let again = cli(
        &direct,
        &[
            "root-key",
            "rotate",
            "--root-key-file",
            key_file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(
        !again.ok && again.stderr.contains("exists"),
        "{}",
        again.all()
    );

    let restarted = TestApp::start(server.token.clone(), server.database_url.clone(), &[])
        .await
        .with_root(&root3);
    let (s, _) = restarted.root("GET", "/apps", None).await;
    assert_eq!(s, 200, "the key from the file is the root key");
    let (s, _) = restarted
        .call("GET", "/apps", Some(&format!("Bearer {root2}")), None)
        .await;
    assert_eq!(s, 401, "the one before it is dead");
}
