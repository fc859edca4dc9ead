//! The in-process registry: per-route counters and latency histograms over sliding windows.
//!
//! - `mod.rs`: [`MetricsRegistry`], its builder and its reports;
//! - `shared.rs`: the state threads share (route table, per-thread caches, slow-request log);
//! - `shard.rs`: one route and method's per-thread shards and their ring of time slices.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use thread_local::ThreadLocal;
use tokio::time::Instant;

use super::export::Exporter;
use super::route::method_index;
use super::snapshot::{LatencyReport, RouteSnapshot, SlowRequest};

mod shard;
mod shared;

pub(crate) use self::shard::Slot;
use self::shared::RouteTable;
pub(crate) use self::shared::{Handle, Padded, Shared};

/// Length of one time slice of the sliding windows.
const SLICE: Duration = Duration::from_secs(10);
/// Slices kept per shard: 30 for five minutes, the current one, and one being recycled.
const RING: usize = 32;
/// Epoch marker of a slot being reset.
const RESETTING: u64 = u64::MAX;
/// Route id of the unmatched (and overflow) label.
pub(crate) const UNMATCHED: u32 = 0;

/// A sliding window over which a [`RouteSnapshot`] is computed.
///
/// Windows advance in 10-second slices: the one-minute window covers the current slice and the
/// six before it (60 to 70 seconds), the five-minute window the current slice and the 30 before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Window {
    /// The last minute.
    OneMinute,
    /// The last five minutes.
    FiveMinutes,
}

impl Window {
    fn past_slices(self) -> u64 {
        match self {
            Window::OneMinute => 6,
            Window::FiveMinutes => 30,
        }
    }
}

/// An invalid [`MetricsRegistry`] configuration: a [`ConfigError`](crate::ConfigError) of
/// [`MetricsConfigErrorKind`], from [`MetricsRegistryBuilder::build`].
pub type MetricsConfigError = crate::ConfigError<MetricsConfigErrorKind>;

/// What is wrong with a [`MetricsRegistry`] configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetricsConfigErrorKind {
    /// `max_routes` must be at least 2: the unmatched label takes one slot.
    TooFewRoutes,
    /// A slow-request threshold of zero would flag every request (`None` turns it off).
    ZeroSlowThreshold,
    /// The unmatched label must not be empty.
    EmptyUnmatchedLabel,
}

impl crate::ConfigErrorKind for MetricsConfigErrorKind {
    const COMPONENT: &'static str = "metrics";
}

/// How a finished request ended, for the counters and the `error.type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    /// Completed without a server error.
    Ok,
    /// A 5xx response.
    ServerError,
    /// A gRPC server-error status code (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
    /// UNAVAILABLE, DATA_LOSS).
    GrpcError,
    /// The client went away before the response finished.
    Cancelled,
    /// The inner service returned an error instead of a response.
    ServiceError,
}

impl Outcome {
    fn is_error(self) -> bool {
        matches!(
            self,
            Outcome::ServerError | Outcome::GrpcError | Outcome::ServiceError
        )
    }
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) grpc: bool,
    pub(crate) status: Option<StatusCode>,
    pub(crate) grpc_code: Option<i32>,
    pub(crate) outcome: Outcome,
    pub(crate) head: Option<Duration>,
    pub(crate) total: Duration,
}

/// Builds a [`MetricsRegistry`].
#[derive(Debug, Clone)]
pub struct MetricsRegistryBuilder {
    max_routes: usize,
    unmatched_label: String,
    slow_threshold: Option<Duration>,
    route_slow_thresholds: HashMap<String, Option<Duration>>,
    slow_log_capacity: usize,
    export: bool,
}

impl Default for MetricsRegistryBuilder {
    fn default() -> Self {
        Self {
            max_routes: 1000,
            unmatched_label: "_UNMATCHED".to_owned(),
            slow_threshold: Some(Duration::from_secs(1)),
            route_slow_thresholds: HashMap::new(),
            slow_log_capacity: 100,
            export: true,
        }
    }
}

impl MetricsRegistryBuilder {
    setters! {
        /// Most distinct route labels kept (default 1000, including the unmatched label). Labels
        /// beyond it are counted under the unmatched label, so memory stays bounded.
        fn max_routes(max: usize) => set max_routes;

        /// The shared label of requests that matched no route (default `_UNMATCHED`).
        fn unmatched_label(label: impl Into<String>) => into unmatched_label;

        /// Requests slower than this (until their body finished) are slow: logged with
        /// `tracing::warn!`, counted and kept in the slow-request log. Default one second; `None`
        /// turns the global threshold off.
        fn slow_threshold(threshold: Option<Duration>) => set slow_threshold;
    }

