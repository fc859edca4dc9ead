//! Purging by tag after a write: cached pages carry tags, and an `InvalidateLayer` rule purges
//! the tags a successful write makes stale.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example purge_tag --features memory,purge
//! ```
//!
//! and try
//!
//! ```not_rust
//! curl -i localhost:3000/posts/1   # miss, then a hit when repeated
//! curl -i localhost:3000/posts     # the list: miss, then a hit when repeated
//! curl -i -X PUT localhost:3000/posts/1 -d 'A better title'
//! curl -i localhost:3000/posts     # a miss again, with the new title: tag `posts` was purged
//! curl -i localhost:3000/posts/2   # still a hit: nothing purged `post:2`
//! ```
//!
//! The cache already drops `/posts/1` itself when a `PUT /posts/1` succeeds (RFC 9111); the
//! list lives at another URL, and only its tag ties it to the post. The rule purges after the
//! handler answered, before the client gets the response; behind a `TxLayer` it waits for the
//! commit (see `examples/quickstart.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_strata::cache::CacheLayer;
use tower_strata::purge::{InvalidateLayer, Rule};
use tower_strata::store::MemoryStore;

/// Post titles by id: stands in for the database.
type Db = Arc<RwLock<BTreeMap<u32, String>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_strata=debug".into()),
        )
        .init();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app()?).await?;
    Ok(())
}

/// The router with its cache and invalidation rule; the test drives this without a server.
pub fn app() -> Result<Router, Box<dyn std::error::Error>> {
    let db: Db = Arc::new(RwLock::new(BTreeMap::from([
        (1, "Hello".to_owned()),
        (2, "Tags".to_owned()),
    ])));
    let cache = CacheLayer::new(MemoryStore::new(64 << 20));
    // The purger works on the cache's store (and forgets the cache's in-process state of
    // what it purges). A rule's tags may use the route's parameters; a malformed template is
    // an error here, at start-up, not on the first write.
    let purger = cache.purger().purger().clone();
    let invalidate = InvalidateLayer::new(purger)
        .rule(Rule::on([Method::PUT], "/posts/{id}").purge_tags(["post:{id}", "posts"]))?;

    Ok(Router::new()
        .route("/posts", get(list))
        .route("/posts/{id}", get(show).put(update))
        .with_state(db)
        // With `Router::layer` the last layer added is the outermost: the cache, then the
        // invalidation, then the handlers.
        .layer(invalidate)
        .layer(cache))
}

/// A cacheable answer filed under `tags` (`Surrogate-Key`: space-separated, as Fastly reads
/// it; `Cache-Tag` and the `CacheTags` extension work too).
fn tagged(tags: String, body: String) -> Response {
    let headers = [
        (header::CACHE_CONTROL, "public, max-age=300".to_owned()),
        (header::HeaderName::from_static("surrogate-key"), tags),
    ];
    (headers, body).into_response()
}

async fn list(State(db): State<Db>) -> Response {
    let titles: Vec<String> = db.read().unwrap().values().cloned().collect();
    tagged("posts".into(), titles.join("\n"))
}

async fn show(State(db): State<Db>, Path(id): Path<u32>) -> Response {
    match db.read().unwrap().get(&id) {
        Some(title) => tagged(format!("post:{id}"), title.clone()),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A write: on success (2xx) the rule purges `post:{id}` and `posts`; an error purges nothing.
async fn update(State(db): State<Db>, Path(id): Path<u32>, title: String) -> StatusCode {
    match db.write().unwrap().get_mut(&id) {
        Some(old) => {
            *old = title;
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}
