//! Who a stored response may be served to: [`CacheScope`], the request extension that opts a
//! route into per-user (private) caching, and [`principal_tag`], the tag its entries carry.
//! A leaf of the module: the steps read the scope, this file only names it.

use std::fmt::Write as _;

/// Whose response the cache may store for a request: everyone's ([`CacheScope::Shared`], the
/// default when the extension is absent) or one principal's ([`CacheScope::Private`]).
///
/// An auth layer in front of the cache (or the router) inserts it once it knows who the
/// request is for; the cache trusts it as given and never reads credentials to find a
/// principal. In the private scope:
///
/// - the principal is part of the key (a length-prefixed field, so no principal, key part or
///   cookie can spell another), so a private entry is never served to another principal or to
///   a request without the scope;
/// - responses a shared cache must not store are storable: `Cache-Control: private`, answers
///   to requests with `Authorization` (RFC 9111 §5.2.2.7, §3.5); `s-maxage` is ignored as a
///   private cache ignores it. `no-store` and `Set-Cookie` still forbid storing;
/// - requests with `Cookie` are looked up (the principal, not the cookie, keys them);
/// - entries carry [`principal_tag`] and live in [`CacheLayer::private_store`] when one is
///   set, so one user cannot evict the shared entries.
///
/// The principal is never logged nor used as a metric label; `Debug` does not print it.
///
/// ```
/// use tower_strata::cache::CacheScope;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(CacheScope::private("user-42"));
/// assert_eq!(request.extensions().get::<CacheScope>().unwrap().principal(), Some("user-42"));
/// ```
///
/// [`CacheLayer::private_store`]: super::CacheLayer::private_store
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub enum CacheScope {
    /// Shared-cache rules (RFC 9111): what the cache does without the extension.
    #[default]
    Shared,
    /// Per-principal entries: the principal's id (a user id, a tenant-and-user pair).
    Private(String),
}

impl CacheScope {
    /// The private scope of `principal`.
    pub fn private(principal: impl Into<String>) -> Self {
        CacheScope::Private(principal.into())
    }

    /// The principal of a private scope, `None` for the shared one.
    pub fn principal(&self) -> Option<&str> {
        match self {
            CacheScope::Shared => None,
            CacheScope::Private(principal) => Some(principal),
        }
    }

    /// The principal a request's scope names, if any.
    pub(crate) fn of<B>(request: &http::Request<B>) -> Option<&str> {
        request
            .extensions()
            .get::<CacheScope>()
            .and_then(CacheScope::principal)
    }
}

impl std::fmt::Debug for CacheScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheScope::Shared => f.write_str("Shared"),
            // Principals identify people: they stay out of logs.
            CacheScope::Private(_) => f.write_str("Private(..)"),
        }
    }
}

/// The tag every private entry of `principal` carries: `~principal:` (a reserved
/// [`TagSpace`](crate::store::TagSpace)) and the id, with `%`,
/// whitespace and control characters percent-encoded (tags hold none). Purge it to remove
/// one user's entries: [`Purger::purge_tags`](crate::purge::Purger::purge_tags) over the store
/// that holds them, or `CachePurger::purge_principal`, which reaches the private store too.
///
/// ```
/// assert_eq!(tower_strata::cache::principal_tag("u 1"), "~principal:u%201");
/// ```
pub fn principal_tag(principal: &str) -> String {
    let mut tag = String::with_capacity(PRINCIPAL_TAG_PREFIX.len() + principal.len());
    tag.push_str(PRINCIPAL_TAG_PREFIX);
    for c in principal.chars() {
        if c == '%' || c.is_whitespace() || c.is_control() {
            let mut bytes = [0; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                let _ = write!(tag, "%{b:02X}");
            }
        } else {
            tag.push(c);
        }
    }
    tag
}

const PRINCIPAL_TAG_PREFIX: &str = crate::store::TagSpace::CachePrincipal.prefix();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_principal() {
        assert_eq!(format!("{:?}", CacheScope::private("alice")), "Private(..)");
        assert_eq!(CacheScope::default(), CacheScope::Shared);
    }

    #[test]
    fn principal_tags_are_valid_tags_and_distinct() {
        assert_eq!(principal_tag("42"), "~principal:42");
        assert_eq!(principal_tag("a%20"), "~principal:a%2520");
        assert_ne!(principal_tag("a b"), principal_tag("a%20b"));
        assert!(!principal_tag("a\tb\n").contains(char::is_whitespace));
    }
}
