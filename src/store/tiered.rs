//! [`TieredStore`]: an L1 [`MemoryStore`] in front of an L2 [`RedisStore`].

use crate::instruments::TieredGauges;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;

use super::backplane::{BusEvent, BusOp};
use super::entry::now_micros;
use super::pending::{Pending, Queued};
use super::stats::{BreakerState, Counters};
use super::{
    Entry, KeyPattern, Limits, MemoryStore, PurgeMode, RedisStore, SetOptions, Store,
    StoreConfigError, StoreConfigErrorKind, StoreError, StoreExt, StoreStats,
};

/// A two-tier [`Store`] (features `memory` and `redis`): reads try L1 (memory) then L2 (Redis),
/// writes go to both, and invalidations reach every other instance's L1 through the L2
/// backplane.
///
/// - **Reads**: an L1 hit costs no I/O. On an L1 miss, L2 is read under a *soft timeout*
///   (default 50 ms): a slow L2 counts as a miss instead of stalling the request. An L2 hit
///   fills L1 for at most the L1 TTL and never longer than the entry's remaining life in L2.
/// - **Coherence**: every write, delete, tag purge, pattern delete and clear is published on the
///   backplane (keys, tags and actions, never values); other instances drop their L1 copies.
///   An L1 fill that raced with an invalidation is discarded.
/// - **Backplane lost**: from the moment the subscription drops until it is back and L1 has
///   been dropped for it, L1 is not trusted: reads go to L2 and nothing new is put in L1. And
///   a write or invalidation returns only once the channel has all its subscribers again
///   (see [`RedisStore`]'s backplane), so an instance whose subscription dropped just before
///   it cannot serve the old value from L1 after it returned.
/// - **Redis down** (its circuit breaker open): reads keep working on L1. Writes go to L1 and
///   return the error: they did not reach Redis. Invalidations (deletes, key and tag purges)
///   apply to L1, return the error, and are kept (per key and tag, the last one winning) and
///   replayed when Redis answers again; until then this instance reads those keys as misses
///   ([`TieredStore::pending_invalidations`]). A [`Store::clear`] that missed Redis is kept
///   the same way, hiding every entry stored before it; a pattern purge that missed it is
///   reported, not kept.
///
/// Cloning is cheap; clones share both tiers.
#[derive(Clone)]
pub struct TieredStore {
    inner: Arc<Inner>,
}

struct Inner {
    l1: MemoryStore,
    l2: RedisStore,
    l1_ttl: Option<Duration>,
    soft_timeout: Duration,
    counters: Counters,
    /// Bumped by every remote invalidation: an L1 fill that saw it change is discarded.
    epoch: Arc<AtomicU64>,
    soft_timeouts: AtomicU64,
    /// Invalidations that did not reach Redis, replayed when the backplane is back.
    pending: Arc<Pending>,
    /// The backplane subscription whose `Resync` L1 was last dropped for.
    synced: Arc<AtomicU64>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

impl fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStore")
            .field("l1", &self.inner.l1)
            .field("l2", &self.inner.l2)
            .field("l1_ttl", &self.inner.l1_ttl)
            .field("soft_timeout", &self.inner.soft_timeout)
            .finish()
    }
}

/// Builds a [`TieredStore`].
#[derive(Debug)]
pub struct TieredStoreBuilder {
    l1: MemoryStore,
    l2: RedisStore,
    l1_ttl: Option<Duration>,
    soft_timeout: Duration,
}

impl TieredStoreBuilder {
    setters! {
        /// Longest time an entry stays in L1 (default 60 s; `None`: as long as in L2). A shorter
        /// L1 TTL bounds how stale an instance can be if it ever misses a backplane message.
        fn l1_ttl(ttl: Option<Duration>) => set l1_ttl;

        /// How long an L1 miss waits for L2 before it counts as a miss (default 50 ms).
        fn soft_timeout(timeout: Duration) => set soft_timeout;
    }

