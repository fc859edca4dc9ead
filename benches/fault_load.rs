//! Fault load run: the response cache on a Redis store (alone, and tiered behind a memory L1)
//! under a steady load while its `redis-server` (one of this run's own, on a free loopback
//! port) is hung with SIGSTOP, resumed, killed and restarted. Each phase is compared with the
//! same load sent to the service with no cache at all, measured in the same run.
//!
//! ```text
//! cargo bench --bench fault_load --features memory,redis
//! FAULT_CLIENTS=16 FAULT_PHASE_SECS=4 cargo bench --bench fault_load --features memory,redis
//! ```
//!
//! What a cache must show: no failed request in any phase; while Redis hangs or is dead, at
//! least 70 % of the throughput of the service alone and a p99 within 25 ms of it; hits back
//! within 2 s of Redis answering again.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_strata::cache::CacheLayer;
use tower_strata::store::{BoxStore, MemoryStore, RedisStore, TieredStore};

const KEYS: usize = 1000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The request body the services below take: hyper's, boxed (the cache needs `Default`).
type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

/// The service behind the cache: a product page, cacheable for a minute.
fn origin() -> impl Service<
    Request<ReqBody>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|req: Request<ReqBody>| async move {
        let body = format!(
            "{{\"path\":\"{}\",\"name\":\"product\",\"description\":\"{}\"}}",
            req.uri().path(),
            "x".repeat(700)
        );
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response
            .headers_mut()
            .insert("cache-control", "public, max-age=60".parse().unwrap());
        Ok::<_, Infallible>(response)
    })
}

async fn serve<S, B>(svc: S) -> SocketAddr
where
    S: Service<Request<ReqBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let svc = svc.clone();
            tokio::spawn(async move {
                // The cache asks for a request body it can make empty (`Default`).
                let hyper_svc =
                    hyper::service::service_fn(move |r: Request<hyper::body::Incoming>| {
                        svc.clone().oneshot(r.map(BodyExt::boxed_unsync))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper_svc)
                    .await;
            });
        }
    });
    addr
}

/// A `redis-server` of this run's own, stopped by PID.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let redis = Redis {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        redis
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill();
    }
}

/// What the clients saw in one phase.
#[derive(Default)]
struct Phase {
    latencies_us: Vec<u64>,
    failures: u64,
    hits: u64,
    /// Time from the phase's start to its first hit.
    first_hit: Option<Duration>,
}

struct Recorder {
    phase: AtomicUsize,
    started: Mutex<Instant>,
    phases: Vec<Mutex<Phase>>,
    stop: AtomicBool,
}

