//! The transaction layer behind a real PgBouncer in transaction pooling mode (the `pgbouncer`
//! binary, started by the test): no session state leaks from one client to the next on a
//! shared server connection, and sqlx's statements survive the pooler with
//! `TxConfig::transaction_pooling`.
#![cfg(feature = "postgres")]

#[path = "../support/pgbouncer.rs"]
mod pgbouncer;
#[path = "../support/tx.rs"]
mod tx_support;

use std::time::Duration;

use http::{Method, Request};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tower_strata::tx::{IsolationLevel, TxConfig, TxLayer, TxMode};
use tx_support::{app, send_request, status};

use pgbouncer::PgBouncer;

/// A client of the bouncer: its own sqlx pool of one connection.
async fn client(bouncer: &PgBouncer) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&bouncer.url())
        .await
        .expect("PostgreSQL through pgbouncer")
}

fn post() -> Request<String> {
    Request::post("/").body(String::new()).unwrap()
}

#[tokio::test]
async fn settings_of_one_client_do_not_leak_to_the_next_on_a_shared_server_connection() {
    // One server connection for everyone: A and B take turns on the same backend.
    let bouncer = PgBouncer::start(1);
    let a = TxLayer::try_new(
        client(&bouncer).await,
        TxConfig::default()
            .transaction_pooling(true)
            .isolation(IsolationLevel::Serializable)
            .statement_timeout(Duration::from_millis(1500))
            .lock_timeout(Duration::from_millis(700)),
    )
    .unwrap();
    let a = app(a, |tx, _| async move {
        let mut conn = tx.conn().await.unwrap();
        let row: (i32, String, String, String) = sqlx::query_as(
            "SELECT pg_backend_pid(), current_setting('transaction_isolation'),
                    current_setting('statement_timeout'), current_setting('lock_timeout')",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let mut r = status(200);
        *r.body_mut() = format!("{} {} {} {}", row.0, row.1, row.2, row.3);
        r
    });
    let b = client(&bouncer).await;
    for _ in 0..3 {
        let seen_by_a = send_request(&a, post()).await;
        assert_eq!(seen_by_a.status(), 200);
        let (pid_a, settings) = seen_by_a.body().split_once(' ').unwrap();
        assert_eq!(settings, "serializable 1500ms 700ms");
        // B: simple queries (no parameters), each its own transaction on the same backend.
        let pid_b: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&b)
            .await
            .unwrap();
        assert_eq!(pid_a, pid_b.to_string(), "one server connection");
        let defaults: (String, String, String) = sqlx::query_as(
            "SELECT current_setting('transaction_isolation'),
                    current_setting('statement_timeout'), current_setting('lock_timeout')",
        )
        .fetch_one(&b)
        .await
        .unwrap();
        assert_eq!(
            defaults,
            ("read committed".into(), "0".into(), "0".into()),
            "A's settings leaked to B"
        );
    }
}

#[tokio::test]
async fn prepared_statements_need_transaction_pooling_behind_pgbouncer() {
    let bouncer = PgBouncer::start(1);
    let layer = |pool: PgPool, pooling: bool| {
        let layer =
            TxLayer::try_new(pool, TxConfig::default().transaction_pooling(pooling)).unwrap();
        app(layer, |tx, _| async move {
            let mut conn = tx.conn().await.unwrap();
            let result: Result<i64, _> = sqlx::query_scalar("SELECT $1::int8 + 1")
                .bind(41_i64)
                .fetch_one(&mut conn)
                .await;
            match result {
                Ok(v) => {
                    let mut r = status(200);
                    *r.body_mut() = format!("{v} {:?}", tx.mode());
                    r
                }
                Err(err) => {
                    let mut r = status(500);
                    *r.body_mut() = err.to_string();
                    r
                }
            }
        })
    };
    let request = |method| {
        Request::builder()
            .method(method)
            .uri("/")
            .body(String::new())
            .unwrap()
    };

    // With the setting: statements are prepared unnamed inside the transaction, and reads
    // default to a read-only transaction, so two clients can take turns for as long as they
    // like on one server connection.
    let a = layer(client(&bouncer).await, true);
    let b = layer(client(&bouncer).await, true);
    for round in 0..4 {
        for (name, svc) in [("a", &a), ("b", &b)] {
            for method in [Method::POST, Method::GET] {
                let r = send_request(svc, request(method.clone())).await;
                assert_eq!(
                    r.status(),
                    200,
                    "{name} {method} round {round}: {}",
                    r.body()
                );
                let expected = if method == Method::GET {
                    "42 ReadOnly"
                } else {
                    "42 ReadWrite"
                };
                assert_eq!(r.body(), expected);
            }
        }
    }

    // Without it, sqlx names its statements per client connection (`sqlx_s_1`, ..) and keeps
    // them past the transaction: on the shared server connection B's first one collides
    // with A's. This is what the setting is for.
    let a = layer(client(&bouncer).await, false);
    let b = layer(client(&bouncer).await, false);
    let first = send_request(&a, request(Method::POST)).await;
    assert_eq!(first.status(), 200, "{}", first.body());
    let second = send_request(&b, request(Method::POST)).await;
    assert_eq!(
        second.status(),
        500,
        "expected a collision: {}",
        second.body()
    );
    assert!(
        second.body().contains("already exists"),
        "{}",
        second.body()
    );

    // Nor is sqlx's `statement_cache_capacity(0)` enough (sqlx 0.9): with the cache off, a
    // query is still prepared under a fresh name, which is then never closed. (A bouncer of
    // its own: the one above already holds an `sqlx_s_1`.)
    let bouncer = PgBouncer::start(1);
    let uncached = || async {
        let options: sqlx::postgres::PgConnectOptions = bouncer.url().parse().unwrap();
        PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.statement_cache_capacity(0))
            .await
            .unwrap()
    };
    let (c, d) = (uncached().await, uncached().await);
    let mut outcomes = Vec::new();
    for pool in [&c, &d] {
        let mut tx = pool.begin().await.unwrap();
        let result: Result<i64, _> = sqlx::query_scalar("SELECT $1::int8 + 1")
            .bind(41_i64)
            .fetch_one(&mut *tx)
            .await;
        outcomes.push(result.map_err(|e| e.to_string()));
        let _ = tx.rollback().await;
    }
    assert_eq!(outcomes[0], Ok(42));
    assert!(
        outcomes[1]
            .as_ref()
            .is_err_and(|e| e.contains("already exists")),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn transaction_pooling_refuses_autocommit() {
    let bouncer = PgBouncer::start(1);
    let pool = client(&bouncer).await;
    let err = TxLayer::try_new(
        pool.clone(),
        TxConfig::default()
            .transaction_pooling(true)
            .mode_for(Method::GET, TxMode::Autocommit),
    )
    .unwrap_err();
    assert!(err.to_string().contains("Autocommit"), "{err}");
}
