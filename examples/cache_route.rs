//! A cached axum route: `CacheLayer` over an in-memory store in front of a slow handler.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example cache_route --features memory,cache
//! ```
//!
//! and try
//!
//! ```not_rust
//! curl -i localhost:3000/products/7   # slow; cache-status: tower-strata; fwd=miss; stored
//! curl -i localhost:3000/products/7   # at once; cache-status: tower-strata; hit (and an age)
//! curl -i localhost:3000/products/8   # another URL is another entry: a miss
//! curl -i localhost:3000/cart         # private: fwd=miss, never `stored`; each call runs it
//! ```
//!
//! The handler decides what is cached and for how long, with the headers a CDN would read:
//! the layer follows RFC 9111 for a shared cache, so a response without freshness, or marked
//! `private` or `no-store`, is passed through untouched.

use std::time::Duration;

use axum::extract::Path;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tower_strata::cache::CacheLayer;
use tower_strata::store::MemoryStore;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_strata=debug".into()),
        )
        .init();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
        .await
        .unwrap();
    println!("listening on http://{}", listener.local_addr().unwrap());
    axum::serve(listener, app()).await.unwrap();
}

/// The router with the cache in front of it; the test drives this without a server.
pub fn app() -> Router {
    // 64 MiB of responses, weighted by their size. Clones of a store share its entries, so
    // several routers (or a `Purger`) can use the same one.
    let store = MemoryStore::new(64 << 20);
    let cache = CacheLayer::new(store)
        // Stale entries are served for 10 s more while one request refreshes them in the
        // background, so a popular page never waits on the slow handler after its first miss.
        .stale_while_revalidate(Duration::from_secs(10));

    Router::new()
        .route("/products/{id}", get(product))
        .route("/cart", get(cart))
        // `Router::layer` wraps every route above: each response passes through the cache.
        .layer(cache)
}

/// A slow read (think: a database query and some rendering), cacheable for 30 seconds.
async fn product(Path(id): Path<u32>) -> impl IntoResponse {
    tokio::time::sleep(Duration::from_millis(300)).await;
    (
        // `public, max-age` is the freshness the cache keys its TTL on; `s-maxage` or
        // `CDN-Cache-Control` would give this cache its own TTL, browsers another.
        [(header::CACHE_CONTROL, "public, max-age=30")],
        Json(serde_json::json!({ "id": id, "name": format!("product {id}") })),
    )
}

/// A per-user answer: `private` keeps it out of a shared cache, so every call reaches the
/// handler (routes that should be cached per user use `CacheScope`, see the cache docs).
async fn cart() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "private, max-age=30")],
        Json(serde_json::json!({ "items": 3 })),
    )
}
