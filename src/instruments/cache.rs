//! The response cache's figures.

#[cfg(feature = "metrics")]
use super::describe;
#[cfg(feature = "metrics")]
use crate::metrics::names;

#[cfg(feature = "cache")]
/// The response cache's figures: requests by outcome (the labels of `cache::status::Outcome`'s
/// figures), and what fills stored.
pub(crate) struct CacheFigures {
    #[cfg(feature = "metrics")]
    requests: Vec<metrics::Counter>,
    #[cfg(feature = "metrics")]
    stored_bytes: metrics::Counter,
    #[cfg(feature = "metrics")]
    stored_entries: metrics::Counter,
}

#[cfg(feature = "cache")]
impl CacheFigures {
    /// Registers a counter per `(outcome, reason)` label pair.
    pub(crate) fn new(labels: &[(&'static str, &'static str)]) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            CacheFigures {
                requests: labels
                    .iter()
                    .map(|&(outcome, reason)| {
                        metrics::counter!(
                            names::CACHE_REQUESTS,
                            "outcome" => outcome,
                            "reason" => reason
                        )
                    })
                    .collect(),
                stored_bytes: metrics::counter!(names::CACHE_STORED_BYTES),
                stored_entries: metrics::counter!(names::CACHE_STORED_ENTRIES),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = labels;
            CacheFigures {}
        }
    }

    /// A request with the outcome at `figure` in the labels given to [`CacheFigures::new`].
    #[inline]
    pub(crate) fn request(&self, figure: usize) {
        #[cfg(feature = "metrics")]
        if let Some(counter) = self.requests.get(figure) {
            counter.increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = figure;
    }

    /// A fill stored `bytes` (its encoded size).
    pub(crate) fn stored(&self, bytes: usize) {
        #[cfg(feature = "metrics")]
        {
            self.stored_bytes.increment(bytes as u64);
            self.stored_entries.increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = bytes;
    }
}
