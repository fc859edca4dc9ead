//! The transaction layer's figures.

use std::time::Duration;

#[cfg(feature = "metrics")]
use super::describe;
#[cfg(feature = "metrics")]
use crate::metrics::names;

#[cfg(feature = "sqlx")]
/// The transaction layer's figures.
#[derive(Debug)]
pub(crate) struct TxFigures {
    /// `[read_only][committed]`: transactions and durations.
    #[cfg(feature = "metrics")]
    ended: [[(metrics::Counter, metrics::Histogram); 2]; 2],
    #[cfg(feature = "metrics")]
    retries: [metrics::Counter; TX_RETRY_REASONS.len()],
    #[cfg(feature = "metrics")]
    failures: [metrics::Counter; TxFailure::COUNT],
    #[cfg(feature = "metrics")]
    limit: metrics::Gauge,
}

/// The retry reasons' labels, in the order of `TxFigures::retried`'s index.
#[cfg(all(feature = "metrics", feature = "sqlx"))]
const TX_RETRY_REASONS: [&str; 5] = [
    "serialization_failure",
    "deadlock",
    "lock_wait_timeout",
    "busy",
    "connection_lost",
];

#[cfg(feature = "sqlx")]
/// Why the transaction layer answered a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxFailure {
    RetriesExhausted,
    Timeout,
    PoolExhausted,
    CommitFailed,
    CommitAmbiguous,
}

#[cfg(feature = "sqlx")]
impl TxFailure {
    #[cfg(feature = "metrics")]
    const COUNT: usize = 5;
    #[cfg(feature = "metrics")]
    const ALL: [TxFailure; TxFailure::COUNT] = [
        TxFailure::RetriesExhausted,
        TxFailure::Timeout,
        TxFailure::PoolExhausted,
        TxFailure::CommitFailed,
        TxFailure::CommitAmbiguous,
    ];

    #[cfg(feature = "metrics")]
    fn as_str(self) -> &'static str {
        match self {
            TxFailure::RetriesExhausted => "retries_exhausted",
            TxFailure::Timeout => "timeout",
            TxFailure::PoolExhausted => "pool_exhausted",
            TxFailure::CommitFailed => "commit_failed",
            TxFailure::CommitAmbiguous => "commit_ambiguous",
        }
    }
}

#[cfg(feature = "sqlx")]
impl Default for TxFigures {
    fn default() -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            let modes = ["read-write", "read-only"];
            let results = ["rollback", "commit"];
            TxFigures {
                ended: modes.map(|mode| {
                    results.map(|result| {
                        (
                            metrics::counter!(names::TX_TRANSACTIONS, "mode" => mode, "result" => result),
                            metrics::histogram!(names::TX_DURATION, "mode" => mode, "result" => result),
                        )
                    })
                }),
                retries: TX_RETRY_REASONS
                    .map(|reason| metrics::counter!(names::TX_RETRIES, "reason" => reason)),
                failures: TxFailure::ALL.map(|failure| {
                    metrics::counter!(names::TX_FAILURES, "reason" => failure.as_str())
                }),
                limit: metrics::gauge!(names::TX_LIMIT),
            }
        }
        #[cfg(not(feature = "metrics"))]
        TxFigures {}
    }
}

#[cfg(feature = "sqlx")]
impl TxFigures {
    pub(crate) fn ended(&self, read_only: bool, committed: bool, took: Duration) {
        #[cfg(feature = "metrics")]
        {
            let (count, duration) = &self.ended[usize::from(read_only)][usize::from(committed)];
            count.increment(1);
            duration.record(took.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (read_only, committed, took);
    }

    /// A replay, by the index of its reason in the stats' order (the same as
    /// `TX_RETRY_REASONS`).
    pub(crate) fn retried(&self, reason_index: usize) {
        #[cfg(feature = "metrics")]
        self.retries[reason_index].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = reason_index;
    }
    pub(crate) fn failed(&self, failure: TxFailure) {
        #[cfg(feature = "metrics")]
        self.failures[failure as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = failure;
    }
    pub(crate) fn limit(&self, limit: usize) {
        #[cfg(feature = "metrics")]
        self.limit.set(limit as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = limit;
    }
}
