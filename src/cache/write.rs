//! Step 4, write: whether an upstream response may be stored and how ([`admit`], the one place
//! a response becomes a record, for misses, refreshes and `304` merges alike), and the store
//! write once its body has streamed through ([`StoreOnFinish`], [`write`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{Extensions, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;

use super::body::{CacheBody, Resp};
use super::ctx::Ctx;
use super::invalidate;
use super::key::{self, PrimaryKey, store_key, vary_names};
use super::lease::Lease;
use super::outage::StoreOp;
use super::policy::{self, CacheOverride, Directives, Exchange, Freshness, MAX_DELTA};
use super::record::{self, Record};
use super::scope::principal_tag;
use super::stamp;
use super::state::{Fill, FlightGuard, Handover, Provenance, Shared, Streaming};
use super::status::CACHE_STATUS;
use super::tee::{self, BoxError, Finish, Tee};
use crate::store::{PurgeMode, SetOptions, Store};

/// The request side of an upstream exchange: what the storage decision needs of it.
pub(crate) struct Fetched<'a> {
    pub key: &'a PrimaryKey,
    /// The headers the upstream request carried: they select the variant and say whether it
    /// carried credentials.
    pub request_headers: &'a HeaderMap,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    /// The fetch, registered before the request went upstream (see [`write_fresh`]).
    pub fill: &'a Fill,
}

/// A response the cache may store: how, and under which variant.
#[derive(Debug)]
pub(crate) struct Admission {
    pub freshness: Freshness,
    /// Store TTL (freshness left, jittered) and grace (how long it stays usable stale).
    pub ttl: Duration,
    pub grace: Duration,
    /// The `Vary` names, and the variant identity this request selects under them.
    pub names: Vec<HeaderName>,
    pub variant: String,
    /// The headers worth storing.
    pub headers: HeaderMap,
}

impl Admission {
    /// The record to store, once the body is known.
    pub(super) fn record(
        &self,
        status: StatusCode,
        body: Bytes,
        trailers: Option<HeaderMap>,
    ) -> Record {
        Record {
            identity: self.variant.clone(),
            status,
            headers: self.headers.clone(),
            trailers,
            body,
            freshness: self.freshness,
        }
    }
}

/// Decides whether a response to a GET may be stored: the only place a response (a miss, a
/// refresh, a stored response merged with a `304`) is judged. `Err` says why not.
pub(crate) fn admit<St>(
    ctx: &Ctx<St>,
    fetched: &Fetched<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Result<Admission, policy::NotStored> {
    let streaming = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("text/event-stream") || ct.starts_with("application/grpc")
        });
    if streaming {
        return Err("streaming content type");
    }
    let request_cc = Directives::parse(fetched.request_headers, &header::CACHE_CONTROL);
    let freshness = policy::decide(
        &ctx.config.policy,
        &Exchange {
            request_has_authorization: fetched.request_headers.contains_key(header::AUTHORIZATION),
            private_scope: fetched.key.principal().is_some(),
            request_no_store: request_cc.no_store || request_cc.malformed,
            status,
            headers,
            override_: extensions.get::<CacheOverride>(),
            request_time: fetched.request_time,
            response_time: fetched.response_time,
        },
    )?;
    let has_validators =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    let (ttl, grace) = entry_times(ctx, &freshness, has_validators);
    if ttl.is_zero() && grace.is_zero() {
        return Err("stale on arrival, with no validator to revalidate it");
    }
    let names = vary_names(headers);
    let variant =
        ctx.config
            .key
            .select_variant(fetched.key.identity(), &names, fetched.request_headers);
    Ok(Admission {
        freshness,
        ttl,
        grace,
        names,
        variant,
        headers: stored_headers(ctx, headers),
    })
}

