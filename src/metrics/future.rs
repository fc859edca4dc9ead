//! The response future of [`Metrics`](super::Metrics).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::body::MetricsBody;
use super::guard::Guard;

pin_project! {
    /// Response future of [`Metrics`](super::Metrics): records the time to the response head and
    /// moves the request's guard into the [`MetricsBody`]. Dropping it before the head counts the
    /// request as cancelled.
    pub struct ResponseFuture<F> {
        #[pin]
        pub(crate) inner: F,
        pub(crate) guard: Option<Guard>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("measured", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<MetricsBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(g) = this.guard.as_mut() {
            g.in_poll = true;
        }
        let result = this.inner.poll(cx);
        if let Some(g) = this.guard.as_mut() {
            g.in_poll = false;
        }
        match ready!(result) {
            Ok(response) => {
                let mut guard = this.guard.take();
                if let Some(g) = guard.as_mut() {
                    let now = Instant::now();
                    g.head(response.status(), response.headers(), now);
                    if response.body().is_end_stream() {
                        // Nothing will be polled from an empty body: the response is complete.
                        g.finished_at(now);
                        guard = None;
                    }
                }
                Poll::Ready(Ok(response.map(|body| MetricsBody::new(body, guard))))
            }
            Err(error) => {
                if let Some(mut g) = this.guard.take() {
                    g.failed();
                }
                Poll::Ready(Err(error))
            }
        }
    }
}
