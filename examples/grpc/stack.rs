//! The gRPC example's stack, shared with `tests/app/grpc_example.rs`: a hand-written `shop.Catalog`
//! tonic service (prost messages written by hand, no protoc, no build script) behind the
//! metrics, cache and transaction layers, and a demo client.
//!
//! Layer order, outermost first:
//!
//! 1. `MetricsLayer`: every call is timed, a cache hit included, and labelled by method path.
//! 2. `GrpcKeyLayer` + `CacheLayer`: `GetProduct` answers are cached by request message, so a
//!    hit never reaches the database and never opens a transaction.
//! 3. `TxLayer`: each call that gets past the cache runs in one transaction, committed when the
//!    trailers say `grpc-status: 0` and rolled back otherwise.
//!
//! `SetPrice` tags nothing and purges `product:{id}` in an after-commit hook, so a rolled-back
//! write never evicts anything and a committed one is visible to the next read.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use tonic::Status;
use tonic_prost::ProstCodec;
use tower::ServiceBuilder;
use tower_strata::cache::{CacheLayer, CacheStats, CacheTags, GrpcKeyLayer};
use tower_strata::metrics::{MetricsLayer, MetricsRegistry, Window};
use tower_strata::store::{MemoryStore, PurgeMode, Store};
use tower_strata::tx::{TxConfig, TxDatabase, TxHandle, TxLayer, TxStats};

/// The cached read.
pub const GET_PRODUCT: &str = "/shop.Catalog/GetProduct";
/// The transactional write.
pub const SET_PRICE: &str = "/shop.Catalog/SetPrice";
/// How long a `GetProduct` answer stays cached (it is purged sooner by a price change).
pub const PRODUCT_TTL: Duration = Duration::from_secs(60);

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

// -- messages (what `prost-build` would generate from a `.proto`) ------------------------------

/// `GetProduct` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetProductRequest {
    /// Product id.
    #[prost(int64, tag = "1")]
    pub id: i64,
}

/// `SetPrice` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetPriceRequest {
    /// Product id.
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// New price; negative prices are refused with `INVALID_ARGUMENT` (and rolled back).
    #[prost(int64, tag = "2")]
    pub price_cents: i64,
}

/// A product, the answer of both methods.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Product {
    /// Product id.
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// Name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Price in cents.
    #[prost(int64, tag = "3")]
    pub price_cents: i64,
}

// -- the database, per backend ---------------------------------------------------------------

/// The queries the service runs, for each database it supports.
pub trait CatalogDb: TxDatabase {
    /// Creates and fills the `products` table if it is missing.
    fn setup(pool: &sqlx::Pool<Self>) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Reads one product inside the request's transaction.
    fn load(
        tx: TxHandle<Self>,
        id: i64,
    ) -> impl Future<Output = Result<Option<Product>, sqlx::Error>> + Send;
    /// Updates one price inside the request's transaction; the product after the update.
    fn set_price(
        tx: TxHandle<Self>,
        id: i64,
        price_cents: i64,
    ) -> impl Future<Output = Result<Option<Product>, sqlx::Error>> + Send;
}

/// The seed rows.
const SEED: [(i64, &str, i64); 3] = [
    (1, "Mechanical keyboard", 12_999),
    (2, "USB-C hub", 4_999),
    (3, "4K monitor", 44_999),
];

fn product((id, name, price_cents): (i64, String, i64)) -> Product {
    Product {
        id,
        name,
        price_cents,
    }
}

