//! The shop application: schema, handlers and the layer stack, shared by the example
//! (`examples/shop/main.rs`), its composition tests (`tests/shop.rs`) and the load run
//! (`benches/shop_load.rs`), which include this file with `#[path]`.
//!
//! [`build`] turns a [`ShopConfig`] (pool, tiered store, schema, ...) into a [`Shop`]: the axum
//! `Router` and the handles to its statistics.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres};
use tower::ServiceBuilder;
use tower::util::{Either, MapResponseLayer};
use tower_strata::cache::{CacheLayer, CacheStats};
use tower_strata::dashboard::Dashboard;
use tower_strata::db::{
    CursorKey, CursorRequest, DbError, Ident, KeyKind, KeysetPage, Pager, PoolBuilder, PoolPreset,
    Sorts,
};
use tower_strata::health::{Check, CheckOutput, Health, PoolCheck, fn_check, stats_check};
use tower_strata::metrics::{MetricsLayer, MetricsRegistry};
use tower_strata::purge::{BearerToken, InvalidateLayer, Invalidation, PurgeLayer, Purger, Rule};
use tower_strata::store::TieredStore;
use tower_strata::tx::{TxBody, TxConfig, TxHandle, TxLayer, TxStats};

/// Errors of [`build`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The tag header the cache reads (`Surrogate-Key`, space-separated; see `src/cache/tags.rs`).
pub const TAG_HEADER: &str = "surrogate-key";

/// Which layers wrap the handlers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// The shop as designed, in one `ServiceBuilder`: metrics, the purge endpoint, the cache,
    /// the transaction layer, then the invalidation layer; writes purge `product:{id}` and
    /// `products` after commit.
    Full,
    /// The layer-order mistake examined by the tests: metrics, the purge endpoint, the
    /// transaction layer, then the cache (and the invalidation layer innermost).
    CacheInsideTx,
    /// The baseline of the load run: the metrics layer only. No cache; the handlers open and
    /// commit their transactions by hand, and reads run on a pooled connection.
    MetricsOnly,
}

impl Stack {
    fn has_tx_layer(self) -> bool {
        !matches!(self, Stack::MetricsOnly)
    }
}

/// The shop's PostgreSQL pool: the `Web` preset (no ping per checkout, so a read that misses
/// the cache costs one round trip; see `docs/db.md`), 32 connections, a 2 s wait for one.
pub fn pool_builder() -> PoolBuilder {
    PoolBuilder::new(PoolPreset::Web)
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(2))
}

/// What the shop is built from.
pub struct ShopConfig {
    /// The PostgreSQL pool (the transaction layer and the health check use it).
    pub pool: PgPool,
    /// The cache's store: L1 memory in front of Redis, in the shop's own namespace.
    pub store: TieredStore,
    /// PostgreSQL schema of the shop's tables, created on start (`CREATE ... IF NOT EXISTS`),
    /// so tests and several shops can share one database.
    pub schema: String,
    /// Products seeded when the table is empty (ids `1..=n`).
    pub seed_products: u32,
    /// Stock of each seeded product.
    pub seed_stock: i64,
    /// `max-age` of product responses for clients (`Cache-Control`): browsers and other
    /// caches the shop cannot purge keep them this long.
    pub max_age: Duration,
    /// How long the shop's own cache keeps product responses fresh (`Surrogate-Control:
    /// max-age`, which governs this cache and no other). Writes purge exactly after commit, so
    /// this only bounds how long a lost purge (or a write that bypassed the shop) can be
    /// served. See `docs/shop.md`.
    pub cache_max_age: Duration,
    /// How long after `cache_max_age` an entry is still served while one background request
    /// refreshes it (`Surrogate-Control: stale-while-revalidate`), so that no reader waits for
    /// the database when a popular entry expires.
    pub cache_stale_while_revalidate: Duration,
    /// Signs keyset cursors: give every instance the same key.
    pub cursor_key: CursorKey,
    /// The metrics registry the metrics layer records into.
    pub registry: MetricsRegistry,
    /// Renders `/metrics` (Prometheus text); no `/metrics` route without it.
    pub metrics_text: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// How often the health checks run in the background.
    pub health_interval: Duration,
    /// The layer stack.
    pub stack: Stack,
    /// Whether the invalidation layer (`InvalidateLayer`, inside the transaction layer) is in
    /// the stack, so that writes purge their tags after commit (off only to show what the
    /// layer-order tests show).
    pub purge_after_commit: bool,
    /// Bearer token of the purge endpoint (`PurgeLayer`: `POST /admin/purge` and
    /// `PURGE <url>`) and of the dashboard (`/admin/dashboard`, its JSON at
    /// `/admin/dashboard/data`). Without one there is no purge endpoint and the dashboard is
    /// open.
    pub purge_token: Option<String>,
}

