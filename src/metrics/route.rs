//! Route labels: the route template of a request, never its raw path.

use std::borrow::Cow;

use http::{Extensions, HeaderMap, Method, Uri};

/// The parts of a request a [`RouteLabel`] may look at.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestInfo<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request URI.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions (axum puts `MatchedPath` here).
    pub extensions: &'a Extensions,
}

impl<'a> RequestInfo<'a> {
    /// Borrows the parts of a request.
    pub fn new<B>(req: &'a http::Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

/// Gives the route template of a request (for example `/users/{id}`), used as the `http.route`
/// label.
///
/// It must return a value from a bounded set: a raw path would give one time series per URL.
/// Return `None` when the request matched no route; it is then counted under the registry's
/// unmatched label.
///
/// Implemented for closures `Fn(&RequestInfo<'_>) -> Option<R>` where `R` is `&'static str`,
/// `String` or `Cow<'static, str>`. The trait is object safe.
pub trait RouteLabel: Send + Sync + 'static {
    /// The route template of `req`, or `None` when no route matched.
    fn route_label<'a>(&self, req: &RequestInfo<'a>) -> Option<Cow<'a, str>>;
}

impl<F, R> RouteLabel for F
where
    F: Fn(&RequestInfo<'_>) -> Option<R> + Send + Sync + 'static,
    R: Into<Cow<'static, str>>,
{
    fn route_label<'a>(&self, req: &RequestInfo<'a>) -> Option<Cow<'a, str>> {
        self(req).map(Into::into)
    }
}

/// Whether the request is a gRPC call (`content-type: application/grpc...`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `/package.Service/Method` path of a gRPC call, when it has that shape.
pub(crate) fn grpc_route(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 256
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
    };
    (valid(service) && valid(method)).then_some(path)
}

/// The route the application declared for a request: axum's `MatchedPath`. (A gRPC path is
/// the client's until the response shows a gRPC service answered it: see `Route::Pending`.)
pub(crate) fn declared_route<'a>(req: &RequestInfo<'a>) -> Option<Cow<'a, str>> {
    #[cfg(feature = "axum")]
    if let Some(matched) = super::axum::matched_path(req.extensions) {
        return Some(Cow::Borrowed(matched));
    }
    let _ = req;
    None
}

/// Number of method labels.
pub(crate) const METHODS: usize = 10;

/// Index of the method label: the nine standard methods, then `_OTHER`.
pub(crate) fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

/// The `http.request.method` label of a method index.
pub(crate) const METHOD_LABELS: [&str; METHODS] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_other() {
        let m = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(METHOD_LABELS[method_index(&m)], "_OTHER");
        assert_eq!(METHOD_LABELS[method_index(&Method::PATCH)], "PATCH");
    }

    #[test]
    fn grpc_routes_need_the_service_method_shape() {
        assert_eq!(grpc_route("/pkg.Svc/Call"), Some("/pkg.Svc/Call"));
        assert_eq!(grpc_route("/pkg.Svc/Call/extra"), None);
        assert_eq!(grpc_route("/pkg.Svc"), None);
        assert_eq!(grpc_route("/a b/c"), None);
    }

    #[test]
    fn closures_are_route_labels_and_the_trait_is_object_safe() {
        let f: Box<dyn RouteLabel> = Box::new(|req: &RequestInfo<'_>| {
            req.uri.path().starts_with("/api/").then_some("/api/*")
        });
        let req = http::Request::get("/api/x").body(()).unwrap();
        assert_eq!(
            f.route_label(&RequestInfo::new(&req)).as_deref(),
            Some("/api/*")
        );
        let req = http::Request::get("/other").body(()).unwrap();
        assert_eq!(f.route_label(&RequestInfo::new(&req)), None);
    }
}
