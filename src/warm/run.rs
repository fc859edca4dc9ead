//! One run over the service: every request sent, at most `concurrency` at a time, each under
//! the timeout, its body drained so the cache stores it.

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::{HOST, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower_service::Service;

use super::builder::{Factory, Source};
use super::report::WarmReport;
use super::request::WarmRequest;
use super::*;

/// The type-erased part of a [`Warmer`]: one run over its service.
pub(super) trait Run: Send + Sync + 'static {
    fn run(&self) -> BoxFuture<'_, WarmReport>;
}

pub(super) struct Engine<S, B> {
    // A mutex so the warmer is `Sync` without asking the service to be: each run clones it out.
    pub(super) service: Mutex<S>,
    pub(super) requests: Vec<WarmRequest>,
    pub(super) factories: Vec<Factory<B>>,
    pub(super) sources: Vec<Source<B>>,
    pub(super) concurrency: usize,
    pub(super) timeout: Duration,
    pub(super) host: Option<HeaderValue>,
}

/// How one request ended.
pub(super) enum Outcome {
    Success,
    Status(StatusCode),
    Timeout,
    Error(String),
}

impl<S, B, RB> Run for Engine<S, B>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Default + Send + 'static,
    RB: Body + Send + 'static,
    RB::Error: Into<BoxError>,
{
    fn run(&self) -> BoxFuture<'_, WarmReport> {
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let mut report = WarmReport::default();
            let requests = self.collect(&mut report).await;
            let service = self
                .service
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            // Each request is a task, so the requests run on every worker thread; a panicking
            // handler is caught and counted. Dropping the set (a shut-down warmer) aborts
            // the requests in flight.
            let mut in_flight = JoinSet::new();
            let mut pending = requests.into_iter();
            loop {
                while in_flight.len() < self.concurrency {
                    let Some(request) = pending.next() else { break };
                    report.sent += 1;
                    let uri = request.uri().clone();
                    let send = AssertUnwindSafe(send(service.clone(), request, self.timeout));
                    in_flight.spawn(async move {
                        let outcome = send
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|_| Outcome::Error("the service panicked".to_owned()));
                        (uri, outcome)
                    });
                }
                let Some(joined) = in_flight.join_next().await else {
                    break;
                };
                let (uri, outcome) = match joined {
                    Ok(done) => done,
                    Err(e) => (
                        Uri::default(),
                        Outcome::Error(format!("the request task {e}")),
                    ),
                };
                match outcome {
                    Outcome::Success => {
                        report.succeeded += 1;
                        tracing::debug!(%uri, "warm request succeeded");
                    }
                    Outcome::Status(status) => {
                        report.failed += 1;
                        tracing::warn!(%uri, %status, "warm request failed: not a success status");
                    }
                    Outcome::Timeout => {
                        report.failed += 1;
                        report.timed_out += 1;
                        tracing::warn!(%uri, timeout = ?self.timeout, "warm request timed out");
                    }
                    Outcome::Error(error) => {
                        report.failed += 1;
                        tracing::warn!(%uri, %error, "warm request failed");
                    }
                }
            }
            report.duration = started.elapsed();
            report
        })
    }
}

impl<S, B: Default + Send + 'static> Engine<S, B> {
    /// The requests of one run: the fixed ones, then each factory's, then each source's.
    async fn collect(&self, report: &mut WarmReport) -> Vec<Request<B>> {
        let mut requests: Vec<Request<B>> =
            self.requests.iter().map(WarmRequest::to_request).collect();
        for factory in &self.factories {
            match std::panic::catch_unwind(AssertUnwindSafe(|| factory())) {
                Ok(request) => requests.push(request),
                Err(_) => {
                    report.source_failures += 1;
                    tracing::warn!("warm request factory panicked");
                }
            }
        }
        for source in &self.sources {
            let produced = AssertUnwindSafe(async { source().await }).catch_unwind();
            match tokio::time::timeout(self.timeout, produced).await {
                Ok(Ok(Ok(more))) => requests.extend(more),
                Ok(Ok(Err(error))) => {
                    report.source_failures += 1;
                    tracing::warn!(%error, "warm request source failed");
                }
                Ok(Err(_)) => {
                    report.source_failures += 1;
                    tracing::warn!("warm request source panicked");
                }
                Err(_) => {
                    report.source_failures += 1;
                    tracing::warn!(timeout = ?self.timeout, "warm request source timed out");
                }
            }
        }
        if let Some(host) = &self.host {
            for request in &mut requests {
                if request.uri().authority().is_none() && !request.headers().contains_key(HOST) {
                    request.headers_mut().insert(HOST, host.clone());
                }
            }
        }
        requests
    }
}

/// Sends one request and drains its body, all under `timeout`.
pub(super) async fn send<S, B, RB>(service: S, request: Request<B>, timeout: Duration) -> Outcome
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body,
    RB::Error: Into<BoxError>,
{
    let exchange = async move {
        let response = service
            .oneshot(request)
            .await
            .map_err(|e| e.into().to_string())?;
        let status = response.status();
        // Drain the body frame by frame without keeping it: the cache records it as it passes
        // and stores it once it has ended.
        let mut body = std::pin::pin!(response.into_body());
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| format!("body: {}", e.into()))?;
        }
        Ok::<_, String>(status)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) if status.is_success() => Outcome::Success,
        Ok(Ok(status)) => Outcome::Status(status),
        Ok(Err(error)) => Outcome::Error(error),
        Err(_) => Outcome::Timeout,
    }
}
