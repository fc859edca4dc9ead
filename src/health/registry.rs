//! [`Health`]: the registered checks, their runner and the report.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use serde::{Serialize, Serializer};
use tokio::time::Instant;

use super::check::{CheckOutput, HealthCheck, Status};
use super::service::{HealthService, Kind};

/// A check as registered: its name, whether readiness depends on it, and its thresholds.
pub struct Check {
    name: String,
    check: Arc<dyn HealthCheck>,
    required: bool,
    timeout: Option<Duration>,
    degraded_latency: Option<Duration>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("required", &self.required)
            .field("timeout", &self.timeout)
            .field("degraded_latency", &self.degraded_latency)
            .finish_non_exhaustive()
    }
}

impl Check {
    /// A check readiness depends on: when it is unhealthy, `/health/ready` answers `503`.
    pub fn required(name: impl Into<String>, check: impl HealthCheck) -> Self {
        Self {
            name: name.into(),
            check: Arc::new(check),
            required: true,
            timeout: None,
            degraded_latency: None,
        }
    }

    /// A check that is reported but only degrades the overall status when unhealthy.
    pub fn optional(name: impl Into<String>, check: impl HealthCheck) -> Self {
        Self {
            required: false,
            ..Self::required(name, check)
        }
    }
    setters! {
        /// A timeout for this check, instead of [`HealthBuilder::timeout`].
        fn timeout(timeout: Duration) => some timeout;

        /// A healthy run slower than this is reported as degraded.
        fn degraded_latency(threshold: Duration) => some degraded_latency;
    }
}

/// An invalid [`Health`] configuration: a [`ConfigError`](crate::ConfigError) of
/// [`HealthConfigErrorKind`], from [`HealthBuilder::build`].
pub type HealthConfigError = crate::ConfigError<HealthConfigErrorKind>;

/// What is wrong with a [`Health`] configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HealthConfigErrorKind {
    /// Two checks share a name (the message names it).
    DuplicateName,
    /// A check has an empty name.
    EmptyName,
    /// The interval, a timeout or the maximum age is zero.
    ZeroDuration,
}

impl crate::ConfigErrorKind for HealthConfigErrorKind {
    const COMPONENT: &'static str = "health";
}

/// Builds a [`Health`].
#[derive(Debug)]
pub struct HealthBuilder {
    checks: Vec<Check>,
    interval: Duration,
    timeout: Duration,
    max_age: Option<Duration>,
}

