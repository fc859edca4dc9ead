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
//! [`Invalidation`] extension; see [below](#invalidation-after-writes)); [`InvalidationBus`] maps domain events to
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
//!
//! # Invalidation after writes
//!
//! [`InvalidateLayer`], with declarative [`Rule`]s, the `Cache-Group-Invalidation` header and
//! the [`Invalidation`] extension.
//!
//! A rule says what a successful write purges: "a successful `PUT|PATCH|DELETE
//! /products/{id}` purges tags `product:{id}` and `products`". Tags and keys may use the route's
//! parameters (axum syntax: `{id}`, `{*rest}`); rules are checked when added, so a malformed
//! template is a [`RuleError`] at start-up. Every matching rule fires.
//!
//! The purges are hard or soft as the [`Purger`] given to the layer is:
//! with `purger.soft()` entries are marked stale and served within their grace period while
//! one request refreshes them.
//!
//! ## When the purge runs
//!
//! When the response succeeded (2xx; see [`InvalidateLayer::success`]), and when the outcome
//! cannot be known: the inner service returned an error, or the response future was dropped
//! before it answered (the client hung up). The write may have happened then, so the rules'
//! targets are purged as if it had succeeded, in the background (what only a response names,
//! a `Cache-Group-Invalidation` header or an [`Invalidation`] extension, is not known then).
//! A response that says the request failed purges nothing.
//!
//! - **Inside the transaction layer** (a `tower_strata::tx::AfterCommit` in the request
//!   extensions, features `postgres`/`mysql`/`sqlite`): the purge is registered as an
//!   after-commit hook, so it runs after `COMMIT` succeeded and before the response is returned
//!   to the client; on rollback (an error status, a failed commit, a retry) nothing is purged.
//!   Purging before the commit would let a concurrent reader read the old row and cache it
//!   again after the purge.
//! - **Without it**: after the inner service answered, before the response is handed back.
//!
//! Either way, by the time the client sees the response the purge is done.
//!
//! **Stack it inside `TxLayer`** (closer to the handler): `CacheLayer` -> `TxLayer` ->
//! `InvalidateLayer` -> handlers. There it finds `AfterCommit` and ties each purge to the
//! attempt that commits: a failed `COMMIT` (answered `500`/`502`/`503` by the transaction
//! layer) purges nothing, and of a request replayed after a serialization failure only the
//! attempt that commits purges. With axum's `Router::layer` the layer added **last** is the
//! outermost, so add `InvalidateLayer` before `TxLayer`; with `ServiceBuilder` the layer added
//! **first** is the outermost, so add it after. What must never happen is a purge before the
//! commit (from the handler, or from a layer that does not wait for it): the race test in
//! `tests/tx/invalidate.rs` shows readers then re-cache the old row.
//!
//! ## Failures
//!
//! A failed purge (Redis down, a tag over the store's limits) is logged at `error` and counted
//! in [`InvalidateStats::failures`] (and in the purger's
//! [`PurgeStats::failures`]); the response is returned
//! unchanged. The write has committed by then: turning its success into an error would make
//! clients retry a write that happened, while the entries the purge missed still expire with
//! their TTL. Alert on the failure counter; give entries a TTL that bounds the damage.
//!
//! ## `Cache-Group-Invalidation` and the [`Invalidation`] extension
//!
//! On a successful answer to an unsafe method (anything but GET, HEAD, OPTIONS, TRACE), the
//! groups named by a `Cache-Group-Invalidation` header (the IETF HTTP cache groups draft: an
//! RFC 8941 List of Strings, e.g. `"product:42", "products"`) are purged as tags, together with
//! the tags and keys of an [`Invalidation`] response extension, at the same moment as rules.
//! A malformed header is ignored as a whole with a warning, as RFC 8941 prescribes; members
//! that are not Strings are ignored. The header is kept on the response by default, so caches
//! further out (a CDN that implements the draft) can honour it too;
//! [`InvalidateLayer::strip_group_header`] removes it. On safe methods both are ignored.
//!
//! ## Example with axum
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use http::Method;
//! use tower::ServiceExt;
//! use tower_strata::cache::CacheLayer;
//! use tower_strata::purge::{InvalidateLayer, Purger, Rule};
//! use tower_strata::store::MemoryStore;
//!
//! let store = std::sync::Arc::new(MemoryStore::new(64 << 20));
//! let invalidate = InvalidateLayer::new(Purger::new(store.clone()))
//!     .rule(
//!         Rule::on([Method::PUT, Method::PATCH, Method::DELETE], "/products/{id}")
//!             .purge_tags(["product:{id}", "products"]),
//!     )?;
//! let stats = invalidate.clone();
//!
//! let app = Router::new()
//!     .route(
//!         "/products/{id}",
//!         get(|| async { ([("cache-control", "max-age=60"), ("cache-tag", "product:1")], "v1") })
//!             .put(|| async { "updated" }),
//!     )
//!     // With `Router::layer` the last layer added is the outermost: in a real app,
//!     // `.layer(invalidate).layer(tx_layer).layer(cache)` puts it inside the transaction.
//!     .layer(invalidate)
//!     .layer(CacheLayer::new(store.clone()));
//!
//! let put = http::Request::put("/products/1").body(axum::body::Body::empty())?;
//! let response = app.oneshot(put).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(stats.stats().rule_firings, 1);
//! # Ok(()) }
//! ```
//!
//! ## Example with `ServiceBuilder`, inside the transaction layer
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Method, Request, Response, StatusCode};
//! use sqlx::Sqlite;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_strata::purge::{InvalidateLayer, Purger, Rule};
//! use tower_strata::store::{MemoryStore, SetOptions, Store};
//! use tower_strata::tx::{TxBody, TxConfig, TxHandle, TxLayer};
//!
//! let pool = sqlx::sqlite::SqlitePoolOptions::new()
//!     .max_connections(1)
//!     .connect("sqlite::memory:")
//!     .await?;
//! sqlx::query("CREATE TABLE products (id INTEGER, price INTEGER)").execute(&pool).await?;
//! let store = std::sync::Arc::new(MemoryStore::new(1 << 20));
//! let tagged = SetOptions::new().ttl(Duration::from_secs(60)).tags(["product:7"]);
//! store.set("cached product 7", Bytes::from_static(b"old"), &tagged).await?;
//!
//! let svc = ServiceBuilder::new()
//!     // Outermost first: the transaction, then the invalidation inside it.
//!     .layer(TxLayer::try_new(pool.clone(), TxConfig::default())?)
//!     .layer(
//!         InvalidateLayer::new(Purger::new(store.clone()))
//!             .rule(Rule::on([Method::PUT], "/products/{id}").purge_tags(["product:{id}"]))?
//!             .strip_group_header(true),
//!     )
//!     .service_fn(|req: Request<TxBody<String>>| async move {
//!         let tx = req.extensions().get::<TxHandle<Sqlite>>().unwrap().clone();
//!         let mut conn = tx.conn().await.unwrap();
//!         sqlx::query("INSERT INTO products VALUES (7, 100)").execute(&mut conn).await.unwrap();
//!         let mut response = Response::new(String::new());
//!         if req.uri().query() == Some("fail") {
//!             *response.status_mut() = StatusCode::CONFLICT; // rolled back: nothing purged
//!         }
//!         Ok::<_, Infallible>(response)
//!     });
//!
//! let put = |uri| Request::put(uri).body(String::new()).unwrap();
//! let response = svc.clone().oneshot(put("/products/7?fail")).await?;
//! assert_eq!(response.status(), StatusCode::CONFLICT);
//! assert!(store.get("cached product 7").await?.is_some());
//!
//! svc.oneshot(put("/products/7")).await?;
//! // Committed, then purged, before the response came back.
//! assert!(store.get("cached product 7").await?.is_none());
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

mod auth;
mod body;
mod bus;
mod cache;
mod future;
mod invalidate;
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
    CACHE_GROUP_INVALIDATION, Invalidate, InvalidateFuture, InvalidateLayer, InvalidateStats,
    Invalidation,
};
pub use layer::{
    DEFAULT_MAX_PURGE_BODY, DEFAULT_PURGE_PATH, PurgeConfigError, PurgeConfigErrorKind, PurgeLayer,
};
pub use limit::RateLimit;
pub use purger::{
    DEFAULT_MAX_DEPENDANTS, PurgeError, PurgeReport, PurgeRequest, PurgeStats, Purger, Target,
};
pub use rules::{EventRule, Rule, RuleError};
pub use service::Purge;