impl ShopConfig {
    /// The defaults: schema `shop`, 1,000 products with 100 in stock, `max-age=60` for
    /// clients, one hour fresh and a day stale-while-revalidate in the shop's cache, a random
    /// cursor key, a new metrics registry, no `/metrics`, health checks every 5 s, the full
    /// stack.
    pub fn new(pool: PgPool, store: TieredStore) -> Self {
        ShopConfig {
            pool,
            store,
            schema: "shop".into(),
            seed_products: 1_000,
            seed_stock: 100,
            max_age: Duration::from_secs(60),
            cache_max_age: Duration::from_secs(3600),
            cache_stale_while_revalidate: Duration::from_secs(86_400),
            cursor_key: CursorKey::random(),
            registry: MetricsRegistry::new(),
            metrics_text: None,
            health_interval: Duration::from_secs(5),
            stack: Stack::Full,
            purge_after_commit: true,
            purge_token: None,
        }
    }
}

/// The built shop: its router and the handles to what it measures.
pub struct Shop {
    /// The whole service: the API behind the stack, `/health`, `/health/ready`, `/metrics`.
    pub router: Router,
    /// The cache's counters (`None` without a cache).
    pub cache: Option<CacheStats>,
    /// The transaction layer's statistics (`None` without it).
    pub tx: Option<TxStats>,
    /// Purges the shop's cache entries (the invalidation layer and the purge endpoint purge
    /// through it).
    pub purger: Purger,
    /// The health checks.
    pub health: Health,
    /// The metrics registry.
    pub registry: MetricsRegistry,
    /// The quoted products table (`"schema"."products"`).
    pub products_table: String,
    /// The quoted orders table.
    pub orders_table: String,
    /// The operator's dashboard, served at `/admin/dashboard` (behind the purge token if set).
    pub dashboard: Dashboard,
    state: Arc<AppState>,
    checks: tokio::task::JoinHandle<()>,
    samples: tokio::task::JoinHandle<()>,
}

impl Shop {
    /// Opens `connections` of the pool at once and prepares the product read on each, as in
    /// a service that has been up a while. The load run warms both stacks' pools so, so that
    /// neither pays for opening connections (and preparing on them) during a measurement.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn warm_pool(&self, connections: u32) -> Result<(), sqlx::Error> {
        let mut held = Vec::new();
        for _ in 0..connections {
            held.push(self.state.pool.acquire());
        }
        let held = futures_util::future::try_join_all(held).await?;
        for mut conn in held {
            sqlx::query(sql(&self.state.sql.get))
                .bind(1_i64)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.checks.abort();
        self.samples.abort();
    }
}

/// A product row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Product {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Price in cents.
    pub price_cents: i64,
    /// Units in stock.
    pub stock: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProduct {
    name: String,
    price_cents: i64,
    stock: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductPatch {
    name: Option<String>,
    price_cents: Option<i64>,
    stock: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    product_id: i64,
    quantity: i64,
}

/// The placed order, as answered by `POST /orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Order id.
    pub id: i64,
    /// Product ordered.
    pub product_id: i64,
    /// Units ordered.
    pub quantity: i64,
    /// Units of the product left after the order.
    pub stock_left: i64,
}

/// SQL text with the schema's table names in it, built once.
struct Sql {
    get: Arc<str>,
    insert: Arc<str>,
    update: Arc<str>,
    delete: Arc<str>,
    insert_order: Arc<str>,
    take_stock: Arc<str>,
}

