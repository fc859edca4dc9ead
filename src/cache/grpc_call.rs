//! A cacheable gRPC call: keyed by method path and message bytes; stored only when the
//! trailers carry `grpc-status: 0`; never shared between callers with credentials unless the
//! method is public.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::body::CacheBody;
use super::forward::{Upstream, call_upstream};
use super::key::{self, GrpcMessage, PrimaryKey};
use super::layer::{Ctx, GrpcMethod};
use super::lookup::lookup;
use super::policy::Freshness;
use super::serve::{Resp, add_status, invalid_authority, serve};
use super::state::Shared;
use super::tags::{CacheTags, extract_tags};
use super::write::{Placement, StoreOnFinish, body_limit, stored_headers};
use crate::store::Store;

pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The configured method a gRPC request calls, if the cache may answer it: a POST with its
/// message attached, and no credentials unless the method is public (an answer to one
/// caller's `authorization` or cookie may be that caller's own).
pub(crate) fn cacheable_method<'a, St, B>(
    ctx: &'a Ctx<St>,
    request: &Request<B>,
) -> Option<&'a GrpcMethod> {
    let method = ctx
        .config
        .grpc_methods
        .iter()
        .find(|m| m.path == request.uri().path())?;
    let credentials = request.headers().contains_key(header::AUTHORIZATION)
        || request.headers().contains_key(header::COOKIE);
    (request.method() == Method::POST
        && request.extensions().get::<GrpcMessage>().is_some()
        && (method.public || !credentials))
        .then_some(method)
}

/// The answer to a gRPC call upstream did not answer within the upstream timeout: a
/// trailers-only `DEADLINE_EXCEEDED`, which gRPC clients understand (an HTTP `504` they do not).
fn deadline_exceeded<St, RB>(ctx: &Ctx<St>) -> Resp<RB> {
    let mut response = Response::new(CacheBody::empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", http::HeaderValue::from_static("4"));
    headers.insert(
        "grpc-message",
        http::HeaderValue::from_static("upstream%20timed%20out"),
    );
    add_status(ctx, headers, "fwd=miss; detail=timeout");
    response
}

/// Answers a cacheable gRPC call from the store, or forwards it (within the upstream timeout)
/// and stores a successful answer.
pub(crate) async fn grpc_request<S, St, B, RB>(
    ctx: Arc<Ctx<St>>,
    mut svc: S,
    request: Request<B>,
    ttl: Duration,
) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    St: Store,
    RB: Body<Data = Bytes> + Send + 'static,
{
    let message = request
        .extensions()
        .get::<GrpcMessage>()
        .map(|m| key::hex(&m.0))
        .unwrap_or_default();
    // The URL's identity (scheme, host, method path, key part) with the message in place of
    // the method.
    let Ok(base) = ctx.config.key.identity(&request) else {
        return Ok(invalid_authority(&ctx));
    };
    let key = PrimaryKey::from_identity(&format!(
        "GRPC{} m={message}",
        base.strip_prefix("GET").unwrap_or(&base)
    ));
    // A store that fails the lookup is left out: the call goes upstream, nothing is written.
    let store_failed = match lookup(&ctx, &key, request.headers()).await {
        Ok(look) => {
            if let Some(found) = look.found
                && !found.is_stale()
            {
                Shared::count(&ctx.shared.hits);
                return Ok(serve(&ctx, &found, &Method::POST, request.headers(), "hit"));
            }
            false
        }
        Err(()) => true,
    };
    let fwd = if store_failed {
        "fwd=miss; detail=store-error"
    } else {
        "fwd=miss"
    };
    Shared::count(&ctx.shared.misses);
    let fill = ctx.shared.start_fill(key.store_key());
    let fetched_at = SystemTime::now();
    let response = match call_upstream(&mut svc, request, ctx.config.upstream_timeout).await {
        Upstream::Done(result) => result?,
        Upstream::TimedOut => return Ok(deadline_exceeded(&ctx)),
    };
    let (mut parts, body) = response.into_parts();
    let storable = parts.status == StatusCode::OK
        && is_grpc(&parts.headers)
        && !parts.headers.contains_key("grpc-status")
        && !parts.headers.contains_key(header::SET_COOKIE);
    let tags = extract_tags(
        &ctx,
        &mut parts.headers,
        parts.extensions.get::<CacheTags>(),
    );
    if !storable || ttl.is_zero() || store_failed {
        Shared::count(&ctx.shared.not_stored);
        let mut response = Response::from_parts(parts, CacheBody::passthrough(body));
        add_status(&ctx, response.headers_mut(), fwd);
        return Ok(response);
    }
    let finish = StoreOnFinish {
        ctx: ctx.clone(),
        guard: None,
        headers: stored_headers(&ctx, &parts.headers),
        variant: key.identity().to_owned(),
        placement: Placement {
            key,
            names: Vec::new(),
            ttl,
            grace: Duration::ZERO,
            tags,
            fetched_at,
        },
        status: parts.status,
        freshness: Freshness {
            lifetime: ttl,
            initial_age: Duration::ZERO,
            swr: None,
            sie: None,
            must_revalidate: true,
        },
        grpc: true,
        write: true,
        fill,
        lease: None,
    };
    let limit = body_limit(&ctx);
    let mut response =
        Response::from_parts(parts, CacheBody::recording(body, limit, Box::new(finish)));
    add_status(&ctx, response.headers_mut(), "fwd=miss");
    Ok(response)
}