    /// A threshold for one route template, overriding the global one (`None`: never slow).
    pub fn route_slow_threshold(
        mut self,
        route: impl Into<String>,
        threshold: Option<Duration>,
    ) -> Self {
        self.route_slow_thresholds.insert(route.into(), threshold);
        self
    }

    setters! {
        /// How many of the most recent slow requests are kept (default 100).
        fn slow_log_capacity(capacity: usize) => set slow_log_capacity;

        /// Whether measurements also go to the `metrics` facade with OpenTelemetry names (default
        /// `true`). See [the module docs](crate::metrics#export) for the names and labels.
        fn export(enabled: bool) => set export;
    }

    /// Checks the configuration and builds the registry.
    ///
    /// # Errors
    ///
    /// [`MetricsConfigError`] when `max_routes < 2`, a threshold is zero, or the unmatched label
    /// is empty.
    pub fn build(self) -> Result<MetricsRegistry, MetricsConfigError> {
        if self.max_routes < 2 {
            return Err(MetricsConfigError::new(
                MetricsConfigErrorKind::TooFewRoutes,
                format!("max_routes must be at least 2, got {}", self.max_routes),
            ));
        }
        let zero = |t: &Option<Duration>| t.is_some_and(|t| t.is_zero());
        if zero(&self.slow_threshold) || self.route_slow_thresholds.values().any(zero) {
            return Err(MetricsConfigError::new(
                MetricsConfigErrorKind::ZeroSlowThreshold,
                "a slow-request threshold must be greater than zero (None turns it off)",
            ));
        }
        if self.unmatched_label.is_empty() {
            return Err(MetricsConfigError::new(
                MetricsConfigErrorKind::EmptyUnmatchedLabel,
                "the unmatched route label must not be empty",
            ));
        }
        let routes = RouteTable {
            index: Mutex::new(HashMap::new()),
            entries: (0..self.max_routes).map(|_| OnceLock::new()).collect(),
            full: AtomicBool::new(false),
        };
        let shared = Shared {
            start: Instant::now(),
            routes,
            local_names: ThreadLocal::new(),
            in_flight: ThreadLocal::new(),
            slow_threshold: self.slow_threshold,
            route_slow_thresholds: self.route_slow_thresholds,
            slow_log: Mutex::new(VecDeque::new()),
            slow_log_capacity: self.slow_log_capacity,
            slow_total: AtomicU64::new(0),
            max_local_names: self.max_routes.saturating_mul(2),
            exporter: self.export.then(Exporter::new),
        };
        let id = shared.intern(&self.unmatched_label);
        debug_assert_eq!(id, UNMATCHED);
        Ok(MetricsRegistry {
            shared: Arc::new(shared),
            handles: Arc::new(ThreadLocal::new()),
        })
    }
}

