//! Load run of the shop example as a deployment: does the stack deliver what the original
//! design promised?
//!
//! ```text
//! cargo bench --all-features --bench shop_load
//! SHOP_LOAD_DELAYS=20 SHOP_LOAD_MIX=mixed cargo bench --all-features --bench shop_load
//! ```
//!
//! Two builds of `examples/shop/app.rs` are served over loopback HTTP/1.1: the full stack
//! (metrics, the cache on the tiered store, a transaction layer, purges after commit) and the
//! baseline with the metrics layer only (`shop --stack metrics-only`: no cache, handlers open
//! their own transactions, reads on a pooled connection). Both use the shop's own pool
//! (`app::pool_builder`: the `Web` preset, 32 connections).
//!
//! - **The database is a latency.** PostgreSQL sits behind a TCP proxy in this process
//!   (`tests/support/pg_proxy.rs`, on a thread of its own) that holds every answer for
//!   `SHOP_LOAD_DELAYS` milliseconds (default `0,2,20`, one run each), so the database's cost
//!   is time, as across a network, not CPU taken from the service. The proxy counts the round
//!   trips (and which were pings) and samples, every 2 ms, the connections with a query in
//!   flight.
//! - **Open loop.** Requests are sent on a schedule at a fixed rate whatever the answers, and
//!   each latency runs from the request's intended send time, so queueing (in the client, the
//!   service or the pool) is not hidden. The rates rise through `SHOP_LOAD_RATES` (req/s,
//!   default `250,500,750,1000,1500,2000,3000,4000,6000,8000,10000,12000,16000,20000`), each for
//!   `SHOP_LOAD_SECS` (default 3); a pass stops after two failing rates in a row. More than
//!   2,000 requests in flight, or an answer later than 2 s, is an error.
//! - **Workload.** `GET /products/{id}` with Zipf (s = 1) popularity over 10,000 products
//!   (`SHOP_LOAD_MIX=get`, the default), or the mixed one (`SHOP_LOAD_MIX=mixed`): 90 % product
//!   reads, 5 % first list pages (five sort/limit variants), 2.5 % `PATCH` of a price and 2.5 %
//!   orders, on Zipf-chosen products. Seeded: both stacks get the same sequence.
//! - **Cold and warm.** Each stack's pool starts with its 32 connections open and the product
//!   read prepared on each (`Shop::warm_pool`), as in a service that has been up a while; the
//!   caches are what differs. The baseline runs once (it has no cache). The full stack runs cold,
//!   each rate on a freshly built shop with empty caches (an empty L1 and a new, empty Redis
//!   namespace: a start with Redis empty too), then warm: one shop, warmed by
//!   `SHOP_LOAD_WARMUP` (default 40,000) product reads from 64 concurrent clients, its caches
//!   kept from rate to rate.
//!
//! Each rate's row also gives the CPU this process (load generator, service and proxy; not
//! PostgreSQL nor Redis) used during it, in cores: where the database is idle and the rate
//! still fails, that is what ran out.
//!
//! A rate passes when it is served at 97 % of the target or more, with p99 under 100 ms and no
//! error; a stack's capacity is the highest rate that passes. The summary compares each stack
//! with the baseline at the baseline's capacity.
//!
//! Reads `DATABASE_URL` and `REDIS_URL` like the tests.

#[allow(dead_code)] // the example and the tests use the rest
#[path = "../examples/shop/app.rs"]
mod app;
#[allow(dead_code)] // the tests use the rest
#[path = "../tests/support/pg_proxy.rs"]
mod pg_proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::time::Instant;
use tower_strata::cache::CacheStats;
use tower_strata::store::{MemoryStore, RedisStore, Store, TieredStore};

use app::{Shop, ShopConfig, Stack};
use pg_proxy::PgProxy;

const PRODUCTS: u32 = 10_000;
/// The shop's pool size (`app::pool_builder`).
const POOL: u32 = 32;
const P99_LIMIT: Duration = Duration::from_millis(100);
const SERVED_MIN: f64 = 0.97;
const TIMEOUT: Duration = Duration::from_secs(2);
const MAX_IN_FLIGHT: usize = 2_000;
const LISTS: [&str; 5] = [
    "/products?limit=20",
    "/products?limit=50",
    "/products?limit=20&sort=price",
    "/products?limit=20&sort=-price",
    "/products?limit=20&sort=name",
];

