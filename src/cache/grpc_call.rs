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

use super::body::Resp;
use super::ctx::{Ctx, GrpcMethod};
use super::key::{self, GrpcMessage, PrimaryKey};
use super::lookup::lookup;
use super::policy::Freshness;
use super::serve::{invalid_authority, passthrough, serve};
use super::state::Shared;
use super::status::{Forward, Outcome};
use super::tags::{CacheTags, extract_tags};
use super::tee::BoxError;
use super::upstream::{self, Upstream};
use super::write::{Placement, StoreOnFinish, stored_headers};
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
    RB::Error: Into<BoxError>,
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
                let outcome = Outcome::Hit {
                    ttl_left: found.ttl_left(),
                };
                let headers = request.headers();
                return Ok(serve(&ctx, &found, &Method::POST, headers, outcome));
            }
            false
        }
        Err(()) => true,
    };
    let outcome = Forward::miss(store_failed);
    let fill = ctx.shared.start_fill(key.store_key());
    let fetched_at = SystemTime::now();
    let response = match upstream::call(&mut svc, request, ctx.config.upstream_timeout).await {
        Upstream::Done(Ok(response)) => response,
        Upstream::Done(Err(error)) => {
            Outcome::Forward(outcome).count(&ctx.shared);
            return Err(error);
        }
        Upstream::TimedOut => return Ok(upstream::timed_out(&ctx, true)),
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
        let mut response = passthrough(&ctx, Response::from_parts(parts, body));
        Outcome::Forward(outcome).record(&ctx, response.headers_mut());
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
    let mut response = finish.start(parts, body);
    // Stored only once the trailers say `grpc-status: 0`: not known yet, so not `stored`.
    Outcome::Forward(outcome).record(&ctx, response.headers_mut());
    Ok(response)
}
