//! Log-bucketed latency histogram with a bounded relative error (DDSketch-style buckets).
//!
//! A value `v` (nanoseconds) falls in bucket `i` when `γ^(i-1) < v ≤ γ^i`, with `γ = 1.02`. The
//! bucket is reported as `2·γ^i / (γ + 1)`, which is within `(γ - 1) / (γ + 1) ≈ 0.99 %` of every
//! value in the bucket. Buckets are kept in lazily allocated chunks of atomic counters, so an
//! empty histogram costs a few hundred bytes and a typical one (latencies within two orders of
//! magnitude) a few kilobytes.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Growth factor between bucket bounds.
const GAMMA: f64 = 1.02;
/// Largest relative error of a reported value against the values of its bucket.
#[cfg(test)]
pub(crate) const RELATIVE_ACCURACY: f64 = (GAMMA - 1.0) / (GAMMA + 1.0);
/// Values up to 2^41 ns (about 36 minutes) get their own bucket; larger ones share the last.
const MAX_TRACKED_NS: f64 = (1u64 << 41) as f64;
/// Counters per lazily allocated chunk.
const CHUNK: usize = 64;
/// Number of buckets: the zero bucket, then one per power of `GAMMA` up to `MAX_TRACKED_NS`.
pub(crate) const BUCKETS: usize = bucket_count();
const CHUNKS: usize = BUCKETS.div_ceil(CHUNK);

const fn bucket_count() -> usize {
    // ceil(ln(2^41) / ln(1.02)) = 1436, plus the zero bucket and the bucket for `1`.
    1438
}

/// Bucket index of a value in nanoseconds.
#[inline]
pub(crate) fn bucket_index(ns: u64) -> usize {
    if ns == 0 {
        return 0;
    }
    let v = (ns as f64).min(MAX_TRACKED_NS);
    let i = (v.ln() / GAMMA.ln()).ceil();
    // `ln(1) = 0` gives bucket 1; rounding can only move a value to a neighbouring bucket.
    ((i.max(0.0) as usize) + 1).min(BUCKETS - 1)
}

/// Representative value (nanoseconds) of a bucket.
#[inline]
pub(crate) fn bucket_value(index: usize) -> f64 {
    if index == 0 {
        return 0.0;
    }
    2.0 * GAMMA.powi(index as i32 - 1) / (GAMMA + 1.0)
}

type Chunk = [AtomicU32; CHUNK];

/// Atomic, lazily allocated bucket counters. Safe to record from many threads at once.
pub(crate) struct AtomicHistogram {
    chunks: [OnceLock<Box<Chunk>>; CHUNKS],
}

impl std::fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let allocated = self.chunks.iter().filter(|c| c.get().is_some()).count();
        f.debug_struct("AtomicHistogram")
            .field("allocated_chunks", &allocated)
            .finish()
    }
}

impl AtomicHistogram {
    pub(crate) fn new() -> Self {
        Self {
            chunks: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Counts one value falling in bucket `index`.
    ///
    /// Single writer: only the thread owning this histogram may call it (a plain load and store,
    /// no read-modify-write, which is what makes recording cheap). Readers may run concurrently.
    #[inline]
    pub(crate) fn record_index(&self, index: usize) {
        let chunk = self.chunks[index / CHUNK]
            .get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU32::new(0))));
        let counter = &chunk[index % CHUNK];
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    /// Sets every counter to zero, keeping the allocated chunks.
    pub(crate) fn reset(&self) {
        for chunk in self.chunks.iter().filter_map(OnceLock::get) {
            for counter in chunk.iter() {
                counter.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Adds the counters into a dense vector of `BUCKETS` counts.
    pub(crate) fn merge_into(&self, dense: &mut [u64]) {
        for (c, chunk) in self.chunks.iter().enumerate() {
            if let Some(chunk) = chunk.get() {
                for (i, counter) in chunk.iter().enumerate() {
                    let n = counter.load(Ordering::Relaxed);
                    if n != 0 {
                        dense[c * CHUNK + i] += u64::from(n);
                    }
                }
            }
        }
    }
}

/// A merged histogram: dense counts, read-only, used to answer percentile queries.
#[derive(Debug, Clone)]
pub(crate) struct DenseHistogram {
    pub(crate) counts: Vec<u64>,
    pub(crate) total: u64,
}

impl DenseHistogram {
    pub(crate) fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }

    pub(crate) fn add(&mut self, h: &AtomicHistogram) {
        h.merge_into(&mut self.counts);
    }

    pub(crate) fn finish(&mut self) {
        self.total = self.counts.iter().sum();
    }

    /// The value (nanoseconds) at quantile `q` (0..=1), nearest-rank: the `ceil(q·n)`-th smallest
    /// value, within 1 % relative error. `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_value(i));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_count_covers_the_range() {
        let last = ((MAX_TRACKED_NS.ln() / GAMMA.ln()).ceil() as usize) + 1;
        assert_eq!(last, BUCKETS - 1);
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1), 1);
    }

    #[test]
    fn every_value_is_within_the_relative_error_of_its_bucket() {
        let mut v = 1u64;
        while v < (1u64 << 40) {
            for x in [v, v + 1, v + v / 3] {
                let rep = bucket_value(bucket_index(x));
                let err = (rep - x as f64).abs() / x as f64;
                assert!(err <= RELATIVE_ACCURACY + 1e-9, "{x}: {rep} err {err}");
            }
            v = v * 3 / 2 + 1;
        }
    }

    #[test]
    fn reset_clears_counts_and_merge_adds_them() {
        let h = AtomicHistogram::new();
        h.record_index(bucket_index(1_000));
        h.record_index(bucket_index(1_000_000));
        let mut d = DenseHistogram::new();
        d.add(&h);
        d.finish();
        assert_eq!(d.total, 2);
        h.reset();
        let mut d = DenseHistogram::new();
        d.add(&h);
        d.finish();
        assert_eq!(d.total, 0);
        assert_eq!(d.quantile(0.5), None);
    }
}
