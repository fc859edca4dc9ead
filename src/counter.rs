//! [`Counter`]: a statistics counter for the hot paths (cache hits, store reads), which many
//! threads bump at once and a report reads now and then.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many stripes a [`Counter`] has: more than the cores a server usually runs on.
const STRIPES: usize = 16;

/// A counter that threads bump without sharing a cache line: each thread adds to a stripe of
/// its own, and a read sums them. A plain atomic that every cache hit or store read bumps
/// bounces between the cores serving them, which costs more than the rest of a memory hit.
#[derive(Default)]
pub(crate) struct Counter {
    stripes: [Stripe; STRIPES],
}

#[derive(Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl Counter {
    pub(crate) fn add(&self, n: u64) {
        thread_local! {
            /// This thread's stripe, given out in turn as threads first count.
            static STRIPE: usize = {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed) as usize % STRIPES
            };
        }
        let stripe = STRIPE.try_with(|s| *s).unwrap_or(0);
        self.stripes[stripe].0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}
