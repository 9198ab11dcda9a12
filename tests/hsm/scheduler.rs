//! The scheduler, driven by a test clock: rotation at the right instants, retirement after
//! `verification_ttl` with objects destroyed, and the next-key age guardrail.

use std::sync::Arc;

use hsm_rotator::alg::Algorithm;
use hsm_rotator::app::AppState;
use hsm_rotator::clock::{Clock, FixedClock};
use hsm_rotator::config::Config;
use hsm_rotator::keys::scheduler::Scheduler;
use hsm_rotator::keys::{KeyError, KeyState, RotationKind};
use hsm_rotator::store::AppRow;

use super::point_module_at;
use super::token::TestToken;

pub(crate) fn app_row(name: &str) -> AppRow {
    AppRow {
        id: ulid::Ulid::new().to_string(),
        name: name.into(),
        description: String::new(),
        signing_alg: Algorithm::ES256,
        rsa_bits: 0,
        rotation_period: 3_600,
        verification_ttl: 900,
        token_ttl: 600,
        token_nbf: 0,
        refresh_ttl: 0,
        refresh_nbf: 0,
        subject_dn: format!("CN={name}"),
        created_at: 0,
        updated_at: 0,
        cutoff: None,
        last_rotated_at: None,
        access_token_sha256: String::new(),
        status_list: false,
        legacy_issuer: None,
    }
}

#[test]
fn scheduled_rotation_and_retirement_follow_the_clock() {
    let token = TestToken::new("scheduler_clock");
    point_module_at(&token);
    let module = token.module.path().display().to_string();
    let db = format!("sqlite://{}/s.db?mode=rwc", token.path().display());
    let cfg = Config::load_with(None, |k| match k {
        "HSM_ROTATOR_PIN" => Some(token.pin.clone()),
        "HSM_ROTATOR_PKCS11_MODULE" => Some(module.clone()),
        "HSM_ROTATOR_TOKEN_LABEL" => Some(token.label.clone()),
        "HSM_ROTATOR_DATABASE_URL" => Some(db.clone()),
        "HSM_ROTATOR_JWKS_MAX_AGE" => Some("60".into()),
        _ => None,
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t0 = 1_900_000_000;
        let clock = FixedClock::at(t0);
        hsm_rotator::app::init_store(&db).await.unwrap();
        let state = AppState::connect(&cfg, clock.clone() as Arc<dyn Clock>)
            .await
            .unwrap();
        let created = state.keys.create_app(app_row("Sched")).await.unwrap();
        let id = created.app.id.clone();
        let first = created
            .keys
            .iter()
            .find(|k| k.state == KeyState::Current)
            .unwrap()
            .kid;
        let sched = Scheduler::new(state.keys.clone(), 1, 0).with_status(state.scheduler.clone());
        assert!(!state.scheduler.leader() && state.scheduler.last_tick_at().is_none());

        // Not due yet.
        clock.advance(3_599);
        let r = sched.tick(1).await.unwrap();
        assert!(r.leader && r.rotated.is_empty(), "{r:?}");
        // The status the console's health strip reads (GET /status) follows the tick.
        assert!(state.scheduler.leader());
        assert_eq!(state.scheduler.last_tick_at(), Some(t0 + 3_599));

        // A verifier fetches the JWKS: from now on a newly published key must wait for
        // that fetch's cache to expire before it signs.
        state.keys.jwks_served(&id).await;

        // Due: rotated at the period, exactly.
        clock.advance(1);
        let r = sched.tick(2).await.unwrap();
        assert_eq!(r.rotated, vec![id.clone()]);
        let keys = state.store.app_keys(&id).await.unwrap();
        let prev = keys.iter().find(|k| k.kid == first).unwrap();
        assert_eq!(prev.state, KeyState::Previous);
        assert_eq!(prev.deactivated_at, Some(t0 + 3_600));

        // A manual rotation right after is refused: the JWKS served a second before the
        // new next key was published may be cached for 60 s more.
        let err = state
            .keys
            .rotate(&id, RotationKind::Manual)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::TooSoon {
                    retry_after: 60,
                    ..
                }
            ),
            "{err:?}"
        );
        clock.advance(60);
        state.keys.rotate(&id, RotationKind::Manual).await.unwrap();

        // The first key verifies until verification_ttl after it stopped signing, then retires.
        clock.set(t0 + 3_600 + 899);
        let r = sched.tick(3).await.unwrap();
        assert!(!r.retired.contains(&first.to_string()), "{r:?}");
        assert!(
            state
                .hsm
                .list()
                .await
                .unwrap()
                .iter()
                .any(|o| o.kid == Some(first))
        );
        clock.set(t0 + 3_600 + 900);
        let r = sched.tick(4).await.unwrap();
        assert!(r.retired.contains(&first.to_string()), "{r:?}");
        let row = state.store.key(first).await.unwrap().unwrap();
        assert_eq!(row.state, KeyState::Retired);
        assert_eq!(row.retired_at, Some(t0 + 4_500));
        assert!(row.destroyed_at.is_some());
        assert!(
            state
                .hsm
                .list()
                .await
                .unwrap()
                .iter()
                .all(|o| o.kid != Some(first)),
            "object destroyed"
        );
        assert!(
            state
                .registry
                .published(&id)
                .iter()
                .all(|k| k.row.kid != first),
            "gone from the JWKS"
        );
        // Invariant after all of it: one current, one next.
        let keys = state.store.app_keys(&id).await.unwrap();
        assert_eq!(
            keys.iter().filter(|k| k.state == KeyState::Current).count(),
            1
        );
        assert_eq!(keys.iter().filter(|k| k.state == KeyState::Next).count(), 1);
        // The reconciler ran on every tick (cadence 1) and found nothing to fix.
        let r = sched.tick(5).await.unwrap();
        assert_eq!(r.reconcile.map(|r| r.actions()), Some(0));
    });
}
