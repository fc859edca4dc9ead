//! [`PurgeLayer`]: configuration of purging over HTTP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_layer::Layer;

use super::auth::Authorize;
use super::limit::{Bucket, RateLimit};
use super::service::Purge;
use super::{CachePurger, PurgeError, PurgeReport, PurgeRequest, Purger};

/// Default path of the JSON purge endpoint.
pub const DEFAULT_PURGE_PATH: &str = "/_cache/purge";
/// Default largest JSON purge body: 64 KiB.
pub const DEFAULT_MAX_PURGE_BODY: usize = 64 * 1024;

/// What a [`PurgeLayer`] purges with: a response cache's purger (keys, tags, patterns and
/// URLs, across its stores), or a plain [`Purger`] (no URLs).
#[derive(Clone, Debug)]
pub(crate) enum Handle {
    Cache(CachePurger),
    Store(Purger),
}

impl Handle {
    /// The purger of URLs, when there is a response cache to purge them from.
    pub(crate) fn urls(&self) -> Option<&CachePurger> {
        match self {
            Handle::Cache(cache) => Some(cache),
            Handle::Store(_) => None,
        }
    }

    /// Runs a JSON purge request.
    pub(crate) async fn purge(&self, request: &PurgeRequest) -> Result<PurgeReport, PurgeError> {
        match self {
            Handle::Cache(cache) => cache.purge(request).await,
            Handle::Store(purger) => purger.purge(request).await,
        }
    }
}

/// A purge or invalidation configuration that cannot work: a
/// [`ConfigError`](crate::ConfigError) of [`PurgeConfigErrorKind`], from
/// [`BearerToken::new`](super::BearerToken::new), [`RateLimit::new`], [`InvalidateLayer::rule`](super::InvalidateLayer::rule) and
/// [`InvalidationBusBuilder::build`](super::InvalidationBusBuilder::build).
pub type PurgeConfigError = crate::ConfigError<PurgeConfigErrorKind>;

/// What is wrong with a purge or invalidation configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PurgeConfigErrorKind {
    /// The bearer token is empty or not visible ASCII.
    Token,
    /// The rate limit's burst is zero or its refill rate not a positive number.
    RateLimit,
    /// An invalidation rule is malformed; its [`RuleError`](super::RuleError) is the
    /// [`source`](std::error::Error::source).
    Rule,
    /// The invalidation bus's Redis URL cannot be used; the store's
    /// [`StoreConfigError`](crate::store::StoreConfigError) is the source.
    Url,
    /// The invalidation bus's namespace is empty or holds a control character.
    Namespace,
    /// A timeout or interval is zero.
    Setting,
    /// Built outside a Tokio runtime.
    NoRuntime,
}

impl crate::ConfigErrorKind for PurgeConfigErrorKind {
    const COMPONENT: &'static str = "purge";
}

impl From<super::RuleError> for PurgeConfigError {
    fn from(rule: super::RuleError) -> Self {
        PurgeConfigError::new(PurgeConfigErrorKind::Rule, rule.to_string()).with_source(rule)
    }
}

/// Answers `PURGE <url>` and `POST /_cache/purge` in front of a service; see the
/// [module docs](super#purging-over-http).
///
/// There is no unprotected constructor: [`PurgeLayer::new`] takes a
/// [`BearerToken`](super::BearerToken) or an [`Authorize`] policy.
/// Cheap to clone; every service it makes (and its clones) share one rate limit.
#[derive(Clone)]
pub struct PurgeLayer {
    pub(crate) settings: Arc<Settings>,
}

#[derive(Clone)]
pub(crate) struct Settings {
    pub handle: Handle,
    pub auth: Arc<dyn Authorize>,
    pub path: String,
    pub purge_method: bool,
    pub max_body: usize,
    pub body_timeout: Duration,
    pub limit: Option<RateLimit>,
    pub bucket: Option<Arc<Mutex<Bucket>>>,
}

impl std::fmt::Debug for PurgeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.settings;
        f.debug_struct("PurgeLayer")
            .field("handle", &s.handle)
            .field("path", &s.path)
            .field("purge_method", &s.purge_method)
            .field("max_body", &s.max_body)
            .field("body_timeout", &s.body_timeout)
            .field("rate_limit", &s.limit)
            .finish_non_exhaustive()
    }
}

impl PurgeLayer {
    /// A purge layer over a response cache's purger ([`CacheLayer::purger`]) that lets through
    /// the requests `authorizer` allows — a [`BearerToken`](super::BearerToken) or the app's
    /// own [`Authorize`] policy — with the defaults: `PURGE <url>` on, [`DEFAULT_PURGE_PATH`],
    /// bodies up to [`DEFAULT_MAX_PURGE_BODY`] read within 5 s, [`RateLimit::DEFAULT`].
    ///
    /// [`CacheLayer::purger`]: crate::cache::CacheLayer::purger
    pub fn new(purger: CachePurger, authorizer: impl Authorize) -> Self {
        Self::from_handle(Handle::Cache(purger), authorizer)
    }

    /// [`PurgeLayer::new`] over a plain [`Purger`], for a store with no response cache in
    /// front: keys, tags and patterns only, and `PURGE <url>` is answered `501 Not
    /// Implemented`.
    pub fn with_purger(purger: Purger, authorizer: impl Authorize) -> Self {
        Self::from_handle(Handle::Store(purger), authorizer)
    }

    fn from_handle(handle: Handle, authorizer: impl Authorize) -> Self {
        let limit = RateLimit::DEFAULT;
        PurgeLayer {
            settings: Arc::new(Settings {
                handle,
                auth: Arc::new(authorizer),
                path: DEFAULT_PURGE_PATH.to_owned(),
                purge_method: true,
                max_body: DEFAULT_MAX_PURGE_BODY,
                body_timeout: Duration::from_secs(5),
                limit: Some(limit),
                bucket: Some(Arc::new(Mutex::new(Bucket::new(limit)))),
            }),
        }
    }

    fn update(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = (*self.settings).clone();
        f(&mut settings);
        self.settings = Arc::new(settings);
        self
    }

    /// The path of the JSON endpoint (`POST` only; other methods pass through). Default
    /// [`DEFAULT_PURGE_PATH`].
    pub fn path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.update(|s| s.path = path)
    }

    /// Whether `PURGE <url>` requests are answered (default on). Off, they pass through to the
    /// inner service.
    pub fn purge_method(self, enabled: bool) -> Self {
        self.update(|s| s.purge_method = enabled)
    }

    /// Largest JSON body read (default [`DEFAULT_MAX_PURGE_BODY`]); larger ones get `413`.
    pub fn max_body_size(self, bytes: usize) -> Self {
        self.update(|s| s.max_body = bytes)
    }

    /// How long reading the JSON body may take (default 5 s); past it, `408`.
    pub fn body_timeout(self, timeout: Duration) -> Self {
        self.update(|s| s.body_timeout = timeout)
    }

    /// The token bucket purge requests draw from (default [`RateLimit::DEFAULT`]), with a
    /// fresh, full bucket. `None` turns rate limiting off.
    pub fn rate_limit(self, limit: Option<RateLimit>) -> Self {
        self.update(|s| {
            s.limit = limit;
            s.bucket = limit.map(|l| Arc::new(Mutex::new(Bucket::new(l))));
        })
    }
}

impl<S> Layer<S> for PurgeLayer {
    type Service = Purge<S>;

    fn layer(&self, inner: S) -> Purge<S> {
        Purge::new(inner, self.settings.clone())
    }
}
