//! [`HealthService`]: the `/health` and `/health/ready` endpoints.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower_service::Service;

use super::check::Status;
use super::registry::Health;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Liveness,
    Readiness,
}

/// Serves liveness or readiness as JSON; made by [`Health::liveness_service`] and
/// [`Health::readiness_service`]. Answers every request it gets (mount it on its path).
#[derive(Debug, Clone)]
pub struct HealthService {
    health: Health,
    kind: Kind,
}

impl HealthService {
    pub(crate) fn new(health: Health, kind: Kind) -> Self {
        Self { health, kind }
    }
}

type BoxedResponse =
    Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// Response future of [`HealthService`].
pub struct HealthFuture {
    inner: BoxedResponse,
}

impl std::fmt::Debug for HealthFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthFuture").finish_non_exhaustive()
    }
}

impl Future for HealthFuture {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    crate::respond::no_store(status, "application/json", body)
}

impl<B> Service<Request<B>> for HealthService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = HealthFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let inner: BoxedResponse = match self.kind {
            Kind::Liveness => Box::pin(std::future::ready(Ok(json(
                StatusCode::OK,
                br#"{"status":"alive"}"#.to_vec(),
            )))),
            Kind::Readiness => {
                let health = self.health.clone();
                Box::pin(async move {
                    let report = health.readiness().await;
                    let code = if report.status == Status::Unhealthy {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    };
                    Ok(match serde_json::to_vec(&report) {
                        Ok(body) => json(code, body),
                        Err(e) => json(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            serde_json::json!({ "status": "unhealthy", "error": e.to_string() })
                                .to_string()
                                .into_bytes(),
                        ),
                    })
                })
            }
        };
        HealthFuture { inner }
    }
}
