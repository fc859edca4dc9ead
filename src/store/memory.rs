//! [`MemoryStore`]: an in-process store on `quick_cache`, weighted by bytes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use quick_cache::sync::Cache as QuickCache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

use super::entry::{coarse_now_micros, micros, now_micros};
use super::error::cut;
use super::marks::{TagMarks, Verdict};
use super::stats::Counters;
use super::{Entry, KeyPattern, Limits, PurgeMode, SetOptions, Store, StoreError, StoreStats};

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
/// All operations are safe from many tasks at once. [`Store::incr`] is exact under contention:
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
    limits: Limits,
    set_lock: Mutex<()>,
}

#[derive(Clone)]
enum Slot {
    Entry(EntrySlot),
    Counter(Arc<CounterSlot>),
    Set(Arc<SetSlot>),
}

/// An entry with its deadlines precomputed (microseconds since the epoch, `u64::MAX` for
/// never), so a read costs at most one clock read and none for entries without TTL.
#[derive(Clone)]
struct EntrySlot {
    entry: Entry,
    stale_at: u64,
    /// The entry's own expiry, or an earlier one of this copy alone (an L1 copy).
    expires_at: u64,
}

struct CounterSlot {
    value: AtomicI64,
    expires_at: u64,
}

struct SetSlot {
    members: HashSet<String>,
}

