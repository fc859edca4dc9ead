//! [`RedisStore`]: a shared store on Redis, with timeouts on every command and a pub/sub
//! backplane.
//!
//! - `mod.rs`: the store and its `Store` operations;
//! - `read.rs`: reading entries: decoding, the tags' invalidation marks, the read counts;
//! - `write.rs`: writing entries with their tag indexes, the backplane publish and the write
//!   fence;
//! - `calls.rs`: how every call runs: the command timeout, the breaker (per node on a
//!   Cluster), the read soft timeout, the breaker's probe, the call's span and figures;
//! - `builder.rs`: [`RedisStoreBuilder`], and the tasks a store starts;
//! - `connection.rs`: one server or a Cluster behind one connection type, batches split per
//!   slot;
//! - `cluster.rs`: a Cluster node by node: the slot map, a connection and a breaker per node;
//! - `routing.rs`: what both share: timeouts, errors that mean "down", a command's slot;
//! - `purge.rs`: tag, soft and pattern purges and their announcement;
//! - `cleanup.rs`: the background clean-up of tag index sets;
//! - `check.rs`: the server version check and the breaker's health check;
//! - `scripts.rs`: the Lua scripts.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

mod builder;
mod calls;
mod check;
mod cleanup;
#[cfg(feature = "redis-cluster")]
mod cluster;
mod connection;
mod purge;
mod read;
mod routing;
mod scripts;
mod write;

pub use self::builder::RedisStoreBuilder;
#[cfg(feature = "health")]
pub use self::check::BreakerCheck;
pub(crate) use self::connection::{Batch, RedisConn, ScanNode, Target, Timeouts, check_namespace};
#[cfg(feature = "redis-cluster")]
pub(crate) use self::connection::{channel_route, cluster_client};
use self::scripts::INCR_WITH_TTL;
use super::backplane::{BusOp, BusShared};
use super::breaker::Breaker;
use super::entry::now_micros;
use super::marks::TagMarks;
use super::stats::BreakerState;
use super::stats::Counters;
use super::{
    Entry, KeyPattern, Limits, Pattern, PurgeMode, SetOptions, Store, StoreError, StoreExt,
    StoreStats,
};
use crate::instruments::RemoteOps;

/// Keys unlinked per pipeline by background clean-up and pattern deletes.
const BATCH: usize = 500;
/// Keys asked of each `SCAN` page.
const SCAN_COUNT: usize = 1000;

/// A [`Store`] on Redis (feature `redis`), one server or a Redis Cluster (feature
/// `redis-cluster`; see [`RedisStore::builder`] for the URLs and the [module
/// docs](super#redis-key-layout-and-cluster-slots) for what runs where).
///
/// - One multiplexed, auto-reconnecting connection (redis-rs's `ConnectionManager`; on a
///   Cluster one per node, see the [module docs](super#redis-key-layout-and-cluster-slots)),
///   connected lazily: building the store never blocks on Redis.
/// - Every command is bounded by the command timeout (default 500 ms): a hung Redis turns into
///   [`StoreError::Timeout`], never a hung request. A lookup ([`Store::get`], what a cache
///   asks on each request) gives up sooner, after the read soft timeout (default 50 ms,
///   [`RedisStoreBuilder::read_soft_timeout`]), and its call finishes in the background, so
///   the circuit breaker still learns of a Redis that hangs.
/// - A circuit breaker (one per node on a Cluster) fails calls at once after a run of
///   timeouts; a background `PING` probes it after each cool-down and closes it.
/// - Batches are pipelines: [`StoreExt::get_many`](crate::store::StoreExt::get_many) and [`StoreExt::set_many`](crate::store::StoreExt::set_many) cost one round trip.
/// - An entry is written together with its tag-index memberships in one `MULTI`.
/// - Tag purges are constant-cost invalidation marks; see the [module docs](super) for the
///   design and the key layout.
/// - A backplane (pub/sub on `ns:bus`, sharded on a Cluster) tells other instances what was
///   invalidated; it can be turned off with [`RedisStoreBuilder::backplane`]. A write or
///   invalidation that publishes returns once the channel has as many subscribers as it had
///   with every instance there (read from the publish's own reply; when it is short, a wait
///   of at most 1 s, polling `PUBSUB NUMSUB`, while an instance whose subscription dropped
///   resubscribes): its local copies are dropped before the write returns.
///
/// Cloning is cheap; clones share the connection. Must be built inside a Tokio runtime.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: RedisConn,
    prefix: String,
    limits: Limits,
    timeout: Duration,
    read_soft_timeout: Option<Duration>,
    mark_ttl: Duration,
    /// The shortest life of a mark (see `RedisStoreBuilder::mark_retention`).
    mark_retention: Duration,
    publish_writes: bool,
    counters: Counters,
    /// Calls by operation and result, and their durations, on the `metrics` facade.
    pub(super) ops: RemoteOps,
    breaker: Option<Breaker>,
    /// Invalidation marks known locally: tag -> last hard and soft purges (0: never).
    marks: Arc<quick_cache::sync::Cache<String, TagMarks>>,
    bus: Option<Arc<BusShared>>,
    _shutdown: Option<oneshot::Sender<()>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("backplane", &self.inner.bus.is_some())
            .finish_non_exhaustive()
    }
}

