//! [`MemoryStore`]: an in-process store on `quick_cache`, weighted by bytes.
//!
//! - `mod.rs`: the store, its reads, writes and purges;
//! - `builder.rs`: [`MemoryStoreBuilder`] and the background sweep;
//! - `slot.rs`: what a key holds (entry, counter, set), its weight, the eviction hook;
//! - `tags.rs`: the tag index and the invalidation marks.

use crate::instruments::{LocalOp, LocalOps};
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use quick_cache::DefaultHashBuilder;
use quick_cache::sync::Cache as QuickCache;

use super::entry::{coarse_now_micros, micros, now_micros};
use super::error::cut;
use super::marks::Verdict;
use super::stats::Counters;
use super::{
    Entry, KeyPattern, Limits, PurgeMode, SetOptions, Store, StoreError, StoreExt, StoreStats,
};

mod builder;
mod slot;
mod tags;
#[cfg(test)]
mod tests;

pub use self::builder::MemoryStoreBuilder;
use self::slot::{
    CounterSlot, EntrySlot, IndexLifecycle, InsertState, KeyPrint, SetSlot, Slot, SlotWeighter,
};
use self::tags::{Marks, TagIndex, lock};

/// Bytes charged per slot on top of its key and value, for the map, the `Arc` and the metadata.
const SLOT_OVERHEAD: u64 = 96;
/// Tag purges with at most this many entries are removed inline; larger ones in the background.
const INLINE_PURGE: usize = 256;

/// An in-process [`Store`] on [`quick_cache`]: capacity in bytes (keys, values and metadata
/// weighted), per-entry TTL and grace, tags, counters and sets.
///
/// `quick_cache` has no TTL, so entries expire when read past their lifetime and in a periodic
/// background sweep (every 10 s by default, when built inside a Tokio runtime). The tag index
/// is cleaned when `quick_cache` evicts an entry (through its lifecycle hook), on expiry, on
/// delete and by the sweep, so it never outgrows the entries it points to.
///
/// Cloning is cheap and clones share the same data.
///
/// # Concurrency
///
/// All operations are safe from many tasks at once. [`StoreExt::incr`](crate::store::StoreExt::incr) is exact under contention:
/// the counter is an atomic created once per key. Set operations on one key are serialized.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    cache: QuickCache<String, Slot, SlotWeighter, DefaultHashBuilder, IndexLifecycle>,
    index: Arc<TagIndex>,
    marks: Marks,
    counters: Arc<Counters>,
    /// Operations on the `metrics` facade (`backend="memory"`).
    ops: LocalOps,
    limits: Limits,
    set_lock: Mutex<()>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.inner.cache.len())
            .field("weight", &self.inner.cache.weight())
            .field("capacity", &self.inner.cache.capacity())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::builder().build()
    }
}

impl MemoryStore {
    /// A store holding up to `capacity_bytes` bytes, with default limits.
    pub fn new(capacity_bytes: u64) -> Self {
        MemoryStore::builder()
            .capacity_bytes(capacity_bytes)
            .build()
    }

    /// A builder with the default settings.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// Bytes held, as weighed against the capacity.
    pub fn weight(&self) -> u64 {
        self.inner.cache.weight()
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.cache.capacity()
    }

