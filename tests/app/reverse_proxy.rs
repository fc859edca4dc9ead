//! The `reverse_proxy` example in-process, on real sockets, in front of real origins: a hyper
//! HTTP/1.1 origin that echoes the forwarding headers and builds a redirect from
//! `X-Forwarded-Host`, and a tonic gRPC server. Clients are raw HTTP/1.1 sockets, a hyper
//! HTTP/2 client with prior knowledge (h2c) and a tonic channel.
#![cfg(all(feature = "memory", feature = "purge"))]

#[allow(unused_imports)] // only its `tonic` test uses it
use crate::support;

#[allow(dead_code)]
#[path = "../../examples/reverse_proxy/args.rs"]
pub(crate) mod args;
#[path = "../../examples/reverse_proxy/forwarded.rs"]
pub(crate) mod forwarded;
#[path = "../../examples/reverse_proxy/origin.rs"]
pub(crate) mod origin;
#[allow(dead_code)]
#[path = "../../examples/reverse_proxy/proxy.rs"]
mod proxy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A task aborted when the test ends, whatever way it ends.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The proxy with these flags (after `--listen` and `--origin`), on a port of its own.
async fn start_proxy(origin: SocketAddr, flags: &[&str]) -> (SocketAddr, Task) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (listen, origin) = (addr.to_string(), format!("http://{origin}"));
    let command = ["reverse_proxy", "--listen", &listen, "--origin", &origin];
    let args = <args::Args as clap::Parser>::try_parse_from(command.iter().chain(flags)).unwrap();
    let proxy = proxy::build(&args).await;
    (addr, Task(tokio::spawn(proxy::serve(listener, proxy))))
}

/// An origin (HTTP/1.1, and h2c) that counts its calls. It answers with the forwarding headers
/// it got, one `name: value` a line, a `Location` built from `X-Forwarded-Host` (as frameworks
/// build absolute redirects behind a proxy), the HTTP version it was spoken to in
/// (`Origin-Version`), and one minute of freshness.
async fn start_origin() -> (SocketAddr, Arc<AtomicUsize>, Task) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            let service = hyper::service::service_fn(move |r: Request<hyper::body::Incoming>| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, Infallible>(echo(r)) }
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, calls, Task(task))
}

const ECHOED: [&str; 9] = [
    "accept-language",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
    "x-original-url",
    "x-http-method-override",
];

