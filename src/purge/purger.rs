//! The programmatic purge handle.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::store::{BoxStore, KeyPattern, PurgeMode, Store, StoreError};

/// What to purge, as one request: the body of the JSON purge endpoint.
///
/// ```
/// use tower_strata::purge::PurgeRequest;
///
/// let request: PurgeRequest =
///     serde_json::from_str(r#"{"tags":["product:42"],"soft":true}"#).unwrap();
/// assert_eq!(request.tags, ["product:42"]);
/// assert!(request.soft);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PurgeRequest {
    /// Store keys to purge.
    pub keys: Vec<String>,
    /// Tags whose entries to purge.
    pub tags: Vec<String>,
    /// Glob patterns (Redis `MATCH` syntax) of keys to purge.
    pub patterns: Vec<String>,
    /// Regular expressions of keys to purge.
    pub regexes: Vec<String>,
    /// Purge everything.
    pub all: bool,
    /// Mark stale instead of removing (see [`PurgeMode::Soft`]).
    pub soft: bool,
}

/// How many entries a purge touched, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeReport {
    /// Entries purged by key.
    pub keys: u64,
    /// Entries purged by tag.
    pub tags: u64,
    /// Entries purged by glob or regular expression.
    pub patterns: u64,
    /// Entries purged by a purge-all.
    pub all: u64,
    /// Whether the purge was soft.
    pub soft: bool,
}

impl PurgeReport {
    /// Every entry the purge touched.
    pub fn total(&self) -> u64 {
        self.keys + self.tags + self.patterns + self.all
    }
}

/// Why a purge failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PurgeError {
    /// The store refused or failed (an invalid pattern, a dead Redis...).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counters of every purge made through a [`Purger`] and its clones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeStats {
    /// Purges by key.
    pub key_purges: u64,
    /// Purges by tag.
    pub tag_purges: u64,
    /// Purges by pattern (glob or regular expression).
    pub pattern_purges: u64,
    /// Purges of everything.
    pub all_purges: u64,
    /// Of all purges, soft ones.
    pub soft_purges: u64,
    /// Entries removed or marked stale.
    pub entries_purged: u64,
    /// Purges that failed.
    pub failures: u64,
}

#[derive(Default)]
struct Counters {
    key_purges: AtomicU64,
    tag_purges: AtomicU64,
    pattern_purges: AtomicU64,
    all_purges: AtomicU64,
    soft_purges: AtomicU64,
    entries_purged: AtomicU64,
    failures: AtomicU64,
}

struct Inner {
    store: BoxStore,
    counters: Counters,
}

/// A cloneable handle that purges a store's entries, hard or soft.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use bytes::Bytes;
/// use tower_strata::purge::Purger;
/// use tower_strata::store::{MemoryStore, SetOptions, Store};
///
/// let store = std::sync::Arc::new(MemoryStore::new(1 << 20));
/// let options = SetOptions::new().ttl(Duration::from_secs(60)).tags(["products"]);
/// store.set("product:1", Bytes::from_static(b"{}"), &options).await?;
///
/// let purger = Purger::new(store.clone());
/// assert_eq!(purger.purge_tags(["products"]).await?, 1);
/// assert!(store.get("product:1").await?.is_none());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Purger {
    inner: Arc<Inner>,
    mode: PurgeMode,
}