async fn drive(addr: SocketAddr, clients: usize, recorder: Arc<Recorder>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let sent = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, recorder, sent) = (client.clone(), recorder.clone(), sent.clone());
            tokio::spawn(async move {
                let mut id = c % KEYS;
                while !recorder.stop.load(Ordering::Relaxed) {
                    id = (id + 7) % KEYS;
                    sent.fetch_add(1, Ordering::Relaxed);
                    let uri = format!("http://{addr}/products/{id}").parse().unwrap();
                    let phase = recorder.phase.load(Ordering::Relaxed);
                    let began = Instant::now();
                    let answer = tokio::time::timeout(Duration::from_secs(10), async {
                        let r = client.get(uri).await.map_err(|_| ())?;
                        let hit = r
                            .headers()
                            .get("cache-status")
                            .is_some_and(|v| v.to_str().unwrap_or("").contains("; hit"));
                        let ok = r.status() == 200;
                        r.into_body().collect().await.map_err(|_| ())?;
                        Ok::<_, ()>((ok, hit))
                    })
                    .await;
                    let took = began.elapsed();
                    let mut p = recorder.phases[phase].lock().unwrap();
                    match answer {
                        Ok(Ok((true, hit))) => {
                            p.latencies_us.push(took.as_micros() as u64);
                            if hit {
                                p.hits += 1;
                                if p.first_hit.is_none() {
                                    let since = recorder.started.lock().unwrap().elapsed();
                                    p.first_hit = Some(since);
                                }
                            }
                        }
                        _ => p.failures += 1,
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i] as f64 / 1000.0
}

struct Row {
    target: &'static str,
    phase: &'static str,
    rps: f64,
    p50: f64,
    p99: f64,
    failures: u64,
    hits: u64,
    first_hit: Option<Duration>,
}

const PHASES: [&str; 5] = [
    "Redis up",
    "Redis hung (SIGSTOP)",
    "Redis resumed (SIGCONT)",
    "Redis dead (SIGKILL)",
    "Redis restarted",
];

async fn run_target(
    target: &'static str,
    store: Option<BoxStore>,
    redis: &mut Redis,
    clients: usize,
    phase_secs: f64,
) -> Vec<Row> {
    let addr = match store {
        Some(store) => {
            let layer = CacheLayer::new(store).upstream_timeout(Duration::from_secs(10));
            serve(ServiceBuilder::new().layer(layer).service(origin())).await
        }
        None => serve(origin()).await,
    };
    // Prime the cache: every key once.
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for id in 0..KEYS {
        let r = client
            .get(format!("http://{addr}/products/{id}").parse().unwrap())
            .await
            .unwrap();
        r.into_body().collect().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let recorder = Arc::new(Recorder {
        phase: AtomicUsize::new(0),
        started: Mutex::new(Instant::now()),
        phases: (0..PHASES.len()).map(|_| Mutex::default()).collect(),
        stop: AtomicBool::new(false),
    });
    let load = tokio::spawn(drive(addr, clients, recorder.clone()));
    let mut rows = Vec::new();
    for (i, name) in PHASES.iter().enumerate() {
        if store_is_set(target) {
            match i {
                1 => redis.signal("-STOP"),
                2 => redis.signal("-CONT"),
                3 => redis.kill(),
                4 => *redis = Redis::start(redis.port),
                _ => {}
            }
        }
        *recorder.started.lock().unwrap() = Instant::now();
        recorder.phase.store(i, Ordering::Relaxed);
        let began = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(phase_secs)).await;
        let elapsed = began.elapsed().as_secs_f64();
        let mut p = std::mem::take(&mut *recorder.phases[i].lock().unwrap());
        p.latencies_us.sort_unstable();
        rows.push(Row {
            target,
            phase: name,
            rps: p.latencies_us.len() as f64 / elapsed,
            p50: percentile(&p.latencies_us, 0.5),
            p99: percentile(&p.latencies_us, 0.99),
            failures: p.failures,
            hits: p.hits,
            first_hit: p.first_hit,
        });
    }
    recorder.stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    rows
}

fn store_is_set(target: &str) -> bool {
    target != "no cache"
}

fn main() {
    let clients: usize = env_or("FAULT_CLIENTS", 16);
    let phase_secs: f64 = env_or("FAULT_PHASE_SECS", 4.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut rows = Vec::new();
    runtime.block_on(async {
        let mut redis = Redis::start(port);
        let url = format!("redis://127.0.0.1:{port}");
        let redis_store = || {
            RedisStore::builder(&url)
                .namespace(format!("fault_{}", std::process::id()))
                .build()
                .unwrap()
        };
        rows.extend(run_target("no cache", None, &mut redis, clients, phase_secs).await);
        let store = BoxStore::new(redis_store());
        rows.extend(run_target("redis", Some(store), &mut redis, clients, phase_secs).await);
        let tiered = TieredStore::try_new(MemoryStore::new(64 << 20), redis_store()).unwrap();
        // The tiered store wants its backplane subscribed before it trusts L1.
        tokio::time::sleep(Duration::from_millis(300)).await;
        rows.extend(
            run_target(
                "tiered",
                Some(BoxStore::new(tiered)),
                &mut redis,
                clients,
                phase_secs,
            )
            .await,
        );
    });
    println!(
        "\nFault load run: {clients} keep-alive clients, {KEYS} keys, {phase_secs} s per phase, \
         2 tokio threads (server and clients share them); Redis command timeout 500 ms, \
         breaker 3 failures / 1 s.\n"
    );
    println!(
        "| phase | target | req/s | vs no cache | p50 | p99 | p99 - no cache | failed | hits | first hit |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for phase in PHASES {
        let base = rows
            .iter()
            .find(|r| r.phase == phase && r.target == "no cache")
            .map(|r| (r.rps, r.p99))
            .unwrap_or((f64::NAN, f64::NAN));
        for r in rows.iter().filter(|r| r.phase == phase) {
            println!(
                "| {} | {} | {:.0} | {:.2}x | {:.2} ms | {:.2} ms | {:+.2} ms | {} | {} | {} |",
                r.phase,
                r.target,
                r.rps,
                r.rps / base.0,
                r.p50,
                r.p99,
                r.p99 - base.1,
                r.failures,
                r.hits,
                r.first_hit.map_or("-".to_owned(), |d| format!(
                    "{:.0} ms",
                    d.as_secs_f64() * 1000.0
                )),
            );
        }
    }
}
