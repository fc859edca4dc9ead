//! Cache directive fields: `Cache-Control` with the RFC 9111 §5.2 grammar, where a field that
//! does not parse completely is flagged, never half-read; and the targeted fields
//! (`CDN-Cache-Control`, `Surrogate-Control`), which are Structured Fields Dictionaries
//! (RFC 9213 §2.1, RFC 9651) read with the `sfv` crate, where an invalid field is ignored as
//! a whole.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName};

/// Delta-seconds above this count as this (RFC 9111 §1.2.2: 2^31), so no header value can
/// overflow time arithmetic.
pub(crate) const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The longest duration a header can express, [`MAX_DELTA_SECONDS`].
pub(crate) const MAX_DELTA: Duration = Duration::from_secs(MAX_DELTA_SECONDS);

/// Parsed `Cache-Control`-style directives (also used for `CDN-Cache-Control` and
/// `Surrogate-Control`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    pub present: bool,
    /// A field value did not parse completely (an unbalanced quote, a stray character, bytes
    /// that are not text): a response must not be stored, a request bypasses.
    pub malformed: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    /// RFC 9111 §5.2.2.3: store only if this cache implements the status code's caching
    /// rules; it then overrides `no-store`.
    pub must_understand: bool,
    pub swr: Option<u64>,
    pub sie: Option<u64>,
}

impl Directives {
    /// Parses a targeted cache-control field (`CDN-Cache-Control`, `Surrogate-Control`): every
    /// line of `name`, together, as one Structured Fields Dictionary. `None` when the field is
    /// absent or invalid, so `Cache-Control` governs (RFC 9213 §2.1): a field that is not a
    /// Dictionary (`max-age=10, &&&`, a space around `=`, an upper-case key), or a known
    /// directive of the wrong type (`max-age="10"`, `no-store=1`). Unknown directives and
    /// parameters are ignored.
    pub(super) fn parse_targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut lines = headers.get_all(name).iter().peekable();
        lines.peek()?;
        let mut dictionary = sfv::Dictionary::new();
        for line in lines {
            sfv::Parser::new(line.as_bytes())
                .parse_dictionary_with_visitor(&mut dictionary)
                .ok()?;
        }
        let mut d = Directives {
            present: true,
            ..Directives::default()
        };
        for (key, entry) in &dictionary {
            let item = match entry {
                sfv::ListEntry::Item(item) => Some(&item.bare_item),
                // `private` and `no-cache` may name fields; the whole response is meant here.
                sfv::ListEntry::InnerList(_) => None,
            };
            let seconds = || {
                let value = i64::from(item?.as_integer()?);
                u64::try_from(value).ok().map(|s| s.min(MAX_DELTA_SECONDS))
            };
            let flag = |field_names_allowed: bool| match item {
                Some(bare) => bare.as_boolean(),
                None => field_names_allowed.then_some(true),
            };
            match key.as_str() {
                "max-age" => d.max_age = Some(seconds()?),
                "s-maxage" => d.s_maxage = Some(seconds()?),
                "stale-while-revalidate" => d.swr = Some(seconds()?),
                "stale-if-error" => d.sie = Some(seconds()?),
                "no-store" => d.no_store = flag(false)?,
                "no-cache" => d.no_cache = flag(true)?,
                "private" => d.private = flag(true)?,
                "public" => d.public = flag(false)?,
                "must-revalidate" => d.must_revalidate = flag(false)?,
                "proxy-revalidate" => d.proxy_revalidate = flag(false)?,
                "must-understand" => d.must_understand = flag(false)?,
                _ => {}
            }
        }
        Some(d)
    }

    /// Parses every value of `name` in `headers` with the RFC 9111 §5.2 grammar
    /// (`#( token [ "=" ( token / quoted-string ) ] )`). Unknown directives are ignored; a
    /// malformed delta-seconds value makes the response stale at once (`max-age`) or is
    /// ignored; a field that does not parse at all sets [`Directives::malformed`], and nothing
    /// after the fault is trusted.
    pub(super) fn parse(headers: &HeaderMap, name: &HeaderName) -> Self {
        let mut d = Directives::default();
        for value in headers.get_all(name) {
            d.present = true;
            // Bytes, not text: a quoted-string may hold obs-text (RFC 9110 §5.6.4).
            for item in directives(value.as_bytes()) {
                let Some((key, arg)) = item else {
                    d.malformed = true;
                    break;
                };
                let secs = || arg.as_deref().and_then(delta_seconds);
                match key.to_ascii_lowercase().as_str() {
                    // A malformed or repeated max-age means stale (RFC 9111 §4.2.1).
                    "max-age" => {
                        d.max_age = Some(if d.max_age.is_some() {
                            0
                        } else {
                            secs().unwrap_or(0)
                        })
                    }
                    "s-maxage" => {
                        d.s_maxage = Some(if d.s_maxage.is_some() {
                            0
                        } else {
                            secs().unwrap_or(0)
                        })
                    }
                    "no-store" => d.no_store = true,
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "must-understand" => d.must_understand = true,
                    "stale-while-revalidate" => d.swr = secs(),
                    "stale-if-error" => d.sie = secs(),
                    _ => {}
                }
            }
        }
        d
    }

    /// Whether the directives give this cache a positive freshness lifetime.
    pub(super) fn is_fresh(&self) -> bool {
        !self.no_store && !self.no_cache && self.s_maxage.or(self.max_age).is_some_and(|s| s > 0)
    }
}

