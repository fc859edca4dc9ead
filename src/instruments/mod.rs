//! The figures the store, transaction, purge and warming code records on the `metrics` facade
//! (their names are in `metrics::names`), behind one small API that is empty without feature
//! `metrics`: recording sites carry no `cfg`, and without the feature every call compiles to
//! nothing.
//!
//! Handles are registered when the component is built (a Redis operation's, the first time it
//! runs), so recording is an atomic add in the recorder, never a key lookup; with no recorder
//! installed a handle is a no-op and recording is one branch. The price: a recorder installed
//! after a component was built is not seen by it (documented in `metrics::names`).
//!
//! One file per part of the crate that records: `store` (the stores' calls, breakers and
//! tiered state), `purge`, `tx`, `warm` and `cache`; this one describes every figure.

#[cfg(feature = "metrics")]
use metrics::Unit;

#[cfg(feature = "metrics")]
use crate::metrics::names;

#[cfg(feature = "cache")]
mod cache;
#[cfg(feature = "purge")]
mod purge;
#[cfg(any(feature = "memory", feature = "redis"))]
mod store;
#[cfg(feature = "sqlx")]
mod tx;
#[cfg(feature = "warm")]
mod warm;

#[cfg(feature = "cache")]
pub(crate) use cache::*;
#[cfg(feature = "purge")]
pub(crate) use purge::*;
#[cfg(any(feature = "memory", feature = "redis"))]
pub(crate) use store::*;
#[cfg(feature = "sqlx")]
pub(crate) use tx::*;
#[cfg(feature = "warm")]
pub(crate) use warm::*;

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
