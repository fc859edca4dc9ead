//! What the cache tells an operator while its store fails: the transition into failing, a
//! summary at most every [`SUMMARY_EVERY`] while it lasts, and the transition out, whatever the
//! traffic. Every store failure of every step is reported here (and counted in
//! [`CacheStats::store_errors`](super::CacheStats::store_errors)), never logged where it
//! happens: a line per request in an outage drowns the logs that matter.

use std::fmt::Display;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// The longest the cache stays silent while its store keeps failing.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// How long the store must go without a failure before the outage counts as over. A store
/// that fails only in part (one Cluster master down, its keys failing and the others
/// answering) would otherwise start and end an outage on every other request.
pub(crate) const QUIET_BEFORE_END: Duration = Duration::from_secs(2);

/// What the cache asked of the store when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreOp {
    /// A lookup: the request went upstream without the cache.
    Read,
    /// A write of a fetched response: dropped.
    Write,
    /// An invalidation (unsafe method, refresh that found the page gone): its entries expire
    /// with their TTL instead.
    Invalidate,
    /// The distributed lease: the miss went upstream without it.
    Lease,
}

impl StoreOp {
    const ALL: [StoreOp; 4] = [
        StoreOp::Read,
        StoreOp::Write,
        StoreOp::Invalidate,
        StoreOp::Lease,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Failures since the last line, per operation, and when that line was written.
pub(crate) struct Outage {
    failing: AtomicBool,
    since_report: [AtomicU64; 4],
    total: [AtomicU64; 4],
    last_line: Mutex<Option<Instant>>,
    /// When the last failure was, in milliseconds after `base`.
    last_failure: AtomicU64,
    base: Instant,
}

impl Default for Outage {
    fn default() -> Self {
        Outage {
            failing: AtomicBool::new(false),
            since_report: Default::default(),
            total: Default::default(),
            last_line: Mutex::new(None),
            last_failure: AtomicU64::new(0),
            base: Instant::now(),
        }
    }
}

impl std::fmt::Debug for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outage")
            .field("failing", &self.failing.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Outage {
    /// Reports one failed store call: logs the start of an outage, or a summary when the last
    /// line is [`SUMMARY_EVERY`] old; otherwise only counts.
    pub(crate) fn failed(&self, op: StoreOp, error: &dyn Display) {
        self.since_report[op.index()].fetch_add(1, Relaxed);
        self.total[op.index()].fetch_add(1, Relaxed);
        let now = Instant::now();
        self.last_failure.store(self.millis(now), Relaxed);
        let started = !self.failing.swap(true, Relaxed);
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if started {
            *last = Some(now);
            self.take_since_report();
            tracing::warn!(
                %error,
                op = ?op,
                "cache store failing; requests pass through to the service, writes are dropped"
            );
            return;
        }
        if last.is_some_and(|at| now.duration_since(at) < SUMMARY_EVERY) {
            return;
        }
        *last = Some(now);
        let [reads, writes, invalidations, leases] = self.take_since_report();
        tracing::warn!(
            %error,
            passed_through = reads,
            writes_dropped = writes,
            invalidations_failed = invalidations,
            leases_failed = leases,
            "cache store still failing"
        );
    }

    /// Reports a store call that succeeded: logs the end of an outage, once, when the store
    /// has not failed for [`QUIET_BEFORE_END`]. One relaxed load when there is no outage.
    pub(crate) fn succeeded(&self) {
        if !self.failing.load(Relaxed) {
            return;
        }
        let quiet = self
            .millis(Instant::now())
            .saturating_sub(self.last_failure.load(Relaxed));
        if quiet < QUIET_BEFORE_END.as_millis() as u64 || !self.failing.swap(false, Relaxed) {
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        *last = None;
        let [reads, writes, invalidations, leases] = self.take_since_report();
        let [total_reads, total_writes, total_invalidations, total_leases] =
            StoreOp::ALL.map(|op| self.total[op.index()].swap(0, Relaxed));
        tracing::info!(
            passed_through = reads,
            writes_dropped = writes,
            invalidations_failed = invalidations,
            leases_failed = leases,
            outage_passed_through = total_reads,
            outage_writes_dropped = total_writes,
            outage_invalidations_failed = total_invalidations,
            outage_leases_failed = total_leases,
            "cache store answering again"
        );
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    fn take_since_report(&self) -> [u64; 4] {
        StoreOp::ALL.map(|op| self.since_report[op.index()].swap(0, Relaxed))
    }

    /// Whether the store is failing now (its last call failed).
    #[cfg(test)]
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_to_start_one_per_interval_and_one_to_end() {
        let outage = Outage::default();
        outage.succeeded();
        assert!(!outage.is_failing());
        outage.failed(StoreOp::Read, &"down");
        assert!(outage.is_failing());
        for _ in 0..1_000 {
            outage.failed(StoreOp::Write, &"down");
        }
        // Nothing since the first line was reported: the counts wait for the summary.
        assert_eq!(
            outage.since_report[StoreOp::Write.index()].load(Relaxed),
            1_000
        );
        tokio::time::advance(SUMMARY_EVERY).await;
        outage.failed(StoreOp::Read, &"down");
        assert_eq!(outage.since_report[StoreOp::Write.index()].load(Relaxed), 0);
        // A store failing in part (one Cluster master): successes between failures do not
        // end the outage.
        for _ in 0..100 {
            outage.succeeded();
            outage.failed(StoreOp::Read, &"one node down");
        }
        assert!(outage.is_failing());
        tokio::time::advance(QUIET_BEFORE_END).await;
        outage.succeeded();
        assert!(!outage.is_failing());
        assert_eq!(outage.total[StoreOp::Write.index()].load(Relaxed), 0);
    }
}
