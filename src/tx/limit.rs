//! An adaptive limit on the transactions a layer runs at once, driven by their conflicts
//! (AIMD, as TCP drives its window): every conflict that forces a retry (serialization
//! failure, deadlock, busy) cuts the limit by a quarter, every clean commit raises it by one
//! over the current limit. On hot rows, where 32 concurrent transfers among 10 accounts
//! conflict most of the time, fewer at once commit more: each attempt has a chance to finish
//! before another invalidates it. Conflicts are not hidden: they still retry, and show in the
//! stats.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Fixed point: the limit is kept ×1024 so the additive increase can be fractional.
const SCALE: usize = 1024;

#[derive(Debug)]
pub(crate) struct AdaptiveLimit {
    max: usize,
    scaled_limit: AtomicUsize,
    in_flight: AtomicUsize,
    freed: Notify,
}

/// One transaction attempt admitted by the limit; dropping it lets another in.
#[derive(Debug)]
pub(crate) struct Permit<'a>(&'a AdaptiveLimit);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl AdaptiveLimit {
    pub(crate) fn new(max: usize) -> Self {
        let max = max.max(1);
        AdaptiveLimit {
            max,
            scaled_limit: AtomicUsize::new(max * SCALE),
            in_flight: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// The transactions allowed at once now.
    pub(crate) fn limit(&self) -> usize {
        (self.scaled_limit.load(Ordering::Relaxed) / SCALE).clamp(1, self.max)
    }

    /// Waits for room under the limit.
    pub(crate) async fn acquire(&self) -> Permit<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release between the two is not missed.
            freed.as_mut().enable();
            let current = self.in_flight.load(Ordering::Acquire);
            if current < self.limit()
                && self
                    .in_flight
                    .compare_exchange(current, current + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return Permit(self);
            }
            freed.await;
        }
    }

    /// An attempt conflicted and will be retried: multiplicative decrease.
    pub(crate) fn conflict(&self) {
        let _ = self
            .scaled_limit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                Some((l * 3 / 4).max(SCALE))
            });
    }

    /// An attempt committed cleanly: additive increase, one per `limit` commits.
    pub(crate) fn success(&self) {
        let limit = self.limit();
        let max = self.max * SCALE;
        let _ = self
            .scaled_limit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                Some((l + SCALE / limit).min(max))
            });
        // A raised limit may admit a waiter.
        self.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_cut_it_and_commits_raise_it_within_bounds() {
        let l = AdaptiveLimit::new(32);
        assert_eq!(l.limit(), 32);
        for _ in 0..100 {
            l.conflict();
        }
        assert_eq!(l.limit(), 1, "never below one");
        l.success();
        assert_eq!(l.limit(), 2, "one more after `limit` clean commits");
        l.success();
        assert_eq!(l.limit(), 2);
        l.success();
        assert_eq!(l.limit(), 3);
        for _ in 0..10_000 {
            l.success();
        }
        assert_eq!(l.limit(), 32, "never above the maximum");
    }

    #[tokio::test]
    async fn at_most_the_limit_run_at_once() {
        let l = std::sync::Arc::new(AdaptiveLimit::new(4));
        for _ in 0..20 {
            l.conflict();
        }
        let running = std::sync::Arc::new(AtomicUsize::new(0));
        let peak = std::sync::Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (l, running, peak) = (l.clone(), running.clone(), peak.clone());
                tokio::spawn(async move {
                    let _permit = l.acquire().await;
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 1);
    }
}
