//! The response body of [`Metrics`](super::Metrics).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::guard::Guard;

pin_project! {
    /// Response body of [`Metrics`](super::Metrics). It carries the request's guard: the request
    /// is recorded when the body ends (its last frame, or trailers for gRPC) or is dropped
    /// (then counted as cancelled). Forwards `is_end_stream`, `size_hint` and trailers unchanged.
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        guard: Option<Guard>,
    }
}

impl<B> MetricsBody<B> {
    pub(crate) fn new(inner: B, guard: Option<Guard>) -> Self {
        Self { inner, guard }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::fmt::Debug for MetricsBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsBody")
            .field("measuring", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Some(g) = this.guard.as_mut() {
            g.in_poll = true;
        }
        let result = this.inner.as_mut().poll_frame(cx);
        if let Some(g) = this.guard.as_mut() {
            g.in_poll = false;
        }
        let result = ready!(result);
        if let Some(guard) = this.guard.as_mut() {
            match &result {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        guard.trailers(trailers);
                    }
                    if this.inner.is_end_stream() {
                        guard.finished();
                        *this.guard = None;
                    }
                }
                Some(Err(_)) => {
                    guard.failed();
                    *this.guard = None;
                }
                None => {
                    guard.finished();
                    *this.guard = None;
                }
            }
        }
        Poll::Ready(result)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
