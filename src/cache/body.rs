//! The response body: a stored body served without copying, an upstream body passed through,
//! or a reader of a fill's body (see [`tee`](super::tee)), which is recorded for the store
//! while it streams to the client and to coalesced waiters.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::tee::{BoxError, TeeReader};

/// A response of the cache layer.
pub(crate) type Resp<RB> = http::Response<CacheBody<RB>>;

pin_project! {
    /// The body of a response that went through the cache layer: a hit's stored bytes, the
    /// upstream body passed through, or a reader of a fill's body (the upstream body read once
    /// by the fill and fed to the first client and every coalesced waiter, recorded for
    /// storing up to the layer's size limit).
    ///
    /// It forwards `is_end_stream`, `size_hint` and trailers. Its error is the upstream body's,
    /// or the cache's for a reader that fell too far behind the others. See the
    /// [module docs](super).
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Stored { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Passthrough { #[pin] inner: B },
        Fill { reader: TeeReader },
    }
}

impl<B> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Stored { .. } => "stored",
            Kind::Passthrough { .. } => "passthrough",
            Kind::Fill { .. } => "fill",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}

/// An empty body.
impl<B> Default for CacheBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> CacheBody<B> {
    pub(crate) fn stored(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        CacheBody {
            kind: Kind::Stored {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    pub(crate) fn empty() -> Self {
        Self::stored(Bytes::new(), None)
    }

    pub(crate) fn passthrough(inner: B) -> Self {
        CacheBody {
            kind: Kind::Passthrough { inner },
        }
    }

    pub(crate) fn fill(reader: TeeReader) -> Self {
        CacheBody {
            kind: Kind::Fill { reader },
        }
    }
}

impl<B> Body for CacheBody<B>
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
            KindProj::Stored { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Passthrough { inner } => inner.poll_frame(cx).map_err(Into::into),
            KindProj::Fill { reader } => reader.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stored { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Passthrough { inner } => inner.is_end_stream(),
            Kind::Fill { reader } => reader.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stored { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Passthrough { inner } => inner.size_hint(),
            Kind::Fill { reader } => reader.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn stored_body_hints() {
        let b = CacheBody::<Full<Bytes>>::stored(Bytes::from_static(b"xyz"), None);
        assert_eq!(b.size_hint().exact(), Some(3));
        assert!(!b.is_end_stream());
        assert!(CacheBody::<Full<Bytes>>::empty().is_end_stream());
    }
}
