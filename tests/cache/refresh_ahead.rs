//! Refresh-ahead: a hot key read in the last part of its TTL is refreshed in the background,
//! so it never misses; once across instances with the distributed lease. Entries age on the
//! stores' wall clock, so these tests run for a few one-second TTLs in real time.
#![cfg(all(feature = "memory", feature = "cache"))]

#[allow(unused_imports)] // only its `redis` test uses it
use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_strata::cache::{CacheLayer, CacheStats};
use tower_strata::store::MemoryStore;

type Req = Request<Full<Bytes>>;
type Origin = tower::util::BoxCloneService<Req, Response<Full<Bytes>>, Infallible>;

/// An origin answering `max-age=1` after `delay`, counting its calls.
fn origin(delay: Duration) -> (Origin, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = tower::service_fn(move |_request: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(delay).await;
            let mut response = Response::new(Full::new(Bytes::from(format!("v{n}"))));
            response
                .headers_mut()
                .insert("cache-control", "max-age=1".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    });
    (tower::util::BoxCloneService::new(svc), calls)
}

fn get() -> Req {
    Request::get("http://h/hot").body(Full::default()).unwrap()
}

/// Reads the key every 20 ms for `run` through each service in turn; returns the
/// `Cache-Status` of every read after the first.
async fn read_continuously<S>(services: &[S], run: Duration) -> Vec<String>
where
    S: Service<Req, Response = Response<tower_strata::cache::CacheBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    let mut statuses = Vec::new();
    // Bounded: at most one read per 20 ms of the run.
    for i in 0..(run.as_millis() / 20) as usize {
        if start.elapsed() >= run {
            break;
        }
        let svc = services[i % services.len()].clone();
        let response = svc.oneshot(get()).await.unwrap();
        let status = response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_owned();
        let _ = response.into_body().collect().await.unwrap();
        statuses.push(status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    statuses.remove(0);
    statuses
}

fn misses(statuses: &[String]) -> usize {
    statuses.iter().filter(|s| !s.contains("hit")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_never_misses_and_is_refreshed_once_per_ttl() {
    let (origin, calls) = origin(Duration::ZERO);
    let layer = CacheLayer::new(MemoryStore::new(1 << 20))
        .refresh_ahead(0.2)
        .unwrap();
    let stats = layer.stats();
    let svc = ServiceBuilder::new().layer(layer).service(origin);
    let run = Duration::from_millis(3_300);
    let statuses = read_continuously(&[svc], run).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(misses(&statuses), 0, "{statuses:?}");
    assert_eq!(stats.misses(), 1, "only the first read");
    assert!(statuses.iter().any(|s| s.contains("detail=refresh-ahead")));
    let refreshes = stats.refreshes_ahead();
    // A refresh each time an entry reaches its last 20 % (every ~0.8 s): 3 or 4 in 3.3 s.
    assert!((3..=5).contains(&refreshes), "{refreshes}");
    assert_eq!(calls.load(Ordering::SeqCst) as u64, 1 + refreshes);
    println!(
        "refresh-ahead, one instance, TTL 1 s, last 20 %, {} reads over 3.3 s: {} miss, {refreshes} refreshes, {} origin calls",
        statuses.len() + 1,
        stats.misses(),
        calls.load(Ordering::SeqCst)
    );
}

/// A key nobody reads in its last part expires as before: the next read misses.
#[tokio::test]
async fn a_cold_key_expires_as_before() {
    let (origin, calls) = origin(Duration::ZERO);
    let layer = CacheLayer::new(MemoryStore::new(1 << 20))
        .refresh_ahead(0.2)
        .unwrap();
    let stats = layer.stats();
    let svc = ServiceBuilder::new().layer(layer).service(origin);
    let _ = svc.clone().oneshot(get()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let response = svc.clone().oneshot(get()).await.unwrap();
    assert!(
        response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("fwd=")
    );
    assert_eq!(stats.refreshes_ahead(), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Without `refresh_ahead`, a hot key misses once per TTL (what the setting fixes).
#[tokio::test]
async fn without_refresh_ahead_a_hot_key_misses_every_ttl() {
    let (origin, _) = origin(Duration::ZERO);
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(MemoryStore::new(1 << 20)))
        .service(origin);
    let statuses = read_continuously(&[svc], Duration::from_millis(2_300)).await;
    assert!(misses(&statuses) >= 2, "{statuses:?}");
}

/// Two instances on one Redis, reading the key in turn, with an origin slow enough that both
/// see the entry in its window while a refresh is in flight: with the distributed lease the
/// origin sees one refresh per entry, without it one per instance.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_refresh_once_with_the_lease() {
    use tower_strata::store::RedisStore;
    let mut counts = Vec::new();
    for lease in [true, false] {
        let namespace = support::unique("refresh-ahead");
        let (origin, calls) = origin(Duration::from_millis(150));
        let mut all_stats: Vec<CacheStats> = Vec::new();
        let mut services = Vec::new();
        for _ in 0..2 {
            let store = RedisStore::builder(support::redis_url())
                .namespace(&namespace)
                .build()
                .unwrap();
            let mut layer = CacheLayer::new(store).refresh_ahead(0.3).unwrap();
            if lease {
                layer = layer.distributed_lease(Duration::from_secs(1)).unwrap();
            }
            all_stats.push(layer.stats());
            services.push(ServiceBuilder::new().layer(layer).service(origin.clone()));
        }
        let statuses = read_continuously(&services, Duration::from_millis(3_300)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(misses(&statuses), 0, "lease {lease}: {statuses:?}");
        let refreshes: u64 = all_stats.iter().map(CacheStats::refreshes_ahead).sum();
        assert_eq!(calls.load(Ordering::SeqCst) as u64, 1 + refreshes);
        println!(
            "refresh-ahead, two instances on Redis, lease {lease}: {refreshes} refreshes ({:?} per instance), {} origin calls",
            all_stats
                .iter()
                .map(CacheStats::refreshes_ahead)
                .collect::<Vec<_>>(),
            calls.load(Ordering::SeqCst)
        );
        counts.push(refreshes);
    }
    // With the lease, one refresh per entry generation (every ~0.7 s over 3.3 s).
    assert!((3..=6).contains(&counts[0]), "{counts:?}");
    assert!(
        counts[1] > counts[0],
        "without the lease both instances refresh: {counts:?}"
    );
}
