//! The tiered store against real Redis servers: L1 trusted whatever the order of start-up, a
//! purge-all that misses Redis is reported and kept, and an overflowing queue of invalidations
//! becomes a purge-all instead of losing any.
#![cfg(all(feature = "redis", feature = "memory"))]

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use tower_strata::store::{
    BreakerSettings, BreakerState, KeyPattern, MemoryStore, PurgeMode, RedisStore, SetOptions,
    Store, TieredStore,
};

use support::{PrivateRedis, eventually, redis_url, unique};

const TIMEOUT: Duration = Duration::from_millis(200);

fn l2(url: String, namespace: &str) -> RedisStore {
    RedisStore::builder(url)
        .namespace(namespace)
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .ping_interval(Duration::from_millis(100))
        .breaker(Some(BreakerSettings {
            failures: 3,
            cool_down: Duration::from_millis(300),
        }))
        .build()
        .unwrap()
}

#[tokio::test]
async fn l1_is_trusted_when_the_subscription_came_up_before_the_tiered_store() {
    let redis = l2(redis_url(), &unique("late_tier"));
    // The example's order: build the Redis store, await something, then the tiered store.
    let subscribed = eventually(Duration::from_secs(5), || async {
        redis.backplane_connected()
    })
    .await;
    assert!(subscribed.is_some());
    redis.check_server().await.unwrap();
    let tiered = TieredStore::try_new(MemoryStore::new(1 << 20), redis).unwrap();
    let trusted = eventually(Duration::from_secs(2), || async { tiered.l1_in_use() }).await;
    assert!(trusted.is_some(), "L1 never trusted");
    assert_eq!(tiered.stats().l1_in_use, Some(true));
    #[cfg(feature = "dashboard")]
    {
        // The dashboard's store part says so.
        let data = tower_strata::dashboard::StoreData::from(tiered.stats());
        assert_eq!(data.l1_in_use, Some(true));
        assert_eq!(data.tiers["l2"].breaker.as_deref(), Some("closed"));
    }
    tiered
        .set("k", Bytes::from_static(b"v"), &SetOptions::new())
        .await
        .unwrap();
    assert!(
        tiered.l1().get("k").await.unwrap().is_some(),
        "the write is in L1"
    );
    let _ = tiered.clear().await;
}

/// A tiered store over `redis`, with L1 in use, and its breaker opened by a hang.
async fn hung_tier(redis: &PrivateRedis, namespace: &str) -> TieredStore {
    let tiered =
        TieredStore::try_new(MemoryStore::new(16 << 20), l2(redis.url(), namespace)).unwrap();
    let up = eventually(Duration::from_secs(5), || async { tiered.l1_in_use() }).await;
    assert!(up.is_some());
    tiered
}

async fn open_breaker(tiered: &TieredStore) {
    let opened = eventually(Duration::from_secs(5), || async {
        let _ = tiered.get("missing").await;
        tiered.l2().breaker_state() == Some(BreakerState::Open)
    })
    .await;
    assert!(opened.is_some(), "{:?}", tiered.l2().stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_all_that_misses_redis_is_reported_kept_and_hides_the_old_entries() {
    let redis = PrivateRedis::start();
    let namespace = unique("clear_hung");
    let tiered = hung_tier(&redis, &namespace).await;
    let options = SetOptions::new().ttl(Duration::from_secs(60));
    tiered
        .set("k", Bytes::from_static(b"old"), &options)
        .await
        .unwrap();
    redis.pause();
    open_breaker(&tiered).await;
    assert!(
        tiered.clear().await.is_err(),
        "a purge-all that did not reach Redis is not a success"
    );
    assert_eq!(tiered.pending_invalidations().0, 1, "it waits for Redis");
    assert!(
        tiered
            .purge_matching(&KeyPattern::glob("k*").unwrap(), PurgeMode::Hard)
            .await
            .is_err_and(|e| e.is_backend()),
        "nor is a pattern purge"
    );
    assert!(
        !tiered.l1_in_use(),
        "L1 is out of use until the purge-all is in Redis"
    );
    redis.resume();
    // Until it is replayed and after, the old entry is never served.
    let replayed = eventually(Duration::from_secs(5), || async {
        assert!(
            tiered.get("k").await.unwrap().is_none(),
            "the old entry came back"
        );
        tiered.pending_invalidations().0 == 0
    })
    .await;
    assert!(replayed.is_some(), "the purge-all was never replayed");
    assert!(
        tiered.l2().get("k").await.unwrap().is_none(),
        "Redis was cleared"
    );
    assert!(tiered.get("k").await.unwrap().is_none());
    let back = eventually(Duration::from_secs(3), || async { tiered.l1_in_use() }).await;
    assert!(back.is_some(), "L1 in use again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_queue_of_invalidations_becomes_a_purge_all() {
    let redis = PrivateRedis::start();
    let namespace = unique("overflow");
    let tiered = hung_tier(&redis, &namespace).await;
    let options = SetOptions::new().ttl(Duration::from_secs(60));
    tiered
        .set("k", Bytes::from_static(b"old"), &options)
        .await
        .unwrap();
    redis.pause();
    open_breaker(&tiered).await;
    // 10,000 invalidations wait; the one for `k` comes after them.
    for i in 0..10_000 {
        assert!(
            tiered
                .purge_key(&format!("x{i}"), PurgeMode::Hard)
                .await
                .is_err()
        );
    }
    assert_eq!(tiered.pending_invalidations(), (10_000, 0));
    assert!(tiered.purge_key("k", PurgeMode::Hard).await.is_err());
    assert_eq!(
        tiered.pending_invalidations(),
        (1, 1),
        "one purge-all of the namespace waits instead"
    );
    assert!(tiered.get("k").await.unwrap().is_none());
    assert!(!tiered.l1_in_use());
    redis.resume();
    let replayed = eventually(Duration::from_secs(5), || async {
        tiered.pending_invalidations().0 == 0
    })
    .await;
    assert!(replayed.is_some(), "the purge-all was never replayed");
    assert!(
        tiered.l2().get("k").await.unwrap().is_none(),
        "Redis no longer serves the value deleted while it hung"
    );
}
