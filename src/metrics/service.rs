//! The [`Metrics`] service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::MetricsBody;
use super::future::ResponseFuture;
use super::layer::LayerState;

/// Measures each request of the inner service. Made by
/// [`MetricsLayer`](super::MetricsLayer); see [the module docs](crate::metrics).
#[derive(Clone)]
pub struct Metrics<S> {
    pub(crate) inner: S,
    pub(crate) state: Arc<LayerState>,
}

inner_service_debug!(Metrics<S>);

impl<S> Metrics<S> {
    inner_service_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Metrics<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body,
{
    type Response = Response<MetricsBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let guard = self.state.start(&req);
        ResponseFuture {
            inner: self.inner.call(req),
            guard,
        }
    }
}
