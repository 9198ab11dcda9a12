//! The scheduler: on every tick, the replica holding the lease rotates apps that are due,
//! retires `previous` keys whose verification window has closed, purges expired ledger
//! and deny-list rows, refills the spare pool, and every few ticks runs the reconciler.
//! Time comes from the injected clock, so tests drive ticks without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{debug, info, warn};

use super::reconcile::{ReconcileReport, reconcile};
use super::{KeyError, KeyService, RotationKind};

/// What one tick did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TickReport {
    /// Whether this replica held the lease (if not, it did nothing).
    pub leader: bool,
    /// Apps rotated.
    pub rotated: Vec<String>,
    /// Apps due but not rotated yet (next key too young, or an error).
    pub deferred: Vec<String>,
    /// Keys retired.
    pub retired: Vec<String>,
    /// Expired rows purged.
    pub purged: u64,
    /// Spare keys generated.
    pub spares_made: usize,
    /// Reconciler result, on ticks that ran it.
    pub reconcile: Option<ReconcileReport>,
    /// Milliseconds spent on each phase: rotation, retirement, purge, whole tick.
    pub timings: TickTimings,
}

/// Where a tick's time went, in milliseconds (logged with every tick that did something,
/// so an operator sees which phase grows with the data).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct TickTimings {
    /// Finding due apps and rotating them.
    pub rotate_ms: u64,
    /// Finding and retiring `previous` keys past their window.
    pub retire_ms: u64,
    /// Purging expired ledger, deny-list, refresh and cut-off rows.
    pub purge_ms: u64,
    /// The whole tick, including spare refill and reconciler.
    pub total_ms: u64,
}

fn ms_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What this process's scheduler last did, for the status endpoint and the console's
/// health strip. Shared between the scheduler task and the HTTP handlers.
#[derive(Debug)]
pub struct SchedulerStatus {
    replica_id: String,
    last_tick_at: AtomicI64,
    leader: AtomicBool,
}

impl Default for SchedulerStatus {
    fn default() -> Self {
        Self {
            replica_id: ulid::Ulid::new().to_string(),
            last_tick_at: AtomicI64::new(0),
            leader: AtomicBool::new(false),
        }
    }
}

impl SchedulerStatus {
    /// This process's replica id (a ULID made at start-up).
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// When the last tick ran (seconds since the epoch), if one ran yet.
    pub fn last_tick_at(&self) -> Option<i64> {
        Some(self.last_tick_at.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// Whether this replica held the scheduler lease at its last tick.
    pub fn leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    fn record(&self, at: i64, leader: bool) {
        self.last_tick_at.store(at, Ordering::Relaxed);
        self.leader.store(leader, Ordering::Relaxed);
    }
}

/// The scheduler.
#[derive(Clone, Debug)]
pub struct Scheduler {
    keys: KeyService,
    reconcile_every: u64,
    min_pending_age: i64,
    orphan_grace: i64,
    status: Arc<SchedulerStatus>,
}

impl Scheduler {
    /// A scheduler that reconciles every `reconcile_every` ticks.
    pub fn new(keys: KeyService, reconcile_every: u64, min_pending_age: i64) -> Self {
        Self {
            keys,
            reconcile_every: reconcile_every.max(1),
            min_pending_age,
            orphan_grace: super::reconcile::DEFAULT_ORPHAN_GRACE,
            status: Arc::default(),
        }
    }

    /// Destroy orphans of this store only after they were seen for `secs` seconds.
    #[must_use]
    pub fn with_orphan_grace(mut self, secs: i64) -> Self {
        self.orphan_grace = secs;
        self
    }

    /// Report each tick into `status` (shared with the HTTP handlers).
    #[must_use]
    pub fn with_status(mut self, status: Arc<SchedulerStatus>) -> Self {
        self.status = status;
        self
    }

    /// One tick (number `n`, for the reconcile cadence).
    ///
    /// # Errors
    /// Store failures taking the lease; later failures are logged and counted as deferred.
    pub async fn tick(&self, n: u64) -> Result<TickReport, KeyError> {
        let mut report = TickReport::default();
        let Some(lease) = self.keys.store().scheduler_lease().await? else {
            self.status.record(self.keys.clock_now(), false);
            return Ok(report);
        };
        report.leader = true;
        self.status.record(self.keys.clock_now(), true);
        let result =
            crate::audit::scope("scheduler", "", self.tick_as_leader(n, &mut report)).await;
        lease.release().await;
        result.map(|()| report)
    }

    async fn tick_as_leader(&self, n: u64, report: &mut TickReport) -> Result<(), KeyError> {
        let start = Instant::now();
        for app in self.keys.apps_due() {
            match self.keys.rotate(&app, RotationKind::Scheduled).await {
                Ok(_) => report.rotated.push(app),
                Err(KeyError::TooSoon { .. }) => report.deferred.push(app),
                Err(e) => {
                    warn!(app_id = %app, error = %e, "scheduled rotation failed; will retry");
                    report.deferred.push(app);
                }
            }
        }
        report.timings.rotate_ms = ms_since(start);
        let t = Instant::now();
        report.retired = self
            .keys
            .retire_expired()
            .await?
            .iter()
            .map(ToString::to_string)
            .collect();
        report.timings.retire_ms = ms_since(t);
        let t = Instant::now();
        let now = self.keys.clock_now();
        report.purged = self.keys.store().purge_expired(now).await?;
        self.keys.registry().purge(now);
        report.timings.purge_ms = ms_since(t);
        match self.keys.spares().refill().await {
            Ok(n) => report.spares_made = n,
            Err(e) => warn!(error = %e, "spare refill failed; will retry"),
        }
        if n.is_multiple_of(self.reconcile_every) {
            let opts = super::reconcile::Options {
                orphan_grace: self.orphan_grace,
                ..super::reconcile::Options::new(false, self.min_pending_age)
            };
            let pass = reconcile(&self.keys, self.keys.hsm(), opts);
            match crate::audit::scope("reconciler", "", pass).await {
                Ok(r) => report.reconcile = Some(r),
                Err(e) => warn!(error = %e, "reconciler pass failed; will retry"),
            }
        }
        report.timings.total_ms = ms_since(start);
        if !report.rotated.is_empty() || !report.retired.is_empty() || report.purged > 0 {
            info!(
                rotated = report.rotated.len(),
                deferred = report.deferred.len(),
                retired = report.retired.len(),
                purged = report.purged,
                rotate_ms = report.timings.rotate_ms,
                retire_ms = report.timings.retire_ms,
                purge_ms = report.timings.purge_ms,
                total_ms = report.timings.total_ms,
                "scheduler tick"
            );
        } else {
            debug!(total_ms = report.timings.total_ms, "scheduler tick");
        }
        Ok(())
    }

    /// Tick every `period` until the process ends.
    pub async fn run(self, period: Duration) {
        let mut n: u64 = 0;
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            n += 1;
            if let Err(e) = self.tick(n).await {
                warn!(error = %e, "scheduler tick failed; will retry");
            }
        }
    }
}
