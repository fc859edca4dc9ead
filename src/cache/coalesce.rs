//! Step 2a, coalesce: concurrent misses on one URL (one variant, when the `Vary` index is
//! known) send one request upstream; the others wait for its response. With a distributed
//! lease, instances sharing a store coalesce too.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::HeaderMap;
use http::Method;

use super::forward::Miss;
use super::key::{self, store_key, vary_names};
use super::layer::Ctx;
use super::lookup::{Found, lookup};
use super::outage::StoreOp;
use super::serve::{Resp, serve};
use super::state::{FlightGuard, Join, Outcome, Shared};
use crate::store::{Store, StoreError, StoreExt};

/// How often an instance waiting on another instance's lease polls the store.
const LEASE_POLL: Duration = Duration::from_millis(25);

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
    pub fn new<St: StoreExt>(store: Arc<St>, ttl: Duration) -> Self {
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
    ctx: Arc<Ctx<St>>,
    key: String,
}

impl<St: Store> Drop for Lease<St> {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // it expires with its TTL
        };
        let (ctx, key) = (self.ctx.clone(), std::mem::take(&mut self.key));
        runtime.spawn(async move {
            let _ = ctx.store.delete(&key).await;
        });
    }
}

/// What joining the misses in flight came to.
pub(crate) enum Coalesced<RB, St: Store> {
    /// Answered from another request's response.
    Served(Resp<RB>),
    /// This request goes upstream for the others; the guard hands its response to them, the
    /// lease tells other instances.
    Lead(FlightGuard, Option<Lease<St>>),
    /// This request goes upstream on its own.
    Alone,
}

/// Joins the miss in flight for this request's URL (its variant, once known), or leads one.
pub(crate) async fn coalesce<St: Store, RB>(
    ctx: &Arc<Ctx<St>>,
    headers: &HeaderMap,
    method: &Method,
    miss: &Miss,
) -> Coalesced<RB, St> {
    let primary = miss.key.store_key();
    let identity = miss.key.identity();
    let plain = !super::revalidate::has_conditionals(headers);
    let mut flight = match &miss.vary {
        Some(names) => store_key(&key::variant_identity(identity, names, headers)),
        None => primary.to_owned(),
    };
    loop {
        match ctx.shared.join(primary, &flight) {
            Join::Leader(guard) if plain || miss.stale.is_some() => {
                return lead(ctx, headers, method, miss, guard, &flight).await;
            }
            // A conditional request with nothing stored: its response is the client's own.
            Join::Leader(_) => return Coalesced::Alone,
            Join::Waiter(mut rx) => {
                // In a block of its own: the watch guard must be gone before the next await.
                let handed = {
                    let waited = tokio::time::timeout(
                        ctx.config.coalesce_timeout,
                        rx.wait_for(Option::is_some),
                    )
                    .await;
                    match waited {
                        Ok(Ok(outcome)) => match &*outcome {
                            Some(Outcome::Stored(record, provenance)) => {
                                Some((record.clone(), provenance.clone()))
                            }
                            _ => None,
                        },
                        _ => None,
                    }
                };
                let Some((record, provenance)) = handed else {
                    return Coalesced::Alone;
                };
                // A purge since the leader began fetching (a writer committed meanwhile)
                // makes its response out of date for this request, which may have started
                // after the write returned: go upstream instead. A store error counts as
                // purged. With the store failing, purges in this process still detach the
                // flight (see `Shared::forget`), and the others cannot be read.
                if !provenance.tags.is_empty()
                    && !miss.store_failed
                    && !matches!(
                        ctx.store
                            .purged_since(&provenance.tags, provenance.fetched_at)
                            .await,
                        Ok(false)
                    )
                {
                    return Coalesced::Alone;
                }
                let names = vary_names(&record.headers);
                let expected = key::select_variant(identity, &names, headers);
                if record.identity == expected {
                    Shared::count(&ctx.shared.coalesced);
                    let found = Found::handed_over(record);
                    return Coalesced::Served(serve(
                        ctx,
                        &found,
                        method,
                        headers,
                        "hit; detail=coalesced",
                    ));
                }
                let own = store_key(&expected);
                if names.is_empty() || own == flight {
                    return Coalesced::Alone;
                }
                // The leader fetched another variant: coalesce with the requests for this one.
                flight = own;
            }
        }
    }
}

/// This request leads the miss: look once more (the previous leader may have stored the
/// response and left since this request's lookup), then take the distributed lease.
async fn lead<St: Store, RB>(
    ctx: &Arc<Ctx<St>>,
    headers: &HeaderMap,
    method: &Method,
    miss: &Miss,
    guard: FlightGuard,
    flight: &str,
) -> Coalesced<RB, St> {
    let config = &ctx.config;
    if miss.looked_up
        && let Ok(look) = lookup(ctx, &miss.key, headers).await
        && let Some(found) = look.found
        && !found.is_stale()
    {
        guard.publish(Outcome::Stored(found.record.clone(), found.provenance()));
        drop(guard);
        Shared::count(&ctx.shared.hits);
        return Coalesced::Served(serve(ctx, &found, method, headers, "hit"));
    }
    let Some(lease) = config.lease.as_ref().filter(|_| !miss.store_failed) else {
        return Coalesced::Lead(guard, None);
    };
    let lease_ttl = lease.ttl;
    let key = lease_key(flight);
    match (lease.take)(key.clone()).await {
        Ok(1) => {
            let lease = Lease {
                ctx: ctx.clone(),
                key,
            };
            return Coalesced::Lead(guard, Some(lease));
        }
        Ok(_) => {}
        Err(error) => {
            ctx.shared.store_failed(StoreOp::Lease, &error);
            return Coalesced::Lead(guard, None);
        }
    }
    // Another instance is fetching this key.
    if let Some(found) = &miss.stale
        && !found.record.freshness.must_revalidate
    {
        Shared::count(&ctx.shared.stale_hits);
        return Coalesced::Served(serve(
            ctx,
            found,
            method,
            headers,
            "hit; detail=stale-during-remote-fetch",
        ));
    }
    let deadline = tokio::time::Instant::now() + lease_ttl.min(config.coalesce_timeout);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(LEASE_POLL).await;
        if let Ok(look) = lookup(ctx, &miss.key, headers).await
            && let Some(found) = look.found
            && !found.is_stale()
        {
            guard.publish(Outcome::Stored(found.record.clone(), found.provenance()));
            drop(guard);
            Shared::count(&ctx.shared.coalesced);
            return Coalesced::Served(serve(
                ctx,
                &found,
                method,
                headers,
                "hit; detail=coalesced-remote",
            ));
        }
    }
    Coalesced::Lead(guard, None)
}

fn lease_key(flight: &str) -> String {
    let mut key = String::with_capacity(flight.len() + 2);
    key.push_str("l:");
    key.push_str(flight);
    key
}
