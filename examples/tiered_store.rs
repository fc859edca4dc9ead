//! A tiered store across two instances: each keeps an L1 in memory in front of one shared L2
//! in Redis, and a write on one instance drops the other's L1 copy through the Redis pub/sub
//! backplane.
//!
//! Needs Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`). Run with
//!
//! ```not_rust
//! cargo run --example tiered_store --features memory,redis,cache
//! ```
//!
//! It starts instance A on port 3000 and instance B on port 3001, in one process so that one
//! command shows both; they share nothing but Redis (and the headline standing in for the
//! database), as two processes would. Try, with one `Host` for both as a load balancer would
//! send it (the host is part of the cache key):
//!
//! ```not_rust
//! curl -i -H 'host: news.example' localhost:3000/headline  # A: miss, stored in A's L1 and Redis
//! curl -i -H 'host: news.example' localhost:3001/headline  # B: hit from Redis, copied to B's L1
//! curl -i -H 'host: news.example' localhost:3001/headline  # B: hit from its L1, no I/O
//! curl -i -H 'host: news.example' -X PUT localhost:3000/headline -d 'Second edition'
//! curl -i -H 'host: news.example' localhost:3001/headline  # B: a miss, the new headline
//! curl -s localhost:3001/store   # B's store figures, per tier (`l1`, `l2`)
//! ```
//!
//! The `PUT` succeeds, so A's cache purges the page's entry; the tiered store deletes it from
//! Redis and publishes the key on the backplane, and B drops its L1 copy. Without that, B
//! would serve the old headline from memory for up to its L1 TTL.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tower_strata::cache::CacheLayer;
use tower_strata::store::{MemoryStore, RedisStore, Store, TieredStore};

/// The current headline: stands in for the database both instances read.
type Db = Arc<RwLock<String>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_strata=debug".into()),
        )
        .init();

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let db: Db = Arc::new(RwLock::new("First edition".into()));
    // A namespace of this run's own: no entry of an earlier run answers for today's headline.
    let namespace = format!("tiered_example_{}", std::process::id());
    let mut servers = tokio::task::JoinSet::new();
    for (name, port) in [("A", 3000), ("B", 3001)] {
        let (router, _store) = instance(&url, &namespace, db.clone())?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!(
            "instance {name} listening on http://{}",
            listener.local_addr()?
        );
        servers.spawn(async move { axum::serve(listener, router).await });
    }
    // Runs until one server fails (or Ctrl-C).
    if let Some(served) = servers.join_next().await {
        served??;
    }
    Ok(())
}

/// One instance: its own L1 and Redis connections (commands and backplane subscription) over
/// the `namespace` in Redis. Returns the router and the store, whose figures the test reads.
pub fn instance(
    redis_url: &str,
    namespace: &str,
    db: Db,
) -> Result<(Router, TieredStore), Box<dyn std::error::Error>> {
    // Instances share entries when they share a namespace; the backplane is on by default.
    let l2 = RedisStore::builder(redis_url)
        .namespace(namespace)
        .build()?;
    let store = TieredStore::builder(MemoryStore::new(64 << 20), l2)
        // The longest an entry stays in L1: bounds staleness should a message ever be lost.
        .l1_ttl(Some(Duration::from_secs(60)))
        .build()?;
    let stats = store.clone();
    let router = Router::new()
        .route("/headline", get(read).put(write))
        .with_state(db)
        .layer(CacheLayer::new(store.clone()))
        // Added after the cache layer, so not cached: it shows each tier's hits and misses.
        .route("/store", get(move || async move { Json(stats.stats()) }));
    Ok((router, store))
}

async fn read(State(db): State<Db>) -> impl IntoResponse {
    let headline = db.read().unwrap().clone();
    ([(header::CACHE_CONTROL, "public, max-age=300")], headline)
}

async fn write(State(db): State<Db>, headline: String) -> StatusCode {
    *db.write().unwrap() = headline;
    StatusCode::NO_CONTENT
}
