//! Step 1, lookup: the primary key, then the variant a `Vary` index points to; what a lookup
//! leaves for the miss path ([`Miss`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::ctx::Ctx;
use super::key::{self, PrimaryKey, store_key};
use super::outage::StoreOp;
use super::record::{self, Record, Stored};
use super::state::Provenance;
use super::status::CACHE_STATUS;
use crate::store::{Entry, Store};

/// A stored response found for a request.
pub(crate) struct Found {
    pub record: Arc<Record>,
    pub entry_age: Duration,
    pub entry_ttl: Option<Duration>,
    /// The store entry, for its tags and when it was stored (none for a response handed over
    /// by a coalesced miss).
    pub entry: Option<Entry>,
}

impl Found {
    /// A response handed over by another request's miss: fresh as of now.
    pub(super) fn handed_over(record: Arc<Record>) -> Self {
        Found {
            record,
            entry_age: Duration::ZERO,
            entry_ttl: None,
            entry: None,
        }
    }

    pub(super) fn tags(&self) -> &[String] {
        self.entry.as_ref().map_or(&[], |e| e.tags())
    }

    /// Where a found entry came from, for handing it to coalesced waiters.
    pub(super) fn provenance(&self) -> Provenance {
        Provenance {
            fetched_at: self
                .entry
                .as_ref()
                .map_or_else(SystemTime::now, Entry::stored_at),
            tags: self.tags().into(),
        }
    }

    pub(super) fn is_stale(&self) -> bool {
        self.entry_ttl.is_some_and(|ttl| self.entry_age >= ttl)
    }

    /// Seconds of freshness left, for `Cache-Status: ttl=`.
    pub(super) fn ttl_left(&self) -> Option<u64> {
        self.entry_ttl
            .map(|t| t.saturating_sub(self.entry_age).as_secs())
    }

    /// How long past its freshness lifetime the response is (RFC 9111: current age minus
    /// freshness lifetime; a response that arrived already old starts stale).
    pub(super) fn staleness(&self) -> Duration {
        let f = &self.record.freshness;
        let by_age = self.current_age().saturating_sub(f.lifetime);
        let by_entry = self
            .entry_ttl
            .map_or(Duration::ZERO, |ttl| self.entry_age.saturating_sub(ttl));
        by_age.max(by_entry)
    }

    pub(super) fn current_age(&self) -> Duration {
        self.record
            .freshness
            .initial_age
            .saturating_add(self.entry_age)
    }

    /// Fresh, but in the refresh-ahead window: serve now, refresh in the background.
    pub(super) fn within_refresh_ahead<St>(&self, ctx: &Ctx<St>) -> bool {
        self.entry_ttl
            .is_some_and(|ttl| ctx.config.in_refresh_window(ttl, self.entry_age))
    }

    /// Within the stale-while-revalidate window: serve now, refresh in the background.
    pub(super) fn within_swr<St>(&self, ctx: &Ctx<St>) -> bool {
        self.within(self.record.freshness.swr.or(ctx.config.swr))
    }

    /// Within the stale-if-error window: serve when upstream fails.
    pub(super) fn within_sie<St>(&self, ctx: &Ctx<St>) -> bool {
        self.within(self.record.freshness.sie.or(ctx.config.sie))
    }

    fn within(&self, window: Option<Duration>) -> bool {
        let window = window.unwrap_or_default();
        !self.record.freshness.must_revalidate && !window.is_zero() && self.staleness() <= window
    }
}

/// What the lookup left for the miss path.
pub(crate) struct Miss {
    pub key: PrimaryKey,
    /// The stored response to revalidate, if one was found stale.
    pub stale: Option<Found>,
    /// The store was read and had nothing: worth a second look once this request leads.
    pub looked_up: bool,
    /// The store failed the lookup: the miss still coalesces with the others in this process
    /// (a failing store must not multiply origin calls), but neither looks again, takes the
    /// lease nor writes what it fetched.
    pub store_failed: bool,
    /// The `Vary` names the primary key's index gave, if it held one.
    pub vary: Option<Vec<HeaderName>>,
}

/// What a lookup found: a usable response, and the `Vary` names when the primary key held an
/// index (the request's variant is then known before going upstream, so misses coalesce per
/// variant).
#[derive(Default)]
pub(crate) struct Lookup {
    pub found: Option<Found>,
    pub vary: Option<Vec<HeaderName>>,
}

