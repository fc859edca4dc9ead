//! RFC 9111 shared-cache rules: `Cache-Control` parsing, storability and freshness.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

/// Heuristic freshness is capped at one day (RFC 9111 §4.2.2 suggests at most 10% of the time
/// since `Last-Modified`).
const HEURISTIC_CAP: Duration = Duration::from_secs(24 * 3600);

/// A per-response override a handler attaches as a response extension, taking precedence over
/// the response's headers and the layer's policy for this one response.
///
/// The privacy rules still apply: a response with `Set-Cookie`, `private` or `no-store`, or to
/// a request carrying `Authorization` without permission, is never stored, whatever the
/// override says.
///
/// ```
/// use std::time::Duration;
/// use tower_strata::cache::CacheOverride;
///
/// let mut response = http::Response::new(());
/// response.extensions_mut().insert(CacheOverride::ttl(Duration::from_secs(30)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheOverride {
    ttl: Option<Duration>,
    grace: Option<Duration>,
}

impl CacheOverride {
    /// Stores the response for `ttl`, whatever its `Cache-Control` says.
    pub fn ttl(ttl: Duration) -> Self {
        CacheOverride {
            ttl: Some(ttl),
            grace: None,
        }
    }

    /// Never stores the response.
    pub fn no_store() -> Self {
        CacheOverride {
            ttl: None,
            grace: None,
        }
    }

    /// Also serves the response stale, while it refreshes, for `grace` after its TTL.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }
}

/// Parsed `Cache-Control`-style directives (also used for `CDN-Cache-Control` and
/// `Surrogate-Control`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    pub present: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub swr: Option<u64>,
    pub sie: Option<u64>,
}

impl Directives {
    /// Parses every value of `name` in `headers`. Unknown directives are ignored; a malformed
    /// delta-seconds value makes the response stale at once (`max-age`) or is ignored.
    pub fn parse(headers: &HeaderMap, name: &HeaderName) -> Self {
        let mut d = Directives::default();
        for value in headers.get_all(name) {
            let Ok(value) = value.to_str() else { continue };
            for item in split_list(value) {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                d.present = true;
                let (key, arg) = match item.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                    None => (item, None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok());
                match key.to_ascii_lowercase().as_str() {
                    // A malformed max-age means stale (RFC 9111 §4.2.1).
                    "max-age" => d.max_age = Some(secs().unwrap_or(0)),
                    "s-maxage" => d.s_maxage = Some(secs().unwrap_or(0)),
                    "no-store" => d.no_store = true,
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "stale-while-revalidate" => d.swr = secs(),
                    "stale-if-error" => d.sie = secs(),
                    _ => {}
                }
            }
        }
        d
    }
}

/// Splits a comma-separated list, keeping quoted strings (which may hold commas) whole.
pub(crate) fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = value;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut in_quotes = false;
        for (i, c) in rest.char_indices() {
            match c {
                '"' => in_quotes = !in_quotes,
                ',' if !in_quotes => {
                    let item = &rest[..i];
                    rest = &rest[i + 1..];
                    return Some(item);
                }
                _ => {}
            }
        }
        let item = rest;
        rest = "";
        Some(item)
    })
}

/// How long a stored response is fresh and how it may be served once stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// Freshness lifetime (RFC 9111 §4.2.1).
    pub lifetime: Duration,
    /// Age the response already had when stored (RFC 9111 §4.2.3 `corrected_initial_age`).
    pub initial_age: Duration,
    /// `stale-while-revalidate` window, if the response gave one.
    pub swr: Option<Duration>,
    /// `stale-if-error` window, if the response gave one.
    pub sie: Option<Duration>,
    /// Never serve stale: `must-revalidate`, `proxy-revalidate`, `no-cache` or `s-maxage`.
    pub must_revalidate: bool,
}

/// Why a response was not stored.
pub(crate) type NotStored = &'static str;

/// The policy inputs the layer configures.
#[derive(Clone, Debug)]
pub(crate) struct PolicyConfig {
    pub default_ttl: Option<Duration>,
    pub override_ttl: Option<Duration>,
    pub heuristic: bool,
}

