//! Signing keys: ids, states, the in-memory registry, the spare pool and the lifecycle
//! service.

pub mod import;
mod kid;
pub mod policy;
pub mod reconcile;
pub mod registry;
pub mod scheduler;
pub mod service;
pub mod spares;
mod state;

pub use kid::{
    BadId, Kid, LABEL_PREFIX, LabelOwner, label_owner, monotonic_ulid, parse_ulid, token_ulid,
    token_ulid_after,
};
pub use registry::{LiveKey, Registry, Revoked};
pub use service::{
    CreatedApp, Early, EmergencyRotation, KeyError, KeyService, Revocation, Rotation, RotationKind,
};
pub use spares::SparePool;
pub use state::KeyState;
