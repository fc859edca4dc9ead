//! Step 2, forward: a miss, or a stale entry that must be revalidated, goes upstream (after
//! [coalescing](super::coalesce)); the response is stored while it streams, merged into the
//! stale entry (`304`), or replaced by the stale entry when upstream fails.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::HeaderName;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::body::CacheBody;
use super::coalesce::{Coalesced, coalesce};
use super::key::PrimaryKey;
use super::layer::Ctx;
use super::lookup::Found;
use super::revalidate::{self, Revalidation};
use super::serve::{Resp, add_status, serve, serve_stale_on_error};
use super::state::Shared;
use super::tags::{CacheTags, extract_tags};
use super::write::{Fetched, Placement, StoreOnFinish, admit, body_limit};
use crate::store::Store;

/// What the lookup left for the miss path.
pub(crate) struct Miss {
    pub key: PrimaryKey,
    /// The stored response to revalidate, if one was found stale.
    pub stale: Option<Found>,
    /// The store was read and had nothing: worth a second look once this request leads.
    pub looked_up: bool,
    /// The store failed the lookup: the miss still coalesces with the others in this process
    /// (a failing store must not multiply origin calls), but neither looks again, takes the
    /// lease nor writes what it fetched.
    pub store_failed: bool,
    /// The `Vary` names the primary key's index gave, if it held one.
    pub vary: Option<Vec<HeaderName>>,
}

/// The outcome of an upstream call made by the cache.
pub(crate) enum Upstream<R, E> {
    Done(Result<R, E>),
    TimedOut,
}

/// Calls upstream, within [`CacheLayer::upstream_timeout`](super::CacheLayer::upstream_timeout)
/// when set: every upstream call the cache makes (misses, revalidations, refreshes).
pub(crate) async fn call_upstream<S, B, R>(
    svc: &mut S,
    request: Request<B>,
    timeout: Option<Duration>,
) -> Upstream<R, S::Error>
where
    S: Service<Request<B>, Response = R>,
{
    match timeout {
        Some(t) => match tokio::time::timeout(t, svc.call(request)).await {
            Ok(r) => Upstream::Done(r),
            Err(_) => Upstream::TimedOut,
        },
        None => Upstream::Done(svc.call(request).await),
    }
}

/// The answer when upstream did not answer within the upstream timeout.
fn timed_out<St, RB>(ctx: &Ctx<St>) -> Resp<RB> {
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    add_status(ctx, response.headers_mut(), "fwd=miss; detail=timeout");
    response
}

