//! [`CacheLayer`]: the configuration every service it makes shares, and its setters.

use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::ctx::{Config, Ctx, GrpcMethod};
use super::directives::is_tchar;
#[cfg(feature = "purge")]
use super::invalidate::Invalidator;
use super::key::KeyConfig;
use super::lease::DistributedLease;
use super::policy::PolicyConfig;
use super::service::Cache;
use super::state::{CacheStats, Shared};
use crate::store::{Store, StoreExt};

/// A [`CacheLayer`] setting that cannot work: a [`ConfigError`](crate::ConfigError) of
/// [`CacheConfigErrorKind`], from the setters that take text ([`CacheLayer::path_prefixes`],
/// [`CacheLayer::key_cookies`], [`CacheLayer::scheme`], [`CacheLayer::grpc_method`]).
pub type CacheConfigError = crate::ConfigError<CacheConfigErrorKind>;

/// What is wrong with a [`CacheLayer`] setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheConfigErrorKind {
    /// A path prefix does not start with `/` (it could never match a request path).
    PathPrefix,
    /// A cookie name is empty or not an RFC 6265 token.
    Cookie,
    /// The scheme is not an RFC 3986 scheme (`http`, `https`, ...).
    Scheme,
    /// A gRPC method path is not `/package.Service/Method`.
    GrpcMethod,
    /// A duration that must be positive is zero (zero never means off: off is `None` or
    /// `false`).
    ZeroDuration,
    /// A fraction is not strictly between 0 and 1 ([`CacheLayer::refresh_ahead`]).
    Fraction,
}

impl crate::ConfigErrorKind for CacheConfigErrorKind {
    const COMPONENT: &'static str = "cache layer";
}

/// Path prefixes must start with `/`: request paths always do.
fn path_prefix(prefix: String) -> Result<String, CacheConfigError> {
    if prefix.starts_with('/') {
        Ok(prefix)
    } else {
        Err(CacheConfigError::new(
            CacheConfigErrorKind::PathPrefix,
            format!("path prefix {prefix:?} does not start with '/'"),
        ))
    }
}

/// A duration setting, refused when zero: zero never means off in this crate.
fn non_zero(setting: &str, duration: Duration) -> Result<Duration, CacheConfigError> {
    if duration.is_zero() {
        return Err(CacheConfigError::new(
            CacheConfigErrorKind::ZeroDuration,
            format!("{setting} must be greater than zero"),
        ));
    }
    Ok(duration)
}

/// Default largest body buffered for storing: 1 MiB.
pub const DEFAULT_MAX_BODY_SIZE: usize = 1024 * 1024;

/// Puts a response cache in front of a service; see the [module docs](super).
///
/// Setters take and return `self`; the layer is cheap to clone and every service it makes
/// shares its in-flight misses, hit-for-pass memory and [`CacheStats`].
pub struct CacheLayer<St> {
    store: Arc<St>,
    private_store: Option<Arc<St>>,
    config: Config,
    shared: Arc<Shared>,
}

