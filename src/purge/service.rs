//! [`Purge`]: the service a [`PurgeLayer`](super::PurgeLayer) makes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde::Serialize;
use tower_service::Service;

use super::auth::Authorization;
use super::future::ResponseFuture;
use super::layer::Settings;
use super::{PurgeError, PurgeReport, PurgeRequest};
use crate::cache::KeyPart;
use crate::store::StoreError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Intercepts purge requests in front of a service; made by
/// [`PurgeLayer`](super::PurgeLayer), see the [module docs](super#purging-over-http).
pub struct Purge<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S: Clone> Clone for Purge<S> {
    fn clone(&self) -> Self {
        Purge {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
        }
    }
}

inner_service_debug!(Purge<S>);

impl<S> Purge<S> {
    pub(crate) fn new(inner: S, settings: Arc<Settings>) -> Self {
        Purge { inner, settings }
    }

    inner_service_accessors!();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Url,
    Json,
}

impl<S, B, RB> Service<Request<B>> for Purge<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<super::PurgeBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let settings = &self.settings;
        let kind = if request.method() == Method::POST && request.uri().path() == settings.path {
            Some(Kind::Json)
        } else if settings.purge_method && request.method().as_str() == "PURGE" {
            Some(Kind::Url)
        } else {
            None
        };
        match kind {
            None => ResponseFuture::inner(self.inner.call(request)),
            Some(kind) => ResponseFuture::answer(Box::pin(handle(settings.clone(), kind, request))),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    crate::respond::no_store(status, "application/json", bytes)
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &ErrorBody { error: message })
}

/// The client's address: axum's `ConnectInfo<SocketAddr>`, or a bare `SocketAddr` extension
/// a server put there.
fn peer(parts: &Parts) -> Option<SocketAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0);
    }
    parts.extensions.get::<SocketAddr>().copied()
}

fn soft_requested(parts: &Parts) -> bool {
    parts
        .headers
        .get("soft-purge")
        .is_some_and(|v| v.as_bytes() == b"1" || v.as_bytes().eq_ignore_ascii_case(b"true"))
}

async fn handle<B>(
    settings: Arc<Settings>,
    kind: Kind,
    request: Request<B>,
) -> Response<Full<Bytes>>
where
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let peer = peer(&parts);
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    let principal = match settings.auth.authorize(&parts) {
        Authorization::Allow { principal } => principal,
        Authorization::Unauthenticated => {
            tracing::warn!(peer, method = %parts.method, uri = %parts.uri, "purge refused: no credentials");
            let mut response = error(StatusCode::UNAUTHORIZED, "purging needs credentials");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"purge\""),
            );
            return response;
        }
        Authorization::Forbidden => {
            tracing::warn!(peer, method = %parts.method, uri = %parts.uri, "purge refused: forbidden");
            return error(StatusCode::FORBIDDEN, "these credentials may not purge");
        }
    };
    if let Some(bucket) = &settings.bucket {
        let taken = bucket.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Err(wait) = taken {
            tracing::warn!(principal, peer, "purge refused: rate limited");
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many purges; retry later",
            );
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            return response;
        }
    }
    match kind {
        Kind::Url => purge_url(&settings, &parts, &principal, &peer).await,
        Kind::Json => purge_json(&settings, &parts, body, &principal, &peer).await,
    }
}

#[derive(Serialize)]
struct UrlAnswer<'a> {
    url: &'a str,
    purged: u64,
    soft: bool,
}

async fn purge_url(
    settings: &Settings,
    parts: &Parts,
    principal: &str,
    peer: &str,
) -> Response<Full<Bytes>> {
    let Some(urls) = settings.handle.urls() else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "this purge endpoint has no response cache to purge URLs from",
        );
    };
    let soft = soft_requested(parts);
    let urls = if soft { urls.soft() } else { urls.clone() };
    let url = parts.uri.to_string();
    let part = parts.extensions.get::<KeyPart>();
    match urls
        .purge_url_for_part(&parts.uri, &parts.headers, part)
        .await
    {
        Ok(purged) => {
            tracing::info!(principal, peer, url, purged, soft, "cache purge by URL");
            json(
                StatusCode::OK,
                &UrlAnswer {
                    url: &url,
                    purged,
                    soft,
                },
            )
        }
        Err(e) => failure(e, principal, peer, &url),
    }
}

#[derive(Serialize)]
struct JsonAnswer<'a> {
    #[serde(flatten)]
    report: &'a PurgeReport,
    total: u64,
}

async fn purge_json<B>(
    settings: &Settings,
    parts: &Parts,
    body: B,
    principal: &str,
    peer: &str,
) -> Response<Full<Bytes>>
where
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    let max = settings.max_body;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "purge body too large");
    }
    let read = tokio::time::timeout(settings.body_timeout, Limited::new(body, max).collect());
    let bytes = match read.await {
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "purge body not received in time",
            );
        }
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "purge body too large");
        }
        Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, "purge body could not be read"),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let request: PurgeRequest = match serde_json::from_slice(&bytes) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid purge request: {e}"),
            );
        }
    };
    if request.keys.is_empty()
        && request.tags.is_empty()
        && request.patterns.is_empty()
        && request.regexes.is_empty()
        && !request.all
    {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid purge request: it names no keys, tags, patterns or regexes, and not all",
        );
    }
    let what = describe(&request);
    match settings.handle.purge(&request).await {
        Ok(report) => {
            tracing::info!(
                principal,
                peer,
                what,
                purged = report.total(),
                soft = report.soft,
                "cache purge"
            );
            json(
                StatusCode::OK,
                &JsonAnswer {
                    report: &report,
                    total: report.total(),
                },
            )
        }
        Err(e) => failure(e, principal, peer, &what),
    }
}

/// What a request purges, for the log (bounded: long lists are cut).
fn describe(request: &PurgeRequest) -> String {
    fn list(out: &mut String, name: &str, items: &[String]) {
        if items.is_empty() {
            return;
        }
        out.push_str(name);
        out.push('=');
        for (i, item) in items.iter().take(10).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.extend(item.chars().take(100));
        }
        if items.len() > 10 {
            out.push_str(&format!(",…({} more)", items.len() - 10));
        }
        out.push(' ');
    }
    let mut out = String::new();
    list(&mut out, "keys", &request.keys);
    list(&mut out, "tags", &request.tags);
    list(&mut out, "patterns", &request.patterns);
    list(&mut out, "regexes", &request.regexes);
    if request.all {
        out.push_str("all ");
    }
    out.pop();
    out
}

fn failure(e: PurgeError, principal: &str, peer: &str, what: &str) -> Response<Full<Bytes>> {
    let client_error = matches!(
        &e,
        PurgeError::TooManyDependants { .. }
            | PurgeError::InvalidHost
            | PurgeError::Store(
                StoreError::InvalidPattern { .. }
                    | StoreError::InvalidKey { .. }
                    | StoreError::InvalidTag { .. }
                    | StoreError::KeyTooLong { .. }
            )
    );
    if let PurgeError::Store(StoreError::Unsupported { .. }) = &e {
        tracing::warn!(principal, peer, what, error = %e, "cache purge not supported");
        return error(
            StatusCode::NOT_IMPLEMENTED,
            &format!("purge not supported: {e}"),
        );
    }
    if client_error {
        tracing::info!(principal, peer, what, error = %e, "cache purge refused");
        error(
            StatusCode::BAD_REQUEST,
            &format!("invalid purge request: {e}"),
        )
    } else {
        tracing::error!(principal, peer, what, error = %e, "cache purge failed");
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("purge failed, the store is unavailable: {e}"),
        )
    }
}
