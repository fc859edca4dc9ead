//! The ground floor: a [`Store`] of byte values with entry metadata, and its implementations.
//!
//! - [`MemoryStore`] (feature `memory`): in-process, on `quick_cache`, weighted by bytes.
//! - [`RedisStore`] (feature `redis`): a shared Redis, with a pub/sub backplane.
//! - [`TieredStore`] (features `memory` and `redis`): an L1 [`MemoryStore`] in front of an L2
//!   [`RedisStore`], kept coherent across instances by the backplane.
//! - [`BoxStore`]: any store behind `Arc<dyn ...>`, for when the type must not leak.
//! - [`TypedCache`]: typed values (`serde`) on any store, with single-flight
//!   [`get_or_compute`](TypedCache::get_or_compute).
//!
//! This module knows no HTTP; the response cache layer builds on it.
//!
//! A backend implements two traits: [`Store`], the core every layer needs (read, write,
//! clear, purge by key, tag and pattern, stats: eight required methods), and [`StoreExt`]
//! (batches, counters, sets), whose methods all have provided implementations, so
//! `impl StoreExt for MyStore {}` is enough to start.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_strata::store::StoreError> {
//! use std::time::Duration;
//! use bytes::Bytes;
//! use tower_strata::store::{MemoryStore, PurgeMode, SetOptions, Store};
//!
//! let store = MemoryStore::builder().capacity_bytes(64 * 1024 * 1024).build();
//! let options = SetOptions::new().ttl(Duration::from_secs(60)).tags(["products"]);
//! store.set("product:1", Bytes::from_static(b"{\"id\":1}"), &options).await?;
//! assert!(store.get("product:1").await?.is_some());
//!
//! // One call invalidates every entry carrying the tag, however many there are.
//! store.purge_tag("products", PurgeMode::Hard).await?;
//! assert!(store.get("product:1").await?.is_none());
//! # Ok(())
//! # }
//! ```
//!
//! # Entries, staleness and grace
//!
//! An [`Entry`] records when it was stored, its TTL and its grace period. A store keeps an entry
//! for TTL + grace; [`Store::get`] returns it while it is fresh and, during grace, returns it
//! marked stale ([`Entry::is_stale`]) so a cache can serve it while it refreshes, or when the
//! origin fails. Past grace it is gone.
//!
//! # Keys, namespaces and limits
//!
//! Every store checks keys, values, tags and patterns against its [`Limits`] before any I/O and
//! refuses what is over them with a [`StoreError`] that says which limit: values are never
//! truncated. Shared backends put every key under a namespace prefix, so several applications can
//! share one Redis; [`Store::clear`] only clears its own namespace.
//!
//! # Reserved keys and tags
//!
//! An application and the crate's layers may share one store (one Redis namespace): the
//! application's own keys beside the response cache's entries, leases and stamps. The layers'
//! keys and tags live in reserved spaces, each named by its prefix here and nowhere else; every
//! other key and tag is the application's.
//!
//! | Space | Prefix | What lives there |
//! |---|---|---|
//! | [`KeySpace::CacheEntry`] | `c:` | a stored response, or the `Vary` index of a URL's variants, under the request's identity (`c:GET http://host/path`) |
//! | [`KeySpace::HashedCacheEntry`] | `c#` | the same, under a hash of an identity too long or not printable |
//! | [`KeySpace::CacheLease`] | `l:` | a distributed lease on a cache fill |
//! | [`KeySpace::CacheStamp`] | `i:` | a URL's invalidation stamp, which hides fetches in flight on other instances |
//! | [`TagSpace::CacheUrl`] | `~url:` | the tag every variant of one URL carries |
//! | [`TagSpace::CachePrincipal`] | `~principal:` | the tag every private entry of one user carries |
//!
//! Tags beginning with `~` are all reserved: the response cache drops them from a response's
//! `Surrogate-Key`, `Cache-Tag` and [`CacheTags`](crate::cache::CacheTags). The application's
//! typed access ([`TypedCache`]) refuses a key in a reserved space with
//! [`StoreError::ReservedKey`], and [`KeyBuilder`] never builds one, so an application value
//! is never read as a cached response, nor a response as an application value. The raw
//! [`Store`] does not check (it is the layers' own access): an application that writes through
//! it keeps out of these prefixes itself, as [`KeySpace::of`] tells.
//!
//! # How tags scale: invalidation marks, checked lazily
//!
//! Purging a tag that 100,000 entries carry must not cost 100,000 operations on the request
//! path nor block Redis. The design follows FusionCache's: a purge records an *invalidation mark*
//! (the time of the purge) for the tag, which is one write whatever the tag's size. Every entry
//! records when it was stored, so a read of a tagged entry compares the entry's `stored_at` with
//! the marks of its tags and treats the entry as absent when a mark is newer. Removing the
//! entries themselves is clean-up, done in the background in bounded batches.
//!
//! - **Memory**: the purge swaps the tag's member set out of the tag index (O(1)), records the
//!   mark and removes the members in the background; the mark is forgotten once they are gone.
//!   Reads check marks only while some purge is still being cleaned up.
//! - **Redis**: the purge is one `SET` of the mark key plus one `PUBLISH` on the backplane;
//!   a background task then walks the tag's index set with `SSCAN` and `UNLINK`s its members in
//!   batches. Each instance keeps the marks it has seen in memory and the backplane pushes new
//!   ones to every instance, so a Redis hit stays **one round trip**. A tag an instance has not
//!   seen yet costs one extra pipelined `GET` once; while the backplane is disconnected, marks are
//!   re-read on every tagged read (correct, slower) and the known marks are dropped on reconnect.
//! - **Soft purges** ([`PurgeMode::Soft`]) leave a second, *soft* mark per tag: an entry stored
//!   before it is returned stale (its TTL cut to end at the purge) for the rest of its grace
//!   period, so a cache serves it while one request refreshes it. Nothing is removed.
//! - **Late writes**: a cache stamps an entry with the time its origin fetch *began*
//!   ([`SetOptions::as_of`]), so a purge made while the fetch was in flight is newer than the
//!   entry and hides it. Marks therefore live as long as what they may hide: at least five
//!   minutes for fetches in flight ([`MemoryStoreBuilder::mark_retention`],
//!   [`RedisStoreBuilder::mark_retention`]), and on Redis as long as the tag's entries (the
//!   index's TTL at the purge, extended by each entry of the tag written later), at most
//!   [`RedisStoreBuilder::mark_ttl`]. The memory store keeps at most a sixteenth of its capacity
//!   in marks; past that the older half folds into one floor before which tagged entries count
//!   as purged (a miss, never a stale hit).
//! - Marks compare clocks of different machines: keep them in sync (NTP). A writer whose clock
//!   runs behind a purger's by more than the time between its write and the purge could see its
//!   entry survive the purge's mark; the background clean-up removes it all the same.
//!
//! # Pattern purges
//!
//! [`Store::purge_matching`] takes a glob or a regular expression ([`KeyPattern`]). On Redis a
//! glob is matched by `SCAN MATCH` and a regular expression on the client, against the keys
//! each `SCAN` page returns: the purge walks the namespace (O(keys) for the purger, in pages of
//! 1,000, never blocking Redis) and costs nothing per lookup, unlike Varnish's bans, which are
//! checked on every read. The memory store walks its own keys the same way.
//!
//! # Redis key layout and Cluster slots
//!
//! With namespace `ns`, a [`RedisStore`] uses `ns:k:{key}` for entries, counters and sets,
//! `ns:m:{tag}` and `ns:s:{tag}` for a tag's hard and soft invalidation marks, `ns:i:{tag}`
//! for a tag's index set and the channel `ns:bus` for the backplane.
//!
//! On a Redis Cluster (feature `redis-cluster`, URL `redis-cluster://host:port,...`) a command
//! or `MULTI` whose keys fall in different hash slots is refused with `CROSSSLOT`: an error,
//! not a step that merely loses atomicity. So the store never sends one:
//!
//! - every command touches one key (no `MGET`, no multi-key `DEL`), and the Lua scripts one;
//! - a batch (a `get_many`, the marks of several tags, an entry with its index memberships)
//!   is one pipeline per hash slot, sent concurrently, its replies put back in order;
//! - the `MULTI` that writes an entry together with its index memberships becomes one `MULTI`
//!   per slot. The entry and its index sets usually live in different slots, so on a Cluster
//!   they are not written atomically; the index is only clean-up (purges take effect through
//!   the marks, which are single keys), so a membership that did not land leaves an entry to
//!   expire instead of being cleaned up early. Put a hash tag in the namespace
//!   (`{app}`) to keep all of it in one slot if you need that write atomic, at the price of
//!   one shard holding the whole namespace;
//! - pattern purges, [`Store::clear`] and the index sweep `SCAN` every master in turn;
//! - the backplane uses sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7): `ns:bus` lives on
//!   the shard that owns its slot, each message goes to that shard only (a classic `PUBLISH`
//!   is broadcast to every node over the cluster bus), and since every subscriber sits there
//!   the write fence counts them with one `PUBSUB SHARDNUMSUB`. The subscription follows the
//!   shard: when its master is lost or the slot moves, the store hears of it, distrusts its
//!   local copies and subscribes again.
//!
//! The store sees a Cluster node by node: its own slot map (`CLUSTER SLOTS`), one connection
//! and one circuit breaker per master. A master that hangs or dies opens its own breaker and
//! turns off its own slots only (a cache in front passes through to its origin for them);
//! the other masters' keys keep answering, and a batch that spans masters answers nil for the
//! failed master's reads only. When a node times out, while a breaker is open and every few
//! seconds otherwise, the slot map is asked again of the nodes that answer, so once the
//! cluster has promoted a replica its slots go there, even while the old master still hangs.
//! A hit costs one round trip either way; the bench `cache_layer` measures the difference.
//!
//! With Redis's default `cluster-require-full-coverage yes`, from the moment the cluster
//! flags a lost master `FAIL` until its replica is promoted, every node refuses every key
//! (`CLUSTERDOWN`) and no client can help it; `cluster-require-full-coverage no` keeps the
//! other masters serving through that window.