impl CatalogDb for sqlx::Sqlite {
    async fn setup(pool: &sqlx::Pool<Self>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS products \
             (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL)",
        )
        .execute(pool)
        .await?;
        for (id, name, price) in SEED {
            sqlx::query("INSERT OR IGNORE INTO products (id, name, price_cents) VALUES (?, ?, ?)")
                .bind(id)
                .bind(name)
                .bind(price)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    async fn load(tx: TxHandle<Self>, id: i64) -> Result<Option<Product>, sqlx::Error> {
        let mut conn = tx.conn().await?;
        let row: Option<(i64, String, i64)> =
            sqlx::query_as("SELECT id, name, price_cents FROM products WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut conn)
                .await?;
        Ok(row.map(product))
    }

    async fn set_price(
        tx: TxHandle<Self>,
        id: i64,
        price_cents: i64,
    ) -> Result<Option<Product>, sqlx::Error> {
        let mut conn = tx.conn().await?;
        let row: Option<(i64, String, i64)> = sqlx::query_as(
            "UPDATE products SET price_cents = ? WHERE id = ? RETURNING id, name, price_cents",
        )
        .bind(price_cents)
        .bind(id)
        .fetch_optional(&mut conn)
        .await?;
        Ok(row.map(product))
    }
}

#[cfg(feature = "postgres")]
impl CatalogDb for sqlx::Postgres {
    async fn setup(pool: &sqlx::Pool<Self>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS grpc_example_products \
             (id BIGINT PRIMARY KEY, name TEXT NOT NULL, price_cents BIGINT NOT NULL)",
        )
        .execute(pool)
        .await?;
        for (id, name, price) in SEED {
            sqlx::query(
                "INSERT INTO grpc_example_products (id, name, price_cents) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(name)
            .bind(price)
            .execute(pool)
            .await?;
        }
        Ok(())
    }

    async fn load(tx: TxHandle<Self>, id: i64) -> Result<Option<Product>, sqlx::Error> {
        let mut conn = tx.conn().await?;
        let row: Option<(i64, String, i64)> =
            sqlx::query_as("SELECT id, name, price_cents FROM grpc_example_products WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut conn)
                .await?;
        Ok(row.map(product))
    }

    async fn set_price(
        tx: TxHandle<Self>,
        id: i64,
        price_cents: i64,
    ) -> Result<Option<Product>, sqlx::Error> {
        let mut conn = tx.conn().await?;
        let row: Option<(i64, String, i64)> = sqlx::query_as(
            "UPDATE grpc_example_products SET price_cents = $1 WHERE id = $2 \
             RETURNING id, name, price_cents",
        )
        .bind(price_cents)
        .bind(id)
        .fetch_optional(&mut conn)
        .await?;
        Ok(row.map(product))
    }
}

// -- the service (what `tonic-build` would generate, plus the two method bodies) --------------

/// The `shop.Catalog` service.
pub struct Catalog<DB> {
    store: MemoryStore,
    db_reads: Arc<AtomicU64>,
    _db: PhantomData<fn() -> DB>,
}

impl<DB> Clone for Catalog<DB> {
    fn clone(&self) -> Self {
        Catalog {
            store: self.store.clone(),
            db_reads: self.db_reads.clone(),
            _db: PhantomData,
        }
    }
}

impl<DB> tonic::server::NamedService for Catalog<DB> {
    const NAME: &'static str = "shop.Catalog";
}

fn tx_of<DB: TxDatabase, T>(req: &tonic::Request<T>) -> Result<TxHandle<DB>, Status> {
    req.extensions()
        .get::<TxHandle<DB>>()
        .cloned()
        .ok_or_else(|| Status::internal("no TxLayer in the stack"))
}

fn internal(e: sqlx::Error) -> Status {
    Status::internal(e.to_string())
}

fn product_tag(id: i64) -> String {
    format!("product:{id}")
}

struct GetProduct<DB>(Catalog<DB>);

impl<DB: CatalogDb> tonic::server::UnaryService<GetProductRequest> for GetProduct<DB> {
    type Response = Product;
    type Future = BoxFut<Result<tonic::Response<Product>, Status>>;

    fn call(&mut self, req: tonic::Request<GetProductRequest>) -> Self::Future {
        let reads = self.0.db_reads.clone();
        Box::pin(async move {
            let tx = tx_of::<DB, _>(&req)?;
            let id = req.into_inner().id;
            reads.fetch_add(1, Ordering::Relaxed);
            let found = DB::load(tx, id).await.map_err(internal)?;
            let mut res = tonic::Response::new(
                found.ok_or_else(|| Status::not_found(format!("no product {id}")))?,
            );
            // The cache files the answer under this tag; `SetPrice` purges it.
            res.extensions_mut()
                .insert(CacheTags::new([product_tag(id)]));
            Ok(res)
        })
    }
}

struct SetPrice<DB>(Catalog<DB>);

impl<DB: CatalogDb> tonic::server::UnaryService<SetPriceRequest> for SetPrice<DB> {
    type Response = Product;
    type Future = BoxFut<Result<tonic::Response<Product>, Status>>;

    fn call(&mut self, req: tonic::Request<SetPriceRequest>) -> Self::Future {
        let store = self.0.store.clone();
        Box::pin(async move {
            let tx = tx_of::<DB, _>(&req)?;
            let SetPriceRequest { id, price_cents } = req.into_inner();
            let updated = DB::set_price(tx.clone(), id, price_cents)
                .await
                .map_err(internal)?
                .ok_or_else(|| Status::not_found(format!("no product {id}")))?;
            // Purge only once the new price is committed: a rolled-back call evicts nothing,
            // and no reader can refill the cache with the old price after the purge.
            tx.after_commit(move || async move {
                if let Err(e) = store.purge_tag(&product_tag(id), PurgeMode::Hard).await {
                    tracing::warn!(error = %e, id, "purge after commit failed");
                }
            });
            // Checked after the write, so a refusal shows the rollback at work.
            if price_cents < 0 {
                return Err(Status::invalid_argument("a price cannot be negative"));
            }
            Ok(tonic::Response::new(updated))
        })
    }
}

impl<DB, B> tower::Service<http::Request<B>> for Catalog<DB>
where
    DB: CatalogDb,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            Ok(match req.uri().path() {
                GET_PRODUCT => {
                    let codec = ProstCodec::<Product, GetProductRequest>::default();
                    tonic::server::Grpc::new(codec)
                        .unary(GetProduct(svc), req)
                        .await
                }
                SET_PRICE => {
                    let codec = ProstCodec::<Product, SetPriceRequest>::default();
                    tonic::server::Grpc::new(codec)
                        .unary(SetPrice(svc), req)
                        .await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

// -- the server -------------------------------------------------------------------------------

/// What the running server exposes: the layers' statistics.
#[derive(Clone)]
pub struct Handles {
    /// Per-method latency, labelled by method path.
    pub metrics: MetricsRegistry,
    /// Response cache hits and misses.
    pub cache: CacheStats,
    /// Transactions committed and rolled back.
    pub tx: TxStats,
    /// `GetProduct` calls that reached the database.
    pub db_reads: Arc<AtomicU64>,
}

/// The `shop.Catalog` server with its layers, ready to serve.
pub struct CatalogServer<DB: CatalogDb> {
    store: MemoryStore,
    metrics: MetricsRegistry,
    cache: CacheLayer<MemoryStore>,
    tx: TxLayer<DB>,
    db_reads: Arc<AtomicU64>,
}

impl<DB: CatalogDb> CatalogServer<DB> {
    /// Builds the layers over `pool` (whose schema it creates and seeds) and a 64 MiB
    /// in-memory store.
    pub async fn new(pool: sqlx::Pool<DB>) -> Result<Self, BoxError> {
        DB::setup(&pool).await?;
        let store = MemoryStore::new(64 << 20);
        // Only the example's own metrics: the exporter to the `metrics` facade stays off.
        let metrics = MetricsRegistry::builder().export(false).build()?;
        let cache = CacheLayer::new(store.clone()).grpc_method(GET_PRODUCT, PRODUCT_TTL)?;
        let tx = TxLayer::try_new(
            pool,
            TxConfig::default().transaction_timeout(Duration::from_secs(10)),
        )?;
        Ok(CatalogServer {
            store,
            metrics,
            cache,
            tx,
            db_reads: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The statistics handles.
    pub fn handles(&self) -> Handles {
        Handles {
            metrics: self.metrics.clone(),
            cache: self.cache.stats(),
            tx: self.tx.stats(),
            db_reads: self.db_reads.clone(),
        }
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let layers = ServiceBuilder::new()
            .layer(MetricsLayer::new(self.metrics))
            .layer(GrpcKeyLayer::new([GET_PRODUCT]))
            .layer(self.cache)
            .layer(self.tx)
            .into_inner();
        let catalog = Catalog::<DB> {
            store: self.store,
            db_reads: self.db_reads,
            _db: PhantomData,
        };
        tonic::transport::Server::builder()
            .timeout(Duration::from_secs(30))
            .layer(layers)
            .add_service(catalog)
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY the trailers, sent after the commit, wait ~40 ms for
                // the client's delayed ACK (Nagle).
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
    }
}

// -- the demo client --------------------------------------------------------------------------

/// A client for `shop.Catalog` over a tonic channel.
#[derive(Clone)]
pub struct Client(tonic::client::Grpc<tonic::transport::Channel>);

impl Client {
    /// Connects to `addr`, with timeouts.
    pub async fn connect(addr: std::net::SocketAddr) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?;
        Ok(Client(tonic::client::Grpc::new(channel)))
    }

    async fn unary<Req>(&mut self, path: &'static str, req: Req) -> Result<Product, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
    {
        self.0
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        self.0
            .unary(
                tonic::Request::new(req),
                PathAndQuery::from_static(path),
                ProstCodec::<Req, Product>::default(),
            )
            .await
            .map(tonic::Response::into_inner)
    }

    /// `GetProduct`.
    pub async fn get_product(&mut self, id: i64) -> Result<Product, Status> {
        self.unary(GET_PRODUCT, GetProductRequest { id }).await
    }

    /// `SetPrice`.
    pub async fn set_price(&mut self, id: i64, price_cents: i64) -> Result<Product, Status> {
        self.unary(SET_PRICE, SetPriceRequest { id, price_cents })
            .await
    }
}

/// One demo step: what was called, what came back, and what the layers saw.
#[derive(Debug, Clone)]
pub struct Step {
    /// The call, in words.
    pub call: String,
    /// The answer (`price_cents`) or the gRPC status code.
    pub outcome: Result<i64, tonic::Code>,
    /// Database reads this call caused (0 on a cache hit).
    pub db_reads: u64,
    /// Cache hits and misses this call caused.
    pub hits: u64,
    /// See `hits`.
    pub misses: u64,
    /// Transactions this call committed and rolled back.
    pub committed: u64,
    /// See `committed`.
    pub rolled_back: u64,
    /// Wall time of the call.
    pub millis: f64,
}

/// Waits (bounded) until the transactions the server knows of are all finished, so counters
/// read after a call include its commit and after-commit hooks.
async fn settle(handles: &Handles) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while handles.tx.snapshot().active > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The cache stores a miss's answer once its body has streamed; give it a moment.
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Runs the demo calls against a server at `addr` whose handles are `handles`: a read twice
/// (miss, then hit), a write in a transaction (commit, purge), the read again (miss with the
/// new price), a refused write (rollback, no purge) and the read once more (hit).
pub async fn demo(addr: std::net::SocketAddr, handles: &Handles) -> Result<Vec<Step>, BoxError> {
    let mut client = Client::connect(addr).await?;
    let mut steps = Vec::new();
    let calls: [(&str, Option<i64>); 6] = [
        ("GetProduct(1)", None),
        ("GetProduct(1)", None),
        ("SetPrice(1, 9999)", Some(9_999)),
        ("GetProduct(1)", None),
        ("SetPrice(1, -1)", Some(-1)),
        ("GetProduct(1)", None),
    ];
    for (what, price) in calls {
        let before = (
            handles.db_reads.load(Ordering::Relaxed),
            handles.cache.hits(),
            handles.cache.misses(),
            handles.tx.snapshot(),
        );
        let started = Instant::now();
        let result = match price {
            None => client.get_product(1).await,
            Some(p) => client.set_price(1, p).await,
        };
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        settle(handles).await;
        let after = handles.tx.snapshot();
        steps.push(Step {
            call: what.to_owned(),
            outcome: result.map(|p| p.price_cents).map_err(|s| s.code()),
            db_reads: handles.db_reads.load(Ordering::Relaxed) - before.0,
            hits: handles.cache.hits() - before.1,
            misses: handles.cache.misses() - before.2,
            committed: after.committed - before.3.committed,
            rolled_back: after.rolled_back - before.3.rolled_back,
            millis,
        });
    }
    Ok(steps)
}

/// The demo's steps and the per-method latency as a small table.
pub fn summary(steps: &[Step], handles: &Handles) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>16} {:>8} {:>5} {:>6} {:>9} {:>11} {:>8}",
        "call", "answer", "db reads", "hits", "misses", "committed", "rolled back", "ms"
    );
    for s in steps {
        let answer = match &s.outcome {
            Ok(price) => format!("price {price}"),
            Err(code) => format!("{code:?}"),
        };
        let _ = writeln!(
            out,
            "{:<20} {:>16} {:>8} {:>5} {:>6} {:>9} {:>11} {:>8.2}",
            s.call, answer, s.db_reads, s.hits, s.misses, s.committed, s.rolled_back, s.millis
        );
    }
    let _ = writeln!(out, "\nper-method latency (metrics layer, last minute):");
    let mut routes = handles.metrics.snapshot(Window::OneMinute);
    routes.sort_by(|a, b| a.route.cmp(&b.route));
    for r in routes {
        let _ = writeln!(
            out,
            "  {:<28} calls {:>3}  errors {:>2}  p50 {:>7.2} ms  p99 {:>7.2} ms",
            r.route,
            r.count,
            r.errors,
            r.latency.p50.as_secs_f64() * 1000.0,
            r.latency.p99.as_secs_f64() * 1000.0
        );
    }
    out
}
