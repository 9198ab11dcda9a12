//! Key states and the transitions allowed between them.
//!
//! `pending` (row written, HSM object being made) → `spare` (in the pool, no app) →
//! `next` (published, not signing) → `current` (signs; one per app) → `previous` (verifies
//! until `verification_ttl` after it stopped signing) → `retired` (object destroyed). Any
//! app key may instead become `revoked` (object destroyed, every token it signed rejected).

use std::fmt;
use std::str::FromStr;

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Row written; the HSM object may or may not exist yet.
    Pending,
    /// Generated, in the spare pool, owned by no app.
    Spare,
    /// Published in the JWKS, not yet signing.
    Next,
    /// Signs every new token of its app.
    Current,
    /// No longer signs; its tokens verify until `verification_ttl` has passed.
    Previous,
    /// Gone from the JWKS; HSM object destroyed.
    Retired,
    /// Revoked: every token it signed is rejected; HSM object destroyed.
    Revoked,
}

impl KeyState {
    /// Name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Spare => "spare",
            Self::Next => "next",
            Self::Current => "current",
            Self::Previous => "previous",
            Self::Retired => "retired",
            Self::Revoked => "revoked",
        }
    }

    /// Whether `self → to` is a legal transition.
    pub fn can_become(self, to: Self) -> bool {
        use KeyState::*;
        matches!(
            (self, to),
            (Pending, Spare)
                | (Pending, Next | Current)
                | (Spare, Next | Current)
                | (Next, Current)
                | (Current, Previous)
                | (Previous, Retired)
                | (Next | Current | Previous, Revoked)
                | (Pending | Spare, Revoked)
        )
    }

    /// Whether tokens signed by a key in this state may still verify.
    pub fn verifies(self) -> bool {
        matches!(self, Self::Next | Self::Current | Self::Previous)
    }

    /// Whether the key is listed in the JWKS.
    pub fn published(self) -> bool {
        self.verifies()
    }

    /// Whether the HSM object should exist.
    pub fn has_object(self) -> bool {
        matches!(
            self,
            Self::Spare | Self::Next | Self::Current | Self::Previous
        )
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => Self::Pending,
            "spare" => Self::Spare,
            "next" => Self::Next,
            "current" => Self::Current,
            "previous" => Self::Previous,
            "retired" => Self::Retired,
            "revoked" => Self::Revoked,
            other => return Err(format!("unknown key state {other:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::KeyState::*;
    use super::*;

    const ALL: [KeyState; 7] = [Pending, Spare, Next, Current, Previous, Retired, Revoked];

    #[test]
    fn transition_table() {
        assert!(Next.can_become(Current));
        assert!(Current.can_become(Previous));
        assert!(Previous.can_become(Retired));
        assert!(Current.can_become(Revoked));
        assert!(!Current.can_become(Next));
        assert!(!Previous.can_become(Current));
        for s in ALL {
            assert!(!Retired.can_become(s), "retired is final");
            assert!(!Revoked.can_become(s), "revoked is final");
            assert!(!s.can_become(s), "no self transitions");
            assert_eq!(s.as_str().parse::<KeyState>(), Ok(s));
        }
    }

    #[test]
    fn only_live_states_verify_and_keep_objects() {
        assert!(Previous.verifies() && !Retired.verifies() && !Revoked.verifies());
        assert!(Spare.has_object() && !Retired.has_object() && !Pending.has_object());
    }
}
