//! Bank load run: drives `examples/transfer_service.rs` (built in release and started on a
//! free loopback port) with 32 clients making transfers among 10 hot accounts at
//! SERIALIZABLE, and prints transfers/s, the share of `503` and p99; then again while one of
//! the service's PostgreSQL backends is terminated every 0.3 s. Money must be conserved.
//!
//! ```text
//! cargo bench --bench bank_load --features postgres,axum,metrics,health
//! BANK_SECS=20 BANK_CLIENTS=64 cargo bench --bench bank_load --features postgres,axum,metrics,health
//! ```
//!
//! Needs PostgreSQL at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const ACCOUNTS: i64 = 10;
const START: i64 = 1_000;
const APPLICATION: &str = "bank_load";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The example, built in release and running; killed on drop.
struct Service {
    child: Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(database_url: &str) -> Service {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = env!("CARGO_MANIFEST_DIR");
    let built = Command::new(&cargo)
        .args(["build", "--release", "--example", "transfer_service"])
        .args(["--features", "postgres,axum,metrics,health"])
        .current_dir(manifest)
        .status()
        .expect("cargo builds the example");
    assert!(built.success(), "building transfer_service failed");
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{manifest}/target"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Its connections are named, so the second run can terminate them and nothing else.
    let separator = if database_url.contains('?') { '&' } else { '?' };
    let child = Command::new(format!("{target}/release/examples/transfer_service"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env(
            "DATABASE_URL",
            format!("{database_url}{separator}application_name={APPLICATION}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("transfer_service starts");
    Service {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn call(client: &Http, method: &str, uri: &str, body: String) -> (u16, Bytes) {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(30), client.request(request)).await {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, body)
        }
        _ => (0, Bytes::new()),
    }
}

async fn total(client: &Http, base: &str, first: i64) -> i64 {
    let mut sum = 0;
    for id in first..first + ACCOUNTS {
        let (_, body) = call(
            client,
            "GET",
            &format!("{base}/accounts/{id}"),
            String::new(),
        )
        .await;
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        sum += value["balance"].as_i64().unwrap();
    }
    sum
}

struct Outcome {
    statuses: BTreeMap<u16, u64>,
    latencies_us: Vec<u64>,
    took: f64,
}

async fn run(client: &Http, base: &str, first: i64, clients: usize, secs: f64) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new((BTreeMap::<u16, u64>::new(), Vec::<u64>::new())));
    let began = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, base, stop, seen) =
                (client.clone(), base.to_owned(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let from = first + rand::random_range(0..ACCOUNTS);
                    let mut to = first + rand::random_range(0..ACCOUNTS);
                    if to == from {
                        to = first + (to - first + 1) % ACCOUNTS;
                    }
                    let amount = rand::random_range(1..=20);
                    let t = Instant::now();
                    let (status, _) = call(
                        &client,
                        "POST",
                        &format!("{base}/transfer"),
                        format!(r#"{{"from":{from},"to":{to},"amount":{amount}}}"#),
                    )
                    .await;
                    let mut seen = seen.lock().unwrap();
                    *seen.0.entry(status).or_default() += 1;
                    seen.1.push(t.elapsed().as_micros() as u64);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let took = began.elapsed().as_secs_f64();
    let (statuses, mut latencies_us) = std::mem::take(&mut *seen.lock().unwrap());
    latencies_us.sort_unstable();
    Outcome {
        statuses,
        latencies_us,
        took,
    }
}

fn report(name: &str, o: &Outcome) {
    let all: u64 = o.statuses.values().sum();
    let ok = o.statuses.get(&200).copied().unwrap_or(0);
    let unavailable = o.statuses.get(&503).copied().unwrap_or(0);
    let p99 = o
        .latencies_us
        .get(((o.latencies_us.len() as f64 - 1.0) * 0.99) as usize)
        .copied()
        .unwrap_or(0) as f64
        / 1000.0;
    println!(
        "| {name} | {:.0} | {:.2} % | {:.1} ms | {:?} |",
        ok as f64 / o.took,
        unavailable as f64 * 100.0 / all.max(1) as f64,
        p99,
        o.statuses
    );
}

fn main() {
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let clients: usize = env_or("BANK_CLIENTS", 32);
    let secs: f64 = env_or("BANK_SECS", 10.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let service = start(&database_url);
    runtime.block_on(async {
        let client: Http = Client::builder(TokioExecutor::new()).build_http();
        let base = service.base.clone();
        let ready = Instant::now();
        while call(&client, "GET", &format!("{base}/health"), String::new())
            .await
            .0
            != 200
        {
            assert!(
                ready.elapsed() < Duration::from_secs(60),
                "transfer_service did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Accounts of this run's own, so runs can share the database.
        let first = i64::from(std::process::id()) * 1000 + rand::random_range(0..900);
        for id in first..first + ACCOUNTS {
            let (status, _) = call(
                &client,
                "POST",
                &format!("{base}/accounts"),
                format!(r#"{{"id":{id},"balance":{START}}}"#),
            )
            .await;
            assert_eq!(status, 201, "creating account {id}");
        }
        println!(
            "\nBank load run: {clients} clients, {ACCOUNTS} accounts, {secs} s per run, \
             transfer_service (SERIALIZABLE, 5 attempts, adaptive concurrency).\n"
        );
        println!("| run | transfers/s | 503 | p99 | statuses |");
        println!("|---|---:|---:|---:|---|");
        let calm = run(&client, &base, first, clients, secs).await;
        report("hot rows", &calm);

        // The same, while one of the service's backends is terminated every 0.3 s.
        let killing = Arc::new(AtomicBool::new(true));
        let killer = {
            let (killing, url) = (killing.clone(), database_url.clone());
            tokio::spawn(async move {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                while killing.load(Ordering::Relaxed) {
                    let _ = sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1 AND pid <> pg_backend_pid() LIMIT 1",
                    )
                    .bind(APPLICATION)
                    .execute(&pool)
                    .await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
        };
        let faulty = run(&client, &base, first, clients, secs).await;
        killing.store(false, Ordering::Relaxed);
        let _ = killer.await;
        report("hot rows, a backend terminated every 0.3 s", &faulty);
        let money = total(&client, &base, first).await;
        println!("\nmoney: {money} (started with {})", ACCOUNTS * START);
        assert_eq!(money, ACCOUNTS * START, "money was created or lost");
    });
    drop(service);
}
