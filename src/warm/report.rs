//! What a run did and what a warmer has done: [`WarmReport`], [`WarmStats`], and the
//! counters behind them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::instruments::WarmFigures;

/// What one warming run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WarmReport {
    /// Requests sent through the service.
    pub sent: u64,
    /// Of those, answered `2xx` with the body drained.
    pub succeeded: u64,
    /// Of those, failed: not `2xx`, an error, a panic or a timeout.
    pub failed: u64,
    /// Of the failed, those that hit the timeout.
    pub timed_out: u64,
    /// Factories and sources that panicked, failed or timed out (their requests were not sent).
    pub source_failures: u64,
    /// How long the run took.
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
}

/// Counters of every run of a [`Warmer`](super::Warmer) and its clones: a cheap, serialisable snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WarmStats {
    /// Runs finished.
    pub runs: u64,
    /// Requests sent.
    pub requests_sent: u64,
    /// Requests answered `2xx`.
    pub succeeded: u64,
    /// Requests that failed (timeouts included).
    pub failed: u64,
    /// Requests that hit the timeout.
    pub timed_out: u64,
    /// Factories and sources that failed.
    pub source_failures: u64,
    /// The last finished run.
    pub last_run: Option<WarmReport>,
    /// When the last finished run ended (serialised as Unix milliseconds).
    #[serde(rename = "last_run_at_unix_ms", serialize_with = "unix_millis")]
    pub last_run_at: Option<SystemTime>,
}

pub(super) fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

pub(super) fn unix_millis<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        Some(d) => s.serialize_some(&(d.as_millis() as u64)),
        None => s.serialize_none(),
    }
}

#[derive(Default)]
pub(super) struct Counters {
    runs: AtomicU64,
    sent: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    source_failures: AtomicU64,
    last: Mutex<Option<(WarmReport, SystemTime)>>,
    /// Runs and requests on the `metrics` facade.
    figures: WarmFigures,
}

impl Counters {
    pub(super) fn record(&self, report: &WarmReport) {
        self.figures.run(
            report.succeeded,
            report.failed,
            report.timed_out,
            report.failed > 0 || report.source_failures > 0,
        );
        self.sent.fetch_add(report.sent, Ordering::Relaxed);
        self.succeeded
            .fetch_add(report.succeeded, Ordering::Relaxed);
        self.failed.fetch_add(report.failed, Ordering::Relaxed);
        self.timed_out
            .fetch_add(report.timed_out, Ordering::Relaxed);
        self.source_failures
            .fetch_add(report.source_failures, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((*report, SystemTime::now()));
        self.runs.fetch_add(1, Ordering::Release);
    }

    pub(super) fn snapshot(&self) -> WarmStats {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        WarmStats {
            runs: self.runs.load(Ordering::Acquire),
            requests_sent: self.sent.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            source_failures: self.source_failures.load(Ordering::Relaxed),
            last_run: last.map(|(r, _)| r),
            last_run_at: last.map(|(_, t)| t),
        }
    }
}
