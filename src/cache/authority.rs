//! The authority a request names (`host[:port]`), checked and normalised once, so that what
//! a client spells cannot choose another URL's key: keying, purging and invalidating all read
//! a request's authority through [`request_authority`].
//!
//! A request is keyed on the URI's authority (absolute-form, HTTP/2 `:authority`) or else on
//! its `Host`. Either must be a valid RFC 3986 `host[:port]`: an IP literal, an IPv4 address
//! or a registered name, and an optional decimal port. Anything else (a `/`, `?`, `#`, `@`,
//! whitespace, an empty host, two `Host` lines) is [`InvalidAuthority`]; the cache answers
//! such a request `400` before anything sees it (RFC 9112 §3.2 asks the same of a server).
//! Valid authorities are normalised (RFC 3986 §6.2.2, §6.2.3): lower case, no trailing dot,
//! no port when it is the scheme's default.

use http::Uri;
use http::header::{self, HeaderMap};

/// Why a request's authority cannot be keyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InvalidAuthority;

/// Appends the normalised authority of a request (its URI's, else its `Host`) to `out`;
/// nothing when it names none (an HTTP/1.0 request without `Host`).
///
/// # Errors
///
/// [`InvalidAuthority`] when the authority is not a valid `host[:port]` or `Host` is repeated;
/// `out` may then hold part of it.
pub(crate) fn write_request_authority(
    out: &mut String,
    scheme: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), InvalidAuthority> {
    match raw_authority(uri, headers)? {
        Some(raw) => write_normalised(out, scheme, raw),
        None => Ok(()),
    }
}

/// The normalised authority of a request, as [`write_request_authority`] writes it.
pub(crate) fn request_authority(
    scheme: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<String, InvalidAuthority> {
    let mut out = String::new();
    write_request_authority(&mut out, scheme, uri, headers)?;
    Ok(out)
}

/// The authority as the request spells it: the URI's, else the one `Host` line.
fn raw_authority<'a>(
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, InvalidAuthority> {
    if let Some(authority) = uri.authority() {
        return Ok(Some(authority.as_str()));
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        return Ok(None);
    };
    if hosts.next().is_some() {
        return Err(InvalidAuthority);
    }
    host.to_str().map(Some).map_err(|_| InvalidAuthority)
}

/// The port a scheme implies, dropped from keys (`http://a:80/` is `http://a/`).
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

fn write_normalised(out: &mut String, scheme: &str, raw: &str) -> Result<(), InvalidAuthority> {
    let (host, port) = split_port(raw)?;
    if host.starts_with('[') {
        if !is_ip_literal(host) {
            return Err(InvalidAuthority);
        }
        push_lower(out, host);
    } else {
        // One trailing dot names the same (fully qualified) host.
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() || !is_reg_name(host) {
            return Err(InvalidAuthority);
        }
        push_lower(out, host);
    }
    if let Some(port) = port
        && Some(port) != default_port(scheme)
    {
        // Decimal without leading zeros: `:08080` and `:8080` are one port. Written by hand:
        // every request keyed on a host with a port passes here, and `write!` costs more than
        // the rest of the check.
        let mut digits = [0u8; 5];
        let mut at = digits.len();
        let mut rest = port;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        out.push(':');
        out.extend(digits[at..].iter().map(|&d| char::from(d)));
    }
    Ok(())
}

/// Splits `host[:port]`; an empty port is no port (RFC 3986 §6.2.3).
fn split_port(raw: &str) -> Result<(&str, Option<u16>), InvalidAuthority> {
    let split_at = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => (end + 1 < raw.len()).then_some(end + 1),
            None => return Err(InvalidAuthority),
        }
    } else {
        raw.rfind(':')
    };
    let Some(at) = split_at else {
        return Ok((raw, None));
    };
    let (host, port) = (&raw[..at], &raw[at..]);
    let Some(digits) = port.strip_prefix(':') else {
        return Err(InvalidAuthority);
    };
    if digits.is_empty() {
        return Ok((host, None));
    }
    if digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidAuthority);
    }
    digits
        .parse::<u16>()
        .map(|p| (host, Some(p)))
        .map_err(|_| InvalidAuthority)
}

/// `[` IPv6 or IPvFuture `]`: hex digits, colons and dots inside (a zone or IPvFuture's wider
/// set is refused: no origin needs one in a key).
fn is_ip_literal(host: &str) -> bool {
    let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) else {
        return false;
    };
    inner.contains(':')
        && inner
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
}

/// RFC 3986 `reg-name` (which covers `IPv4address`): unreserved, sub-delims and
/// percent-encoded octets.
fn is_reg_name(host: &str) -> bool {
    let bytes = host.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

fn push_lower(out: &mut String, s: &str) {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        out.extend(s.chars().map(|c| c.to_ascii_lowercase()));
    } else {
        out.push_str(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> Result<String, InvalidAuthority> {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, value.parse().unwrap());
        request_authority("http", &Uri::from_static("/p"), &headers)
    }

    #[test]
    fn valid_authorities_are_normalised() {
        for (raw, normal) in [
            ("example.com", "example.com"),
            ("EXAMPLE.com:80", "example.com"),
            ("Example.COM.", "example.com"),
            ("example.com.:80", "example.com"),
            ("example.com:", "example.com"),
            ("example.com:8080", "example.com:8080"),
            ("example.com:08080", "example.com:8080"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("[::1]", "[::1]"),
            ("[::FFFF:127.0.0.1]:80", "[::ffff:127.0.0.1]"),
            ("[::1]:443", "[::1]:443"),
            ("a_b-c~d%2E", "a_b-c~d%2e"),
        ] {
            assert_eq!(host(raw).as_deref(), Ok(normal), "{raw}");
        }
        let https = |uri| request_authority("https", &Uri::from_static(uri), &HeaderMap::new());
        assert_eq!(
            https("https://Example.com:443/").as_deref(),
            Ok("example.com")
        );
        assert_eq!(
            https("https://example.com:80/").as_deref(),
            Ok("example.com:80")
        );
    }

    #[test]
    fn invalid_authorities_are_refused() {
        for raw in [
            "127.0.0.1:8080/static",
            "a/b",
            "a?b",
            "a#b",
            "user@a",
            "a b",
            "a\tb",
            "",
            ":80",
            ".",
            "a:http",
            "a:65536",
            "a:123456",
            "a:-1",
            "[::1",
            "[::1]x",
            "[zz::1]",
            "[]",
            "a%zz",
            "a%2",
            "\"a\"",
            "a\\b",
        ] {
            assert_eq!(host(raw), Err(InvalidAuthority), "{raw:?}");
        }
    }

    #[test]
    fn the_uri_authority_wins_and_two_hosts_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "b.example".parse().unwrap());
        let uri = Uri::from_static("http://A.example:80/p");
        assert_eq!(
            request_authority("http", &uri, &headers).as_deref(),
            Ok("a.example")
        );
        headers.append(header::HOST, "c.example".parse().unwrap());
        let origin_form = Uri::from_static("/p");
        assert_eq!(
            request_authority("http", &origin_form, &headers),
            Err(InvalidAuthority)
        );
        assert_eq!(
            request_authority("http", &origin_form, &HeaderMap::new()).as_deref(),
            Ok("")
        );
        let userinfo = Uri::from_static("http://u@a.example/p");
        assert_eq!(
            request_authority("http", &userinfo, &HeaderMap::new()),
            Err(InvalidAuthority)
        );
    }
}
