//! The figures the store, transaction, purge and warming code records on the `metrics` facade
//! (their names are in `metrics::names`), behind one small API that is empty without feature
//! `metrics`: recording sites carry no `cfg`, and without the feature every call compiles to
//! nothing.
//!
//! Handles are registered when the component is built (a Redis operation's, the first time it
//! runs), so recording is an atomic add in the recorder, never a key lookup; with no recorder
//! installed a handle is a no-op and recording is one branch. The price: a recorder installed
//! after a component was built is not seen by it (documented in `metrics::names`).

#[cfg(all(feature = "metrics", feature = "redis"))]
use std::sync::OnceLock;
#[cfg(any(feature = "redis", feature = "sqlx"))]
use std::time::Duration;

#[cfg(feature = "metrics")]
use metrics::Unit;

#[cfg(feature = "metrics")]
use crate::metrics::names;
#[cfg(feature = "purge")]
use crate::store::PurgeMode;
#[cfg(feature = "redis")]
use crate::store::{BreakerState, StoreError};

#[cfg(feature = "redis")]
/// How a store call ended, as the `result` label spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallResult {
    Ok,
    /// An answer that is an error, a refused value, a lost connection.
    Error,
    Timeout,
    /// Refused at once by an open circuit breaker: nothing was sent.
    BreakerOpen,
    /// A read the caller stopped waiting for (the read soft timeout); the read itself goes on
    /// in the background and is counted again when it ends.
    SoftTimeout,
}

#[cfg(feature = "redis")]
impl CallResult {
    #[cfg(feature = "metrics")]
    const COUNT: usize = 5;

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CallResult::Ok => "ok",
            CallResult::Error => "error",
            CallResult::Timeout => "timeout",
            CallResult::BreakerOpen => "breaker-open",
            CallResult::SoftTimeout => "soft-timeout",
        }
    }

    pub(crate) fn of<T>(result: &Result<T, StoreError>) -> CallResult {
        match result {
            Ok(_) => CallResult::Ok,
            Err(StoreError::Timeout { .. }) => CallResult::Timeout,
            Err(StoreError::CircuitOpen { .. }) => CallResult::BreakerOpen,
            Err(_) => CallResult::Error,
        }
    }
}

/// Registers the descriptions (unit and help text) of every figure of this module, once per
/// process, with the recorder installed at the time.
#[cfg(feature = "metrics")]
pub(crate) fn describe() {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(|| {
        use metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            names::CACHE_REQUESTS,
            Unit::Count,
            "Requests the response cache answered, by Cache-Status outcome."
        );
        describe_counter!(
            names::CACHE_STORED_BYTES,
            Unit::Bytes,
            "Bytes of responses the cache stored."
        );
        describe_counter!(
            names::CACHE_STORED_ENTRIES,
            Unit::Count,
            "Responses the cache stored."
        );
        describe_counter!(
            names::STORE_OPERATIONS,
            Unit::Count,
            "Store calls by backend, operation and result."
        );
        describe_histogram!(
            names::STORE_DURATION,
            Unit::Seconds,
            "Duration of remote store calls."
        );
        describe_counter!(
            names::STORE_NODE_CALLS,
            Unit::Count,
            "Calls to each Redis Cluster master."
        );
        describe_histogram!(
            names::STORE_NODE_DURATION,
            Unit::Seconds,
            "Duration of calls to each Redis Cluster master."
        );
        describe_gauge!(
            names::STORE_BREAKER_STATE,
            Unit::Count,
            "Circuit breaker state: 0 closed, 1 half-open, 2 open."
        );
        describe_counter!(
            names::STORE_BREAKER_OPENINGS,
            Unit::Count,
            "Times a circuit breaker opened."
        );
        describe_gauge!(
            names::STORE_L1_IN_USE,
            Unit::Count,
            "Whether the tiered store's L1 answers reads (1) or not (0)."
        );
        describe_gauge!(
            names::STORE_INVALIDATIONS_QUEUED,
            Unit::Count,
            "Invalidations waiting to be replayed on Redis."
        );
        describe_counter!(
            names::PURGE_REQUESTS,
            Unit::Count,
            "Purges by kind, mode and result."
        );
        describe_counter!(
            names::PURGE_ENTRIES,
            Unit::Count,
            "Entries purged (removed or marked stale)."
        );
        describe_counter!(
            names::TX_TRANSACTIONS,
            Unit::Count,
            "Database transactions ended, by mode and result."
        );
        describe_histogram!(
            names::TX_DURATION,
            Unit::Seconds,
            "Duration of database transactions, BEGIN to the end of COMMIT or ROLLBACK."
        );
        describe_counter!(
            names::TX_RETRIES,
            Unit::Count,
            "Requests replayed by the transaction layer, by reason."
        );
        describe_counter!(
            names::TX_FAILURES,
            Unit::Count,
            "Requests the transaction layer failed, by reason."
        );
        describe_gauge!(
            names::TX_LIMIT,
            Unit::Count,
            "Read-write transactions the adaptive limit admits at once."
        );
        describe_counter!(names::WARM_RUNS, Unit::Count, "Cache warming runs.");
        describe_counter!(
            names::WARM_REQUESTS,
            Unit::Count,
            "Cache warming requests by result."
        );
    });
}

