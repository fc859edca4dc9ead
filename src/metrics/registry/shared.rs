//! What the registry shares between threads: the route table, per-thread route caches and
//! in-flight gauges, the slow-request log, and the single-writer counter helpers.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foldhash::fast::RandomState;
use thread_local::ThreadLocal;
use tokio::time::Instant;

use crate::metrics::export::Exporter;
use crate::metrics::route::{METHOD_LABELS, METHODS};
use crate::metrics::snapshot::SlowRequest;

use super::shard::RouteStats;
use super::{Outcome, SLICE, Sample, UNMATCHED};

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

pub(super) struct RouteEntry {
    pub(super) name: Arc<str>,
    pub(super) slow_threshold: Option<Duration>,
    pub(super) methods: [OnceLock<Box<RouteStats>>; METHODS],
}

pub(super) struct RouteTable {
    pub(super) index: Mutex<HashMap<Box<str>, u32>>,
    pub(super) entries: Box<[OnceLock<RouteEntry>]>,
    pub(super) full: AtomicBool,
}

impl RouteTable {
    pub(super) fn len(&self) -> usize {
        self.index.lock().map(|i| i.len()).unwrap_or(0)
    }
}

/// A thread's cache of route label ids.
pub(super) type RouteCache = HashMap<Box<str>, u32, RandomState>;

pub(crate) struct Shared {
    pub(super) start: Instant,
    pub(super) routes: RouteTable,
    pub(super) local_names: ThreadLocal<Padded<RefCell<RouteCache>>>,
    pub(super) in_flight: ThreadLocal<Padded<[AtomicI64; METHODS]>>,
    pub(super) slow_threshold: Option<Duration>,
    pub(super) route_slow_thresholds: HashMap<String, Option<Duration>>,
    pub(super) slow_log: Mutex<VecDeque<SlowRequest>>,
    pub(super) slow_log_capacity: usize,
    pub(super) slow_total: AtomicU64,
    pub(super) max_local_names: usize,
    pub(super) exporter: Option<Exporter>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub(super) fn epoch(&self, now: Instant) -> u64 {
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
    pub(super) fn intern(&self, name: &str) -> u32 {
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

    pub(super) fn request_ended(&self, method: usize) {
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
    pub(super) fn slow(&self, entry: &RouteEntry, method: usize, sample: &Sample) {
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
pub(super) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Raises a single-writer maximum.
#[inline]
pub(super) fn raise(max: &AtomicU64, v: u64) {
    if v > max.load(Ordering::Relaxed) {
        max.store(v, Ordering::Relaxed);
    }
}

/// Adds to a single-writer signed counter.
#[inline]
pub(super) fn add(counter: &AtomicI64, n: i64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}
