//! RFC 9111 shared-cache rules: `Cache-Control` parsing, storability and freshness.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName};

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

pub(crate) use super::directives::{Directives, MAX_DELTA, delta_seconds};

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

/// Status codes whose caching rules this cache implements (for `must-understand`): the
/// heuristically cacheable ones, and the redirects it stores with explicit freshness.
fn understood(status: StatusCode) -> bool {
    cacheable_by_default(status) || matches!(status.as_u16(), 302 | 303 | 307)
}

/// The directives that govern this cache: `CDN-Cache-Control` (RFC 9213), then
/// `Surrogate-Control`, then `Cache-Control`. Returns whether a targeted field was used (then
/// `Expires` is ignored too).
pub(crate) fn governing_directives(headers: &HeaderMap) -> (Directives, bool) {
    for name in [&CDN_CACHE_CONTROL, &SURROGATE_CONTROL] {
        if let Some(d) = Directives::parse_targeted(headers, name) {
            return (d, true);
        }
    }
    (Directives::parse(headers, &header::CACHE_CONTROL), false)
}

/// `CDN-Cache-Control` (RFC 9213).
pub(crate) static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
/// `Surrogate-Control` (Edge Architecture Specification).
pub(crate) static SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// One upstream exchange, as the storage decision sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Exchange<'a> {
    /// The request carried `Authorization` (RFC 9111 §3.5).
    pub request_has_authorization: bool,
    /// The request is in a private scope: the cache stores it as a private cache would
    /// (`private` and `Authorization` allowed, `s-maxage` ignored).
    pub private_scope: bool,
    /// The request said `no-store`.
    pub request_no_store: bool,
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
    /// The handler's per-response override, if any.
    pub override_: Option<&'a CacheOverride>,
    /// When the request went upstream and when its response came back.
    pub request_time: SystemTime,
    pub response_time: SystemTime,
}

/// Decides whether a response to a GET may be stored by a shared cache and for how long.
pub(crate) fn decide(config: &PolicyConfig, x: &Exchange<'_>) -> Result<Freshness, NotStored> {
    let headers = x.headers;
    if x.request_no_store {
        return Err("request says no-store");
    }
    if x.status.is_informational() || x.status == StatusCode::PARTIAL_CONTENT {
        return Err("status is not a complete response");
    }
    if x.status == StatusCode::NOT_MODIFIED {
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
    let general = if targeted {
        Directives::parse(headers, &header::CACHE_CONTROL)
    } else {
        cc.clone()
    };
    // A field that does not parse may hide `private` or `no-store` after its fault.
    if cc.malformed || general.malformed {
        return Err("malformed cache directives");
    }
    // RFC 9111 §5.2.2.3: `must-understand` limits storing to caches that implement the status
    // code's caching rules, and for those it overrides `no-store`.
    let must_understand = cc.must_understand || general.must_understand;
    if must_understand && !understood(x.status) {
        return Err("must-understand with a status this cache does not implement");
    }
    if cc.no_store && !must_understand {
        return Err("no-store");
    }
    // RFC 9213 §2.1: a targeted field that gives this cache freshness governs it, so the
    // general `no-store` (meant for browsers) does not apply here. `private` does: a targeted
    // field can give this tier a TTL, never make one user's response shared.
    if general.no_store && !must_understand && !(targeted && cc.is_fresh()) {
        return Err("no-store");
    }
    // RFC 9111 §5.2.2.7: `private` forbids a shared cache, not a private one.
    if (cc.private || general.private) && !x.private_scope {
        return Err("private");
    }
    let allowed = |d: &Directives| d.public || d.s_maxage.is_some() || d.must_revalidate;
    if x.request_has_authorization && !x.private_scope && !(allowed(&cc) || allowed(&general)) {
        return Err("request carries Authorization");
    }
    if let Some(o) = x.override_ {
        return match o.ttl {
            Some(ttl) => Ok(Freshness {
                lifetime: ttl.min(MAX_DELTA),
                initial_age: Duration::ZERO,
                swr: o.grace.map(|g| g.min(MAX_DELTA)),
                sie: o.grace.map(|g| g.min(MAX_DELTA)),
                must_revalidate: false,
            }),
            None => Err("the response's CacheOverride says no-store"),
        };
    }
    let date = header_date(headers, &header::DATE);
    let initial_age = initial_age(headers, date, x.request_time, x.response_time);
    let must_revalidate = cc.must_revalidate || cc.proxy_revalidate || cc.no_cache;
    let swr = cc.swr.map(Duration::from_secs);
    let sie = cc.sie.map(Duration::from_secs);
    // RFC 9111 §5.2.2.10: `s-maxage` is for shared caches; a private one ignores it.
    let s_maxage = cc.s_maxage.filter(|_| !x.private_scope);
    let make = |lifetime: Duration, initial_age: Duration| Freshness {
        lifetime: lifetime.min(MAX_DELTA),
        initial_age,
        swr,
        sie,
        // s-maxage implies proxy-revalidate (RFC 9111 §5.2.2.10).
        must_revalidate: must_revalidate || s_maxage.is_some(),
    };
    if let Some(ttl) = config.override_ttl {
        return Ok(make(ttl, Duration::ZERO));
    }
    if cc.no_cache {
        return Ok(make(Duration::ZERO, initial_age));
    }
    if let Some(s) = s_maxage.or(cc.max_age) {
        return Ok(make(Duration::from_secs(s), initial_age));
    }
    if !targeted && headers.contains_key(header::EXPIRES) {
        // An invalid Expires (e.g. "0") means already expired.
        let lifetime = match (header_date(headers, &header::EXPIRES), date) {
            (Some(expires), Some(date)) => expires.duration_since(date).unwrap_or_default(),
            (Some(expires), None) => expires.duration_since(x.response_time).unwrap_or_default(),
            _ => Duration::ZERO,
        };
        return Ok(make(lifetime, initial_age));
    }
    if !(cacheable_by_default(x.status) || cc.public) {
        return Err("status is not cacheable by default and no explicit freshness");
    }
    if let Some(ttl) = config.default_ttl {
        return Ok(make(ttl, initial_age));
    }
    if config.heuristic
        && let Some(last_modified) = header_date(headers, &header::LAST_MODIFIED)
        && let Ok(since) = date
            .unwrap_or(x.response_time)
            .duration_since(last_modified)
    {
        let lifetime = (since / 10).min(HEURISTIC_CAP);
        return Ok(make(lifetime, initial_age));
    }
    Err("no freshness information")
}

/// RFC 9111 §4.2.3: `corrected_initial_age`, with the `Age` value as the http-tests
/// cache-tests suite reads it: the first member of the field (first line, first
/// comma-separated element, without parameters); a member that is not a valid delta-seconds
/// is ignored (RFC 9111 §5.1: a recipient may ignore an invalid `Age`), so it counts as 0.
pub(crate) fn initial_age(
    headers: &HeaderMap,
    date: Option<SystemTime>,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let age_value = age_value(headers).map_or(Duration::ZERO, Duration::from_secs);
    let apparent_age = date
        .and_then(|d| response_time.duration_since(d).ok())
        .unwrap_or_default();
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or_default();
    apparent_age
        .max(age_value.saturating_add(response_delay))
        .min(MAX_DELTA)
}

/// The `Age` a response carries, in seconds: its first member, when valid.
fn age_value(headers: &HeaderMap) -> Option<u64> {
    let first_line = headers.get(header::AGE)?.to_str().ok()?;
    let first_member = first_line.split(',').next()?;
    let without_parameters = first_member.split(';').next()?;
    delta_seconds(without_parameters.trim())
}

/// An HTTP-date header, if present and valid in any of the three formats of RFC 9110 §5.6.7
/// (IMF-fixdate, RFC 850, asctime), whatever the case of its names.
pub(crate) fn header_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
}

