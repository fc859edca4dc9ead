//! Checked SQL identifiers: table and column names are never spliced raw.

use std::fmt;

use super::dialect::Dialect;
use super::error::{DbError, DbErrorKind};

const MAX_PART: usize = 63;

/// A table or column name checked to be a plain identifier (`[A-Za-z_][A-Za-z0-9_]*`, at
/// most 63 characters, optionally `schema.name`), and always written quoted for the database
/// (`"name"` on PostgreSQL and SQLite, `` `name` `` on MySQL/MariaDB).
///
/// Quoting makes PostgreSQL compare names exactly: pass them as stored (lower case unless
/// the table was created with quoted mixed-case names).
///
/// ```
/// use tower_strata::db::Ident;
/// assert!(Ident::new("public.items").is_ok());
/// assert!(Ident::new("name; DROP TABLE x").is_err());
/// assert!(Ident::new("a\"b").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Ident {
    parts: Vec<String>,
}

impl Ident {
    /// Checks `name`.
    ///
    /// # Errors
    ///
    /// [`DbErrorKind::InvalidIdentifier`] for anything but one or two dot-separated plain
    /// identifiers.
    pub fn new(name: &str) -> Result<Self, DbError> {
        let parts: Vec<String> = name.split('.').map(str::to_owned).collect();
        let ok = parts.len() <= 2 && parts.iter().all(|p| is_plain(p));
        if ok {
            Ok(Self { parts })
        } else {
            Err(DbError::new(
                DbErrorKind::InvalidIdentifier,
                format!("{name:?} is not a plain SQL identifier"),
            ))
        }
    }

    /// The last part (the column or table name without its schema).
    pub(crate) fn last(&self) -> &str {
        self.parts.last().map(String::as_str).unwrap_or_default()
    }

    /// The name quoted for `DB`.
    pub fn quoted<DB: Dialect>(&self) -> String {
        let mut out = String::new();
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            out.push(DB::QUOTE);
            out.push_str(part);
            out.push(DB::QUOTE);
        }
        out
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ident({})", self.parts.join("."))
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts.join("."))
    }
}

fn is_plain(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= MAX_PART
}

pub(crate) fn idents(names: &[&str]) -> Result<Vec<Ident>, DbError> {
    names.iter().map(|n| Ident::new(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names_only() {
        for ok in ["id", "_x", "Items2", "public.items", &"a".repeat(63)] {
            assert!(Ident::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "a b",
            "a;b",
            "name; DROP TABLE x",
            "a\"b",
            "a`b",
            "a.b.c",
            "a.",
            "é",
            "a--",
            &"a".repeat(64),
        ] {
            let err = Ident::new(bad).unwrap_err();
            assert_eq!(err.kind(), DbErrorKind::InvalidIdentifier, "{bad}");
        }
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn quotes_each_part() {
        assert_eq!(
            Ident::new("s.t").unwrap().quoted::<sqlx::Sqlite>(),
            "\"s\".\"t\""
        );
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn quotes_with_backticks_on_mysql() {
        assert_eq!(Ident::new("t").unwrap().quoted::<sqlx::MySql>(), "`t`");
    }
}
