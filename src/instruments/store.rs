//! The stores' figures: calls by backend, operation and result, Cluster nodes, breakers, a
//! tiered store's sampled state.

#[cfg(all(feature = "metrics", feature = "redis"))]
use std::sync::OnceLock;
#[cfg(feature = "redis")]
use std::time::Duration;

#[cfg(feature = "metrics")]
use super::describe;
#[cfg(feature = "metrics")]
use crate::metrics::names;
#[cfg(feature = "redis")]
use crate::store::{BreakerState, StoreError};

#[cfg(feature = "redis")]
/// How a store call ended, as the `result` label spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallResult {
    Ok,
    /// An answer that is an error, a refused value, a lost connection.
    Error,
    Timeout,
    /// Refused at once by an open circuit breaker: nothing was sent.
    BreakerOpen,
    /// A read the caller stopped waiting for (the read soft timeout); the read itself goes on
    /// in the background and is counted again when it ends.
    SoftTimeout,
}

#[cfg(feature = "redis")]
impl CallResult {
    #[cfg(feature = "metrics")]
    const COUNT: usize = 5;

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CallResult::Ok => "ok",
            CallResult::Error => "error",
            CallResult::Timeout => "timeout",
            CallResult::BreakerOpen => "breaker-open",
            CallResult::SoftTimeout => "soft-timeout",
        }
    }

    pub(crate) fn of<T>(result: &Result<T, StoreError>) -> CallResult {
        match result {
            Ok(_) => CallResult::Ok,
            Err(StoreError::Timeout { .. }) => CallResult::Timeout,
            Err(StoreError::CircuitOpen { .. }) => CallResult::BreakerOpen,
            Err(_) => CallResult::Error,
        }
    }
}

#[cfg(feature = "redis")]
/// Operations of one remote store (Redis or a Cluster) by name: their counters and durations,
/// registered the first time each (operation, result) occurs. The operations are the store's
/// `&'static str` names (a bounded set written in its code); each finds its handles by a
/// short scan of pointer-sized slots, lock-free.
#[derive(Debug)]
pub(crate) struct RemoteOps {
    #[cfg(feature = "metrics")]
    backend: &'static str,
    #[cfg(feature = "metrics")]
    slots: Box<[OnceLock<OpHandles>; OP_SLOTS]>,
}

/// More than the Redis store's distinct operation names; any beyond share the last slot.
#[cfg(all(feature = "metrics", feature = "redis"))]
const OP_SLOTS: usize = 32;

#[cfg(all(feature = "metrics", feature = "redis"))]
#[derive(Debug)]
struct OpHandles {
    op: &'static str,
    label: String,
    by_result: [OnceLock<(metrics::Counter, metrics::Histogram)>; CallResult::COUNT],
}

#[cfg(feature = "redis")]
impl RemoteOps {
    pub(crate) fn new(backend: &'static str) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            RemoteOps {
                backend,
                slots: Box::new(std::array::from_fn(|_| OnceLock::new())),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = backend;
            RemoteOps {}
        }
    }

    /// Counts a call of `op` and, when it was timed, its duration.
    #[inline]
    pub(crate) fn record(&self, op: &'static str, result: CallResult, took: Option<Duration>) {
        #[cfg(feature = "metrics")]
        {
            let handles = self.handles(op);
            let (calls, duration) = handles.by_result[result as usize].get_or_init(|| {
                let labels = [
                    ("backend", self.backend.to_owned()),
                    ("operation", handles.label.clone()),
                    ("result", result.as_str().to_owned()),
                ];
                (
                    metrics::counter!(names::STORE_OPERATIONS, &labels),
                    metrics::histogram!(names::STORE_DURATION, &labels),
                )
            });
            calls.increment(1);
            if let Some(took) = took {
                duration.record(took.as_secs_f64());
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (op, result, took);
    }

    #[cfg(feature = "metrics")]
    fn handles(&self, op: &'static str) -> &OpHandles {
        let make = || OpHandles {
            op,
            // `soft purge read` reads `soft_purge_read` in a query.
            label: op.replace(' ', "_"),
            by_result: std::array::from_fn(|_| OnceLock::new()),
        };
        for slot in self.slots.iter() {
            let handles = slot.get_or_init(make);
            if handles.op == op {
                return handles;
            }
        }
        // Unreachable with the store's operations; counted with the last one rather than lost.
        let last = &self.slots[OP_SLOTS - 1];
        last.get_or_init(make)
    }
}

#[cfg(feature = "memory")]
/// The in-process store's operation counters (no durations: a call takes less than the two
/// clock reads that would time it).
#[derive(Debug)]
pub(crate) struct LocalOps {
    #[cfg(feature = "metrics")]
    counters: [metrics::Counter; LocalOp::COUNT],
}

#[cfg(feature = "memory")]
/// What the in-process store counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LocalOp {
    Get,
    Set,
    Delete,
    Purge,
}

