//! What every service of one [`CacheLayer`](super::CacheLayer) shares: in-flight misses
//! (coalescing), hit-for-pass, background refreshes, the invalidation generation, and the
//! counters behind [`CacheStats`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::outage::{Outage, StoreOp};
use super::record::Record;
use super::tee::Tee;
use crate::counter::Counter;
use crate::instruments::CacheFigures;

/// What a coalesced miss ended with.
#[derive(Clone, Debug)]
pub(crate) enum Handover {
    /// The response is being read from upstream: a waiter reads it from the fill as it
    /// arrives (see `tee`).
    Streaming(Arc<Streaming>),
    /// The whole response, recorded.
    Stored(Arc<Record>, Provenance),
    /// Nothing to hand over: each waiter goes upstream itself.
    NotStored,
}

/// A response being fetched, as a waiter serves it: the stored form of its head, and the
/// fill's body to read.
pub(crate) struct Streaming {
    pub tee: Arc<Tee>,
    pub status: http::StatusCode,
    /// The headers as they would be stored.
    pub headers: http::HeaderMap,
    /// The variant the response is for.
    pub identity: String,
    pub provenance: Provenance,
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("status", &self.status)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// When a handed-over response was fetched and which tags it carries: a waiter checks that no
/// purge of those tags happened since (see `Store::purged_since`) before serving it.
#[derive(Clone, Debug)]
pub(crate) struct Provenance {
    pub fetched_at: std::time::SystemTime,
    pub tags: Arc<[String]>,
}

/// An in-flight miss: its outcome for waiters, and whether an unsafe request invalidated the
/// key meanwhile (then its response must not be stored or handed out).
pub(crate) struct Flight {
    tx: watch::Sender<Option<Handover>>,
    cancelled: AtomicBool,
    /// The primary key of the URL it fetches (flights of `Vary` variants are keyed by the
    /// variant, and an invalidation of the URL detaches them all).
    primary: String,
}

#[derive(Default)]
pub(crate) struct Shared {
    pub hits: Counter,
    pub stale_hits: Counter,
    pub misses: Counter,
    pub stores: Counter,
    pub not_stored: Counter,
    pub bypasses: Counter,
    pub invalid_hosts: Counter,
    pub coalesced: Counter,
    pub store_errors: Counter,
    pub revalidated: Counter,
    pub refreshes_ahead: Counter,
    pub invalidations: Counter,
    pub dropped_tags: Counter,
    /// The store's failures, for the operator (see [`Outage`]).
    pub outage: Outage,
    /// The same requests and fills on the `metrics` facade (see `status::Outcome::count`).
    pub figures: CacheFigures,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    /// The fetches in flight whose responses may be stored, by primary key: an invalidation
    /// of the URL marks each of them, so its write is dropped (or undone). What is kept is
    /// one flag per fetch in flight, whatever the number of invalidations.
    fills: Mutex<HashMap<String, Vec<Arc<FillState>>>>,
    passes: Mutex<HashMap<String, Instant>>,
    refreshing: Mutex<HashSet<String>>,
}

/// One fetch whose response may be stored: whether its URL was invalidated since it began.
#[derive(Default)]
pub(crate) struct FillState {
    invalidated: AtomicBool,
}

/// A fetch in flight, registered under its URL's primary key until dropped (see
/// [`Shared::start_fill`]).
pub(crate) struct Fill {
    shared: Arc<Shared>,
    primary: String,
    state: Arc<FillState>,
}

impl Fill {
    /// Whether the URL was invalidated since this fetch began: then what it fetched must not
    /// be stored (or must be undone if it was).
    pub(crate) fn is_invalidated(&self) -> bool {
        self.state.invalidated.load(Ordering::SeqCst)
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        let mut fills = self.shared.fills.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(states) = fills.get_mut(&self.primary) {
            states.retain(|s| !Arc::ptr_eq(s, &self.state));
            if states.is_empty() {
                fills.remove(&self.primary);
            }
        }
    }
}

impl std::fmt::Debug for Fill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fill")
            .field("primary", &self.primary)
            .field("invalidated", &self.is_invalidated())
            .finish()
    }
}

/// Most keys remembered for hit-for-pass at once.
const MAX_PASSES: usize = 10_000;

