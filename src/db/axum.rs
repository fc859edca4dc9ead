//! axum glue: [`PageRequest`] and [`CursorRequest`] as extractors, [`DbError`] as a response.

use axum::extract::{FromRequestParts, Query};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use super::error::DbError;
use super::page::{CursorRequest, DEFAULT_MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE, PageRequest};

const MAX_CURSOR_LEN: usize = 16 * 1024;

/// Page size rules for the extractors: put one in the request extensions (axum
/// `Extension(PageLimits { .. })` as a layer) to change them; without one,
/// [`PageLimits::default`] applies (`20`, at most `100`). Keep `max_size` equal to the
/// [`Pager::max_page_size`](super::Pager::max_page_size) the handler uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    /// Page size when the request gives none.
    pub default_size: u32,
    /// Largest page size accepted.
    pub max_size: u32,
}

impl Default for PageLimits {
    fn default() -> Self {
        Self {
            default_size: DEFAULT_PAGE_SIZE,
            max_size: DEFAULT_MAX_PAGE_SIZE,
        }
    }
}

/// Rejection of the pagination extractors: `400 Bad Request` with a message naming the
/// parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRejection {
    message: String,
}

impl PageRejection {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message sent to the client.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for PageRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PageRejection {}

impl IntoResponse for PageRejection {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.message).into_response()
    }
}

/// `400` with the message for client mistakes (bad cursor, unknown sort, page out of
/// range); `500` without details for everything else (logged at `ERROR`).
impl IntoResponse for DbError {
    fn into_response(self) -> Response {
        if self.is_client_error() {
            (StatusCode::BAD_REQUEST, self.to_string()).into_response()
        } else {
            tracing::error!(target: "tower_strata::db", error = %self, "database helper failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

struct Params {
    pairs: Vec<(String, String)>,
    limits: PageLimits,
}

impl Params {
    async fn from_parts<S: Send + Sync>(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Self, PageRejection> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| PageRejection::new(format!("invalid query string: {e}")))?;
        let limits = parts
            .extensions
            .get::<PageLimits>()
            .copied()
            .unwrap_or_default();
        Ok(Self { pairs, limits })
    }

    /// The value of `name`, refusing it given twice.
    fn get(&self, name: &str) -> Result<Option<&str>, PageRejection> {
        let mut found = self.pairs.iter().filter(|(k, _)| k == name);
        let first = found.next();
        if found.next().is_some() {
            return Err(PageRejection::new(format!(
                "`{name}` is given more than once"
            )));
        }
        Ok(first.map(|(_, v)| v.as_str()))
    }

    fn refuse(&self, name: &str, hint: &str) -> Result<(), PageRejection> {
        match self.get(name)? {
            Some(_) => Err(PageRejection::new(format!(
                "`{name}` is not accepted here; {hint}"
            ))),
            None => Ok(()),
        }
    }

    fn size(&self, name: &str) -> Result<u32, PageRejection> {
        let max = self.limits.max_size;
        match self.get(name)? {
            None => Ok(self.limits.default_size.min(max)),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(PageRejection::new(format!(
                    "`{name}` must be a whole number from 1 to {max}"
                ))),
            },
        }
    }

    fn sort(&self) -> Result<Option<String>, PageRejection> {
        let Some(v) = self.get("sort")? else {
            return Ok(None);
        };
        let name = v.strip_prefix('-').unwrap_or(v);
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if ok {
            Ok(Some(v.to_owned()))
        } else {
            Err(PageRejection::new(
                "`sort` must be a sort name, optionally prefixed with `-` for descending",
            ))
        }
    }
}

/// Reads `page` (1-based, default 1), `page_size` (default and maximum from
/// [`PageLimits`]) and `sort` from the query string; a bad value, a repeated parameter or a
/// `cursor` answers `400` with a message. Whether the sort is allowed is checked by the
/// [`Pager`](super::Pager) (its error is a `400` too).
impl<S: Send + Sync> FromRequestParts<S> for PageRequest {
    type Rejection = PageRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let p = Params::from_parts(parts, state).await?;
        p.refuse("cursor", "this list is paged by `page` and `page_size`")?;
        let page = match p.get("page")? {
            None => 1,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n >= 1 && n <= i64::MAX as u64 => n,
                _ => return Err(PageRejection::new("`page` must be a whole number from 1")),
            },
        };
        Ok(PageRequest {
            page,
            page_size: p.size("page_size")?,
            sort: p.sort()?,
        })
    }
}

