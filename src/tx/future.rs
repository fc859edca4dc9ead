//! [`ResponseFuture`] of the [`Tx`](super::Tx) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use super::body::TxResponseBody;

type Inner<B, E> = Pin<Box<dyn Future<Output = Result<Response<TxResponseBody<B>>, E>> + Send>>;

/// Response future of [`Tx`](super::Tx).
///
/// One allocation per request: the attempt loop awaits sqlx futures (themselves boxed by
/// sqlx), which cannot be named in a hand-written state machine.
pub struct ResponseFuture<B, E> {
    pub(crate) inner: Inner<B, E>,
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<TxResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