struct AppState {
    pool: PgPool,
    stack: Stack,
    pager: Pager,
    sql: Sql,
    /// `Cache-Control` of product responses (for clients).
    cache_control: HeaderValue,
    /// `Surrogate-Control` of product responses (for the shop's cache).
    surrogate_control: HeaderValue,
}

fn sql(text: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    // Table names are checked identifiers; every value is a bound parameter.
    AssertSqlSafe(text.clone())
}

/// Handler errors: a status and a message, or a `db` error (`400` for a bad cursor).
enum ApiError {
    Status(StatusCode, String),
    Db(DbError),
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError::Status(status, message.into())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if let Some(db) = err.as_database_error() {
            match db.code().as_deref() {
                Some("23503") => return ApiError::new(StatusCode::NOT_FOUND, "no such product"),
                Some("23514") | Some("22003") => {
                    return ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "value out of range");
                }
                _ => {}
            }
        }
        tracing::warn!(error = %err, "database error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "database error")
    }
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        ApiError::Db(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Status(status, message) => {
                (status, Json(serde_json::json!({ "error": message }))).into_response()
            }
            ApiError::Db(err) => err.into_response(),
        }
    }
}

/// The request's database access: the transaction layer's handle, or (in the baseline) the
/// pool, with transactions opened by hand.
struct Db {
    conn: Conn,
}

enum Conn {
    Layer(TxHandle<Postgres>),
    Manual(PgPool),
}

impl FromRequestParts<Arc<AppState>> for Db {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let conn = match parts.extensions.get::<TxHandle<Postgres>>() {
            Some(handle) => Conn::Layer(handle.clone()),
            // A stack with a transaction layer must never fall back to autocommit quietly.
            None if state.stack.has_tx_layer() => {
                let message = "no transaction handle: the route is not behind the TxLayer";
                return Err(
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
                );
            }
            None => Conn::Manual(state.pool.clone()),
        };
        Ok(Db { conn })
    }
}

/// Runs `$body` with `$conn` a connection for reads: the request's transaction, or a pooled
/// connection in autocommit (the baseline). Use it as `&mut *$conn`.
macro_rules! read {
    ($db:expr, |$conn:ident| $body:expr) => {
        match &$db.conn {
            Conn::Layer(handle) => {
                let mut held = handle.conn().await?;
                let $conn = &mut held;
                $body
            }
            Conn::Manual(pool) => {
                let mut held = pool.acquire().await?;
                let $conn: &mut PgConnection = &mut held;
                $body
            }
        }
    };
}

/// Runs `$body` in a transaction: the request's (the layer commits when the response is a
/// success and rolls back otherwise) or, in the baseline, one begun here and committed when
/// `$body` finishes without returning early (an early return drops it: rollback).
macro_rules! write {
    ($db:expr, |$conn:ident| $body:expr) => {
        match &$db.conn {
            Conn::Layer(handle) => {
                let mut held = handle.conn().await?;
                let $conn = &mut held;
                $body
            }
            Conn::Manual(pool) => {
                let mut tx = pool.begin().await?;
                let value = {
                    let $conn: &mut PgConnection = &mut tx;
                    $body
                };
                tx.commit().await?;
                value
            }
        }
    };
}

/// `Surrogate-Control`: targeted at the shop's cache, which it governs over `Cache-Control`.
static SURROGATE_CONTROL: header::HeaderName = header::HeaderName::from_static("surrogate-control");

/// A cacheable JSON answer: `Cache-Control: public, max-age=..` for clients,
/// `Surrogate-Control: max-age=.., stale-while-revalidate=..` for the shop's cache, and its
/// cache tags.
fn cacheable(state: &AppState, tags: String, body: impl Serialize) -> Response {
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, state.cache_control.clone());
    headers.insert(SURROGATE_CONTROL.clone(), state.surrogate_control.clone());
    if let Ok(tags) = HeaderValue::from_str(&tags) {
        headers.insert(TAG_HEADER, tags);
    }
    response
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such product")
}

async fn get_product(
    State(state): State<Arc<AppState>>,
    db: Db,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let product: Option<Product> = read!(db, |conn| {
        sqlx::query_as(sql(&state.sql.get))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
    });
    let product = product.ok_or_else(not_found)?;
    Ok(cacheable(&state, format!("product:{id}"), product))
}

