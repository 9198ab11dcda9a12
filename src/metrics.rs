//! Prometheus metrics, served as text at `GET /metrics` (see `api::metrics`).
//!
//! Built on the `prometheus` crate without default features (no protobuf, no process
//! collector): its counters and histograms are plain atomics (a histogram observation is a
//! few `fetch_add`s and one compare-and-swap for the sum, no lock, no allocation), and a
//! [`Registry`] is an ordinary value the application state owns.
//!
//! The *instruments* live in one process-wide [`Metrics`], because most of the events they
//! count happen where no application state is in reach: a CKR code is turned into an
//! [`crate::hsm::HsmError`] in a free function of the HSM module, a store error in a `From`
//! impl. One process serves one application (the black-box tests start a process per
//! server), so a process-wide set counts exactly one server. The *registry* that exposes
//! them is created per application state by [`registry`].
//!
//! Every name starts with `hsm_rotator_` and carries its unit. Labels are bounded sets:
//! route templates (never raw paths), methods, status codes, algorithm names, CKR names.

use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::alg::{ALL, Algorithm, KeySpec};

/// Label value of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Buckets for HTTP request latency, seconds (0.5 ms .. 10 s).
const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for one HSM signature, seconds (50 µs, a fast ECDSA, .. 1 s, RSA-4096 under load).
const SIGN_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Buckets for the wait for a pooled HSM session, seconds (10 µs .. 1 s).
const WAIT_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
];

/// Buckets for one ledger transaction, seconds (100 µs .. 2.5 s).
const COMMIT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Buckets for the rows of one ledger transaction (powers of two up to the writer's batch).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Every instrument of the service.
pub struct Metrics {
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    sign_seconds: HistogramVec,
    /// One handle per algorithm (in [`ALL`]'s order), so signing never looks a label up.
    sign_by_alg: Vec<Histogram>,
    pool_wait_seconds: Histogram,
    pool_sessions: IntGauge,
    pool_in_use: IntGauge,
    hsm_errors: IntCounterVec,
    spare_keys: IntGaugeVec,
    rotations: IntCounterVec,
    revocations: IntCounterVec,
    reconciler_actions: IntCounterVec,
    key_hsm_mismatch: IntCounter,
    audit_records: IntCounter,
    store_errors: IntCounterVec,
    ledger_commit_seconds: Histogram,
    ledger_batch_rows: Histogram,
    status_list_sign_seconds: Histogram,
    auth_failures: IntCounterVec,
    rate_limited: IntCounterVec,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn histogram_vec(
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
}

impl Metrics {
    fn build() -> prometheus::Result<Self> {
        let sign_seconds = histogram_vec(
            "hsm_rotator_hsm_sign_duration_seconds",
            "Time of one signature in the HSM (session checkout and C_Sign), by JWS algorithm.",
            SIGN_BUCKETS,
            &["alg"],
        )?;
        let sign_by_alg = ALL
            .iter()
            .map(|a| sign_seconds.get_metric_with_label_values(&[a.as_str()]))
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(Self {
            http_requests: counter_vec(
                "hsm_rotator_http_requests_total",
                "HTTP requests answered, by route template, method and status.",
                &["route", "method", "status"],
            )?,
            http_seconds: histogram_vec(
                "hsm_rotator_http_request_duration_seconds",
                "Time to answer an HTTP request, by route template, method and status.",
                HTTP_BUCKETS,
                &["route", "method", "status"],
            )?,
            sign_seconds,
            sign_by_alg,
            pool_wait_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "hsm_rotator_hsm_pool_wait_seconds",
                    "Time an HSM operation waited for a free pooled session.",
                )
                .buckets(WAIT_BUCKETS.to_vec()),
            )?,
            pool_sessions: IntGauge::new(
                "hsm_rotator_hsm_pool_sessions",
                "Size of the HSM session pool.",
            )?,
            pool_in_use: IntGauge::new(
                "hsm_rotator_hsm_pool_sessions_in_use",
                "HSM sessions in use at scrape time.",
            )?,
            hsm_errors: counter_vec(
                "hsm_rotator_hsm_errors_total",
                "PKCS#11 calls that failed, by CKR code (or library/worker).",
                &["code"],
            )?,
            spare_keys: IntGaugeVec::new(
                Opts::new(
                    "hsm_rotator_spare_keys",
                    "Spare key pairs ready in the HSM, by algorithm and RSA modulus bits (0: not RSA).",
                ),
                &["alg", "rsa_bits"],
            )?,
            rotations: counter_vec(
                "hsm_rotator_rotations_total",
                "Key rotations, by kind (graceful, scheduled, emergency, repair).",
                &["kind"],
            )?,
            revocations: counter_vec(
                "hsm_rotator_revocations_total",
                "Revocations, by grain (token, subject, key, app).",
                &["grain"],
            )?,
            reconciler_actions: counter_vec(
                "hsm_rotator_reconciler_actions_total",
                "Repairs made by the reconciler, by action.",
                &["action"],
            )?,
            key_hsm_mismatch: IntCounter::new(
                "hsm_rotator_key_hsm_mismatch_total",
                "Live keys whose stored public key differs from the HSM's object for their kid (each refused, counted once per process).",
            )?,
            audit_records: IntCounter::new(
                "hsm_rotator_audit_records_appended_total",
                "Records appended to the hash-chained audit log.",
            )?,
            store_errors: counter_vec(
                "hsm_rotator_store_errors_total",
                "Store operations that failed, by kind (db, migrate, corrupt).",
                &["kind"],
            )?,
            ledger_commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "hsm_rotator_ledger_commit_duration_seconds",
                    "Time to write one batch of ledger rows (begin to commit); every issuance in the batch waits for it.",
                )
                .buckets(COMMIT_BUCKETS.to_vec()),
            )?,
            ledger_batch_rows: Histogram::with_opts(
                HistogramOpts::new(
                    "hsm_rotator_ledger_batch_rows",
                    "Ledger rows written in one transaction (issuances that were waiting together).",
                )
                .buckets(BATCH_BUCKETS.to_vec()),
            )?,
            status_list_sign_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "hsm_rotator_status_list_sign_duration_seconds",
                    "Time to sign one status list token in the HSM (issue 24).",
                )
                .buckets(COMMIT_BUCKETS.to_vec()),
            )?,
            auth_failures: counter_vec(
                "hsm_rotator_auth_failures_total",
                "Invalid or misplaced credentials, by what was presented (root_key, access_token, unrecognised, access_token_of_another_app, app_token_on_root_route, root_key_on_app_route).",
                &["credential"],
            )?,
            rate_limited: counter_vec(
                "hsm_rotator_rate_limited_total",
                "Requests answered 429, by the budget that ran out (auth_failures: a source's invalid credentials; key_changes: an app's rotations and revocations).",
                &["limit"],
            )?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.http_requests.clone()),
            Box::new(self.http_seconds.clone()),
            Box::new(self.sign_seconds.clone()),
            Box::new(self.pool_wait_seconds.clone()),
            Box::new(self.pool_sessions.clone()),
            Box::new(self.pool_in_use.clone()),
            Box::new(self.hsm_errors.clone()),
            Box::new(self.spare_keys.clone()),
            Box::new(self.rotations.clone()),
            Box::new(self.revocations.clone()),
            Box::new(self.reconciler_actions.clone()),
            Box::new(self.key_hsm_mismatch.clone()),
            Box::new(self.audit_records.clone()),
            Box::new(self.store_errors.clone()),
            Box::new(self.ledger_commit_seconds.clone()),
            Box::new(self.ledger_batch_rows.clone()),
            Box::new(self.status_list_sign_seconds.clone()),
            Box::new(self.auth_failures.clone()),
            Box::new(self.rate_limited.clone()),
        ]
    }
}

