//! Counters of the transaction layer and per-statement timings, read as one
//! [`TxStatsSnapshot`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::RetryReason;
use crate::instruments::{TxFailure, TxFigures};

/// Samples kept per timing for its percentiles (the most recent ones).
const WINDOW: usize = 1024;
/// Distinct SQL texts tracked; further statements are counted under [`OTHER_STATEMENTS`].
pub const MAX_STATEMENTS: usize = 256;
/// The key under which statements beyond [`MAX_STATEMENTS`] are aggregated.
pub const OTHER_STATEMENTS: &str = "<other statements>";
/// Slow statements kept in [`TxStatsSnapshot::slow_statements`].
pub const SLOW_KEPT: usize = 32;

#[derive(Debug, Default)]
struct Timing {
    count: u64,
    errors: u64,
    sum_us: u64,
    max_us: u64,
    recent: VecDeque<u64>,
}

impl Timing {
    fn record(&mut self, d: Duration, error: bool) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.count += 1;
        self.errors += u64::from(error);
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(us);
    }

    fn summary(&self) -> DurationSummary {
        let mut sorted: Vec<u64> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        let pct = |p: f64| -> u64 {
            if sorted.is_empty() {
                return 0;
            }
            let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[idx]
        };
        DurationSummary {
            count: self.count,
            mean_us: self.sum_us.checked_div(self.count).unwrap_or(0),
            p95_us: pct(0.95),
            p99_us: pct(0.99),
            max_us: self.max_us,
        }
    }
}

#[derive(Debug, Default)]
struct Statements {
    by_sql: HashMap<Arc<str>, Timing>,
    slow: VecDeque<SlowStatement>,
}

#[derive(Debug, Default)]
pub(crate) struct StatsInner {
    begun: AtomicU64,
    read_only: AtomicU64,
    autocommit: AtomicU64,
    committed: AtomicU64,
    rolled_back: AtomicU64,
    retried: [AtomicU64; 5],
    retries_exhausted: AtomicU64,
    pool_exhausted: AtomicU64,
    commit_failures: AtomicU64,
    ambiguous_commits: AtomicU64,
    timeouts: AtomicU64,
    active: AtomicI64,
    durations: Mutex<Timing>,
    hooks: Mutex<Timing>,
    statements: Mutex<Statements>,
    /// The same events on the `metrics` facade.
    figures: TxFigures,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the counters inconsistent beyond one sample.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn reason_index(r: RetryReason) -> usize {
    match r {
        RetryReason::SerializationFailure => 0,
        RetryReason::Deadlock => 1,
        RetryReason::LockWaitTimeout => 2,
        RetryReason::Busy => 3,
        RetryReason::ConnectionLost => 4,
    }
}

impl StatsInner {
    pub(crate) fn begun(&self, read_only: bool) {
        self.begun.fetch_add(1, Relaxed);
        if read_only {
            self.read_only.fetch_add(1, Relaxed);
        }
        self.active.fetch_add(1, Relaxed);
    }
    pub(crate) fn autocommit(&self) {
        self.autocommit.fetch_add(1, Relaxed);
    }
    pub(crate) fn ended(&self, read_only: bool, committed: bool, took: Duration) {
        self.figures.ended(read_only, committed, took);
        self.active.fetch_sub(1, Relaxed);
        if committed {
            self.committed.fetch_add(1, Relaxed);
        } else {
            self.rolled_back.fetch_add(1, Relaxed);
        }
        lock(&self.durations).record(took, !committed);
    }
    pub(crate) fn hooks_ran(&self, took: Duration) {
        lock(&self.hooks).record(took, false);
    }
    pub(crate) fn retried(&self, reason: RetryReason) {
        self.retried[reason_index(reason)].fetch_add(1, Relaxed);
        self.figures.retried(reason_index(reason));
    }
    pub(crate) fn retries_exhausted(&self) {
        self.retries_exhausted.fetch_add(1, Relaxed);
        self.figures.failed(TxFailure::RetriesExhausted);
    }
    pub(crate) fn pool_exhausted(&self) {
        self.pool_exhausted.fetch_add(1, Relaxed);
        self.figures.failed(TxFailure::PoolExhausted);
    }
    pub(crate) fn commit_failed(&self, ambiguous: bool) {
        if ambiguous {
            self.ambiguous_commits.fetch_add(1, Relaxed);
            self.figures.failed(TxFailure::CommitAmbiguous);
        } else {
            self.commit_failures.fetch_add(1, Relaxed);
            self.figures.failed(TxFailure::CommitFailed);
        }
    }
    pub(crate) fn timed_out(&self) {
        self.timeouts.fetch_add(1, Relaxed);
        self.figures.failed(TxFailure::Timeout);
    }
    /// The adaptive limit's new value.
    pub(crate) fn limit(&self, limit: usize) {
        self.figures.limit(limit);
    }

