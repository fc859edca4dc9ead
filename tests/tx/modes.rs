//! Transaction modes against a real PostgreSQL (`DATABASE_URL`): no transaction for reads by
//! default, read-only and read-write transactions where configured, and a replica pool.
#![cfg(feature = "postgres")]

#[path = "../support/tx.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, Request};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use support::{app, send_request, sql, status, table};
use tower_strata::tx::{TxConfig, TxHandle, TxLayer, TxMode};

async fn pool_at(url: &str, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .expect("PostgreSQL at DATABASE_URL")
}

async fn pool(max: u32) -> PgPool {
    pool_at(&support::pg_url(), max).await
}

fn request(method: Method) -> Request<String> {
    Request::builder()
        .method(method)
        .uri("/")
        .body(String::new())
        .unwrap()
}

/// Whether two statements run one after the other through the handle share a transaction:
/// the first assigns a transaction id, the second asks for the current one.
async fn one_transaction(tx: &TxHandle<Postgres>) -> bool {
    let mut conn = tx.conn().await.unwrap();
    let assigned: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let current: Option<i64> =
        sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned()::text::bigint")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    current == Some(assigned)
}

async fn raise(tx: &TxHandle<Postgres>, errcode: &str) -> Result<(), sqlx::Error> {
    let mut conn = tx.conn().await?;
    sqlx::query(sql(format!(
        "DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '{errcode}'; END $$"
    )))
    .execute(&mut conn)
    .await?;
    Ok(())
}

#[tokio::test]
async fn reads_run_without_a_transaction_and_writes_in_one_by_default() {
    let layer = TxLayer::try_new(pool(2).await, TxConfig::default()).unwrap();
    let stats = layer.stats();
    let svc = app(layer, |tx, _| async move {
        let mode = format!("{:?}", tx.mode());
        let mut r = status(200);
        *r.body_mut() = format!("{mode} {}", one_transaction(&tx).await);
        r
    });
    for (method, expected) in [
        (Method::GET, "Autocommit false"),
        (Method::HEAD, "Autocommit false"),
        (Method::OPTIONS, "Autocommit false"),
        (Method::POST, "ReadWrite true"),
        (Method::PUT, "ReadWrite true"),
        (Method::PATCH, "ReadWrite true"),
        (Method::DELETE, "ReadWrite true"),
    ] {
        let r = send_request(&svc, request(method.clone())).await;
        assert_eq!(r.status(), 200, "{method}");
        if method != Method::HEAD {
            assert_eq!(r.body(), expected, "{method}");
        }
    }
    let s = stats.snapshot();
    // Work without a transaction is counted apart: no BEGIN, no COMMIT.
    assert_eq!(
        (s.autocommit, s.begun, s.committed, s.read_only),
        (3, 4, 4, 0)
    );
    assert_eq!(s.active, 0);
}

#[tokio::test]
async fn a_route_can_ask_for_a_transaction_on_get() {
    let layer = TxLayer::try_new(
        pool(2).await,
        TxConfig::default().mode_for(Method::GET, TxMode::ReadWrite),
    )
    .unwrap();
    let svc = app(layer, |tx, _| async move {
        let mut r = status(200);
        *r.body_mut() = one_transaction(&tx).await.to_string();
        r
    });
    assert_eq!(
        send_request(&svc, request(Method::GET)).await.body(),
        "true"
    );
    assert_eq!(
        send_request(&svc, request(Method::HEAD)).await.status(),
        200
    );
}

