//! What the cache did with a request, as one value: [`Outcome`]. It is rendered as the
//! response's RFC 9211 `Cache-Status` and counted in [`CacheStats`](super::CacheStats) by the
//! methods here, and nowhere else, so the header a client sees, the counters an operator
//! reads and the metrics always agree.
//!
//! A leaf of the module: the steps decide an outcome, this file spells and counts it.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::ctx::Ctx;
use super::state::Shared;
use crate::instruments::CacheFigures;

/// The `Cache-Status` field name (RFC 9211).
pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The cache's name in `Cache-Status`.
const CACHE_NAME: &str = "tower-strata";

/// What the cache did with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered from a fresh stored response, with the seconds of freshness it has left.
    Hit { ttl_left: Option<u64> },
    /// A hit in the entry's refresh-ahead window: served, and refreshed in the background.
    RefreshAhead { ttl_left: Option<u64> },
    /// Answered from a stale stored response without waiting for upstream.
    Stale(StaleReason),
    /// Answered with the response another request's miss fetched.
    Coalesced(Coalescing),
    /// Went upstream: a miss, or a stale entry that had to be fetched again.
    Forward(Forward),
    /// A stale stored response that upstream validated with a `304`.
    Revalidated,
    /// Upstream did not answer within the upstream timeout, and nothing stale could stand in.
    TimedOut,
    /// Not looked up: a method, route, cookie or request directive the cache does not serve.
    Bypass,
    /// The request's host is not a valid `host[:port]`: answered `400`, never keyed.
    InvalidHost,
}

/// Why a stale response was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StaleReason {
    /// Within stale-while-revalidate: refreshed in the background.
    WhileRevalidate,
    /// Within stale-if-error: upstream failed, timed out or answered 5xx.
    IfError,
    /// Another instance holds the distributed lease and is fetching it.
    DuringRemoteFetch,
}

/// Where the response another request fetched came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coalescing {
    /// A miss in flight in this process.
    InProcess,
    /// Another instance's, read from the shared store after its lease.
    Remote,
}

/// A request that went upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Forward {
    /// Whether a stale entry was found (`fwd=stale`) or none (`fwd=miss`).
    pub stale: bool,
    /// Whether the response is being stored (`stored`).
    pub stored: bool,
    /// Whether the store failed the lookup (`detail=store-error`): nothing is written.
    pub store_failed: bool,
}

impl Forward {
    /// A miss (nothing usable stored), not stored yet.
    pub(crate) const fn miss(store_failed: bool) -> Self {
        Forward {
            stale: false,
            stored: false,
            store_failed,
        }
    }
}

impl Outcome {
    /// Every kind of outcome once, for tests that check each renders and counts.
    #[cfg(test)]
    const ALL: [Outcome; 17] = [
        Outcome::Hit { ttl_left: Some(42) },
        Outcome::Hit { ttl_left: None },
        Outcome::RefreshAhead { ttl_left: Some(3) },
        Outcome::Stale(StaleReason::WhileRevalidate),
        Outcome::Stale(StaleReason::IfError),
        Outcome::Stale(StaleReason::DuringRemoteFetch),
        Outcome::Coalesced(Coalescing::InProcess),
        Outcome::Coalesced(Coalescing::Remote),
        Outcome::Forward(Forward {
            stale: false,
            stored: true,
            store_failed: false,
        }),
        Outcome::Forward(Forward::miss(false)),
        Outcome::Forward(Forward::miss(true)),
        Outcome::Forward(Forward {
            stale: true,
            stored: false,
            store_failed: false,
        }),
        Outcome::Forward(Forward {
            stale: true,
            stored: true,
            store_failed: false,
        }),
        Outcome::Revalidated,
        Outcome::TimedOut,
        Outcome::Bypass,
        Outcome::InvalidHost,
    ];

