//! A Redis Cluster under faults: a master killed while a cache serves load, the backplane's
//! shard restarted, and the invalidation bus across instances. Each test starts its own three
//! masters on free loopback ports and stops them by PID.
#![cfg(all(feature = "memory", feature = "redis-cluster", feature = "health"))]

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use support::cluster::PrivateCluster;
use support::{eventually, unique};
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::cache::CacheLayer;
use tower_strata::health::{HealthCheck, Status};
use tower_strata::purge::{EventRule, InvalidationBus, Purger};
use tower_strata::store::{
    BreakerState, MemoryStore, RedisStore, SetOptions, Store, StoreExt, TieredStore,
};

fn store_on(cluster: &PrivateCluster, namespace: &str) -> RedisStore {
    RedisStore::builder(cluster.url())
        .namespace(namespace)
        .timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .ping_interval(Duration::from_millis(200))
        .build()
        .unwrap()
}

type Req = Request<Full<Bytes>>;

fn get(uri: &str) -> Req {
    Request::get(uri).body(Full::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_under_load_fails_open_and_the_store_recovers() {
    let mut cluster = PrivateCluster::start();
    let ns = unique("kill");
    let store = store_on(&cluster, &ns);
    let layer = CacheLayer::new(store.clone());
    let stats = layer.stats();
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let calls = calls.clone();
        tower::service_fn(move |req: Req| {
            calls.fetch_add(1, Ordering::Relaxed);
            let body = Bytes::from(req.uri().path().to_owned());
            async move {
                let mut response = Response::new(Full::new(body));
                response
                    .headers_mut()
                    .insert("cache-control", "max-age=60".parse().unwrap());
                Ok::<_, Infallible>(response)
            }
        })
    };
    let svc = ServiceBuilder::new().layer(layer).service(upstream);
    const PAGES: usize = 60;
    // Every page once: the entry is written as the body is read.
    let all_pages = || async {
        for page in 0..PAGES {
            let r = svc
                .clone()
                .oneshot(get(&format!("http://h/p{page}")))
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.into_body().collect().await.unwrap();
        }
    };
    // Warm every page: keys spread over all three masters.
    all_pages().await;
    let warm = eventually(Duration::from_secs(5), || async {
        stats.stores() >= PAGES as u64
    })
    .await;
    assert!(warm.is_some(), "every page stored: {stats:?}");

    // Load: 8 clients, each request bounded, for a bounded number of rounds.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (svc, stop, failures, served) =
                (svc.clone(), stop.clone(), failures.clone(), served.clone());
            tokio::spawn(async move {
                let mut i = client;
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                    // While the breaker is open every call is ready at once; yield so this
                    // loop cannot hold its worker (and the runtime's timers) forever.
                    tokio::task::yield_now().await;
                    let uri = format!("http://h/p{}", i % PAGES);
                    i += 7;
                    let answer = tokio::time::timeout(
                        Duration::from_secs(2),
                        svc.clone().oneshot(get(&uri)),
                    )
                    .await;
                    match answer {
                        Ok(Ok(r)) if r.status() == 200 => {
                            let body = r.into_body().collect().await.unwrap().to_bytes();
                            assert_eq!(body, uri.trim_start_matches("http://h"));
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One of the three masters: with 60 pages over 16,384 slots, it holds about a third.
    let victim = cluster.master_of("p0");
    cluster.kill(victim);
    let killed_at = served.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = served.load(Ordering::Relaxed) - killed_at;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let restarting = Instant::now();
    cluster.restart(victim);
    eprintln!("cluster whole again after {:?}", restarting.elapsed());
    // Hits come back: a full round of pages is answered from the store again.
    let recovered = eventually(Duration::from_secs(15), || async {
        let before = stats.hits();
        all_pages().await;
        stats.hits() - before == PAGES as u64
    })
    .await;
    eprintln!("every page a hit again after {recovered:?}");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "every request succeeded while a master was dead"
    );
    assert!(
        during > 100,
        "requests kept flowing while the master was dead ({during} in 1.5 s)"
    );
    assert!(
        stats.store_errors() > 0,
        "the dead master was noticed: {stats:?}"
    );
    assert!(
        recovered.is_some(),
        "every page is a hit again after the master came back: {stats:?}"
    );
    let _ = store.clear().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backplane_resubscribes_when_its_shard_comes_back() {
    let mut cluster = PrivateCluster::start();
    let ns = unique("shard");
    let tiered = || {
        TieredStore::builder(MemoryStore::new(16 << 20), store_on(&cluster, &ns))
            .l1_ttl(Some(Duration::from_secs(300)))
            .build()
            .unwrap()
    };
    let (a, b) = (tiered(), tiered());
    let both = || async { a.l1_in_use() && b.l1_in_use() };
    assert!(
        eventually(Duration::from_secs(10), both).await.is_some(),
        "both subscribed"
    );

    // The backplane channel lives on one shard: kill its master.
    let shard = cluster.master_of(&format!("{ns}:bus"));
    cluster.kill(shard);
    let lost = eventually(Duration::from_secs(5), || async {
        !a.l2().backplane_connected() && !b.l2().backplane_connected()
    })
    .await;
    assert!(lost.is_some(), "both noticed the lost subscription");
    cluster.restart(shard);
    assert!(
        eventually(Duration::from_secs(15), both).await.is_some(),
        "both subscribed again"
    );

    // Invalidations flow again: B drops its L1 copy on A's write.
    let key = "k";
    a.set(key, Bytes::from_static(b"old"), &SetOptions::new())
        .await
        .unwrap();
    let filled = eventually(Duration::from_secs(5), || async {
        b.get(key).await.ok().flatten().is_some() && b.l1().get(key).await.unwrap().is_some()
    })
    .await;
    assert!(filled.is_some(), "B holds an L1 copy");
    a.set(key, Bytes::from_static(b"new"), &SetOptions::new())
        .await
        .unwrap();
    let seen = eventually(Duration::from_millis(200), || async {
        b.get(key)
            .await
            .unwrap()
            .is_some_and(|e| e.value() == &b"new"[..])
    })
    .await;
    assert!(
        seen.is_some(),
        "B sees A's overwrite after the shard restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invalidation_bus_reaches_other_instances_on_a_cluster() {
    let cluster = support::cluster::shared();
    let ns = unique("bus");
    let on = |store: MemoryStore| {
        InvalidationBus::builder(Purger::new(store))
            .rule(EventRule::on("product.updated").purge_tags(["product:{id}"]))
            .redis(cluster.url())
            .namespace(&ns)
            .ping_interval(Duration::from_millis(200))
            .build()
            .unwrap()
    };
    let (store_a, store_b) = (MemoryStore::new(1 << 20), MemoryStore::new(1 << 20));
    let (a, b) = (on(store_a.clone()), on(store_b.clone()));
    let connected = eventually(Duration::from_secs(10), || async {
        a.connected() && b.connected()
    })
    .await;
    assert!(connected.is_some(), "both buses subscribed");
    let tagged = SetOptions::new().tags(["product:7"]);
    store_b
        .set("p7", Bytes::from_static(b"v"), &tagged)
        .await
        .unwrap();
    a.publish("product.updated", json!({"id": 7}))
        .await
        .unwrap();
    let seen = eventually(Duration::from_millis(500), || async {
        store_b.get("p7").await.unwrap().is_none()
    })
    .await;
    assert!(seen.is_some(), "B applied A's event");
}

/// What one read of the load saw.
struct Sample {
    /// Since the fault.
    at: Duration,
    on_victim: bool,
    hit: bool,
    took: Duration,
}

fn percentile(mut took: Vec<Duration>, q: f64) -> Duration {
    if took.is_empty() {
        return Duration::ZERO;
    }
    took.sort_unstable();
    took[((took.len() - 1) as f64 * q).round() as usize]
}

fn hit_share<'a>(samples: impl Iterator<Item = &'a Sample>) -> (f64, usize) {
    let (mut hits, mut all) = (0, 0);
    for s in samples {
        all += 1;
        hits += usize::from(s.hit);
    }
    (
        if all == 0 {
            0.0
        } else {
            hits as f64 / all as f64
        },
        all,
    )
}

/// Three masters with a replica each, 300 keys written, then one master hung (SIGSTOP) or
/// killed (SIGKILL) under 16 readers: the other masters' keys stay hits and fast, and once
/// the cluster has promoted the lost master's replica its keys are hits again, while the old
/// master stays stopped. Returns after checking the cluster's health as seen meanwhile.
async fn a_master_lost(hang: bool) {
    const KEYS: usize = 300;
    const READERS: usize = 16;
    let mut cluster = PrivateCluster::start_replicated();
    let ns = unique(if hang { "hung_master" } else { "killed_master" });
    let store = RedisStore::builder(cluster.url())
        .namespace(&ns)
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .ping_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    let options = SetOptions::new().ttl(Duration::from_secs(300));
    let keys: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    for key in &keys {
        store
            .set(key, Bytes::from_static(b"v"), &options)
            .await
            .unwrap();
    }
    // Every key on its replica too before a master is lost (replication is asynchronous).
    cluster.wait_replicated();
    let victim = cluster.master_of(&format!("{ns}:k:k0"));
    let healthy = *cluster
        .masters()
        .iter()
        .find(|p| **p != victim)
        .expect("three masters");
    let on_victim: Arc<Vec<bool>> = Arc::new(
        keys.iter()
            .map(|k| cluster.master_of(&format!("{ns}:k:{k}")) == victim)
            .collect(),
    );
    let victim_keys = on_victim.iter().filter(|v| **v).count();
    assert!(
        victim_keys > 30 && victim_keys < 200,
        "{victim_keys} keys on the victim"
    );
    let states = store.stats().nodes;
    assert_eq!(states.len(), 3, "each master's breaker: {states:?}");
    assert!(
        states.values().all(|s| *s == BreakerState::Closed),
        "{states:?}"
    );
    #[cfg(feature = "dashboard")]
    {
        // The dashboard's store part lists them.
        let data = tower_strata::dashboard::StoreData::from(store.stats());
        assert_eq!(data.nodes.len(), 3);
        assert!(data.nodes.contains_key(&format!("127.0.0.1:{victim}")));
        assert_eq!(data.breaker.as_deref(), Some("closed"));
    }

    if hang {
        cluster.signal(victim, "STOP");
    } else {
        cluster.kill(victim);
    }
    let fault = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|reader| {
            let (store, stop, on_victim) = (store.clone(), stop.clone(), on_victim.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut i = reader;
                while !stop.load(Ordering::Relaxed) && fault.elapsed() < Duration::from_secs(25) {
                    let key = format!("k{}", i % KEYS);
                    let began = Instant::now();
                    let hit = matches!(store.get(&key).await, Ok(Some(_)));
                    samples.push(Sample {
                        at: fault.elapsed(),
                        on_victim: on_victim[i % KEYS],
                        hit,
                        took: began.elapsed(),
                    });
                    i += 7;
                    tokio::task::yield_now().await;
                }
                samples
            })
        })
        .collect();
    // As a healthy master sees it: when the cluster declared itself down (the lost master
    // flagged FAIL with its slots uncovered: with the default `cluster-require-full-coverage
    // yes` every node then refuses every key with CLUSTERDOWN, which no client can help),
    // and when the replica was promoted.
    let cluster = Arc::new(cluster);
    let (down_at, promoted) = {
        let (cluster, key) = (cluster.clone(), format!("{ns}:k:k0"));
        tokio::task::spawn_blocking(move || {
            let mut down_at = None;
            while fault.elapsed() < Duration::from_secs(15) {
                if down_at.is_none() && cluster.state_via(healthy).as_deref() == Some("fail") {
                    down_at = Some(fault.elapsed());
                }
                if cluster
                    .master_of_via(healthy, &key)
                    .is_some_and(|port| port != victim)
                {
                    return (down_at, Some(fault.elapsed()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (down_at, None)
        })
        .await
        .unwrap()
    };
    let promoted = promoted.expect("the replica was promoted within 15 s");
    // Until the cluster went down (or the promotion, if it never did).
    let serving = down_at.unwrap_or(promoted).min(promoted);
    // Health while the old master is gone: the cluster check names it, the store's breakers
    // turn off its slots only.
    let check = tower_strata::health::RedisCheck::cluster(
        cluster
            .node_urls()
            .into_iter()
            .map(|url| redis::Client::open(url).unwrap()),
    )
    .timeout(Duration::from_millis(300));
    let report = check.check().await;
    assert_eq!(report.status, Status::Degraded, "{report:?}");
    let nodes = report.details["nodes"].as_array().expect("nodes").clone();
    assert_eq!(nodes.len(), 6, "{nodes:?}");
    let down: Vec<&str> = nodes
        .iter()
        .filter(|n| n["ok"] == false)
        .filter_map(|n| n["address"].as_str())
        .collect();
    assert_eq!(down, [format!("127.0.0.1:{victim}")], "{nodes:?}");
    let breaker = store.breaker_check().check().await;
    eprintln!("breaker check: {:?}", breaker.details);

    tokio::time::sleep(Duration::from_secs(5).saturating_sub(fault.elapsed() - promoted)).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for reader in readers {
        samples.extend(reader.await.unwrap());
    }

    let before: Vec<&Sample> = samples.iter().filter(|s| s.at < serving).collect();
    let (healthy_share, healthy_reads) = hit_share(before.iter().copied().filter(|s| !s.on_victim));
    let (whole_share, _) = hit_share(samples.iter().filter(|s| !s.on_victim && s.at < promoted));
    let p99 = percentile(before.iter().map(|s| s.took).collect(), 0.99);
    let p99_whole = percentile(
        samples
            .iter()
            .filter(|s| s.at < promoted + Duration::from_secs(1))
            .map(|s| s.took)
            .collect(),
        0.99,
    );
    let first_hit = samples
        .iter()
        .filter(|s| s.on_victim && s.hit && s.at >= promoted.saturating_sub(Duration::from_secs(1)))
        .map(|s| s.at)
        .min();
    let after = promoted + Duration::from_secs(4);
    let (victim_share, victim_reads) =
        hit_share(samples.iter().filter(|s| s.on_victim && s.at >= after));
    eprintln!(
        "{}: cluster down (CLUSTERDOWN) after {down_at:?}, replica promoted after {promoted:?}; \
         until the cluster went down, healthy-master keys {:.1} % hits over {healthy_reads} \
         reads, p99 {p99:?} over {} reads (until the promotion: {:.1} % hits; p99 up to \
         promotion + 1 s {p99_whole:?}); first hit of the lost master's keys {:?} after the \
         promotion; from promotion + 4 s, its keys {:.1} % hits over {victim_reads} reads",
        if hang { "SIGSTOP" } else { "SIGKILL" },
        healthy_share * 100.0,
        before.len(),
        whole_share * 100.0,
        first_hit.map(|at| at.saturating_sub(promoted)),
        victim_share * 100.0,
    );
    assert!(
        healthy_share >= 0.8,
        "healthy-master keys: {:.1} % hits",
        healthy_share * 100.0
    );
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    assert!(p99_whole < Duration::from_millis(100), "p99 {p99_whole:?}");
    assert!(
        first_hit.is_some_and(|at| at < promoted + Duration::from_secs(5)),
        "the lost master's keys were not hits within 5 s of the promotion"
    );
    assert!(
        victim_share >= 0.9,
        "the lost master's keys: {:.1} % hits after the promotion",
        victim_share * 100.0
    );
    if hang {
        cluster.signal(victim, "CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_master_turns_off_its_own_slots_and_its_replica_takes_over() {
    a_master_lost(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_by_its_replica_without_waiting_for_it() {
    a_master_lost(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_across_masters_fails_only_for_the_hung_one() {
    let cluster = PrivateCluster::start();
    let ns = unique("span");
    let store = store_on(&cluster, &ns);
    let keys: Vec<String> = (0..60).map(|i| format!("b{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    store
        .set_many(
            &refs
                .iter()
                .map(|k| (*k, Bytes::from_static(b"v")))
                .collect::<Vec<_>>(),
            &SetOptions::new(),
        )
        .await
        .unwrap();
    let victim = cluster.master_of(&format!("{ns}:k:b0"));
    let on_victim: Vec<bool> = keys
        .iter()
        .map(|k| cluster.master_of(&format!("{ns}:k:{k}")) == victim)
        .collect();
    cluster.signal(victim, "STOP");
    // The first batches wait for the hung node's part (at most the soft timeout), then its
    // breaker answers for it at once.
    let mut last = Vec::new();
    for _ in 0..20 {
        match store.get_many(&refs).await {
            Ok(found) => last = found,
            Err(_) => continue,
        }
    }
    cluster.signal(victim, "CONT");
    assert_eq!(last.len(), keys.len(), "a batch answered");
    for (found, victim) in last.iter().zip(&on_victim) {
        assert_eq!(found.is_some(), !victim, "healthy masters' keys are found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backplane_follows_its_shard_to_the_promoted_replica_while_the_old_master_hangs() {
    let cluster = PrivateCluster::start_replicated();
    let ns = unique("bus_failover");
    let tiered = TieredStore::builder(MemoryStore::new(16 << 20), store_on(&cluster, &ns))
        .build()
        .unwrap();
    let up = eventually(Duration::from_secs(10), || async { tiered.l1_in_use() }).await;
    assert!(up.is_some(), "subscribed");
    let shard = cluster.master_of(&format!("{ns}:bus"));
    cluster.signal(shard, "STOP");
    let lost = eventually(Duration::from_secs(5), || async {
        !tiered.l2().backplane_connected()
    })
    .await;
    let back = eventually(Duration::from_secs(20), || async {
        tiered.l2().backplane_connected()
    })
    .await;
    cluster.signal(shard, "CONT");
    assert!(lost.is_some(), "the hung shard was noticed");
    assert!(
        back.is_some(),
        "subscribed again at the promoted replica while the old master hung"
    );
    eprintln!("subscribed again {back:?} after the loss was noticed");
}