#[cfg(feature = "redis")]
/// Operations of one remote store (Redis or a Cluster) by name: their counters and durations,
/// registered the first time each (operation, result) occurs. The operations are the store's
/// `&'static str` names (a bounded set written in its code); each finds its handles by a
/// short scan of pointer-sized slots, lock-free.
#[derive(Debug)]
pub(crate) struct RemoteOps {
    #[cfg(feature = "metrics")]
    backend: &'static str,
    #[cfg(feature = "metrics")]
    slots: Box<[OnceLock<OpHandles>; OP_SLOTS]>,
}

/// More than the Redis store's distinct operation names; any beyond share the last slot.
#[cfg(all(feature = "metrics", feature = "redis"))]
const OP_SLOTS: usize = 32;

#[cfg(all(feature = "metrics", feature = "redis"))]
#[derive(Debug)]
struct OpHandles {
    op: &'static str,
    label: String,
    by_result: [OnceLock<(metrics::Counter, metrics::Histogram)>; CallResult::COUNT],
}

#[cfg(feature = "redis")]
impl RemoteOps {
    pub(crate) fn new(backend: &'static str) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            RemoteOps {
                backend,
                slots: Box::new(std::array::from_fn(|_| OnceLock::new())),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = backend;
            RemoteOps {}
        }
    }

    /// Counts a call of `op` and, when it was timed, its duration.
    #[inline]
    pub(crate) fn record(&self, op: &'static str, result: CallResult, took: Option<Duration>) {
        #[cfg(feature = "metrics")]
        {
            let handles = self.handles(op);
            let (calls, duration) = handles.by_result[result as usize].get_or_init(|| {
                let labels = [
                    ("backend", self.backend.to_owned()),
                    ("operation", handles.label.clone()),
                    ("result", result.as_str().to_owned()),
                ];
                (
                    metrics::counter!(names::STORE_OPERATIONS, &labels),
                    metrics::histogram!(names::STORE_DURATION, &labels),
                )
            });
            calls.increment(1);
            if let Some(took) = took {
                duration.record(took.as_secs_f64());
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (op, result, took);
    }

    #[cfg(feature = "metrics")]
    fn handles(&self, op: &'static str) -> &OpHandles {
        let make = || OpHandles {
            op,
            // `soft purge read` reads `soft_purge_read` in a query.
            label: op.replace(' ', "_"),
            by_result: std::array::from_fn(|_| OnceLock::new()),
        };
        for slot in self.slots.iter() {
            let handles = slot.get_or_init(make);
            if handles.op == op {
                return handles;
            }
        }
        // Unreachable with the store's operations; counted with the last one rather than lost.
        let last = &self.slots[OP_SLOTS - 1];
        last.get_or_init(make)
    }
}

#[cfg(feature = "memory")]
/// The in-process store's operation counters (no durations: a call takes less than the two
/// clock reads that would time it).
#[derive(Debug)]
pub(crate) struct LocalOps {
    #[cfg(feature = "metrics")]
    counters: [metrics::Counter; LocalOp::COUNT],
}

#[cfg(feature = "memory")]
/// What the in-process store counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LocalOp {
    Get,
    Set,
    Delete,
    Purge,
}

