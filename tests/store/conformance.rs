//! The store conformance suite, written once and run against every store: memory, Redis
//! (real server at REDIS_URL) and tiered.
#![cfg(all(feature = "memory", feature = "redis"))]

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tower_strata::store::{
    BoxStore, ComputeError, KeyPattern, MemoryStore, PurgeMode, RedisStore, SetOptions, Store,
    StoreError, StoreExt, TieredStore, TypedCache,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn memory() -> MemoryStore {
    MemoryStore::new(64 << 20)
}

async fn redis() -> RedisStore {
    RedisStore::builder(support::redis_url())
        .namespace(support::unique("conf"))
        .build()
        .unwrap()
}

async fn tiered() -> TieredStore {
    TieredStore::try_new(MemoryStore::new(64 << 20), redis().await).unwrap()
}

/// A Redis Cluster of three masters, shared by this binary's tests.
#[cfg(feature = "redis-cluster")]
async fn cluster() -> RedisStore {
    RedisStore::builder(support::cluster::shared().url())
        .namespace(support::unique("conf"))
        // A 2,000-key batch is a pipeline per hash slot, up to 2,000 of them at once: on a
        // loaded two-core CI machine that can overrun the default 500 ms.
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[cfg(feature = "redis-cluster")]
async fn tiered_cluster() -> TieredStore {
    TieredStore::try_new(MemoryStore::new(64 << 20), cluster().await).unwrap()
}

async fn boxed() -> BoxStore {
    BoxStore::new(tiered().await)
}

/// The suite: each function takes a fresh, empty store.
mod suite {
    use super::*;

    pub async fn get_set_delete(s: impl StoreExt) {
        assert!(s.get("a").await.unwrap().is_none());
        let options = SetOptions::new()
            .ttl(Duration::from_secs(60))
            .grace(Duration::from_secs(5))
            .tags(["t1", "t2"]);
        s.set("a", b("alpha"), &options).await.unwrap();
        let entry = s.get("a").await.unwrap().expect("stored");
        assert_eq!(entry.value(), &b("alpha"));
        assert_eq!(entry.ttl(), Some(Duration::from_secs(60)));
        assert_eq!(entry.grace(), Duration::from_secs(5));
        assert_eq!(entry.tags(), ["t1", "t2"]);
        assert!(!entry.is_stale());
        assert!(entry.age() < Duration::from_secs(5));
        // Replace.
        s.set("a", b("beta"), &SetOptions::new()).await.unwrap();
        assert_eq!(s.get("a").await.unwrap().unwrap().value(), &b("beta"));
        assert!(s.purge_key("a", PurgeMode::Hard).await.unwrap());
        assert!(!s.purge_key("a", PurgeMode::Hard).await.unwrap());
        assert!(s.get("a").await.unwrap().is_none());
    }

    pub async fn ttl_and_grace(s: impl StoreExt) {
        let short = SetOptions::new().ttl(Duration::from_millis(150));
        s.set("gone", b("x"), &short).await.unwrap();
        let graced = short.clone().grace(Duration::from_secs(30));
        s.set("graced", b("y"), &graced).await.unwrap();
        assert!(!s.get("graced").await.unwrap().unwrap().is_stale());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(s.get("gone").await.unwrap().is_none(), "past TTL, no grace");
        let stale = s.get("graced").await.unwrap().expect("inside grace");
        assert!(stale.is_stale(), "served marked stale");
        assert_eq!(stale.value(), &b("y"));
        assert!(s.stats().stale_hits >= 1);
    }

    pub async fn tags(s: impl StoreExt) {
        let t1 = SetOptions::new().tags(["t1"]);
        let both = SetOptions::new().tags(["t1", "t2"]);
        let t2 = SetOptions::new().tags(["t2"]);
        s.set("a", b("1"), &t1).await.unwrap();
        s.set("b", b("2"), &both).await.unwrap();
        s.set("c", b("3"), &t2).await.unwrap();
        s.set("d", b("4"), &SetOptions::new()).await.unwrap();
        assert_eq!(s.purge_tag("t1", PurgeMode::Hard).await.unwrap(), 2);
        assert!(s.get("a").await.unwrap().is_none());
        assert!(s.get("b").await.unwrap().is_none());
        assert!(s.get("c").await.unwrap().is_some());
        assert!(s.get("d").await.unwrap().is_some());
        assert_eq!(
            s.get_many(&["a", "b", "c"]).await.unwrap()[2]
                .as_ref()
                .unwrap()
                .value(),
            &b("3")
        );
        // Entries written after the purge carry the tag and are visible.
        tokio::time::sleep(Duration::from_millis(2)).await;
        s.set("a", b("new"), &t1).await.unwrap();
        assert_eq!(s.get("a").await.unwrap().unwrap().value(), &b("new"));
        assert_eq!(s.purge_tag("never-used", PurgeMode::Hard).await.unwrap(), 0);
        assert!(matches!(
            s.purge_tag("has space", PurgeMode::Hard).await,
            Err(StoreError::InvalidTag { .. })
        ));
    }

    pub async fn large_tag_purges_completely(s: impl StoreExt) {
        let options = SetOptions::new().tags(["big"]);
        let keys: Vec<String> = (0..2_000).map(|i| format!("big:{i}")).collect();
        for chunk in keys.chunks(500) {
            let items: Vec<(&str, Bytes)> = chunk.iter().map(|k| (k.as_str(), b("v"))).collect();
            s.set_many(&items, &options).await.unwrap();
        }
        assert_eq!(s.purge_tag("big", PurgeMode::Hard).await.unwrap(), 2_000);
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let found = s.get_many(&refs).await.unwrap();
        assert!(
            found.iter().all(Option::is_none),
            "every tagged entry is gone"
        );
    }

    pub async fn patterns(s: impl StoreExt) {
        for key in ["user:1", "user:2", "user:10", "item:1", "u[1]"] {
            s.set(key, b("v"), &SetOptions::new()).await.unwrap();
        }
        // A malformed glob never reaches the store: it is refused when parsed.
        assert!(matches!(
            KeyPattern::glob("user:[12"),
            Err(StoreError::InvalidPattern { .. })
        ));
        assert_eq!(
            s.purge_matching(&KeyPattern::glob("user:?").unwrap(), PurgeMode::Hard)
                .await
                .unwrap(),
            2
        );
        assert!(s.get("user:10").await.unwrap().is_some());
        assert_eq!(
            s.purge_matching(&KeyPattern::glob("u\\[1]").unwrap(), PurgeMode::Hard)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            s.purge_matching(&KeyPattern::glob("*").unwrap(), PurgeMode::Hard)
                .await
                .unwrap(),
            2
        );
        assert!(s.get("item:1").await.unwrap().is_none());
    }

    pub async fn batches(s: impl StoreExt) {
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let items: Vec<(&str, Bytes)> = keys.iter().map(|k| (k.as_str(), b(k))).collect();
        s.set_many(&items, &SetOptions::new().ttl(Duration::from_secs(60)))
            .await
            .unwrap();
        let mut wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
        wanted.push("missing");
        let found = s.get_many(&wanted).await.unwrap();
        assert_eq!(found.len(), 101);
        for (i, entry) in found.iter().take(100).enumerate() {
            assert_eq!(entry.as_ref().unwrap().value(), &b(&format!("k{i}")));
        }
        assert!(found[100].is_none());
        assert!(s.get_many(&[]).await.unwrap().is_empty());
    }

    pub async fn counters(s: impl StoreExt) {
        assert_eq!(s.incr("n", 5, None).await.unwrap(), 5);
        assert_eq!(s.decr("n", 2, None).await.unwrap(), 3);
        assert_eq!(s.incr("n", -10, None).await.unwrap(), -7);
        // TTL is set on creation and not extended.
        let ttl = Some(Duration::from_millis(300));
        assert_eq!(s.incr("window", 1, ttl).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(s.incr("window", 1, ttl).await.unwrap(), 2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            s.incr("window", 1, ttl).await.unwrap(),
            1,
            "expired and recreated"
        );
        assert!(s.decr("n", i64::MIN, None).await.is_err());
        s.set("entry", b("x"), &SetOptions::new()).await.unwrap();
        assert!(s.incr("entry", 1, None).await.is_err(), "not a counter");
    }

    pub async fn concurrent_incr_is_exact(s: impl StoreExt) {
        let s = Arc::new(s);
        let tasks: Vec<_> = (0..1_000)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.incr("hits", 1, None).await.unwrap() })
            })
            .collect();
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap());
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (1..=1_000).collect::<Vec<i64>>(),
            "each increment seen once"
        );
        assert_eq!(s.incr("hits", 0, None).await.unwrap(), 1_000);
    }

    pub async fn sets(s: impl StoreExt) {
        assert_eq!(s.set_add("s", &["a", "b", "a"]).await.unwrap(), 2);
        assert_eq!(s.set_add("s", &["b", "c"]).await.unwrap(), 1);
        let mut members = s.set_members("s").await.unwrap();
        members.sort();
        assert_eq!(members, ["a", "b", "c"]);
        assert_eq!(s.set_remove("s", &["a", "z"]).await.unwrap(), 1);
        assert_eq!(s.set_members("s").await.unwrap().len(), 2);
        assert!(s.set_members("none").await.unwrap().is_empty());
        assert_eq!(s.set_add("s", &[]).await.unwrap(), 0);
    }

    pub async fn limits(s: impl StoreExt) {
        let limits = s.limits();
        let long = "k".repeat(limits.max_key_len + 1);
        assert!(matches!(
            s.get(&long).await,
            Err(StoreError::KeyTooLong { .. })
        ));
        assert!(matches!(
            s.set(&long, b("v"), &SetOptions::new()).await,
            Err(StoreError::KeyTooLong { .. })
        ));
        assert!(matches!(
            s.get("").await,
            Err(StoreError::InvalidKey { .. })
        ));
        let big = Bytes::from(vec![7u8; limits.max_value_size + 1]);
        assert!(matches!(
            s.set("big", big, &SetOptions::new()).await,
            Err(StoreError::ValueTooLarge { .. })
        ));
        assert!(
            s.get("big").await.unwrap().is_none(),
            "refused, not truncated"
        );
        let at_limit = Bytes::from(vec![7u8; limits.max_value_size]);
        s.set("max", at_limit.clone(), &SetOptions::new())
            .await
            .unwrap();
        assert_eq!(
            s.get("max").await.unwrap().unwrap().value().len(),
            at_limit.len()
        );
        assert!(matches!(
            s.set("t", b("v"), &SetOptions::new().tags([""])).await,
            Err(StoreError::InvalidTag { .. })
        ));
    }

    pub async fn stats(s: impl StoreExt) {
        let before = s.stats();
        s.set("a", b("1"), &SetOptions::new()).await.unwrap();
        s.get("a").await.unwrap();
        s.get("a").await.unwrap();
        s.get("nope").await.unwrap();
        s.purge_key("a", PurgeMode::Hard).await.unwrap();
        let after = s.stats();
        assert!(after.sets > before.sets);
        assert_eq!(after.hits - before.hits, 2);
        assert_eq!(after.misses - before.misses, 1);
        assert!(after.deletes > before.deletes);
        assert!(after.hit_rate > 0.0 && after.hit_rate <= 1.0);
    }

    pub async fn clear(s: impl StoreExt) {
        s.set("a", b("1"), &SetOptions::new().tags(["t"]))
            .await
            .unwrap();
        s.incr("n", 1, None).await.unwrap();
        s.set_add("s", &["x"]).await.unwrap();
        assert!(s.clear().await.unwrap() >= 3);
        assert!(s.get("a").await.unwrap().is_none());
        assert_eq!(s.incr("n", 1, None).await.unwrap(), 1);
    }

    pub async fn single_flight(s: impl StoreExt + Clone) {
        let cache = TypedCache::new(s);
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..1_000)
            .map(|_| {
                let cache = cache.clone();
                let calls = calls.clone();
                tokio::spawn(async move {
                    cache
                        .get_or_compute("answer", &SetOptions::new(), move || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Ok::<_, std::io::Error>(vec![42u32; 8])
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), vec![42u32; 8]);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "computed once for 1,000 callers"
        );
        assert_eq!(
            cache.get::<Vec<u32>>("answer").await.unwrap(),
            Some(vec![42u32; 8])
        );
    }

    pub async fn compute_errors_reach_all_and_are_not_cached(s: impl StoreExt + Clone) {
        let cache = TypedCache::new(s);
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let cache = cache.clone();
                let calls = calls.clone();
                tokio::spawn(async move {
                    cache
                        .get_or_compute("fails", &SetOptions::new(), move || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Err::<u32, _>("origin down")
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                Err(ComputeError::Compute(e)) => assert_eq!(*e, "origin down"),
                other => panic!("expected the compute error, got {other:?}"),
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            cache.get::<u32>("fails").await.unwrap(),
            None,
            "errors are not cached"
        );
        let v = cache
            .get_or_compute("fails", &SetOptions::new(), || async {
                Ok::<_, &str>(7u32)
            })
            .await
            .unwrap();
        assert_eq!(v, 7);
    }

    pub async fn stale_value_is_served_when_compute_fails(s: impl StoreExt + Clone) {
        let cache = TypedCache::new(s);
        let options = SetOptions::new()
            .ttl(Duration::from_millis(100))
            .grace(Duration::from_secs(30));
        cache.set("fs", &1u32, &options).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let v = cache
            .get_or_compute("fs", &options, || async { Err::<u32, _>("down") })
            .await
            .unwrap();
        assert_eq!(v, 1, "fail-safe: the stale value");
    }

    fn graced(tags: &[&str]) -> SetOptions {
        SetOptions::new()
            .ttl(Duration::from_secs(60))
            .grace(Duration::from_secs(30))
            .tags(tags.iter().copied())
    }

    pub async fn soft_purge_key(s: impl StoreExt) {
        s.set("soft", b("old"), &graced(&[])).await.unwrap();
        s.set("other", b("kept"), &graced(&[])).await.unwrap();
        let no_grace = SetOptions::new().ttl(Duration::from_secs(60));
        s.set("bare", b("x"), &no_grace).await.unwrap();
        assert!(s.purge_key("soft", PurgeMode::Soft).await.unwrap());
        assert!(s.purge_key("bare", PurgeMode::Soft).await.unwrap());
        assert!(!s.purge_key("missing", PurgeMode::Soft).await.unwrap());
        let stale = s.get("soft").await.unwrap().expect("kept for its grace");
        assert!(stale.is_stale(), "soft-purged entries are stale");
        assert_eq!(stale.value(), &b("old"));
        assert!(stale.time_to_expiry().unwrap() <= Duration::from_secs(30));
        assert!(
            s.get("bare").await.unwrap().is_none(),
            "no grace: as good as gone"
        );
        assert!(!s.get("other").await.unwrap().unwrap().is_stale());
        // A write after the purge is fresh; a hard purge removes.
        s.set("soft", b("new"), &graced(&[])).await.unwrap();
        assert!(!s.get("soft").await.unwrap().unwrap().is_stale());
        assert!(s.purge_key("soft", PurgeMode::Hard).await.unwrap());
        assert!(s.get("soft").await.unwrap().is_none());
    }

    pub async fn soft_purge_tag(s: impl StoreExt) {
        for i in 0..5 {
            s.set(&format!("p{i}"), b("old"), &graced(&["products"]))
                .await
                .unwrap();
        }
        s.set("c", b("cat"), &graced(&["categories"]))
            .await
            .unwrap();
        let no_grace = SetOptions::new()
            .ttl(Duration::from_secs(60))
            .tags(["products"]);
        s.set("ng", b("x"), &no_grace).await.unwrap();
        let n = s.purge_tag("products", PurgeMode::Soft).await.unwrap();
        assert_eq!(n, 6, "the tag held six entries");
        for i in 0..5 {
            let e = s
                .get(&format!("p{i}"))
                .await
                .unwrap()
                .expect("served stale");
            assert!(e.is_stale());
            assert_eq!(e.value(), &b("old"));
        }
        assert!(s.get("ng").await.unwrap().is_none(), "no grace: gone");
        assert!(
            !s.get("c").await.unwrap().unwrap().is_stale(),
            "other tags untouched"
        );
        // Written after the soft purge: fresh.
        tokio::time::sleep(Duration::from_millis(2)).await;
        s.set("p0", b("new"), &graced(&["products"])).await.unwrap();
        let fresh = s.get("p0").await.unwrap().unwrap();
        assert!(!fresh.is_stale());
        assert_eq!(fresh.value(), &b("new"));
        // A hard purge after the soft one removes everything stored before it.
        tokio::time::sleep(Duration::from_millis(2)).await;
        s.purge_tag("products", PurgeMode::Hard).await.unwrap();
        for i in 0..5 {
            assert!(s.get(&format!("p{i}")).await.unwrap().is_none());
        }
    }

    pub async fn purge_matching(s: impl StoreExt) {
        for key in ["user:1", "user:2", "user:10", "order:1"] {
            s.set(key, b("v"), &graced(&[])).await.unwrap();
        }
        let bad = KeyPattern::regex("user:(").unwrap_err();
        assert!(matches!(bad, StoreError::InvalidPattern { .. }), "{bad}");
        let digits = KeyPattern::regex(r"^user:\d$").unwrap();
        assert_eq!(s.purge_matching(&digits, PurgeMode::Soft).await.unwrap(), 2);
        assert!(s.get("user:1").await.unwrap().unwrap().is_stale());
        assert!(!s.get("user:10").await.unwrap().unwrap().is_stale());
        assert_eq!(s.purge_matching(&digits, PurgeMode::Hard).await.unwrap(), 2);
        assert!(s.get("user:2").await.unwrap().is_none());
        assert!(s.get("user:10").await.unwrap().is_some());
        let glob = KeyPattern::glob("user:*").unwrap();
        assert_eq!(s.purge_matching(&glob, PurgeMode::Hard).await.unwrap(), 1);
        assert!(s.get("order:1").await.unwrap().is_some());
    }

    pub async fn purged_since(s: impl StoreExt) {
        let tags = |t: &[&str]| t.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let before = std::time::SystemTime::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!s.purged_since(&tags(&["a"]), before).await.unwrap());
        s.purge_tag("a", PurgeMode::Hard).await.unwrap();
        s.purge_tag("s", PurgeMode::Soft).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let after = std::time::SystemTime::now();
        assert!(s.purged_since(&tags(&["x", "a"]), before).await.unwrap());
        assert!(
            s.purged_since(&tags(&["s"]), before).await.unwrap(),
            "soft counts"
        );
        assert!(!s.purged_since(&tags(&["x"]), before).await.unwrap());
        assert!(!s.purged_since(&tags(&["a", "s"]), after).await.unwrap());
        assert!(!s.purged_since(&[], before).await.unwrap());
    }

    /// A value fetched before a purge but written after it (a slow reader racing a writer)
    /// must not survive the purge: the entry is stamped with the fetch's start.
    pub async fn write_fetched_before_purge_is_hidden(s: impl StoreExt) {
        let fetched_at = std::time::SystemTime::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.purge_tag("row:1", PurgeMode::Hard).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let late = graced(&["row:1"]).as_of(fetched_at);
        s.set("late", b("old row"), &late).await.unwrap();
        assert!(
            s.get("late").await.unwrap().is_none(),
            "hidden by the purge's mark"
        );
        // Fetched after the purge: kept.
        s.set("fresh", b("new row"), &graced(&["row:1"]))
            .await
            .unwrap();
        assert!(s.get("fresh").await.unwrap().is_some());
    }
}

macro_rules! conformance {
    ($store:ident) => {
        mod $store {
            use super::*;

            #[tokio::test]
            async fn get_set_delete() {
                suite::get_set_delete(super::$store().await).await
            }
            #[tokio::test]
            async fn ttl_and_grace() {
                suite::ttl_and_grace(super::$store().await).await
            }
            #[tokio::test]
            async fn tags() {
                suite::tags(super::$store().await).await
            }
            #[tokio::test]
            async fn large_tag_purges_completely() {
                suite::large_tag_purges_completely(super::$store().await).await
            }
            #[tokio::test]
            async fn patterns() {
                suite::patterns(super::$store().await).await
            }
            #[tokio::test]
            async fn batches() {
                suite::batches(super::$store().await).await
            }
            #[tokio::test]
            async fn counters() {
                suite::counters(super::$store().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_incr_is_exact() {
                suite::concurrent_incr_is_exact(super::$store().await).await
            }
            #[tokio::test]
            async fn sets() {
                suite::sets(super::$store().await).await
            }
            #[tokio::test]
            async fn limits() {
                suite::limits(super::$store().await).await
            }
            #[tokio::test]
            async fn stats() {
                suite::stats(super::$store().await).await
            }
            #[tokio::test]
            async fn clear() {
                suite::clear(super::$store().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn single_flight() {
                suite::single_flight(super::$store().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn compute_errors_reach_all_and_are_not_cached() {
                suite::compute_errors_reach_all_and_are_not_cached(super::$store().await).await
            }
            #[tokio::test]
            async fn soft_purge_key() {
                suite::soft_purge_key(super::$store().await).await
            }
            #[tokio::test]
            async fn soft_purge_tag() {
                suite::soft_purge_tag(super::$store().await).await
            }
            #[tokio::test]
            async fn purge_matching() {
                suite::purge_matching(super::$store().await).await
            }
            #[tokio::test]
            async fn purged_since() {
                suite::purged_since(super::$store().await).await
            }
            #[tokio::test]
            async fn write_fetched_before_purge_is_hidden() {
                suite::write_fetched_before_purge_is_hidden(super::$store().await).await
            }
            #[tokio::test]
            async fn stale_value_is_served_when_compute_fails() {
                suite::stale_value_is_served_when_compute_fails(super::$store().await).await
            }
        }
    };
}

conformance!(memory);
conformance!(redis);
conformance!(tiered);
conformance!(boxed);
#[cfg(feature = "redis-cluster")]
conformance!(cluster);
#[cfg(feature = "redis-cluster")]
conformance!(tiered_cluster);

#[tokio::test]
async fn a_backend_writing_only_the_core_gets_batches_and_refuses_counters_and_sets() {
    use support::core_only::CoreOnly;
    let store = CoreOnly(MemoryStore::new(1 << 20));
    let opts = SetOptions::new().ttl(Duration::from_secs(60)).tags(["t"]);
    store
        .set_many(&[("a", b("1")), ("b", b("2"))], &opts)
        .await
        .unwrap();
    let found = store.get_many(&["a", "missing", "b"]).await.unwrap();
    let values: Vec<Option<Bytes>> = found
        .iter()
        .map(|e| e.as_ref().map(|e| e.value().clone()))
        .collect();
    assert_eq!(values, [Some(b("1")), None, Some(b("2"))]);
    assert!(matches!(
        store.incr("n", 1, None).await,
        Err(StoreError::Unsupported { op: "incr" })
    ));
    assert!(matches!(
        store.decr("n", 1, None).await,
        Err(StoreError::Unsupported { .. })
    ));
    assert!(matches!(
        store.set_add("s", &["x"]).await,
        Err(StoreError::Unsupported { .. })
    ));
    assert!(store.set_remove("s", &["x"]).await.is_err());
    assert!(store.set_members("s").await.is_err());
    // The provided purges work over the core: a hard tag purge, and behind a `BoxStore`.
    assert_eq!(store.purge_tag("t", PurgeMode::Hard).await.unwrap(), 2);
    let boxed = BoxStore::new(store.clone());
    boxed.set("c", b("3"), &opts).await.unwrap();
    assert_eq!(boxed.get_many(&["c"]).await.unwrap().len(), 1);
}
