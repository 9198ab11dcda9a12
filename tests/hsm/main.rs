//! In-process tests of the HSM core against a real token: SoftHSM2, or the module
//! `HSM_ROTATOR_TEST_MODULE` names (see `tests/common/token.rs`).
//!
//! Each test points the module's configuration variable at its own token before the module
//! is initialised, which is sound only with one test per process: run them with
//! `cargo nextest`.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../common/token.rs"]
mod token;

mod import;
mod recovery;
mod scheduler;
mod signing;
mod statuslist;

use std::sync::Arc;

use hsm_rotator::hsm::{Hsm, HsmConfig};
use token::TestToken;

/// A token, a runtime and a connected [`Hsm`] for one test.
pub struct Fixture {
    pub token: TestToken,
    pub rt: tokio::runtime::Runtime,
    pub hsm: Hsm,
}

impl Fixture {
    /// A new key pair of `spec` on the token: its kid and public half.
    pub async fn key(
        &self,
        spec: hsm_rotator::alg::KeySpec,
    ) -> (hsm_rotator::keys::Kid, hsm_rotator::pubkey::PublicKey) {
        let kid = hsm_rotator::keys::Kid::generate();
        let pk = self.hsm.generate(kid, spec).await.unwrap();
        (kid, pk)
    }
}

/// The store id the fixture's objects carry.
pub const STORE_ID: &str = "01HSMTESTSTORE";

/// Set up the test's own token and connect to it with a pool of `sessions`.
pub fn fixture(test_name: &str, sessions: usize) -> Fixture {
    let token = TestToken::new(test_name);
    point_module_at(&token);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cfg = HsmConfig {
        module: token.module.path(),
        token_label: token.label.clone(),
        pin: token.pin.clone().into(),
        sessions,
        store_id: Some(STORE_ID.into()),
    };
    let hsm = rt.block_on(Hsm::connect(cfg)).unwrap();
    Fixture { token, rt, hsm }
}

/// Make `token` the one the module finds when it is initialised in this process.
pub fn point_module_at(token: &TestToken) {
    for (var, value) in token.env() {
        // SAFETY: called before the runtime (and so any other thread) exists; nextest runs
        // one test per process, so nothing else reads the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(var, value);
        }
    }
}

/// Verify a JWS-encoded signature with software nobody here wrote: jsonwebtoken
/// (aws-lc-rs) for everything it supports, the `p521` crate for ES512.
pub fn verify_independently(
    pk: &hsm_rotator::pubkey::PublicKey,
    alg: hsm_rotator::alg::Algorithm,
    message: &[u8],
    sig: &[u8],
) -> bool {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use hsm_rotator::alg::Algorithm as A;
    use hsm_rotator::pubkey::PublicKey as P;
    if alg == A::ES512 {
        use p521::ecdsa::signature::Verifier as _;
        let P::Ec { point, .. } = pk else {
            return false;
        };
        let vk = p521::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
        let Ok(s) = p521::ecdsa::Signature::from_slice(sig) else {
            return false;
        };
        return vk.verify(message, &s).is_ok();
    }
    let key = match pk {
        P::Rsa { n, e } => jsonwebtoken::DecodingKey::from_rsa_raw_components(n, e),
        P::Ec { point, curve } => {
            let l = curve.field_len();
            jsonwebtoken::DecodingKey::from_ec_components(
                &B64.encode(&point[1..1 + l]),
                &B64.encode(&point[1 + l..]),
            )
            .unwrap()
        }
        P::Ed25519(x) => jsonwebtoken::DecodingKey::from_ed_components(&B64.encode(x)).unwrap(),
    };
    let jalg: jsonwebtoken::Algorithm = alg.as_str().parse().unwrap();
    jsonwebtoken::crypto::verify(&B64.encode(sig), message, &key, jalg).unwrap_or(false)
}

/// Shared counter type for concurrency tests.
pub type Counter = Arc<std::sync::atomic::AtomicUsize>;
