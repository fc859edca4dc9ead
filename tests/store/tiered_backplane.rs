//! A tiered instance whose backplane subscription drops must not serve from L1 what another
//! instance has just invalidated: the subscriptions are dropped with `CLIENT KILL TYPE pubsub`
//! (on a private `redis-server`, so no other test's backplane is touched) right before each
//! write on A, and B's next read must see the write. B runs on a runtime of its own, as
//! another process would.
#![cfg(all(feature = "redis", feature = "memory"))]

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use tower_strata::store::{MemoryStore, RedisStore, SetOptions, Store, TieredStore};

use support::{PrivateRedis, eventually, unique};

fn tiered(url: &str, namespace: &str) -> TieredStore {
    let l2 = RedisStore::builder(url)
        .namespace(namespace)
        .build()
        .unwrap();
    TieredStore::try_new(MemoryStore::new(16 << 20), l2).unwrap()
}

/// Instance B on a runtime of its own, as another process would have: its listener is never
/// queued behind the test's own tasks. The runtime lives until the returned sender drops.
fn on_its_own_runtime(
    url: String,
    namespace: String,
) -> (TieredStore, std::sync::mpsc::Sender<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let store = runtime.block_on(async { tiered(&url, &namespace) });
        tx.send(store).unwrap();
        let _ = stopped.recv();
        runtime.shutdown_background();
    });
    (rx.recv().unwrap(), stop)
}

async fn both_subscribed(a: &TieredStore, b: &TieredStore) {
    let up = eventually(Duration::from_secs(10), || async {
        a.l1_in_use() && b.l1_in_use()
    })
    .await;
    assert!(up.is_some(), "the backplanes did not subscribe");
}

async fn value(store: &TieredStore) -> Option<Bytes> {
    store
        .get("k")
        .await
        .unwrap()
        .map(|entry| entry.value().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_on_b_after_a_write_when_the_subscriptions_just_dropped() {
    let redis = PrivateRedis::start();
    let namespace = unique("tier_kill");
    let a = tiered(&redis.url(), &namespace);
    let (b, _b_runtime) = on_its_own_runtime(redis.url(), namespace.clone());
    let admin = redis::Client::open(redis.url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let options = SetOptions::new().ttl(Duration::from_secs(600));
    let mut stale = Vec::new();
    for round in 0..50u32 {
        both_subscribed(&a, &b).await;
        let old = Bytes::from(format!("old {round}"));
        let new = Bytes::from(format!("new {round}"));
        a.set("k", old.clone(), &options).await.unwrap();
        // B holds the old value in its L1.
        let held = eventually(Duration::from_secs(5), || async {
            value(&b).await.as_ref() == Some(&old) && b.l1().get("k").await.unwrap().is_some()
        })
        .await;
        assert!(held.is_some(), "round {round}: B never read the old value");
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(killed >= 2, "round {round}: {killed} subscriptions dropped");
        a.set("k", new.clone(), &options).await.unwrap();
        let read = value(&b).await;
        if read.as_ref() != Some(&new) {
            stale.push((round, read));
        }
    }
    // Without the fix every round was stale (49 or 50 of 50). A's write returns only once
    // every subscriber is back (`RedisStore::fence`), and B trusts its L1 only once it has
    // dropped it for its new subscription.
    println!("stale reads: {} of 50: {stale:?}", stale.len());
    assert!(stale.is_empty(), "B served stale values: {stale:?}");
}
