//! tower-strata quickstart: an axum service on the embedded default (in-memory store), no
//! server to install.
//!
//! ```text
//! cargo run --example quickstart                 # serve on 127.0.0.1:3000 and print what to try
//! cargo run --example quickstart -- --demo       # run the requests itself and print a table
//! cargo run --example quickstart -- --listen 127.0.0.1:8000
//! ```
//!
//! It shows the typed cache (`Cache::get_or_compute`) in front of a slow "database": the first
//! read of a product is a miss that loads it, the next ones are hits, concurrent misses load
//! once, and an update purges the product's tag so the next read loads the new value.
//!
//! `/catalog` is a whole route behind the response cache layer (`CacheLayer`): its
//! `Cache-Status` header shows the miss, then hits, and the update purges it too (the page is
//! tagged with every product through `Surrogate-Key`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use tower_strata::cache::{CacheLayer, CacheStats};
use tower_strata::health::{Check, Health, stats_check};
use tower_strata::metrics::{MetricsLayer, MetricsRegistry};
use tower_strata::store::{Cache, KeyBuilder, MemoryStore, SetOptions, Store};

#[path = "support/prometheus.rs"]
mod prometheus;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: u64,
}

/// A stand-in for a database: every load takes 50 ms and is counted.
#[derive(Default)]
struct Database {
    rows: RwLock<HashMap<u64, Product>>,
    loads: AtomicU64,
}

impl Database {
    async fn load(&self, id: u64) -> Result<Product, StatusCode> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.rows
            .read()
            .await
            .get(&id)
            .cloned()
            .ok_or(StatusCode::NOT_FOUND)
    }
}

#[derive(Clone)]
struct App {
    db: Arc<Database>,
    cache: Cache<MemoryStore>,
    responses: CacheStats,
}

#[derive(Serialize)]
struct ProductResponse {
    product: Product,
    /// "cache" when served from the cache, "database" when this request loaded it.
    source: &'static str,
    millis: f64,
}

fn product_key(id: u64) -> String {
    KeyBuilder::new("product").part(id).build()
}

async fn get_product(
    State(app): State<App>,
    Path(id): Path<u64>,
) -> Result<Json<ProductResponse>, StatusCode> {
    let started = Instant::now();
    let loads_before = app.db.loads.load(Ordering::Relaxed);
    let options = SetOptions::new()
        .ttl(Duration::from_secs(60))
        .grace(Duration::from_secs(300))
        .tags([format!("product:{id}"), "products".to_string()]);
    let db = app.db.clone();
    let product = app
        .cache
        .get_or_compute(&product_key(id), &options, move || async move {
            db.load(id).await
        })
        .await
        .map_err(|e| match e {
            tower_strata::store::ComputeError::Compute(status) => *status,
            tower_strata::store::ComputeError::Cache(_) => StatusCode::INTERNAL_SERVER_ERROR,
        })?;
    let loaded = app.db.loads.load(Ordering::Relaxed) > loads_before;
    Ok(Json(ProductResponse {
        product,
        source: if loaded { "database" } else { "cache" },
        millis: started.elapsed().as_secs_f64() * 1000.0,
    }))
}

#[derive(Deserialize)]
struct PriceUpdate {
    price_cents: u64,
}

async fn update_product(
    State(app): State<App>,
    Path(id): Path<u64>,
    Json(update): Json<PriceUpdate>,
) -> Result<Json<serde_json::Value>, StatusCode> {
    let mut rows = app.db.rows.write().await;
    let product = rows.get_mut(&id).ok_or(StatusCode::NOT_FOUND)?;
    product.price_cents = update.price_cents;
    drop(rows);
    // One call invalidates every entry tagged with this product, however many there are.
    let purged = app
        .cache
        .store()
        .delete_tag(&format!("product:{id}"))
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Json(
        serde_json::json!({ "updated": id, "purged_entries": purged }),
    ))
}

async fn stats(State(app): State<App>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "store": app.cache.store().stats(),
        "response_cache": {
            "hits": app.responses.hits(),
            "misses": app.responses.misses(),
            "stores": app.responses.stores(),
        },
        "database_loads": app.db.loads.load(Ordering::Relaxed),
    }))
}

/// The whole catalog page: slow to build, cached as an HTTP response for 30 s, tagged with
/// every product it shows so a product update purges it.
async fn catalog(State(app): State<App>) -> impl axum::response::IntoResponse {
    app.db.loads.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rows = app.db.rows.read().await;
    let mut products: Vec<&Product> = rows.values().collect();
    products.sort_by_key(|p| p.id);
    let tags: Vec<String> = products
        .iter()
        .map(|p| format!("product:{}", p.id))
        .collect();
    let page = serde_json::to_string(&products).unwrap_or_default();
    (
        [
            ("cache-control", "public, max-age=30".to_owned()),
            ("surrogate-key", tags.join(" ")),
            ("content-type", "application/json".to_owned()),
        ],
        page,
    )
}