    pub(crate) fn statement(&self, sql: &str, took: Duration, error: bool, slow: Duration) {
        let mut st = lock(&self.statements);
        if let Some(timing) = st.by_sql.get_mut(sql) {
            timing.record(took, error);
        } else {
            let key = if st.by_sql.len() < MAX_STATEMENTS {
                sql
            } else {
                OTHER_STATEMENTS
            };
            st.by_sql
                .entry(Arc::from(key))
                .or_default()
                .record(took, error);
        }
        if took >= slow {
            tracing::warn!(
                target: "tower_strata::tx",
                sql,
                duration_ms = took.as_secs_f64() * 1e3,
                error,
                "slow statement"
            );
            if st.slow.len() == SLOW_KEPT {
                st.slow.pop_front();
            }
            st.slow.push_back(SlowStatement {
                sql: sql.to_owned(),
                duration_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                error,
                at_unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            });
        }
    }
}

/// A handle on a layer's statistics; cheap to clone. Get it from
/// [`TxLayer::stats`](super::TxLayer::stats).
#[derive(Debug, Clone, Default)]
pub struct TxStats {
    pub(crate) inner: Arc<StatsInner>,
}

impl TxStats {
    /// A consistent-enough copy of every counter (each read atomically, not all at once).
    pub fn snapshot(&self) -> TxStatsSnapshot {
        let i = &self.inner;
        let r = |k: usize| i.retried[k].load(Relaxed);
        let statements = lock(&i.statements);
        let mut per: Vec<StatementStats> = statements
            .by_sql
            .iter()
            .map(|(sql, t)| {
                let s = t.summary();
                StatementStats {
                    sql: sql.to_string(),
                    count: s.count,
                    errors: t.errors,
                    mean_us: s.mean_us,
                    p95_us: s.p95_us,
                    p99_us: s.p99_us,
                    max_us: s.max_us,
                }
            })
            .collect();
        per.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.sql.cmp(&b.sql)));
        let slow = statements.slow.iter().cloned().collect();
        drop(statements);
        TxStatsSnapshot {
            begun: i.begun.load(Relaxed),
            read_only: i.read_only.load(Relaxed),
            autocommit: i.autocommit.load(Relaxed),
            committed: i.committed.load(Relaxed),
            rolled_back: i.rolled_back.load(Relaxed),
            retried: RetriedByReason {
                serialization_failure: r(0),
                deadlock: r(1),
                lock_wait_timeout: r(2),
                busy: r(3),
                connection_lost: r(4),
            },
            retries_exhausted: i.retries_exhausted.load(Relaxed),
            pool_exhausted: i.pool_exhausted.load(Relaxed),
            commit_failures: i.commit_failures.load(Relaxed),
            ambiguous_commits: i.ambiguous_commits.load(Relaxed),
            timeouts: i.timeouts.load(Relaxed),
            active: i.active.load(Relaxed).max(0) as u64,
            duration: lock(&i.durations).summary(),
            after_commit: lock(&i.hooks).summary(),
            statements: per,
            slow_statements: slow,
        }
    }
}

/// Retries counted by their reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetriedByReason {
    /// PostgreSQL `40001`.
    pub serialization_failure: u64,
    /// PostgreSQL `40P01`, MySQL 1213.
    pub deadlock: u64,
    /// MySQL 1205 (when configured retryable).
    pub lock_wait_timeout: u64,
    /// SQLite busy / locked.
    pub busy: u64,
    /// A connection lost before `COMMIT` was sent.
    pub connection_lost: u64,
}

impl RetriedByReason {
    /// All retries.
    pub fn total(&self) -> u64 {
        self.serialization_failure
            + self.deadlock
            + self.lock_wait_timeout
            + self.busy
            + self.connection_lost
    }
}

