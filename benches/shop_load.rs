//! Load run of the shop example: does the stack deliver what the original design promised?
//!
//! ```text
//! cargo bench --all-features --bench shop_load
//! ```
//!
//! The same mixed workload is sent to two builds of `examples/shop/app.rs` over loopback
//! HTTP/1.1 keep-alive: the full stack (metrics, cache on the tiered store, a transaction per
//! request, purges after commit) and the baseline with only the metrics layer (no cache,
//! transactions by hand). Both on one PostgreSQL pool of 32 connections.
//!
//! Workload (seeded, so both stacks get the same sequence): 90 % `GET /products/{id}` over
//! 10,000 products with Zipf (s = 1) popularity, 5 % first pages of the product list (five
//! sort/limit variants), 2.5 % `PATCH /products/{id}` (price) and 2.5 % `POST /orders`, both on
//! Zipf-chosen products. Each step runs `SHOP_LOAD_SECS` (default 8) at a fixed number of
//! concurrent clients (`SHOP_LOAD_STEPS`, default `8,32,128,512,1024`), after a 2 s warm-up;
//! the steps of a stack stop once p99 has passed 100 ms. The cache is not cleared between
//! steps. While a step runs, PostgreSQL connections are sampled every 100 ms from
//! `pg_stat_activity` (this run's pool only, by `application_name`). A second table breaks
//! each step down: p99 by kind of request, and the busy connections by state (running a
//! statement, of those waiting on a row lock, idle inside a transaction), how late a 1 ms
//! timer fires in the server's runtime (the wait of a task woken by I/O for a core), and the
//! transaction layer's `BEGIN`-to-`COMMIT` p99 and that of the after-commit hooks (the purges)
//! a write's response waits for.
//!
//! Reads `DATABASE_URL` and `REDIS_URL` like the tests.

#[allow(dead_code)] // the example and the tests use the rest
#[path = "../examples/shop/app.rs"]
mod app;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use tower_strata::store::{MemoryStore, RedisStore, TieredStore};

use app::{ShopConfig, Stack};

const PRODUCTS: u32 = 10_000;
const POOL: u32 = 32;
const P99_LIMIT: Duration = Duration::from_millis(100);
const LISTS: [&str; 5] = [
    "/products?limit=20",
    "/products?limit=50",
    "/products?limit=20&sort=price",
    "/products?limit=20&sort=-price",
    "/products?limit=20&sort=name",
];

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Zipf (s = 1) over ids `1..=n`: the cumulative distribution, sampled by binary search.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: u32) -> Self {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / f64::from(k);
            cdf.push(sum);
        }
        cdf.iter_mut().for_each(|c| *c /= sum);
        Zipf(cdf)
    }

    fn sample(&self, rng: &mut SmallRng) -> u32 {
        let u: f64 = rng.random();
        self.0.partition_point(|&c| c < u) as u32 + 1
    }
}

/// The workload's kinds of request, for the latency breakdown.
#[derive(Clone, Copy)]
enum Kind {
    Product = 0,
    List = 1,
    Patch = 2,
    Order = 3,
}

const KINDS: [&str; 4] = ["GET product", "GET list", "PATCH product", "POST order"];