    /// The `Cache-Status` parameters after the cache's name (RFC 9211 §2).
    fn parameters(&self) -> std::borrow::Cow<'static, str> {
        let text = match *self {
            Outcome::Hit {
                ttl_left: Some(ttl),
            } => return format!("hit; ttl={ttl}").into(),
            Outcome::Hit { ttl_left: None } => "hit",
            Outcome::RefreshAhead {
                ttl_left: Some(ttl),
            } => return format!("hit; ttl={ttl}; detail=refresh-ahead").into(),
            Outcome::RefreshAhead { ttl_left: None } => "hit; detail=refresh-ahead",
            Outcome::Stale(StaleReason::WhileRevalidate) => "hit; detail=stale-while-revalidate",
            Outcome::Stale(StaleReason::IfError) => "hit; detail=stale-if-error",
            Outcome::Stale(StaleReason::DuringRemoteFetch) => {
                "hit; detail=stale-during-remote-fetch"
            }
            Outcome::Coalesced(Coalescing::InProcess) => "hit; detail=coalesced",
            Outcome::Coalesced(Coalescing::Remote) => "hit; detail=coalesced-remote",
            Outcome::Forward(Forward {
                store_failed: true, ..
            }) => "fwd=miss; detail=store-error",
            Outcome::Forward(Forward { stale, stored, .. }) => match (stale, stored) {
                (false, false) => "fwd=miss",
                (false, true) => "fwd=miss; stored",
                (true, false) => "fwd=stale",
                (true, true) => "fwd=stale; stored",
            },
            Outcome::Revalidated => "fwd=stale; fwd-status=304",
            Outcome::TimedOut => "fwd=miss; detail=timeout",
            Outcome::Bypass => "fwd=bypass",
            Outcome::InvalidHost => "detail=invalid-host",
        };
        text.into()
    }

    /// The `Cache-Status` value, whatever the layer's settings.
    pub(crate) fn header_value(&self) -> HeaderValue {
        let value = format!("{CACHE_NAME}; {}", self.parameters());
        // Every spelling above is visible ASCII.
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(CACHE_NAME))
    }

    /// The `Cache-Status` value, `None` when the layer sends none.
    pub(crate) fn status_value<St>(&self, ctx: &Ctx<St>) -> Option<HeaderValue> {
        ctx.config.cache_status.then(|| self.header_value())
    }

    /// Adds this outcome's `Cache-Status` to a response's headers, if the layer sends it.
    pub(crate) fn add_to<St>(&self, ctx: &Ctx<St>, headers: &mut HeaderMap) {
        if let Some(value) = self.status_value(ctx) {
            headers.append(CACHE_STATUS.clone(), value);
        }
    }

    /// The metric labels (`outcome`, `reason`) of every outcome, in [`Outcome::figure`]'s
    /// order: a small fixed set, so the metric's label sets are bounded.
    pub(crate) const FIGURES: [(&'static str, &'static str); 16] = [
        ("hit", "fresh"),
        ("stale", "stale-while-revalidate"),
        ("stale", "stale-if-error"),
        ("stale", "remote-fetch"),
        ("coalesced", "in-process"),
        ("coalesced", "remote"),
        ("miss", "stored"),
        ("miss", "not-stored"),
        ("miss", "store-error"),
        ("miss", "refetch-stored"),
        ("miss", "refetch-not-stored"),
        ("miss", "revalidated"),
        ("miss", "timeout"),
        ("bypass", "request"),
        ("bypass", "invalid-host"),
        ("hit", "refresh-ahead"),
    ];

    /// This outcome's index in [`Outcome::FIGURES`].
    pub(crate) fn figure(&self) -> usize {
        match *self {
            Outcome::Hit { .. } => 0,
            Outcome::Stale(StaleReason::WhileRevalidate) => 1,
            Outcome::Stale(StaleReason::IfError) => 2,
            Outcome::Stale(StaleReason::DuringRemoteFetch) => 3,
            Outcome::Coalesced(Coalescing::InProcess) => 4,
            Outcome::Coalesced(Coalescing::Remote) => 5,
            Outcome::Forward(Forward {
                store_failed: true, ..
            }) => 8,
            Outcome::Forward(Forward { stale, stored, .. }) => match (stale, stored) {
                (false, true) => 6,
                (false, false) => 7,
                (true, true) => 9,
                (true, false) => 10,
            },
            Outcome::Revalidated => 11,
            Outcome::TimedOut => 12,
            Outcome::Bypass => 13,
            Outcome::InvalidHost => 14,
            Outcome::RefreshAhead { .. } => 15,
        }
    }

    /// Counts this outcome: every request the cache looked at counts once, in one counter of
    /// [`CacheStats`](super::CacheStats) and in the `strata.cache.requests` metric.
    pub(crate) fn count(&self, shared: &Shared) {
        self.count_for(shared, None);
    }

    /// [`Outcome::count`], and the request's key hash recorded on its span in the same look
    /// at the span (the fast hit path, which knows the key only there).
    pub(crate) fn count_for(&self, shared: &Shared, key: Option<&str>) {
        let figure = self.figure();
        shared.figures.request(figure);
        let (outcome, reason) = Self::FIGURES[figure];
        on_span(|span| {
            span.record("cache.outcome", &outcome);
            span.record("cache.reason", &reason);
            if let Some(key) = key {
                span.record_key(key);
            }
        });
        let counter = match self {
            Outcome::Hit { .. } | Outcome::RefreshAhead { .. } => &shared.hits,
            Outcome::Stale(_) => &shared.stale_hits,
            Outcome::Coalesced(_) => &shared.coalesced,
            Outcome::Forward(_) | Outcome::Revalidated | Outcome::TimedOut => &shared.misses,
            Outcome::Bypass => &shared.bypasses,
            Outcome::InvalidHost => &shared.invalid_hosts,
        };
        Shared::count(counter);
    }

    /// [`Outcome::count`] and [`Outcome::add_to`]: what most paths do with their outcome.
    pub(crate) fn record<St>(&self, ctx: &Ctx<St>, headers: &mut HeaderMap) {
        self.count(&ctx.shared);
        self.add_to(ctx, headers);
    }
}

