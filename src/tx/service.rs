//! [`Tx`]: the service made by [`TxLayer`](super::TxLayer); the retry loop.

use std::fmt;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tower::ServiceExt;
use tower_service::Service;

use super::attempt::attempt;
use super::backend::TxDatabase;
use super::body::{TxBody, TxResponseBody};
use super::future::ResponseFuture;
use super::layer::TxLayer;
use super::outcome::Failure;
use super::policy::{CommitPolicy, Decision};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// Runs attempts until one is the answer, as the retry policy decides: each attempt says
/// what happened, the policy whether and when to try again.
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
    let stats = layer.stats.inner.clone();
    let retry_after = layer.config.retry_after_secs();
    let (parts, body) = req.into_parts();
    let grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    let Some(mut body) = ReplayBody::read(body, layer.config.max_body_size).await else {
        return Ok(Failure::BadBody.respond(grpc, retry_after));
    };
    let request = layer.request(parts);
    let mut number = 1u32;
    loop {
        // Only a kept body is replayed, so there is always one to send.
        let Some(attempt_body) = body.next() else {
            return Ok(Failure::RetriesExhausted.respond(grpc, retry_after));
        };
        if number > 1 {
            svc.ready().await?;
        }
        let outcome = attempt(&mut svc, &request, attempt_body, number).await;
        let elapsed = request.started.elapsed();
        match request
            .retry_policy
            .retry(&outcome, number, elapsed, body.is_kept())
        {
            Decision::Answer => return outcome.into_response(grpc, retry_after),
            Decision::Exhausted => {
                stats.retries_exhausted();
                return outcome.into_response(grpc, retry_after);
            }
            Decision::Replay { reason, after } => {
                stats.retried(reason);
                tracing::debug!(target: "tower_strata::tx", %reason, attempt = number, "retrying request");
                tokio::time::sleep(after).await;
                number += 1;
            }
        }
    }
}

/// The request body across attempts: kept in memory when its length is known and within the
/// limit, so the request can be replayed; otherwise streamed once.
enum ReplayBody<B> {
    Kept(Bytes),
    /// `None` once the one attempt that could have it took it.
    Streamed(Option<B>),
}

impl<B> ReplayBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// Reads a body of known length up to `max` bytes; `None` when it cannot be read.
    async fn read(body: B, max: usize) -> Option<Self> {
        match body.size_hint().exact() {
            Some(n) if n <= max as u64 => match Limited::new(body, max).collect().await {
                Ok(collected) => Some(Self::Kept(collected.to_bytes())),
                Err(_) => None,
            },
            _ => Some(Self::Streamed(Some(body))),
        }
    }

    /// The body for the next attempt: a copy of the kept bytes, or the stream the first time.
    fn next(&mut self) -> Option<TxBody<B>> {
        match self {
            Self::Kept(bytes) => Some(TxBody::buffered(bytes.clone())),
            Self::Streamed(body) => body.take().map(TxBody::streaming),
        }
    }

    fn is_kept(&self) -> bool {
        matches!(self, Self::Kept(_))
    }
}
