//! One route and method's counters and histograms, one shard per thread, in a ring of time
//! slices.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use thread_local::ThreadLocal;

use crate::metrics::histogram::{AtomicHistogram, bucket_index};
use crate::metrics::snapshot::{Accumulator, RouteSnapshot};

use super::shared::{bump, raise};
use super::{Outcome, RESETTING, RING, Sample, Window};

/// Counters and histograms of one route template and method, sharded per thread: each thread
/// records into its own [`Shard`], so there is exactly one writer per shard.
pub(super) struct RouteStats {
    pub(super) shards: ThreadLocal<Box<Shard>>,
}

#[repr(align(128))]
pub(super) struct Shard {
    pub(super) ring: [Slot; RING],
}

#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) epoch: AtomicU64,
    pub(crate) count: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) slow: AtomicU64,
    pub(crate) classes: [AtomicU64; 5],
    pub(crate) sum_ns: AtomicU64,
    pub(crate) max_ns: AtomicU64,
    pub(crate) head_count: AtomicU64,
    pub(crate) head_sum_ns: AtomicU64,
    pub(crate) head_max_ns: AtomicU64,
    pub(crate) total: LazyHistogram,
    pub(crate) head: LazyHistogram,
}

/// A histogram allocated on first use (most slots of idle routes stay empty).
#[derive(Default)]
pub(crate) struct LazyHistogram(pub(crate) OnceLock<Box<AtomicHistogram>>);

impl LazyHistogram {
    pub(super) fn get(&self) -> &AtomicHistogram {
        self.0.get_or_init(|| Box::new(AtomicHistogram::new()))
    }
}

impl RouteStats {
    pub(super) fn new() -> Self {
        Self {
            shards: ThreadLocal::new(),
        }
    }

    pub(super) fn record(&self, epoch: u64, sample: &Sample, slow: bool) {
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

    pub(super) fn snapshot(
        &self,
        route: &str,
        method: usize,
        now: u64,
        window: Window,
    ) -> RouteSnapshot {
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
    pub(super) fn slot(&self, epoch: u64) -> &Slot {
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
    pub(super) fn reset(&self) {
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
