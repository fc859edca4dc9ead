//! The programmatic purge handle.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::cache::invalidate::{Invalidator, purge_key as cache_purge_key};
use crate::instruments::{PurgeFigures, PurgeKind, purge_mode_str};
use crate::store::{BoxStore, KeyPattern, PurgeMode, Store, StoreError, StoreExt};

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
    /// Entries purged because they depend on a purged key or tag (see [`Purger::depend`]).
    pub dependants: u64,
    /// Whether the purge was soft.
    pub soft: bool,
}

impl PurgeReport {
    /// Every entry the purge touched.
    pub fn total(&self) -> u64 {
        self.keys + self.tags + self.patterns + self.all + self.dependants
    }
}

/// Why a purge failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PurgeError {
    /// The store refused or failed (an invalid pattern, a dead Redis...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Following dependencies from the purged keys and tags reached more targets than
    /// [`Purger::max_dependants`] allows; nothing was purged.
    #[error("purge would reach more than {limit} dependent keys and tags; nothing purged")]
    TooManyDependants {
        /// The limit that was reached.
        limit: usize,
    },
    /// The URL to purge names no valid `host[:port]` (in its authority or `Host`), so it
    /// names no cached response; nothing was purged.
    #[error("the URL's host is not a valid host[:port]; nothing purged")]
    InvalidHost,
}

/// A key or a tag: what a dependency links (see [`Purger::depend`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// One store key.
    Key(String),
    /// Every entry carrying a tag.
    Tag(String),
}

impl Target {
    /// A key target.
    pub fn key(key: impl Into<String>) -> Self {
        Target::Key(key.into())
    }

    /// A tag target.
    pub fn tag(tag: impl Into<String>) -> Self {
        Target::Tag(tag.into())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Key(key) => write!(f, "key {key}"),
            Target::Tag(tag) => write!(f, "tag {tag}"),
        }
    }
}

/// Default for [`Purger::max_dependants`].
pub const DEFAULT_MAX_DEPENDANTS: usize = 10_000;

/// Counters of every purge made through a [`Purger`] and its clones.
///
/// The dashboard serves them as they are (`dashboard::PurgeData` is this type), so their JSON
/// names and order are part of its `/data` contract.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Keys and tags purged because they depend on a purged key or tag (each also counted as
    /// a key or tag purge).
    pub dependency_expansions: u64,
}

impl PurgeStats {
    /// Purges of every kind (by key, tag, pattern, and of everything).
    pub fn total(&self) -> u64 {
        self.key_purges
            .saturating_add(self.tag_purges)
            .saturating_add(self.pattern_purges)
            .saturating_add(self.all_purges)
    }
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
    dependency_expansions: AtomicU64,
}

struct Inner {
    store: BoxStore,
    counters: Counters,
    /// Purges and entries purged on the `metrics` facade.
    figures: PurgeFigures,
    /// From a key or tag to the keys and tags that depend on it.
    dependants: RwLock<HashMap<Target, Vec<Target>>>,
    max_dependants: AtomicU64,
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
    /// The response cache whose in-process state a purge of one of its keys forgets too.
    cache: Option<Invalidator>,
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
    pub fn new(store: impl StoreExt) -> Self {
        Self::from_box(BoxStore::new(store))
    }

    /// A purger over an already type-erased store.
    pub fn from_box(store: BoxStore) -> Self {
        Purger {
            inner: Arc::new(Inner {
                store,
                counters: Counters::default(),
                figures: PurgeFigures::new(),
                dependants: RwLock::new(HashMap::new()),
                max_dependants: AtomicU64::new(DEFAULT_MAX_DEPENDANTS as u64),
            }),
            mode: PurgeMode::Hard,
            cache: None,
        }
    }

    /// This purger, telling the response cache behind `invalidator` of the cache keys it
    /// purges.
    pub(crate) fn with_cache(&self, invalidator: Invalidator) -> Purger {
        Purger {
            cache: Some(invalidator),
            ..self.clone()
        }
    }

    /// This purger in soft mode: its purges mark entries stale instead of removing them. Shares
    /// stats with `self`.
    pub fn soft(&self) -> Purger {
        self.in_mode(PurgeMode::Soft)
    }

    /// This purger in hard mode (the default). Shares stats with `self`.
    pub fn hard(&self) -> Purger {
        self.in_mode(PurgeMode::Hard)
    }