impl fmt::Debug for Purger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Purger")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Purger {
    /// A purger over `store` (share the store: pass an `Arc` or a clone of a cheap handle).
    pub fn new(store: impl Store) -> Self {
        Self::from_box(BoxStore::new(store))
    }

    /// A purger over an already type-erased store.
    pub fn from_box(store: BoxStore) -> Self {
        Purger {
            inner: Arc::new(Inner {
                store,
                counters: Counters::default(),
            }),
            mode: PurgeMode::Hard,
        }
    }

    /// This purger in soft mode: its purges mark entries stale instead of removing them. Shares
    /// stats with `self`.
    pub fn soft(&self) -> Purger {
        self.with_mode(PurgeMode::Soft)
    }

    /// This purger in hard mode (the default). Shares stats with `self`.
    pub fn hard(&self) -> Purger {
        self.with_mode(PurgeMode::Hard)
    }

    /// This purger with the given mode. Shares stats with `self`.
    pub fn with_mode(&self, mode: PurgeMode) -> Purger {
        Purger {
            inner: self.inner.clone(),
            mode,
        }
    }

    /// The mode this handle purges with.
    pub fn mode(&self) -> PurgeMode {
        self.mode
    }

    /// The store this purger purges.
    pub fn store(&self) -> &BoxStore {
        &self.inner.store
    }

    /// Purges one key. Returns 1 if an entry was there, else 0.
    ///
    /// # Errors
    ///
    /// The store's error; nothing is counted as purged.
    pub async fn purge_key(&self, key: &str) -> Result<u64, PurgeError> {
        let c = &self.inner.counters;
        let result = self
            .inner
            .store
            .purge_key(key, self.mode)
            .await
            .map(u64::from);
        self.count(&c.key_purges, result)
    }

    /// Purges every entry carrying any of `tags`. Returns how many entries the tags held.
    ///
    /// # Errors
    ///
    /// The first store error; tags before it were purged.
    pub async fn purge_tags<I, T>(&self, tags: I) -> Result<u64, PurgeError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let mut total = 0;
        for tag in tags {
            let result = self.inner.store.purge_tag(tag.as_ref(), self.mode).await;
            total += self.count(&self.inner.counters.tag_purges, result)?;
        }
        Ok(total)
    }

    /// Purges every key matching a glob (Redis `MATCH` syntax). Returns how many went.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidPattern`] before anything is purged if the glob is malformed.
    pub async fn purge_matching(&self, glob: &str) -> Result<u64, PurgeError> {
        let pattern = KeyPattern::glob(glob)?;
        self.purge_pattern(&pattern).await
    }

    /// Purges every key matching a regular expression. Returns how many went.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidPattern`] before anything is purged if the expression is malformed
    /// or too large.
    pub async fn purge_regex(&self, regex: &str) -> Result<u64, PurgeError> {
        let pattern = KeyPattern::regex(regex)?;
        self.purge_pattern(&pattern).await
    }

    /// Purges every key matching a parsed pattern.
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn purge_pattern(&self, pattern: &KeyPattern) -> Result<u64, PurgeError> {
        let result = self.inner.store.purge_matching(pattern, self.mode).await;
        self.count(&self.inner.counters.pattern_purges, result)
    }

    /// Purges everything in the store's namespace. A soft purge-all marks every entry stale.
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn purge_all(&self) -> Result<u64, PurgeError> {
        let result = match self.mode {
            PurgeMode::Hard => self.inner.store.clear().await,
            PurgeMode::Soft => {
                let all = KeyPattern::glob("*")?;
                self.inner.store.purge_matching(&all, PurgeMode::Soft).await
            }
        };
        self.count(&self.inner.counters.all_purges, result)
    }

    /// Runs a whole [`PurgeRequest`], with the request's `soft` flag overriding this handle's
    /// mode. Patterns are all validated before anything is purged.
    ///
    /// # Errors
    ///
    /// An invalid pattern (nothing purged), or the first store error (what came before it was
    /// purged).
    pub async fn purge(&self, request: &PurgeRequest) -> Result<PurgeReport, PurgeError> {
        let purger = if request.soft {
            self.soft()
        } else {
            self.clone()
        };
        let mut patterns = Vec::with_capacity(request.patterns.len() + request.regexes.len());
        for glob in &request.patterns {
            patterns.push(KeyPattern::glob(glob)?);
        }
        for regex in &request.regexes {
            patterns.push(KeyPattern::regex(regex)?);
        }
        let mut report = PurgeReport {
            soft: purger.mode == PurgeMode::Soft,
            ..PurgeReport::default()
        };
        for key in &request.keys {
            report.keys += purger.purge_key(key).await?;
        }
        report.tags = purger.purge_tags(&request.tags).await?;
        for pattern in &patterns {
            report.patterns += purger.purge_pattern(pattern).await?;
        }
        if request.all {
            report.all = purger.purge_all().await?;
        }
        Ok(report)
    }

    /// A snapshot of the counters shared by this purger and its clones.
    pub fn stats(&self) -> PurgeStats {
        let c = &self.inner.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PurgeStats {
            key_purges: load(&c.key_purges),
            tag_purges: load(&c.tag_purges),
            pattern_purges: load(&c.pattern_purges),
            all_purges: load(&c.all_purges),
            soft_purges: load(&c.soft_purges),
            entries_purged: load(&c.entries_purged),
            failures: load(&c.failures),
        }
    }

    fn count(&self, kind: &AtomicU64, result: Result<u64, StoreError>) -> Result<u64, PurgeError> {
        let c = &self.inner.counters;
        match result {
            Ok(n) => {
                kind.fetch_add(1, Ordering::Relaxed);
                if self.mode == PurgeMode::Soft {
                    c.soft_purges.fetch_add(1, Ordering::Relaxed);
                }
                c.entries_purged.fetch_add(n, Ordering::Relaxed);
                Ok(n)
            }
            Err(error) => {
                c.failures.fetch_add(1, Ordering::Relaxed);
                Err(error.into())
            }
        }
    }
}
