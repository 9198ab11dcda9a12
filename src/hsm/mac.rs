//! The audit log's anchors in the token: a MAC key and a high-water mark.
//!
//! The MAC key is a 256-bit generic secret made inside the token (token object, private,
//! sensitive, never extractable, usable only to sign and verify), used with
//! `CKM_SHA256_HMAC`: whoever can write the database but not use the token cannot compute
//! a record's MAC. The mark is a private data object holding the highest sealed record and
//! its MAC, so deleting seals or the records under them shows even though the database
//! holds both. Both are labelled `hsm-rotator/<store id>/audit-...`; they are neither key
//! pairs nor 16-byte ids, so the key listing (and the reconciler) never sees them.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::pool::{Core, OpError};
use crate::keys::LABEL_PREFIX;

/// Name (after the store id) of the audit MAC key.
const KEY_NAME: &str = "audit-mac";
/// Name (after the store id) of the audit high-water mark.
const MARK_NAME: &str = "audit-mark";

fn label(core: &Core, name: &str) -> Result<Vec<u8>, OpError> {
    Ok(format!("{LABEL_PREFIX}{}/{name}", core.store_id()?).into_bytes())
}

fn find(
    session: &Session,
    class: ObjectClass,
    label: &[u8],
) -> Result<Option<ObjectHandle>, OpError> {
    Ok(session
        .find_objects(&[Attribute::Class(class), Attribute::Label(label.to_vec())])?
        .first()
        .copied())
}

/// MACs of a batch of messages, and whether the key was made for them.
pub(crate) type Macs = (Vec<Vec<u8>>, bool);

/// MAC `messages` with the store's audit key, making the key first when there is none and
/// `create` is set. `Ok(None)`: no key (and not asked to make one). The flag says whether
/// the key was made by this call.
pub(crate) fn macs_in(
    core: &Core,
    session: &Session,
    messages: &[Vec<u8>],
    create: bool,
) -> Result<Option<Macs>, OpError> {
    let label = label(core, KEY_NAME)?;
    let (key, created) = match find(session, ObjectClass::SECRET_KEY, &label)? {
        Some(k) => (k, false),
        None if create => {
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::ValueLen(32u64.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Label(label),
            ];
            let k = session.generate_key(&Mechanism::GenericSecretKeyGen, &template)?;
            tracing::info!("audit MAC key created in the HSM");
            (k, true)
        }
        None => return Ok(None),
    };
    let macs = messages
        .iter()
        .map(|m| session.sign(&Mechanism::Sha256Hmac, key, m))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((macs, created)))
}

fn values(session: &Session, label: &[u8]) -> Result<Vec<(ObjectHandle, Vec<u8>)>, OpError> {
    let mut out = Vec::new();
    for h in session.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Label(label.to_vec()),
    ])? {
        // A mark being replaced by another session may be gone already: skip it.
        let Ok(attrs) = session.get_attributes(h, &[AttributeType::Value]) else {
            continue;
        };
        let value = attrs.into_iter().find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        });
        if let Some(v) = value {
            out.push((h, v));
        }
    }
    Ok(out)
}

/// The values of the audit high-water mark objects (one, or two for a moment while it
/// moves); the caller takes the highest.
pub(crate) fn mark_in(core: &Core, session: &Session) -> Result<Vec<Vec<u8>>, OpError> {
    let label = label(core, MARK_NAME)?;
    Ok(values(session, &label)?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// Move the audit high-water mark: a new object with `value`, then the old ones go (a
/// crash in between leaves both, and readers take the highest). Tokens need not let a data
/// object's value change in place, so it is never updated.
pub(crate) fn set_mark_in(core: &Core, session: &Session, value: &[u8]) -> Result<(), OpError> {
    let label = label(core, MARK_NAME)?;
    let old = values(session, &label)?;
    session.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(label),
        Attribute::Value(value.to_vec()),
    ])?;
    for (h, _) in old {
        session.destroy_object(h)?;
    }
    Ok(())
}
