//! A bounded ring of recent samples behind the dashboard's charts.
//!
//! A sample holds cumulative counters (cache lookups, purges, invalidations) and each route's
//! one-minute figures at the time it was taken; the charts show the differences between
//! neighbouring samples. Samples are taken off the hot path (when `/data` is polled, or by the
//! sampler task), at most one per interval, and the ring keeps `capacity + 1` of them, so memory
//! is bounded by the capacity and the number of routes kept per sample (32).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::data::{HistoryData, RouteHistory};

/// One route's figures at a sample.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RoutePoint {
    pub(crate) route: Arc<str>,
    pub(crate) method: &'static str,
    pub(crate) p50_ms: f32,
    pub(crate) p95_ms: f32,
    pub(crate) p99_ms: f32,
    pub(crate) requests_per_second: f32,
}

/// Cumulative counters and route figures at one time.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sample {
    pub(crate) at_unix_ms: u64,
    /// Cache lookups answered from the cache (hits, stale hits, coalesced).
    pub(crate) served: u64,
    /// Cache lookups that went upstream.
    pub(crate) misses: u64,
    pub(crate) purges: u64,
    pub(crate) invalidations: u64,
    pub(crate) routes: Vec<RoutePoint>,
}

/// The ring.
#[derive(Debug)]
pub(crate) struct History {
    samples: VecDeque<(Instant, Sample)>,
    capacity: usize,
    interval: Duration,
}

impl History {
    /// A ring of `capacity` intervals (at least 1) of `interval` each.
    pub(crate) fn new(capacity: usize, interval: Duration) -> Self {
        let capacity = capacity.max(1);
        History {
            samples: VecDeque::with_capacity(capacity + 1),
            capacity,
            interval,
        }
    }

    /// Whether a sample taken at `now` would be kept: the newest is at least an interval old
    /// (a little less, so a sampler ticking every interval never skips one).
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.samples
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= self.interval.mul_f32(0.9))
    }

    /// Keeps `sample` if one is due, dropping the oldest beyond the capacity.
    pub(crate) fn push(&mut self, now: Instant, sample: Sample) -> bool {
        if !self.due(now) {
            return false;
        }
        if self.samples.len() > self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((now, sample));
        true
    }

    /// The charts' columns, and each route's series keyed by route and method.
    pub(crate) fn columns(&self) -> (HistoryData, HashMap<(String, String), RouteHistory>) {
        let mut data = HistoryData {
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            ..HistoryData::default()
        };
        let mut routes: HashMap<(String, String), RouteHistory> = HashMap::new();
        let pairs = self.samples.iter().zip(self.samples.iter().skip(1));
        for (i, ((_, before), (_, after))) in pairs.enumerate() {
            let served = after.served.saturating_sub(before.served);
            let lookups = served + after.misses.saturating_sub(before.misses);
            data.at_unix_ms.push(after.at_unix_ms);
            data.lookups.push(lookups);
            data.hit_ratio
                .push((lookups > 0).then(|| served as f64 / lookups as f64));
            data.purges.push(after.purges.saturating_sub(before.purges));
            data.invalidations
                .push(after.invalidations.saturating_sub(before.invalidations));
            for point in &after.routes {
                let series = routes
                    .entry((point.route.to_string(), point.method.to_owned()))
                    .or_insert_with(|| padded(i));
                let round = |v: f32| Some((f64::from(v) * 1000.0).round() / 1000.0);
                series.p50_ms.push(round(point.p50_ms));
                series.p95_ms.push(round(point.p95_ms));
                series.p99_ms.push(round(point.p99_ms));
                series
                    .requests_per_second
                    .push(round(point.requests_per_second));
            }
            // Routes quiet at this sample get a gap.
            for series in routes.values_mut() {
                if series.p50_ms.len() == i {
                    pad(series);
                }
            }
        }
        (data, routes)
    }
}

fn pad(series: &mut RouteHistory) {
    series.p50_ms.push(None);
    series.p95_ms.push(None);
    series.p99_ms.push(None);
    series.requests_per_second.push(None);
}

fn padded(len: usize) -> RouteHistory {
    let mut series = RouteHistory::default();
    for _ in 0..len {
        pad(&mut series);
    }
    series
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, served: u64, misses: u64, purges: u64, routes: &[&str]) -> Sample {
        Sample {
            at_unix_ms: at,
            served,
            misses,
            purges,
            invalidations: purges * 2,
            routes: routes
                .iter()
                .map(|r| RoutePoint {
                    route: Arc::from(*r),
                    method: "GET",
                    p50_ms: 1.0,
                    p95_ms: 2.0,
                    p99_ms: 3.0,
                    requests_per_second: 0.5,
                })
                .collect(),
        }
    }

    #[test]
    fn keeps_one_sample_per_interval_and_at_most_capacity_intervals() {
        let start = Instant::now();
        let mut h = History::new(3, Duration::from_secs(1));
        assert!(h.push(start, sample(0, 0, 0, 0, &[])));
        assert!(!h.push(start + Duration::from_millis(500), sample(1, 0, 0, 0, &[])));
        for i in 1..10u64 {
            assert!(h.push(
                start + Duration::from_secs(i),
                sample(i * 1000, 0, 0, 0, &[])
            ));
        }
        assert_eq!(h.samples.len(), 4);
        let (data, _) = h.columns();
        assert_eq!(data.at_unix_ms, [7000, 8000, 9000]);
        assert_eq!(data.interval_ms, 1000);
    }

    #[test]
    fn columns_are_differences_and_routes_are_aligned() {
        let start = Instant::now();
        let mut h = History::new(10, Duration::from_secs(1));
        let second = |i: u64| start + Duration::from_secs(i);
        h.push(second(0), sample(0, 0, 0, 0, &["/a"]));
        h.push(second(1), sample(1000, 3, 1, 1, &["/a"]));
        h.push(second(2), sample(2000, 3, 1, 1, &["/b"]));
        h.push(second(3), sample(3000, 4, 4, 3, &["/a", "/b"]));
        let (data, routes) = h.columns();
        assert_eq!(data.lookups, [4, 0, 4]);
        assert_eq!(data.hit_ratio, [Some(0.75), None, Some(0.25)]);
        assert_eq!(data.purges, [1, 0, 2]);
        assert_eq!(data.invalidations, [2, 0, 4]);
        let a = &routes[&("/a".to_owned(), "GET".to_owned())];
        assert_eq!(a.p95_ms, [Some(2.0), None, Some(2.0)]);
        let b = &routes[&("/b".to_owned(), "GET".to_owned())];
        assert_eq!(b.p50_ms, [None, Some(1.0), Some(1.0)]);
        assert_eq!(b.requests_per_second.len(), 3);
    }
}