/// Records on the request's current span (a `TraceLayer`'s, say), when a subscriber wants it:
/// a span records only the fields it declared, so a span that should show the cache's declares
/// `cache.outcome`, `cache.reason`, `cache.key_hash`, `cache.stored` and `cache.not_stored`
/// (as `tracing::field::Empty`; see the metrics guide).
///
/// It asks the dispatcher for the current span's id and metadata rather than taking a
/// `Span` handle (which clones and closes the span in the subscriber's registry): with no
/// subscriber, or a span that declares none of these fields, recording costs a lookup.
fn on_span(record: impl FnOnce(&SpanFields<'_>)) {
    let mut record = Some(record);
    tracing::dispatcher::get_default(|dispatch| {
        let current = dispatch.current_span();
        if let (Some(id), Some(metadata), Some(record)) =
            (current.id(), current.metadata(), record.take())
        {
            record(&SpanFields {
                dispatch,
                id,
                metadata,
            });
        }
    });
}

/// The request's current span, to record the cache's fields on.
struct SpanFields<'a> {
    dispatch: &'a tracing::Dispatch,
    id: &'a tracing::Id,
    metadata: &'static tracing::Metadata<'static>,
}

impl SpanFields<'_> {
    /// Records `value` as `name`, if the span declared it.
    fn record(&self, name: &str, value: &dyn tracing::Value) {
        let fields = self.metadata.fields();
        if let Some(field) = fields.field(name) {
            let values = [(&field, Some(value))];
            let values = fields.value_set(&values);
            self.dispatch
                .record(self.id, &tracing::span::Record::new(&values));
        }
    }

    fn declares(&self, name: &str) -> bool {
        self.metadata.fields().field(name).is_some()
    }

    /// Records a hash of `key` as `cache.key_hash`, if the span declared it.
    fn record_key(&self, key: &str) {
        if !self.declares("cache.key_hash") {
            return;
        }
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        let hash = format!("{:016x}", hasher.finish());
        self.record("cache.key_hash", &hash.as_str());
    }
}

/// Records the request's key on its current span, as a hash (keys hold URLs and cookie
/// values, which do not belong in traces).
pub(crate) fn trace_key(key: &str) {
    on_span(|span| span.record_key(key));
}

/// Records on the request's current span whether its response is being stored, and why not.
pub(crate) fn trace_storing(not_stored: Option<&'static str>) {
    on_span(|span| {
        span.record("cache.stored", &not_stored.is_none());
        if let Some(reason) = not_stored {
            span.record("cache.not_stored", &reason);
        }
    });
}

/// The cache's figures are labelled with the outcomes'.
impl Default for CacheFigures {
    fn default() -> Self {
        CacheFigures::new(&Outcome::FIGURES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_renders_and_counts_once() {
        let mut seen = std::collections::HashSet::new();
        for outcome in Outcome::ALL {
            let value = outcome.header_value();
            let text = value.to_str().unwrap();
            assert!(text.starts_with("tower-strata; "), "{outcome:?}: {text}");
            // RFC 9211: the parameters are a Structured Fields list member's parameters.
            let parsed = sfv::Parser::new(text).parse::<sfv::List>();
            assert!(parsed.is_ok(), "{outcome:?}: {text} does not parse");
            assert!(
                seen.insert(text.to_owned()),
                "{outcome:?} renders as another"
            );

            let shared = Shared::default();
            outcome.count(&shared);
            let counters = [
                &shared.hits,
                &shared.stale_hits,
                &shared.coalesced,
                &shared.misses,
                &shared.bypasses,
                &shared.invalid_hosts,
            ];
            let total: u64 = counters.iter().map(|c| c.get()).sum();
            assert_eq!(total, 1, "{outcome:?} counts once");
        }
        // Each outcome has labels of its own.
        let figures: std::collections::HashSet<usize> =
            Outcome::ALL.iter().map(Outcome::figure).collect();
        assert_eq!(figures.len(), Outcome::ALL.len() - 1, "two hits share one");
        assert_eq!(figures.len(), Outcome::FIGURES.len());
    }
}
