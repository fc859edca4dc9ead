//! The shop stack end to end over real PostgreSQL and Redis: metrics, cache on the tiered store,
//! a transaction per request and purges after commit, composed as `examples/shop` composes them.
//!
//! Each test has its own PostgreSQL schema and its own Redis namespace (or its own redis-server).
#![cfg(all(
    feature = "postgres",
    feature = "redis",
    feature = "memory",
    feature = "axum",
    feature = "metrics",
    feature = "health",
    feature = "dashboard"
))]

mod support;

#[allow(dead_code)] // the example and the load run use the rest
#[path = "../examples/shop/app.rs"]
mod app;
#[path = "../examples/shop/cli.rs"]
mod cli;
#[allow(dead_code)] // the load run uses the rest
#[path = "support/pg_proxy.rs"]
mod pg_proxy;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};
use tower::ServiceExt;
use tower_strata::store::{MemoryStore, RedisStore, TieredStore};

use app::{Shop, ShopConfig, Stack};
use support::{PrivateRedis, eventually, redis_url, unique};

fn pg_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

struct Fixture {
    shop: Shop,
    pool: PgPool,
    schema: String,
}

async fn fixture(stack: Stack, redis: &str, tweak: impl FnOnce(&mut ShopConfig)) -> Fixture {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&pg_url())
        .await
        .expect("PostgreSQL at DATABASE_URL");
    fixture_on(pool, stack, redis, tweak).await
}

async fn fixture_on(
    pool: PgPool,
    stack: Stack,
    redis: &str,
    tweak: impl FnOnce(&mut ShopConfig),
) -> Fixture {
    let l2 = RedisStore::builder(redis)
        .namespace(unique("shop"))
        .build()
        .unwrap();
    let store = TieredStore::builder(MemoryStore::new(16 << 20), l2)
        .build()
        .unwrap();
    let schema = unique("shop");
    let mut config = ShopConfig::new(pool.clone(), store);
    config.schema = schema.clone();
    config.seed_products = 20;
    config.seed_stock = 10;
    config.stack = stack;
    config.health_interval = Duration::from_millis(200);
    tweak(&mut config);
    let shop = app::build(config).await.expect("the shop builds");
    Fixture { shop, pool, schema }
}

impl Fixture {
    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://shop.test{uri}"));
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        // Writes that landed, or that failed (with Redis gone a tiered store keeps the write in
        // L1 and says it did not reach Redis).
        let stores = self
            .shop
            .cache
            .as_ref()
            .map(|c| c.stores() + c.store_errors());
        let response = self
            .shop
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let reply = Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
        };
        // A miss is written to the store once its body has streamed; wait for the write (or
        // its failure) so the next request sees it.
        if let (Some(before), Some(cache)) = (stores, &self.shop.cache)
            && reply.cache_status().contains("stored")
        {
            let stored = eventually(Duration::from_secs(5), || {
                let now = cache.stores() + cache.store_errors();
                async move { now > before }
            })
            .await;
            assert!(stored.is_some(), "the miss was never stored");
        }
        reply
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None).await
    }

    async fn db_product(&self, id: i64) -> (i64, i64) {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT price_cents, stock FROM {} WHERE id = $1",
            self.shop.products_table
        )))
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn orders(&self) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            self.shop.orders_table
        )))
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn drop_schema(self) {
        let schema = self.schema.clone();
        let pool = self.pool.clone();
        drop(self.shop);
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
            .execute(&pool)
            .await
            .unwrap();
    }
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    fn is_hit(&self) -> bool {
        self.cache_status().starts_with("tower-strata; hit")
    }
    fn is_miss(&self) -> bool {
        self.cache_status().starts_with("tower-strata; fwd=miss")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_read_is_a_miss_then_a_hit() {
    let f = fixture(Stack::Full, &redis_url(), |_| {}).await;
    let first = f.get("/products/3").await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.is_miss(), "{}", first.cache_status());
    assert_eq!(first.headers["cache-control"], "public, max-age=60");
    // The tags were read by the cache and stripped before the response left.
    assert!(!first.headers.contains_key(app::TAG_HEADER));
    assert_eq!(first.body["id"], 3);

    let second = f.get("/products/3").await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!(second.body, first.body);
    let cache = f.shop.cache.clone().unwrap();
    assert_eq!((cache.misses(), cache.hits()), (1, 1));
    // The hit never reached the database: one read, for the miss, and a GET runs without a
    // transaction.
    let tx = f.shop.tx.as_ref().unwrap().snapshot();
    assert_eq!((tx.autocommit, tx.begun), (1, 0));

    // Keyset pages are cached per cursor, and walk the whole table.
    let page = f.get("/products?limit=15&sort=price").await;
    assert!(page.is_miss());
    assert_eq!(page.body["items"].as_array().unwrap().len(), 15);
    let cursor = page.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = f
        .get(&format!("/products?limit=15&sort=price&cursor={cursor}"))
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 5);
    assert!(f.get("/products?limit=15&sort=price").await.is_hit());
    let forged = f.get("/products?limit=15&cursor=AAAA").await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    f.drop_schema().await;
}

