//! Snapshot types: what the registry reports, and how slot counters are added up into them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::histogram::DenseHistogram;
use super::registry::Slot;
use super::route::METHOD_LABELS;

/// Sums of the slots of one route and method within a window.
pub(super) struct Accumulator {
    count: u64,
    errors: u64,
    cancelled: u64,
    slow: u64,
    classes: [u64; 5],
    sum_ns: u64,
    max_ns: u64,
    head_count: u64,
    head_sum_ns: u64,
    head_max_ns: u64,
    total: DenseHistogram,
    head: DenseHistogram,
}

impl Accumulator {
    pub(super) fn new() -> Self {
        Self {
            count: 0,
            errors: 0,
            cancelled: 0,
            slow: 0,
            classes: [0; 5],
            sum_ns: 0,
            max_ns: 0,
            head_count: 0,
            head_sum_ns: 0,
            head_max_ns: 0,
            total: DenseHistogram::new(),
            head: DenseHistogram::new(),
        }
    }

    pub(super) fn clear(&mut self) {
        self.count = 0;
        self.errors = 0;
        self.cancelled = 0;
        self.slow = 0;
        self.classes = [0; 5];
        self.sum_ns = 0;
        self.max_ns = 0;
        self.head_count = 0;
        self.head_sum_ns = 0;
        self.head_max_ns = 0;
        self.total.counts.fill(0);
        self.head.counts.fill(0);
    }

    pub(super) fn add(&mut self, slot: &Slot) {
        let r = Ordering::Relaxed;
        self.count += slot.count.load(r);
        self.errors += slot.errors.load(r);
        self.cancelled += slot.cancelled.load(r);
        self.slow += slot.slow.load(r);
        for (a, c) in self.classes.iter_mut().zip(&slot.classes) {
            *a += c.load(r);
        }
        self.sum_ns += slot.sum_ns.load(r);
        self.max_ns = self.max_ns.max(slot.max_ns.load(r));
        self.head_count += slot.head_count.load(r);
        self.head_sum_ns += slot.head_sum_ns.load(r);
        self.head_max_ns = self.head_max_ns.max(slot.head_max_ns.load(r));
        if let Some(h) = slot.total.0.get() {
            self.total.add(h);
        }
        if let Some(h) = slot.head.0.get() {
            self.head.add(h);
        }
    }

    pub(super) fn merge(&mut self, other: &Accumulator) {
        self.count += other.count;
        self.errors += other.errors;
        self.cancelled += other.cancelled;
        self.slow += other.slow;
        for (a, b) in self.classes.iter_mut().zip(other.classes) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
        self.head_count += other.head_count;
        self.head_sum_ns += other.head_sum_ns;
        self.head_max_ns = self.head_max_ns.max(other.head_max_ns);
        for (a, b) in self.total.counts.iter_mut().zip(&other.total.counts) {
            *a += b;
        }
        for (a, b) in self.head.counts.iter_mut().zip(&other.head.counts) {
            *a += b;
        }
    }

    pub(super) fn into_snapshot(mut self, route: &str, method: usize) -> RouteSnapshot {
        self.total.finish();
        self.head.finish();
        let summary = |h: &DenseHistogram, count: u64, sum: u64, max: u64| {
            let q = |p: f64| {
                let v = h.quantile(p).unwrap_or(0.0).min(max as f64);
                Duration::from_nanos(v.round() as u64)
            };
            LatencySummary {
                count,
                mean: Duration::from_nanos(sum.checked_div(count).unwrap_or(0)),
                p50: q(0.50),
                p95: q(0.95),
                p99: q(0.99),
                max: Duration::from_nanos(max),
            }
        };
        RouteSnapshot {
            route: route.to_owned(),
            method: METHOD_LABELS[method],
            count: self.count,
            errors: self.errors,
            cancelled: self.cancelled,
            slow: self.slow,
            error_rate: if self.count == 0 {
                0.0
            } else {
                self.errors as f64 / self.count as f64
            },
            status_classes: StatusClasses {
                informational: self.classes[0],
                success: self.classes[1],
                redirection: self.classes[2],
                client_error: self.classes[3],
                server_error: self.classes[4],
            },
            latency: summary(&self.total, self.count, self.sum_ns, self.max_ns),
            time_to_head: summary(
                &self.head,
                self.head_count,
                self.head_sum_ns,
                self.head_max_ns,
            ),
        }
    }
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn opt_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => millis(d, s),
        None => s.serialize_none(),
    }
}

