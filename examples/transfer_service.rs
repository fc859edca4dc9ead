//! An axum bank on PostgreSQL showing the transaction layer.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --example transfer_service --features postgres,axum -- --listen 127.0.0.1:3000
//! ```
//!
//! - `POST /accounts {"id":1,"balance":100}` creates an account (`201`; `409` if it exists).
//! - `POST /transfer {"from":1,"to":2,"amount":10}` moves money in one SERIALIZABLE
//!   transaction (`200`; `409` on insufficient funds; `404` for an unknown account). Conflicts
//!   are retried by the layer; when retries run out the client gets `503` + `Retry-After`.
//! - `GET /accounts/{id}` answers `{"id":..,"balance":..}`.
//! - `GET /total` answers `{"total":..}`, the sum of all balances.
//! - `GET /stats` answers the layer's statistics as JSON.
//! - `GET /metrics` answers Prometheus metrics (`http_server_request_duration` per route
//!   template), `GET /health` liveness and `GET /health/ready` readiness (the PostgreSQL pool,
//!   the transaction statistics and the latency summary).
//!
//! Ids and amounts are 64-bit integers. The table is created at start if missing, so several
//! runs can share one database.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tower_strata::health::{Check, Health, PoolCheck, stats_check};
use tower_strata::metrics::{MetricsLayer, MetricsRegistry};
use tower_strata::tx::{IsolationLevel, TxConfig, TxHandle, TxLayer, TxStats};

#[path = "support/prometheus.rs"]
mod prometheus;

#[derive(Debug, Serialize, Deserialize)]
struct Account {
    id: i64,
    balance: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Transfer {
    from: i64,
    to: i64,
    amount: i64,
}

/// Handler errors: a status and a short message.
struct ApiError(StatusCode, &'static str);

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if let Some(db) = err.as_database_error() {
            match db.code().as_deref() {
                Some("23505") => return ApiError(StatusCode::CONFLICT, "account already exists"),
                Some("22003") => {
                    return ApiError(StatusCode::UNPROCESSABLE_ENTITY, "balance out of range");
                }
                _ => {}
            }
        }
        tracing::warn!(error = %err, "database error");
        // A serialization failure lands here too: the layer replays the request anyway.
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "database error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

async fn create_account(
    tx: TxHandle<Postgres>,
    Json(account): Json<Account>,
) -> Result<(StatusCode, Json<Account>), ApiError> {
    if account.balance < 0 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "balance must not be negative",
        ));
    }
    let mut conn = tx.conn().await?;
    sqlx::query("INSERT INTO accounts (id, balance) VALUES ($1, $2)")
        .bind(account.id)
        .bind(account.balance)
        .execute(&mut conn)
        .await?;
    Ok((StatusCode::CREATED, Json(account)))
}

async fn transfer(
    tx: TxHandle<Postgres>,
    Json(t): Json<Transfer>,
) -> Result<Json<Transfer>, ApiError> {
    if t.amount <= 0 {
        return Err(ApiError(StatusCode::BAD_REQUEST, "amount must be positive"));
    }
    if t.from == t.to {
        return Err(ApiError(StatusCode::BAD_REQUEST, "from and to must differ"));
    }
    let mut conn = tx.conn().await?;
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, balance FROM accounts WHERE id = $1 OR id = $2")
            .bind(t.from)
            .bind(t.to)
            .fetch_all(&mut conn)
            .await?;
    let balance_of = |id| rows.iter().find(|(i, _)| *i == id).map(|(_, b)| *b);
    let (Some(from_balance), Some(_)) = (balance_of(t.from), balance_of(t.to)) else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such account"));
    };
    if from_balance < t.amount {
        return Err(ApiError(StatusCode::CONFLICT, "insufficient funds"));
    }
    sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = $2")
        .bind(t.amount)
        .bind(t.from)
        .execute(&mut conn)
        .await?;
    sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
        .bind(t.amount)
        .bind(t.to)
        .execute(&mut conn)
        .await?;
    Ok(Json(t))
}

