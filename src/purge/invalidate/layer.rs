//! [`InvalidateLayer`]: its settings and its statistics.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use futures_util::future::join_all;
use http::StatusCode;
use serde::Serialize;
use tower_layer::Layer;

use super::service::Invalidate;
use crate::purge::PurgeConfigError;
use crate::purge::Purger;
use crate::purge::rules::{CompiledRule, Rule, Targets};

type SuccessFn = dyn Fn(StatusCode) -> bool + Send + Sync;

/// A layer that purges cached entries after successful writes: by declarative [`Rule`]s, by
/// the `Cache-Group-Invalidation` header and by the [`Invalidation`](super::Invalidation)
/// extension. Place it **inside** the transaction layer; see the [purge module](crate::purge#invalidation-after-writes).
#[derive(Clone)]
pub struct InvalidateLayer {
    pub(crate) purger: Purger,
    pub(crate) rules: Arc<Vec<CompiledRule>>,
    pub(crate) success: Arc<SuccessFn>,
    pub(crate) group_header: bool,
    pub(crate) strip_group_header: bool,
    pub(crate) stats: Arc<Counters>,
}

impl fmt::Debug for InvalidateLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidateLayer")
            .field("purger", &self.purger)
            .field("rules", &self.rules.len())
            .field("group_header", &self.group_header)
            .field("strip_group_header", &self.strip_group_header)
            .finish_non_exhaustive()
    }
}

impl InvalidateLayer {
    /// A layer purging through `purger` (hard or soft, as the purger is), with no rules yet,
    /// honouring `Cache-Group-Invalidation` (kept on the response) and the
    /// [`Invalidation`](super::Invalidation) extension on 2xx answers to unsafe methods.
    pub fn new(purger: Purger) -> Self {
        InvalidateLayer {
            purger,
            rules: Arc::new(Vec::new()),
            success: Arc::new(|status: StatusCode| status.is_success()),
            group_header: true,
            strip_group_header: false,
            stats: Arc::new(Counters::default()),
        }
    }

    /// Adds a rule. Every rule whose methods and route match a request fires (not only the
    /// first).
    ///
    /// # Errors
    ///
    /// A [`PurgeConfigError`] of kind [`Rule`](crate::purge::PurgeConfigErrorKind::Rule), with the
    /// [`RuleError`](crate::purge::RuleError) as its source, when the route or a tag or key
    /// template is malformed, when a template uses a parameter the route does not define, or
    /// when the rule has no method or nothing to purge.
    pub fn rule(mut self, rule: Rule) -> Result<Self, PurgeConfigError> {
        let compiled = rule.compile()?;
        Arc::make_mut(&mut self.rules).push(compiled);
        Ok(self)
    }

    /// Adds several rules; see [`InvalidateLayer::rule`].
    ///
    /// # Errors
    ///
    /// The first bad rule's [`PurgeConfigError`].
    pub fn rules<I: IntoIterator<Item = Rule>>(self, rules: I) -> Result<Self, PurgeConfigError> {
        rules.into_iter().try_fold(self, InvalidateLayer::rule)
    }

    /// Which response statuses count as success (default: 2xx). Nothing is purged for other
    /// answers, nor when the inner service fails.
    pub fn success<F>(mut self, predicate: F) -> Self
    where
        F: Fn(StatusCode) -> bool + Send + Sync + 'static,
    {
        self.success = Arc::new(predicate);
        self
    }

    setters! {
        /// Whether to honour the `Cache-Group-Invalidation` header (default: yes).
        fn group_header(enabled: bool) => set group_header;

        /// Whether to remove `Cache-Group-Invalidation` from the response once read (default: no,
        /// so caches further out, a CDN, can honour it too, as the draft intends).
        fn strip_group_header(enabled: bool) => set strip_group_header;
    }

    /// The purger this layer purges through.
    pub fn purger(&self) -> &Purger {
        &self.purger
    }

    /// A snapshot of this layer's counters (shared by its clones and services).
    pub fn stats(&self) -> InvalidateStats {
        self.stats.snapshot()
    }
}

impl<S> Layer<S> for InvalidateLayer {
    type Service = Invalidate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Invalidate {
            inner,
            layer: self.clone(),
        }
    }
}

/// Counters of an [`InvalidateLayer`] or an [`InvalidationBus`](crate::purge::InvalidationBus).
///
/// Purges themselves are also counted in the purger's
/// [`PurgeStats`](crate::purge::PurgeStats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct InvalidateStats {
    /// Rules that fired: matched a request answered with success (counted when the purge runs,
    /// so after the commit inside a transaction), or an event.
    pub rule_firings: u64,
    /// Responses whose `Cache-Group-Invalidation` header named groups that were purged.
    pub header_invalidations: u64,
    /// Responses whose [`Invalidation`](super::Invalidation) extension was honoured.
    pub extension_invalidations: u64,
    /// Purge sets registered to run after the transaction commits (whether or not it then
    /// did).
    pub after_commit: u64,
    /// Events received (published here, or from another instance).
    pub events: u64,
    /// Event rules skipped because the payload lacked a field.
    pub skipped: u64,
    /// Single tag or key purges issued.
    pub purges: u64,
    /// Entries those purges removed or marked stale.
    pub entries_purged: u64,
    /// Purges that failed (logged at `error`; the response is unaffected).
    pub failures: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub rule_firings: AtomicU64,
    pub header_invalidations: AtomicU64,
    pub extension_invalidations: AtomicU64,
    pub after_commit: AtomicU64,
    pub events: AtomicU64,
    pub skipped: AtomicU64,
    pub purges: AtomicU64,
    pub entries_purged: AtomicU64,
    pub failures: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> InvalidateStats {
        InvalidateStats {
            rule_firings: self.rule_firings.load(Relaxed),
            header_invalidations: self.header_invalidations.load(Relaxed),
            extension_invalidations: self.extension_invalidations.load(Relaxed),
            after_commit: self.after_commit.load(Relaxed),
            events: self.events.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            purges: self.purges.load(Relaxed),
            entries_purged: self.entries_purged.load(Relaxed),
            failures: self.failures.load(Relaxed),
        }
    }
}

/// Purges every tag and key of `targets`, concurrently and each on its own, so one failure does
/// not skip the rest and a hung store costs one store timeout, not one per tag. Failures are
/// logged at `error` and counted, never returned: the write they follow has already happened,
/// and failing its response would invite a retry of a committed write.
pub(crate) async fn run(purger: Purger, targets: Targets, stats: Arc<Counters>, origin: String) {
    let record = |result: Result<u64, crate::purge::PurgeError>, what: &str, name: &str| {
        Counters::add(&stats.purges, 1);
        match result {
            Ok(n) => Counters::add(&stats.entries_purged, n),
            Err(error) => {
                Counters::add(&stats.failures, 1);
                tracing::error!(%error, what, name, origin, "invalidation: purge failed");
            }
        }
    };
    let tags = join_all(targets.tags.iter().map(|tag| purger.purge_tags([tag])));
    let keys = join_all(targets.keys.iter().map(|key| purger.purge_key(key)));
    let (tag_results, key_results) = futures_util::future::join(tags, keys).await;
    for (tag, result) in targets.tags.iter().zip(tag_results) {
        record(result, "tag", tag);
    }
    for (key, result) in targets.keys.iter().zip(key_results) {
        record(result, "key", key);
    }
    tracing::debug!(
        origin,
        tags = ?targets.tags,
        keys = ?targets.keys,
        "invalidation: purged"
    );
}
