//! A fill's body, read from upstream once and fed to every reader as it arrives: the first
//! client and every coalesced waiter (as Varnish's streaming miss and Pingora's cache lock).
//!
//! A task of its own reads the upstream body at the origin's pace ([`pump`]), whatever its
//! readers do: the first client hanging up does not stop it, and a response that may be stored
//! is read to its end and stored. Each chunk is kept once, in the [`Tee`], and each reader
//! ([`TeeReader`]) keeps only its position, so a waiter joining mid-body starts from the first
//! byte and a slow reader holds up nobody:
//!
//! - While the body fits the limit (the largest body the cache stores), every chunk is kept:
//!   they are the recording the store gets, and any reader can read them at its own pace.
//! - Past the limit the response will not be stored. Chunks every reader has passed are
//!   dropped, and at most `limit` bytes are kept for readers behind: when that is full, the
//!   readers furthest behind are cut (their body ends with an error, as a proxy cuts a client
//!   that does not read) so the others go on, and when every reader is equally behind the
//!   tee waits for them (back-pressure, as a plain proxy). No fill keeps more than the limit
//!   (plus the chunk in hand), whatever its readers do. A reader that starts after the first
//!   chunk was dropped cannot be served (see [`Tee::reader`]); such a waiter goes upstream.
//! - With no reader left past the limit, nothing is wanted: the tee stops reading.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// The error of a body the cache layer returns: the upstream body's own, or the cache's
/// (a reader cut for falling too far behind, an upstream failure seen by a waiter).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Receives a fill's recording once its body has been read completely.
pub(crate) trait Finish: Send {
    /// The body ended within the limit; here it is, with its trailers.
    fn finish(self: Box<Self>, body: Bytes, trailers: Option<HeaderMap>);
    /// The body grew past the limit: it will not be stored.
    fn too_large(self: Box<Self>);
}

/// Why a reader's body ended in an error.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TeeError {
    /// The upstream body failed.
    #[error("upstream body failed: {0}")]
    Upstream(Arc<str>),
    /// This reader fell further behind the others than the fill may buffer.
    #[error("response body reader fell too far behind (more than {0} bytes buffered)")]
    TooFarBehind(usize),
}

/// How the upstream body ended, once it has.
enum End {
    Open,
    Done(Option<HeaderMap>),
    Failed(Arc<str>),
}

/// One reader's place in the body.
struct Place {
    id: u64,
    /// Index of the next chunk it reads (counted from the body's first chunk).
    next: usize,
    waker: Option<Waker>,
}

struct State {
    /// The chunks kept, the first of which is chunk number `first`.
    chunks: VecDeque<Bytes>,
    first: usize,
    kept: usize,
    /// Every chunk from the first is kept, and the body is within the limit: storable so far,
    /// and a reader may still start from the first byte.
    whole: bool,
    end: End,
    readers: Vec<Place>,
    next_id: u64,
    /// The pump, waiting for room past the limit.
    pump: Option<Waker>,
}

/// The shared body of one fill; see the [module docs](self).
pub(crate) struct Tee {
    state: Mutex<State>,
    limit: usize,
    /// The upstream body's exact length, if it said.
    length: Option<u64>,
}