#[cfg(feature = "memory")]
impl LocalOp {
    #[cfg(feature = "metrics")]
    const COUNT: usize = 4;
    #[cfg(feature = "metrics")]
    const ALL: [LocalOp; LocalOp::COUNT] =
        [LocalOp::Get, LocalOp::Set, LocalOp::Delete, LocalOp::Purge];

    #[cfg(feature = "metrics")]
    fn as_str(self) -> &'static str {
        match self {
            LocalOp::Get => "get",
            LocalOp::Set => "set",
            LocalOp::Delete => "delete",
            LocalOp::Purge => "purge",
        }
    }
}

#[cfg(feature = "memory")]
impl LocalOps {
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            LocalOps {
                counters: LocalOp::ALL.map(|op| {
                    metrics::counter!(
                        names::STORE_OPERATIONS,
                        "backend" => "memory",
                        "operation" => op.as_str(),
                        "result" => "ok"
                    )
                }),
            }
        }
        #[cfg(not(feature = "metrics"))]
        LocalOps {}
    }

    #[inline]
    pub(crate) fn count(&self, op: LocalOp) {
        #[cfg(feature = "metrics")]
        self.counters[op as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = op;
    }
}

#[cfg(feature = "redis-cluster")]
/// One Redis Cluster master's calls and their durations.
#[derive(Debug)]
pub(crate) struct NodeCalls {
    #[cfg(feature = "metrics")]
    node: String,
    #[cfg(feature = "metrics")]
    calls: [OnceLock<metrics::Counter>; CallResult::COUNT],
    #[cfg(feature = "metrics")]
    duration: metrics::Histogram,
}

#[cfg(feature = "redis-cluster")]
impl NodeCalls {
    pub(crate) fn new(node: String) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            NodeCalls {
                duration: metrics::histogram!(names::STORE_NODE_DURATION, "node" => node.clone()),
                node,
                calls: std::array::from_fn(|_| OnceLock::new()),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = node;
            NodeCalls {}
        }
    }

    #[inline]
    pub(crate) fn record(&self, result: CallResult, took: Duration) {
        #[cfg(feature = "metrics")]
        {
            self.calls[result as usize]
                .get_or_init(|| {
                    metrics::counter!(
                        names::STORE_NODE_CALLS,
                        "node" => self.node.clone(),
                        "result" => result.as_str()
                    )
                })
                .increment(1);
            self.duration.record(took.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (result, took);
    }
}

#[cfg(feature = "redis")]
/// A circuit breaker's state gauge and openings counter.
#[derive(Debug)]
pub(crate) struct BreakerFigures {
    #[cfg(feature = "metrics")]
    state: metrics::Gauge,
    #[cfg(feature = "metrics")]
    openings: metrics::Counter,
}

#[cfg(feature = "redis")]
impl BreakerFigures {
    /// Registered closed.
    pub(crate) fn new(breaker: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            let figures = BreakerFigures {
                state: metrics::gauge!(names::STORE_BREAKER_STATE, "breaker" => breaker.to_owned()),
                openings: metrics::counter!(
                    names::STORE_BREAKER_OPENINGS,
                    "breaker" => breaker.to_owned()
                ),
            };
            figures.state(BreakerState::Closed);
            figures
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = breaker;
            BreakerFigures {}
        }
    }
    pub(crate) fn state(&self, state: BreakerState) {
        #[cfg(feature = "metrics")]
        self.state.set(match state {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        });
        #[cfg(not(feature = "metrics"))]
        let _ = state;
    }
    pub(crate) fn opened(&self) {
        #[cfg(feature = "metrics")]
        {
            self.openings.increment(1);
            self.state(BreakerState::Open);
        }
    }
}

