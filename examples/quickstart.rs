//! tower-strata quickstart: a small shop on the embedded default (in-memory cache, SQLite), no
//! server to install.
//!
//! ```text
//! cargo run --example quickstart                 # serve on 127.0.0.1:3000 and print what to try
//! cargo run --example quickstart -- --listen 127.0.0.1:3000   # the same, then open
//!                                                 # http://127.0.0.1:3000/dashboard
//! cargo run --example quickstart -- --demo       # run the requests itself and print tables
//! cargo run --example quickstart -- --listen 127.0.0.1:8000 --purge-token s3cret
//! ```
//!
//! The same stack as `examples/shop` (which runs on PostgreSQL and Redis), in one
//! `ServiceBuilder`, outermost first:
//!
//! 1. `MetricsLayer`: latency per route template, served at `/metrics` (Prometheus) and in
//!    `/stats`.
//! 2. `PurgeLayer`: `PURGE <url>` and `POST /_cache/purge` for requests bearing the purge token.
//! 3. `CacheLayer` on a `MemoryStore`: product reads are cached, tagged `product:{id}` and
//!    `products`.
//! 4. `TxLayer` on SQLite: one transaction per request, committed on success, rolled back on
//!    an error response.
//! 5. `InvalidateLayer`: a successful `PUT /products/{id}` purges `product:{id}` and `products`
//!    after the transaction committed; an order names what it invalidates in its response.
//!
//! `/health` and `/health/ready` report the database and the cache; `/stats` shows the cache,
//! purge, transaction and latency figures; `/dashboard` shows them all live in a browser (the
//! `Dashboard` service, its JSON at `/dashboard/data`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Sqlite, SqlitePool};
use tower::ServiceBuilder;
use tower_strata::cache::{CacheLayer, CacheStats};
use tower_strata::dashboard::Dashboard;
use tower_strata::health::{Check, Health, PoolCheck, stats_check};
use tower_strata::metrics::{MetricsLayer, MetricsRegistry, Window};
use tower_strata::purge::{BearerToken, InvalidateLayer, Invalidation, PurgeLayer, Purger, Rule};
use tower_strata::store::{MemoryStore, Store};
use tower_strata::tx::{TxConfig, TxHandle, TxLayer, TxStats};

#[path = "support/prometheus.rs"]
mod prometheus;

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
struct Product {
    id: i64,
    name: String,
    price_cents: i64,
    stock: i64,
}

#[derive(Deserialize)]
struct PriceUpdate {
    price_cents: i64,
}

#[derive(Deserialize)]
struct NewOrder {
    product_id: i64,
    quantity: i64,
}

/// A handler error: a status and a message, answered as JSON. Error statuses roll the
/// request's transaction back.
struct ApiError(StatusCode, String);

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        tracing::warn!(%error, "database error");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "database unavailable".into(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// A cacheable JSON answer: public for a minute, tagged for purging.
fn cached(tags: &str, body: impl Serialize) -> Response {
    (
        [
            (header::CACHE_CONTROL, "public, max-age=60".to_owned()),
            (
                header::HeaderName::from_static("surrogate-key"),
                tags.to_owned(),
            ),
        ],
        Json(body),
    )
        .into_response()
}

async fn list_products(tx: TxHandle<Sqlite>) -> Result<Response, ApiError> {
    let mut conn = tx.conn().await?;
    let products: Vec<Product> = sqlx::query_as("SELECT * FROM products ORDER BY id")
        .fetch_all(&mut conn)
        .await?;
    Ok(cached("products", products))
}

async fn get_product(tx: TxHandle<Sqlite>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let mut conn = tx.conn().await?;
    let product: Option<Product> = sqlx::query_as("SELECT * FROM products WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut conn)
        .await?;
    match product {
        Some(product) => Ok(cached(&format!("product:{id} products"), product)),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no product {id}"))),
    }
}

/// Updates a price. The `InvalidateLayer` rule purges `product:{id}` and `products` once the
/// transaction has committed.
async fn update_product(
    tx: TxHandle<Sqlite>,
    Path(id): Path<i64>,
    Json(update): Json<PriceUpdate>,
) -> Result<Json<Product>, ApiError> {
    if update.price_cents < 0 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "price must not be negative".into(),
        ));
    }
    let mut conn = tx.conn().await?;
    let product: Option<Product> =
        sqlx::query_as("UPDATE products SET price_cents = $1 WHERE id = $2 RETURNING *")
            .bind(update.price_cents)
            .bind(id)
            .fetch_optional(&mut conn)
            .await?;
    product
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no product {id}")))
}

