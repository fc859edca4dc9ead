//! [`WarmerBuilder`]: the service, what to request, and the bounds, checked when built.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::HeaderValue;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use super::report::Counters;
use super::request::WarmRequest;
use super::run::Engine;
use super::warmer::Warmer;
use super::*;

/// Why a [`Warmer`] could not be built: a [`ConfigError`](crate::ConfigError) of
/// [`WarmConfigErrorKind`], from [`WarmerBuilder::build`].
pub type WarmConfigError = crate::ConfigError<WarmConfigErrorKind>;

/// What is wrong with a [`Warmer`]'s configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WarmConfigErrorKind {
    /// A registered [`WarmRequest`] has an invalid URI or header.
    InvalidRequest,
    /// A setting is out of range: zero concurrency, a zero timeout or interval.
    Setting,
    /// The `Host` header value is not a valid header value.
    Host,
}

impl crate::ConfigErrorKind for WarmConfigErrorKind {
    const COMPONENT: &'static str = "warmer";
}

pub(super) type Factory<B> = Arc<dyn Fn() -> Request<B> + Send + Sync>;
pub(super) type Source<B> =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Vec<Request<B>>, String>> + Send + Sync>;

/// Builds a [`Warmer`]; see [`Warmer`].
pub struct WarmerBuilder<S, B = Full<Bytes>> {
    pub(super) service: S,
    pub(super) requests: Vec<WarmRequest>,
    pub(super) factories: Vec<Factory<B>>,
    pub(super) sources: Vec<Source<B>>,
    pub(super) concurrency: usize,
    pub(super) timeout: Duration,
    pub(super) interval: Option<Duration>,
    pub(super) host: Option<String>,
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

    setters! {
        /// How many requests may be in flight at once (default [`DEFAULT_CONCURRENCY`]); at least 1.
        fn concurrency(concurrency: usize) => set concurrency;

        /// How long one request may take, its body drained, and one source may take (default
        /// [`DEFAULT_TIMEOUT`]); not zero.
        fn timeout(timeout: Duration) => set timeout;

        /// How long [`Warmer::spawn`]'s task waits after a run ends before the next (default none:
        /// it runs at start-up and then only when [triggered](WarmHandle::trigger)); not zero.
        fn interval(interval: Duration) => some interval;
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
    /// A [`WarmConfigError`] for a [`WarmRequest`] with an invalid URI or header, for zero
    /// concurrency, a zero timeout or interval, or a host that is not a valid header value.
    pub fn build(self) -> Result<Warmer, WarmConfigError> {
        let setting = |message: &str| WarmConfigError::new(WarmConfigErrorKind::Setting, message);
        for request in &self.requests {
            request.check()?;
        }
        if self.concurrency == 0 {
            return Err(setting("concurrency must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(setting("timeout must not be zero"));
        }
        if self.interval.is_some_and(|i| i.is_zero()) {
            return Err(setting("interval must not be zero"));
        }
        let host = match &self.host {
            Some(host) => Some(HeaderValue::from_str(host).map_err(|e| {
                WarmConfigError::new(
                    WarmConfigErrorKind::Host,
                    format!("invalid host {host:?}: {e}"),
                )
                .with_source(e)
            })?),
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
