//! Step 2a, coalesce: concurrent misses on one URL (one variant, when the `Vary` index is
//! known) send one request upstream; the others wait for its response. With a distributed
//! lease, instances sharing a store coalesce too.

use std::sync::Arc;

use http::Method;
use http::header::{self, HeaderMap};

use super::body::Resp;
use super::conditional::has_conditionals;
use super::ctx::Ctx;
use super::key::{store_key, vary_names};
use super::lease::{LEASE_POLL, Lease};
use super::lookup::{Found, Miss, lookup};
use super::outage::StoreOp;
use super::serve::{serve, serve_streaming};
use super::state::{FlightGuard, Handover, Join};
use super::status::{Coalescing, Outcome, StaleReason};
use crate::store::Store;
use tracing::Instrument as _;

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
    let plain = !has_conditionals(headers);
    let mut flight = match &miss.vary {
        Some(names) => store_key(&ctx.config.key.variant_identity(identity, names, headers)),
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
                // A response can be served as it streams, except to a range request, which
                // needs its length: that one waits for the whole response.
                let streams = !headers.contains_key(header::RANGE);
                // In a block of its own: the watch guard must be gone before the next await.
                let handed = {
                    let ready = |handover: &Option<Handover>| match handover {
                        None => false,
                        Some(Handover::Streaming(_)) => streams,
                        Some(_) => true,
                    };
                    let span = tracing::debug_span!("cache.lease_wait", cache.lease = "in-process");
                    let waited =
                        tokio::time::timeout(ctx.config.coalesce_timeout, rx.wait_for(ready))
                            .instrument(span)
                            .await;
                    match waited {
                        Ok(Ok(handover)) => handover.clone(),
                        _ => None,
                    }
                };
                let (provenance, stored_headers, stored_identity) = match &handed {
                    Some(Handover::Stored(record, provenance)) => {
                        (provenance, &record.headers, &record.identity)
                    }
                    Some(Handover::Streaming(streaming)) => (
                        &streaming.provenance,
                        &streaming.headers,
                        &streaming.identity,
                    ),
                    Some(Handover::NotStored) | None => return Coalesced::Alone,
                };
                // A purge since the leader began fetching (a writer committed meanwhile)
                // makes its response out of date for this request, which may have started
                // after the write returned: go upstream instead. A store error counts as
                // purged. With the store failing, purges in this process still detach the
                // flight (see `Shared::forget`), and the others cannot be read.
                if !provenance.tags.is_empty()
                    && !miss.store_failed
                    && !matches!(
                        ctx.store_for(&miss.key)
                            .purged_since(&provenance.tags, provenance.fetched_at)
                            .await,
                        Ok(false)
                    )
                {
                    return Coalesced::Alone;
                }
                let names = vary_names(stored_headers);
                let expected = ctx.config.key.select_variant(identity, &names, headers);
                if *stored_identity == expected {
                    let outcome = Outcome::Coalesced(Coalescing::InProcess);
                    let served = match &handed {
                        Some(Handover::Stored(record, _)) => {
                            let found = Found::handed_over(record.clone());
                            Some(serve(ctx, &found, method, headers, outcome))
                        }
                        Some(Handover::Streaming(streaming)) => {
                            serve_streaming(ctx, streaming, method, headers, outcome)
                        }
                        _ => None,
                    };
                    // A response whose first bytes are gone (past the size limit) cannot be
                    // read from the start: go upstream.
                    return served.map_or(Coalesced::Alone, Coalesced::Served);
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
        guard.publish(Handover::Stored(found.record.clone(), found.provenance()));
        drop(guard);
        let outcome = Outcome::Hit {
            ttl_left: found.ttl_left(),
        };
        return Coalesced::Served(serve(ctx, &found, method, headers, outcome));
    }
    let Some(lease) = config.lease.as_ref().filter(|_| !miss.store_failed) else {
        return Coalesced::Lead(guard, None);
    };
    let lease_ttl = lease.ttl;
    match lease.take(&ctx.store, flight).await {
        Ok(Some(lease)) => return Coalesced::Lead(guard, Some(lease)),
        Ok(None) => {}
        Err(error) => {
            ctx.shared.store_failed(StoreOp::Lease, &error);
            return Coalesced::Lead(guard, None);
        }
    }
    // Another instance is fetching this key.
    if let Some(found) = &miss.stale
        && !found.record.freshness.must_revalidate
    {
        let outcome = Outcome::Stale(StaleReason::DuringRemoteFetch);
        return Coalesced::Served(serve(ctx, found, method, headers, outcome));
    }
    let deadline = tokio::time::Instant::now() + lease_ttl.min(config.coalesce_timeout);
    let span = tracing::debug_span!("cache.lease_wait", cache.lease = "remote");
    let Some(found) = poll_store(ctx, miss, headers, deadline)
        .instrument(span)
        .await
    else {
        return Coalesced::Lead(guard, None);
    };
    guard.publish(Handover::Stored(found.record.clone(), found.provenance()));
    drop(guard);
    let outcome = Outcome::Coalesced(Coalescing::Remote);
    Coalesced::Served(serve(ctx, &found, method, headers, outcome))
}

/// Polls the store for the response another instance is fetching, until `deadline`.
async fn poll_store<St: Store>(
    ctx: &Ctx<St>,
    miss: &Miss,
    headers: &HeaderMap,
    deadline: tokio::time::Instant,
) -> Option<Found> {
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(LEASE_POLL).await;
        if let Ok(look) = lookup(ctx, &miss.key, headers).await
            && let Some(found) = look.found
            && !found.is_stale()
        {
            return Some(found);
        }
    }
    None
}