#[cfg(feature = "redis")]
mod config;
mod dynamic;
pub(crate) mod entry;
mod error;
mod glob;
mod keyspace;
#[cfg(any(feature = "memory", feature = "redis"))]
mod marks;
mod stats;
mod typed;

#[cfg(feature = "redis")]
mod backplane;
#[cfg(feature = "redis")]
pub(crate) mod breaker;
#[cfg(feature = "memory")]
mod memory;
#[cfg(all(feature = "memory", feature = "redis"))]
mod pending;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "redis")]
pub(crate) mod subscriber;
#[cfg(all(feature = "memory", feature = "redis"))]
mod tiered;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use config::{Preset, StoreConfig};
pub use dynamic::{BoxStore, DynStore};
pub use entry::{Entry, Limits, SetOptions};
pub use error::{StoreConfigError, StoreConfigErrorKind, StoreError};
pub use glob::{KeyPattern, MAX_REGEX_LEN, Pattern, RegexPattern};
pub use keyspace::{KeySpace, TagSpace};
pub use stats::{BreakerState, StoreStats};
pub use typed::{ComputeError, DEFAULT_COMPRESS_ABOVE, KeyBuilder, TypedCache, TypedCacheError};

#[cfg(all(feature = "redis", feature = "health"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "redis", feature = "health"))))]
pub use self::redis::BreakerCheck;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisStore, RedisStoreBuilder};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use breaker::{BreakerSettings, DEFAULT_BREAKER_COOL_DOWN, DEFAULT_BREAKER_FAILURES};
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(all(feature = "memory", feature = "redis"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "memory", feature = "redis"))))]
pub use tiered::{TieredStore, TieredStoreBuilder};

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

