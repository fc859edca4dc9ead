//! [`CacheLayer`]: the configuration every service it makes shares, and its setters.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tower_layer::Layer;

use super::invalidate::Invalidator;
use super::key::KeyConfig;
use super::policy::PolicyConfig;
use super::service::Cache;
use super::state::{CacheStats, Shared};
use crate::store::Store;

/// Default largest body buffered for storing: 1 MiB.
pub const DEFAULT_MAX_BODY_SIZE: usize = 1024 * 1024;

/// Puts a response cache in front of a service; see the [module docs](super).
///
/// Setters take and return `self`; the layer is cheap to clone and every service it makes
/// shares its in-flight misses, hit-for-pass memory and [`CacheStats`].
pub struct CacheLayer<St> {
    store: Arc<St>,
    config: Config,
    shared: Arc<Shared>,
}

impl<St> Clone for CacheLayer<St> {
    fn clone(&self) -> Self {
        CacheLayer {
            store: self.store.clone(),
            config: self.config.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<St> std::fmt::Debug for CacheLayer<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A gRPC method the cache stores answers of.
#[derive(Clone, Debug)]
pub(crate) struct GrpcMethod {
    pub path: String,
    pub ttl: Duration,
    /// The answer does not depend on the caller: calls with credentials share it too.
    pub public: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub max_body_size: usize,
    pub policy: PolicyConfig,
    pub methods: Vec<Method>,
    pub routes: Option<Vec<String>>,
    pub swr: Option<Duration>,
    pub sie: Option<Duration>,
    pub stale_retention: Duration,
    pub coalesce: bool,
    pub coalesce_timeout: Duration,
    pub hit_for_pass: Duration,
    pub ttl_jitter: Duration,
    pub cache_status: bool,
    pub strip_tag_headers: bool,
    pub key: KeyConfig,
    pub upstream_timeout: Option<Duration>,
    pub grpc_methods: Vec<GrpcMethod>,
    pub lease: Option<Duration>,
}

impl<St: Store> CacheLayer<St> {
    /// A cache over `store` with the defaults: RFC 9111 shared-cache rules, no default TTL
    /// (responses that say nothing are stored only under heuristic freshness), bodies up to
    /// [`DEFAULT_MAX_BODY_SIZE`], GET and HEAD on every route, coalescing of concurrent misses
    /// (waiting at most 10 s), 10 s hit-for-pass, stale entries with validators kept 60 s for
    /// revalidation, `Cache-Status` on, tag headers stripped.
    pub fn new(store: St) -> Self {
        CacheLayer {
            store: Arc::new(store),
            config: Config {
                max_body_size: DEFAULT_MAX_BODY_SIZE,
                policy: PolicyConfig {
                    default_ttl: None,
                    override_ttl: None,
                    heuristic: true,
                },
                methods: vec![Method::GET, Method::HEAD],
                routes: None,
                swr: None,
                sie: None,
                stale_retention: Duration::from_secs(60),
                coalesce: true,
                coalesce_timeout: Duration::from_secs(10),
                hit_for_pass: Duration::from_secs(10),
                ttl_jitter: Duration::ZERO,
                cache_status: true,
                strip_tag_headers: true,
                key: KeyConfig {
                    default_scheme: "http".into(),
                    ..KeyConfig::default()
                },
                upstream_timeout: None,
                grpc_methods: Vec::new(),
                lease: None,
            },
            shared: Arc::new(Shared::default()),
        }
    }
}

impl<St> CacheLayer<St> {
    /// Largest body buffered for storing (default 1 MiB, and never more than the store's value
    /// limit). Larger bodies stream through to the client unchanged and are not stored.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.config.max_body_size = bytes;
        self
    }

    /// TTL for responses with a cacheable-by-default status and no freshness information of
    /// their own (instead of heuristic freshness).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.policy.default_ttl = Some(ttl);
        self
    }

    /// TTL for every storable response, whatever its `Cache-Control` says about freshness
    /// (privacy rules still apply).
    pub fn override_ttl(mut self, ttl: Duration) -> Self {
        self.config.policy.override_ttl = Some(ttl);
        self
    }

    /// Whether heuristic freshness (10% of the time since `Last-Modified`, at most a day) is
    /// used where RFC 9111 §4.2.2 allows it. Default on.
    pub fn heuristic_freshness(mut self, enabled: bool) -> Self {
        self.config.policy.heuristic = enabled;
        self
    }

    /// The request methods looked up in the cache; others pass through. Only GET responses
    /// are stored; HEAD is served from them. Default GET and HEAD.
    pub fn methods<I: IntoIterator<Item = Method>>(mut self, methods: I) -> Self {
        self.config.methods = methods.into_iter().collect();
        self
    }

    /// Caches only requests whose path starts with one of these prefixes; others pass
    /// through. Default: every path.
    pub fn path_prefixes<I, T>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.config.routes = Some(prefixes.into_iter().map(Into::into).collect());
        self
    }

