//! Time as a parameter: the one place that reads the system clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Seconds since the Unix epoch.
pub type UnixTime = i64;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in whole seconds since the Unix epoch.
    fn now(&self) -> UnixTime;

    /// Now, in milliseconds since the Unix epoch (token ids carry milliseconds).
    fn now_ms(&self) -> i64 {
        self.now().saturating_mul(1000)
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        self.now_ms().div_euclid(1000)
    }

    #[allow(clippy::disallowed_methods)]
    fn now_ms(&self) -> i64 {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock `skew` milliseconds off `base`: what a host whose clock is wrong reads. Tests
/// start a replica on one (`HSM_ROTATOR_TEST_CLOCK_SKEW_MS`) to show that replicas' clocks
/// do not decide which tokens a flush or a logout ends.
#[derive(Debug)]
pub struct SkewedClock {
    base: Arc<dyn Clock>,
    skew_ms: i64,
}

impl SkewedClock {
    /// `base` moved by `skew_ms` (negative: behind).
    pub fn new(base: Arc<dyn Clock>, skew_ms: i64) -> Self {
        Self { base, skew_ms }
    }
}

impl Clock for SkewedClock {
    fn now(&self) -> UnixTime {
        self.now_ms().div_euclid(1000)
    }

    fn now_ms(&self) -> i64 {
        self.base.now_ms().saturating_add(self.skew_ms)
    }
}

/// The database's clock, read through this host's: `base` plus the offset last measured
/// against the database ([`DatabaseClock::set_offset_ms`], kept fresh by the server).
///
/// Every replica of one store stamps token ids (`iat`, the `jti`'s time) on it, and flush
/// and logout cut-offs are read from the database itself inside their transaction, so
/// which tokens a cut-off ends does not depend on how far the replicas' clocks disagree:
/// only on the offsets' measurement error (half a round trip to the database).
#[derive(Debug)]
pub struct DatabaseClock {
    base: Arc<dyn Clock>,
    offset_ms: AtomicI64,
}

impl DatabaseClock {
    /// `base` until an offset is measured.
    pub fn new(base: Arc<dyn Clock>) -> Self {
        Self {
            base,
            offset_ms: AtomicI64::new(0),
        }
    }

    /// The host clock the offset is measured against.
    pub fn base(&self) -> &dyn Clock {
        self.base.as_ref()
    }

    /// The database's clock minus the host's, in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Record a new measurement of the database's clock minus the host's.
    pub fn set_offset_ms(&self, offset: i64) {
        self.offset_ms.store(offset, Ordering::Relaxed);
    }
}

impl Clock for DatabaseClock {
    fn now(&self) -> UnixTime {
        self.now_ms().div_euclid(1000)
    }

    fn now_ms(&self) -> i64 {
        self.base.now_ms().saturating_add(self.offset_ms())
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug, Default)]
pub struct FixedClock(AtomicI64);

impl FixedClock {
    /// A clock reading `t`.
    pub fn at(t: UnixTime) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(t)))
    }

    /// Move forward by `secs`.
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }

    /// Set the time.
    pub fn set(&self, t: UnixTime) {
        self.0.store(t, Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}

/// RFC 3339 (UTC, whole seconds) for API objects.
pub fn rfc3339(t: UnixTime) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_clock_moves_only_when_told() {
        let c = FixedClock::at(1_000);
        assert_eq!(c.now(), 1_000);
        c.advance(30);
        assert_eq!(c.now(), 1_030);
        assert_eq!(c.now_ms(), 1_030_000);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn a_database_clock_corrects_a_skewed_host() {
        let host = FixedClock::at(1_000);
        let skewed = Arc::new(SkewedClock::new(host.clone(), -30_500));
        assert_eq!(skewed.now(), 969, "whole seconds round down");
        let db = DatabaseClock::new(skewed);
        assert_eq!(db.now(), 969);
        db.set_offset_ms(30_500);
        assert_eq!((db.now(), db.now_ms()), (1_000, 1_000_000));
        host.advance(2);
        assert_eq!(db.now(), 1_002);
    }
}
