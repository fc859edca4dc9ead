//! Load runs against peer crates: throughput and p50/p99 latency of cache hits over HTTP/1 on
//! loopback, for the bare service, tower-strata's `CacheLayer` on the memory, Redis and tiered
//! stores, and the crates a Rust user would pick instead, all on the same axum handler and payload.
//!
//! ```text
//! cargo run --release --manifest-path benches/load/Cargo.toml
//! LOAD_SECS=10 LOAD_CONNECTIONS=128 LOAD_TARGETS=bare,strata-memory \
//!     cargo run --release --manifest-path benches/load/Cargo.toml
//! ```
//!
//! Settings (environment variables):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `LOAD_SECS` | 3 | measured seconds per target |
//! | `LOAD_WARMUP_SECS` | 1 | load before measuring (not counted) |
//! | `LOAD_CONNECTIONS` | 64 | concurrent keep-alive connections, one request in flight each |
//! | `LOAD_KEYS` | 100 | distinct URLs `/products/1..=N`, requested round-robin |
//! | `LOAD_THREADS` | 1 | tokio worker threads of the clients |
//! | `LOAD_SERVER_THREADS` | 1 | tokio worker threads of the server (a runtime of its own) |
//! | `LOAD_HANDLER_SLEEP_US` | 0 | extra work in the handler: a sleep, in microseconds |
//! | `LOAD_TARGETS` | all | comma-separated names to run (`bare` always runs first) |
//! | `LOAD_ROUNDS` | 1 | run every target this many times and keep the median run |
//! | `REDIS_URL` | `redis://127.0.0.1:6379` | Redis for the Redis-backed targets |
//!
//! The handler serializes a product (809 bytes of JSON) with serde_json on every call (plus the optional
//! sleep) and answers `Cache-Control: public, max-age=60`. Every cache is primed before the
//! warm-up, so the measured window is hits only; the `upstream` column counts handler calls in
//! the window to prove it. The table is printed and written to `benches/load/target/load-report.md`.
//!
//! CPU per request is the server's own: the server runs on a runtime of its own whose threads
//! are named `load-server`, and their user + system time (`/proc/self/task/*/stat`, in clock
//! ticks of 10 ms) over the measured window is divided by the requests answered in it. On a
//! shared machine this is steadier than throughput, which also measures the clients and
//! whatever else runs; compare it with the bare service's, measured in the same run.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tower::{BoxError, Service, ServiceBuilder};
use tower_strata::cache::CacheLayer;
use tower_strata::store::{MemoryStore, RedisStore, Store, TieredStore};

/// One run's settings, from the environment.
#[derive(Debug, Clone)]
struct Settings {
    secs: f64,
    warmup: f64,
    connections: usize,
    keys: u64,
    threads: usize,
    server_threads: usize,
    sleep: Duration,
    targets: Option<Vec<String>>,
    rounds: usize,
    redis_url: String,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("load: cannot parse {name}={v:?}, using the default");
            default
        }),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        Settings {
            secs: env_or("LOAD_SECS", 3.0),
            warmup: env_or("LOAD_WARMUP_SECS", 1.0),
            connections: env_or("LOAD_CONNECTIONS", 64usize).max(1),
            keys: env_or("LOAD_KEYS", 100u64).max(1),
            threads: env_or("LOAD_THREADS", 1usize).max(1),
            server_threads: env_or("LOAD_SERVER_THREADS", 1usize).max(1),
            sleep: Duration::from_micros(env_or("LOAD_HANDLER_SLEEP_US", 0u64)),
            targets: std::env::var("LOAD_TARGETS")
                .ok()
                .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect()),
            rounds: env_or("LOAD_ROUNDS", 1usize).max(1),
            redis_url: std::env::var("REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        }
    }

    fn wants(&self, name: &str) -> bool {
        name == "bare"
            || self
                .targets
                .as_ref()
                .is_none_or(|t| t.iter().any(|n| n == name))
    }
}