async fn list_products(
    State(state): State<Arc<AppState>>,
    db: Db,
    page: CursorRequest,
) -> Result<Response, ApiError> {
    let page: KeysetPage<Product> = read!(db, |conn| state.pager.keyset(&mut *conn, &page).await?);
    Ok(cacheable(&state, "products".into(), page))
}

fn check_product(
    name: Option<&str>,
    price: Option<i64>,
    stock: Option<i64>,
) -> Result<(), ApiError> {
    if let Some(name) = name
        && (name.trim().is_empty() || name.len() > 200)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "name must be 1 to 200 bytes",
        ));
    }
    if price.is_some_and(|p| p < 0) || stock.is_some_and(|s| s < 0) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "price_cents and stock must not be negative",
        ));
    }
    Ok(())
}

async fn create_product(
    State(state): State<Arc<AppState>>,
    db: Db,
    Json(new): Json<NewProduct>,
) -> Result<Response, ApiError> {
    check_product(Some(&new.name), Some(new.price_cents), Some(new.stock))?;
    let product: Product = write!(db, |conn| {
        sqlx::query_as(sql(&state.sql.insert))
            .bind(&new.name)
            .bind(new.price_cents)
            .bind(new.stock)
            .fetch_one(&mut *conn)
            .await?
    });
    let location = HeaderValue::from_str(&format!("/products/{}", product.id)).expect("ASCII");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(product),
    )
        .into_response())
}

async fn update(
    state: &AppState,
    db: &Db,
    id: i64,
    patch: ProductPatch,
) -> Result<Response, ApiError> {
    check_product(patch.name.as_deref(), patch.price_cents, patch.stock)?;
    let product: Option<Product> = write!(db, |conn| {
        sqlx::query_as(sql(&state.sql.update))
            .bind(id)
            .bind(&patch.name)
            .bind(patch.price_cents)
            .bind(patch.stock)
            .fetch_optional(&mut *conn)
            .await?
    });
    let product = product.ok_or_else(not_found)?;
    Ok(Json(product).into_response())
}

async fn put_product(
    State(state): State<Arc<AppState>>,
    db: Db,
    Path(id): Path<i64>,
    Json(new): Json<NewProduct>,
) -> Result<Response, ApiError> {
    let patch = ProductPatch {
        name: Some(new.name),
        price_cents: Some(new.price_cents),
        stock: Some(new.stock),
    };
    update(&state, &db, id, patch).await
}

async fn patch_product(
    State(state): State<Arc<AppState>>,
    db: Db,
    Path(id): Path<i64>,
    Json(patch): Json<ProductPatch>,
) -> Result<Response, ApiError> {
    update(&state, &db, id, patch).await
}

async fn delete_product(
    State(state): State<Arc<AppState>>,
    db: Db,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let deleted = write!(db, |conn| {
        sqlx::query(sql(&state.sql.delete))
            .bind(id)
            .execute(&mut *conn)
            .await?
            .rows_affected()
    });
    if deleted == 0 {
        return Err(not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn place_order(
    State(state): State<Arc<AppState>>,
    db: Db,
    Json(order): Json<NewOrder>,
) -> Result<Response, ApiError> {
    if !(1..=1_000_000).contains(&order.quantity) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "quantity must be between 1 and 1000000",
        ));
    }
    let placed: Order = write!(db, |conn| {
        // The order row first, then the stock: when the stock is short the early return
        // answers 409 and the transaction rolls back, order row included.
        let id: i64 = sqlx::query_scalar(sql(&state.sql.insert_order))
            .bind(order.product_id)
            .bind(order.quantity)
            .fetch_one(&mut *conn)
            .await?;
        let left: Option<i64> = sqlx::query_scalar(sql(&state.sql.take_stock))
            .bind(order.product_id)
            .bind(order.quantity)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(stock_left) = left else {
            return Err(ApiError::new(StatusCode::CONFLICT, "insufficient stock"));
        };
        Order {
            id,
            product_id: order.product_id,
            quantity: order.quantity,
            stock_left,
        }
    });
    // The product is named in the body, not the path, so no rule can name its tag: the
    // invalidation layer reads this extension and purges after COMMIT (only on success).
    let purge = Invalidation::tags([format!("product:{}", order.product_id), "products".into()]);
    Ok((StatusCode::CREATED, Extension(purge), Json(placed)).into_response())
}

