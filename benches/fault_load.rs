//! Fault load run: the response cache on a Redis store (alone, and tiered behind a memory L1)
//! under a steady load while its `redis-server` (one of this run's own, on a free loopback
//! port) is hung with SIGSTOP, resumed, killed and restarted. Each phase is compared with the
//! same load sent to the service with no cache at all, measured in the same moments: the
//! clients take 100 ms turns between the service alone, the cache on the Redis store and the
//! cache on the tiered store, so each target has a third of every phase.
//!
//! With the feature `redis-cluster`, a last phase runs the cache on a Redis Cluster of its own
//! (three masters with a replica each, `cluster-node-timeout 2000`) and hangs one master
//! (SIGSTOP) until well after the cluster has promoted its replica: the hit share of the keys
//! on the healthy masters, the p99, and the time from the promotion to the first hit of the
//! lost master's keys.
//!
//! ```text
//! cargo bench --bench fault_load --features memory,redis
//! FAULT_CLIENTS=16 FAULT_PHASE_SECS=6 cargo bench --bench fault_load --features memory,redis
//! cargo bench --bench fault_load --features memory,redis,redis-cluster
//! ```
//!
//! What a cache must show: no failed request in any phase; while Redis hangs or is dead, at
//! least 70 % of the throughput of the service alone and a p99 within 25 ms of it; hits back
//! within 2 s of Redis answering again. On the Cluster: at least 80 % hits on the healthy
//! masters' keys and a p99 under 100 ms while one master hangs (until the cluster itself
//! refuses every key, `CLUSTERDOWN`, from the moment it flags the master failed until the
//! promotion), and the lost master's keys hits again within 5 s of the promotion.

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

/// The targets, each its own server: the service alone, and the cache on each store.
const TARGETS: [&str; 3] = ["no cache", "redis", "tiered"];

/// One target's turn: the clients move from target to target every slice, so the service alone
/// and the caches are measured in the same moments of the same run, not one after the other
/// (on shared cores, the service alone measured a third apart from one window to the next).
const SLICE_MS: u128 = 100;

struct Recorder {
    phase: AtomicUsize,
    started: Mutex<Instant>,
    /// Per phase, per target.
    phases: Vec<Vec<Mutex<Phase>>>,
    stop: AtomicBool,
    /// Slices are counted from here.
    epoch: Instant,
}

