//! The distributed lease: how instances sharing a store coalesce a miss. The instance that
//! leads a miss takes a short-lived store counter; the others see it taken and wait for the
//! leader's response (or serve stale) instead of going upstream too.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::store::{KeySpace, PurgeMode, Store, StoreError, StoreExt};

/// How often an instance waiting on another instance's lease polls the store.
pub(crate) const LEASE_POLL: Duration = Duration::from_millis(25);

type TakeLease = dyn Fn(String) -> BoxFuture<'static, Result<i64, StoreError>> + Send + Sync;

/// The distributed lease's settings: its TTL, and how to take it. Taking it needs the store's
/// counters ([`StoreExt::incr`]), so it is captured here, when the lease is configured, and
/// the rest of the cache needs only the core [`Store`]. A boxed future is fine here: a lease is
/// taken on a miss, next to a round trip to the store and one upstream.
#[derive(Clone)]
pub(crate) struct DistributedLease {
    pub ttl: Duration,
    take: Arc<TakeLease>,
}

impl DistributedLease {
    pub(crate) fn new<St: StoreExt>(store: Arc<St>, ttl: Duration) -> Self {
        let take = move |key: String| -> BoxFuture<'static, Result<i64, StoreError>> {
            let store = store.clone();
            Box::pin(async move { store.incr(&key, 1, Some(ttl)).await })
        };
        DistributedLease {
            ttl,
            take: Arc::new(take),
        }
    }
}

impl std::fmt::Debug for DistributedLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedLease")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The cross-instance lease a leading miss holds (a store counter other instances see):
/// released when dropped, whichever way the miss ends (stored, not storable, cancelled,
/// failed), so other instances never wait out its TTL for nothing.
pub(crate) struct Lease<St: Store> {
    store: Arc<St>,
    key: String,
}

impl<St: Store> Drop for Lease<St> {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // it expires with its TTL
        };
        let (store, key) = (self.store.clone(), std::mem::take(&mut self.key));
        runtime.spawn(async move {
            let _ = store.purge_key(&key, PurgeMode::Hard).await;
        });
    }
}

impl DistributedLease {
    /// Takes the lease on `flight` (the miss's flight key): `Ok(Some)` when this instance now
    /// holds it, `Ok(None)` when another instance does.
    pub(crate) async fn take<St: Store>(
        &self,
        store: &Arc<St>,
        flight: &str,
    ) -> Result<Option<Lease<St>>, StoreError> {
        let key = lease_key(flight);
        let taken = (self.take)(key.clone()).await?;
        Ok((taken == 1).then(|| Lease {
            store: store.clone(),
            key,
        }))
    }
}

fn lease_key(flight: &str) -> String {
    KeySpace::CacheLease.key(flight)
}
