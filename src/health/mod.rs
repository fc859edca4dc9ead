//! Health checks and the `/health` (liveness) and `/health/ready` (readiness) endpoints.
//!
//! - **Liveness** ([`Health::liveness_service`]) answers `200 {"status":"alive"}` without
//!   touching any dependency: a hung database must not get the process restarted.
//! - **Readiness** ([`Health::readiness_service`]) answers the JSON [`HealthReport`]: the overall
//!   [`Status`] (healthy, degraded, unhealthy) and each registered check with its status,
//!   latency, error, last error and details. It is `503` when a required check is unhealthy,
//!   `200` otherwise.
//!
//! Checks run in the background on an interval ([`Health::spawn`]) and on demand when the
//! results are older than the maximum age, always concurrently and each under a timeout, so
//! readiness answers within about the timeout even when a dependency hangs. A check that times
//! out or panics is unhealthy.
//!
//! Thresholds: [`Check::required`] / [`Check::optional`] decide what an unhealthy check does to
//! the overall status (an optional one only degrades it), [`Check::degraded_latency`] degrades a
//! slow check, [`PoolCheck::degraded_utilisation`](PoolCheck) a busy pool, and
//! [`StatsCheck::status`] any verdict on a stats snapshot.
//!
//! # Checks
//!
//! - [`PoolCheck`] (features `postgres`, `mysql`, `sqlite`): a sqlx pool's size, idle and in-use
//!   connections, utilisation, acquire wait, acquire timeouts and a `SELECT 1` round trip.
//! - [`RedisCheck`] (feature `redis`): a `PING` round trip, connected or not; on a Redis Cluster
//!   ([`RedisCheck::cluster`]) one per node, each reported.
//! - [`stats_check`]: any `Fn() -> impl Serialize` snapshot, so other modules' statistics (cache
//!   hit rates, transaction and purge stats, the metrics registry's latency report) are
//!   registered by the app without this module knowing them.
//! - [`fn_check`]: any async closure returning a [`CheckOutput`].
//!
//! # Example
//!
//! With axum, the latency summary of the metrics registry included:
//!
//! ```
//! # #[cfg(all(feature = "metrics", feature = "axum"))] {
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_strata::health::{Check, Health, Status, stats_check};
//! use tower_strata::metrics::{LatencyReport, MetricsLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let (metrics, registry) = MetricsLayer::pair();
//! let health = Health::builder()
//!     .check(Check::optional(
//!         "latency",
//!         stats_check(move || registry.report()).status(|r: &LatencyReport| {
//!             let busy = r.last_minute.iter().any(|s| s.count > 100 && s.error_rate > 0.05);
//!             if busy { Status::Degraded } else { Status::Healthy }
//!         }),
//!     ))
//!     .interval(Duration::from_secs(5))
//!     .timeout(Duration::from_secs(1))
//!     .build()
//!     .expect("valid configuration");
//! let _checks = health.spawn();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(metrics.exclude_prefix("/health"))
//!     .merge(health.router());
//! # let _ = app; }
//! # }
//! ```
//!
//! Without axum, call or mount the services directly:
//!
//! ```
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use tower_strata::health::{Check, CheckOutput, Health, fn_check};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let health = Health::builder()
//!     .check(Check::required("queue", fn_check(|| async {
//!         CheckOutput::unhealthy("broker unreachable")
//!     })))
//!     .build()
//!     .unwrap();
//! let response = health
//!     .readiness_service()
//!     .oneshot(Request::get("/health/ready").body(()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! # }
//! ```

#[cfg(feature = "axum")]
mod axum;
mod check;
#[cfg(feature = "redis")]
mod redis;
mod registry;
mod service;
#[cfg(feature = "sqlx")]
mod sqlx;

pub use check::{
    CheckFuture, CheckOutput, FnCheck, HealthCheck, StatsCheck, Status, fn_check, stats_check,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisCheck;
pub use registry::{
    Check, CheckReport, Health, HealthBuilder, HealthConfigError, HealthConfigErrorKind,
    HealthReport,
};
pub use service::{HealthFuture, HealthService};
#[cfg(feature = "sqlx")]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite")))
)]
pub use sqlx::PoolCheck;
