//! One attempt of a request: room under the adaptive limit, a fresh transaction, the inner
//! service under the transaction timeout, and the end of the transaction the response calls
//! for. What happened comes back as an [`Outcome`]; whether to try again is not decided here.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use http::{Request, Response};
use sqlx::Pool;
use tower_service::Service;
use tracing::Instrument;

use super::backend::TxDatabase;
use super::body::{TxBody, TxResponseBody};
use super::commit::{commit_at_end, commit_now};
use super::config::{TxConfig, TxMode};
use super::handle::{Shared, TxHandle};
use super::limit::AdaptiveLimit;
use super::outcome::{Failure, LimitSignal, Outcome};
use super::policy::{CommitPolicy, RetryPolicy, Verdict};
use super::stats::StatsInner;

/// A request as each of its attempts sees it: its head, its mode and pool, and what of the
/// layer an attempt needs. Made by [`TxLayer::request`](super::TxLayer::request).
pub(super) struct TxRequest<DB: TxDatabase, P> {
    pub(super) parts: http::request::Parts,
    pub(super) mode: TxMode,
    pub(super) pool: Pool<DB>,
    pub(super) config: Arc<TxConfig>,
    pub(super) stats: Arc<StatsInner>,
    /// The adaptive limit, when it applies to this request's mode.
    pub(super) limit: Option<Arc<AdaptiveLimit>>,
    pub(super) commit_policy: Arc<P>,
    pub(super) retry_policy: RetryPolicy,
    /// Whether a retryable error replays the request rather than let the verdict decide
    /// ([`RetryPolicy::may_replay`]).
    pub(super) replayable: bool,
    /// When the first attempt began: the retry deadline counts from here.
    pub(super) started: Instant,
}

impl<DB: TxDatabase, P> TxRequest<DB, P> {
    /// The request for one attempt, with `body` and this attempt's transaction.
    fn rebuild<B>(&self, body: TxBody<B>, handle: &TxHandle<DB>) -> Request<TxBody<B>> {
        let parts = &self.parts;
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        *req.extensions_mut() = parts.extensions.clone();
        req.extensions_mut().insert(handle.clone());
        req.extensions_mut().insert(handle.after_commit_registry());
        req
    }
}

/// Runs attempt number `number` (from 1) of `request` with `body` on `svc`, which is ready.
/// Gives the adaptive limit its feedback and records the attempt's span.
///
/// # Panics
///
/// Resumes the inner service's panic, once the transaction is abandoned.
pub(super) async fn attempt<S, DB, P, B, ResB>(
    svc: &mut S,
    request: &TxRequest<DB, P>,
    body: TxBody<B>,
    number: u32,
) -> Outcome<ResB, S::Error>
where
    S: Service<Request<TxBody<B>>, Response = Response<ResB>>,
    DB: TxDatabase,
    P: CommitPolicy,
{
    // One span per attempt: the handler's statements and the commit are its children, and
    // a replay shows as a sibling with its reason on the one before.
    let span = tracing::debug_span!(
        "tx.attempt",
        db.system = db_system(<DB as sqlx::Database>::NAME),
        db.operation.name = "transaction",
        tx.mode = request.mode.label(),
        tx.attempt = number,
        tx.result = tracing::field::Empty,
        tx.retry.reason = tracing::field::Empty,
    );
    // Room under the adaptive limit, within what is left of the request's deadline.
    let limit = request.limit.as_deref();
    let permit = match limit {
        Some(limit) => {
            let left = request.retry_policy.time_left(request.started.elapsed());
            match tokio::time::timeout(left, limit.acquire()).await {
                Ok(permit) => Some(permit),
                Err(_) => {
                    request.stats.retries_exhausted();
                    return Outcome::Failed(Failure::RetriesExhausted);
                }
            }
        }
        None => None,
    };
    let outcome = call_and_end(svc, request, body, &span).await;
    if let Some(limit) = limit {
        match outcome.limit_signal() {
            Some(LimitSignal::Conflict) => limit.conflict(),
            Some(LimitSignal::Success) => limit.success(),
            None => {}
        }
        request.stats.limit(limit.limit());
    }
    drop(permit);
    span.record("tx.result", outcome.label());
    if let Outcome::Retryable(reason) = &outcome {
        span.record("tx.retry.reason", reason.as_str());
    }
    outcome
}

/// Calls the inner service in a fresh transaction, then ends the transaction: rolled back,
/// abandoned, committed now or at the end of the body.
async fn call_and_end<S, DB, P, B, ResB>(
    svc: &mut S,
    request: &TxRequest<DB, P>,
    body: TxBody<B>,
    span: &tracing::Span,
) -> Outcome<ResB, S::Error>
where
    S: Service<Request<TxBody<B>>, Response = Response<ResB>>,
    DB: TxDatabase,
    P: CommitPolicy,
{
    let config = &request.config;
    let shared = Arc::new(Shared::new(
        config.clone(),
        request.stats.clone(),
        request.mode,
    ));
    let handle = TxHandle::new(request.pool.clone(), shared.clone());
    let req = request.rebuild(body, &handle);
    let began = Instant::now();
    let call = {
        let _entered = span.enter();
        svc.call(req)
    };
    let call = AssertUnwindSafe(call.instrument(span.clone())).catch_unwind();
    let called = match config.transaction_timeout {
        Some(limit) => tokio::time::timeout(limit, call).await.ok(),
        None => Some(call.await),
    };
    let response = match called {
        None => {
            handle.abandon().await;
            request.stats.timed_out();
            return Outcome::TimedOut;
        }
        Some(Err(panic)) => {
            handle.abandon().await;
            std::panic::resume_unwind(panic);
        }
        Some(Ok(Err(err))) => {
            handle.roll_back().await;
            return Outcome::ServiceError(err);
        }
        Some(Ok(Ok(response))) => response,
    };

    if shared.pool_exhausted() {
        handle.roll_back().await;
        request.stats.pool_exhausted();
        return Outcome::Failed(Failure::PoolExhausted);
    }
    // A retryable error wins over the response: the handler may have turned it into any
    // answer (a `500` from `?`, say).
    if let Some(reason) = shared.retry_reason().filter(|_| request.replayable) {
        handle.roll_back().await;
        return Outcome::Retryable(reason);
    }
    let verdict = response.extensions().get::<Verdict>().copied().or_else(|| {
        request
            .commit_policy
            .on_response(response.status(), response.headers())
    });
    match verdict {
        Some(Verdict::Rollback) => {
            handle.roll_back().await;
            Outcome::RolledBack(response.map(TxResponseBody::inner))
        }
        Some(Verdict::Commit) => commit_now(handle, shared, span, response).await,
        None => {
            let time_left = config
                .transaction_timeout
                .map(|limit| limit.saturating_sub(began.elapsed()));
            let response = commit_at_end(
                handle,
                shared,
                request.commit_policy.clone(),
                time_left,
                response,
            );
            Outcome::CommitDeferred(response)
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