/// Latency statistics over a window. Serialised with durations as milliseconds (`f64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Requests measured.
    pub count: u64,
    /// Exact mean.
    #[serde(serialize_with = "millis", rename = "mean_ms")]
    pub mean: Duration,
    /// Median, within 1 %.
    #[serde(serialize_with = "millis", rename = "p50_ms")]
    pub p50: Duration,
    /// 95th percentile, within 1 %.
    #[serde(serialize_with = "millis", rename = "p95_ms")]
    pub p95: Duration,
    /// 99th percentile, within 1 %.
    #[serde(serialize_with = "millis", rename = "p99_ms")]
    pub p99: Duration,
    /// Exact maximum.
    #[serde(serialize_with = "millis", rename = "max_ms")]
    pub max: Duration,
}

/// Responses per status class over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct StatusClasses {
    /// 1xx.
    #[serde(rename = "1xx")]
    pub informational: u64,
    /// 2xx.
    #[serde(rename = "2xx")]
    pub success: u64,
    /// 3xx.
    #[serde(rename = "3xx")]
    pub redirection: u64,
    /// 4xx.
    #[serde(rename = "4xx")]
    pub client_error: u64,
    /// 5xx.
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

/// Statistics of one route template and method over a [`Window`](super::Window).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RouteSnapshot {
    /// The route template (or the unmatched label).
    pub route: String,
    /// The method label (`GET`, ..., `_OTHER`).
    pub method: &'static str,
    /// Requests finished in the window (including cancelled ones).
    pub count: u64,
    /// Server errors: 5xx responses, gRPC server-error codes, inner service errors.
    pub errors: u64,
    /// Requests the client abandoned before the response finished.
    pub cancelled: u64,
    /// Requests above the slow threshold.
    pub slow: u64,
    /// `errors / count`.
    pub error_rate: f64,
    /// Responses per status class.
    pub status_classes: StatusClasses,
    /// Time from the request until the response body finished (or was dropped).
    pub latency: LatencySummary,
    /// Time from the request until the response head was ready.
    pub time_to_head: LatencySummary,
}

/// A request above its slow threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SlowRequest {
    /// Route template.
    pub route: String,
    /// Method label.
    pub method: &'static str,
    /// HTTP status, if a response head was produced.
    pub status: Option<u16>,
    /// gRPC status code, for gRPC calls that reported one.
    pub grpc_status: Option<i32>,
    /// Time until the body finished or was dropped.
    #[serde(serialize_with = "millis", rename = "duration_ms")]
    pub duration: Duration,
    /// Time until the response head.
    #[serde(serialize_with = "opt_millis", rename = "time_to_head_ms")]
    pub time_to_head: Option<Duration>,
    /// Whether the client went away first.
    pub cancelled: bool,
    /// When it finished, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// The registry's summary for a health report (see [`MetricsRegistry::report`](super::MetricsRegistry::report)).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LatencyReport {
    /// Requests in flight now.
    pub in_flight: u64,
    /// Slow requests since start.
    pub slow_total: u64,
    /// Per-route snapshots over the last minute.
    pub last_minute: Vec<RouteSnapshot>,
    /// Per-route snapshots over the last five minutes.
    pub last_five_minutes: Vec<RouteSnapshot>,
    /// The most recent slow requests, oldest first.
    pub slow_requests: Vec<SlowRequest>,
}
