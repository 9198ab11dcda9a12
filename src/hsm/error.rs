//! HSM errors and the one mapping from PKCS#11 return values to them.
//!
//! Modelled on parsec's `rv_to_response_status`: every `CKR_*` code lands in one of a few
//! kinds that callers act on (503, re-login, key gone, unsupported, internal). The PKCS#11
//! function that failed is kept, so a log line says which C call it was. No variant carries
//! a PIN or key material.

use cryptoki::error::{Error as CkError, RvError};

use crate::keys::Kid;

/// What went wrong talking to the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The token or module cannot be reached now (device removed, token absent, not
    /// initialised and re-initialisation failed). Maps to 503.
    #[error("HSM unavailable: {0}")]
    Unavailable(#[source] CkError),
    /// The token refused the PIN, or the PIN is locked. Never retried.
    #[error("HSM login failed: {0}")]
    Login(#[source] CkError),
    /// No key pair with this `kid` exists in the token.
    #[error("key {0} not found in the HSM")]
    KeyNotFound(Kid),
    /// The token lacks a mechanism or function we need.
    #[error("HSM does not support this operation: {0}")]
    Unsupported(#[source] CkError),
    /// The token lacks what an algorithm needs (asked at start-up; see [`super::Unsupported`]).
    /// A request for it is refused (422), not retried.
    #[error(transparent)]
    Algorithm(#[from] super::Unsupported),
    /// Configuration problem: module cannot be loaded, token label unknown, no PIN.
    #[error("HSM configuration: {0}")]
    Config(String),
    /// The token returned data we could not interpret.
    #[error("HSM returned malformed data: {0}")]
    Malformed(String),
    /// The token did not keep an object just made (another process changed the token while
    /// it was written; see `keygen::intact`). Nothing of it is left. Names what was made.
    #[error("the token did not keep {0} intact; nothing of it is left")]
    NotKept(String),
    /// Any other PKCS#11 failure.
    #[error("HSM error: {0}")]
    Internal(#[source] CkError),
    /// The session pool was closed, or a PKCS#11 call run on tokio's blocking pool (opening
    /// the module, or any call without a multi-threaded runtime) panicked or was cancelled.
    #[error("HSM worker failed")]
    Worker,
}

/// How a failed call should be handled by the retry logic in [`super::pool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// The session is unusable or logged out: drop it, log in again, re-resolve, retry once.
    Session,
    /// A cached object handle is stale: re-resolve by `CKA_ID`, retry once.
    Handle,
    /// The module lost its state: finalise, initialise again, retry once.
    Reinitialise,
    /// Do not retry.
    None,
}

/// The CKR code of a cryptoki error, if it came from the token.
pub(crate) fn rv(err: &CkError) -> Option<RvError> {
    match err {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// Decide how to recover from a failed call.
pub(crate) fn recovery(err: &CkError) -> Recovery {
    match rv(err) {
        Some(RvError::SessionHandleInvalid | RvError::SessionClosed | RvError::UserNotLoggedIn) => {
            Recovery::Session
        }
        Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid | RvError::GeneralError) => {
            Recovery::Handle
        }
        Some(
            RvError::CryptokiNotInitialized | RvError::DeviceRemoved | RvError::TokenNotPresent,
        ) => Recovery::Reinitialise,
        _ => Recovery::None,
    }
}

/// Count a failed PKCS#11 call in `hsm_rotator_hsm_errors_total` by its CKR name. Called
/// once per failure: by [`map`], and by the pool for the failures it recovers from (which
/// are never mapped).
pub(crate) fn count(err: &CkError) {
    match rv(err) {
        Some(rv) => crate::metrics::hsm_error(&format!("{rv:?}")),
        None => crate::metrics::hsm_error("library"),
    }
}

/// The one CKR → [`HsmError`] mapping (which counts the failure, see [`count`]).
pub(crate) fn map(err: CkError) -> HsmError {
    count(&err);
    match rv(&err) {
        Some(
            RvError::DeviceError
            | RvError::DeviceRemoved
            | RvError::DeviceMemory
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::CryptokiNotInitialized
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::SessionCount
            | RvError::UserNotLoggedIn,
        ) => HsmError::Unavailable(err),
        Some(
            RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired | RvError::PinInvalid,
        ) => HsmError::Login(err),
        Some(
            RvError::MechanismInvalid
            | RvError::MechanismParamInvalid
            | RvError::FunctionNotSupported,
        ) => HsmError::Unsupported(err),
        None if matches!(err, CkError::LibraryLoading(_) | CkError::MissingSymbol(_)) => {
            HsmError::Unavailable(err)
        }
        _ => HsmError::Internal(err),
    }
}

impl HsmError {
    /// Whether the token failed to do what was asked (unreachable, refusing, lost a key
    /// that must exist), as opposed to being asked for something it cannot do: what the
    /// readiness cache listens for (see [`super::Hsm::health_changes`]).
    pub(crate) fn is_fault(&self) -> bool {
        !matches!(self, Self::Algorithm(_) | Self::Unsupported(_))
    }

    /// Whether the token is unreachable (503) rather than the request being wrong.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Login(_) | Self::Worker)
    }

    /// Short stable label for metrics: the CKR code name where there is one.
    pub fn code(&self) -> String {
        let ck = match self {
            Self::Unavailable(e) | Self::Login(e) | Self::Unsupported(e) | Self::Internal(e) => e,
            Self::KeyNotFound(_) => return "key_not_found".into(),
            Self::Algorithm(_) => return "unsupported_algorithm".into(),
            Self::Config(_) => return "config".into(),
            Self::Malformed(_) => return "malformed".into(),
            Self::NotKept(_) => return "not_kept".into(),
            Self::Worker => return "worker".into(),
        };
        match rv(ck) {
            Some(rv) => format!("{rv:?}"),
            None => "library".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    fn ck(rv: RvError) -> CkError {
        CkError::Pkcs11(rv, Function::Sign)
    }

    #[test]
    fn rv_mapping_matches_the_table() {
        assert!(matches!(
            map(ck(RvError::DeviceRemoved)),
            HsmError::Unavailable(_)
        ));
        assert!(matches!(
            map(ck(RvError::TokenNotPresent)),
            HsmError::Unavailable(_)
        ));
        assert!(matches!(map(ck(RvError::PinIncorrect)), HsmError::Login(_)));
        assert!(matches!(map(ck(RvError::PinLocked)), HsmError::Login(_)));
        assert!(matches!(
            map(ck(RvError::MechanismInvalid)),
            HsmError::Unsupported(_)
        ));
        assert!(matches!(
            map(ck(RvError::FunctionNotSupported)),
            HsmError::Unsupported(_)
        ));
        assert!(matches!(
            map(ck(RvError::DataLenRange)),
            HsmError::Internal(_)
        ));
    }

    #[test]
    fn pin_errors_are_never_retried() {
        assert_eq!(recovery(&ck(RvError::PinIncorrect)), Recovery::None);
        assert_eq!(recovery(&ck(RvError::PinLocked)), Recovery::None);
        assert_eq!(recovery(&ck(RvError::UserNotLoggedIn)), Recovery::Session);
        assert_eq!(recovery(&ck(RvError::KeyHandleInvalid)), Recovery::Handle);
        assert_eq!(
            recovery(&ck(RvError::DeviceRemoved)),
            Recovery::Reinitialise
        );
    }

    #[test]
    fn codes_name_the_ckr() {
        assert_eq!(map(ck(RvError::DeviceRemoved)).code(), "DeviceRemoved");
    }
}
