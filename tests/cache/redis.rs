//! The response cache layer over a real Redis: hits, privacy, Vary, coalescing, fail-open.
#![cfg(all(feature = "redis", feature = "memory"))]

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use support::{PrivateRedis, redis_url, unique};
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::cache::CacheLayer;
use tower_strata::store::{RedisStore, Store};

type Req = Request<Full<Bytes>>;

fn get(uri: &str) -> Req {
    Request::get(uri).body(Full::default()).unwrap()
}

fn redis_store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .namespace(unique("cache_test"))
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

/// An upstream answering `headers` and `v{call}`, counting calls.
fn upstream(
    headers: &'static [(&'static str, &'static str)],
) -> (
    impl tower::Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = tower::service_fn(move |req: Req| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        let enc = req
            .headers()
            .get("accept-encoding")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut r = Response::new(Full::new(Bytes::from(format!("{enc}v{n}"))));
            for (k, v) in headers {
                r.headers_mut().append(*k, v.parse().unwrap());
            }
            Ok::<_, Infallible>(r)
        }
    });
    (svc, calls)
}

async fn text<B: http_body::Body>(r: Response<B>) -> Bytes
where
    B::Error: std::fmt::Debug,
{
    r.into_body().collect().await.unwrap().to_bytes()
}

/// Lets the background store write land: polls until the stats count it.
async fn stored(stats: &tower_strata::cache::CacheStats, n: u64) {
    let done = support::eventually(Duration::from_secs(5), || async { stats.stores() >= n }).await;
    assert!(done.is_some(), "store write did not land: {stats:?}");
}

#[tokio::test]
async fn hits_vary_and_privacy_on_redis() {
    hits_vary_and_privacy_on_redis_on(&redis_url()).await;
}

#[cfg(feature = "redis-cluster")]
#[tokio::test]
async fn hits_vary_and_privacy_on_redis_on_a_cluster() {
    hits_vary_and_privacy_on_redis_on(&support::cluster::shared().url()).await;
}