/// The process's instruments (`None` only if a metric definition were invalid, which the
/// unit tests rule out; recording is then a no-op rather than a panic).
static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| Metrics::build().ok());

fn m() -> Option<&'static Metrics> {
    METRICS.as_ref()
}

/// A registry exposing every instrument; one per application state.
///
/// # Errors
/// If the instruments could not be built or registered.
pub fn registry() -> prometheus::Result<Registry> {
    let metrics = m().ok_or_else(|| prometheus::Error::Msg("metrics unavailable".into()))?;
    let r = Registry::new();
    for c in metrics.collectors() {
        r.register(c)?;
    }
    Ok(r)
}

/// Prometheus text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One HTTP request answered. `route` is a template or [`UNMATCHED`].
pub fn http_request(route: &str, method: &str, status: &str, seconds: f64) {
    let Some(m) = m() else { return };
    let labels = [route, method, status];
    if let Ok(c) = m.http_requests.get_metric_with_label_values(&labels) {
        c.inc();
    }
    if let Ok(h) = m.http_seconds.get_metric_with_label_values(&labels) {
        h.observe(seconds);
    }
}

fn alg_index(alg: Algorithm) -> usize {
    match alg {
        Algorithm::RS256 => 0,
        Algorithm::RS384 => 1,
        Algorithm::RS512 => 2,
        Algorithm::PS256 => 3,
        Algorithm::PS384 => 4,
        Algorithm::PS512 => 5,
        Algorithm::ES256 => 6,
        Algorithm::ES384 => 7,
        Algorithm::ES512 => 8,
        Algorithm::EdDSA => 9,
    }
}

