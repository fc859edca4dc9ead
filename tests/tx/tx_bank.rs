//! The bank test: 32 concurrent clients, 2,000 transfers among 10 accounts at SERIALIZABLE,
//! on a real PostgreSQL (`DATABASE_URL`).
#![cfg(feature = "postgres")]

#[path = "../support/tx_bank.rs"]
mod bank;
#[path = "../support/tx.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bank::{Bank, random_transfer};
use sqlx::postgres::PgPoolOptions;
use tower_strata::tx::{IsolationLevel, TX_ERROR_HEADER, TxConfig, TxLayer};

const CLIENTS: usize = 32;
const TRANSFERS: usize = 2_000;
const ACCOUNTS: i64 = 10;
const START: i64 = 1_000;

async fn pool() -> sqlx::PgPool {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&support::pg_url())
        .await
        .expect("PostgreSQL at DATABASE_URL")
}

/// `CLIENTS` concurrent clients share `TRANSFERS` random transfers through the bank's transfer
/// endpoint behind `layer` (a body `from,to,amount`): how many answers had each status (`503`
/// with its cause). Any other status fails the test.
async fn drive(layer: TxLayer<sqlx::Postgres>, bank: &Arc<Bank>) -> BTreeMap<String, usize> {
    let bank = bank.clone();
    let svc = support::app(layer, move |tx, body| {
        let bank = bank.clone();
        async move {
            let v: Vec<i64> = body.split(',').map(|x| x.parse().unwrap()).collect();
            support::status(bank.transfer(&tx, v[0], v[1], v[2]).await)
        }
    });
    let left = Arc::new(AtomicUsize::new(TRANSFERS));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (svc, left) = (svc.clone(), left.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = BTreeMap::<String, usize>::new();
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let (from, to, amount) = random_transfer(ACCOUNTS);
                let r = support::send(&svc, &format!("{from},{to},{amount}")).await;
                let key = match r.status().as_u16() {
                    200 | 409 => r.status().as_u16().to_string(),
                    503 => format!("503 {}", r.headers()[TX_ERROR_HEADER].to_str().unwrap()),
                    other => panic!("unexpected {other}: {}", r.body()),
                };
                *seen.entry(key).or_default() += 1;
            }
            seen
        }));
    }
    let mut seen = BTreeMap::<String, usize>::new();
    for c in clients {
        for (k, n) in c.await.unwrap() {
            *seen.entry(k).or_default() += n;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_with_retry_keeps_the_money_and_never_leaks_database_errors() {
    let pool = pool().await;
    let bank = Arc::new(Bank::create(&pool, ACCOUNTS, START).await);
    let layer = TxLayer::try_new(
        pool.clone(),
        TxConfig::default().isolation(IsolationLevel::Serializable),
    )
    .unwrap();
    let stats = layer.stats();
    let seen = drive(layer, &bank).await;
    let s = stats.snapshot();
    eprintln!(
        "with retry: {seen:?}; retried {:?}, exhausted {}",
        s.retried, s.retries_exhausted
    );
    assert_eq!(seen.values().sum::<usize>(), TRANSFERS);
    assert!(
        seen.keys()
            .all(|k| k == "200" || k == "409" || k == "503 retries-exhausted")
    );
    assert_eq!(
        bank.total().await,
        ACCOUNTS * START,
        "money is neither created nor lost"
    );
    assert!(
        s.retried.serialization_failure > 0,
        "the workload conflicts: retries happened"
    );
    assert_eq!(s.active, 0);
    // 409 rolls back under the default policy: only the 200s committed.
    assert_eq!(s.committed as usize, seen.get("200").copied().unwrap_or(0));
    Arc::try_unwrap(bank).ok().unwrap().drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_without_retry_shows_serialization_failures_to_clients() {
    let pool = pool().await;
    let bank = Arc::new(Bank::create(&pool, ACCOUNTS, START).await);
    let left = Arc::new(AtomicUsize::new(TRANSFERS));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (bank, left, failures) = (bank.clone(), left.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let (from, to, amount) = random_transfer(ACCOUNTS);
                match bank.transfer_by_hand(from, to, amount).await {
                    Ok(_) => {}
                    Err(sqlx::Error::Database(e))
                        if matches!(e.code().as_deref(), Some("40001" | "40P01")) =>
                    {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let failures = failures.load(Ordering::SeqCst);
    eprintln!("without retry: {failures} client-visible serialization failures");
    assert!(
        failures > 0,
        "without retry, clients see serialization failures"
    );
    assert_eq!(bank.total().await, ACCOUNTS * START);
    Arc::try_unwrap(bank).ok().unwrap().drop().await;
}

/// The hot-rows workload with and without the adaptive concurrency limit: transfers/s, the
/// share of `503` (retries exhausted) and retries, printed; the limit must cut the `503`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_cuts_retries_exhausted_on_hot_rows() {
    let mut results = Vec::new();
    for adaptive in [None, Some(16)] {
        let pool = pool().await;
        let bank = Arc::new(Bank::create(&pool, ACCOUNTS, START).await);
        let layer = TxLayer::try_new(
            pool.clone(),
            TxConfig::default()
                .isolation(IsolationLevel::Serializable)
                .max_attempts(5)
                .adaptive_concurrency(adaptive),
        )
        .unwrap();
        let stats = layer.stats();
        let began = std::time::Instant::now();
        let seen = drive(layer, &bank).await;
        let took = began.elapsed().as_secs_f64();
        let s = stats.snapshot();
        let exhausted: usize = seen
            .iter()
            .filter(|(status, _)| status.starts_with("503"))
            .map(|(_, n)| n)
            .sum();
        let share = exhausted as f64 / TRANSFERS as f64;
        println!(
            "adaptive {adaptive:?}: {:.0} transfers/s, 503 {:.1} %, retried {}",
            TRANSFERS as f64 / took,
            share * 100.0,
            s.retried.total()
        );
        assert_eq!(bank.total().await, ACCOUNTS * START, "money is kept");
        results.push(share);
        Arc::try_unwrap(bank).ok().unwrap().drop().await;
    }
    assert!(results[1] <= results[0], "{results:?}");
}
