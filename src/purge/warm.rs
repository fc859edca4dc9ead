//! Cache warming: [`Warmer`] sends registered requests through the app's service to fill its
//! cache.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde::{Serialize, Serializer};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;
use tower_service::Service;

/// Requests in flight at once when [`WarmerBuilder::concurrency`] is not set.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// How long one warm request (until its body has been drained) or one source may take when
/// [`WarmerBuilder::timeout`] is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One request to warm: a method, a URI and headers, without a body.
///
/// ```
/// use tower_strata::purge::WarmRequest;
///
/// let request = WarmRequest::get("/products/1")
///     .header("accept", "application/json")
///     .header("accept-encoding", "gzip");
/// # let _ = request;
/// ```
///
/// An invalid URI or header is reported by [`WarmerBuilder::build`] (or, from a source, counted
/// as a source failure), never by a panic.
#[derive(Clone)]
pub struct WarmRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    error: Option<String>,
}

impl fmt::Debug for WarmRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmRequest")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("headers", &self.headers)
            .field("error", &self.error)
            .finish()
    }
}

impl WarmRequest {
    /// A `GET` for `uri`: a path (`/products/1?lang=en`) or an absolute URI.
    pub fn get(uri: impl AsRef<str>) -> Self {
        Self::new(Method::GET, uri)
    }

    /// A request with any method for `uri`. Only `GET` responses are cached; other methods can
    /// warm other layers (a connection pool, an application cache).
    pub fn new(method: Method, uri: impl AsRef<str>) -> Self {
        let uri_str = uri.as_ref();
        let (uri, error) = match uri_str.parse::<Uri>() {
            Ok(uri) => (uri, None),
            Err(e) => (
                Uri::default(),
                Some(format!("invalid warm request URI {uri_str:?}: {e}")),
            ),
        };
        WarmRequest {
            method,
            uri,
            headers: HeaderMap::new(),
            error,
        }
    }

    /// Adds a header (appended: a name may repeat).
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: fmt::Display,
        V: TryInto<HeaderValue>,
        V::Error: fmt::Display,
    {
        match (name.try_into(), value.try_into()) {
            (Ok(name), Ok(value)) => {
                self.headers.append(name, value);
            }
            (Err(e), _) => self.fail(format!("invalid warm request header name: {e}")),
            (_, Err(e)) => self.fail(format!("invalid warm request header value: {e}")),
        }
        self
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    fn fail(&mut self, message: String) {
        // Keep the first problem: it is the one to fix first.
        self.error.get_or_insert(message);
    }

    fn check(&self) -> Result<(), WarmError> {
        match &self.error {
            Some(message) => Err(WarmError::InvalidRequest(message.clone())),
            None => Ok(()),
        }
    }

    fn to_request<B: Default>(&self) -> Request<B> {
        let mut request = Request::new(B::default());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// What a warming source returns: the requests of one run, or why there are none.
///
/// Implemented for `Vec<http::Request<B>>`, `Vec<WarmRequest>` and `Result<T, E>` of either
/// with a displayable error, so a source can be any async function of the app.
pub trait IntoWarmRequests<B> {
    /// The requests, or the error to log and count.
    fn into_warm_requests(self) -> Result<Vec<Request<B>>, String>;
}

impl<B> IntoWarmRequests<B> for Vec<Request<B>> {
    fn into_warm_requests(self) -> Result<Vec<Request<B>>, String> {
        Ok(self)
    }
}

impl<B: Default> IntoWarmRequests<B> for Vec<WarmRequest> {
    fn into_warm_requests(self) -> Result<Vec<Request<B>>, String> {
        self.iter()
            .map(|r| match &r.error {
                Some(e) => Err(e.clone()),
                None => Ok(r.to_request()),
            })
            .collect()
    }
}

impl<B, T, E> IntoWarmRequests<B> for Result<T, E>
where
    T: IntoWarmRequests<B>,
    E: fmt::Display,
{
    fn into_warm_requests(self) -> Result<Vec<Request<B>>, String> {
        self.map_err(|e| e.to_string())?.into_warm_requests()
    }
}

/// Why a [`Warmer`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WarmError {
    /// A registered [`WarmRequest`] has an invalid URI or header.
    #[error("{0}")]
    InvalidRequest(String),
    /// A setting is out of range (zero concurrency, a zero timeout or interval, a bad host).
    #[error("invalid warmer configuration: {0}")]
    InvalidConfig(String),
}

/// What one warming run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WarmReport {
    /// Requests sent through the service.
    pub sent: u64,
    /// Of those, answered `2xx` with the body drained.
    pub succeeded: u64,
    /// Of those, failed: not `2xx`, an error, a panic or a timeout.
    pub failed: u64,
    /// Of the failed, those that hit the timeout.
    pub timed_out: u64,
    /// Factories and sources that panicked, failed or timed out (their requests were not sent).
    pub source_failures: u64,
    /// How long the run took.
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
}

/// Counters of every run of a [`Warmer`] and its clones: a cheap, serialisable snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WarmStats {
    /// Runs finished.
    pub runs: u64,
    /// Requests sent.
    pub requests_sent: u64,
    /// Requests answered `2xx`.
    pub succeeded: u64,
    /// Requests that failed (timeouts included).
    pub failed: u64,
    /// Requests that hit the timeout.
    pub timed_out: u64,
    /// Factories and sources that failed.
    pub source_failures: u64,
    /// The last finished run.
    pub last_run: Option<WarmReport>,
    /// When the last finished run ended (serialised as Unix milliseconds).
    #[serde(rename = "last_run_at_unix_ms", serialize_with = "unix_millis")]
    pub last_run_at: Option<SystemTime>,
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

fn unix_millis<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        Some(d) => s.serialize_some(&(d.as_millis() as u64)),
        None => s.serialize_none(),
    }
}

