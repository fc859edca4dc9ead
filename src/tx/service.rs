//! [`Tx`]: the service made by [`TxLayer`](super::TxLayer); the attempt loop.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tower::ServiceExt;
use tower_service::Service;
use tracing::Instrument;

use super::backend::{TxDatabase, classify};
use super::body::{GrpcFailure, TxBody, TxResponseBody};
use super::config::{TxMode, is_read_method};
use super::error::RetryReason;
use super::future::ResponseFuture;
use super::handle::{
    AfterCommit, Finished, Shared, TxHandle, commit_error_is_ambiguous, run_hooks,
};
use super::layer::TxLayer;
use super::policy::{CommitPolicy, Verdict};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Header on the layer's own error answers naming what happened: `retries-exhausted`,
/// `pool-exhausted`, `timeout`, `commit-failed`, `commit-ambiguous`, `bad-body`.
pub const TX_ERROR_HEADER: &str = "x-tx-error";

/// The service made by [`TxLayer`](super::TxLayer); see the [module docs](super).
pub struct Tx<S, DB: TxDatabase, P> {
    pub(crate) inner: S,
    pub(crate) layer: TxLayer<DB, P>,
}

impl<S, DB: TxDatabase, P> Tx<S, DB, P> {
    inner_service_accessors!();
}

impl<S: Clone, DB: TxDatabase, P> Clone for Tx<S, DB, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, DB: TxDatabase, P> fmt::Debug for Tx<S, DB, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, DB, P, B, ResB> Service<Request<B>> for Tx<S, DB, P>
where
    S: Service<Request<TxBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    DB: TxDatabase,
    P: CommitPolicy,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<TxResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            inner: Box::pin(run(ready, self.layer.clone(), req)),
        }
    }
}

enum Failure {
    RetriesExhausted,
    PoolExhausted,
    Timeout,
    CommitFailed,
    CommitAmbiguous,
    BadBody,
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Self::RetriesExhausted | Self::PoolExhausted | Self::Timeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::CommitFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Self::CommitAmbiguous => StatusCode::BAD_GATEWAY,
            Self::BadBody => StatusCode::BAD_REQUEST,
        }
    }

    fn grpc(&self) -> GrpcFailure {
        match self {
            Self::RetriesExhausted | Self::PoolExhausted | Self::Timeout => (14, self.message()),
            Self::CommitFailed => (13, self.message()),
            Self::CommitAmbiguous => (2, self.message()),
            Self::BadBody => (3, self.message()),
        }
    }

    fn tag(&self) -> &'static str {
        match self {
            Self::RetriesExhausted => "retries-exhausted",
            Self::PoolExhausted => "pool-exhausted",
            Self::Timeout => "timeout",
            Self::CommitFailed => "commit-failed",
            Self::CommitAmbiguous => "commit-ambiguous",
            Self::BadBody => "bad-body",
        }
    }

    fn message(&self) -> &'static str {
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

    fn respond<B>(&self, grpc: bool, retry_after: u64) -> Response<TxResponseBody<B>> {
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

fn rebuild<B>(parts: &http::request::Parts, body: TxBody<B>) -> Request<TxBody<B>> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    *req.extensions_mut() = parts.extensions.clone();
    req
}

enum Step<R> {
    Done(R),
    Retry(RetryReason),
}

