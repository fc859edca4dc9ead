//! Committing an attempt whose verdict is to commit: now, from the response head, or once
//! the response body has ended (gRPC trailers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Response};
use tracing::Instrument;

use super::backend::{TxDatabase, classify};
use super::body::{GrpcFailure, TxResponseBody};
use super::config::TxConfig;
use super::error::RetryReason;
use super::handle::{Finished, Shared, TxHandle, commit_error_is_ambiguous, run_hooks};
use super::outcome::{Failure, Outcome};
use super::policy::{CommitPolicy, Verdict};
use super::stats::StatsInner;

/// Commits the attempt's transaction for `response`, which goes out only if the commit
/// succeeded. A conflict reported at `COMMIT` is retryable: nothing was committed.
pub(super) async fn commit_now<DB: TxDatabase, B, E>(
    handle: TxHandle<DB>,
    shared: Arc<Shared>,
    span: &tracing::Span,
    response: Response<B>,
) -> Outcome<B, E> {
    let (stats, config) = (shared.stats.clone(), shared.config.clone());
    let finished = commit_then_hooks(handle, shared)
        .instrument(span.clone())
        .await;
    match judge::<DB>(finished, &config, &stats) {
        Ok(()) => Outcome::Committed(response.map(TxResponseBody::inner)),
        Err(Unmade::Retryable(reason)) => Outcome::Retryable(reason),
        Err(Unmade::Failed(failure)) => Outcome::Failed(failure),
    }
}

/// Why a commit did not happen, as [`judge`] tells it.
enum Unmade {
    /// The database refused it for a reason a replay may cure (a conflict at `COMMIT`).
    Retryable(RetryReason),
    /// Failed, timed out, or its outcome is unknown: the layer answers in the handler's place.
    Failed(Failure),
}

/// What a commit came to, the one reading of [`Finished`] for a commit made now and one made
/// at the end of the body: counts the failures and logs the errors an operator must see.
fn judge<DB: TxDatabase>(
    finished: Finished,
    config: &TxConfig,
    stats: &StatsInner,
) -> Result<(), Unmade> {
    match finished {
        Finished::Committed | Finished::NotBegun => Ok(()),
        Finished::Aborted | Finished::RolledBack => {
            stats.commit_failed(false);
            Err(Unmade::Failed(Failure::CommitFailed))
        }
        Finished::Expired => Err(Unmade::Failed(Failure::Timeout)),
        Finished::CommitFailed(err) => {
            if let Some(reason) = classify::<DB>(&err, config) {
                Err(Unmade::Retryable(reason))
            } else if commit_error_is_ambiguous(&err) {
                tracing::error!(target: "tower_strata::tx", error = %err, "commit outcome unknown");
                stats.commit_failed(true);
                Err(Unmade::Failed(Failure::CommitAmbiguous))
            } else {
                tracing::error!(target: "tower_strata::tx", error = %err, "commit failed");
                stats.commit_failed(false);
                Err(Unmade::Failed(Failure::CommitFailed))
            }
        }
    }
}

/// Leaves the verdict to the end of `response`'s body: the body asks `policy` about the
/// trailers, then commits or rolls back before it sends them. `time_left` is what remains
/// of the transaction timeout, if one is set.
pub(super) fn commit_at_end<DB: TxDatabase, P: CommitPolicy, B>(
    handle: TxHandle<DB>,
    shared: Arc<Shared>,
    policy: Arc<P>,
    time_left: Option<Duration>,
    response: Response<B>,
) -> Response<TxResponseBody<B>> {
    let stats = shared.stats.clone();
    // A client that reads slowly must not hold the connection past the transaction timeout.
    if let Some(left) = time_left {
        let (handle, stats) = (handle.clone(), stats.clone());
        tokio::spawn(async move {
            tokio::time::sleep(left).await;
            if handle.expire().await {
                stats.timed_out();
            }
        });
    }
    let deferred = Box::new(move |trailers: Option<&HeaderMap>| {
        let verdict = policy.on_trailers(trailers);
        let fut: futures_util::future::BoxFuture<'static, _> =
            Box::pin(async move { finish_deferred(handle, shared, stats, verdict).await });
        fut
    });
    response.map(|b| TxResponseBody::deferred(b, deferred))
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
    stats: Arc<StatsInner>,
    verdict: Verdict,
) -> Result<(), GrpcFailure> {
    if verdict == Verdict::Rollback {
        handle.roll_back().await;
        return Ok(());
    }
    let finished = commit_then_hooks(handle, shared.clone()).await;
    match judge::<DB>(finished, &shared.config, &stats) {
        Ok(()) => Ok(()),
        // Too late to replay (the response has started): the client may retry.
        Err(Unmade::Retryable(_)) => {
            stats.retries_exhausted();
            Err(Failure::RetriesExhausted.grpc())
        }
        Err(Unmade::Failed(failure)) => Err(failure.grpc()),
    }
}