/// The in-process metrics registry: what [`MetricsLayer`](super::MetricsLayer) records into.
///
/// Cloning is cheap and clones share the data. For each route template and method it keeps
/// counters and two log-bucketed histograms (time to response head, time until the body
/// finished) per 10-second slice, for the last five minutes. Percentiles are within 1 % relative
/// error.
///
/// # Concurrency
///
/// Recording takes no lock shared between threads: each thread writes its own shard of atomic
/// counters (created on its first request for a route), and route names are resolved through a
/// per-thread cache. Only the first request of a route on a thread, and slow requests (to append
/// to the slow log), take a mutex. Snapshots read every shard without stopping writers, so a
/// snapshot taken while requests are recorded may miss requests finishing at that moment.
///
/// # Memory
///
/// Per route label, method and recording thread: about 4.5 KB of counters (32 slices of 10 s),
/// plus histogram buckets allocated in 256-byte chunks as values arrive. A route whose latencies
/// span two orders of magnitude uses a few chunks per slice (tens of KB); the worst case is about
/// 370 KB. Route labels are capped by [`MetricsRegistryBuilder::max_routes`] and threads by the
/// runtime, so the total is bounded.
#[derive(Clone)]
pub struct MetricsRegistry {
    shared: Arc<Shared>,
    /// Per-thread handles given to in-flight requests, so that starting a request does not touch
    /// a reference count shared by all threads.
    handles: Arc<ThreadLocal<Arc<Handle>>>,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRegistry")
            .field("routes", &self.shared.routes.len())
            .field("unmatched_label", &self.shared.unmatched_label())
            .finish_non_exhaustive()
    }
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsRegistry {
    /// A registry with the default settings (see [`MetricsRegistryBuilder`]).
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default configuration is valid")
    }

    /// A builder to customise the registry.
    pub fn builder() -> MetricsRegistryBuilder {
        MetricsRegistryBuilder::default()
    }

    pub(crate) fn handle(&self) -> Arc<Handle> {
        self.handles
            .get_or(|| {
                Arc::new(Handle {
                    shared: self.shared.clone(),
                })
            })
            .clone()
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Records one request directly (for requests that do not go through the layer).
    ///
    /// `route` must be a template from a bounded set, as for [`RouteLabel`](super::RouteLabel).
    pub fn record(&self, route: &str, method: &Method, status: StatusCode, duration: Duration) {
        let id = self.shared.route_id(route);
        let outcome = if status.is_server_error() {
            Outcome::ServerError
        } else {
            Outcome::Ok
        };
        self.shared.record(
            id,
            method_index(method),
            Sample {
                grpc: false,
                status: Some(status),
                grpc_code: None,
                outcome,
                head: None,
                total: duration,
            },
            Instant::now(),
        );
    }

    /// Snapshots of every route and method with requests in the window, sorted by route then
    /// method.
    pub fn snapshot(&self, window: Window) -> Vec<RouteSnapshot> {
        let now = self.shared.epoch(Instant::now());
        let mut out = Vec::new();
        for entry in self.shared.routes.entries.iter().filter_map(OnceLock::get) {
            for (m, stats) in entry.methods.iter().enumerate() {
                if let Some(stats) = stats.get() {
                    let snap = stats.snapshot(&entry.name, m, now, window);
                    if snap.count > 0 {
                        out.push(snap);
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.route, a.method).cmp(&(&b.route, b.method)));
        out
    }

    /// The snapshot of one route template and method over `window`, if it was seen.
    pub fn route_snapshot(
        &self,
        route: &str,
        method: &Method,
        window: Window,
    ) -> Option<RouteSnapshot> {
        let id = *self.shared.routes.index.lock().ok()?.get(route)?;
        let entry = self.shared.routes.entries[id as usize].get()?;
        let m = method_index(method);
        let stats = entry.methods[m].get()?;
        Some(stats.snapshot(&entry.name, m, self.shared.epoch(Instant::now()), window))
    }

    /// The route labels seen so far (including the unmatched label).
    pub fn routes(&self) -> Vec<String> {
        self.shared
            .routes
            .entries
            .iter()
            .filter_map(OnceLock::get)
            .map(|e| e.name.to_string())
            .collect()
    }

    /// Requests started and not yet finished (body finished or dropped).
    pub fn in_flight(&self) -> u64 {
        let sum: i64 = self
            .shared
            .in_flight
            .iter()
            .flat_map(|c| c.iter())
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        sum.max(0) as u64
    }

    /// The most recent slow requests, oldest first.
    pub fn slow_requests(&self) -> Vec<SlowRequest> {
        match self.shared.slow_log.lock() {
            Ok(log) => log.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
        }
    }

    /// Slow requests seen since the registry was built.
    pub fn slow_total(&self) -> u64 {
        self.shared.slow_total.load(Ordering::Relaxed)
    }

    /// Everything at once, for a health report: snapshots over both windows, in-flight requests
    /// and the slow-request log. Serialises to JSON with durations in milliseconds.
    pub fn report(&self) -> LatencyReport {
        LatencyReport {
            in_flight: self.in_flight(),
            slow_total: self.slow_total(),
            last_minute: self.snapshot(Window::OneMinute),
            last_five_minutes: self.snapshot(Window::FiveMinutes),
            slow_requests: self.slow_requests(),
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> MetricsRegistry {
        MetricsRegistry::builder().export(false).build().unwrap()
    }

    #[test]
    fn config_is_validated() {
        assert_eq!(
            MetricsRegistry::builder()
                .max_routes(1)
                .build()
                .unwrap_err()
                .kind(),
            MetricsConfigErrorKind::TooFewRoutes
        );
        assert_eq!(
            MetricsRegistry::builder()
                .route_slow_threshold("/x", Some(Duration::ZERO))
                .build()
                .unwrap_err()
                .kind(),
            MetricsConfigErrorKind::ZeroSlowThreshold
        );
        assert_eq!(
            MetricsRegistry::builder()
                .unmatched_label("")
                .build()
                .unwrap_err()
                .kind(),
            MetricsConfigErrorKind::EmptyUnmatchedLabel
        );
    }

    #[test]
    fn routes_beyond_the_limit_fold_into_unmatched() {
        let reg = MetricsRegistry::builder()
            .max_routes(3)
            .export(false)
            .build()
            .unwrap();
        for r in ["/a", "/b", "/c", "/d"] {
            reg.record(r, &Method::GET, StatusCode::OK, Duration::from_millis(1));
        }
        assert_eq!(reg.routes(), vec!["_UNMATCHED", "/a", "/b"]);
        let unmatched = reg
            .route_snapshot("_UNMATCHED", &Method::GET, Window::OneMinute)
            .unwrap();
        assert_eq!(unmatched.count, 2);
    }

    #[test]
    fn counts_errors_and_status_classes() {
        let reg = registry();
        let d = Duration::from_millis(5);
        reg.record("/x", &Method::GET, StatusCode::OK, d);
        reg.record("/x", &Method::GET, StatusCode::NOT_FOUND, d);
        reg.record("/x", &Method::GET, StatusCode::BAD_GATEWAY, d);
        let s = reg
            .route_snapshot("/x", &Method::GET, Window::OneMinute)
            .unwrap();
        assert_eq!((s.count, s.errors), (3, 1));
        assert_eq!(s.status_classes.success, 1);
        assert_eq!(s.status_classes.client_error, 1);
        assert_eq!(s.status_classes.server_error, 1);
        assert!((s.error_rate - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.latency.mean, d);
        assert_eq!(s.latency.max, d);
    }

    #[test]
    fn slow_requests_are_counted_and_kept_in_a_bounded_log() {
        let reg = MetricsRegistry::builder()
            .slow_threshold(Some(Duration::from_millis(100)))
            .route_slow_threshold("/report", Some(Duration::from_secs(5)))
            .slow_log_capacity(2)
            .export(false)
            .build()
            .unwrap();
        for ms in [50, 150, 200, 250] {
            reg.record(
                "/x",
                &Method::GET,
                StatusCode::OK,
                Duration::from_millis(ms),
            );
        }
        reg.record(
            "/report",
            &Method::GET,
            StatusCode::OK,
            Duration::from_secs(2),
        );
        assert_eq!(reg.slow_total(), 3);
        let log = reg.slow_requests();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].duration, Duration::from_millis(200));
        assert_eq!(log[1].duration, Duration::from_millis(250));
        let s = reg
            .route_snapshot("/x", &Method::GET, Window::OneMinute)
            .unwrap();
        assert_eq!(s.slow, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn windows_slide() {
        let reg = registry();
        reg.record("/x", &Method::GET, StatusCode::OK, Duration::from_millis(1));
        tokio::time::advance(Duration::from_secs(120)).await;
        reg.record("/x", &Method::GET, StatusCode::OK, Duration::from_millis(2));
        let one = reg
            .route_snapshot("/x", &Method::GET, Window::OneMinute)
            .unwrap();
        let five = reg
            .route_snapshot("/x", &Method::GET, Window::FiveMinutes)
            .unwrap();
        assert_eq!(one.count, 1);
        assert_eq!(one.latency.max, Duration::from_millis(2));
        assert_eq!(five.count, 2);
        tokio::time::advance(Duration::from_secs(400)).await;
        let five = reg
            .route_snapshot("/x", &Method::GET, Window::FiveMinutes)
            .unwrap();
        assert_eq!(five.count, 0);
        // The ring is recycled: at 640 s the first slice's slot (epoch 1) becomes epoch 65.
        tokio::time::advance(Duration::from_secs(120)).await;
        reg.record("/x", &Method::GET, StatusCode::OK, Duration::from_millis(3));
        let five = reg
            .route_snapshot("/x", &Method::GET, Window::FiveMinutes)
            .unwrap();
        assert_eq!(five.count, 1);
        assert_eq!(five.latency.max, Duration::from_millis(3));
    }

    #[test]
    fn recording_from_many_threads_loses_nothing() {
        let reg = registry();
        std::thread::scope(|s| {
            for t in 0..4 {
                let reg = &reg;
                s.spawn(move || {
                    for i in 0..10_000u64 {
                        let route = if i % 2 == 0 { "/a" } else { "/b" };
                        reg.record(
                            route,
                            &Method::POST,
                            StatusCode::OK,
                            Duration::from_micros(i + t),
                        );
                    }
                });
            }
        });
        let snaps = reg.snapshot(Window::FiveMinutes);
        assert_eq!(snaps.iter().map(|s| s.count).sum::<u64>(), 40_000);
        assert_eq!(snaps.iter().map(|s| s.latency.count).sum::<u64>(), 40_000);
    }

    #[test]
    fn registry_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<MetricsRegistry>();
        assert_send_sync::<Handle>();
    }
}
