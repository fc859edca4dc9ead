//! A fill outlives its first client and feeds its waiters as it streams: the cache in a hyper
//! server on a real socket, in front of an origin whose body the test releases chunk by chunk,
//! with raw HTTP/1.1 clients that read, stall or hang up.
#![cfg(feature = "memory")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::ServiceBuilder;
use tower_strata::cache::CacheLayer;
use tower_strata::store::MemoryStore;

type OriginBody =
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// An origin whose body is `first`, then whatever the test sends on the returned channel
/// (one origin response at a time: the test drives one fill).
struct Origin {
    calls: Arc<AtomicUsize>,
    /// Senders of the responses in flight, in call order.
    bodies: mpsc::UnboundedReceiver<mpsc::UnboundedSender<Bytes>>,
}

/// Serves `CacheLayer` in front of the origin on a loopback port; the server task ends with
/// the test's runtime.
async fn serve(layer: CacheLayer<MemoryStore>, first: &'static [u8]) -> (SocketAddr, Origin) {
    let calls = Arc::new(AtomicUsize::new(0));
    let (body_tx, bodies) = mpsc::unbounded_channel();
    let counter = calls.clone();
    let first = Bytes::from_static(first);
    let origin = tower::service_fn(move |_req: Request<UnsyncBoxBody<Bytes, hyper::Error>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let _ = body_tx.send(tx);
        let rest = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (Ok(Frame::data(chunk)), rx))
        });
        let head = futures_util::stream::iter([Ok(Frame::data(first.clone()))]);
        let body: OriginBody =
            StreamBody::new(Box::pin(futures_util::StreamExt::chain(head, rest)));
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        async move { Ok::<_, Infallible>(response) }
    });
    let service = tower::util::BoxCloneService::new(
        ServiceBuilder::new()
            .map_request(|r: Request<hyper::body::Incoming>| r.map(|b| b.boxed_unsync()))
            .layer(layer)
            .service(origin),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, Origin { calls, bodies })
}

/// A raw HTTP/1.1 client: sends `GET path`, then reads at the test's pace.
struct Client {
    stream: TcpStream,
    received: Vec<u8>,
}

impl Client {
    async fn get(addr: SocketAddr, path: &str) -> Client {
        Self::send(TcpStream::connect(addr).await.unwrap(), path).await
    }

