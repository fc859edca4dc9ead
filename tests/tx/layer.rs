//! Transaction layer against a real PostgreSQL (`DATABASE_URL`).
#![cfg(feature = "postgres")]

#[path = "../support/tx.rs"]
mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, StatusCode};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use support::{app, send, sql, status, table};
use tower::ServiceExt;
use tower_strata::tx::{IsolationLevel, TX_ERROR_HEADER, TxConfig, TxHandle, TxLayer, Verdict};

async fn pool(max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&support::pg_url())
        .await
        .expect("PostgreSQL at DATABASE_URL")
}

struct Table {
    pool: PgPool,
    name: String,
}

impl Table {
    async fn new(pool: &PgPool, name: &str, columns: &str) -> Self {
        let name = table(name);
        sqlx::query(sql(format!("CREATE TABLE {name} ({columns})")))
            .execute(pool)
            .await
            .unwrap();
        Self {
            pool: pool.clone(),
            name,
        }
    }

    async fn count(&self) -> i64 {
        sqlx::query_scalar(sql(format!("SELECT COUNT(*) FROM {}", self.name)))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn drop(self) {
        sqlx::query(sql(format!("DROP TABLE IF EXISTS {}", self.name)))
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

async fn insert(tx: &TxHandle<Postgres>, table: &str, v: i64) -> Result<(), sqlx::Error> {
    let mut conn = tx.conn().await?;
    sqlx::query(sql(format!("INSERT INTO {table} (v) VALUES ($1)")))
        .bind(v)
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Raises a real SQLSTATE 40001 from the server.
async fn serialization_failure(tx: &TxHandle<Postgres>) -> Result<(), sqlx::Error> {
    let mut conn = tx.conn().await?;
    sqlx::query(
        "DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = 'serialization_failure'; END $$",
    )
    .execute(&mut conn)
    .await?;
    Ok(())
}

#[tokio::test]
async fn commits_on_success_and_rolls_back_on_4xx_5xx() {
    let pool = pool(4).await;
    let t = Table::new(&pool, "statuses", "v BIGINT").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let name = t.name.clone();
    let svc = app(layer, move |tx, body| {
        let name = name.clone();
        async move {
            insert(&tx, &name, 1).await.unwrap();
            status(body.parse().unwrap())
        }
    });
    for (code, rows) in [
        (200, 1),
        (204, 2),
        (302, 3),
        (400, 3),
        (404, 3),
        (409, 3),
        (500, 3),
        (503, 3),
    ] {
        let r = send(&svc, &code.to_string()).await;
        assert_eq!(r.status().as_u16(), code);
        assert_eq!(t.count().await, rows, "after status {code}");
    }
    let s = stats.snapshot();
    assert_eq!(
        (s.begun, s.committed, s.rolled_back, s.active),
        (8, 3, 5, 0)
    );
    t.drop().await;
}

#[tokio::test]
async fn rolls_back_on_service_error_and_panic() {
    let pool = pool(2).await;
    let t = Table::new(&pool, "errpanic", "v BIGINT").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let name = t.name.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(
            move |req: Request<tower_strata::tx::TxBody<String>>| {
                let name = name.clone();
                async move {
                    let tx = req
                        .extensions()
                        .get::<TxHandle<Postgres>>()
                        .unwrap()
                        .clone();
                    insert(&tx, &name, 1).await.unwrap();
                    match req.uri().path() {
                        "/panic" => panic!("handler panicked"),
                        _ => Err::<http::Response<String>, _>(std::io::Error::other(
                            "handler failed",
                        )),
                    }
                }
            },
        ));
    let err = svc
        .clone()
        .oneshot(Request::post("/error").body(String::new()).unwrap())
        .await;
    assert!(err.is_err());
    let joined =
        tokio::spawn(svc.oneshot(Request::post("/panic").body(String::new()).unwrap())).await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(t.count().await, 0);
    let s = stats.snapshot();
    assert_eq!((s.begun, s.rolled_back, s.active), (2, 2, 0));
    t.drop().await;
}

#[tokio::test]
async fn cancelled_request_rolls_back_and_its_connection_is_not_reused_in_transaction() {
    // One connection: the next request necessarily gets the pool's only slot.
    let pool = pool(1).await;
    let t = Table::new(&pool, "cancel", "v BIGINT").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let (inserted_tx, inserted_rx) = tokio::sync::oneshot::channel::<()>();
    let inserted_tx = Arc::new(std::sync::Mutex::new(Some(inserted_tx)));
    let name = t.name.clone();
    let svc = app(layer, move |tx, body| {
        let name = name.clone();
        let inserted_tx = inserted_tx.clone();
        async move {
            if body == "hang" {
                insert(&tx, &name, 1).await.unwrap();
                if let Some(s) = inserted_tx.lock().unwrap().take() {
                    let _ = s.send(());
                }
                std::future::pending::<()>().await;
            }
            insert(&tx, &name, 2).await.unwrap();
            status(200)
        }
    });
    let svc2 = svc.clone();
    let hung = tokio::spawn(async move { send(&svc2, "hang").await });
    inserted_rx.await.unwrap();
    hung.abort(); // the client went away mid-request
    assert!(hung.await.unwrap_err().is_cancelled());

    let r = send(&svc, "go").await;
    assert_eq!(r.status(), StatusCode::OK);
    let values: Vec<i64> = sqlx::query_scalar(sql(format!("SELECT v FROM {}", t.name)))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        values,
        vec![2],
        "the cancelled insert must never be committed"
    );
    // The pool's connection is outside any transaction.
    let mut conn = pool.acquire().await.unwrap();
    let in_tx: Option<i64> = sqlx::query_scalar("SELECT txid_current_if_assigned()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(in_tx, None);
    drop(conn);
    let s = stats.snapshot();
    assert_eq!(
        (s.begun, s.committed, s.rolled_back, s.active),
        (2, 1, 1, 0)
    );
    t.drop().await;
}

#[tokio::test]
async fn lazy_begin_costs_nothing_when_unused() {
    let pool = pool(1).await;
    let layer = TxLayer::try_new(pool, TxConfig::default()).unwrap();
    let stats = layer.stats();
    let svc = app(layer, |_tx: TxHandle<Postgres>, _| async { status(200) });
    assert_eq!(send(&svc, "").await.status(), 200);
    assert_eq!(stats.snapshot().begun, 0);
}

#[tokio::test]
async fn verdict_extension_overrides_the_policy() {
    let pool = pool(2).await;
    let t = Table::new(&pool, "override", "v BIGINT").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let name = t.name.clone();
    let svc = app(layer, move |tx, body| {
        let name = name.clone();
        async move {
            insert(&tx, &name, 1).await.unwrap();
            let (code, verdict) = match body.as_str() {
                "commit-409" => (409, Verdict::Commit),
                _ => (200, Verdict::Rollback),
            };
            let mut r = status(code);
            r.extensions_mut().insert(verdict);
            r
        }
    });
    assert_eq!(send(&svc, "commit-409").await.status(), 409);
    assert_eq!(t.count().await, 1);
    assert_eq!(send(&svc, "rollback-200").await.status(), 200);
    assert_eq!(t.count().await, 1);
    t.drop().await;
}

#[tokio::test]
async fn custom_policy() {
    let pool = pool(2).await;
    let t = Table::new(&pool, "policy", "v BIGINT").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default())
        .unwrap()
        .policy(|s: StatusCode, _: &http::HeaderMap| {
            if s.is_server_error() {
                Verdict::Rollback
            } else {
                Verdict::Commit
            }
        });
    let name = t.name.clone();
    let svc = app(layer, move |tx, body| {
        let name = name.clone();
        async move {
            insert(&tx, &name, 1).await.unwrap();
            status(body.parse().unwrap())
        }
    });
    send(&svc, "404").await;
    assert_eq!(t.count().await, 1);
    send(&svc, "500").await;
    assert_eq!(t.count().await, 1);
    t.drop().await;
}

#[tokio::test]
async fn serialization_failure_is_retried_and_after_commit_runs_once() {
    let pool = pool(2).await;
    let t = Table::new(&pool, "retry", "v BIGINT").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let attempts = Arc::new(AtomicUsize::new(0));
    let hooks = Arc::new(AtomicUsize::new(0));
    let (name, a, h) = (t.name.clone(), attempts.clone(), hooks.clone());
    let svc = app(layer, move |tx, _| {
        let (name, a, h) = (name.clone(), a.clone(), h.clone());
        async move {
            let n = a.fetch_add(1, Ordering::SeqCst);
            let h2 = h.clone();
            tx.after_commit(move || async move {
                h2.fetch_add(1, Ordering::SeqCst);
            });
            let result = async {
                insert(&tx, &name, n as i64).await?;
                if n == 0 {
                    serialization_failure(&tx).await?;
                }
                Ok::<_, sqlx::Error>(())
            }
            .await;
            // What a plain handler does: `?` into a 500.
            match result {
                Ok(()) => status(200),
                Err(_) => status(500),
            }
        }
    });
    let r = send(&svc, "{}").await;
    assert_eq!(r.status(), 200);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(
        hooks.load(Ordering::SeqCst),
        1,
        "after_commit once, not per attempt"
    );
    let values: Vec<i64> = sqlx::query_scalar(sql(format!("SELECT v FROM {}", t.name)))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        values,
        vec![1],
        "only the successful attempt's work is kept"
    );
    let s = stats.snapshot();
    assert_eq!(s.retried.serialization_failure, 1);
    assert_eq!((s.committed, s.rolled_back), (1, 1));
    t.drop().await;
}

#[tokio::test]
async fn retries_exhausted_answers_503_with_retry_after() {
    let pool = pool(2).await;
    let layer = TxLayer::try_new(
        pool,
        TxConfig::default().backoff(Duration::from_millis(1), Duration::from_millis(2)),
    )
    .unwrap();
    let stats = layer.stats();
    let attempts = Arc::new(AtomicUsize::new(0));
    let hooks = Arc::new(AtomicUsize::new(0));
    let (a, h) = (attempts.clone(), hooks.clone());
    let svc = app(layer, move |tx, _| {
        let (a, h) = (a.clone(), h.clone());
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            tx.after_commit(move || async move {
                h.fetch_add(1, Ordering::SeqCst);
            });
            match serialization_failure(&tx).await {
                Ok(()) => status(200),
                Err(_) => status(500),
            }
        }
    });
    let r = send(&svc, "").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()[http::header::RETRY_AFTER], "1");
    assert_eq!(r.headers()[TX_ERROR_HEADER], "retries-exhausted");
    assert!(!r.body().contains("40001"), "no raw database error leaks");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(hooks.load(Ordering::SeqCst), 0, "never on rollback");
    let s = stats.snapshot();
    assert_eq!(
        (s.retried.serialization_failure, s.retries_exhausted),
        (2, 1)
    );
}

