//! Transaction layer benchmarks on PostgreSQL (`DATABASE_URL`).
//!
//! - `tx_overhead`: one request running the same `UPDATE` in a transaction, through the layer
//!   versus a handler that begins and commits by hand (the baseline, same run).
//! - `tx_bank`: the bank workload with retry, 32 concurrent clients, SERIALIZABLE.
//!
//! `cargo bench --features postgres --bench tx -- --warm-up-time 1 --measurement-time 3`

#[path = "../tests/support/tx_bank.rs"]
mod bank;
#[path = "../tests/support/tx.rs"]
mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use tower::ServiceExt;
use tower_strata::tx::{IsolationLevel, TxBody, TxConfig, TxHandle, TxLayer};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&support::pg_url())
        .await
        .expect("PostgreSQL at DATABASE_URL")
}

fn overhead(c: &mut Criterion) {
    let rt = runtime();
    // One table per contender, so neither pays for the other's dead row versions.
    let (pool, hand_table, layer_table) = rt.block_on(async {
        let pool = pool().await;
        let mut tables = Vec::new();
        for name in ["bench_hand", "bench_layer"] {
            let table = support::table(name);
            sqlx::query(support::sql(format!(
                "CREATE TABLE {table} (id BIGINT PRIMARY KEY, v BIGINT)"
            )))
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(support::sql(format!("INSERT INTO {table} VALUES (1, 0)")))
                .execute(&pool)
                .await
                .unwrap();
            tables.push(table);
        }
        let layer_table = tables.pop().unwrap();
        (pool, tables.pop().unwrap(), layer_table)
    });
    let update = |table: &str| -> &'static str {
        Box::leak(format!("UPDATE {table} SET v = v + 1 WHERE id = 1").into_boxed_str())
    };
    let (hand_update, layer_update) = (update(&hand_table), update(&layer_table));

    // The same handler shape on both sides: it ignores the body and runs one UPDATE.
    let layered = tower::ServiceBuilder::new()
        .layer(TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap())
        .service(tower::service_fn(
            move |req: Request<TxBody<String>>| async move {
                let tx = req.extensions().get::<TxHandle<Postgres>>().unwrap();
                let mut conn = tx.conn().await.unwrap();
                sqlx::query(layer_update).execute(&mut conn).await.unwrap();
                Ok::<_, Infallible>(Response::new(String::new()))
            },
        ));
    let p = pool.clone();
    let by_hand = tower::service_fn(move |_req: Request<String>| {
        let p = p.clone();
        async move {
            let mut tx = p.begin().await.unwrap();
            sqlx::query(hand_update).execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
            Ok::<_, Infallible>(Response::new(String::new()))
        }
    });

    // Each iteration runs one request of each contender, in alternating order, and reports
    // the time of its own: both see the same (shared, noisy) machine at a fine grain.
    let mut group = c.benchmark_group("tx_overhead");
    for own_is_layer in [false, true] {
        let name = if own_is_layer { "layer" } else { "by_hand" };
        let (layered, by_hand) = (layered.clone(), by_hand.clone());
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (layered, by_hand) = (layered.clone(), by_hand.clone());
                async move {
                    let mut own = Duration::ZERO;
                    for i in 0..iters {
                        let (l, h) = pair(&layered, &by_hand, i % 2 == 0).await;
                        own += if own_is_layer { l } else { h };
                    }
                    own
                }
            })
        });
    }
    group.finish();

    // The ratio the README quotes: paired rounds, the median of the per-round ratios.
    let mut ratios: Vec<f64> = (0..7)
        .map(|_| {
            rt.block_on(async {
                let (mut l_sum, mut h_sum) = (Duration::ZERO, Duration::ZERO);
                for i in 0..300 {
                    let (l, h) = pair(&layered, &by_hand, i % 2 == 0).await;
                    l_sum += l;
                    h_sum += h;
                }
                l_sum.as_secs_f64() / h_sum.as_secs_f64()
            })
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "tx_overhead: layer / by_hand time per request, median of 7 paired rounds of 300: {:.3} (rounds: {:?})",
        ratios[3],
        ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>()
    );
    rt.block_on(async {
        for table in [hand_table, layer_table] {
            sqlx::query(support::sql(format!("DROP TABLE {table}")))
                .execute(&pool)
                .await
                .unwrap();
        }
    });
}

/// One request through each service, layer first when `layer_first`; their durations.
async fn pair<L, H>(layered: &L, by_hand: &H, layer_first: bool) -> (Duration, Duration)
where
    L: tower::Service<Request<String>> + Clone,
    L::Error: std::fmt::Debug,
    H: tower::Service<Request<String>> + Clone,
    H::Error: std::fmt::Debug,
{
    async fn one<S>(svc: &S) -> Duration
    where
        S: tower::Service<Request<String>> + Clone,
        S::Error: std::fmt::Debug,
    {
        let start = Instant::now();
        black_box(
            svc.clone()
                .oneshot(Request::new(String::new()))
                .await
                .unwrap(),
        );
        start.elapsed()
    }
    if layer_first {
        let l = one(layered).await;
        (l, one(by_hand).await)
    } else {
        let h = one(by_hand).await;
        (one(layered).await, h)
    }
}

fn bank_throughput(c: &mut Criterion) {
    const CLIENTS: usize = 32;
    const PER_CLIENT: usize = 4;
    let rt = runtime();
    let pool = rt.block_on(pool());
    let bank = Arc::new(rt.block_on(bank::Bank::create(&pool, 10, 1_000_000)));
    let layer = TxLayer::try_new(
        pool.clone(),
        TxConfig::default().isolation(IsolationLevel::Serializable),
    )
    .unwrap();
    let stats = layer.stats();
    let b2 = bank.clone();
    let svc = support::app(layer, move |tx, body: String| {
        let b = b2.clone();
        async move {
            let v: Vec<i64> = body.split(',').map(|x| x.parse().unwrap()).collect();
            support::status(b.transfer(&tx, v[0], v[1], v[2]).await)
        }
    });
    let mut group = c.benchmark_group("tx_bank");
    group.sample_size(10);
    group.throughput(Throughput::Elements((CLIENTS * PER_CLIENT) as u64));
    group.bench_function("32_clients_serializable_with_retry", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let svc = svc.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut clients = Vec::with_capacity(CLIENTS);
                    for _ in 0..CLIENTS {
                        let svc = svc.clone();
                        clients.push(tokio::spawn(async move {
                            for _ in 0..PER_CLIENT {
                                let (from, to, amount) = bank::random_transfer(10);
                                let r = support::send(&svc, &format!("{from},{to},{amount}")).await;
                                black_box(r.status());
                            }
                        }));
                    }
                    for c in clients {
                        c.await.unwrap();
                    }
                }
                start.elapsed()
            }
        })
    });
    group.finish();
    let s = stats.snapshot();
    if s.begun > 0 {
        eprintln!(
            "bank: committed {}, retried {:?}, retries exhausted {}",
            s.committed, s.retried, s.retries_exhausted
        );
    }
    drop(svc);
    rt.block_on(Arc::try_unwrap(bank).ok().unwrap().drop());
}

criterion_group!(benches, overhead, bank_throughput);
criterion_main!(benches);