    /// A client with a receive buffer of a few KiB: once it stops reading, the server can
    /// write it little more (loopback's default buffers would take megabytes).
    async fn get_small_window(addr: SocketAddr, path: &str) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        Self::send(socket.connect(addr).await.unwrap(), path).await
    }

    async fn send(mut stream: TcpStream, path: &str) -> Client {
        let request = format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        Client {
            stream,
            received: Vec::new(),
        }
    }

    /// Reads until `needle` has arrived; `false` if the connection closed or `within` passed.
    async fn read_until(&mut self, needle: &[u8], within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut buffer = [0u8; 64 * 1024];
        // Only the bytes that arrived since the last look (and a needle's length before them)
        // can hold the needle.
        let mut searched = 0;
        while !contains(&self.received[searched..], needle) {
            searched = self.received.len().saturating_sub(needle.len());
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buffer)).await {
                Ok(Ok(n)) if n > 0 => self.received.extend_from_slice(&buffer[..n]),
                _ => return false,
            }
        }
        true
    }

    /// Reads the whole response: to its `Content-Length`, or to the end of its chunked body.
    async fn read_to_end(&mut self, within: Duration) -> bool {
        if !self.read_until(b"\r\n\r\n", within).await {
            return false;
        }
        let Some(length) = self.content_length() else {
            return self.read_until(END, within).await;
        };
        let deadline = tokio::time::Instant::now() + within;
        let mut buffer = [0u8; 64 * 1024];
        while self.received.len() - self.body_start() < length {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buffer)).await {
                Ok(Ok(n)) if n > 0 => self.received.extend_from_slice(&buffer[..n]),
                _ => return false,
            }
        }
        true
    }

    fn content_length(&self) -> Option<usize> {
        self.head().lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
    }

    fn body_start(&self) -> usize {
        find(&self.received, b"\r\n\r\n").map_or(self.received.len(), |i| i + 4)
    }

    fn head(&self) -> String {
        let text = String::from_utf8_lossy(&self.received);
        text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
    }

    /// The body received (chunked framing removed, up to the first incomplete chunk).
    fn body(&self) -> Vec<u8> {
        let mut rest = &self.received[self.body_start()..];
        if self.content_length().is_some() {
            return rest.to_vec();
        }
        let mut body = Vec::new();
        while let Some(line_end) = find(rest, b"\r\n") {
            let size = std::str::from_utf8(&rest[..line_end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .unwrap_or(0);
            rest = &rest[line_end + 2..];
            if size == 0 || rest.len() < size + 2 {
                break;
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// The end of a chunked body.
const END: &[u8] = b"\r\n0\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_waiters_receive_the_first_bytes_before_the_last_byte_left_the_origin() {
    let (addr, mut origin) = serve(CacheLayer::new(MemoryStore::new(64 << 20)), b"first;").await;
    let mut leader = Client::get(addr, "/page").await;
    assert!(leader.read_until(b"first;", Duration::from_secs(5)).await);
    let body = origin.bodies.recv().await.unwrap();

    // The origin holds the rest of its body back while 100 more clients ask for the page.
    let started = Instant::now();
    let mut waiters = Vec::new();
    for _ in 0..100 {
        waiters.push(tokio::spawn(async move {
            let mut client = Client::get(addr, "/page").await;
            let sent = Instant::now();
            let got = client.read_until(b"first;", Duration::from_secs(10)).await;
            (client, got, sent.elapsed())
        }));
    }
    let mut clients = Vec::new();
    let mut first_byte = Vec::new();
    for waiter in waiters {
        let (client, got, elapsed) = waiter.await.unwrap();
        assert!(got, "a waiter got no bytes while the fill was in flight");
        first_byte.push(elapsed);
        clients.push(client);
    }
    first_byte.sort();
    eprintln!(
        "time to a waiter's first byte, fill in flight: p50 {:?}, max {:?} (100 waiters, {:?} in all)",
        first_byte[50],
        first_byte[99],
        started.elapsed()
    );
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1);

    // Now the rest leaves the origin, and every reader gets all of it.
    body.send(Bytes::from(vec![b'x'; 100_000])).unwrap();
    drop(body);
    clients.push(leader);
    for client in &mut clients {
        assert!(client.read_until(END, Duration::from_secs(10)).await);
        assert_eq!(client.body().len(), "first;".len() + 100_000);
    }
    for client in &clients[..100] {
        assert!(
            client.head().contains("hit; detail=coalesced"),
            "{}",
            client.head()
        );
    }
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_client_that_hangs_up_mid_body_leaves_the_fill_to_complete_and_be_stored() {
    let (addr, mut origin) = serve(CacheLayer::new(MemoryStore::new(64 << 20)), b"first;").await;
    let mut leader = Client::get(addr, "/page").await;
    assert!(leader.read_until(b"first;", Duration::from_secs(5)).await);
    let body = origin.bodies.recv().await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..10 {
        let mut client = Client::get(addr, "/page").await;
        assert!(client.read_until(b"first;", Duration::from_secs(5)).await);
        waiters.push(client);
    }
    // The first client leaves with the body half sent.
    body.send(Bytes::from(vec![b'x'; 10_000])).unwrap();
    assert!(
        leader
            .read_until(&[b'x'; 100], Duration::from_secs(5))
            .await
    );
    drop(leader);
    tokio::time::sleep(Duration::from_millis(50)).await;
    body.send(Bytes::from(vec![b'y'; 10_000])).unwrap();
    drop(body);

    for waiter in &mut waiters {
        assert!(waiter.read_until(END, Duration::from_secs(5)).await);
        assert_eq!(waiter.body().len(), 6 + 20_000);
    }
    // Stored: the next request is a hit, and the origin was called once in all.
    let mut after = Client::get(addr, "/page").await;
    let mut stored = false;
    for _ in 0..50 {
        assert!(after.read_until(b"\r\n\r\n", Duration::from_secs(5)).await);
        if after.head().contains("tower-strata; hit") {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = Client::get(addr, "/page").await;
    }
    assert!(stored, "the fill was not stored: {}", after.head());
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1, "origin calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_client_that_stops_reading_holds_up_no_waiter() {
    // 3 MiB: far more than the socket buffers hold, so a client that does not read stops
    // the server writing to it; under the body limit (the memory store's largest value,
    // 4 MiB, less room for the headers), so it is stored.
    const SIZE: usize = 3 << 20;
    let layer = CacheLayer::new(MemoryStore::new(64 << 20)).max_body_size(4 << 20);
    let (addr, mut origin) = serve(layer, b"first;").await;
    let stalled = Client::get_small_window(addr, "/big").await;
    let body = origin.bodies.recv().await.unwrap();
    for _ in 0..(SIZE / 65_536) {
        body.send(Bytes::from(vec![b'x'; 65_536])).unwrap();
    }
    drop(body);

    let started = Instant::now();
    let mut waiters = Vec::new();
    for _ in 0..20 {
        waiters.push(tokio::spawn(async move {
            let mut client = Client::get(addr, "/big").await;
            let done = client.read_to_end(Duration::from_secs(10)).await;
            (done, client.body().len())
        }));
    }
    for waiter in waiters {
        let (done, len) = waiter.await.unwrap();
        assert!(done, "a reader was held up by the one that stopped reading");
        assert_eq!(len, 6 + SIZE);
    }
    eprintln!(
        "20 readers of a 3 MiB fill whose first client stopped reading: all done in {:?}",
        started.elapsed()
    );
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1);
    drop(stalled);
}
