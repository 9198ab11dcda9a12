//! An import interrupted after its HSM objects exist (the process died before the store
//! transaction) is undone by the reconciler, never made a spare key (issue 23).

use std::sync::Arc;

use hsm_rotator::alg::{Algorithm, KeySpec};
use hsm_rotator::keys::reconcile::{Options, reconcile};
use hsm_rotator::keys::{KeyService, Kid, Registry};
use hsm_rotator::store::Store;

use crate::{STORE_ID, fixture};

#[test]
fn an_interrupted_import_is_undone_by_the_reconciler_not_made_a_spare() {
    let f = fixture("import_interrupted", 2);
    f.rt.block_on(async {
        let db = format!("sqlite://{}/store.db?mode=rwc", f.token.path().display());
        let store = Store::connect(&db).await.unwrap();
        // The fixture's HSM handle labels objects with STORE_ID: give the store that id.
        let id = store.store_id().await.unwrap();
        assert!(store.swap_setting("store_id", &id, STORE_ID).await.unwrap());
        let clock: Arc<dyn hsm_rotator::clock::Clock> = Arc::new(hsm_rotator::clock::SystemClock);
        let now = clock.now();
        let audit = hsm_rotator::audit::Audit::new(store.clone(), clock.clone());
        let registry = Arc::new(
            Registry::load(store.clone(), f.hsm.clone(), audit, now)
                .await
                .unwrap(),
        );
        let keys = KeyService::new(store.clone(), f.hsm.clone(), registry, clock, 0, 0, 3600);

        // A generated key whose generation was interrupted the same way, for contrast.
        let spec = KeySpec::new(Algorithm::ES256, 0);
        let generated = Kid::generate();
        store
            .insert_pending_key(generated, spec, now - 600)
            .await
            .unwrap();
        f.hsm.generate(generated, spec).await.unwrap();

        // The import's pending row and both objects, and then nothing (a crash).
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        let pem = String::from_utf8(out.stdout).unwrap();
        let material = hsm_rotator::keys::import::parse_pem(&pem).unwrap();
        let imported = Kid::generate();
        store
            .insert_pending_import(imported, spec, now - 600)
            .await
            .unwrap();
        f.hsm.import(imported, material).await.unwrap();
        assert_eq!(f.hsm.halves(imported).await.unwrap(), (true, true));

        let report = reconcile(&keys, &f.hsm, Options::new(false, 60))
            .await
            .unwrap();
        assert_eq!(report.pending_undone, [imported.to_string()], "{report:?}");
        assert_eq!(
            report.pending_finished,
            [generated.to_string()],
            "{report:?}"
        );
        assert_eq!(f.hsm.halves(imported).await.unwrap(), (false, false));
        assert!(store.key(imported).await.unwrap().is_none());
        let spare = store.key(generated).await.unwrap().unwrap();
        assert_eq!(spare.state.as_str(), "spare");
    });
}