fn app() -> Router {
    let db = Arc::new(Database::default());
    {
        let mut rows = db.rows.try_write().expect("no one else holds it yet");
        for (id, name, price) in [(1, "lamp", 2_500), (2, "desk", 19_900), (3, "chair", 8_900)] {
            rows.insert(
                id,
                Product {
                    id,
                    name: name.into(),
                    price_cents: price,
                },
            );
        }
    }
    // One store for the typed cache and the response cache, so one tag purge reaches both.
    let store = MemoryStore::new(64 << 20);
    let layer = CacheLayer::new(store.clone());
    let state = App {
        db,
        cache: Cache::new(store),
        responses: layer.stats(),
    };
    let cached = Router::new().route("/catalog", get(catalog)).layer(layer);
    Router::new()
        .route("/products/{id}", get(get_product).put(update_product))
        .route("/stats", get(stats))
        .merge(cached)
        .with_state(state)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut listen: SocketAddr = "127.0.0.1:3000".parse()?;
    let mut demo = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--demo" => demo = true,
            "--listen" => {
                i += 1;
                listen = args
                    .get(i)
                    .ok_or("--listen needs an address")?
                    .parse()
                    .map_err(|e| format!("--listen: {e}"))?;
            }
            "-h" | "--help" => {
                println!("usage: quickstart [--demo] [--listen ADDR]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
        i += 1;
    }
    if demo {
        return run_demo().await;
    }
    // Latency metrics per route template, a Prometheus `/metrics` endpoint and the health
    // service around the app.
    let scrape = prometheus::install()?;
    let registry = MetricsRegistry::builder()
        .slow_threshold(Some(Duration::from_millis(250)))
        .build()?;
    let health = Health::builder()
        .check(Check::optional("latency", {
            let registry = registry.clone();
            stats_check(move || registry.report())
        }))
        .interval(Duration::from_secs(10))
        .timeout(Duration::from_secs(1))
        .build()?;
    let _checks = health.spawn();
    let app = app()
        .route("/metrics", get(move || std::future::ready(scrape.render())))
        .merge(health.router())
        .layer(
            MetricsLayer::new(registry)
                .exclude_path("/metrics")
                .exclude_prefix("/health"),
        );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    println!("tower-strata quickstart listening on http://{addr}");
    println!("try:");
    println!("  curl -s http://{addr}/products/1      # miss: loads from the database (~50 ms)");
    println!("  curl -s http://{addr}/products/1      # hit: served from the cache");
    println!(
        "  curl -s -X PUT http://{addr}/products/1 -H 'content-type: application/json' -d '{{\"price_cents\":2999}}'"
    );
    println!("  curl -s http://{addr}/products/1      # miss again, with the new price");
    println!("  curl -si http://{addr}/catalog        # a cached route: see Cache-Status and Age");
    println!("  curl -s http://{addr}/stats           # hits, misses, hit rate, bytes held");
    println!("  curl -s http://{addr}/metrics         # Prometheus, per route template");
    println!("  curl -s http://{addr}/health/ready    # readiness with the latency summary");
    axum::serve(listener, app).await?;
    Ok(())
}

/// Sends requests through the router in-process and prints what happened.
async fn run_demo() -> Result<(), Box<dyn std::error::Error>> {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let app = app();
    async fn call(app: &Router, method: &str, uri: &str, body: &str) -> serde_json::Value {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    }

    println!(
        "{:<34} {:<10} {:>9} {:>10}",
        "request", "source", "price", "ms"
    );
    let row = |label: &str, v: &serde_json::Value| {
        println!(
            "{:<34} {:<10} {:>9} {:>10.2}",
            label,
            v["source"].as_str().unwrap_or("-"),
            v["product"]["price_cents"]
                .as_u64()
                .map_or("-".into(), |p| p.to_string()),
            v["millis"].as_f64().unwrap_or(0.0)
        )
    };
    row(
        "GET /products/1",
        &call(&app, "GET", "/products/1", "").await,
    );
    row(
        "GET /products/1",
        &call(&app, "GET", "/products/1", "").await,
    );
    let concurrent: Vec<_> = (0..100)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { call(&app, "GET", "/products/2", "").await })
        })
        .collect();
    let mut from_db = 0;
    for task in concurrent {
        if task.await?["source"] == "database" {
            from_db += 1;
        }
    }
    println!(
        "{:<34} {from_db} of 100 loaded from the database (single flight)",
        "100 x GET /products/2 at once"
    );
    let update = call(&app, "PUT", "/products/1", r#"{"price_cents":2999}"#).await;
    println!(
        "{:<34} purged {} entries",
        "PUT /products/1", update["purged_entries"]
    );
    row(
        "GET /products/1",
        &call(&app, "GET", "/products/1", "").await,
    );
    row(
        "GET /products/1",
        &call(&app, "GET", "/products/1", "").await,
    );

    // The response cache: a whole route behind CacheLayer.
    async fn cache_status(app: &Router, uri: &str) -> String {
        let request = axum::http::Request::get(uri).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let _ = response.into_body().collect().await;
        // The cache writes to the store in the background once the body has streamed; give it
        // a moment so the demo's next line shows a plain hit.
        tokio::time::sleep(Duration::from_millis(20)).await;
        status
    }
    println!();
    println!("{:<34} cache-status", "request");
    for _ in 0..2 {
        println!(
            "{:<34} {}",
            "GET /catalog",
            cache_status(&app, "/catalog").await
        );
    }
    let update = call(&app, "PUT", "/products/3", r#"{"price_cents":7900}"#).await;
    println!(
        "{:<34} purged {} entries (the catalog page too)",
        "PUT /products/3", update["purged_entries"]
    );
    for _ in 0..2 {
        println!(
            "{:<34} {}",
            "GET /catalog",
            cache_status(&app, "/catalog").await
        );
    }

    let stats = call(&app, "GET", "/stats", "").await;
    println!(
        "\nstore: {} hits, {} misses, hit rate {:.0} %, {} bytes held; database loads: {}",
        stats["store"]["hits"],
        stats["store"]["misses"],
        stats["store"]["hit_rate"].as_f64().unwrap_or(0.0) * 100.0,
        stats["store"]["bytes"],
        stats["database_loads"]
    );
    println!(
        "response cache: {} hits, {} misses, {} stored",
        stats["response_cache"]["hits"],
        stats["response_cache"]["misses"],
        stats["response_cache"]["stores"]
    );
    Ok(())
}
