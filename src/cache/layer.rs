//! [`CacheLayer`]: configuration, shared state (in-flight misses, hit-for-pass) and counters.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use tokio::sync::watch;
use tokio::time::Instant;
use tower_layer::Layer;

use super::key::KeyConfig;
use super::policy::PolicyConfig;
use super::record::Record;
use super::service::Cache;
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
    pub grpc_methods: Vec<(String, Duration)>,
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
    pub fn routes<I, T>(mut self, prefixes: I) -> Self
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
    /// request message (see the [module docs](super#grpc)). Other gRPC methods pass through.
    pub fn grpc_method(mut self, path: impl Into<String>, ttl: Duration) -> Self {
        self.config.grpc_methods.push((path.into(), ttl));
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

    /// The shared store handle, key configuration and shared state, for URL purges
    /// (`purge::CachePurger`).
    pub(crate) fn purge_parts(&self) -> (&Arc<St>, &KeyConfig, &Arc<Shared>) {
        (&self.store, &self.config.key, &self.shared)
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

/// What a coalesced miss ended with.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    Stored(Arc<Record>, Provenance),
    NotStored,
}

/// When a handed-over response was fetched and which tags it carries: a waiter checks that no
/// purge of those tags happened since (see `Store::purged_since`) before serving it.
#[derive(Clone, Debug)]
pub(crate) struct Provenance {
    pub fetched_at: std::time::SystemTime,
    pub tags: Arc<[String]>,
}

/// An in-flight miss: its outcome for waiters, and whether an unsafe request invalidated the
/// key meanwhile (then its response must not be stored or handed out).
pub(crate) struct Flight {
    tx: watch::Sender<Option<Outcome>>,
    cancelled: AtomicBool,
}

#[derive(Default)]
pub(crate) struct Shared {
    pub hits: AtomicU64,
    pub stale_hits: AtomicU64,
    pub misses: AtomicU64,
    pub stores: AtomicU64,
    pub not_stored: AtomicU64,
    pub bypasses: AtomicU64,
    pub coalesced: AtomicU64,
    pub store_errors: AtomicU64,
    pub revalidated: AtomicU64,
    pub invalidations: AtomicU64,
    pub dropped_tags: AtomicU64,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    /// Bumped by every invalidation; `invalidated` records the value per key, so a store write
    /// can tell whether its key was invalidated after its response was fetched.
    generation: AtomicU64,
    invalidated: Mutex<HashMap<String, u64>>,
    passes: Mutex<HashMap<String, Instant>>,
    refreshing: Mutex<HashSet<String>>,
}

/// Most keys remembered for hit-for-pass at once.
const MAX_PASSES: usize = 10_000;

pub(crate) enum Join {
    Leader(FlightGuard),
    Waiter(watch::Receiver<Option<Outcome>>),
}

impl Shared {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Joins the in-flight miss on `key`, or starts one.
    pub fn join(self: &Arc<Self>, key: &str) -> Join {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = flights.get(key) {
            return Join::Waiter(flight.tx.subscribe());
        }
        let flight = Arc::new(Flight {
            tx: watch::channel(None).0,
            cancelled: AtomicBool::new(false),
        });
        flights.insert(key.to_owned(), flight.clone());
        Join::Leader(FlightGuard {
            shared: self.clone(),
            key: key.to_owned(),
            flight,
        })
    }

    /// Detaches the in-flight miss on `key`, if any: later requests no longer join it and its
    /// response is not stored (the key was invalidated).
    pub fn cancel(&self, key: &str) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = flights.remove(key) {
            flight.cancelled.store(true, Ordering::SeqCst);
        }
    }

    /// The current invalidation generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Records that `key` was invalidated now.
    pub fn invalidate(&self, key: &str) {
        let now = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let mut invalidated = self.invalidated.lock().unwrap_or_else(|e| e.into_inner());
        if invalidated.len() >= MAX_PASSES {
            // Writes in flight are short-lived: forget all but the most recent invalidations.
            invalidated.retain(|_, g| *g + (MAX_PASSES as u64) / 2 > now);
        }
        invalidated.insert(key.to_owned(), now);
    }

    /// Whether `key` was invalidated after generation `since`.
    pub fn invalidated_since(&self, key: &str, since: u64) -> bool {
        let invalidated = self.invalidated.lock().unwrap_or_else(|e| e.into_inner());
        invalidated.get(key).is_some_and(|g| *g > since)
    }

    pub fn is_pass(&self, key: &str) -> bool {
        let mut passes = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        match passes.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                passes.remove(key);
                false
            }
            None => false,
        }
    }

    pub fn pass(&self, key: &str, duration: Duration) {
        if duration.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut passes = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        if passes.len() >= MAX_PASSES {
            passes.retain(|_, until| *until > now);
            if passes.len() >= MAX_PASSES {
                passes.clear();
            }
        }
        passes.insert(key.to_owned(), now + duration);
    }

    pub fn unpass(&self, key: &str) {
        let mut passes = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        passes.remove(key);
    }

    /// Claims the background refresh of `key`; false if one is running.
    pub fn start_refresh(&self, key: &str) -> bool {
        let mut refreshing = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        refreshing.insert(key.to_owned())
    }

    pub fn end_refresh(&self, key: &str) {
        let mut refreshing = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        refreshing.remove(key);
    }
}