#[derive(Default)]
struct Counters {
    runs: AtomicU64,
    sent: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    source_failures: AtomicU64,
    last: Mutex<Option<(WarmReport, SystemTime)>>,
}

impl Counters {
    fn record(&self, report: &WarmReport) {
        self.sent.fetch_add(report.sent, Ordering::Relaxed);
        self.succeeded
            .fetch_add(report.succeeded, Ordering::Relaxed);
        self.failed.fetch_add(report.failed, Ordering::Relaxed);
        self.timed_out
            .fetch_add(report.timed_out, Ordering::Relaxed);
        self.source_failures
            .fetch_add(report.source_failures, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((*report, SystemTime::now()));
        self.runs.fetch_add(1, Ordering::Release);
    }

    fn snapshot(&self) -> WarmStats {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        WarmStats {
            runs: self.runs.load(Ordering::Acquire),
            requests_sent: self.sent.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            source_failures: self.source_failures.load(Ordering::Relaxed),
            last_run: last.map(|(r, _)| r),
            last_run_at: last.map(|(_, t)| t),
        }
    }
}

type Factory<B> = Arc<dyn Fn() -> Request<B> + Send + Sync>;
type Source<B> = Arc<dyn Fn() -> BoxFuture<'static, Result<Vec<Request<B>>, String>> + Send + Sync>;

/// Builds a [`Warmer`]; see [`Warmer`].
pub struct WarmerBuilder<S, B = Full<Bytes>> {
    service: S,
    requests: Vec<WarmRequest>,
    factories: Vec<Factory<B>>,
    sources: Vec<Source<B>>,
    concurrency: usize,
    timeout: Duration,
    interval: Option<Duration>,
    host: Option<String>,
}

impl<S, B> fmt::Debug for WarmerBuilder<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmerBuilder")
            .field("requests", &self.requests)
            .field("factories", &self.factories.len())
            .field("sources", &self.sources.len())
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("interval", &self.interval)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl<S, B> WarmerBuilder<S, B> {
    /// Registers one request, sent on every run.
    pub fn request(mut self, request: WarmRequest) -> Self {
        self.requests.push(request);
        self
    }

    /// Registers several requests.
    pub fn requests(mut self, requests: impl IntoIterator<Item = WarmRequest>) -> Self {
        self.requests.extend(requests);
        self
    }

    /// Registers a request factory, called on every run (for requests that carry a fresh token,
    /// say). A factory that panics is counted as a source failure.
    pub fn factory<F>(mut self, factory: F) -> Self
    where
        F: Fn() -> Request<B> + Send + Sync + 'static,
    {
        self.factories.push(Arc::new(factory));
        self
    }

    /// Registers a source of many requests, awaited on every run under the
    /// [timeout](Self::timeout): an async closure returning a `Vec<http::Request<B>>`, a
    /// `Vec<WarmRequest>` or a `Result` of either (see [`IntoWarmRequests`]). A source that
    /// fails, panics or times out is logged and counted; the other requests are still sent.
    pub fn source<F, Fut, O>(mut self, source: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
        O: IntoWarmRequests<B> + 'static,
        B: 'static,
    {
        self.sources.push(Arc::new(move || {
            source().map(IntoWarmRequests::into_warm_requests).boxed()
        }));
        self
    }

    /// How many requests may be in flight at once (default [`DEFAULT_CONCURRENCY`]); at least 1.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// How long one request may take, its body drained, and one source may take (default
    /// [`DEFAULT_TIMEOUT`]); not zero.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long [`Warmer::spawn`]'s task waits after a run ends before the next (default none:
    /// it runs at start-up and then only when [triggered](WarmHandle::trigger)); not zero.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// The `Host` header given to every request whose URI has no authority and that carries no
    /// `Host` of its own: set it to the host users send, since the cache keys entries by host.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
}

impl<S, B, RB> WarmerBuilder<S, B>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Default + Send + 'static,
    RB: Body + Send + 'static,
    RB::Error: Into<BoxError>,
{
    /// Checks the configuration and the registered requests.
    ///
    /// # Errors
    ///
    /// [`WarmError::InvalidRequest`] for a [`WarmRequest`] with an invalid URI or header,
    /// [`WarmError::InvalidConfig`] for zero concurrency, a zero timeout or interval, or a host
    /// that is not a valid header value.
    pub fn build(self) -> Result<Warmer, WarmError> {
        for request in &self.requests {
            request.check()?;
        }
        if self.concurrency == 0 {
            return Err(WarmError::InvalidConfig(
                "concurrency must be at least 1".into(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(WarmError::InvalidConfig("timeout must not be zero".into()));
        }
        if self.interval.is_some_and(|i| i.is_zero()) {
            return Err(WarmError::InvalidConfig("interval must not be zero".into()));
        }
        let host = match &self.host {
            Some(host) => Some(
                HeaderValue::from_str(host)
                    .map_err(|e| WarmError::InvalidConfig(format!("invalid host {host:?}: {e}")))?,
            ),
            None => None,
        };
        let engine = Engine {
            service: Mutex::new(self.service),
            requests: self.requests,
            factories: self.factories,
            sources: self.sources,
            concurrency: self.concurrency,
            timeout: self.timeout,
            host,
        };
        Ok(Warmer {
            engine: Arc::new(engine),
            counters: Arc::new(Counters::default()),
            interval: self.interval,
        })
    }
}

/// The type-erased part of a [`Warmer`]: one run over its service.
trait Run: Send + Sync + 'static {
    fn run(&self) -> BoxFuture<'_, WarmReport>;
}

struct Engine<S, B> {
    // A mutex so the warmer is `Sync` without asking the service to be: each run clones it out.
    service: Mutex<S>,
    requests: Vec<WarmRequest>,
    factories: Vec<Factory<B>>,
    sources: Vec<Source<B>>,
    concurrency: usize,
    timeout: Duration,
    host: Option<HeaderValue>,
}

/// How one request ended.
enum Outcome {
    Success,
    Status(StatusCode),
    Timeout,
    Error(String),
}

impl<S, B, RB> Run for Engine<S, B>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Default + Send + 'static,
    RB: Body + Send + 'static,
    RB::Error: Into<BoxError>,
{
    fn run(&self) -> BoxFuture<'_, WarmReport> {
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let mut report = WarmReport::default();
            let requests = self.collect(&mut report).await;
            let service = self
                .service
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            // Each request is a task, so the requests run on every worker thread; a panicking
            // handler is caught and counted. Dropping the set (a shut-down warmer) aborts
            // the requests in flight.
            let mut in_flight = JoinSet::new();
            let mut pending = requests.into_iter();
            loop {
                while in_flight.len() < self.concurrency {
                    let Some(request) = pending.next() else { break };
                    report.sent += 1;
                    let uri = request.uri().clone();
                    let send = AssertUnwindSafe(send(service.clone(), request, self.timeout));
                    in_flight.spawn(async move {
                        let outcome = send
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|_| Outcome::Error("the service panicked".to_owned()));
                        (uri, outcome)
                    });
                }
                let Some(joined) = in_flight.join_next().await else {
                    break;
                };
                let (uri, outcome) = match joined {
                    Ok(done) => done,
                    Err(e) => (
                        Uri::default(),
                        Outcome::Error(format!("the request task {e}")),
                    ),
                };
                match outcome {
                    Outcome::Success => {
                        report.succeeded += 1;
                        tracing::debug!(%uri, "warm request succeeded");
                    }
                    Outcome::Status(status) => {
                        report.failed += 1;
                        tracing::warn!(%uri, %status, "warm request failed: not a success status");
                    }
                    Outcome::Timeout => {
                        report.failed += 1;
                        report.timed_out += 1;
                        tracing::warn!(%uri, timeout = ?self.timeout, "warm request timed out");
                    }
                    Outcome::Error(error) => {
                        report.failed += 1;
                        tracing::warn!(%uri, %error, "warm request failed");
                    }
                }
            }
            report.duration = started.elapsed();
            report
        })
    }
}