    /// Stale-while-revalidate window for responses that do not give one: within it a stale
    /// entry is served at once and refreshed in the background, once.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.config.swr = Some(window);
        self
    }

    /// Stale-if-error window for responses that do not give one: within it a stale entry is
    /// served when upstream fails, times out or answers 5xx.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.config.sie = Some(window);
        self
    }

    /// How long a stale entry with validators (`ETag`, `Last-Modified`) is kept so upstream
    /// can revalidate it with a `304`. Default 60 s.
    pub fn stale_retention(mut self, retention: Duration) -> Self {
        self.config.stale_retention = retention;
        self
    }

    /// Whether concurrent misses on one key send one request upstream. Default on.
    pub fn coalesce(mut self, enabled: bool) -> Self {
        self.config.coalesce = enabled;
        self
    }

    /// How long a coalesced request waits for the leader's response before going upstream
    /// itself. Default 10 s.
    pub fn coalesce_timeout(mut self, timeout: Duration) -> Self {
        self.config.coalesce_timeout = timeout;
        self
    }

    /// How long a key whose response proved unstorable goes straight upstream, without
    /// waiting behind other misses (Varnish's hit-for-pass). Default 10 s; zero disables it.
    pub fn hit_for_pass(mut self, duration: Duration) -> Self {
        self.config.hit_for_pass = duration;
        self
    }

    /// Shortens each stored TTL by a random amount below `jitter` (at most half the TTL), so
    /// entries stored together do not all expire together. Default none.
    pub fn ttl_jitter(mut self, jitter: Duration) -> Self {
        self.config.ttl_jitter = jitter;
        self
    }

    /// Whether responses carry an RFC 9211 `Cache-Status` header. Default on.
    pub fn cache_status(mut self, enabled: bool) -> Self {
        self.config.cache_status = enabled;
        self
    }

    /// Whether `Surrogate-Key` and `Cache-Tag` are removed from responses (and stored
    /// responses) once read. Default on.
    pub fn strip_tag_headers(mut self, enabled: bool) -> Self {
        self.config.strip_tag_headers = enabled;
        self
    }

    /// Sorts query parameters in the key, so `?a=1&b=2` and `?b=2&a=1` share an entry.
    pub fn sort_query(mut self, enabled: bool) -> Self {
        self.config.key.sort_query = enabled;
        self
    }

    /// Query parameters left out of the key; a trailing `*` matches a prefix (`utm_*`).
    pub fn ignore_query_params<I, T>(mut self, params: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.config.key.ignored_params = params.into_iter().map(Into::into).collect();
        self
    }

    /// Lets requests with a `Cookie` header under `path_prefix` use the cache, with the named
    /// cookies' values as part of the key. Elsewhere, requests with cookies bypass the cache.
    pub fn key_cookies<I, T>(mut self, path_prefix: impl Into<String>, cookies: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.config.key.cookie_routes.push((
            path_prefix.into(),
            cookies.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// Scheme put in keys when the request URI has none (servers see origin-form URIs).
    /// Default `http`.
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.config.key.default_scheme = scheme.into();
        self
    }

    /// Upper bound on an upstream call made by the cache; past it a stale entry inside its
    /// stale-if-error window is served, or `504 Gateway Timeout` answered. Default none.
    pub fn upstream_timeout(mut self, timeout: Duration) -> Self {
        self.config.upstream_timeout = Some(timeout);
        self
    }

    /// Caches the gRPC method at `path` (`/package.Service/Method`) for `ttl`, keyed by the
    /// request message (see the [module docs](super#grpc)). Calls that carry credentials
    /// (`authorization` metadata or a cookie) bypass the cache: their answer may be the
    /// caller's own. Other gRPC methods pass through.
    pub fn grpc_method(mut self, path: impl Into<String>, ttl: Duration) -> Self {
        self.config.grpc_methods.push(GrpcMethod {
            path: path.into(),
            ttl,
            public: false,
        });
        self
    }

    /// Like [`CacheLayer::grpc_method`] for a method whose answer does not depend on who
    /// calls: calls with credentials are answered from the cache (and stored) too. Mark a
    /// method public only when its handler ignores the caller.
    pub fn grpc_public_method(mut self, path: impl Into<String>, ttl: Duration) -> Self {
        self.config.grpc_methods.push(GrpcMethod {
            path: path.into(),
            ttl,
            public: true,
        });
        self
    }

    /// Coalesces misses across instances sharing the store: the instance that leads a miss
    /// takes a lease (a store counter, `INCR` + `PX` on Redis) for at most `ttl`; instances
    /// that find the lease taken serve their stale entry if they have one, or poll the store
    /// for the leader's response (up to the lease TTL and the coalescing timeout) before
    /// going upstream themselves. The leader releases the lease once the response is stored;
    /// an unstorable response leaves it to expire, so keep `ttl` short. Default off.
    pub fn distributed_lease(mut self, ttl: Duration) -> Self {
        self.config.lease = Some(ttl);
        self
    }

    /// The counters shared by every service this layer makes.
    pub fn stats(&self) -> CacheStats {
        CacheStats(self.shared.clone())
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// The shared store handle, for purgers over this cache's store.
    pub(crate) fn shared_store(&self) -> &Arc<St> {
        &self.store
    }

    /// The cache's invalidation operation, with its key rules, for URL purges
    /// (`purge::CachePurger`).
    pub(crate) fn invalidator(&self) -> Invalidator {
        Invalidator::new(self.config.key.clone(), self.shared.clone())
    }
}

impl<S, St> Layer<S> for CacheLayer<St> {
    type Service = Cache<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache::from_parts(
            inner,
            Arc::new(Ctx {
                store: self.store.clone(),
                config: self.config.clone(),
                shared: self.shared.clone(),
            }),
        )
    }
}

/// Everything a request needs, shared by the service's clones.
pub(crate) struct Ctx<St> {
    pub store: Arc<St>,
    pub config: Config,
    pub shared: Arc<Shared>,
}