    /// Builds the store and starts applying the backplane's invalidations to L1.
    ///
    /// # Errors
    ///
    /// A [`StoreConfigError`] when the Redis store runs without a backplane (instances could
    /// not stay coherent) or when not called inside a Tokio runtime.
    pub fn build(self) -> Result<TieredStore, StoreConfigError> {
        let events = self.l2.subscribe().ok_or_else(|| {
            StoreConfigError::new(
                StoreConfigErrorKind::NoBackplane,
                "a tiered store needs its Redis store's backplane",
            )
        })?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreConfigError::new(
                StoreConfigErrorKind::NoRuntime,
                "TieredStore must be built inside a Tokio runtime",
            )
        })?;
        let epoch = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(Pending::default());
        let synced = Arc::new(AtomicU64::new(0));
        let listener = handle.spawn(apply_invalidations(
            events,
            self.l1.clone(),
            epoch.clone(),
            Replay {
                pending: pending.clone(),
                l2: self.l2.clone(),
                synced: synced.clone(),
            },
        ));
        let store = TieredStore {
            inner: Arc::new(Inner {
                l1: self.l1,
                l2: self.l2,
                l1_ttl: self.l1_ttl,
                soft_timeout: self.soft_timeout,
                counters: Counters::default(),
                epoch,
                soft_timeouts: AtomicU64::new(0),
                pending,
                synced,
                listener: Some(listener),
            }),
        };
        if TieredGauges::ENABLED {
            // L1 in use and the replay queue follow from the backplane, the breaker and the
            // queue together, so they are sampled rather than set where each changes.
            let gauges = TieredGauges::new();
            handle.spawn(crate::background::tick_while_alive(
                Arc::downgrade(&store.inner),
                tokio::time::Instant::now(),
                TieredGauges::PERIOD,
                move |inner| {
                    let store = TieredStore { inner };
                    gauges.sample(store.l1_trusted(), store.inner.pending.counts().0);
                    std::future::ready(())
                },
            ));
        }
        Ok(store)
    }
}

/// What the listener needs to replay invalidations once Redis is back.
struct Replay {
    pending: Arc<Pending>,
    l2: RedisStore,
    /// Set to the subscription number once L1 is dropped for it.
    synced: Arc<AtomicU64>,
}

async fn apply_invalidations(
    mut events: tokio::sync::broadcast::Receiver<BusEvent>,
    l1: MemoryStore,
    epoch: Arc<AtomicU64>,
    replay: Replay,
) {
    // The subscription may have come up before `events` was made (the Redis store subscribes
    // as soon as it is built, and a caller may await something in between): its `Resync` is
    // then gone, and without this L1 would stay distrusted until the next resubscription.
    // `events` was made first, so a subscription that begins from here on still sends one.
    if replay.l2.backplane_connected() {
        resync(&l1, &replay);
    }
    let mut closings = replay.l2.breaker_closings();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            // The breaker's background probe found Redis back: send it what waits at once, not
            // at the next retry (an instance whose L1 answers every read sends nothing else).
            Some(Ok(())) = async {
                match closings.as_mut() {
                    Some(closings) => Some(closings.changed().await),
                    None => std::future::pending().await,
                }
            } => {
                let (pending, l2) = (replay.pending.clone(), replay.l2.clone());
                tokio::spawn(async move {
                    pending.replay(&l2).await;
                });
                continue;
            }
        };
        // Bump first: a fill that read L2 before this point must not land after the removal.
        epoch.fetch_add(1, Relaxed);
        match event {
            Ok(BusEvent::Op(BusOp::Keys { keys })) => {
                for key in keys {
                    l1.remove_local(&key);
                }
            }
            Ok(BusEvent::Op(BusOp::Tags { tags, at, soft })) => {
                for tag in tags {
                    if soft {
                        l1.soft_purge_tag_at(&tag, at);
                    } else {
                        l1.purge_tag_at(&tag, at);
                    }
                }
            }
            // Copies of pattern-purged keys are dropped, soft or hard: the next read fetches
            // L2's soft-purged entry.
            Ok(BusEvent::Op(BusOp::Pattern { pattern })) => match KeyPattern::glob(&pattern) {
                Ok(pattern) => {
                    l1.purge_matching_local(&pattern, PurgeMode::Hard);
                }
                Err(_) => {
                    l1.remove_all();
                }
            },
            Ok(BusEvent::Op(BusOp::Regex { regex })) => match KeyPattern::regex(&regex) {
                Ok(pattern) => {
                    l1.purge_matching_local(&pattern, PurgeMode::Hard);
                }
                Err(_) => {
                    l1.remove_all();
                }
            },
            Ok(BusEvent::Op(BusOp::Clear)) => {
                l1.remove_all();
            }
            // Subscribed again: Redis answers. Drop what L1 may have missed, and send Redis
            // the invalidations it missed from this instance.
            Ok(BusEvent::Resync) => resync(&l1, &replay),
            // The epoch bump above cancels fills in flight; reads stop trusting L1 through the
            // store's connection flag (see `TieredStore::l1_trusted`), and the `Resync` that
            // follows the new subscription drops it. Kept meanwhile: if Redis is down
            // altogether, L1 is what serves.
            Ok(BusEvent::Lost) => {}
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "tiered store: backplane lagged, dropping L1");
                l1.remove_all();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// A subscription began: drop what L1 may have missed, trust it from now on, and send Redis
