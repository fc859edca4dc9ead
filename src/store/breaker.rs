//! A circuit breaker for a remote store's connection: after a run of failures it opens and
//! every call fails at once, instead of each request waiting out the command timeout of a
//! Redis that hangs or is gone. After each cool-down the store's background task sends one
//! probe (a `PING`; half-open), whose success closes it: no caller's request is ever the
//! probe, so no caller waits out a timeout for it, and a store nobody calls (a tiered store
//! whose L1 answers every read) still notices that Redis is back.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::stats::BreakerState;
use crate::instruments::BreakerFigures;

/// Default consecutive failures (timeouts, connection errors) that open a breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 3;

/// Default time an open breaker waits before its background probe.
pub const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(1);

/// When a store's circuit breaker opens and how long it stays open (see the
/// [`RedisStoreBuilder::breaker`](super::RedisStoreBuilder::breaker) setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker (at least 1).
    pub failures: u32,
    /// How long it stays open before the background probe (a `PING`) tries the backend.
    pub cool_down: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: DEFAULT_BREAKER_FAILURES,
            cool_down: DEFAULT_BREAKER_COOL_DOWN,
        }
    }
}

/// A lock-free circuit breaker; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Breaker {
    name: String,
    settings: BreakerSettings,
    /// Consecutive failures while closed.
    failures: AtomicU32,
    /// When the breaker may let a probe through, in microseconds since [`epoch`]; 0 when
    /// closed.
    open_until: AtomicU64,
    /// A probe is on its way.
    probing: AtomicBool,
    /// Calls refused while open.
    rejected: AtomicU64,
    /// Times it opened.
    opened: AtomicU64,
    /// Counts the times it closed, for whoever waits for the backend to be back.
    closed: tokio::sync::watch::Sender<u64>,
    /// Its state and openings on the `metrics` facade, labelled with its name.
    figures: BreakerFigures,
}

/// Why a call was refused.
#[derive(Debug)]
pub(crate) struct Refused;

/// A call the breaker let through; see [`Breaker::admit`].
#[derive(Debug)]
pub(crate) struct Ticket<'b> {
    breaker: &'b Breaker,
    probe: bool,
    done: bool,
}

