//! Requests, responses and a counting upstream for the cache suites, without a server.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

pub type Req = Request<Full<Bytes>>;

pub fn get(uri: &str) -> Req {
    Request::get(uri).body(Full::default()).unwrap()
}

pub fn with(mut req: Req, name: &'static str, value: &str) -> Req {
    req.headers_mut().append(name, value.parse().unwrap());
    req
}

pub fn response(
    status: u16,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        r.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

/// An upstream that counts its calls and answers with `make(call_number, &request)`.
pub fn upstream<F>(
    make: F,
) -> (
    impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
)
where
    F: Fn(usize, &Req) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = tower::service_fn(move |req: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let r = make(n, &req);
        async move { Ok::<_, Infallible>(r) }
    });
    (svc, calls)
}

/// An upstream that takes `delay`, counts its calls and answers `page`, cacheable for a
/// minute.
pub fn slow_upstream(
    delay: std::time::Duration,
) -> (
    impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = tower::service_fn(move |_req: Req| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(response(200, &[("cache-control", "max-age=60")], "page"))
        }
    });
    (svc, calls)
}

pub async fn body<B>(r: Response<B>) -> Bytes
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    r.into_body().collect().await.unwrap().to_bytes()
}

/// The response's `Cache-Status`, or an empty string.
pub fn status(r: &Response<impl Sized>) -> String {
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Sends a request, reads the body, and lets the background store write land.
pub async fn send<S>(svc: &S, req: Req) -> (Response<()>, Bytes)
where
    S: Service<Req, Response = Response<tower_strata::cache::CacheBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let r = svc.clone().oneshot(req).await.unwrap();
    let (parts, b) = r.into_parts();
    let bytes = b.collect().await.unwrap().to_bytes();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    (Response::from_parts(parts, ()), bytes)
}

/// A memory store for a test of its own.
#[cfg(feature = "memory")]
pub fn store() -> tower_strata::store::MemoryStore {
    tower_strata::store::MemoryStore::new(64 << 20)
}

/// `svc` behind `layer`, as `ServiceBuilder` stacks it.
#[cfg(feature = "memory")]
pub fn layered<S>(
    layer: tower_strata::cache::CacheLayer<tower_strata::store::MemoryStore>,
    svc: S,
) -> tower_strata::cache::Cache<S, tower_strata::store::MemoryStore> {
    tower::ServiceBuilder::new().layer(layer).service(svc)
}