// ---------------------------------------------------------------------------------------------
// The handler: the same for every target.

#[derive(Serialize)]
struct Product {
    id: u64,
    sku: String,
    name: String,
    description: String,
    price_cents: u64,
    currency: &'static str,
    stock: u32,
    tags: Vec<&'static str>,
    dimensions_mm: [u32; 3],
    supplier: Supplier,
}

#[derive(Serialize)]
struct Supplier {
    id: u32,
    name: &'static str,
    country: &'static str,
}

/// The handler's work: build and serialize a product (809 bytes of JSON), count the call.
async fn product(id: u64, calls: Arc<AtomicU64>, sleep: Duration) -> Response {
    calls.fetch_add(1, Ordering::Relaxed);
    if !sleep.is_zero() {
        tokio::time::sleep(sleep).await;
    }
    let p = Product {
        id,
        sku: format!("SKU-{id:08}"),
        name: format!("Ergonomic mechanical keyboard, model {id}"),
        description: "A full-size mechanical keyboard with hot-swappable switches, PBT keycaps, \
            per-key lighting, a detachable braided USB-C cable and a magnetic wrist rest. \
            Ships with a keycap puller, a switch puller and four spare switches. Works with \
            Linux, macOS and Windows without drivers; the firmware is open source and can be \
            reflashed over USB. Two-year warranty, free returns within thirty days. This text \
            is padding so that the serialized product weighs about one kibibyte, the size of a \
            typical API object."
            .to_owned(),
        price_cents: 12_999 + id,
        currency: "EUR",
        stock: 42,
        tags: vec![
            "keyboard",
            "mechanical",
            "usb-c",
            "peripherals",
            "bestseller",
        ],
        dimensions_mm: [440, 135, 38],
        supplier: Supplier {
            id: 7,
            name: "Keys & Co. Manufacturing",
            country: "DE",
        },
    };
    let body = serde_json::to_vec(&p).expect("a product serializes");
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        body,
    )
        .into_response()
}

fn handler(calls: Arc<AtomicU64>, sleep: Duration) -> MethodRouter {
    get(move |Path(id): Path<u64>| product(id, calls.clone(), sleep))
}

const ROUTE: &str = "/products/{id}";

// ---------------------------------------------------------------------------------------------
// Targets.

/// A target under test: its app, what to say about it in the table, and what to clean up.
struct Target {
    app: Router,
    note: String,
    cleanup: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// tower-http-cache asks for a `Sync` response body and axum's `Body` is not `Sync`: this
/// adapter buffers the inner response into `Full<Bytes>` (on misses only; hits never reach it).
#[derive(Clone)]
struct SyncBody<S>(S);

impl<S> Service<Request<Body>> for SyncBody<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            let (parts, body) = fut.await?.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok(http::Response::from_parts(parts, Full::new(bytes)))
        })
    }
}

async fn handle_box_error(e: BoxError) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn namespace(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("loadbench_{what}_{}_{nanos}", std::process::id())
}

