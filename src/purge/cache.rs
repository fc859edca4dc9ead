//! URL purges through the response cache: [`CachePurger`], from [`CacheLayer::purger`].

use std::future::Future;
use std::ops::Add;

use http::{HeaderMap, Uri};

use super::{PurgeError, PurgeReport, PurgeRequest, Purger};
use crate::cache::CacheLayer;
use crate::cache::invalidate::Invalidator;
use crate::cache::{KeyPart, principal_tag};
use crate::store::{Store, StoreExt};

/// The response cache's purge handle: URLs the way the cache keys them, users' private
/// entries, and keys, tags and whole requests across the cache's stores. Patterns,
/// dependencies and stats are its shared store's [`Purger`]'s ([`CachePurger::purger`]).
/// Cheap to clone; clones share stats and dependencies.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_strata::cache::CacheLayer;
/// use tower_strata::store::MemoryStore;
///
/// let cache = CacheLayer::new(MemoryStore::new(64 << 20)).sort_query(true);
/// let purger = cache.purger();
/// // Every stored variant (`Vary`) of the page, under the cache's key rules.
/// let uri: http::Uri = "http://example.com/products?b=2&a=1".parse()?;
/// purger.purge_url(&uri, &http::HeaderMap::new()).await?;
/// purger.purge_tags(["products"]).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CachePurger {
    purger: Purger,
    invalidator: Invalidator,
    /// A purger over the cache's private store, when it has one.
    private: Option<Purger>,
}

impl std::fmt::Debug for CachePurger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachePurger")
            .field("purger", &self.purger)
            .finish_non_exhaustive()
    }
}

impl<St: StoreExt> CacheLayer<St> {
    /// A purger over this cache's store that can also purge URLs ([`CachePurger::purge_url`]).
    ///
    /// Each call makes a new [`Purger`] with its own stats and dependencies: call it once and
    /// clone the result. Key configuration set on the layer after this call is not seen by
    /// the purger.
    ///
    /// With a [`CacheLayer::private_store`], [`CachePurger::purge_principal`] reaches it too.
    pub fn purger(&self) -> CachePurger {
        let mut purger = self.purger_from(Purger::new(self.shared_store().clone()));
        purger.private = self.private_store_handle().map(|s| Purger::new(s.clone()));
        purger
    }
}

impl<St: Store> CacheLayer<St> {
    /// A [`CachePurger`] using an existing `purger` (its stats, dependencies and mode). The
    /// purger must purge this cache's store. Its key purges of cache keys (and those of the
    /// JSON `keys` list) then also forget this cache's in-process state of the URL, as
    /// [`CachePurger::purge_url`] does. It does not reach a
    /// [`CacheLayer::private_store`]: use [`CacheLayer::purger`] for that.
    pub fn purger_from(&self, purger: Purger) -> CachePurger {
        let invalidator = self.invalidator();
        CachePurger {
            purger: purger.with_cache(invalidator.clone()),
            invalidator,
            private: None,
        }
    }
}

impl CachePurger {
    /// Purges every stored response for a GET of `uri`: the plain entry, or with `Vary` every
    /// variant, with the cache's key rules (default scheme, `Host` from `headers` for an
    /// origin-form URI, query sorting and ignored parameters). A miss on that key in flight
    /// in this process is not stored. Returns how many store entries went (with `Vary`, the
    /// variant index counts as one more).
    ///
    /// Cost: one key purge and one tag purge (the variants' internal tag), whatever the number
    /// of variants.
    ///
    /// # Errors
    ///
    /// [`PurgeError::InvalidHost`] when the URI's authority (or `Host`) is not a valid
    /// `host[:port]`; the store's error, the in-process bookkeeping done all the same.
    pub async fn purge_url(&self, uri: &Uri, headers: &HeaderMap) -> Result<u64, PurgeError> {
        self.purge_url_for_part(uri, headers, None).await
    }

    /// [`CachePurger::purge_url`] for entries stored under a [`KeyPart`] (tenant, locale).
    /// Routes keyed by cookies ([`CacheLayer::key_cookies`]) take the cookie values from
    /// `headers`.
    ///
    /// # Errors
    ///
    /// As [`CachePurger::purge_url`].
    pub async fn purge_url_for_part(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        part: Option<&KeyPart>,
    ) -> Result<u64, PurgeError> {
        let key = self
            .invalidator
            .url_key(uri, headers, part)
            .map_err(|_| PurgeError::InvalidHost)?;
        // The cache's own invalidation (every variant, and the in-process state of the URL),
        // with this purger's mode, stats and dependencies.
        self.purger.purge_key(&key).await
    }