#[tokio::test]
async fn streaming_body_is_not_replayed() {
    let pool = pool(2).await;
    let layer = TxLayer::try_new(pool, TxConfig::default()).unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(
            move |req: Request<tower_strata::tx::TxBody<http_body_util::StreamBody<_>>>| {
                let a = a.clone();
                async move {
                    assert!(!req.body().is_buffered());
                    a.fetch_add(1, Ordering::SeqCst);
                    let tx = req
                        .extensions()
                        .get::<TxHandle<Postgres>>()
                        .unwrap()
                        .clone();
                    let _ = serialization_failure(&tx).await;
                    Ok::<_, std::convert::Infallible>(status(500))
                }
            },
        ));
    let stream = futures_util::stream::iter(vec![Ok::<_, std::convert::Infallible>(
        http_body::Frame::data(bytes::Bytes::from_static(b"chunk")),
    )]);
    let r = svc
        .oneshot(
            Request::post("/")
                .body(http_body_util::StreamBody::new(stream))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unique_violation_is_not_retried() {
    let pool = pool(2).await;
    let t = Table::new(&pool, "unique", "v BIGINT PRIMARY KEY").await;
    sqlx::query(sql(format!("INSERT INTO {} VALUES (1)", t.name)))
        .execute(&pool)
        .await
        .unwrap();
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let attempts = Arc::new(AtomicUsize::new(0));
    let (name, a) = (t.name.clone(), attempts.clone());
    let svc = app(layer, move |tx, _| {
        let (name, a) = (name.clone(), a.clone());
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            match insert(&tx, &name, 1).await {
                Ok(()) => status(200),
                Err(_) => status(500),
            }
        }
    });
    assert_eq!(send(&svc, "").await.status(), 500);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(stats.snapshot().retried.total(), 0);
    t.drop().await;
}