/// RFC 9110 §5.6.2 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The directives of one field value: `Some((name, argument))` each, or one `None` at the
/// first fault. Empty list elements are skipped (RFC 9110 §5.6.1).
fn directives(bytes: &[u8]) -> impl Iterator<Item = Option<(&str, Option<String>)>> {
    // Tokens are ASCII `tchar`s, so the slices below are text.
    let text =
        |range: std::ops::Range<usize>| std::str::from_utf8(&bytes[range]).unwrap_or_default();
    let mut at = 0;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let skip_ows = |at: &mut usize| {
            while *at < bytes.len() && matches!(bytes[*at], b' ' | b'\t') {
                *at += 1;
            }
        };
        loop {
            skip_ows(&mut at);
            if at < bytes.len() && bytes[at] == b',' {
                at += 1;
                continue;
            }
            break;
        }
        if at >= bytes.len() {
            return None;
        }
        let mut fail = || {
            failed = true;
            Some(None)
        };
        let start = at;
        while at < bytes.len() && is_tchar(bytes[at]) {
            at += 1;
        }
        if at == start {
            return fail();
        }
        let name = text(start..at);
        let mut arg = None;
        skip_ows(&mut at);
        if at < bytes.len() && bytes[at] == b'=' {
            at += 1;
            skip_ows(&mut at);
            if at < bytes.len() && bytes[at] == b'"' {
                at += 1;
                let mut out = String::new();
                let mut closed = false;
                while at < bytes.len() {
                    match bytes[at] {
                        b'"' => {
                            closed = true;
                            at += 1;
                            break;
                        }
                        b'\\' if at + 1 < bytes.len() => {
                            out.push(char::from(bytes[at + 1]));
                            at += 2;
                        }
                        b'\\' => break,
                        // Control characters other than HTAB are not `qdtext`.
                        b if (b < 0x20 && b != b'\t') || b == 0x7f => break,
                        b => {
                            out.push(char::from(b));
                            at += 1;
                        }
                    }
                }
                if !closed {
                    return fail();
                }
                arg = Some(out);
            } else {
                let start = at;
                while at < bytes.len() && is_tchar(bytes[at]) {
                    at += 1;
                }
                if at == start {
                    return fail();
                }
                arg = Some(text(start..at).to_owned());
            }
        }
        skip_ows(&mut at);
        if at < bytes.len() && bytes[at] != b',' {
            return fail();
        }
        Some(Some((name, arg)))
    })
}

