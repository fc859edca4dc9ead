//! [`Dashboard`]: the service answering `GET /` (the page) and `GET /data` (the snapshot).

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tower_service::Service;

use super::data::{
    CacheData, DashboardData, InvalidationData, PurgeData, StoreData, TxData, VERSION,
};
use super::history::{History, Sample};
use crate::cache::CacheStats;
use crate::purge::{Authorization, Authorize, InvalidateLayer, Purger};
use crate::respond::no_store;
use crate::store::{Store, StoreStats};

/// The page, served at `/`.
const PAGE: &str = include_str!("page.html");

/// Default sample interval of the charts.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Default number of intervals the charts show (five minutes at one per second).
pub const DEFAULT_HISTORY_LEN: usize = 300;

type Source<T> = Option<Arc<dyn Fn() -> T + Send + Sync>>;

/// A [`Dashboard`] setting that cannot work: a [`ConfigError`](crate::ConfigError) of
/// [`DashboardConfigErrorKind`].
pub type DashboardConfigError = crate::ConfigError<DashboardConfigErrorKind>;

/// What is wrong with a [`Dashboard`] setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DashboardConfigErrorKind {
    /// The bearer token is empty or not visible ASCII.
    Token,
    /// The chart history's interval is zero or its length out of range.
    History,
}

impl crate::ConfigErrorKind for DashboardConfigErrorKind {
    const COMPONENT: &'static str = "dashboard";
}

/// A live dashboard over the app's handles: one HTML page at `GET /` and its JSON snapshot,
/// [`DashboardData`], at `GET /data`. Mount it at a path of your choice with
/// `Router::nest_service`; anything else under it answers `404`, other methods `405`.
///
/// Every source is optional: set those the app has with the setters. Cloning is cheap; clones
/// share the chart history. See [the module docs](crate::dashboard) for examples and access
/// control.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    title: String,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::MetricsRegistry>,
    cache: Option<CacheStats>,
    store: Source<StoreStats>,
    purger: Option<Purger>,
    invalidate: Option<InvalidateLayer>,
    #[cfg(feature = "sqlx")]
    tx: Option<crate::tx::TxStats>,
    #[cfg(feature = "health")]
    health: Option<crate::health::Health>,
    auth: Option<Arc<dyn Authorize>>,
    /// Whether a `401` also offers Basic authentication (the built-in token, which a browser
    /// can send as Basic auth's password).
    basic: bool,
    history: Arc<Mutex<History>>,
    interval: Duration,
    history_len: usize,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        let mut d = f.debug_struct("Dashboard");
        d.field("title", &i.title);
        #[cfg(feature = "metrics")]
        d.field("metrics", &i.metrics.is_some());
        d.field("cache", &i.cache.is_some())
            .field("store", &i.store.is_some())
            .field("purger", &i.purger.is_some())
            .field("invalidate", &i.invalidate.is_some());
        #[cfg(feature = "sqlx")]
        d.field("tx", &i.tx.is_some());
        #[cfg(feature = "health")]
        d.field("health", &i.health.is_some());
        d.field("auth", &i.auth.is_some())
            .field("interval", &i.interval)
            .field("history_len", &i.history_len)
            .finish()
    }
}

impl Default for Dashboard {
    fn default() -> Self {
        Self::new()
    }
}

