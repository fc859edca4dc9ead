//! [`Cache`]: the service, and the request path (lookup, hit, miss, revalidation, storing).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_service::Service;

use super::body::{CacheBody, Finish};
use super::future::ResponseFuture;
use super::key::{
    self, GrpcMessage, KeyPart, is_get_or_head, store_key, variant_identity, vary_names,
};
use super::layer::{Ctx, FlightGuard, Join, Outcome, Provenance, Shared};
use super::policy::{self, CacheOverride, Directives, Freshness};
use super::record::{self, Record, Stored};
use super::tags::{CacheTags, extract_tags};
use crate::store::{SetOptions, Store};

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

impl<S: std::fmt::Debug, St> std::fmt::Debug for Cache<S, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, St> Cache<S, St> {
    pub(crate) fn from_parts(inner: S, ctx: Arc<Ctx<St>>) -> Self {
        Cache { inner, ctx }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the cache.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, St, B, RB> Service<Request<B>> for Cache<S, St>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    St: Store,
    B: Default + Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<CacheBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<RB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone is not ready; the ready one handles this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(Box::pin(handle(self.ctx.clone(), inner, request)))
    }
}

type Resp<RB> = Response<CacheBody<RB>>;

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

static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A stored response found for a request.
struct Found {
    record: Arc<Record>,
    entry_age: Duration,
    entry_ttl: Option<Duration>,
    /// The store entry, for its tags (none for a response handed over by a coalesced miss).
    entry: Option<crate::store::Entry>,
}

impl Found {
    fn tags(&self) -> &[String] {
        self.entry.as_ref().map_or(&[], |e| e.tags())
    }
    /// Where a found entry came from, for handing it to coalesced waiters.
    fn provenance(&self) -> Provenance {
        Provenance {
            fetched_at: self
                .entry
                .as_ref()
                .map_or_else(SystemTime::now, |e| e.stored_at()),
            tags: self.tags().into(),
        }
    }
    fn is_stale(&self) -> bool {
        self.entry_ttl.is_some_and(|ttl| self.entry_age >= ttl)
    }
    /// How long past its freshness lifetime the response is (RFC 9111: current age minus
    /// freshness lifetime; a response that arrived already old starts stale).
    fn staleness(&self) -> Duration {
        let f = &self.record.freshness;
        let by_age = self.current_age().saturating_sub(f.lifetime);
        let by_entry = self
            .entry_ttl
            .map_or(Duration::ZERO, |ttl| self.entry_age.saturating_sub(ttl));
        by_age.max(by_entry)
    }
    fn current_age(&self) -> Duration {
        self.record.freshness.initial_age + self.entry_age
    }
    fn within_sie<St>(&self, ctx: &Ctx<St>) -> bool {
        let f = &self.record.freshness;
        let window = f.sie.or(ctx.config.sie).unwrap_or_default();
        !f.must_revalidate && !window.is_zero() && self.staleness() <= window
    }
}

