//! Every Redis call the store makes goes through here: the command timeout, the circuit
//! breaker (one, or one per Cluster node), the read soft timeout, the breaker's probe, the
//! `store.call` span and the call's figures.

use std::time::Duration;

#[cfg(feature = "redis-cluster")]
use super::cluster;
use super::connection;
#[cfg(feature = "redis-cluster")]
use super::connection::RedisConn;
use super::{BreakerState, RedisStore};
use crate::instruments::CallResult;
use crate::store::StoreError;
use crate::store::breaker::Breaker;

impl RedisStore {
    /// Runs a Redis call under the command timeout and the circuit breaker, counting
    /// failures, in a `store.call` span (OpenTelemetry's `db.*` fields) and timed on the
    /// `metrics` facade. The call is a future not yet polled: refused by an open breaker, it
    /// is dropped without sending anything.
    pub(super) async fn run<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let span = tracing::debug_span!(
            "store.call",
            db.system = "redis",
            db.operation.name = op,
            store.backend = if self.inner.conn.is_cluster() { "redis-cluster" } else { "redis" },
            store.result = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let began = tokio::time::Instant::now();
        let result =
            tracing::Instrument::instrument(self.run_bounded(op, call), span.clone()).await;
        let outcome = CallResult::of(&result);
        self.inner.ops.record(op, outcome, Some(began.elapsed()));
        span.record("store.result", outcome.as_str());
        if outcome != CallResult::Ok {
            span.record("error.type", outcome.as_str());
        }
        result
    }

