//! The audit log's anchors in the token: a MAC key and a high-water mark.
//!
//! The MAC key is a 256-bit generic secret made inside the token (token object, private,
//! sensitive, never extractable, usable only to sign and verify), used with
//! `CKM_SHA256_HMAC`: whoever can write the database but not use the token cannot compute
//! a record's MAC. The mark is a private data object holding the highest sealed record and
//! its MAC, so deleting seals or the records under them shows even though the database
//! holds both. Both are labelled `hsm-rotator/<store id>/audit-...`; they are neither key
//! pairs nor 16-byte ids, so the key listing (and the reconciler) never sees them.
//!
//! The sealer runs after every append, next to key generation, so a pass never searches
//! the token: both objects are searched for once per module generation and then used by
//! handle ([`AuditObjects`]); the mark's value changes in place where the token allows it
//! (see [`set_mark_in`]). Why it matters: SoftHSM2 before 2.7.0 (Debian 12 ships 2.6.1)
//! re-reads every token object from its file on each `C_FindObjectsInit` and marks one
//! whose file is still empty invalid for good (its issue 573), so a search made while
//! another session is inside `C_GenerateKeyPair` makes that generation fail with
//! `CKR_GENERAL_ERROR` (a create answered 503 hsm_unavailable).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::error::rv;
use super::pool::{Core, OpError};
use crate::keys::LABEL_PREFIX;

/// Name (after the store id) of the audit MAC key.
const KEY_NAME: &str = "audit-mac";
/// Name (after the store id) of the audit high-water mark.
const MARK_NAME: &str = "audit-mark";

/// A handle and the module generation it was found in.
type Slot = Mutex<Option<(u64, ObjectHandle)>>;

/// The audit MAC key's and high-water mark's handles, found once per module generation
/// (handles die with the generation: a re-initialisation or a new login).
#[derive(Debug)]
pub(crate) struct AuditObjects {
    key: Slot,
    mark: Slot,
    /// Whether the token lets the mark's value change in place (until it refuses once;
    /// then the mark moves by a new object and the old one's destruction).
    in_place: AtomicBool,
}

impl Default for AuditObjects {
    fn default() -> Self {
        Self {
            key: Mutex::default(),
            mark: Mutex::default(),
            in_place: AtomicBool::new(true),
        }
    }
}

fn get(slot: &Slot, generation: u64) -> Option<ObjectHandle> {
    match *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        Some((g, h)) if g == generation => Some(h),
        _ => None,
    }
}

fn put(slot: &Slot, generation: u64, handle: Option<ObjectHandle>) {
    *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = handle.map(|h| (generation, h));
}

/// A handle kept from an earlier call names no object any more (destroyed by another
/// process, or by someone holding the PIN): search again.
fn stale(e: &CkError) -> bool {
    matches!(
        rv(e),
        Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid)
    )
}

/// The token will not change a data object's value in place.
fn refused(e: &CkError) -> bool {
    matches!(
        rv(e),
        Some(
            RvError::AttributeReadOnly
                | RvError::ActionProhibited
                | RvError::AttributeTypeInvalid
                | RvError::FunctionNotSupported
        )
    )
}

fn label(core: &Core, name: &str) -> Result<Vec<u8>, OpError> {
    Ok(format!("{LABEL_PREFIX}{}/{name}", core.store_id()?).into_bytes())
}

fn find(
    core: &Core,
    session: &Session,
    class: ObjectClass,
    label: &[u8],
) -> Result<Option<ObjectHandle>, OpError> {
    Ok(super::object::find(
        core,
        session,
        &[Attribute::Class(class), Attribute::Label(label.to_vec())],
    )?
    .first()
    .copied())
}

/// MACs of a batch of messages, and whether the key was made for them.
pub(crate) type Macs = (Vec<Vec<u8>>, bool);

fn generate_key(core: &Core, session: &Session, label: Vec<u8>) -> Result<ObjectHandle, OpError> {
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
        Attribute::Label(label.clone()),
    ];
    let search = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label),
    ];
    let k = made_and_kept(core, session, &search, "the new audit MAC key", || {
        session.generate_key(&Mechanism::GenericSecretKeyGen, &template)
    })?;
    tracing::info!("audit MAC key created in the HSM");
    Ok(k)
}