/// Places an order: checks and decrements the stock in the request's transaction. Short
/// stock is a `409`, which rolls the transaction back and purges nothing; success names the
/// product's tags in an `Invalidation` extension, purged after the commit.
async fn place_order(
    tx: TxHandle<Sqlite>,
    Json(order): Json<NewOrder>,
) -> Result<Response, ApiError> {
    if order.quantity <= 0 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "quantity must be positive".into(),
        ));
    }
    let mut conn = tx.conn().await?;
    let id = order.product_id;
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM products WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut conn)
        .await?;
    if exists.is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no product {id}")));
    }
    let order_id: i64 = sqlx::query_scalar(
        "INSERT INTO orders (product_id, quantity) VALUES ($1, $2) RETURNING id",
    )
    .bind(id)
    .bind(order.quantity)
    .fetch_one(&mut conn)
    .await?;
    // The stock check and the decrement are one statement; when it refuses, the 409 rolls
    // the order row above back with the rest of the transaction.
    let left: Option<i64> = sqlx::query_scalar(
        "UPDATE products SET stock = stock - $1 WHERE id = $2 AND stock >= $3 RETURNING stock",
    )
    .bind(order.quantity)
    .bind(id)
    .bind(order.quantity)
    .fetch_optional(&mut conn)
    .await?;
    let Some(left) = left else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("not enough of product {id} in stock"),
        ));
    };
    let mut response = (
        StatusCode::CREATED,
        Json(serde_json::json!({ "order": order_id, "stock_left": left })),
    )
        .into_response();
    response.extensions_mut().insert(Invalidation::tags([
        format!("product:{id}"),
        "products".to_owned(),
    ]));
    Ok(response)
}

/// What `/stats` shows: every layer's figures.
#[derive(Clone)]
pub(crate) struct Figures {
    store: MemoryStore,
    cache: CacheStats,
    purger: Purger,
    invalidate: InvalidateLayer,
    tx: TxStats,
    metrics: MetricsRegistry,
}

impl Figures {
    pub(crate) fn json(&self) -> serde_json::Value {
        let routes: Vec<serde_json::Value> = self
            .metrics
            .snapshot(Window::FiveMinutes)
            .into_iter()
            .map(|r| {
                serde_json::json!({
                    "route": r.route,
                    "method": r.method,
                    "count": r.count,
                    "p50_ms": r.latency.p50.as_secs_f64() * 1000.0,
                    "p99_ms": r.latency.p99.as_secs_f64() * 1000.0,
                })
            })
            .collect();
        let tx = self.tx.snapshot();
        serde_json::json!({
            "cache": {
                "hits": self.cache.hits(),
                "stale_hits": self.cache.stale_hits(),
                "misses": self.cache.misses(),
                "stores": self.cache.stores(),
                "coalesced": self.cache.coalesced(),
            },
            "store": self.store.stats(),
            "purges": self.purger.stats(),
            "invalidation": self.invalidate.stats(),
            "transactions": { "committed": tx.committed, "rolled_back": tx.rolled_back },
            "routes": routes,
        })
    }
}

/// The service and the handles it reports through.
pub(crate) struct Shop {
    pub(crate) router: Router,
    pub(crate) figures: Figures,
    pub(crate) health: Health,
    /// Served at `/dashboard`; `spawn` it to sample the charts in the background.
    pub(crate) dashboard: Dashboard,
}

