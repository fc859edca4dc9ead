//! The module's error type.

use std::fmt;

/// What went wrong, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DbErrorKind {
    /// A cursor token that is malformed, forged, expired by a key change, or issued for
    /// another table or sort order. The client's fault: answer `400`.
    InvalidCursor,
    /// A sort name that is not on the allow-list. The client's fault.
    UnknownSort,
    /// A page number, page size or limit out of range. The client's fault.
    InvalidPage,
    /// A table or column name that is not a plain identifier. The application's fault.
    InvalidIdentifier,
    /// A configuration value out of range (pool sizes, cursor key length, limits).
    InvalidConfig,
    /// The database answered with an error or could not be reached.
    Database,
}

/// Error of the `db` helpers.
///
/// Client mistakes (bad cursor, unknown sort, page out of range) are told apart from
/// database failures by [`DbError::kind`] and [`DbError::is_client_error`]; with the `axum`
/// feature the error is a response: `400` with the message for client mistakes, `500`
/// without details otherwise.
#[derive(Debug)]
pub struct DbError {
    kind: DbErrorKind,
    message: String,
    source: Option<sqlx::Error>,
}

impl DbError {
    pub(crate) fn new(kind: DbErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn cursor(message: impl Into<String>) -> Self {
        Self::new(DbErrorKind::InvalidCursor, message)
    }

    pub(crate) fn page(message: impl Into<String>) -> Self {
        Self::new(DbErrorKind::InvalidPage, message)
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(DbErrorKind::InvalidConfig, message)
    }

    /// What went wrong.
    pub fn kind(&self) -> DbErrorKind {
        self.kind
    }

    /// Whether the request was at fault (bad cursor, unknown sort, page out of range), so
    /// the message can be shown to the client.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self.kind,
            DbErrorKind::InvalidCursor | DbErrorKind::UnknownSort | DbErrorKind::InvalidPage
        )
    }

    /// The database error, for [`DbErrorKind::Database`].
    pub fn as_sqlx(&self) -> Option<&sqlx::Error> {
        self.source.as_ref()
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(err) => write!(f, "database error: {err}"),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<sqlx::Error> for DbError {
    fn from(err: sqlx::Error) -> Self {
        Self {
            kind: DbErrorKind::Database,
            message: String::new(),
            source: Some(err),
        }
    }
}
