//! Query patterns on sqlx for PostgreSQL, MySQL/MariaDB and SQLite: offset and keyset
//! pagination, bounded search, small aggregates, bulk writes in chunks, and pool presets.
//!
//! Every helper takes a [`QueryTarget`]: a pool (`&pool`), a connection, an sqlx
//! transaction, or the request's transaction from the [`tx`](crate::tx) layer
//! (`&mut conn` from [`TxHandle::conn`](crate::tx::TxHandle::conn)), so the same code runs
//! alone or inside the request's transaction.
//!
//! - [`Pager`]: offset pages with the total in one statement (`COUNT(*) OVER ()`), and
//!   keyset pages over an allow-listed sort ([`Sorts`]) ending in a unique tie-breaker,
//!   forward and backward, whose cursors are opaque tokens signed with a [`CursorKey`]
//!   (HMAC-SHA256, base64url). A forged, malformed or foreign cursor is a
//!   [`DbErrorKind::InvalidCursor`] before any SQL runs; a keyset page costs the same at
//!   any depth. Maximum page sizes are enforced.
//! - [`Search`]: `ILIKE`/`LIKE` substring or PostgreSQL full-text search, always with a
//!   bounded limit; [`Aggregate`]: `COUNT`, `SUM`, `GROUP BY` into typed rows.
//! - [`Bulk`]: insert, upsert, update and delete many rows in chunks under each database's
//!   bind-parameter limit ([`Dialect::MAX_BIND_PARAMS`]), all-or-nothing inside a
//!   transaction; [`PgUnnest`] inserts with one array per column on PostgreSQL.
//! - [`PoolBuilder`] with [`PoolPreset`]s, validated before connecting, and [`PoolStats`]
//!   (size, idle, in use, utilisation) for the health report.
//! - With the `axum` feature, [`PageRequest`] and [`CursorRequest`] are extractors for
//!   `page`, `page_size`, `cursor`, `limit` and `sort` (bad values: `400` with a message),
//!   and [`DbError`] is a response (`400` for the client's mistakes, `500` otherwise).
//!
//! **No SQL injection by construction**: statements are built with [`sqlx::QueryBuilder`]
//! and every value is a bound parameter; table and column names are checked [`Ident`]s
//! written quoted; a request's sort is only ever a key into the [`Sorts`] allow-list
//! (`sort=name; DROP TABLE x` is [`DbErrorKind::UnknownSort`]).
//!
//! # Example (SQLite in memory, no server)
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_strata::db::{Bulk, CursorKey, CursorRequest, KeyKind, PageRequest, Pager, Sorts};
//!
//! #[derive(sqlx::FromRow)]
//! struct Item { id: i64, name: String }
//!
//! let pool = sqlx::sqlite::SqlitePoolOptions::new()
//!     .max_connections(1)
//!     .connect("sqlite::memory:")
//!     .await?;
//! sqlx::query("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
//!     .execute(&pool)
//!     .await?;
//! let rows: Vec<(i64, String)> = (1..=250).map(|i| (i, format!("item {i:03}"))).collect();
//! Bulk::new("items", &["id", "name"])?
//!     .insert(&pool, &rows, |mut b, (id, name)| {
//!         b.push_bind(*id).push_bind(name.clone());
//!     })
//!     .await?;
//!
//! // Default settings: sort by id, pages of 20, at most 100.
//! let pager = Pager::new("items", Sorts::new("id", &[("id", KeyKind::Int)])?, CursorKey::random())?;
//! let page = pager.offset::<Item, _>(&pool, &PageRequest::default()).await?;
//! assert_eq!((page.items.len(), page.total, page.total_pages), (20, 250, 13));
//!
//! // Customised: a second sort order, larger pages, keyset cursors walking backward.
//! let sorts = Sorts::new("id", &[("id", KeyKind::Int)])?
//!     .allow("name", &[("name", KeyKind::Text), ("id", KeyKind::Int)])?;
//! let pager = Pager::new("items", sorts, CursorKey::new(*b"an app secret of 32 bytes or more")?)?
//!     .max_page_size(500)?;
//! let req = CursorRequest { limit: 200, sort: Some("-name".into()), ..Default::default() };
//! let first = pager.keyset::<Item, _>(&pool, &req).await?;
//! assert_eq!(first.items[0].name, "item 250");
//! let req = CursorRequest { cursor: first.next_cursor, ..req };
//! let second = pager.keyset::<Item, _>(&pool, &req).await?;
//! assert_eq!(second.items.len(), 50);
//! let req = CursorRequest { cursor: second.prev_cursor, ..req };
//! let back = pager.keyset::<Item, _>(&pool, &req).await?;
//! assert_eq!(back.items.len(), 200);
//! assert_eq!(back.items[0].id, 250);
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```
//!
//! # Example with axum, inside the request's transaction
//!
//! ```no_run
//! # #[cfg(all(feature = "axum", feature = "postgres"))]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Json, Router, extract::State, routing::get};
//! use sqlx::Postgres;
//! use tower::ServiceBuilder;
//! use tower_strata::db::{CursorKey, CursorRequest, DbError, KeyKind, KeysetPage, Pager, Sorts};
//! use tower_strata::tx::{TxConfig, TxHandle, TxLayer};
//!
//! #[derive(sqlx::FromRow, serde::Serialize)]
//! struct Item { id: i64, name: String }
//!
//! async fn list(
//!     State(pager): State<Pager>,
//!     tx: TxHandle<Postgres>,
//!     req: CursorRequest, // ?cursor=..&limit=..&sort=-name, 400 on bad values
//! ) -> Result<Json<KeysetPage<Item>>, DbError> {
//!     let mut conn = tx.conn().await?;
//!     Ok(Json(pager.keyset(&mut conn, &req).await?)) // 400 on a forged cursor
//! }
//!
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
//! let sorts = Sorts::new("id", &[("id", KeyKind::Int)])?
//!     .allow("name", &[("name", KeyKind::Text), ("id", KeyKind::Int)])?;
//! let key = CursorKey::new(std::env::var("CURSOR_KEY")?.into_bytes())?;
//! let app: Router = Router::new()
//!     .route("/items", get(list))
//!     .with_state(Pager::new("items", sorts, key)?)
//!     .layer(ServiceBuilder::new().layer(TxLayer::try_new(pool, TxConfig::default())?));
//! # let _ = app; Ok(()) }
//! ```
//!
//! # Performance
//!
//! `cargo bench --all-features --bench db -- --warm-up-time 1 --measurement-time 3`
//! (100,000 rows, pages of 50 ordered by `name, id` with an index on them; PostgreSQL 15,
//! the bundled SQLite 3.51 and MariaDB on a shared 2-core machine, so read the ratios, not
//! the absolute times; the separate-count rows for PostgreSQL and SQLite come from a later,
//! busier run, where PostgreSQL keyset pages took 0.47 / 0.63 / 0.80 ms and window-count
//! pages 76 / 97 / 88 ms):
//!
//! | page depth | 1 | 100 | 1,000 |
//! |---|---|---|---|
//! | PostgreSQL keyset | 0.23 ms | 0.32 ms | 0.28 ms |
//! | PostgreSQL offset, [`TotalCount::Separate`] | 8.6 ms | 13.0 ms | 46.4 ms |
//! | PostgreSQL offset, [`TotalCount::Window`] | 54 ms | 42 ms | 56 ms |
//! | SQLite keyset | 0.17 ms | 0.25 ms | 0.28 ms |
//! | SQLite offset, [`TotalCount::Separate`] | 0.44 ms | 0.80 ms | 2.36 ms |
//! | SQLite offset, [`TotalCount::Window`] | 37 ms | 49 ms | 118 ms |
//! | MariaDB keyset | 0.27 ms | 0.36 ms | 0.43 ms |
//! | MariaDB offset, [`TotalCount::Separate`] | 8.0 ms | 47 ms | 69 ms |
//! | MariaDB offset, [`TotalCount::Window`] | 50 ms | 51 ms | 93 ms |
//!
//! Keyset pages stay flat with depth (within noise on PostgreSQL and SQLite, 1.6x from
//! page 1 to page 1,000 on MariaDB); offset pages grow with it (page 1,000 costs 5x to 9x
//! page 1 with a separate count), and the one-round-trip window count
//! costs a pass over every matching row on each page, so on large tables
//! [`TotalCount::Separate`] is the faster choice despite the second round trip.
//!
//! Bulk insert of 100,000 rows in one [`Bulk::insert`] call against a loop of single-row
//! `INSERT`s (the loop measured on 2,000 rows, compared as rows per second): PostgreSQL
//! 142,500 rows/s against 2,800 rows/s (**51x**), [`PgUnnest`] 169,700 rows/s (**61x**);
//! SQLite 507,000 rows/s against 8,100 rows/s (**62x**); MariaDB 224,500 rows/s against
//! 2,760 rows/s (**81x**).

