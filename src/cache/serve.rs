//! The last step, serve: a response from a stored record (a hit, a stale hit, a coalesced
//! waiter, a revalidated entry), with `Age`, `Cache-Status`, conditional and range requests.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use super::body::{CacheBody, Resp};
use super::ctx::Ctx;
use super::lookup::Found;
use super::policy;
use super::record::Record;
use super::state::Streaming;
use super::status::{CACHE_STATUS, Outcome};

/// The answer to a request whose authority (URI or `Host`) is not a valid `host[:port]`:
/// `400`, before the cache keys it or the service sees it (RFC 9112 §3.2), so no client can
/// file a response under another URL's key.
pub(crate) fn invalid_authority<St, RB>(ctx: &Ctx<St>) -> Resp<RB> {
    let mut response = Response::new(CacheBody::stored(
        bytes::Bytes::from_static(b"invalid Host: expected host[:port]\n"),
        None,
    ));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Outcome::InvalidHost.record(ctx, response.headers_mut());
    response
}

/// An upstream response the cache does not store or keep (a bypass, an unstorable answer, a
/// gRPC call): passed through unbuffered, without the fields meant for this cache only.
pub(crate) fn passthrough<St, RB>(ctx: &Ctx<St>, response: Response<RB>) -> Resp<RB> {
    let mut response = response.map(CacheBody::passthrough);
    // Targeted at this cache, never passed on (see `forward`).
    response.headers_mut().remove(&policy::SURROGATE_CONTROL);
    if ctx.config.strip_tag_headers {
        response.headers_mut().remove(&super::tags::SURROGATE_KEY);
        response.headers_mut().remove(&super::tags::CACHE_TAG);
    }
    response
}

/// Answers from a stored response: `304` when the client's validators match, `206`/`416` for
/// a single byte range, else the whole response (no body for HEAD). The body is not copied.
/// The `outcome` is counted and becomes the `Cache-Status`.
pub(crate) fn serve<St, RB>(
    ctx: &Ctx<St>,
    found: &Found,
    method: &Method,
    request_headers: &HeaderMap,
    outcome: Outcome,
) -> Resp<RB> {
    outcome.count(&ctx.shared);
    let age = HeaderValue::from(found.current_age().as_secs());
    serve_record(
        &found.record,
        method,
        request_headers,
        age,
        outcome.status_value(ctx),
    )
}

/// [`serve`] with the `Age` and `Cache-Status` values already made.
pub(crate) fn serve_record<RB>(
    record: &Record,
    method: &Method,
    request_headers: &HeaderMap,
    age: HeaderValue,
    status: Option<HeaderValue>,
) -> Resp<RB> {
    if record.status == StatusCode::OK && not_modified(request_headers, &record.headers) {
        return not_modified_response(&record.headers, age, status);
    }
    let len = record.body.len() as u64;
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = record.status;
    *response.headers_mut() = record.headers.clone();
    let range = (method == Method::GET && record.status == StatusCode::OK)
        .then(|| range_of(request_headers, &record.headers, len))
        .flatten();
    match range {
        Some(Ok((start, end))) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = response.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            *response.body_mut() =
                CacheBody::stored(record.body.slice(start as usize..=end as usize), None);
        }
        Some(Err(())) => {
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = response.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        None => {
            if !response.headers().contains_key(header::CONTENT_LENGTH) && record.trailers.is_none()
            {
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            if method != Method::HEAD {
                *response.body_mut() =
                    CacheBody::stored(record.body.clone(), record.trailers.clone());
            }
        }
    }
    let h = response.headers_mut();
    h.insert(header::AGE, age);
    if let Some(status) = status {
        h.append(CACHE_STATUS.clone(), status);
    }
    response
}

/// A `304` to a client whose validators match a stored response's `headers`: the fields
/// RFC 9110 §15.4.5 says it carries, `Age` and `Cache-Status`.
fn not_modified_response<RB>(
    headers: &HeaderMap,
    age: HeaderValue,
    status: Option<HeaderValue>,
) -> Resp<RB> {
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let h = response.headers_mut();
    for name in [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        header::LAST_MODIFIED,
    ] {
        for v in headers.get_all(&name) {
            h.append(name.clone(), v.clone());
        }
    }
    h.insert(header::AGE, age);
    if let Some(status) = status {
        h.append(CACHE_STATUS.clone(), status);
    }
    response
}

/// Answers a coalesced waiter from a response still streaming from upstream: its stored
/// head, and a reader of the fill's body from the first byte (none for `HEAD` or a `304`).
/// `None` when the fill's first bytes are gone (it went past the size limit).
pub(crate) fn serve_streaming<St, RB>(
    ctx: &Ctx<St>,
    streaming: &Streaming,
    method: &Method,
    request_headers: &HeaderMap,
    outcome: Outcome,
) -> Option<Resp<RB>> {
    let age = HeaderValue::from_static("0");
    let status = outcome.status_value(ctx);
    if streaming.status == StatusCode::OK && not_modified(request_headers, &streaming.headers) {
        outcome.count(&ctx.shared);
        return Some(not_modified_response(&streaming.headers, age, status));
    }
    let body = if *method == Method::HEAD {
        CacheBody::empty()
    } else {
        CacheBody::fill(streaming.tee.reader()?)
    };
    outcome.count(&ctx.shared);
    let mut response = Response::new(body);
    *response.status_mut() = streaming.status;
    *response.headers_mut() = streaming.headers.clone();
    let h = response.headers_mut();
    h.insert(header::AGE, age);
    if let Some(status) = status {
        h.append(CACHE_STATUS.clone(), status);
    }
    Some(response)
}

/// RFC 9110 §13.1.2 (weak comparison) and §13.1.3.
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        let Ok(inm) = inm.to_str() else { return false };
        if inm.trim() == "*" {
            return true;
        }
        let Some(etag) = stored.get(header::ETAG).and_then(|e| e.to_str().ok()) else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        let etag = weak(etag);
        return inm.split(',').any(|t| weak(t) == etag);
    }
    if let Some(since) = policy::header_date(request, &header::IF_MODIFIED_SINCE) {
        let modified = policy::header_date(stored, &header::LAST_MODIFIED)
            .or_else(|| policy::header_date(stored, &header::DATE));
        return modified.is_some_and(|m| m <= since);
    }
    false
}