/// the invalidations it missed from this instance.
fn resync(l1: &MemoryStore, replay: &Replay) {
    // The number first, then the drop: a subscription that began meanwhile has a higher
    // number, and L1 stays distrusted until its own `Resync`.
    let subscription = replay.l2.backplane_subscriptions();
    l1.remove_all();
    replay.synced.store(subscription, Relaxed);
    let (pending, l2) = (replay.pending.clone(), replay.l2.clone());
    tokio::spawn(async move {
        pending.replay(&l2).await;
    });
}

impl TieredStore {
    /// A builder over an L1 and an L2 store.
    pub fn builder(l1: MemoryStore, l2: RedisStore) -> TieredStoreBuilder {
        TieredStoreBuilder {
            l1,
            l2,
            l1_ttl: Some(Duration::from_secs(60)),
            soft_timeout: Duration::from_millis(50),
        }
    }

    /// A tiered store with the default settings.
    ///
    /// # Errors
    ///
    /// See [`TieredStoreBuilder::build`].
    pub fn try_new(l1: MemoryStore, l2: RedisStore) -> Result<Self, StoreConfigError> {
        Self::builder(l1, l2).build()
    }

    /// The L1 store.
    pub fn l1(&self) -> &MemoryStore {
        &self.inner.l1
    }

    /// The L2 store.
    pub fn l2(&self) -> &RedisStore {
        &self.inner.l2
    }

    /// Whether L1 answers reads now: the backplane is subscribed and L1 was dropped since that
    /// subscription began, so it missed no invalidation (or Redis is unreachable for every
    /// instance: the breaker is open). While it is `false` — right after start-up, and after a
    /// lost subscription until the next one's resync — reads go to Redis and L1 takes no new
    /// copies.
    pub fn l1_in_use(&self) -> bool {
        self.l1_trusted()
    }

    /// Invalidations that did not reach Redis and wait to be replayed when it answers again
    /// (keys and tags, the last per key winning, and a purge-all counting one), and how many
    /// times the queue overflowed. Until its invalidation has reached Redis, a key reads as a
    /// miss on this instance. Past 10,000 waiting keys and tags nothing is dropped: L1 is
    /// dropped and the queue becomes one purge-all of the namespace, under which every entry
    /// stored before it reads as a miss (and L1 stays out of use) until it is replayed.
    pub fn pending_invalidations(&self) -> (u64, u64) {
        self.inner.pending.counts()
    }

