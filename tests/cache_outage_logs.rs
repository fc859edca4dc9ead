//! The logs of the cache while its Redis hangs (a private `redis-server` stopped with
//! SIGSTOP) under load: the transitions and a summary, not a line per request. Alone in its
//! test binary, with the process's global subscriber: `tracing` caches per process which
//! events a subscriber wants, so a scoped one beside other tests can miss events.
#![cfg(all(feature = "memory", feature = "redis"))]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::cache::CacheLayer;

use support::PrivateRedis;
use support::cache_http::slow_upstream;
use support::logs::Captured;

#[tokio::test]
async fn an_outage_under_load_logs_a_few_lines_not_one_per_request() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_env_filter("tower_strata=info")
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let redis = PrivateRedis::start();
    let (origin, calls) = slow_upstream(Duration::from_millis(1));
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(redis.store(Duration::from_millis(100))))
        .service(origin);
    redis.pause();
    // 2,000 requests over distinct URLs (each a miss and a write with a healthy store), 50
    // every 100 ms: a 4 s outage under load.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for round in 0..40 {
        tick.tick().await;
        let batch = (0..50).map(|i| {
            let svc = svc.clone();
            async move {
                let uri = format!("http://h/p/{round}/{i}");
                let request = Request::get(uri).body(Full::default()).unwrap();
                let response = svc.oneshot(request).await.unwrap();
                let _ = response.into_body().collect().await;
            }
        });
        futures_util::future::join_all(batch).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2_000);
    redis.resume();
    // Once it has answered for a while (see `QUIET_BEFORE_END`), the next request says so.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let request = Request::get("http://h/after")
        .body(Full::default())
        .unwrap();
    let _ = svc.clone().oneshot(request).await.unwrap();

    let text = logs.text();
    let lines = text.lines().count();
    eprintln!("outage log ({lines} lines):\n{text}");
    // The cache's first line and its last, the breaker's transitions (about two a second while
    // its probes fail), never one per request.
    assert!(
        (2..=24).contains(&lines),
        "{lines} log lines for a 2,000-request outage:\n{text}"
    );
    assert!(text.contains("cache store failing"), "{text}");
}