impl<S, B: Default + Send + 'static> Engine<S, B> {
    /// The requests of one run: the fixed ones, then each factory's, then each source's.
    async fn collect(&self, report: &mut WarmReport) -> Vec<Request<B>> {
        let mut requests: Vec<Request<B>> =
            self.requests.iter().map(WarmRequest::to_request).collect();
        for factory in &self.factories {
            match std::panic::catch_unwind(AssertUnwindSafe(|| factory())) {
                Ok(request) => requests.push(request),
                Err(_) => {
                    report.source_failures += 1;
                    tracing::warn!("warm request factory panicked");
                }
            }
        }
        for source in &self.sources {
            let produced = AssertUnwindSafe(async { source().await }).catch_unwind();
            match tokio::time::timeout(self.timeout, produced).await {
                Ok(Ok(Ok(more))) => requests.extend(more),
                Ok(Ok(Err(error))) => {
                    report.source_failures += 1;
                    tracing::warn!(%error, "warm request source failed");
                }
                Ok(Err(_)) => {
                    report.source_failures += 1;
                    tracing::warn!("warm request source panicked");
                }
                Err(_) => {
                    report.source_failures += 1;
                    tracing::warn!(timeout = ?self.timeout, "warm request source timed out");
                }
            }
        }
        if let Some(host) = &self.host {
            for request in &mut requests {
                if request.uri().authority().is_none() && !request.headers().contains_key(HOST) {
                    request.headers_mut().insert(HOST, host.clone());
                }
            }
        }
        requests
    }
}

