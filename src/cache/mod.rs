//! The response cache layer: RFC 9111 shared-cache semantics over any [`Store`](crate::store::Store).
//!
//! [`CacheLayer`] goes in front of any `Service<http::Request<B>>` (an axum `Router`, a hyper
//! service, a tonic server) and stores responses in a store: memory, Redis or tiered.
//!
//! # Example
//!
//! With the defaults, in an axum router:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use axum::{Router, routing::get};
//! use tower::ServiceExt;
//! use tower_strata::cache::CacheLayer;
//! use tower_strata::store::MemoryStore;
//!
//! let app = Router::new()
//!     .route("/", get(|| async { ([("cache-control", "max-age=60")], "hello") }))
//!     .layer(CacheLayer::new(MemoryStore::new(64 << 20)));
//!
//! let request = || http::Request::get("http://example.com/").body(axum::body::Body::empty());
//! let first = app.clone().oneshot(request().unwrap()).await.unwrap();
//! assert_eq!(first.headers()["cache-status"], "tower-strata; fwd=miss; stored");
//! let _ = axum::body::to_bytes(axum::body::Body::new(first.into_body()), usize::MAX).await;
//! # tokio::task::yield_now().await;
//! let second = app.oneshot(request().unwrap()).await.unwrap();
//! assert!(second.headers()["cache-status"].to_str().unwrap().starts_with("tower-strata; hit"));
//! # }
//! ```
//!
//! Customised, with `ServiceBuilder`:
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_strata::cache::CacheLayer;
//! use tower_strata::store::MemoryStore;
//!
//! let service = ServiceBuilder::new()
//!     .layer(
//!         CacheLayer::new(MemoryStore::new(64 << 20))
//!             .default_ttl(Duration::from_secs(30))
//!             .stale_while_revalidate(Duration::from_secs(10))
//!             .stale_if_error(Duration::from_secs(300))
//!             .max_body_size(256 * 1024)
//!             .sort_query(true)
//!             .ignore_query_params(["utm_*", "fbclid"])
//!             .key_cookies("/i18n/", ["lang"])?
//!             .ttl_jitter(Duration::from_secs(3)),
//!     )
//!     .service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
//!     });
//! # let _ = service;
//! # Ok::<(), tower_strata::cache::CacheConfigError>(())
//! ```
//!
//! # What is stored
//!
//! Only responses to GET, following RFC 9111 for a shared cache: `Cache-Control` (`max-age`,
//! `s-maxage`, `no-store`, `no-cache`, `private`, `public`, `must-revalidate`,
//! `proxy-revalidate`, `stale-while-revalidate`, `stale-if-error`), `Expires`, the `Age` the
//! response already carries, heuristic freshness (10% of the time since `Last-Modified`) only
//! for statuses cacheable by default or `public` responses. `CDN-Cache-Control` (RFC 9213), and
//! else `Surrogate-Control`, replace `Cache-Control` and `Expires` for this cache's freshness,
//! so an app can give this tier a TTL browsers never see: when such a field gives this cache
//! freshness, `Cache-Control: no-store` (meant for browsers) does not stop it storing
//! (RFC 9213 §2.1), but `private` in `Cache-Control` still does. The targeted fields are
//! Structured Fields Dictionaries: one that does not parse, or gives a known directive the
//! wrong type (`max-age="10"`), is ignored whole and `Cache-Control` governs. `Cache-Control`
//! is parsed with the RFC 9111 grammar; a field that does not parse completely (an unbalanced
//! quote, a stray character) forbids storing, and on a request bypasses the cache.
//! `must-understand` stores a response whose status this cache implements despite
//! `no-store`, and no other. Delta-seconds above 2^31 count as 2^31; `Age` is its first member,
//! and one that is not a valid number is ignored. On top:
//! [`CacheLayer::default_ttl`] for responses that say nothing, [`CacheLayer::override_ttl`],
//! [`CacheLayer::path_prefixes`], [`CacheLayer::head`], and a per-response [`CacheOverride`]
//! extension.
//!
//! # Never leaking private data
//!
//! Not stored: responses with `Set-Cookie`, `private` or `no-store`, responses to requests with
//! `Authorization` unless `public`, `s-maxage` or `must-revalidate` allow it (RFC 9111 §3.5),
//! `Vary: *`. Requests carrying `Cookie` bypass the cache unless the route opted in with
//! [`CacheLayer::key_cookies`], which puts the named cookies' values in the key.
//!
//! Routes that answer per user opt into a private scope with the [`CacheScope`] request
//! extension, which an auth layer in front of the cache sets to the principal it verified: the
//! principal is then part of the key, `private` and `Authorization` answers are storable for
//! that principal only, and [`CacheLayer::private_store`] gives those entries a budget of their
//! own (see the guide's "Per-user caching").
//!
//! # Keys
//!
//! Method (HEAD is served from a stored GET), scheme, host (so one host cannot poison
//! another's entries), path and query (optionally sorted, with ignored parameters), the
//! [`KeyPart`] request extension and key cookies. The host is the request target's authority,
//! else `Host`, and must be a valid `host[:port]`: a request naming anything else (a `/`, `?`,
//! `@`, whitespace, an empty host, two `Host` lines) is answered `400` before it is keyed or
//! reaches the service, so no client can file a response under another URL. Hosts are
//! normalised (lower case, no trailing dot, no default port) for keying, purging and
//! invalidating alike, and `Host` is set to the target's authority when the request named one,
//! so the service sees the host the key took. Every field after the URL is length-prefixed, so
//! no key part, cookie or `Vary` value can spell the next. With `Vary`, the primary key holds a small
//! record naming the headers, and each variant lives under a key that adds the request's values
//! of them. Long keys are hashed; every record carries its full identity and a read compares
//! it, so a hash collision is a miss, never a wrong response.
//!
//! # Conditional and range requests, invalidation
//!
//! A hit answers a matching `If-None-Match` / `If-Modified-Since` with `304`, a single
//! `Range: bytes=` with `206` (or `416`). A stale entry is revalidated upstream with its
//! validators; a `304` refreshes its headers and freshness (RFC 9111 §4.3.4). A client gets a
//! `304` only when its own request was conditional and matches: when the origin's `304` cannot
//! refresh the entry (it sets a cookie, says `no-store` or `private`, or the entry's freshness
//! came from a [`CacheOverride`]) the client gets the stored body with `200` and the merged
//! headers (`Set-Cookie` to it alone, never stored).
//!
//! A successful request with any method not known as safe (`POST`, `PUT`, `PATCH`, `DELETE`,
//! `M-SEARCH`, ...) removes every stored response of its URI and of its `Location` and
//! `Content-Location` on the same host (RFC 9111 §4.4): the plain entry, or the `Vary` index
//! and every variant. Purges of a URL or of a cache key (`purge`) use the same operation. The
//! call upstream of such a request runs to its end even if the client hangs up, and an
//! outcome the cache cannot know (the call failed) invalidates as a success would. A `304`
//! that validates nothing (it names another `ETag`) is followed by one unconditional request,
//! whose answer is served and stored.
//!
//! A fetch whose response may be stored registers under its URL while in flight; an
//! invalidation of the URL marks those fetches, whose writes are then dropped or undone. The
//! cost is one flag per fetch in flight, whatever the number of invalidations, so no burst of
//! writes makes the cache stop storing.
//!
//! # Concurrency: coalescing, stale serving, hit-for-pass
//!
//! Concurrent misses on one key send one request upstream; the others wait (at most
//! [`CacheLayer::coalesce_timeout`], then go upstream themselves) for the leader's response
//! and read its body as it arrives: the fill reads it from upstream once, on a task of its
//! own, and feeds every reader at its own pace, so a waiter receives the first bytes before
//! the last have left the origin, a slow reader holds up nobody, and a leader whose client
//! hangs up still completes and stores the fill. If the response is not storable the waiters
//! are released to go upstream: they are never given another request's response, and a
//! waiter whose `Vary` values differ goes upstream too. The key is then remembered for
//! [`CacheLayer::hit_for_pass`] so later requests skip the queue. Within
//! `stale-while-revalidate` (or [`CacheLayer::stale_while_revalidate`]) a stale entry is served
//! at once and refreshed in the background, once per key. Within `stale-if-error` (or
//! [`CacheLayer::stale_if_error`]) a stale entry is served when upstream fails, times out
//! ([`CacheLayer::upstream_timeout`]) or answers 5xx. Coalescing is per process; with
//! [`CacheLayer::distributed_lease`] instances sharing a store also coalesce through a short
//! lease in the store, the others serving stale or polling for the leader's response.
//!
//! # Bodies
//!
//! A storable response is recorded while it streams to its readers, up to
//! [`CacheLayer::max_body_size`] (default 1 MiB). Past it the recording is dropped and the
//! response is not stored; the fill then keeps at most that many bytes for readers behind the
//! fastest, and a reader that falls further behind is cut (its body ends with an error), while
//! a lone slow reader is waited for. A waiter that arrives once the first bytes are gone goes
//! upstream. Responses that cannot be stored (and `text/event-stream`,
//! `application/grpc`) pass through without any buffering. Trailers are kept. Records use a
//! compact, versioned binary format and a hit serves the stored bytes without copying.
//!
//! # Failure
//!
//! A store error (Redis down, a timeout) never fails a request: the layer goes upstream and
//! counts it in [`CacheStats::store_errors`]. Concurrent misses of one URL still coalesce in
//! the process (one origin call), without the lease and without writing what they fetched.
//! Store failures are logged as an outage, not per request: a line when the store starts
//! failing, a summary at most every 10 s while it lasts (requests passed through, writes
//! dropped, invalidations and leases failed), and a line when it answers again.
//!
//! # What clients see
//!
//! `Age` on hits (RFC 9111 §4.2.3, including the age the response arrived with) and an
//! RFC 9211 `Cache-Status` (`tower-strata; hit; ttl=42`, `tower-strata; fwd=miss; stored`,
//! `tower-strata; fwd=bypass`, ...), which [`CacheLayer::cache_status`] turns off. Hop-by-hop
//! headers are neither stored nor replayed.
//!
//! # gRPC
//!
//! Only methods marked with [`CacheLayer::grpc_method`] are cached, keyed by method path plus
//! the request message bytes (the [`GrpcMessage`] extension, which `GrpcKeyLayer` attaches
//! with the `tonic` feature), for the TTL given there, and only responses whose trailers carry
//! `grpc-status: 0`. Calls carrying `authorization` metadata or a cookie bypass the cache
//! unless the method is marked with [`CacheLayer::grpc_public_method`]. Other gRPC calls pass
//! through untouched and never invalidate anything. gRPC misses are not coalesced.
//!
//! # Tags
//!
//! Tags come from `Surrogate-Key` (space-separated), `Cache-Tag` (comma-separated) and the
//! [`CacheTags`] extension. Tags over [`MAX_TAG_LEN`] bytes, or past [`MAX_TAG_HEADER_LEN`] in a
//! header, are dropped and logged; the response is served all the same. They are stored with
//! the entry (purge them with [`Store::purge_tag`](crate::store::Store::purge_tag)) and the
//! headers are removed before the response leaves ([`CacheLayer::strip_tag_headers`]).
//!
//! # How it is built
//!
//! One file per step a request takes, as tower-http lays out a layer, in the order a request
//! flows through them:
//!
//! 1. `service`: the [`Cache`] service; checks the host and sends the request down its path
//!    (gRPC, an unsafe method, a bypass, a lookup). `hit` answers a fresh hit inside `call`
//!    when the store answers at once.
//! 2. `lookup`: the primary key, then the variant a `Vary` index points to; what it leaves
//!    for the miss path (`Miss`).
//! 3. `coalesce`: joining or leading the miss in flight (per variant), and the distributed
//!    lease.
//! 4. `forward`: the miss path: the upstream call, stale-if-error, the `304` of a
//!    revalidation, and the start of the fill.
//! 5. `revalidate`: the `304` merge, and the stale-while-revalidate background refresh.
//! 6. `write`: `admit` (the one place an upstream response becomes a record), the fill's start
//!    and the store write once its body is read.
//! 7. `serve`: answering from a record or a streaming fill: `Age`, `Cache-Status`, `304`,
//!    ranges.
//! 8. `invalidate`: removing every stored response of a URL, and the unsafe methods that call
//!    it; `grpc_call` is the gRPC path.
//!
//! The steps stand on a floor of files that use no step: `ctx` (the settings and shared
//! handles every step reads), `status` (the request's outcome, `Outcome`: its
//! `Cache-Status` and its counter), `upstream` (the one upstream call, with its timeout),
//! `conditional` (conditional requests and validators), `lease`, `tee` (a fill's body, read
//! once and fed to every reader), `state` (what a layer's services share, and
//! [`CacheStats`]), `key`, `authority` (checking and normalising the host a key names),
//! `outage` (what the cache logs while its store fails), `stamp` (cross-instance invalidation
//! stamps), `directives` (the field grammar), `policy` (the RFC 9111 rules), `record` (the
//! stored format), `body`, `tags`, `scope` (the private scope and its principal's tag), `vary`
//! (the `Vary` normalisers). `layer` holds the configuration, `future` the response
//! future.
//!
//! # Request bodies and services
//!
//! The [`Cache`] service asks `Default` of request bodies (axum's and tonic's `Body`, `Full`,
//! `Empty` and `UnsyncBoxBody` have it; hyper's `Incoming` does not, box it with
//! `BodyExt::boxed_unsync`): a GET is repeated without its body, which means nothing, when a
//! revalidation's `304` validates nothing. It asks `'static` of the inner service's future, so
//! the call upstream of an unsafe request outlives a client that hangs up.