fn request(addr: SocketAddr, zipf: &Zipf, rng: &mut SmallRng) -> (Kind, Request<Full<Bytes>>) {
    let roll: f64 = rng.random();
    let (kind, method, path, body) = if roll < 0.90 {
        (
            Kind::Product,
            Method::GET,
            format!("/products/{}", zipf.sample(rng)),
            None,
        )
    } else if roll < 0.95 {
        (
            Kind::List,
            Method::GET,
            LISTS[rng.random_range(0..LISTS.len())].into(),
            None,
        )
    } else if roll < 0.975 {
        let body = format!(r#"{{"price_cents":{}}}"#, rng.random_range(100..10_000));
        (
            Kind::Patch,
            Method::PATCH,
            format!("/products/{}", zipf.sample(rng)),
            Some(body),
        )
    } else {
        let body = format!(r#"{{"product_id":{},"quantity":1}}"#, zipf.sample(rng));
        (Kind::Order, Method::POST, "/orders".into(), Some(body))
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let request = builder
        .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
        .expect("valid request");
    (kind, request)
}

#[derive(Default)]
struct Step {
    latencies_us: Vec<u32>,
    /// The same latencies by [`Kind`].
    by_kind: [Vec<u32>; 4],
    errors: u64,
}

async fn client_loop(
    client: HttpClient,
    addr: SocketAddr,
    zipf: Arc<Zipf>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Step {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut step = Step::default();
    while !stop.load(Ordering::Relaxed) {
        let (kind, req) = request(addr, &zipf, &mut rng);
        let started = Instant::now();
        let ok = match tokio::time::timeout(Duration::from_secs(10), async {
            let response = client.request(req).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
        })
        .await
        {
            // 409 is an order out of stock: an answer, not a failure.
            Ok(Ok(status)) => status.is_success() || status == http::StatusCode::CONFLICT,
            _ => false,
        };
        let took = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        step.latencies_us.push(took);
        step.by_kind[kind as usize].push(took);
        if !ok {
            step.errors += 1;
        }
    }
    step
}

struct Row {
    stack: &'static str,
    clients: usize,
    throughput: f64,
    p50: Duration,
    p99: Duration,
    hit_rate: Option<f64>,
    pg_open_max: i64,
    pg_busy_mean: f64,
    pg_busy_max: i64,
    errors: u64,
    /// p99 of each [`Kind`].
    p99_by_kind: [Duration; 4],
    /// p99 of how late a 1 ms timer fires in the server's runtime: the wait of any task
    /// woken by I/O for its turn on the 2 cores.
    wakeup_p99: Duration,
    /// p99 of the transaction layer's transactions, `BEGIN` to the end of `COMMIT` (its
    /// last 1,024), and of the after-commit hooks (the purges) the response waited for, when
    /// the stack has the layer.
    tx_p99: Option<(Duration, Duration)>,
    /// Mean busy connections by what they were doing.
    busy: BusyBreakdown,
}

/// Mean busy connections over a step, split by `pg_stat_activity` state.
#[derive(Clone, Copy, Default)]
struct BusyBreakdown {
    /// Running a statement (`active`), waiting on a lock or not.
    active: f64,
    /// Of `active`, waiting on a lock (`wait_event_type = 'Lock'`: a row another
    /// transaction is writing).
    lock_wait: f64,
    /// Inside a transaction between statements (`idle in transaction`): the application
    /// holds the transaction open.
    idle_in_transaction: f64,
}

fn percentile(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    Duration::from_micros(u64::from(sorted[i]))
}

/// Measures the runtime's wake-up delay until `stop`: how late a 1 ms sleep returns.
async fn probe_wakeups(stop: Arc<AtomicBool>) -> Vec<u32> {
    let mut late = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let over = started.elapsed().saturating_sub(Duration::from_millis(1));
        late.push(u32::try_from(over.as_micros()).unwrap_or(u32::MAX));
    }
    late
}

/// What the sampler saw: open max, busy mean, busy max, and the busy ones by state.
type PgSample = (i64, f64, i64, BusyBreakdown);

/// Samples this run's PostgreSQL connections (open, and not idle) until `stop`.
async fn sample_pg(monitor: PgPool, app_name: String, stop: Arc<AtomicBool>) -> PgSample {
    let (mut open_max, mut busy_sum, mut busy_max, mut n) = (0_i64, 0_i64, 0_i64, 0_i64);
    let (mut active, mut lock_wait, mut idle_in_tx) = (0_i64, 0_i64, 0_i64);
    while !stop.load(Ordering::Relaxed) {
        let row: Result<(i64, i64, i64, i64, i64), _> = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE state <> 'idle'),
                    count(*) FILTER (WHERE state = 'active'),
                    count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock'),
                    count(*) FILTER (WHERE state LIKE 'idle in transaction%')
             FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        )
        .bind(&app_name)
        .fetch_one(&monitor)
        .await;
        if let Ok((open, busy, a, l, i)) = row {
            open_max = open_max.max(open);
            busy_max = busy_max.max(busy);
            busy_sum += busy;
            active += a;
            lock_wait += l;
            idle_in_tx += i;
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mean = |sum: i64| sum as f64 / n.max(1) as f64;
    let busy = BusyBreakdown {
        active: mean(active),
        lock_wait: mean(lock_wait),
        idle_in_transaction: mean(idle_in_tx),
    };
    (open_max, mean(busy_sum), busy_max, busy)
}

async fn run_step(
    client: &HttpClient,
    addr: SocketAddr,
    zipf: &Arc<Zipf>,
    clients: usize,
    secs: Duration,
    seed: u64,
    monitor: Option<(PgPool, String)>,
) -> (Step, Duration, Option<PgSample>, Vec<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = monitor.map(|(pool, name)| tokio::spawn(sample_pg(pool, name, stop.clone())));
    let probe = tokio::spawn(probe_wakeups(stop.clone()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            tokio::spawn(client_loop(
                client.clone(),
                addr,
                zipf.clone(),
                seed * 100_000 + i as u64,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(secs).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Step::default();
    for task in tasks {
        let step = task.await.expect("client task");
        all.latencies_us.extend(step.latencies_us);
        for (all, one) in all.by_kind.iter_mut().zip(step.by_kind) {
            all.extend(one);
        }
        all.errors += step.errors;
    }
    let elapsed = started.elapsed();
    let pg = match sampler {
        Some(s) => Some(s.await.expect("sampler")),
        None => None,
    };
    let late = probe.await.expect("probe");
    (all, elapsed, pg, late)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run_stack(
    stack: Stack,
    label: &'static str,
    steps: &[usize],
    secs: Duration,
    rows: &mut Vec<Row>,
) -> Result<(), app::BoxError> {
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let run_id = format!(
        "{}_{}_{}",
        label.replace(' ', "_"),
        std::process::id(),
        rand::random::<u32>()
    );
    let app_name = format!("shop_load_{run_id}");
    let options: PgConnectOptions = database_url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(POOL)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.clone().application_name(&app_name))
        .await?;
    let monitor = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.application_name("shop_load_monitor"))
        .await?;
    let l2 = RedisStore::builder(&redis_url)
        .namespace(format!("shop_load_{run_id}"))
        .build()?;
    let store = TieredStore::builder(MemoryStore::new(256 << 20), l2).build()?;
    let schema = format!("shop_load_{run_id}");
    let mut config = ShopConfig::new(pool.clone(), store);
    config.schema = schema.clone();
    config.seed_products = PRODUCTS;
    config.seed_stock = 1_000_000_000;
    config.stack = stack;
    let shop = app::build(config).await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = shop.router.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build_http();
    let zipf = Arc::new(Zipf::new(PRODUCTS));

    let (warm, _, _, _) = run_step(&client, addr, &zipf, 32, Duration::from_secs(2), 1, None).await;
    eprintln!(
        "{label}: warm-up {} requests, {} errors",
        warm.latencies_us.len(),
        warm.errors
    );
    for (i, &clients) in steps.iter().enumerate() {
        let before = shop
            .cache
            .as_ref()
            .map(|c| (c.hits() + c.stale_hits() + c.coalesced(), c.misses()));
        let (mut step, elapsed, pg, mut late) = run_step(
            &client,
            addr,
            &zipf,
            clients,
            secs,
            2 + i as u64,
            Some((monitor.clone(), app_name.clone())),
        )
        .await;
        let hit_rate = shop.cache.as_ref().zip(before).map(|(c, (h0, m0))| {
            let hits = c.hits() + c.stale_hits() + c.coalesced() - h0;
            let misses = c.misses() - m0;
            hits as f64 / (hits + misses).max(1) as f64
        });
        step.latencies_us.sort_unstable();
        let p99_by_kind = step.by_kind.each_mut().map(|l| {
            l.sort_unstable();
            percentile(l, 0.99)
        });
        let (pg_open_max, pg_busy_mean, pg_busy_max, busy) = pg.unwrap_or_default();
        late.sort_unstable();
        let tx_p99 = shop.tx.as_ref().map(|t| {
            let s = t.snapshot();
            (
                Duration::from_micros(s.duration.p99_us),
                Duration::from_micros(s.after_commit.p99_us),
            )
        });
        let row = Row {
            stack: label,
            clients,
            throughput: step.latencies_us.len() as f64 / elapsed.as_secs_f64(),
            p50: percentile(&step.latencies_us, 0.50),
            p99: percentile(&step.latencies_us, 0.99),
            hit_rate,
            pg_open_max,
            pg_busy_mean,
            pg_busy_max,
            errors: step.errors,
            p99_by_kind,
            wakeup_p99: percentile(&late, 0.99),
            tx_p99,
            busy,
        };
        eprintln!("{}", format_row(&row));
        eprintln!("{}", format_breakdown(&row));
        let over = row.p99 > P99_LIMIT;
        rows.push(row);
        if over {
            break;
        }
    }
    server.abort();
    drop(client);
    drop(shop);
    pool.close().await;
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .execute(&monitor)
        .await?;
    monitor.close().await;
    Ok(())
}

fn format_row(r: &Row) -> String {
    format!(
        "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {:.1} / {} | {} |",
        r.stack,
        r.clients,
        r.throughput,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        r.hit_rate
            .map(|h| format!("{:.1} %", h * 100.0))
            .unwrap_or_else(|| "-".into()),
        r.pg_open_max,
        r.pg_busy_mean,
        r.pg_busy_max,
        r.errors,
    )
}

/// The second table: p99 by kind of request and what the busy connections were doing.
fn format_breakdown(r: &Row) -> String {
    let p99 = r
        .p99_by_kind
        .iter()
        .map(|d| format!("{:.2}", d.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(" | ");
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    format!(
        "| {} | {} | {p99} | {:.1} | {:.1} | {:.1} | {} | {} |",
        r.stack,
        r.clients,
        r.busy.active,
        r.busy.lock_wait,
        r.busy.idle_in_transaction,
        ms(r.wakeup_p99),
        r.tx_p99
            .map(|(tx, hooks)| format!("{} | {}", ms(tx), ms(hooks)))
            .unwrap_or_else(|| "- | -".into()),
    )
}

fn main() -> Result<(), app::BoxError> {
    // `cargo bench` passes `--bench`; a filter argument would too. Nothing to filter here.
    let secs = Duration::from_secs(env_or("SHOP_LOAD_SECS", 8));
    let steps: Vec<usize> = std::env::var("SHOP_LOAD_STEPS")
        .unwrap_or_else(|_| "8,32,128,512,1024".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    runtime.block_on(async {
        run_stack(Stack::MetricsOnly, "metrics only", &steps, secs, &mut rows).await?;
        run_stack(Stack::Full, "full stack", &steps, secs, &mut rows).await
    })?;
    println!(
        "| stack | clients | req/s | p50 ms | p99 ms | hit rate | PG connections open (max) | PG connections busy (mean / max) | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{}", format_row(row));
    }
    println!();
    println!(
        "| stack | clients | p99 ms {} | busy: active | of which waiting on a lock | busy: idle in transaction | wake-up delay p99 ms | transaction p99 ms | after-commit hooks p99 ms |",
        KINDS.join(" | p99 ms ")
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{}", format_breakdown(row));
    }
    for stack in ["metrics only", "full stack"] {
        let crossed = rows
            .iter()
            .find(|r| r.stack == stack && r.p99 > P99_LIMIT)
            .map(|r| format!("{} clients", r.clients))
            .unwrap_or_else(|| "not reached".into());
        println!("{stack}: p99 passes 100 ms at {crossed}");
    }
    Ok(())
}