/// The contract of the acceptance checks: `shop --listen ADDR --stack metrics-only` parses to
/// the baseline, which serves a product over HTTP without a cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_only_stack_from_the_command_line_serves_a_product() {
    let parse = |args: &[&str]| <cli::Args as clap::Parser>::try_parse_from(args);
    assert_eq!(Stack::from(parse(&["shop"]).unwrap().stack), Stack::Full);
    assert!(parse(&["shop", "--stack", "everything"]).is_err());
    let args = parse(&["shop", "--listen", "127.0.0.1:0", "--stack", "metrics-only"]).unwrap();
    assert_eq!(Stack::from(args.stack), Stack::MetricsOnly);

    let f = fixture(Stack::from(args.stack), &redis_url(), |_| {}).await;
    let listener = tokio::net::TcpListener::bind(args.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = f.shop.router.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Body>();
    for _ in 0..2 {
        let uri = format!("http://{addr}/products/1");
        let response = client.get(uri.parse().unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // No cache: every read goes to the database, and says nothing of a cache.
        assert!(!response.headers().contains_key("cache-status"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let product: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(product["id"], 1);
    }
    assert!(f.shop.cache.is_none() && f.shop.tx.is_none());
    server.abort();
    f.drop_schema().await;
}

/// With the shop's pool settings a `GET /products/{id}` that misses the cache waits for one
/// database round trip: one execute of a statement prepared once per connection, no ping at
/// checkout, no `BEGIN`/`COMMIT`; in the full stack and in the baseline. A hit costs none.
/// sqlx 0.9 then pings the connection as it goes back to the pool, after the handler let it go:
/// that round trip is counted, and the response does not wait for it. Counted at a proxy in
/// front of PostgreSQL that holds each answer for 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_miss_waits_for_one_database_round_trip_and_a_hit_for_none() {
    const DELAY: Duration = Duration::from_millis(100);
    for stack in [Stack::Full, Stack::MetricsOnly] {
        let (proxy, options) = pg_proxy::PgProxy::in_front_of(&pg_url(), DELAY)
            .await
            .unwrap();
        let pool: PgPool = app::pool_builder().connect_with(options).await.unwrap();
        let f = fixture_on(pool.clone(), stack, &redis_url(), |c| {
            c.health_interval = Duration::from_secs(3600);
        })
        .await;
        let settled = || {
            let pool = pool.clone();
            async move {
                // The preset keeps two connections open, and every connection is back.
                let idle = eventually(Duration::from_secs(10), || {
                    let (size, idle) = (pool.size(), pool.num_idle());
                    async move { size >= 2 && idle == size as usize }
                })
                .await;
                assert!(idle.is_some(), "the pool never settled");
            }
        };
        settled().await;
        // Each connection prepares the statement on its first use: one more round trip.
        for id in 1..=4 {
            assert_eq!(
                f.get(&format!("/products/{id}")).await.status,
                StatusCode::OK
            );
        }
        for id in 5..=8 {
            settled().await;
            let before = proxy.exchanges();
            let started = std::time::Instant::now();
            let reply = f.get(&format!("/products/{id}")).await;
            let took = started.elapsed();
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body["id"], id);
            assert_eq!(reply.is_miss(), stack == Stack::Full, "{stack:?}");
            assert!(
                took >= DELAY && took < 2 * DELAY,
                "{stack:?}: GET /products/{id} took {took:?}, not one round trip"
            );
            settled().await;
            let cost = proxy.exchanges() - before;
            let one_execute_then_the_release_ping = pg_proxy::Exchanges {
                executes: 1,
                pings: 1,
                ..Default::default()
            };
            assert_eq!(
                cost, one_execute_then_the_release_ping,
                "{stack:?}: GET /products/{id}"
            );
        }
        if stack == Stack::Full {
            let before = proxy.exchanges();
            let started = std::time::Instant::now();
            assert!(f.get("/products/5").await.is_hit());
            assert!(started.elapsed() < DELAY);
            assert_eq!((proxy.exchanges() - before).total(), 0);
        }
        f.drop_schema().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_commits_purges_and_the_next_read_misses_with_the_new_value() {
    let f = fixture(Stack::Full, &redis_url(), |_| {}).await;
    f.get("/products/4").await;
    assert!(f.get("/products/4").await.is_hit());
    f.get("/products?limit=5").await;
    assert!(f.get("/products?limit=5").await.is_hit());

    let patched = f
        .call(
            Method::PATCH,
            "/products/4",
            Some(json!({ "price_cents": 12345 })),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(patched.body["price_cents"], 12345);
    assert_eq!(f.db_product(4).await.0, 12345, "committed");
    let purges = f.shop.purger.stats();
    assert_eq!(purges.tag_purges, 2, "product:4 and products");
    assert_eq!(purges.failures, 0);

    let item = f.get("/products/4").await;
    assert!(item.is_miss(), "{}", item.cache_status());
    assert_eq!(item.body["price_cents"], 12345);
    // The list page lives under another URI: only the `products` tag purge reaches it.
    let page = f.get("/products?limit=5").await;
    assert!(page.is_miss(), "{}", page.cache_status());
    assert_eq!(page.body["items"][3]["price_cents"], 12345);

    // PUT, POST and DELETE purge too.
    let put = f
        .call(
            Method::PUT,
            "/products/4",
            Some(json!({ "name": "Renamed", "price_cents": 1, "stock": 3 })),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(f.get("/products/4").await.body["name"], "Renamed");
    let created = f
        .call(
            Method::POST,
            "/products",
            Some(json!({ "name": "New", "price_cents": 5, "stock": 1 })),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.headers["location"], "/products/21");
    let deleted = f.call(Method::DELETE, "/products/4", None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(f.get("/products/4").await.status, StatusCode::NOT_FOUND);
    let bad = f
        .call(
            Method::PATCH,
            "/products/5",
            Some(json!({ "price_cents": -1 })),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    f.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_short_of_stock_rolls_back_and_purges_nothing() {
    let f = fixture(Stack::Full, &redis_url(), |_| {}).await;
    // A placed order takes the stock and purges the product.
    f.get("/products/5").await;
    let placed = f
        .call(
            Method::POST,
            "/orders",
            Some(json!({ "product_id": 5, "quantity": 4 })),
        )
        .await;
    assert_eq!(placed.status, StatusCode::CREATED, "{:?}", placed.body);
    assert_eq!(placed.body["stock_left"], 6);
    let read = f.get("/products/5").await;
    assert!(read.is_miss());
    assert_eq!(read.body["stock"], 6);
    assert!(f.get("/products/5").await.is_hit());

    let purges = f.shop.purger.stats();
    let tx = f.shop.tx.as_ref().unwrap().snapshot();
    let orders = f.orders().await;
    let short = f
        .call(
            Method::POST,
            "/orders",
            Some(json!({ "product_id": 5, "quantity": 7 })),
        )
        .await;
    assert_eq!(short.status, StatusCode::CONFLICT);
    assert_eq!(short.body["error"], "insufficient stock");
    // Rolled back: the order row written before the stock check is gone, the stock unchanged.
    assert_eq!(f.db_product(5).await.1, 6);
    assert_eq!(f.orders().await, orders);
    let after = f.shop.tx.as_ref().unwrap().snapshot();
    assert_eq!(after.rolled_back, tx.rolled_back + 1);
    assert_eq!(after.committed, tx.committed);
    // Nothing purged: the product is still a hit.
    assert_eq!(f.shop.purger.stats(), purges);
    let still = f.get("/products/5").await;
    assert!(still.is_hit(), "{}", still.cache_status());
    assert_eq!(still.body["stock"], 6);

    let unknown = f
        .call(
            Method::POST,
            "/orders",
            Some(json!({ "product_id": 999, "quantity": 1 })),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let zero = f
        .call(
            Method::POST,
            "/orders",
            Some(json!({ "product_id": 5, "quantity": 0 })),
        )
        .await;
    assert_eq!(zero.status, StatusCode::BAD_REQUEST);
    f.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_racing_for_the_last_units_never_oversell() {
    let f = Arc::new(fixture(Stack::Full, &redis_url(), |_| {}).await);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move {
                f.call(
                    Method::POST,
                    "/orders",
                    Some(json!({ "product_id": 8, "quantity": 1 })),
                )
                .await
                .status
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 10, "stock was 10");
    assert_eq!(f.db_product(8).await.1, 0);
    assert_eq!(f.orders().await, 10);
    assert_eq!(f.get("/products/8").await.body["stock"], 0);
    Arc::into_inner(f).unwrap().drop_schema().await;
}

fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
        handle
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_route_templates_and_health_is_ready() {
    let scrape = prometheus();
    let f = fixture(Stack::Full, &redis_url(), |c| {
        c.metrics_text = Some(Arc::new(|| prometheus().render()));
        c.purge_token = Some("0p3rator".into());
    })
    .await;
    for id in [7, 7, 9] {
        assert_eq!(
            f.get(&format!("/products/{id}")).await.status,
            StatusCode::OK
        );
    }
    f.call(Method::PATCH, "/products/9", Some(json!({ "stock": 1 })))
        .await;
    let routes = f.shop.registry.routes();
    assert!(routes.iter().any(|r| r == "/products/{id}"), "{routes:?}");
    assert!(
        !routes.iter().any(|r| r.contains("/products/7")),
        "{routes:?}"
    );
    let text = f.get("/metrics").await.body;
    let text = text.as_str().unwrap();
    assert!(text.contains(r#"http_route="/products/{id}""#), "{text}");
    assert!(!text.contains("/products/7"));
    assert!(
        !text.contains(r#"http_route="/metrics""#),
        "/metrics is excluded"
    );
    let _ = scrape;

    let ready = f.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["status"], "healthy", "{:#}", ready.body);
    for check in ["postgres", "redis", "cache", "transactions", "latency"] {
        let found = ready.body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == check)
            .unwrap_or_else(|| panic!("no {check} check"));
        assert_eq!(found["status"], "healthy", "{found:#}");
    }
    assert_eq!(f.get("/health").await.status, StatusCode::OK);

    // The dashboard: behind the purge token, the page at `/admin/dashboard`, the JSON the
    // shop used to serve there at `/admin/dashboard/data`.
    assert_eq!(
        f.get("/admin/dashboard").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        f.get("/admin/dashboard/data").await.status,
        StatusCode::UNAUTHORIZED
    );
    let operator = |uri: &'static str| {
        let request = Request::get(uri)
            .header("authorization", "Bearer 0p3rator")
            .body(Body::empty())
            .unwrap();
        let router = f.shop.router.clone();
        async move {
            let response = router.oneshot(request).await.unwrap();
            let (parts, body) = response.into_parts();
            (parts, body.collect().await.unwrap().to_bytes())
        }
    };
    let (page, html) = operator("/admin/dashboard").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(html.starts_with(b"<!doctype html>"));
    let (data, json) = operator("/admin/dashboard/data").await;
    assert_eq!(data.status, StatusCode::OK);
    assert_eq!(data.headers["cache-control"], "no-store");
    let dashboard: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(dashboard["version"], 1);
    assert_eq!(dashboard["cache"]["hits"], 1);
    assert_eq!(dashboard["purge"]["tag_purges"], 2);
    // Two misses read without a transaction, the PATCH committed one.
    assert!(dashboard["transactions"]["autocommit"].as_u64().unwrap() >= 2);
    assert!(dashboard["transactions"]["committed"].as_u64().unwrap() >= 1);
    assert_eq!(dashboard["health"]["status"], "healthy");
    assert!(
        dashboard["store"]["tiers"]["l1"].is_object(),
        "{dashboard:#}"
    );
    let routes = dashboard["latency"]["routes"].as_array().unwrap();
    assert!(
        routes.iter().any(|r| r["route"] == "/products/{id}"),
        "{routes:?}"
    );
    // The dashboard's own requests are neither measured nor cached.
    assert!(!f.shop.registry.routes().iter().any(|r| r.contains("admin")));
    let (_, again) = operator("/admin/dashboard/data").await;
    let again: Value = serde_json::from_slice(&again).unwrap();
    assert_eq!(again["cache"]["hits"], 1);
    f.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_degrades_health_but_not_correctness() {
    let mut redis = PrivateRedis::start();
    let f = fixture(Stack::Full, &redis.url(), |_| {}).await;
    f.get("/products/2").await;
    assert!(f.get("/products/2").await.is_hit());
    assert_eq!(
        f.shop.health.check_now().await.status,
        tower_strata::health::Status::Healthy
    );

    redis.kill();
    let report = f.shop.health.check_now().await;
    assert_eq!(report.status, tower_strata::health::Status::Degraded);
    let ready = f.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK, "degraded is still ready");
    assert_eq!(ready.body["status"], "degraded");

    // Reads stay right: from L1 or from PostgreSQL.
    let cached = f.get("/products/2").await;
    assert_eq!(cached.status, StatusCode::OK);
    assert_eq!(cached.body["id"], 2);
    let fresh = f.get("/products/11").await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(fresh.body["id"], 11);
    // Writes commit, and their purge still reaches this instance's L1.
    let patched = f
        .call(
            Method::PATCH,
            "/products/2",
            Some(json!({ "price_cents": 4242 })),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(f.db_product(2).await.0, 4242);
    let read = f.get("/products/2").await;
    assert_eq!(read.body["price_cents"], 4242, "{}", read.cache_status());
    let ordered = f
        .call(
            Method::POST,
            "/orders",
            Some(json!({ "product_id": 2, "quantity": 1 })),
        )
        .await;
    assert_eq!(ordered.status, StatusCode::CREATED);
    assert_eq!(f.get("/products/2").await.body["stock"], 9);
    f.drop_schema().await;
}

/// Holds every COMMIT that updated a product until the returned connection unlocks `key`: a
/// deferred constraint trigger takes the advisory lock at commit time.
async fn hold_commits(f: &Fixture, key: i64) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let schema = &f.schema;
    for statement in [
        format!(
            "CREATE FUNCTION \"{schema}\".hold_commit() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_advisory_xact_lock({key}); RETURN NULL; END $$"
        ),
        format!(
            "CREATE CONSTRAINT TRIGGER hold_commit AFTER UPDATE ON {} DEFERRABLE INITIALLY
             DEFERRED FOR EACH ROW EXECUTE FUNCTION \"{schema}\".hold_commit()",
            f.shop.products_table
        ),
    ] {
        sqlx::query(AssertSqlSafe(statement))
            .execute(&f.pool)
            .await
            .unwrap();
    }
    let mut locker = f.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut *locker)
        .await
        .unwrap();
    locker
}

/// What a read sees while an update of the product waits in COMMIT, and after it committed.
struct CommitWindow {
    during: Reply,
    after: Reply,
}

async fn read_around_a_commit(f: &Fixture) -> CommitWindow {
    let id = 6;
    let old = f.db_product(id).await.0;
    f.get(&format!("/products/{id}")).await;
    assert!(f.get(&format!("/products/{id}")).await.is_hit());
    let key = i64::from(rand::random::<u32>() >> 1);
    let mut locker = hold_commits(f, key).await;

    let writer = {
        let router = f.shop.router.clone();
        tokio::spawn(async move {
            let req = Request::patch(format!("http://shop.test/products/{id}"))
                .header("content-type", "application/json")
                .body(Body::from(json!({ "price_cents": old + 1 }).to_string()))
                .unwrap();
            router.oneshot(req).await.unwrap().status()
        })
    };
    // Wait until the update sits in its COMMIT, waiting for the lock.
    let pool = f.pool.clone();
    let waiting = eventually(Duration::from_secs(10), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
                 AND NOT granted AND objid::text::bigint = $1)",
            )
            .bind(key)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    assert!(waiting.is_some(), "the update never reached its COMMIT");
    let during = f.get(&format!("/products/{id}")).await;
    assert_eq!(
        during.body["price_cents"], old,
        "an uncommitted write is never seen"
    );

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut *locker)
        .await
        .unwrap();
    assert_eq!(writer.await.unwrap(), StatusCode::OK);
    assert_eq!(f.db_product(id).await.0, old + 1, "committed");
    let after = f.get(&format!("/products/{id}")).await;
    CommitWindow { during, after }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_order_cache_outside_the_transaction_is_right_at_every_step() {
    let f = fixture(Stack::Full, &redis_url(), |_| {}).await;
    let window = read_around_a_commit(&f).await;
    // While the COMMIT waits, the entry still holds the committed value: a hit.
    assert!(window.during.is_hit(), "{}", window.during.cache_status());
    // After it, the entry is gone (invalidated after COMMIT): a miss with the new value.
    assert!(window.after.is_miss(), "{}", window.after.cache_status());
    let old = window.during.body["price_cents"].as_i64().unwrap();
    assert_eq!(window.after.body["price_cents"], old + 1);
    f.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_order_cache_inside_the_transaction_needs_the_after_commit_purge() {
    // Without the invalidation layer (`purge_after_commit: false`), only the cache's own RFC
    // 9111 invalidation of the PUT/PATCH URI is left, and inside the transaction layer it runs
    // BEFORE the COMMIT: a read in between misses, reads the old row and stores it, and it is
    // served after the commit.
    let f = fixture(Stack::CacheInsideTx, &redis_url(), |c| {
        c.purge_after_commit = false;
    })
    .await;
    let window = read_around_a_commit(&f).await;
    let old = window.during.body["price_cents"].as_i64().unwrap();
    assert!(window.during.is_miss(), "invalidated before the commit");
    assert!(window.after.is_hit(), "{}", window.after.cache_status());
    assert_eq!(
        window.after.body["price_cents"], old,
        "stale after the commit"
    );
    f.drop_schema().await;

    // With the `InvalidateLayer` innermost (inside the transaction layer, so its purge is
    // registered on AfterCommit), the stale copy stored during the COMMIT is purged once it is
    // done: right again.
    let f = fixture(Stack::CacheInsideTx, &redis_url(), |_| {}).await;
    let window = read_around_a_commit(&f).await;
    let old = window.during.body["price_cents"].as_i64().unwrap();
    assert!(window.during.is_miss());
    assert!(window.after.is_miss(), "{}", window.after.cache_status());
    assert_eq!(window.after.body["price_cents"], old + 1);
    f.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_endpoint_wants_its_token_and_purges_by_tag() {
    let f = fixture(Stack::Full, &redis_url(), |c| {
        c.purge_token = Some("s3cret-token".into());
    })
    .await;
    f.get("/products/12").await;
    assert!(f.get("/products/12").await.is_hit());
    let send = |method: &'static str, uri: &'static str, token: Option<&'static str>| {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://shop.test{uri}"))
            .header("content-type", "application/json");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let body = if method == "POST" {
            Body::from(json!({ "tags": ["product:12"] }).to_string())
        } else {
            Body::empty()
        };
        let req = req.body(body).unwrap();
        let router = f.shop.router.clone();
        async move {
            let response = router.oneshot(req).await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            // Some answers (a 405) have no body.
            let body = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
            (status, headers, body)
        }
    };
    let purge = |token| send("POST", "/admin/purge", token);
    // The `PurgeLayer` answers: 401 without credentials, 403 with the wrong token.
    let (status, headers, _) = purge(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key("www-authenticate"));
    let (status, _, body) = purge(Some("s3cret-tokem")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        f.get("/products/12").await.is_hit(),
        "refused purges purge nothing"
    );
    let (status, _, report) = purge(Some("s3cret-token")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["tags"], 1, "{report}");
    assert!(f.get("/products/12").await.is_miss());
    // The purge went through the shop's purger, as the invalidation layer's purges do.
    assert_eq!(f.shop.purger.stats().tag_purges, 1);
    // Only POST is the purge endpoint; the route exists so the layer sees the path.
    let (status, _, _) = send("GET", "/admin/purge", Some("s3cret-token")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // `PURGE <url>`: that URL's entry, and only with the token.
    assert!(f.get("/products/12").await.is_hit());
    f.get("/products/13").await;
    assert!(f.get("/products/13").await.is_hit());
    let (status, _, _) = send("PURGE", "/products/12", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = send("PURGE", "/products/12", Some("s3cret-tokem")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        f.get("/products/12").await.is_hit(),
        "refused: still cached"
    );
    let (status, _, answer) = send("PURGE", "/products/12", Some("s3cret-token")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["purged"].as_u64().unwrap() >= 1, "{answer}");
    let next = f.get("/products/12").await;
    assert!(next.is_miss(), "{}", next.cache_status());
    assert!(
        f.get("/products/13").await.is_hit(),
        "another URL is untouched"
    );
    f.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_there_is_no_purge_endpoint() {
    let f = fixture(Stack::Full, &redis_url(), |_| {}).await;
    let response = f
        .call(Method::POST, "/admin/purge", Some(json!({ "all": true })))
        .await;
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    // The dashboard stays where it always was, open as it always was without a token.
    assert_eq!(f.get("/admin/dashboard").await.status, StatusCode::OK);
    assert_eq!(f.get("/admin/dashboard/data").await.status, StatusCode::OK);
    // Nor a `PURGE` method: it goes to the router, which has no such method.
    f.get("/products/1").await;
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let response = f.call(purge, "/products/1", None).await;
    assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(f.get("/products/1").await.is_hit());
    f.drop_schema().await;
}