mod authority;
mod body;
mod coalesce;
mod conditional;
pub(crate) mod ctx;
mod directives;
mod forward;
mod future;
#[cfg(feature = "tonic")]
mod grpc;
mod grpc_call;
mod hit;
pub(crate) mod invalidate;
pub(crate) mod key;
pub(crate) mod layer;
mod lease;
mod lookup;
mod outage;
mod policy;
mod record;
mod revalidate;
mod scope;
mod serve;
mod service;
mod stamp;
pub(crate) mod state;
mod status;
mod tags;
mod tee;
mod upstream;
mod vary;
mod write;

pub use body::CacheBody;
pub use future::ResponseFuture;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub use grpc::{DEFAULT_MAX_MESSAGE_SIZE, GrpcKey, GrpcKeyFuture, GrpcKeyLayer};
pub use key::{GrpcMessage, KeyPart};
pub use layer::{CacheConfigError, CacheConfigErrorKind, CacheLayer, DEFAULT_MAX_BODY_SIZE};
pub use policy::CacheOverride;
pub use scope::{CacheScope, principal_tag};
pub use service::Cache;
pub use state::CacheStats;
pub use tags::{CacheTags, MAX_TAG_HEADER_LEN, MAX_TAG_LEN};
pub use tee::BoxError;
pub use vary::{AcceptEncoding, AcceptLanguage, VaryNormaliser};
