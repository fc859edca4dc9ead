//! Offset and keyset pagination over one table.

use serde::{Deserialize, Serialize};
use sqlx::{FromRow, QueryBuilder};

use super::cursor::{Cursor, CursorKey, Direction};
use super::dialect::{Dialect, QueryTarget, Value};
use super::error::DbError;
use super::ident::{Ident, idents};
use super::sort::{Resolved, SortKey, Sorts};

/// Page size used when a request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page size accepted unless [`Pager::max_page_size`] says otherwise.
pub const DEFAULT_MAX_PAGE_SIZE: u32 = 100;

const TOTAL_COLUMN: &str = "strata_total__";

/// An offset page request: 1-based `page`, `page_size`, optional `sort` name. Built by hand
/// or by the `axum` extractor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    /// 1-based page number.
    pub page: u64,
    /// Rows per page.
    pub page_size: u32,
    /// A name from the [`Sorts`] allow-list, `-` prefixed for descending.
    pub sort: Option<String>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            page: 1,
            page_size: DEFAULT_PAGE_SIZE,
            sort: None,
        }
    }
}

/// A keyset page request: an optional `cursor` from a previous page, `limit`, optional
/// `sort` (must match the cursor's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorRequest {
    /// A token from [`KeysetPage::next_cursor`] or [`KeysetPage::prev_cursor`]; `None` for
    /// the first page.
    pub cursor: Option<String>,
    /// Rows per page.
    pub limit: u32,
    /// A name from the [`Sorts`] allow-list, `-` prefixed for descending.
    pub sort: Option<String>,
}

impl Default for CursorRequest {
    fn default() -> Self {
        Self {
            cursor: None,
            limit: DEFAULT_PAGE_SIZE,
            sort: None,
        }
    }
}

/// How [`Pager::offset`] counts the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TotalCount {
    /// `COUNT(*) OVER ()` alongside the rows: one round trip, but the database computes the
    /// whole filtered set before the `LIMIT` (a full scan on every page).
    #[default]
    Window,
    /// A separate `SELECT COUNT(*)` after the page: two round trips, but the page stops at
    /// `OFFSET + LIMIT` rows and the count can use an index-only scan. Measured faster on
    /// large tables (see the module docs).
    Separate,
}

/// One offset page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetPage<T> {
    /// The rows.
    pub items: Vec<T>,
    /// 1-based page number.
    pub page: u64,
    /// Rows per page asked for.
    pub page_size: u32,
    /// Rows matching the filters, over all pages.
    pub total: u64,
    /// `ceil(total / page_size)`.
    pub total_pages: u64,
}

/// One keyset page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetPage<T> {
    /// The rows, in the requested order.
    pub items: Vec<T>,
    /// Token for the rows after the last item; `None` at the end.
    pub next_cursor: Option<String>,
    /// Token for the rows before the first item; `None` at the start.
    pub prev_cursor: Option<String>,
}

/// Offset and keyset pagination over one table, with an allow-listed sort, optional
/// equality filters, and a maximum page size.
///
/// Everything is built with [`sqlx::QueryBuilder`]: values are bound parameters, and table
/// and column names are checked [`Ident`]s written quoted. The methods take any
/// [`QueryTarget`]: a pool, a connection, an sqlx transaction or the request's
/// [`TxConn`](crate::tx::TxConn).
///
/// - [`Pager::offset`] runs **one statement** (`COUNT(*) OVER ()` gives the total alongside
///   the rows on PostgreSQL, MySQL 8 / MariaDB 10.2+ and SQLite 3.25+), plus a `COUNT(*)`
///   only when the page lies past the end. Its cost grows with the page number: the
///   database reads and drops `OFFSET` rows.
/// - [`Pager::keyset`] seeks from the cursor's key (`WHERE (name, id) > ($1, $2) ORDER BY
///   name, id LIMIT n + 1`), so a page costs the same at any depth given an index on the
///   sort columns. Under concurrent inserts and deletes, a row present throughout is seen
///   exactly once when walking the pages in order.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), tower_strata::db::DbError> {
/// use tower_strata::db::{CursorKey, CursorRequest, KeyKind, Pager, Sorts};
///
/// #[derive(sqlx::FromRow)]
/// struct Item { id: i64, name: String }
///
/// let sorts = Sorts::new("id", &[("id", KeyKind::Int)])?
///     .allow("name", &[("name", KeyKind::Text), ("id", KeyKind::Int)])?;
/// let pager = Pager::new("items", sorts, CursorKey::random())?
///     .columns(&["id", "name"])?
///     .filter_eq("owner_id", 7_i64)?;
/// let first = pager
///     .keyset::<Item, _>(&pool, &CursorRequest { sort: Some("-name".into()), ..Default::default() })
///     .await?;
/// if let Some(cursor) = first.next_cursor {
///     let second = pager
///         .keyset::<Item, _>(&pool, &CursorRequest {
///             cursor: Some(cursor),
///             sort: Some("-name".into()),
///             ..Default::default()
///         })
///         .await?;
///     # let _ = second;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Pager {
    table: Ident,
    columns: Option<Vec<Ident>>,
    filters: Vec<(Ident, Value)>,
    sorts: Sorts,
    key: CursorKey,
    max_page_size: u32,
    total: TotalCount,
}