fn echo(request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let headers = request.headers();
    let mut body = format!("{} {}\n", request.method(), request.uri().path());
    for name in ECHOED {
        for value in headers.get_all(name) {
            body.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
        }
    }
    let host = headers
        .get("x-forwarded-host")
        .or(headers.get("host"))
        .map_or("", |h| h.to_str().unwrap());
    let mut response = Response::builder();
    // Pages under /lang/ are negotiated on the client's language.
    if request.uri().path().starts_with("/lang/") {
        response = response.header("vary", "accept-language");
    }
    response
        .header("origin-version", format!("{:?}", request.version()))
        .header("cache-control", "max-age=60")
        .header("location", format!("http://{host}/landing"))
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A raw HTTP/1.1 exchange on a fresh connection (`Connection: close`): the head and the body.
async fn raw(proxy: SocketAddr, request: &str) -> (String, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10 s");
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    (head.to_ascii_lowercase(), body.to_owned())
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n{extra}Connection: close\r\n\r\n")
}

/// Lets the cache's background store write land.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_language_normalises_a_negotiated_page_to_the_origins_languages() {
    let (origin, calls, _origin) = start_origin().await;
    let (proxy, _proxy) = start_proxy(origin, &["--accept-language", "de,en"]).await;
    // Three browsers' lists that all come to German among German and English.
    let lists = ["de-DE, de;q=0.9, en;q=0.8", "en, de", "DE,fr;q=0.5"];
    for (n, list) in lists.iter().enumerate() {
        let (head, body) = raw(
            proxy,
            &get("/lang/page", &format!("Accept-Language: {list}\r\n")),
        )
        .await;
        // The origin is asked once, with the normalised value, and its answer serves all.
        assert!(body.contains("accept-language: de\n"), "{body}");
        if n > 0 {
            assert!(
                head.contains("cache-status: tower-strata; hit"),
                "{list}: {head}"
            );
        }
        settle().await;
    }
    let (_, body) = raw(proxy, &get("/lang/page", "Accept-Language: en-GB\r\n")).await;
    assert!(body.contains("accept-language: en\n"), "{body}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one origin call per language"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_forwarding_headers_never_reach_the_origin_or_the_cache() {
    let (origin, calls, _origin) = start_origin().await;
    let (proxy, _proxy) = start_proxy(origin, &[]).await;
    let spoofed = "X-Forwarded-Host: evil.example\r\nX-Forwarded-For: 6.6.6.6\r\n\
        X-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\nX-Real-IP: 6.6.6.6\r\n\
        Forwarded: for=6.6.6.6;host=evil.example\r\nX-Original-URL: /admin\r\n\
        X-HTTP-Method-Override: DELETE\r\n";
    let (head, body) = raw(proxy, &get("/account", spoofed)).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        body,
        "GET /account\nx-forwarded-for: 127.0.0.1\nx-forwarded-host: shop.example\n\
         x-forwarded-proto: http\n",
        "the origin sees only what the proxy set"
    );
    assert!(
        head.contains("location: http://shop.example/landing"),
        "{head}"
    );
    settle().await;
    // A plain request gets the stored answer: built on the client's Host, not the spoofed one.
    let (head, _) = raw(proxy, &get("/account", "")).await;
    assert!(head.contains("cache-status: tower-strata; hit"), "{head}");
    assert!(
        head.contains("location: http://shop.example/landing"),
        "{head}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // In absolute form the request target's authority is the host asked for (RFC 9112
    // §3.2.2), and the key's: a `Host` that differs cannot choose the origin's answer.
    let absolute = "GET http://shop.example/account HTTP/1.1\r\nHost: evil.example\r\n\
        Connection: close\r\n\r\n";
    let (head, _) = raw(proxy, absolute).await;
    assert!(head.contains("cache-status: tower-strata; hit"), "{head}");
    let absolute = absolute.replace("/account", "/other");
    let (head, body) = raw(proxy, &absolute).await;
    assert!(
        head.contains("location: http://shop.example/landing"),
        "{head}"
    );
    assert!(body.contains("x-forwarded-host: shop.example\n"), "{body}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A method override on a write is the application's business: it goes through.
    let post = "POST /account HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 0\r\n\
        X-HTTP-Method-Override: PUT\r\nConnection: close\r\n\r\n";
    let (_, body) = raw(proxy, post).await;
    assert!(body.contains("x-http-method-override: PUT"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_previous_hop_is_kept_and_extended() {
    let (origin, _, _origin) = start_origin().await;
    let (proxy, _proxy) = start_proxy(origin, &["--trust-forwarded"]).await;
    let hop = "X-Forwarded-Host: www.example\r\nX-Forwarded-For: 203.0.113.7\r\n\
        X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\
        Forwarded: for=203.0.113.7;proto=https\r\nX-Original-URL: /admin\r\n";
    let (head, body) = raw(proxy, &get("/lb", hop)).await;
    assert!(
        head.contains("location: http://www.example/landing"),
        "{head}"
    );
    assert_eq!(
        body,
        "GET /lb\nx-forwarded-for: 203.0.113.7, 10.0.0.1, 127.0.0.1\n\
         x-forwarded-host: www.example\nx-forwarded-proto: https\n\
         forwarded: for=203.0.113.7;proto=https, for=127.0.0.1\n"
    );
    // Without a previous hop's fields, the proxy's own.
    let (_, body) = raw(proxy, &get("/direct", "")).await;
    assert_eq!(
        body,
        "GET /direct\nx-forwarded-for: 127.0.0.1\nx-forwarded-host: shop.example\n\
         x-forwarded-proto: http\n"
    );
}

/// An HTTP/2 connection with prior knowledge (h2c).
async fn h2c(proxy: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

async fn h2_send(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (Response<()>, Bytes) {
    let response = tokio::time::timeout(Duration::from_secs(10), send.send_request(request))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (Response::from_parts(parts, ()), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_http1_clients_reach_an_http1_origin() {
    let (origin, calls, _origin) = start_origin().await;
    let (proxy, _proxy) = start_proxy(origin, &[]).await;
    let mut send = h2c(proxy).await;
    let url = format!("http://{proxy}/h2");
    let request = || Request::get(&url).body(Full::default()).unwrap();
    let (first, body) = h2_send(&mut send, request()).await;
    assert_eq!(first.status(), 200, "{body:?}");
    assert_eq!(
        first.headers()["cache-status"],
        "tower-strata; fwd=miss; stored"
    );
    assert!(body.starts_with(b"GET /h2\n"), "{body:?}");
    assert_eq!(first.headers()["origin-version"], "HTTP/1.1");
    settle().await;
    let (second, again) = h2_send(&mut send, request()).await;
    assert_eq!(second.status(), 200);
    let status = second.headers()["cache-status"].to_str().unwrap();
    assert!(status.starts_with("tower-strata; hit"), "{status}");
    assert_eq!((again, calls.load(Ordering::SeqCst)), (body, 1));
    // HTTP/1.1 clients get the entry the HTTP/2 client stored (the same authority).
    let request = format!("GET /h2 HTTP/1.1\r\nHost: {proxy}\r\nConnection: close\r\n\r\n");
    let (head, _) = raw(proxy, &request).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("cache-status: tower-strata; hit"), "{head}");
    // A body without Content-Length (HTTP/2 framing) goes to the HTTP/1.1 origin chunked.
    let post = Request::post(format!("http://{proxy}/h2"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let (posted, body) = h2_send(&mut send, post).await;
    assert_eq!(posted.status(), 200);
    assert!(body.starts_with(b"POST /h2\n"), "{body:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_http2_speaks_h2c_to_the_origin_whatever_the_client_speaks() {
    let (origin, calls, _origin) = start_origin().await;
    let (proxy, _proxy) = start_proxy(origin, &["--origin-http2"]).await;
    let (head, body) = raw(proxy, &get("/h1-to-h2", "")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("origin-version: http/2.0"), "{head}");
    assert!(body.contains("x-forwarded-host: shop.example"), "{body}");
    let mut send = h2c(proxy).await;
    let request = Request::get(format!("http://{proxy}/h2-to-h2"))
        .body(Full::default())
        .unwrap();
    let (response, _) = h2_send(&mut send, request).await;
    assert_eq!(response.headers()["origin-version"], "HTTP/2.0");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[cfg(feature = "tonic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_grpc_method_through_the_proxy_is_cached() {
    use support::grpc_echo::{Echo, call, connect, say};
    let echo = Echo::default();
    let calls = echo.calls.clone();
    let origin_port = support::free_port();
    let origin: SocketAddr = format!("127.0.0.1:{origin_port}").parse().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(echo)
        .serve(origin);
    let _origin = Task(tokio::spawn(async move {
        server.await.unwrap();
    }));
    let flags = ["--origin-http2", "--grpc-method", "/test.Echo/Say"];
    let (proxy, _proxy) = start_proxy(origin, &flags).await;
    let channel = connect(proxy.port()).await;
    let a = say(channel.clone(), "hi").await;
    settle().await;
    let b = say(channel.clone(), "hi").await;
    assert_eq!(
        (a.call, b.call),
        (1, 1),
        "the second identical call is a hit"
    );
    let c = say(channel.clone(), "other").await;
    assert_eq!(
        (c.text.as_str(), c.call),
        ("other", 2),
        "another message, another key"
    );
    // An unmarked method passes through, its status (in trailers) relayed.
    let e = call(channel.clone(), "/test.Echo/Fail", "x")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