/// Builds the named target, or says why it cannot run here.
async fn build(name: &str, s: &Settings, calls: Arc<AtomicU64>) -> Result<Target, String> {
    let h = || handler(calls.clone(), s.sleep);
    let target = |app: Router, note: &str| Target {
        app,
        note: note.to_owned(),
        cleanup: None,
    };
    Ok(match name {
        "bare" => target(Router::new().route(ROUTE, h()), "no cache"),
        "strata-memory" => target(
            Router::new()
                .route(ROUTE, h())
                .layer(CacheLayer::new(MemoryStore::new(64 << 20))),
            "`CacheLayer::new(MemoryStore::new(64 MiB))`",
        ),
        "strata-redis" => {
            let store = RedisStore::builder(s.redis_url.clone())
                .namespace(namespace("strata"))
                .build()
                .map_err(|e| format!("RedisStore: {e}"))?;
            store.ping().await.map_err(|e| format!("Redis: {e}"))?;
            let cleanup = store.clone();
            Target {
                cleanup: Some(Box::pin(async move {
                    let _ = cleanup.clear().await;
                })),
                ..target(
                    Router::new()
                        .route(ROUTE, h())
                        .layer(CacheLayer::new(store)),
                    "`CacheLayer::new(RedisStore)`, every hit a Redis GET",
                )
            }
        }
        "strata-tiered" => {
            let l2 = RedisStore::builder(s.redis_url.clone())
                .namespace(namespace("tiered"))
                .build()
                .map_err(|e| format!("RedisStore: {e}"))?;
            l2.ping().await.map_err(|e| format!("Redis: {e}"))?;
            let store = TieredStore::try_new(MemoryStore::new(64 << 20), l2.clone())
                .map_err(|e| format!("TieredStore: {e}"))?;
            Target {
                cleanup: Some(Box::pin(async move {
                    let _ = l2.clear().await;
                })),
                ..target(
                    Router::new()
                        .route(ROUTE, h())
                        .layer(CacheLayer::new(store)),
                    "`TieredStore` (memory L1 over Redis L2): hits from L1",
                )
            }
        }
        "tower-http-cache-memory" | "tower-http-cache-redis" => {
            use tower_http_cache::prelude::{
                CacheLayer as ThcLayer, InMemoryBackend, RedisBackend,
            };
            // Both backends get the same stack: a `Sync` body under the layer, and its
            // `BoxError` turned into a response for axum.
            macro_rules! stack {
                ($layer:expr) => {
                    Router::new().route(ROUTE, h()).layer(
                        ServiceBuilder::new()
                            .layer(HandleErrorLayer::new(handle_box_error))
                            .layer($layer)
                            .layer(tower::layer::layer_fn(SyncBody)),
                    )
                };
            }
            if name.ends_with("memory") {
                // The README's quick start, less `min_body_size(1024)` (it would skip small
                // bodies) and with our max-age.
                let layer = ThcLayer::builder(InMemoryBackend::new(10_000))
                    .ttl(Duration::from_secs(60))
                    .stale_while_revalidate(Duration::from_secs(30))
                    .max_body_size(Some(256 * 1024))
                    .respect_cache_control(true)
                    .build();
                target(
                    stack!(layer),
                    "`InMemoryBackend` (moka); needs a Sync body adapter and `HandleErrorLayer` on axum",
                )
            } else {
                let client = redis::Client::open(s.redis_url.as_str())
                    .map_err(|e| format!("redis client: {e}"))?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(10)))
                    .set_connection_timeout(Some(Duration::from_secs(5)));
                let manager = client
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(|e| format!("Redis: {e}"))?;
                let layer = ThcLayer::builder(RedisBackend::new(manager))
                    .ttl(Duration::from_secs(60))
                    .stale_while_revalidate(Duration::from_secs(10))
                    .respect_cache_control(true)
                    .build();
                target(
                    stack!(layer),
                    "`RedisBackend` (README settings); no key prefix option, keys expire in 60 s",
                )
            }
        }
        "hitbox-moka" | "hitbox-redis" => {
            use hitbox::Config;
            use hitbox::policy::PolicyConfig;
            use hitbox_http::extractors::Method as MethodExtractor;
            use hitbox_http::extractors::path::PathExtractor;
            use hitbox_http::predicates::NeutralRequestPredicate;
            use hitbox_http::predicates::response::StatusCode as ResponseStatus;
            // The `axum-products` example's per-route config, without the auth-header key part.
            let config = Config::builder()
                .request_predicate(NeutralRequestPredicate::new())
                .response_predicate(ResponseStatus::new(StatusCode::OK))
                .extractor(MethodExtractor::new().path(ROUTE))
                .policy(PolicyConfig::builder().ttl(Duration::from_secs(60)).build())
                .build();
            if name.ends_with("moka") {
                let backend = hitbox_moka::MokaBackend::builder()
                    .max_entries(10_000)
                    .build();
                let cache = hitbox_tower::Cache::builder()
                    .backend(backend)
                    .config(config)
                    .build();
                target(
                    Router::new().route(ROUTE, h().layer(cache)),
                    "`MokaBackend`, per-route layer as in the `axum-products` example",
                )
            } else {
                let backend = hitbox_redis::RedisBackend::builder()
                    .connection(hitbox_redis::ConnectionMode::single(s.redis_url.clone()))
                    .build()
                    .map_err(|e| format!("hitbox-redis: {e}"))?;
                let cache = hitbox_tower::Cache::builder()
                    .backend(backend)
                    .config(config)
                    .build();
                target(
                    Router::new().route(ROUTE, h().layer(cache)),
                    "`hitbox_redis::RedisBackend`; no key prefix option, keys expire in 60 s",
                )
            }
        }
        "http-cache-tower-server" => {
            use http_cache::{MokaCache, MokaManager};
            use http_cache_tower_server::ServerCacheLayer;
            let layer = ServerCacheLayer::new(MokaManager::new(MokaCache::new(10_000)));
            target(
                Router::new().route(ROUTE, h()).layer(
                    ServiceBuilder::new()
                        .layer(HandleErrorLayer::new(handle_box_error))
                        .layer(layer),
                ),
                "`MokaManager` (feature `manager-moka`); `HandleErrorLayer` needed on axum",
            )
        }
        "axum-response-cache" => target(
            Router::new().route(
                ROUTE,
                h().layer(axum_response_cache::CacheLayer::with_lifespan(
                    Duration::from_secs(60),
                )),
            ),
            "`CacheLayer::with_lifespan(60 s)` per route as its README shows; memory only",
        ),
        other => return Err(format!("unknown target {other}")),
    })
}

