//! Drives what the observability suites look at: Redis and memory store calls, a tiered
//! store, purges of each kind, a transaction that is replayed once after a serialization
//! failure, a rolled-back one, and a warming run. Each call uses its own Redis namespace and
//! no table, so suites run in parallel.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{redis_url, unique};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use sqlx::Postgres;
use sqlx::postgres::PgPoolOptions;
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::purge::Purger;
use tower_strata::store::{MemoryStore, PurgeMode, RedisStore, SetOptions, Store, TieredStore};
use tower_strata::tx::{TxBody, TxConfig, TxHandle, TxLayer};

pub fn pg_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn redis_store() -> RedisStore {
    RedisStore::builder(redis_url())
        .namespace(unique("observe"))
        .build()
        .expect("a Redis store at REDIS_URL")
}

/// A set, a hit, a miss and a delete on Redis.
pub async fn store_calls(store: &RedisStore) {
    let options = SetOptions::new()
        .ttl(Duration::from_secs(60))
        .tags(["products"]);
    store
        .set("product:1", Bytes::from_static(b"{}"), &options)
        .await
        .unwrap();
    assert!(store.get("product:1").await.unwrap().is_some());
    assert!(store.get("product:2").await.unwrap().is_none());
    store.purge_key("product:1", PurgeMode::Hard).await.unwrap();
}

/// A set and a hit in memory.
pub async fn memory_calls() -> MemoryStore {
    let store = MemoryStore::new(1 << 20);
    let options = SetOptions::new().ttl(Duration::from_secs(60));
    store
        .set("k", Bytes::from_static(b"v"), &options)
        .await
        .unwrap();
    assert!(store.get("k").await.unwrap().is_some());
    store
}

/// A tiered store on its own namespace (its gauges are sampled at once).
pub fn tiered() -> TieredStore {
    TieredStore::try_new(MemoryStore::new(1 << 20), redis_store()).unwrap()
}

/// A key purge (1 entry), a hard and a soft tag purge, and a pattern purge.
pub async fn purges(store: &RedisStore) -> Purger {
    let options = SetOptions::new()
        .ttl(Duration::from_secs(60))
        .grace(Duration::from_secs(60))
        .tags(["products"]);
    for key in ["product:1", "product:2", "product:3"] {
        store
            .set(key, Bytes::from_static(b"{}"), &options)
            .await
            .unwrap();
    }
    let purger = Purger::new(store.clone());
    assert_eq!(purger.purge_key("product:1").await.unwrap(), 1);
    purger.soft().purge_tags(["products"]).await.unwrap();
    purger.purge_tags(["products"]).await.unwrap();
    purger.purge_matching("product:*").await.unwrap();
    purger
}

/// One `POST`: its first attempt fails with a real SQLSTATE 40001 and is replayed, the second
/// commits. Then one that rolls back (a 409). Returns the layer's attempts seen by the handler.
pub async fn transactions() -> u32 {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&pg_url())
        .await
        .expect("PostgreSQL at DATABASE_URL");
    let layer = TxLayer::try_new(
        pool,
        TxConfig::default().backoff(Duration::from_millis(1), Duration::from_millis(2)),
    )
    .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(move |req: Request<TxBody<String>>| {
            let seen = seen.clone();
            async move {
                let tx = req
                    .extensions()
                    .get::<TxHandle<Postgres>>()
                    .unwrap()
                    .clone();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let attempt = seen.fetch_add(1, Ordering::SeqCst) + 1;
                let mut conn = tx.conn().await.unwrap();
                let status = if body.as_ref() == b"conflict-once" && attempt == 1 {
                    let failed = sqlx::query(
                        "DO $$ BEGIN RAISE EXCEPTION 'forced' \
                         USING ERRCODE = 'serialization_failure'; END $$",
                    )
                    .execute(&mut conn)
                    .await;
                    assert!(failed.is_err());
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    sqlx::query("SELECT 1").execute(&mut conn).await.unwrap();
                    if body.as_ref() == b"reject" {
                        StatusCode::CONFLICT
                    } else {
                        StatusCode::OK
                    }
                };
                drop(conn);
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(String::new())
                        .unwrap(),
                )
            }
        }));
    for (body, expected) in [
        ("conflict-once", StatusCode::OK),
        ("reject", StatusCode::CONFLICT),
    ] {
        let response = svc
            .clone()
            .oneshot(Request::post("/").body(body.to_owned()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), expected);
        response.into_body().collect().await.unwrap();
    }
    attempts.load(Ordering::SeqCst)
}
