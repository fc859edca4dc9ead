//! Request and response bodies of the transaction layer.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The request body the inner service receives: the buffered bytes (replayable) or the
    /// original body streamed through (no retry).
    pub struct TxBody<B> {
        #[pin]
        kind: ReqKind<B>,
    }
}

pin_project! {
    #[project = ReqProj]
    enum ReqKind<B> {
        Buffered { data: Option<Bytes> },
        Streaming { #[pin] body: B },
    }
}

impl<B> TxBody<B> {
    pub(crate) fn buffered(data: Bytes) -> Self {
        Self {
            kind: ReqKind::Buffered {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn streaming(body: B) -> Self {
        Self {
            kind: ReqKind::Streaming { body },
        }
    }

    /// Whether the body was buffered, so the request can be replayed.
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, ReqKind::Buffered { .. })
    }
}

impl<B> fmt::Debug for TxBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxBody")
            .field("buffered", &self.is_buffered())
            .finish()
    }
}

impl<B> Body for TxBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            ReqProj::Buffered { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ReqProj::Streaming { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ReqKind::Buffered { data } => data.is_none(),
            ReqKind::Streaming { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ReqKind::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ReqKind::Streaming { body } => body.size_hint(),
        }
    }
}

/// A gRPC status to put in the trailers when the deferred commit failed.
pub(crate) type GrpcFailure = (u8, &'static str);

/// Commits (or rolls back) once the trailers are known.
pub(crate) type Deferred =
    Box<dyn FnOnce(Option<&HeaderMap>) -> BoxFuture<'static, Result<(), GrpcFailure>> + Send>;

pin_project! {
    /// The response body of the transaction layer: the inner body (for gRPC, holding back the
    /// trailers until the deferred commit is done) or the layer's own error message.
    pub struct TxResponseBody<B> {
        #[pin]
        kind: ResKind<B>,
    }
}

pin_project! {
    #[project = ResProj]
    enum ResKind<B> {
        Inner {
            #[pin]
            body: B,
            deferred: Option<Deferred>,
            committing: Option<(BoxFuture<'static, Result<(), GrpcFailure>>, Option<HeaderMap>)>,
        },
        Message { data: Option<Bytes> },
    }
}

impl<B> TxResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: ResKind::Inner {
                body,
                deferred: None,
                committing: None,
            },
        }
    }

    pub(crate) fn deferred(body: B, deferred: Deferred) -> Self {
        Self {
            kind: ResKind::Inner {
                body,
                deferred: Some(deferred),
                committing: None,
            },
        }
    }

    pub(crate) fn message(text: &'static str) -> Self {
        Self {
            kind: ResKind::Message {
                data: (!text.is_empty()).then(|| Bytes::from_static(text.as_bytes())),
            },
        }
    }
}

impl<B> fmt::Debug for TxResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxResponseBody").finish_non_exhaustive()
    }
}

fn failure_trailers(mut trailers: HeaderMap, (code, message): GrpcFailure) -> HeaderMap {
    trailers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    trailers.insert("grpc-message", HeaderValue::from_static(message));
    trailers
}

impl<B> Body for TxResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let (mut body, deferred, committing) = match self.project().kind.project() {
            ResProj::Message { data } => {
                return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))));
            }
            ResProj::Inner {
                body,
                deferred,
                committing,
            } => (body, deferred, committing),
        };
        loop {
            if let Some((fut, trailers)) = committing {
                let result = ready!(fut.as_mut().poll(cx));
                let trailers = trailers.take();
                *committing = None;
                return Poll::Ready(match (result, trailers) {
                    (Ok(()), Some(t)) => Some(Ok(Frame::trailers(t))),
                    (Ok(()), None) => None,
                    (Err(f), t) => Some(Ok(Frame::trailers(failure_trailers(
                        t.unwrap_or_default(),
                        f,
                    )))),
                });
            }
            let Some(decide) = deferred.take() else {
                return body.as_mut().poll_frame(cx);
            };
            match body.as_mut().poll_frame(cx) {
                Poll::Pending => {
                    *deferred = Some(decide);
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) if !frame.is_trailers() => {
                    *deferred = Some(decide);
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let trailers = frame.into_trailers().ok();
                    *committing = Some((decide(trailers.as_ref()), trailers));
                }
                Poll::Ready(None) => {
                    *committing = Some((decide(None), None));
                }
                Poll::Ready(Some(Err(e))) => {
                    // The body failed: dropping `decide` drops the handle, which rolls back.
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResKind::Message { data } => data.is_none(),
            ResKind::Inner {
                body,
                deferred,
                committing,
            } => deferred.is_none() && committing.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResKind::Message { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResKind::Inner { body, .. } => body.size_hint(),
        }
    }
}
