//! Invalidation stamps: what a URL's invalidation leaves in the store, so that a fetch of the
//! URL that began before it, on any instance sharing the store, is not stored after it.
//!
//! In one process a fetch in flight is marked directly (`state::Fill`); another instance's
//! fetch can only learn of the invalidation through the store. The invalidation writes the
//! stamp (its time) before it removes the entries; a fill reads the stamp before and after its
//! write, and drops or undoes the write when the stamp is newer than its fetch. With that
//! order no interleaving stores a response fetched before the invalidation: a stamp written
//! after the fill's second read comes before a removal that deletes what it wrote.
//!
//! A stamp lives only as long as a fetch may be in flight (the layer's fill window), as an
//! entry of the store: it counts in the store's budget and expires on its own.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::store::entry::micros;
use crate::store::{KeySpace, SetOptions, Store, StoreError};

/// The store key of the stamp of the URL whose primary store key is `primary`: its own
/// reserved space, apart from the entries and leases.
fn stamp_key(primary: &str) -> String {
    KeySpace::CacheStamp.key(primary)
}

/// Records that the URL is invalidated now, for `window` (how long a fetch may be in flight).
pub(crate) async fn write<St: Store + ?Sized>(
    store: &St,
    primary: &str,
    window: Duration,
) -> Result<(), StoreError> {
    let now = micros(SystemTime::now());
    let options = SetOptions::new().ttl(window);
    store
        .set(&stamp_key(primary), Bytes::from(now.to_string()), &options)
        .await
}

/// Whether the URL was invalidated, on any instance, at or after `since` (when a fetch
/// began). A store error answers `true`: a write that cannot be checked is not made.
pub(crate) async fn newer_than<St: Store + ?Sized>(
    store: &St,
    primary: &str,
    since: SystemTime,
) -> bool {
    match store.get(&stamp_key(primary)).await {
        Ok(None) => false,
        Ok(Some(entry)) => std::str::from_utf8(entry.value())
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .is_none_or(|at| at >= micros(since)),
        Err(_) => true,
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_stamp_hides_fetches_that_began_before_it_only() {
        let store = MemoryStore::new(1 << 20);
        let before = SystemTime::now();
        assert!(!newer_than(&store, "c:GET http://h/a", before).await);
        write(&store, "c:GET http://h/a", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(newer_than(&store, "c:GET http://h/a", before).await);
        assert!(!newer_than(&store, "c:GET http://h/b", before).await);
        let after = SystemTime::now() + Duration::from_millis(1);
        assert!(!newer_than(&store, "c:GET http://h/a", after).await);
    }
}