    fn l1_life(&self, entry: &Entry) -> Option<Duration> {
        match (self.inner.l1_ttl, entry.time_to_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Counts an L2 failure instead of failing the call.
    fn absorb<T>(&self, result: Result<T, StoreError>, fallback: T) -> T {
        result.unwrap_or_else(|e| {
            self.inner.counters.error(&e);
            tracing::debug!(error = %e, "tiered store: L2 failed, serving from L1");
            fallback
        })
    }

    /// An invalidation was queued for replay: make sure it is retried, and drop L1 when the
    /// queue overflowed into a purge-all (which hides what L1 holds until it is replayed).
    fn queued(&self, queued: Queued) {
        if queued == Queued::Overflowed {
            self.inner.l1.remove_all();
        }
        self.inner.pending.retry_in_background(&self.inner.l2);
    }

    /// Counts an L2 failure and passes it on.
    fn report<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        result.inspect_err(|e| self.inner.counters.error(e))
    }

    /// Whether L1 may be used: while the backplane is subscribed, or while Redis is down
    /// altogether (its breaker open: no instance can write to it or publish either, and every
    /// instance drops its L1 when its subscription is back). When only the subscription drops
    /// (redis-rs ends the stream) this instance would miss other instances' invalidations, so
    /// from that moment until it has resubscribed and dropped L1, reads go to L2 and nothing
    /// new is put in L1.
    fn l1_trusted(&self) -> bool {
        // A purge-all waits for Redis (the queue overflowed, or a clear missed it): L1 was
        // dropped and stays out of use until it has been replayed.
        !self.inner.pending.clearing()
        // Connected, and L1 dropped since this subscription began (the `Resync` applied).
        && ((self.inner.l2.backplane_connected()
            && self.inner.synced.load(Relaxed) == self.inner.l2.backplane_subscriptions())
            || matches!(
                self.inner.l2.breaker_state(),
                Some(BreakerState::Open | BreakerState::HalfOpen)
            ))
    }

    /// Puts an entry this instance wrote in L1, or drops L1's copy of the key when L1 may not
    /// hold it: while L1 is distrusted, or when a purge of one of the entry's tags came after
    /// the entry was stamped (a fetch that began before the purge, [`SetOptions::as_of`]).
    /// L1 checks its own marks on reads, but drops them with its entries on every
    /// resubscription; L2's marks are the record, so a tagged write asks them (without a
    /// round trip for tags whose marks this instance already knows). With Redis unreachable
    /// the write lives in L1 alone, as reads fall back to it.
    async fn keep_in_l1(&self, key: &str, entry: Entry, local_only: bool) {
        let keep = local_only || {
            let purged = !entry.tags().is_empty()
                && self
                    .inner
                    .l2
                    .purged_since(entry.tags(), entry.stored_at())
                    .await
                    .unwrap_or(true);
            // Trust is read after the marks: a subscription lost meanwhile keeps the entry out.
            !purged && self.l1_trusted()
        };
        if keep {
            let life = self.l1_life(&entry);
            self.inner.l1.insert_entry(key, entry, life);
        } else {
            self.inner.l1.remove_local(key);
        }
    }

    /// Fills L1 with entries read from L2, unless an invalidation arrived meanwhile or the
    /// backplane is down.
    fn fill(&self, epoch_before: u64, items: &[(&str, &Entry)]) {
        if self.inner.epoch.load(Relaxed) != epoch_before || !self.l1_trusted() {
            return;
        }
        for (key, entry) in items {
            self.inner
                .l1
                .insert_entry(key, (*entry).clone(), self.l1_life(entry));
        }
        // The check above and the inserts are not atomic: if an invalidation slipped in
        // between, drop what was just filled.
        if self.inner.epoch.load(Relaxed) != epoch_before {
            for (key, _) in items {
                self.inner.l1.remove_local(key);
            }
        }
    }

    /// Reads L2 under the soft timeout; `None` when it failed or timed out (counted).
    ///
    /// A read that overruns the soft timeout is not dropped: it finishes in the background,
    /// so the Redis store's circuit breaker still learns that Redis hangs (a dropped call
    /// would teach it nothing, and every read would go on paying the soft timeout).
    async fn read_l2(&self, keys: &[&str]) -> Option<Vec<Option<Entry>>> {
        let l2 = self.inner.l2.clone();
        let owned: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        let mut call = Box::pin(async move {
            let keys: Vec<&str> = owned.iter().map(String::as_str).collect();
            l2.read_many(&keys).await
        });
        let result = tokio::select! {
            biased;
            result = &mut call => result,
            () = tokio::time::sleep(self.inner.soft_timeout) => {
                self.inner.soft_timeouts.fetch_add(1, Relaxed);
                Counters::add(&self.inner.counters.timeouts, 1);
                Counters::add(&self.inner.counters.errors, 1);
                tokio::spawn(call);
                return None;
            }
        };
        match result {
            Ok(found) => Some(found),
            Err(e) => {
                self.absorb(Err::<(), _>(e), ());
                None
            }
        }
    }

    /// What L2 says of `keys`, or when it cannot say (Redis down or slow), what L1 holds:
    /// an L1 that was not trusted because the backplane dropped is still better than nothing
    /// when Redis itself is gone, as it is for every instance.
    async fn read_l2_or_l1(
        &self,
        keys: &[&str],
        l1_read: bool,
    ) -> Result<Vec<Option<Entry>>, StoreError> {
        match self.read_l2(keys).await {
            Some(found) => Ok(found),
            None if l1_read => Ok(vec![None; keys.len()]),
            None => self.inner.l1.get_many(keys).await,
        }
    }

    fn count(&self, found: &Option<Entry>) {
        match found {
            Some(entry) => self.inner.counters.hit(entry.is_stale()),
            None => Counters::add(&self.inner.counters.misses, 1),
        }
    }
}

impl Store for TieredStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.l2.limits().check_key_len(key)?;
        if self.inner.pending.holds_key(key) {
            // Its invalidation has not reached Redis yet: no copy of it may be served.
            Counters::add(&self.inner.counters.misses, 1);
            return Ok(None);
        }
        let trusted = self.l1_trusted();
        if trusted
            && let Some(entry) = self.inner.l1.get(key).await?
            && !self.inner.pending.hides(&entry)
        {
            self.inner.counters.hit(entry.is_stale());
            return Ok(Some(entry));
        }
        let epoch = self.inner.epoch.load(Relaxed);
        let [found] = <[_; 1]>::try_from(self.read_l2_or_l1(&[key], trusted).await?)
            .expect("one key, one answer");
        let found = found.filter(|entry| !self.inner.pending.hides(entry));
        if let Some(entry) = &found {
            self.fill(epoch, &[(key, entry)]);
        }
        self.count(&found);
        Ok(found)
    }

    async fn set(&self, key: &str, value: Bytes, options: &SetOptions) -> Result<(), StoreError> {
        self.inner.l2.limits().check_set(key, &value, options)?;
        let entry = Entry::new(value, options);
        let began = self.inner.pending.now();
        let written = self.inner.l2.set_entries(&[(key, entry.clone())]).await;
        // Redis unreachable: the write lives in L1 alone, as reads fall back to it, and the
        // caller hears that it did not reach Redis.
        let local_only = written.is_err();
        if written.is_ok() {
            self.inner.pending.written(key, began);
        }
        self.keep_in_l1(key, entry, local_only).await;
        Counters::add(&self.inner.counters.sets, 1);
        self.report(written)
    }

    // The purge methods apply locally, then report an L2 failure instead of absorbing it like
    // the cache operations above: a purge that did not reach L2 has not taken effect (the entry
    // is still there for every instance), and whoever purged must know.

    async fn purged_since(
        &self,
        tags: &[String],
        since: std::time::SystemTime,
    ) -> Result<bool, StoreError> {
        if self.inner.l1.purged_since_local(tags, since) {
            return Ok(true);
        }
        let remote = self.inner.l2.purged_since(tags, since).await;
        self.report(remote)
    }

    async fn purge_key(&self, key: &str, mode: PurgeMode) -> Result<bool, StoreError> {
        self.inner.l2.limits().check_key(key)?;
        // The local copy goes in both modes; after a soft purge the next read fetches L2's
        // soft-purged entry.
        let local = self.inner.l1.remove_local(key);
        // A purge that did not reach Redis is not done: kept for replay, and reported.
        let remote = self.inner.l2.purge_key(key, mode).await;
        if remote.is_err() {
            self.queued(self.inner.pending.key(key, mode));
        }
        let purged = self.report(remote)? || local;
        if mode == PurgeMode::Hard {
            Counters::add(&self.inner.counters.deletes, u64::from(purged));
        }
        Ok(purged)
    }

    async fn purge_tag(&self, tag: &str, mode: PurgeMode) -> Result<u64, StoreError> {
        self.inner.l2.limits().check_tag(tag)?;
        let at = now_micros();
        let soft = mode == PurgeMode::Soft;
        let local = if soft {
            self.inner.l1.soft_purge_tag_at(tag, at)
        } else {
            self.inner.l1.purge_tag_at(tag, at)
        };
        let remote = self.inner.l2.purge_tag_at(tag, at, soft).await;
        if remote.is_err() {
            self.queued(self.inner.pending.tag(tag, at, soft));
        }
        self.report(remote).map(|remote| local.max(remote))
    }

    async fn purge_matching(
        &self,
        pattern: &KeyPattern,
        mode: PurgeMode,
    ) -> Result<u64, StoreError> {
        let local = self.inner.l1.purge_matching_local(pattern, PurgeMode::Hard);
        let remote = self.inner.l2.purge_matching(pattern, mode).await;
        self.report(remote).map(|remote| local.max(remote))
    }

    async fn clear(&self) -> Result<u64, StoreError> {
        let at = now_micros();
        let local = self.inner.l1.remove_all();
        let remote = self.inner.l2.clear().await;
        if remote.is_err() {
            // Not done: reported, and kept for replay; until then this instance reads
            // everything stored before it as a miss.
            self.inner.pending.all(at);
            self.inner.pending.retry_in_background(&self.inner.l2);
        }
        self.report(remote).map(|remote| local.max(remote))
    }

    fn stats(&self) -> StoreStats {
        let mut stats = self.inner.counters.snapshot();
        stats.l1_in_use = Some(self.l1_trusted());
        let l1 = self.inner.l1.stats();
        stats.entries = l1.entries;
        stats.bytes = l1.bytes;
        stats.tiers.insert("l1", l1);
        stats.tiers.insert("l2", self.inner.l2.stats());
        stats
    }

    fn limits(&self) -> Limits {
        self.inner.l2.limits()
    }
}

