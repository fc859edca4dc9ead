//! The in-process registry: per-route counters and latency histograms over sliding windows.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foldhash::fast::RandomState;
use http::{Method, StatusCode};
use thread_local::ThreadLocal;
use tokio::time::Instant;

use super::export::Exporter;
use super::histogram::{AtomicHistogram, bucket_index};
use super::route::{METHOD_LABELS, METHODS, method_index};
use super::snapshot::{Accumulator, LatencyReport, RouteSnapshot, SlowRequest};

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

/// An invalid [`MetricsRegistry`] configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsConfigError {
    /// `max_routes` must be at least 2: the unmatched label takes one slot.
    #[error("max_routes must be at least 2, got {0}")]
    TooFewRoutes(usize),
    /// A slow-request threshold of zero would flag every request.
    #[error("slow-request threshold must be greater than zero")]
    ZeroSlowThreshold,
    /// The unmatched label must not be empty.
    #[error("the unmatched route label must not be empty")]
    EmptyUnmatchedLabel,
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
    /// Most distinct route labels kept (default 1000, including the unmatched label). Labels
    /// beyond it are counted under the unmatched label, so memory stays bounded.
    pub fn max_routes(mut self, max: usize) -> Self {
        self.max_routes = max;
        self
    }

    /// The shared label of requests that matched no route (default `_UNMATCHED`).
    pub fn unmatched_label(mut self, label: impl Into<String>) -> Self {
        self.unmatched_label = label.into();
        self
    }

    /// Requests slower than this (until their body finished) are slow: logged with
    /// `tracing::warn!`, counted and kept in the slow-request log. Default one second; `None`
    /// turns the global threshold off.
    pub fn slow_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.slow_threshold = threshold;
        self
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

    /// How many of the most recent slow requests are kept (default 100).
    pub fn slow_log_capacity(mut self, capacity: usize) -> Self {
        self.slow_log_capacity = capacity;
        self
    }

    /// Whether measurements also go to the `metrics` facade with OpenTelemetry names (default
    /// `true`). See [the module docs](crate::metrics#export) for the names and labels.
    pub fn export(mut self, enabled: bool) -> Self {
        self.export = enabled;
        self
    }

    /// Checks the configuration and builds the registry.
    ///
    /// # Errors
    ///
    /// [`MetricsConfigError`] when `max_routes < 2`, a threshold is zero, or the unmatched label
    /// is empty.
    pub fn build(self) -> Result<MetricsRegistry, MetricsConfigError> {
        if self.max_routes < 2 {
            return Err(MetricsConfigError::TooFewRoutes(self.max_routes));
        }
        let zero = |t: &Option<Duration>| t.is_some_and(|t| t.is_zero());
        if zero(&self.slow_threshold) || self.route_slow_thresholds.values().any(zero) {
            return Err(MetricsConfigError::ZeroSlowThreshold);
        }
        if self.unmatched_label.is_empty() {
            return Err(MetricsConfigError::EmptyUnmatchedLabel);
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

/// Aligns per-thread data to its own cache lines: `ThreadLocal` stores the values of
/// neighbouring threads side by side, and a write by one thread must not invalidate the line
/// another thread is using.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A per-thread handle held by each in-flight request (aligned so that the reference counts of
/// two threads' handles never share a cache line).
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Handle {
    pub(crate) shared: Arc<Shared>,
}

struct RouteEntry {
    name: Arc<str>,
    slow_threshold: Option<Duration>,
    methods: [OnceLock<Box<RouteStats>>; METHODS],
}

struct RouteTable {
    index: Mutex<HashMap<Box<str>, u32>>,
    entries: Box<[OnceLock<RouteEntry>]>,
    full: AtomicBool,
}

impl RouteTable {
    fn len(&self) -> usize {
        self.index.lock().map(|i| i.len()).unwrap_or(0)
    }
}

/// A thread's cache of route label ids.
type RouteCache = HashMap<Box<str>, u32, RandomState>;

pub(crate) struct Shared {
    start: Instant,
    routes: RouteTable,
    local_names: ThreadLocal<Padded<RefCell<RouteCache>>>,
    in_flight: ThreadLocal<Padded<[AtomicI64; METHODS]>>,
    slow_threshold: Option<Duration>,
    route_slow_thresholds: HashMap<String, Option<Duration>>,
    slow_log: Mutex<VecDeque<SlowRequest>>,
    slow_log_capacity: usize,
    slow_total: AtomicU64,
    max_local_names: usize,
    exporter: Option<Exporter>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    fn epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / SLICE.as_secs() + 1
    }

    pub(crate) fn unmatched_label(&self) -> &str {
        self.route_name(UNMATCHED)
    }

    pub(crate) fn route_name(&self, id: u32) -> &str {
        self.routes.entries[id as usize]
            .get()
            .map_or("", |e| &e.name)
    }

    /// Adds a route label to the global table (or finds it); the unmatched id when full.
    fn intern(&self, name: &str) -> u32 {
        let mut index = match self.routes.index.lock() {
            Ok(i) => i,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(&id) = index.get(name) {
            return id;
        }
        let id = index.len();
        if id >= self.routes.entries.len() {
            if !self.routes.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_routes = self.routes.entries.len(),
                    "metrics: route label limit reached; new routes are counted as unmatched"
                );
            }
            return UNMATCHED;
        }
        let slow_threshold = self
            .route_slow_thresholds
            .get(name)
            .copied()
            .unwrap_or(self.slow_threshold);
        let _ = self.routes.entries[id].set(RouteEntry {
            name: Arc::from(name),
            slow_threshold,
            methods: std::array::from_fn(|_| OnceLock::new()),
        });
        index.insert(name.into(), id as u32);
        id as u32
    }

    /// The id of a route label if this thread has already seen it.
    pub(crate) fn cached_route_id(&self, name: &str) -> Option<u32> {
        self.local_names
            .get_or(Default::default)
            .borrow()
            .get(name)
            .copied()
    }

    /// The id of a route label: a per-thread cache lookup, the global table on a miss.
    pub(crate) fn route_id(&self, name: &str) -> u32 {
        let cache = self.local_names.get_or(Default::default);
        if let Some(&id) = cache.borrow().get(name) {
            return id;
        }
        let id = self.intern(name);
        let mut cache = cache.borrow_mut();
        if cache.len() < self.max_local_names {
            cache.insert(name.into(), id);
        }
        id
    }

    pub(crate) fn request_started(&self, method: usize) {
        let counters = self
            .in_flight
            .get_or(|| Padded(std::array::from_fn(|_| AtomicI64::new(0))));
        // This thread's counter: a single writer.
        add(&counters[method], 1);
        if let Some(exporter) = &self.exporter {
            exporter.active(method, 1.0);
        }
    }

    fn request_ended(&self, method: usize) {
        let counters = self
            .in_flight
            .get_or(|| Padded(std::array::from_fn(|_| AtomicI64::new(0))));
        add(&counters[method], -1);
        if let Some(exporter) = &self.exporter {
            exporter.active(method, -1.0);
        }
    }

    /// Records a finished request that was counted as started.
    pub(crate) fn finish(&self, route: u32, method: usize, sample: Sample, now: Instant) {
        self.request_ended(method);
        self.record(route, method, sample, now);
    }

    pub(crate) fn record(&self, route: u32, method: usize, sample: Sample, now: Instant) {
        let Some(entry) = self.routes.entries[route as usize].get() else {
            return;
        };
        let stats = entry.methods[method].get_or_init(|| Box::new(RouteStats::new()));
        let slow = entry
            .slow_threshold
            .is_some_and(|threshold| sample.total > threshold);
        stats.record(self.epoch(now), &sample, slow);
        if slow {
            self.slow(entry, method, &sample);
        }
        if let Some(exporter) = &self.exporter {
            exporter.record(route, &entry.name, method, &sample);
        }
    }

    #[cold]
    fn slow(&self, entry: &RouteEntry, method: usize, sample: &Sample) {
        self.slow_total.fetch_add(1, Ordering::Relaxed);
        let status = sample.status.map(|s| s.as_u16());
        let duration_ms = sample.total.as_secs_f64() * 1e3;
        tracing::warn!(
            route = %entry.name,
            method = METHOD_LABELS[method],
            status,
            grpc_status = sample.grpc_code,
            duration_ms,
            "slow request"
        );
        if let Some(exporter) = &self.exporter {
            exporter.slow(&entry.name, method);
        }
        if self.slow_log_capacity == 0 {
            return;
        }
        let record = SlowRequest {
            route: entry.name.to_string(),
            method: METHOD_LABELS[method],
            status,
            grpc_status: sample.grpc_code,
            duration: sample.total,
            time_to_head: sample.head,
            cancelled: sample.outcome == Outcome::Cancelled,
            at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let mut log = match self.slow_log.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        if log.len() >= self.slow_log_capacity {
            log.pop_front();
        }
        log.push_back(record);
    }
}

/// Adds to a counter that only the current thread writes (its own shard): a load and a store
/// instead of a locked read-modify-write. Concurrent readers see either value.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Raises a single-writer maximum.
#[inline]
fn raise(max: &AtomicU64, v: u64) {
    if v > max.load(Ordering::Relaxed) {
        max.store(v, Ordering::Relaxed);
    }
}

/// Adds to a single-writer signed counter.
#[inline]
fn add(counter: &AtomicI64, n: i64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Counters and histograms of one route template and method, sharded per thread: each thread
/// records into its own [`Shard`], so there is exactly one writer per shard.
struct RouteStats {
    shards: ThreadLocal<Box<Shard>>,
}

#[repr(align(128))]
struct Shard {
    ring: [Slot; RING],
}

#[derive(Default)]
pub(super) struct Slot {
    pub(super) epoch: AtomicU64,
    pub(super) count: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) slow: AtomicU64,
    pub(super) classes: [AtomicU64; 5],
    pub(super) sum_ns: AtomicU64,
    pub(super) max_ns: AtomicU64,
    pub(super) head_count: AtomicU64,
    pub(super) head_sum_ns: AtomicU64,
    pub(super) head_max_ns: AtomicU64,
    pub(super) total: LazyHistogram,
    pub(super) head: LazyHistogram,
}

/// A histogram allocated on first use (most slots of idle routes stay empty).
#[derive(Default)]
pub(super) struct LazyHistogram(pub(super) OnceLock<Box<AtomicHistogram>>);

impl LazyHistogram {
    fn get(&self) -> &AtomicHistogram {
        self.0.get_or_init(|| Box::new(AtomicHistogram::new()))
    }
}

impl RouteStats {
    fn new() -> Self {
        Self {
            shards: ThreadLocal::new(),
        }
    }

    fn record(&self, epoch: u64, sample: &Sample, slow: bool) {
        let shard = self.shards.get_or(|| {
            Box::new(Shard {
                ring: std::array::from_fn(|_| Slot::default()),
            })
        });
        let slot = shard.slot(epoch);
        // Every counter below belongs to this thread's shard: plain loads and stores suffice.
        bump(&slot.count, 1);
        if sample.outcome.is_error() {
            bump(&slot.errors, 1);
        }
        if sample.outcome == Outcome::Cancelled {
            bump(&slot.cancelled, 1);
        }
        if slow {
            bump(&slot.slow, 1);
        }
        if let Some(status) = sample.status {
            let class = (status.as_u16() / 100) as usize;
            if (1..=5).contains(&class) {
                bump(&slot.classes[class - 1], 1);
            }
        }
        let ns = sample.total.as_nanos().min(u128::from(u64::MAX)) as u64;
        bump(&slot.sum_ns, ns);
        raise(&slot.max_ns, ns);
        slot.total.get().record_index(bucket_index(ns));
        if let Some(head) = sample.head {
            let ns = head.as_nanos().min(u128::from(u64::MAX)) as u64;
            bump(&slot.head_count, 1);
            bump(&slot.head_sum_ns, ns);
            raise(&slot.head_max_ns, ns);
            slot.head.get().record_index(bucket_index(ns));
        }
    }

    fn snapshot(&self, route: &str, method: usize, now: u64, window: Window) -> RouteSnapshot {
        let oldest = now.saturating_sub(window.past_slices());
        let mut acc = Accumulator::new();
        let mut tmp = Accumulator::new();
        for shard in self.shards.iter() {
            for slot in &shard.ring {
                let epoch = slot.epoch.load(Ordering::Acquire);
                if epoch == RESETTING || epoch < oldest.max(1) || epoch > now {
                    continue;
                }
                tmp.clear();
                tmp.add(slot);
                // A slot recycled while we read it belongs to a newer slice: skip it.
                if slot.epoch.load(Ordering::Acquire) == epoch {
                    acc.merge(&tmp);
                }
            }
        }
        acc.into_snapshot(route, method)
    }
}

impl Shard {
    /// The slot of `epoch`, recycling it if it still holds an older slice.
    fn slot(&self, epoch: u64) -> &Slot {
        let slot = &self.ring[(epoch % RING as u64) as usize];
        let mut spins = 0u32;
        loop {
            let current = slot.epoch.load(Ordering::Acquire);
            if current == RESETTING {
                spins += 1;
                if spins > 64 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            // A newer slice already took the slot (a request that started 5 minutes ago and
            // finished just now is counted in the current slice).
            if current >= epoch {
                return slot;
            }
            if slot
                .epoch
                .compare_exchange(current, RESETTING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.reset();
                slot.epoch.store(epoch, Ordering::Release);
                return slot;
            }
        }
    }
}

impl Slot {
    fn reset(&self) {
        let r = Ordering::Relaxed;
        for c in [
            &self.count,
            &self.errors,
            &self.cancelled,
            &self.slow,
            &self.sum_ns,
            &self.max_ns,
            &self.head_count,
            &self.head_sum_ns,
            &self.head_max_ns,
        ] {
            c.store(0, r);
        }
        for c in &self.classes {
            c.store(0, r);
        }
        if let Some(h) = self.total.0.get() {
            h.reset();
        }
        if let Some(h) = self.head.0.get() {
            h.reset();
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
                .unwrap_err(),
            MetricsConfigError::TooFewRoutes(1)
        );
        assert_eq!(
            MetricsRegistry::builder()
                .route_slow_threshold("/x", Some(Duration::ZERO))
                .build()
                .unwrap_err(),
            MetricsConfigError::ZeroSlowThreshold
        );
        assert_eq!(
            MetricsRegistry::builder()
                .unmatched_label("")
                .build()
                .unwrap_err(),
            MetricsConfigError::EmptyUnmatchedLabel
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
