//! The allow-list of sort orders a client may ask for.

use super::dialect::KeyKind;
use super::error::{DbError, DbErrorKind};
use super::ident::Ident;

/// One column of a sort order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SortKey {
    pub(crate) column: Ident,
    pub(crate) kind: KeyKind,
}

/// The sort orders clients may ask for, by name. A request's `sort` is a name from this
/// list, optionally prefixed with `-` for descending (`name`, `-name`); anything else is
/// refused with [`DbErrorKind::UnknownSort`] and never reaches SQL.
///
/// Each order is a list of columns whose **last one is unique** (the tie-breaker, usually
/// the primary key), so that rows never tie and keyset pages neither skip nor repeat rows.
/// Sort columns must be `NOT NULL`. Keep an index on the columns in order, e.g.
/// `CREATE INDEX ON items (name, id)`, for pages to cost the same at any depth.
///
/// ```
/// use tower_strata::db::{KeyKind, Sorts};
/// let sorts = Sorts::new("id", &[("id", KeyKind::Int)])?
///     .allow("name", &[("name", KeyKind::Text), ("id", KeyKind::Int)])?;
/// assert!(sorts.check(Some("-name")).is_ok());
/// assert!(sorts.check(Some("name; DROP TABLE x")).is_err());
/// # Ok::<(), tower_strata::db::DbError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sorts {
    orders: Vec<(String, Vec<SortKey>)>,
}

/// A resolved sort: which allowed order, and whether descending.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolved<'a> {
    pub(crate) name: &'a str,
    pub(crate) keys: &'a [SortKey],
    pub(crate) descending: bool,
}

impl Sorts {
    /// An allow-list whose default order (used when the request names none) is `name` over
    /// `columns`.
    ///
    /// # Errors
    ///
    /// [`DbErrorKind::InvalidIdentifier`] for a column that is not a plain identifier,
    /// [`DbErrorKind::InvalidConfig`] for an empty column list or a bad name.
    pub fn new(name: &str, columns: &[(&str, KeyKind)]) -> Result<Self, DbError> {
        Self { orders: Vec::new() }.allow(name, columns)
    }

    /// Allows another order.
    ///
    /// # Errors
    ///
    /// As [`Sorts::new`], and for a name already allowed.
    pub fn allow(mut self, name: &str, columns: &[(&str, KeyKind)]) -> Result<Self, DbError> {
        if name.is_empty()
            || name.starts_with('-')
            || name.len() > 64
            || self.orders.iter().any(|(n, _)| n == name)
        {
            return Err(DbError::config(format!(
                "bad or duplicate sort name {name:?}"
            )));
        }
        if columns.is_empty() {
            return Err(DbError::config(format!("sort {name:?} has no columns")));
        }
        let keys = columns
            .iter()
            .map(|(c, kind)| {
                Ok(SortKey {
                    column: Ident::new(c)?,
                    kind: *kind,
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        self.orders.push((name.to_owned(), keys));
        Ok(self)
    }

    /// Finds the order a request asks for (`None`: the default, ascending).
    ///
    /// # Errors
    ///
    /// [`DbErrorKind::UnknownSort`] naming the allowed orders.
    pub fn check(&self, sort: Option<&str>) -> Result<(), DbError> {
        self.resolve(sort).map(|_| ())
    }

    pub(crate) fn resolve(&self, sort: Option<&str>) -> Result<Resolved<'_>, DbError> {
        let Some(sort) = sort else {
            let (name, keys) = &self.orders[0];
            return Ok(Resolved {
                name,
                keys,
                descending: false,
            });
        };
        let (descending, wanted) = match sort.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, sort),
        };
        self.orders
            .iter()
            .find(|(n, _)| n == wanted)
            .map(|(name, keys)| Resolved {
                name,
                keys,
                descending,
            })
            .ok_or_else(|| {
                let allowed: Vec<&str> = self.orders.iter().map(|(n, _)| n.as_str()).collect();
                let shown: String = sort.chars().take(64).collect();
                DbError::new(
                    DbErrorKind::UnknownSort,
                    format!(
                        "unknown sort {shown:?}; allowed: {} (prefix with - for descending)",
                        allowed.join(", ")
                    ),
                )
            })
    }
}