pub(crate) enum Join {
    Leader(FlightGuard),
    Waiter(watch::Receiver<Option<Handover>>),
}

impl Shared {
    pub(crate) fn count(counter: &Counter) {
        counter.add(1);
    }

    /// Counts a failed store call and reports it to the operator (rate-limited: see
    /// [`Outage`]). Every step's store failure goes through here.
    pub(crate) fn store_failed(&self, op: StoreOp, error: &dyn std::fmt::Display) {
        Self::count(&self.store_errors);
        self.outage.failed(op, error);
    }

    /// Reports a store call that succeeded (the end of an outage, if there was one).
    pub(crate) fn store_answered(&self) {
        self.outage.succeeded();
    }

    /// Joins the in-flight miss on `key` (the primary key, or a variant's key when the
    /// request's variant is known), or starts one.
    pub(crate) fn join(self: &Arc<Self>, primary: &str, key: &str) -> Join {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = flights.get(key) {
            return Join::Waiter(flight.tx.subscribe());
        }
        let flight = Arc::new(Flight {
            tx: watch::channel(None).0,
            cancelled: AtomicBool::new(false),
            primary: primary.to_owned(),
        });
        flights.insert(key.to_owned(), flight.clone());
        Join::Leader(FlightGuard {
            shared: self.clone(),
            key: key.to_owned(),
            flight,
        })
    }

    /// Detaches the in-flight misses on the URL with primary key `primary`, every variant's:
    /// later requests no longer join them and their responses are not stored.
    fn cancel(&self, primary: &str) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        flights.retain(|_, flight| {
            let keep = flight.primary != primary;
            if !keep {
                flight.cancelled.store(true, Ordering::SeqCst);
            }
            keep
        });
    }

    /// Forgets what this process knows of the URL with primary key `primary`, which is being
    /// invalidated: its misses in flight are detached (see [`Shared::cancel`]), every fetch
    /// of it in flight will not be stored (or undoes its write, see [`Fill`]), and its
    /// hit-for-pass marker goes.
    pub(crate) fn forget(&self, primary: &str) {
        self.unpass(primary);
        self.cancel(primary);
        let fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
        for state in fills.get(primary).into_iter().flatten() {
            state.invalidated.store(true, Ordering::SeqCst);
        }
    }

    /// Registers a fetch of the URL with primary key `primary` whose response may be stored:
    /// an invalidation of the URL from now on marks it. Call before the request goes upstream.
    pub(crate) fn start_fill(self: &Arc<Self>, primary: &str) -> Fill {
        let state = Arc::new(FillState::default());
        let mut fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
        fills
            .entry(primary.to_owned())
            .or_default()
            .push(state.clone());
        Fill {
            shared: self.clone(),
            primary: primary.to_owned(),
            state,
        }
    }

    /// How many fetches are registered now (for tests: the registry empties as they end).
    #[cfg(test)]
    pub(crate) fn fills_in_flight(&self) -> usize {
        let fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
        fills.values().map(Vec::len).sum()
    }

    pub(crate) fn is_pass(&self, key: &str) -> bool {
        let mut passes = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        match passes.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                passes.remove(key);
                false
            }
            None => false,
        }
    }

    pub(crate) fn pass(&self, key: &str, duration: Option<Duration>) {
        let Some(duration) = duration.filter(|d| !d.is_zero()) else {
            return;
        };
        let now = Instant::now();
        let mut passes = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        if passes.len() >= MAX_PASSES {
            passes.retain(|_, until| *until > now);
            if passes.len() >= MAX_PASSES {
                passes.clear();
            }
        }
        passes.insert(key.to_owned(), now + duration);
    }

    pub(crate) fn unpass(&self, key: &str) {
        let mut passes = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        passes.remove(key);
    }

    /// Claims the background refresh of `key`; false if one is running.
    pub(crate) fn start_refresh(&self, key: &str) -> bool {
        let mut refreshing = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        refreshing.insert(key.to_owned())
    }

    pub(crate) fn end_refresh(&self, key: &str) {
        let mut refreshing = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        refreshing.remove(key);
    }
}

