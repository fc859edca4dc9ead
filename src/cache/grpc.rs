//! tonic glue: buffer the request message of cacheable gRPC methods so the cache can key on it.
//!
//! A gRPC call is a POST whose body is the request message; the cache can only key on it once
//! it has been read. [`GrpcKeyLayer`] goes in front of [`CacheLayer`](super::CacheLayer): for
//! the methods it lists it reads the request body (up to a limit), attaches it as a
//! [`GrpcMessage`] extension and hands the service the same bytes as a fresh body. The cache
//! then stores responses to methods marked with
//! [`CacheLayer::grpc_method`](super::CacheLayer::grpc_method), keyed by method path plus the
//! message bytes, and only when the trailers carry `grpc-status: 0`.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_strata::cache::{CacheLayer, GrpcKeyLayer};
//! use tower_strata::store::MemoryStore;
//!
//! let layers = ServiceBuilder::new()
//!     .layer(GrpcKeyLayer::new(["/shop.Catalog/GetProduct"]))
//!     .layer(
//!         CacheLayer::new(MemoryStore::new(64 << 20))
//!             .grpc_method("/shop.Catalog/GetProduct", Duration::from_secs(30))?,
//!     )
//!     .into_inner();
//! // tonic::transport::Server::builder().layer(layers).add_service(...)
//! # let _ = layers;
//! # Ok::<(), tower_strata::cache::CacheConfigError>(())
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::key::GrpcMessage;

/// Default largest request message buffered for keying: 64 KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// Buffers the request messages of the listed gRPC methods for [`CacheLayer::grpc_method`](super::CacheLayer::grpc_method);
/// see the [module docs](super#grpc). Put it in front of the cache layer:
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_strata::cache::{CacheLayer, GrpcKeyLayer};
/// use tower_strata::store::MemoryStore;
///
/// let layers = ServiceBuilder::new()
///     .layer(GrpcKeyLayer::new(["/shop.Catalog/GetProduct"]))
///     .layer(
///         CacheLayer::new(MemoryStore::new(64 << 20))
///             .grpc_method("/shop.Catalog/GetProduct", Duration::from_secs(30))?,
///     )
///     .into_inner();
/// // tonic::transport::Server::builder().layer(layers).add_service(...)
/// # let _ = layers;
/// # Ok::<(), tower_strata::cache::CacheConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct GrpcKeyLayer {
    methods: Arc<[String]>,
    max_message_size: usize,
}

impl GrpcKeyLayer {
    /// Buffers requests to these method paths (`/package.Service/Method`).
    pub fn new(methods: impl IntoIterator<Item = impl Into<String>>) -> Self {
        GrpcKeyLayer {
            methods: methods.into_iter().map(Into::into).collect(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    /// Largest request body buffered (default [`DEFAULT_MAX_MESSAGE_SIZE`]). A call whose
    /// body is larger is answered with gRPC status `RESOURCE_EXHAUSTED` (8): a body read past
    /// the limit cannot be handed on unbuffered.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
}

impl<S> Layer<S> for GrpcKeyLayer {
    type Service = GrpcKey<S>;

    fn layer(&self, inner: S) -> GrpcKey<S> {
        GrpcKey {
            inner,
            methods: self.methods.clone(),
            max_message_size: self.max_message_size,
        }
    }
}

/// The service made by [`GrpcKeyLayer`].
#[derive(Clone, Debug)]
pub struct GrpcKey<S> {
    inner: S,
    methods: Arc<[String]>,
    max_message_size: usize,
}

impl<S> GrpcKey<S> {
    inner_service_accessors!();
}

/// The response future of [`GrpcKey`]: reading the request body is a wait of its own, so the
/// call is one boxed future behind this named type (only for the listed methods).
pub struct GrpcKeyFuture<R, E> {
    inner: Pin<Box<dyn Future<Output = Result<R, E>> + Send>>,
}

impl<R, E> std::fmt::Debug for GrpcKeyFuture<R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcKeyFuture").finish_non_exhaustive()
    }
}

impl<R, E> Future for GrpcKeyFuture<R, E> {
    type Output = Result<R, E>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// gRPC `RESOURCE_EXHAUSTED` as a trailers-only response.
fn too_large<RB: Default>() -> Response<RB> {
    let mut r = Response::new(RB::default());
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", http::HeaderValue::from_static("8"));
    h.insert(
        "grpc-message",
        http::HeaderValue::from_static("request message over the cache's buffering limit"),
    );
    r
}

impl<S, RB> Service<Request<Body>> for GrpcKey<S>
where
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = GrpcKeyFuture<Response<RB>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let listed = self.methods.iter().any(|m| m == request.uri().path());
        if !listed {
            let future = inner.call(request);
            return GrpcKeyFuture {
                inner: Box::pin(future),
            };
        }
        let limit = self.max_message_size;
        GrpcKeyFuture {
            inner: Box::pin(async move {
                if request.body().size_hint().lower().gt(&(limit as u64)) {
                    return Ok(too_large());
                }
                let (mut parts, mut body) = request.into_parts();
                let mut buf = BytesMut::new();
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else {
                        let mut r = too_large();
                        r.headers_mut()
                            .insert("grpc-status", http::HeaderValue::from_static("13"));
                        r.headers_mut().insert(
                            "grpc-message",
                            http::HeaderValue::from_static("request body failed"),
                        );
                        return Ok(r);
                    };
                    if let Some(data) = frame.data_ref() {
                        if buf.len() + data.len() > limit {
                            return Ok(too_large());
                        }
                        buf.extend_from_slice(data);
                    }
                }
                let bytes = buf.freeze();
                parts.extensions.insert(GrpcMessage(bytes.clone()));
                inner
                    .call(Request::from_parts(parts, Body::new(Full::new(bytes))))
                    .await
            }),
        }
    }
}
