//! Purging and invalidation: a [`Purger`] over any store, hard and soft, and purging over HTTP.
//!
//! A [`Purger`] is a cloneable handle that removes (hard) or marks stale (soft) cached entries by
//! key, by tag, by glob or regular-expression pattern, or all of them, and reports how many
//! entries went. Keys and tags may depend on others ([`Purger::depend`]): purging one purges its
//! dependants, transitively. On a [`TieredStore`](crate::store::TieredStore) a purge made on one
//! instance reaches every instance's L1 through the store's Redis backplane.
//!
//! [`CacheLayer::purger`](crate::cache::CacheLayer::purger) gives a [`CachePurger`]: the same
//! over the response cache's store, plus [`CachePurger::purge_url`], which purges a URL's
//! entries (every `Vary` variant) under the cache's key rules.
//!
//! [`InvalidateLayer`] purges what successful writes make stale, after the transaction
//! committed (declarative [`Rule`]s, the `Cache-Group-Invalidation` header, the
//! [`Invalidation`] extension; see [`invalidate`]); [`InvalidationBus`] maps domain events to
//! purges on every instance; [`Warmer`](crate::warm::Warmer) (feature `warm`) fills the cache before users ask.
//!
//! # Purging over HTTP
//!
//! [`PurgeLayer`] answers two kinds of requests and passes everything else to the inner
//! service untouched:
//!
//! - `PURGE <url>` (Varnish style): purges that URL's stored responses, every `Vary` variant,
//!   and answers `200` with `{"url":..,"purged":n,"soft":false}`. A `Soft-Purge: 1` header
//!   makes it soft. Needs a [`CachePurger`]; with a plain [`Purger`] it is answered `501`.
//! - `POST /_cache/purge` (path configurable) with a JSON [`PurgeRequest`]:
//!   `{"keys":[..],"tags":[..],"patterns":[..],"regexes":[..],"all":false,"soft":true}`,
//!   answered `200` with the [`PurgeReport`] counts and their `total`.
//!
//! Protected by construction: [`PurgeLayer::new`] takes a [`BearerToken`] (compared in
//! constant time) or an [`Authorize`] policy; there is no constructor without one. Answers, all JSON `{"error": ".."}` except success:
//!
//! | case | status |
//! | --- | --- |
//! | no credentials, or not `Bearer` | `401` with `WWW-Authenticate: Bearer` |
//! | wrong token, or the policy says [`Authorization::Forbidden`] | `403` |
//! | over the rate limit ([`RateLimit`], a token bucket per layer) | `429` with `Retry-After` |
//! | body over [`PurgeLayer::max_body_size`] (default 64 KiB) | `413` |
//! | body not received within [`PurgeLayer::body_timeout`] | `408` |
//! | malformed JSON, unknown fields, nothing named, invalid pattern, too many dependants | `400` |
//! | the store cannot purge that way (a custom store without regular expressions) | `501` |
//! | the store failed | `503` |
//!
//! Nothing is purged unless the answer is `200`; credentials are checked before the body is
//! read, and only authorized requests draw from the rate limit, so anonymous floods cannot use
//! up the budget of legitimate purgers. Every purge is logged with `tracing`: who (the
//! policy's principal, or `bearer`), the peer address (axum's `ConnectInfo<SocketAddr>` or a
//! `SocketAddr` extension), what, how many, soft or hard; refusals are logged as warnings.
//!
//! With axum, behind `Router::layer`:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use axum::{Router, routing::get};
//! use tower::ServiceExt;
//! use tower_strata::cache::CacheLayer;
//! use tower_strata::purge::{BearerToken, PurgeLayer};
//! use tower_strata::store::MemoryStore;
//!
//! let cache = CacheLayer::new(MemoryStore::new(64 << 20));
//! let purge = PurgeLayer::new(cache.purger(), BearerToken::new("s3cret").unwrap());
//! let app = Router::new()
//!     .route("/", get(|| async { ([("cache-control", "max-age=60")], "hello") }))
//!     .layer(cache)
//!     .layer(purge);
//!
//! let purge_request = http::Request::post("/_cache/purge")
//!     .header("authorization", "Bearer s3cret")
//!     .body(axum::body::Body::from(r#"{"tags":["products"]}"#))
//!     .unwrap();
//! let response = app.clone().oneshot(purge_request).await.unwrap();
//! assert_eq!(response.status(), 200);
//!
//! let no_token = http::Request::builder()
//!     .method("PURGE")
//!     .uri("http://example.com/")
//!     .body(axum::body::Body::empty())
//!     .unwrap();
//! assert_eq!(app.oneshot(no_token).await.unwrap().status(), 401);
//! # }
//! ```
//!
//! Customised, with `ServiceBuilder` and an app-supplied policy:
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_strata::cache::CacheLayer;
//! use tower_strata::purge::{Authorization, PurgeLayer, RateLimit};
//! use tower_strata::store::MemoryStore;
//!
//! let cache = CacheLayer::new(MemoryStore::new(64 << 20));
//! let policy = |parts: &http::request::Parts| match parts.headers.get("x-api-key") {
//!     Some(key) if key == "editor-key" => Authorization::allow("editor"),
//!     Some(_) => Authorization::Forbidden,
//!     None => Authorization::Unauthenticated,
//! };
//! let service = ServiceBuilder::new()
//!     .layer(
//!         PurgeLayer::new(cache.purger(), policy)
//!             .path("/admin/purge")
//!             .max_body_size(16 * 1024)
//!             .body_timeout(Duration::from_secs(2))
//!             .rate_limit(Some(RateLimit::new(5, 1.0).unwrap())),
//!     )
//!     .layer(cache)
//!     .service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
//!     });
//! # let _ = service;
//! ```
//!
//! Put the purge layer outside (before) the cache layer, so purge requests never reach the
//! cache or the application. The rate limit and the [`Purger`]'s stats are per process; with
//! several instances, each has its own budget.

mod auth;
mod body;
mod bus;
mod cache;
mod future;
pub mod invalidate;
mod layer;
mod limit;
mod purger;
mod rules;
mod service;

pub use auth::{Authorization, Authorize, BearerToken};
pub use body::PurgeBody;
pub use bus::{BusError, InvalidationBus, InvalidationBusBuilder};
pub use cache::CachePurger;
pub use future::ResponseFuture;
pub use invalidate::{
    CACHE_GROUP_INVALIDATION, Invalidate, InvalidateLayer, InvalidateStats, Invalidation,
    ResponseFuture as InvalidateFuture,
};
pub use layer::{
    DEFAULT_MAX_PURGE_BODY, DEFAULT_PURGE_PATH, PurgeConfigError, PurgeConfigErrorKind,
    PurgeHandle, PurgeLayer,
};
pub use limit::RateLimit;
pub use purger::{
    DEFAULT_MAX_DEPENDANTS, PurgeError, PurgeReport, PurgeRequest, PurgeStats, Purger, Target,
};
pub use rules::{EventRule, Rule, RuleError};
pub use service::Purge;
