//! Invalidations a tiered store could not send to Redis: kept per key and per tag (the last
//! one wins), bounded, replayed when the backplane is back, and meanwhile trusted over
//! anything read (FusionCache's auto-recovery is the model). Until a key's invalidation has
//! reached Redis, this instance reads it as a miss: neither its L1 copy nor Redis's copy,
//! which the failed invalidation should have removed, may be served.
//!
//! A purge-all (a `clear`) that missed Redis is kept too, as one mark: every entry stored
//! before it reads as a miss until it is replayed. Past [`MAX_PENDING`] queued keys and tags,
//! nothing is dropped: the queue folds into such a purge-all of the namespace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use super::{Entry, PurgeMode, RedisStore, Store};

/// Most key and tag invalidations kept at once; past it the queue becomes one purge-all.
pub(crate) const MAX_PENDING: usize = 10_000;

/// Every queued invalidation carries the sequence number it was queued with, so a write or a
/// replay that started before it never removes it.
#[derive(Default)]
struct Queue {
    /// Key -> how it was invalidated, and when (sequence).
    keys: HashMap<String, (PurgeMode, u64)>,
    /// Tag -> the latest purge (microseconds since the epoch), whether it was soft, and when
    /// it was queued (sequence).
    tags: HashMap<String, (u64, bool, u64)>,
    /// A purge-all: when it was made (microseconds since the epoch) and queued (sequence).
    all: Option<(u64, u64)>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.tags.is_empty() && self.all.is_none()
    }
}

/// What queueing an invalidation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Queued {
    /// It waits on its own.
    Kept,
    /// The queue was full: it and everything else became one purge-all of the namespace. The
    /// caller drops its L1 (as on a lost subscription): the purge-all hides what L1 holds.
    Overflowed,
}

/// The invalidations waiting for Redis.
#[derive(Default)]
pub(crate) struct Pending {
    queue: Mutex<Queue>,
    /// Something is queued: the read path's check costs one load when nothing is.
    any: AtomicBool,
    /// A purge-all waits: L1 is not trusted until it has reached Redis.
    clearing: AtomicBool,
    /// Times the queue overflowed into a purge-all.
    overflows: AtomicU64,
    /// A task retries the queue.
    retrying: AtomicBool,
    /// The last sequence number handed out.
    seq: AtomicU64,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds a full queue into one purge-all made now: nothing queued is lost, everything
    /// stored before now reads as a miss until Redis has it.
    fn overflow(&self, queue: &mut Queue) -> Queued {
        if queue.keys.len() + queue.tags.len() < MAX_PENDING {
            return Queued::Kept;
        }
        self.overflows.fetch_add(1, Relaxed);
        tracing::warn!(
            max = MAX_PENDING,
            "tiered store: too many invalidations waiting for Redis; \
             queueing a purge-all of the namespace instead"
        );
        queue.keys.clear();
        queue.tags.clear();
        self.queue_all(queue, super::entry::now_micros());
        Queued::Overflowed
    }

    fn queue_all(&self, queue: &mut Queue, at: u64) {
        let at = queue.all.map_or(at, |(before, _)| before.max(at));
        queue.all = Some((at, self.next()));
        self.clearing.store(true, Relaxed);
        self.any.store(true, Relaxed);
    }

    /// A purge-all (made at `at`, microseconds since the epoch) that did not reach Redis.
    pub(crate) fn all(&self, at: u64) {
        let mut queue = self.lock();
        self.queue_all(&mut queue, at);
    }

    /// Whether a purge-all waits for Redis.
    pub(crate) fn clearing(&self) -> bool {
        self.clearing.load(Relaxed)
    }

