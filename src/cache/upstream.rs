//! The one way the cache calls the service behind it: [`call`], within
//! [`CacheLayer::upstream_timeout`](super::CacheLayer::upstream_timeout). Every path goes
//! through it (misses, revalidations, background refreshes, gRPC calls, bypasses, unsafe
//! methods, a store that failed the lookup), so the timeout bounds every upstream call the
//! cache makes, and [`timed_out`] is the one answer when it passes.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use tower_service::Service;
use tracing::Instrument as _;

use super::body::{CacheBody, Resp};
use super::ctx::Ctx;
use super::status::Outcome;

/// What an upstream call came to.
pub(crate) enum Upstream<R, E> {
    /// The service answered (or failed) in time.
    Done(Result<R, E>),
    /// The upstream timeout passed first.
    TimedOut,
}

/// Calls the service within `timeout` (the layer's upstream timeout), which bounds the wait
/// for the response head; the body streams at the service's pace.
pub(crate) async fn call<S, B, R>(
    svc: &mut S,
    request: Request<B>,
    timeout: Option<Duration>,
) -> Upstream<R, S::Error>
where
    S: Service<Request<B>, Response = R>,
{
    within(timeout, svc.call(request)).await
}

/// Awaits an upstream answer within `timeout`: [`call`]'s bound, for the one path that must
/// call the service itself (an unsafe request's call runs on its own task, so that it
/// finishes and invalidates even when its client hangs up or the timeout passes).
pub(crate) async fn within<T, E>(
    timeout: Option<Duration>,
    answer: impl Future<Output = Result<T, E>>,
) -> Upstream<T, E> {
    let span = tracing::debug_span!("cache.upstream", cache.upstream.timed_out = false);
    let answer = answer.instrument(span.clone());
    match timeout {
        Some(t) => match tokio::time::timeout(t, answer).await {
            Ok(r) => Upstream::Done(r),
            Err(_) => {
                span.record("cache.upstream.timed_out", true);
                Upstream::TimedOut
            }
        },
        None => Upstream::Done(answer.await),
    }
}

/// The answer when upstream did not answer within the upstream timeout and nothing stale can
/// stand in: `504 Gateway Timeout`, or for a gRPC call a trailers-only `DEADLINE_EXCEEDED`,
/// which gRPC clients understand (an HTTP `504` they do not). Counted as [`Outcome::TimedOut`].
pub(crate) fn timed_out<St, RB>(ctx: &Ctx<St>, grpc: bool) -> Resp<RB> {
    let mut response = Response::new(CacheBody::empty());
    if grpc {
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from_static("4"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("upstream%20timed%20out"),
        );
    } else {
        *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    }
    Outcome::TimedOut.record(ctx, response.headers_mut());
    response
}