pub(crate) async fn open_database(
    path: Option<&str>,
) -> Result<SqlitePool, Box<dyn std::error::Error>> {
    let options = match path {
        Some(path) => SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true),
        // One in-memory database shared by the pool's connections, gone at exit.
        None => format!(
            "sqlite:file:quickstart-{:x}?mode=memory&cache=shared",
            rand::random::<u64>()
        )
        .parse()?,
    }
    .journal_mode(SqliteJournalMode::Wal)
    .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, \
         price_cents INTEGER NOT NULL, stock INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    for (id, name, price, stock) in [
        (1, "lamp", 2_500, 10),
        (2, "desk", 19_900, 3),
        (3, "chair", 8_900, 25),
    ] {
        sqlx::query("INSERT OR IGNORE INTO products VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(name)
            .bind(price)
            .bind(stock)
            .execute(&pool)
            .await?;
    }
    Ok(pool)
}

pub(crate) fn shop(
    pool: SqlitePool,
    purge_token: &str,
) -> Result<Shop, Box<dyn std::error::Error>> {
    let store = MemoryStore::new(64 << 20);
    let cache = CacheLayer::new(store.clone()).stale_while_revalidate(Duration::from_secs(10));
    let urls = cache.purger();
    let purger = urls.purger().clone();
    let invalidate = InvalidateLayer::new(purger.clone()).rule(
        Rule::on(
            [Method::PUT, Method::PATCH, Method::DELETE],
            "/products/{id}",
        )
        .purge_tags(["product:{id}", "products"]),
    )?;
    let tx = TxLayer::try_new(pool.clone(), TxConfig::default())?;
    let metrics = MetricsRegistry::builder()
        .slow_threshold(Some(Duration::from_millis(250)))
        .build()?;
    let figures = Figures {
        store: store.clone(),
        cache: cache.stats(),
        purger: purger.clone(),
        invalidate: invalidate.clone(),
        tx: tx.stats(),
        metrics: metrics.clone(),
    };
    let health = Health::builder()
        .check(Check::required("sqlite", PoolCheck::new(pool)))
        .check(Check::optional("latency", {
            let metrics = metrics.clone();
            stats_check(move || metrics.report())
        }))
        .interval(Duration::from_secs(10))
        .timeout(Duration::from_secs(1))
        .build()?;
    let dashboard = Dashboard::new()
        .title("tower-strata quickstart")
        .metrics(metrics.clone())
        .cache(cache.stats())
        .store(store)
        .purger(purger.clone())
        .invalidate(invalidate.clone())
        .tx(tx.stats())
        .health(health.clone());
    let router = Router::new()
        .route("/products", get(list_products))
        .route("/products/{id}", get(get_product).put(update_product))
        .route("/orders", post(place_order))
        // Gives the purge endpoint a route, so the stack below sees its requests.
        .route("/_cache/purge", post(|| async { StatusCode::NOT_FOUND }))
        // One stack, outermost first.
        .layer(
            ServiceBuilder::new()
                .layer(MetricsLayer::new(metrics))
                .layer(PurgeLayer::new(urls, BearerToken::new(purge_token)?))
                .layer(cache)
                .layer(tx)
                .layer(invalidate),
        )
        .route(
            "/stats",
            get(|State(figures): State<Figures>| async move { Json(figures.json()) }),
        )
        .with_state(figures.clone())
        .merge(health.router())
        // The page at `/dashboard`, its JSON at `/dashboard/data`.
        .nest_service("/dashboard", dashboard.clone());
    Ok(Shop {
        router,
        figures,
        health,
        dashboard,
    })
}