impl<St> Clone for CacheLayer<St> {
    fn clone(&self) -> Self {
        CacheLayer {
            store: self.store.clone(),
            private_store: self.private_store.clone(),
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

impl<St: StoreExt> CacheLayer<St> {
    /// Coalesces misses across instances sharing the store: the instance that leads a miss
    /// takes a lease (a store counter, [`StoreExt::incr`]: `INCR` + `PX` on Redis) for at
    /// most `ttl`; instances that find the lease taken serve their stale entry if they have
    /// one, or poll the store for the leader's response (up to the lease TTL and the
    /// coalescing timeout) before going upstream themselves. The leader releases the lease
    /// once the response is stored; an unstorable response leaves it to expire, so keep `ttl`
    /// short. Default off. On a store without counters the lease fails open: each instance
    /// goes upstream.
    ///
    /// # Errors
    ///
    /// A [`CacheConfigError`] of kind [`ZeroDuration`](CacheConfigErrorKind::ZeroDuration)
    /// for a zero `ttl`.
    pub fn distributed_lease(mut self, ttl: Duration) -> Result<Self, CacheConfigError> {
        let ttl = non_zero("distributed_lease", ttl)?;
        self.config.lease = Some(DistributedLease::new(self.store.clone(), ttl));
        Ok(self)
    }
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
            private_store: None,
            config: Config {
                max_body_size: DEFAULT_MAX_BODY_SIZE,
                policy: PolicyConfig {
                    default_ttl: None,
                    override_ttl: None,
                    heuristic: true,
                },
                head: true,
                routes: None,
                swr: None,
                sie: None,
                stale_retention: Duration::from_secs(60),
                coalesce: true,
                coalesce_timeout: Duration::from_secs(10),
                hit_for_pass: Some(Duration::from_secs(10)),
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
                refresh_ahead: None,
            },
            shared: Arc::new(Shared::default()),
        }
    }
}

impl<St> CacheLayer<St> {
    setters! {
        /// Largest body buffered for storing (default 1 MiB, and never more than the store's value
        /// limit). Larger bodies stream through to the client unchanged and are not stored.
        fn max_body_size(bytes: usize) => set config.max_body_size;

        /// TTL for responses with a cacheable-by-default status and no freshness information of
        /// their own (instead of heuristic freshness).
        fn default_ttl(ttl: Duration) => some config.policy.default_ttl;

        /// TTL for every storable response, whatever its `Cache-Control` says about freshness
        /// (privacy rules still apply).
        fn override_ttl(ttl: Duration) => some config.policy.override_ttl;

        /// Whether heuristic freshness (10% of the time since `Last-Modified`, at most a day) is
        /// used where RFC 9111 §4.2.2 allows it. Default on.
        fn heuristic_freshness(enabled: bool) => set config.policy.heuristic;

        /// Whether HEAD requests are answered from stored GET responses (default on). GET is
        /// always looked up; other methods always pass through, and only GET responses are stored.
        fn head(enabled: bool) => set config.head;
    }