/// RFC 9111 §1.2.2 delta-seconds: one or more digits, saturating at [`MAX_DELTA_SECONDS`].
pub(crate) fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        text.bytes()
            .try_fold(0u64, |n, b| {
                let n = n * 10 + u64::from(b - b'0');
                (n < MAX_DELTA_SECONDS).then_some(n)
            })
            .unwrap_or(MAX_DELTA_SECONDS),
    )
}

/// A header map of `(name, value)` pairs, for the cache's unit tests.
#[cfg(test)]
pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn targeted_fields_are_structured_dictionaries_ignored_whole_when_invalid() {
        let cdn = HeaderName::from_static("cdn-cache-control");
        let parse = |lines: &[&str]| {
            let pairs: Vec<(&str, &str)> =
                lines.iter().map(|l| ("cdn-cache-control", *l)).collect();
            Directives::parse_targeted(&headers(&pairs), &cdn)
        };
        for invalid in [
            &["max-age=10000, &&&&&"][..],
            &["max-age=\"10000\""],
            &["max-age =100"],
            &["max-age= 100"],
            &["MaX-aGe=3600"],
            &["max-age=1.5"],
            &["max-age=-1"],
            &["no-store=1"],
            &["max-age=60", "&"],
            &["max-age=60,"],
        ] {
            assert_eq!(parse(invalid), None, "{invalid:?}");
        }
        assert_eq!(parse(&[]), None);
        let d = parse(&["max-age=60, foobar", "stale-while-revalidate=5;x=1"]).unwrap();
        assert_eq!((d.max_age, d.swr, d.no_store), (Some(60), Some(5), false));
        let d = parse(&["no-store, private=(\"set-cookie\")"]).unwrap();
        assert!(d.no_store && d.private);
        let d = parse(&["no-store=?0, max-age=99999999999"]).unwrap();
        assert!(!d.no_store);
        assert_eq!(d.max_age, Some(MAX_DELTA_SECONDS));
    }

    #[test]
    fn malformed_fields_are_flagged_and_well_formed_ones_are_not() {
        let parse =
            |v: &str| Directives::parse(&headers(&[("cache-control", v)]), &header::CACHE_CONTROL);
        for bad in [
            "max-age=60, x=\"a, private",
            "max-age=60, \"private\"",
            "max-age=60, pri vate",
            "max-age=60 private",
            "=60",
            "max-age=",
            "max-age=60;",
        ] {
            assert!(parse(bad).malformed, "{bad}");
        }
        for good in [
            "max-age=60, x=\"a, \\\"b\\\"\"",
            " , max-age = 60 ,, public ",
            "no-cache=\"set-cookie, x\"",
            "",
        ] {
            assert!(!parse(good).malformed, "{good}");
        }
        // obs-text inside a quoted-string is valid; outside one it is not.
        let mut h = HeaderMap::new();
        h.append(
            header::CACHE_CONTROL,
            http::HeaderValue::from_bytes(b"max-age=60, x=\"caf\xe9\"").unwrap(),
        );
        let d = Directives::parse(&h, &header::CACHE_CONTROL);
        assert!(!d.malformed && d.max_age == Some(60));
        h.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_bytes(b"max-age=60, caf\xe9").unwrap(),
        );
        assert!(Directives::parse(&h, &header::CACHE_CONTROL).malformed);
        assert_eq!(parse(" , max-age = 60 ,, public ").max_age, Some(60));
    }

    #[test]
    fn delta_seconds_saturate_and_reject_what_is_not_digits() {
        assert_eq!(
            delta_seconds("18446744073709551615"),
            Some(MAX_DELTA_SECONDS)
        );
        assert_eq!(
            delta_seconds("99999999999999999999999"),
            Some(MAX_DELTA_SECONDS)
        );
        assert_eq!(delta_seconds("2147483647"), Some(2_147_483_647));
        for bad in ["", "-1", "1.5", "abc", "+5"] {
            assert_eq!(delta_seconds(bad), None, "{bad}");
        }
    }
}
