//! `config check`'s look at the token: each step of reaching it, tried in order, with a
//! plain-words reason when one fails. Nothing is created or changed in the token.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::UserType;
use secrecy::{ExposeSecret as _, SecretString};

use crate::alg::Algorithm;

/// The outcome of one step: `Ok(detail)` or `Err(reason)`; `None` if an earlier step
/// failed and this one could not be tried.
pub type Step = Option<Result<String, String>>;

/// What the probe found.
#[derive(Debug, Default)]
pub struct Probe {
    /// The module loaded and initialised.
    pub module: Step,
    /// A token with the label is present.
    pub token: Step,
    /// The PIN logged in.
    pub login: Step,
    /// Algorithms whose key-generation and signing mechanisms the token lists.
    pub supported: Option<Result<Vec<Algorithm>, String>>,
}

fn ckr(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => format!("{f:?} returned {rv}"),
        other => other.to_string(),
    }
}

/// Try each step of reaching the token (blocking: call it off the async executor).
/// The PIN is used for `C_Login` only and never appears in the result.
pub fn probe(module: &std::path::Path, label: &str, pin: Option<&SecretString>) -> Probe {
    let mut p = Probe::default();
    let pkcs11 = match Pkcs11::new(module) {
        Ok(m) => m,
        Err(e) => {
            let why = if module.exists() {
                format!("{} is not a loadable PKCS#11 module: {e}", module.display())
            } else {
                format!("{} does not exist", module.display())
            };
            p.module = Some(Err(why));
            return p;
        }
    };
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            p.module = Some(Err(format!(
                "{} loaded but would not initialise: {}",
                module.display(),
                ckr(&e)
            )));
            return p;
        }
    }
    p.module = Some(Ok(pkcs11.get_library_info().map_or_else(
        |_| module.display().to_string(),
        |i| {
            format!(
                "{} ({} {})",
                module.display(),
                i.manufacturer_id().trim(),
                i.library_description().trim()
            )
        },
    )));
    let slots = match pkcs11.get_slots_with_initialized_token() {
        Ok(s) => s,
        Err(e) => {
            p.token = Some(Err(format!("cannot list the module's slots: {}", ckr(&e))));
            return p;
        }
    };
    let mut seen = Vec::new();
    let mut found = None;
    for slot in slots {
        if let Ok(info) = pkcs11.get_token_info(slot) {
            let l = info.label().trim_end().to_owned();
            if l == label {
                found = Some(slot);
                break;
            }
            seen.push(format!("{l:?}"));
        }
    }
    let Some(slot) = found else {
        p.token = Some(Err(if seen.is_empty() {
            format!("no token labelled {label:?}: the module has no initialised token")
        } else {
            format!(
                "no token labelled {label:?}; the module has {}",
                seen.join(", ")
            )
        }));
        return p;
    };
    p.token = Some(Ok(format!("token {label:?} found")));
    p.supported = Some(match super::mechanisms::Mechanisms::query(&pkcs11, slot) {
        Ok(m) => Ok(m.supported()),
        Err(e) => Err(format!("cannot ask for mechanisms: {}", ckr(&e))),
    });
    let Some(pin) = pin else {
        p.login = Some(Err(
            "no PIN configured: set HSM_ROTATOR_PIN or pin_file".into()
        ));
        return p;
    };
    p.login = Some(match pkcs11.open_ro_session(slot) {
        Err(e) => Err(format!("cannot open a session: {}", ckr(&e))),
        Ok(session) => {
            let auth = cryptoki::types::AuthPin::from(pin.expose_secret().to_owned());
            let r = match session.login(UserType::User, Some(&auth)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                    let _ = session.logout();
                    Ok("the user PIN logs in".into())
                }
                Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                    Err("the token refused the PIN (CKR_PIN_INCORRECT)".into())
                }
                Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(
                    "the user PIN is locked (CKR_PIN_LOCKED); the security officer must reset it"
                        .into(),
                ),
                Err(CkError::Pkcs11(RvError::UserPinNotInitialized, _)) => {
                    Err("the token has no user PIN yet (CKR_USER_PIN_NOT_INITIALIZED)".into())
                }
                Err(e) => Err(format!("login failed: {}", ckr(&e))),
            };
            drop(session);
            r
        }
    });
    p
}
