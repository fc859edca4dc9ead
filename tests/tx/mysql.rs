//! Transaction layer against a real MariaDB/MySQL (`MYSQL_URL`).
#![cfg(feature = "mysql")]

#[path = "../support/tx.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::mysql::MySqlPoolOptions;
use sqlx::{MySql, MySqlPool};
use support::{app, send, sql, status, table};
use tower_strata::tx::{IsolationLevel, TxConfig, TxHandle, TxLayer, TxMode};

async fn setup(name: &str) -> (MySqlPool, String) {
    let pool = MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&support::mysql_url())
        .await
        .expect("MariaDB at MYSQL_URL");
    let t = table(name);
    sqlx::query(sql(format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB"
    )))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(sql(format!("INSERT INTO {t} VALUES (1, 0), (2, 0)")))
        .execute(&pool)
        .await
        .unwrap();
    (pool, t)
}

async fn teardown(pool: &MySqlPool, t: &str) {
    sqlx::query(sql(format!("DROP TABLE IF EXISTS {t}")))
        .execute(pool)
        .await
        .unwrap();
}

async fn sum(pool: &MySqlPool, t: &str) -> i64 {
    sqlx::query_scalar(sql(format!("SELECT CAST(SUM(v) AS SIGNED) FROM {t}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn commits_on_success_rolls_back_otherwise() {
    let (pool, t) = setup("my_status").await;
    let layer = TxLayer::try_new(
        pool.clone(),
        TxConfig::default()
            .isolation(IsolationLevel::Serializable)
            .lock_timeout(Duration::from_millis(1500)),
    )
    .unwrap();
    let name = t.clone();
    let svc = app(layer, move |tx: TxHandle<MySql>, body: String| {
        let name = name.clone();
        async move {
            let mut conn = tx.conn().await.unwrap();
            let lock_wait: i64 =
                sqlx::query_scalar("SELECT CAST(@@innodb_lock_wait_timeout AS SIGNED)")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            assert_eq!(lock_wait, 2, "1.5 s rounds up to whole seconds");
            sqlx::query(sql(format!("UPDATE {name} SET v = v + 1 WHERE id = 1")))
                .execute(&mut conn)
                .await
                .unwrap();
            status(body.parse().unwrap())
        }
    });
    for code in ["200", "409", "500", "204"] {
        send(&svc, code).await;
    }
    assert_eq!(sum(&pool, &t).await, 2);
    teardown(&pool, &t).await;
}

#[tokio::test]
async fn deadlock_1213_is_retried_and_both_succeed() {
    let (pool, t) = setup("my_deadlock").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let first = Arc::new(AtomicUsize::new(0));
    let (name, b, f) = (t.clone(), barrier.clone(), first.clone());
    let svc = app(layer, move |tx: TxHandle<MySql>, body: String| {
        let (name, b, f) = (name.clone(), b.clone(), f.clone());
        async move {
            let (x, y) = if body == "a" { (1, 2) } else { (2, 1) };
            let upd = |id: i64| sql(format!("UPDATE {name} SET v = v + 1 WHERE id = {id}"));
            let result = async {
                let mut conn = tx.conn().await?;
                sqlx::query(upd(x)).execute(&mut conn).await?;
                if f.fetch_add(1, Ordering::SeqCst) < 2 {
                    b.wait().await;
                }
                sqlx::query(upd(y)).execute(&mut conn).await?;
                Ok::<_, sqlx::Error>(())
            }
            .await;
            if result.is_ok() {
                status(200)
            } else {
                status(500)
            }
        }
    });
    let (a, b) = tokio::join!(send(&svc, "a"), send(&svc, "b"));
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    assert_eq!(sum(&pool, &t).await, 4);
    assert!(stats.snapshot().retried.deadlock >= 1);
    teardown(&pool, &t).await;
}

#[tokio::test]
async fn unique_violation_and_lock_wait_timeout_are_not_retried_by_default() {
    let (pool, t) = setup("my_unique").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let attempts = Arc::new(AtomicUsize::new(0));
    let (name, a) = (t.clone(), attempts.clone());
    let svc = app(layer, move |tx: TxHandle<MySql>, body: String| {
        let (name, a) = (name.clone(), a.clone());
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            let mut conn = tx.conn().await.unwrap();
            let q = if body == "dup" {
                format!("INSERT INTO {name} VALUES (1, 0)")
            } else {
                sqlx::query("SET SESSION innodb_lock_wait_timeout = 1")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                format!("UPDATE {name} SET v = 5 WHERE id = 2")
            };
            match sqlx::query(sql(q)).execute(&mut conn).await {
                Ok(_) => status(200),
                Err(_) => status(500),
            }
        }
    });
    assert_eq!(send(&svc, "dup").await.status(), 500);
    // Hold row 2 elsewhere so the update waits and times out (1205).
    let mut other = pool.begin().await.unwrap();
    sqlx::query(sql(format!("UPDATE {t} SET v = 1 WHERE id = 2")))
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(send(&svc, "wait").await.status(), 500);
    other.rollback().await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(stats.snapshot().retried.total(), 0);
    teardown(&pool, &t).await;
}

#[tokio::test]
async fn modes_reads_without_a_transaction_writes_in_one_read_only_rejects_writes() {
    let (pool, t) = setup("my_modes").await;
    let handler = |t: String| {
        move |tx: TxHandle<MySql>, _| {
            let t = t.clone();
            async move {
                let mut conn = tx.conn().await.unwrap();
                let in_tx: i64 = sqlx::query_scalar("SELECT CAST(@@in_transaction AS SIGNED)")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                let write = sqlx::query(sql(format!("UPDATE {t} SET v = v + 1 WHERE id = 1")))
                    .execute(&mut conn)
                    .await;
                let code = match write {
                    Ok(_) => "ok".to_owned(),
                    Err(err) => err
                        .as_database_error()
                        .and_then(|e| e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
                        .map(|e| e.number().to_string())
                        .unwrap_or_default(),
                };
                let mut r = status(200);
                *r.body_mut() = format!("{in_tx} {code}");
                r
            }
        }
    };
    let request = |method: http::Method| {
        http::Request::builder()
            .method(method)
            .uri("/")
            .body(String::new())
            .unwrap()
    };
    let default = app(
        TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap(),
        handler(t.clone()),
    );
    let get = support::send_request(&default, request(http::Method::GET)).await;
    assert_eq!(get.body(), "0 ok", "a GET runs without a transaction");
    let post = support::send_request(&default, request(http::Method::POST)).await;
    assert_eq!(post.body(), "1 ok", "a POST runs in one");
    let read_only = app(
        TxLayer::try_new(pool.clone(), TxConfig::default().mode(TxMode::ReadOnly)).unwrap(),
        handler(t.clone()),
    );
    // 1792: cannot execute statement in a READ ONLY transaction.
    let r = support::send_request(&read_only, request(http::Method::POST)).await;
    assert_eq!(r.body(), "1 1792");
    assert_eq!(
        sum(&pool, &t).await,
        2,
        "the GET's and the POST's updates, not the read-only one"
    );
    teardown(&pool, &t).await;
}
