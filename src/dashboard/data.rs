//! The JSON snapshot served at `/data`: serde types with a version and stable field names.
//!
//! Within one [`VERSION`], fields are only ever added; a field is never renamed, removed or
//! given another meaning without the version changing. Durations are milliseconds (`*_ms`,
//! `f64`) or microseconds (`*_us`, integers, for transaction timings), times are milliseconds
//! since the Unix epoch (`*_unix_ms`), ratios are between 0 and 1.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The version of the [`DashboardData`] shape, served as its `version` field.
pub const VERSION: u32 = 1;

/// Everything the dashboard shows, as served by `GET /data`.
///
/// A part is `null` when the dashboard was built without its source (no transaction layer, no
/// metrics registry, ...); the page then shows that part as not configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DashboardData {
    /// The shape's version, [`VERSION`].
    pub version: u32,
    /// The page title given to [`Dashboard::title`](super::Dashboard::title).
    pub title: String,
    /// When the snapshot was taken.
    pub at_unix_ms: u64,
    /// Per-route latency, rates and errors, and the slow-request log.
    pub latency: Option<LatencyData>,
    /// The response cache's counters.
    pub cache: Option<CacheData>,
    /// The store's counters and size.
    pub store: Option<StoreData>,
    /// Purges made through the purger.
    pub purge: Option<PurgeData>,
    /// Invalidation rules, headers and extensions that fired.
    pub invalidation: Option<InvalidationData>,
    /// The transaction layer's counters.
    pub transactions: Option<TxData>,
    /// The latest health report.
    pub health: Option<HealthData>,
    /// Recent samples, for the charts.
    pub history: HistoryData,
}

/// Latency and traffic per route template, from the metrics registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LatencyData {
    /// Requests in flight now.
    pub in_flight: u64,
    /// Slow requests since start.
    pub slow_total: u64,
    /// One entry per route template and method seen in the last five minutes, sorted by route
    /// then method.
    pub routes: Vec<RouteData>,
    /// The most recent slow requests, oldest first.
    pub slow_requests: Vec<SlowRequestData>,
}

/// One route template and method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RouteData {
    /// The route template (`/products/{id}`), or the unmatched label.
    pub route: String,
    /// The method (`GET`, ..., `_OTHER`).
    pub method: String,
    /// Over the last minute.
    pub last_minute: WindowData,
    /// Over the last five minutes.
    pub last_five_minutes: WindowData,
    /// The route's recent samples, aligned with [`HistoryData::at_unix_ms`] (`null` where the
    /// route had no requests in the minute before the sample); empty for routes beyond the 32
    /// busiest, which are not charted.
    pub history: RouteHistory,
}

/// A route's figures over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WindowData {
    /// Requests finished in the window.
    pub count: u64,
    /// Requests per second over the window.
    pub requests_per_second: f64,
    /// Server errors (5xx, gRPC server-error codes, inner service errors).
    pub errors: u64,
    /// `errors / count`: the error share.
    pub error_rate: f64,
    /// Requests the client abandoned.
    pub cancelled: u64,
    /// Requests above the slow threshold.
    pub slow: u64,
    /// Mean latency.
    pub mean_ms: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest request.
    pub max_ms: f64,
}

/// A route's samples: the one-minute figures as they were at each sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RouteHistory {
    /// Median latency.
    pub p50_ms: Vec<Option<f64>>,
    /// 95th percentile.
    pub p95_ms: Vec<Option<f64>>,
    /// 99th percentile.
    pub p99_ms: Vec<Option<f64>>,
    /// Requests per second.
    pub requests_per_second: Vec<Option<f64>>,
}

/// A request above its slow threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SlowRequestData {
    /// Route template.
    pub route: String,
    /// Method.
    pub method: String,
    /// HTTP status, if a response head was produced.
    pub status: Option<u16>,
    /// gRPC status code, for gRPC calls that reported one.
    pub grpc_status: Option<i32>,
    /// Time until the body finished or was dropped.
    pub duration_ms: f64,
    /// Whether the client went away first.
    pub cancelled: bool,
    /// When it finished.
    pub at_unix_ms: u64,
}