impl Pager {
    /// Pagination over `table`, ordered by one of `sorts`, cursors signed with `key`.
    ///
    /// # Errors
    ///
    /// [`DbErrorKind::InvalidIdentifier`](super::DbErrorKind::InvalidIdentifier) for a bad
    /// table name.
    pub fn new(table: &str, sorts: Sorts, key: CursorKey) -> Result<Self, DbError> {
        Ok(Self {
            table: Ident::new(table)?,
            columns: None,
            filters: Vec::new(),
            sorts,
            key,
            max_page_size: DEFAULT_MAX_PAGE_SIZE,
            total: TotalCount::Window,
        })
    }

    /// The columns to select (default `*`). With a list, it must hold the sort columns.
    ///
    /// # Errors
    ///
    /// A bad identifier.
    pub fn columns(mut self, columns: &[&str]) -> Result<Self, DbError> {
        self.columns = Some(idents(columns)?);
        Ok(self)
    }

    /// Keeps only rows where `column = value` (bound). Filters add up with `AND`.
    ///
    /// # Errors
    ///
    /// A bad identifier.
    pub fn filter_eq(mut self, column: &str, value: impl Into<Value>) -> Result<Self, DbError> {
        self.filters.push((Ident::new(column)?, value.into()));
        Ok(self)
    }

    /// The largest page size or limit accepted (default [`DEFAULT_MAX_PAGE_SIZE`]); larger
    /// requests are refused.
    ///
    /// # Errors
    ///
    /// [`DbErrorKind::InvalidConfig`](super::DbErrorKind::InvalidConfig) for `0`.
    pub fn max_page_size(mut self, max: u32) -> Result<Self, DbError> {
        if max == 0 {
            return Err(DbError::config("max_page_size must be at least 1"));
        }
        self.max_page_size = max;
        Ok(self)
    }

    /// How offset pages count the total (default [`TotalCount::Window`]).
    pub fn total_count(mut self, total: TotalCount) -> Self {
        self.total = total;
        self
    }

    fn check_size(&self, size: u32, what: &str) -> Result<(), DbError> {
        if size == 0 || size > self.max_page_size {
            return Err(DbError::page(format!(
                "{what} must be between 1 and {}, got {size}",
                self.max_page_size
            )));
        }
        Ok(())
    }

    fn select<DB: Dialect>(&self, qb: &mut QueryBuilder<DB>, sort: &Resolved<'_>) {
        qb.push("SELECT ");
        match &self.columns {
            None => {
                qb.push("*");
            }
            Some(cols) => {
                let mut first = true;
                let mut push = |qb: &mut QueryBuilder<DB>, c: &Ident| {
                    if !first {
                        qb.push(", ");
                    }
                    first = false;
                    qb.push(c.quoted::<DB>());
                };
                for c in cols {
                    push(qb, c);
                }
                for k in sort.keys {
                    if !cols.iter().any(|c| c.last() == k.column.last()) {
                        push(qb, &k.column);
                    }
                }
            }
        }
    }

    fn push_filters<DB: Dialect>(&self, qb: &mut QueryBuilder<DB>) -> bool {
        for (i, (col, value)) in self.filters.iter().enumerate() {
            qb.push(if i == 0 { " WHERE " } else { " AND " });
            qb.push(col.quoted::<DB>()).push(" = ");
            DB::push_value(qb, value);
        }
        !self.filters.is_empty()
    }

