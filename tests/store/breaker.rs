//! The Redis store's circuit breaker against a real `redis-server` of the test's own, hung
//! with SIGSTOP and killed with SIGKILL: after a few timeouts calls fail at once, a cache in
//! front passes through, the health check says degraded, and the background probe closes it
//! again; reads give up after the read soft timeout.
#![cfg(all(feature = "redis", feature = "memory", feature = "health"))]

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_strata::cache::CacheLayer;
use tower_strata::health::{HealthCheck, Status};
use tower_strata::store::{
    BreakerSettings, BreakerState, PurgeMode, RedisStore, SetOptions, Store, StoreError,
};

use support::cache_http::{get, response, status, upstream};
use support::{PrivateRedis, eventually, unique};

const TIMEOUT: Duration = Duration::from_millis(200);

fn store(redis: &PrivateRedis) -> RedisStore {
    RedisStore::builder(redis.url())
        .namespace(unique("breaker"))
        .timeout(TIMEOUT)
        .read_soft_timeout(None)
        .connect_timeout(TIMEOUT)
        .backplane(false)
        .breaker(Some(BreakerSettings {
            failures: 3,
            cool_down: Duration::from_millis(300),
        }))
        .build()
        .unwrap()
}

async fn health(store: &RedisStore) -> Status {
    store.breaker_check().check().await.status
}

/// Fails reads until the breaker refuses one; returns how many timed out first.
async fn open_it(store: &RedisStore) -> usize {
    let mut timeouts = 0;
    for _ in 0..10 {
        match store.get("k").await {
            Err(StoreError::CircuitOpen { .. }) => return timeouts,
            Err(e) if e.is_backend() => timeouts += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("the breaker never opened after {timeouts} failures");
}

#[tokio::test]
async fn a_hung_redis_opens_the_breaker_and_a_probe_closes_it() {
    let redis = PrivateRedis::start();
    let store = store(&redis);
    let options = SetOptions::new().ttl(Duration::from_secs(60));
    store
        .set("k", Bytes::from_static(b"v"), &options)
        .await
        .unwrap();
    assert_eq!(store.breaker_state(), Some(BreakerState::Closed));
    assert_eq!(health(&store).await, Status::Healthy);

    redis.pause();
    assert_eq!(open_it(&store).await, 3, "three timeouts open it");
    assert_eq!(store.breaker_state(), Some(BreakerState::Open));
    // Open: every call fails at once, reads, writes and purges alike.
    for _ in 0..100 {
        assert!(matches!(
            store.get("k").await,
            Err(StoreError::CircuitOpen { .. })
        ));
    }
    assert!(matches!(
        store.set("k", Bytes::new(), &options).await,
        Err(StoreError::CircuitOpen { .. })
    ));
    let stats = store.stats();
    assert_eq!(stats.breaker, Some(BreakerState::Open));
    assert!(stats.rejected >= 101, "{stats:?}");
    assert_eq!(
        stats.timeouts, 3,
        "refused calls are not timeouts: {stats:?}"
    );
    assert_eq!(health(&store).await, Status::Degraded);

    // Still hung after the cool-down: the probe is the store's own background PING, never a
    // caller's request, so every call still fails at once.
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..20 {
        let started = std::time::Instant::now();
        assert!(matches!(
            store.get("k").await,
            Err(StoreError::CircuitOpen { .. })
        ));
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "a caller waited for the probe: {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_ne!(store.breaker_state(), Some(BreakerState::Closed));

    // Back: the probe closes it without any call from us.
    redis.resume();
    let closed = eventually(Duration::from_secs(5), || async {
        store.breaker_state() == Some(BreakerState::Closed)
    })
    .await;
    assert!(closed.is_some(), "{:?}", store.stats());
    assert!(matches!(store.get("k").await, Ok(Some(_))));
    assert_eq!(store.breaker_state(), Some(BreakerState::Closed));
    assert_eq!(health(&store).await, Status::Healthy);
}

#[tokio::test]
async fn a_killed_redis_opens_it_and_a_restarted_one_closes_it() {
    let mut redis = PrivateRedis::start();
    let port = redis.port;
    let store = store(&redis);
    store
        .set("k", Bytes::from_static(b"v"), &SetOptions::new())
        .await
        .unwrap();
    redis.kill();
    open_it(&store).await;
    assert_eq!(store.breaker_state(), Some(BreakerState::Open));
    let _restarted = PrivateRedis::start_on(port);
    let closed = eventually(Duration::from_secs(10), || async {
        store.breaker_state() == Some(BreakerState::Closed)
    })
    .await;
    assert!(closed.is_some(), "{:?}", store.stats());
    assert_eq!(store.breaker_state(), Some(BreakerState::Closed));
}

#[tokio::test]
async fn a_cache_over_an_open_breaker_passes_through_without_waiting() {
    let redis = PrivateRedis::start();
    let store = store(&redis);
    let (up, calls) =
        upstream(|n, _| response(200, &[("cache-control", "max-age=60")], format!("{n}")));
    let svc = tower::ServiceBuilder::new()
        .layer(CacheLayer::new(store.clone()))
        .service(up);
    redis.pause();
    open_it(&store).await;
    // 200 requests while Redis hangs: each goes upstream, none waits out a timeout (at
    // 200 ms each they would take 40 s; the test's own bound is far below that).
    let all = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..200 {
            let r = svc.clone().oneshot(get("http://h/a")).await.unwrap();
            assert_eq!(r.status(), 200);
            assert!(status(&r).contains("store-error"), "{}", status(&r));
            let _ = r.into_body().collect().await.unwrap();
        }
    })
    .await;
    assert!(all.is_ok(), "requests waited on the hung Redis");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 200);
    redis.resume();
}