/// Held by the request that leads a miss; dropping it without an outcome releases the waiters
/// to go upstream themselves.
pub(crate) struct FlightGuard {
    shared: Arc<Shared>,
    key: String,
    flight: Arc<Flight>,
}

impl FlightGuard {
    /// Hands the stored response to the waiters (and to requests that arrive before the
    /// guard is dropped).
    pub(crate) fn publish(&self, handover: Handover) {
        self.flight.tx.send_replace(Some(handover));
    }

    /// Whether the key was invalidated while this miss was in flight.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.flight.cancelled.load(Ordering::SeqCst)
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        // Waiters that need the whole response are told there is none (a waiter already
        // reading a streaming response goes on reading it).
        if !matches!(*self.flight.tx.borrow(), Some(Handover::Stored(..))) {
            self.flight.tx.send_replace(Some(Handover::NotStored));
        }
        let mut flights = self
            .shared
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
        }
    }
}

/// Counters of a [`CacheLayer`](super::CacheLayer), shared by every service it makes. Cheap to
/// clone.
#[derive(Clone)]
pub struct CacheStats(pub(crate) Arc<Shared>);

impl std::fmt::Debug for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStats")
            .field("hits", &self.hits())
            .field("stale_hits", &self.stale_hits())
            .field("misses", &self.misses())
            .field("stores", &self.stores())
            .field("not_stored", &self.not_stored())
            .field("bypasses", &self.bypasses())
            .field("invalid_hosts", &self.invalid_hosts())
            .field("coalesced", &self.coalesced())
            .field("store_errors", &self.store_errors())
            .field("revalidated", &self.revalidated())
            .field("refreshes_ahead", &self.refreshes_ahead())
            .field("invalidations", &self.invalidations())
            .field("dropped_tags", &self.dropped_tags())
            .finish()
    }
}

/// Read-only accessors, one per counter of [`Shared`], each a sum of relaxed loads: the
/// counters are independent figures for reports, not a consistent snapshot.
macro_rules! counter_getters {
    ($($(#[$doc:meta])* $name:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> u64 {
                self.0.$name.get()
            }
        )*
    };
}

impl CacheStats {
    counter_getters! {
        /// Requests answered from a fresh stored response.
        hits;

        /// Requests answered from a stale stored response (stale-while-revalidate or
        /// stale-if-error).
        stale_hits;

        /// Lookups that found nothing usable and went upstream.
        misses;

        /// Responses written to the store.
        stores;

        /// Upstream responses to cacheable requests that were not storable.
        not_stored;

        /// Requests that bypassed the cache (method, route, cookies).
        bypasses;

        /// Requests answered `400` because their host is not a valid `host[:port]`.
        invalid_hosts;

        /// Requests answered with the response another request's miss fetched.
        coalesced;

        /// Store failures (the layer failed open: the request went upstream).
        store_errors;

        /// Stale entries refreshed by a `304 Not Modified` from upstream.
        revalidated;

        /// Background refreshes of fresh entries read in their refresh-ahead window
        /// ([`CacheLayer::refresh_ahead`](super::CacheLayer::refresh_ahead)) that this
        /// instance sent upstream (with the distributed lease, one per key across instances).
        refreshes_ahead;

        /// Keys removed after a successful unsafe request.
        invalidations;

        /// Tags dropped for being over a limit.
        dropped_tags;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalidation_marks_only_the_fills_of_its_url_and_fills_unregister() {
        let shared = Arc::new(Shared::default());
        let a = shared.start_fill("c:GET http://h/a");
        let a_again = shared.start_fill("c:GET http://h/a");
        let b = shared.start_fill("c:GET http://h/b");
        for i in 0..20_000 {
            shared.forget(&format!("c:GET http://h/posts/{i}"));
        }
        assert!(!a.is_invalidated() && !b.is_invalidated());
        shared.forget("c:GET http://h/a");
        assert!(a.is_invalidated() && a_again.is_invalidated());
        assert!(!b.is_invalidated());
        // A fill that starts after the invalidation is not marked by it.
        let later = shared.start_fill("c:GET http://h/a");
        assert!(!later.is_invalidated());
        assert_eq!(shared.fills_in_flight(), 4);
        drop((a, a_again, b, later));
        assert_eq!(shared.fills_in_flight(), 0);
    }
}
