//! Signing keys: ids, states, the lifecycle service and the scheduler.

mod kid;

pub use kid::{BadId, Kid, LABEL_PREFIX, parse_ulid};
