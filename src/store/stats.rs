//! Store statistics.

#[cfg(any(feature = "memory", feature = "redis"))]
#[cfg(any(feature = "memory", feature = "redis"))]
use crate::counter::Counter;
use std::collections::BTreeMap;

use serde::Serialize;

/// A snapshot of a store's counters, from [`Store::stats`](super::Store::stats).
///
/// Counters are cumulative since the store was built. A tiered store reports its totals and each
/// tier under [`StoreStats::tiers`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StoreStats {
    /// Reads that found an entry (fresh or stale).
    pub hits: u64,
    /// Of the hits, entries served stale (inside grace, or soft-purged).
    pub stale_hits: u64,
    /// Reads that found nothing usable.
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 when nothing was read.
    pub hit_rate: f64,
    /// Entries written.
    pub sets: u64,
    /// Entries removed on request (delete, tag, pattern, clear).
    pub deletes: u64,
    /// Entries evicted for capacity.
    pub evictions: u64,
    /// Entries dropped because their TTL and grace ran out.
    pub expirations: u64,
    /// Backend errors (including timeouts) counted instead of, or as well as, returned.
    pub errors: u64,
    /// Of the errors, timeouts.
    pub timeouts: u64,
    /// The state of the backend connection's circuit breaker, for stores that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerState>,
    /// Calls refused at once by an open circuit breaker (not counted in `errors`).
    pub rejected: u64,
    /// Entries held, where the backend can tell cheaply.
    pub entries: Option<u64>,
    /// Bytes held (keys, values and metadata), where the backend can tell cheaply.
    pub bytes: Option<u64>,
    /// Per-tier statistics of a tiered store (`"l1"`, `"l2"`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<&'static str, StoreStats>,
    /// On a Redis Cluster, the state of each master's circuit breaker, by `host:port`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, BreakerState>,
    /// For a tiered store, whether its L1 answers reads now (see `TieredStore::l1_in_use`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l1_in_use: Option<bool>,
}

#[cfg(any(feature = "memory", feature = "redis"))]
impl StoreStats {
    pub(crate) fn finish(mut self) -> Self {
        let reads = self.hits + self.misses;
        self.hit_rate = if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        };
        self
    }
}

/// The state of a store's circuit breaker (see `BreakerSettings`, feature `redis`), as the
/// store stats and health checks report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    #[default]
    Closed,
    /// Calls fail at once until the cool-down has passed.
    Open,
    /// The cool-down has passed: the background probe is (or may be) on its way.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Lock-free counters behind [`StoreStats`], striped so that threads reading at once do not
/// share a cache line (see [`Counter`]).
#[cfg(any(feature = "memory", feature = "redis"))]
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub hits: Counter,
    pub stale_hits: Counter,
    pub misses: Counter,
    pub sets: Counter,
    pub deletes: Counter,
    pub evictions: Counter,
    pub expirations: Counter,
    pub errors: Counter,
    pub timeouts: Counter,
}

#[cfg(any(feature = "memory", feature = "redis"))]
impl Counters {
    pub(super) fn hit(&self, stale: bool) {
        self.hits.add(1);
        if stale {
            self.stale_hits.add(1);
        }
    }

    pub(super) fn add(counter: &Counter, n: u64) {
        counter.add(n);
    }

    #[cfg(feature = "redis")]
    pub(super) fn error(&self, error: &super::StoreError) {
        self.errors.add(1);
        if matches!(error, super::StoreError::Timeout { .. }) {
            self.timeouts.add(1);
        }
    }

    pub(super) fn snapshot(&self) -> StoreStats {
        StoreStats {
            hits: self.hits.get(),
            stale_hits: self.stale_hits.get(),
            misses: self.misses.get(),
            sets: self.sets.get(),
            deletes: self.deletes.get(),
            evictions: self.evictions.get(),
            expirations: self.expirations.get(),
            errors: self.errors.get(),
            timeouts: self.timeouts.get(),
            ..StoreStats::default()
        }
        .finish()
    }
}