impl Tee {
    /// An empty tee for a body of at most `limit` recorded bytes (`length` if the upstream
    /// body said); [`pump`] fills it.
    pub(crate) fn new(limit: usize, length: Option<u64>) -> Arc<Self> {
        Arc::new(Tee {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                first: 0,
                kept: 0,
                whole: true,
                end: End::Open,
                readers: Vec::new(),
                next_id: 0,
                pump: None,
            }),
            limit,
            length,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reader from the first byte, `None` if the first bytes are gone (the body went past
    /// the limit and its start was dropped).
    pub(crate) fn reader(self: &Arc<Self>) -> Option<TeeReader> {
        let mut state = self.lock();
        if state.first != 0 {
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.readers.push(Place {
            id,
            next: 0,
            waker: None,
        });
        Some(TeeReader {
            tee: self.clone(),
            id,
            read: 0,
            trailers_sent: false,
        })
    }

    /// How many readers are reading now (for tests).
    #[cfg(test)]
    pub(crate) fn readers(&self) -> usize {
        self.lock().readers.len()
    }

    fn wake_readers(state: &mut State) {
        for place in &mut state.readers {
            if let Some(waker) = place.waker.take() {
                waker.wake();
            }
        }
    }

    /// Past the limit, drops the chunks every reader has read; returns the slowest reader's
    /// position.
    fn drop_read(state: &mut State) -> usize {
        let slowest = state.readers.iter().map(|p| p.next).min().unwrap_or(0);
        while state.first < slowest {
            if let Some(chunk) = state.chunks.pop_front() {
                state.kept -= chunk.len();
            }
            state.first += 1;
        }
        slowest
    }

    /// Makes room for the next chunk past the limit: drops what every reader has read, cuts
    /// the readers furthest behind while others are ahead, and waits when every reader is
    /// equally behind. `Ready(false)` when no reader is left and nothing is to be stored.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut state = self.lock();
        if state.whole {
            return Poll::Ready(true);
        }
        loop {
            if state.readers.is_empty() {
                return Poll::Ready(false);
            }
            let slowest = Tee::drop_read(&mut state);
            if state.kept < self.limit {
                return Poll::Ready(true);
            }
            let fastest = state.readers.iter().map(|p| p.next).max().unwrap_or(0);
            if slowest == fastest {
                state.pump = Some(cx.waker().clone());
                return Poll::Pending;
            }
            // The readers furthest behind leave the tee: woken, each finds its place gone and
            // ends its body with an error.
            for place in state.readers.iter_mut().filter(|p| p.next == slowest) {
                if let Some(waker) = place.waker.take() {
                    waker.wake();
                }
            }
            state.readers.retain(|p| p.next != slowest);
        }
    }
}

/// Reads the upstream body into the tee until it ends, fails, or nobody wants the rest, then
/// hands the recording to `finish` if the body stayed within the limit. The caller spawns it:
/// it runs at the origin's pace, whatever the readers do.
pub(crate) async fn pump<B>(tee: Arc<Tee>, body: B, finish: Box<dyn Finish>)
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// Ends the readers' bodies with an error if the pump stops without an end of its own
    /// (it panicked, or its task was dropped), so no reader waits for chunks that never come.
    struct EndOnDrop(Arc<Tee>);
    impl Drop for EndOnDrop {
        fn drop(&mut self) {
            let mut state = self.0.lock();
            if matches!(state.end, End::Open) {
                state.end = End::Failed("the fill stopped".into());
                Tee::wake_readers(&mut state);
            }
        }
    }
    let _end_on_drop = EndOnDrop(tee.clone());
    let mut body = std::pin::pin!(body);
    let mut finish = Some(finish);
    let mut size = 0usize;
    let end = loop {
        if !std::future::poll_fn(|cx| tee.poll_room(cx)).await {
            // Past the limit, and every reader has gone: nothing to store, nobody to feed.
            return;
        }
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        let mut state = tee.lock();
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    size += data.len();
                    let mut too_large = None;
                    if state.whole && size > tee.limit {
                        // Not storable: from now on chunks are kept only for readers behind.
                        state.whole = false;
                        too_large = finish.take();
                    }
                    if !data.is_empty() {
                        state.kept += data.len();
                        state.chunks.push_back(data);
                    }
                    Tee::wake_readers(&mut state);
                    drop(state);
                    // Outside the tee's lock: it releases the waiters and the flight.
                    if let Some(finish) = too_large {
                        finish.too_large();
                    }
                    continue;
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        break End::Done(Some(trailers));
                    }
                }
            },
            None => break End::Done(None),
            Some(Err(error)) => {
                let error: BoxError = error.into();
                break End::Failed(error.to_string().into());
            }
        }
        Tee::wake_readers(&mut state);
    };
    let recording = {
        let mut state = tee.lock();
        let recording = match &end {
            End::Done(trailers) if state.whole => {
                Some((concat(state.chunks.iter(), size), trailers.clone()))
            }
            _ => None,
        };
        state.end = end;
        Tee::wake_readers(&mut state);
        recording
    };
    // An upstream error stores nothing: dropping `finish` releases any waiters.
    if let (Some(finish), Some((body, trailers))) = (finish, recording) {
        finish.finish(body, trailers);
    }
}

