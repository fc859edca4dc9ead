//! When to commit: [`CommitPolicy`], the default for HTTP and gRPC, and the per-response
//! override [`Verdict`]. When to replay: the layer's retry policy, which decides from an
//! attempt's outcome whether to try again, after how long, and when to give up.

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};

use super::config::{TxConfig, TxMode, is_read_method};
use super::error::RetryReason;
use super::outcome::Outcome;

/// Commit or roll back. Also the per-response override: a handler that inserts a `Verdict`
/// into its response extensions decides for that response, whatever the policy says
/// (commit this `409`, roll back this `200`).
///
/// ```
/// use tower_strata::tx::Verdict;
///
/// let mut response = http::Response::new(());
/// *response.status_mut() = http::StatusCode::CONFLICT;
/// response.extensions_mut().insert(Verdict::Commit); // keep the audit row written
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Commit the transaction.
    Commit,
    /// Roll it back.
    Rollback,
}

/// Decides from a response whether its transaction commits.
///
/// Closures `Fn(StatusCode, &HeaderMap) -> Verdict` are policies too. The trait is
/// object-safe (`Arc<dyn CommitPolicy>` works).
pub trait CommitPolicy: Send + Sync + 'static {
    /// The verdict from the response head, or `None` to decide from the trailers once the
    /// body has been sent (gRPC answers with `grpc-status` in its trailers).
    fn on_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Verdict>;

    /// The verdict from the trailers (`None` when the body ended without any); called only
    /// after [`on_response`](CommitPolicy::on_response) returned `None`. The default
    /// commits when `grpc-status` is `0`.
    fn on_trailers(&self, trailers: Option<&HeaderMap>) -> Verdict {
        grpc_verdict(trailers).unwrap_or(Verdict::Rollback)
    }
}

fn grpc_verdict(headers: Option<&HeaderMap>) -> Option<Verdict> {
    let status = headers?.get("grpc-status")?;
    Some(if status.as_bytes() == b"0" {
        Verdict::Commit
    } else {
        Verdict::Rollback
    })
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The default policy: for gRPC (`content-type: application/grpc*`) commit when
/// `grpc-status` is `0`, read from the headers or else the trailers; for anything else commit
/// when the status is below 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultPolicy;

impl CommitPolicy for DefaultPolicy {
    fn on_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Verdict> {
        if let Some(v) = grpc_verdict(Some(headers)) {
            return Some(v);
        }
        if is_grpc(headers) {
            return if status.is_success() {
                None
            } else {
                Some(Verdict::Rollback)
            };
        }
        Some(if status.as_u16() < 400 {
            Verdict::Commit
        } else {
            Verdict::Rollback
        })
    }
}

impl<F> CommitPolicy for F
where
    F: Fn(StatusCode, &HeaderMap) -> Verdict + Send + Sync + 'static,
{
    fn on_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Verdict> {
        Some(self(status, headers))
    }
}

/// When a request is replayed: [`TxConfig::max_attempts`] attempts within
/// [`TxConfig::retry_deadline`], each after a fully jittered exponential
/// [`backoff`](TxConfig::backoff). Only a retryable [`Outcome`] of a request whose body was kept
/// is replayed. The attempt loop asks it and does what it says, as tower's `Retry` asks its
/// `Policy`.
#[derive(Debug, Clone, Copy)]
pub(super) struct RetryPolicy {
    max_attempts: u32,
    deadline: Duration,
    backoff_base: Duration,
    backoff_max: Duration,
}

/// The retry policy's answer for one attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Not a retryable outcome: it is the answer.
    Answer,
    /// Replay the request after a back-off.
    Replay {
        reason: RetryReason,
        after: Duration,
    },
    /// Retryable, but no attempt, time or kept body is left to replay it with: `503`.
    Exhausted,
}

impl RetryPolicy {
    pub(super) fn new(config: &TxConfig) -> Self {
        Self {
            max_attempts: config.max_attempts,
            deadline: config.retry_deadline,
            backoff_base: config.backoff_base,
            backoff_max: config.backoff_max,
        }
    }

