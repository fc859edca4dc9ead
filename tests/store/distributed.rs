//! Stores under failure and across instances: two tiered stores on one Redis, a Redis that
//! dies and comes back, a Redis that hangs, and memory bounds.
#![cfg(all(feature = "memory", feature = "redis"))]

use crate::support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{PrivateRedis, SilentServer, eventually};
use tower_strata::store::{
    KeyPattern, MemoryStore, PurgeMode, RedisStore, SetOptions, Store, StoreError, StoreExt,
    TieredStore,
};

/// Two instances' tiered store on `url`, with short timeouts for the tests that kill Redis.
fn tiered_on(url: &str, namespace: &str) -> TieredStore {
    tiered_with(url, namespace, Duration::from_millis(300))
}

/// The same with `timeout` on commands, connecting and pings: the cross-instance tests use a
/// longer one, so a ping slowed by a loaded machine does not drop the subscription mid-test.
fn tiered_with(url: &str, namespace: &str, timeout: Duration) -> TieredStore {
    let l2 = RedisStore::builder(url)
        .namespace(namespace)
        .timeout(timeout)
        .connect_timeout(timeout)
        .ping_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    TieredStore::builder(MemoryStore::new(16 << 20), l2)
        .l1_ttl(Some(Duration::from_secs(300)))
        .build()
        .unwrap()
}

async fn wait_subscribed(stores: &[&TieredStore]) {
    let ok = eventually(Duration::from_secs(10), || async {
        // Subscribed, and the subscription's resync applied: L1 takes copies from here on.
        stores.iter().all(|s| s.l1_in_use())
    })
    .await;
    assert!(ok.is_some(), "backplanes subscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_the_other_instance_within_100ms() {
    invalidations_reach_the_other_instance(&support::redis_url()).await;
}

#[cfg(feature = "redis-cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_the_other_instance_within_100ms_on_a_cluster() {
    invalidations_reach_the_other_instance(&support::cluster::shared().url()).await;
}