    /// [`run`](Self::run) without the span and the figures.
    pub(super) async fn run_bounded<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let ticket = match self.inner.breaker.as_ref().map(Breaker::admit) {
            Some(Err(_)) => return Err(StoreError::CircuitOpen { op }),
            Some(Ok(ticket)) => Some(ticket),
            None => None,
        };
        // On a Cluster each node call is bounded by the timeout under its node's breaker; this
        // bound leaves room for them (and a redirection) so that they, not it, fire first.
        let bound = if self.inner.conn.is_cluster() {
            self.inner.timeout * 2 + Duration::from_millis(50)
        } else {
            self.inner.timeout
        };
        let (result, backend_down) = match tokio::time::timeout(bound, call).await {
            Ok(Ok(value)) => {
                if let Some(ticket) = ticket {
                    ticket.success();
                }
                return Ok(value);
            }
            #[cfg(feature = "redis-cluster")]
            Ok(Err(e)) if cluster::is_circuit_open(&e) => {
                return Err(StoreError::CircuitOpen { op });
            }
            Ok(Err(e)) if e.is_timeout() => (
                StoreError::Timeout {
                    op,
                    after: self.inner.timeout,
                },
                true,
            ),
            Ok(Err(e)) => {
                // An answer (a script or type error) says the server is there.
                let down = connection::backend_down(&e);
                (StoreError::backend(op, e), down)
            }
            Err(_) => (
                StoreError::Timeout {
                    op,
                    after: self.inner.timeout,
                },
                true,
            ),
        };
        if let Some(ticket) = ticket {
            if backend_down {
                ticket.failure();
            } else {
                ticket.success();
            }
        }
        self.inner.counters.error(&result);
        Err(result)
    }

    /// The state of the circuit breaker on the store's commands (`None` when turned off). On a
    /// Cluster, the worst of its masters' breakers: `Open` when one master's is open, though
    /// the other masters' slots still answer ([`StoreStats::nodes`](crate::store::StoreStats::nodes) has each).
    pub fn breaker_state(&self) -> Option<BreakerState> {
        #[cfg(feature = "redis-cluster")]
        if let RedisConn::Cluster(cluster) = &self.inner.conn {
            return cluster.breaker_state();
        }
        self.inner.breaker.as_ref().map(Breaker::state)
    }

    /// Calls refused by the breakers, and how many times they opened.
    pub(crate) fn breaker_counts(&self) -> (u64, u64) {
        #[cfg(feature = "redis-cluster")]
        if let RedisConn::Cluster(cluster) = &self.inner.conn {
            return cluster.breaker_counts();
        }
        self.inner
            .breaker
            .as_ref()
            .map_or((0, 0), |b| (b.rejected(), b.opened()))
    }

    /// Each Cluster master's breaker, by address (empty on a server).
    pub(crate) fn node_states(&self) -> Vec<(String, BreakerState)> {
        #[cfg(feature = "redis-cluster")]
        if let RedisConn::Cluster(cluster) = &self.inner.conn {
            return cluster.master_states();
        }
        Vec::new()
    }

    /// Changes each time the breaker closes (on a Cluster, any node's; `None` without
    /// breakers).
    #[cfg(feature = "memory")]
    pub(crate) fn breaker_closings(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        #[cfg(feature = "redis-cluster")]
        if let RedisConn::Cluster(cluster) = &self.inner.conn {
            return cluster.closings().into();
        }
        self.inner.breaker.as_ref().map(Breaker::closings)
    }

    /// The background probe: once an open breaker's cool-down has passed, a `PING` under its
    /// probe ticket, whose answer closes it (on a Cluster, each node's, and the slot map is
    /// asked for again). No caller's request is ever the probe.
    pub(super) async fn probe(&self) {
        #[cfg(feature = "redis-cluster")]
        if let RedisConn::Cluster(cluster) = &self.inner.conn {
            cluster.probe().await;
            return;
        }
        let Some(ticket) = self.inner.breaker.as_ref().and_then(Breaker::probe) else {
            return;
        };
        let mut conn = self.inner.conn.clone();
        let ping = redis::cmd("PING");
        let pong = ping.query_async::<redis::Value>(&mut conn);
        match tokio::time::timeout(self.inner.timeout, pong).await {
            Ok(Ok(_)) => ticket.success(),
            Ok(Err(e)) if !connection::backend_down(&e) => ticket.success(),
            _ => ticket.failure(),
        }
    }

    /// Refuses a call on `key` at once when its breaker (the store's, or on a Cluster its
    /// master's) is open, before anything is built for it: no encoding, no boxed future, no
    /// timer. `run` refuses the same calls; this only makes the refusal cheap on the paths a
    /// cache takes for every request (a lookup, a write).
    pub(super) fn shed(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        #[cfg(feature = "redis-cluster")]
        if let RedisConn::Cluster(cluster) = &self.inner.conn {
            return match cluster.refuses(self.key(key).as_bytes()) {
                true => {
                    self.inner.ops.record(op, CallResult::BreakerOpen, None);
                    Err(StoreError::CircuitOpen { op })
                }
                false => Ok(()),
            };
        }
        let _ = key;
        match &self.inner.breaker {
            Some(breaker) if breaker.is_open() && breaker.admit().is_err() => {
                self.inner.ops.record(op, CallResult::BreakerOpen, None);
                Err(StoreError::CircuitOpen { op })
            }
            _ => Ok(()),
        }
    }

    /// Runs a read under the read soft timeout: past it the caller gets
    /// [`StoreError::Timeout`] (and goes to its origin) while the call finishes in the
    /// background, so the breaker still learns whether Redis answers.
    pub(super) async fn soft_bounded<T, Fut>(
        &self,
        op: &'static str,
        read: Fut,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let Some(soft) = self.inner.read_soft_timeout else {
            return read.await;
        };
        let mut read = Box::pin(read);
        tokio::select! {
            biased;
            result = &mut read => result,
            () = tokio::time::sleep(soft) => {
                tokio::spawn(read);
                let e = StoreError::Timeout { op, after: soft };
                self.inner.counters.error(&e);
                self.inner.ops.record(op, CallResult::SoftTimeout, Some(soft));
                Err(e)
            }
        }
    }
}