async fn run<S, DB, P, B, ResB>(
    mut svc: S,
    layer: TxLayer<DB, P>,
    req: Request<B>,
) -> Result<Response<TxResponseBody<ResB>>, S::Error>
where
    S: Service<Request<TxBody<B>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    DB: TxDatabase,
    P: CommitPolicy,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
{
    let config = layer.config.clone();
    let stats = layer.stats.inner.clone();
    let retry_after = config.retry_after_secs();
    let (parts, body) = req.into_parts();
    let grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    let fail = |f: Failure| f.respond::<ResB>(grpc, retry_after);
    let mode = config.mode_of(&parts.method);
    let pool = layer.pool_for(mode).clone();
    // Without a transaction, statements that succeeded before a retryable error stay
    // committed: only a request that cannot have written (a read method) may be replayed.
    let replayable = mode.is_transaction() || is_read_method(&parts.method);

    let mut buffered = None;
    let mut streaming = None;
    match body.size_hint().exact() {
        Some(n) if n <= config.max_body_size as u64 => {
            match Limited::new(body, config.max_body_size).collect().await {
                Ok(collected) => buffered = Some(collected.to_bytes()),
                Err(_) => return Ok(fail(Failure::BadBody)),
            }
        }
        _ => streaming = Some(body),
    }

    let started = Instant::now();
    let mut attempt = 1u32;
    loop {
        // One span per attempt: the handler's statements and the commit are its children, and
        // a replay shows as a sibling with its reason on the one before.
        let attempt_span = tracing::debug_span!(
            "tx.attempt",
            db.system = db_system(<DB as sqlx::Database>::NAME),
            db.operation.name = "transaction",
            tx.mode = mode.label(),
            tx.attempt = attempt,
            tx.result = tracing::field::Empty,
            tx.retry.reason = tracing::field::Empty,
        );
        let body = match (&buffered, streaming.take()) {
            (Some(bytes), _) => TxBody::buffered(bytes.clone()),
            (None, Some(body)) => TxBody::streaming(body),
            // Only a buffered request is replayed, so the streaming body is always there.
            (None, None) => return Ok(fail(Failure::RetriesExhausted)),
        };
        let mut req = rebuild(&parts, body);
        let shared = Arc::new(Shared::new(config.clone(), stats.clone(), mode));
        let handle = TxHandle::new(pool.clone(), shared.clone());
        req.extensions_mut().insert(handle.clone());
        req.extensions_mut()
            .insert(AfterCommit::new(shared.clone()));
        if attempt > 1 {
            svc.ready().await?;
        }
        // Room under the adaptive limit, within what is left of the request's budget. Only
        // read-write transactions conflict on the rows they write; reads pass.
        let limit = layer.limit.as_deref().filter(|_| mode == TxMode::ReadWrite);
        let permit = match limit {
            Some(limit) => {
                let budget = config.retry_deadline.saturating_sub(started.elapsed());
                match tokio::time::timeout(budget, limit.acquire()).await {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        stats.retries_exhausted();
                        return Ok(fail(Failure::RetriesExhausted));
                    }
                }
            }
            None => None,
        };
        let mut committed = false;
        // The commit waits for the end of the response body (gRPC trailers).
        let mut deferred = false;
        let attempt_began = Instant::now();
        let call = {
            let _entered = attempt_span.enter();
            svc.call(req)
        };
        let call = AssertUnwindSafe(call.instrument(attempt_span.clone())).catch_unwind();
        let outcome = match config.transaction_timeout {
            Some(limit) => tokio::time::timeout(limit, call).await.ok(),
            None => Some(call.await),
        };
        let response = match outcome {
            None => {
                handle.abandon().await;
                shared.take_hooks(false);
                stats.timed_out();
                attempt_span.record("tx.result", "timeout");
                return Ok(fail(Failure::Timeout));
            }
            Some(Err(panic)) => {
                handle.abandon().await;
                shared.take_hooks(false);
                std::panic::resume_unwind(panic);
            }
            Some(Ok(Err(err))) => {
                handle.finish(false).await;
                shared.take_hooks(false);
                attempt_span.record("tx.result", "error");
                return Err(err);
            }
            Some(Ok(Ok(response))) => response,
        };

        let step = if shared.pool_exhausted() {
            handle.finish(false).await;
            shared.take_hooks(false);
            stats.pool_exhausted();
            Step::Done(fail(Failure::PoolExhausted))
        } else if let Some(reason) = shared.retry_reason().filter(|_| replayable) {
            handle.finish(false).await;
            shared.take_hooks(false);
            Step::Retry(reason)
        } else {
            let verdict = response.extensions().get::<Verdict>().copied().or_else(|| {
                layer
                    .policy
                    .on_response(response.status(), response.headers())
            });
            match verdict {
                Some(Verdict::Rollback) => {
                    handle.finish(false).await;
                    shared.take_hooks(false);
                    Step::Done(response.map(TxResponseBody::inner))
                }
                Some(Verdict::Commit) => match commit_then_hooks(handle, shared.clone())
                    .instrument(attempt_span.clone())
                    .await
                {
                    Finished::Committed | Finished::NotBegun => {
                        committed = true;
                        Step::Done(response.map(TxResponseBody::inner))
                    }
                    Finished::Aborted | Finished::RolledBack => {
                        stats.commit_failed(false);
                        Step::Done(fail(Failure::CommitFailed))
                    }
                    Finished::Expired => Step::Done(fail(Failure::Timeout)),
                    Finished::CommitFailed(err) => {
                        if let Some(reason) = classify::<DB>(&err, &config) {
                            Step::Retry(reason)
                        } else if commit_error_is_ambiguous(&err) {
                            tracing::error!(target: "tower_strata::tx", error = %err, "commit outcome unknown");
                            stats.commit_failed(true);
                            Step::Done(fail(Failure::CommitAmbiguous))
                        } else {
                            tracing::error!(target: "tower_strata::tx", error = %err, "commit failed");
                            stats.commit_failed(false);
                            Step::Done(fail(Failure::CommitFailed))
                        }
                    }
                },
                None => {
                    // The commit waits for the end of the body; a client that reads slowly
                    // must not hold the connection past the transaction timeout.
                    if let Some(limit) = config.transaction_timeout {
                        let left = limit.saturating_sub(attempt_began.elapsed());
                        let (handle, stats) = (handle.clone(), stats.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(left).await;
                            if handle.expire().await {
                                stats.timed_out();
                            }
                        });
                    }
                    deferred = true;
                    let policy = layer.policy.clone();
                    let stats = stats.clone();
                    let deferred = Box::new(move |trailers: Option<&HeaderMap>| {
                        let verdict = policy.on_trailers(trailers);
                        let fut: futures_util::future::BoxFuture<'static, _> =
                            Box::pin(async move {
                                finish_deferred(handle, shared, stats, verdict).await
                            });
                        fut
                    });
                    Step::Done(response.map(|b| TxResponseBody::deferred(b, deferred)))
                }
            }
        };

        if let Some(limit) = limit {
            match &step {
                // A lost connection is no conflict: only conflicts say "fewer at once".
                Step::Retry(RetryReason::ConnectionLost) => {}
                Step::Retry(_) => limit.conflict(),
                Step::Done(_) if committed => limit.success(),
                Step::Done(_) => {}
            }
            stats.limit(limit.limit());
        }
        drop(permit);
        attempt_span.record(
            "tx.result",
            match &step {
                Step::Retry(_) => "retry",
                Step::Done(_) if committed => "commit",
                Step::Done(_) if deferred => "deferred",
                Step::Done(_) => "rollback",
            },
        );
        if let Step::Retry(reason) = &step {
            attempt_span.record("tx.retry.reason", reason.as_str());
        }
        match step {
            Step::Done(response) => return Ok(response),
            Step::Retry(reason) => {
                let delay = config.backoff_for(attempt);
                let can_replay = buffered.is_some()
                    && attempt < config.max_attempts
                    && started.elapsed() + delay < config.retry_deadline;
                if !can_replay {
                    stats.retries_exhausted();
                    return Ok(fail(Failure::RetriesExhausted));
                }
                stats.retried(reason);
                tracing::debug!(target: "tower_strata::tx", %reason, attempt, "retrying request");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// Commits, then runs the after-commit hooks, in a task of its own: a request whose future is
/// dropped once `COMMIT` is on its way (a client reset, an outer timeout) still has its hooks
/// run when the commit succeeded, or when its outcome is unknown (a purge of what the write
/// changed is harmless if nothing was committed). Never for a rollback or a failure that will
/// be retried. The response still waits for the hooks: a client that reads after its write
/// returned must not find the purge still to come.
async fn commit_then_hooks<DB: TxDatabase>(handle: TxHandle<DB>, shared: Arc<Shared>) -> Finished {
    let task = tokio::spawn(async move {
        let finished = handle.finish(true).await;
        let run = match &finished {
            Finished::Committed | Finished::NotBegun => true,
            Finished::CommitFailed(err) => {
                classify::<DB>(err, &shared.config).is_none() && commit_error_is_ambiguous(err)
            }
            Finished::Aborted | Finished::RolledBack | Finished::Expired => false,
        };
        let hooks = shared.take_hooks(run);
        if !hooks.is_empty() {
            // Timed: the response waits for its hooks, so they are part of a write's latency.
            let started = Instant::now();
            run_hooks(hooks).await;
            shared.stats.hooks_ran(started.elapsed());
        }
        finished
    });
    match task.await {
        Ok(finished) => finished,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        // The runtime is shutting down: nothing can be said of the commit.
        Err(_) => Finished::CommitFailed(sqlx::Error::WorkerCrashed),
    }
}

async fn finish_deferred<DB: TxDatabase>(
    handle: TxHandle<DB>,
    shared: Arc<Shared>,
    stats: Arc<super::stats::StatsInner>,
    verdict: Verdict,
) -> Result<(), GrpcFailure> {
    if verdict == Verdict::Rollback {
        handle.finish(false).await;
        shared.take_hooks(false);
        return Ok(());
    }
    match commit_then_hooks(handle, shared.clone()).await {
        Finished::Committed | Finished::NotBegun => Ok(()),
        Finished::Aborted | Finished::RolledBack => {
            stats.commit_failed(false);
            Err(Failure::CommitFailed.grpc())
        }
        Finished::Expired => Err(Failure::Timeout.grpc()),
        Finished::CommitFailed(err) => {
            if classify::<DB>(&err, &shared.config).is_some() {
                // Too late to replay (the response has started): the client may retry.
                stats.retries_exhausted();
                Err(Failure::RetriesExhausted.grpc())
            } else if commit_error_is_ambiguous(&err) {
                stats.commit_failed(true);
                Err(Failure::CommitAmbiguous.grpc())
            } else {
                stats.commit_failed(false);
                Err(Failure::CommitFailed.grpc())
            }
        }
    }
}

/// OpenTelemetry's `db.system` for a sqlx database's name.
fn db_system(name: &str) -> &'static str {
    match name {
        "PostgreSQL" => "postgresql",
        "MySQL" => "mysql",
        "SQLite" => "sqlite",
        _ => "other_sql",
    }
}