async fn invalidations_reach_the_other_instance(url: &str) {
    let ns = support::unique("two");
    let a = tiered_with(url, &ns, Duration::from_secs(2));
    let b = tiered_with(url, &ns, Duration::from_secs(2));
    wait_subscribed(&[&a, &b]).await;
    let tagged = SetOptions::new().tags(["product:1", "products"]);

    // Tag purge.
    a.set("p1", Bytes::from_static(b"v1"), &tagged)
        .await
        .unwrap();
    // A's write is announced on the backplane too; a fill of B's L1 that races with that
    // announcement is discarded by design, so read until the copy sticks.
    let filled = eventually(Duration::from_secs(2), || async {
        b.get("p1").await.unwrap().is_some() && b.l1().get("p1").await.unwrap().is_some()
    })
    .await;
    assert!(
        filled.is_some(),
        "B reads it through L2 and its L1 holds a copy"
    );
    a.purge_tag("products", PurgeMode::Hard).await.unwrap();
    let seen = eventually(Duration::from_millis(100), || async {
        b.get("p1").await.unwrap().is_none()
    })
    .await;
    assert!(seen.is_some(), "B misses within 100 ms of A's tag purge");

    // A plain write replaces B's L1 copy.
    a.set("k", Bytes::from_static(b"old"), &SetOptions::new())
        .await
        .unwrap();
    assert_eq!(b.get("k").await.unwrap().unwrap().value(), &b"old"[..]);
    a.set("k", Bytes::from_static(b"new"), &SetOptions::new())
        .await
        .unwrap();
    let seen = eventually(Duration::from_millis(100), || async {
        b.get("k")
            .await
            .unwrap()
            .is_some_and(|e| e.value() == &b"new"[..])
    })
    .await;
    assert!(seen.is_some(), "B sees A's overwrite within 100 ms");

    // Delete, pattern and clear.
    a.purge_key("k", PurgeMode::Hard).await.unwrap();
    assert!(
        eventually(Duration::from_millis(100), || async {
            b.get("k").await.unwrap().is_none()
        })
        .await
        .is_some()
    );
    a.set("u:1", Bytes::from_static(b"1"), &SetOptions::new())
        .await
        .unwrap();
    assert!(b.get("u:1").await.unwrap().is_some());
    a.purge_matching(&KeyPattern::glob("u:*").unwrap(), PurgeMode::Hard)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_millis(100), || async {
            b.l1().get("u:1").await.unwrap().is_none()
        })
        .await
        .is_some()
    );
    a.set("c", Bytes::from_static(b"1"), &SetOptions::new())
        .await
        .unwrap();
    assert!(b.get("c").await.unwrap().is_some());
    a.clear().await.unwrap();
    assert!(
        eventually(Duration::from_millis(100), || async {
            b.l1().get("c").await.unwrap().is_none()
        })
        .await
        .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dies_tiered_serves_from_l1_and_recovers() {
    let mut redis = PrivateRedis::start();
    let ns = support::unique("down");
    let a = tiered_on(&redis.url(), &ns);
    let b = tiered_on(&redis.url(), &ns);
    wait_subscribed(&[&a, &b]).await;
    a.set(
        "k",
        Bytes::from_static(b"v"),
        &SetOptions::new().tags(["t"]),
    )
    .await
    .unwrap();

    redis.kill();
    // Reads are served from L1; writes and deletes apply locally but say they did not reach
    // Redis; errors are counted.
    let started = Instant::now();
    assert_eq!(a.get("k").await.unwrap().unwrap().value(), &b"v"[..]);
    assert!(
        a.set("k2", Bytes::from_static(b"v2"), &SetOptions::new())
            .await
            .is_err(),
        "a write that missed Redis is not reported as done"
    );
    assert!(a.get("k2").await.unwrap().is_some(), "it is served from L1");
    assert!(
        a.get("absent").await.unwrap().is_none(),
        "an L2 failure is a miss"
    );
    assert!(a.purge_tag("other", PurgeMode::Hard).await.is_err());
    assert_eq!(
        a.pending_invalidations().0,
        1,
        "the tag purge waits for Redis"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no call hangs on a dead Redis"
    );
    assert!(a.stats().errors > 0, "failures are counted");
    assert!(
        a.incr("n", 1, None).await.is_err(),
        "counters have no local answer"
    );
    let disconnected = eventually(Duration::from_secs(5), || async {
        !a.l2().backplane_connected()
    })
    .await;
    assert!(disconnected.is_some());

    // Redis is back on the same port: both reconnect and resubscribe by themselves, and L1
    // copies that could have missed invalidations are dropped.
    let _redis = PrivateRedis::start_on(redis.port);
    wait_subscribed(&[&a, &b]).await;
    // The failures above opened A's circuit breaker: its probe, a cool-down after, closes it.
    let answering = eventually(Duration::from_secs(5), || async {
        a.l2().get("probe").await.is_ok() && b.l2().get("probe").await.is_ok()
    })
    .await;
    assert!(answering.is_some(), "{:?}", a.l2().stats());
    assert!(
        a.l1().get("k").await.unwrap().is_none(),
        "L1 dropped after the reconnect"
    );
    a.set(
        "k3",
        Bytes::from_static(b"v3"),
        &SetOptions::new().tags(["t3"]),
    )
    .await
    .unwrap();
    assert!(b.get("k3").await.unwrap().is_some());
    a.purge_tag("t3", PurgeMode::Hard).await.unwrap();
    let seen = eventually(Duration::from_millis(500), || async {
        b.l1().get("k3").await.unwrap().is_none()
    })
    .await;
    assert!(seen.is_some(), "invalidations flow again after the restart");
}

#[tokio::test]
async fn a_hung_redis_times_out_every_call() {
    let silent = SilentServer::start();
    let bound = Duration::from_millis(200);
    // Without the circuit breaker, which would refuse calls after three timeouts, nor the read
    // soft timeout, whose reads give up sooner: this test is about the bound on each call
    // (`tests/store/breaker.rs` tests both).
    let store = RedisStore::builder(silent.url())
        .namespace(support::unique("hang"))
        .timeout(bound)
        .read_soft_timeout(None)
        .connect_timeout(bound)
        .breaker(None)
        .build()
        .expect("building never touches Redis");
    let options = SetOptions::new().tags(["t"]);
    macro_rules! times_out {
        ($call:expr) => {{
            let started = Instant::now();
            let result = $call.await;
            let took = started.elapsed();
            assert!(
                matches!(result, Err(StoreError::Timeout { .. })),
                "{} returned {:?}",
                stringify!($call),
                result
            );
            // The bound plus scheduling slack: never the seconds a hung socket would take.
            assert!(took < bound * 5, "{} took {:?}", stringify!($call), took);
        }};
    }
    times_out!(store.get("k"));
    times_out!(store.set("k", Bytes::from_static(b"v"), &options));
    times_out!(store.purge_key("k", PurgeMode::Hard));
    times_out!(store.get_many(&["a", "b"]));
    times_out!(store.set_many(&[("a", Bytes::new())], &options));
    times_out!(store.incr("n", 1, None));
    times_out!(store.set_add("s", &["x"]));
    times_out!(store.set_remove("s", &["x"]));
    times_out!(store.set_members("s"));
    times_out!(store.purge_tag("t", PurgeMode::Hard));
    times_out!(store.purge_matching(&KeyPattern::glob("*").unwrap(), PurgeMode::Hard));
    times_out!(store.clear());
    times_out!(store.ping());
    let stats = store.stats();
    assert_eq!(stats.timeouts, 13);
    assert_eq!(stats.errors, 13);
}

#[tokio::test]
async fn memory_store_stays_bounded() {
    let capacity = 10 << 20;
    let store = MemoryStore::builder()
        .capacity_bytes(capacity)
        .sweep_interval(None)
        .build();
    let value = Bytes::from(vec![1u8; 4096]);
    let mut written = 0u64;
    let mut i = 0u64;
    while written < 100 << 20 {
        let tags = [
            format!("tag:{}", i % 1000),
            format!("group:{}", i % 7),
            "all".to_string(),
        ];
        store
            .set(
                &format!("key:{i}"),
                value.clone(),
                &SetOptions::new().tags(tags),
            )
            .await
            .unwrap();
        written += value.len() as u64;
        i += 1;
    }
    assert!(
        store.weight() <= capacity,
        "weight {} over capacity",
        store.weight()
    );
    let held = store.len();
    assert!(
        held < 3_000,
        "10 MiB holds at most ~2,500 4 KiB entries, got {held}"
    );
    assert!(
        store.tag_index_len() <= held * 3,
        "tag index {} outgrew the {held} entries it points to",
        store.tag_index_len()
    );
    assert!(store.stats().evictions > 20_000);
    // Purging the tag every entry carried leaves nothing behind.
    assert_eq!(
        store.purge_tag("all", PurgeMode::Hard).await.unwrap(),
        held as u64
    );
    let cleaned = eventually(Duration::from_secs(5), || async {
        store.tag_index_len() == 0
    })
    .await;
    assert!(cleaned.is_some(), "background clean-up emptied the index");
    assert!(store.is_empty());
    store.sweep();
}

#[tokio::test(start_paused = true)]
async fn memory_sweep_drops_expired_entries() {
    let store = MemoryStore::builder()
        .sweep_interval(Some(Duration::from_secs(1)))
        .build();
    let local_ttl = SetOptions::new().ttl(Duration::from_millis(10)).tags(["t"]);
    store
        .set("a", Bytes::from_static(b"1"), &local_ttl)
        .await
        .unwrap();
    store
        .set("b", Bytes::from_static(b"2"), &SetOptions::new())
        .await
        .unwrap();
    // The entry's TTL is wall-clock time; wait it out for real, then let the paused clock drive
    // the sweep.
    std::thread::sleep(Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        store.len(),
        1,
        "the sweep removed the expired entry without a read"
    );
    assert_eq!(store.tag_index_len(), 0);
    assert_eq!(store.stats().expirations, 1);
}

#[tokio::test]
async fn a_slow_l2_is_a_miss_after_the_soft_timeout() {
    let silent = SilentServer::start();
    let l2 = RedisStore::builder(silent.url())
        .namespace(support::unique("slow"))
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let tiered = TieredStore::builder(MemoryStore::new(1 << 20), l2)
        .soft_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let started = Instant::now();
    assert!(tiered.get("k").await.unwrap().is_none());
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "waited {took:?} for a hung L2, not 50 ms"
    );
    let stats = tiered.stats();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.timeouts, 1, "the soft timeout is counted");
}