/// The cache's counters and hit rate as JSON.
pub fn cache_summary(stats: &CacheStats) -> serde_json::Value {
    let served = stats.hits() + stats.stale_hits() + stats.coalesced();
    let looked_up = served + stats.misses();
    serde_json::json!({
        "hits": stats.hits(),
        "stale_hits": stats.stale_hits(),
        "coalesced": stats.coalesced(),
        "misses": stats.misses(),
        "stores": stats.stores(),
        "not_stored": stats.not_stored(),
        "bypasses": stats.bypasses(),
        "invalidations": stats.invalidations(),
        "store_errors": stats.store_errors(),
        "hit_rate": if looked_up == 0 { 0.0 } else { served as f64 / looked_up as f64 },
    })
}

/// `POST /admin/purge` is answered by the `PurgeLayer` in front of the cache; this handler only
/// gives the path a route. The layers of `Router::layer` wrap routes, and the fallback of
/// `api.merge(health.router())` is the health router's, outside the layers: without a route a
/// purge request would never reach the `PurgeLayer`.
async fn purge_route() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the purge layer did not answer",
    )
}

/// Creates the schema and tables if missing and seeds the products when the table is empty.
async fn create_tables(
    config: &ShopConfig,
    products: &str,
    orders: &str,
    schema: &str,
) -> Result<(), BoxError> {
    let mut tx = config.pool.begin().await?;
    // Serialize concurrent starts on one schema: CREATE ... IF NOT EXISTS alone can race.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(&config.schema)
        .execute(&mut *tx)
        .await?;
    for statement in [
        format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {products} (
                id BIGSERIAL PRIMARY KEY,
                name TEXT NOT NULL,
                price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
                stock BIGINT NOT NULL CHECK (stock >= 0))"
        ),
        format!("CREATE INDEX IF NOT EXISTS products_price_id ON {products} (price_cents, id)"),
        format!("CREATE INDEX IF NOT EXISTS products_name_id ON {products} (name, id)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {orders} (
                id BIGSERIAL PRIMARY KEY,
                product_id BIGINT NOT NULL REFERENCES {products} (id) ON DELETE CASCADE,
                quantity BIGINT NOT NULL CHECK (quantity > 0),
                created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ),
    ] {
        sqlx::query(AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    let empty: bool = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT NOT EXISTS (SELECT 1 FROM {products})"
    )))
    .fetch_one(&mut *tx)
    .await?;
    if empty && config.seed_products > 0 {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {products} (name, price_cents, stock)
             SELECT 'Product ' || lpad(g::text, 6, '0'), 100 + (g * 7919) % 10000, $2
             FROM generate_series(1, $1) AS g"
        )))
        .bind(i64::from(config.seed_products))
        .bind(config.seed_stock)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Builds the shop: creates its tables, seeds them, starts the health checks and stacks the