#[tokio::test]
async fn the_server_check_accepts_redis_7_and_names_its_version() {
    let redis = PrivateRedis::start();
    let version = store(&redis).check_server().await.unwrap();
    assert!(
        version.split('.').next().unwrap().parse::<u32>().unwrap() >= 7,
        "{version}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_store_over_a_hung_redis_opens_the_breaker_and_serves_l1() {
    use tower_strata::store::{MemoryStore, TieredStore};
    let redis = PrivateRedis::start();
    let l2 = RedisStore::builder(redis.url())
        .namespace(unique("tier_hang"))
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .ping_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let tiered = TieredStore::try_new(MemoryStore::new(1 << 20), l2).unwrap();
    // L1 takes a write only once the subscription's resync has been applied (until then the
    // resync would drop it anyway), which can trail `backplane_connected` on a loaded machine.
    let up = eventually(Duration::from_secs(5), || async { tiered.l1_in_use() }).await;
    assert!(up.is_some());
    let options = SetOptions::new().ttl(Duration::from_secs(60));
    tiered
        .set("k", Bytes::from_static(b"v"), &options)
        .await
        .unwrap();
    assert!(
        tiered.l1().get("k").await.unwrap().is_some(),
        "the write is in L1"
    );
    redis.pause();
    // The backplane's ping notices the hang: L1 is no longer trusted, reads try L2, overrun
    // the soft timeout, and their calls, left to finish, teach the breaker that Redis hangs.
    let lost = eventually(Duration::from_secs(5), || async {
        !tiered.l2().backplane_connected()
    })
    .await;
    assert!(lost.is_some(), "the backplane never noticed the hang");
    let opened = eventually(Duration::from_secs(5), || async {
        let _ = tiered.get("k").await;
        tiered.l2().breaker_state() == Some(BreakerState::Open)
    })
    .await;
    assert!(opened.is_some(), "{:?}", tiered.l2().stats());
    // With Redis down for everyone, L1 serves again.
    assert!(tiered.l1_in_use());
    let value = tiered.get("k").await.unwrap().map(|e| e.value().clone());
    assert_eq!(value.as_deref(), Some(&b"v"[..]));
    redis.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_that_missed_a_hung_redis_is_replayed_when_it_answers() {
    use tower_strata::store::{MemoryStore, TieredStore};
    let redis = PrivateRedis::start();
    let namespace = unique("replay");
    let tiered = || {
        let l2 = RedisStore::builder(redis.url())
            .namespace(namespace.clone())
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .ping_interval(Duration::from_millis(100))
            .build()
            .unwrap();
        TieredStore::try_new(MemoryStore::new(1 << 20), l2).unwrap()
    };
    let (a, b) = (tiered(), tiered());
    let up = eventually(Duration::from_secs(5), || async {
        a.l2().backplane_connected() && b.l2().backplane_connected()
    })
    .await;
    assert!(up.is_some());
    let options = SetOptions::new().ttl(Duration::from_secs(60));
    a.set("k", Bytes::from_static(b"v1"), &options)
        .await
        .unwrap();
    assert!(b.get("k").await.unwrap().is_some(), "B holds the value");

    redis.pause();
    assert!(
        a.purge_key("k", PurgeMode::Hard).await.is_err(),
        "a delete that missed Redis is not reported as done"
    );
    assert_eq!(a.pending_invalidations(), (1, 0));
    assert!(
        a.get("k").await.unwrap().is_none(),
        "until Redis has it, the key reads as a miss: neither the L1 nor the Redis copy"
    );

    redis.resume();
    let replayed = eventually(Duration::from_secs(10), || async {
        a.pending_invalidations().0 == 0
    })
    .await;
    assert!(replayed.is_some(), "the delete was never replayed");
    let gone = eventually(Duration::from_secs(5), || async {
        b.get("k").await.is_ok_and(|found| found.is_none())
    })
    .await;
    assert!(gone.is_some(), "B still serves the deleted value");
    assert!(
        a.l2().get("k").await.unwrap().is_none(),
        "Redis no longer has it"
    );
}

#[tokio::test]
async fn a_read_on_a_hung_redis_gives_up_after_the_soft_timeout_and_the_breaker_still_learns() {
    let redis = PrivateRedis::start();
    let store = RedisStore::builder(redis.url())
        .namespace(unique("soft"))
        .timeout(TIMEOUT)
        .read_soft_timeout(Some(Duration::from_millis(30)))
        .connect_timeout(TIMEOUT)
        .backplane(false)
        .breaker(Some(BreakerSettings {
            failures: 3,
            cool_down: Duration::from_secs(60),
        }))
        .build()
        .unwrap();
    store
        .set("k", Bytes::from_static(b"v"), &SetOptions::new())
        .await
        .unwrap();
    redis.pause();
    // Each read gives up after 30 ms, not the 200 ms command timeout; the calls go on in the
    // background, time out, and open the breaker.
    let mut slowest = Duration::ZERO;
    let mut opened = false;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let began = std::time::Instant::now();
        let read = store.get("k").await;
        slowest = slowest.max(began.elapsed());
        if matches!(read, Err(StoreError::CircuitOpen { .. })) {
            opened = true;
            break;
        }
        assert!(matches!(read, Err(StoreError::Timeout { .. })), "{read:?}");
    }
    assert!(opened, "the breaker never opened: {:?}", store.stats());
    assert!(
        slowest < Duration::from_millis(150),
        "a read waited {slowest:?}, past the soft timeout"
    );
    assert_eq!(store.breaker_state(), Some(BreakerState::Open));
    redis.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_store_whose_l1_answers_everything_closes_its_breaker_when_redis_is_back() {
    use tower_strata::store::{MemoryStore, TieredStore};
    let redis = PrivateRedis::start();
    let l2 = RedisStore::builder(redis.url())
        .namespace(unique("tier_probe"))
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .ping_interval(Duration::from_millis(100))
        .breaker(Some(BreakerSettings {
            failures: 3,
            cool_down: Duration::from_millis(300),
        }))
        .build()
        .unwrap();
    let tiered = TieredStore::try_new(MemoryStore::new(1 << 20), l2).unwrap();
    let up = eventually(Duration::from_secs(5), || async { tiered.l1_in_use() }).await;
    assert!(up.is_some());
    let options = SetOptions::new().ttl(Duration::from_secs(60));
    tiered
        .set("k", Bytes::from_static(b"v"), &options)
        .await
        .unwrap();
    let open_it = || async {
        // L1 misses go to Redis and open the breaker; from then on L1 answers.
        let opened = eventually(Duration::from_secs(5), || async {
            let _ = tiered.get("missing").await;
            tiered.l2().breaker_state() == Some(BreakerState::Open)
        })
        .await;
        assert!(opened.is_some(), "{:?}", tiered.l2().stats());
    };
    redis.pause();
    open_it().await;
    redis.resume();
    // Only L1 hits from here: nothing of ours reaches Redis, and yet the breaker closes.
    let closed = eventually(Duration::from_secs(3), || async {
        // An L1 hit while the breaker is open: no call to Redis.
        let _ = tiered.get("k").await;
        tiered.l2().breaker_state() == Some(BreakerState::Closed)
    })
    .await;
    assert!(
        closed.is_some(),
        "the breaker stayed {:?}",
        tiered.l2().breaker_state()
    );

    // Again, with an invalidation waiting: it is replayed as soon as the breaker closes.
    redis.pause();
    open_it().await;
    assert!(tiered.purge_key("gone", PurgeMode::Hard).await.is_err());
    assert_eq!(tiered.pending_invalidations().0, 1);
    redis.resume();
    let replayed = eventually(Duration::from_secs(3), || async {
        tiered.pending_invalidations().0 == 0
    })
    .await;
    assert!(replayed.is_some(), "the invalidation was not replayed");
    eprintln!("breaker closed {closed:?} after resume; replayed {replayed:?} after resume");
}