/// How a purge treats the entries it names.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PurgeMode {
    /// Remove them: the next read is a miss.
    #[default]
    Hard,
    /// Mark them stale as of now and keep them for their grace period, so a cache can serve them
    /// stale while one request refreshes them (Varnish `softpurge`, Fastly soft purge). An entry
    /// without grace is as good as gone.
    Soft,
}

/// A key-value store of byte values with entry metadata: the core every layer needs. A backend
/// writes eight methods (`get`, `set`, `clear`, one purge per kind of target: `purge_key`,
/// `purge_tag`, `purge_matching`, each taking a [`PurgeMode`], and `stats`, `limits`); reading
/// without I/O and the invalidation marks have provided implementations it may override, and
/// batches, counters and sets are in [`StoreExt`], all provided.
///
/// Methods return `Send` futures, so a store can be used from any Tokio task. Use a store as a
/// generic (`S: Store`, zero cost) or, where the type must be erased, as a [`BoxStore`].
///
/// Implementations check their [`Limits`] before any I/O. Backend failures surface as
/// [`StoreError::Timeout`] or [`StoreError::Backend`]; every network call has a timeout.
pub trait Store: Send + Sync + 'static {
    /// Reads an entry: fresh, or stale inside its grace period (see [`Entry::is_stale`]).
    /// Entries invalidated by a tag purge or past grace are `None`.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Entry>, StoreError>> + Send;

    /// [`Store::get`] answered at once, when the store can without I/O (an in-process store):
    /// `Some` with what `get` would return, or `None` to make the caller await `get`. The
    /// response cache asks it first, so a hit needs no future and no allocation for one.
    ///
    /// The provided implementation answers `None`; [`MemoryStore`] answers every read.
    fn get_now(&self, key: &str) -> Option<Result<Option<Entry>, StoreError>> {
        let _ = key;
        None
    }

    /// Writes an entry with the given TTL, grace period and tags, replacing any previous one.
    fn set(
        &self,
        key: &str,
        value: Bytes,
        options: &SetOptions,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes everything in this store's namespace. Returns how many keys went.
    fn clear(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Purges one key. [`PurgeMode::Hard`] (the default mode) removes it, whatever it holds
    /// (an entry, a counter or a set): the next read is a miss. [`PurgeMode::Soft`] keeps an
    /// entry but makes it stale from now on, so a cache serves it inside its grace period while
    /// one refresh goes upstream (Varnish's soft purge). Returns whether something was there.
    ///
    /// A backend with no soft form purges hard in both modes: an entry without grace is as
    /// good as gone.
    fn purge_key(
        &self,
        key: &str,
        mode: PurgeMode,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Purges every entry carrying `tag`, hard or soft (see [`Store::purge_key`]), at a cost
    /// that does not grow with their number (see the module docs). Returns how many entries
    /// the tag held when it was purged.
    fn purge_tag(
        &self,
        tag: &str,
        mode: PurgeMode,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Purges every key of this store's namespace matching a glob (`*`, `?`, `[abc]`) or a
    /// regular expression, hard or soft. Returns how many went.
    ///
    /// A backend that cannot match regular expressions answers [`StoreError::Unsupported`] to
    /// one. A malformed pattern never reaches a store: [`KeyPattern`] is parsed beforehand.
    fn purge_matching(
        &self,
        pattern: &KeyPattern,
        mode: PurgeMode,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Whether a tag purge (hard or soft) made after `since` covers any of `tags`: whether a
    /// value fetched at `since` and carrying these tags is out of date. A cache asks before
    /// handing a response fetched by one request to others that joined it later (coalescing),
    /// so a purge made during the fetch is not bypassed in memory.
    ///
    /// The provided implementation cannot know and answers `true` for any tag (never coalesce
    /// tagged values); the crate's stores answer from their invalidation marks.
    fn purged_since(
        &self,
        tags: &[String],
        since: std::time::SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = since;
        let any = !tags.is_empty();
        async move { Ok(any) }
    }

    /// A snapshot of the store's counters.
    fn stats(&self) -> StoreStats;

    /// The limits this store enforces.
    fn limits(&self) -> Limits;
}

/// What a [`Store`] can do beyond the core the layers need: batches, counters and sets. Every
/// method has a provided implementation, so a custom backend writes `impl StoreExt for MyStore
/// {}` and overrides what it can do better (the crate's stores override them all).
///
/// - the batch methods default to one [`Store::get`] or [`Store::set`] per key, in turn;
/// - counters and sets default to [`StoreError::Unsupported`]: they cannot be built atomically
///   from the core.
///
/// The response cache and the typed cache need none of this, except for
/// [`CacheLayer::distributed_lease`], which takes its lease with [`StoreExt::incr`]. A
/// [`BoxStore`], and so a `Purger` and [`StoreConfig::build`], need the trait implemented (it
/// may be empty).
///
/// [`CacheLayer::distributed_lease`]: crate::cache::CacheLayer::distributed_lease
pub trait StoreExt: Store {
    /// Reads several entries at once (one round trip on Redis), in the order of `keys`.
    ///
    /// The provided implementation reads them one after the other.
    fn get_many(
        &self,
        keys: &[&str],
    ) -> impl Future<Output = Result<Vec<Option<Entry>>, StoreError>> + Send {
        async move {
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                found.push(self.get(key).await?);
            }
            Ok(found)
        }
    }

    /// Writes several entries with the same options at once (one round trip on Redis).
    ///
    /// The provided implementation writes them one after the other.
    fn set_many(
        &self,
        items: &[(&str, Bytes)],
        options: &SetOptions,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            for (key, value) in items {
                self.set(key, value.clone(), options).await?;
            }
            Ok(())
        }
    }

    /// Adds `delta` to a counter atomically and returns the new value. A missing counter starts
    /// at 0; `ttl`, if any, is set when the counter is created and not extended afterwards.
    ///
    /// The provided implementation answers [`StoreError::Unsupported`].
    fn incr(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send {
        let _ = (key, delta, ttl);
        std::future::ready(Err(StoreError::Unsupported { op: "incr" }))
    }

    /// Subtracts `delta` from a counter atomically: [`StoreExt::incr`] with `-delta`.
    fn decr(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send {
        async move {
            let negated = delta.checked_neg().ok_or_else(|| StoreError::Overflow {
                key: error::cut(key),
            })?;
            self.incr(key, negated, ttl).await
        }
    }

    /// Adds members to a set, creating it. Returns how many were new.
    ///
    /// The provided implementation answers [`StoreError::Unsupported`].
    fn set_add(
        &self,
        key: &str,
        members: &[&str],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = (key, members);
        std::future::ready(Err(StoreError::Unsupported { op: "set_add" }))
    }

    /// Removes members from a set. Returns how many were there.
    ///
    /// The provided implementation answers [`StoreError::Unsupported`].
    fn set_remove(
        &self,
        key: &str,
        members: &[&str],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = (key, members);
        std::future::ready(Err(StoreError::Unsupported { op: "set_remove" }))
    }

    /// The members of a set, in no particular order; empty when the set does not exist.
    ///
    /// The provided implementation answers [`StoreError::Unsupported`].
    fn set_members(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        let _ = key;
        std::future::ready(Err(StoreError::Unsupported { op: "set_members" }))
    }
}

impl<S: Store> Store for std::sync::Arc<S> {
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Entry>, StoreError>> + Send {
        (**self).get(key)
    }
    fn get_now(&self, key: &str) -> Option<Result<Option<Entry>, StoreError>> {
        (**self).get_now(key)
    }
    fn set(
        &self,
        key: &str,
        value: Bytes,
        options: &SetOptions,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).set(key, value, options)
    }
    fn clear(&self) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).clear()
    }
    fn purge_key(
        &self,
        key: &str,
        mode: PurgeMode,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).purge_key(key, mode)
    }
    fn purge_tag(
        &self,
        tag: &str,
        mode: PurgeMode,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).purge_tag(tag, mode)
    }
    fn purge_matching(
        &self,
        pattern: &KeyPattern,
        mode: PurgeMode,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).purge_matching(pattern, mode)
    }
    fn purged_since(
        &self,
        tags: &[String],
        since: std::time::SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).purged_since(tags, since)
    }
    fn stats(&self) -> StoreStats {
        (**self).stats()
    }
    fn limits(&self) -> Limits {
        (**self).limits()
    }
}

impl<S: StoreExt> StoreExt for std::sync::Arc<S> {
    fn get_many(
        &self,
        keys: &[&str],
    ) -> impl Future<Output = Result<Vec<Option<Entry>>, StoreError>> + Send {
        (**self).get_many(keys)
    }
    fn set_many(
        &self,
        items: &[(&str, Bytes)],
        options: &SetOptions,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).set_many(items, options)
    }
    fn incr(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send {
        (**self).incr(key, delta, ttl)
    }
    fn set_add(
        &self,
        key: &str,
        members: &[&str],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).set_add(key, members)
    }
    fn set_remove(
        &self,
        key: &str,
        members: &[&str],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).set_remove(key, members)
    }
    fn set_members(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        (**self).set_members(key)
    }
}