async fn handle<S, St, B, RB>(
    ctx: Arc<Ctx<St>>,
    mut svc: S,
    request: Request<B>,
) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    St: Store,
    B: Default + Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
{
    let method = request.method().clone();
    if is_grpc(request.headers()) {
        let ttl = ctx
            .config
            .grpc_methods
            .iter()
            .find(|(path, _)| path == request.uri().path())
            .map(|(_, ttl)| *ttl);
        return match (ttl, request.extensions().get::<GrpcMessage>()) {
            (Some(ttl), Some(message)) if method == Method::POST => {
                let message = message.0.clone();
                Box::pin(grpc_request(ctx, svc, request, ttl, message)).await
            }
            _ => Ok(svc.call(request).await?.map(CacheBody::passthrough)),
        };
    }
    if matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return Box::pin(unsafe_request(&ctx, svc, request)).await;
    }
    let config = &ctx.config;
    let path = request.uri().path();
    let bypass = !is_get_or_head(&method)
        || !config.methods.contains(&method)
        || config
            .routes
            .as_ref()
            .is_some_and(|r| !r.iter().any(|p| path.starts_with(p.as_str())))
        || (request.headers().contains_key(header::COOKIE)
            && config.key.cookie_route(path).is_none());
    if bypass {
        Shared::count(&ctx.shared.bypasses);
        let response = svc.call(request).await?;
        return Ok(finish_passthrough(&ctx, response, "fwd=bypass"));
    }
    let req_cc = Directives::parse(request.headers(), &header::CACHE_CONTROL);
    let skip_lookup = req_cc.no_cache
        || req_cc.max_age == Some(0)
        || request
            .headers()
            .get(header::PRAGMA)
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"no-cache"));
    let identity = config.key.identity(&request);
    let primary = store_key(&identity);

    let found = if skip_lookup {
        None
    } else {
        match lookup(&ctx, &identity, &primary, request.headers()).await {
            Ok(found) => found,
            Err(()) => {
                // Fail open: the store is down or slow; go upstream without caching.
                let response = svc.call(request).await?;
                return Ok(finish_passthrough(
                    &ctx,
                    response,
                    "fwd=miss; detail=store-error",
                ));
            }
        }
    };
    if let Some(found) = found {
        if !found.is_stale() {
            Shared::count(&ctx.shared.hits);
            let ttl = found
                .entry_ttl
                .map(|t| t.saturating_sub(found.entry_age).as_secs());
            let status = match ttl {
                Some(ttl) => format!("hit; ttl={ttl}"),
                None => "hit".to_owned(),
            };
            return Ok(serve(&ctx, &found, &method, request.headers(), &status));
        }
        let f = &found.record.freshness;
        let swr = f.swr.or(config.swr).unwrap_or_default();
        if !f.must_revalidate && !swr.is_zero() && found.staleness() <= swr {
            Shared::count(&ctx.shared.stale_hits);
            let response = serve(
                &ctx,
                &found,
                &method,
                request.headers(),
                "hit; detail=stale-while-revalidate",
            );
            spawn_refresh(ctx.clone(), svc, &request, identity, primary, found);
            return Ok(response);
        }
        return Box::pin(forward(
            ctx,
            svc,
            request,
            identity,
            primary,
            Some(found),
            false,
        ))
        .await;
    }
    // The miss path is large; boxing it keeps the hit path's future small.
    Box::pin(forward(
        ctx,
        svc,
        request,
        identity,
        primary,
        None,
        !skip_lookup,
    ))
    .await
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// A cacheable gRPC call: keyed by method path and message bytes; stored only when the
/// trailers carry `grpc-status: 0`.
async fn grpc_request<S, St, B, RB>(
    ctx: Arc<Ctx<St>>,
    mut svc: S,
    request: Request<B>,
    ttl: Duration,
    message: Bytes,
) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    St: Store,
    RB: Body<Data = Bytes> + Send + 'static,
{
    let base = ctx.config.key.identity(&request);
    let identity = format!(
        "GRPC{} m={}",
        base.strip_prefix("GET").unwrap_or(&base),
        key::hex(&message)
    );
    let primary = store_key(&identity);
    match lookup(&ctx, &identity, &primary, request.headers()).await {
        Ok(Some(found)) if !found.is_stale() => {
            Shared::count(&ctx.shared.hits);
            return Ok(serve(&ctx, &found, &Method::POST, request.headers(), "hit"));
        }
        Ok(_) => {}
        Err(()) => {
            let response = svc.call(request).await?;
            return Ok(finish_passthrough(
                &ctx,
                response,
                "fwd=miss; detail=store-error",
            ));
        }
    }
    Shared::count(&ctx.shared.misses);
    let generation = ctx.shared.generation();
    let fetched_at = SystemTime::now();
    let response = svc.call(request).await?;
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
    if !storable || ttl.is_zero() {
        Shared::count(&ctx.shared.not_stored);
        let mut response = Response::from_parts(parts, CacheBody::passthrough(body));
        add_status(&ctx, response.headers_mut(), "fwd=miss");
        return Ok(response);
    }
    let finish = StoreOnFinish {
        ctx: ctx.clone(),
        guard: None,
        primary,
        identity: identity.clone(),
        variant: identity,
        names: Vec::new(),
        status: parts.status,
        headers: stored_headers(&ctx, &parts.headers),
        freshness: Freshness {
            lifetime: ttl,
            initial_age: Duration::ZERO,
            swr: None,
            sie: None,
            must_revalidate: true,
        },
        ttl,
        grace: Duration::ZERO,
        tags,
        grpc: true,
        generation,
        fetched_at,
        lease: None,
    };
    let limit = body_limit(&ctx);
    let mut response =
        Response::from_parts(parts, CacheBody::recording(body, limit, Box::new(finish)));
    add_status(&ctx, response.headers_mut(), "fwd=miss");
    Ok(response)
}

/// Looks a request up: the primary key, then the variant a vary spec points to. `Err` is a
/// store failure (counted).
async fn lookup<St: Store>(
    ctx: &Ctx<St>,
    identity: &str,
    primary: &str,
    headers: &HeaderMap,
) -> Result<Option<Found>, ()> {
    let Some(entry) = get(ctx, primary).await? else {
        return Ok(None);
    };
    let (record, entry) = match record::decode(entry.value()) {
        Ok(Stored::Response(record)) => (record, entry),
        Ok(Stored::Vary {
            identity: stored,
            names,
        }) => {
            if stored != identity {
                return Ok(None);
            }
            let variant = variant_identity(identity, &names, headers);
            let Some(entry) = get(ctx, &store_key(&variant)).await? else {
                return Ok(None);
            };
            match record::decode(entry.value()) {
                Ok(Stored::Response(record)) if record.identity == variant => (record, entry),
                _ => return Ok(None),
            }
        }
        Err(corrupt) => {
            tracing::warn!(key = primary, reason = corrupt.0, "unreadable cache record");
            return Ok(None);
        }
    };
    // A hashed key that collided, or a variant stored under the primary key: a miss.
    let names = key::vary_names(&record.headers);
    let matches = if names.is_empty() {
        record.identity == identity
    } else {
        record.identity == variant_identity(identity, &names, headers)
    };
    if !matches {
        return Ok(None);
    }
    Ok(Some(Found {
        record: Arc::from(record),
        entry_age: entry.age(),
        entry_ttl: entry.ttl(),
        entry: Some(entry),
    }))
}