impl StoreExt for TieredStore {
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Entry>>, StoreError> {
        for key in keys {
            self.inner.l2.limits().check_key_len(key)?;
        }
        let trusted = self.l1_trusted();
        let mut found = if trusted {
            self.inner.l1.get_many(keys).await?
        } else {
            vec![None; keys.len()]
        };
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
        if !missing.is_empty() {
            let epoch = self.inner.epoch.load(Relaxed);
            let missing_keys: Vec<&str> = missing.iter().map(|&i| keys[i]).collect();
            let fetched = self.read_l2_or_l1(&missing_keys, trusted).await?;
            let fills: Vec<(&str, &Entry)> = missing_keys
                .iter()
                .zip(&fetched)
                .filter_map(|(k, e)| e.as_ref().map(|e| (*k, e)))
                .collect();
            self.fill(epoch, &fills);
            for (i, entry) in missing.into_iter().zip(fetched) {
                found[i] = entry;
            }
        }
        for (slot, key) in found.iter_mut().zip(keys) {
            if self.inner.pending.holds_key(key)
                || slot.as_ref().is_some_and(|e| self.inner.pending.hides(e))
            {
                *slot = None;
            }
        }
        found.iter().for_each(|f| self.count(f));
        Ok(found)
    }

    async fn set_many(
        &self,
        items: &[(&str, Bytes)],
        options: &SetOptions,
    ) -> Result<(), StoreError> {
        let entries = self.inner.l2.limits().checked_entries(items, options)?;
        let mut written = Ok(());
        if !entries.is_empty() {
            let began = self.inner.pending.now();
            written = self.inner.l2.set_entries(&entries).await;
            if written.is_ok() {
                for (key, _) in &entries {
                    self.inner.pending.written(key, began);
                }
            }
        }
        let local_only = written.is_err();
        for (key, entry) in entries {
            self.keep_in_l1(key, entry, local_only).await;
        }
        Counters::add(&self.inner.counters.sets, items.len() as u64);
        self.report(written)
    }

    async fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, StoreError> {
        self.inner.l2.incr(key, delta, ttl).await
    }

    async fn set_add(&self, key: &str, members: &[&str]) -> Result<u64, StoreError> {
        self.inner.l2.set_add(key, members).await
    }

    async fn set_remove(&self, key: &str, members: &[&str]) -> Result<u64, StoreError> {
        self.inner.l2.set_remove(key, members).await
    }

    async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        self.inner.l2.set_members(key).await
    }
}