/// Looks a request up: the primary key, then the variant a vary spec points to. `Err` is a
/// store failure (counted).
pub(crate) async fn lookup<St: Store>(
    ctx: &Ctx<St>,
    key: &PrimaryKey,
    headers: &HeaderMap,
) -> Result<Lookup, ()> {
    let identity = key.identity();
    let store = ctx.store_for(key);
    let Some(entry) = get(ctx, store, key.store_key()).await? else {
        return Ok(Lookup::default());
    };
    let Some(decoded) = decoded(&entry, key.store_key()) else {
        return Ok(Lookup::default());
    };
    let (record, entry, vary) = match &decoded.stored {
        Stored::Response(record) => (record.clone(), entry, None),
        Stored::Vary {
            identity: stored,
            names,
        } => {
            if stored != identity {
                return Ok(Lookup::default());
            }
            let variant = ctx.config.key.variant_identity(identity, names, headers);
            let variant_key = store_key(&variant);
            let found = get(ctx, store, &variant_key)
                .await?
                .and_then(|entry| Some((decoded_response(&entry, &variant_key)?, entry)));
            match found {
                Some((record, entry)) if record.identity == variant => {
                    (record, entry, Some(names.clone()))
                }
                _ => {
                    return Ok(Lookup {
                        found: None,
                        vary: Some(names.clone()),
                    });
                }
            }
        }
    };
    // A hashed key that collided, or a variant stored under the primary key: a miss.
    let names = key::vary_names(&record.headers);
    if record.identity != ctx.config.key.select_variant(identity, &names, headers) {
        return Ok(Lookup { found: None, vary });
    }
    Ok(Lookup {
        found: Some(Found {
            record,
            entry_age: entry.age(),
            entry_ttl: entry.ttl(),
            entry: Some(entry),
        }),
        vary,
    })
}

/// A stored value as the cache reads it: decoded once per stored entry (the memory store
/// keeps the decoded form beside the bytes), with the hit headers of the last second.
pub(crate) struct Decoded {
    pub stored: Stored,
    /// The headers of a plain hit on a stored response: its own, `Content-Length`, and `Age`
    /// and `Cache-Status` to overwrite in place, so serving one clones a map that never grows.
    pub hit_template: Option<HeaderMap>,
    /// `Age` and `Cache-Status` of a plain hit, for the second they were made in: a hot entry
    /// formats them once a second, not once a hit.
    pub hit_headers: Mutex<Option<HitHeaders>>,
    /// The `Vary` names of a stored response (sorted, deduplicated): read once per entry, not
    /// once per hit.
    pub vary: Vec<HeaderName>,
}

/// The per-hit header values of one second of a stored response's life.
pub(crate) struct HitHeaders {
    /// Age and seconds of freshness left they were made for.
    pub at: (u64, Option<u64>),
    pub age: HeaderValue,
    pub status: Option<HeaderValue>,
}

/// The decoded form of a stored value, `None` (logged) when it is not a record.
pub(crate) fn decoded(entry: &Entry, key: &str) -> Option<Arc<Decoded>> {
    let decoded = entry.decoded(|bytes| {
        record::decode(bytes).ok().map(|stored| Decoded {
            hit_template: match &stored {
                Stored::Response(record) => Some(hit_template(record)),
                Stored::Vary { .. } => None,
            },
            vary: match &stored {
                Stored::Response(record) => key::vary_names(&record.headers),
                Stored::Vary { .. } => Vec::new(),
            },
            stored,
            hit_headers: Mutex::new(None),
        })
    });
    if decoded.is_none() {
        tracing::warn!(key, "unreadable cache record");
    }
    decoded
}

fn hit_template(record: &Record) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(record.headers.len() + 3);
    for (name, value) in &record.headers {
        headers.append(name.clone(), value.clone());
    }
    if !headers.contains_key(header::CONTENT_LENGTH) && record.trailers.is_none() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(record.body.len()));
    }
    headers.insert(header::AGE, HeaderValue::from_static("0"));
    headers.insert(
        CACHE_STATUS.clone(),
        HeaderValue::from_static("tower-strata; hit"),
    );
    headers
}

/// The stored response under a variant key, `None` when there is none.
fn decoded_response(entry: &Entry, key: &str) -> Option<Arc<Record>> {
    match &decoded(entry, key)?.stored {
        Stored::Response(record) => Some(record.clone()),
        Stored::Vary { .. } => None,
    }
}

async fn get<St: Store>(ctx: &Ctx<St>, store: &St, key: &str) -> Result<Option<Entry>, ()> {
    match store.get(key).await {
        Ok(entry) => {
            ctx.shared.store_answered();
            Ok(entry)
        }
        Err(error) => {
            ctx.shared.store_failed(StoreOp::Read, &error);
            Err(())
        }
    }
}