    /// Caches only requests whose path starts with one of these prefixes; others pass
    /// through. Default: every path.
    ///
    /// # Errors
    ///
    /// A [`CacheConfigError`] for a prefix that does not start with `/`.
    pub fn path_prefixes(
        mut self,
        prefixes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, CacheConfigError> {
        let prefixes = prefixes
            .into_iter()
            .map(|prefix| path_prefix(prefix.into()))
            .collect::<Result<_, _>>()?;
        self.config.routes = Some(prefixes);
        Ok(self)
    }

    setters! {
        /// Stale-while-revalidate window for responses that do not give one: within it a stale
        /// entry is served at once and refreshed in the background, once.
        fn stale_while_revalidate(window: Duration) => some config.swr;

        /// Stale-if-error window for responses that do not give one: within it a stale entry is
        /// served when upstream fails, times out or answers 5xx.
        fn stale_if_error(window: Duration) => some config.sie;

        /// How long a stale entry with validators (`ETag`, `Last-Modified`) is kept so upstream
        /// can revalidate it with a `304`. Default 60 s.
        fn stale_retention(retention: Duration) => set config.stale_retention;

        /// Whether concurrent misses on one key send one request upstream. Default on.
        fn coalesce(enabled: bool) => set config.coalesce;

        /// Shortens each stored TTL by a random amount below `jitter` (at most half the TTL), so
        /// entries stored together do not all expire together. Default none.
        fn ttl_jitter(jitter: Duration) => set config.ttl_jitter;

        /// Whether responses carry an RFC 9211 `Cache-Status` header. Default on.
        fn cache_status(enabled: bool) => set config.cache_status;

        /// Whether `Surrogate-Key` and `Cache-Tag` are removed from responses (and stored
        /// responses) once read. Default on.
        fn strip_tag_headers(enabled: bool) => set config.strip_tag_headers;

        /// Sorts query parameters in the key, so `?a=1&b=2` and `?b=2&a=1` share an entry.
        fn sort_query(enabled: bool) => set config.key.sort_query;
    }

    /// Query parameters left out of the key; a trailing `*` matches a prefix (`utm_*`).
    pub fn ignore_query_params(
        mut self,
        params: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.config.key.ignored_params = params.into_iter().map(Into::into).collect();
        self
    }

    /// Lets requests with a `Cookie` header under `path_prefix` use the cache, with the named
    /// cookies' values as part of the key. Elsewhere, requests with cookies bypass the cache.
    ///
    /// # Errors
    ///
    /// A [`CacheConfigError`] for a prefix that does not start with `/` or a cookie name that
    /// is not a token.
    pub fn key_cookies(
        mut self,
        path_prefix: impl Into<String>,
        cookies: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, CacheConfigError> {
        let prefix = self::path_prefix(path_prefix.into())?;
        let cookies = cookies
            .into_iter()
            .map(|name| {
                let name = name.into();
                let token = !name.is_empty() && name.bytes().all(is_tchar);
                if token {
                    Ok(name)
                } else {
                    Err(CacheConfigError::new(
                        CacheConfigErrorKind::Cookie,
                        format!("cookie name {name:?} is not a token"),
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
        self.config.key.cookie_routes.push((prefix, cookies));
        Ok(self)
    }

    /// Scheme put in keys when the request URI has none (servers see origin-form URIs).
    /// Default `http`.
    ///
    /// # Errors
    ///
    /// A [`CacheConfigError`] unless `scheme` is a letter followed by letters, digits, `+`,
    /// `-` or `.`.
    pub fn scheme(mut self, scheme: impl Into<String>) -> Result<Self, CacheConfigError> {
        let scheme = scheme.into();
        let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        if !valid {
            return Err(CacheConfigError::new(
                CacheConfigErrorKind::Scheme,
                format!("{scheme:?} is not a URI scheme"),
            ));
        }
        self.config.key.default_scheme = scheme.to_ascii_lowercase();
        Ok(self)
    }

    /// Upper bound on every upstream call the cache makes (misses, revalidations, refreshes,
    /// gRPC calls, bypasses, unsafe methods), until the response head: past it a stale entry
    /// inside its stale-if-error window is served, or `504 Gateway Timeout` answered (gRPC:
    /// `DEADLINE_EXCEEDED`). An unsafe request's call still runs to its end and invalidates.
    /// Default none.
    ///
    /// # Errors
    ///
    /// A [`CacheConfigError`] of kind [`ZeroDuration`](CacheConfigErrorKind::ZeroDuration)
    /// for a zero timeout (leave it unset for none).
    pub fn upstream_timeout(mut self, timeout: Duration) -> Result<Self, CacheConfigError> {
        self.config.upstream_timeout = Some(non_zero("upstream_timeout", timeout)?);
        Ok(self)
    }

    /// How long a coalesced request waits for the leader's response before going upstream
    /// itself. Default 10 s; `coalesce(false)` turns coalescing off.
    ///
    /// # Errors
    ///
    /// A [`CacheConfigError`] of kind [`ZeroDuration`](CacheConfigErrorKind::ZeroDuration)
    /// for a zero timeout.
    pub fn coalesce_timeout(mut self, timeout: Duration) -> Result<Self, CacheConfigError> {
        self.config.coalesce_timeout = non_zero("coalesce_timeout", timeout)?;
        Ok(self)
    }

    /// How long a key whose response proved unstorable goes straight upstream, without
    /// waiting behind other misses (Varnish's hit-for-pass). Default 10 s; `None` turns it
    /// off.
    ///
    /// # Errors
    ///
    /// A [`CacheConfigError`] of kind [`ZeroDuration`](CacheConfigErrorKind::ZeroDuration)
    /// for `Some(Duration::ZERO)` (off is `None`).
    pub fn hit_for_pass(mut self, duration: Option<Duration>) -> Result<Self, CacheConfigError> {
        self.config.hit_for_pass = duration.map(|d| non_zero("hit_for_pass", d)).transpose()?;
        Ok(self)
    }

    /// Caches the gRPC method at `path` (`/package.Service/Method`) for `ttl`, keyed by the
    /// request message (see the [module docs](super#grpc)). Calls that carry credentials
    /// (`authorization` metadata or a cookie) bypass the cache: their answer may be the
    /// caller's own. Other gRPC methods pass through.
    ///
    /// # Errors
    ///
    /// A [`CacheConfigError`] unless `path` is `/package.Service/Method`, or for a zero `ttl`.
    pub fn grpc_method(
        mut self,
        path: impl Into<String>,
        ttl: Duration,
    ) -> Result<Self, CacheConfigError> {
        let path = path.into();
        // `/package.Service/Method`: two non-empty segments, the service's package optional.
        let valid = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(service, method)| {
                !service.is_empty()
                    && !method.is_empty()
                    && !method.contains('/')
                    && !service.ends_with('.')
                    && !service.starts_with('.')
            });
        if !valid {
            return Err(CacheConfigError::new(
                CacheConfigErrorKind::GrpcMethod,
                format!("gRPC method path {path:?} is not /package.Service/Method"),
            ));
        }
        let ttl = non_zero("a gRPC method's TTL", ttl)?;
        self.config.grpc_methods.push(GrpcMethod {
            path,
            ttl,
            public: false,
        });
        Ok(self)
    }

    /// Like [`CacheLayer::grpc_method`] for a method whose answer does not depend on who
    /// calls: calls with credentials are answered from the cache (and stored) too. Mark a
    /// method public only when its handler ignores the caller.
    ///
    /// # Errors
    ///
    /// As [`CacheLayer::grpc_method`].
    pub fn grpc_public_method(
        self,
        path: impl Into<String>,
        ttl: Duration,
    ) -> Result<Self, CacheConfigError> {
        let mut layer = self.grpc_method(path, ttl)?;
        if let Some(method) = layer.config.grpc_methods.last_mut() {
            method.public = true;
        }
        Ok(layer)
    }

    /// A store of its own for the private scope's entries ([`CacheScope::Private`]), so they
    /// have their own byte budget: one user's entries evict other private entries, never the
    /// shared ones. Without it private entries live in the shared store (still keyed and
    /// tagged by principal). Give it the same kind of store with its own capacity (a
    /// `MemoryStore` of its own size, a Redis store with its own prefix and, for a real
    /// budget, its own server or database with `maxmemory`).
    ///
    /// Invalidations by unsafe requests reach the shared entries of the URL and the requesting
    /// principal's private ones. The distributed lease stays in the shared store.
    ///
    /// [`CacheScope::Private`]: super::CacheScope::Private
    pub fn private_store(mut self, store: St) -> Self {
        self.private_store = Some(Arc::new(store));
        self
    }

    /// The private scope's store, if [`CacheLayer::private_store`] set one.
    pub fn private_store_ref(&self) -> Option<&St> {
        self.private_store.as_deref()
    }

    /// Normalises the request values of `header` when a response varies on it (`Vary`), so
    /// requests the origin answers alike share one variant: see [`VaryNormaliser`] and the
    /// built-in [`AcceptEncoding`] and [`AcceptLanguage`]. Requests the cache looks up (not
    /// bypassed ones) are also sent upstream with the normalised value, so the stored
    /// response is the one the variant names. A second call for one header replaces the
    /// first.
    ///
    /// [`VaryNormaliser`]: super::VaryNormaliser
    /// [`AcceptEncoding`]: super::AcceptEncoding
    /// [`AcceptLanguage`]: super::AcceptLanguage
    pub fn normalise_vary(
        mut self,
        header: http::HeaderName,
        normaliser: impl super::VaryNormaliser,
    ) -> Self {
        self.config
            .key
            .normalisers
            .insert(header, Arc::new(normaliser));
        self
    }

    /// Refreshes an entry in the background when a request reads it during the last
    /// `fraction` of its TTL (`0.2`: the last 20 %), so a hot key is replaced before it
    /// expires and never misses; a key nobody reads then expires as usual. The hit is served
    /// at once (`Cache-Status: ...; detail=refresh-ahead`). One refresh per key at a time in a
    /// process; with [`CacheLayer::distributed_lease`], one across the instances sharing the
    /// store (without it each instance refreshes once). Counted in
    /// [`CacheStats::refreshes_ahead`]. Default off.
    ///
    /// # Errors
    ///
    /// A [`CacheConfigError`] of kind [`Fraction`](CacheConfigErrorKind::Fraction) unless
    /// `0 < fraction < 1`.
    pub fn refresh_ahead(mut self, fraction: f64) -> Result<Self, CacheConfigError> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(CacheConfigError::new(
                CacheConfigErrorKind::Fraction,
                format!("refresh_ahead fraction {fraction} is not between 0 and 1"),
            ));
        }
        self.config.refresh_ahead = Some(fraction);
        Ok(self)
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
    #[cfg(feature = "purge")]
    pub(crate) fn shared_store(&self) -> &Arc<St> {
        &self.store
    }

    /// The private scope's store handle, for purgers over it.
    #[cfg(feature = "purge")]
    pub(crate) fn private_store_handle(&self) -> Option<&Arc<St>> {
        self.private_store.as_ref()
    }

    /// The cache's invalidation operation, with its key rules, for URL purges
    /// (`purge::CachePurger`).
    #[cfg(feature = "purge")]
    pub(crate) fn invalidator(&self) -> Invalidator {
        Invalidator::new(
            self.config.key.clone(),
            self.shared.clone(),
            self.config.fill_window(),
        )
    }
}

impl<S, St> Layer<S> for CacheLayer<St> {
    type Service = Cache<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache::from_parts(
            inner,
            Arc::new(Ctx {
                store: self.store.clone(),
                private_store: self.private_store.clone(),
                config: self.config.clone(),
                shared: self.shared.clone(),
            }),
        )
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use http::Method;

    fn layer() -> CacheLayer<MemoryStore> {
        CacheLayer::new(MemoryStore::new(1 << 20))
    }

    #[test]
    fn settings_that_could_never_match_are_refused_with_their_kind() {
        let kind = |r: Result<CacheLayer<MemoryStore>, CacheConfigError>| r.unwrap_err().kind();
        assert_eq!(
            kind(layer().path_prefixes(["/a", "b"])),
            CacheConfigErrorKind::PathPrefix
        );
        assert_eq!(
            kind(layer().key_cookies("i18n", ["lang"])),
            CacheConfigErrorKind::PathPrefix
        );
        for cookie in ["", "a b", "a;b", "é"] {
            assert_eq!(
                kind(layer().key_cookies("/", [cookie])),
                CacheConfigErrorKind::Cookie
            );
        }
        for scheme in ["", "1http", "ht tp", "http:"] {
            assert_eq!(kind(layer().scheme(scheme)), CacheConfigErrorKind::Scheme);
        }
        let ttl = Duration::from_secs(1);
        for path in ["", "Say", "/Say", "/a.B/", "//Say", "/a.B/C/D", "/.B/C"] {
            assert_eq!(
                kind(layer().grpc_method(path, ttl)),
                CacheConfigErrorKind::GrpcMethod,
                "{path}"
            );
        }
        let zero = Duration::ZERO;
        for refused in [
            layer().upstream_timeout(zero),
            layer().coalesce_timeout(zero),
            layer().hit_for_pass(Some(zero)),
            layer().distributed_lease(zero),
            layer().grpc_method("/a.B/C", zero),
        ] {
            assert_eq!(kind(refused), CacheConfigErrorKind::ZeroDuration);
        }
        for fraction in [0.0, -0.1, 1.0, 1.5, f64::NAN] {
            assert_eq!(
                kind(layer().refresh_ahead(fraction)),
                CacheConfigErrorKind::Fraction,
                "{fraction}"
            );
        }
        layer().refresh_ahead(0.2).unwrap();
        layer()
            .hit_for_pass(None)
            .unwrap()
            .upstream_timeout(ttl)
            .unwrap()
            .path_prefixes(["/a", "/"])
            .unwrap()
            .key_cookies("/i18n/", ["lang", "__Host-id"])
            .unwrap()
            .scheme("HTTPS")
            .unwrap()
            .grpc_method("/shop.v1.Catalog/Get", ttl)
            .unwrap()
            .grpc_public_method("/Echo/Say", ttl)
            .unwrap();
    }

    #[test]
    fn get_is_always_looked_up_and_head_only_when_asked() {
        let on = layer();
        let off = layer().head(false);
        assert!(on.config.looks_up(&Method::GET) && off.config.looks_up(&Method::GET));
        assert!(on.config.looks_up(&Method::HEAD) && !off.config.looks_up(&Method::HEAD));
        assert!(!on.config.looks_up(&Method::POST) && !on.config.looks_up(&Method::OPTIONS));
        assert_eq!(
            layer().scheme("HTTPS").unwrap().config.key.default_scheme,
            "https"
        );
    }
}