/// One HSM signature took `seconds` (hot path: atomics only).
pub fn hsm_sign(alg: Algorithm, seconds: f64) {
    if let Some(h) = m().and_then(|m| m.sign_by_alg.get(alg_index(alg))) {
        h.observe(seconds);
    }
}

/// An HSM operation waited `seconds` for a pooled session (hot path: atomics only).
pub fn hsm_pool_wait(seconds: f64) {
    if let Some(m) = m() {
        m.pool_wait_seconds.observe(seconds);
    }
}

/// A PKCS#11 call failed with `code` (a CKR name such as `DeviceRemoved`).
pub fn hsm_error(code: &str) {
    if let Some(c) = m().and_then(|m| m.hsm_errors.get_metric_with_label_values(&[code]).ok()) {
        c.inc();
    }
}

/// Pool size and sessions in use, read at scrape time.
pub fn set_hsm_pool(size: usize, in_use: usize) {
    if let Some(m) = m() {
        m.pool_sessions.set(i64::try_from(size).unwrap_or(i64::MAX));
        m.pool_in_use.set(i64::try_from(in_use).unwrap_or(i64::MAX));
    }
}

/// Spare keys per spec, read from the store at scrape time (specs not listed are dropped).
pub fn set_spare_keys(counts: &[(KeySpec, usize)]) {
    let Some(m) = m() else { return };
    m.spare_keys.reset();
    for (spec, n) in counts {
        let bits = spec.rsa_bits.to_string();
        if let Ok(g) = m
            .spare_keys
            .get_metric_with_label_values(&[spec.alg.as_str(), bits.as_str()])
        {
            g.set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }
}

/// A rotation of `kind`: `graceful`, `scheduled`, `emergency` or `repair`.
pub fn rotation(kind: &str) {
    if let Some(c) = m().and_then(|m| m.rotations.get_metric_with_label_values(&[kind]).ok()) {
        c.inc();
    }
}

/// A revocation of `grain`: `token`, `subject`, `key` or `app`.
pub fn revocation(grain: &str) {
    if let Some(c) = m().and_then(|m| m.revocations.get_metric_with_label_values(&[grain]).ok()) {
        c.inc();
    }
}

/// The reconciler made `n` repairs of `action`.
pub fn reconciler_actions(action: &str, n: usize) {
    if n == 0 {
        return;
    }
    if let Some(c) = m().and_then(|m| {
        m.reconciler_actions
            .get_metric_with_label_values(&[action])
            .ok()
    }) {
        c.inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }
}

/// A live key's stored public key differed from its HSM object (the key is refused).
pub fn key_hsm_mismatch() {
    if let Some(m) = m() {
        m.key_hsm_mismatch.inc();
    }
}

/// A record was appended to the audit log.
pub fn audit_appended() {
    if let Some(m) = m() {
        m.audit_records.inc();
    }
}

/// A store operation failed with an error of `kind` (`db`, `migrate`, `corrupt`).
pub fn store_error(kind: &str) {
    if let Some(c) = m().and_then(|m| m.store_errors.get_metric_with_label_values(&[kind]).ok()) {
        c.inc();
    }
}

/// The ledger writer committed `rows` rows in `seconds` (one transaction).
pub fn ledger_batch(rows: usize, seconds: f64) {
    if let Some(m) = m() {
        m.ledger_batch_rows.observe(rows as f64);
        m.ledger_commit_seconds.observe(seconds);
    }
}

/// A status list token was signed in `seconds`.
pub fn status_list_signed(seconds: f64) {
    if let Some(m) = m() {
        m.status_list_sign_seconds.observe(seconds);
    }
}

/// An invalid or misplaced credential of kind `credential` (a bounded set).
pub fn auth_failure(credential: &str) {
    if let Some(c) = m().and_then(|m| {
        m.auth_failures
            .get_metric_with_label_values(&[credential])
            .ok()
    }) {
        c.inc();
    }
}

/// A request answered 429 because `limit` ran out (`auth_failures`, `key_changes`).
pub fn rate_limited(limit: &str) {
    if let Some(c) = m().and_then(|m| m.rate_limited.get_metric_with_label_values(&[limit]).ok()) {
        c.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instrument_builds_and_registers() {
        assert!(m().is_some());
        let r = registry().unwrap();
        hsm_sign(Algorithm::EdDSA, 0.0001);
        let text = render(&r);
        assert!(text.contains("hsm_rotator_hsm_sign_duration_seconds_count{alg=\"EdDSA\"} 1"));
    }

    #[test]
    fn one_sign_handle_per_algorithm_in_order() {
        for (i, a) in ALL.iter().enumerate() {
            assert_eq!(alg_index(*a), i);
        }
        assert_eq!(m().unwrap().sign_by_alg.len(), ALL.len());
    }
}