    /// The sequence as of now: a write records it before it goes to Redis (see
    /// [`Pending::written`]).
    pub(crate) fn now(&self) -> u64 {
        self.seq.load(Relaxed)
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Relaxed) + 1
    }

    /// A key invalidation that did not reach Redis.
    pub(crate) fn key(&self, key: &str, mode: PurgeMode) -> Queued {
        let mut queue = self.lock();
        if !queue.keys.contains_key(key) && self.overflow(&mut queue) == Queued::Overflowed {
            return Queued::Overflowed;
        }
        queue.keys.insert(key.to_owned(), (mode, self.next()));
        self.any.store(true, Relaxed);
        Queued::Kept
    }

    /// A tag purge that did not reach Redis.
    pub(crate) fn tag(&self, tag: &str, at: u64, soft: bool) -> Queued {
        let mut queue = self.lock();
        if !queue.tags.contains_key(tag) && self.overflow(&mut queue) == Queued::Overflowed {
            return Queued::Overflowed;
        }
        let seq = self.next();
        let slot = queue.tags.entry(tag.to_owned()).or_insert((at, soft, seq));
        if at >= slot.0 {
            *slot = (at, soft, seq);
        }
        self.any.store(true, Relaxed);
        Queued::Kept
    }

    /// A write of `key` that began at sequence `began` reached Redis: it supersedes an
    /// invalidation queued before it began, never one queued while it was on its way.
    pub(crate) fn written(&self, key: &str, began: u64) {
        if self.any.load(Relaxed) {
            let mut queue = self.lock();
            if queue.keys.get(key).is_some_and(|(_, seq)| *seq <= began) {
                queue.keys.remove(key);
            }
        }
    }

    /// Whether `key` has an invalidation waiting for Redis.
    pub(crate) fn holds_key(&self, key: &str) -> bool {
        self.any.load(Relaxed) && self.lock().keys.contains_key(key)
    }

    /// Whether a waiting purge-all or tag purge covers `entry` (it was stored before it).
    pub(crate) fn hides(&self, entry: &Entry) -> bool {
        if !self.any.load(Relaxed) {
            return false;
        }
        let queue = self.lock();
        let stored = entry.stored_at_micros();
        queue.all.is_some_and(|(at, _)| at >= stored)
            || entry
                .tags()
                .iter()
                .any(|tag| queue.tags.get(tag).is_some_and(|(at, _, _)| *at >= stored))
    }

    /// How many invalidations wait (a purge-all counts one), and how many times the queue
    /// overflowed into a purge-all.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let queue = self.lock();
        (
            (queue.keys.len() + queue.tags.len() + usize::from(queue.all.is_some())) as u64,
            self.overflows.load(Relaxed),
        )
    }

    /// Makes sure a task retries the queue until it is empty: every 250 ms at first, backing
    /// off to 2 s, so Redis gets the invalidations as soon as it answers again, whether or
    /// not the backplane noticed it was gone. (The backplane's resubscription replays too.)
    pub(crate) fn retry_in_background(self: &std::sync::Arc<Self>, l2: &RedisStore) {
        if self.retrying.swap(true, Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.retrying.store(false, Relaxed);
            return;
        };
        let (pending, l2) = (self.clone(), l2.clone());
        runtime.spawn(async move {
            let mut wait = std::time::Duration::from_millis(250);
            loop {
                tokio::time::sleep(wait).await;
                pending.replay(&l2).await;
                if !pending.any.load(Relaxed) {
                    break;
                }
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
            pending.retrying.store(false, Relaxed);
            // An invalidation queued between the last replay and the flag going down.
            if pending.any.load(Relaxed) {
                pending.retry_in_background(&l2);
            }
        });
    }

    /// Sends what waits to Redis; what fails stays for the next time. Returns how many went.
    pub(crate) async fn replay(&self, l2: &RedisStore) -> usize {
        if !self.any.load(Relaxed) {
            return 0;
        }
        let (all, keys, tags) = {
            let queue = self.lock();
            (
                queue.all,
                queue.keys.clone().into_iter().collect::<Vec<_>>(),
                queue.tags.clone().into_iter().collect::<Vec<_>>(),
            )
        };
        // Removed only when unchanged since the snapshot: one queued meanwhile stays.
        let mut sent = 0;
        if let Some((_, seq)) = all {
            if l2.clear().await.is_err() {
                // The rest would not reach a Redis that refused this either; and until the
                // purge-all is there, it hides what they would.
                return 0;
            }
            let mut queue = self.lock();
            if queue.all.is_some_and(|(_, now)| now == seq) {
                queue.all = None;
                self.clearing.store(false, Relaxed);
            }
            // What was queued before it is done with it.
            queue.keys.retain(|_, (_, queued)| *queued > seq);
            queue.tags.retain(|_, (_, _, queued)| *queued > seq);
            sent += 1;
        }
        for (key, (mode, seq)) in keys {
            if l2.purge_key(&key, mode).await.is_ok() {
                let mut queue = self.lock();
                if queue.keys.get(&key).is_some_and(|(_, now)| *now == seq) {
                    queue.keys.remove(&key);
                }
                sent += 1;
            }
        }
        for (tag, (at, soft, seq)) in tags {
            if l2.purge_tag_at(&tag, at, soft).await.is_ok() {
                let mut queue = self.lock();
                if queue.tags.get(&tag).is_some_and(|(_, _, now)| *now == seq) {
                    queue.tags.remove(&tag);
                }
                sent += 1;
            }
        }
        let queue = self.lock();
        if queue.is_empty() {
            self.any.store(false, Relaxed);
        }
        if sent > 0 {
            tracing::info!(
                sent,
                "tiered store: replayed invalidations that missed Redis"
            );
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SetOptions;
    use bytes::Bytes;

    #[test]
    fn keys_and_tags_hide_what_they_invalidate_and_a_write_supersedes() {
        let pending = Pending::default();
        let entry = Entry::new(Bytes::new(), &SetOptions::new().tags(["t"]));
        assert!(!pending.hides(&entry) && !pending.holds_key("k"));
        let began = pending.now();
        let _ = pending.key("k", PurgeMode::Hard);
        assert!(pending.holds_key("k"));
        pending.written("k", began);
        assert!(
            pending.holds_key("k"),
            "a write that began before the delete loses"
        );
        pending.written("k", pending.now());
        assert!(
            !pending.holds_key("k"),
            "a write that began after it supersedes it"
        );
        let _ = pending.tag("t", entry.stored_at_micros() + 1, false);
        assert!(pending.hides(&entry));
        let other = Entry::new(Bytes::new(), &SetOptions::new().tags(["u"]));
        let _ = pending.tag("u", other.stored_at_micros() - 1, false);
        assert!(!pending.hides(&other), "stored after the purge");
        assert_eq!(pending.counts(), (2, 0));
    }

    #[test]
    fn a_full_queue_becomes_a_purge_all_that_hides_everything_older() {
        let pending = Pending::default();
        let old = Entry::new(Bytes::new(), &SetOptions::new());
        for i in 0..MAX_PENDING {
            assert_eq!(pending.key(&format!("k{i}"), PurgeMode::Hard), Queued::Kept);
        }
        assert!(!pending.hides(&old) && !pending.clearing());
        assert_eq!(pending.key("one more", PurgeMode::Hard), Queued::Overflowed);
        assert_eq!(pending.counts(), (1, 1), "one purge-all waits");
        assert!(pending.clearing());
        assert!(pending.hides(&old), "stored before the purge-all");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let new = Entry::new(Bytes::new(), &SetOptions::new());
        assert!(!pending.hides(&new), "stored after it");
    }
}