type HttpClient = Client<HttpConnector, Full<Bytes>>;
type BoxError = app::BoxError;

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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// Product reads only.
    Get,
    /// 5 % writes.
    Mixed,
}

fn request(addr: SocketAddr, mix: Mix, zipf: &Zipf, rng: &mut SmallRng) -> Request<Full<Bytes>> {
    let roll: f64 = if mix == Mix::Get { 0.0 } else { rng.random() };
    let (method, path, body) = if roll < 0.90 {
        (Method::GET, format!("/products/{}", zipf.sample(rng)), None)
    } else if roll < 0.95 {
        let list = LISTS[rng.random_range(0..LISTS.len())];
        (Method::GET, list.into(), None)
    } else if roll < 0.975 {
        let body = format!(r#"{{"price_cents":{}}}"#, rng.random_range(100..10_000));
        let path = format!("/products/{}", zipf.sample(rng));
        (Method::PATCH, path, Some(body))
    } else {
        let body = format!(r#"{{"product_id":{},"quantity":1}}"#, zipf.sample(rng));
        (Method::POST, "/orders".into(), Some(body))
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    builder
        .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
        .expect("valid request")
}

/// Sends one request; whether it was answered well (409 is an order out of stock: an answer).
async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> bool {
    let answer = tokio::time::timeout(TIMEOUT, async {
        let response = client.request(req).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok::<_, BoxError>(status)
    })
    .await;
    matches!(answer, Ok(Ok(s)) if s.is_success() || s == StatusCode::CONFLICT)
}

/// One rate's measurements.
struct Row {
    delay_ms: u64,
    stack: &'static str,
    caches: &'static str,
    rate: u32,
    served: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    errors: u64,
    hit_rate: Option<f64>,
    round_trips: f64,
    pings: f64,
    busy_mean: f64,
    busy_max: usize,
    /// CPU this process (load generator, service, proxy) used during the step, in cores.
    cpu: f64,
}

impl Row {
    fn passes(&self) -> bool {
        self.served >= SERVED_MIN * f64::from(self.rate) && self.p99 < P99_LIMIT && self.errors == 0
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    Duration::from_micros(u64::from(sorted[i]))
}

fn hits_and_misses(stats: &CacheStats) -> (u64, u64) {
    (
        stats.hits() + stats.stale_hits() + stats.coalesced(),
        stats.misses(),
    )
}

/// CPU time this process has used (user and system, from `/proc/self/stat`), if readable.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports in clock ticks of 1/100 s on every common configuration.
    Some(Duration::from_millis(ticks * 10))
}

/// What the service under load is: its address, its cache's counters, the proxy.
struct Target<'a> {
    addr: SocketAddr,
    cache: Option<&'a CacheStats>,
    proxy: &'a PgProxy,
}

/// One rate of a pass, and the labels of its row.
struct Step {
    delay_ms: u64,
    stack: &'static str,
    caches: &'static str,
    rate: u32,
    secs: Duration,
    seed: u64,
}

/// Sends `rate` requests a second for `secs` on a schedule and measures them.
async fn run_step(
    client: &HttpClient,
    target: &Target<'_>,
    mix: Mix,
    zipf: &Arc<Zipf>,
    step: Step,
) -> Row {
    let n = (f64::from(step.rate) * step.secs.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(step.rate));
    let mut rng = SmallRng::seed_from_u64(step.seed);
    let cache_before = target.cache.map(hits_and_misses);
    let rt_before = target.proxy.round_trips();
    let pings_before = target.proxy.exchanges().pings;

    let cpu_before = cpu_time();
    let stop = Arc::new(AtomicBool::new(false));
    let samples = sample_busy(target.proxy, stop.clone());

    let in_flight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now() + Duration::from_millis(10);
    let sending = async {
        let mut tasks = Vec::with_capacity(n as usize);
        let mut dropped = 0_u64;
        for i in 0..n {
            let at = start + interval.mul_f64(i as f64);
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            let req = request(target.addr, mix, zipf, &mut rng);
            if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                dropped += 1;
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let (client, in_flight) = (client.clone(), in_flight.clone());
            tasks.push(tokio::spawn(async move {
                let ok = send(&client, req).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                (Instant::now(), at, ok)
            }));
        }
        let mut done = Vec::with_capacity(tasks.len());
        for task in tasks {
            done.push(task.await.expect("request task"));
        }
        stop.store(true, Ordering::Relaxed);
        (done, dropped)
    };
    let ((done, dropped), (busy_mean, busy_max)) = tokio::join!(sending, samples);
    let wall = start.elapsed();
    let cpu = match (cpu_before, cpu_time()) {
        (Some(before), Some(after)) => (after - before).as_secs_f64() / wall.as_secs_f64(),
        _ => f64::NAN,
    };

    let deadline = start + step.secs + P99_LIMIT;
    let mut latencies: Vec<u32> = done
        .iter()
        .map(|(end, at, _)| u32::try_from((*end - *at).as_micros()).unwrap_or(u32::MAX))
        .collect();
    latencies.sort_unstable();
    let served = done
        .iter()
        .filter(|(end, _, ok)| *ok && *end <= deadline)
        .count();
    let errors = dropped + done.iter().filter(|(_, _, ok)| !ok).count() as u64;
    let hit_rate = target.cache.zip(cache_before).map(|(c, (h0, m0))| {
        let (h, m) = hits_and_misses(c);
        (h - h0) as f64 / ((h - h0) + (m - m0)).max(1) as f64
    });
    let sent = n.max(1) as f64;
    Row {
        delay_ms: step.delay_ms,
        stack: step.stack,
        caches: step.caches,
        rate: step.rate,
        served: served as f64 / step.secs.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        p999: percentile(&latencies, 0.999),
        errors,
        hit_rate,
        round_trips: (target.proxy.round_trips() - rt_before) as f64 / sent,
        pings: (target.proxy.exchanges().pings - pings_before) as f64 / sent,
        busy_mean,
        busy_max,
        cpu,
    }
}

/// Samples the proxy's busy connections every 2 ms until `stop`: mean and max.
async fn sample_busy(proxy: &PgProxy, stop: Arc<AtomicBool>) -> (f64, usize) {
    let (mut sum, mut max, mut n) = (0_usize, 0_usize, 0_usize);
    let mut ticks = tokio::time::interval(Duration::from_millis(2));
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let busy = proxy.busy();
        sum += busy;
        max = max.max(busy);
        n += 1;
    }
    (sum as f64 / n.max(1) as f64, max)
}

/// Warms a shop's caches: `count` product reads from 64 clients, each sending its next when
/// the last is answered.
async fn warm_up(client: &HttpClient, addr: SocketAddr, zipf: &Arc<Zipf>, count: usize) {
    let left = Arc::new(AtomicUsize::new(count));
    let workers: Vec<_> = (0..64)
        .map(|i| {
            let (client, zipf, left) = (client.clone(), zipf.clone(), left.clone());
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(1_000 + i);
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    send(&client, request(addr, Mix::Get, &zipf, &mut rng)).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("warm-up client");
    }
}

struct Settings {
    database_url: String,
    redis_url: String,
    rates: Vec<u32>,
    secs: Duration,
    mix: Mix,
    warm_up: usize,
    run_id: String,
}

/// A shop on `pool`, served on a loopback port: the shop, its store, its address, its server.
async fn serve(
    settings: &Settings,
    pool: &PgPool,
    schema: &str,
    stack: Stack,
    namespace: &str,
) -> Result<(Shop, TieredStore, SocketAddr, tokio::task::JoinHandle<()>), BoxError> {
    let l2 = RedisStore::builder(&settings.redis_url)
        .namespace(namespace)
        .build()?;
    let store = TieredStore::builder(MemoryStore::new(256 << 20), l2).build()?;
    let mut config = ShopConfig::new(pool.clone(), store.clone());
    config.schema = schema.into();
    config.seed_products = PRODUCTS;
    config.seed_stock = 1_000_000_000;
    config.stack = stack;
    let shop = app::build(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = shop.router.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((shop, store, addr, server))
}

/// Runs one pass (a stack, cold or warm) over the rates until two fail in a row.
async fn run_pass(
    settings: &Settings,
    delay_ms: u64,
    proxy: &PgProxy,
    options: &PgConnectOptions,
    schema: &str,
    (stack, label, caches): (Stack, &'static str, &'static str),
    rows: &mut Vec<Row>,
) -> Result<(), BoxError> {
    let pool: PgPool = app::pool_builder().connect_with(options.clone()).await?;
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build({
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            http
        });
    let zipf = Arc::new(Zipf::new(PRODUCTS));
    let namespace = |i: usize| format!("shop_load_{}_{delay_ms}_{label}_{i}", settings.run_id);
    // Warm: one shop for every rate, warmed first. Cold: a new shop with empty caches per rate.
    let mut kept = None;
    if caches != "cold" {
        let (shop, store, addr, server) =
            serve(settings, &pool, schema, stack, &namespace(0)).await?;
        if caches == "warm" {
            let started = Instant::now();
            warm_up(&client, addr, &zipf, settings.warm_up).await;
            eprintln!(
                "{delay_ms} ms, {label}: warmed by {} reads in {:.1} s",
                settings.warm_up,
                started.elapsed().as_secs_f64()
            );
        }
        kept = Some((shop, store, addr, server));
    }
    let mut failed_in_a_row = 0;
    for (i, &rate) in settings.rates.iter().enumerate() {
        let fresh = match kept {
            Some(_) => None,
            None => Some(serve(settings, &pool, schema, stack, &namespace(i + 1)).await?),
        };
        let (shop, _, addr, _) = kept.as_ref().or(fresh.as_ref()).expect("a shop");
        if i == 0 {
            // Both stacks start with every connection open and the read prepared on it.
            shop.warm_pool(POOL).await?;
        }
        let target = Target {
            addr: *addr,
            cache: shop.cache.as_ref(),
            proxy,
        };
        let step = Step {
            delay_ms,
            stack: label,
            caches,
            rate,
            secs: settings.secs,
            seed: 7 + i as u64,
        };
        let row = run_step(&client, &target, settings.mix, &zipf, step).await;
        eprintln!("{}", format_row(&row));
        failed_in_a_row = if row.passes() { 0 } else { failed_in_a_row + 1 };
        let hopeless = row.served < 0.5 * f64::from(rate);
        rows.push(row);
        if let Some((shop, store, _, server)) = fresh {
            server.abort();
            drop(shop);
            store.clear().await?;
        }
        // Let the last answers and the pool's release pings finish.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if failed_in_a_row >= 2 || hopeless {
            break;
        }
    }
    if let Some((shop, store, _, server)) = kept {
        server.abort();
        drop(shop);
        store.clear().await?;
    }
    pool.close().await;
    Ok(())
}

fn format_row(r: &Row) -> String {
    format!(
        "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.2} ({:.2} pings) | {:.1} / {} | {:.2} | {} |",
        r.delay_ms,
        r.stack,
        r.caches,
        r.rate,
        r.served,
        ms(r.p50),
        ms(r.p99),
        ms(r.p999),
        r.errors,
        r.hit_rate
            .map(|h| format!("{:.1} %", h * 100.0))
            .unwrap_or_else(|| "-".into()),
        r.round_trips,
        r.pings,
        r.busy_mean,
        r.busy_max,
        r.cpu,
        if r.passes() { "yes" } else { "no" },
    )
}

/// Starts the proxy on a thread and runtime of its own (so its delays are kept while the
/// service's runtime is busy); dropping the returned guard stops it.
fn start_proxy(
    url: &str,
    delay: Duration,
) -> Result<(PgProxy, PgConnectOptions, tokio::sync::oneshot::Sender<()>), BoxError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("proxy runtime");
        runtime.block_on(async move {
            let _ = ready_tx.send(PgProxy::in_front_of(&url, delay).await);
            let _ = stop_rx.await;
        });
    });
    let (proxy, options) = ready_rx.recv()??;
    Ok((proxy, options, stop_tx))
}

