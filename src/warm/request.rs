//! What to warm: [`WarmRequest`], and [`IntoWarmRequests`] for what a source returns.

use std::fmt;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};

use super::*;

/// One request to warm: a method, a URI and headers, without a body.
///
/// ```
/// use tower_strata::warm::WarmRequest;
///
/// let request = WarmRequest::get("/products/1")
///     .header("accept", "application/json")
///     .header("accept-encoding", "gzip");
/// # let _ = request;
/// ```
///
/// An invalid URI or header is reported by [`WarmerBuilder::build`] (or, from a source, counted
/// as a source failure), never by a panic.
#[derive(Clone, Debug)]
pub struct WarmRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    error: Option<String>,
}

impl WarmRequest {
    /// A `GET` for `uri`: a path (`/products/1?lang=en`) or an absolute URI.
    pub fn get(uri: impl AsRef<str>) -> Self {
        Self::new(Method::GET, uri)
    }

    /// A request with any method for `uri`. Only `GET` responses are cached; other methods can
    /// warm other layers (a connection pool, an application cache).
    pub fn new(method: Method, uri: impl AsRef<str>) -> Self {
        let uri_str = uri.as_ref();
        let (uri, error) = match uri_str.parse::<Uri>() {
            Ok(uri) => (uri, None),
            Err(e) => (
                Uri::default(),
                Some(format!("invalid warm request URI {uri_str:?}: {e}")),
            ),
        };
        WarmRequest {
            method,
            uri,
            headers: HeaderMap::new(),
            error,
        }
    }

    /// Adds a header (appended: a name may repeat).
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: fmt::Display,
        V: TryInto<HeaderValue>,
        V::Error: fmt::Display,
    {
        match (name.try_into(), value.try_into()) {
            (Ok(name), Ok(value)) => {
                self.headers.append(name, value);
            }
            (Err(e), _) => self.fail(format!("invalid warm request header name: {e}")),
            (_, Err(e)) => self.fail(format!("invalid warm request header value: {e}")),
        }
        self
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    fn fail(&mut self, message: String) {
        // Keep the first problem: it is the one to fix first.
        self.error.get_or_insert(message);
    }

    pub(super) fn check(&self) -> Result<(), WarmConfigError> {
        match &self.error {
            Some(message) => Err(WarmConfigError::new(
                WarmConfigErrorKind::InvalidRequest,
                message.clone(),
            )),
            None => Ok(()),
        }
    }

    pub(super) fn to_request<B: Default>(&self) -> Request<B> {
        let mut request = Request::new(B::default());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// What a warming source returns: the requests of one run, or why there are none.
///
/// Implemented for `Vec<http::Request<B>>`, `Vec<WarmRequest>` and `Result<T, E>` of either
/// with a displayable error, so a source can be any async function of the app.
pub trait IntoWarmRequests<B> {
    /// The requests, or the error to log and count.
    fn into_warm_requests(self) -> Result<Vec<Request<B>>, String>;
}

impl<B> IntoWarmRequests<B> for Vec<Request<B>> {
    fn into_warm_requests(self) -> Result<Vec<Request<B>>, String> {
        Ok(self)
    }
}

impl<B: Default> IntoWarmRequests<B> for Vec<WarmRequest> {
    fn into_warm_requests(self) -> Result<Vec<Request<B>>, String> {
        self.iter()
            .map(|r| match &r.error {
                Some(e) => Err(e.clone()),
                None => Ok(r.to_request()),
            })
            .collect()
    }
}

impl<B, T, E> IntoWarmRequests<B> for Result<T, E>
where
    T: IntoWarmRequests<B>,
    E: fmt::Display,
{
    fn into_warm_requests(self) -> Result<Vec<Request<B>>, String> {
        self.map_err(|e| e.to_string())?.into_warm_requests()
    }
}