impl Slot {
    fn kind(&self) -> &'static str {
        match self {
            Slot::Entry(_) => "entry",
            Slot::Counter(_) => "counter",
            Slot::Set(_) => "set",
        }
    }

    fn is_expired(&self, now: u64) -> bool {
        match self {
            Slot::Entry(slot) => slot.expires_at <= now,
            Slot::Counter(counter) => counter.expires_at <= now,
            Slot::Set(_) => false,
        }
    }

    fn tags(&self) -> &[String] {
        match self {
            Slot::Entry(slot) => slot.entry.tags(),
            _ => &[],
        }
    }

    fn same(&self, other: &Slot) -> bool {
        match (self, other) {
            (Slot::Entry(a), Slot::Entry(b)) => {
                a.entry.value().as_ptr() == b.entry.value().as_ptr()
                    && a.entry.stored_at() == b.entry.stored_at()
                    && a.expires_at == b.expires_at
            }
            (Slot::Counter(a), Slot::Counter(b)) => Arc::ptr_eq(a, b),
            (Slot::Set(a), Slot::Set(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

#[derive(Clone)]
struct SlotWeighter;

impl Weighter<String, Slot> for SlotWeighter {
    fn weight(&self, key: &String, slot: &Slot) -> u64 {
        let body = match slot {
            Slot::Entry(slot) => {
                slot.entry.value().len() as u64
                    + slot
                        .entry
                        .tags()
                        .iter()
                        .map(|t| t.len() as u64 + 24)
                        .sum::<u64>()
            }
            Slot::Counter(_) => 16,
            Slot::Set(set) => set.members.iter().map(|m| m.len() as u64 + 32).sum(),
        };
        key.len() as u64 + body + SLOT_OVERHEAD
    }
}

/// Removes evicted entries from the tag index, so the index never points at nothing.
///
/// `quick_cache` also reports a value replaced by an insert of the same key through this hook;
/// inserts pass the key's hash in the request state so a replacement is not counted as an
/// eviction.
#[derive(Clone)]
struct IndexLifecycle {
    index: Arc<TagIndex>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct InsertState {
    /// Hash of the key being inserted (0: not an insert).
    replacing: u64,
}

fn key_hash(key: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() | 1
}

impl Lifecycle<String, Slot> for IndexLifecycle {
    type RequestState = InsertState;

    fn on_evict(&self, state: &mut InsertState, key: String, slot: Slot) {
        if state.replacing != key_hash(&key) {
            Counters::add(&self.counters.evictions, 1);
        }
        self.index.remove(&key, slot.tags());
    }
}

type TagShard = Mutex<HashMap<String, HashSet<String>>>;

/// Tag -> keys, sharded by tag so writers of different tags do not contend.
struct TagIndex {
    shards: Box<[TagShard]>,
    hasher: DefaultHashBuilder,
    memberships: AtomicUsize,
}

impl TagIndex {
    fn new(shards: usize) -> Self {
        TagIndex {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            hasher: DefaultHashBuilder::default(),
            memberships: AtomicUsize::new(0),
        }
    }

    fn shard(&self, tag: &str) -> &TagShard {
        &self.shards[self.hasher.hash_one(tag) as usize % self.shards.len()]
    }

    fn add(&self, key: &str, tags: &[String]) {
        for tag in tags {
            let mut shard = lock(self.shard(tag));
            if shard.entry(tag.clone()).or_default().insert(key.to_owned()) {
                self.memberships.fetch_add(1, Relaxed);
            }
        }
    }

    fn remove(&self, key: &str, tags: &[String]) {
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

    fn take(&self, tag: &str) -> HashSet<String> {
        let keys = lock(self.shard(tag)).remove(tag).unwrap_or_default();
        self.memberships.fetch_sub(keys.len(), Relaxed);
        keys
    }

    fn tags(&self) -> Vec<String> {
        self.shards
            .iter()
            .flat_map(|s| lock(s).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn clear(&self) {
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
/// [`MARK_RETENTION`], so they stay bounded.
struct Marks {
    map: RwLock<HashMap<String, TagMarks>>,
    len: AtomicUsize,
    retention: Duration,
}

/// Marks are kept at least this long after their purge by default, so a slow fetch that began
/// before a purge and writes after it (its entry stamped with the fetch's start) is still
/// caught.
const MARK_RETENTION: Duration = Duration::from_secs(300);

impl Marks {
    fn record(&self, tag: &str, at: u64, soft: bool) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mark = map.entry(tag.to_owned()).or_default();
        if soft {
            mark.soft = mark.soft.max(at);
        } else {
            mark.hard = mark.hard.max(at);
        }
        self.len.store(map.len(), Relaxed);
    }

    /// What the marks of the entry's tags say of it.
    fn check(&self, entry: &Entry) -> Verdict {
        if entry.tags().is_empty() || self.len.load(Relaxed) == 0 {
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
    fn purged_since(&self, tags: &[String], since: u64) -> bool {
        if tags.is_empty() || self.len.load(Relaxed) == 0 {
            return false;
        }
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        tags.iter()
            .filter_map(|t| map.get(t.as_str()))
            .any(|m| m.latest() >= since)
    }

    fn invalidates(&self, entry: &Entry) -> bool {
        matches!(self.check(entry), Verdict::Invalid)
    }

    fn retain_newer_than(&self, oldest_live: u64) {
        let keep_after = now_micros().saturating_sub(self.retention.as_micros() as u64);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, m| m.latest() >= oldest_live.min(keep_after));
        self.len.store(map.len(), Relaxed);
    }

    fn clear(&self) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.clear();
        self.len.store(0, Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a way that
    // matters more than losing the cache, so keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    capacity_bytes: u64,
    estimated_items: Option<usize>,
    limits: Limits,
    sweep_interval: Option<Duration>,
    mark_retention: Duration,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        MemoryStoreBuilder {
            capacity_bytes: 256 * 1024 * 1024,
            estimated_items: None,
            limits: Limits::default(),
            sweep_interval: Some(Duration::from_secs(10)),
            mark_retention: MARK_RETENTION,
        }
    }
}

impl MemoryStoreBuilder {
    /// Total weight the store may hold, in bytes (default 256 MiB).
    pub fn capacity_bytes(mut self, bytes: u64) -> Self {
        self.capacity_bytes = bytes;
        self
    }

    /// How many entries to size the index for (default: capacity / 1 KiB).
    pub fn estimated_items(mut self, items: usize) -> Self {
        self.estimated_items = Some(items);
        self
    }

    /// The limits enforced on keys, values and tags.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How long a tag purge's invalidation mark is kept at least (default 5 min), so that a
    /// response fetched before the purge and written after it (stamped with its fetch's start,
    /// see [`SetOptions::as_of`]) is still hidden: set it above your slowest upstream call.
    /// Marks are also kept while any entry older than them lives.
    pub fn mark_retention(mut self, retention: Duration) -> Self {
        self.mark_retention = retention;
        self
    }

    /// How often the background sweep drops expired entries and compacts the tag index
    /// (default 10 s; `None` turns it off, leaving expiry on read only).
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Builds the store. The sweep starts only when called inside a Tokio runtime.
    pub fn build(self) -> MemoryStore {
        let index = Arc::new(TagIndex::new(16));
        let counters = Arc::new(Counters::default());
        let estimated = self
            .estimated_items
            .unwrap_or((self.capacity_bytes / 1024).clamp(64, 1 << 24) as usize);
        let cache = QuickCache::with(
            estimated,
            self.capacity_bytes.max(1),
            SlotWeighter,
            DefaultHashBuilder::default(),
            IndexLifecycle {
                index: index.clone(),
                counters: counters.clone(),
            },
        );
        let store = MemoryStore {
            inner: Arc::new(Inner {
                cache,
                index,
                marks: Marks {
                    map: RwLock::default(),
                    len: AtomicUsize::new(0),
                    retention: self.mark_retention,
                },
                counters,
                limits: self.limits,
                set_lock: Mutex::new(()),
            }),
        };
        if let (Some(interval), Ok(handle)) =
            (self.sweep_interval, tokio::runtime::Handle::try_current())
        {
            handle.spawn(sweep_forever(Arc::downgrade(&store.inner), interval));
        }
        store
    }
}

async fn sweep_forever(inner: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        // Holding only a weak reference lets the store drop, which ends the sweep.
        match inner.upgrade() {
            Some(inner) => MemoryStore { inner }.sweep(),
            None => return,
        }
    }
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
        let mut expires_at = after(entry.lifetime());
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
    }

    fn insert_slot(&self, key: &str, slot: Slot) {
        let mut state = InsertState {
            replacing: key_hash(key),
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
        self.inner.limits.check_key(key)?;
        self.inner.limits.check_entry(&value, options)?;
        self.insert_entry(key, Entry::new(value, options), None);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.limits.check_key(key)?;
        let removed = self.remove_key(key);
        Counters::add(&self.inner.counters.deletes, u64::from(removed));
        Ok(removed)
    }

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
        for (key, value) in items {
            self.inner.limits.check_key(key)?;
            self.inner.limits.check_entry(value, options)?;
        }
        for (key, value) in items {
            self.insert_entry(key, Entry::new(value.clone(), options), None);
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

    async fn delete_tag(&self, tag: &str) -> Result<u64, StoreError> {
        self.inner.limits.check_tag(tag)?;
        Ok(self.purge_tag_at(tag, now_micros()))
    }

    async fn delete_matching(&self, pattern: &str) -> Result<u64, StoreError> {
        let pattern = KeyPattern::glob(pattern)?;
        let n = self.purge_matching_local(&pattern, PurgeMode::Hard);
        Counters::add(&self.inner.counters.deletes, n);
        Ok(n)
    }

    async fn purged_since(&self, tags: &[String], since: SystemTime) -> Result<bool, StoreError> {
        Ok(self.purged_since_local(tags, since))
    }

    async fn purge_key(&self, key: &str, mode: PurgeMode) -> Result<bool, StoreError> {
        match mode {
            PurgeMode::Hard => self.delete(key).await,
            PurgeMode::Soft => {
                self.inner.limits.check_key(key)?;
                Ok(self.soft_purge_key_at(key, now_micros()))
            }
        }
    }

    async fn purge_tag(&self, tag: &str, mode: PurgeMode) -> Result<u64, StoreError> {
        match mode {
            PurgeMode::Hard => self.delete_tag(tag).await,
            PurgeMode::Soft => {
                self.inner.limits.check_tag(tag)?;
                Ok(self.soft_purge_tag_at(tag, now_micros()))
            }
        }
    }

    async fn purge_matching(
        &self,
        pattern: &KeyPattern,
        mode: PurgeMode,
    ) -> Result<u64, StoreError> {
        let n = self.purge_matching_local(pattern, mode);
        if mode == PurgeMode::Hard {
            Counters::add(&self.inner.counters.deletes, n);
        }
        Ok(n)
    }

    async fn clear(&self) -> Result<u64, StoreError> {
        let n = self.remove_all();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn index_follows_replacement_tags() {
        let store = MemoryStore::new(1 << 20);
        store
            .set(
                "k",
                Bytes::from_static(b"1"),
                &SetOptions::new().tags(["a", "b"]),
            )
            .await
            .unwrap();
        assert_eq!(store.tag_index_len(), 2);
        store
            .set(
                "k",
                Bytes::from_static(b"2"),
                &SetOptions::new().tags(["b"]),
            )
            .await
            .unwrap();
        assert_eq!(store.tag_index_len(), 1);
        assert_eq!(store.delete_tag("a").await.unwrap(), 0);
        assert!(store.get("k").await.unwrap().is_some());
        assert_eq!(store.delete_tag("b").await.unwrap(), 1);
        assert!(store.get("k").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn marks_hide_entries_the_index_missed_and_are_swept() {
        let store = MemoryStore::builder()
            .capacity_bytes(1 << 20)
            .mark_retention(Duration::from_millis(1))
            .build();
        store
            .set(
                "k",
                Bytes::from_static(b"1"),
                &SetOptions::new().tags(["t"]),
            )
            .await
            .unwrap();
        // Simulate a lost index membership: the mark alone must hide the entry.
        store.inner.index.take("t");
        store.delete_tag("t").await.unwrap();
        assert!(store.get("k").await.unwrap().is_none());
        // An entry stored after the purge is visible.
        tokio::time::sleep(Duration::from_millis(2)).await;
        store
            .set(
                "k2",
                Bytes::from_static(b"2"),
                &SetOptions::new().tags(["t"]),
            )
            .await
            .unwrap();
        assert!(store.get("k2").await.unwrap().is_some());
        store.sweep();
        assert_eq!(store.inner.marks.len.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn marks_outlive_their_clean_up_for_the_retention() {
        let store = MemoryStore::new(1 << 20);
        store.delete_tag("t").await.unwrap();
        store.sweep();
        assert_eq!(
            store.inner.marks.len.load(Relaxed),
            1,
            "kept for a late write fetched before the purge"
        );
    }
}