impl Dashboard {
    /// A dashboard with no source (every part shows as not configured), the title
    /// `tower-strata`, one sample a second and five minutes of history, open to every request.
    pub fn new() -> Self {
        Dashboard {
            inner: Arc::new(Inner {
                title: "tower-strata".to_owned(),
                #[cfg(feature = "metrics")]
                metrics: None,
                cache: None,
                store: None,
                purger: None,
                invalidate: None,
                #[cfg(feature = "sqlx")]
                tx: None,
                #[cfg(feature = "health")]
                health: None,
                auth: None,
                basic: false,
                history: Arc::new(Mutex::new(History::new(
                    DEFAULT_HISTORY_LEN,
                    DEFAULT_SAMPLE_INTERVAL,
                ))),
                interval: DEFAULT_SAMPLE_INTERVAL,
                history_len: DEFAULT_HISTORY_LEN,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    /// The page's title (the service's name).
    pub fn title(self, title: impl Into<String>) -> Self {
        let title = title.into();
        self.with(|i| i.title = title)
    }

    /// Per-route latency, rates, errors and slow requests from a metrics registry.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(self, registry: crate::metrics::MetricsRegistry) -> Self {
        self.with(|i| i.metrics = Some(registry))
    }

    /// The response cache's counters and hit ratio, from
    /// [`CacheLayer::stats`](crate::cache::CacheLayer::stats).
    pub fn cache(self, stats: CacheStats) -> Self {
        self.with(|i| i.cache = Some(stats))
    }

    /// A store's counters, entries and bytes ([`Store::stats`], read on each poll).
    pub fn store<St: Store>(self, store: St) -> Self {
        let source: Arc<dyn Fn() -> StoreStats + Send + Sync> = Arc::new(move || store.stats());
        self.with(|i| i.store = Some(source))
    }

    /// Purges made through a purger (and its clones: the purge endpoint's and the
    /// invalidation layer's, when they share it).
    pub fn purger(self, purger: Purger) -> Self {
        self.with(|i| i.purger = Some(purger))
    }

    /// The invalidation layer's rules, headers and extensions that fired.
    pub fn invalidate(self, layer: InvalidateLayer) -> Self {
        self.with(|i| i.invalidate = Some(layer))
    }

    /// Transactions committed, rolled back and retried (with the reasons), from
    /// `TxLayer::stats`.
    #[cfg(feature = "sqlx")]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite")))
    )]
    pub fn tx(self, stats: crate::tx::TxStats) -> Self {
        self.with(|i| i.tx = Some(stats))
    }

    /// The health checks' latest results ([`Health::report`](crate::health::Health::report):
    /// the dashboard never runs the checks itself; spawn them with `Health::spawn`).
    #[cfg(feature = "health")]
    #[cfg_attr(docsrs, doc(cfg(feature = "health")))]
    pub fn health(self, health: crate::health::Health) -> Self {
        self.with(|i| i.health = Some(health))
    }

    /// Answers only requests `policy` allows (the purge layer's [`Authorize`] policies):
    /// `401` (with `WWW-Authenticate: Bearer`) or `403` otherwise, for the page and the data.
    pub fn authorize(self, policy: impl Authorize) -> Self {
        let policy: Arc<dyn Authorize> = Arc::new(policy);
        self.with(|i| {
            i.auth = Some(policy);
            i.basic = false;
        })
    }

    /// Answers only requests bearing the token: `Authorization: Bearer <token>` (scripts,
    /// `curl`), or Basic authentication with the token as the password and any user name (a
    /// browser, which cannot send a bearer token: it asks for them when a `401` offers
    /// `WWW-Authenticate: Basic`). Compared in constant time as the purge layer compares its
    /// token (give both the same token to have one operator secret). A wrong bearer token is
    /// `403`; a wrong Basic password is `401` again, so the browser asks again.
    ///
    /// # Errors
    ///
    /// [`DashboardConfigError`] if the token is empty or not visible ASCII.
    pub fn bearer_token(self, token: &str) -> Result<Self, DashboardConfigError> {
        let token = crate::purge::BearerToken::new(token).map_err(|e| {
            DashboardConfigError::new(DashboardConfigErrorKind::Token, e.message().to_owned())
                .with_source(e)
        })?;
        Ok(self
            .authorize(OperatorToken(token))
            .with(|i| i.basic = true))
    }

    /// How often the charts get a sample (one second by default) and how many intervals they
    /// show (300 by default). Replaces the history kept so far.
    ///
    /// # Errors
    ///
    /// [`DashboardConfigError`] if the interval is zero or the length is zero or above 3,600.
    pub fn history(self, interval: Duration, len: usize) -> Result<Self, DashboardConfigError> {
        if interval.is_zero() {
            return Err(DashboardConfigError::new(
                DashboardConfigErrorKind::History,
                "the sample interval must be greater than zero",
            ));
        }
        if !(1..=3_600).contains(&len) {
            return Err(DashboardConfigError::new(
                DashboardConfigErrorKind::History,
                "the history must keep between 1 and 3,600 samples",
            ));
        }
        Ok(self.with(|i| {
            i.interval = interval;
            i.history_len = len;
            i.history = Arc::new(Mutex::new(History::new(len, interval)));
        }))
    }

    /// The current snapshot, as `GET /data` serves it. Takes a chart sample when one is due.
    pub fn data(&self) -> DashboardData {
        let i = &*self.inner;
        let at_unix_ms = unix_ms(SystemTime::now());
        let counters = self.counters(true);
        #[cfg(feature = "metrics")]
        let (latency, routes) = match &i.metrics {
            Some(registry) => {
                let (latency, points) = super::latency::collect(registry);
                (Some(latency), points)
            }
            None => (None, Vec::new()),
        };
        #[cfg(not(feature = "metrics"))]
        let (latency, routes) = (None, Vec::new());
        #[cfg(feature = "sqlx")]
        let transactions = i.tx.as_ref().map(|t| TxData::from(t.snapshot()));
        #[cfg(not(feature = "sqlx"))]
        let transactions: Option<TxData> = None;
        #[cfg(feature = "health")]
        let health = i.health.as_ref().map(|h| h.report().into());
        #[cfg(not(feature = "health"))]
        let health = None;

        let sample = counters.sample(at_unix_ms, routes);
        let (history, mut series) = {
            let mut ring = lock(&i.history);
            ring.push(Instant::now(), sample);
            ring.columns()
        };
        let latency = latency.map(|mut l: super::data::LatencyData| {
            for route in &mut l.routes {
                let key = (route.route.clone(), route.method.clone());
                // Routes beyond the charted ones get no series at all (the page draws
                // none), not a column of nulls each: with a thousand routes that was megabytes
                // per poll.
                route.history = series.remove(&key).unwrap_or_default();
            }
            l
        });
        DashboardData {
            version: VERSION,
            title: i.title.clone(),
            at_unix_ms,
            latency,
            cache: counters.cache,
            store: counters.store,
            purge: counters.purge,
            invalidation: counters.invalidation,
            transactions,
            health,
            history,
        }
    }

    /// Takes a chart sample now if one is due, without building a snapshot.
    fn tick(&self) {
        let i = &*self.inner;
        if !lock(&i.history).due(Instant::now()) {
            return;
        }
        // The sample's hit ratio is the cache layer's when there is one: the store is not read.
        let counters = self.counters(i.cache.is_none());
        #[cfg(feature = "metrics")]
        let routes = i
            .metrics
            .as_ref()
            .map(super::latency::points)
            .unwrap_or_default();
        #[cfg(not(feature = "metrics"))]
        let routes = Vec::new();
        let sample = counters.sample(unix_ms(SystemTime::now()), routes);
        lock(&i.history).push(Instant::now(), sample);
    }

    /// Reads the cache's, purger's and invalidation layer's counters, and the store's when
    /// `with_store`.
    fn counters(&self, with_store: bool) -> Counters {
        let i = &*self.inner;
        Counters {
            cache: i.cache.as_ref().map(cache_data),
            store: i
                .store
                .as_ref()
                .filter(|_| with_store)
                .map(|f| StoreData::from(f())),
            purge: i.purger.as_ref().map(|p| p.stats()),
            invalidation: i
                .invalidate
                .as_ref()
                .map(|l| InvalidationData::from(l.stats())),
        }
    }

    /// Spawns a task taking a chart sample every interval, so the charts cover the time
    /// before the page was opened. Without it, samples are taken only while the page polls
    /// `/data`. The task stops when every clone of this dashboard is dropped, or when the
    /// handle is aborted. Call it once the dashboard is configured: a setter called on the
    /// last clone afterwards makes a new dashboard, and the task, which follows the old one,
    /// stops.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        crate::background::spawn_every(&self.inner, self.inner.interval, |inner| async move {
            Dashboard { inner }.tick();
        })
    }
}