async fn drive(addrs: [SocketAddr; 3], clients: usize, recorder: Arc<Recorder>) {
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
                    let target =
                        (recorder.epoch.elapsed().as_millis() / SLICE_MS) as usize % TARGETS.len();
                    let addr = addrs[target];
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
                    let mut p = recorder.phases[phase][target].lock().unwrap();
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

/// Serves the three targets, primes the caches, and runs the phases with the clients taking
/// turns between the targets; every fault hits both caches' Redis at once.
async fn run_all(
    stores: [Option<BoxStore>; 3],
    redis: &mut Redis,
    clients: usize,
    phase_secs: f64,
) -> Vec<Row> {
    let mut addrs = Vec::new();
    for store in stores {
        addrs.push(match store {
            Some(store) => {
                let layer = CacheLayer::new(store)
                    .upstream_timeout(Duration::from_secs(10))
                    .unwrap();
                serve(ServiceBuilder::new().layer(layer).service(origin())).await
            }
            None => serve(origin()).await,
        });
    }
    let addrs: [SocketAddr; 3] = addrs.try_into().expect("three targets");
    // Prime the caches: every key once.
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for addr in &addrs[1..] {
        for id in 0..KEYS {
            let r = client
                .get(format!("http://{addr}/products/{id}").parse().unwrap())
                .await
                .unwrap();
            r.into_body().collect().await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let recorder = Arc::new(Recorder {
        phase: AtomicUsize::new(0),
        started: Mutex::new(Instant::now()),
        phases: (0..PHASES.len())
            .map(|_| (0..TARGETS.len()).map(|_| Mutex::default()).collect())
            .collect(),
        stop: AtomicBool::new(false),
        epoch: Instant::now(),
    });
    let load = tokio::spawn(drive(addrs, clients, recorder.clone()));
    let mut rows = Vec::new();
    for (i, name) in PHASES.iter().enumerate() {
        match i {
            1 => redis.signal("-STOP"),
            2 => redis.signal("-CONT"),
            3 => redis.kill(),
            4 => *redis = Redis::start(redis.port),
            _ => {}
        }
        *recorder.started.lock().unwrap() = Instant::now();
        recorder.phase.store(i, Ordering::Relaxed);
        let began = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(phase_secs)).await;
        // Each target had a third of the phase.
        let turn = began.elapsed().as_secs_f64() / TARGETS.len() as f64;
        for (t, target) in TARGETS.iter().enumerate() {
            let mut p = std::mem::take(&mut *recorder.phases[i][t].lock().unwrap());
            p.latencies_us.sort_unstable();
            rows.push(Row {
                target,
                phase: name,
                rps: p.latencies_us.len() as f64 / turn,
                p50: percentile(&p.latencies_us, 0.5),
                p99: percentile(&p.latencies_us, 0.99),
                failures: p.failures,
                hits: p.hits,
                first_hit: p.first_hit,
            });
        }
    }
    recorder.stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    rows
}

#[cfg(feature = "redis-cluster")]
#[path = "../tests/support/cluster.rs"]
mod cluster;

/// One request of the cluster phase.
#[cfg(feature = "redis-cluster")]
struct Seen {
    /// Since the fault.
    at: Duration,
    on_victim: bool,
    hit: bool,
    took: Duration,
}

/// The cluster phase; see the module docs.
#[cfg(feature = "redis-cluster")]
async fn cluster_phase(clients: usize) {
    use std::collections::HashMap;

    let cluster = Arc::new(cluster::PrivateCluster::start_replicated());
    let ns = format!("fault_cluster_{}", std::process::id());
    let store = RedisStore::builder(cluster.url())
        .namespace(&ns)
        .build()
        .unwrap();
    let layer = CacheLayer::new(store.clone())
        .upstream_timeout(Duration::from_secs(10))
        .unwrap();
    let addr = serve(ServiceBuilder::new().layer(layer).service(origin())).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for id in 0..KEYS {
        let r = client
            .get(format!("http://{addr}/products/{id}").parse().unwrap())
            .await
            .unwrap();
        r.into_body().collect().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Which master holds each product's entry: the store keys name the path.
    let mut master_of: HashMap<usize, u16> = HashMap::new();
    for port in cluster.masters() {
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{ns}:k:*"))
            .query(&mut conn)
            .unwrap();
        for key in keys {
            if let Some(id) = key
                .rfind("/products/")
                .and_then(|at| key[at + "/products/".len()..].parse().ok())
            {
                master_of.insert(id, port);
            }
        }
    }
    assert_eq!(master_of.len(), KEYS, "every product stored");
    let victim = master_of[&0];
    let healthy = *cluster.masters().iter().find(|p| **p != victim).unwrap();
    let on_victim: Arc<Vec<bool>> =
        Arc::new((0..KEYS).map(|id| master_of[&id] == victim).collect());

    cluster.signal(victim, "STOP");
    let fault = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, stop, on_victim) = (client.clone(), stop.clone(), on_victim.clone());
            tokio::spawn(async move {
                let mut seen: Vec<Seen> = Vec::new();
                let mut id = c % KEYS;
                while !stop.load(Ordering::Relaxed) {
                    id = (id + 7) % KEYS;
                    let uri = format!("http://{addr}/products/{id}").parse().unwrap();
                    let began = Instant::now();
                    let Ok(Ok(r)) =
                        tokio::time::timeout(Duration::from_secs(10), client.get(uri)).await
                    else {
                        continue;
                    };
                    let hit = r
                        .headers()
                        .get("cache-status")
                        .is_some_and(|v| v.to_str().unwrap_or("").contains("; hit"));
                    let _ = r.into_body().collect().await;
                    seen.push(Seen {
                        at: fault.elapsed(),
                        on_victim: on_victim[id],
                        hit,
                        took: began.elapsed(),
                    });
                }
                seen
            })
        })
        .collect();
    let (down_at, promoted) = {
        let cluster = cluster.clone();
        // A key of the victim's slots, to watch the promotion with.
        let victim_key = (0..100_000)
            .map(|i| format!("{ns}:watch:{i}"))
            .find(|k| cluster.master_of_via(healthy, k) == Some(victim))
            .expect("a key on the victim");
        tokio::task::spawn_blocking(move || {
            let mut down_at = None;
            while fault.elapsed() < Duration::from_secs(20) {
                if down_at.is_none() && cluster.state_via(healthy).as_deref() == Some("fail") {
                    down_at = Some(fault.elapsed());
                }
                if cluster
                    .master_of_via(healthy, &victim_key)
                    .is_some_and(|port| port != victim)
                {
                    return (down_at, Some(fault.elapsed()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (down_at, None)
        })
        .await
        .unwrap()
    };
    let promoted = promoted.expect("the replica was promoted within 20 s");
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    cluster.signal(victim, "CONT");
    let share = |f: &dyn Fn(&Seen) -> bool| {
        let (mut hits, mut all) = (0usize, 0usize);
        for s in seen.iter().filter(|s| f(s)) {
            all += 1;
            hits += usize::from(s.hit);
        }
        (hits as f64 * 100.0 / all.max(1) as f64, all)
    };
    let p99 = |f: &dyn Fn(&Seen) -> bool| {
        let mut took: Vec<u64> = seen
            .iter()
            .filter(|s| f(s))
            .map(|s| s.took.as_micros() as u64)
            .collect();
        took.sort_unstable();
        percentile(&took, 0.99)
    };
    let serving = down_at.unwrap_or(promoted).min(promoted);
    let (healthy_share, healthy_n) = share(&|s| !s.on_victim && s.at < serving);
    let (healthy_whole, _) = share(&|s| !s.on_victim && s.at < promoted);
    let (victim_after, victim_n) =
        share(&|s| s.on_victim && s.at >= promoted + Duration::from_secs(4));
    let first_hit = seen
        .iter()
        .filter(|s| s.on_victim && s.hit && s.at >= promoted.saturating_sub(Duration::from_secs(1)))
        .map(|s| s.at)
        .min();
    println!(
        "\nCluster phase: 3 masters + 3 replicas (cluster-node-timeout 2000), {clients} clients, \
         {KEYS} keys, one master SIGSTOPped and left stopped; store defaults (timeout 500 ms, \
         read soft timeout 50 ms, breaker 3 failures / 1 s per node).\n"
    );
    println!("| measure | value |\n|---|---:|");
    println!(
        "| cluster declared itself down (CLUSTERDOWN) after | {} |",
        down_at.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
    );
    println!(
        "| replica promoted after | {:.2} s |",
        promoted.as_secs_f64()
    );
    println!(
        "| healthy-master keys, hits until CLUSTERDOWN | {healthy_share:.1} % of {healthy_n} |"
    );
    println!("| healthy-master keys, hits until the promotion | {healthy_whole:.1} % |");
    println!(
        "| p99 until CLUSTERDOWN | {:.2} ms |",
        p99(&|s| s.at < serving)
    );
    println!(
        "| p99 until promotion + 1 s | {:.2} ms |",
        p99(&|s| s.at < promoted + Duration::from_secs(1))
    );
    println!(
        "| first hit of the lost master's keys after the promotion | {} |",
        first_hit.map_or("-".into(), |at| format!(
            "{:.0} ms",
            at.saturating_sub(promoted).as_secs_f64() * 1000.0
        ))
    );
    println!(
        "| lost master's keys, hits from promotion + 4 s | {victim_after:.1} % of {victim_n} |"
    );
    let _ = store;
}

fn main() {
    let clients: usize = env_or("FAULT_CLIENTS", 16);
    let phase_secs: f64 = env_or("FAULT_PHASE_SECS", 6.0);
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
    let cluster_only = std::env::var("FAULT_CLUSTER_ONLY").is_ok_and(|v| v == "1");
    runtime.block_on(async {
        if cluster_only {
            return;
        }
        let mut redis = Redis::start(port);
        let url = format!("redis://127.0.0.1:{port}");
        let redis_store = || {
            RedisStore::builder(&url)
                .namespace(format!("fault_{}", std::process::id()))
                .build()
                .unwrap()
        };
        let tiered = TieredStore::try_new(MemoryStore::new(64 << 20), redis_store()).unwrap();
        // The tiered store wants its backplane subscribed before it trusts L1.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stores = [
            None,
            Some(BoxStore::new(redis_store())),
            Some(BoxStore::new(tiered)),
        ];
        rows.extend(run_all(stores, &mut redis, clients, phase_secs).await);
    });
    #[cfg(feature = "redis-cluster")]
    runtime.block_on(cluster_phase(clients));
    if cluster_only {
        return;
    }
    println!(
        "\nFault load run: {clients} keep-alive clients, {KEYS} keys, {phase_secs} s per phase \
         (the clients take {SLICE_MS} ms turns between the three targets, so each had a third \
         of it), 2 tokio threads (server and clients share them); Redis command timeout \
         500 ms, read soft timeout 50 ms, breaker 3 failures / 1 s.\n"
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
