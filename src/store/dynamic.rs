//! Type erasure: any [`Store`] behind `Arc<dyn DynStore>`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{
    Entry, KeyPattern, Limits, PurgeMode, SetOptions, Store, StoreError, StoreExt, StoreStats,
};

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The object-safe twin of [`Store`], implemented for every store. Use it through [`BoxStore`].
///
/// Each call allocates its future once; prefer a generic `S: Store` on hot paths.
pub trait DynStore: Send + Sync + 'static {
    /// See [`Store::get`].
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Option<Entry>>;
    /// See [`Store::get_now`].
    fn get_now(&self, key: &str) -> Option<Result<Option<Entry>, StoreError>>;
    /// See [`Store::set`].
    fn set<'a>(&'a self, key: &'a str, value: Bytes, options: &'a SetOptions) -> BoxFut<'a, ()>;
    /// See [`StoreExt::get_many`].
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFut<'a, Vec<Option<Entry>>>;
    /// See [`StoreExt::set_many`].
    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Bytes)],
        options: &'a SetOptions,
    ) -> BoxFut<'a, ()>;
    /// See [`StoreExt::incr`].
    fn incr<'a>(&'a self, key: &'a str, delta: i64, ttl: Option<Duration>) -> BoxFut<'a, i64>;
    /// See [`StoreExt::set_add`].
    fn set_add<'a>(&'a self, key: &'a str, members: &'a [&'a str]) -> BoxFut<'a, u64>;
    /// See [`StoreExt::set_remove`].
    fn set_remove<'a>(&'a self, key: &'a str, members: &'a [&'a str]) -> BoxFut<'a, u64>;
    /// See [`StoreExt::set_members`].
    fn set_members<'a>(&'a self, key: &'a str) -> BoxFut<'a, Vec<String>>;
    /// See [`Store::clear`].
    fn clear(&self) -> BoxFut<'_, u64>;
    /// See [`Store::purge_key`].
    fn purge_key<'a>(&'a self, key: &'a str, mode: PurgeMode) -> BoxFut<'a, bool>;
    /// See [`Store::purge_tag`].
    fn purge_tag<'a>(&'a self, tag: &'a str, mode: PurgeMode) -> BoxFut<'a, u64>;
    /// See [`Store::purge_matching`].
    fn purge_matching<'a>(&'a self, pattern: &'a KeyPattern, mode: PurgeMode) -> BoxFut<'a, u64>;
    /// See [`Store::purged_since`].
    fn purged_since<'a>(&'a self, tags: &'a [String], since: SystemTime) -> BoxFut<'a, bool>;
    /// See [`Store::stats`].
    fn stats(&self) -> StoreStats;
    /// See [`Store::limits`].
    fn limits(&self) -> Limits;
}

impl<S: StoreExt> DynStore for S {
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Option<Entry>> {
        Box::pin(Store::get(self, key))
    }
    fn get_now(&self, key: &str) -> Option<Result<Option<Entry>, StoreError>> {
        Store::get_now(self, key)
    }
    fn set<'a>(&'a self, key: &'a str, value: Bytes, options: &'a SetOptions) -> BoxFut<'a, ()> {
        Box::pin(Store::set(self, key, value, options))
    }
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFut<'a, Vec<Option<Entry>>> {
        Box::pin(StoreExt::get_many(self, keys))
    }
    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Bytes)],
        options: &'a SetOptions,
    ) -> BoxFut<'a, ()> {
        Box::pin(StoreExt::set_many(self, items, options))
    }
    fn incr<'a>(&'a self, key: &'a str, delta: i64, ttl: Option<Duration>) -> BoxFut<'a, i64> {
        Box::pin(StoreExt::incr(self, key, delta, ttl))
    }
    fn set_add<'a>(&'a self, key: &'a str, members: &'a [&'a str]) -> BoxFut<'a, u64> {
        Box::pin(StoreExt::set_add(self, key, members))
    }
    fn set_remove<'a>(&'a self, key: &'a str, members: &'a [&'a str]) -> BoxFut<'a, u64> {
        Box::pin(StoreExt::set_remove(self, key, members))
    }
    fn set_members<'a>(&'a self, key: &'a str) -> BoxFut<'a, Vec<String>> {
        Box::pin(StoreExt::set_members(self, key))
    }
    fn clear(&self) -> BoxFut<'_, u64> {
        Box::pin(Store::clear(self))
    }
    fn purge_key<'a>(&'a self, key: &'a str, mode: PurgeMode) -> BoxFut<'a, bool> {
        Box::pin(Store::purge_key(self, key, mode))
    }
    fn purge_tag<'a>(&'a self, tag: &'a str, mode: PurgeMode) -> BoxFut<'a, u64> {
        Box::pin(Store::purge_tag(self, tag, mode))
    }
    fn purge_matching<'a>(&'a self, pattern: &'a KeyPattern, mode: PurgeMode) -> BoxFut<'a, u64> {
        Box::pin(Store::purge_matching(self, pattern, mode))
    }
    fn purged_since<'a>(&'a self, tags: &'a [String], since: SystemTime) -> BoxFut<'a, bool> {
        Box::pin(Store::purged_since(self, tags, since))
    }
    fn stats(&self) -> StoreStats {
        Store::stats(self)
    }
    fn limits(&self) -> Limits {
        Store::limits(self)
    }
}

