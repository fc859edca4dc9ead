//! The [`HealthCheck`] trait, check results, and checks built from closures.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;

/// Health of one check, or of the whole service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Working normally.
    Healthy,
    /// Working, but slower or closer to a limit than the app's thresholds allow.
    Degraded,
    /// Not working.
    Unhealthy,
}

/// What one run of a check found.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CheckOutput {
    /// The check's verdict.
    pub status: Status,
    /// Check-specific figures (pool sizes, hit rates, ...), shown in the report.
    pub details: serde_json::Value,
    /// Why the check is not healthy.
    pub error: Option<String>,
}

impl CheckOutput {
    /// A healthy result with details.
    pub fn healthy(details: serde_json::Value) -> Self {
        Self {
            status: Status::Healthy,
            details,
            error: None,
        }
    }

    /// A degraded result: details and the reason.
    pub fn degraded(details: serde_json::Value, reason: impl Into<String>) -> Self {
        Self {
            status: Status::Degraded,
            details,
            error: Some(reason.into()),
        }
    }

    /// An unhealthy result with the error.
    pub fn unhealthy(error: impl Into<String>) -> Self {
        Self {
            status: Status::Unhealthy,
            details: serde_json::Value::Null,
            error: Some(error.into()),
        }
    }

    /// Replaces the details.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// The future a [`HealthCheck`] returns. Checks run on an interval and on demand, never per
/// request, so one allocation per run is not a cost that matters.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = CheckOutput> + Send + 'a>>;

/// A dependency or subsystem whose health is reported by [`Health`](super::Health).
///
/// The trait is object safe. The runner applies a timeout to every run and turns a panic into
/// an unhealthy result, so a check need not guard against hanging itself (but should bound its
/// own network calls where it can). Build checks from closures with [`fn_check`] and
/// [`stats_check`].
pub trait HealthCheck: Send + Sync + 'static {
    /// Runs the check once.
    fn check(&self) -> CheckFuture<'_>;
}

impl<T: HealthCheck + ?Sized> HealthCheck for std::sync::Arc<T> {
    fn check(&self) -> CheckFuture<'_> {
        (**self).check()
    }
}

impl<T: HealthCheck + ?Sized> HealthCheck for Box<T> {
    fn check(&self) -> CheckFuture<'_> {
        (**self).check()
    }
}

/// A check from an async closure returning a [`CheckOutput`]. See [`fn_check`].
#[derive(Clone)]
pub struct FnCheck<F>(F);

impl<F> std::fmt::Debug for FnCheck<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnCheck").finish_non_exhaustive()
    }
}

/// A check from an async closure.
///
/// ```
/// use tower_strata::health::{CheckOutput, fn_check};
///
/// let check = fn_check(|| async { CheckOutput::healthy(serde_json::json!({ "queue": 3 })) });
/// # let _ = check;
/// ```
pub fn fn_check<F, Fut>(f: F) -> FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CheckOutput> + Send + 'static,
{
    FnCheck(f)
}

impl<F, Fut> HealthCheck for FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CheckOutput> + Send + 'static,
{
    fn check(&self) -> CheckFuture<'_> {
        Box::pin((self.0)())
    }
}

/// A check reporting a stats snapshot. See [`stats_check`].
pub struct StatsCheck<F, J> {
    snapshot: F,
    judge: J,
}

impl<F, J> std::fmt::Debug for StatsCheck<F, J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsCheck").finish_non_exhaustive()
    }
}

/// A healthy-by-default check whose details are a stats snapshot: how other modules (store,
/// transaction, purge, metrics) are reported without `health` knowing them.
///
/// Add a verdict with [`StatsCheck::status`].
///
/// ```
/// use tower_strata::health::{Status, stats_check};
///
/// #[derive(serde::Serialize)]
/// struct QueueStats { depth: usize }
///
/// let check = stats_check(|| QueueStats { depth: 12 })
///     .status(|s: &QueueStats| if s.depth > 1000 { Status::Degraded } else { Status::Healthy });
/// # let _ = check;
/// ```
pub fn stats_check<F, T>(snapshot: F) -> StatsCheck<F, fn(&T) -> Status>
where
    F: Fn() -> T + Send + Sync + 'static,
    T: Serialize + 'static,
{
    StatsCheck {
        snapshot,
        judge: |_| Status::Healthy,
    }
}

impl<F, J> StatsCheck<F, J> {
    /// Decides the status from the snapshot (for example degraded above an error rate).
    pub fn status<T, J2>(self, judge: J2) -> StatsCheck<F, J2>
    where
        F: Fn() -> T,
        J2: Fn(&T) -> Status + Send + Sync + 'static,
    {
        StatsCheck {
            snapshot: self.snapshot,
            judge,
        }
    }
}

impl<F, J, T> HealthCheck for StatsCheck<F, J>
where
    F: Fn() -> T + Send + Sync + 'static,
    J: Fn(&T) -> Status + Send + Sync + 'static,
    T: Serialize,
{
    fn check(&self) -> CheckFuture<'_> {
        let snapshot = (self.snapshot)();
        let status = (self.judge)(&snapshot);
        let output = match serde_json::to_value(&snapshot) {
            Ok(details) => CheckOutput {
                status,
                details,
                error: (status != Status::Healthy).then(|| format!("reported {status:?}")),
            },
            Err(e) => CheckOutput::unhealthy(format!("stats did not serialise: {e}")),
        };
        Box::pin(std::future::ready(output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stats_checks_serialise_and_judge() {
        #[derive(Serialize)]
        struct S {
            hits: u64,
        }
        let check = stats_check(|| S { hits: 7 });
        assert_eq!(check.check().await.details["hits"], 7);
        let check = stats_check(|| S { hits: 0 }).status(|s: &S| {
            if s.hits == 0 {
                Status::Degraded
            } else {
                Status::Healthy
            }
        });
        let out = check.check().await;
        assert_eq!(out.status, Status::Degraded);
        assert!(out.error.is_some());
    }

    #[tokio::test]
    async fn the_trait_is_object_safe() {
        let checks: Vec<Box<dyn HealthCheck>> = vec![
            Box::new(fn_check(|| async { CheckOutput::unhealthy("down") })),
            Box::new(stats_check(|| 1u8)),
        ];
        assert_eq!(checks[0].check().await.status, Status::Unhealthy);
        assert_eq!(checks[1].check().await.status, Status::Healthy);
    }

    #[test]
    fn statuses_order_by_severity() {
        assert!(Status::Healthy < Status::Degraded && Status::Degraded < Status::Unhealthy);
        assert_eq!(serde_json::to_value(Status::Degraded).unwrap(), "degraded");
    }
}
