//! Composable Tower layers that give any hyper, axum or tonic service a production data tier.
//!
//! tower-strata grows one capability per module, each usable alone and stacked with
//! `ServiceBuilder`, `Router::layer` or tonic's `Server::builder().layer`:
//!
//! - [`store`]: the ground floor: a [`Store`](store::Store) trait over byte values with entry
//!   metadata (TTL, grace, tags), with in-memory, Redis and tiered (L1 + L2) implementations,
//!   constant-cost tag invalidation, a Redis pub/sub backplane and a typed
//!   [`TypedCache`](store::TypedCache) with single-flight `get_or_compute`.
//! - `tx` (features `postgres`, `mysql`, `sqlite`): `TxLayer`, a database transaction per
//!   request that commits on success, rolls back otherwise and replays the request on
//!   serialization failures and deadlocks.
//! - `metrics` (feature `metrics`): `MetricsLayer`, per-route latency percentiles, slow requests
//!   and export to the `metrics` facade with OpenTelemetry names.
//! - `health` (feature `health`): liveness and readiness endpoints over background checks.
//! - `db` (features `postgres`, `mysql`, `sqlite`): offset and signed keyset pagination, bulk
//!   operations in parameter-limit chunks, search and aggregate helpers, pool presets.
//! - [`cache`]: the response cache layer, [`CacheLayer`](cache::CacheLayer): RFC 9111
//!   shared-cache semantics over any store, with coalescing, stale serving and tags.
//! - [`purge`]: purging and invalidation: a [`Purger`](purge::Purger) by key, tag, pattern or
//!   all, hard or soft, across instances; [`PurgeLayer`](purge::PurgeLayer) for `PURGE` and a
//!   protected JSON endpoint; [`InvalidateLayer`](purge::InvalidateLayer) rules that purge
//!   after the transaction committed; events over Redis.
//! - `warm` (feature `warm`): `Warmer`, cache warming through the app's own service at
//!   start-up and on an interval.
//! - `dashboard` (feature `dashboard`): `Dashboard`, a live operator page (HTML and its JSON
//!   snapshot) over the handles above: latency per route, hit ratio, purges, transactions and
//!   health.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower_strata::store::{PurgeMode, MemoryStore, SetOptions, Store, TypedCache};
//!
//! let cache = TypedCache::new(MemoryStore::new(64 << 20));
//! let options = SetOptions::new().ttl(Duration::from_secs(60)).tags(["products"]);
//! let price: u64 = cache
//!     .get_or_compute("price:42", &options, || async {
//!         // Runs once, however many requests miss at the same time.
//!         Ok::<_, std::io::Error>(2_500)
//!     })
//!     .await?;
//! assert_eq!(price, 2_500);
//! cache.store().purge_tag("products", PurgeMode::Hard).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it turns on |
//! |---|---|---|
//! | `memory` | yes | [`store::MemoryStore`] on `quick_cache` |
//! | `redis` | no | [`store::RedisStore`], the backplane, [`store::StoreConfig`]; with `memory`, [`store::TieredStore`] |
//! | `redis-cluster` | no | the Redis store, backplane and bus on a Redis Cluster (`redis-cluster://host:port,...`) |
//! | `redis-tls` | no | `rediss://` (TLS, on the system's OpenSSL) |
//! | `compression` | no | LZ4 compression of large values in [`store::TypedCache`] |
//! | `axum` | yes | axum extractors and helpers |
//! | `tonic` | no | tonic (gRPC) helpers, [`cache::GrpcKeyLayer`] |
//! | `postgres`, `mysql`, `sqlite` | `sqlite` | the transaction layer for each database |
//! | `metrics` | yes | the latency metrics layer and export to the `metrics` facade |
//! | `health` | yes | the health service and its checks |
//! | `dashboard` | yes | the live dashboard page and its JSON snapshot |
//! | `warm` | yes | the cache warmer |
//! | `full` | no | everything |
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]
// `pub` means public: an item the crate does not export is `pub(crate)` (as tower-http does).
#![deny(unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The README's examples are compiled and run as doctests (the guides' are, in `guide`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod guide;

#[macro_use]
mod macros;
#[cfg(any(
    feature = "health",
    feature = "dashboard",
    feature = "memory",
    feature = "redis"
))]
mod background;
mod builder;
mod config_error;
#[cfg(any(feature = "cache", feature = "memory", feature = "redis"))]
mod counter;
// The crate's own figures on the `metrics` facade, empty without feature `metrics`.
mod instruments;
#[cfg(any(feature = "health", feature = "purge", feature = "dashboard"))]
mod respond;
#[cfg(test)]
mod send_sync_tests;

pub use builder::ServiceBuilderExt;
pub use config_error::{ConfigError, ConfigErrorKind};

#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub mod cache;
#[cfg(feature = "purge")]
#[cfg_attr(docsrs, doc(cfg(feature = "purge")))]
pub mod purge;
pub mod store;

#[cfg(feature = "sqlx")]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite")))
)]
pub mod tx;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;

#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
pub mod health;

#[cfg(feature = "sqlx")]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite")))
)]
pub mod db;

#[cfg(feature = "dashboard")]
#[cfg_attr(docsrs, doc(cfg(feature = "dashboard")))]
pub mod dashboard;

#[cfg(feature = "warm")]
#[cfg_attr(docsrs, doc(cfg(feature = "warm")))]
pub mod warm;
