//! Cache warming through a real axum app with the cache layer, on the memory store and on Redis:
//! hits after a run, re-warming after a purge, bounded concurrency, failures, shutdown.
#![cfg(all(feature = "memory", feature = "axum", feature = "warm"))]

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::routing::get;
use http::{Request, Response, StatusCode};
use support::eventually;
use tower::ServiceExt;
use tower_strata::cache::{CacheLayer, CacheStats};
use tower_strata::purge::Purger;
use tower_strata::store::{MemoryStore, Store, StoreExt};
use tower_strata::warm::{WarmRequest, Warmer};

/// A shop whose product pages are cacheable for a minute, tagged, and vary on `Accept`; the
/// handler counts its calls.
fn shop<St: StoreExt>(store: St) -> (Router, Arc<AtomicUsize>, CacheStats) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let layer = CacheLayer::new(store);
    let stats = layer.stats();
    let router = Router::new()
        .route(
            "/products/{id}",
            get(move |Path(id): Path<u32>, headers: HeaderMap| {
                c.fetch_add(1, Ordering::SeqCst);
                let accept = headers
                    .get("accept")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("*/*")
                    .to_owned();
                async move {
                    Response::builder()
                        .header("cache-control", "max-age=60")
                        .header("vary", "accept")
                        .header("surrogate-key", format!("products product:{id}"))
                        .body(Body::from(format!("product {id} as {accept}")))
                        .unwrap()
                }
            }),
        )
        .layer(layer);
    (router, calls, stats)
}

fn shop_warmer(router: &Router, interval: Option<Duration>) -> Warmer {
    let builder = Warmer::with_body::<Body, _>(router.clone())
        .host("shop.example")
        .request(WarmRequest::get("/products/1").header("accept", "application/json"));
    match interval {
        Some(interval) => builder.interval(interval),
        None => builder,
    }
    .build()
    .unwrap()
}

/// A user's request as a server would pass it on: a path and a `Host` header.
async fn user_get(router: &Router, path: &str) -> (String, String) {
    let request = Request::get(path)
        .header("host", "shop.example")
        .header("accept", "application/json")
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn stored(stats: &CacheStats, n: u64) {
    let landed = eventually(Duration::from_secs(5), || async { stats.stores() >= n }).await;
    assert!(
        landed.is_some(),
        "the warm response was not stored: {stats:?}"
    );
}

async fn run_once_then_a_hit(store: impl StoreExt) {
    let (router, calls, stats) = shop(store);
    let warmer = shop_warmer(&router, None);
    let report = warmer.run_once().await;
    assert_eq!((report.sent, report.succeeded, report.failed), (1, 1, 0));
    stored(&stats, 1).await;

    let (status, body) = user_get(&router, "/products/1").await;
    assert!(status.starts_with("tower-strata; hit"), "{status}");
    assert_eq!(body, "product 1 as application/json");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the handler ran for the warm request only"
    );
    let warm = warmer.stats();
    assert_eq!((warm.runs, warm.requests_sent, warm.succeeded), (1, 1, 1));
}