/// The response cache's counters, cumulative since the layer was built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheData {
    /// Answered from a fresh stored response.
    pub hits: u64,
    /// Answered from a stale stored response.
    pub stale_hits: u64,
    /// Answered with the response another request's miss fetched.
    pub coalesced: u64,
    /// Went upstream.
    pub misses: u64,
    /// Bypassed the cache (method, route, cookies): the passes.
    pub bypasses: u64,
    /// Responses written to the store.
    pub stores: u64,
    /// Upstream responses that were not storable.
    pub not_stored: u64,
    /// Stale entries refreshed by a `304`.
    pub revalidated: u64,
    /// Fresh entries refreshed in the background ahead of expiry (refresh-ahead).
    pub refreshes_ahead: u64,
    /// Keys removed after a successful unsafe request.
    pub invalidations: u64,
    /// Store failures (failed open).
    pub store_errors: u64,
    /// `(hits + stale_hits + coalesced) / (those + misses)`, 0 before any lookup.
    pub hit_rate: f64,
}

/// A store's counters and size (see [`StoreStats`](crate::store::StoreStats)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoreData {
    /// Reads that found an entry.
    pub hits: u64,
    /// Of the hits, entries served stale.
    pub stale_hits: u64,
    /// Reads that found nothing usable.
    pub misses: u64,
    /// `hits / (hits + misses)`.
    pub hit_rate: f64,
    /// Entries written.
    pub sets: u64,
    /// Entries removed on request.
    pub deletes: u64,
    /// Entries evicted for capacity.
    pub evictions: u64,
    /// Entries dropped past TTL and grace.
    pub expirations: u64,
    /// Backend errors.
    pub errors: u64,
    /// Of the errors, timeouts.
    pub timeouts: u64,
    /// Entries held, where the backend can tell cheaply.
    pub entries: Option<u64>,
    /// Bytes held, where the backend can tell cheaply.
    pub bytes: Option<u64>,
    /// Per-tier figures of a tiered store (`"l1"`, `"l2"`).
    pub tiers: BTreeMap<String, StoreData>,
    /// The circuit breaker's state (`closed`, `open`, `half_open`), for stores that have one;
    /// on a Redis Cluster, the worst of its masters'.
    #[serde(default)]
    pub breaker: Option<String>,
    /// On a Redis Cluster, each master's breaker state, by `host:port`.
    #[serde(default)]
    pub nodes: BTreeMap<String, String>,
    /// For a tiered store, whether its L1 answers reads now.
    #[serde(default)]
    pub l1_in_use: Option<bool>,
}

impl From<crate::store::StoreStats> for StoreData {
    fn from(s: crate::store::StoreStats) -> Self {
        StoreData {
            hits: s.hits,
            stale_hits: s.stale_hits,
            misses: s.misses,
            hit_rate: s.hit_rate,
            sets: s.sets,
            deletes: s.deletes,
            evictions: s.evictions,
            expirations: s.expirations,
            errors: s.errors,
            timeouts: s.timeouts,
            entries: s.entries,
            bytes: s.bytes,
            tiers: s
                .tiers
                .into_iter()
                .map(|(name, tier)| (name.to_owned(), tier.into()))
                .collect(),
            breaker: s.breaker.map(|b| b.as_str().to_owned()),
            nodes: s
                .nodes
                .into_iter()
                .map(|(address, state)| (address, state.as_str().to_owned()))
                .collect(),
            l1_in_use: s.l1_in_use,
        }
    }
}

/// Purges made through a [`Purger`](crate::purge::Purger) and its clones: the purger's own
/// counters, served as they are (one type, so the dashboard cannot drift from the purger).
pub type PurgeData = crate::purge::PurgeStats;

/// What an [`InvalidateLayer`](crate::purge::InvalidateLayer) did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InvalidationData {
    /// Rules that fired.
    pub rule_firings: u64,
    /// Responses whose `Cache-Group-Invalidation` header was honoured.
    pub header_invalidations: u64,
    /// Responses whose `Invalidation` extension was honoured.
    pub extension_invalidations: u64,
    /// Purges issued.
    pub purges: u64,
    /// Entries those purges removed or marked stale.
    pub entries_purged: u64,
    /// Purges that failed.
    pub failures: u64,
}

