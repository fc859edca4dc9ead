//! Conditional requests, as the steps share them: whether a client's request is conditional
//! (its response is its own, never shared), whether a stored response can be revalidated, and
//! the cache's own conditional request with a stored response's validators.

use http::Request;
use http::header::{self, HeaderMap};

use super::record::Record;

/// The request fields that make a request conditional (or partial).
pub(crate) const CONDITIONALS: [header::HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// Whether a request is conditional or partial: its response is its own, not one to share.
pub(crate) fn has_conditionals(headers: &HeaderMap) -> bool {
    CONDITIONALS.iter().any(|h| headers.contains_key(h))
}

/// Whether a stored response can be revalidated (it has an `ETag` or a `Last-Modified`).
pub(crate) fn has_validators(record: &Record) -> bool {
    record.headers.contains_key(header::ETAG) || record.headers.contains_key(header::LAST_MODIFIED)
}

/// Makes `headers` the cache's own conditional request for `record`: the client's
/// conditionals and range go, the stored validators come in.
pub(crate) fn conditional_headers(headers: &mut HeaderMap, record: &Record) {
    for name in &CONDITIONALS {
        headers.remove(name);
    }
    if let Some(etag) = record.headers.get(header::ETAG) {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = record.headers.get(header::LAST_MODIFIED) {
        headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

/// A copy of `request` with an empty body, for a second upstream call when a `304` validated
/// nothing. A GET's body has no meaning (RFC 9110 §9.3.1), so nothing is lost.
pub(crate) fn copy_without_body<B: Default>(request: &Request<B>) -> Request<B> {
    let mut copy = Request::new(B::default());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
}
