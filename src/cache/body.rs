//! The response body: a stored body served without copying, an upstream body passed through,
//! or an upstream body recorded (up to a limit) while it streams to the client.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// Receives a recorded body once it has streamed through completely.
pub(crate) trait Finish: Send {
    /// The body ended; here it is, with its trailers.
    fn finish(self: Box<Self>, body: Bytes, trailers: Option<HeaderMap>);
    /// The body grew past the limit: it will not be stored.
    fn too_large(self: Box<Self>);
}

pin_project! {
    /// The body of a response that went through the cache layer: a hit's stored bytes, or the
    /// upstream body (recorded for storing up to the layer's size limit, or passed through).
    ///
    /// It forwards `is_end_stream`, `size_hint` and trailers. See the [module docs](super).
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
        Recording {
            #[pin]
            inner: B,
            chunks: Vec<Bytes>,
            size: usize,
            limit: usize,
            trailers: Option<HeaderMap>,
            finish: Option<Box<dyn Finish>>,
        },
    }
}

impl<B> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Stored { .. } => "stored",
            Kind::Passthrough { .. } => "passthrough",
            Kind::Recording { .. } => "recording",
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

    pub(crate) fn recording(inner: B, limit: usize, finish: Box<dyn Finish>) -> Self
    where
        B: Body,
    {
        // A body that is complete before anyone polls it (a `204`, an empty `200`) is stored
        // now: a server need not poll it at all (hyper does not for a `204`).
        if inner.is_end_stream() {
            finish.finish(Bytes::new(), None);
            return Self::passthrough(inner);
        }
        CacheBody {
            kind: Kind::Recording {
                inner,
                chunks: Vec::new(),
                size: 0,
                limit,
                trailers: None,
                finish: Some(finish),
            },
        }
    }
}

fn concat(chunks: &mut Vec<Bytes>, size: usize) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(size);
            for c in chunks.drain(..) {
                out.extend_from_slice(&c);
            }
            out.freeze()
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Stored { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Passthrough { inner } => inner.poll_frame(cx),
            KindProj::Recording {
                mut inner,
                chunks,
                size,
                limit,
                trailers,
                finish,
            } => {
                let frame = match inner.as_mut().poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(f) => f,
                };
                match &frame {
                    Some(Ok(f)) => {
                        if finish.is_some() {
                            if let Some(data) = f.data_ref() {
                                *size += data.len();
                                if *size > *limit {
                                    chunks.clear();
                                    chunks.shrink_to_fit();
                                    if let Some(fin) = finish.take() {
                                        fin.too_large();
                                    }
                                } else if !data.is_empty() {
                                    chunks.push(data.clone());
                                }
                            } else if let Some(t) = f.trailers_ref() {
                                *trailers = Some(t.clone());
                            }
                        }
                        if inner.is_end_stream()
                            && let Some(fin) = finish.take()
                        {
                            fin.finish(concat(chunks, *size), trailers.take());
                        }
                    }
                    None => {
                        if let Some(fin) = finish.take() {
                            fin.finish(concat(chunks, *size), trailers.take());
                        }
                    }
                    // An upstream body error: nothing is stored (dropping `finish` releases
                    // any waiters).
                    Some(Err(_)) => {
                        finish.take();
                        chunks.clear();
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stored { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Passthrough { inner } | Kind::Recording { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stored { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Passthrough { inner } | Kind::Recording { inner, .. } => inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Seen(Mutex<Option<(Option<Bytes>, Option<HeaderMap>)>>);
    struct Probe(Arc<Seen>);
    impl Finish for Probe {
        fn finish(self: Box<Self>, body: Bytes, trailers: Option<HeaderMap>) {
            *self.0.0.lock().unwrap() = Some((Some(body), trailers));
        }
        fn too_large(self: Box<Self>) {
            *self.0.0.lock().unwrap() = Some((None, None));
        }
    }

    #[tokio::test]
    async fn records_body_and_trailers() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
            Ok(Frame::trailers(t.clone())),
        ];
        let seen = Arc::new(Seen::default());
        let body = CacheBody::recording(
            StreamBody::new(futures_util::stream::iter(frames)),
            10,
            Box::new(Probe(seen.clone())),
        );
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&t));
        let (b, tr) = seen.0.lock().unwrap().take().unwrap();
        assert_eq!(b.unwrap(), "abcd");
        assert_eq!(tr, Some(t));
    }

    #[tokio::test]
    async fn stops_recording_past_the_limit() {
        let seen = Arc::new(Seen::default());
        let body = CacheBody::recording(
            Full::new(Bytes::from(vec![1u8; 100])),
            10,
            Box::new(Probe(seen.clone())),
        );
        assert_eq!(body.size_hint().exact(), Some(100));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected.len(), 100);
        assert_eq!(seen.0.lock().unwrap().take().unwrap().0, None);
    }

    #[test]
    fn stored_body_hints() {
        let b = CacheBody::<Full<Bytes>>::stored(Bytes::from_static(b"xyz"), None);
        assert_eq!(b.size_hint().exact(), Some(3));
        assert!(!b.is_end_stream());
        assert!(CacheBody::<Full<Bytes>>::empty().is_end_stream());
    }
}