async fn interval_rewarms_after_a_purge<St: StoreExt + Clone>(store: St, soft: bool) {
    let (router, calls, stats) = shop(store.clone());
    let warmer = shop_warmer(&router, Some(Duration::from_millis(50)));
    let handle = warmer.spawn();
    stored(&stats, 1).await;
    let (status, _) = user_get(&router, "/products/1").await;
    assert!(status.starts_with("tower-strata; hit"), "{status}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let purger = Purger::new(store);
    let purger = if soft { purger.soft() } else { purger };
    let purged = purger.purge_tags(["products"]).await.unwrap();
    assert!(purged >= 1, "the warm entry was purged");
    // The next tick finds a miss and fetches the page again, before any user asks for it.
    let rewarmed = eventually(Duration::from_secs(5), || async {
        calls.load(Ordering::SeqCst) >= 2 && stats.stores() >= 2
    })
    .await;
    assert!(rewarmed.is_some(), "no re-warm after the purge: {stats:?}");
    let (status, body) = user_get(&router, "/products/1").await;
    assert!(status.starts_with("tower-strata; hit"), "{status}");
    assert_eq!(body, "product 1 as application/json");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let counted = eventually(Duration::from_secs(5), || async {
        warmer.stats().runs >= 2
    })
    .await;
    assert!(counted.is_some(), "the re-warm run is in the stats");
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_makes_the_next_user_request_a_hit_memory() {
    run_once_then_a_hit(MemoryStore::new(1 << 20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_runs_rewarm_after_a_purge_memory() {
    interval_rewarms_after_a_purge(Arc::new(MemoryStore::new(1 << 20)), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_runs_refresh_after_a_soft_purge_memory() {
    interval_rewarms_after_a_purge(Arc::new(MemoryStore::new(1 << 20)), true).await;
}

#[cfg(feature = "redis")]
fn redis_store() -> tower_strata::store::RedisStore {
    tower_strata::store::RedisStore::builder(support::redis_url())
        .namespace(support::unique("warm_test"))
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_makes_the_next_user_request_a_hit_redis() {
    let store = redis_store();
    run_once_then_a_hit(store.clone()).await;
    store.clear().await.unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_runs_rewarm_after_a_purge_redis() {
    let store = redis_store();
    interval_rewarms_after_a_purge(store.clone(), false).await;
    store.clear().await.unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_runs_refresh_after_a_soft_purge_redis() {
    let store = redis_store();
    interval_rewarms_after_a_purge(store.clone(), true).await;
    store.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_is_bounded() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (i, m, c) = (in_flight.clone(), max.clone(), calls.clone());
    let router = Router::new().route(
        "/items/{id}",
        get(move || {
            let (i, m, c) = (i.clone(), m.clone(), c.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                let now = i.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                i.fetch_sub(1, Ordering::SeqCst);
                "item"
            }
        }),
    );
    let warmer = Warmer::builder(router)
        .requests((0..50).map(|n| WarmRequest::get(format!("/items/{n}"))))
        .concurrency(4)
        .build()
        .unwrap();
    let report = warmer.run_once().await;
    assert_eq!((report.sent, report.succeeded), (50, 50));
    assert_eq!(calls.load(Ordering::SeqCst), 50);
    let max = max.load(Ordering::SeqCst);
    assert!(max <= 4, "{max} requests in flight with concurrency 4");
    assert!(max > 1, "the requests ran one at a time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_and_the_run_goes_on() {
    let ok_calls = Arc::new(AtomicUsize::new(0));
    let c = ok_calls.clone();
    let router = Router::new()
        .route(
            "/ok",
            get(move || {
                c.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        )
        .route(
            "/error",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }),
        )
        .route(
            "/panic",
            get(|| async {
                panic!("a handler bug");
                #[allow(unreachable_code)]
                "never"
            }),
        );
    let warmer = Warmer::builder(router)
        .requests(["/hang", "/error", "/panic", "/missing", "/ok"].map(WarmRequest::get))
        .timeout(Duration::from_millis(300))
        .concurrency(2)
        .build()
        .unwrap();
    for run in 1..=2 {
        let report = tokio::time::timeout(Duration::from_secs(10), warmer.run_once())
            .await
            .expect("a run with a hanging handler still ends");
        assert_eq!(report.sent, 5, "{report:?}");
        assert_eq!(report.succeeded, 1, "{report:?}");
        assert_eq!(report.failed, 4, "{report:?}");
        assert_eq!(report.timed_out, 1, "{report:?}");
        assert!(report.duration >= Duration::from_millis(300));
        assert_eq!(ok_calls.load(Ordering::SeqCst), run);
    }
    let stats = warmer.stats();
    assert_eq!(stats.runs, 2);
    assert_eq!(
        (
            stats.requests_sent,
            stats.succeeded,
            stats.failed,
            stats.timed_out
        ),
        (10, 2, 8, 2)
    );
}

/// A router counting calls to `/`.
fn counting_router() -> (Router, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let router = Router::new().route(
        "/",
        get(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        }),
    );
    (router, calls)
}

async fn assert_no_more_calls(calls: &AtomicUsize) {
    // Let a request already past the handler's entry settle, then watch for several intervals.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let settled = calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.load(Ordering::SeqCst), settled, "warming went on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_drop_stop_the_task() {
    let (router, calls) = counting_router();
    let warmer = Warmer::builder(router)
        .request(WarmRequest::get("/"))
        .interval(Duration::from_millis(20))
        .build()
        .unwrap();

    let handle = warmer.spawn();
    let ticking = eventually(Duration::from_secs(5), || async {
        calls.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert!(ticking.is_some(), "the interval did not tick");
    assert!(!handle.is_finished());
    handle.shutdown().await;
    assert_no_more_calls(&calls).await;

    let before = calls.load(Ordering::SeqCst);
    let handle = warmer.spawn();
    let ticking = eventually(Duration::from_secs(5), || async {
        calls.load(Ordering::SeqCst) >= before + 3
    })
    .await;
    assert!(ticking.is_some());
    drop(handle);
    assert_no_more_calls(&calls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_interval_it_runs_at_start_up_and_when_triggered() {
    let (router, calls) = counting_router();
    let warmer = Warmer::builder(router)
        .request(WarmRequest::get("/"))
        .build()
        .unwrap();
    let handle = warmer.spawn();
    let first = eventually(Duration::from_secs(5), || async {
        warmer.stats().runs == 1
    })
    .await;
    assert!(first.is_some(), "no start-up run");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no interval: one run only");
    handle.trigger();
    let second = eventually(Duration::from_secs(5), || async {
        warmer.stats().runs == 2
    })
    .await;
    assert!(second.is_some(), "the trigger did not start a run");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_warm_requests_refetch_on_every_run_and_keep_the_entry_fresh() {
    let (router, calls, stats) = shop(MemoryStore::new(1 << 20));
    let plain = shop_warmer(&router, None);
    let refetch = Warmer::with_body::<Body, _>(router.clone())
        .host("shop.example")
        .request(
            WarmRequest::get("/products/1")
                .header("accept", "application/json")
                .header("cache-control", "no-cache"),
        )
        .build()
        .unwrap();
    plain.run_once().await;
    stored(&stats, 1).await;
    plain.run_once().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a fresh entry answers the warm request"
    );
    refetch.run_once().await;
    // (A no-cache request arriving while the previous response is still being written is
    // answered with that response, a few milliseconds old.)
    stored(&stats, 2).await;
    refetch.run_once().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "no-cache goes upstream on every run"
    );
    stored(&stats, 3).await;
    let (status, _) = user_get(&router, "/products/1").await;
    assert!(status.starts_with("tower-strata; hit"), "{status}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