#[tokio::test]
async fn commit_failure_never_returns_2xx() {
    let pool = pool(2).await;
    // A deferred unique constraint fails only at COMMIT.
    let t = Table::new(
        &pool,
        "deferred",
        "v BIGINT, CONSTRAINT uniq UNIQUE (v) DEFERRABLE INITIALLY DEFERRED",
    )
    .await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let hooks = Arc::new(AtomicUsize::new(0));
    let (name, h) = (t.name.clone(), hooks.clone());
    let svc = app(layer, move |tx, body| {
        let (name, h) = (name.clone(), h.clone());
        async move {
            tx.after_commit(move || async move {
                h.fetch_add(1, Ordering::SeqCst);
            });
            if body == "swallow" {
                // A handler that ignores a failed statement: PostgreSQL has aborted the
                // transaction, so COMMIT would silently roll back.
                insert(&tx, &name, 7).await.unwrap();
                let mut conn = tx.conn().await.unwrap();
                let _ = sqlx::query("SELECT 1/0").execute(&mut conn).await;
                return status(200);
            }
            insert(&tx, &name, 1).await.unwrap();
            insert(&tx, &name, 1).await.unwrap();
            status(201)
        }
    });
    let r = send(&svc, "dup").await;
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()[TX_ERROR_HEADER], "commit-failed");
    let r = send(&svc, "swallow").await;
    assert_eq!(r.status(), 500);
    assert_eq!(t.count().await, 0);
    assert_eq!(hooks.load(Ordering::SeqCst), 0);
    let s = stats.snapshot();
    assert_eq!((s.commit_failures, s.committed), (2, 0));
    t.drop().await;
}