/// The counters a snapshot shows and a chart sample is made from, read once for both.
struct Counters {
    cache: Option<CacheData>,
    store: Option<StoreData>,
    purge: Option<PurgeData>,
    invalidation: Option<InvalidationData>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves at most one sample missing.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn cache_data(stats: &CacheStats) -> CacheData {
    let (hits, stale_hits, coalesced, misses) = (
        stats.hits(),
        stats.stale_hits(),
        stats.coalesced(),
        stats.misses(),
    );
    let served = hits + stale_hits + coalesced;
    let looked_up = served + misses;
    CacheData {
        hits,
        stale_hits,
        coalesced,
        misses,
        bypasses: stats.bypasses(),
        stores: stats.stores(),
        not_stored: stats.not_stored(),
        revalidated: stats.revalidated(),
        refreshes_ahead: stats.refreshes_ahead(),
        invalidations: stats.invalidations(),
        store_errors: stats.store_errors(),
        hit_rate: if looked_up == 0 {
            0.0
        } else {
            served as f64 / looked_up as f64
        },
    }
}

impl Counters {
    /// A chart sample from these counters. The hit ratio is the cache layer's, or the store's
    /// without one.
    fn sample(&self, at_unix_ms: u64, routes: Vec<super::history::RoutePoint>) -> Sample {
        let Counters {
            cache,
            store,
            purge,
            invalidation,
        } = self;
        let (served, misses) = match (cache, store) {
            (Some(c), _) => (c.hits + c.stale_hits + c.coalesced, c.misses),
            (None, Some(s)) => (s.hits, s.misses),
            (None, None) => (0, 0),
        };
        Sample {
            at_unix_ms,
            served,
            misses,
            purges: purge.as_ref().map_or(0, PurgeData::total),
            invalidations: cache.as_ref().map_or(0, |c| c.invalidations)
                + invalidation.as_ref().map_or(0, InvalidationData::total),
            routes,
        }
    }
}

fn text(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    no_store(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(message.as_bytes()),
    )
}

impl<B> Service<Request<B>> for Dashboard {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.answer(req)))
    }
}

