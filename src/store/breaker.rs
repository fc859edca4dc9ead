//! A circuit breaker for a remote store's connection: after a run of failures it opens and
//! every call fails at once, instead of each request waiting out the command timeout of a
//! Redis that hangs or is gone; after a cool-down one probe call goes through (half-open) and
//! its success closes it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::stats::BreakerState;

/// Default consecutive failures (timeouts, connection errors) that open a breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 3;

/// Default time an open breaker waits before letting one probe call through.
pub const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(1);

/// When a store's circuit breaker opens and how long it stays open (see the
/// [`RedisStoreBuilder::breaker`](super::RedisStoreBuilder::breaker) setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker (at least 1).
    pub failures: u32,
    /// How long it stays open before one probe call goes through.
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
    name: &'static str,
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
    pub(crate) fn new(name: &'static str, settings: BreakerSettings) -> Self {
        Breaker {
            name,
            settings,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            rejected: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        }
    }

    /// Whether a call may go out now: always while closed; while open, only the one probe
    /// once the cool-down has passed. The ticket reports the call's outcome; dropped without
    /// one (its future was cancelled), a probe's ticket gives the probe back, so the breaker
    /// can never wait forever for an answer nobody will bring.
    pub(crate) fn admit(&self) -> Result<Ticket<'_>, Refused> {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Ok(Ticket {
                breaker: self,
                probe: false,
                done: false,
            });
        }
        if now_micros() >= until
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            tracing::info!(breaker = self.name, "circuit half-open: one probe call");
            return Ok(Ticket {
                breaker: self,
                probe: true,
                done: false,
            });
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Err(Refused)
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
            tracing::info!(
                breaker = self.name,
                "circuit closed: the backend answers again"
            );
        }
    }

    /// A call failed for the backend's sake (a timeout, a lost connection): the run that
    /// reaches the threshold opens the breaker, a failed probe re-opens it for another
    /// cool-down. Other calls failing while it is open change nothing.
    fn failure(&self, probe: bool) {
        if self.open_until.load(Ordering::Acquire) != 0 {
            if probe {
                self.reopen();
                tracing::warn!(
                    breaker = self.name,
                    cool_down_ms = self.settings.cool_down.as_millis() as u64,
                    "circuit re-opened: the probe call failed"
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
            tracing::warn!(
                breaker = self.name,
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

    #[cfg(any(test, feature = "health"))]
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
        let probe = b.admit().expect("the probe");
        assert!(b.admit().is_err(), "only one probe at a time");
        probe.failure();
        let probe = b.admit().expect("a new probe after the (zero) cool-down");
        probe.success();
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
        drop(b.admit().expect("the probe")); // its caller went away
        let probe = b.admit().expect("the probe is not lost with its caller");
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