/// A single satisfiable `bytes=` range as inclusive offsets, `Err` when unsatisfiable, `None`
/// when the whole response should be sent (no range, several ranges, a failed `If-Range`).
pub(crate) fn range_of(
    request: &HeaderMap,
    stored: &HeaderMap,
    len: u64,
) -> Option<Result<(u64, u64), ()>> {
    let range = request.get(header::RANGE)?.to_str().ok()?.trim();
    if let Some(if_range) = request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let matches = if if_range.starts_with('"') {
            stored.get(header::ETAG).and_then(|e| e.to_str().ok()) == Some(if_range)
        } else {
            policy::parse_http_date(if_range)
                .is_some_and(|d| policy::header_date(stored, &header::LAST_MODIFIED) == Some(d))
        };
        if !matches {
            return None;
        }
    }
    let spec = range.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    let parsed = if start.is_empty() {
        let suffix: u64 = end.parse().ok()?;
        if suffix == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(suffix), len - 1)
    } else {
        let start: u64 = start.parse().ok()?;
        let end = if end.is_empty() {
            len.saturating_sub(1)
        } else {
            end.parse::<u64>().ok()?.min(len.saturating_sub(1))
        };
        if start >= len || end < start {
            return Some(Err(()));
        }
        (start, end)
    };
    Some(Ok(parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }
    #[test]
    fn conditionals() {
        let stored = h(&[
            ("etag", "\"v1\""),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]);
        assert!(not_modified(&h(&[("if-none-match", "\"v1\"")]), &stored));
        assert!(not_modified(
            &h(&[("if-none-match", "W/\"v1\", \"x\"")]),
            &stored
        ));
        assert!(!not_modified(&h(&[("if-none-match", "\"v2\"")]), &stored));
        assert!(not_modified(&h(&[("if-none-match", "*")]), &stored));
        assert!(not_modified(
            &h(&[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")]),
            &stored
        ));
    }

    #[test]
    fn ranges() {
        let stored = h(&[("etag", "\"v1\"")]);
        // (request headers, the answer for a 10-byte body)
        let cases = [
            (&[("range", "bytes=0-3")][..], Some(Ok((0, 3)))),
            (&[("range", "bytes=5-")], Some(Ok((5, 9)))),
            (&[("range", "bytes=-4")], Some(Ok((6, 9)))),
            (&[("range", "bytes=8-20")], Some(Ok((8, 9)))),
            (&[("range", "bytes=10-")], Some(Err(()))),
            (&[("range", "bytes=0-1,3-4")], None),
            (&[("range", "bytes=0-1"), ("if-range", "\"v0\"")], None),
            (&[], None),
        ];
        for (request, expected) in cases {
            assert_eq!(range_of(&h(request), &stored, 10), expected, "{request:?}");
        }
    }
}
