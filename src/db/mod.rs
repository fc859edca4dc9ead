//! Query patterns on sqlx for PostgreSQL, MySQL/MariaDB and SQLite.

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
    Pager,
};
pub use pool::{PoolBuilder, PoolPreset, PoolStats};
pub use search::{Aggregate, DEFAULT_SEARCH_LIMIT, Group, Search, SearchMode};
pub use sort::Sorts;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use unnest::PgUnnest;