/// Held by the request that leads a miss; dropping it without an outcome releases the waiters
/// to go upstream themselves.
pub(crate) struct FlightGuard {
    shared: Arc<Shared>,
    key: String,
    flight: Arc<Flight>,
}

impl FlightGuard {
    /// Hands the stored response to the waiters (and to requests that arrive before the
    /// guard is dropped).
    pub fn publish(&self, outcome: Outcome) {
        self.flight.tx.send_replace(Some(outcome));
    }

    /// Whether the key was invalidated while this miss was in flight.
    pub fn is_cancelled(&self) -> bool {
        self.flight.cancelled.load(Ordering::SeqCst)
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if self.flight.tx.borrow().is_none() {
            self.flight.tx.send_replace(Some(Outcome::NotStored));
        }
        let mut flights = self
            .shared
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
        }
    }
}

/// Counters of a [`CacheLayer`], shared by every service it makes. Cheap to clone.
#[derive(Clone)]
pub struct CacheStats(Arc<Shared>);

impl std::fmt::Debug for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStats")
            .field("hits", &self.hits())
            .field("stale_hits", &self.stale_hits())
            .field("misses", &self.misses())
            .field("stores", &self.stores())
            .field("not_stored", &self.not_stored())
            .field("bypasses", &self.bypasses())
            .field("coalesced", &self.coalesced())
            .field("store_errors", &self.store_errors())
            .field("revalidated", &self.revalidated())
            .field("invalidations", &self.invalidations())
            .field("dropped_tags", &self.dropped_tags())
            .finish()
    }
}

impl CacheStats {
    /// Requests answered from a fresh stored response.
    pub fn hits(&self) -> u64 {
        self.0.hits.load(Ordering::Relaxed)
    }
    /// Requests answered from a stale stored response (stale-while-revalidate or
    /// stale-if-error).
    pub fn stale_hits(&self) -> u64 {
        self.0.stale_hits.load(Ordering::Relaxed)
    }
    /// Lookups that found nothing usable and went upstream.
    pub fn misses(&self) -> u64 {
        self.0.misses.load(Ordering::Relaxed)
    }
    /// Responses written to the store.
    pub fn stores(&self) -> u64 {
        self.0.stores.load(Ordering::Relaxed)
    }
    /// Upstream responses to cacheable requests that were not storable.
    pub fn not_stored(&self) -> u64 {
        self.0.not_stored.load(Ordering::Relaxed)
    }
    /// Requests that bypassed the cache (method, route, cookies).
    pub fn bypasses(&self) -> u64 {
        self.0.bypasses.load(Ordering::Relaxed)
    }
    /// Requests answered with the response another request's miss fetched.
    pub fn coalesced(&self) -> u64 {
        self.0.coalesced.load(Ordering::Relaxed)
    }
    /// Store failures (the layer failed open: the request went upstream).
    pub fn store_errors(&self) -> u64 {
        self.0.store_errors.load(Ordering::Relaxed)
    }
    /// Stale entries refreshed by a `304 Not Modified` from upstream.
    pub fn revalidated(&self) -> u64 {
        self.0.revalidated.load(Ordering::Relaxed)
    }
    /// Keys removed after a successful unsafe request.
    pub fn invalidations(&self) -> u64 {
        self.0.invalidations.load(Ordering::Relaxed)
    }
    /// Tags dropped for being over a limit.
    pub fn dropped_tags(&self) -> u64 {
        self.0.dropped_tags.load(Ordering::Relaxed)
    }
}