#[tokio::test]
async fn l1_copies_never_outlive_the_l2_entry() {
    let ns = support::unique("l1ttl");
    let tiered = tiered_on(&support::redis_url(), &ns);
    // A separate writer (no L1) stores an entry with 300 ms left in L2.
    let writer = RedisStore::builder(support::redis_url())
        .namespace(&ns)
        .build()
        .unwrap();
    writer
        .set(
            "k",
            Bytes::from_static(b"v"),
            &SetOptions::new().ttl(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert!(
        tiered.get("k").await.unwrap().is_some(),
        "filled into L1 (L1 TTL is 300 s)"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        tiered.l1().get("k").await.unwrap().is_none(),
        "the L1 copy expired with the L2 entry, not after the L1 TTL"
    );
}

#[tokio::test]
async fn redis_index_sweep_drops_expired_members() {
    let ns = support::unique("sweep");
    let store = RedisStore::builder(support::redis_url())
        .namespace(&ns)
        .build()
        .unwrap();
    let short = SetOptions::new()
        .ttl(Duration::from_millis(100))
        .tags(["t"]);
    let long = SetOptions::new().ttl(Duration::from_secs(60)).tags(["t"]);
    for i in 0..50 {
        store
            .set(&format!("short:{i}"), Bytes::from_static(b"v"), &short)
            .await
            .unwrap();
    }
    store
        .set("long", Bytes::from_static(b"v"), &long)
        .await
        .unwrap();
    let client = redis::Client::open(support::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let index = format!("{ns}:i:t");
    let before: u64 = redis::cmd("SCARD")
        .arg(&index)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(before, 51);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(store.sweep_index().await.unwrap(), 50);
    let after: u64 = redis::cmd("SCARD")
        .arg(&index)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(after, 1, "only the live entry stays in the tag index");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&index)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 50_000,
        "the index set lives as long as its longest-lived member"
    );
    store.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purges_reach_the_other_instance_within_100ms() {
    soft_purges_reach_the_other_instance(&support::redis_url()).await;
}

#[cfg(feature = "redis-cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purges_reach_the_other_instance_within_100ms_on_a_cluster() {
    soft_purges_reach_the_other_instance(&support::cluster::shared().url()).await;
}

async fn soft_purges_reach_the_other_instance(url: &str) {
    use tower_strata::store::{KeyPattern, PurgeMode};
    let ns = support::unique("soft2");
    let a = tiered_with(url, &ns, Duration::from_secs(2));
    let b = tiered_with(url, &ns, Duration::from_secs(2));
    wait_subscribed(&[&a, &b]).await;
    let graced = SetOptions::new()
        .ttl(Duration::from_secs(60))
        .grace(Duration::from_secs(60))
        .tags(["products"]);
    for key in ["p1", "p2"] {
        a.set(key, Bytes::from_static(b"v1"), &graced)
            .await
            .unwrap();
        let filled = eventually(Duration::from_secs(2), || async {
            b.get(key).await.unwrap().is_some() && b.l1().get(key).await.unwrap().is_some()
        })
        .await;
        assert!(filled.is_some(), "B holds an L1 copy of {key}");
    }

    // A soft tag purge on A: B serves the value stale, from its own L1 marks.
    a.purge_tag("products", PurgeMode::Soft).await.unwrap();
    let stale = eventually(Duration::from_millis(100), || async {
        b.get("p1")
            .await
            .unwrap()
            .is_some_and(|e| e.is_stale() && e.value() == &b"v1"[..])
    })
    .await;
    assert!(stale.is_some(), "B sees the soft purge within 100 ms");

    // A soft regex purge: B drops its copy and reads L2's stale one.
    a.set("p2", Bytes::from_static(b"v2"), &graced)
        .await
        .unwrap();
    let fresh = eventually(Duration::from_secs(2), || async {
        b.get("p2").await.unwrap().is_some_and(|e| !e.is_stale())
    })
    .await;
    assert!(fresh.is_some());
    let regex = KeyPattern::regex("^p2$").unwrap();
    assert_eq!(a.purge_matching(&regex, PurgeMode::Soft).await.unwrap(), 1);
    let stale = eventually(Duration::from_millis(100), || async {
        b.get("p2")
            .await
            .unwrap()
            .is_some_and(|e| e.is_stale() && e.value() == &b"v2"[..])
    })
    .await;
    assert!(
        stale.is_some(),
        "B sees the soft pattern purge within 100 ms"
    );
}

/// A write stamped before a purge (a fetch that began before it, `SetOptions::as_of`) stays
/// hidden after the backplane resubscribed. The resubscription drops L1 with the marks it
/// kept, so L1 alone cannot tell that the write is too old: before the fix it kept the write
/// and served it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_write_after_a_resubscription_stays_hidden_by_the_purge() {
    use std::time::SystemTime;
    use tower_strata::store::PurgeMode;
    let redis = PrivateRedis::start();
    let store = tiered_with(
        &redis.url(),
        &support::unique("late"),
        Duration::from_secs(2),
    );
    wait_subscribed(&[&store]).await;
    let tagged = SetOptions::new()
        .ttl(Duration::from_secs(60))
        .tags(["row:1"]);

    let fetched_at = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.purge_tag("row:1", PurgeMode::Hard).await.unwrap();

    // Drop the subscription; a canary in L1 shows when the resubscription has dropped L1.
    store
        .set("canary", Bytes::from_static(b"c"), &SetOptions::new())
        .await
        .unwrap();
    assert!(store.l1().get("canary").await.unwrap().is_some());
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    let resynced = eventually(Duration::from_secs(10), || async {
        store.l2().backplane_connected() && store.l1().get("canary").await.unwrap().is_none()
    })
    .await;
    assert!(resynced.is_some(), "the store resubscribed and dropped L1");

    store
        .set(
            "late",
            Bytes::from_static(b"old row"),
            &tagged.clone().as_of(fetched_at),
        )
        .await
        .unwrap();
    assert!(
        store.get("late").await.unwrap().is_none(),
        "a write fetched before the purge is hidden by its mark"
    );
    assert!(store.l1().get("late").await.unwrap().is_none());
    // Fetched after the purge: kept, and in L1.
    store
        .set("fresh", Bytes::from_static(b"new row"), &tagged)
        .await
        .unwrap();
    assert!(store.get("fresh").await.unwrap().is_some());
}
