//! Who owns which keys and tags of a store's namespace.
//!
//! The table of spaces is in the [store's docs](super#reserved-keys-and-tags).

use super::StoreError;
use super::error::cut;

/// The space a store key belongs to: one of the response cache's reserved spaces, or the
/// application's. See the [store's docs](super#reserved-keys-and-tags).
///
/// ```
/// use tower_strata::store::KeySpace;
///
/// assert_eq!(KeySpace::of("c:GET http://example.com/"), KeySpace::CacheEntry);
/// assert_eq!(KeySpace::of("product:42"), KeySpace::Application);
/// assert!(KeySpace::of("l:c:GET http://example.com/").is_reserved());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeySpace {
    /// `c:` and a request's identity: a stored response or a URL's `Vary` index.
    CacheEntry,
    /// `c#` and 32 hex digits: a stored response or `Vary` index under a hashed identity.
    HashedCacheEntry,
    /// `l:` and a fill's identity: a distributed lease.
    CacheLease,
    /// `i:` and a URL's primary key: an invalidation stamp.
    CacheStamp,
    /// Every other key.
    Application,
}

impl KeySpace {
    /// The reserved key spaces.
    pub const RESERVED: [KeySpace; 4] = [
        KeySpace::CacheEntry,
        KeySpace::HashedCacheEntry,
        KeySpace::CacheLease,
        KeySpace::CacheStamp,
    ];

    /// The space `key` belongs to.
    pub fn of(key: &str) -> KeySpace {
        Self::RESERVED
            .into_iter()
            .find(|space| key.starts_with(space.prefix()))
            .unwrap_or(KeySpace::Application)
    }

    /// The prefix every key of this space begins with (empty for the application's).
    pub const fn prefix(self) -> &'static str {
        match self {
            KeySpace::CacheEntry => "c:",
            KeySpace::HashedCacheEntry => "c#",
            KeySpace::CacheLease => "l:",
            KeySpace::CacheStamp => "i:",
            KeySpace::Application => "",
        }
    }

    /// Whether the space belongs to the crate's layers.
    pub const fn is_reserved(self) -> bool {
        !matches!(self, KeySpace::Application)
    }

    /// Whether `key` is a response cache's entry (plain or hashed): a URL's, which a purge
    /// by key removes with every variant.
    pub fn is_cache_entry(key: &str) -> bool {
        matches!(
            Self::of(key),
            KeySpace::CacheEntry | KeySpace::HashedCacheEntry
        )
    }

    /// `key` when it is the application's, else [`StoreError::ReservedKey`]: the check of
    /// the application's typed access.
    pub(crate) fn application(key: &str) -> Result<&str, StoreError> {
        match Self::of(key) {
            KeySpace::Application => Ok(key),
            space => Err(StoreError::ReservedKey {
                key: cut(key),
                space,
            }),
        }
    }

    /// The key of this space made of `rest`: the prefix, then `rest`.
    #[cfg(feature = "cache")]
    pub(crate) fn key(self, rest: &str) -> String {
        let prefix = self.prefix();
        let mut key = String::with_capacity(prefix.len() + rest.len());
        key.push_str(prefix);
        key.push_str(rest);
        key
    }
}

/// The space a tag belongs to: one of the response cache's reserved spaces (every tag that
/// begins with `~`), or the application's. See the [store's docs](super#reserved-keys-and-tags).
///
/// ```
/// use tower_strata::store::TagSpace;
///
/// assert_eq!(TagSpace::of("~principal:alice"), TagSpace::CachePrincipal);
/// assert_eq!(TagSpace::of("products"), TagSpace::Application);
/// assert!(TagSpace::of("~anything").is_reserved());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TagSpace {
    /// `~url:` and a hash of a URL's primary key: carried by every variant of the URL.
    CacheUrl,
    /// `~principal:` and a user's id: carried by every private entry of the user.
    CachePrincipal,
    /// Any other tag beginning with `~`: kept for the crate's layers.
    Reserved,
    /// Every other tag.
    Application,
}

impl TagSpace {
    /// What every reserved tag begins with.
    pub const RESERVED_PREFIX: &'static str = "~";

    /// The space `tag` belongs to.
    pub fn of(tag: &str) -> TagSpace {
        if !tag.starts_with(Self::RESERVED_PREFIX) {
            TagSpace::Application
        } else if tag.starts_with(TagSpace::CacheUrl.prefix()) {
            TagSpace::CacheUrl
        } else if tag.starts_with(TagSpace::CachePrincipal.prefix()) {
            TagSpace::CachePrincipal
        } else {
            TagSpace::Reserved
        }
    }

    /// The prefix every tag of this space begins with.
    pub const fn prefix(self) -> &'static str {
        match self {
            TagSpace::CacheUrl => "~url:",
            TagSpace::CachePrincipal => "~principal:",
            TagSpace::Reserved => Self::RESERVED_PREFIX,
            TagSpace::Application => "",
        }
    }

    /// Whether the space belongs to the crate's layers.
    pub const fn is_reserved(self) -> bool {
        !matches!(self, TagSpace::Application)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reserved_prefix_names_its_own_space() {
        for space in KeySpace::RESERVED {
            assert!(space.is_reserved());
            assert_eq!(KeySpace::of(&format!("{}x", space.prefix())), space);
            for other in KeySpace::RESERVED {
                assert!(
                    space == other || !other.prefix().starts_with(space.prefix()),
                    "{space:?} and {other:?} overlap"
                );
            }
        }
        for tag in [TagSpace::CacheUrl, TagSpace::CachePrincipal] {
            assert_eq!(TagSpace::of(&format!("{}x", tag.prefix())), tag);
        }
    }

    #[test]
    fn application_keys_and_tags_are_not_reserved() {
        for key in [
            "product:42",
            "c",
            "C:GET /",
            "cache:1",
            "user:c:1",
            "",
            "lease:1",
            "~c:x",
        ] {
            assert_eq!(KeySpace::of(key), KeySpace::Application, "{key}");
        }
        for tag in ["products", "url:x", "principal:alice", "a~b", ""] {
            assert_eq!(TagSpace::of(tag), TagSpace::Application, "{tag}");
        }
        assert!(KeySpace::is_cache_entry("c#0123"));
        assert!(!KeySpace::is_cache_entry("l:c:GET http://h/"));
    }
}
