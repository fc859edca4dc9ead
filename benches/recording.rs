//! What the data tier's figures cost on a hit, in the same run:
//!
//! - `memory_hit`: a `MemoryStore` read built before any recorder is installed (its handles
//!   are no-ops: the cost without a recorder) against one built after a Prometheus recorder
//!   was installed (one counter add per read);
//! - `cache_hit`: a hit through `CacheLayer` over a memory store, without a recorder, with a
//!   Prometheus recorder (the store's read and the cache's outcome counted), under a tracing
//!   subscriber interested in nothing the cache emits (`WARN` and above), and under one that
//!   records the cache's fields on the request's span.
//!
//! `cargo bench --bench recording --features memory,metrics -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use metrics_exporter_prometheus::PrometheusBuilder;
use tower_strata::store::{MemoryStore, SetOptions, Store};

fn filled() -> MemoryStore {
    let store = MemoryStore::new(1 << 20);
    let options = SetOptions::new().ttl(Duration::from_secs(3600));
    let set = store.set("product:1", Bytes::from_static(b"{\"id\":1}"), &options);
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(set)
        .unwrap();
    store
}

type Request = http::Request<http_body_util::Full<Bytes>>;

/// A cache over a memory store with one page stored, and the request that hits it.
fn cache() -> impl FnMut() -> bool {
    use futures_util::FutureExt;
    use tower::{Service, ServiceBuilder};
    let origin = tower::service_fn(|_request: Request| async {
        let mut response = http::Response::new(http_body_util::Full::new(Bytes::from_static(
            b"{\"id\":1,\"name\":\"page\"}",
        )));
        response
            .headers_mut()
            .insert("cache-control", "max-age=3600".parse().unwrap());
        Ok::<_, std::convert::Infallible>(response)
    });
    let mut svc = ServiceBuilder::new()
        .layer(tower_strata::cache::CacheLayer::new(MemoryStore::new(
            1 << 20,
        )))
        .service(origin);
    let request = || {
        http::Request::get("http://shop.example/products/1")
            .body(http_body_util::Full::default())
            .unwrap()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use http_body_util::BodyExt;
        let response = svc.call(request()).await.unwrap();
        let _ = response.into_body().collect().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    });
    // A hit on a memory store is answered inside `call`: its future is ready, no runtime
    // is needed.
    move || {
        let response = svc.call(request()).now_or_never().unwrap().unwrap();
        black_box(response).status().is_success()
    }
}

fn memory_hit(c: &mut Criterion) {
    let without = filled();
    let mut cache_without = cache();
    let _handle = PrometheusBuilder::new().install_recorder().unwrap();
    let with = filled();
    let mut cache_with = cache();
    let mut group = c.benchmark_group("memory_hit");
    group.bench_function("no_recorder", |b| {
        b.iter(|| black_box(without.get_now(black_box("product:1"))))
    });
    group.bench_function("prometheus_recorder", |b| {
        b.iter(|| black_box(with.get_now(black_box("product:1"))))
    });
    group.finish();

    let mut group = c.benchmark_group("cache_hit");
    group.bench_function("no_recorder", |b| b.iter(&mut cache_without));
    group.bench_function("prometheus_recorder", |b| b.iter(&mut cache_with));
    // Subscribers see the recorder-less cache, so only the tracing cost differs.
    let uninterested = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(uninterested, || {
        group.bench_function("subscriber_not_interested", |b| b.iter(&mut cache_without));
    });
    let interested = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(interested, || {
        let empty = tracing::field::Empty;
        let span = tracing::info_span!(
            "request",
            cache.outcome = empty,
            cache.reason = empty,
            cache.key_hash = empty,
        );
        let _entered = span.enter();
        group.bench_function("subscriber_recording_fields", |b| {
            b.iter(&mut cache_without)
        });
    });
    group.finish();
}

criterion_group!(benches, memory_hit);
criterion_main!(benches);