impl InvalidationData {
    /// Rules, headers and extensions honoured.
    pub fn total(&self) -> u64 {
        self.rule_firings
            .saturating_add(self.header_invalidations)
            .saturating_add(self.extension_invalidations)
    }
}

impl From<crate::purge::InvalidateStats> for InvalidationData {
    fn from(s: crate::purge::InvalidateStats) -> Self {
        InvalidationData {
            rule_firings: s.rule_firings,
            header_invalidations: s.header_invalidations,
            extension_invalidations: s.extension_invalidations,
            purges: s.purges,
            entries_purged: s.entries_purged,
            failures: s.failures,
        }
    }
}

/// The transaction layer's counters (see `tx::TxStatsSnapshot`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TxData {
    /// Transactions begun.
    pub begun: u64,
    /// Of those, read-only ones.
    pub read_only: u64,
    /// Attempts that worked without a transaction (`tx::TxMode::Autocommit`).
    pub autocommit: u64,
    /// Committed.
    pub committed: u64,
    /// Rolled back (including retried attempts).
    pub rolled_back: u64,
    /// Attempts replayed, by reason (`serialization_failure`, `deadlock`,
    /// `lock_wait_timeout`, `busy`).
    pub retried: BTreeMap<String, u64>,
    /// All retried attempts.
    pub retried_total: u64,
    /// Requests answered `503` because retries ran out.
    pub retries_exhausted: u64,
    /// Requests answered `503` because the pool had no connection in time.
    pub pool_exhausted: u64,
    /// Commits that failed.
    pub commit_failures: u64,
    /// Commits whose outcome is unknown.
    pub ambiguous_commits: u64,
    /// Attempts cut by the transaction timeout.
    pub timeouts: u64,
    /// Open now.
    pub active: u64,
    /// Duration of finished transactions.
    pub duration: DurationData,
    /// Per-statement timings, most executed first.
    pub statements: Vec<StatementData>,
    /// The most recent slow statements, oldest first.
    pub slow_statements: Vec<SlowStatementData>,
}

/// Count and latency of timings, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DurationData {
    /// Samples.
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

/// Timings of one SQL text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatementData {
    /// The SQL text as written.
    pub sql: String,
    /// Executions.
    pub count: u64,
    /// Executions that failed.
    pub errors: u64,
    /// Mean duration.
    pub mean_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// One slow statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SlowStatementData {
    /// The SQL text.
    pub sql: String,
    /// How long it took.
    pub duration_us: u64,
    /// Whether it failed.
    pub error: bool,
    /// When it finished.
    pub at_unix_ms: u64,
}

#[cfg(feature = "sqlx")]
impl From<crate::tx::TxStatsSnapshot> for TxData {
    fn from(s: crate::tx::TxStatsSnapshot) -> Self {
        let r = s.retried;
        let retried = [
            ("serialization_failure", r.serialization_failure),
            ("deadlock", r.deadlock),
            ("lock_wait_timeout", r.lock_wait_timeout),
            ("busy", r.busy),
            ("connection_lost", r.connection_lost),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        TxData {
            begun: s.begun,
            read_only: s.read_only,
            autocommit: s.autocommit,
            committed: s.committed,
            rolled_back: s.rolled_back,
            retried,
            retried_total: r.total(),
            retries_exhausted: s.retries_exhausted,
            pool_exhausted: s.pool_exhausted,
            commit_failures: s.commit_failures,
            ambiguous_commits: s.ambiguous_commits,
            timeouts: s.timeouts,
            active: s.active,
            duration: DurationData {
                count: s.duration.count,
                mean_us: s.duration.mean_us,
                p95_us: s.duration.p95_us,
                p99_us: s.duration.p99_us,
                max_us: s.duration.max_us,
            },
            statements: s
                .statements
                .into_iter()
                .map(|t| StatementData {
                    sql: t.sql,
                    count: t.count,
                    errors: t.errors,
                    mean_us: t.mean_us,
                    p95_us: t.p95_us,
                    p99_us: t.p99_us,
                    max_us: t.max_us,
                })
                .collect(),
            slow_statements: s
                .slow_statements
                .into_iter()
                .map(|t| SlowStatementData {
                    sql: t.sql,
                    duration_us: t.duration_us,
                    error: t.error,
                    at_unix_ms: t.at_unix_ms,
                })
                .collect(),
        }
    }
}

/// The latest health report (see `health::HealthReport`); checks are not run for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HealthData {
    /// Overall status: `healthy`, `degraded` or `unhealthy`.
    pub status: String,
    /// Each check, in registration order.
    pub checks: Vec<CheckData>,
    /// When the report was made.
    pub at_unix_ms: u64,
}