#[tokio::test]
async fn savepoint_rolled_back_keeps_outer_work_and_drops_its_hooks() {
    let pool = pool(2).await;
    let t = Table::new(&pool, "savepoint", "v BIGINT PRIMARY KEY").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (name, r2) = (t.name.clone(), ran.clone());
    let svc = app(layer, move |tx, _| {
        let (name, ran) = (name.clone(), r2.clone());
        async move {
            let mut conn = tx.conn().await.unwrap();
            let ins = |v: i64| sql(format!("INSERT INTO {name} (v) VALUES ({v})"));
            sqlx::query(ins(1)).execute(&mut conn).await.unwrap();
            let r = ran.clone();
            conn.after_commit(move || async move { r.lock().unwrap().push("outer") });
            {
                // Explicit rollback, after a failing statement inside the savepoint.
                let mut sp = conn.savepoint().await.unwrap();
                sqlx::query(ins(2)).execute(&mut sp).await.unwrap();
                assert!(sqlx::query(ins(1)).execute(&mut sp).await.is_err());
                let r = ran.clone();
                sp.after_commit(move || async move { r.lock().unwrap().push("rolled back") });
                sp.rollback().await.unwrap();
            }
            {
                // Dropped without release: rolled back too.
                let mut sp = conn.savepoint().await.unwrap();
                sqlx::query(ins(3)).execute(&mut sp).await.unwrap();
                let r = ran.clone();
                sp.after_commit(move || async move { r.lock().unwrap().push("dropped") });
            }
            {
                // Released, with a nested one rolled back.
                let mut sp = conn.savepoint().await.unwrap();
                sqlx::query(ins(4)).execute(&mut sp).await.unwrap();
                let r = ran.clone();
                sp.after_commit(move || async move { r.lock().unwrap().push("released") });
                let mut inner = sp.savepoint().await.unwrap();
                sqlx::query(ins(5)).execute(&mut inner).await.unwrap();
                inner.rollback().await.unwrap();
                sp.release().await.unwrap();
            }
            sqlx::query(ins(6)).execute(&mut conn).await.unwrap();
            status(200)
        }
    });
    assert_eq!(send(&svc, "").await.status(), 200);
    let values: Vec<i64> = sqlx::query_scalar(sql(format!("SELECT v FROM {} ORDER BY v", t.name)))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(values, vec![1, 4, 6]);
    assert_eq!(*ran.lock().unwrap(), vec!["outer", "released"]);
    t.drop().await;
}

#[tokio::test]
async fn pool_exhausted_answers_503_within_the_acquire_timeout() {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(300))
        .connect(&support::pg_url())
        .await
        .unwrap();
    let held = pool.acquire().await.unwrap();
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let svc = app(layer, |tx: TxHandle<Postgres>, _| async move {
        match tx.conn().await {
            Ok(_) => status(200),
            Err(_) => status(500),
        }
    });
    // Guard against a hang only; the answer comes after the pool's 300 ms.
    let r = tokio::time::timeout(Duration::from_secs(10), send(&svc, ""))
        .await
        .expect("answered, not hung");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()[TX_ERROR_HEADER], "pool-exhausted");
    assert!(r.headers().contains_key(http::header::RETRY_AFTER));
    assert_eq!(stats.snapshot().pool_exhausted, 1);
    drop(held);
    assert_eq!(send(&svc, "").await.status(), 200);
}

#[tokio::test]
async fn isolation_read_only_and_timeouts_are_applied() {
    let pool = pool(2).await;
    let layer = TxLayer::try_new(
        pool,
        TxConfig::default()
            .isolation(IsolationLevel::Serializable)
            .read_only(true)
            .statement_timeout(Duration::from_millis(1500))
            .lock_timeout(Duration::from_millis(250)),
    )
    .unwrap();
    let svc = app(layer, |tx: TxHandle<Postgres>, _| async move {
        let mut conn = tx.conn().await.unwrap();
        let mut out = Vec::new();
        for setting in [
            "transaction_isolation",
            "transaction_read_only",
            "statement_timeout",
            "lock_timeout",
        ] {
            let v: String = sqlx::query_scalar(sql(format!("SHOW {setting}")))
                .fetch_one(&mut conn)
                .await
                .unwrap();
            out.push(v);
        }
        let mut r = status(200);
        *r.body_mut() = out.join(",");
        r
    });
    assert_eq!(send(&svc, "").await.body(), "serializable,on,1500ms,250ms");
}

