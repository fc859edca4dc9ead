//! The shop: every tower-strata layer stacked on one axum service over PostgreSQL and Redis.
//!
//! ```text
//! cargo run --example shop --features postgres,redis,memory,axum,metrics,health,dashboard -- --listen 127.0.0.1:3000
//! ```
//!
//! `--stack metrics-only` serves the same API as the baseline of the load run (the metrics
//! layer only: no cache, handlers open their own transactions); `--stack full` is the default.
//!
//! Reads `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`), `REDIS_URL`
//! (default `redis://127.0.0.1:6379`), and optionally `SHOP_SCHEMA` (default `shop`),
//! `SHOP_PRODUCTS` (products seeded into an empty table, default 1000) and `CURSOR_KEY` (at
//! least 32 bytes; signs pagination cursors, random per process when unset) and `PURGE_TOKEN`
//! (puts a `PurgeLayer` in front of the cache: `POST /admin/purge` with a `PurgeRequest` JSON
//! body and `PURGE <url>`, both with `Authorization: Bearer <token>`; `401` without it, `403`
//! with a wrong one; the same token guards the dashboard, which is open without it).
//!
//! - `GET /products?limit=&sort=id|price|name|-price..&cursor=` keyset pages; `GET
//!   /products/{id}`; `POST /products`, `PUT`/`PATCH`/`DELETE /products/{id}`.
//! - `POST /orders {"product_id":1,"quantity":2}` takes the stock in one transaction (`409`
//!   and rollback when it is short).
//! - `GET /admin/dashboard` (with `PURGE_TOKEN` set, it is the bearer token): the live dashboard page
//!   (`tower_strata::dashboard`); `GET /admin/dashboard/data`: its JSON, the health report,
//!   cache, store, purge, transaction and latency figures. Open it in a browser through a proxy
//!   that adds the header, or read the JSON with curl.
//! - `GET /metrics` (Prometheus), `GET /health`, `GET /health/ready`.
//!
//! The layers, outermost first, in one `ServiceBuilder`: metrics, the purge endpoint (with
//! `PURGE_TOKEN`), the response cache on a tiered store (memory + Redis, namespace `shop`), a
//! transaction per request, and the invalidation rules: writes purge the tags `product:{id}`
//! and `products` after commit (see `app.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use tower_strata::db::CursorKey;
use tower_strata::metrics::MetricsRegistry;
use tower_strata::store::{MemoryStore, RedisStore, TieredStore};

#[allow(dead_code)] // the tests and the load run use the rest
mod app;
mod cli;
#[path = "../support/prometheus.rs"]
mod prometheus;

fn print_tour(addr: SocketAddr, stack: app::Stack, token: bool) {
    let base = format!("http://{addr}");
    // The purge endpoint stands in front of the cache: the baseline has neither.
    let purge = if stack == app::Stack::Full {
        format!(
            "\n  curl -s -X POST {base}/admin/purge -H \"authorization: Bearer $PURGE_TOKEN\" -H 'content-type: application/json' -d '{{\"tags\":[\"products\"]}}'  # purge by tag\
             \n  curl -s -X PURGE {base}/products/1 -H \"authorization: Bearer $PURGE_TOKEN\"  # purge a URL: the next GET is a miss\
             \n  curl -i -X PURGE {base}/products/1  # 401 without the token, 403 with a wrong one"
        )
    } else {
        String::new()
    };
    let purge = if token {
        format!(
            "{purge}\
             \n  curl -s {base}/admin/dashboard/data -H \"authorization: Bearer $PURGE_TOKEN\"  # the dashboard's JSON\
             \n  # the dashboard page: {base}/admin/dashboard (bearer token required)"
        )
    } else {
        format!(
            "\n  curl -s {base}/admin/dashboard/data  # the dashboard's JSON (open: set PURGE_TOKEN to guard it)\
             \n  # the dashboard page: {base}/admin/dashboard"
        )
    };
    println!(
        r#"shop listening on {base} ({stack:?} stack); try:

  curl -i {base}/products/1                      # miss, then run it again: hit (Cache-Status)
  curl -s '{base}/products?limit=5&sort=-price'  # a keyset page; pass its next_cursor as &cursor=
  curl -i -X PATCH {base}/products/1 -H 'content-type: application/json' -d '{{"price_cents":999}}'
  curl -i {base}/products/1                      # purged after commit: a miss with the new price
  curl -i -X POST {base}/orders -H 'content-type: application/json' -d '{{"product_id":1,"quantity":2}}'
  curl -i -X POST {base}/orders -H 'content-type: application/json' -d '{{"product_id":1,"quantity":1000000}}'  # 409, rolled back{purge}
  curl -s {base}/metrics | grep http_server_request_duration_count
  curl -s {base}/health/ready
"#
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = <cli::Args as clap::Parser>::parse();
    let stack = app::Stack::from(args.stack);
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let database_url = env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let redis_url = env("REDIS_URL", "redis://127.0.0.1:6379");
    let schema = env("SHOP_SCHEMA", "shop");
    let seed_products: u32 = env("SHOP_PRODUCTS", "1000")
        .parse()
        .map_err(|e| format!("SHOP_PRODUCTS: {e}"))?;
    let cursor_key = match std::env::var("CURSOR_KEY") {
        Ok(key) => CursorKey::new(key.into_bytes()).map_err(|e| format!("CURSOR_KEY: {e}"))?,
        Err(_) => CursorKey::random(),
    };

    let scrape = prometheus::install().map_err(|e| e.to_string())?;
    let options: PgConnectOptions = database_url.parse()?;
    let options = tower_strata::tx::log_slow_statements(options, Duration::from_millis(200));
    let pool = app::pool_builder().connect_with(options).await?;
    // Redis is connected lazily: a Redis that is down shows in /health/ready, not here.
    let l2 = RedisStore::builder(&redis_url).namespace("shop").build()?;
    let store = TieredStore::builder(MemoryStore::new(64 << 20), l2).build()?;

    let mut config = app::ShopConfig::new(pool, store);
    config.schema = schema;
    config.seed_products = seed_products;
    config.cursor_key = cursor_key;
    config.stack = stack;
    config.registry = MetricsRegistry::builder()
        .slow_threshold(Some(Duration::from_millis(250)))
        .build()?;
    config.metrics_text = Some(Arc::new(move || scrape.render()));
    config.purge_token = std::env::var("PURGE_TOKEN").ok().filter(|t| !t.is_empty());
    let purge = config.purge_token.is_some();
    let shop = app::build(config).await?;

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    print_tour(listener.local_addr()?, stack, purge);
    // With the peer address in the request extensions, purges are logged with who sent them.
    let app = shop
        .router
        .clone()
        .into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await?;
    Ok(())
}