async fn get<St: Store>(ctx: &Ctx<St>, key: &str) -> Result<Option<crate::store::Entry>, ()> {
    ctx.store.get(key).await.map_err(|error| {
        Shared::count(&ctx.shared.store_errors);
        tracing::warn!(%error, key, "cache store read failed; passing through");
    })
}

/// A successful POST, PUT, PATCH or DELETE invalidates its URI and its `Location` and
/// `Content-Location` on the same host (RFC 9111 §4.4).
async fn unsafe_request<S, St, B, RB>(
    ctx: &Arc<Ctx<St>>,
    mut svc: S,
    request: Request<B>,
) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    St: Store,
{
    let uri = request.uri().clone();
    let headers = request.headers().clone();
    let part = request.extensions().get::<KeyPart>().cloned();
    let response = svc.call(request).await?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        let key_config = &ctx.config.key;
        let mut identities = vec![key_config.identity_for(&uri, &headers, part.as_ref())];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(target) = response
                .headers()
                .get(&name)
                .and_then(|v| same_host_target(&uri, &headers, v))
            {
                identities.push(key_config.identity_for(&target, &headers, part.as_ref()));
            }
        }
        for identity in identities {
            let key = store_key(&identity);
            ctx.shared.unpass(&key);
            ctx.shared.cancel(&key);
            ctx.shared.invalidate(&key);
            match ctx.store.delete(&key).await {
                Ok(_) => Shared::count(&ctx.shared.invalidations),
                Err(error) => {
                    Shared::count(&ctx.shared.store_errors);
                    tracing::warn!(%error, key, "cache invalidation failed");
                }
            }
        }
    }
    Ok(response.map(CacheBody::passthrough))
}

fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// A `Location`-style target on the request's host, as a URI the key can be built from.
fn same_host_target(uri: &Uri, headers: &HeaderMap, value: &HeaderValue) -> Option<Uri> {
    let target: Uri = value.to_str().ok()?.parse().ok()?;
    match target.authority() {
        Some(authority) => {
            let host = request_host(uri, headers)?;
            authority
                .as_str()
                .eq_ignore_ascii_case(host)
                .then_some(target)
        }
        None if target.path().starts_with('/') => {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = target.path_and_query().cloned();
            Uri::from_parts(parts).ok()
        }
        None => None,
    }
}

fn has_conditionals(headers: &HeaderMap) -> bool {
    [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ]
    .iter()
    .any(|h| headers.contains_key(h))
}

enum Upstream<R, E> {
    Done(Result<R, E>),
    TimedOut,
}