const TARGETS: &[&str] = &[
    "bare",
    "strata-memory",
    "strata-redis",
    "strata-tiered",
    "tower-http-cache-memory",
    "tower-http-cache-redis",
    "hitbox-moka",
    "hitbox-redis",
    "http-cache-tower-server",
    "axum-response-cache",
];

/// Targets that exist upstream but cannot be measured here, and why.
const NOT_MEASURED: &[(&str, &str)] = &[
    (
        "http-cache-tower-server on Redis",
        "http-cache has no Redis manager (only cacache, moka, redb, foyer)",
    ),
    (
        "axum-response-cache on Redis",
        "stores in a `cached::Cached` behind a `Mutex`; no async/Redis store",
    ),
];

// ---------------------------------------------------------------------------------------------
// The client.

#[derive(Debug, Clone)]
struct Measured {
    requests: u64,
    errors: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    upstream: u64,
    body_bytes: usize,
    /// Server CPU time (user + system) per request answered in the window, in µs.
    cpu_us: f64,
}

/// The name of the server runtime's threads, whose CPU time is measured.
const SERVER_THREAD: &str = "load-server";

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`: 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// User + system CPU time of the server's threads so far, in clock ticks (`None` off Linux).
fn server_cpu_ticks() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != SERVER_THREAD {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the command (which may hold spaces) start after its closing `)`:
        // state is field 3, utime 14 and stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        total += utime + stime;
    }
    Some(total)
}

/// Serves `app` on a loopback port, on the server's runtime.
async fn serve(
    app: Router,
    server: &tokio::runtime::Handle,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.set_nonblocking(true).expect("non-blocking listener");
    let addr = listener.local_addr().expect("local addr");
    let task = server.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

async fn connect(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One GET; the body is read to the end and checked. `Err` on a transport error, timeout,
/// non-200 or a body that is not product `id`.
async fn one(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    id: u64,
) -> Result<usize, String> {
    let req = Request::get(format!("/products/{id}"))
        .header(header::HOST, addr.to_string())
        .body(Empty::new())
        .expect("request");
    let work = async {
        sender.ready().await.map_err(|e| e.to_string())?;
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let body = res.into_body().collect().await.map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("status {status}"));
        }
        // The right product for the key, whole: a cache must not answer with another key's
        // response or a truncated body.
        let body = body.to_bytes();
        if !body.starts_with(format!("{{\"id\":{id},").as_bytes()) || !body.ends_with(b"}}") {
            return Err(format!("wrong body for product {id}"));
        }
        Ok(body.len())
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "request timed out".to_string())?
}

/// Primes every key, then warms up and measures with `s.connections` keep-alive connections.
async fn run(
    t: &Target,
    s: &Settings,
    calls: &AtomicU64,
    server_runtime: &tokio::runtime::Handle,
) -> Result<Measured, String> {
    let (addr, server) = serve(t.app.clone(), server_runtime).await;
    let result = async {
        let mut sender = connect(addr).await?;
        let mut body_bytes = 0;
        for id in 1..=s.keys {
            body_bytes = body_bytes.max(one(&mut sender, addr, id).await?);
        }
        // Stores complete after the body has streamed: give them a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(sender);

        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::with_capacity(s.connections);
        for c in 0..s.connections {
            let (measuring, stop) = (measuring.clone(), stop.clone());
            let keys = s.keys;
            tasks.push(tokio::spawn(async move {
                let mut sender = connect(addr).await?;
                let mut lat = Vec::with_capacity(1 << 14);
                let mut errors = 0u64;
                let mut id = c as u64 % keys;
                while !stop.load(Ordering::Relaxed) {
                    let counted = measuring.load(Ordering::Relaxed);
                    let start = Instant::now();
                    let r = one(&mut sender, addr, id + 1).await;
                    let took = start.elapsed();
                    // Only requests that started and ended inside the window count.
                    if counted && !stop.load(Ordering::Relaxed) {
                        match r {
                            Ok(_) => lat.push(took.as_micros() as u32),
                            Err(_) => errors += 1,
                        }
                    }
                    if r.is_err() {
                        sender = connect(addr).await?;
                    }
                    id = (id + 1) % keys;
                }
                Ok::<_, String>((lat, errors))
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(s.warmup)).await;
        let upstream_before = calls.load(Ordering::Relaxed);
        let cpu_before = server_cpu_ticks();
        let started = Instant::now();
        measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(s.secs)).await;
        stop.store(true, Ordering::Relaxed);
        let window = started.elapsed().as_secs_f64();
        let cpu_ticks = cpu_before.zip(server_cpu_ticks()).map(|(a, b)| b - a);
        let upstream = calls.load(Ordering::Relaxed) - upstream_before;
        let mut all = Vec::new();
        let mut errors = 0;
        for task in tasks {
            let (lat, e) = task.await.map_err(|e| e.to_string())??;
            all.extend(lat);
            errors += e;
        }
        all.sort_unstable();
        let pct = |p: f64| {
            if all.is_empty() {
                f64::NAN
            } else {
                all[((all.len() - 1) as f64 * p).round() as usize] as f64
            }
        };
        Ok(Measured {
            requests: all.len() as u64,
            errors,
            rps: all.len() as f64 / window,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            upstream,
            body_bytes,
            cpu_us: cpu_ticks.map_or(f64::NAN, |ticks| {
                ticks as f64 / CLOCK_TICKS * 1e6 / all.len().max(1) as f64
            }),
        })
    }
    .await;
    server.abort();
    result
}

// ---------------------------------------------------------------------------------------------
// Report.

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

fn table(s: &Settings, rows: &[(&str, String, Result<Measured, String>)]) -> String {
    use std::fmt::Write;
    let bare = rows
        .iter()
        .find(|r| r.0 == "bare")
        .and_then(|r| r.2.as_ref().ok())
        .cloned();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Load run: {} connections, {} keys, {} s warm-up + {} s measured per target, {} server \
         and {} client tokio threads, handler = serde_json of a {}-byte product{}.\n",
        s.connections,
        s.keys,
        s.warmup,
        s.secs,
        s.server_threads,
        s.threads,
        bare.as_ref().map_or(0, |b| b.body_bytes),
        if s.sleep.is_zero() {
            String::new()
        } else {
            format!(" + {} µs sleep", s.sleep.as_micros())
        }
    );
    let _ = writeln!(
        out,
        "| target | req/s | p50 | p99 | server CPU/req | CPU/req vs bare | req/s vs bare | p50 vs bare | upstream calls | errors | notes |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (name, note, r) in rows {
        match r {
            Ok(m) => {
                let (cpu, thr, lat) = match &bare {
                    Some(b) => (
                        format!("{:.2}x", m.cpu_us / b.cpu_us),
                        format!("{:.2}x", m.rps / b.rps),
                        format!("{:.2}x", m.p50_us / b.p50_us),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                let _ = writeln!(
                    out,
                    "| {name} | {:.0} | {} | {} | {:.1} µs | {cpu} | {thr} | {lat} | {} / {} | {} | {note} |",
                    m.rps,
                    ms(m.p50_us),
                    ms(m.p99_us),
                    m.cpu_us,
                    m.upstream,
                    m.requests,
                    m.errors
                );
            }
            Err(e) => {
                let _ = writeln!(out, "| {name} | - | - | - | - | - | - | - | - | - | not run: {e} |");
            }
        }
    }
    for (name, why) in NOT_MEASURED {
        let _ = writeln!(
            out,
            "| {name} | - | - | - | - | - | - | - | - | - | not measured: {why} |"
        );
    }
    out
}

fn median_run(mut runs: Vec<Result<Measured, String>>) -> Result<Measured, String> {
    if let Some(e) = runs.iter().find_map(|r| r.as_ref().err()) {
        return Err(e.clone());
    }
    // By server CPU per request, the steadiest figure on a shared machine.
    runs.sort_by(|a, b| {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        a.cpu_us.total_cmp(&b.cpu_us)
    });
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments of its own.
    let s = Settings::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.server_threads)
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .expect("server runtime");
    let server = server_runtime.handle().clone();
    let rows = rt.block_on(async {
        // (target, note, one result per round)
        type Runs = Vec<Result<Measured, String>>;
        let mut results: Vec<(&str, String, Runs)> = Vec::new();
        for round in 0..s.rounds {
            for (i, name) in TARGETS.iter().enumerate() {
                if !s.wants(name) {
                    continue;
                }
                let calls = Arc::new(AtomicU64::new(0));
                let (note, r) = match build(name, &s, calls.clone()).await {
                    Ok(mut t) => {
                        let r = run(&t, &s, &calls, &server).await;
                        if let Some(c) = t.cleanup.take() {
                            c.await;
                        }
                        (t.note, r)
                    }
                    Err(e) => (String::new(), Err(e)),
                };
                match &r {
                    Ok(m) => eprintln!(
                        "load: round {} {name}: {:.0} req/s, p50 {}, p99 {}, server CPU {:.1} µs/req",
                        round + 1,
                        m.rps,
                        ms(m.p50_us),
                        ms(m.p99_us),
                        m.cpu_us
                    ),
                    Err(e) => eprintln!("load: round {} {name}: not run: {e}", round + 1),
                }
                if round == 0 {
                    results.push((TARGETS[i], note, vec![r]));
                } else if let Some(row) = results.iter_mut().find(|row| row.0 == *name) {
                    row.2.push(r);
                }
            }
        }
        results
            .into_iter()
            .map(|(n, note, runs)| (n, note, median_run(runs)))
            .collect::<Vec<_>>()
    });
    let report = table(&s, &rows);
    println!("\n{report}");
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").to_owned());
    let path = std::path::Path::new(&dir).join("load-report.md");
    match std::fs::write(&path, &report) {
        Ok(()) => eprintln!("load: report written to {}", path.display()),
        Err(e) => eprintln!("load: cannot write {}: {e}", path.display()),
    }
}
