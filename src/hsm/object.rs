//! Token objects: listing ours, reading public halves, checking private-key protection,
//! destroying key pairs.

use cryptoki::error::Error as CkError;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::PublicHalf;
use super::error::{HsmError, Recovery, map, recovery};
use super::pool::{Core, Handles, OpError};
use crate::alg::{Algorithm, KeyFamily};
use crate::keys::{Kid, LABEL_PREFIX, LabelOwner};
use crate::pubkey::PublicKey;

/// One object with our label prefix in the token (`hsm-rotator/`), of any store.
#[derive(Debug, Clone)]
pub struct TokenObject {
    /// The kid from `CKA_ID`, when it is a 16-byte id.
    pub kid: Option<Kid>,
    /// `CKA_LABEL`.
    pub label: String,
    /// The store that owns it, from the label (`None`: a label of neither form).
    pub owner: Option<LabelOwner>,
    /// Private half (`true`) or public half.
    pub private: bool,
    pub(crate) handle: ObjectHandle,
}

/// Protection attributes of a private key, as the token reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivateKeyFlags {
    /// `CKA_TOKEN`.
    pub token: bool,
    /// `CKA_PRIVATE`.
    pub private: bool,
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_NEVER_EXTRACTABLE`: false for a key that was ever extractable (an imported one).
    pub never_extractable: bool,
    /// `CKA_LOCAL`: generated in the token (false for an imported key).
    pub local: bool,
    /// Whether reading the secret value (`CKA_PRIVATE_EXPONENT` or `CKA_VALUE`) returned data.
    pub secret_readable: bool,
}

/// Search the token, never while this process is making an object (see
/// [`Core::searching`]).
pub(crate) fn find(
    core: &Core,
    session: &Session,
    template: &[Attribute],
) -> Result<Vec<ObjectHandle>, CkError> {
    let _searching = core.searching();
    session.find_objects(template)
}

/// Every object of ours in the token, private and public halves.
pub(crate) fn list_in(core: &Core, session: &Session) -> Result<Vec<TokenObject>, CkError> {
    let mut out = Vec::new();
    for (class, private) in [
        (ObjectClass::PRIVATE_KEY, true),
        (ObjectClass::PUBLIC_KEY, false),
    ] {
        for handle in find(core, session, &[Attribute::Class(class)])? {
            let attrs = match session
                .get_attributes(handle, &[AttributeType::Label, AttributeType::Id])
            {
                Ok(a) => a,
                // Destroyed or still being made by another session or process: listing is a
                // snapshot, and the next pass sees the object as it ends up.
                Err(e) => {
                    tracing::debug!(error = %e, "skipping an object that changed while listing");
                    continue;
                }
            };
            let mut label = String::new();
            let mut kid = None;
            for a in attrs {
                match a {
                    Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                    Attribute::Id(id) => kid = Kid::from_cka_id(&id),
                    _ => {}
                }
            }
            if label.starts_with(LABEL_PREFIX) {
                out.push(TokenObject {
                    kid,
                    owner: crate::keys::label_owner(&label),
                    label,
                    private,
                    handle,
                });
            }
        }
    }
    Ok(out)
}

/// Which halves of `kid` exist, searched fresh (never from the cache).
pub(crate) fn halves_in(
    core: &Core,
    session: &Session,
    kid: &Kid,
) -> Result<(bool, bool), CkError> {
    let exists = |class| -> Result<bool, CkError> {
        Ok(!find(
            core,
            session,
            &[
                Attribute::Class(class),
                Attribute::Id(kid.cka_id().to_vec()),
            ],
        )?
        .is_empty())
    };
    Ok((
        exists(ObjectClass::PRIVATE_KEY)?,
        exists(ObjectClass::PUBLIC_KEY)?,
    ))
}

/// Read the public half of `kid` and decode it for `alg`.
pub(crate) fn public_key_in(
    core: &Core,
    session: &Session,
    kid: &Kid,
    alg: Algorithm,
) -> Result<PublicKey, OpError> {
    let handle = core
        .handles(session, kid)?
        .public
        .ok_or(HsmError::KeyNotFound(*kid))?;
    read_public(session, handle, alg)
}

/// What the token holds as the public half of each of `keys`, in order (see
/// [`super::Hsm::public_keys`]): cached handles first; a kid without a cached public handle,
/// or whose cached handle has gone stale, is searched afresh once (through [`find`]), and
/// "not found" is reported as [`PublicHalf::Absent`], never remembered.
pub(crate) fn public_keys_in(
    core: &Core,
    session: &Session,
    keys: &[(Kid, Algorithm)],
) -> Result<Vec<PublicHalf>, OpError> {
    keys.iter()
        .map(|(kid, alg)| public_half_in(core, session, kid, *alg))
        .collect()
}

fn public_half_in(
    core: &Core,
    session: &Session,
    kid: &Kid,
    alg: Algorithm,
) -> Result<PublicHalf, OpError> {
    let mut searched = false;
    loop {
        let handle = match core.handles(session, kid) {
            Ok(h) => h.public,
            // `handles` searched on the miss and found neither half.
            Err(OpError::Final(HsmError::KeyNotFound(_))) => return Ok(PublicHalf::Absent),
            // A search that failed on an object another process is making (SoftHSM2 2.6.1
            // answers CKR_GENERAL_ERROR): not known yet, never a verdict.
            Err(OpError::Ck(e)) if recovery(&e) == Recovery::Handle => {
                if searched {
                    return Ok(PublicHalf::Absent);
                }
                searched = true;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(handle) = handle else {
            if searched {
                return Ok(PublicHalf::Absent);
            }
            // Cached without its public half (a listing that raced its making): look again.
            core.forget(kid);
            searched = true;
            continue;
        };
        match read_public(session, handle, alg) {
            Ok(p) => return Ok(PublicHalf::Found(p)),
            Err(OpError::Final(e)) => return Ok(PublicHalf::Unreadable(e)),
            Err(OpError::Ck(e)) => match recovery(&e) {
                Recovery::Handle if !searched => {
                    core.forget(kid);
                    searched = true;
                }
                // Still stale after a fresh search: gone meanwhile, not a different key.
                Recovery::Handle => return Ok(PublicHalf::Absent),
                // The object answers, but not as a key of this algorithm.
                Recovery::None => return Ok(PublicHalf::Unreadable(map(e))),
                Recovery::Session | Recovery::Reinitialise => return Err(OpError::Ck(e)),
            },
        }
    }
}

pub(crate) fn read_public(
    session: &Session,
    handle: ObjectHandle,
    alg: Algorithm,
) -> Result<PublicKey, OpError> {
    match alg.family() {
        KeyFamily::Rsa => {
            let attrs = session.get_attributes(
                handle,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )?;
            let (mut n, mut e) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Modulus(v) => n = Some(v),
                    Attribute::PublicExponent(v) => e = Some(v),
                    _ => {}
                }
            }
            match (n, e) {
                (Some(n), Some(e)) => Ok(PublicKey::rsa(&n, &e)),
                _ => Err(malformed("RSA public key without modulus or exponent")),
            }
        }
        KeyFamily::Ec(curve) | KeyFamily::Ed(curve) => {
            let attrs = session.get_attributes(handle, &[AttributeType::EcPoint])?;
            let point = attrs
                .into_iter()
                .find_map(|a| match a {
                    Attribute::EcPoint(p) => Some(p),
                    _ => None,
                })
                .ok_or_else(|| malformed("EC public key without CKA_EC_POINT"))?;
            let raw = unwrap_ec_point(&point, curve.point_len())
                .ok_or_else(|| malformed("CKA_EC_POINT has an unexpected length"))?;
            Ok(match alg.family() {
                KeyFamily::Ed(_) => PublicKey::Ed25519(raw),
                _ => PublicKey::Ec { curve, point: raw },
            })
        }
    }
}

fn malformed(what: &str) -> OpError {
    OpError::Final(HsmError::Malformed(what.into()))
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the point (PKCS#11 v2.40); some tokens
/// return the raw point. The expected raw length tells the two apart.
pub(crate) fn unwrap_ec_point(value: &[u8], raw_len: usize) -> Option<Vec<u8>> {
    if value.len() == raw_len {
        return Some(value.to_vec());
    }
    let (&tag, rest) = value.split_first()?;
    if tag != 0x04 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, body) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 2 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| acc << 8 | usize::from(b));
        (len, &rest[n..])
    };
    (len == body.len() && len == raw_len).then(|| body.to_vec())
}

/// Protection flags of `kid`'s private half.
pub(crate) fn private_flags_in(
    core: &Core,
    session: &Session,
    kid: &Kid,
) -> Result<PrivateKeyFlags, OpError> {
    let handle = core
        .handles(session, kid)?
        .private
        .ok_or(HsmError::KeyNotFound(*kid))?;
    let attrs = session.get_attributes(
        handle,
        &[
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::NeverExtractable,
            AttributeType::Local,
        ],
    )?;
    let mut f = PrivateKeyFlags {
        token: false,
        private: false,
        sensitive: false,
        extractable: true,
        never_extractable: false,
        local: false,
        secret_readable: false,
    };
    for a in attrs {
        match a {
            Attribute::Token(v) => f.token = v,
            Attribute::Private(v) => f.private = v,
            Attribute::Sensitive(v) => f.sensitive = v,
            Attribute::Extractable(v) => f.extractable = v,
            Attribute::NeverExtractable(v) => f.never_extractable = v,
            Attribute::Local(v) => f.local = v,
            _ => {}
        }
    }
    // A sensitive attribute is simply absent from the answer (CKR_ATTRIBUTE_SENSITIVE).
    let secret = session
        .get_attributes(
            handle,
            &[AttributeType::PrivateExponent, AttributeType::Value],
        )
        .unwrap_or_default();
    f.secret_readable = secret.iter().any(|a| match a {
        Attribute::PrivateExponent(v) | Attribute::Value(v) => !v.is_empty(),
        _ => false,
    });
    Ok(f)
}

/// Relabel `kid`'s halves with this store's id (adoption of a legacy object).
pub(crate) fn adopt_in(core: &Core, session: &Session, kid: &Kid) -> Result<(), OpError> {
    let label = kid.label(core.store_id()?);
    let handles = core.handles(session, kid)?;
    for h in [handles.private, handles.public].into_iter().flatten() {
        session.update_attributes(h, &[Attribute::Label(label.clone().into_bytes())])?;
    }
    core.adopted(kid);
    Ok(())
}

/// Destroy both halves of `kid`; `Ok(false)` when neither exists.
///
/// Each cached handle is checked to still name an object under `kid`'s `CKA_ID` before it
/// is destroyed (one attribute read per half; destroys are rare): a handle that outlived
/// its module generation may name another key's object, and destroying that would take a
/// live key's half away. Such handles are dropped and `kid` is searched for afresh.
pub(crate) fn destroy_in(core: &Core, session: &Session, kid: &Kid) -> Result<bool, OpError> {
    let lookup = || match core.handles(session, kid) {
        Ok(h) => Ok(Some(h)),
        Err(OpError::Final(HsmError::KeyNotFound(_))) => Ok(None),
        Err(e) => Err(e),
    };
    let Some(mut handles) = lookup()? else {
        return Ok(false);
    };
    if !names(session, &handles, kid) {
        tracing::warn!(%kid, "cached handles do not name this key's objects; searching afresh before destroying");
        core.forget(kid);
        let Some(found) = lookup()? else {
            return Ok(false);
        };
        if !names(session, &found, kid) {
            core.forget(kid);
            return Err(OpError::Final(HsmError::Malformed(format!(
                "objects found under key {kid} do not carry its id"
            ))));
        }
        handles = found;
    }
    for h in [handles.private, handles.public].into_iter().flatten() {
        session.destroy_object(h)?;
    }
    core.forget(kid);
    Ok(true)
}

/// Whether every handle in `handles` names an object whose `CKA_ID` is `kid`'s.
fn names(session: &Session, handles: &Handles, kid: &Kid) -> bool {
    let id = kid.cka_id();
    [handles.private, handles.public]
        .into_iter()
        .flatten()
        .all(|h| match session.get_attributes(h, &[AttributeType::Id]) {
            Ok(attrs) => attrs
                .iter()
                .any(|a| matches!(a, Attribute::Id(v) if v.as_slice() == id.as_slice())),
            Err(_) => false,
        })
}

#[cfg(test)]
mod tests {
    use super::unwrap_ec_point;

    #[test]
    fn ec_point_is_unwrapped_from_der_or_taken_raw() {
        let raw: Vec<u8> = std::iter::once(4u8).chain([7u8; 64]).collect();
        let der: Vec<u8> = [vec![0x04, 65], raw.clone()].concat();
        assert_eq!(unwrap_ec_point(&der, 65), Some(raw.clone()));
        assert_eq!(unwrap_ec_point(&raw, 65), Some(raw));
        let ed = [vec![0x04, 32], vec![1u8; 32]].concat();
        assert_eq!(unwrap_ec_point(&ed, 32), Some(vec![1u8; 32]));
        let p521: Vec<u8> = std::iter::once(4u8).chain([9u8; 132]).collect();
        let der521 = [vec![0x04, 0x81, 133], p521.clone()].concat();
        assert_eq!(unwrap_ec_point(&der521, 133), Some(p521));
        assert_eq!(unwrap_ec_point(&[4, 3, 1], 65), None);
    }
}
