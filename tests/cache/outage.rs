//! The cache while its Redis hangs (a private `redis-server` stopped with SIGSTOP): concurrent
//! misses still make one origin call. (Its logs are checked in `cache_outage_logs.rs`, alone
//! in its process: `tracing` caches which events a subscriber wants per process.)
#![cfg(all(feature = "memory", feature = "redis"))]

use crate::support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::cache::CacheLayer;

use support::PrivateRedis;
use support::cache_http::slow_upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_does_not_switch_coalescing_off() {
    let redis = PrivateRedis::start();
    let (origin, calls) = slow_upstream(Duration::from_millis(300));
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(redis.store(Duration::from_millis(100))))
        .service(origin);
    redis.pause();
    let gets = (0..50).map(|_| {
        let svc = svc.clone();
        tokio::spawn(async move {
            let request = Request::get("http://h/cold").body(Full::default()).unwrap();
            let response = svc.oneshot(request).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        })
    });
    for body in futures_util::future::join_all(gets).await {
        assert_eq!(body.unwrap(), Bytes::from_static(b"page"));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one origin call for 50 misses"
    );
    redis.resume();
}