/// A miss, or a stale entry that must be revalidated: go upstream (leading or joining a
/// coalesced miss), then store what may be stored.
pub(crate) async fn forward<S, St, B, RB>(
    ctx: Arc<Ctx<St>>,
    mut svc: S,
    mut request: Request<B>,
    miss: Miss,
) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    St: Store,
    B: Default,
    RB: Body<Data = Bytes> + Send + 'static,
{
    let config = &ctx.config;
    let method = request.method().clone();
    let plain = !revalidate::has_conditionals(request.headers());
    let primary = miss.key.store_key();
    let mut guard = None;
    let mut lease = None;
    if method == Method::GET && config.coalesce && !ctx.shared.is_pass(primary) {
        match coalesce(&ctx, request.headers(), &method, &miss).await {
            Coalesced::Served(response) => return Ok(response),
            Coalesced::Lead(g, l) => {
                guard = Some(g);
                lease = l;
            }
            Coalesced::Alone => {}
        }
    }
    Shared::count(&ctx.shared.misses);

    // Revalidate a stale entry with its validators; the client's own conditionals are
    // answered from the entry once the origin has validated it. The client's request is kept
    // (without its body: a GET's body means nothing, RFC 9110 §9.3.1) in case the `304`
    // validates nothing and the request must go again, unconditionally.
    let mut client_headers = None;
    let mut unconditional = None;
    if let Some(found) = &miss.stale
        && method == Method::GET
        && revalidate::has_validators(&found.record)
    {
        client_headers = Some(request.headers().clone());
        unconditional = Some(revalidate::copy_without_body(&request));
        revalidate::conditional_headers(request.headers_mut(), &found.record);
    }

    let mut request_headers = request.headers().clone();
    let mut request_time = SystemTime::now();
    let fill = ctx.shared.start_fill(primary);
    let result = call_upstream(&mut svc, request, config.upstream_timeout).await;
    let mut response_time = SystemTime::now();
    let stale = miss.stale;

    let mut response = match result {
        Upstream::Done(Ok(response)) => response,
        Upstream::Done(Err(error)) => {
            return match stale.filter(|f| f.within_sie(&ctx)) {
                Some(found) => Ok(serve_stale_on_error(
                    &ctx,
                    &found,
                    &method,
                    &request_headers,
                )),
                None => Err(error),
            };
        }
        Upstream::TimedOut => {
            return Ok(match stale.filter(|f| f.within_sie(&ctx)) {
                Some(found) => serve_stale_on_error(&ctx, &found, &method, &request_headers),
                None => timed_out(&ctx),
            });
        }
    };

    if let Some(found) = &stale {
        if response.status().is_server_error() && found.within_sie(&ctx) {
            return Ok(serve_stale_on_error(&ctx, found, &method, &request_headers));
        }
        if response.status() == StatusCode::NOT_MODIFIED
            && let (Some(client_headers), Some(unconditional)) = (client_headers, unconditional)
        {
            // The origin answered the cache's own validators: the client asked for the whole
            // response (or its own conditional), never for this `304`.
            let (parts, _) = response.into_parts();
            let fetched = Fetched {
                key: &miss.key,
                request_headers: &request_headers,
                request_time,
                response_time,
                fill: &fill,
            };
            match revalidate::merge_304(&ctx, found, &parts, &fetched).await {
                Revalidation::Validated(refreshed) => {
                    drop(guard);
                    return Ok(serve(
                        &ctx,
                        &refreshed,
                        &method,
                        &client_headers,
                        "fwd=stale; fwd-status=304",
                    ));
                }
                Revalidation::Mismatch => {
                    // RFC 9111 §4.3.4: the `304` selects no stored response, so it updates
                    // none. Ask once more, unconditionally; that answer is served and stored
                    // like any miss's.
                    request_headers = client_headers;
                    request_time = SystemTime::now();
                    response = match call_upstream(&mut svc, unconditional, config.upstream_timeout)
                        .await
                    {
                        Upstream::Done(Ok(response)) => response,
                        Upstream::Done(Err(error)) => return Err(error),
                        Upstream::TimedOut => return Ok(timed_out(&ctx)),
                    };
                    response_time = SystemTime::now();
                }
            }
        }
    }
    let fetched = Fetched {
        key: &miss.key,
        request_headers: &request_headers,
        request_time,
        response_time,
        fill: &fill,
    };

    let (mut parts, body) = response.into_parts();
    let tags = extract_tags(
        &ctx,
        &mut parts.headers,
        parts.extensions.get::<CacheTags>(),
    );
    let fwd = if stale.is_some() {
        "fwd=stale"
    } else if miss.store_failed {
        "fwd=miss; detail=store-error"
    } else {
        "fwd=miss"
    };
    let limit = body_limit(&ctx);
    let too_large = body
        .size_hint()
        .exact()
        .is_some_and(|len| len > limit as u64);
    let admitted = if method == Method::GET && !too_large {
        admit(
            &ctx,
            &fetched,
            parts.status,
            &parts.headers,
            &parts.extensions,
        )
    } else if too_large {
        Err("body over the size limit")
    } else {
        Err("method is not GET")
    };
    // `Surrogate-Control` is this cache's (Edge Architecture Specification): read by `admit`,
    // never passed on, so a CDN in front does not take this tier's TTL.
    parts.headers.remove(&super::policy::SURROGATE_CONTROL);
    let admission = match admitted {
        Ok(admission) => admission,
        Err(reason) => {
            tracing::debug!(key = primary, reason, "response not stored");
            if method == Method::GET && plain {
                Shared::count(&ctx.shared.not_stored);
                ctx.shared.pass(primary, config.hit_for_pass);
            }
            drop(guard);
            let mut response = Response::from_parts(parts, CacheBody::passthrough(body));
            add_status(&ctx, response.headers_mut(), fwd);
            return Ok(response);
        }
    };
    let known_size = body.size_hint().exact().is_some();
    let write = !miss.store_failed;
    let finish = StoreOnFinish {
        ctx: ctx.clone(),
        guard,
        placement: Placement {
            key: miss.key,
            names: admission.names,
            ttl: admission.ttl,
            grace: admission.grace,
            tags,
            fetched_at: request_time,
        },
        status: parts.status,
        headers: admission.headers,
        variant: admission.variant,
        freshness: admission.freshness,
        grpc: false,
        write,
        fill,
        lease,
    };
    let mut response =
        Response::from_parts(parts, CacheBody::recording(body, limit, Box::new(finish)));
    let status = if known_size && write {
        format!("{fwd}; stored")
    } else {
        fwd.to_owned()
    };
    add_status(&ctx, response.headers_mut(), &status);
    Ok(response)
}
