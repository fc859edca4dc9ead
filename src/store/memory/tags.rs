//! The tag index (tag → keys, sharded) and the invalidation marks of tags purged while their
//! entries are being removed.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use quick_cache::DefaultHashBuilder;

use crate::store::Entry;
use crate::store::entry::now_micros;
use crate::store::marks::{TagMarks, Verdict};

pub(super) type TagShard = Mutex<HashMap<String, HashSet<String>>>;

/// Tag -> keys, sharded by tag so writers of different tags do not contend.
pub(super) struct TagIndex {
    pub(super) shards: Box<[TagShard]>,
    pub(super) hasher: DefaultHashBuilder,
    pub(super) memberships: AtomicUsize,
}

impl TagIndex {
    pub(super) fn new(shards: usize) -> Self {
        TagIndex {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            hasher: DefaultHashBuilder::default(),
            memberships: AtomicUsize::new(0),
        }
    }

    pub(super) fn shard(&self, tag: &str) -> &TagShard {
        &self.shards[self.hasher.hash_one(tag) as usize % self.shards.len()]
    }

    pub(super) fn add(&self, key: &str, tags: &[String]) {
        for tag in tags {
            let mut shard = lock(self.shard(tag));
            if shard.entry(tag.clone()).or_default().insert(key.to_owned()) {
                self.memberships.fetch_add(1, Relaxed);
            }
        }
    }

    pub(super) fn remove(&self, key: &str, tags: &[String]) {
        for tag in tags {
            let mut shard = lock(self.shard(tag));
            if let Some(keys) = shard.get_mut(tag.as_str()) {
                if keys.remove(key) {
                    self.memberships.fetch_sub(1, Relaxed);
                }
                if keys.is_empty() {
                    shard.remove(tag.as_str());
                }
            }
        }
    }

    pub(super) fn take(&self, tag: &str) -> HashSet<String> {
        let keys = lock(self.shard(tag)).remove(tag).unwrap_or_default();
        self.memberships.fetch_sub(keys.len(), Relaxed);
        keys
    }

    pub(super) fn tags(&self) -> Vec<String> {
        self.shards
            .iter()
            .flat_map(|s| lock(s).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    pub(super) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let n: usize = shard.values().map(HashSet::len).sum();
            shard.clear();
            self.memberships.fetch_sub(n, Relaxed);
        }
    }
}

/// Invalidation marks: tag -> times of its last hard and soft purges, in microseconds since
/// the epoch (0: none).
///
/// A mark outlives the purge's clean-up, because the index is only an accelerator: entries it
/// missed (a race between an eviction and a re-set of the same key, or a fetch that began
/// before the purge and is written after it, see [`SetOptions::as_of`]) are still hidden by
/// the mark. The sweep drops marks older than every live tagged entry and older than
/// [`MARK_RETENTION`].
///
/// Their number is bounded too, as part of the store's memory budget ([`max_marks`]): past
/// the bound the older half is replaced by one floor, a time before which every tagged entry
/// counts as purged. That errs towards a miss (never a stale hit), touches only entries
/// stored before the floor, and leaves later fills alone, so no flood of purges makes the
/// store keep nothing.
pub(super) struct Marks {
    pub(super) map: RwLock<HashMap<String, TagMarks>>,
    pub(super) len: AtomicUsize,
    pub(super) retention: Duration,
    /// Most marks kept at once.
    pub(super) max: usize,
    /// Tagged entries stored at or before this time (microseconds) count as hard-purged: the
    /// latest of the marks dropped for the bound. 0: none.
    pub(super) floor: AtomicU64,
}

/// What one mark costs, about (the tag, its two times, the map's share): for the bound.
const MARK_BYTES: u64 = 128;

/// The most marks a store of `capacity_bytes` keeps: a sixteenth of its budget, and at least
/// a thousand.
pub(super) fn max_marks(capacity_bytes: u64) -> usize {
    usize::try_from(capacity_bytes / 16 / MARK_BYTES)
        .unwrap_or(usize::MAX)
        .max(1024)
}

/// Marks are kept at least this long after their purge by default, so a slow fetch that began
/// before a purge and writes after it (its entry stamped with the fetch's start) is still
/// caught.
pub(super) const MARK_RETENTION: Duration = Duration::from_secs(300);

impl Marks {
    pub(super) fn record(&self, tag: &str, at: u64, soft: bool) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mark = map.entry(tag.to_owned()).or_default();
        if soft {
            mark.soft = mark.soft.max(at);
        } else {
            mark.hard = mark.hard.max(at);
        }
        if map.len() > self.max {
            self.shed(&mut map);
        }
        self.len.store(map.len(), Relaxed);
    }

    /// Keeps the newer half of the marks, folding the older half into the floor.
    fn shed(&self, map: &mut HashMap<String, TagMarks>) {
        let mut times: Vec<u64> = map.values().map(|m| m.latest()).collect();
        let middle = times.len() / 2;
        let (_, cut, _) = times.select_nth_unstable(middle);
        let cut = *cut;
        let mut floor = 0;
        map.retain(|_, m| {
            let keep = m.latest() > cut;
            if !keep {
                floor = floor.max(m.latest());
            }
            keep
        });
        self.floor.fetch_max(floor, Relaxed);
    }

    fn below_floor(&self, stored: u64) -> bool {
        let floor = self.floor.load(Relaxed);
        floor != 0 && stored <= floor
    }

    /// What the marks of the entry's tags say of it.
    pub(super) fn check(&self, entry: &Entry) -> Verdict {
        if entry.tags().is_empty() {
            return Verdict::Valid;
        }
        if self.below_floor(entry.stored_at_micros()) {
            return Verdict::Invalid;
        }
        if self.len.load(Relaxed) == 0 {
            return Verdict::Valid;
        }
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut marks = TagMarks::default();
        for tag in entry.tags() {
            if let Some(m) = map.get(tag.as_str()) {
                marks.raise(*m);
            }
        }
        marks.verdict(entry.stored_at_micros())
    }

    /// Whether a purge at or after `since` (microseconds) covers one of `tags`.
    pub(super) fn purged_since(&self, tags: &[String], since: u64) -> bool {
        if tags.is_empty() {
            return false;
        }
        if self.below_floor(since) {
            return true;
        }
        if self.len.load(Relaxed) == 0 {
            return false;
        }
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        tags.iter()
            .filter_map(|t| map.get(t.as_str()))
            .any(|m| m.latest() >= since)
    }

    pub(super) fn invalidates(&self, entry: &Entry) -> bool {
        matches!(self.check(entry), Verdict::Invalid)
    }

    pub(super) fn retain_newer_than(&self, oldest_live: u64) {
        let keep_after = now_micros().saturating_sub(self.retention.as_micros() as u64);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, m| m.latest() >= oldest_live.min(keep_after));
        self.len.store(map.len(), Relaxed);
    }

    pub(super) fn clear(&self) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.clear();
        self.len.store(0, Relaxed);
    }

    /// How many marks are kept now.
    pub(super) fn len(&self) -> usize {
        self.len.load(Relaxed)
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a way that
    // matters more than losing the cache, so keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