#[tokio::test]
async fn statements_are_timed_in_the_stats() {
    let pool = pool(2).await;
    let layer = TxLayer::try_new(
        pool,
        TxConfig::default().slow_statement(Duration::from_millis(30)),
    )
    .unwrap();
    let stats = layer.stats();
    let svc = app(layer, |tx: TxHandle<Postgres>, _| async move {
        let mut conn = tx.conn().await.unwrap();
        for _ in 0..3 {
            let _: i32 = sqlx::query_scalar("SELECT $1::int4")
                .bind(1)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        }
        sqlx::query("SELECT pg_sleep(0.05)")
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = sqlx::query("SELECT 1/0").execute(&mut conn).await;
        status(200)
    });
    // Rolled back by the aborted transaction, answered 500: timing is recorded anyway.
    assert_eq!(send(&svc, "").await.status(), 500);
    let s = stats.snapshot();
    let find = |sql: &str| s.statements.iter().find(|x| x.sql == sql).cloned().unwrap();
    let sel = find("SELECT $1::int4");
    assert_eq!((sel.count, sel.errors), (3, 0));
    assert!(sel.max_us >= sel.p95_us && sel.p95_us >= sel.mean_us / 2);
    assert_eq!(find("SELECT 1/0").errors, 1);
    assert!(find("SELECT pg_sleep(0.05)").max_us >= 50_000);
    assert_eq!(s.slow_statements.len(), 1);
    assert_eq!(s.slow_statements[0].sql, "SELECT pg_sleep(0.05)");
    let json = serde_json::to_value(&s).unwrap();
    assert!(json["statements"].is_array());
}

#[tokio::test]
async fn deadlock_resolves_and_both_succeed() {
    let pool = pool(4).await;
    let t = Table::new(&pool, "deadlock", "id BIGINT PRIMARY KEY, v BIGINT").await;
    sqlx::query(sql(format!("INSERT INTO {} VALUES (1, 0), (2, 0)", t.name)))
        .execute(&pool)
        .await
        .unwrap();
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let first_attempts = Arc::new(AtomicUsize::new(0));
    let (name, b, fa) = (t.name.clone(), barrier.clone(), first_attempts.clone());
    let svc = app(layer, move |tx, body| {
        let (name, b, fa) = (name.clone(), b.clone(), fa.clone());
        async move {
            let (first, second) = if body == "a" { (1, 2) } else { (2, 1) };
            let upd = |id: i64| sql(format!("UPDATE {name} SET v = v + 1 WHERE id = {id}"));
            let result = async {
                let mut conn = tx.conn().await?;
                sqlx::query(upd(first)).execute(&mut conn).await?;
                if fa.fetch_add(1, Ordering::SeqCst) < 2 {
                    b.wait().await; // both hold their first lock
                }
                sqlx::query(upd(second)).execute(&mut conn).await?;
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
    let (ra, rb) = tokio::join!(send(&svc, "a"), send(&svc, "b"));
    assert_eq!((ra.status(), rb.status()), (StatusCode::OK, StatusCode::OK));
    let total: i64 = sqlx::query_scalar(sql(format!("SELECT SUM(v)::int8 FROM {}", t.name)))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 4);
    assert!(stats.snapshot().retried.deadlock >= 1);
    t.drop().await;
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_router_with_the_extractor() {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::{get, post};
    use http_body_util::BodyExt;

    let pool = pool(2).await;
    let t = Table::new(&pool, "axum", "v BIGINT").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let name = t.name.clone();
    let app: Router = Router::new()
        .route(
            "/insert",
            post(move |tx: TxHandle<Postgres>, body: String| {
                let name = name.clone();
                async move {
                    insert(&tx, &name, body.parse().unwrap()).await.unwrap();
                    StatusCode::CREATED
                }
            }),
        )
        .layer(layer);
    let r = app
        .clone()
        .oneshot(Request::post("/insert").body(Body::from("5")).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(t.count().await, 1);

    // Without the layer the extractor says so instead of panicking.
    let bare: Router =
        Router::new().route("/", get(|_tx: TxHandle<Postgres>| async { "unreachable" }));
    let r = bare
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = r.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&text).contains("TxLayer"));
    t.drop().await;
}

#[tokio::test]
async fn connection_lost_during_commit_is_ambiguous_and_not_retried() {
    let pool = pool(2).await;
    let t = Table::new(&pool, "ambiguous", "v BIGINT").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let attempts = Arc::new(AtomicUsize::new(0));
    let (name, p, a) = (t.name.clone(), pool.clone(), attempts.clone());
    let svc = app(layer, move |tx, _| {
        let (name, p, a) = (name.clone(), p.clone(), a.clone());
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            insert(&tx, &name, 1).await.unwrap();
            let mut conn = tx.conn().await.unwrap();
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            // The session dies between the handler's last statement and COMMIT.
            sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .execute(&p)
                .await
                .unwrap();
            status(200)
        }
    });
    let r = send(&svc, "").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers()[TX_ERROR_HEADER], "commit-ambiguous");
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "never retried");
    let s = stats.snapshot();
    assert_eq!((s.ambiguous_commits, s.committed), (1, 0));
    // The pool recovers: the dead connection was not kept.
    let n: i64 = sqlx::query_scalar("SELECT 1::int8")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    t.drop().await;
}