    /// Number of keys held (entries, counters and sets, including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.inner.cache.len()
    }

    /// True when the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.inner.cache.is_empty()
    }

    /// Number of (tag, key) pairs in the tag index: bounded by the entries held times their tags.
    pub fn tag_index_len(&self) -> usize {
        self.inner.index.memberships.load(Relaxed)
    }

    /// How many invalidation marks the store keeps now (bounded: see `MemoryStoreBuilder`).
    pub fn mark_count(&self) -> usize {
        self.inner.marks.len()
    }

    /// Drops expired entries, compacts the tag index and forgets invalidation marks no live
    /// entry needs. Runs in the background on an interval; call it to run it now.
    pub fn sweep(&self) {
        let now = now_micros();
        let mut oldest_tagged = u64::MAX;
        let mut expired = Vec::new();
        for (key, slot) in self.inner.cache.iter() {
            if slot.is_expired(now) {
                expired.push((key, slot));
            } else if let Slot::Entry(e) = &slot
                && self.inner.marks.invalidates(&e.entry)
            {
                // Purged by a tag whose background clean-up has not reached it yet.
                self.remove_exact(&key, &slot);
            } else if let Slot::Entry(e) = &slot
                && !e.entry.tags().is_empty()
            {
                oldest_tagged = oldest_tagged.min(e.entry.stored_at_micros());
            }
        }
        for (key, slot) in expired {
            if self.remove_exact(&key, &slot) {
                Counters::add(&self.inner.counters.expirations, 1);
            }
        }
        // Index memberships whose key no longer carries the tag (a re-set with other tags raced
        // with another writer) are dropped here.
        for tag in self.inner.index.tags() {
            let shard = self.inner.index.shard(&tag);
            let keys: Vec<String> = match lock(shard).get(tag.as_str()) {
                Some(keys) => keys.iter().cloned().collect(),
                None => continue,
            };
            let dead: Vec<String> = keys
                .into_iter()
                .filter(|k| {
                    !self
                        .inner
                        .cache
                        .peek(k.as_str())
                        .is_some_and(|s| s.tags().contains(&tag))
                })
                .collect();
            for key in dead {
                self.inner.index.remove(&key, std::slice::from_ref(&tag));
            }
        }
        self.inner.marks.retain_newer_than(oldest_tagged);
    }

    /// Removes `key` only if it still holds `slot`, cleaning the index. Returns whether it did.
    fn remove_exact(&self, key: &str, slot: &Slot) -> bool {
        match self
            .inner
            .cache
            .remove_if(key, |current| current.same(slot))
        {
            Some((_, removed)) => {
                self.inner.index.remove(key, removed.tags());
                true
            }
            None => false,
        }
    }

    fn remove_key(&self, key: &str) -> bool {
        match self.inner.cache.remove(key) {
            Some((_, removed)) => {
                self.inner.index.remove(key, removed.tags());
                true
            }
            None => false,
        }
    }

    /// Reads the live entry at `key` without counting a hit or a miss; also says whether it is
    /// stale.
    fn lookup(&self, key: &str) -> Result<Option<(Entry, bool)>, StoreError> {
        let Some(slot) = self.inner.cache.get(key) else {
            return Ok(None);
        };
        let Slot::Entry(entry_slot) = &slot else {
            return Err(StoreError::WrongType {
                key: cut(key),
                expected: "entry",
                found: slot.kind(),
            });
        };
        // Entries without TTL skip the clock entirely.
        let now = if entry_slot.expires_at == u64::MAX && entry_slot.stale_at == u64::MAX {
            0
        } else {
            coarse_now_micros()
        };
        if slot.is_expired(now) {
            if self.remove_exact(key, &slot) {
                Counters::add(&self.inner.counters.expirations, 1);
            }
            return Ok(None);
        }
        let soft_at = match self.inner.marks.check(&entry_slot.entry) {
            Verdict::Valid => None,
            Verdict::Soft(at) => Some(at),
            Verdict::Invalid => {
                self.remove_exact(key, &slot);
                return Ok(None);
            }
        };
        let stale = entry_slot.stale_at <= now;
        let Slot::Entry(entry_slot) = slot else {
            unreachable!("matched above")
        };
        match soft_at {
            None => Ok(Some((entry_slot.entry, stale))),
            // Soft-purged by a tag: stale from the purge on, gone once grace has run out.
            Some(at) => {
                let entry = entry_slot.entry.soft_purged(at);
                if entry.is_expired() {
                    return Ok(None);
                }
                Ok(Some((entry, true)))
            }
        }
    }

    fn read(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.ops.count(LocalOp::Get);
        match self.lookup(key)? {
            Some((entry, stale)) => {
                self.inner.counters.hit(stale);
                Ok(Some(entry))
            }
            None => {
                Counters::add(&self.inner.counters.misses, 1);
                Ok(None)
            }
        }
    }

    /// Stores an already built entry; `local_ttl` bounds this copy's life below the entry's own
    /// (used by the tiered store for L1 copies of L2 entries).
    pub(crate) fn insert_entry(&self, key: &str, entry: Entry, local_ttl: Option<Duration>) {
        let tags: Vec<String> = entry.tags().to_vec();
        let stored = entry.stored_at_micros();
        let after = |d: Option<Duration>| {
            d.map_or(u64::MAX, |d| {
                stored.saturating_add(d.as_micros().min(u64::MAX as u128) as u64)
            })
        };
        let mut expires_at = after(entry.retention());
        if let Some(local) = local_ttl {
            expires_at = expires_at.min(now_micros().saturating_add(local.as_micros() as u64));
        }
        let slot = Slot::Entry(EntrySlot {
            stale_at: after(entry.ttl()),
            expires_at,
            entry,
        });
        self.insert_slot(key, slot);
        // Index after the insert: the hook has just removed the replaced value's memberships.
        // An eviction of this very entry racing with the line below leaves a membership
        // pointing at nothing, which the sweep drops (marks keep purges correct meanwhile).
        self.inner.index.add(key, &tags);
        Counters::add(&self.inner.counters.sets, 1);
        self.inner.ops.count(LocalOp::Set);
    }

    fn insert_slot(&self, key: &str, slot: Slot) {
        let mut state = InsertState {
            inserting: Some(KeyPrint::of(key)),
        };
        self.inner
            .cache
            .insert_with_lifecycle(key.to_owned(), slot, &mut state);
    }

    /// Soft-purges a tag as of `at`: its entries are served stale from then on, within their
    /// grace. One mark, whatever the tag's size. Returns how many entries the index holds for
    /// it.
    pub(crate) fn soft_purge_tag_at(&self, tag: &str, at: u64) -> u64 {
        self.inner.marks.record(tag, at, true);
        lock(self.inner.index.shard(tag))
            .get(tag)
            .map_or(0, |keys| keys.len() as u64)
    }

    /// Soft-purges one key as of `at`: the entry stays, stale, for its grace period. Counters
    /// and sets, which have no staleness, are removed. Returns whether something was there.
    pub(crate) fn soft_purge_key_at(&self, key: &str, at: u64) -> bool {
        let Some(slot) = self.inner.cache.peek(key) else {
            return false;
        };
        let Slot::Entry(entry_slot) = &slot else {
            return self.remove_exact(key, &slot);
        };
        let soft = entry_slot.entry.clone().soft_purged(at);
        if !self.remove_exact(key, &slot) {
            // Replaced or removed meanwhile: whatever is there now is newer than the purge.
            return false;
        }
        if !soft.is_expired() {
            // Only into an empty slot: a write that landed since the removal is newer than the
            // purge and wins.
            let expires_at = entry_slot.expires_at;
            let tags = soft.tags().to_vec();
            let stale_copy = Slot::Entry(EntrySlot {
                stale_at: at.min(entry_slot.stale_at),
                expires_at,
                entry: soft,
            });
            let mut inserted = false;
            let _ = self.inner.cache.get_or_insert_with(key, || {
                inserted = true;
                Ok::<_, std::convert::Infallible>(stale_copy)
            });
            if inserted {
                self.inner.index.add(key, &tags);
            }
        }
        true
    }

    /// [`Store::purged_since`] without the async wrapper (the tiered store asks its L1).
    pub(crate) fn purged_since_local(&self, tags: &[String], since: SystemTime) -> bool {
        self.inner.marks.purged_since(tags, micros(since))
    }

    /// Keys matching a pattern, now.
    fn matching_keys(&self, pattern: &KeyPattern) -> Vec<String> {
        self.inner
            .cache
            .iter()
            .map(|(k, _)| k)
            .filter(|k| pattern.matches(k))
            .collect()
    }

    /// Invalidates a tag as of `at` (microseconds since the epoch). Returns how many entries
    /// the index held for it. Large tags are cleaned up in the background.
    pub(crate) fn purge_tag_at(&self, tag: &str, at: u64) -> u64 {
        self.inner.marks.record(tag, at, false);
        let keys = self.inner.index.take(tag);
        let count = keys.len() as u64;
        Counters::add(&self.inner.counters.deletes, count);
        if keys.len() <= INLINE_PURGE {
            self.remove_tagged(keys, tag, at);
            return count;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let store = self.clone();
                let tag = tag.to_owned();
                handle.spawn(async move {
                    let keys: Vec<String> = keys.into_iter().collect();
                    for chunk in keys.chunks(1024) {
                        store.remove_tagged(chunk.iter().cloned(), &tag, at);
                        tokio::task::yield_now().await;
                    }
                });
            }
            Err(_) => self.remove_tagged(keys, tag, at),
        }
        count
    }

    fn remove_tagged(&self, keys: impl IntoIterator<Item = String>, tag: &str, at: u64) {
        for key in keys {
            let removed = self.inner.cache.remove_if(key.as_str(), |slot| match slot {
                Slot::Entry(e) => {
                    e.entry.stored_at_micros() <= at && e.entry.tags().iter().any(|t| t == tag)
                }
                _ => false,
            });
            if let Some((_, slot)) = removed {
                self.inner.index.remove(&key, slot.tags());
            }
        }
    }

    /// Removes (or soft-purges) matching keys without counting; returns how many.
    pub(crate) fn purge_matching_local(&self, pattern: &KeyPattern, mode: PurgeMode) -> u64 {
        let keys = self.matching_keys(pattern);
        match mode {
            PurgeMode::Hard => keys.iter().filter(|k| self.remove_key(k)).count() as u64,
            PurgeMode::Soft => {
                let at = now_micros();
                keys.iter()
                    .filter(|k| self.soft_purge_key_at(k, at))
                    .count() as u64
            }
        }
    }

    pub(crate) fn remove_all(&self) -> u64 {
        let n = self.inner.cache.len() as u64;
        self.inner.cache.clear();
        self.inner.index.clear();
        self.inner.marks.clear();
        n
    }

    #[cfg(feature = "redis")]
    pub(crate) fn remove_local(&self, key: &str) -> bool {
        self.remove_key(key)
    }

    fn counter(&self, key: &str, ttl: Option<Duration>) -> Result<Arc<CounterSlot>, StoreError> {
        loop {
            let slot = self
                .inner
                .cache
                .get_or_insert_with(key, || {
                    Ok::<_, std::convert::Infallible>(Slot::Counter(Arc::new(CounterSlot {
                        value: AtomicI64::new(0),
                        expires_at: ttl.map_or(u64::MAX, |ttl| {
                            now_micros().saturating_add(ttl.as_micros() as u64)
                        }),
                    })))
                })
                .unwrap_or_else(|never| match never {});
            match slot {
                Slot::Counter(counter) if !slot.is_expired(now_micros()) => return Ok(counter),
                Slot::Counter(_) => {
                    // Expired: drop exactly that counter and create a new one.
                    self.remove_exact(key, &slot);
                }
                other => {
                    return Err(StoreError::WrongType {
                        key: cut(key),
                        expected: "counter",
                        found: other.kind(),
                    });
                }
            }
        }
    }

    fn update_set(
        &self,
        key: &str,
        change: impl FnOnce(&mut HashSet<String>) -> u64,
    ) -> Result<u64, StoreError> {
        // Sets are rewritten whole so their weight stays exact; one lock keeps concurrent
        // updates from losing members.
        let _guard = lock(&self.inner.set_lock);
        let mut members = match self.inner.cache.get(key) {
            Some(Slot::Set(set)) => set.members.clone(),
            Some(other) => {
                return Err(StoreError::WrongType {
                    key: cut(key),
                    expected: "set",
                    found: other.kind(),
                });
            }
            None => HashSet::new(),
        };
        let changed = change(&mut members);
        if members.is_empty() {
            self.inner.cache.remove(key);
        } else {
            self.insert_slot(key, Slot::Set(Arc::new(SetSlot { members })));
        }
        Ok(changed)
    }
}

impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.limits.check_key_len(key)?;
        self.read(key)
    }

    fn get_now(&self, key: &str) -> Option<Result<Option<Entry>, StoreError>> {
        Some(
            self.inner
                .limits
                .check_key_len(key)
                .and_then(|()| self.read(key)),
        )
    }

    async fn set(&self, key: &str, value: Bytes, options: &SetOptions) -> Result<(), StoreError> {
        self.inner.limits.check_set(key, &value, options)?;
        self.insert_entry(key, Entry::new(value, options), None);
        Ok(())
    }

    async fn purged_since(&self, tags: &[String], since: SystemTime) -> Result<bool, StoreError> {
        Ok(self.purged_since_local(tags, since))
    }

    async fn purge_key(&self, key: &str, mode: PurgeMode) -> Result<bool, StoreError> {
        self.inner.limits.check_key(key)?;
        match mode {
            PurgeMode::Hard => {
                let removed = self.remove_key(key);
                self.inner.ops.count(LocalOp::Delete);
                Counters::add(&self.inner.counters.deletes, u64::from(removed));
                Ok(removed)
            }
            PurgeMode::Soft => {
                self.inner.ops.count(LocalOp::Purge);
                Ok(self.soft_purge_key_at(key, now_micros()))
            }
        }
    }

    async fn purge_tag(&self, tag: &str, mode: PurgeMode) -> Result<u64, StoreError> {
        self.inner.limits.check_tag(tag)?;
        self.inner.ops.count(LocalOp::Purge);
        Ok(match mode {
            PurgeMode::Hard => self.purge_tag_at(tag, now_micros()),
            PurgeMode::Soft => self.soft_purge_tag_at(tag, now_micros()),
        })
    }

    async fn purge_matching(
        &self,
        pattern: &KeyPattern,
        mode: PurgeMode,
    ) -> Result<u64, StoreError> {
        let n = self.purge_matching_local(pattern, mode);
        self.inner.ops.count(LocalOp::Purge);
        if mode == PurgeMode::Hard {
            Counters::add(&self.inner.counters.deletes, n);
        }
        Ok(n)
    }

    async fn clear(&self) -> Result<u64, StoreError> {
        let n = self.remove_all();
        self.inner.ops.count(LocalOp::Purge);
        Counters::add(&self.inner.counters.deletes, n);
        Ok(n)
    }

    fn stats(&self) -> StoreStats {
        let mut stats = self.inner.counters.snapshot();
        stats.entries = Some(self.inner.cache.len() as u64);
        stats.bytes = Some(self.inner.cache.weight());
        stats
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }
}

