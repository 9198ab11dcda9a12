//! Secrets never appear in what the service prints.

use serde_json::json;

use crate::common::app::{Engine, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_at_trace_level() {
    // SAFETY-free: TEST_RUST_LOG is read by the fixture for this child only.
    let app = TestApp::spawn_with("log_hygiene", Engine::Sqlite, &[("RUST_LOG", "trace")]).await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Hyg", "signing_alg": "ES256", "refresh_ttl": 60}))
        .await;
    let t = app
        .issue(&id, &pk, json!({"sub": "secret-subject-7f3a"}))
        .await;
    let token = t["token"].as_str().unwrap().to_owned();
    let rt = t["refresh_token"].as_str().unwrap().to_owned();
    assert!(app.active(&id, &pk, &token).await);
    let _ = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/refresh"),
            Some(json!({"refresh_token": rt})),
        )
        .await;
    let _ = app
        .root("POST", &format!("/apps/{id}/keys/rotate"), None)
        .await;
    let _ = app
        .call(
            "GET",
            "/apps",
            Some("rk_wrongwrongwrongwrongwrongwrongwrongwrongwro"),
            None,
        )
        .await;
    let logs = app.stderr();
    assert!(logs.len() > 1000, "trace logging produced output");
    for (what, secret) in [
        ("PIN", app.token.pin.as_str()),
        ("root key", app.root_key.as_str()),
        ("access token", pk.as_str()),
        ("refresh token", rt.as_str()),
        ("JWT", token.as_str()),
    ] {
        assert!(!logs.contains(secret), "{what} found in the logs");
    }
}

#[tokio::test]
async fn a_wrong_pin_fails_clearly_without_printing_it() {
    let token = crate::common::token::TestToken::new("wrong_pin");
    let wrong = "WrongPin-93af1c";
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hsm-rotator"))
        .args(["check-hsm"])
        .envs(token.env())
        .env("HSM_ROTATOR_PKCS11_MODULE", token.module.path())
        .env("HSM_ROTATOR_PIN", wrong)
        .env("HSM_ROTATOR_TOKEN_LABEL", &token.label)
        .env("RUST_LOG", "trace")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("login failed") || all.contains("PinIncorrect"),
        "{all}"
    );
    assert!(!all.contains(wrong), "the PIN was printed");
    assert!(!all.contains(&token.pin));
}