/// Any [`StoreExt`] behind `Arc<dyn DynStore>`: cloneable, and itself a [`Store`] and a
/// [`StoreExt`].
///
/// ```
/// # #[cfg(feature = "memory")] {
/// use tower_strata::store::{BoxStore, MemoryStore};
///
/// let store: BoxStore = BoxStore::new(MemoryStore::new(1 << 20));
/// let shared = store.clone();
/// # }
/// ```
#[derive(Clone)]
pub struct BoxStore(Arc<dyn DynStore>);

impl BoxStore {
    /// Erases a store's type.
    pub fn new(store: impl StoreExt) -> Self {
        BoxStore(Arc::new(store))
    }

    /// Wraps an already shared store.
    pub fn from_arc(store: Arc<dyn DynStore>) -> Self {
        BoxStore(store)
    }

    /// The shared store.
    pub fn as_arc(&self) -> &Arc<dyn DynStore> {
        &self.0
    }
}

impl fmt::Debug for BoxStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxStore").finish_non_exhaustive()
    }
}

impl Store for BoxStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.0.get(key).await
    }
    fn get_now(&self, key: &str) -> Option<Result<Option<Entry>, StoreError>> {
        self.0.get_now(key)
    }
    async fn set(&self, key: &str, value: Bytes, options: &SetOptions) -> Result<(), StoreError> {
        self.0.set(key, value, options).await
    }
    async fn clear(&self) -> Result<u64, StoreError> {
        self.0.clear().await
    }
    async fn purge_key(&self, key: &str, mode: PurgeMode) -> Result<bool, StoreError> {
        self.0.purge_key(key, mode).await
    }
    async fn purge_tag(&self, tag: &str, mode: PurgeMode) -> Result<u64, StoreError> {
        self.0.purge_tag(tag, mode).await
    }
    async fn purge_matching(
        &self,
        pattern: &KeyPattern,
        mode: PurgeMode,
    ) -> Result<u64, StoreError> {
        self.0.purge_matching(pattern, mode).await
    }
    async fn purged_since(&self, tags: &[String], since: SystemTime) -> Result<bool, StoreError> {
        self.0.purged_since(tags, since).await
    }
    fn stats(&self) -> StoreStats {
        self.0.stats()
    }
    fn limits(&self) -> Limits {
        self.0.limits()
    }
}

impl StoreExt for BoxStore {
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Entry>>, StoreError> {
        self.0.get_many(keys).await
    }
    async fn set_many(
        &self,
        items: &[(&str, Bytes)],
        options: &SetOptions,
    ) -> Result<(), StoreError> {
        self.0.set_many(items, options).await
    }
    async fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, StoreError> {
        self.0.incr(key, delta, ttl).await
    }
    async fn set_add(&self, key: &str, members: &[&str]) -> Result<u64, StoreError> {
        self.0.set_add(key, members).await
    }
    async fn set_remove(&self, key: &str, members: &[&str]) -> Result<u64, StoreError> {
        self.0.set_remove(key, members).await
    }
    async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        self.0.set_members(key).await
    }
}