    /// Whether a retryable error may replay a request of `method` run in `mode` at all.
    /// Without a transaction, statements that succeeded before the error stay committed: only
    /// a request that cannot have written (a read method) may be replayed. A request that may
    /// not is answered by its handler, the verdict deciding as for any response.
    pub(super) fn may_replay(mode: TxMode, method: &Method) -> bool {
        mode.is_transaction() || is_read_method(method)
    }

    /// What is left of the request's deadline `elapsed` after it began: how long an attempt
    /// may wait for room under the adaptive limit.
    pub(super) fn time_left(&self, elapsed: Duration) -> Duration {
        self.deadline.saturating_sub(elapsed)
    }

    /// The decision after attempt number `attempt` (counted from 1) came to `outcome`,
    /// `elapsed` after the request began. `body_kept` says whether the request body was
    /// buffered, so that there is one to replay. A replay must start before the deadline.
    pub(super) fn retry<B, E>(
        &self,
        outcome: &Outcome<B, E>,
        attempt: u32,
        elapsed: Duration,
        body_kept: bool,
    ) -> Decision {
        let Outcome::Retryable(reason) = *outcome else {
            return Decision::Answer;
        };
        let after = self.backoff(attempt);
        if body_kept && attempt < self.max_attempts && elapsed + after < self.deadline {
            Decision::Replay { reason, after }
        } else {
            Decision::Exhausted
        }
    }