/// Count and latency of a set of timings, in microseconds. Percentiles cover the most recent
/// 1,024 samples; count, mean and max cover all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DurationSummary {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// Timings of one SQL text (as written, parameters not substituted) run through a handle.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatementStats {
    /// The SQL text, or [`OTHER_STATEMENTS`].
    pub sql: String,
    /// Executions.
    pub count: u64,
    /// Executions that returned an error.
    pub errors: u64,
    /// Mean duration.
    pub mean_us: u64,
    /// 95th percentile over the recent window.
    pub p95_us: u64,
    /// 99th percentile over the recent window.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// One statement slower than [`TxConfig::slow_statement`](super::TxConfig::slow_statement).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlowStatement {
    /// The SQL text.
    pub sql: String,
    /// How long it took.
    pub duration_us: u64,
    /// Whether it failed.
    pub error: bool,
    /// When it finished, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// Everything the layer counted, ready to serialize into a health or metrics report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TxStatsSnapshot {
    /// Transactions begun (requests that never touched the database are not counted).
    pub begun: u64,
    /// Of [`begun`](Self::begun), the read-only ones
    /// ([`TxMode::ReadOnly`](super::TxMode::ReadOnly)).
    pub read_only: u64,
    /// Attempts that worked without a transaction
    /// ([`TxMode::Autocommit`](super::TxMode::Autocommit)) and borrowed at least one
    /// connection; counted apart from transactions, never in `begun`, `committed` or
    /// `rolled_back`. Their statements are timed in [`statements`](Self::statements) like
    /// any other.
    pub autocommit: u64,
    /// Transactions committed.
    pub committed: u64,
    /// Transactions rolled back (including failed commits and retried attempts).
    pub rolled_back: u64,
    /// Attempts replayed, by reason.
    pub retried: RetriedByReason,
    /// Requests answered `503` because retries ran out (attempts, deadline or a body that
    /// cannot be replayed).
    pub retries_exhausted: u64,
    /// Requests answered `503` because no connection came within the pool's acquire timeout.
    pub pool_exhausted: u64,
    /// Commits that failed with a definite error (answered `500`).
    pub commit_failures: u64,
    /// Commits whose outcome is unknown because the connection was lost (answered `502`).
    pub ambiguous_commits: u64,
    /// Attempts cut by the transaction timeout.
    pub timeouts: u64,
    /// Transactions open right now.
    pub active: u64,
    /// Duration of finished transactions, from `BEGIN` to the end of `COMMIT`/`ROLLBACK`.
    pub duration: DurationSummary,
    /// Time spent running each request's after-commit hooks (requests that registered
    /// some), after the commit and before the response: part of a write's latency, not of
    /// its transaction's.
    pub after_commit: DurationSummary,
    /// Per-statement timings, most executed first.
    pub statements: Vec<StatementStats>,
    /// The most recent slow statements, oldest first.
    pub slow_statements: Vec<SlowStatement>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_bound() {
        let s = TxStats::default();
        for i in 1..=100u64 {
            s.inner.statement(
                "SELECT 1",
                Duration::from_micros(i),
                i == 100,
                Duration::MAX,
            );
        }
        for i in 0..(MAX_STATEMENTS + 10) {
            s.inner.statement(
                &format!("SELECT {i}"),
                Duration::from_micros(1),
                false,
                Duration::MAX,
            );
        }
        let snap = s.snapshot();
        assert_eq!(snap.statements.len(), MAX_STATEMENTS + 1);
        let one = snap
            .statements
            .iter()
            .find(|s| s.sql == "SELECT 1")
            .unwrap();
        assert_eq!(one.count, 101);
        assert_eq!(one.errors, 1);
        assert_eq!(one.max_us, 100);
        assert_eq!(one.p99_us, 99);
        assert!(
            snap.statements
                .iter()
                .any(|s| s.sql == OTHER_STATEMENTS && s.count > 0)
        );
        assert!(snap.slow_statements.is_empty());
    }

    #[test]
    fn slow_statements_are_bounded() {
        let s = TxStats::default();
        for i in 0..(SLOW_KEPT + 5) {
            s.inner.statement(
                &format!("q{i}"),
                Duration::from_millis(5),
                false,
                Duration::from_millis(1),
            );
        }
        let snap = s.snapshot();
        assert_eq!(snap.slow_statements.len(), SLOW_KEPT);
        assert_eq!(
            snap.slow_statements.last().unwrap().sql,
            format!("q{}", SLOW_KEPT + 4)
        );
        let _ = serde_json::to_string(&snap).unwrap();
    }
}
