//! Step 3, revalidate: the conditional request the cache makes with a stored response's
//! validators (one rewrite, for revalidations and background refreshes alike), what a `304`
//! does to the stored response (RFC 9111 §4.3.4), and the stale-while-revalidate refresh.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, response};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument as _;

use super::conditional::{CONDITIONALS, conditional_headers, copy_without_body};
use super::ctx::Ctx;
use super::invalidate::invalidate_url;
use super::key::{PrimaryKey, vary_names};
use super::lookup::{Found, lookup};
use super::outage::StoreOp;
use super::record::Record;
use super::state::Shared;
use super::tags::{CacheTags, extract_tags};
use super::upstream::{self, Upstream};
use super::write::{
    Fetched, Placement, admit, body_limit, collect_limited, strip_hop_by_hop, write_fresh,
};
use crate::store::{PurgeMode, Store};

/// What a `304` answering the cache's validators came to.
pub(crate) enum Revalidation {
    /// It validates the stored response: serve this (the stored body with the merged
    /// headers). The store holds the merged response too when it may be stored.
    Validated(Found),
    /// It names another entity tag than the stored one (an inconsistent origin): the stored
    /// response is not validated.
    Mismatch,
}

/// RFC 9111 §4.3.4: merges a `304` into the stored response. When the merged response may be
/// stored (judged by [`admit`], like any response) it replaces the stored one; when it may
/// not (the `304` sets a cookie, says `no-store` or `private`, or the entry's freshness came
/// from a `CacheOverride` the `304` does not carry), the stored body is still valid for this
/// request and is served to it alone with the merged headers, `Set-Cookie` included.
pub(crate) async fn merge_304<St: Store>(
    ctx: &Ctx<St>,
    found: &Found,
    not_modified: &response::Parts,
    fetched: &Fetched<'_>,
) -> Revalidation {
    let stored = &found.record;
    if let (Some(new), Some(old)) = (
        not_modified.headers.get(header::ETAG),
        stored.headers.get(header::ETAG),
    ) && weak_tag(new) != weak_tag(old)
    {
        return Revalidation::Mismatch;
    }
    let mut headers = stored.headers.clone();
    let mut update = not_modified.headers.clone();
    strip_hop_by_hop(&mut update);
    update.remove(header::CONTENT_LENGTH);
    for name in update.keys() {
        headers.remove(name);
    }
    for (name, value) in &update {
        headers.append(name.clone(), value.clone());
    }
    match admit(
        ctx,
        fetched,
        stored.status,
        &headers,
        &not_modified.extensions,
    ) {
        // Filed under the variant the stored response already has, or not at all: a refresh
        // sends no credentials, and a response that varies on them must not move to the
        // variant of a request without them.
        Ok(admission) if admission.variant == stored.identity => {
            let record =
                admission.record(stored.status, stored.body.clone(), stored.trailers.clone());
            let placement = Placement {
                key: fetched.key.clone(),
                names: admission.names,
                ttl: admission.ttl,
                grace: admission.grace,
                tags: found.tags().to_vec(),
                fetched_at: fetched.request_time,
            };
            write_fresh(ctx, &placement, &record, fetched.fill, || false).await;
            Shared::count(&ctx.shared.revalidated);
            Revalidation::Validated(Found {
                record: Arc::new(record),
                entry_age: Duration::ZERO,
                entry_ttl: Some(placement.ttl),
                entry: found.entry.clone(),
            })
        }
        not_stored => {
            let reason = not_stored.err().unwrap_or("another variant's request");
            tracing::debug!(reason, "revalidated response served, not stored");
            headers.remove(header::AGE);
            let record = Record {
                headers,
                ..Record::clone(stored)
            };
            Revalidation::Validated(Found {
                record: Arc::new(record),
                entry_age: Duration::ZERO,
                entry_ttl: None,
                entry: None,
            })
        }
    }
}

fn weak_tag(tag: &HeaderValue) -> &[u8] {
    let tag = tag.as_bytes();
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// Request fields that carry credentials: a background refresh, made on behalf of every
/// client, never sends them (and a stale hit's triggering request might carry junk).
const CREDENTIALS: [header::HeaderName; 3] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
];

