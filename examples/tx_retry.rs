//! A transaction per request, with retry: `TxLayer` on SQLite gives each write request a
//! transaction, commits it on success, and replays the request when the transaction met a
//! conflict, so the handler is written as if it ran alone.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example tx_retry --features sqlite,axum
//! ```
//!
//! and try
//!
//! ```not_rust
//! curl -X POST localhost:3000/counter    # 1: read 0, wrote 1, committed
//! curl -X POST localhost:3000/conflict   # the next bump meets a concurrent writer
//! curl -X POST localhost:3000/counter    # 102: retried once, the other writer's +100 kept
//! curl localhost:3000/stats              # {"committed":..,"retried":1,"rolled_back":..}
//! ```
//!
//! The database is a file in the temporary directory (WAL mode, so a writer and readers can
//! work at once), started afresh on each run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Sqlite, SqlitePool};
use tower_strata::tx::{TxConfig, TxHandle, TxLayer, TxStats};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_strata=debug".into()),
        )
        .init();

    let path = std::env::temp_dir().join("tower-strata-tx-retry.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(open(&path).await?)?).await?;
    Ok(())
}

/// Opens (creating it) the database at `path`, with one counter at 0.
pub async fn open(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(1));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT OR IGNORE INTO counter VALUES (1, 0)")
        .execute(&pool)
        .await?;
    Ok(pool)
}

#[derive(Clone)]
struct AppState {
    pool: SqlitePool,
    /// Set by `POST /conflict`: the next bump meets another writer between its read and write.
    conflict: Arc<AtomicBool>,
    stats: TxStats,
}

/// The router with a transaction per request; the test drives this without a server.
pub fn app(pool: SqlitePool) -> Result<Router, Box<dyn std::error::Error>> {
    // The defaults, spelled out: three attempts in all, within ten seconds, each retry after
    // a jittered backoff. Past them the client gets `503` with `Retry-After`.
    let config = TxConfig::default()
        .max_attempts(3)
        .retry_deadline(Duration::from_secs(10))
        .backoff(Duration::from_millis(10), Duration::from_millis(500));
    let tx = TxLayer::try_new(pool.clone(), config)?;
    let state = AppState {
        pool,
        conflict: Arc::default(),
        stats: tx.stats(),
    };
    Ok(Router::new()
        .route("/counter", post(bump))
        .route("/conflict", post(arm_conflict))
        .route("/stats", axum::routing::get(stats))
        .with_state(state)
        .layer(tx))
}

/// Reads the counter and writes it plus one: a read-modify-write that would lose an update
/// if another writer committed in between. Here it cannot: SQLite refuses the write of a
/// transaction whose snapshot is stale (`SQLITE_BUSY_SNAPSHOT`), the handle sees the error
/// even though the handler turns it into a `500`, and the layer rolls back and replays the
/// whole request, which then reads the new value.
async fn bump(State(app): State<AppState>, tx: TxHandle<Sqlite>) -> Result<String, StatusCode> {
    let mut conn = tx.conn().await.map_err(internal)?;
    let n: i64 = sqlx::query_scalar("SELECT n FROM counter WHERE id = 1")
        .fetch_one(&mut conn)
        .await
        .map_err(internal)?;
    if app.conflict.swap(false, Ordering::SeqCst) {
        // What a concurrent request would do: commit a write on a connection of its own.
        sqlx::query("UPDATE counter SET n = n + 100 WHERE id = 1")
            .execute(&app.pool)
            .await
            .map_err(internal)?;
    }
    sqlx::query("UPDATE counter SET n = ? WHERE id = 1")
        .bind(n + 1)
        .execute(&mut conn)
        .await
        .map_err(internal)?;
    Ok((n + 1).to_string())
}

async fn arm_conflict(State(app): State<AppState>) -> StatusCode {
    app.conflict.store(true, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

async fn stats(State(app): State<AppState>) -> Json<serde_json::Value> {
    let s = app.stats.snapshot();
    Json(serde_json::json!({
        "committed": s.committed,
        "rolled_back": s.rolled_back,
        "retried": s.retried.total(),
    }))
}

fn internal(error: sqlx::Error) -> StatusCode {
    tracing::warn!(%error, "database error");
    StatusCode::INTERNAL_SERVER_ERROR
}