/// A small shop with every tower-strata layer stacked, on SQLite and the in-memory store.
#[derive(clap::Parser)]
struct Args {
    /// The address to serve on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Send a tour of requests in-process, print each answer's cache status and the figures,
    /// and exit.
    #[arg(long)]
    demo: bool,
    /// A SQLite database file (default: in memory).
    #[arg(long, value_name = "SQLITE_FILE")]
    db: Option<String>,
    /// The purge endpoint's bearer token (default: a random one).
    #[arg(long, value_name = "TOKEN")]
    purge_token: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = <Args as clap::Parser>::parse();
    let token = args
        .purge_token
        .clone()
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let pool = open_database(args.db.as_deref()).await?;
    let shop = shop(pool, &token)?;
    if args.demo {
        run_demo(shop, &token).await?;
        println!();
        println!(
            "dashboard: run `cargo run --example quickstart -- --listen {}` and open http://{}/dashboard",
            args.listen, args.listen
        );
        return Ok(());
    }
    let scrape = prometheus::install()?;
    let _checks = shop.health.spawn();
    let _samples = shop.dashboard.spawn();
    let app = shop
        .router
        .route("/metrics", get(move || std::future::ready(scrape.render())));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let json = "-H 'content-type: application/json'";
    println!("tower-strata quickstart listening on http://{addr}");
    println!("dashboard: http://{addr}/dashboard (JSON at http://{addr}/dashboard/data)");
    println!("try:");
    println!("  curl -si http://{addr}/products/1     # miss: read from SQLite (see Cache-Status)");
    println!("  curl -si http://{addr}/products/1     # hit: served from the cache");
    println!(
        "  curl -s -X PUT http://{addr}/products/1 {json} -d '{{\"price_cents\":2999}}'   # commits, then purges"
    );
    println!("  curl -si http://{addr}/products/1     # miss again, with the new price");
    println!(
        "  curl -s -X POST http://{addr}/orders {json} -d '{{\"product_id\":2,\"quantity\":5}}'   # 409: rolled back"
    );
    println!(
        "  curl -s -X POST http://{addr}/_cache/purge -H 'authorization: Bearer {token}' {json} -d '{{\"tags\":[\"products\"]}}'"
    );
    println!("  curl -s -X PURGE http://{addr}/products/3 -H 'authorization: Bearer {token}'");
    println!("  curl -s http://{addr}/stats          # cache, purges, transactions, latency");
    println!("  curl -s http://{addr}/metrics        # Prometheus, per route template");
    println!("  curl -s http://{addr}/health/ready   # readiness");
    println!(
        "  open http://{addr}/dashboard          # latency, hit ratio, purges, transactions, health"
    );
    axum::serve(listener, app).await?;
    Ok(())
}