/// The store TTL (freshness left, jittered) and grace (how long a stale entry stays usable),
/// each at most [`MAX_DELTA`] so no setting can overflow the store's time arithmetic.
pub(crate) fn entry_times<St>(
    ctx: &Ctx<St>,
    f: &Freshness,
    has_validators: bool,
) -> (Duration, Duration) {
    let mut ttl = f.lifetime.saturating_sub(f.initial_age).min(MAX_DELTA);
    let jitter = ctx.config.ttl_jitter.min(ttl / 2);
    if !jitter.is_zero() {
        ttl -= jitter.mul_f64(rand::random::<f64>());
    }
    let mut grace = Duration::ZERO;
    if !f.must_revalidate {
        // A response that arrived already stale has used part of its stale windows.
        let over = f.initial_age.saturating_sub(f.lifetime);
        grace = f
            .swr
            .or(ctx.config.swr)
            .unwrap_or_default()
            .max(f.sie.or(ctx.config.sie).unwrap_or_default())
            .saturating_sub(over);
    }
    if has_validators {
        grace = grace.max(ctx.config.stale_retention);
    }
    (ttl, grace.min(MAX_DELTA))
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// The headers worth storing: no hop-by-hop fields, no `Age` (recomputed), no
/// `Cache-Status` or `Surrogate-Control` (for this cache only).
pub(crate) fn stored_headers<St>(ctx: &Ctx<St>, headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    strip_hop_by_hop(&mut out);
    out.remove(header::AGE);
    out.remove(&CACHE_STATUS);
    out.remove(&policy::SURROGATE_CONTROL);
    if ctx.config.strip_tag_headers {
        out.remove(&super::tags::SURROGATE_KEY);
        out.remove(&super::tags::CACHE_TAG);
    }
    out
}

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = key::listed_names(headers, header::CONNECTION).collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The largest body recorded for storing.
pub(crate) fn body_limit<St: Store>(ctx: &Ctx<St>) -> usize {
    // Leave room in the store's value limit for the record's headers.
    let store_max = ctx.store.limits().max_value_size.saturating_sub(64 * 1024);
    ctx.config.max_body_size.min(store_max)
}

/// Reads a body up to `limit` bytes; `None` past it or on an error.
pub(crate) async fn collect_limited<RB: Body<Data = Bytes>>(
    body: RB,
    limit: usize,
) -> Option<(Bytes, Option<HeaderMap>)> {
    let mut body = std::pin::pin!(body);
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.as_mut().frame().await {
        let frame = frame.ok()?;
        if let Some(d) = frame.data_ref() {
            if data.len() + d.len() > limit {
                return None;
            }
            data.extend_from_slice(d);
        } else if let Ok(t) = frame.into_trailers() {
            trailers = Some(t);
        }
    }
    Some((data.freeze(), trailers))
}

/// Where and for how long a record is written.
pub(crate) struct Placement {
    pub key: PrimaryKey,
    pub names: Vec<HeaderName>,
    pub ttl: Duration,
    pub grace: Duration,
    pub tags: Vec<String>,
    /// When the upstream request began: the entry counts as stored then (see [`write`]).
    pub fetched_at: SystemTime,
}

/// Writes a record (and the vary spec pointing to it). Returns whether it was stored.
///
/// The entry is stamped as stored when its upstream request began (`fetched_at`), not when the
/// body finished: a tag purge made while the request was in flight (a writer committing and
/// purging while this reader still held the old row) is then newer than the entry and hides
/// it, instead of the late write bringing the old value back. Its age therefore includes the
/// fetch time, which errs on the side of staleness.
pub(crate) async fn write<St: Store>(ctx: &Ctx<St>, at: &Placement, record: &Record) -> bool {
    let primary = at.key.store_key();
    let store = ctx.store_for(&at.key);
    // A private entry carries its principal's tag, so one user's entries purge together.
    let principal = at.key.principal().map(principal_tag);
    if let Some(tag) = &principal
        && store.limits().check_tag(tag).is_err()
    {
        // The principal is not logged: only that one was too long to tag.
        tracing::debug!(
            key = primary,
            "principal tag over the store's limit: not stored"
        );
        return false;
    }
    let tags = || at.tags.iter().cloned().chain(principal.clone());
    let options = SetOptions::new()
        .ttl(at.ttl)
        .grace(at.grace)
        .tags(tags())
        .as_of(at.fetched_at);
    let value = record.encode();
    let size = value.len();
    let result = if at.names.is_empty() {
        store.set(primary, value, &options).await
    } else {
        // The index keeps the variants' grace, so a soft purge leaves it readable for as long
        // as the (stale) variants it points to.
        let spec_options = SetOptions::new()
            .ttl(at.ttl.saturating_add(at.grace))
            .grace(at.grace)
            .tags(tags())
            .as_of(at.fetched_at);
        // Variants carry an internal tag derived from the primary key, so an invalidation
        // reaches every variant (see `invalidate::invalidate_url`).
        let variant_options = options.tags(tags().chain([key::url_tag(primary)]));
        match store
            .set(&store_key(&record.identity), value, &variant_options)
            .await
        {
            Ok(()) => {
                store
                    .set(
                        primary,
                        record::encode_vary(at.key.identity(), &at.names),
                        &spec_options,
                    )
                    .await
            }
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(()) => {
            Shared::count(&ctx.shared.stores);
            ctx.shared.figures.stored(size);
            ctx.shared.store_answered();
            ctx.shared.unpass(primary);
            true
        }
        Err(error) => {
            ctx.shared.store_failed(StoreOp::Write, &error);
            false
        }
    }
}

/// [`write`], unless the URL was invalidated since the `fill` began (or `cancelled` says the
/// fetch was detached), and undone, every variant, if an invalidation lands while the write
/// is in flight: what was fetched before an invalidation must never be stored after it.
/// Every store write of a fetched response goes through here (misses, `304` merges,
/// background refreshes).
pub(crate) async fn write_fresh<St: Store>(
    ctx: &Ctx<St>,
    at: &Placement,
    record: &Record,
    fill: &Fill,
    cancelled: impl Fn() -> bool,
) -> bool {
    let primary = at.key.store_key();
    let store = ctx.store_for(&at.key);
    // Invalidated in this process (the fill is marked), or on another instance sharing the
    // store (its stamp is newer than the fetch): checked before the write, and again after it
    // to undo a write that raced the invalidation.
    let stale = async || {
        cancelled()
            || fill.is_invalidated()
            || stamp::newer_than(&**store, primary, at.fetched_at).await
    };
    if stale().await {
        return false;
    }
    let stored = write(ctx, at, record).await;
    if stale().await {
        let _ = invalidate::remove_url(&**store, primary, PurgeMode::Hard).await;
        return false;
    }
    stored
}

/// Stores a recorded body once it has streamed through, and hands it to coalesced waiters.
pub(crate) struct StoreOnFinish<St: Store> {
    pub ctx: Arc<Ctx<St>>,
    pub guard: Option<FlightGuard>,
    pub placement: Placement,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub variant: String,
    pub freshness: Freshness,
    /// Store only when the trailers carry `grpc-status: 0`.
    pub grpc: bool,
    /// Write to the store; `false` hands the response to the coalesced waiters only (the
    /// store failed this miss's lookup).
    pub write: bool,
    /// The fetch, registered before the response was requested.
    pub fill: Fill,
    /// The cross-instance lease this miss holds, released once the response is stored (or
    /// when this is dropped unstored).
    pub lease: Option<Lease<St>>,
}

impl<St: Store> StoreOnFinish<St> {
    /// Starts the fill of an admitted response: a task reads `body` at the origin's pace and
    /// feeds the first client (the response returned) and, from now on, every coalesced
    /// waiter, then stores it (see [`tee`]).
    pub(crate) fn start<RB>(self, parts: http::response::Parts, body: RB) -> Resp<RB>
    where
        RB: Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        // A body complete before anyone polls it (a `204`, an empty `200`) is stored now: a
        // server need not poll it at all (hyper does not for a `204`).
        if body.is_end_stream() {
            Box::new(self).finish(Bytes::new(), None);
            return Response::from_parts(parts, CacheBody::passthrough(body));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Response::from_parts(parts, CacheBody::passthrough(body));
        };
        let tee = Tee::new(body_limit(&self.ctx), body.size_hint().exact());
        let Some(reader) = tee.reader() else {
            return Response::from_parts(parts, CacheBody::passthrough(body));
        };
        if let Some(guard) = &self.guard
            && !guard.is_cancelled()
            && !self.fill.is_invalidated()
        {
            guard.publish(Handover::Streaming(Arc::new(Streaming {
                tee: tee.clone(),
                status: self.status,
                headers: self.headers.clone(),
                identity: self.variant.clone(),
                provenance: self.provenance(),
            })));
        }
        runtime.spawn(tee::pump(tee, body, Box::new(self)));
        Response::from_parts(parts, CacheBody::fill(reader))
    }

    fn provenance(&self) -> Provenance {
        Provenance {
            fetched_at: self.placement.fetched_at,
            tags: self.placement.tags.iter().cloned().collect(),
        }
    }
}

impl<St: Store> Finish for StoreOnFinish<St> {
    fn finish(self: Box<Self>, body: Bytes, trailers: Option<HeaderMap>) {
        let this = *self;
        if this.grpc
            && trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .is_none_or(|s| s != "0")
        {
            Shared::count(&this.ctx.shared.not_stored);
            return;
        }
        let provenance = this.provenance();
        let record = Record {
            identity: this.variant,
            status: this.status,
            headers: this.headers,
            trailers,
            body,
            freshness: this.freshness,
        };
        if !record.encodable() {
            Shared::count(&this.ctx.shared.not_stored);
            return;
        }
        let record = Arc::new(record);
        let detached = this.guard.as_ref().is_some_and(FlightGuard::is_cancelled)
            || this.fill.is_invalidated();
        if detached {
            // Invalidated while in flight: neither stored nor handed to the waiters, who go
            // upstream themselves when the guard drops.
            return;
        }
        if let Some(guard) = &this.guard {
            guard.publish(Handover::Stored(record.clone(), provenance));
        }
        if !this.write {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let ctx = this.ctx;
        let guard = this.guard;
        let fill = this.fill;
        let placement = this.placement;
        let lease = this.lease;
        runtime.spawn(async move {
            let detached = || guard.as_ref().is_some_and(FlightGuard::is_cancelled);
            write_fresh(&ctx, &placement, &record, &fill, detached).await;
            drop(lease);
            // Requests arriving until now were answered from the published record.
            drop(guard);
        });
    }

    fn too_large(self: Box<Self>) {
        Shared::count(&self.ctx.shared.not_stored);
        self.ctx
            .shared
            .pass(self.placement.key.store_key(), self.ctx.config.hit_for_pass);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_fields_go() {
        let mut m = HeaderMap::new();
        for (k, v) in [
            ("connection", "x-private, keep-alive"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
        ] {
            m.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut m);
        assert_eq!(m.len(), 1);
        assert!(m.contains_key("content-type"));
    }
}