    /// The back-off after attempt `attempt` (counted from 1): anywhere up to
    /// `base × 2^(attempt-1)`, capped at the maximum.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.backoff_max);
        // Full jitter: anywhere up to the exponential bound, so retries that conflicted
        // together do not come back together.
        Duration::from_micros(rand::random_range(0..=exp.as_micros() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn http_statuses() {
        for (status, verdict) in [
            (StatusCode::OK, Verdict::Commit),
            (StatusCode::FOUND, Verdict::Commit),
            (StatusCode::NOT_FOUND, Verdict::Rollback),
            (StatusCode::INTERNAL_SERVER_ERROR, Verdict::Rollback),
        ] {
            let got = DefaultPolicy.on_response(status, &HeaderMap::new());
            assert_eq!(got, Some(verdict), "{status}");
        }
    }

    #[test]
    fn grpc_status_in_headers_or_trailers() {
        let p = DefaultPolicy;
        let grpc = ("content-type", "application/grpc");
        // A `grpc-status` in the headers (a trailers-only answer) decides; without one, the
        // trailers do.
        for (pairs, verdict) in [
            (&[grpc][..], None),
            (&[grpc, ("grpc-status", "5")], Some(Verdict::Rollback)),
            (&[grpc, ("grpc-status", "0")], Some(Verdict::Commit)),
        ] {
            let got = p.on_response(StatusCode::OK, &headers(pairs));
            assert_eq!(got, verdict, "{pairs:?}");
        }
        for (status, verdict) in [
            (Some("0"), Verdict::Commit),
            (Some("13"), Verdict::Rollback),
            (None, Verdict::Rollback),
        ] {
            let trailers = status.map(|s| headers(&[("grpc-status", s)]));
            assert_eq!(p.on_trailers(trailers.as_ref()), verdict, "{status:?}");
        }
    }

    #[test]
    fn closures_and_trait_objects() {
        let p: Arc<dyn CommitPolicy> = Arc::new(|s: StatusCode, _: &HeaderMap| {
            if s.is_server_error() {
                Verdict::Rollback
            } else {
                Verdict::Commit
            }
        });
        let h = HeaderMap::new();
        assert_eq!(
            p.on_response(StatusCode::CONFLICT, &h),
            Some(Verdict::Commit)
        );
        assert_eq!(
            p.on_response(StatusCode::BAD_GATEWAY, &h),
            Some(Verdict::Rollback)
        );
    }

    use crate::tx::body::TxResponseBody;
    use crate::tx::outcome::Failure;

    type O = Outcome<http_body_util::Empty<bytes::Bytes>, &'static str>;

    const MS: Duration = Duration::from_millis(1);

    /// Three attempts within 100 ms, no back-off: decisions without chance.
    fn policy() -> RetryPolicy {
        RetryPolicy::new(
            &TxConfig::default()
                .max_attempts(3)
                .retry_deadline(100 * MS)
                .backoff(Duration::ZERO, Duration::ZERO),
        )
    }

    #[test]
    fn only_retryable_outcomes_are_replayed() {
        let response = || http::Response::new(TxResponseBody::message(""));
        for outcome in [
            O::Committed(response()),
            O::RolledBack(response()),
            O::CommitDeferred(response()),
            O::TimedOut,
            O::Failed(Failure::PoolExhausted),
            O::Failed(Failure::CommitAmbiguous),
            O::ServiceError("inner"),
        ] {
            let label = outcome.label();
            assert_eq!(
                policy().retry(&outcome, 1, Duration::ZERO, true),
                Decision::Answer,
                "{label}"
            );
        }
        for reason in [
            RetryReason::SerializationFailure,
            RetryReason::ConnectionLost,
        ] {
            assert_eq!(
                policy().retry(&O::Retryable(reason), 1, Duration::ZERO, true),
                Decision::Replay {
                    reason,
                    after: Duration::ZERO
                }
            );
        }
    }

    #[test]
    fn a_replay_needs_an_attempt_left_time_left_and_a_kept_body() {
        let p = policy();
        let conflict = O::Retryable(RetryReason::Deadlock);
        let replay = Decision::Replay {
            reason: RetryReason::Deadlock,
            after: Duration::ZERO,
        };
        assert_eq!(p.retry(&conflict, 2, 99 * MS, true), replay);
        assert_eq!(
            p.retry(&conflict, 3, Duration::ZERO, true),
            Decision::Exhausted
        );
        assert_eq!(p.retry(&conflict, 1, 100 * MS, true), Decision::Exhausted);
        // A streamed body was consumed by the first attempt.
        assert_eq!(
            p.retry(&conflict, 1, Duration::ZERO, false),
            Decision::Exhausted
        );
    }

    #[test]
    fn a_back_off_that_would_end_past_the_deadline_is_not_waited() {
        let p = RetryPolicy::new(
            &TxConfig::default()
                .retry_deadline(100 * MS)
                .backoff(50 * MS, 50 * MS),
        );
        let conflict = O::Retryable(RetryReason::Busy);
        // With 60 ms gone, a replay is possible only when the jitter draws under 40 ms.
        for _ in 0..200 {
            match p.retry(&conflict, 1, 60 * MS, true) {
                Decision::Replay { after, .. } => assert!(after < 40 * MS, "{after:?}"),
                Decision::Exhausted => {}
                Decision::Answer => panic!("a retryable outcome is never the answer"),
            }
        }
        assert_eq!(p.retry(&conflict, 1, 100 * MS, true), Decision::Exhausted);
    }

    #[test]
    fn the_wait_for_the_limit_is_bounded_by_the_deadline() {
        let p = policy();
        assert_eq!(p.time_left(30 * MS), 70 * MS);
        assert_eq!(p.time_left(300 * MS), Duration::ZERO);
    }

    #[test]
    fn only_transactions_and_reads_are_replayed() {
        for (mode, method, replay) in [
            (TxMode::ReadWrite, Method::POST, true),
            (TxMode::ReadOnly, Method::GET, true),
            (TxMode::Autocommit, Method::GET, true),
            (TxMode::Autocommit, Method::HEAD, true),
            // What it wrote before the error stays committed.
            (TxMode::Autocommit, Method::POST, false),
            (TxMode::Autocommit, Method::DELETE, false),
        ] {
            assert_eq!(
                RetryPolicy::may_replay(mode, &method),
                replay,
                "{mode:?} {method}"
            );
        }
    }

    #[test]
    fn backoff_is_fully_jittered_under_a_growing_capped_bound() {
        let p = RetryPolicy::new(&TxConfig::default().backoff(10 * MS, 40 * MS));
        let (mut low, mut high) = (Duration::MAX, Duration::ZERO);
        for _ in 0..1000 {
            let b1 = p.backoff(1);
            assert!(b1 <= 10 * MS);
            let b3 = p.backoff(3);
            assert!(b3 <= 40 * MS);
            low = low.min(b3);
            high = high.max(b3);
            let b9 = p.backoff(9);
            assert!(b9 <= 40 * MS);
        }
        // Full jitter: the whole range is used, not only its upper half.
        assert!(low < 10 * MS && high > 30 * MS);
    }
}
