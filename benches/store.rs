//! Store throughput against the raw libraries underneath, measured in the same run:
//! `MemoryStore` vs raw `quick_cache`, and `RedisStore` vs a plain `redis` connection doing the
//! same commands (GET/SET of the same bytes, a 100-key pipeline of GETs).
//!
//! `cargo bench --bench store --features redis` (needs Redis at REDIS_URL).

use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use tower_strata::store::{Entry, MemoryStore, RedisStore, SetOptions, Store, StoreExt};

const KEYS: usize = 10_000;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("product:{i}")).collect()
}

fn memory(c: &mut Criterion) {
    let keys = keys();
    let value = Bytes::from(vec![7u8; 1024]);
    let options = SetOptions::new().ttl(Duration::from_secs(3600));

    let raw: quick_cache::sync::Cache<String, Bytes> = quick_cache::sync::Cache::new(KEYS * 2);
    let store = MemoryStore::builder()
        .capacity_bytes(256 << 20)
        .sweep_interval(None)
        .build();
    for k in &keys {
        raw.insert(k.clone(), value.clone());
        store
            .set(k, value.clone(), &options)
            .now_or_never()
            .unwrap()
            .unwrap();
    }

    let mut group = c.benchmark_group("memory_get");
    let mut i = 0;
    group.bench_function("raw_quick_cache", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            raw.get(keys[i].as_str())
        })
    });
    group.bench_function("memory_store", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            store.get(&keys[i]).now_or_never().unwrap().unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("memory_set");
    group.bench_function("raw_quick_cache", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            raw.insert(keys[i].clone(), value.clone())
        })
    });
    group.bench_function("memory_store", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            store
                .set(&keys[i], value.clone(), &options)
                .now_or_never()
                .unwrap()
                .unwrap()
        })
    });
    group.finish();
}

fn redis(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let namespace = format!("bench{}", std::process::id());
    let (store, mut raw) = rt.block_on(async {
        let store = RedisStore::builder(url.as_str())
            .namespace(namespace.as_str())
            .build()
            .unwrap();
        let raw = redis::aio::ConnectionManager::new(redis::Client::open(url.as_str()).unwrap())
            .await
            .unwrap();
        (store, raw)
    });
    // The same namespace without announcing writes (no instance keeps an L1 over it).
    let quiet = rt.block_on(async {
        RedisStore::builder(url.as_str())
            .namespace(namespace.as_str())
            .publish_writes(false)
            .backplane(false)
            .build()
            .unwrap()
    });
    let keys: Vec<String> = keys().into_iter().take(1000).collect();
    let value = Bytes::from(vec![7u8; 1024]);
    let options = SetOptions::new().ttl(Duration::from_secs(600));
    // The raw side reads and writes the very bytes the store keeps, under its own keys.
    let encoded = Entry::new(value.clone(), &options).encode();
    rt.block_on(async {
        for k in &keys {
            store.set(k, value.clone(), &options).await.unwrap();
            let _: () = redis::cmd("SET")
                .arg(format!("raw{namespace}:{k}"))
                .arg(encoded.as_ref())
                .arg("PX")
                .arg(600_000)
                .query_async(&mut raw)
                .await
                .unwrap();
        }
    });

    let mut group = c.benchmark_group("redis_get");
    let mut i = 0;
    group.bench_function("raw_redis", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let mut raw = raw.clone();
            let key = format!("raw{namespace}:{}", keys[i]);
            async move {
                let v: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                v
            }
        })
    });
    group.bench_function("redis_store", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let store = store.clone();
            let key = keys[i].clone();
            async move { store.get(&key).await.unwrap() }
        })
    });
    group.finish();

    let batch: Vec<&str> = keys.iter().take(100).map(String::as_str).collect();
    let raw_batch: Vec<String> = batch
        .iter()
        .map(|k| format!("raw{namespace}:{k}"))
        .collect();
    let mut group = c.benchmark_group("redis_get_many_100");
    group.bench_function("raw_redis_pipeline", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            let raw_batch = &raw_batch;
            async move {
                let mut pipe = redis::pipe();
                for k in raw_batch {
                    pipe.cmd("GET").arg(k);
                }
                let v: Vec<Option<Vec<u8>>> = pipe.query_async(&mut raw).await.unwrap();
                v
            }
        })
    });
    group.bench_function("redis_store", |b| {
        b.to_async(&rt).iter(|| {
            let store = &store;
            let batch = &batch;
            async move { store.get_many(batch).await.unwrap() }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("redis_set");
    group.bench_function("raw_redis", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let mut raw = raw.clone();
            let key = format!("raw{namespace}:{}", keys[i]);
            let encoded = encoded.clone();
            async move {
                let _: () = redis::cmd("SET")
                    .arg(key)
                    .arg(encoded.as_ref())
                    .arg("PX")
                    .arg(600_000)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
            }
        })
    });
    let channel = format!("{namespace}:bus");
    group.bench_function("raw_redis_set_and_publish", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let mut raw = raw.clone();
            let key = format!("raw{namespace}:{}", keys[i]);
            let encoded = encoded.clone();
            let channel = channel.clone();
            async move {
                let mut pipe = redis::pipe();
                pipe.cmd("SET")
                    .arg(&key)
                    .arg(encoded.as_ref())
                    .arg("PX")
                    .arg(600_000)
                    .ignore();
                pipe.cmd("PUBLISH").arg(channel).arg(&key).ignore();
                let _: () = pipe.query_async(&mut raw).await.unwrap();
            }
        })
    });
    group.bench_function("redis_store", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let store = store.clone();
            let key = keys[i].clone();
            let value = value.clone();
            let options = options.clone();
            async move { store.set(&key, value, &options).await.unwrap() }
        })
    });
    group.bench_function("redis_store_without_publish", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let quiet = quiet.clone();
            let key = keys[i].clone();
            let value = value.clone();
            let options = options.clone();
            async move { quiet.set(&key, value, &options).await.unwrap() }
        })
    });
    group.finish();

    rt.block_on(async {
        store.clear().await.unwrap();
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("DEL").arg(format!("raw{namespace}:{k}")).ignore();
        }
        let _: () = pipe.query_async(&mut raw).await.unwrap();
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = memory, redis
}
criterion_main!(benches);