fn concat<'a>(chunks: impl ExactSizeIterator<Item = &'a Bytes>, size: usize) -> Bytes {
    let mut chunks = chunks.peekable();
    if chunks.len() == 1 {
        return chunks.next().cloned().unwrap_or_default();
    }
    let mut out = BytesMut::with_capacity(size);
    for chunk in chunks {
        out.extend_from_slice(chunk);
    }
    out.freeze()
}

/// One reader of a [`Tee`]: a body that yields the fill's chunks from the first, at its own
/// pace. Dropping it leaves the fill running.
pub(crate) struct TeeReader {
    tee: Arc<Tee>,
    id: u64,
    /// Bytes read so far, for the size hint.
    read: u64,
    trailers_sent: bool,
}

impl Drop for TeeReader {
    fn drop(&mut self) {
        let mut state = self.tee.lock();
        state.readers.retain(|p| p.id != self.id);
        // The pump may be waiting for this reader to read.
        if let Some(waker) = state.pump.take() {
            waker.wake();
        }
    }
}

impl TeeReader {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let tee = self.tee.clone();
        let mut state = tee.lock();
        let state = &mut *state;
        let Some(place) = state.readers.iter_mut().find(|p| p.id == self.id) else {
            // Cut (removed by the pump) for falling behind.
            return Poll::Ready(Some(Err(TeeError::TooFarBehind(tee.limit).into())));
        };
        if place.next >= state.first
            && let Some(chunk) = state.chunks.get(place.next - state.first)
        {
            place.next += 1;
            self.read += chunk.len() as u64;
            let chunk = chunk.clone();
            if !state.whole {
                Tee::drop_read(state);
            }
            if let Some(waker) = state.pump.take() {
                waker.wake();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match &state.end {
            End::Open => {
                place.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            End::Done(trailers) => {
                if self.trailers_sent {
                    return Poll::Ready(None);
                }
                self.trailers_sent = true;
                Poll::Ready(trailers.clone().map(|t| Ok(Frame::trailers(t))))
            }
            End::Failed(message) => {
                Poll::Ready(Some(Err(TeeError::Upstream(message.clone()).into())))
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        let state = self.tee.lock();
        let Some(place) = state.readers.iter().find(|p| p.id == self.id) else {
            return false;
        };
        match &state.end {
            End::Done(trailers) => {
                place.next >= state.first + state.chunks.len()
                    && (trailers.is_none() || self.trailers_sent)
            }
            _ => false,
        }
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.tee.length {
            Some(length) => SizeHint::with_exact(length.saturating_sub(self.read)),
            None => SizeHint::default(),
        }
    }
}

/// A body of a [`TeeReader`] alone, for tests.
#[cfg(test)]
impl Body for TeeReader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        TeeReader::poll_frame(self.get_mut(), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    /// A recording: the body and its trailers.
    type Recording = (Bytes, Option<HeaderMap>);

    /// What the fill handed to `finish`: `Some(recording)` stored, `None` too large.
    #[derive(Default)]
    struct Seen(Mutex<Option<Option<Recording>>>);
    struct Probe(Arc<Seen>);
    impl Finish for Probe {
        fn finish(self: Box<Self>, body: Bytes, trailers: Option<HeaderMap>) {
            *self.0.0.lock().unwrap() = Some(Some((body, trailers)));
        }
        fn too_large(self: Box<Self>) {
            *self.0.0.lock().unwrap() = Some(None);
        }
    }

    fn chunks(n: usize, size: usize) -> Vec<Result<Frame<Bytes>, Infallible>> {
        (0..n)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; size]))))
            .collect()
    }

    fn start(
        frames: Vec<Result<Frame<Bytes>, Infallible>>,
        limit: usize,
    ) -> (Arc<Tee>, Arc<Seen>, impl Future<Output = ()>) {
        let seen = Arc::new(Seen::default());
        let tee = Tee::new(limit, None);
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let fill = pump(tee.clone(), body, Box::new(Probe(seen.clone())));
        (tee, seen, fill)
    }

    #[tokio::test]
    async fn every_reader_gets_the_body_and_trailers_and_the_store_gets_the_recording() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let mut frames = chunks(3, 2);
        frames.push(Ok(Frame::trailers(trailers.clone())));
        let (tee, seen, fill) = start(frames, 100);
        let (a, b) = (tee.reader().unwrap(), tee.reader().unwrap());
        tokio::spawn(fill);
        for reader in [a, b] {
            let collected = reader.collect().await.unwrap();
            assert_eq!(collected.trailers(), Some(&trailers));
            assert_eq!(collected.to_bytes(), &[0, 0, 1, 1, 2, 2][..]);
        }
        let (body, stored_trailers) = seen.0.lock().unwrap().take().unwrap().unwrap();
        assert_eq!(body, &[0, 0, 1, 1, 2, 2][..]);
        assert_eq!(stored_trailers, Some(trailers));
    }

    #[tokio::test]
    async fn the_fill_completes_and_is_stored_when_its_only_reader_leaves() {
        let (tee, seen, fill) = start(chunks(50, 10), 1000);
        drop(tee.reader().unwrap());
        fill.await;
        let (body, _) = seen.0.lock().unwrap().take().unwrap().unwrap();
        assert_eq!(body.len(), 500);
        // A reader that starts after the end still reads from the first byte.
        let late = tee.reader().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(late.len(), 500);
    }

    #[tokio::test]
    async fn past_the_limit_a_reader_that_stops_is_cut_and_the_other_goes_on() {
        // 100 chunks of 100 bytes through a 1,000-byte limit.
        let (tee, seen, fill) = start(chunks(100, 100), 1000);
        let stalled = tee.reader().unwrap();
        let reader = tee.reader().unwrap();
        let fill = tokio::spawn(fill);
        let body = reader.collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 10_000);
        fill.await.unwrap();
        assert!(
            seen.0.lock().unwrap().take().unwrap().is_none(),
            "too large"
        );
        assert!(
            tee.lock().kept <= 1000 + 100,
            "never more than the limit and a chunk"
        );
        let error = stalled.collect().await.unwrap_err();
        assert!(error.to_string().contains("too far behind"), "{error}");
        assert_eq!(tee.readers(), 0);
    }

    #[tokio::test]
    async fn readers_get_an_error_not_a_hang_when_the_fill_stops() {
        let frames = futures_util::stream::iter(0..2).map(|i| {
            assert!(i == 0, "the upstream body panics");
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first")))
        });
        let tee = Tee::new(1000, None);
        let mut reader = tee.reader().unwrap();
        let seen = Arc::new(Seen::default());
        let fill = pump(tee.clone(), StreamBody::new(frames), Box::new(Probe(seen)));
        let _ = tokio::spawn(fill).await;
        assert_eq!(
            reader.frame().await.unwrap().unwrap().into_data().unwrap(),
            "first"
        );
        let error = reader.frame().await.unwrap().unwrap_err();
        assert!(error.to_string().contains("the fill stopped"), "{error}");
    }

    #[tokio::test]
    async fn past_the_limit_one_slow_reader_is_waited_for_not_cut() {
        let (tee, _seen, fill) = start(chunks(100, 100), 1000);
        let mut reader = tee.reader().unwrap();
        tokio::spawn(fill);
        let mut total = 0;
        while let Some(frame) = reader.frame().await {
            total += frame.unwrap().into_data().unwrap().len();
            assert!(tee.lock().kept <= 1000 + 100);
            tokio::task::yield_now().await;
        }
        assert_eq!(total, 10_000);
    }
}