/// Make one token object with `make` and check that a fresh search by `search` finds it;
/// if not, destroy it and make it once more, else fail with [`super::HsmError::NotKept`]
/// (`what` names it).
///
/// The same check as a new key pair's (`keygen::intact`): SoftHSM2 2.6.1 can lose an
/// object's last write when another process changes the token while it is made. A lost MAC
/// key would be made again after a restart, and every seal made with it could not be
/// checked; a lost mark (seen in `tests/hsm`: another process then found no mark at all)
/// would read as an audit log cut short.
fn made_and_kept(
    core: &Core,
    session: &Session,
    search: &[Attribute],
    what: &str,
    make: impl Fn() -> Result<ObjectHandle, CkError>,
) -> Result<ObjectHandle, OpError> {
    for _ in 0..2 {
        let h = {
            let _making = core.making();
            make()?
        };
        if super::object::find(core, session, search)?.contains(&h) {
            return Ok(h);
        }
        let _ = session.destroy_object(h);
        tracing::warn!("the token did not keep {what}");
    }
    Err(OpError::Final(super::HsmError::NotKept(what.into())))
}

/// MAC `messages` with the store's audit key, making the key first when there is none and
/// `create` is set. `Ok(None)`: no key (and not asked to make one). The flag says whether
/// the key was made by this call. With no messages, this only asks whether the key exists.
pub(crate) fn macs_in(
    core: &Core,
    session: &Session,
    messages: &[Vec<u8>],
    create: bool,
) -> Result<Option<Macs>, OpError> {
    let objects = core.audit_objects();
    let generation = core.current_generation();
    let mut searched = false;
    loop {
        let (key, created) = match get(&objects.key, generation) {
            Some(k) => (k, false),
            None => {
                searched = true;
                let label = label(core, KEY_NAME)?;
                let (k, created) = match find(core, session, ObjectClass::SECRET_KEY, &label)? {
                    Some(k) => (k, false),
                    None if create => (generate_key(core, session, label)?, true),
                    None => return Ok(None),
                };
                put(&objects.key, generation, Some(k));
                (k, created)
            }
        };
        let result = if messages.is_empty() {
            // A handle kept from earlier must still name the key.
            session
                .get_attributes(key, &[AttributeType::Class])
                .map(|_| Vec::new())
        } else {
            messages
                .iter()
                .map(|m| session.sign(&Mechanism::Sha256Hmac, key, m))
                .collect::<Result<Vec<_>, _>>()
        };
        match result {
            Ok(macs) => return Ok(Some((macs, created))),
            // A kept handle that fails (gone, or the module's view of it went stale): search
            // afresh once.
            Err(e) if !searched => {
                tracing::debug!(error = %e, "audit MAC key handle failed; searching again");
                put(&objects.key, generation, None);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Find the audit key and mark once, when a module generation starts (the handle cache is
/// loaded then too), so that the sealer's first pass need not search while keys are being
/// generated. What is absent is searched for again at its first use: another replica may
/// make it meanwhile.
pub(crate) fn prime_in(core: &Core, session: &Session) -> Result<(), OpError> {
    let objects = core.audit_objects();
    let generation = core.current_generation();
    let key = find(
        core,
        session,
        ObjectClass::SECRET_KEY,
        &label(core, KEY_NAME)?,
    )?;
    put(&objects.key, generation, key);
    if let [(h, _)] = values(core, session, &label(core, MARK_NAME)?)?.as_slice() {
        put(&objects.mark, generation, Some(*h));
    }
    Ok(())
}

fn value_of(session: &Session, h: ObjectHandle) -> Result<Option<Vec<u8>>, CkError> {
    Ok(session
        .get_attributes(h, &[AttributeType::Value])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        }))
}

fn values(
    core: &Core,
    session: &Session,
    label: &[u8],
) -> Result<Vec<(ObjectHandle, Vec<u8>)>, OpError> {
    let mut out = Vec::new();
    for h in super::object::find(
        core,
        session,
        &[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(label.to_vec()),
        ],
    )? {
        // A mark being replaced by another process may be gone already: skip it.
        if let Ok(Some(v)) = value_of(session, h) {
            out.push((h, v));
        }
    }
    Ok(out)
}

/// The values of the audit high-water mark objects: one, or more when a move on a token
/// that cannot change the value in place was cut short; the caller takes the highest.
pub(crate) fn mark_in(core: &Core, session: &Session) -> Result<Vec<Vec<u8>>, OpError> {
    let objects = core.audit_objects();
    let generation = core.current_generation();
    if let Some(h) = get(&objects.mark, generation) {
        match value_of(session, h) {
            Ok(Some(v)) => return Ok(vec![v]),
            Ok(None) => {}
            Err(e) if stale(&e) => {}
            Err(e) => return Err(e.into()),
        }
        put(&objects.mark, generation, None);
    }
    let found = values(core, session, &label(core, MARK_NAME)?)?;
    if let [(h, _)] = found.as_slice() {
        put(&objects.mark, generation, Some(*h));
    }
    Ok(found.into_iter().map(|(_, v)| v).collect())
}

/// Move the audit high-water mark to `value` (always above the mark it replaces: the
/// sealer checks the mark before sealing past it, one replica at a time). The mark's value
/// changes in place where the token allows it (kryoptic, and PKCS#11 itself, which lets a
/// data object's `CKA_VALUE` change). SoftHSM2 refuses (`CKR_ATTRIBUTE_READ_ONLY`: it lets
/// `C_SetAttributeValue` change only the attributes it marks modifiable), so there the mark
/// moves by a new object with `value`, then the old one goes (a crash in between leaves
/// both, and readers take the highest) — still without a search, by the kept handle.
pub(crate) fn set_mark_in(core: &Core, session: &Session, value: &[u8]) -> Result<(), OpError> {
    let objects = core.audit_objects();
    let generation = core.current_generation();
    let label = label(core, MARK_NAME)?;
    let label = label.as_slice();
    // The marks found by a search (at most one search per call).
    let mut found: Option<Vec<ObjectHandle>> = None;
    let search = |found: &mut Option<Vec<ObjectHandle>>| -> Result<Vec<ObjectHandle>, OpError> {
        if found.is_none() {
            *found = Some(
                values(core, session, label)?
                    .into_iter()
                    .map(|(h, _)| h)
                    .collect(),
            );
        }
        Ok(found.clone().unwrap_or_default())
    };
    while objects.in_place.load(Ordering::Relaxed) {
        let (h, others) = match get(&objects.mark, generation) {
            Some(h) => (h, Vec::new()),
            None => match search(&mut found)?.split_first() {
                Some((h, others)) => (*h, others.to_vec()),
                // No mark yet: made below.
                None => break,
            },
        };
        match session.update_attributes(h, &[Attribute::Value(value.to_vec())]) {
            Ok(()) => {
                put(&objects.mark, generation, Some(h));
                // Older marks left by a move that was cut short: `value` is above them.
                for o in others {
                    destroy(session, o)?;
                }
                return Ok(());
            }
            Err(e) if found.is_none() && stale(&e) => put(&objects.mark, generation, None),
            Err(e) if refused(&e) => {
                tracing::info!(error = %e, "the token does not change a data object's value in place; the audit mark moves by a new object instead");
                objects.in_place.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let old = match get(&objects.mark, generation) {
        Some(h) => vec![h],
        None => search(&mut found)?,
    };
    let search = [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Label(label.to_vec()),
    ];
    let h = made_and_kept(core, session, &search, "the new audit mark", || {
        session.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(label.to_vec()),
            Attribute::Value(value.to_vec()),
        ])
    })?;
    let mut gone = false;
    for o in old {
        gone |= !destroy(session, o)?;
    }
    // A kept handle another process had destroyed: it may have left a mark of its own,
    // which the next move finds (by a search) and removes.
    put(&objects.mark, generation, (!gone).then_some(h));
    Ok(())
}

/// Destroy an older mark; one another process destroyed first is gone all the same
/// (`Ok(false)`).
fn destroy(session: &Session, h: ObjectHandle) -> Result<bool, OpError> {
    match session.destroy_object(h) {
        Ok(()) => Ok(true),
        Err(e) if stale(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
