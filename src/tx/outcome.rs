//! What an attempt came to ([`Outcome`]) and the layer's own answers ([`Failure`]): the
//! words the attempt, the retry policy and the loop share. Imports no step.

use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::body::{GrpcFailure, TxResponseBody};
use super::error::RetryReason;

/// Header on the layer's own error answers naming what happened: `retries-exhausted`,
/// `pool-exhausted`, `timeout`, `commit-failed`, `commit-ambiguous`, `bad-body`.
pub const TX_ERROR_HEADER: &str = "x-tx-error";

/// How one attempt of a request ended. Every variant but [`Committed`](Outcome::Committed)
/// and [`CommitDeferred`](Outcome::CommitDeferred) has rolled its transaction back (or had
/// none to roll back) and closed its after-commit hooks.
pub(super) enum Outcome<B, E> {
    /// Committed, or there was nothing to commit: the handler's response goes out, its hooks
    /// have run.
    Committed(Response<TxResponseBody<B>>),
    /// Rolled back on the response's verdict: the handler's response goes out.
    RolledBack(Response<TxResponseBody<B>>),
    /// The verdict waits for the end of the response body (gRPC trailers): the body carries
    /// the commit.
    CommitDeferred(Response<TxResponseBody<B>>),
    /// Rolled back after an error a replay may cure (or the database rolled back at
    /// `COMMIT`): whether to replay is the retry policy's call.
    Retryable(RetryReason),
    /// The handler ran past the transaction timeout: abandoned.
    TimedOut,
    /// Nothing committed, and the layer answers in the handler's place.
    Failed(Failure),
    /// The inner service failed: rolled back, and its error goes out.
    ServiceError(E),
}

/// What the adaptive limit learns from an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LimitSignal {
    /// A conflict forced a retry: fewer at once.
    Conflict,
    /// A clean commit: a little more at once.
    Success,
}

impl<B, E> Outcome<B, E> {
    /// The attempt span's `tx.result`.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Self::Committed(_) => "commit",
            Self::RolledBack(_) | Self::Failed(_) => "rollback",
            Self::CommitDeferred(_) => "deferred",
            Self::Retryable(_) => "retry",
            Self::TimedOut => "timeout",
            Self::ServiceError(_) => "error",
        }
    }

    /// What the adaptive limit should learn, if anything. A lost connection is no conflict:
    /// only conflicts say "fewer at once". A deferred commit has not happened yet.
    pub(super) fn limit_signal(&self) -> Option<LimitSignal> {
        match self {
            Self::Retryable(RetryReason::ConnectionLost) => None,
            Self::Retryable(_) => Some(LimitSignal::Conflict),
            Self::Committed(_) => Some(LimitSignal::Success),
            _ => None,
        }
    }

    /// The answer to the client. A retryable outcome that was not replayed is
    /// `retries-exhausted`.
    pub(super) fn into_response(
        self,
        grpc: bool,
        retry_after: u64,
    ) -> Result<Response<TxResponseBody<B>>, E> {
        let failure = match self {
            Self::Committed(response)
            | Self::RolledBack(response)
            | Self::CommitDeferred(response) => return Ok(response),
            Self::ServiceError(err) => return Err(err),
            Self::Retryable(_) => Failure::RetriesExhausted,
            Self::TimedOut => Failure::Timeout,
            Self::Failed(failure) => failure,
        };
        Ok(failure.respond(grpc, retry_after))
    }
}

/// Why the layer answers in the handler's place: one spelling for the status, the gRPC
/// status, the [`TX_ERROR_HEADER`] tag and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    RetriesExhausted,
    PoolExhausted,
    Timeout,
    CommitFailed,
    CommitAmbiguous,
    BadBody,
}