/// The highest passing rate of a pass.
fn capacity(rows: &[Row], delay: u64, stack: &str, caches: &str) -> Option<u32> {
    rows.iter()
        .filter(|r| r.delay_ms == delay && r.stack == stack && r.caches == caches && r.passes())
        .map(|r| r.rate)
        .max()
}

fn find<'a>(rows: &'a [Row], delay: u64, stack: &str, caches: &str, rate: u32) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.delay_ms == delay && r.stack == stack && r.caches == caches && r.rate == rate)
}

fn print_summary(rows: &[Row], delays: &[u64]) {
    println!();
    println!(
        "| delay ms | baseline capacity | full, cold capacity | full, warm capacity | warm / baseline | at the baseline's capacity: p50 ms baseline / full warm | p99 ms | DB round trips per request | busy DB connections (mean) | warm hit rate |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &delay in delays {
        let base = capacity(rows, delay, "metrics only", "-");
        let cold = capacity(rows, delay, "full", "cold");
        let warm = capacity(rows, delay, "full", "warm");
        let show = |c: Option<u32>| c.map_or("none".into(), |c| c.to_string());
        let ratio = match (base, warm) {
            (Some(b), Some(w)) => format!("{:.1}x", f64::from(w) / f64::from(b)),
            _ => "-".into(),
        };
        let at = base.and_then(|b| {
            Some((
                find(rows, delay, "metrics only", "-", b)?,
                find(rows, delay, "full", "warm", b)?,
            ))
        });
        let compare = match at {
            Some((b, f)) => format!(
                "{} / {} | {} / {} | {:.2} / {:.2} | {:.1} / {:.1} | {}",
                ms(b.p50),
                ms(f.p50),
                ms(b.p99),
                ms(f.p99),
                b.round_trips,
                f.round_trips,
                b.busy_mean,
                f.busy_mean,
                f.hit_rate
                    .map_or("-".into(), |h| format!("{:.1} %", h * 100.0)),
            ),
            None => "- | - | - | - | -".into(),
        };
        println!(
            "| {delay} | {} | {} | {} | {ratio} | {compare} |",
            show(base),
            show(cold),
            show(warm)
        );
    }
    // Cold start and the 0 ms promise: against the baseline at every rate the baseline serves.
    for &delay in delays {
        for caches in ["cold", "warm"] {
            let worse: Vec<String> = rows
                .iter()
                .filter(|b| b.delay_ms == delay && b.stack == "metrics only" && b.passes())
                .filter_map(|b| {
                    let f = find(rows, delay, "full", caches, b.rate)?;
                    (f.p99 > b.p99 || f.p50 > b.p50 || !f.passes()).then(|| {
                        format!(
                            "{} req/s (p50 {} / {}, p99 {} / {})",
                            b.rate,
                            ms(b.p50),
                            ms(f.p50),
                            ms(b.p99),
                            ms(f.p99)
                        )
                    })
                })
                .collect();
            let verdict = if worse.is_empty() {
                "no slower at any rate the baseline serves".into()
            } else {
                format!(
                    "slower (p50 or p99, baseline / full) at {}",
                    worse.join(", ")
                )
            };
            println!("{delay} ms, full {caches}: {verdict}");
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn main() -> Result<(), BoxError> {
    // `cargo bench` passes `--bench`; a filter argument would too. Nothing to filter here.
    let delays: Vec<u64> = list("SHOP_LOAD_DELAYS", "0,2,20");
    let settings = Settings {
        database_url: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        redis_url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        rates: list(
            "SHOP_LOAD_RATES",
            "250,500,750,1000,1500,2000,3000,4000,6000,8000,10000,12000,16000,20000",
        ),
        secs: Duration::from_secs_f64(env_or("SHOP_LOAD_SECS", 3.0)),
        mix: match std::env::var("SHOP_LOAD_MIX").as_deref() {
            Ok("mixed") => Mix::Mixed,
            _ => Mix::Get,
        },
        warm_up: env_or("SHOP_LOAD_WARMUP", 40_000),
        run_id: format!("{}_{}", std::process::id(), rand::random::<u32>()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let schema = format!("shop_load_{}", settings.run_id);
    runtime.block_on(async {
        for &delay in &delays {
            let (proxy, options, stop) =
                start_proxy(&settings.database_url, Duration::from_millis(delay))?;
            for pass in [
                (Stack::MetricsOnly, "metrics only", "-"),
                (Stack::Full, "full", "cold"),
                (Stack::Full, "full", "warm"),
            ] {
                run_pass(&settings, delay, &proxy, &options, &schema, pass, &mut rows).await?;
            }
            drop(proxy);
            let _ = stop.send(());
        }
        let admin: PgPool = app::pool_builder()
            .max_connections(1)
            .min_idle(0)
            .connect(&settings.database_url)
            .await?;
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
            .execute(&admin)
            .await?;
        Ok::<_, BoxError>(())
    })?;
    let mix = match settings.mix {
        Mix::Get => "GET /products/{id} only",
        Mix::Mixed => "mixed, 5 % writes",
    };
    println!(
        "workload: {mix}; {} s per rate",
        settings.secs.as_secs_f64()
    );
    println!(
        "| delay ms | stack | caches | target req/s | served req/s | p50 ms | p99 ms | p99.9 ms | errors | hit rate | DB round trips per request | busy DB connections mean / max | CPU cores (this process) | passes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{}", format_row(row));
    }
    print_summary(&rows, &delays);
    Ok(())
}