/// The headers a background refresh sends: `Host`, the fields that select the stored variant
/// (its `Vary` names), the route's key cookies, and the stored validators. Nothing else of
/// the request that happened to trigger it: no client conditionals, and no credentials,
/// except in a private scope, where the refresh is made for the one principal whose request
/// it was, and the origin must see who that is.
fn refresh_headers<St>(
    ctx: &Ctx<St>,
    path: &str,
    request: &HeaderMap,
    record: &Record,
    private: bool,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(host) = request.get(header::HOST) {
        headers.insert(header::HOST, host.clone());
    }
    if private {
        for name in &CREDENTIALS {
            for value in request.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    for name in vary_names(&record.headers) {
        if CREDENTIALS.contains(&name) {
            continue;
        }
        for value in request.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(cookies) = ctx.config.key.cookie_route(path)
        && let Some(value) = ctx.config.key.key_cookie_header(request, cookies)
    {
        headers.insert(header::COOKIE, value);
    }
    conditional_headers(&mut headers, record);
    headers
}

/// Why an entry is refreshed in the background.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// It is stale, within stale-while-revalidate.
    Stale,
    /// It is fresh, in its refresh-ahead window: refreshed once across instances (the
    /// distributed lease, when configured) and counted.
    Ahead,
}

/// Refreshes a stale entry (or one in its refresh-ahead window) in the background, once per
/// URL at a time. The triggering request (served from the entry) lends its URI, version,
/// extensions (axum's path parameters) and body; its headers are replaced by
/// [`refresh_headers`].
pub(crate) fn spawn_refresh<S, St, B, RB>(
    ctx: Arc<Ctx<St>>,
    mut svc: S,
    request: Request<B>,
    key: PrimaryKey,
    found: Found,
    why: Refresh,
) where
    S: Service<Request<B>, Response = Response<RB>> + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    St: Store,
    B: Default + Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if !ctx.shared.start_refresh(key.store_key()) {
        return;
    }
    let (mut parts, body) = request.into_parts();
    parts.method = Method::GET;
    parts.headers = refresh_headers(
        &ctx,
        parts.uri.path(),
        &parts.headers,
        &found.record,
        key.principal().is_some(),
    );
    let refresh = Request::from_parts(parts, body);
    // Its own span, under the request that triggered it (which it outlives).
    let span = tracing::debug_span!("cache.refresh");
    let task = async move {
        struct EndRefresh(Arc<Shared>, String);
        impl Drop for EndRefresh {
            fn drop(&mut self) {
                self.0.end_refresh(&self.1);
            }
        }
        let primary = key.store_key();
        let _end = EndRefresh(ctx.shared.clone(), primary.to_owned());
        let request_headers = refresh.headers().clone();
        // Ahead of expiry, one instance refreshes: the others find the lease taken, or (taken
        // after it was released) the entry already refreshed by the look below.
        let _lease = match (why, &ctx.config.lease) {
            (Refresh::Ahead, Some(lease)) => {
                let flight = format!("ahead {primary}");
                match lease.take(&ctx.store, &flight).await {
                    Ok(Some(lease)) => Some(lease),
                    Ok(None) => return,
                    // The store fails: each instance refreshes (as without the lease).
                    Err(_) => None,
                }
            }
            _ => None,
        };
        // Another refresh (here or on another instance) may have stored a fresh response
        // between the triggering request's lookup and this claim: then there is nothing to
        // refresh.
        if let Ok(look) = lookup(&ctx, &key, &request_headers).await
            && look.found.is_some_and(|found| {
                !found.is_stale() && (why == Refresh::Stale || !found.within_refresh_ahead(&ctx))
            })
        {
            return;
        }
        if why == Refresh::Ahead {
            Shared::count(&ctx.shared.refreshes_ahead);
        }
        let mut unconditional = copy_without_body(&refresh);
        for name in &CONDITIONALS {
            unconditional.headers_mut().remove(name);
        }
        let request_time = SystemTime::now();
        let fill = ctx.shared.start_fill(primary);
        let timeout = ctx.config.upstream_timeout;
        let mut response = match upstream::call(&mut svc, refresh, timeout).await {
            Upstream::Done(Ok(response)) => response,
            _ => return, // keep serving stale
        };
        if fill.is_invalidated() {
            return; // invalidated meanwhile: the refresh must not bring it back
        }
        let fetched = Fetched {
            key: &key,
            request_headers: &request_headers,
            request_time,
            response_time: SystemTime::now(),
            fill: &fill,
        };
        if response.status() == StatusCode::NOT_MODIFIED {
            let (parts, _) = response.into_parts();
            if let Revalidation::Validated(_) = merge_304(&ctx, &found, &parts, &fetched).await {
                return;
            }
            // The `304` validated nothing (RFC 9111 §4.3.4): fetch the whole response once.
            response = match upstream::call(&mut svc, unconditional, timeout).await {
                Upstream::Done(Ok(response)) => response,
                _ => return, // keep serving stale
            };
            if fill.is_invalidated() {
                return;
            }
        }
        if response.status().is_server_error() {
            return; // keep serving stale
        }
        let (mut parts, body) = response.into_parts();
        let tags = extract_tags(
            &ctx,
            &mut parts.headers,
            parts.extensions.get::<CacheTags>(),
        );
        let admission = match admit(
            &ctx,
            &fetched,
            parts.status,
            &parts.headers,
            &parts.extensions,
        ) {
            Ok(admission) => admission,
            Err(reason) => {
                // No longer cacheable: stop serving the old response, every variant of it.
                tracing::debug!(key = primary, reason, "refreshed response not storable");
                if let Err(error) = invalidate_url(
                    &**ctx.store_for(&key),
                    &ctx.shared,
                    primary,
                    PurgeMode::Hard,
                    ctx.config.fill_window(),
                )
                .await
                {
                    ctx.shared.store_failed(StoreOp::Invalidate, &error);
                }
                return;
            }
        };
        let Some((body, trailers)) = collect_limited(body, body_limit(&ctx)).await else {
            return;
        };
        let record = admission.record(parts.status, body, trailers);
        if record.encodable() {
            let placement = Placement {
                key,
                names: admission.names,
                ttl: admission.ttl,
                grace: admission.grace,
                tags,
                fetched_at: request_time,
            };
            write_fresh(&ctx, &placement, &record, &fill, || false).await;
        }
    };
    runtime.spawn(task.instrument(span));
}