    /// Purges every private entry of `principal` ([`CacheScope::Private`]): the entries
    /// tagged [`principal_tag`], in the shared store and in the layer's private store if it
    /// has one. Returns how many entries went.
    ///
    /// Cost: one tag purge per store.
    ///
    /// # Errors
    ///
    /// The store's error (the private store is purged even when the shared one fails).
    ///
    /// [`CacheScope::Private`]: crate::cache::CacheScope::Private
    pub async fn purge_principal(&self, principal: &str) -> Result<u64, PurgeError> {
        let tag = principal_tag(principal);
        self.in_both(|purger| purger.purge_tags([tag.as_str()]), u64::add)
            .await
    }

    /// Purges one store key (see [`Purger::purge_key`]); a cache entry's key purges its URL as
    /// [`CachePurger::purge_url`] does. Returns how many entries went.
    ///
    /// # Errors
    ///
    /// As [`Purger::purge_key`].
    pub async fn purge_key(&self, key: &str) -> Result<u64, PurgeError> {
        self.in_both(|purger| purger.purge_key(key), u64::add).await
    }

    /// Purges every entry carrying any of `tags` (see [`Purger::purge_tags`]), in the shared
    /// store and in the layer's private store if it has one. Returns how many entries went.
    ///
    /// # Errors
    ///
    /// As [`Purger::purge_tags`] (the private store is purged even when the shared one fails).
    pub async fn purge_tags<I, T>(&self, tags: I) -> Result<u64, PurgeError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let tags: Vec<T> = tags.into_iter().collect();
        self.in_both(
            |purger| purger.purge_tags(tags.iter().map(AsRef::as_ref)),
            u64::add,
        )
        .await
    }

    /// Purges everything the cache stored: the shared store's namespace, and the private
    /// store if the layer has one (see [`Purger::purge_all`]).
    ///
    /// # Errors
    ///
    /// The store's error (the private store is purged even when the shared one fails).
    pub async fn purge_all(&self) -> Result<u64, PurgeError> {
        self.in_both(Purger::purge_all, u64::add).await
    }

    /// Runs a whole [`PurgeRequest`] (see [`Purger::purge`]) against the shared store and, if
    /// the layer has one, the private store; the report adds both.
    ///
    /// # Errors
    ///
    /// As [`Purger::purge`] (the private store is purged even when the shared one fails).
    pub async fn purge(&self, request: &PurgeRequest) -> Result<PurgeReport, PurgeError> {
        let both = |shared: PurgeReport, private: PurgeReport| PurgeReport {
            keys: shared.keys + private.keys,
            tags: shared.tags + private.tags,
            patterns: shared.patterns + private.patterns,
            all: shared.all + private.all,
            dependants: shared.dependants + private.dependants,
            soft: shared.soft,
        };
        self.in_both(|purger| purger.purge(request), both).await
    }

    /// Runs `purge` on the shared store's purger, then on the private store's if the layer has
    /// one (even when the shared one failed: a user's entries must not outlive a purge for an
    /// outage of the other store), and adds what both purged with `add`. A purge the shared
    /// purger refused whole ([`PurgeError::TooManyDependants`]) purges nothing anywhere.
    async fn in_both<'a, T, Fut>(
        &'a self,
        purge: impl Fn(&'a Purger) -> Fut,
        add: impl FnOnce(T, T) -> T,
    ) -> Result<T, PurgeError>
    where
        Fut: Future<Output = Result<T, PurgeError>>,
    {
        let shared = purge(&self.purger).await;
        let Some(private) = &self.private else {
            return shared;
        };
        // Refused before anything was purged: the private store is left alone too.
        if let Err(PurgeError::TooManyDependants { .. }) = shared {
            return shared;
        }
        let private = purge(private).await?;
        Ok(add(shared?, private))
    }

    /// This purger in soft mode (see [`Purger::soft`]).
    pub fn soft(&self) -> CachePurger {
        CachePurger {
            purger: self.purger.soft(),
            private: self.private.as_ref().map(Purger::soft),
            ..self.clone()
        }
    }

    /// This purger in hard mode (see [`Purger::hard`]).
    pub fn hard(&self) -> CachePurger {
        CachePurger {
            purger: self.purger.hard(),
            private: self.private.as_ref().map(Purger::hard),
            ..self.clone()
        }
    }

    /// The [`Purger`] of the shared store: patterns, dependencies ([`Purger::depend`]) and
    /// the stats are there.
    pub fn purger(&self) -> &Purger {
        &self.purger
    }
}
