//! Warming runs and requests.

#[cfg(feature = "metrics")]
use super::describe;
#[cfg(feature = "metrics")]
use crate::metrics::names;

#[cfg(feature = "warm")]
/// Warming runs and requests.
#[derive(Debug)]
pub(crate) struct WarmFigures {
    /// `[failed]`
    #[cfg(feature = "metrics")]
    runs: [metrics::Counter; 2],
    /// ok, failed, timeout
    #[cfg(feature = "metrics")]
    requests: [metrics::Counter; 3],
}

#[cfg(feature = "warm")]
impl Default for WarmFigures {
    fn default() -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            WarmFigures {
                runs: ["ok", "failed"]
                    .map(|result| metrics::counter!(names::WARM_RUNS, "result" => result)),
                requests: ["ok", "failed", "timeout"]
                    .map(|result| metrics::counter!(names::WARM_REQUESTS, "result" => result)),
            }
        }
        #[cfg(not(feature = "metrics"))]
        WarmFigures {}
    }
}

#[cfg(feature = "warm")]
impl WarmFigures {
    /// One run: requests that succeeded, failed otherwise, and timed out; whether anything
    /// failed (a source included).
    pub(crate) fn run(&self, succeeded: u64, failed: u64, timed_out: u64, any_failure: bool) {
        #[cfg(feature = "metrics")]
        {
            self.runs[usize::from(any_failure)].increment(1);
            self.requests[0].increment(succeeded);
            self.requests[1].increment(failed.saturating_sub(timed_out));
            self.requests[2].increment(timed_out);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (succeeded, failed, timed_out, any_failure);
    }
}
