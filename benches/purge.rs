//! Purging a tag that holds 100,000 entries, hard and soft, on the memory store and on Redis:
//!
//! 1. the purge call itself, 1,000 vs 100,000 entries in the tag (custom loop: every sample
//!    needs a freshly filled tag, which criterion's iteration model would repeat thousands of
//!    times), reported as median and max;
//! 2. reads after the purge (criterion): a purged key and a live entry carrying the purged tag,
//!    against a plain read of an untagged key as the baseline (on Redis, all one round trip);
//! 3. the time until a second `TieredStore` instance on the same Redis no longer serves a
//!    purged entry from its L1 (custom loop).
//!
//! `cargo bench --bench purge --features redis` (needs Redis at REDIS_URL).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use tower_strata::purge::Purger;
use tower_strata::store::{MemoryStore, RedisStore, SetOptions, Store, StoreExt, TieredStore};

const BIG: usize = 100_000;
const SMALL: usize = 1_000;
const BATCH: usize = 1_000;
/// Tags every Redis entry carries: one per measured purge, so one fill serves them all.
const REDIS_TAGS: usize = 16;

fn value() -> Bytes {
    Bytes::from(vec![7u8; 100])
}

/// Fills `count` entries `{prefix}{i}` carrying `tags`, in pipelined batches.
async fn fill(store: &impl StoreExt, prefix: &str, count: usize, tags: &[String]) {
    let options = SetOptions::new()
        .ttl(Duration::from_secs(600))
        .tags(tags.iter().cloned());
    let value = value();
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    for chunk in keys.chunks(BATCH) {
        let items: Vec<(&str, Bytes)> = chunk.iter().map(|k| (k.as_str(), value.clone())).collect();
        store.set_many(&items, &options).await.unwrap();
    }
}

fn summary(samples: &mut [Duration]) -> String {
    samples.sort_unstable();
    let median = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    format!(
        "median {:>8.3} ms, max {:>8.3} ms ({} samples)",
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        samples.len()
    )
}

/// The purge call on a fresh memory store per sample (a memory purge empties the tag's index).
async fn memory_purge_call(count: usize, soft: bool, samples: usize) -> String {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let store = MemoryStore::builder()
            .capacity_bytes(512 << 20)
            .sweep_interval(None)
            .build();
        fill(&store, "e:", count, &["big".to_owned()]).await;
        let purger = Purger::new(store.clone());
        let purger = if soft { purger.soft() } else { purger };
        let started = Instant::now();
        let n = purger.purge_tags(["big"]).await.unwrap();
        times.push(started.elapsed());
        assert_eq!(n as usize, count);
        // Let the background clean-up finish outside the measurement.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !soft && store.stats().entries != Some(0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    summary(&mut times)
}

