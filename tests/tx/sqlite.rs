//! Transaction layer on SQLite (a temporary database file in WAL mode).
#![cfg(feature = "sqlite")]

#[path = "../support/tx.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Sqlite, SqlitePool};
use support::{app, send, status};
use tokio::sync::Notify;
use tower_strata::tx::{IsolationLevel, SqliteBegin, TxConfig, TxHandle, TxLayer, TxMode};

struct Db {
    pool: SqlitePool,
    path: PathBuf,
}

impl Db {
    async fn new(max: u32) -> Self {
        let path = std::env::temp_dir().join(format!("tx_{:08x}.db", rand::random::<u32>()));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_millis(100));
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .connect_with(options)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        Self { pool, path }
    }

    async fn values(&self) -> Vec<i64> {
        sqlx::query_scalar("SELECT v FROM t ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    async fn close(self) {
        self.pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn insert(tx: &TxHandle<Sqlite>, v: i64) -> Result<(), sqlx::Error> {
    let mut conn = tx.conn().await?;
    sqlx::query("INSERT INTO t (v) VALUES (?)")
        .bind(v)
        .execute(&mut conn)
        .await?;
    Ok(())
}

#[tokio::test]
async fn commits_on_success_rolls_back_otherwise() {
    let db = Db::new(2).await;
    let layer = TxLayer::try_new(db.pool.clone(), TxConfig::default()).unwrap();
    let svc = app(layer, |tx: TxHandle<Sqlite>, body: String| async move {
        let code: u16 = body.parse().unwrap();
        insert(&tx, code.into()).await.unwrap();
        status(code)
    });
    for code in ["200", "400", "500", "201"] {
        assert_eq!(send(&svc, code).await.status().as_str(), code);
    }
    assert_eq!(db.values().await, vec![200, 201]);
    db.close().await;
}

#[tokio::test]
async fn busy_snapshot_is_retried() {
    let db = Db::new(4).await;
    sqlx::query("INSERT INTO t (id, v) VALUES (1, 0)")
        .execute(&db.pool)
        .await
        .unwrap();
    let layer = TxLayer::try_new(db.pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let (a_read, b_done) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (ar, bd, at) = (a_read.clone(), b_done.clone(), attempts.clone());
    let svc = app(layer, move |tx: TxHandle<Sqlite>, body: String| {
        let (ar, bd, at) = (ar.clone(), bd.clone(), at.clone());
        async move {
            let result = async {
                let mut conn = tx.conn().await?;
                let v: i64 = sqlx::query_scalar("SELECT v FROM t WHERE id = 1")
                    .fetch_one(&mut conn)
                    .await?;
                if body == "a" && at.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Hold a read snapshot while "b" commits a write.
                    ar.notify_one();
                    bd.notified().await;
                }
                sqlx::query("UPDATE t SET v = ? WHERE id = 1")
                    .bind(v + 1)
                    .execute(&mut conn)
                    .await?;
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
    let svc_a = svc.clone();
    let a = tokio::spawn(async move { send(&svc_a, "a").await });
    a_read.notified().await;
    assert_eq!(send(&svc, "b").await.status(), 200);
    b_done.notify_one();
    assert_eq!(a.await.unwrap().status(), 200);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    // No lost update: both increments are there.
    assert_eq!(db.values().await, vec![2]);
    assert_eq!(stats.snapshot().retried.busy, 1);
    db.close().await;
}

#[tokio::test]
async fn begin_immediate_takes_the_write_lock_up_front() {
    let db = Db::new(2).await;
    let layer = TxLayer::try_new(
        db.pool.clone(),
        TxConfig::default().sqlite_begin(SqliteBegin::Immediate),
    )
    .unwrap();
    let pool = db.pool.clone();
    let svc = app(layer, move |tx: TxHandle<Sqlite>, _| {
        let pool = pool.clone();
        async move {
            let _conn = tx.conn().await.unwrap();
            // Another connection cannot write while this transaction (not yet written to)
            // holds the reserved lock.
            let other = sqlx::query("INSERT INTO t (v) VALUES (9)")
                .execute(&pool)
                .await;
            let code = other
                .err()
                .and_then(|e| e.into_database_error())
                .and_then(|e| e.code().map(|c| c.into_owned()));
            let mut r = status(200);
            *r.body_mut() = code.unwrap_or_default();
            r
        }
    });
    assert_eq!(send(&svc, "").await.body(), "5"); // SQLITE_BUSY
    db.close().await;
}

#[tokio::test]
async fn savepoint_and_after_commit() {
    let db = Db::new(1).await;
    let layer = TxLayer::try_new(db.pool.clone(), TxConfig::default()).unwrap();
    let hooks = Arc::new(AtomicUsize::new(0));
    let h = hooks.clone();
    let svc = app(layer, move |tx: TxHandle<Sqlite>, body| {
        let h = h.clone();
        async move {
            let mut conn = tx.conn().await.unwrap();
            sqlx::query("INSERT INTO t (v) VALUES (1)")
                .execute(&mut conn)
                .await
                .unwrap();
            let mut sp = conn.savepoint().await.unwrap();
            sqlx::query("INSERT INTO t (v) VALUES (2)")
                .execute(&mut sp)
                .await
                .unwrap();
            sp.rollback().await.unwrap();
            conn.after_commit(move || async move {
                h.fetch_add(1, Ordering::SeqCst);
            });
            status(if body == "ok" { 200 } else { 500 })
        }
    });
    send(&svc, "ok").await;
    send(&svc, "fail").await;
    assert_eq!(db.values().await, vec![1]);
    assert_eq!(hooks.load(Ordering::SeqCst), 1);
    db.close().await;
}

#[tokio::test]
async fn settings_sqlite_cannot_honour_are_rejected() {
    let db = Db::new(1).await;
    for config in [
        TxConfig::default().isolation(IsolationLevel::ReadCommitted),
        TxConfig::default().read_only(true),
        TxConfig::default().statement_timeout(Duration::from_secs(1)),
        TxConfig::default().mode_for(http::Method::GET, TxMode::ReadOnly),
        TxConfig::default().transaction_pooling(true),
    ] {
        assert!(TxLayer::try_new(db.pool.clone(), config).is_err());
    }
    assert!(
        TxLayer::try_new(
            db.pool.clone(),
            TxConfig::default().isolation(IsolationLevel::Serializable)
        )
        .is_ok()
    );
    db.close().await;
}

#[tokio::test(start_paused = true)]
async fn transaction_timeout_cuts_a_hung_handler() {
    // The handler never touches the database, so no connection is made.
    let pool = SqlitePool::connect_lazy("sqlite::memory:").unwrap();
    let layer = TxLayer::try_new(
        pool,
        TxConfig::default().transaction_timeout(Duration::from_secs(30)),
    )
    .unwrap();
    let stats = layer.stats();
    let svc = app(layer, |_tx: TxHandle<Sqlite>, _| async {
        std::future::pending::<()>().await;
        status(200)
    });
    let start = tokio::time::Instant::now();
    let r = send(&svc, "").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()[tower_strata::tx::TX_ERROR_HEADER], "timeout");
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert_eq!(stats.snapshot().timeouts, 1);
}

#[tokio::test]
async fn a_get_writes_without_a_transaction_so_its_failure_rolls_nothing_back() {
    let db = Db::new(2).await;
    let layer = TxLayer::try_new(db.pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let svc = app(layer, |tx: TxHandle<Sqlite>, body: String| async move {
        let code: u16 = body.parse().unwrap();
        insert(&tx, code.into()).await.unwrap();
        status(code)
    });
    let get = |code: &str| http::Request::get("/").body(code.to_owned()).unwrap();
    // Each statement committed as it ran: a failure answer has nothing to roll back. (A GET
    // that writes is the handler's choice; the route could ask for a transaction.)
    for code in ["200", "500"] {
        let r = support::send_request(&svc, get(code)).await;
        assert_eq!(r.status().as_str(), code);
    }
    // A POST, in a transaction, rolls back on its 500.
    assert_eq!(send(&svc, "500").await.status(), 500);
    assert_eq!(db.values().await, vec![200, 500]);
    let s = stats.snapshot();
    assert_eq!((s.autocommit, s.begun, s.rolled_back), (2, 1, 1));
    db.close().await;
}
