//! A backend that writes only the core `Store` (by forwarding to a memory store) and takes
//! every provided method, `StoreExt` included: what a custom backend gets for eight methods.

use bytes::Bytes;
use tower_strata::store::{
    Entry, KeyPattern, Limits, MemoryStore, PurgeMode, SetOptions, Store, StoreError, StoreExt,
    StoreStats,
};

#[derive(Clone)]
pub struct CoreOnly(pub MemoryStore);

impl Store for CoreOnly {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.0.get(key).await
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
    fn stats(&self) -> StoreStats {
        self.0.stats()
    }
    fn limits(&self) -> Limits {
        self.0.limits()
    }
}

// Batches, counters and sets: the provided ones.
impl StoreExt for CoreOnly {}