/// The purge call on Redis: one fill whose entries carry `REDIS_TAGS` tags; each sample
/// purges another of them (a Redis purge is a mark + `SCARD` + `PUBLISH`; the index stays).
/// Waits until a hard purge's background clean-up has emptied the tag's index set, so the
/// next measurement does not queue behind it in Redis.
async fn wait_cleaned(raw: &mut redis::aio::MultiplexedConnection, namespace: &str, tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left: u64 = redis::cmd("SCARD")
            .arg(format!("{namespace}:i:{tag}"))
            .query_async(raw)
            .await
            .unwrap();
        if left == 0 || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn redis_purge_call(
    store: &RedisStore,
    raw: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    count: usize,
    tags: &[String],
    soft: bool,
) -> String {
    let purger = Purger::new(store.clone());
    let purger = if soft { purger.soft() } else { purger };
    let mut times = Vec::new();
    for tag in tags {
        let started = Instant::now();
        let n = purger.purge_tags([tag]).await.unwrap();
        times.push(started.elapsed());
        assert!(n as usize <= count, "{prefix}: {n}");
        if !soft {
            wait_cleaned(raw, store.namespace(), tag).await;
        }
    }
    summary(&mut times)
}

fn redis_store(url: &str, namespace: &str) -> RedisStore {
    RedisStore::builder(url)
        .namespace(namespace)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn tiered(url: &str, namespace: &str) -> TieredStore {
    TieredStore::builder(MemoryStore::new(64 << 20), redis_store(url, namespace))
        .l1_ttl(Some(Duration::from_secs(300)))
        .build()
        .unwrap()
}

/// How long after A's purge call started B's L1 stops serving the probe entry.
async fn propagation(
    a: &TieredStore,
    b: &TieredStore,
    raw: &mut redis::aio::MultiplexedConnection,
    tags: &[String],
    soft: bool,
) -> String {
    let purger = Purger::new(a.clone());
    let purger = if soft { purger.soft() } else { purger };
    let mut times = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        let probe = format!("probe:{soft}:{i}");
        let options = SetOptions::new()
            .ttl(Duration::from_secs(600))
            .tags([tag.clone()]);
        a.set(&probe, value(), &options).await.unwrap();
        // B reads it into its L1 (a fill racing A's write announcement is dropped: retry).
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.l1().get(&probe).await.unwrap().is_none() {
            assert!(Instant::now() < deadline, "B never cached the probe");
            b.get(&probe).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        purger.purge_tags([tag]).await.unwrap();
        let deadline = started + Duration::from_secs(5);
        loop {
            let gone = match b.get(&probe).await.unwrap() {
                None => true,
                Some(entry) => soft && entry.is_stale(),
            };
            if gone {
                break;
            }
            assert!(Instant::now() < deadline, "B never saw the purge");
            tokio::task::yield_now().await;
        }
        times.push(started.elapsed());
        if !soft {
            wait_cleaned(raw, a.l2().namespace(), tag).await;
        }
    }
    summary(&mut times)
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let namespace = format!("bench_purge{}", std::process::id());
    let mut report = Vec::new();

    // 1. The purge call. The memory store's on a current-thread runtime: on a multi-thread
    // one, the hard purge's background clean-up starts at once on the other worker and, with
    // only two busy cores, takes the CPU from the caller being timed; here it can only start
    // once the call has returned, so the figure is the call's own work.
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    local.block_on(async {
        for soft in [false, true] {
            let mode = if soft { "soft" } else { "hard" };
            for count in [SMALL, BIG] {
                let line = memory_purge_call(count, soft, 15).await;
                report.push(format!(
                    "memory purge call, {mode}, {count:>6} entries: {line}"
                ));
            }
        }
    });
    rt.block_on(async {
        let store = redis_store(&url, &namespace);
        let big_tags: Vec<String> = (0..REDIS_TAGS).map(|i| format!("big{i}")).collect();
        let small_tags: Vec<String> = (0..REDIS_TAGS).map(|i| format!("small{i}")).collect();
        let started = Instant::now();
        fill(&store, "b:", BIG, &big_tags).await;
        fill(&store, "s:", SMALL, &small_tags).await;
        report.push(format!(
            "redis fill: {BIG} + {SMALL} entries x {REDIS_TAGS} tags in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        let mut raw = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let half = REDIS_TAGS / 4;
        // Soft first: it leaves no background work behind.
        for (soft, range) in [(true, half..2 * half), (false, 0..half)] {
            let mode = if soft { "soft" } else { "hard" };
            let line = redis_purge_call(
                &store,
                &mut raw,
                "s",
                SMALL,
                &small_tags[range.clone()],
                soft,
            )
            .await;
            report.push(format!(
                "redis purge call,  {mode}, {SMALL:>6} entries: {line}"
            ));
            let line = redis_purge_call(&store, &mut raw, "b", BIG, &big_tags[range], soft).await;
            report.push(format!(
                "redis purge call,  {mode}, {BIG:>6} entries: {line}"
            ));
        }

        // 3. Propagation to a second instance.
        let a = tiered(&url, &namespace);
        let b = tiered(&url, &namespace);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(a.l2().backplane_connected() && b.l2().backplane_connected()) {
            assert!(Instant::now() < deadline, "backplanes never connected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let line = propagation(&a, &b, &mut raw, &big_tags[2 * half..3 * half], false).await;
        report.push(format!(
            "second instance sees a hard purge of a {BIG}-entry tag: {line}"
        ));
        let line = propagation(&a, &b, &mut raw, &big_tags[3 * half..], true).await;
        report.push(format!(
            "second instance sees a soft purge of a {BIG}-entry tag: {line}"
        ));
    });

    // 2. Reads after a purge.
    let memory = MemoryStore::builder()
        .capacity_bytes(512 << 20)
        .sweep_interval(None)
        .build();
    let redis = rt.block_on(async { redis_store(&url, &namespace) });
    for (name, store) in [
        ("memory", tower_strata::store::BoxStore::new(memory)),
        ("redis", tower_strata::store::BoxStore::new(redis)),
    ] {
        rt.block_on(async {
            let tagged = SetOptions::new()
                .ttl(Duration::from_secs(600))
                .tags(["read_tag".to_owned()]);
            fill(&store, "r:", BIG, &["read_tag".to_owned()]).await;
            store
                .set(
                    "plain",
                    value(),
                    &SetOptions::new().ttl(Duration::from_secs(600)),
                )
                .await
                .unwrap();
            Purger::new(store.clone())
                .purge_tags(["read_tag"])
                .await
                .unwrap();
            if name == "redis" {
                let mut raw = redis::Client::open(url.as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                wait_cleaned(&mut raw, &namespace, "read_tag").await;
            } else {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // Written after the purge: live, and its tag has a mark to check.
            store.set("live", value(), &tagged).await.unwrap();
            assert!(store.get("r:7").await.unwrap().is_none());
            assert!(store.get("live").await.unwrap().is_some());
        });
        let mut group = criterion.benchmark_group(format!("{name}_read_after_purge"));
        for (label, key) in [
            ("baseline_untagged", "plain"),
            ("live_entry_of_purged_tag", "live"),
            ("purged_entry", "r:7"),
        ] {
            group.bench_function(label, |b| {
                b.to_async(&rt).iter(|| store.get(key));
            });
        }
        group.finish();
    }
    rt.block_on(async {
        let _ = redis_store(&url, &namespace).clear().await;
    });
    criterion.final_summary();
    println!("\n== purge results ==");
    for line in report {
        println!("{line}");
    }
}