#[cfg(all(feature = "memory", feature = "redis"))]
/// A tiered store's state, sampled (it is derived from the backplane, the breaker and the
/// replay queue, so no single place changes it).
#[derive(Debug)]
pub(crate) struct TieredGauges {
    #[cfg(feature = "metrics")]
    l1_in_use: metrics::Gauge,
    #[cfg(feature = "metrics")]
    queued: metrics::Gauge,
}

#[cfg(all(feature = "memory", feature = "redis"))]
impl TieredGauges {
    /// Whether sampling is worth a task: only with feature `metrics`.
    pub(crate) const ENABLED: bool = cfg!(feature = "metrics");
    /// How often a tiered store samples its gauges.
    pub(crate) const PERIOD: Duration = Duration::from_secs(1);
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            TieredGauges {
                l1_in_use: metrics::gauge!(names::STORE_L1_IN_USE),
                queued: metrics::gauge!(names::STORE_INVALIDATIONS_QUEUED),
            }
        }
        #[cfg(not(feature = "metrics"))]
        TieredGauges {}
    }
    pub(crate) fn sample(&self, l1_in_use: bool, queued: u64) {
        #[cfg(feature = "metrics")]
        {
            self.l1_in_use.set(f64::from(u8::from(l1_in_use)));
            self.queued.set(queued as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (l1_in_use, queued);
    }
}

#[cfg(feature = "purge")]
/// What a purge named, as the `kind` label spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PurgeKind {
    Key,
    Tag,
    Pattern,
    All,
}

#[cfg(feature = "purge")]
impl PurgeKind {
    #[cfg(feature = "metrics")]
    const COUNT: usize = 4;

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PurgeKind::Key => "key",
            PurgeKind::Tag => "tag",
            PurgeKind::Pattern => "pattern",
            PurgeKind::All => "all",
        }
    }
}

#[cfg(feature = "purge")]
pub(crate) fn purge_mode_str(mode: PurgeMode) -> &'static str {
    match mode {
        PurgeMode::Hard => "hard",
        PurgeMode::Soft => "soft",
    }
}

#[cfg(feature = "purge")]
/// Purges by kind, mode and result, and the entries they purged.
#[derive(Debug)]
pub(crate) struct PurgeFigures {
    /// `[kind][soft][failed]`
    #[cfg(feature = "metrics")]
    requests: [[[metrics::Counter; 2]; 2]; PurgeKind::COUNT],
    /// `[kind][soft]`
    #[cfg(feature = "metrics")]
    entries: [[metrics::Counter; 2]; PurgeKind::COUNT],
}