mod bulk;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
mod axum;
mod cursor;
mod dialect;
mod error;
mod ident;
mod page;
mod pool;
mod search;
mod sort;
#[cfg(feature = "postgres")]
mod unnest;

#[cfg(feature = "axum")]
pub use self::axum::{PageLimits, PageRejection};
pub use bulk::{Bulk, BulkResult};
pub use cursor::CursorKey;
pub use dialect::{Dialect, KeyKind, QueryTarget, Value};
pub use error::{DbError, DbErrorKind};
pub use ident::Ident;
pub use page::{
    CursorRequest, DEFAULT_MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE, KeysetPage, OffsetPage, PageRequest,
    Pager, TotalCount,
};
pub use pool::{PoolBuilder, PoolPreset, PoolStats};
pub use search::{Aggregate, DEFAULT_SEARCH_LIMIT, Group, Search, SearchMode};
pub use sort::Sorts;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use unnest::PgUnnest;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<Pager>();
        assert_send_sync::<Sorts>();
        assert_send_sync::<CursorKey>();
        assert_send_sync::<Bulk>();
        assert_send_sync::<Search>();
        assert_send_sync::<Aggregate>();
        assert_send_sync::<PoolBuilder>();
        assert_send_sync::<PoolStats>();
        assert_send_sync::<DbError>();
        assert_send_sync::<KeysetPage<String>>();
        assert_send_sync::<OffsetPage<String>>();
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn helper_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_lazy("sqlite::memory:")
            .unwrap();
        let sorts = Sorts::new("id", &[("id", KeyKind::Int)]).unwrap();
        let pager = Pager::new("t", sorts, CursorKey::random()).unwrap();
        let req = CursorRequest::default();
        assert_send(&pager.keyset::<(i64,), _>(&pool, &req));
        assert_send(&pager.offset::<(i64,), _>(&pool, &PageRequest::default()));
        let rows = [1_i64];
        let bulk = Bulk::new("t", &["id"]).unwrap();
        assert_send(&bulk.insert(&pool, &rows, |mut b, r| {
            b.push_bind(*r);
        }));
    }
}
