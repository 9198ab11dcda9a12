//! Recovery from changes made behind the service's back.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::UserType;
use hsm_rotator::alg::{Algorithm, KeySpec};
use hsm_rotator::hsm::HsmError;
use hsm_rotator::keys::Kid;

use super::{fixture, verify_independently};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const MSG: &[u8] = b"header.payload";

#[test]
fn key_destroyed_by_another_process_is_reported_not_found() {
    let f = fixture("destroyed_elsewhere", 2);
    f.rt.block_on(async {
        let kid = Kid::generate();
        f.hsm
            .generate(kid, KeySpec::new(Algorithm::ES256, 0))
            .await
            .unwrap();
        f.hsm
            .sign(kid, Algorithm::ES256, MSG.to_vec())
            .await
            .unwrap();
        let id = hex(&kid.cka_id());
        for ty in ["privkey", "pubkey"] {
            let out = f
                .token
                .pkcs11_tool_login(&["--delete-object", "--type", ty, "--id", &id]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            f.hsm.sign(kid, Algorithm::ES256, MSG.to_vec()),
        )
        .await
        .expect("no hang")
        .unwrap_err();
        assert!(
            matches!(err, HsmError::KeyNotFound(k) if k == kid),
            "{err:?}"
        );
        // The pool still works for other keys.
        let other = Kid::generate();
        f.hsm
            .generate(other, KeySpec::new(Algorithm::ES256, 0))
            .await
            .unwrap();
        f.hsm
            .sign(other, Algorithm::ES256, MSG.to_vec())
            .await
            .unwrap();
    });
}

#[test]
fn key_created_by_another_process_is_found_on_cache_miss() {
    let f = fixture("created_elsewhere", 2);
    f.rt.block_on(async {
        let kid = Kid::generate();
        let out = f.token.pkcs11_tool_login(&[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            &hex(&kid.cka_id()),
            "--label",
            &kid.label(crate::STORE_ID),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sig = f
            .hsm
            .sign(kid, Algorithm::ES256, MSG.to_vec())
            .await
            .unwrap();
        let pk = f.hsm.public_key(kid, Algorithm::ES256).await.unwrap();
        assert!(verify_independently(&pk, Algorithm::ES256, MSG, &sig));
    });
}

fn second_context(module: &std::path::Path) -> Pkcs11 {
    let p = Pkcs11::new(module).unwrap();
    match p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => panic!("{e}"),
    }
    p
}

#[test]
fn sessions_logged_out_underneath_the_pool_are_recovered() {
    let f = fixture("logged_out_underneath", 2);
    f.rt.block_on(async {
        let (kid, pk) = f.key(KeySpec::new(Algorithm::RS256, 2048)).await;
        f.hsm
            .sign(kid, Algorithm::RS256, MSG.to_vec())
            .await
            .unwrap();
        // C_Logout on any session logs the whole application out: every pooled session
        // and the anchor lose their login, and SoftHSM's private handles die with it.
        let other = second_context(&f.token.module.path());
        let slot = other.get_slots_with_token().unwrap()[0];
        let s = other.open_rw_session(slot).unwrap();
        s.logout().unwrap();
        drop(s);
        assert!(f.hsm.ready().await.is_ok() || f.hsm.ready().await.is_ok());
        let sig = f
            .hsm
            .sign(kid, Algorithm::RS256, MSG.to_vec())
            .await
            .unwrap();
        assert!(verify_independently(&pk, Algorithm::RS256, MSG, &sig));
        let _ = UserType::User;
    });
}

#[test]
fn module_finalised_underneath_is_initialised_again() {
    let f = fixture("finalised_underneath", 2);
    let algs = f.token.supported(
        "finalised_underneath",
        &[Algorithm::ES256, Algorithm::EdDSA],
    );
    f.rt.block_on(async {
        let mut keys = Vec::new();
        for &alg in &algs {
            let kid = Kid::generate();
            let pk = f.hsm.generate(kid, KeySpec::new(alg, 0)).await.unwrap();
            f.hsm.sign(kid, alg, MSG.to_vec()).await.unwrap();
            keys.push((kid, alg, pk));
        }
        // C_Finalize kills every session of the process at once.
        second_context(&f.token.module.path()).finalize().unwrap();
        for (kid, alg, pk) in keys {
            let sig = f.hsm.sign(kid, alg, MSG.to_vec()).await.unwrap();
            assert!(verify_independently(&pk, alg, MSG, &sig), "{alg}");
        }
        f.hsm.ready().await.unwrap();
    });
}

#[test]
fn signatures_in_flight_survive_re_initialisations() {
    // A re-initialisation (C_Finalize, C_Initialize) while other threads are inside the
    // module is undefined by PKCS#11; on SoftHSM2 it freed sessions under a signature and
    // killed the process. Signers run flat out over the pool while the module is torn
    // down and brought back three times; every signature must come back and verify, and
    // the new generation's sessions must not be closed by stale handles of the old one.
    let f = fixture("reinit_while_signing", 4);
    f.rt.block_on(async {
        let (kid, pk) = f.key(KeySpec::new(Algorithm::ES256, 0)).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut signers = Vec::new();
        for t in 0..8 {
            let (hsm, pk, stop) = (f.hsm.clone(), pk.clone(), stop.clone());
            signers.push(tokio::spawn(async move {
                let mut n = 0_u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let msg = format!("signer{t}.{n}").into_bytes();
                    let sig = hsm.sign(kid, Algorithm::ES256, msg.clone()).await;
                    let sig = sig.unwrap_or_else(|e| panic!("signature {n} of signer {t}: {e}"));
                    assert!(verify_independently(&pk, Algorithm::ES256, &msg, &sig));
                    n += 1;
                }
                n
            }));
        }
        let mut ran = 0;
        for _ in 0..3 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            // Forced re-initialisations are at least 2 s apart.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !f.hsm.recover(kid).await.unwrap() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no re-initialisation ran"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            ran += 1;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut signed = 0;
        for s in signers {
            signed += s.await.expect("a signer failed");
        }
        assert_eq!(ran, 3);
        assert!(signed > 0, "nothing was signed");
        f.hsm.ready().await.unwrap();
        let sig = f
            .hsm
            .sign(kid, Algorithm::ES256, MSG.to_vec())
            .await
            .unwrap();
        assert!(verify_independently(&pk, Algorithm::ES256, MSG, &sig));
    });
}

#[test]
fn a_cache_listed_before_a_re_initialisation_never_replaces_the_new_one() {
    // Handles die with the module generation (SoftHSM2 numbers its objects afresh at every
    // C_Initialize). A listing taken in one generation and stored after a re-initialisation
    // would point kids at other keys' objects: signatures by the wrong key, and a destroy
    // that removes another key's half. Reloads race re-initialisations here; after every
    // round (keys made and destroyed in between) each key must still sign as itself.
    let f = fixture("stale_cache_listing", 2);
    f.rt.block_on(async {
        let mut keys = Vec::new();
        for _ in 0..24 {
            keys.push(f.key(KeySpec::new(Algorithm::ES256, 0)).await);
        }
        let mut reinits = 0;
        let mut round = 0_u64;
        while reinits < 5 {
            round += 1;
            // Churn, so that this generation's numbering differs from the next one's.
            let gone = keys.remove(usize::try_from(round).unwrap() % keys.len());
            assert!(f.hsm.destroy(gone.0).await.unwrap());
            for _ in 0..2 {
                keys.push(f.key(KeySpec::new(Algorithm::ES256, 0)).await);
            }
            let reloads: Vec<_> = (0..3)
                .map(|_| {
                    let hsm = f.hsm.clone();
                    tokio::spawn(async move { hsm.reload_cache().await })
                })
                .collect();
            tokio::time::sleep(std::time::Duration::from_micros(round % 4 * 300)).await;
            // Forced re-initialisations are at least 2 s apart; the reloads run between.
            if f.hsm.recover(keys[0].0).await.unwrap() {
                reinits += 1;
            }
            for r in reloads {
                r.await.unwrap().unwrap();
            }
            for (kid, pk) in &keys {
                let sig = f
                    .hsm
                    .sign(*kid, Algorithm::ES256, MSG.to_vec())
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: {kid} does not sign: {e}"));
                assert!(
                    verify_independently(pk, Algorithm::ES256, MSG, &sig),
                    "round {round}: {kid} signed with another key's object"
                );
            }
        }
    });
}