/// layers. Call inside a Tokio runtime.
///
/// # Errors
///
/// A bad schema name, a database error while creating the tables, a bad layer configuration.
pub async fn build(config: ShopConfig) -> Result<Shop, BoxError> {
    let schema = Ident::new(&config.schema)?;
    if config.schema.contains('.') {
        return Err("schema must be a plain identifier".into());
    }
    let quoted_schema = schema.quoted::<Postgres>();
    let products = Ident::new(&format!("{}.products", config.schema))?.quoted::<Postgres>();
    let orders = Ident::new(&format!("{}.orders", config.schema))?.quoted::<Postgres>();
    create_tables(&config, &products, &orders, &quoted_schema).await?;

    let columns = "id, name, price_cents, stock";
    let sql = Sql {
        get: format!("SELECT {columns} FROM {products} WHERE id = $1").into(),
        insert: format!(
            "INSERT INTO {products} (name, price_cents, stock) VALUES ($1, $2, $3) RETURNING {columns}"
        )
        .into(),
        update: format!(
            "UPDATE {products} SET name = COALESCE($2, name), price_cents = COALESCE($3, price_cents),
             stock = COALESCE($4, stock) WHERE id = $1 RETURNING {columns}"
        )
        .into(),
        delete: format!("DELETE FROM {products} WHERE id = $1").into(),
        insert_order: format!(
            "INSERT INTO {orders} (product_id, quantity) VALUES ($1, $2) RETURNING id"
        )
        .into(),
        take_stock: format!(
            "UPDATE {products} SET stock = stock - $2 WHERE id = $1 AND stock >= $2 RETURNING stock"
        )
        .into(),
    };
    let sorts = Sorts::new("id", &[("id", KeyKind::Int)])?
        .allow(
            "price",
            &[("price_cents", KeyKind::Int), ("id", KeyKind::Int)],
        )?
        .allow("name", &[("name", KeyKind::Text), ("id", KeyKind::Int)])?;
    let pager = Pager::new(
        &format!("{}.products", config.schema),
        sorts,
        config.cursor_key.clone(),
    )?
    .columns(&["id", "name", "price_cents", "stock"])?;

    let cached = config.stack != Stack::MetricsOnly;
    // Only the product routes are cached; every response there carries its own freshness.
    let cache_layer = CacheLayer::new(config.store.clone()).path_prefixes(["/products"])?;
    let tx_layer = TxLayer::try_new(
        config.pool.clone(),
        TxConfig::default()
            .statement_timeout(Duration::from_secs(5))
            .transaction_timeout(Duration::from_secs(10)),
    )?;
    let cache_stats = cached.then(|| cache_layer.stats());
    let tx_stats = config.stack.has_tx_layer().then(|| tx_layer.stats());
    let purger = Purger::new(config.store.clone());

    let l2 = config.store.l2().clone();
    let mut health = Health::builder()
        .check(Check::required(
            "postgres",
            PoolCheck::new(config.pool.clone()),
        ))
        .check(Check::optional(
            "redis",
            fn_check(move || {
                let l2 = l2.clone();
                async move {
                    match l2.ping().await {
                        Ok(rtt) => CheckOutput::healthy(serde_json::json!({
                            "rtt_ms": rtt.as_secs_f64() * 1e3,
                            "backplane_connected": l2.backplane_connected(),
                        })),
                        Err(err) => CheckOutput::unhealthy(err.to_string()),
                    }
                }
            }),
        ))
        .check(Check::optional("latency", {
            let registry = config.registry.clone();
            stats_check(move || registry.report())
        }));
    if let Some(stats) = &cache_stats {
        let stats = stats.clone();
        health = health.check(Check::optional(
            "cache",
            stats_check(move || cache_summary(&stats)),
        ));
    }
    if let Some(stats) = &tx_stats {
        let stats = stats.clone();
        health = health.check(Check::optional(
            "transactions",
            stats_check(move || stats.snapshot()),
        ));
    }
    let health = health
        .interval(config.health_interval)
        .timeout(Duration::from_secs(1))
        .build()?;
    let checks = health.spawn();
    let mut dashboard = Dashboard::new()
        .title("shop")
        .metrics(config.registry.clone())
        .store(config.store.clone())
        .health(health.clone());
    if let Some(stats) = &cache_stats {
        dashboard = dashboard.cache(stats.clone()).purger(purger.clone());
    }
    if let Some(stats) = &tx_stats {
        dashboard = dashboard.tx(stats.clone());
    }

    let state = Arc::new(AppState {
        pool: config.pool.clone(),
        stack: config.stack,
        pager,
        sql,
        cache_control: HeaderValue::from_str(&format!(
            "public, max-age={}",
            config.max_age.as_secs()
        ))?,
        surrogate_control: HeaderValue::from_str(&format!(
            "max-age={}, stale-while-revalidate={}",
            config.cache_max_age.as_secs(),
            config.cache_stale_while_revalidate.as_secs()
        ))?,
    });
    let mut api = Router::new()
        .route("/products", get(list_products).post(create_product))
        .route(
            "/products/{id}",
            get(get_product)
                .put(put_product)
                .patch(patch_product)
                .delete(delete_product),
        )
        .route("/orders", axum::routing::post(place_order));
    // The purge endpoint: only with a token, and only in front of a cache.
    let purge_layer = match config.purge_token.as_deref() {
        Some(token) if cached => {
            api = api.route("/admin/purge", axum::routing::post(purge_route));
            // Shares the shop's purger: its stats show every purge, endpoint and writes alike.
            let purger = cache_layer.purger_from(purger.clone());
            Some(PurgeLayer::new(purger, BearerToken::new(token)?).path("/admin/purge"))
        }
        _ => None,
    };
    // The purge layer, or nothing. Both sides of the `Either` must answer the same type and the
    // purge layer's answers have their own body type: both answer axum's `Response`. A macro,
    // as the inner body type differs from one stack to the other.
    macro_rules! purge_layer {
        () => {
            match purge_layer {
                Some(layer) => Either::Left(
                    ServiceBuilder::new()
                        .map_response(IntoResponse::into_response)
                        .layer(layer)
                        .into_inner(),
                ),
                None => Either::Right(MapResponseLayer::new(IntoResponse::into_response)),
            }
        };
    }
    // What writes make stale, purged after COMMIT. Orders name their product in the body: they
    // set an `Invalidation` extension instead (see `place_order`).
    let invalidate_layer = if config.purge_after_commit {
        Some(
            InvalidateLayer::new(purger.clone())
                .rule(
                    Rule::on(
                        [Method::PUT, Method::PATCH, Method::DELETE],
                        "/products/{id}",
                    )
                    .purge_tags(["product:{id}", "products"]),
                )?
                .rule(Rule::on([Method::POST], "/products").purge_tags(["products"]))?,
        )
    } else {
        None
    };
    if let Some(layer) = &invalidate_layer {
        dashboard = dashboard.invalidate(layer.clone());
    }
    // After the last setter: a setter on a dashboard whose only other reference is the
    // sampler's moves it, and the sampler would stop.
    let samples = dashboard.spawn();
    let api = api.with_state(state.clone());
    let metrics = MetricsLayer::new(config.registry.clone())
        .exclude_path("/metrics")
        .exclude_prefix("/health");
    let api = match config.stack {
        // The shop: every layer in one ServiceBuilder, outermost first.
        // `option_layer`: an absent layer is the identity.
        Stack::Full => api.layer(
            ServiceBuilder::new()
                .layer(metrics)
                .layer(purge_layer!())
                .layer(cache_layer)
                .layer(tx_layer)
                .option_layer(invalidate_layer),
        ),
        Stack::CacheInsideTx => api.layer(
            ServiceBuilder::new()
                .layer(metrics)
                .layer(purge_layer!())
                .layer(tx_layer)
                // The cache builds its background requests with `B::default()`, which the
                // transaction layer's replayable body does not offer: hand it axum's body.
                .map_request(|req: axum::http::Request<TxBody<axum::body::Body>>| {
                    req.map(axum::body::Body::new)
                })
                .layer(cache_layer)
                .option_layer(invalidate_layer),
        ),
        Stack::MetricsOnly => api.layer(metrics),
    };
    let mut router = api.merge(health.router());
    if let Some(text) = config.metrics_text.clone() {
        router = router.route("/metrics", get(move || std::future::ready(text())));
    }
    // The operator's dashboard, outside the stack (never cached, never measured): the page at
    // `/admin/dashboard`, its JSON at `/admin/dashboard/data`, both behind the purge token when
    // there is one. Without one they stay open, as the shop's JSON dashboard always was (the
    // route is a contract); it holds figures, no secrets.
    let operator_page = match config.purge_token.as_deref() {
        Some(token) => dashboard.clone().bearer_token(token)?,
        None => {
            tracing::warn!("no purge token: /admin/dashboard is open to anyone");
            dashboard.clone()
        }
    };
    router = router.nest_service("/admin/dashboard", operator_page);
    Ok(Shop {
        router,
        cache: cache_stats,
        tx: tx_stats,
        purger,
        health,
        registry: config.registry,
        products_table: products,
        orders_table: orders,
        dashboard,
        state,
        checks,
        samples,
    })
}
