//! [`Cache`]: the service, and the dispatch of each request to its path: gRPC, an unsafe
//! method (invalidation), a bypass, or a lookup followed by a hit, a stale hit with a
//! background refresh, or the miss path.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument as _;

use super::body::{CacheBody, Resp};
use super::ctx::Ctx;
use super::forward::forward;
use super::future::ResponseFuture;
use super::grpc_call::{self, grpc_request};
use super::hit::try_hit;
use super::invalidate::{is_safe, unsafe_request};
use super::lookup::{Miss, lookup};
use super::policy::Directives;
use super::revalidate::{Refresh, spawn_refresh};
use super::scope::CacheScope;
use super::serve::{invalid_authority, passthrough, serve};
use super::status::{self, Outcome, StaleReason};
use super::tee::BoxError;
use super::upstream::{self, Upstream};
use crate::store::Store;

/// The response cache service made by [`CacheLayer`](super::CacheLayer); see the
/// [module docs](super).
pub struct Cache<S, St> {
    inner: S,
    ctx: Arc<Ctx<St>>,
}

impl<S: Clone, St> Clone for Cache<S, St> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

inner_service_debug!(Cache<S, St>);

impl<S, St> Cache<S, St> {
    pub(crate) fn from_parts(inner: S, ctx: Arc<Ctx<St>>) -> Self {
        Cache { inner, ctx }
    }

    inner_service_accessors!();
}

impl<S, St, B, RB> Service<Request<B>> for Cache<S, St>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    B: Default + Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<RB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some(response) = try_hit(&self.ctx, &request) {
            // The inner service was not called: it stays ready for the next request.
            return ResponseFuture::ready(response);
        }
        // The clone is not ready; the ready one handles this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::boxed(Box::pin(handle(self.ctx.clone(), inner, request)))
    }
}

async fn handle<S, St, B, RB>(
    ctx: Arc<Ctx<St>>,
    mut svc: S,
    mut request: Request<B>,
) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    B: Default + Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    // Every path keys, purges or invalidates by the request's authority: one check for all.
    let Ok(authority) = ctx.config.key.authority(request.uri(), request.headers()) else {
        return Ok(invalid_authority(&ctx));
    };
    // An absolute-form target names the host the key took; `Host` must say the same to the
    // service (RFC 9112 §3.2.2), or an app that reads `Host` builds its answer for another
    // host than the one it is filed under.
    if request.uri().authority().is_some()
        && let Ok(host) = http::HeaderValue::from_str(&authority)
        && request.headers().get(header::HOST) != Some(&host)
    {
        request.headers_mut().insert(header::HOST, host);
    }
    if grpc_call::is_grpc(request.headers()) {
        return match grpc_call::cacheable_method(&ctx, &request) {
            Some(method) => {
                let ttl = method.ttl;
                Box::pin(grpc_request(ctx, svc, request, ttl)).await
            }
            // Other gRPC calls pass through untouched and never invalidate anything.
            None => match upstream::call(&mut svc, request, ctx.config.upstream_timeout).await {
                Upstream::Done(result) => Ok(result?.map(CacheBody::passthrough)),
                Upstream::TimedOut => Ok(upstream::timed_out(&ctx, true)),
            },
        };
    }
    let method = request.method().clone();
    if !is_safe(&method) {
        return Box::pin(unsafe_request(&ctx, svc, request)).await;
    }
    let config = &ctx.config;
    let path = request.uri().path();
    let request_cc = Directives::parse(request.headers(), &header::CACHE_CONTROL);
    // In a private scope the principal keys the request, so its cookies need not bypass.
    let private = CacheScope::of(&request).is_some();
    let bypass = !config.looks_up(&method)
        || config
            .routes
            .as_ref()
            .is_some_and(|r| !r.iter().any(|p| path.starts_with(p.as_str())))
        || (request.headers().contains_key(header::COOKIE)
            && !private
            && config.key.cookie_route(path).is_none())
        // A request directive that does not parse may hide `no-store` or `no-cache`.
        || request_cc.malformed;
    if bypass {
        return match upstream::call(&mut svc, request, config.upstream_timeout).await {
            Upstream::Done(result) => {
                let mut response = passthrough(&ctx, result?);
                Outcome::Bypass.record(&ctx, response.headers_mut());
                Ok(response)
            }
            Upstream::TimedOut => Ok(upstream::timed_out(&ctx, false)),
        };
    }
    let skip_lookup = request_cc.no_cache
        || request_cc.max_age == Some(0)
        || request
            .headers()
            .get(header::PRAGMA)
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"no-cache"));
    let Ok(key) = config.key.primary(&request) else {
        return Ok(invalid_authority(&ctx));
    };
    // The origin answers the normalised values, so what it sends is the variant they name.
    if !config.key.normalisers.is_empty() {
        config.key.normalisers.rewrite(request.headers_mut());
    }

    status::trace_key(key.store_key());
    let look = if skip_lookup {
        Default::default()
    } else {
        let span = tracing::debug_span!("cache.lookup");
        match lookup(&ctx, &key, request.headers()).instrument(span).await {
            Ok(look) => look,
            Err(()) => {
                // Fail open, but still one origin call for concurrent misses of the URL.
                let miss = Miss {
                    key,
                    stale: None,
                    looked_up: false,
                    store_failed: true,
                    vary: None,
                };
                return Box::pin(forward(ctx, svc, request, miss)).await;
            }
        }
    };
    let Some(found) = look.found else {
        // The miss path is large; boxing it keeps the hit path's future small.
        let miss = Miss {
            key,
            stale: None,
            looked_up: !skip_lookup,
            store_failed: false,
            vary: look.vary,
        };
        return Box::pin(forward(ctx, svc, request, miss)).await;
    };
    if !found.is_stale() {
        let ttl_left = found.ttl_left();
        if found.within_refresh_ahead(&ctx) {
            let outcome = Outcome::RefreshAhead { ttl_left };
            let response = serve(&ctx, &found, &method, request.headers(), outcome);
            spawn_refresh(ctx, svc, request, key, found, Refresh::Ahead);
            return Ok(response);
        }
        let outcome = Outcome::Hit { ttl_left };
        return Ok(serve(&ctx, &found, &method, request.headers(), outcome));
    }
    if found.within_swr(&ctx) {
        let outcome = Outcome::Stale(StaleReason::WhileRevalidate);
        let response = serve(&ctx, &found, &method, request.headers(), outcome);
        spawn_refresh(ctx, svc, request, key, found, Refresh::Stale);
        return Ok(response);
    }
    let miss = Miss {
        key,
        stale: Some(found),
        looked_up: false,
        store_failed: false,
        vary: look.vary,
    };
    Box::pin(forward(ctx, svc, request, miss)).await
}