fn raise_mark(marks: &quick_cache::sync::Cache<String, TagMarks>, tag: &str, mark: TagMarks) {
    let current = marks.get(tag);
    let mut raised = current.unwrap_or_default();
    raised.raise(mark);
    if current != Some(raised) {
        marks.insert(tag.to_owned(), raised);
    }
}

impl RedisStore {
    /// The namespace prefix.
    pub fn namespace(&self) -> &str {
        &self.inner.prefix
    }

    /// Whether the backplane is subscribed right now.
    pub fn backplane_connected(&self) -> bool {
        self.inner
            .bus
            .as_ref()
            .is_some_and(|b| b.connected.load(Relaxed))
    }

    /// How many times the backplane has subscribed (0 before the first time).
    #[cfg(feature = "memory")]
    pub(crate) fn backplane_subscriptions(&self) -> u64 {
        self.inner
            .bus
            .as_ref()
            .map_or(0, |b| b.reconnects.load(Relaxed))
    }

    /// Sends `PING` and returns the round-trip time: a health check.
    ///
    /// # Errors
    ///
    /// [`StoreError::Timeout`] or [`StoreError::Backend`].
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let started = std::time::Instant::now();
        let mut conn = self.inner.conn.clone();
        let _: String = self
            .run("ping", redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(started.elapsed())
    }

    #[cfg(feature = "memory")]
    pub(crate) fn subscribe(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<super::backplane::BusEvent>> {
        self.inner.bus.as_ref().map(|b| b.events.subscribe())
    }

    fn key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.inner.prefix.len() + 3 + key.len());
        full.push_str(&self.inner.prefix);
        full.push_str(":k:");
        full.push_str(key);
        full
    }

    fn mark_key(&self, tag: &str) -> String {
        format!("{}:m:{tag}", self.inner.prefix)
    }

    fn soft_mark_key(&self, tag: &str) -> String {
        format!("{}:s:{tag}", self.inner.prefix)
    }

    fn index_key(&self, tag: &str) -> String {
        format!("{}:i:{tag}", self.inner.prefix)
    }
}

impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.limits.check_key(key)?;
        self.shed("get", key)?;
        let (store, key) = (self.clone(), key.to_owned());
        self.soft_bounded("get", async move { store.read_one(&key).await })
            .await
    }

    async fn set(&self, key: &str, value: Bytes, options: &SetOptions) -> Result<(), StoreError> {
        self.inner.limits.check_set(key, &value, options)?;
        self.shed("set", key)?;
        self.set_entries(&[(key, Entry::new(value, options))]).await
    }

    async fn purged_since(
        &self,
        tags: &[String],
        since: std::time::SystemTime,
    ) -> Result<bool, StoreError> {
        if tags.is_empty() {
            return Ok(false);
        }
        // An empty entry carrying the tags, stored at `since`: the marks hide it or make it stale
        // exactly when a purge since then covers one of them. Known marks answer without a
        // round trip.
        let probe = Entry::new(
            Bytes::new(),
            &SetOptions::new().tags(tags.iter().cloned()).as_of(since),
        );
        let mut probe = [Some(probe)];
        self.filter_invalidated(&mut probe).await?;
        Ok(probe[0].as_ref().is_none_or(Entry::is_stale))
    }

    async fn purge_key(&self, key: &str, mode: PurgeMode) -> Result<bool, StoreError> {
        self.inner.limits.check_key(key)?;
        if mode == PurgeMode::Hard {
            let mut pipe = Batch::new();
            pipe.cmd("UNLINK").arg(self.key(key));
            self.publish(
                &mut pipe,
                BusOp::Keys {
                    keys: vec![key.to_owned()],
                },
            );
            let ((n,), reached): ((u64,), u64) = self.run_publishing("delete", &pipe).await?;
            Counters::add(&self.inner.counters.deletes, n);
            self.fence(reached).await;
            return Ok(n > 0);
        }
        let purged = self.soft_purge_raw(&[self.key(key)], now_micros()).await? > 0;
        self.publish_op(BusOp::Keys {
            keys: vec![key.to_owned()],
        })
        .await?;
        Ok(purged)
    }

    async fn purge_tag(&self, tag: &str, mode: PurgeMode) -> Result<u64, StoreError> {
        self.purge_tag_at(tag, now_micros(), mode == PurgeMode::Soft)
            .await
    }

    async fn purge_matching(
        &self,
        pattern: &KeyPattern,
        mode: PurgeMode,
    ) -> Result<u64, StoreError> {
        let purged = self.purge_scanning(pattern, mode).await?;
        if mode == PurgeMode::Hard {
            Counters::add(&self.inner.counters.deletes, purged);
        }
        self.publish_op(match pattern {
            KeyPattern::Glob(glob) => BusOp::Pattern {
                pattern: glob.as_str().to_owned(),
            },
            KeyPattern::Regex(regex) => BusOp::Regex {
                regex: regex.as_str().to_owned(),
            },
        })
        .await?;
        Ok(purged)
    }

    async fn clear(&self) -> Result<u64, StoreError> {
        let prefix = Pattern::escape(&self.inner.prefix);
        let removed = self.unlink_scanning(&format!("{prefix}:k:*")).await?;
        self.unlink_scanning(&format!("{prefix}:i:*")).await?;
        self.unlink_scanning(&format!("{prefix}:m:*")).await?;
        self.unlink_scanning(&format!("{prefix}:s:*")).await?;
        self.inner.marks.clear();
        Counters::add(&self.inner.counters.deletes, removed);
        self.publish_op(BusOp::Clear).await?;
        Ok(removed)
    }

    fn stats(&self) -> StoreStats {
        let mut stats = self.inner.counters.snapshot();
        stats.breaker = self.breaker_state();
        stats.rejected = self.breaker_counts().0;
        stats.nodes = self.node_states().into_iter().collect();
        stats
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }
}

impl StoreExt for RedisStore {
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Entry>>, StoreError> {
        self.read_many(keys).await
    }

    async fn set_many(
        &self,
        items: &[(&str, Bytes)],
        options: &SetOptions,
    ) -> Result<(), StoreError> {
        self.set_entries(&self.inner.limits.checked_entries(items, options)?)
            .await
    }

    async fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, StoreError> {
        self.inner.limits.check_key(key)?;
        let ttl_ms = ttl.map_or(0, |t| (t.as_millis().min(i64::MAX as u128) as u64).max(1));
        let mut conn = self.inner.conn.clone();
        self.run(
            "incr",
            redis::cmd("EVAL")
                .arg(INCR_WITH_TTL)
                .arg(1)
                .arg(self.key(key))
                .arg(delta)
                .arg(ttl_ms)
                .query_async(&mut conn),
        )
        .await
    }

    async fn set_add(&self, key: &str, members: &[&str]) -> Result<u64, StoreError> {
        self.change_set("set_add", "SADD", key, members).await
    }

    async fn set_remove(&self, key: &str, members: &[&str]) -> Result<u64, StoreError> {
        self.change_set("set_remove", "SREM", key, members).await
    }

    async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        self.inner.limits.check_key(key)?;
        let mut conn = self.inner.conn.clone();
        self.run(
            "set_members",
            redis::cmd("SMEMBERS")
                .arg(self.key(key))
                .query_async(&mut conn),
        )
        .await
    }
}