impl Failure {
    fn status(self) -> StatusCode {
        match self {
            Self::RetriesExhausted | Self::PoolExhausted | Self::Timeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::CommitFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Self::CommitAmbiguous => StatusCode::BAD_GATEWAY,
            Self::BadBody => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC status (code and message) for the answer or the trailers.
    pub(super) fn grpc(self) -> GrpcFailure {
        match self {
            Self::RetriesExhausted | Self::PoolExhausted | Self::Timeout => (14, self.message()),
            Self::CommitFailed => (13, self.message()),
            Self::CommitAmbiguous => (2, self.message()),
            Self::BadBody => (3, self.message()),
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Self::RetriesExhausted => "retries-exhausted",
            Self::PoolExhausted => "pool-exhausted",
            Self::Timeout => "timeout",
            Self::CommitFailed => "commit-failed",
            Self::CommitAmbiguous => "commit-ambiguous",
            Self::BadBody => "bad-body",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::RetriesExhausted => "database busy: transaction conflicts, retry later",
            Self::PoolExhausted => "database busy: no connection available, retry later",
            Self::Timeout => "transaction timed out, retry later",
            Self::CommitFailed => "the transaction could not be committed",
            Self::CommitAmbiguous => {
                "the connection was lost during commit: the change may or may not have been applied"
            }
            Self::BadBody => "the request body could not be read",
        }
    }

    /// The answer: a plain-text error, or for a gRPC request a trailers-only gRPC status;
    /// `Retry-After` on the `503`s, which a later try may get past.
    pub(super) fn respond<B>(self, grpc: bool, retry_after: u64) -> Response<TxResponseBody<B>> {
        let mut headers = HeaderMap::new();
        headers.insert(TX_ERROR_HEADER, HeaderValue::from_static(self.tag()));
        let mut response = if grpc {
            let (code, message) = self.grpc();
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
            headers.insert("grpc-message", HeaderValue::from_static(message));
            Response::new(TxResponseBody::message(""))
        } else {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            let mut r = Response::new(TxResponseBody::message(self.message()));
            *r.status_mut() = self.status();
            r
        };
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        *response.headers_mut() = headers;
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Body = http_body_util::Empty<bytes::Bytes>;
    type O = Outcome<Body, &'static str>;

    fn response() -> Response<TxResponseBody<Body>> {
        Response::new(TxResponseBody::message("from the handler"))
    }

    fn every_outcome() -> Vec<O> {
        vec![
            O::Committed(response()),
            O::RolledBack(response()),
            O::CommitDeferred(response()),
            O::Retryable(RetryReason::SerializationFailure),
            O::Retryable(RetryReason::ConnectionLost),
            O::TimedOut,
            O::Failed(Failure::CommitFailed),
            O::ServiceError("inner"),
        ]
    }

    #[test]
    fn each_outcome_has_its_span_label() {
        let labels: Vec<_> = every_outcome().iter().map(Outcome::label).collect();
        assert_eq!(
            labels,
            [
                "commit", "rollback", "deferred", "retry", "retry", "timeout", "rollback", "error"
            ]
        );
    }

    #[test]
    fn only_conflicts_and_clean_commits_move_the_limit() {
        let signals: Vec<_> = every_outcome().iter().map(Outcome::limit_signal).collect();
        assert_eq!(
            signals,
            [
                Some(LimitSignal::Success),
                None,
                None,
                Some(LimitSignal::Conflict),
                None, // a lost connection is not a conflict
                None,
                None,
                None,
            ]
        );
        for reason in [
            RetryReason::Deadlock,
            RetryReason::LockWaitTimeout,
            RetryReason::Busy,
        ] {
            assert_eq!(
                O::Retryable(reason).limit_signal(),
                Some(LimitSignal::Conflict),
                "{reason}"
            );
        }
    }

    /// The tag, the status and whether `Retry-After` came, of a response the layer made.
    fn answer(outcome: O) -> (Option<String>, StatusCode, Option<String>) {
        let r = outcome
            .into_response(false, 7)
            .expect("not a service error");
        let header = |name| {
            r.headers()
                .get(name)
                .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
        };
        (
            header(TX_ERROR_HEADER),
            r.status(),
            header(http::header::RETRY_AFTER.as_str()),
        )
    }

    #[test]
    fn the_handlers_answers_go_out_untouched_and_the_rest_are_the_layers() {
        for outcome in [
            O::Committed(response()),
            O::RolledBack(response()),
            O::CommitDeferred(response()),
        ] {
            assert_eq!(answer(outcome), (None, StatusCode::OK, None));
        }
        assert!(matches!(
            O::ServiceError("inner").into_response(false, 7),
            Err("inner")
        ));
        let busy = |tag: &str| {
            (
                Some(tag.to_owned()),
                StatusCode::SERVICE_UNAVAILABLE,
                Some("7".to_owned()),
            )
        };
        // A retryable outcome reaches the client only when the policy did not replay it.
        assert_eq!(
            answer(O::Retryable(RetryReason::Deadlock)),
            busy("retries-exhausted")
        );
        assert_eq!(answer(O::TimedOut), busy("timeout"));
        assert_eq!(
            answer(O::Failed(Failure::PoolExhausted)),
            busy("pool-exhausted")
        );
        assert_eq!(
            answer(O::Failed(Failure::CommitAmbiguous)),
            (
                Some("commit-ambiguous".to_owned()),
                StatusCode::BAD_GATEWAY,
                None
            )
        );
        assert_eq!(
            answer(O::Failed(Failure::CommitFailed)),
            (
                Some("commit-failed".to_owned()),
                StatusCode::INTERNAL_SERVER_ERROR,
                None
            )
        );
    }

    #[test]
    fn grpc_requests_get_a_grpc_status() {
        let r = Failure::CommitAmbiguous.respond::<Body>(true, 7);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "2");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()[TX_ERROR_HEADER], "commit-ambiguous");
        assert!(r.headers().get(http::header::RETRY_AFTER).is_none());
        let r = Failure::Timeout.respond::<Body>(true, 7);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "7");
    }
}