/// [`httpdate::parse_http_date`] after putting day and month names and `GMT` in the case it
/// expects: recipients must accept them in any case.
pub(crate) fn parse_http_date(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if let Ok(t) = httpdate::parse_http_date(text) {
        return Some(t);
    }
    let mut fixed = String::with_capacity(text.len());
    let mut word_start = true;
    for c in text.chars() {
        if c.is_ascii_alphabetic() {
            fixed.push(if word_start {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            word_start = false;
        } else {
            fixed.push(c);
            word_start = true;
        }
    }
    let fixed = fixed.replace("Gmt", "GMT");
    if let Ok(t) = httpdate::parse_http_date(&fixed) {
        return Some(t);
    }
    // The day name repeats what the date says; a wrong one (`Thu Aug  8 02:01:18 2050`, a
    // Monday) is no reason to drop the date (RFC 9110 §5.6.7: be robust in parsing).
    let (day, rest) = fixed.split_at(fixed.find([',', ' '])?);
    if !WEEKDAYS
        .iter()
        .any(|(short, full)| day == *short || day == *full)
    {
        return None;
    }
    let long = day.len() > 3;
    WEEKDAYS.iter().find_map(|(short, full)| {
        let name = if long { full } else { short };
        httpdate::parse_http_date(&format!("{name}{rest}")).ok()
    })
}

const WEEKDAYS: [(&str, &str); 7] = [
    ("Mon", "Monday"),
    ("Tue", "Tuesday"),
    ("Wed", "Wednesday"),
    ("Thu", "Thursday"),
    ("Fri", "Friday"),
    ("Sat", "Saturday"),
    ("Sun", "Sunday"),
];

#[cfg(test)]
mod tests {
    use super::super::directives::headers;
    use super::*;

    const CC: &str = "cache-control";

    fn run(status: u16, pairs: &[(&str, &str)], auth: bool) -> Result<Freshness, NotStored> {
        run_in(status, pairs, auth, false)
    }

    fn run_in(
        status: u16,
        pairs: &[(&str, &str)],
        auth: bool,
        private_scope: bool,
    ) -> Result<Freshness, NotStored> {
        let now = SystemTime::now();
        let config = PolicyConfig {
            default_ttl: None,
            override_ttl: None,
            heuristic: true,
        };
        let headers = headers(pairs);
        decide(
            &config,
            &Exchange {
                request_has_authorization: auth,
                private_scope,
                request_no_store: false,
                status: StatusCode::from_u16(status).unwrap(),
                headers: &headers,
                override_: None,
                request_time: now,
                response_time: now,
            },
        )
    }

    #[test]
    fn the_private_scope_stores_as_a_private_cache() {
        let private = [(CC, "private, max-age=60")];
        assert_eq!(run(200, &private, false), Err("private"));
        assert!(run_in(200, &private, false, true).is_ok());
        let plain = [(CC, "max-age=60")];
        assert_eq!(run(200, &plain, true), Err("request carries Authorization"));
        assert!(run_in(200, &plain, true, true).is_ok());
        // no-store and Set-Cookie never are.
        assert_eq!(
            run_in(200, &[(CC, "private, no-store, max-age=60")], true, true),
            Err("no-store")
        );
        assert_eq!(
            run_in(
                200,
                &[(CC, "max-age=60"), ("set-cookie", "a=b")],
                true,
                true
            ),
            Err("response sets a cookie")
        );
        // s-maxage is for shared caches.
        let f = run_in(200, &[(CC, "max-age=60, s-maxage=5")], true, true).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(60));
        assert!(!f.must_revalidate);
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
    fn dates_in_every_format_and_case() {
        let want = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        for text in [
            "sun, 06 nov 1994 08:49:37 gmt",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "SUNDAY, 06-NOV-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "sun nov  6 08:49:37 1994",
            // A wrong day name does not lose the date.
            "Thu Nov  6 08:49:37 1994",
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Friday, 06-Nov-94 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(text), Some(want), "{text}");
        }
        assert_eq!(parse_http_date("0"), None);
        assert_eq!(parse_http_date("Xyz, 06 Nov 1994 08:49:37 GMT"), None);
    }

    #[test]
    fn storability() {
        // (status, response headers, request carried Authorization, storable)
        let cases = [
            (200, &[(CC, "max-age=60")][..], false, true),
            // must-understand: a status this cache implements overrides no-store; another
            // is not stored.
            (
                200,
                &[(CC, "max-age=60, no-store, must-understand")],
                false,
                true,
            ),
            (
                599,
                &[(CC, "max-age=60, no-store, must-understand")],
                false,
                false,
            ),
            (200, &[(CC, "no-store, max-age=60")], false, false),
            (200, &[(CC, "private, max-age=60")], false, false),
            (
                200,
                &[(CC, "max-age=60"), ("set-cookie", "a=b")],
                false,
                false,
            ),
            (200, &[(CC, "max-age=60")], true, false),
            (200, &[(CC, "public, max-age=60")], true, true),
            (200, &[(CC, "s-maxage=60")], true, true),
            (200, &[(CC, "must-revalidate, max-age=6")], true, true),
            (200, &[], false, false),
            (
                500,
                &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
                false,
                false,
            ),
            (500, &[(CC, "max-age=60")], false, true),
            (206, &[(CC, "max-age=60")], false, false),
            (200, &[(CC, "max-age=60"), ("vary", "*")], false, false),
        ];
        for (status, headers, auth, storable) in cases {
            assert_eq!(
                run(status, headers, auth).is_ok(),
                storable,
                "{status} {headers:?} auth={auth}"
            );
        }
    }

    #[test]
    fn freshness_precedence() {
        // (response headers, the lifetime they give)
        for (headers, lifetime) in [
            (&[(CC, "max-age=60, s-maxage=120")][..], 120),
            (
                &[(CC, "max-age=60"), ("cdn-cache-control", "max-age=600")],
                600,
            ),
            (
                &[(CC, "no-cache"), ("surrogate-control", "max-age=300")],
                300,
            ),
            (&[("expires", "0")], 0),
        ] {
            let f = run(200, headers, false).unwrap();
            assert_eq!(f.lifetime, Duration::from_secs(lifetime), "{headers:?}");
        }
        let f = run(200, &[(CC, "max-age=60, s-maxage=120")], false).unwrap();
        assert!(f.must_revalidate, "s-maxage implies must-revalidate");
        let f = run(200, &[(CC, "max-age=60"), ("age", "20")], false).unwrap();
        assert_eq!(f.initial_age, Duration::from_secs(20));
        let date = httpdate::fmt_http_date(SystemTime::now());
        let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(100));
        let f = run(200, &[("date", &date), ("expires", &expires)], false).unwrap();
        assert!(f.lifetime >= Duration::from_secs(99) && f.lifetime <= Duration::from_secs(101));
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