impl Ticket<'_> {
    /// The backend answered (an error in the answer counts: the backend is there).
    pub(crate) fn success(mut self) {
        self.done = true;
        self.breaker.success(self.probe);
    }

    /// The backend did not answer: a timeout or a lost connection.
    pub(crate) fn failure(mut self) {
        self.done = true;
        self.breaker.failure(self.probe);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.done {
            // The probe's caller went away: try again after another cool-down.
            self.breaker.reopen();
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_micros() -> u64 {
    // +1 so that "now" is never 0, which means closed.
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX) + 1
}

impl Breaker {
    pub(crate) fn new(name: impl Into<String>, settings: BreakerSettings) -> Self {
        let name = name.into();
        Breaker {
            figures: BreakerFigures::new(&name),
            name,
            settings,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            rejected: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            closed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Whether a call may go out now: while closed. While open every call is refused at once;
    /// only [`probe`](Self::probe) tries the backend. The ticket reports the call's outcome.
    pub(crate) fn admit(&self) -> Result<Ticket<'_>, Refused> {
        if self.open_until.load(Ordering::Acquire) == 0 {
            return Ok(Ticket {
                breaker: self,
                probe: false,
                done: false,
            });
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Err(Refused)
    }

    /// The probe's ticket, when the breaker is open, its cool-down has passed and no probe is
    /// on its way; the store's background task then sends a `PING` under it. Dropped without
    /// an outcome (its future was cancelled), the ticket gives the probe back, so the breaker
    /// can never wait forever for an answer nobody will bring.
    pub(crate) fn probe(&self) -> Option<Ticket<'_>> {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 || now_micros() < until {
            return None;
        }
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        self.figures.state(BreakerState::HalfOpen);
        Some(Ticket {
            breaker: self,
            probe: true,
            done: false,
        })
    }

    /// Whether it is open (or half-open): calls are refused.
    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// Changes each time the breaker closes.
    #[cfg(any(test, feature = "memory"))]
    pub(crate) fn closings(&self) -> tokio::sync::watch::Receiver<u64> {
        self.closed.subscribe()
    }

    /// A call went through. While closed, it ends a run of failures; while open, only the
    /// probe's success closes the breaker (a slow call admitted before it opened proves
    /// nothing about now).
    fn success(&self, probe: bool) {
        if self.open_until.load(Ordering::Acquire) == 0 {
            self.failures.store(0, Ordering::Relaxed);
        } else if probe {
            self.failures.store(0, Ordering::Relaxed);
            self.open_until.store(0, Ordering::Release);
            self.probing.store(false, Ordering::Release);
            self.figures.state(BreakerState::Closed);
            tracing::info!(
                breaker = self.name.as_str(),
                "circuit closed: the backend answers again"
            );
            self.closed.send_modify(|n| *n += 1);
        }
    }

    /// A call failed for the backend's sake (a timeout, a lost connection): the run that
    /// reaches the threshold opens the breaker, a failed probe re-opens it for another
    /// cool-down. Other calls failing while it is open change nothing.
    fn failure(&self, probe: bool) {
        if self.open_until.load(Ordering::Acquire) != 0 {
            if probe {
                // Once per cool-down for as long as the outage lasts: not worth a warning each.
                self.reopen();
                tracing::debug!(
                    breaker = self.name.as_str(),
                    cool_down_ms = self.settings.cool_down.as_millis() as u64,
                    "circuit stays open: the probe failed"
                );
            }
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.settings.failures.max(1)
            && self
                .open_until
                .compare_exchange(
                    0,
                    now_micros().saturating_add(self.cool_down_micros()),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            self.opened.fetch_add(1, Ordering::Relaxed);
            self.figures.opened();
            tracing::warn!(
                breaker = self.name.as_str(),
                failures,
                cool_down_ms = self.settings.cool_down.as_millis() as u64,
                "circuit opened: calls fail at once until a probe succeeds"
            );
        }
    }

    /// Another cool-down, then another probe.
    fn reopen(&self) {
        self.open_until.store(
            now_micros().saturating_add(self.cool_down_micros()),
            Ordering::Release,
        );
        self.probing.store(false, Ordering::Release);
        self.figures.state(BreakerState::Open);
    }

    fn cool_down_micros(&self) -> u64 {
        u64::try_from(self.settings.cool_down.as_micros()).unwrap_or(u64::MAX)
    }

    pub(crate) fn state(&self) -> BreakerState {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            BreakerState::Closed
        } else if now_micros() >= until || self.probing.load(Ordering::Acquire) {
            BreakerState::HalfOpen
        } else {
            BreakerState::Open
        }
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(cool_down: Duration) -> Breaker {
        Breaker::new(
            "test",
            BreakerSettings {
                failures: 3,
                cool_down,
            },
        )
    }

    fn fail(b: &Breaker) {
        b.admit().unwrap().failure();
    }

    #[test]
    fn opens_after_the_threshold_and_refuses_at_once() {
        let b = breaker(Duration::from_secs(60));
        fail(&b);
        fail(&b);
        assert!(b.admit().is_ok(), "two failures leave it closed");
        b.admit().unwrap().success();
        fail(&b);
        fail(&b);
        assert!(b.admit().is_ok(), "a success resets the run");
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err());
        assert_eq!((b.rejected(), b.opened()), (1, 1));
    }

    #[test]
    fn one_probe_after_the_cool_down_closes_or_reopens_it() {
        let b = breaker(Duration::ZERO);
        for _ in 0..3 {
            fail(&b);
        }
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit().is_err(), "no caller is the probe");
        let probe = b.probe().expect("the probe");
        assert!(b.probe().is_none(), "only one probe at a time");
        probe.failure();
        let probe = b.probe().expect("a new probe after the (zero) cool-down");
        let closings = b.closings();
        probe.success();
        assert!(closings.has_changed().unwrap(), "its closing is told");
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_ok() && b.admit().is_ok());
    }

    #[test]
    fn a_dropped_probe_gives_the_probe_back_and_stragglers_change_nothing() {
        let b = breaker(Duration::ZERO);
        let straggler = b.admit().unwrap();
        for _ in 0..3 {
            fail(&b);
        }
        drop(b.probe().expect("the probe")); // its caller went away
        let probe = b.probe().expect("the probe is not lost with its caller");
        straggler.success(); // admitted before it opened: proves nothing about now
        assert_ne!(b.state(), BreakerState::Closed);
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn concurrent_failures_open_it_once() {
        let b = std::sync::Arc::new(breaker(Duration::from_secs(60)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        if let Ok(ticket) = b.admit() {
                            ticket.failure();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.opened(), 1);
        assert_eq!(b.state(), BreakerState::Open);
    }
}