impl Dashboard {
    fn answer<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let (parts, _body) = req.into_parts();
        let page = match parts.uri.path() {
            "" | "/" => true,
            "/data" => false,
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        if parts.method != Method::GET && parts.method != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        if let Some(policy) = &self.inner.auth {
            match policy.authorize(&parts) {
                Authorization::Allow { .. } => {}
                Authorization::Forbidden => return text(StatusCode::FORBIDDEN, "forbidden\n"),
                _ => {
                    let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
                    let headers = response.headers_mut();
                    if self.inner.basic {
                        headers.append(
                            header::WWW_AUTHENTICATE,
                            HeaderValue::from_static(
                                "Basic realm=\"dashboard\", charset=\"UTF-8\"",
                            ),
                        );
                    }
                    headers.append(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"dashboard\""),
                    );
                    return response;
                }
            }
        }
        let mut response = if page {
            let mut response = no_store(
                StatusCode::OK,
                "text/html; charset=utf-8",
                Bytes::from_static(PAGE.as_bytes()),
            );
            let headers = response.headers_mut();
            // Everything is inline; the page talks only to its own origin.
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'; img-src data:; base-uri 'none'; frame-ancestors 'none'",
                ),
            );
            headers.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            response
        } else {
            match serde_json::to_vec(&self.data()) {
                Ok(json) => no_store(StatusCode::OK, "application/json", Bytes::from(json)),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the snapshot could not be serialised\n",
                ),
            }
        };
        if parts.method == Method::HEAD {
            *response.body_mut() = Full::new(Bytes::new());
        }
        response
    }
}

/// The dashboard's built-in token: as a bearer token, or as Basic authentication's password
/// (RFC 7617), which is what a browser can send.
#[derive(Debug)]
struct OperatorToken(crate::purge::BearerToken);

impl Authorize for OperatorToken {
    fn authorize(&self, request: &http::request::Parts) -> Authorization {
        let basic = request
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .and_then(|value| {
                value
                    .get(..6)
                    .filter(|scheme| scheme.eq_ignore_ascii_case(b"basic "))
                    .map(|_| value[6..].trim_ascii())
            });
        let Some(credentials) = basic else {
            return self.0.authorize(request);
        };
        use base64::Engine as _;
        let password = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()
            .and_then(|decoded| {
                let colon = decoded.iter().position(|&b| b == b':')?;
                Some(decoded[colon + 1..].to_vec())
            });
        match password {
            Some(password) if self.0.matches(&password) => Authorization::allow("basic"),
            // A browser asks its user again only after a `401`.
            _ => Authorization::Unauthenticated,
        }
    }
}
