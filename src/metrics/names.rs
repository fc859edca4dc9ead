//! The names of the figures every capability records on the `metrics` facade, beside the HTTP
//! ones of [`MetricsLayer`](super::MetricsLayer). Dotted, OpenTelemetry style (a Prometheus
//! exporter renders the dots as underscores and adds `_total` to counters); `docs/metrics.md`
//! has the table with units and labels. Every label set is bounded: no key, URL or tag is ever
//! a label value.
//!
//! The store, transaction, purge and warming figures are registered when their component is
//! built (a store, a `TxLayer`, a `Purger`, a `Warmer`), so install the recorder first: a
//! handle registered while no recorder is installed records nothing, ever.

/// Requests the response cache answered, counter labelled `outcome` (`hit`, `stale`,
/// `coalesced`, `miss`, `bypass`, `pass`: what `Cache-Status` shows) and `reason` (a small
/// bounded set, see `Cache-Status`). Recorded by the cache layer.
pub const CACHE_REQUESTS: &str = "strata.cache.requests";
/// Bytes of response bodies the cache stored (fills), counter.
pub const CACHE_STORED_BYTES: &str = "strata.cache.stored.bytes";
/// Responses the cache stored (fills), counter.
pub const CACHE_STORED_ENTRIES: &str = "strata.cache.stored.entries";

/// Store calls, counter labelled `backend` (`memory`, `redis`, `redis-cluster`), `operation`
/// and `result` (`ok`, `error`, `timeout`, `breaker-open`, `soft-timeout`).
pub const STORE_OPERATIONS: &str = "strata.store.operations";
/// Seconds per remote store call (breaker, timeout and round trip included), histogram
/// labelled `backend`, `operation` and `result`. In-process (memory) calls are not timed.
pub const STORE_DURATION: &str = "strata.store.duration";
/// Calls to one Redis Cluster master, counter labelled `node` (`host:port`, bounded by the
/// cluster's size) and `result`.
pub const STORE_NODE_CALLS: &str = "strata.store.node.calls";
/// Seconds per call to one Redis Cluster master, histogram labelled `node`.
pub const STORE_NODE_DURATION: &str = "strata.store.node.duration";
/// A circuit breaker's state, gauge labelled `breaker`: 0 closed, 1 half-open, 2 open.
pub const STORE_BREAKER_STATE: &str = "strata.store.breaker.state";
/// Times a circuit breaker opened, counter labelled `breaker`.
pub const STORE_BREAKER_OPENINGS: &str = "strata.store.breaker.openings";
/// Whether a tiered store's L1 answers reads (1) or reads go to Redis (0), gauge.
pub const STORE_L1_IN_USE: &str = "strata.store.l1.in_use";
/// Invalidations a tiered store could not send to Redis and waits to replay, gauge.
pub const STORE_INVALIDATIONS_QUEUED: &str = "strata.store.invalidations.queued";

/// Purges, counter labelled `kind` (`key`, `tag`, `pattern`, `all`), `mode` (`hard`, `soft`)
/// and `result` (`ok`, `error`). A URL purge counts as `key` (each variant's key).
pub const PURGE_REQUESTS: &str = "strata.purge.requests";
/// Entries purged (removed or marked stale), counter labelled `kind` and `mode`.
pub const PURGE_ENTRIES: &str = "strata.purge.entries";

/// Transactions that ended, counter labelled `mode` (`read-write`, `read-only`) and `result`
/// (`commit`, `rollback`).
pub const TX_TRANSACTIONS: &str = "strata.tx.transactions";
/// Seconds from `BEGIN` to the end of `COMMIT` or `ROLLBACK`, histogram labelled `mode` and
/// `result`.
pub const TX_DURATION: &str = "strata.tx.duration";
/// Requests replayed, counter labelled `reason` (`serialization_failure`, `deadlock`,
/// `lock_wait_timeout`, `busy`, `connection_lost`).
pub const TX_RETRIES: &str = "strata.tx.retries";
/// Requests the transaction layer failed itself, counter labelled `reason`
/// (`retries_exhausted`, `timeout`, `pool_exhausted`, `commit_failed`, `commit_ambiguous`).
pub const TX_FAILURES: &str = "strata.tx.failures";
/// Read-write transactions the adaptive limit admits at once now, gauge.
pub const TX_LIMIT: &str = "strata.tx.limit";

/// Warming runs finished, counter labelled `result` (`ok`: every request succeeded,
/// `failed`: some did not).
pub const WARM_RUNS: &str = "strata.warm.runs";
/// Warming requests sent, counter labelled `result` (`ok`, `failed`, `timeout`).
pub const WARM_REQUESTS: &str = "strata.warm.requests";

/// Every name above, for checks such as "every metric a dashboard queries exists".
pub const ALL: [&str; 20] = [
    CACHE_REQUESTS,
    CACHE_STORED_BYTES,
    CACHE_STORED_ENTRIES,
    STORE_OPERATIONS,
    STORE_DURATION,
    STORE_NODE_CALLS,
    STORE_NODE_DURATION,
    STORE_BREAKER_STATE,
    STORE_BREAKER_OPENINGS,
    STORE_L1_IN_USE,
    STORE_INVALIDATIONS_QUEUED,
    PURGE_REQUESTS,
    PURGE_ENTRIES,
    TX_TRANSACTIONS,
    TX_DURATION,
    TX_RETRIES,
    TX_FAILURES,
    TX_LIMIT,
    WARM_RUNS,
    WARM_REQUESTS,
];

/// Bucket boundaries (seconds) for [`STORE_DURATION`] and [`STORE_NODE_DURATION`]: a Redis
/// call takes from a hundred microseconds to its timeout (500 ms by default). Give them to
/// your exporter, as [`DURATION_BUCKETS`](super::DURATION_BUCKETS) for the HTTP histograms
/// (which suit [`TX_DURATION`] too).
pub const STORE_DURATION_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