#[cfg(feature = "memory")]
impl LocalOp {
    #[cfg(feature = "metrics")]
    const COUNT: usize = 4;
    #[cfg(feature = "metrics")]
    const ALL: [LocalOp; LocalOp::COUNT] =
        [LocalOp::Get, LocalOp::Set, LocalOp::Delete, LocalOp::Purge];

    #[cfg(feature = "metrics")]
    fn as_str(self) -> &'static str {
        match self {
            LocalOp::Get => "get",
            LocalOp::Set => "set",
            LocalOp::Delete => "delete",
            LocalOp::Purge => "purge",
        }
    }
}

#[cfg(feature = "memory")]
impl LocalOps {
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            LocalOps {
                counters: LocalOp::ALL.map(|op| {
                    metrics::counter!(
                        names::STORE_OPERATIONS,
                        "backend" => "memory",
                        "operation" => op.as_str(),
                        "result" => "ok"
                    )
                }),
            }
        }
        #[cfg(not(feature = "metrics"))]
        LocalOps {}
    }

    #[inline]
    pub(crate) fn count(&self, op: LocalOp) {
        #[cfg(feature = "metrics")]
        self.counters[op as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = op;
    }
}

#[cfg(feature = "redis-cluster")]
/// One Redis Cluster master's calls and their durations.
#[derive(Debug)]
pub(crate) struct NodeCalls {
    #[cfg(feature = "metrics")]
    node: String,
    #[cfg(feature = "metrics")]
    calls: [OnceLock<metrics::Counter>; CallResult::COUNT],
    #[cfg(feature = "metrics")]
    duration: metrics::Histogram,
}

#[cfg(feature = "redis-cluster")]
impl NodeCalls {
    pub(crate) fn new(node: String) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            NodeCalls {
                duration: metrics::histogram!(names::STORE_NODE_DURATION, "node" => node.clone()),
                node,
                calls: std::array::from_fn(|_| OnceLock::new()),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = node;
            NodeCalls {}
        }
    }

    #[inline]
    pub(crate) fn record(&self, result: CallResult, took: Duration) {
        #[cfg(feature = "metrics")]
        {
            self.calls[result as usize]
                .get_or_init(|| {
                    metrics::counter!(
                        names::STORE_NODE_CALLS,
                        "node" => self.node.clone(),
                        "result" => result.as_str()
                    )
                })
                .increment(1);
            self.duration.record(took.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (result, took);
    }
}

#[cfg(feature = "redis")]
/// A circuit breaker's state gauge and openings counter.
#[derive(Debug)]
pub(crate) struct BreakerFigures {
    #[cfg(feature = "metrics")]
    state: metrics::Gauge,
    #[cfg(feature = "metrics")]
    openings: metrics::Counter,
}

#[cfg(feature = "redis")]
impl BreakerFigures {
    /// Registered closed.
    pub(crate) fn new(breaker: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            let figures = BreakerFigures {
                state: metrics::gauge!(names::STORE_BREAKER_STATE, "breaker" => breaker.to_owned()),
                openings: metrics::counter!(
                    names::STORE_BREAKER_OPENINGS,
                    "breaker" => breaker.to_owned()
                ),
            };
            figures.state(BreakerState::Closed);
            figures
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = breaker;
            BreakerFigures {}
        }
    }
    pub(crate) fn state(&self, state: BreakerState) {
        #[cfg(feature = "metrics")]
        self.state.set(match state {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        });
        #[cfg(not(feature = "metrics"))]
        let _ = state;
    }
    pub(crate) fn opened(&self) {
        #[cfg(feature = "metrics")]
        {
            self.openings.increment(1);
            self.state(BreakerState::Open);
        }
    }
}

#[cfg(all(feature = "memory", feature = "redis"))]
/// A tiered store's state, sampled (it is derived from the backplane, the breaker and the
/// replay queue, so no single place changes it).
#[derive(Debug)]
pub(crate) struct TieredGauges {
    #[cfg(feature = "metrics")]
    l1_in_use: metrics::Gauge,
    #[cfg(feature = "metrics")]
    queued: metrics::Gauge,
}

#[cfg(all(feature = "memory", feature = "redis"))]
impl TieredGauges {
    /// Whether sampling is worth a task: only with feature `metrics`.
    pub(crate) const ENABLED: bool = cfg!(feature = "metrics");
    /// How often a tiered store samples its gauges.
    pub(crate) const PERIOD: Duration = Duration::from_secs(1);
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            TieredGauges {
                l1_in_use: metrics::gauge!(names::STORE_L1_IN_USE),
                queued: metrics::gauge!(names::STORE_INVALIDATIONS_QUEUED),
            }
        }
        #[cfg(not(feature = "metrics"))]
        TieredGauges {}
    }
    pub(crate) fn sample(&self, l1_in_use: bool, queued: u64) {
        #[cfg(feature = "metrics")]
        {
            self.l1_in_use.set(f64::from(u8::from(l1_in_use)));
            self.queued.set(queued as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (l1_in_use, queued);
    }
}