#[cfg(feature = "purge")]
impl PurgeFigures {
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            let kinds = [
                PurgeKind::Key,
                PurgeKind::Tag,
                PurgeKind::Pattern,
                PurgeKind::All,
            ];
            let modes = [PurgeMode::Hard, PurgeMode::Soft];
            PurgeFigures {
                requests: kinds.map(|kind| {
                    modes.map(|mode| {
                        ["ok", "error"].map(|result| {
                            metrics::counter!(
                                names::PURGE_REQUESTS,
                                "kind" => kind.as_str(),
                                "mode" => purge_mode_str(mode),
                                "result" => result
                            )
                        })
                    })
                }),
                entries: kinds.map(|kind| {
                    modes.map(|mode| {
                        metrics::counter!(
                            names::PURGE_ENTRIES,
                            "kind" => kind.as_str(),
                            "mode" => purge_mode_str(mode)
                        )
                    })
                }),
            }
        }
        #[cfg(not(feature = "metrics"))]
        PurgeFigures {}
    }

    /// One purge: `Some(entries)` when it succeeded.
    pub(crate) fn record(&self, kind: PurgeKind, mode: PurgeMode, purged: Option<u64>) {
        #[cfg(feature = "metrics")]
        {
            let (k, soft) = (kind as usize, usize::from(mode == PurgeMode::Soft));
            self.requests[k][soft][usize::from(purged.is_none())].increment(1);
            if let Some(n) = purged {
                self.entries[k][soft].increment(n);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (kind, mode, purged);
    }
}

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

#[cfg(feature = "warm")]
/// Warming runs and requests.
#[derive(Debug)]
pub(crate) struct WarmFigures {
    /// `[failed]`
    #[cfg(feature = "metrics")]
    runs: [metrics::Counter; 2],
    /// ok, failed, timeout
    #[cfg(feature = "metrics")]
    requests: [metrics::Counter; 3],
}

#[cfg(feature = "warm")]
impl Default for WarmFigures {
    fn default() -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            WarmFigures {
                runs: ["ok", "failed"]
                    .map(|result| metrics::counter!(names::WARM_RUNS, "result" => result)),
                requests: ["ok", "failed", "timeout"]
                    .map(|result| metrics::counter!(names::WARM_REQUESTS, "result" => result)),
            }
        }
        #[cfg(not(feature = "metrics"))]
        WarmFigures {}
    }
}

#[cfg(feature = "warm")]
impl WarmFigures {
    /// One run: requests that succeeded, failed otherwise, and timed out; whether anything
    /// failed (a source included).
    pub(crate) fn run(&self, succeeded: u64, failed: u64, timed_out: u64, any_failure: bool) {
        #[cfg(feature = "metrics")]
        {
            self.runs[usize::from(any_failure)].increment(1);
            self.requests[0].increment(succeeded);
            self.requests[1].increment(failed.saturating_sub(timed_out));
            self.requests[2].increment(timed_out);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (succeeded, failed, timed_out, any_failure);
    }
}

#[cfg(feature = "cache")]
/// The response cache's figures: requests by outcome (the labels of `cache::status::Outcome`'s
/// figures), and what fills stored.
pub(crate) struct CacheFigures {
    #[cfg(feature = "metrics")]
    requests: Vec<metrics::Counter>,
    #[cfg(feature = "metrics")]
    stored_bytes: metrics::Counter,
    #[cfg(feature = "metrics")]
    stored_entries: metrics::Counter,
}

#[cfg(feature = "cache")]
impl CacheFigures {
    /// Registers a counter per `(outcome, reason)` label pair.
    pub(crate) fn new(labels: &[(&'static str, &'static str)]) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            CacheFigures {
                requests: labels
                    .iter()
                    .map(|&(outcome, reason)| {
                        metrics::counter!(
                            names::CACHE_REQUESTS,
                            "outcome" => outcome,
                            "reason" => reason
                        )
                    })
                    .collect(),
                stored_bytes: metrics::counter!(names::CACHE_STORED_BYTES),
                stored_entries: metrics::counter!(names::CACHE_STORED_ENTRIES),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = labels;
            CacheFigures {}
        }
    }

    /// A request with the outcome at `figure` in the labels given to [`CacheFigures::new`].
    #[inline]
    pub(crate) fn request(&self, figure: usize) {
        #[cfg(feature = "metrics")]
        if let Some(counter) = self.requests.get(figure) {
            counter.increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = figure;
    }

    /// A fill stored `bytes` (its encoded size).
    pub(crate) fn stored(&self, bytes: usize) {
        #[cfg(feature = "metrics")]
        {
            self.stored_bytes.increment(bytes as u64);
            self.stored_entries.increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = bytes;
    }
}