#[tokio::test]
async fn transaction_timeout_rolls_back_and_answers_503() {
    let pool = pool(1).await;
    let t = Table::new(&pool, "txtimeout", "v BIGINT").await;
    let layer = TxLayer::try_new(
        pool.clone(),
        TxConfig::default().transaction_timeout(Duration::from_millis(200)),
    )
    .unwrap();
    let stats = layer.stats();
    let name = t.name.clone();
    let svc = app(layer, move |tx, body| {
        let name = name.clone();
        async move {
            insert(&tx, &name, 1).await.unwrap();
            if body == "slow" {
                let mut conn = tx.conn().await.unwrap();
                sqlx::query("SELECT pg_sleep(2)")
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            status(200)
        }
    });
    let r = send(&svc, "slow").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()[TX_ERROR_HEADER], "timeout");
    assert_eq!(stats.snapshot().timeouts, 1);
    // The only pool connection was cut mid-statement: the next request still works and the
    // timed-out insert is gone.
    assert_eq!(send(&svc, "fast").await.status(), StatusCode::OK);
    assert_eq!(t.count().await, 1);
    t.drop().await;
}

/// A layer between the `TxLayer` and the handler (a purge layer, say) registers work through
/// the DB-independent `AfterCommit` extension.
#[tokio::test]
async fn inner_layer_registers_after_commit_through_extensions() {
    use tower_strata::tx::{AfterCommit, TxBody};

    let pool = pool(2).await;
    let t = Table::new(&pool, "inner_layer", "v BIGINT").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let purged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (name, p, a) = (t.name.clone(), purged.clone(), attempts.clone());
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        // The "purge layer": knows nothing of the database type.
        .map_request(move |req: Request<TxBody<String>>| {
            let after_commit = req.extensions().get::<AfterCommit>().unwrap().clone();
            let (p, path) = (p.clone(), req.uri().path().to_owned());
            after_commit.register(move || async move { p.lock().unwrap().push(path) });
            req
        })
        .service(tower::service_fn(move |req: Request<TxBody<String>>| {
            let (name, a) = (name.clone(), a.clone());
            async move {
                let tx = req
                    .extensions()
                    .get::<TxHandle<Postgres>>()
                    .unwrap()
                    .clone();
                insert(&tx, &name, 1).await.unwrap();
                let n = a.fetch_add(1, Ordering::SeqCst);
                if req.uri().path() == "/retry" && n == 0 {
                    let _ = serialization_failure(&tx).await;
                }
                let code = if req.uri().path() == "/fail" {
                    500
                } else {
                    200
                };
                Ok::<_, std::convert::Infallible>(status(code))
            }
        }));
    for path in ["/ok", "/fail", "/retry"] {
        let r = svc
            .clone()
            .oneshot(Request::post(path).body(String::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status().is_success(), path != "/fail", "{path}");
    }
    assert_eq!(*purged.lock().unwrap(), vec!["/ok", "/retry"]);
    assert_eq!(t.count().await, 2);
    t.drop().await;
}

/// Cancels requests at random points (during BEGIN, the INSERT or COMMIT) and checks each time
/// that the pool's only connection is not left inside a transaction.
#[tokio::test]
async fn cancellation_at_any_point_never_leaks_an_open_transaction() {
    let pool = pool(1).await;
    let t = Table::new(&pool, "cancel_any", "v BIGINT").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let name = t.name.clone();
    let svc = app(layer, move |tx, _| {
        let name = name.clone();
        async move {
            insert(&tx, &name, 1).await.unwrap();
            status(200)
        }
    });
    let mut completed = 0;
    for i in 0..200u32 {
        let svc2 = svc.clone();
        let task = tokio::spawn(async move { send(&svc2, "").await });
        // A sweep of cancellation points: some yields, then 0 to 3 timer ticks.
        for _ in 0..(i % 40) {
            tokio::task::yield_now().await;
        }
        if i % 5 > 0 {
            tokio::time::sleep(Duration::from_micros(u64::from(i % 5) * 700)).await;
        }
        task.abort();
        if let Ok(r) = task.await {
            assert_eq!(r.status(), StatusCode::OK);
            completed += 1;
        }
        let mut conn = pool.acquire().await.unwrap();
        // SAVEPOINT succeeds only inside a transaction block.
        let probe = sqlx::query("SAVEPOINT probe").execute(&mut *conn).await;
        let code = probe
            .err()
            .and_then(|e| e.into_database_error())
            .and_then(|e| e.code().map(|c| c.into_owned()));
        assert_eq!(
            code.as_deref(),
            Some("25P01"),
            "iteration {i}: connection left in a transaction"
        );
    }
    // Committed requests left their row; a request cancelled while its COMMIT was on the wire
    // may have left one too (the ambiguity the layer cannot remove), others none.
    let rows = t.count().await as u64;
    let s = stats.snapshot();
    assert!(
        s.committed >= completed && rows >= s.committed,
        "{rows} rows, {s:?}"
    );
    assert!(
        completed > 0 && completed < 200,
        "{completed} of 200 completed"
    );
    assert_eq!(stats.snapshot().active, 0);
    t.drop().await;
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn per_route_settings_with_shared_stats() {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http_body_util::BodyExt;

    async fn isolation(tx: TxHandle<Postgres>) -> String {
        let mut conn = tx.conn().await.unwrap();
        sqlx::query_scalar("SHOW transaction_isolation")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }

    let pool = pool(2).await;
    let default = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    // A GET runs without a transaction unless its route says otherwise: this one reads in a
    // serializable snapshot.
    let serializable = TxLayer::try_new(
        pool.clone(),
        TxConfig::default()
            .isolation(IsolationLevel::Serializable)
            .mode_for(http::Method::GET, tower_strata::tx::TxMode::ReadOnly),
    )
    .unwrap()
    .stats_from(&default);
    let stats = default.stats();
    let app: Router = Router::new()
        .route("/strict", get(isolation))
        .layer(serializable)
        .merge(Router::new().route("/plain", get(isolation)).layer(default));
    for (path, expected) in [("/strict", "serializable"), ("/plain", "read committed")] {
        let r = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, expected.as_bytes(), "{path}");
    }
    let s = stats.snapshot();
    assert_eq!((s.committed, s.read_only, s.autocommit), (1, 1, 1));
}

#[tokio::test]
async fn a_connection_left_mid_begin_is_closed_never_pooled_in_a_transaction() {
    // Two connections, no ping on acquire: the first `conn()` finds an idle connection at once
    // and sends `BEGIN` within its first poll.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .test_before_acquire(false)
        .connect(&support::pg_url())
        .await
        .unwrap();
    {
        // Warm both connections so acquiring needs no connect.
        let a = pool.acquire().await.unwrap();
        let b = pool.acquire().await.unwrap();
        drop((a, b));
    }
    // Released connections go back to the idle queue in the background.
    for _ in 0..200 {
        if pool.num_idle() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(pool.num_idle(), 2);
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let svc = app(layer, |tx: TxHandle<Postgres>, _body| async move {
        // A `conn()` cut short after its first poll (a handler's own timeout, a `select!`):
        // `BEGIN` is on the wire, its answer not read.
        let cut_short = {
            let mut first = std::pin::pin!(tx.conn());
            let waker = std::task::Waker::noop();
            first
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_pending()
        };
        let mut conn = tx.conn().await.unwrap();
        sqlx::query("SELECT 1").execute(&mut conn).await.unwrap();
        // Loopback is fast: now and then `BEGIN` is answered within that one poll, and the
        // case is not made. 200 says it was.
        status(if cut_short { 200 } else { 204 })
    });
    let mut made = false;
    for _ in 0..20 {
        let answer = send(&svc, "go").await.status();
        assert!(answer.is_success(), "{answer}");
        if answer == StatusCode::OK {
            made = true;
            break;
        }
    }
    assert!(made, "BEGIN was answered within one poll every time");
    // Neither pooled connection is inside a transaction block.
    let mut conns = Vec::new();
    for _ in 0..2 {
        let mut conn = pool.acquire().await.unwrap();
        // Inside a transaction block, the transaction began before this statement (the simple
        // protocol: one message, one timestamp).
        let row = sqlx::raw_sql("SELECT now() <> statement_timestamp()")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let in_block: bool = sqlx::Row::get(&row, 0);
        assert!(
            !in_block,
            "a pooled connection was left inside a transaction"
        );
        conns.push(conn);
    }
}

#[tokio::test]
async fn a_backend_terminated_before_commit_is_retried_on_a_fresh_connection() {
    let pool = pool(4).await;
    let t = Table::new(&pool, "lost", "v BIGINT").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let attempts = Arc::new(AtomicUsize::new(0));
    let (name, killer, seen) = (t.name.clone(), pool.clone(), attempts.clone());
    let svc = app(layer, move |tx: TxHandle<Postgres>, _body| {
        let (name, killer, seen) = (name.clone(), killer.clone(), seen.clone());
        async move {
            let attempt = seen.fetch_add(1, Ordering::SeqCst) + 1;
            if attempt == 1 {
                // The first attempt's backend is terminated under it (an operator, a failover,
                // PgBouncer recycling a server connection).
                let pid: i32 = {
                    let mut conn = tx.conn().await.unwrap();
                    sqlx::query_scalar("SELECT pg_backend_pid()")
                        .fetch_one(&mut conn)
                        .await
                        .unwrap()
                };
                let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .fetch_one(&killer)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The handler does what a handler does with a database error: a 500.
            match insert(&tx, &name, attempt as i64).await {
                Ok(()) => status(200),
                Err(_) => status(500),
            }
        }
    });
    let r = send(&svc, "go").await;
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.headers());
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let values: Vec<i64> = sqlx::query_scalar(sql(format!("SELECT v FROM {}", t.name)))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(values, vec![2], "only the retried attempt committed");
    let s = stats.snapshot();
    assert_eq!(s.retried.connection_lost, 1, "{s:?}");
    t.drop().await;
}

#[tokio::test]
async fn after_commit_work_runs_even_when_the_request_is_dropped_after_commit() {
    let pool = pool(2).await;
    let t = Table::new(&pool, "hooks_drop", "v BIGINT").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let (name, counter) = (t.name.clone(), ran.clone());
    let svc = app(layer, move |tx: TxHandle<Postgres>, _body| {
        let (name, counter) = (name.clone(), counter.clone());
        async move {
            insert(&tx, &name, 1).await.unwrap();
            tx.after_commit(move || async move {
                // A purge that takes a while (a Redis round trip, a remote bus).
                tokio::time::sleep(Duration::from_millis(300)).await;
                counter.fetch_add(1, Ordering::SeqCst);
            });
            status(200)
        }
    });
    // The client gives up while the after-commit work runs: its future is dropped.
    let dropped = tokio::time::timeout(Duration::from_millis(150), send(&svc, "go")).await;
    assert!(
        dropped.is_err(),
        "the request finished before the client gave up"
    );
    let ran_eventually = support_eventually(|| ran.load(Ordering::SeqCst) == 1).await;
    assert!(
        ran_eventually,
        "the after-commit work was lost with the request"
    );
    assert_eq!(t.count().await, 1, "the write was committed");
    t.drop().await;
}

async fn support_eventually(check: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_commit_that_hangs_is_cut_at_the_end_timeout_and_ambiguous() {
    let pool = pool(2).await;
    let t = Table::new(&pool, "slow_commit", "v BIGINT").await;
    // A deferred constraint trigger that sleeps: `COMMIT` runs it, and hangs for 3 s.
    let function = format!("{}_sleep", t.name);
    sqlx::raw_sql(sql(format!(
        "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER {function}_t AFTER INSERT ON {table} \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {function}();",
        table = t.name
    )))
    .execute(&pool)
    .await
    .unwrap();
    let layer = TxLayer::try_new(
        pool.clone(),
        TxConfig::default().end_timeout(Duration::from_millis(200)),
    )
    .unwrap();
    let name = t.name.clone();
    let svc = app(layer, move |tx: TxHandle<Postgres>, _body| {
        let name = name.clone();
        async move {
            insert(&tx, &name, 1).await.unwrap();
            status(200)
        }
    });
    let answer = tokio::time::timeout(Duration::from_secs(2), send(&svc, "go"))
        .await
        .expect("the commit was not cut at the end timeout");
    assert_eq!(
        answer.status(),
        StatusCode::BAD_GATEWAY,
        "{:?}",
        answer.headers()
    );
    assert!(answer.headers().contains_key(TX_ERROR_HEADER));
    // Let the server finish what it started before dropping the table.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sqlx::raw_sql(sql(format!("DROP FUNCTION {function}() CASCADE")))
        .execute(&pool)
        .await
        .unwrap();
    t.drop().await;
}

#[tokio::test]
async fn a_grpc_commit_waiting_on_a_slow_body_ends_at_the_transaction_timeout() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    // One connection: the transaction holds it until its deferred commit or its expiry.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&support::pg_url())
        .await
        .unwrap();
    let t = Table::new(&pool, "grpc_slow", "v BIGINT").await;
    let layer = TxLayer::try_new(
        pool.clone(),
        TxConfig::default().transaction_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    let stats = layer.stats();
    let name = t.name.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(
            move |req: Request<tower_strata::tx::TxBody<String>>| {
                let name = name.clone();
                async move {
                    let tx = req
                        .extensions()
                        .get::<TxHandle<Postgres>>()
                        .unwrap()
                        .clone();
                    insert(&tx, &name, 1).await.unwrap();
                    // A gRPC answer whose status comes in the trailers, a second later.
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    let frames = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
                        http_body::Frame::data(Bytes::from_static(b"\0\0\0\0\0")),
                    )])
                    .chain(futures_util::stream::once(async move {
                        tokio::time::sleep(Duration::from_millis(1200)).await;
                        Ok(http_body::Frame::trailers(trailers))
                    }));
                    let mut response = http::Response::new(StreamBody::new(frames));
                    response
                        .headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(response)
                }
            },
        ));
    use futures_util::StreamExt as _;
    // gRPC calls are POSTs: a read-write transaction.
    let response = svc
        .oneshot(Request::post("/").body(String::new()).unwrap())
        .await
        .unwrap();
    let reading = tokio::spawn(async move { response.into_body().collect().await });
    // Before the body ends, the expired transaction has given the pool its slot back.
    let conn = tokio::time::timeout(Duration::from_millis(900), pool.acquire()).await;
    assert!(
        conn.is_ok(),
        "the slow body held the connection past the timeout"
    );
    drop(conn);
    assert!(
        !reading.is_finished(),
        "the body ended early; the test proves nothing"
    );
    let collected = reading.await.unwrap().unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_ne!(trailers["grpc-status"], "0", "{trailers:?}");
    assert_eq!(
        t.count().await,
        0,
        "the expired transaction was rolled back"
    );
    assert!(stats.snapshot().timeouts >= 1);
    t.drop().await;
}