/// One health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CheckData {
    /// The check's name.
    pub name: String,
    /// Whether readiness depends on it.
    pub required: bool,
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: String,
    /// How long its latest run took.
    pub latency_ms: f64,
    /// Why its latest run was not healthy.
    pub error: Option<String>,
    /// The most recent error of any run, kept after the check recovers.
    pub last_error: Option<String>,
    /// When `last_error` happened.
    pub last_error_at_unix_ms: Option<u64>,
    /// When it last ran.
    pub checked_at_unix_ms: Option<u64>,
    /// Check-specific figures.
    pub details: serde_json::Value,
}

#[cfg(feature = "health")]
impl From<crate::health::HealthReport> for HealthData {
    fn from(r: crate::health::HealthReport) -> Self {
        fn name(s: crate::health::Status) -> String {
            match s {
                crate::health::Status::Healthy => "healthy",
                crate::health::Status::Degraded => "degraded",
                crate::health::Status::Unhealthy => "unhealthy",
            }
            .to_owned()
        }
        HealthData {
            status: name(r.status),
            checks: r
                .checks
                .into_iter()
                .map(|c| CheckData {
                    name: c.name,
                    required: c.required,
                    status: name(c.status),
                    latency_ms: c.latency.as_secs_f64() * 1e3,
                    error: c.error,
                    last_error: c.last_error,
                    last_error_at_unix_ms: c.last_error_at_unix_ms,
                    checked_at_unix_ms: c.checked_at_unix_ms,
                    details: c.details,
                })
                .collect(),
            at_unix_ms: r.at_unix_ms,
        }
    }
}

/// Recent samples, one every sample interval while the dashboard is polled or its sampler
/// runs (see [`Dashboard::spawn`](super::Dashboard::spawn)). Each column has one value per
/// entry of `at_unix_ms`, counting what happened since the previous sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HistoryData {
    /// The configured sample interval.
    pub interval_ms: u64,
    /// When each sample was taken, oldest first.
    pub at_unix_ms: Vec<u64>,
    /// The cache hit ratio since the previous sample (the store's without a cache layer);
    /// `null` when nothing was looked up.
    pub hit_ratio: Vec<Option<f64>>,
    /// Cache lookups since the previous sample.
    pub lookups: Vec<u64>,
    /// Purges since the previous sample.
    pub purges: Vec<u64>,
    /// Invalidations since the previous sample: keys the cache removed after unsafe requests,
    /// and invalidation rules, headers and extensions honoured.
    pub invalidations: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /data` is a contract: the purge part's JSON, names and order, must not change
    /// within a [`VERSION`] (`the_data_shape_is_stable` pins the names of every part).
    #[test]
    fn purge_json_is_pinned() {
        let stats = crate::purge::PurgeStats {
            key_purges: 1,
            tag_purges: 2,
            pattern_purges: 3,
            all_purges: 4,
            soft_purges: 5,
            entries_purged: 6,
            failures: 7,
            dependency_expansions: 8,
        };
        let purge = PurgeData::from(stats);
        assert_eq!(purge.total(), 10);
        let json = serde_json::to_string(&purge).unwrap();
        assert_eq!(
            json,
            r#"{"key_purges":1,"tag_purges":2,"pattern_purges":3,"all_purges":4,"soft_purges":5,"entries_purged":6,"failures":7,"dependency_expansions":8}"#
        );
        assert_eq!(serde_json::from_str::<PurgeData>(&json).unwrap(), purge);
    }
}