#[tokio::test]
async fn read_only_rejects_writes_with_the_database_error() {
    let pool = pool(2).await;
    let name = table("readonly");
    sqlx::query(sql(format!("CREATE TABLE {name} (v BIGINT)")))
        .execute(&pool)
        .await
        .unwrap();
    // The old spelling and the new one.
    for config in [
        TxConfig::default().read_only(true),
        TxConfig::default().mode(TxMode::ReadOnly),
    ] {
        let layer = TxLayer::try_new(pool.clone(), config).unwrap();
        let stats = layer.stats();
        let n = name.clone();
        let svc = app(layer, move |tx, _| {
            let n = n.clone();
            async move {
                let in_tx = one_transaction(&tx).await;
                let mut conn = tx.conn().await.unwrap();
                let err = sqlx::query(sql(format!("INSERT INTO {n} VALUES (1)")))
                    .execute(&mut conn)
                    .await
                    .unwrap_err();
                let code = err
                    .as_database_error()
                    .and_then(|e| e.code())
                    .unwrap_or_default();
                // The failed statement aborted the transaction: answer with a status that
                // rolls back, so the layer does not report a failed commit.
                let mut r = status(409);
                *r.body_mut() = format!("{in_tx} {code}");
                r
            }
        });
        let r = send_request(&svc, request(Method::POST)).await;
        // 25006: read_only_sql_transaction. The pg_current_xact_id() above is allowed: it
        // assigns an id without writing.
        assert_eq!(r.body(), "true 25006");
        let s = stats.snapshot();
        assert_eq!((s.begun, s.read_only, s.autocommit), (1, 1, 0));
    }
    let rows: i64 = sqlx::query_scalar(sql(format!("SELECT COUNT(*) FROM {name}")))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    sqlx::query(sql(format!("DROP TABLE {name}")))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn autocommit_gives_the_connection_back_between_borrows() {
    // One connection: the handler's direct acquire succeeds only if the handle gave it back.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&support::pg_url())
        .await
        .unwrap();
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let p = pool.clone();
    let svc = app(layer, move |tx, _| {
        let p = p.clone();
        async move {
            let mut conn = tx.conn().await.unwrap();
            sqlx::query("SELECT 1").execute(&mut conn).await.unwrap();
            drop(conn);
            let free = p.acquire().await.is_ok();
            let mut r = status(200);
            *r.body_mut() = free.to_string();
            r
        }
    });
    assert_eq!(
        send_request(&svc, request(Method::GET)).await.body(),
        "true"
    );
    // In a transaction the connection is the request's until the commit.
    assert_eq!(
        send_request(&svc, request(Method::POST)).await.body(),
        "false"
    );
}

#[tokio::test]
async fn autocommit_replays_reads_but_not_writes() {
    let pool = pool(2).await;
    let name = table("autoretry");
    sqlx::query(sql(format!("CREATE TABLE {name} (v BIGINT)")))
        .execute(&pool)
        .await
        .unwrap();
    let layer = TxLayer::try_new(
        pool.clone(),
        TxConfig::default()
            .mode(TxMode::Autocommit)
            .backoff(Duration::from_millis(1), Duration::from_millis(2)),
    )
    .unwrap();
    let stats = layer.stats();
    let attempts = Arc::new(AtomicUsize::new(0));
    let (a, n) = (attempts.clone(), name.clone());
    let svc = app(layer, move |tx, _| {
        let (a, n) = (a.clone(), n.clone());
        async move {
            let first = a.fetch_add(1, Ordering::SeqCst) == 0;
            let mut conn = tx.conn().await.unwrap();
            sqlx::query(sql(format!("INSERT INTO {n} VALUES (1)")))
                .execute(&mut conn)
                .await
                .unwrap();
            drop(conn);
            if first && raise(&tx, "40001").await.is_err() {
                return status(500);
            }
            status(200)
        }
    });
    // A GET cannot have written (by contract): replayed like a transaction.
    let r = send_request(&svc, request(Method::GET)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(attempts.swap(0, Ordering::SeqCst), 2);
    assert_eq!(stats.snapshot().retried.serialization_failure, 1);
    // A POST without a transaction has committed its insert: replaying it would insert
    // twice, so the handler's answer stands.
    let r = send_request(&svc, request(Method::POST)).await;
    assert_eq!(r.status(), 500);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    let rows: i64 = sqlx::query_scalar(sql(format!("SELECT COUNT(*) FROM {name}")))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 3, "every insert committed on its own");
    let s = stats.snapshot();
    assert_eq!((s.begun, s.committed, s.rolled_back), (0, 0, 0));
    assert_eq!(s.autocommit, 3);
    sqlx::query(sql(format!("DROP TABLE {name}")))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn after_commit_without_a_transaction_runs_once_the_response_is_a_success() {
    let layer = TxLayer::try_new(pool(2).await, TxConfig::default()).unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r2 = ran.clone();
    let svc = app(layer, move |tx, body| {
        let r2 = r2.clone();
        async move {
            let mut conn = tx.conn().await.unwrap();
            sqlx::query("SELECT 1").execute(&mut conn).await.unwrap();
            drop(conn);
            tx.after_commit(move || async move {
                r2.fetch_add(1, Ordering::SeqCst);
            });
            status(body.parse().unwrap())
        }
    });
    for (code, runs) in [(200, 1), (500, 1), (404, 1), (204, 2)] {
        let r = send_request(&svc, Request::get("/").body(code.to_string()).unwrap()).await;
        assert_eq!(r.status(), code);
        assert_eq!(ran.load(Ordering::SeqCst), runs, "{code}");
    }
}

#[tokio::test]
async fn timeouts_are_scoped_to_transactions_and_not_applied_without_one() {
    let layer = TxLayer::try_new(
        pool(1).await,
        TxConfig::default()
            .statement_timeout(Duration::from_millis(1500))
            .lock_timeout(Duration::from_millis(700)),
    )
    .unwrap();
    let svc = app(layer, |tx, _| async move {
        let mut conn = tx.conn().await.unwrap();
        let row: (String, String) = sqlx::query_as(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let mut r = status(200);
        *r.body_mut() = format!("{} {}", row.0, row.1);
        r
    });
    // One connection, so every request below runs on the same session.
    assert_eq!(
        send_request(&svc, request(Method::POST)).await.body(),
        "1500ms 700ms"
    );
    // SET LOCAL ended with the transaction: the session kept its defaults.
    assert_eq!(send_request(&svc, request(Method::GET)).await.body(), "0 0");
    assert_eq!(
        send_request(&svc, request(Method::POST)).await.body(),
        "1500ms 700ms"
    );
}

/// A second database on the local server standing in for a replica: the test proves routing,
/// not replication. Created under a unique name, dropped at the end.
struct Replica {
    admin: PgPool,
    name: String,
    url: String,
}

impl Replica {
    async fn create() -> Self {
        let admin = pool(1).await;
        let name = table("replica");
        sqlx::query(sql(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        // The same server and user, another database (`DATABASE_URL` has no query string).
        let base = support::pg_url();
        let (server, _) = base.rsplit_once('/').expect("a database in DATABASE_URL");
        let url = format!("{server}/{name}");
        Self { admin, name, url }
    }

    async fn drop(self) {
        sqlx::query(sql(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn reads_go_to_the_replica_and_writes_to_the_primary() {
    let replica = Replica::create().await;
    let primary = pool(2).await;
    let primary_name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&primary)
        .await
        .unwrap();
    let replica_pool = pool_at(&replica.url, 2).await;
    let routed = |config: TxConfig| {
        let layer = TxLayer::try_new(primary.clone(), config)
            .unwrap()
            .replica(replica_pool.clone());
        assert!(layer.replica_pool().is_some());
        app(layer, |tx, _| async move {
            let mut conn = tx.conn().await.unwrap();
            let db: String = sqlx::query_scalar("SELECT current_database()")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            let mut r = status(200);
            *r.body_mut() = db;
            r
        })
    };
    let default = routed(TxConfig::default());
    let read_only_get = routed(TxConfig::default().mode_for(Method::GET, TxMode::ReadOnly));
    let read_write_get = routed(TxConfig::default().mode_for(Method::GET, TxMode::ReadWrite));
    for (svc, method, expected) in [
        (&default, Method::GET, &replica.name),
        (&default, Method::POST, &primary_name),
        (&default, Method::DELETE, &primary_name),
        (&read_only_get, Method::GET, &replica.name),
        (&read_write_get, Method::GET, &primary_name),
    ] {
        let r = send_request(svc, request(method.clone())).await;
        assert_eq!(r.body(), expected, "{method}");
    }
    drop((default, read_only_get, read_write_get));
    replica_pool.close().await;
    replica.drop().await;
}