/// Sends one request and drains its body, all under `timeout`.
async fn send<S, B, RB>(service: S, request: Request<B>, timeout: Duration) -> Outcome
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body,
    RB::Error: Into<BoxError>,
{
    let exchange = async move {
        let response = service
            .oneshot(request)
            .await
            .map_err(|e| e.into().to_string())?;
        let status = response.status();
        // Drain the body frame by frame without keeping it: the cache records it as it passes
        // and stores it once it has ended.
        let mut body = std::pin::pin!(response.into_body());
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| format!("body: {}", e.into()))?;
        }
        Ok::<_, String>(status)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) if status.is_success() => Outcome::Success,
        Ok(Ok(status)) => Outcome::Status(status),
        Ok(Err(error)) => Outcome::Error(error),
        Err(_) => Outcome::Timeout,
    }
}

/// Cache warming: sends registered requests through the app's own service at start-up and on an
/// interval, so hot entries are cached before users ask for them.
///
/// A warmer holds a clone of the service that has the [`CacheLayer`](crate::cache::CacheLayer)
/// inside it (an axum `Router` with its layers, or any `Clone` `tower::Service` over
/// `http::Request`), and a list of what to request:
///
/// - fixed requests, [`WarmRequest::get`] with headers;
/// - request factories, `Fn() -> http::Request<B>`, called on every run;
/// - sources, async closures returning many requests (from a database query, say): a
///   `Vec<http::Request<B>>`, a `Vec<WarmRequest>`, or a `Result` of either.
///
/// [`Warmer::run_once`] sends them all, at most [`WarmerBuilder::concurrency`] at a time (default
/// [`DEFAULT_CONCURRENCY`]), each under [`WarmerBuilder::timeout`] (default
/// [`DEFAULT_TIMEOUT`]), drains every response body (the cache stores a response only once its
/// body has streamed through) and drops it. [`Warmer::spawn`] runs at once and then every
/// [`WarmerBuilder::interval`] in a background task that stops when its [`WarmHandle`] is
/// dropped or [`shut down`](WarmHandle::shutdown).
///
/// # Failures
///
/// A response that is not `2xx`, a timeout, a service or body error, a panicking handler, a
/// factory that panics or a source that fails or times out is logged with `tracing` (`warn`)
/// and counted in the [`WarmReport`] and [`WarmStats`]; the run goes on with the other
/// requests. Warming never fails the app and a run never panics.
///
/// # Keys: host and headers
///
/// The cache keys an entry by scheme, host, path, query and the `Vary` headers, so a warm
/// request must look like the users' requests: give absolute URIs, or set the host users send
/// with [`WarmerBuilder::host`], and the headers the responses vary on (`Accept`,
/// `Accept-Encoding`, ...). A warm request for a fresh entry is a cache hit and goes no further;
/// add `Cache-Control: no-cache` to a [`WarmRequest`] to refetch it upstream on every run.
///
/// # Example
///
/// With axum: warm the product pages at start-up and every minute.
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use std::time::Duration;
/// use axum::{Router, body::Body, routing::get};
/// use tower_strata::cache::CacheLayer;
/// use tower_strata::purge::{WarmRequest, Warmer};
/// use tower_strata::store::MemoryStore;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let app = Router::new()
///     .route("/products/{id}", get(|| async { ([("cache-control", "max-age=300")], "{}") }))
///     .layer(CacheLayer::new(MemoryStore::new(64 << 20)));
///
/// let warmer = Warmer::with_body::<Body, _>(app.clone())
///     .host("shop.example")
///     .request(WarmRequest::get("/products/1").header("accept", "application/json"))
///     .factory(|| http::Request::get("/products/2").body(Body::empty()).unwrap())
///     .source(|| async {
///         // For example the ids of the best sellers, from the database.
///         let ids = [3, 4, 5];
///         ids.map(|id| WarmRequest::get(format!("/products/{id}"))).to_vec()
///     })
///     .interval(Duration::from_secs(60))
///     .build()
///     .expect("valid warm requests");
///
/// let report = warmer.run_once().await;
/// assert_eq!((report.sent, report.succeeded), (5, 5));
///
/// // In the app: keep the handle for as long as warming should go on.
/// let handle = warmer.spawn();
/// // axum::serve(listener, app).await?;
/// handle.shutdown().await;
/// # }
/// # }
/// ```
///
/// With `ServiceBuilder`, customised:
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::ServiceBuilder;
/// use tower_strata::cache::CacheLayer;
/// use tower_strata::purge::{WarmRequest, Warmer};
/// use tower_strata::store::MemoryStore;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let service = ServiceBuilder::new()
///     .layer(CacheLayer::new(MemoryStore::new(64 << 20)))
///     .service_fn(|_req: http::Request<Full<Bytes>>| async {
///         let response = http::Response::builder()
///             .header("cache-control", "max-age=60")
///             .body(Full::new(Bytes::from_static(b"hello")))
///             .unwrap();
///         Ok::<_, Infallible>(response)
///     });
///
/// let warmer = Warmer::builder(service)
///     .requests((1..=20).map(|page| WarmRequest::get(format!("http://shop.example/?page={page}"))))
///     .concurrency(8)
///     .timeout(Duration::from_secs(5))
///     .interval(Duration::from_secs(30))
///     .build()
///     .unwrap();
/// let report = warmer.run_once().await;
/// assert_eq!(report.succeeded, 20);
/// assert_eq!(warmer.stats().runs, 1);
/// # }
/// ```
///
/// # Reporting
///
/// [`Warmer::stats`] is a cheap [`WarmStats`] snapshot (it serialises), for the health module's
/// `stats_check`:
///
/// ```
/// # #[cfg(feature = "health")] {
/// use tower_strata::health::{Check, Health, Status, stats_check};
/// use tower_strata::purge::{WarmStats, Warmer};
///
/// fn health(warmer: &Warmer) -> Health {
///     let warmer = warmer.clone();
///     Health::builder()
///         .check(Check::optional(
///             "warming",
///             stats_check(move || warmer.stats()).status(|s: &WarmStats| {
///                 // Degraded when the last run lost more than a tenth of its requests.
///                 match s.last_run {
///                     Some(run) if run.failed * 10 > run.sent => Status::Degraded,
///                     _ => Status::Healthy,
///                 }
///             }),
///         ))
///         .build()
///         .unwrap()
/// }
/// # let warmer = Warmer::builder(tower::service_fn(|_r: http::Request<http_body_util::Full<bytes::Bytes>>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// # })).build().unwrap();
/// # let _ = health(&warmer);
/// # }
/// ```
///
/// # Cloning
///
/// Cheap: clones share the registered requests and the [`WarmStats`].
#[derive(Clone)]
pub struct Warmer {
    engine: Arc<dyn Run>,
    counters: Arc<Counters>,
    interval: Option<Duration>,
}

