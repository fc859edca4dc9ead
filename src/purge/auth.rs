//! Who may purge over HTTP: a bearer token compared in constant time, or an app's
//! [`Authorize`] policy.

use http::header;
use http::request::Parts;
use subtle::{Choice, ConstantTimeEq};

use super::{PurgeConfigError, PurgeConfigErrorKind};

/// An authorizer's verdict on a purge request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Authorization {
    /// The request may purge; `principal` names who, for the log.
    Allow {
        /// Who is purging (a user, a service account, a key id).
        principal: String,
    },
    /// No credentials, or credentials of an unknown kind: `401 Unauthorized`.
    Unauthenticated,
    /// Credentials that do not allow purging: `403 Forbidden`.
    Forbidden,
}

impl Authorization {
    /// Allows the request, logging `principal` as who purged.
    pub fn allow(principal: impl Into<String>) -> Self {
        Authorization::Allow {
            principal: principal.into(),
        }
    }
}

/// Decides whether a purge request may purge, from its head (method, URI, headers,
/// extensions such as an authenticated user a layer in front attached). The body is not read
/// before this says yes.
///
/// Closures `Fn(&http::request::Parts) -> Authorization` implement it. It is synchronous: do
/// lookups that need I/O in a layer in front and leave the result in the extensions.
///
/// ```
/// use tower_strata::purge::{Authorization, Authorize};
///
/// let policy = |parts: &http::request::Parts| match parts.headers.get("x-role") {
///     Some(role) if role == "editor" => Authorization::allow("editor"),
///     Some(_) => Authorization::Forbidden,
///     None => Authorization::Unauthenticated,
/// };
/// let (parts, ()) = http::Request::post("/_cache/purge")
///     .header("x-role", "editor")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(policy.authorize(&parts), Authorization::allow("editor"));
/// ```
pub trait Authorize: Send + Sync + 'static {
    /// The verdict on one request.
    fn authorize(&self, request: &Parts) -> Authorization;
}

impl<F> Authorize for F
where
    F: Fn(&Parts) -> Authorization + Send + Sync + 'static,
{
    fn authorize(&self, request: &Parts) -> Authorization {
        self(request)
    }
}

/// An [`Authorize`] policy letting through requests that bear `Authorization: Bearer <token>`
/// with this one token, compared in constant time. Its `Debug` does not show the token.
///
/// ```
/// use tower_strata::purge::{BearerToken, PurgeConfigErrorKind};
///
/// assert!(BearerToken::new("s3cret").is_ok());
/// let err = BearerToken::new("two words").unwrap_err();
/// assert_eq!(err.kind(), PurgeConfigErrorKind::Token);
/// ```
#[derive(Clone)]
pub struct BearerToken(Box<[u8]>);

impl BearerToken {
    /// A policy accepting `token`.
    ///
    /// # Errors
    ///
    /// A [`PurgeConfigError`] if the token is empty or has characters a header value cannot
    /// carry after `Bearer ` (controls, spaces, non-ASCII).
    pub fn new(token: &str) -> Result<Self, PurgeConfigError> {
        let valid = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(PurgeConfigError::new(
                PurgeConfigErrorKind::Token,
                "the bearer token must be non-empty visible ASCII",
            ));
        }
        Ok(BearerToken(token.as_bytes().into()))
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// Whether `given` is the token, compared in constant time.
    pub(crate) fn matches(&self, given: &[u8]) -> bool {
        constant_time_eq(&self.0, given)
    }
}

impl Authorize for BearerToken {
    fn authorize(&self, request: &Parts) -> Authorization {
        let Some(value) = request.headers.get(header::AUTHORIZATION) else {
            return Authorization::Unauthenticated;
        };
        let value = value.as_bytes();
        let Some(given) = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| value[7..].trim_ascii())
        else {
            return Authorization::Unauthenticated;
        };
        if self.matches(given) {
            Authorization::allow("bearer")
        } else {
            Authorization::Forbidden
        }
    }
}

/// Compares in time that depends only on the expected token's length, never on where the
/// given one differs (nor on its length beyond the fact that it differs).
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut equal = Choice::from(u8::from(expected.len() == given.len()));
    for (i, byte) in expected.iter().enumerate() {
        equal &= byte.ct_eq(given.get(i).unwrap_or(&!*byte));
    }
    equal.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(authorization: Option<&str>) -> Parts {
        let mut request = http::Request::new(());
        if let Some(value) = authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, value.parse().unwrap());
        }
        request.into_parts().0
    }

    #[test]
    fn bearer_tokens() {
        let token = BearerToken::new("s3cret").unwrap();
        let verdict = |h| token.authorize(&parts(h));
        assert_eq!(
            verdict(Some("Bearer s3cret")),
            Authorization::allow("bearer")
        );
        assert_eq!(
            verdict(Some("bearer  s3cret ")),
            Authorization::allow("bearer")
        );
        assert_eq!(verdict(Some("Bearer s3cre")), Authorization::Forbidden);
        assert_eq!(verdict(Some("Bearer s3cret2")), Authorization::Forbidden);
        assert_eq!(verdict(Some("Bearer ")), Authorization::Forbidden);
        assert_eq!(
            verdict(Some("Basic s3cret")),
            Authorization::Unauthenticated
        );
        assert_eq!(verdict(Some("Bearer")), Authorization::Unauthenticated);
        assert_eq!(verdict(None), Authorization::Unauthenticated);
        assert!(BearerToken::new("").is_err());
        assert!(BearerToken::new("with space").is_err());
    }

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn authorize_is_object_safe() {
        let policy: Box<dyn Authorize> = Box::new(|_: &Parts| Authorization::Forbidden);
        assert_eq!(policy.authorize(&parts(None)), Authorization::Forbidden);
    }
}
