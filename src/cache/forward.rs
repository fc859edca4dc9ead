//! Step 2, forward: a miss, or a stale entry that must be revalidated, goes upstream (after
//! [coalescing](super::coalesce)); the response is stored while it streams, merged into the
//! stale entry (`304`), or replaced by the stale entry when upstream fails.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument as _;

use super::body::Resp;
use super::coalesce::{Coalesced, coalesce};
use super::conditional;
use super::ctx::Ctx;
use super::lookup::{Found, Miss};
use super::revalidate::{self, Revalidation};
use super::serve::{passthrough, serve};
use super::state::Shared;
use super::status::{self, Forward, Outcome, StaleReason};
use super::tags::{CacheTags, extract_tags};
use super::tee::BoxError;
use super::upstream::{self, Upstream};
use super::write::{Fetched, Placement, StoreOnFinish, admit, body_limit};
use crate::store::Store;

/// A stale entry served because upstream failed, timed out or answered 5xx.
fn serve_stale_on_error<St, RB>(
    ctx: &Ctx<St>,
    found: &Found,
    method: &Method,
    request_headers: &http::HeaderMap,
) -> Resp<RB> {
    let outcome = Outcome::Stale(StaleReason::IfError);
    serve(ctx, found, method, request_headers, outcome)
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
    RB::Error: Into<BoxError>,
{
    let config = &ctx.config;
    let method = request.method().clone();
    let plain = !conditional::has_conditionals(request.headers());
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

    // Revalidate a stale entry with its validators; the client's own conditionals are
    // answered from the entry once the origin has validated it. The client's request is kept
    // (without its body: a GET's body means nothing, RFC 9110 §9.3.1) in case the `304`
    // validates nothing and the request must go again, unconditionally.
    let mut client_headers = None;
    let mut unconditional = None;
    if let Some(found) = &miss.stale
        && method == Method::GET
        && conditional::has_validators(&found.record)
    {
        client_headers = Some(request.headers().clone());
        unconditional = Some(conditional::copy_without_body(&request));
        conditional::conditional_headers(request.headers_mut(), &found.record);
    }

    let mut request_headers = request.headers().clone();
    let mut request_time = SystemTime::now();
    let fill = ctx.shared.start_fill(primary);
    // A revalidation is a span of its own around the conditional request.
    let revalidation = match client_headers {
        Some(_) => tracing::debug_span!("cache.revalidate"),
        None => tracing::Span::none(),
    };
    let result = upstream::call(&mut svc, request, config.upstream_timeout)
        .instrument(revalidation)
        .await;
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
                None => {
                    // No response to carry it, but the request went upstream all the same.
                    Outcome::Forward(Forward::miss(miss.store_failed)).count(&ctx.shared);
                    Err(error)
                }
            };
        }
        Upstream::TimedOut => {
            return Ok(match stale.filter(|f| f.within_sie(&ctx)) {
                Some(found) => serve_stale_on_error(&ctx, &found, &method, &request_headers),
                None => upstream::timed_out(&ctx, false),
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
                    let outcome = Outcome::Revalidated;
                    return Ok(serve(&ctx, &refreshed, &method, &client_headers, outcome));
                }
                Revalidation::Mismatch => {
                    // RFC 9111 §4.3.4: the `304` selects no stored response, so it updates
                    // none. Ask once more, unconditionally; that answer is served and stored
                    // like any miss's.
                    request_headers = client_headers;
                    request_time = SystemTime::now();
                    let timeout = config.upstream_timeout;
                    response = match upstream::call(&mut svc, unconditional, timeout).await {
                        Upstream::Done(Ok(response)) => response,
                        Upstream::Done(Err(error)) => {
                            Outcome::Forward(Forward::miss(false)).count(&ctx.shared);
                            return Err(error);
                        }
                        Upstream::TimedOut => return Ok(upstream::timed_out(&ctx, false)),
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
    let mut outcome = Forward {
        stale: stale.is_some(),
        stored: false,
        store_failed: miss.store_failed,
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
            status::trace_storing(Some(reason));
            if method == Method::GET && plain {
                Shared::count(&ctx.shared.not_stored);
                ctx.shared.pass(primary, config.hit_for_pass);
            }
            drop(guard);
            let mut response = passthrough(&ctx, Response::from_parts(parts, body));
            Outcome::Forward(outcome).record(&ctx, response.headers_mut());
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
    status::trace_storing(None);
    let mut response = finish.start(parts, body);
    outcome.stored = known_size && write;
    Outcome::Forward(outcome).record(&ctx, response.headers_mut());
    Ok(response)
}
