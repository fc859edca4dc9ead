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
    /// once the cool-down has passed.
    pub(crate) fn admit(&self) -> Result<(), Refused> {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Ok(());
        }
        if now_micros() >= until
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            tracing::info!(breaker = self.name, "circuit half-open: one probe call");
            return Ok(());
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Err(Refused)
    }

    /// A call went through: a probe's success closes the breaker.
    pub(crate) fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until.load(Ordering::Acquire) != 0 {
            self.open_until.store(0, Ordering::Release);
            self.probing.store(false, Ordering::Release);
            tracing::info!(
                breaker = self.name,
                "circuit closed: the backend answers again"
            );
        }
    }

    /// A call failed for the backend's sake (a timeout, a lost connection): the run that
    /// reaches the threshold opens the breaker, a failed probe re-opens it.
    pub(crate) fn failure(&self) {
        let cool_down = u64::try_from(self.settings.cool_down.as_micros()).unwrap_or(u64::MAX);
        if self.open_until.load(Ordering::Acquire) != 0 {
            if self.probing.swap(false, Ordering::AcqRel) {
                self.open_until
                    .store(now_micros().saturating_add(cool_down), Ordering::Release);
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
                    now_micros().saturating_add(cool_down),
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

    #[test]
    fn opens_after_the_threshold_and_refuses_at_once() {
        let b = breaker(Duration::from_secs(60));
        b.failure();
        b.failure();
        assert!(b.admit().is_ok(), "two failures leave it closed");
        b.success();
        b.failure();
        b.failure();
        assert!(b.admit().is_ok(), "a success resets the run");
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err());
        assert_eq!((b.rejected(), b.opened()), (1, 1));
    }

    #[test]
    fn one_probe_after_the_cool_down_closes_or_reopens_it() {
        let b = breaker(Duration::ZERO);
        for _ in 0..3 {
            b.failure();
        }
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit().is_ok(), "the probe");
        assert!(b.admit().is_err(), "only one probe at a time");
        b.failure();
        assert!(b.admit().is_ok(), "a new probe after the (zero) cool-down");
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_ok() && b.admit().is_ok());
    }

    #[test]
    fn concurrent_failures_open_it_once() {
        let b = std::sync::Arc::new(breaker(Duration::from_secs(60)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        b.failure();
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
