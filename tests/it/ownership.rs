//! Which HSM objects an instance may touch (issue 25): every object carries its store's id,
//! `serve` never makes a store, and the reconciler destroys only orphans of its own store,
//! slowly and audited, never another deployment's keys.

use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::app::{Engine, TestApp, command, fresh_postgres_db, init_store};
use crate::common::token::TestToken;

/// Run the binary with `args` against `token` and `db` (plus `env`), bounded in time.
async fn run(token: &TestToken, db: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = command(token, db, env);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the command finished within 60 s")
        .expect("run hsm-rotator")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `reconcile --json` with `extra` flags: its report.
async fn reconcile(token: &TestToken, db: &str, env: &[(&str, &str)], extra: &[&str]) -> Value {
    let mut args = vec!["reconcile", "--json"];
    args.extend_from_slice(extra);
    let out = run(token, db, env, &args).await;
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("reconcile --json")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cka_id(kid: &str) -> String {
    hex(&ulid::Ulid::from_string(kid).unwrap().to_bytes())
}

/// Store `spki` (and its fingerprint) as `kid`'s public key.
async fn set_public_key(db: &str, kid: &str, spki: &[u8]) {
    use sha2::Digest as _;
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(db).await.unwrap();
    let done = sqlx::query("UPDATE keys SET spki = $1, fingerprint = $2 WHERE kid = $3")
        .bind(spki.to_vec())
        .bind(hex(&sha2::Sha256::digest(spki)))
        .bind(kid)
        .execute(&mut c)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

/// A P-256 pair on the token under `kid` with `label`, made by another program.
fn make_pair(token: &TestToken, kid: &str, label: &str) {
    let out = token.pkcs11_tool_login(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        &cka_id(kid),
        "--label",
        label,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The store id in the labels of this store's objects (all the same).
fn store_id_of(labels: &[String]) -> String {
    let ids: std::collections::BTreeSet<&str> = labels
        .iter()
        .filter_map(|l| l.strip_prefix("hsm-rotator/")?.split_once('/'))
        .map(|(s, _)| s)
        .collect();
    assert_eq!(ids.len(), 1, "one store on the token: {labels:?}");
    ids.into_iter().next().unwrap().to_owned()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_deployment_on_the_same_token_never_touches_the_first_ones_keys() {
    let a = TestApp::spawn("owner_two_stores", Engine::Sqlite).await;
    let (id, pk, _) = a
        .create_app(json!({"name": "Prod", "signing_alg": "ES256"}))
        .await;
    let before = a.token.labels();
    assert!(before.len() >= 4, "{before:?}");
    let token = a.token.clone();

    // A start from another directory, or a mistyped database_url: no store there, and
    // `serve` refuses instead of making an empty one (and reconciling against it).
    let elsewhere = token.path().join("elsewhere");
    let stray = format!("sqlite://{}/hsm-rotator.db", elsewhere.display());
    let out = run(&token, &stray, &[], &["serve", "--listen", "127.0.0.1:0"]).await;
    assert!(!out.status.success(), "serve started on no store");
    let said = text(&out);
    assert!(
        said.contains("no hsm-rotator store at") && said.contains("elsewhere"),
        "the error names where it looked: {said}"
    );
    assert!(said.contains("hsm-rotator init"), "{said}");
    assert!(!elsewhere.exists(), "serve created {}", elsewhere.display());

    // A second deployment made properly (staging on the production token): its own store
    // id; its start-up pass and a forced reconcile leave the first store's objects alone.
    let staging = format!("sqlite://{}/staging.db", token.path().display());
    let staging_root = init_store(&token, &staging, &[]).await;
    let b = TestApp::start(
        token.clone(),
        staging.clone(),
        &[("HSM_ROTATOR_ORPHAN_GRACE", "0")],
    )
    .await
    .with_root(&staging_root);
    let (_, _, staged) = b
        .create_app(json!({"name": "Staging", "signing_alg": "ES256"}))
        .await;
    let staged_kid = staged["keys"][0]["kid"].as_str().unwrap().to_owned();
    drop(b.kill().await);
    for _ in 0..3 {
        let report = reconcile(
            &token,
            &staging,
            &[("HSM_ROTATOR_ORPHAN_GRACE", "0")],
            &["--force"],
        )
        .await;
        assert_eq!(report["orphans_destroyed"], json!([]), "{report}");
        assert!(
            report["foreign_objects"].as_u64().unwrap() >= 4,
            "the first store's objects are counted as another store's: {report}"
        );
    }
    let after = token.labels();
    for l in &before {
        assert!(after.contains(l), "{l} was destroyed: {after:?}");
    }
    let staging_labels: Vec<String> = after
        .iter()
        .filter(|l| l.ends_with(&staged_kid))
        .cloned()
        .collect();
    assert_ne!(store_id_of(&before), store_id_of(&staging_labels));
    let t = a.issue(&id, &pk, json!({"sub": "alice"})).await;
    assert!(
        t["token"].is_string(),
        "the first instance still signs: {t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_an_empty_postgres_database_and_leaves_it_empty() {
    let token = TestToken::new("owner_empty_pg");
    let db = fresh_postgres_db().await;
    for _ in 0..2 {
        let out = run(&token, &db, &[], &["serve", "--listen", "127.0.0.1:0"]).await;
        assert!(!out.status.success(), "serve started on an empty database");
        let said = text(&out);
        assert!(
            said.contains("holds no initialised hsm-rotator store") && said.contains("init"),
            "{said}"
        );
    }
    // Nothing was made: `init` still creates it from scratch.
    let root = init_store(&token, &db, &[]).await;
    assert!(root.starts_with("rk_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_wait_out_passes_and_grace_and_legacy_objects_are_adopted_or_kept() {
    let app = TestApp::spawn("owner_orphans", Engine::Sqlite).await;
    let root = app.root_key.clone();
    let db = app.database_url.clone();
    let (id, pk, created) = app
        .create_app(json!({"name": "Orphans", "signing_alg": "ES256"}))
        .await;
    let current = created["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["state"] == "current")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let store = store_id_of(&app.token.labels());
    let token = app.kill().await;

    // Four objects of this store that no row knows, one legacy object no row knows, one of
    // another store, and the current key's pair replaced by one with the legacy label (as
    // a key made before store ids existed).
    let mut orphans: Vec<String> = (0..4).map(|_| ulid::Ulid::new().to_string()).collect();
    orphans.sort();
    for o in &orphans {
        make_pair(&token, o, &format!("hsm-rotator/{store}/{o}"));
    }
    let legacy = ulid::Ulid::new().to_string();
    make_pair(&token, &legacy, &format!("hsm-rotator/{legacy}"));
    let foreign = ulid::Ulid::new().to_string();
    make_pair(
        &token,
        &foreign,
        &format!("hsm-rotator/01OTHERSTORE/{foreign}"),
    );
    for class in ["privkey", "pubkey"] {
        let out = token.pkcs11_tool_login(&[
            "--delete-object",
            "--type",
            class,
            "--id",
            &cka_id(&current),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    make_pair(&token, &current, &format!("hsm-rotator/{current}"));
    // A key made before store ids has a row that holds its public key: the store keeps the
    // new pair's, so the key registry confirms it against the token (issue 26).
    let pubkey = token.path().join("current.pub.der");
    let out = token.pkcs11_tool_login(&[
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        &cka_id(&current),
        "--output-file",
        pubkey.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    set_public_key(&db, &current, &std::fs::read(&pubkey).unwrap()).await;

    // Default grace (a day): three passes see the orphans and destroy none.
    for pass in 1..=3 {
        let r = reconcile(&token, &db, &[], &[]).await;
        assert_eq!(r["orphans_destroyed"], json!([]), "pass {pass}: {r}");
        let waiting: Vec<&str> = r["orphans_waiting"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w[0].as_str().unwrap())
            .collect();
        assert_eq!(
            waiting,
            orphans.iter().map(String::as_str).collect::<Vec<_>>(),
            "{r}"
        );
        assert_eq!(strings(&r["legacy_unknown"]), [legacy.as_str()], "{r}");
        assert_eq!(r["foreign_objects"], 2, "{r}");
        let adopted = if pass == 1 {
            vec![current.clone()]
        } else {
            vec![]
        };
        assert_eq!(strings(&r["adopted"]), adopted, "pass {pass}: {r}");
    }
    let labels = token.labels();
    assert!(
        labels.contains(&format!("hsm-rotator/{store}/{current}")),
        "adopted: {labels:?}"
    );
    assert!(
        !labels.contains(&format!("hsm-rotator/{current}")),
        "{labels:?}"
    );

    // Grace over (0 here): at most three a pass, each audited.
    let no_grace = [("HSM_ROTATOR_ORPHAN_GRACE", "0")];
    let r = reconcile(&token, &db, &no_grace, &[]).await;
    assert_eq!(strings(&r["orphans_destroyed"]), orphans[..3], "{r}");
    let r = reconcile(&token, &db, &no_grace, &[]).await;
    assert_eq!(strings(&r["orphans_destroyed"]), orphans[3..], "{r}");
    // The legacy object stays until the operator says so; the other store's always.
    let r = reconcile(&token, &db, &no_grace, &["--destroy-legacy"]).await;
    assert_eq!(strings(&r["orphans_destroyed"]), [legacy.as_str()], "{r}");
    let labels = token.labels();
    assert!(
        labels.contains(&format!("hsm-rotator/01OTHERSTORE/{foreign}")),
        "{labels:?}"
    );
    for o in orphans.iter().chain([&legacy]) {
        assert!(
            !labels.iter().any(|l| l.ends_with(o.as_str())),
            "{o} left: {labels:?}"
        );
    }

    // Every destruction is in the audit log with its reason; the app still signs with the
    // adopted key.
    let app = TestApp::start(token, db, &[]).await.with_root(&root);
    let (s, audit) = app
        .root("GET", "/audit?limit=1000&action=hsm.orphan_destroyed", None)
        .await;
    assert_eq!(s, 200, "{audit}");
    let destroyed: Vec<&Value> = audit["records"]
        .as_array()
        .unwrap_or_else(|| panic!("{audit}"))
        .iter()
        .collect();
    assert_eq!(destroyed.len(), 5, "{audit}");
    for r in destroyed {
        let details: Value = serde_json::from_str(r["details"].as_str().unwrap()).unwrap();
        assert!(
            details["reason"].as_str().is_some_and(|s| !s.is_empty()),
            "{r}"
        );
    }
    let t = app.issue(&id, &pk, json!({"sub": "bob"})).await;
    assert_eq!(t["kid"], current.as_str(), "{t}");
}