impl StoreExt for MemoryStore {
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Entry>>, StoreError> {
        for key in keys {
            self.inner.limits.check_key_len(key)?;
        }
        keys.iter().map(|key| self.read(key)).collect()
    }

    async fn set_many(
        &self,
        items: &[(&str, Bytes)],
        options: &SetOptions,
    ) -> Result<(), StoreError> {
        for (key, entry) in self.inner.limits.checked_entries(items, options)? {
            self.insert_entry(key, entry, None);
        }
        Ok(())
    }

    async fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, StoreError> {
        self.inner.limits.check_key(key)?;
        let counter = self.counter(key, ttl)?;
        let mut current = counter.value.load(Relaxed);
        loop {
            let next = current
                .checked_add(delta)
                .ok_or_else(|| StoreError::Overflow { key: cut(key) })?;
            match counter
                .value
                .compare_exchange_weak(current, next, Relaxed, Relaxed)
            {
                Ok(_) => return Ok(next),
                Err(actual) => current = actual,
            }
        }
    }

    async fn set_add(&self, key: &str, members: &[&str]) -> Result<u64, StoreError> {
        self.inner.limits.check_key(key)?;
        self.update_set(key, |set| {
            members
                .iter()
                .filter(|m| set.insert((**m).to_owned()))
                .count() as u64
        })
    }

    async fn set_remove(&self, key: &str, members: &[&str]) -> Result<u64, StoreError> {
        self.inner.limits.check_key(key)?;
        self.update_set(key, |set| {
            members.iter().filter(|m| set.remove(**m)).count() as u64
        })
    }

    async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        self.inner.limits.check_key(key)?;
        match self.inner.cache.get(key) {
            Some(Slot::Set(set)) => Ok(set.members.iter().cloned().collect()),
            Some(other) => Err(StoreError::WrongType {
                key: cut(key),
                expected: "set",
                found: other.kind(),
            }),
            None => Ok(Vec::new()),
        }
    }
}
