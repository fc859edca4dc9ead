//! A Redis Cluster under faults: a master killed while a cache serves load, the backplane's
//! shard restarted, and the invalidation bus across instances. Each test starts its own three
//! masters on free loopback ports and stops them by PID.
#![cfg(all(feature = "memory", feature = "redis-cluster"))]

mod support;

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
use tower_strata::purge::{EventRule, InvalidationBus, Purger};
use tower_strata::store::{MemoryStore, RedisStore, SetOptions, Store, TieredStore};

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
