//! The dashboard on the quickstart's stack (SQLite + memory store, every layer): the page and
//! the JSON snapshot at `/dashboard`, after real traffic.
#![cfg(all(
    feature = "dashboard",
    feature = "memory",
    feature = "axum",
    feature = "sqlite",
    feature = "metrics",
    feature = "health"
))]
#![allow(dead_code)]

#[path = "../../examples/quickstart.rs"]
mod quickstart;

use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_strata::dashboard::{DashboardData, VERSION};

async fn call(app: &axum::Router, method: &str, uri: &str, body: &str) -> http::Response<Vec<u8>> {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes().to_vec();
    // The cache stores a response in the background once its body has streamed.
    tokio::time::sleep(Duration::from_millis(10)).await;
    http::Response::from_parts(parts, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_serves_the_dashboard_page_and_its_data() {
    let pool = quickstart::open_database(None).await.unwrap();
    let shop = quickstart::shop(pool, "t0ken").unwrap();
    shop.health.check_now().await;
    let app = &shop.router;

    for _ in 0..3 {
        assert_eq!(call(app, "GET", "/products/1", "").await.status(), 200);
    }
    assert_eq!(call(app, "GET", "/products", "").await.status(), 200);
    let put = call(app, "PUT", "/products/1", r#"{"price_cents":2999}"#).await;
    assert_eq!(put.status(), 200);
    let refused = call(app, "POST", "/orders", r#"{"product_id":2,"quantity":50}"#).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);

    // The page: HTML, never stored, at the mount with or without a trailing slash.
    for uri in ["/dashboard", "/dashboard/"] {
        let page = call(app, "GET", uri, "").await;
        assert_eq!(page.status(), 200, "{uri}");
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(page.headers()[header::CACHE_CONTROL], "no-store");
    }
    // Unknown paths under the mount.
    for uri in [
        "/dashboard/nope",
        "/dashboard/data/x",
        "/dashboard/index.html",
    ] {
        assert_eq!(call(app, "GET", uri, "").await.status(), 404, "{uri}");
    }

    let data = call(app, "GET", "/dashboard/data", "").await;
    assert_eq!(data.status(), 200);
    assert_eq!(data.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(data.headers()[header::CACHE_CONTROL], "no-store");
    let d: DashboardData = serde_json::from_slice(data.body()).unwrap();
    assert_eq!(d.version, VERSION);
    assert_eq!(d.title, "tower-strata quickstart");

    let latency = d.latency.expect("the metrics registry is wired");
    let product = latency
        .routes
        .iter()
        .find(|r| r.route == "/products/{id}" && r.method == "GET")
        .expect("the route template is listed");
    assert_eq!(product.last_minute.count, 3);
    assert!(product.last_minute.requests_per_second > 0.0);
    assert!(product.last_minute.p99_ms >= product.last_minute.p50_ms);
    assert_eq!(product.history.p95_ms.len(), d.history.at_unix_ms.len());
    // The dashboard's own requests are not measured.
    assert!(!latency.routes.iter().any(|r| r.route.contains("dashboard")));

    let cache = d.cache.expect("the cache is wired");
    assert!(cache.hits >= 1, "{cache:?}");
    assert!(cache.misses >= 1, "{cache:?}");
    assert!(cache.hit_rate > 0.0 && cache.hit_rate < 1.0);
    let store = d.store.expect("the store is wired");
    assert!(store.entries.is_some() && store.bytes.is_some());
    let purge = d.purge.expect("the purger is wired");
    assert!(purge.tag_purges >= 1, "the PUT purged after commit");
    assert!(d.invalidation.expect("wired").rule_firings >= 1);
    let tx = d.transactions.expect("the tx layer is wired");
    assert!(tx.committed >= 1);
    assert_eq!(tx.rolled_back, 1);
    assert!(tx.retried.contains_key("busy"));
    let health = d.health.expect("health is wired");
    assert_eq!(health.status, "healthy");
    assert!(health.checks.iter().any(|c| c.name == "sqlite"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_fills_the_charts_with_one_sample_per_interval() {
    let pool = quickstart::open_database(None).await.unwrap();
    let shop = quickstart::shop(pool, "t0ken").unwrap();
    let app = &shop.router;
    // The first sample, before any traffic; the sampler's first tick finds it fresh.
    assert!(shop.dashboard.data().history.at_unix_ms.is_empty());
    let sampler = shop.dashboard.spawn();
    // Traffic over a few samples: misses, then hits, then a purge.
    assert_eq!(call(app, "GET", "/products/3", "").await.status(), 200);
    // Wide gaps, so a late tick on a loaded machine still separates the miss from the hits.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    for _ in 0..3 {
        call(app, "GET", "/products/3", "").await;
    }
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let purge = Request::post("/_cache/purge")
        .header("authorization", "Bearer t0ken")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"tags":["products"]}"#))
        .unwrap();
    assert_eq!(app.clone().oneshot(purge).await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    sampler.abort();

    let d = shop.dashboard.data();
    let h = &d.history;
    assert!(h.at_unix_ms.len() >= 3, "{h:?}");
    assert!(h.at_unix_ms.len() <= 6, "one sample a second: {h:?}");
    assert!(h.at_unix_ms.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(h.hit_ratio.len(), h.at_unix_ms.len());
    assert_eq!(
        h.lookups.iter().sum::<u64>(),
        4,
        "one miss, three hits: {h:?}"
    );
    assert!(h.hit_ratio.iter().flatten().any(|r| *r == 1.0), "{h:?}");
    assert_eq!(h.purges.iter().sum::<u64>(), 1, "{h:?}");
    let route = d
        .latency
        .unwrap()
        .routes
        .into_iter()
        .find(|r| r.route == "/products/{id}")
        .unwrap();
    assert!(route.history.p95_ms.iter().flatten().count() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_data_endpoint_is_shown_as_stale_by_the_page() {
    // The page's own logic, checked in its text: it keeps polling and says since when its
    // figures are stale (the browser test renders it for real).
    let pool = quickstart::open_database(None).await.unwrap();
    let shop = quickstart::shop(pool, "t0ken").unwrap();
    let page = call(&shop.router, "GET", "/dashboard", "").await;
    let page = String::from_utf8(page.into_body()).unwrap();
    assert!(page.contains("stale since "));
    assert!(page.contains("setTimeout(poll"));
    assert!(page.contains("not configured"));
}