async fn call_upstream<S, B, R>(
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

/// A miss, or a stale entry that must be revalidated: go upstream (leading or joining a
/// coalesced miss), then store what may be stored.
#[allow(clippy::too_many_arguments)]
async fn forward<S, St, B, RB>(
    ctx: Arc<Ctx<St>>,
    mut svc: S,
    mut request: Request<B>,
    identity: String,
    primary: String,
    stale: Option<Found>,
    // The store was read and had nothing: worth a second look once this request leads.
    looked_up: bool,
) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    St: Store,
    B: Default + Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
{
    let config = &ctx.config;
    let method = request.method().clone();
    let plain = !has_conditionals(request.headers());
    let mut guard = None;
    let mut lease = None;
    if method == Method::GET && config.coalesce && !ctx.shared.is_pass(&primary) {
        match ctx.shared.join(&primary) {
            Join::Leader(g) if plain || stale.is_some() => {
                // The previous leader may have stored the response and left between this
                // request's lookup and its join: look again before going upstream.
                if looked_up
                    && let Ok(Some(found)) =
                        lookup(&ctx, &identity, &primary, request.headers()).await
                    && !found.is_stale()
                {
                    g.publish(Outcome::Stored(found.record.clone(), found.provenance()));
                    drop(g);
                    Shared::count(&ctx.shared.hits);
                    return Ok(serve(&ctx, &found, &method, request.headers(), "hit"));
                }
                if let Some(lease_ttl) = config.lease {
                    let key = lease_key(&primary);
                    match ctx.store.incr(&key, 1, Some(lease_ttl)).await {
                        Ok(1) => lease = Some(key),
                        Ok(_) => {
                            // Another instance is fetching this key.
                            if let Some(found) = &stale
                                && !found.record.freshness.must_revalidate
                            {
                                Shared::count(&ctx.shared.stale_hits);
                                return Ok(serve(
                                    &ctx,
                                    found,
                                    &method,
                                    request.headers(),
                                    "hit; detail=stale-during-remote-fetch",
                                ));
                            }
                            let deadline = tokio::time::Instant::now()
                                + lease_ttl.min(config.coalesce_timeout);
                            while tokio::time::Instant::now() < deadline {
                                tokio::time::sleep(LEASE_POLL).await;
                                if let Ok(Some(found)) =
                                    lookup(&ctx, &identity, &primary, request.headers()).await
                                    && !found.is_stale()
                                {
                                    g.publish(Outcome::Stored(
                                        found.record.clone(),
                                        found.provenance(),
                                    ));
                                    drop(g);
                                    Shared::count(&ctx.shared.coalesced);
                                    return Ok(serve(
                                        &ctx,
                                        &found,
                                        &method,
                                        request.headers(),
                                        "hit; detail=coalesced-remote",
                                    ));
                                }
                            }
                        }
                        Err(error) => {
                            Shared::count(&ctx.shared.store_errors);
                            tracing::warn!(%error, "cache lease failed; going upstream");
                        }
                    }
                }
                guard = Some(g);
            }
            Join::Leader(_) => {}
            Join::Waiter(mut rx) => {
                // In a block of its own: the watch guard must be gone before the next await.
                let stored = {
                    let waited =
                        tokio::time::timeout(config.coalesce_timeout, rx.wait_for(Option::is_some))
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
                // A purge since the leader began fetching (a writer committed meanwhile) makes
                // its response out of date for this request, which may have started after the
                // write returned: go upstream instead. A store error counts as purged.
                let stored = match stored {
                    Some((record, provenance)) if !provenance.tags.is_empty() => {
                        match ctx
                            .store
                            .purged_since(&provenance.tags, provenance.fetched_at)
                            .await
                        {
                            Ok(false) => Some(record),
                            _ => None,
                        }
                    }
                    other => other.map(|(record, _)| record),
                };
                if let Some(record) = stored {
                    let names = vary_names(&record.headers);
                    let expected = if names.is_empty() {
                        identity.clone()
                    } else {
                        variant_identity(&identity, &names, request.headers())
                    };
                    if record.identity == expected {
                        Shared::count(&ctx.shared.coalesced);
                        let found = Found {
                            record,
                            entry_age: Duration::ZERO,
                            entry_ttl: None,
                            entry: None,
                        };
                        return Ok(serve(
                            &ctx,
                            &found,
                            &method,
                            request.headers(),
                            "hit; detail=coalesced",
                        ));
                    }
                }
            }
        }
    }
    Shared::count(&ctx.shared.misses);

    // Revalidate a stale entry with its validators; the client's own conditionals are
    // answered from the refreshed entry.
    let mut client_headers = None;
    if let Some(found) = &stale
        && method == Method::GET
    {
        let etag = found.record.headers.get(header::ETAG).cloned();
        let last_modified = found.record.headers.get(header::LAST_MODIFIED).cloned();
        if etag.is_some() || last_modified.is_some() {
            client_headers = Some(request.headers().clone());
            let h = request.headers_mut();
            for name in [
                header::IF_NONE_MATCH,
                header::IF_MODIFIED_SINCE,
                header::IF_RANGE,
                header::RANGE,
            ] {
                h.remove(name);
            }
            if let Some(etag) = etag {
                h.insert(header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = last_modified {
                h.insert(header::IF_MODIFIED_SINCE, lm);
            }
        }
    }

    let request_headers = request.headers().clone();
    let has_authorization = request_headers.contains_key(header::AUTHORIZATION);
    let request_no_store = Directives::parse(&request_headers, &header::CACHE_CONTROL).no_store;
    let request_time = SystemTime::now();
    let generation = ctx.shared.generation();
    let result = call_upstream(&mut svc, request, config.upstream_timeout).await;
    let response_time = SystemTime::now();

    let response = match result {
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
                None => {
                    let mut response = Response::new(CacheBody::empty());
                    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                    add_status(&ctx, response.headers_mut(), "fwd=miss; detail=timeout");
                    response
                }
            });
        }
    };

    if let Some(found) = &stale {
        if response.status().is_server_error() && found.within_sie(&ctx) {
            return Ok(serve_stale_on_error(&ctx, found, &method, &request_headers));
        }
        if response.status() == StatusCode::NOT_MODIFIED
            && let Some(client_headers) = client_headers
            && let Some(refreshed) = refresh_from_304(
                &ctx,
                found,
                response.headers(),
                &identity,
                &primary,
                request_time,
                response_time,
            )
            .await
        {
            Shared::count(&ctx.shared.revalidated);
            drop(guard);
            return Ok(serve(
                &ctx,
                &refreshed,
                &method,
                &client_headers,
                "fwd=stale; fwd-status=304",
            ));
        }
    }

    let (mut parts, body) = response.into_parts();
    let override_ = parts.extensions.get::<CacheOverride>().copied();
    let streaming = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("text/event-stream") || ct.starts_with("application/grpc")
        });
    let decision = if streaming {
        Err("streaming content type")
    } else {
        policy::decide(
            &config.policy,
            has_authorization,
            request_no_store,
            &method,
            parts.status,
            &parts.headers,
            override_.as_ref(),
            request_time,
            response_time,
        )
    };
    let tags = extract_tags(
        &ctx,
        &mut parts.headers,
        parts.extensions.get::<CacheTags>(),
    );
    let fwd = if stale.is_some() {
        "fwd=stale"
    } else {
        "fwd=miss"
    };
    let limit = body_limit(&ctx);
    let freshness = match decision {
        Ok(f) => f,
        Err(reason) => {
            tracing::debug!(key = primary, reason, "response not stored");
            if method == Method::GET && plain {
                Shared::count(&ctx.shared.not_stored);
                ctx.shared.pass(&primary, config.hit_for_pass);
            }
            drop(guard);
            let mut response = Response::from_parts(parts, CacheBody::passthrough(body));
            add_status(&ctx, response.headers_mut(), fwd);
            return Ok(response);
        }
    };
    let has_validators = parts.headers.contains_key(header::ETAG)
        || parts.headers.contains_key(header::LAST_MODIFIED);
    let (ttl, grace) = entry_times(&ctx, &freshness, has_validators);
    let too_large = body
        .size_hint()
        .exact()
        .is_some_and(|len| len > limit as u64);
    if too_large || (ttl.is_zero() && grace.is_zero()) {
        Shared::count(&ctx.shared.not_stored);
        ctx.shared.pass(&primary, config.hit_for_pass);
        drop(guard);
        let mut response = Response::from_parts(parts, CacheBody::passthrough(body));
        add_status(&ctx, response.headers_mut(), fwd);
        return Ok(response);
    }
    let names = vary_names(&parts.headers);
    let variant = if names.is_empty() {
        identity.clone()
    } else {
        variant_identity(&identity, &names, &request_headers)
    };
    let known_size = body.size_hint().exact().is_some();
    let finish = StoreOnFinish {
        ctx: ctx.clone(),
        guard,
        primary,
        identity,
        variant,
        names,
        status: parts.status,
        headers: stored_headers(&ctx, &parts.headers),
        freshness,
        ttl,
        grace,
        tags,
        grpc: false,
        generation,
        fetched_at: request_time,
        lease,
    };
    let mut response =
        Response::from_parts(parts, CacheBody::recording(body, limit, Box::new(finish)));
    let status = if known_size {
        format!("{fwd}; stored")
    } else {
        fwd.to_owned()
    };
    add_status(&ctx, response.headers_mut(), &status);
    Ok(response)
}