async fn get_account(
    tx: TxHandle<Postgres>,
    Path(id): Path<i64>,
) -> Result<Json<Account>, ApiError> {
    let mut conn = tx.conn().await?;
    let balance: Option<i64> = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut conn)
        .await?;
    match balance {
        Some(balance) => Ok(Json(Account { id, balance })),
        None => Err(ApiError(StatusCode::NOT_FOUND, "no such account")),
    }
}

async fn total(tx: TxHandle<Postgres>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut conn = tx.conn().await?;
    let total: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(balance), 0)::int8 FROM accounts")
        .fetch_one(&mut conn)
        .await?;
    Ok(Json(serde_json::json!({ "total": total })))
}

async fn stats(State(stats): State<TxStats>) -> Json<tower_strata::tx::TxStatsSnapshot> {
    Json(stats.snapshot())
}

async fn create_tables(pool: &PgPool) -> Result<(), sqlx::Error> {
    // Serialize concurrent starts: CREATE TABLE IF NOT EXISTS alone can race.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7265340)")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL CHECK (balance >= 0))",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// An axum bank on PostgreSQL showing the transaction layer (reads DATABASE_URL).
#[derive(clap::Parser)]
struct Args {
    /// The address to serve on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = <Args as clap::Parser>::parse().listen;
    let scrape = prometheus::install()?;
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let options: PgConnectOptions = url.parse()?;
    let options = tower_strata::tx::log_slow_statements(options, Duration::from_millis(200));
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options)
        .await?;
    create_tables(&pool).await?;

    // Transfers run SERIALIZABLE, under an adaptive concurrency limit: on hot accounts fewer
    // transfers at once commit more (and far fewer run out of retries). The other routes run
    // at the default level; their GETs are single statements, so they run without a
    // transaction (the default for GET: one round trip, no BEGIN/COMMIT). Both layers share
    // one stats handle.
    let default_layer = TxLayer::try_new(
        pool.clone(),
        TxConfig::default().statement_timeout(Duration::from_secs(5)),
    )?;
    let serializable = TxLayer::try_new(
        pool.clone(),
        TxConfig::default()
            .isolation(IsolationLevel::Serializable)
            .statement_timeout(Duration::from_secs(5))
            .max_attempts(5)
            .adaptive_concurrency(Some(16)),
    )?
    .stats_from(&default_layer);
    let stats_handle = default_layer.stats();

    let registry = MetricsRegistry::builder()
        .slow_threshold(Some(Duration::from_millis(250)))
        .build()?;
    let health = Health::builder()
        .check(Check::required("postgres", PoolCheck::new(pool.clone())))
        .check(Check::optional("transactions", {
            let stats = stats_handle.clone();
            stats_check(move || stats.snapshot())
        }))
        .check(Check::optional("latency", {
            let registry = registry.clone();
            stats_check(move || registry.report())
        }))
        .interval(Duration::from_secs(10))
        .timeout(Duration::from_secs(2))
        .build()?;
    let _checks = health.spawn();

    let app = Router::new()
        .route("/transfer", post(transfer))
        .layer(serializable)
        .merge(
            Router::new()
                .route("/accounts", post(create_account))
                .route("/accounts/{id}", get(get_account))
                .route("/total", get(total))
                .layer(default_layer),
        )
        .merge(
            Router::new()
                .route("/stats", get(stats))
                .with_state(stats_handle),
        )
        .route("/metrics", get(move || std::future::ready(scrape.render())))
        .merge(health.router())
        // Outermost, so every route (and the fallback) is measured by its template.
        .layer(
            MetricsLayer::new(registry)
                .exclude_path("/metrics")
                .exclude_prefix("/health"),
        );

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "transfer service listening");
    axum::serve(listener, app).await?;
    Ok(())
}