impl HealthBuilder {
    /// Registers a check.
    pub fn check(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    setters! {
        /// How often [`Health::spawn`]'s background task runs the checks (default 10 s).
        fn interval(interval: Duration) => set interval;

        /// Default timeout of one check run (default 2 s). A check that has not answered by then is
        /// unhealthy, so readiness answers in about this time even when a dependency hangs.
        fn timeout(timeout: Duration) => set timeout;

        /// Results older than this are refreshed when readiness is asked (default: interval plus
        /// timeout, so with the background task running readiness never waits).
        fn max_age(max_age: Duration) => some max_age;
    }

    /// Checks the configuration and builds the health registry.
    ///
    /// # Errors
    ///
    /// [`HealthConfigError`] for duplicate or empty names and zero durations.
    pub fn build(self) -> Result<Health, HealthConfigError> {
        let zero = |what: &str| {
            HealthConfigError::new(
                HealthConfigErrorKind::ZeroDuration,
                format!("{what} must be greater than zero"),
            )
        };
        for (i, c) in self.checks.iter().enumerate() {
            if c.name.is_empty() {
                return Err(HealthConfigError::new(
                    HealthConfigErrorKind::EmptyName,
                    "a health check has an empty name",
                ));
            }
            if self.checks[..i].iter().any(|o| o.name == c.name) {
                return Err(HealthConfigError::new(
                    HealthConfigErrorKind::DuplicateName,
                    format!("two health checks are named {:?}", c.name),
                ));
            }
            if c.timeout.is_some_and(|t| t.is_zero()) {
                return Err(zero("check timeout"));
            }
        }
        if self.interval.is_zero() {
            return Err(zero("interval"));
        }
        if self.timeout.is_zero() {
            return Err(zero("timeout"));
        }
        let max_age = self.max_age.unwrap_or(self.interval + self.timeout);
        if max_age.is_zero() {
            return Err(zero("max_age"));
        }
        let states = self.checks.iter().map(|_| CheckState::default()).collect();
        Ok(Health {
            inner: Arc::new(Inner {
                checks: self.checks,
                interval: self.interval,
                timeout: self.timeout,
                max_age,
                state: Mutex::new(State {
                    last_run: None,
                    checks: states,
                }),
                run_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

/// The app's health checks, their latest results, and the `/health` and `/health/ready`
/// services. Cloning is cheap; clones share the results.
///
/// See [the module docs](crate::health).
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("checks", &self.inner.checks)
            .field("interval", &self.inner.interval)
            .field("timeout", &self.inner.timeout)
            .field("max_age", &self.inner.max_age)
            .finish()
    }
}

struct Inner {
    checks: Vec<Check>,
    interval: Duration,
    timeout: Duration,
    max_age: Duration,
    state: Mutex<State>,
    /// One run at a time: concurrent readiness requests share a run instead of each starting one.
    run_lock: tokio::sync::Mutex<()>,
}

struct State {
    last_run: Option<Instant>,
    checks: Vec<CheckState>,
}

#[derive(Default, Clone)]
struct CheckState {
    output: Option<CheckOutput>,
    latency: Duration,
    checked_at: Option<SystemTime>,
    last_error: Option<(String, SystemTime)>,
}

impl Health {
    /// A builder with no checks, a 10 s interval and a 2 s timeout.
    pub fn builder() -> HealthBuilder {
        HealthBuilder {
            checks: Vec::new(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            max_age: None,
        }
    }

    /// Runs every check now (concurrently, each under its timeout) and returns the report.
    pub async fn check_now(&self) -> HealthReport {
        {
            let _running = self.inner.run_lock.lock().await;
            self.inner.run().await;
        }
        self.report()
    }

    /// The readiness report: the latest results if younger than the maximum age, otherwise a
    /// fresh run (shared with any run already in progress). Takes at most about the check
    /// timeout even when a dependency hangs.
    pub async fn readiness(&self) -> HealthReport {
        if !self.inner.fresh() {
            let wait = self.inner.longest_timeout() * 2;
            if let Ok(_running) = tokio::time::timeout(wait, self.inner.run_lock.lock()).await
                && !self.inner.fresh()
            {
                self.inner.run().await;
            }
        }
        self.report()
    }

    /// The latest results without running anything (checks never run are unhealthy, with the
    /// error `not checked yet`).
    pub fn report(&self) -> HealthReport {
        let state = match self.inner.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let checks: Vec<CheckReport> = self
            .inner
            .checks
            .iter()
            .zip(&state.checks)
            .map(|(c, s)| {
                let (status, error, details) = match &s.output {
                    Some(o) => (o.status, o.error.clone(), o.details.clone()),
                    None => (
                        Status::Unhealthy,
                        Some("not checked yet".to_owned()),
                        serde_json::Value::Null,
                    ),
                };
                CheckReport {
                    name: c.name.clone(),
                    required: c.required,
                    status,
                    latency: s.latency,
                    error,
                    last_error: s.last_error.as_ref().map(|(e, _)| e.clone()),
                    last_error_at_unix_ms: s.last_error.as_ref().map(|(_, at)| unix_ms(*at)),
                    checked_at_unix_ms: s.checked_at.map(unix_ms),
                    details,
                }
            })
            .collect();
        let status = checks
            .iter()
            .map(|c| match (c.status, c.required) {
                (Status::Unhealthy, false) => Status::Degraded,
                (s, _) => s,
            })
            .max()
            .unwrap_or(Status::Healthy);
        HealthReport {
            status,
            checks,
            at_unix_ms: unix_ms(SystemTime::now()),
        }
    }

    /// Spawns the background task running the checks every interval (the first run at once).
    /// It stops when every clone of this `Health` is dropped, or when the handle is aborted.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        crate::background::spawn_every(&self.inner, self.inner.interval, |inner| async move {
            let _running = inner.run_lock.lock().await;
            inner.run().await;
        })
    }

    /// The liveness service (`/health`): always `200 {"status":"alive"}`, touching no
    /// dependency.
    pub fn liveness_service(&self) -> HealthService {
        HealthService::new(self.clone(), Kind::Liveness)
    }

    /// The readiness service (`/health/ready`): the JSON [`HealthReport`], `200` when healthy
    /// or degraded, `503` when unhealthy.
    pub fn readiness_service(&self) -> HealthService {
        HealthService::new(self.clone(), Kind::Readiness)
    }
}

impl Inner {
    fn fresh(&self) -> bool {
        let state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        state
            .last_run
            .is_some_and(|at| at.elapsed() <= self.max_age)
    }

    fn longest_timeout(&self) -> Duration {
        self.checks
            .iter()
            .filter_map(|c| c.timeout)
            .fold(self.timeout, Duration::max)
    }

    /// Runs every check concurrently and stores the results. Callers hold `run_lock`.
    async fn run(&self) {
        let runs = self.checks.iter().map(|c| async move {
            let timeout = c.timeout.unwrap_or(self.timeout);
            let start = Instant::now();
            let result =
                tokio::time::timeout(timeout, AssertUnwindSafe(c.check.check()).catch_unwind())
                    .await;
            let latency = start.elapsed();
            let mut output = match result {
                Err(_) => {
                    CheckOutput::unhealthy(format!("timed out after {} ms", timeout.as_millis()))
                }
                Ok(Err(_)) => CheckOutput::unhealthy("check panicked"),
                Ok(Ok(output)) => output,
            };
            if let Some(threshold) = c.degraded_latency
                && output.status == Status::Healthy
                && latency > threshold
            {
                output.status = Status::Degraded;
                output.error = Some(format!(
                    "took {:.1} ms, above the {:.1} ms threshold",
                    latency.as_secs_f64() * 1e3,
                    threshold.as_secs_f64() * 1e3
                ));
            }
            (output, latency)
        });
        let results = futures_util::future::join_all(runs).await;
        let now = SystemTime::now();
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        for ((output, latency), s) in results.into_iter().zip(state.checks.iter_mut()) {
            if output.status != Status::Healthy
                && let Some(error) = &output.error
            {
                s.last_error = Some((error.clone(), now));
            }
            s.output = Some(output);
            s.latency = latency;
            s.checked_at = Some(now);
        }
        state.last_run = Some(Instant::now());
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// The readiness report, served as JSON by `/health/ready`.
///
/// The overall status is the worst of the required checks' statuses; an unhealthy optional
/// check makes it at most degraded.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// Overall status.
    pub status: Status,
    /// Each registered check, in registration order.
    pub checks: Vec<CheckReport>,
    /// When the report was made, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// One check in a [`HealthReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CheckReport {
    /// The check's name.
    pub name: String,
    /// Whether readiness depends on it.
    pub required: bool,
    /// Its latest status.
    pub status: Status,
    /// How long its latest run took.
    #[serde(serialize_with = "millis", rename = "latency_ms")]
    pub latency: Duration,
    /// Why its latest run was not healthy.
    pub error: Option<String>,
    /// The most recent error of any run, kept after the check recovers.
    pub last_error: Option<String>,
    /// When `last_error` happened, in milliseconds since the Unix epoch.
    pub last_error_at_unix_ms: Option<u64>,
    /// When it last ran, in milliseconds since the Unix epoch.
    pub checked_at_unix_ms: Option<u64>,
    /// Check-specific figures.
    pub details: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::fn_check;

    #[test]
    fn config_is_validated() {
        let ok = || fn_check(|| async { CheckOutput::healthy(serde_json::Value::Null) });
        let err = Health::builder()
            .check(Check::required("db", ok()))
            .check(Check::optional("db", ok()))
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), HealthConfigErrorKind::DuplicateName);
        assert!(err.to_string().contains("\"db\""));
        let err = Health::builder()
            .check(Check::required("", ok()))
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), HealthConfigErrorKind::EmptyName);
        let err = Health::builder()
            .timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), HealthConfigErrorKind::ZeroDuration);
    }

    #[test]
    fn health_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Health>();
    }
}