/// Status codes cacheable by default (RFC 9110 §15.1).
pub(crate) fn cacheable_by_default(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The directives that govern this cache: `CDN-Cache-Control` (RFC 9213), then
/// `Surrogate-Control`, then `Cache-Control`. Returns whether a targeted field was used (then
/// `Expires` is ignored too).
pub(crate) fn governing_directives(headers: &HeaderMap) -> (Directives, bool) {
    for name in [&CDN_CACHE_CONTROL, &SURROGATE_CONTROL] {
        let d = Directives::parse(headers, name);
        if d.present {
            return (d, true);
        }
    }
    (Directives::parse(headers, &header::CACHE_CONTROL), false)
}

/// `CDN-Cache-Control` (RFC 9213).
pub(crate) static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
/// `Surrogate-Control` (Edge Architecture Specification).
pub(crate) static SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// Decides whether a response to a GET may be stored by a shared cache and for how long.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decide(
    config: &PolicyConfig,
    request_has_authorization: bool,
    request_no_store: bool,
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
    override_: Option<&CacheOverride>,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Result<Freshness, NotStored> {
    if method != Method::GET {
        return Err("method is not GET");
    }
    if request_no_store {
        return Err("request says no-store");
    }
    if status.is_informational() || status == StatusCode::PARTIAL_CONTENT {
        return Err("status is not a complete response");
    }
    if status == StatusCode::NOT_MODIFIED {
        return Err("status 304");
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err("response sets a cookie");
    }
    if headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .map_or(true, |v| v.split(',').any(|f| f.trim() == "*"))
    }) {
        return Err("Vary: *");
    }
    let (cc, targeted) = governing_directives(headers);
    // Privacy directives apply from the general Cache-Control too, whatever a targeted field
    // says: a targeted field can give this tier a TTL, never make private data shared.
    let general = if targeted {
        Directives::parse(headers, &header::CACHE_CONTROL)
    } else {
        cc.clone()
    };
    if cc.no_store || general.no_store {
        return Err("no-store");
    }
    if cc.private || general.private {
        return Err("private");
    }
    let allowed = |d: &Directives| d.public || d.s_maxage.is_some() || d.must_revalidate;
    if request_has_authorization && !(allowed(&cc) || allowed(&general)) {
        return Err("request carries Authorization");
    }
    if let Some(o) = override_ {
        return match o.ttl {
            Some(ttl) => Ok(Freshness {
                lifetime: ttl,
                initial_age: Duration::ZERO,
                swr: o.grace,
                sie: o.grace,
                must_revalidate: false,
            }),
            None => Err("the response's CacheOverride says no-store"),
        };
    }
    let date = header_date(headers, &header::DATE);
    let initial_age = initial_age(headers, date, request_time, response_time);
    let must_revalidate = cc.must_revalidate || cc.proxy_revalidate || cc.no_cache;
    let swr = cc.swr.map(Duration::from_secs);
    let sie = cc.sie.map(Duration::from_secs);
    let make = |lifetime: Duration, initial_age: Duration| Freshness {
        lifetime,
        initial_age,
        swr,
        sie,
        // s-maxage implies proxy-revalidate (RFC 9111 §5.2.2.10).
        must_revalidate: must_revalidate || cc.s_maxage.is_some(),
    };
    if let Some(ttl) = config.override_ttl {
        return Ok(make(ttl, Duration::ZERO));
    }
    if cc.no_cache {
        return Ok(make(Duration::ZERO, initial_age));
    }
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return Ok(make(Duration::from_secs(s), initial_age));
    }
    if !targeted && headers.contains_key(header::EXPIRES) {
        // An invalid Expires (e.g. "0") means already expired.
        let lifetime = match (header_date(headers, &header::EXPIRES), date) {
            (Some(expires), Some(date)) => expires.duration_since(date).unwrap_or_default(),
            (Some(expires), None) => expires.duration_since(response_time).unwrap_or_default(),
            _ => Duration::ZERO,
        };
        return Ok(make(lifetime, initial_age));
    }
    if !(cacheable_by_default(status) || cc.public) {
        return Err("status is not cacheable by default and no explicit freshness");
    }
    if let Some(ttl) = config.default_ttl {
        return Ok(make(ttl, initial_age));
    }
    if config.heuristic
        && let Some(last_modified) = header_date(headers, &header::LAST_MODIFIED)
        && let Ok(since) = date.unwrap_or(response_time).duration_since(last_modified)
    {
        let lifetime = (since / 10).min(HEURISTIC_CAP);
        return Ok(make(lifetime, initial_age));
    }
    Err("no freshness information")
}