async fn hits_vary_and_privacy_on_redis_on(url: &str) {
    let store = redis_store(url);
    let layer = CacheLayer::new(store.clone());
    let stats = layer.stats();
    let (up, calls) = upstream(&[("cache-control", "max-age=60"), ("vary", "accept-encoding")]);
    let svc = ServiceBuilder::new().layer(layer.clone()).service(up);
    let gz = || {
        let mut r = get("http://h/a");
        r.headers_mut()
            .insert("accept-encoding", "gzip".parse().unwrap());
        r
    };
    assert_eq!(
        text(svc.clone().oneshot(gz()).await.unwrap()).await,
        "gzipv1"
    );
    stored(&stats, 1).await;
    assert_eq!(
        text(svc.clone().oneshot(get("http://h/a")).await.unwrap()).await,
        "v2"
    );
    stored(&stats, 2).await;
    let hit = svc.clone().oneshot(gz()).await.unwrap();
    assert!(
        hit.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit")
    );
    assert_eq!(text(hit).await, "gzipv1");
    assert_eq!(
        text(svc.clone().oneshot(get("http://h/a")).await.unwrap()).await,
        "v2"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Set-Cookie: never stored, never served to anyone else.
    let (up, calls) = upstream(&[
        ("cache-control", "public, max-age=60"),
        ("set-cookie", "s=1"),
    ]);
    let svc = ServiceBuilder::new().layer(layer.clone()).service(up);
    for n in 1..=3 {
        let b = text(svc.clone().oneshot(get("http://h/login")).await.unwrap()).await;
        assert_eq!(b, format!("v{n}"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Authorization: not stored without public / s-maxage / must-revalidate.
    let (up, calls) = upstream(&[("cache-control", "max-age=60")]);
    let svc = ServiceBuilder::new().layer(layer).service(up);
    let mut authed = get("http://h/me");
    authed
        .headers_mut()
        .insert("authorization", "Bearer a".parse().unwrap());
    assert_eq!(text(svc.clone().oneshot(authed).await.unwrap()).await, "v1");
    assert_eq!(
        text(svc.clone().oneshot(get("http://h/me")).await.unwrap()).await,
        "v2"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    store.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_misses_make_one_upstream_call_on_redis() {
    a_thousand_concurrent_misses_make_one_upstream_call_on_redis_on(&redis_url()).await;
}

#[cfg(feature = "redis-cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_misses_make_one_upstream_call_on_redis_on_a_cluster() {
    a_thousand_concurrent_misses_make_one_upstream_call_on_redis_on(
        &support::cluster::shared().url(),
    )
    .await;
}

async fn a_thousand_concurrent_misses_make_one_upstream_call_on_redis_on(url: &str) {
    // A thousand lookups queue on one connection: on a loaded machine the last can take longer
    // than the 50 ms read soft timeout, and a lookup that gives up goes to the origin on its
    // own. This test is about coalescing, so lookups wait for their answer.
    let store = RedisStore::builder(url)
        .namespace(unique("cache_test"))
        .timeout(Duration::from_millis(500))
        .read_soft_timeout(None)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let layer = CacheLayer::new(store.clone());
    let (up, calls) = upstream(&[("cache-control", "max-age=60")]);
    let svc = ServiceBuilder::new().layer(layer).service(up);
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let svc = svc.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                text(svc.oneshot(get("http://h/cold")).await.unwrap()).await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "v1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    store.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_requests_still_succeed_from_upstream() {
    let mut redis = PrivateRedis::start();
    let store = redis_store(&redis.url());
    let layer = CacheLayer::new(store);
    let stats = layer.stats();
    let (up, calls) = upstream(&[("cache-control", "max-age=60")]);
    let svc = ServiceBuilder::new().layer(layer).service(up);
    assert_eq!(
        text(svc.clone().oneshot(get("http://h/a")).await.unwrap()).await,
        "v1"
    );
    stored(&stats, 1).await;
    let hit = svc.clone().oneshot(get("http://h/a")).await.unwrap();
    assert!(
        hit.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    redis.kill();
    for i in 0..5 {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            svc.clone().oneshot(get(&format!("http://h/{}", i % 2))),
        )
        .await
        .expect("a request hung on a dead store")
        .unwrap();
        assert_eq!(r.status(), 200);
        assert!(!text(r).await.is_empty());
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "every request went upstream"
    );
    assert!(stats.store_errors() >= 5, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_lease_coalesces_misses_across_instances() {
    a_redis_lease_coalesces_misses_across_instances_on(&redis_url()).await;
}

#[cfg(feature = "redis-cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_lease_coalesces_misses_across_instances_on_a_cluster() {
    a_redis_lease_coalesces_misses_across_instances_on(&support::cluster::shared().url()).await;
}

async fn a_redis_lease_coalesces_misses_across_instances_on(url: &str) {
    let store = redis_store(url);
    let (up, calls) = upstream(&[("cache-control", "max-age=60")]);
    // Two app instances: separate layers (no shared in-process state), one Redis.
    let instances: Vec<_> = (0..2)
        .map(|_| {
            ServiceBuilder::new()
                .layer(
                    CacheLayer::new(store.clone())
                        .distributed_lease(Duration::from_secs(5))
                        .unwrap(),
                )
                .service(up.clone())
        })
        .collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let svc = instances[i % 2].clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                text(svc.oneshot(get("http://h/cold")).await.unwrap()).await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "v1");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one upstream call for both instances"
    );
    // Without the lease each instance fetches for itself.
    let (up, calls) = upstream(&[("cache-control", "max-age=60")]);
    let instances: Vec<_> = (0..2)
        .map(|_| {
            ServiceBuilder::new()
                .layer(CacheLayer::new(store.clone()))
                .service(up.clone())
        })
        .collect();
    let (a, b) = tokio::join!(
        instances[0].clone().oneshot(get("http://h/cold2")),
        instances[1].clone().oneshot(get("http://h/cold2"))
    );
    text(a.unwrap()).await;
    text(b.unwrap()).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    store.clear().await.unwrap();
}