    /// This purger with the given mode. Shares stats with `self`.
    pub fn in_mode(&self, mode: PurgeMode) -> Purger {
        Purger {
            mode,
            ..self.clone()
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

    /// Purges one key, and what depends on it (see [`Purger::depend`]). Returns how many
    /// entries went: 1 or 0 for the key itself, plus its dependants'.
    ///
    /// # Errors
    ///
    /// [`PurgeError::TooManyDependants`] before anything is purged, or the first store error
    /// (what came before it was purged).
    pub async fn purge_key(&self, key: &str) -> Result<u64, PurgeError> {
        let roots = [Target::key(key)];
        let dependants = self.expand(&roots)?;
        let own = self.purge_one_key(key).await?;
        Ok(own + self.purge_dependants(&dependants).await?)
    }

    /// Purges every entry carrying any of `tags`, and what depends on them (see
    /// [`Purger::depend`]). Returns how many entries the tags and their dependants held.
    ///
    /// # Errors
    ///
    /// [`PurgeError::TooManyDependants`] before anything is purged, or the first store error
    /// (tags before it were purged).
    pub async fn purge_tags<I, T>(&self, tags: I) -> Result<u64, PurgeError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let roots: Vec<Target> = tags.into_iter().map(|t| Target::tag(t.as_ref())).collect();
        let dependants = self.expand(&roots)?;
        let mut total = 0;
        for root in &roots {
            if let Target::Tag(tag) = root {
                total += self.purge_one_tag(tag).await?;
            }
        }
        Ok(total + self.purge_dependants(&dependants).await?)
    }

    /// Purges one key, as the response cache sees keys: a cache entry's key
    /// (`c:GET http://host/path`) names a URL, whose `Vary` variants go with it.
    async fn purge_one_key(&self, key: &str) -> Result<u64, PurgeError> {
        let span = self.span(PurgeKind::Key, key);
        let result = cache_purge_key(&self.inner.store, key, self.mode, self.cache.as_ref())
            .instrument(span.clone())
            .await;
        self.count(PurgeKind::Key, &span, result)
    }

    async fn purge_one_tag(&self, tag: &str) -> Result<u64, PurgeError> {
        let span = self.span(PurgeKind::Tag, tag);
        let result = self
            .inner
            .store
            .purge_tag(tag, self.mode)
            .instrument(span.clone())
            .await;
        self.count(PurgeKind::Tag, &span, result)
    }

    async fn purge_dependants(&self, dependants: &[Target]) -> Result<u64, PurgeError> {
        let mut total = 0;
        for target in dependants {
            total += match target {
                Target::Key(key) => self.purge_one_key(key).await?,
                Target::Tag(tag) => self.purge_one_tag(tag).await?,
            };
            self.inner
                .counters
                .dependency_expansions
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(total)
    }

    /// Declares that `dependant` depends on `on`: purging `on` (by key or tag, through any
    /// clone of this purger) also purges `dependant`, and what depends on it, transitively.
    /// Cycles are fine: each key or tag is purged once per purge. Returns `false` if the
    /// dependency was already declared.
    ///
    /// Dependencies live in this purger (shared by its clones), not in the store: every
    /// instance of an application declares them at start-up. Pattern purges and purge-all do
    /// not follow them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use bytes::Bytes;
    /// use tower_strata::purge::{Purger, Target};
    /// use tower_strata::store::{MemoryStore, SetOptions, Store};
    ///
    /// let store = std::sync::Arc::new(MemoryStore::new(1 << 20));
    /// store.set("/products", Bytes::from_static(b"[..]"), &SetOptions::new().tags(["products"])).await?;
    /// let purger = Purger::new(store.clone());
    /// // The product list shows categories: when category 3 changes, the list is stale too.
    /// purger.depend(Target::tag("products"), Target::tag("category:3"));
    /// assert_eq!(purger.purge_tags(["category:3"]).await?, 1);
    /// assert!(store.get("/products").await?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn depend(&self, dependant: Target, on: Target) -> bool {
        if dependant == on {
            return false;
        }
        let mut graph = self
            .inner
            .dependants
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let list = graph.entry(on).or_default();
        if list.contains(&dependant) {
            return false;
        }
        list.push(dependant);
        true
    }

    /// Removes a dependency declared with [`Purger::depend`]. Returns whether it existed.
    pub fn undepend(&self, dependant: &Target, on: &Target) -> bool {
        let mut graph = self
            .inner
            .dependants
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let Some(list) = graph.get_mut(on) else {
            return false;
        };
        let before = list.len();
        list.retain(|t| t != dependant);
        let removed = list.len() != before;
        if list.is_empty() {
            graph.remove(on);
        }
        removed
    }

    /// Every key and tag a purge of `targets` would reach through dependencies, transitively,
    /// without `targets` themselves, in breadth-first order.
    ///
    /// # Errors
    ///
    /// [`PurgeError::TooManyDependants`] past [`Purger::max_dependants`].
    pub fn dependants_of(&self, targets: &[Target]) -> Result<Vec<Target>, PurgeError> {
        self.expand(targets)
    }

    /// Caps how many dependent keys and tags one purge may reach (default
    /// [`DEFAULT_MAX_DEPENDANTS`]); a purge that would reach more fails with
    /// [`PurgeError::TooManyDependants`] before purging anything. Shared by clones.
    pub fn max_dependants(self, limit: usize) -> Self {
        self.inner
            .max_dependants
            .store(limit as u64, Ordering::Relaxed);
        self
    }

    /// Breadth-first walk of the dependency graph from `roots`, each node once (cycles end
    /// there), bounded by the limit.
    fn expand(&self, roots: &[Target]) -> Result<Vec<Target>, PurgeError> {
        let graph = self
            .inner
            .dependants
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if graph.is_empty() {
            return Ok(Vec::new());
        }
        let limit = usize::try_from(self.inner.max_dependants.load(Ordering::Relaxed))
            .unwrap_or(usize::MAX);
        let mut seen: HashSet<&Target> = roots.iter().collect();
        let mut queue: VecDeque<&Target> = roots.iter().collect();
        let mut out = Vec::new();
        while let Some(target) = queue.pop_front() {
            for dependant in graph.get(target).into_iter().flatten() {
                if seen.insert(dependant) {
                    if out.len() >= limit {
                        return Err(PurgeError::TooManyDependants { limit });
                    }
                    out.push(dependant.clone());
                    queue.push_back(dependant);
                }
            }
        }
        Ok(out)
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
        let span = self.span(PurgeKind::Pattern, pattern.as_str());
        let result = self
            .inner
            .store
            .purge_matching(pattern, self.mode)
            .instrument(span.clone())
            .await;
        self.count(PurgeKind::Pattern, &span, result)
    }

    /// Purges everything in the store's namespace. A soft purge-all marks every entry stale.
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn purge_all(&self) -> Result<u64, PurgeError> {
        let span = self.span(PurgeKind::All, "*");
        let result = match self.mode {
            PurgeMode::Hard => self.inner.store.clear().instrument(span.clone()).await,
            PurgeMode::Soft => {
                let all = KeyPattern::glob("*")?;
                self.inner
                    .store
                    .purge_matching(&all, PurgeMode::Soft)
                    .instrument(span.clone())
                    .await
            }
        };
        self.count(PurgeKind::All, &span, result)
    }

    /// Runs a whole [`PurgeRequest`], with the request's `soft` flag overriding this handle's
    /// mode. Patterns and dependencies are all resolved before anything is purged; the keys
    /// and tags that depend on the request's keys and tags are purged too.
    ///
    /// # Errors
    ///
    /// An invalid pattern or [`PurgeError::TooManyDependants`] (nothing purged), or the first
    /// store error (what came before it was purged).
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
        let roots: Vec<Target> = request
            .keys
            .iter()
            .map(Target::key)
            .chain(request.tags.iter().map(Target::tag))
            .collect();
        let dependants = purger.expand(&roots)?;
        for key in &request.keys {
            report.keys += purger.purge_one_key(key).await?;
        }
        for tag in &request.tags {
            report.tags += purger.purge_one_tag(tag).await?;
        }
        report.dependants = purger.purge_dependants(&dependants).await?;
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
            dependency_expansions: load(&c.dependency_expansions),
        }
    }

    /// A `purge` span for one target; [`count`](Self::count) records what it purged on it.
    fn span(&self, kind: PurgeKind, target: &str) -> tracing::Span {
        tracing::debug_span!(
            "purge",
            purge.kind = kind.as_str(),
            purge.mode = purge_mode_str(self.mode),
            purge.target = target,
            purge.entries = tracing::field::Empty,
            error.type = tracing::field::Empty,
        )
    }

    /// Counts one purge in the stats and on the `metrics` facade, and records its outcome on
    /// its `purge` span.
    fn count(
        &self,
        kind: PurgeKind,
        span: &tracing::Span,
        result: Result<u64, StoreError>,
    ) -> Result<u64, PurgeError> {
        match &result {
            Ok(purged) => span.record("purge.entries", purged),
            Err(_) => span.record("error.type", "store"),
        };
        let c = &self.inner.counters;
        let counter = match kind {
            PurgeKind::Key => &c.key_purges,
            PurgeKind::Tag => &c.tag_purges,
            PurgeKind::Pattern => &c.pattern_purges,
            PurgeKind::All => &c.all_purges,
        };
        self.inner
            .figures
            .record(kind, self.mode, result.as_ref().ok().copied());
        match result {
            Ok(n) => {
                counter.fetch_add(1, Ordering::Relaxed);
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

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, SetOptions};
    use bytes::Bytes;

    async fn filled() -> (Arc<MemoryStore>, Purger) {
        let store = Arc::new(MemoryStore::new(1 << 20));
        for (key, tag) in [("a", "ta"), ("b", "tb"), ("c", "tc"), ("d", "td")] {
            store
                .set(
                    key,
                    Bytes::from_static(b"v"),
                    &SetOptions::new().tags([tag]),
                )
                .await
                .unwrap();
        }
        (store.clone(), Purger::new(store))
    }

    async fn present(store: &MemoryStore, key: &str) -> bool {
        store.get(key).await.unwrap().is_some()
    }

    #[tokio::test]
    async fn dependants_are_purged_transitively() {
        let (store, purger) = filled().await;
        // tb depends on ta, key c depends on tb, td on nothing.
        assert!(purger.depend(Target::tag("tb"), Target::tag("ta")));
        assert!(!purger.depend(Target::tag("tb"), Target::tag("ta")));
        purger.depend(Target::key("c"), Target::tag("tb"));
        assert_eq!(purger.purge_tags(["ta"]).await.unwrap(), 3);
        assert!(!present(&store, "a").await);
        assert!(!present(&store, "b").await);
        assert!(!present(&store, "c").await);
        assert!(present(&store, "d").await);
        let stats = purger.stats();
        assert_eq!(stats.dependency_expansions, 2);
        assert_eq!(stats.tag_purges, 2);
        assert_eq!(stats.key_purges, 1);
        assert_eq!(stats.entries_purged, 3);
    }

    #[tokio::test]
    async fn cycles_purge_each_target_once() {
        let (store, purger) = filled().await;
        purger.depend(Target::tag("tb"), Target::key("a"));
        purger.depend(Target::key("c"), Target::tag("tb"));
        purger.depend(Target::key("a"), Target::key("c"));
        assert_eq!(
            purger.dependants_of(&[Target::key("a")]).unwrap(),
            [Target::tag("tb"), Target::key("c")]
        );
        assert_eq!(purger.purge_key("a").await.unwrap(), 3);
        assert!(!present(&store, "c").await);
        assert!(present(&store, "d").await);
        assert_eq!(purger.stats().dependency_expansions, 2);
    }

    #[tokio::test]
    async fn expansion_is_bounded_and_purges_nothing_past_the_bound() {
        let (store, purger) = filled().await;
        let purger = purger.max_dependants(2);
        purger.depend(Target::key("b"), Target::key("a"));
        purger.depend(Target::key("c"), Target::key("b"));
        purger.depend(Target::key("d"), Target::key("c"));
        let err = purger.purge_key("a").await.unwrap_err();
        assert!(matches!(err, PurgeError::TooManyDependants { limit: 2 }));
        assert!(err.to_string().contains("nothing purged"));
        for key in ["a", "b", "c", "d"] {
            assert!(present(&store, key).await, "{key} survived");
        }
        assert!(purger.undepend(&Target::key("d"), &Target::key("c")));
        assert!(!purger.undepend(&Target::key("d"), &Target::key("c")));
        assert_eq!(purger.purge_key("a").await.unwrap(), 3);
        assert!(present(&store, "d").await);
    }

    #[tokio::test]
    async fn a_request_reports_dependants_apart() {
        let (_store, purger) = filled().await;
        purger.depend(Target::tag("td"), Target::key("a"));
        // A dependant named by the request itself is purged once, as a root.
        purger.depend(Target::tag("tb"), Target::key("a"));
        let request = PurgeRequest {
            keys: vec!["a".into()],
            tags: vec!["tb".into()],
            ..PurgeRequest::default()
        };
        let report = purger.purge(&request).await.unwrap();
        assert_eq!((report.keys, report.tags, report.dependants), (1, 1, 1));
        assert_eq!(report.total(), 3);
    }
}