/// Sends requests through the service in-process and prints what happened.
async fn run_demo(shop: Shop, token: &str) -> Result<(), Box<dyn std::error::Error>> {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    struct Answer {
        status: StatusCode,
        cache: String,
        body: serde_json::Value,
        millis: f64,
    }
    async fn call(app: &Router, method: &str, uri: &str, auth: Option<&str>, body: &str) -> Answer {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(token) = auth {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Body::from(body.to_owned()))
            .expect("a valid request");
        let started = Instant::now();
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let cache = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .map_or("-".to_owned(), |s| {
                if s.contains("hit") && !s.contains("fwd=") {
                    "hit".to_owned()
                } else if s.contains("fwd=stale") {
                    "stale".to_owned()
                } else if s.contains("fwd=") {
                    "miss".to_owned()
                } else {
                    "-".to_owned()
                }
            });
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        // The cache stores a response once its body has streamed, in the background: give it
        // a moment so the next line shows a plain hit.
        tokio::time::sleep(Duration::from_millis(5)).await;
        Answer {
            status,
            cache,
            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            millis,
        }
    }

    let app = &shop.router;
    println!(
        "{:<46} {:>6} {:<6} {:>8}  answer",
        "request", "status", "cache", "ms"
    );
    let row = |label: &str, a: &Answer, note: String| {
        println!(
            "{:<46} {:>6} {:<6} {:>8.2}  {}",
            label,
            a.status.as_u16(),
            a.cache,
            a.millis,
            note
        );
    };
    let price = |a: &Answer| format!("price {}", a.body["price_cents"]);
    for _ in 0..2 {
        let a = call(app, "GET", "/products/1", None, "").await;
        row("GET /products/1", &a, price(&a));
    }
    let a = call(app, "GET", "/products", None, "").await;
    row("GET /products", &a, String::new());
    let a = call(app, "PUT", "/products/1", None, r#"{"price_cents":2999}"#).await;
    row(
        "PUT /products/1 {price_cents: 2999}",
        &a,
        "committed, then purged".into(),
    );
    for _ in 0..2 {
        let a = call(app, "GET", "/products/1", None, "").await;
        row("GET /products/1", &a, price(&a));
    }
    let a = call(app, "GET", "/products/2", None, "").await;
    row("GET /products/2", &a, format!("stock {}", a.body["stock"]));
    let a = call(
        app,
        "POST",
        "/orders",
        None,
        r#"{"product_id":2,"quantity":5}"#,
    )
    .await;
    row(
        "POST /orders {product 2, quantity 5}",
        &a,
        format!("{}", a.body["error"]),
    );
    let a = call(app, "GET", "/products/2", None, "").await;
    row("GET /products/2", &a, "rolled back: nothing purged".into());
    let a = call(
        app,
        "POST",
        "/orders",
        None,
        r#"{"product_id":2,"quantity":2}"#,
    )
    .await;
    row(
        "POST /orders {product 2, quantity 2}",
        &a,
        format!("stock left {}", a.body["stock_left"]),
    );
    let a = call(app, "GET", "/products/2", None, "").await;
    row("GET /products/2", &a, format!("stock {}", a.body["stock"]));
    let purge = r#"{"tags":["products"]}"#;
    let a = call(app, "POST", "/_cache/purge", None, purge).await;
    row(
        "POST /_cache/purge (no token)",
        &a,
        "refused, nothing purged".into(),
    );
    let a = call(app, "POST", "/_cache/purge", Some(token), purge).await;
    row(
        "POST /_cache/purge {tags: [products]}",
        &a,
        format!("{}", a.body),
    );
    let a = call(app, "GET", "/products/3", None, "").await;
    row("GET /products/3", &a, String::new());
    let a = call(app, "PURGE", "/products/3", Some(token), "").await;
    row("PURGE /products/3", &a, format!("{}", a.body));
    let a = call(app, "GET", "/products/3", None, "").await;
    row("GET /products/3", &a, String::new());

    // Concurrent misses on one key go upstream once.
    let started = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let app = app.clone();
            let uri = if i % 2 == 0 {
                "/products"
            } else {
                "/products/2"
            };
            tokio::spawn(async move { call(&app, "GET", uri, None, "").await.cache })
        })
        .collect();
    let mut hits = 0;
    for task in tasks {
        if task.await? == "hit" {
            hits += 1;
        }
    }
    println!(
        "{:<46} {hits} of 200 served from the cache in {:.1} ms",
        "200 x GET at once (/products, /products/2)",
        started.elapsed().as_secs_f64() * 1000.0
    );

    let f = shop.figures.json();
    println!();
    println!("{:<28} {:>10}", "figure", "value");
    let line = |name: &str, v: &serde_json::Value| println!("{name:<28} {v:>10}");
    line("cache hits", &f["cache"]["hits"]);
    line("cache misses", &f["cache"]["misses"]);
    line("coalesced misses", &f["cache"]["coalesced"]);
    line(
        "purges (tags, keys, urls)",
        &serde_json::json!(
            f["purges"]["tag_purges"].as_u64().unwrap_or(0)
                + f["purges"]["key_purges"].as_u64().unwrap_or(0)
                + f["purges"]["pattern_purges"].as_u64().unwrap_or(0)
        ),
    );
    line("entries purged", &f["purges"]["entries_purged"]);
    line(
        "invalidation rule firings",
        &f["invalidation"]["rule_firings"],
    );
    line("transactions committed", &f["transactions"]["committed"]);
    line(
        "transactions rolled back",
        &f["transactions"]["rolled_back"],
    );
    println!();
    println!(
        "{:<8} {:<20} {:>6} {:>9} {:>9}",
        "method", "route", "count", "p50 ms", "p99 ms"
    );
    for r in f["routes"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:<20} {:>6} {:>9.2} {:>9.2}",
            r["method"].as_str().unwrap_or("-"),
            r["route"].as_str().unwrap_or("-"),
            r["count"],
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