    fn order_by<DB: Dialect>(qb: &mut QueryBuilder<DB>, keys: &[SortKey], descending: bool) {
        qb.push(" ORDER BY ");
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                qb.push(", ");
            }
            qb.push(k.column.quoted::<DB>());
            qb.push(if descending { " DESC" } else { " ASC" });
        }
    }

    /// One offset page: rows, page number, page size and total.
    ///
    /// # Errors
    ///
    /// [`DbErrorKind::InvalidPage`](super::DbErrorKind::InvalidPage) for page `0`, a page
    /// size of `0` or above the maximum, or an offset past `i64`;
    /// [`DbErrorKind::UnknownSort`](super::DbErrorKind::UnknownSort); database errors.
    pub async fn offset<T, Q>(
        &self,
        mut target: Q,
        req: &PageRequest,
    ) -> Result<OffsetPage<T>, DbError>
    where
        Q: QueryTarget,
        T: for<'r> FromRow<'r, <Q::Database as sqlx::Database>::Row> + Send + Unpin,
    {
        self.check_size(req.page_size, "page_size")?;
        if req.page == 0 {
            return Err(DbError::page("page must be 1 or more"));
        }
        let offset = (req.page - 1)
            .checked_mul(u64::from(req.page_size))
            .and_then(|o| i64::try_from(o).ok())
            .ok_or_else(|| DbError::page(format!("page {} is out of range", req.page)))?;
        let sort = self.sorts.resolve(req.sort.as_deref())?;

        let mut qb = QueryBuilder::<Q::Database>::new("");
        self.select(&mut qb, &sort);
        let window = self.total == TotalCount::Window;
        if window {
            qb.push(format_args!(", COUNT(*) OVER () AS {TOTAL_COLUMN}"));
        }
        qb.push(" FROM ").push(self.table.quoted::<Q::Database>());
        self.push_filters(&mut qb);
        Self::order_by(&mut qb, sort.keys, sort.descending);
        qb.push(" LIMIT ");
        <Q::Database as Dialect>::push_value(&mut qb, &Value::Int(req.page_size.into()));
        qb.push(" OFFSET ");
        <Q::Database as Dialect>::push_value(&mut qb, &Value::Int(offset));
        let rows = target.fetch_all(qb.build()).await?;

        let total = match rows.first() {
            Some(row) if window => {
                u64::try_from(<Q::Database as Dialect>::read_i64(row, TOTAL_COLUMN)?).unwrap_or(0)
            }
            None if window && offset == 0 => 0,
            _ => {
                // Counted apart, or past the end where the window saw no rows.
                let mut qb = QueryBuilder::<Q::Database>::new("SELECT COUNT(*) AS ");
                qb.push(TOTAL_COLUMN)
                    .push(" FROM ")
                    .push(self.table.quoted::<Q::Database>());
                self.push_filters(&mut qb);
                let row = target.fetch_one(qb.build()).await?;
                u64::try_from(<Q::Database as Dialect>::read_i64(&row, TOTAL_COLUMN)?).unwrap_or(0)
            }
        };
        let items = rows
            .iter()
            .map(|r| T::from_row(r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OffsetPage {
            items,
            page: req.page,
            page_size: req.page_size,
            total,
            total_pages: total.div_ceil(u64::from(req.page_size)),
        })
    }

    fn scope(&self, sort: &Resolved<'_>) -> String {
        format!(
            "{}|{}|{}",
            self.table,
            sort.name,
            if sort.descending { "desc" } else { "asc" }
        )
    }

    /// Opens and checks a cursor token for this table and sort.
    fn open(&self, token: &str, sort: &Resolved<'_>) -> Result<Cursor, DbError> {
        let cursor = self.key.open(token)?;
        if cursor.scope != self.scope(sort) {
            return Err(DbError::cursor(
                "invalid cursor: issued for another table or sort order",
            ));
        }
        let fits = cursor.keys.len() == sort.keys.len()
            && cursor
                .keys
                .iter()
                .zip(sort.keys)
                .all(|(v, k)| k.kind.matches(v));
        if !fits {
            return Err(DbError::cursor("invalid cursor: keys do not fit the sort"));
        }
        Ok(cursor)
    }

    /// Pushes the seek predicate: rows strictly after (`greater`) or before `keys` in the
    /// lexicographic order of the sort columns.
    fn seek<DB: Dialect>(
        qb: &mut QueryBuilder<DB>,
        keys: &[SortKey],
        values: &[Value],
        greater: bool,
    ) {
        let op = if greater { " > " } else { " < " };
        if DB::ROW_VALUES || keys.len() == 1 {
            qb.push("(");
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    qb.push(", ");
                }
                qb.push(k.column.quoted::<DB>());
            }
            qb.push(")").push(op).push("(");
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    qb.push(", ");
                }
                DB::push_value(qb, v);
            }
            qb.push(")");
        } else {
            // k1 >= v1 AND (k1 > v1 OR (k1 = v1 AND k2 > v2) OR ...): the leading range lets
            // MySQL/MariaDB seek the index.
            let op_eq = if greater { " >= " } else { " <= " };
            qb.push("(").push(keys[0].column.quoted::<DB>()).push(op_eq);
            DB::push_value(qb, &values[0]);
            qb.push(" AND (");
            for i in 0..keys.len() {
                if i > 0 {
                    qb.push(" OR ");
                }
                qb.push("(");
                for j in 0..i {
                    qb.push(keys[j].column.quoted::<DB>()).push(" = ");
                    DB::push_value(qb, &values[j]);
                    qb.push(" AND ");
                }
                qb.push(keys[i].column.quoted::<DB>()).push(op);
                DB::push_value(qb, &values[i]);
                qb.push(")");
            }
            qb.push("))");
        }
    }

    /// One keyset page after or before the request's cursor (the first page without one).
    ///
    /// # Errors
    ///
    /// [`DbErrorKind::InvalidCursor`](super::DbErrorKind::InvalidCursor) for a malformed or
    /// forged token, one signed with another key, or one issued for another table or sort
    /// (checked before any SQL runs); [`DbErrorKind::InvalidPage`](super::DbErrorKind::InvalidPage)
    /// for a limit of `0` or above the maximum;
    /// [`DbErrorKind::UnknownSort`](super::DbErrorKind::UnknownSort); database errors,
    /// including a sort column missing from the rows.
    pub async fn keyset<T, Q>(
        &self,
        mut target: Q,
        req: &CursorRequest,
    ) -> Result<KeysetPage<T>, DbError>
    where
        Q: QueryTarget,
        T: for<'r> FromRow<'r, <Q::Database as sqlx::Database>::Row> + Send + Unpin,
    {
        self.check_size(req.limit, "limit")?;
        let sort = self.sorts.resolve(req.sort.as_deref())?;
        let cursor = req
            .cursor
            .as_deref()
            .map(|t| self.open(t, &sort))
            .transpose()?;
        let backward = matches!(&cursor, Some(c) if c.direction == Direction::Before);
        // Walking backward reverses the order, and the results are flipped back.
        let descending = sort.descending != backward;

        let mut qb = QueryBuilder::<Q::Database>::new("");
        self.select(&mut qb, &sort);
        qb.push(" FROM ").push(self.table.quoted::<Q::Database>());
        let filtered = self.push_filters(&mut qb);
        if let Some(c) = &cursor {
            qb.push(if filtered { " AND " } else { " WHERE " });
            Self::seek(&mut qb, sort.keys, &c.keys, !descending);
        }
        Self::order_by(&mut qb, sort.keys, descending);
        qb.push(" LIMIT ");
        <Q::Database as Dialect>::push_value(&mut qb, &Value::Int(i64::from(req.limit) + 1));
        let mut rows = target.fetch_all(qb.build()).await?;

        let more = rows.len() > req.limit as usize;
        rows.truncate(req.limit as usize);
        if backward {
            rows.reverse();
        }
        let keys_of = |row: &<Q::Database as sqlx::Database>::Row| -> Result<Vec<Value>, DbError> {
            sort.keys
                .iter()
                .map(|k| {
                    <Q::Database as Dialect>::read_key(row, k.column.last(), k.kind)
                        .map_err(DbError::from)
                })
                .collect()
        };
        let scope = self.scope(&sort);
        let token = |direction, keys| {
            self.key.seal(&Cursor {
                scope: scope.clone(),
                direction,
                keys,
            })
        };
        let edge = |row: Option<&<Q::Database as sqlx::Database>::Row>| -> Result<Option<Vec<Value>>, DbError> {
            match (row, &cursor) {
                (Some(row), _) => keys_of(row).map(Some),
                // An empty page after a cursor: link back to the cursor's own key.
                (None, Some(c)) => Ok(Some(c.keys.clone())),
                (None, None) => Ok(None),
            }
        };
        let (has_next, has_prev) = if backward {
            (true, more)
        } else {
            (more, cursor.is_some())
        };
        let next_cursor = if has_next {
            edge(rows.last())?.map(|k| token(Direction::After, k))
        } else {
            None
        };
        let prev_cursor = if has_prev {
            edge(rows.first())?.map(|k| token(Direction::Before, k))
        } else {
            None
        };
        let items = rows
            .iter()
            .map(|r| T::from_row(r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeysetPage {
            items,
            next_cursor,
            prev_cursor,
        })
    }
}