/// RFC 9111 §4.2.3: `corrected_initial_age`.
pub(crate) fn initial_age(
    headers: &HeaderMap,
    date: Option<SystemTime>,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent_age = date
        .and_then(|d| response_time.duration_since(d).ok())
        .unwrap_or_default();
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or_default();
    apparent_age.max(age_value + response_delay)
}

/// An HTTP-date header, if present and valid.
pub(crate) fn header_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn run(status: u16, pairs: &[(&str, &str)], auth: bool) -> Result<Freshness, NotStored> {
        let now = SystemTime::now();
        let config = PolicyConfig {
            default_ttl: None,
            override_ttl: None,
            heuristic: true,
        };
        decide(
            &config,
            auth,
            false,
            &Method::GET,
            StatusCode::from_u16(status).unwrap(),
            &headers(pairs),
            None,
            now,
            now,
        )
    }

    #[test]
    fn parses_directives_with_quotes() {
        let h = headers(&[(
            "cache-control",
            "public, max-age=60, private=\"a, b\", stale-while-revalidate=5",
        )]);
        let d = Directives::parse(&h, &header::CACHE_CONTROL);
        assert!(d.public && d.private);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.swr, Some(5));
    }

    #[test]
    fn storability() {
        assert!(run(200, &[("cache-control", "max-age=60")], false).is_ok());
        assert!(run(200, &[("cache-control", "no-store, max-age=60")], false).is_err());
        assert!(run(200, &[("cache-control", "private, max-age=60")], false).is_err());
        assert!(
            run(
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                false
            )
            .is_err()
        );
        assert!(run(200, &[("cache-control", "max-age=60")], true).is_err());
        assert!(run(200, &[("cache-control", "public, max-age=60")], true).is_ok());
        assert!(run(200, &[("cache-control", "s-maxage=60")], true).is_ok());
        assert!(
            run(
                200,
                &[("cache-control", "must-revalidate, max-age=6")],
                true
            )
            .is_ok()
        );
        assert!(run(200, &[], false).is_err());
        assert!(
            run(
                500,
                &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
                false
            )
            .is_err()
        );
        assert!(run(500, &[("cache-control", "max-age=60")], false).is_ok());
        assert!(run(206, &[("cache-control", "max-age=60")], false).is_err());
        assert!(
            run(
                200,
                &[("cache-control", "max-age=60"), ("vary", "*")],
                false
            )
            .is_err()
        );
    }

    #[test]
    fn freshness_precedence() {
        let f = run(200, &[("cache-control", "max-age=60, s-maxage=120")], false).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(120));
        assert!(f.must_revalidate);
        let f = run(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "max-age=600"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(600));
        let f = run(
            200,
            &[
                ("cache-control", "no-cache"),
                ("surrogate-control", "max-age=300"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(300));
        let f = run(
            200,
            &[("cache-control", "max-age=60"), ("age", "20")],
            false,
        )
        .unwrap();
        assert_eq!(f.initial_age, Duration::from_secs(20));
        let date = httpdate::fmt_http_date(SystemTime::now());
        let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(100));
        let f = run(200, &[("date", &date), ("expires", &expires)], false).unwrap();
        assert!(f.lifetime >= Duration::from_secs(99) && f.lifetime <= Duration::from_secs(101));
        let f = run(200, &[("expires", "0")], false).unwrap();
        assert_eq!(f.lifetime, Duration::ZERO);
    }

    #[test]
    fn heuristic_only_where_allowed() {
        let lm = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(1000));
        let f = run(200, &[("last-modified", &lm)], false).unwrap();
        assert!(f.lifetime >= Duration::from_secs(99) && f.lifetime <= Duration::from_secs(101));
        assert!(run(302, &[("last-modified", &lm)], false).is_err());
        assert!(
            run(
                302,
                &[("last-modified", &lm), ("cache-control", "public")],
                false
            )
            .is_ok()
        );
    }
}
