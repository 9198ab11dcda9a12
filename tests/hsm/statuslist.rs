//! The status list publisher, in process on a test clock: a revocation rebuilds the lists
//! of the app it touched, not every app's.

use std::sync::Arc;

use hsm_rotator::app::AppState;
use hsm_rotator::clock::{Clock, FixedClock};
use hsm_rotator::config::Config;
use hsm_rotator::jwt::service::{IssueOptions, RefreshFormat};
use serde_json::Map;

use super::point_module_at;
use super::token::TestToken;

#[test]
fn a_revocation_rebuilds_only_the_lists_of_the_app_it_touched() {
    let token = TestToken::new("sl_dirty_apps");
    point_module_at(&token);
    let module = token.module.path().display().to_string();
    let db = format!("sqlite://{}/s.db?mode=rwc", token.path().display());
    let cfg = Config::load_with(None, |k| match k {
        "HSM_ROTATOR_PIN" => Some(token.pin.clone()),
        "HSM_ROTATOR_PKCS11_MODULE" => Some(module.clone()),
        "HSM_ROTATOR_TOKEN_LABEL" => Some(token.label.clone()),
        "HSM_ROTATOR_DATABASE_URL" => Some(db.clone()),
        _ => None,
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let clock = FixedClock::at(1_900_000_000);
        hsm_rotator::app::init_store(&db).await.unwrap();
        let state = AppState::connect(&cfg, clock.clone() as Arc<dyn Clock>)
            .await
            .unwrap();
        let issuers = state.issuers().clone();
        let mut apps = Vec::new();
        for name in ["Touched", "Spared"] {
            let mut row = super::scheduler::app_row(name);
            row.status_list = true;
            let id = state.keys.create_app(row).await.unwrap().app.id;
            let app = state.registry.app(&id).unwrap();
            let opts = IssueOptions {
                issuer: issuers.issuer(&id),
                ttl: None,
                with_jid: false,
                refresh: RefreshFormat::Opaque,
                meta: None,
            };
            let issued = state.tokens.issue(&app, Map::new(), &opts).await.unwrap();
            apps.push((app, issued.token));
        }
        // First pass: both lists are new and signed; then nothing to do.
        assert_eq!(state.statuslists.tick(&issuers).await, 2);
        clock.advance(1);
        assert_eq!(state.statuslists.tick(&issuers).await, 0);

        // Revoke the token of the first app (the deny-list notice names only the jti).
        let (touched, t) = &apps[0];
        state.tokens.revoke(touched, &issuers, t).await.unwrap();
        clock.advance(1);
        assert_eq!(
            state.statuslists.tick(&issuers).await,
            1,
            "only the touched app's list is rebuilt"
        );
        let signed = state
            .statuslists
            .get(&issuers, &touched.id, 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            signed.signed_at,
            clock.now(),
            "the touched list was re-signed with the revocation"
        );

        // A full reload (after a lost change notification) rebuilds every app's.
        state.registry.reload_all(clock.now()).await.unwrap();
        clock.advance(1);
        assert_eq!(state.statuslists.tick(&issuers).await, 2);
        state.hsm.close().await;
    });
}