/// Reads `cursor` (an opaque token), `limit` (default and maximum from [`PageLimits`]) and
/// `sort` from the query string; a bad value, a repeated parameter or a `page` answers
/// `400` with a message. The token's signature is checked by the
/// [`Pager`](super::Pager) (its error is a `400` too).
impl<S: Send + Sync> FromRequestParts<S> for CursorRequest {
    type Rejection = PageRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let p = Params::from_parts(parts, state).await?;
        p.refuse("page", "this list is paged by `cursor` and `limit`")?;
        let cursor = match p.get("cursor")? {
            None | Some("") => None,
            Some(v)
                if v.len() <= MAX_CURSOR_LEN
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                Some(v.to_owned())
            }
            Some(_) => return Err(PageRejection::new("`cursor` is not a valid cursor token")),
        };
        Ok(CursorRequest {
            cursor,
            limit: p.size("limit")?,
            sort: p.sort()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DbErrorKind;

    async fn page(uri: &str) -> Result<PageRequest, PageRejection> {
        let (mut parts, ()) = http::Request::get(uri).body(()).unwrap().into_parts();
        PageRequest::from_request_parts(&mut parts, &()).await
    }

    async fn cursor(uri: &str, limits: Option<PageLimits>) -> Result<CursorRequest, PageRejection> {
        let mut req = http::Request::get(uri).body(()).unwrap();
        if let Some(l) = limits {
            req.extensions_mut().insert(l);
        }
        let (mut parts, ()) = req.into_parts();
        CursorRequest::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn page_params_are_parsed_with_defaults() {
        assert_eq!(page("/items").await.unwrap(), PageRequest::default());
        let p = page("/items?page=3&page_size=50&sort=-name&q=x")
            .await
            .unwrap();
        assert_eq!(
            (p.page, p.page_size, p.sort.as_deref()),
            (3, 50, Some("-name"))
        );
    }

    #[tokio::test]
    async fn bad_page_params_are_400_with_a_message() {
        for (uri, needle) in [
            ("/i?page=0", "`page`"),
            ("/i?page=-1", "`page`"),
            ("/i?page=abc", "`page`"),
            ("/i?page_size=101", "from 1 to 100"),
            ("/i?page_size=0", "`page_size`"),
            ("/i?page=1&page=2", "more than once"),
            ("/i?sort=name%3B%20DROP%20TABLE%20x", "`sort`"),
            ("/i?sort=-", "`sort`"),
            ("/i?cursor=abc", "not accepted"),
        ] {
            let err = page(uri).await.unwrap_err();
            assert!(err.message().contains(needle), "{uri}: {err}");
            assert_eq!(err.into_response().status(), StatusCode::BAD_REQUEST);
        }
    }

    #[tokio::test]
    async fn cursor_params_honour_limits_from_extensions() {
        let limits = PageLimits {
            default_size: 5,
            max_size: 10,
        };
        let c = cursor("/i?cursor=abc-_9", Some(limits)).await.unwrap();
        assert_eq!((c.cursor.as_deref(), c.limit), (Some("abc-_9"), 5));
        assert!(cursor("/i?limit=11", Some(limits)).await.is_err());
        assert_eq!(cursor("/i?limit=11", None).await.unwrap().limit, 11);
        for uri in ["/i?cursor=a%27b", "/i?page=2", "/i?limit=x"] {
            let err = cursor(uri, None).await.unwrap_err();
            assert_eq!(
                err.into_response().status(),
                StatusCode::BAD_REQUEST,
                "{uri}"
            );
        }
    }

    #[test]
    fn db_errors_map_to_400_or_500() {
        let client = DbError::cursor("invalid cursor: signature mismatch");
        assert_eq!(client.into_response().status(), StatusCode::BAD_REQUEST);
        let server = DbError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(server.kind(), DbErrorKind::Database);
        assert_eq!(
            server.into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
