//! [`Warmer`], the built warmer, and the [`WarmHandle`] of its background task.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::builder::WarmerBuilder;
use super::report::{Counters, WarmReport, WarmStats};
use super::run::Run;
use super::*;

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
/// use tower_strata::warm::{WarmRequest, Warmer};
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
/// use tower_strata::warm::{WarmRequest, Warmer};
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
/// use tower_strata::warm::{WarmStats, Warmer};
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
    pub(super) engine: Arc<dyn Run>,
    pub(super) counters: Arc<Counters>,
    pub(super) interval: Option<Duration>,
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