impl fmt::Debug for Warmer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Warmer")
            .field("interval", &self.interval)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Warmer {
    /// A builder warming through `service`, whose requests have a
    /// [`Full<Bytes>`](http_body_util::Full) body (an axum `Router` accepts it). For another
    /// request body type use [`Warmer::with_body`].
    pub fn builder<S>(service: S) -> WarmerBuilder<S, Full<Bytes>> {
        Self::with_body(service)
    }

    /// A builder warming through `service` with requests of body type `B`
    /// (`Warmer::with_body::<axum::body::Body, _>(router)`); fixed [`WarmRequest`]s get
    /// `B::default()`.
    pub fn with_body<B, S>(service: S) -> WarmerBuilder<S, B> {
        WarmerBuilder {
            service,
            requests: Vec::new(),
            factories: Vec::new(),
            sources: Vec::new(),
            concurrency: DEFAULT_CONCURRENCY,
            timeout: DEFAULT_TIMEOUT,
            interval: None,
            host: None,
        }
    }

    /// Runs once: sends every registered request and waits for all of them (each bounded by
    /// the timeout). Never fails and never panics: failures are in the report and the stats.
    ///
    /// Runs may overlap (a `run_once` while the [spawned](Self::spawn) task runs); each sends
    /// its own requests.
    pub async fn run_once(&self) -> WarmReport {
        let report = self.engine.run().await;
        self.counters.record(&report);
        tracing::info!(
            sent = report.sent,
            succeeded = report.succeeded,
            failed = report.failed,
            timed_out = report.timed_out,
            source_failures = report.source_failures,
            duration = ?report.duration,
            "cache warming run finished"
        );
        report
    }

    /// Runs in a background task: at once, then [`interval`](WarmerBuilder::interval) after
    /// each run ends (runs never overlap), and whenever [`WarmHandle::trigger`] is called. The
    /// task stops when the handle is dropped or [shut down](WarmHandle::shutdown), aborting
    /// the requests in flight.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn` does.
    pub fn spawn(&self) -> WarmHandle {
        let trigger = Arc::new(Notify::new());
        let warmer = self.clone();
        let notified = trigger.clone();
        let task = tokio::spawn(async move {
            loop {
                warmer.run_once().await;
                let next = async {
                    match warmer.interval {
                        Some(interval) => tokio::time::sleep(interval).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = next => {}
                    () = notified.notified() => {}
                }
            }
        });
        WarmHandle {
            task: Some(task),
            trigger,
        }
    }

    /// A snapshot of the counters of every run so far.
    pub fn stats(&self) -> WarmStats {
        self.counters.snapshot()
    }
}

/// The background warming task of [`Warmer::spawn`]; dropping it stops the task.
#[must_use = "dropping the handle stops warming"]
pub struct WarmHandle {
    task: Option<JoinHandle<()>>,
    trigger: Arc<Notify>,
}

impl fmt::Debug for WarmHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl WarmHandle {
    /// Starts a run now (after a purge, say), or right after the one in progress ends.
    pub fn trigger(&self) {
        self.trigger.notify_one();
    }

    /// Whether the task has ended (it ends only when stopped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the task, aborting the run in progress, and waits until it has stopped.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for WarmHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn ok_service() -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        })
    }

    #[test]
    fn invalid_requests_and_settings_are_refused_at_build() {
        let bad_header = Warmer::builder(ok_service())
            .request(WarmRequest::get("/").header("bad name", "x"))
            .build();
        assert!(
            matches!(bad_header, Err(WarmError::InvalidRequest(m)) if m.contains("header name"))
        );
        let bad_value = Warmer::builder(ok_service())
            .request(WarmRequest::get("/").header("accept", "a\nb"))
            .build();
        assert!(matches!(bad_value, Err(WarmError::InvalidRequest(_))));
        let bad_uri = Warmer::builder(ok_service())
            .request(WarmRequest::get("http://exa mple/"))
            .build();
        assert!(matches!(bad_uri, Err(WarmError::InvalidRequest(m)) if m.contains("URI")));
        for builder in [
            Warmer::builder(ok_service()).concurrency(0),
            Warmer::builder(ok_service()).timeout(Duration::ZERO),
            Warmer::builder(ok_service()).interval(Duration::ZERO),
            Warmer::builder(ok_service()).host("a\nb"),
        ] {
            assert!(matches!(builder.build(), Err(WarmError::InvalidConfig(_))));
        }
    }

    #[tokio::test]
    async fn sources_failing_or_invalid_are_counted_and_the_rest_is_sent() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let service = tower::service_fn(move |req: Request<Full<Bytes>>| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                assert_eq!(req.headers()[HOST], "shop.example");
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        });
        let warmer = Warmer::builder(service)
            .host("shop.example")
            .request(WarmRequest::get("/a"))
            .factory(|| panic!("a broken factory"))
            .factory(|| Request::get("/b").body(Full::default()).unwrap())
            .source(|| async { Err::<Vec<WarmRequest>, _>("database down") })
            .source(|| async { vec![WarmRequest::get("/c").header("bad name", "x")] })
            .source(|| async { vec![WarmRequest::get("/d"), WarmRequest::get("/e")] })
            .build()
            .unwrap();
        let report = warmer.run_once().await;
        assert_eq!(report.sent, 4, "{report:?}");
        assert_eq!(report.succeeded, 4);
        assert_eq!(report.source_failures, 3);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        let stats = warmer.stats();
        assert_eq!(
            (stats.runs, stats.requests_sent, stats.source_failures),
            (1, 4, 3)
        );
        assert_eq!(stats.last_run, Some(report));
        assert!(stats.last_run_at.is_some());
    }

    #[tokio::test]
    async fn stats_serialise_for_health_reports() {
        let warmer = Warmer::builder(ok_service())
            .request(WarmRequest::get("/"))
            .build()
            .unwrap();
        let empty = serde_json::to_value(warmer.stats()).unwrap();
        assert_eq!(empty["runs"], 0);
        assert!(empty["last_run"].is_null() && empty["last_run_at_unix_ms"].is_null());
        warmer.run_once().await;
        let json = serde_json::to_value(warmer.stats()).unwrap();
        assert_eq!(json["runs"], 1);
        assert_eq!(json["last_run"]["succeeded"], 1);
        assert!(json["last_run"]["duration_ms"].is_f64());
        assert!(json["last_run_at_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Warmer>();
        assert_send_sync::<WarmHandle>();
        assert_send_sync::<WarmStats>();
        assert_send_sync::<WarmRequest>();
    }

    #[test]
    fn run_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let warmer = Warmer::builder(ok_service()).build().unwrap();
        assert_send(&warmer.run_once());
    }
}
