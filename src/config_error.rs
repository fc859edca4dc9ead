//! The one shape of every configuration error in the crate.
//!
//! Each module that can be configured wrongly names its error after itself
//! ([`TxConfigError`](crate::tx::TxConfigError), [`StoreConfigError`](crate::store::StoreConfigError),
//! [`CacheConfigError`](crate::cache::CacheConfigError), ...). All of them are a
//! [`ConfigError`] over the module's own `#[non_exhaustive]` kind enum, so a caller branches
//! on [`ConfigError::kind`], prints the error for a person, and walks
//! [`source`](std::error::Error::source) where a lower layer (a URL parser, a header parser)
//! said why. Configuration errors are reported when a value is built, never on a request.

use std::error::Error;
use std::fmt;

/// What a module's configuration-error kind enum provides: which part of the crate it belongs
/// to, for the message.
pub trait ConfigErrorKind: fmt::Debug + Copy + Send + Sync + 'static {
    /// The part of the crate, as in "invalid *cache layer* configuration".
    const COMPONENT: &'static str;
}

/// A configuration that cannot work: which kind of mistake ([`ConfigError::kind`]), what
/// exactly is wrong (the message), and the lower-level error behind it, if any
/// ([`source`](std::error::Error::source)).
///
/// ```
/// use tower_strata::cache::{CacheConfigErrorKind, CacheLayer};
/// use tower_strata::store::MemoryStore;
///
/// let err = CacheLayer::new(MemoryStore::new(1 << 20))
///     .path_prefixes(["api"])
///     .unwrap_err();
/// assert_eq!(err.kind(), CacheConfigErrorKind::PathPrefix);
/// assert_eq!(
///     err.to_string(),
///     "invalid cache layer configuration: path prefix \"api\" does not start with '/'"
/// );
/// ```
#[derive(Debug)]
pub struct ConfigError<K> {
    kind: K,
    message: String,
    source: Option<Box<dyn Error + Send + Sync + 'static>>,
}

impl<K: ConfigErrorKind> ConfigError<K> {
    // Which modules build configuration errors, and with a source, depends on the features.
    #[allow(dead_code)]
    pub(crate) fn new(kind: K, message: impl Into<String>) -> Self {
        ConfigError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The lower-level error that made this one.
    #[allow(dead_code)]
    pub(crate) fn with_source(mut self, source: impl Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Which kind of mistake this is.
    pub fn kind(&self) -> K {
        self.kind
    }

    /// What exactly is wrong, for a person (without the "invalid ... configuration" prefix).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<K: ConfigErrorKind> fmt::Display for ConfigError<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} configuration: {}",
            K::COMPONENT,
            self.message
        )
    }
}

impl<K: ConfigErrorKind> Error for ConfigError<K> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Url,
    }

    impl ConfigErrorKind for Kind {
        const COMPONENT: &'static str = "test";
    }

    #[test]
    fn the_message_names_the_component_and_the_source_is_kept() {
        let parse = "x".parse::<u8>().unwrap_err();
        let err = ConfigError::new(Kind::Url, "bad port").with_source(parse.clone());
        assert_eq!(err.kind(), Kind::Url);
        assert_eq!(err.to_string(), "invalid test configuration: bad port");
        assert_eq!(err.source().unwrap().to_string(), parse.to_string());
        assert!(ConfigError::new(Kind::Url, "x").source().is_none());
    }
}
