//! The origin: a hyper-util client, the request rewritten for it, hop-by-hop fields dropped.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies on their way to the origin (a client's, or one the gRPC buffer rebuilt).
type OriginBody = UnsyncBoxBody<Bytes, BoxError>;

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Removes the fields of one connection (RFC 9110 §7.6.1): those listed in `Connection`, and
/// the hop-by-hop fields; for requests on their way to the origin and its responses alike.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The origin: a hyper-util client speaking HTTP/1.1, or h2c with prior knowledge.
#[derive(Clone)]
pub struct Origin {
    client: Client<HttpConnector, OriginBody>,
    authority: Authority,
    host: HeaderValue,
    http2: bool,
}

impl Origin {
    pub fn new(origin: &Uri, http2: bool) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .http2_only(http2)
            .build(connector);
        // `args::origin` accepted only URIs with an authority.
        let authority = origin
            .authority()
            .cloned()
            .expect("origin has an authority");
        let host = HeaderValue::from_str(authority.as_str()).expect("an authority is a value");
        Origin {
            client,
            authority,
            host,
            http2,
        }
    }

    /// Sends a request to the origin: its URI on the origin's authority, the version the
    /// client speaks to the origin (not the one the client spoke to the proxy), no
    /// hop-by-hop fields either way.
    pub fn send<B>(
        &self,
        mut request: Request<B>,
    ) -> impl Future<Output = Result<Response<Incoming>, String>> + Send + use<B>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let uri = Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build();
        let headers = request.headers_mut();
        // gRPC needs `TE: trailers`, the one value HTTP/2 allows; the proxy relays trailers,
        // so it may send it on its own behalf.
        let trailers = self.http2 && lists(headers, header::TE, "trailers");
        strip_hop_by_hop(headers);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if self.http2 {
            // `:authority` comes from the URI.
            headers.remove(header::HOST);
            *request.version_mut() = Version::HTTP_2;
        } else {
            headers.insert(header::HOST, self.host.clone());
            *request.version_mut() = Version::HTTP_11;
        }
        let client = self.client.clone();
        async move {
            *request.uri_mut() = uri.map_err(|e| e.to_string())?;
            let request = request.map(|b| b.map_err(Into::into).boxed_unsync());
            let mut response = client.request(request).await.map_err(|e| {
                tracing::debug!(error = %e, "origin request failed");
                e.to_string()
            })?;
            strip_hop_by_hop(response.headers_mut());
            Ok(response)
        }
    }
}

/// Whether a comma-separated field lists `token`.
fn lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(token)
        })
}