/// How often an instance waiting on another instance's lease polls the store.
const LEASE_POLL: Duration = Duration::from_millis(25);

fn lease_key(primary: &str) -> String {
    let mut key = String::with_capacity(primary.len() + 2);
    key.push_str("l:");
    key.push_str(primary);
    key
}

fn body_limit<St: Store>(ctx: &Ctx<St>) -> usize {
    // Leave room in the store's value limit for the record's headers.
    let store_max = ctx.store.limits().max_value_size.saturating_sub(64 * 1024);
    ctx.config.max_body_size.min(store_max)
}

/// The store TTL (freshness left, jittered) and grace (how long a stale entry stays usable).
fn entry_times<St>(ctx: &Ctx<St>, f: &Freshness, has_validators: bool) -> (Duration, Duration) {
    let mut ttl = f.lifetime.saturating_sub(f.initial_age);
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
    (ttl, grace)
}

/// The headers worth storing: no hop-by-hop fields, no `Age` (recomputed), no
/// `Cache-Status` or `Surrogate-Control` (for this cache only).
fn stored_headers<St>(ctx: &Ctx<St>, headers: &HeaderMap) -> HeaderMap {
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

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Stores a recorded body once it has streamed through, and hands it to coalesced waiters.
struct StoreOnFinish<St: Store> {
    ctx: Arc<Ctx<St>>,
    guard: Option<FlightGuard>,
    primary: String,
    identity: String,
    variant: String,
    names: Vec<HeaderName>,
    status: StatusCode,
    headers: HeaderMap,
    freshness: Freshness,
    ttl: Duration,
    grace: Duration,
    tags: Vec<String>,
    /// Store only when the trailers carry `grpc-status: 0`.
    grpc: bool,
    /// The invalidation generation when the response was requested.
    generation: u64,
    /// When the upstream request began: the entry counts as stored then (see `write`).
    fetched_at: SystemTime,
    /// The cross-instance lease this miss holds, released once the response is stored.
    lease: Option<String>,
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
        if let Some(guard) = &this.guard {
            guard.publish(Outcome::Stored(
                record.clone(),
                Provenance {
                    fetched_at: this.fetched_at,
                    tags: this.tags.iter().cloned().collect(),
                },
            ));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let ctx = this.ctx;
        let guard = this.guard;
        let generation = this.generation;
        runtime.spawn(async move {
            let cancelled = || {
                guard.as_ref().is_some_and(FlightGuard::is_cancelled)
                    || ctx.shared.invalidated_since(&this.primary, generation)
            };
            if cancelled() {
                return;
            }
            write(
                &ctx,
                &this.primary,
                &this.identity,
                &this.names,
                &record,
                this.ttl,
                this.grace,
                &this.tags,
                this.fetched_at,
            )
            .await;
            // An unsafe request invalidated the key while the write was in flight: undo it.
            if cancelled() {
                let _ = ctx.store.delete(&this.primary).await;
            }
            if let Some(lease) = &this.lease {
                let _ = ctx.store.delete(lease).await;
            }
            // Requests arriving until now were answered from the published record.
            drop(guard);
        });
    }

    fn too_large(self: Box<Self>) {
        Shared::count(&self.ctx.shared.not_stored);
        self.ctx
            .shared
            .pass(&self.primary, self.ctx.config.hit_for_pass);
    }
}

/// Writes a record (and the vary spec pointing to it). Returns whether it was stored.
///
/// The entry is stamped as stored when its upstream request began (`fetched_at`), not when the
/// body finished: a tag purge made while the request was in flight (a writer committing and
/// purging while this reader still held the old row) is then newer than the entry and hides
/// it, instead of the late write bringing the old value back. Its age therefore includes the
/// fetch time, which errs on the side of staleness.
#[allow(clippy::too_many_arguments)]
async fn write<St: Store>(
    ctx: &Ctx<St>,
    primary: &str,
    identity: &str,
    names: &[HeaderName],
    record: &Record,
    ttl: Duration,
    grace: Duration,
    tags: &[String],
    fetched_at: SystemTime,
) -> bool {
    let options = SetOptions::new()
        .ttl(ttl)
        .grace(grace)
        .tags(tags.iter().cloned())
        .as_of(fetched_at);
    let result = if names.is_empty() {
        ctx.store.set(primary, record.encode(), &options).await
    } else {
        // The index keeps the variants' grace, so a soft purge leaves it readable for as long
        // as the (stale) variants it points to.
        let spec_options = SetOptions::new()
            .ttl(ttl + grace)
            .grace(grace)
            .tags(tags.iter().cloned())
            .as_of(fetched_at);
        // Variants carry an internal tag derived from the primary key, so a URL purge
        // reaches every variant (see `purge::CachePurger::purge_url`).
        let variant_options = options.tags(tags.iter().cloned().chain([key::url_tag(primary)]));
        match ctx
            .store
            .set(
                &store_key(&record.identity),
                record.encode(),
                &variant_options,
            )
            .await
        {
            Ok(()) => {
                ctx.store
                    .set(primary, record::encode_vary(identity, names), &spec_options)
                    .await
            }
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(()) => {
            Shared::count(&ctx.shared.stores);
            ctx.shared.unpass(primary);
            true
        }
        Err(error) => {
            Shared::count(&ctx.shared.store_errors);
            tracing::warn!(%error, key = primary, "cache store write failed");
            false
        }
    }
}

/// RFC 9111 §4.3.4: a `304` refreshes the stored response's headers and freshness.
#[allow(clippy::too_many_arguments)]
async fn refresh_from_304<St: Store>(
    ctx: &Ctx<St>,
    found: &Found,
    not_modified: &HeaderMap,
    identity: &str,
    primary: &str,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Option<Found> {
    let mut headers = found.record.headers.clone();
    let mut update = not_modified.clone();
    strip_hop_by_hop(&mut update);
    update.remove(header::CONTENT_LENGTH);
    for name in update.keys() {
        headers.remove(name);
    }
    for (name, value) in &update {
        headers.append(name.clone(), value.clone());
    }
    let headers = stored_headers(ctx, &headers);
    let freshness = policy::decide(
        &ctx.config.policy,
        false,
        false,
        &Method::GET,
        found.record.status,
        &headers,
        None,
        request_time,
        response_time,
    )
    .ok()?;
    let has_validators =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    let (ttl, grace) = entry_times(ctx, &freshness, has_validators);
    let record = Record {
        identity: found.record.identity.clone(),
        status: found.record.status,
        headers,
        trailers: found.record.trailers.clone(),
        body: found.record.body.clone(),
        freshness,
    };
    let names = vary_names(&record.headers);
    write(
        ctx,
        primary,
        identity,
        &names,
        &record,
        ttl,
        grace,
        found.tags(),
        request_time,
    )
    .await;
    Some(Found {
        record: Arc::new(record),
        entry_age: Duration::ZERO,
        entry_ttl: Some(ttl),
        entry: found.entry.clone(),
    })
}

/// Refreshes a stale entry in the background, once per key at a time.
fn spawn_refresh<S, St, B, RB>(
    ctx: Arc<Ctx<St>>,
    svc: S,
    request: &Request<B>,
    identity: String,
    primary: String,
    found: Found,
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
    if !ctx.shared.start_refresh(&primary) {
        return;
    }
    let mut refresh = Request::new(B::default());
    *refresh.uri_mut() = request.uri().clone();
    *refresh.version_mut() = request.version();
    *refresh.headers_mut() = request.headers().clone();
    // All of them, not only `KeyPart`: the inner service may need what a router put there
    // (axum's path parameters; without them a refresh of `/products/{id}` fails).
    *refresh.extensions_mut() = request.extensions().clone();
    let h = refresh.headers_mut();
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ] {
        h.remove(name);
    }
    if let Some(etag) = found.record.headers.get(header::ETAG) {
        h.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = found.record.headers.get(header::LAST_MODIFIED) {
        h.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
    runtime.spawn(async move {
        struct EndRefresh(Arc<Shared>, String);
        impl Drop for EndRefresh {
            fn drop(&mut self) {
                self.0.end_refresh(&self.1);
            }
        }
        let _end = EndRefresh(ctx.shared.clone(), primary.clone());
        let request_headers = refresh.headers().clone();
        let has_authorization = request_headers.contains_key(header::AUTHORIZATION);
        let request_time = SystemTime::now();
        let generation = ctx.shared.generation();
        let call = svc.oneshot(refresh);
        let response = match ctx.config.upstream_timeout {
            Some(t) => match tokio::time::timeout(t, call).await {
                Ok(Ok(r)) => r,
                _ => return,
            },
            None => match call.await {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        let response_time = SystemTime::now();
        if ctx.shared.invalidated_since(&primary, generation) {
            return; // invalidated meanwhile: the refresh must not bring it back
        }
        if response.status() == StatusCode::NOT_MODIFIED {
            if refresh_from_304(
                &ctx,
                &found,
                response.headers(),
                &identity,
                &primary,
                request_time,
                response_time,
            )
            .await
            .is_some()
            {
                Shared::count(&ctx.shared.revalidated);
            }
            return;
        }
        if response.status().is_server_error() {
            return; // keep serving stale
        }
        let (mut parts, body) = response.into_parts();
        let override_ = parts.extensions.get::<CacheOverride>().copied();
        let decision = policy::decide(
            &ctx.config.policy,
            has_authorization,
            false,
            &Method::GET,
            parts.status,
            &parts.headers,
            override_.as_ref(),
            request_time,
            response_time,
        );
        let tags = extract_tags(
            &ctx,
            &mut parts.headers,
            parts.extensions.get::<CacheTags>(),
        );
        let Ok(freshness) = decision else {
            // No longer cacheable: stop serving the old response.
            let _ = ctx.store.delete(&primary).await;
            return;
        };
        let Some((body, trailers)) = collect_limited(body, body_limit(&ctx)).await else {
            return;
        };
        let names = vary_names(&parts.headers);
        let variant = if names.is_empty() {
            identity.clone()
        } else {
            variant_identity(&identity, &names, &request_headers)
        };
        let has_validators = parts.headers.contains_key(header::ETAG)
            || parts.headers.contains_key(header::LAST_MODIFIED);
        let (ttl, grace) = entry_times(&ctx, &freshness, has_validators);
        let record = Record {
            identity: variant,
            status: parts.status,
            headers: stored_headers(&ctx, &parts.headers),
            trailers,
            body,
            freshness,
        };
        if record.encodable() {
            write(
                &ctx,
                &primary,
                &identity,
                &names,
                &record,
                ttl,
                grace,
                &tags,
                request_time,
            )
            .await;
        }
    });
}

/// Reads a body up to `limit` bytes; `None` past it or on an error.
async fn collect_limited<RB: Body<Data = Bytes>>(
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

fn add_status<St>(ctx: &Ctx<St>, headers: &mut HeaderMap, value: &str) {
    if ctx.config.cache_status
        && let Ok(v) = HeaderValue::from_str(&format!("tower-strata; {value}"))
    {
        headers.append(CACHE_STATUS.clone(), v);
    }
}

fn finish_passthrough<St, RB>(ctx: &Ctx<St>, response: Response<RB>, status: &str) -> Resp<RB> {
    let mut response = response.map(CacheBody::passthrough);
    if ctx.config.strip_tag_headers {
        response.headers_mut().remove(&super::tags::SURROGATE_KEY);
        response.headers_mut().remove(&super::tags::CACHE_TAG);
    }
    add_status(ctx, response.headers_mut(), status);
    response
}

fn serve_stale_on_error<St, RB>(
    ctx: &Ctx<St>,
    found: &Found,
    method: &Method,
    request_headers: &HeaderMap,
) -> Resp<RB> {
    Shared::count(&ctx.shared.stale_hits);
    serve(
        ctx,
        found,
        method,
        request_headers,
        "hit; detail=stale-if-error",
    )
}

/// Answers from a stored response: `304` when the client's validators match, `206`/`416` for
/// a single byte range, else the whole response (no body for HEAD). The body is not copied.
fn serve<St, RB>(
    ctx: &Ctx<St>,
    found: &Found,
    method: &Method,
    request_headers: &HeaderMap,
    status: &str,
) -> Resp<RB> {
    let record = &found.record;
    let age = HeaderValue::from(found.current_age().as_secs());
    if record.status == StatusCode::OK && not_modified(request_headers, &record.headers) {
        let mut response = Response::new(CacheBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        let h = response.headers_mut();
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
        ] {
            for v in record.headers.get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        h.insert(header::AGE, age);
        add_status(ctx, h, status);
        return response;
    }
    let len = record.body.len() as u64;
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = record.status;
    *response.headers_mut() = record.headers.clone();
    let range = (method == Method::GET && record.status == StatusCode::OK)
        .then(|| range_of(request_headers, &record.headers, len))
        .flatten();
    match range {
        Some(Ok((start, end))) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = response.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            *response.body_mut() =
                CacheBody::stored(record.body.slice(start as usize..=end as usize), None);
        }
        Some(Err(())) => {
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = response.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        None => {
            if !response.headers().contains_key(header::CONTENT_LENGTH) && record.trailers.is_none()
            {
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            if method != Method::HEAD {
                *response.body_mut() =
                    CacheBody::stored(record.body.clone(), record.trailers.clone());
            }
        }
    }
    let h = response.headers_mut();
    h.insert(header::AGE, age);
    add_status(ctx, h, status);
    response
}

/// RFC 9110 §13.1.2 (weak comparison) and §13.1.3.
fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        let Ok(inm) = inm.to_str() else { return false };
        if inm.trim() == "*" {
            return true;
        }
        let Some(etag) = stored.get(header::ETAG).and_then(|e| e.to_str().ok()) else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        let etag = weak(etag);
        return inm.split(',').any(|t| weak(t) == etag);
    }
    if let Some(since) = policy::header_date(request, &header::IF_MODIFIED_SINCE) {
        let modified = policy::header_date(stored, &header::LAST_MODIFIED)
            .or_else(|| policy::header_date(stored, &header::DATE));
        return modified.is_some_and(|m| m <= since);
    }
    false
}

/// A single satisfiable `bytes=` range as inclusive offsets, `Err` when unsatisfiable, `None`
/// when the whole response should be sent (no range, several ranges, a failed `If-Range`).
fn range_of(request: &HeaderMap, stored: &HeaderMap, len: u64) -> Option<Result<(u64, u64), ()>> {
    let range = request.get(header::RANGE)?.to_str().ok()?.trim();
    if let Some(if_range) = request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let matches = if if_range.starts_with('"') {
            stored.get(header::ETAG).and_then(|e| e.to_str().ok()) == Some(if_range)
        } else {
            httpdate::parse_http_date(if_range)
                .ok()
                .is_some_and(|d| policy::header_date(stored, &header::LAST_MODIFIED) == Some(d))
        };
        if !matches {
            return None;
        }
    }
    let spec = range.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    let parsed = if start.is_empty() {
        let suffix: u64 = end.parse().ok()?;
        if suffix == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(suffix), len - 1)
    } else {
        let start: u64 = start.parse().ok()?;
        let end = if end.is_empty() {
            len.saturating_sub(1)
        } else {
            end.parse::<u64>().ok()?.min(len.saturating_sub(1))
        };
        if start >= len || end < start {
            return Some(Err(()));
        }
        (start, end)
    };
    Some(Ok(parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn conditionals() {
        let stored = h(&[
            ("etag", "\"v1\""),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]);
        assert!(not_modified(&h(&[("if-none-match", "\"v1\"")]), &stored));
        assert!(not_modified(
            &h(&[("if-none-match", "W/\"v1\", \"x\"")]),
            &stored
        ));
        assert!(!not_modified(&h(&[("if-none-match", "\"v2\"")]), &stored));
        assert!(not_modified(&h(&[("if-none-match", "*")]), &stored));
        assert!(not_modified(
            &h(&[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")]),
            &stored
        ));
    }

    #[test]
    fn ranges() {
        let s = h(&[("etag", "\"v1\"")]);
        assert_eq!(
            range_of(&h(&[("range", "bytes=0-3")]), &s, 10),
            Some(Ok((0, 3)))
        );
        assert_eq!(
            range_of(&h(&[("range", "bytes=5-")]), &s, 10),
            Some(Ok((5, 9)))
        );
        assert_eq!(
            range_of(&h(&[("range", "bytes=-4")]), &s, 10),
            Some(Ok((6, 9)))
        );
        assert_eq!(
            range_of(&h(&[("range", "bytes=8-20")]), &s, 10),
            Some(Ok((8, 9)))
        );
        assert_eq!(
            range_of(&h(&[("range", "bytes=10-")]), &s, 10),
            Some(Err(()))
        );
        assert_eq!(range_of(&h(&[("range", "bytes=0-1,3-4")]), &s, 10), None);
        assert_eq!(
            range_of(
                &h(&[("range", "bytes=0-1"), ("if-range", "\"v0\"")]),
                &s,
                10
            ),
            None
        );
        assert_eq!(range_of(&h(&[]), &s, 10), None);
    }

    #[test]
    fn hop_by_hop_fields_go() {
        let mut m = h(&[
            ("connection", "x-private, keep-alive"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut m);
        assert_eq!(m.len(), 1);
        assert!(m.contains_key("content-type"));
    }

    #[test]
    fn location_targets() {
        let uri: Uri = "/a".parse().unwrap();
        let headers = h(&[("host", "example.com")]);
        let same = same_host_target(&uri, &headers, &HeaderValue::from_static("/b?x=1")).unwrap();
        assert_eq!(same.path_and_query().unwrap().as_str(), "/b?x=1");
        assert!(
            same_host_target(
                &uri,
                &headers,
                &HeaderValue::from_static("http://example.com/c")
            )
            .is_some()
        );
        assert!(
            same_host_target(
                &uri,
                &headers,
                &HeaderValue::from_static("http://evil.com/c")
            )
            .is_none()
        );
    }
}
