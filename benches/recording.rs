//! What the data tier's figures cost on a hit: a `MemoryStore` read built before any recorder
//! is installed (its handles are no-ops: the cost without a recorder) against one built after
//! a Prometheus recorder was installed (one counter add per read), in the same run.
//!
//! `cargo bench --bench recording -- --warm-up-time 1 --measurement-time 3`

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

fn memory_hit(c: &mut Criterion) {
    let without = filled();
    let _handle = PrometheusBuilder::new().install_recorder().unwrap();
    let with = filled();
    let mut group = c.benchmark_group("memory_hit");
    group.bench_function("no_recorder", |b| {
        b.iter(|| black_box(without.get_now(black_box("product:1"))))
    });
    group.bench_function("prometheus_recorder", |b| {
        b.iter(|| black_box(with.get_now(black_box("product:1"))))
    });
    group.finish();
}

criterion_group!(benches, memory_hit);
criterion_main!(benches);
