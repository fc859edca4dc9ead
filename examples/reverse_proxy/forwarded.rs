//! What the origin is told about the client: the forwarding fields, set in front of the cache.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};

/// Fields that change which resource or method the origin serves. The cache keys on neither,
/// so a client could make a URL's stored answer another one's: dropped from every request
/// (target overrides) or from those the cache answers (method overrides).
const TARGET_OVERRIDES: [&str; 2] = ["x-original-url", "x-rewrite-url"];
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// What the origin is told about the client, set in front of the cache so the cache and the
/// origin see the same request. By default the client's `Forwarded`, `X-Forwarded-*` and
/// `X-Real-IP` are dropped and the proxy sets `X-Forwarded-For` (the TCP peer),
/// `X-Forwarded-Proto` (`http`) and `X-Forwarded-Host` (the host the client asked for). With `trust`
/// (`--trust-forwarded`) the previous hop's values are kept and the peer is appended to its
/// `X-Forwarded-For` and `Forwarded`.
pub fn rewrite<B>(mut request: Request<B>, trust: bool) -> Request<B> {
    let peer = request
        .extensions()
        .get::<SocketAddr>()
        .map(|p| p.ip().to_canonical());
    // The host the client asked for, as the cache keys it: the request target's authority
    // (absolute form, HTTP/2's `:authority`), which RFC 9112 §3.2.2 puts before `Host`.
    let host = match request.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => request.headers().get(header::HOST).cloned(),
    };
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    let headers = request.headers_mut();
    for name in TARGET_OVERRIDES {
        headers.remove(name);
    }
    if safe {
        for name in METHOD_OVERRIDES {
            headers.remove(name);
        }
    }
    let x_forwarded_for = HeaderName::from_static("x-forwarded-for");
    let mut chain = if trust {
        joined(headers, &x_forwarded_for)
    } else {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|n| {
                n.as_str().starts_with("x-forwarded-")
                    || *n == header::FORWARDED
                    || *n == "x-real-ip"
            })
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
        String::new()
    };
    if let Some(peer) = peer {
        append(&mut chain, &peer.to_string());
        let mut elements = joined(headers, &header::FORWARDED);
        if trust && !elements.is_empty() {
            append(&mut elements, &forwarded_for(peer));
            set(headers, header::FORWARDED, elements);
        }
    }
    if !chain.is_empty() {
        set(headers, x_forwarded_for, chain);
    }
    headers
        .entry("x-forwarded-proto")
        .or_insert(HeaderValue::from_static("http"));
    if let Some(host) = host {
        headers.entry("x-forwarded-host").or_insert(host);
    }
    request
}

/// A field's lines joined with `, ` (empty when absent or not visible ASCII).
fn joined(headers: &HeaderMap, name: &HeaderName) -> String {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    values.join(", ")
}

fn append(list: &mut String, element: &str) {
    if !list.is_empty() {
        list.push_str(", ");
    }
    list.push_str(element);
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

/// A `Forwarded` element naming `ip` (RFC 7239 §6: IPv6 quoted and bracketed).
fn forwarded_for(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("for={ip}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(peer: &str, headers: &[(&str, &str)], trust: bool) -> HeaderMap {
        let mut request = Request::get("http://shop.example/").body(()).unwrap();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().append(name, value.parse().unwrap());
        }
        request
            .extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        rewrite(request, trust).headers().clone()
    }

    #[test]
    fn peers_are_named_canonically_and_ipv6_is_quoted_in_forwarded() {
        let h = from("[::ffff:192.0.2.1]:4000", &[], false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.1", "an IPv4-mapped peer");
        assert_eq!(
            h["x-forwarded-host"], "shop.example",
            "from the URI's authority"
        );
        let h = from(
            "[2001:db8::1]:4000",
            &[("forwarded", "for=192.0.2.9")],
            true,
        );
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(h["forwarded"], "for=192.0.2.9, for=\"[2001:db8::1]\"");
        let h = from("127.0.0.1:1", &[("forwarded", "for=192.0.2.9")], false);
        assert!(
            !h.contains_key("forwarded"),
            "untrusted: dropped, not extended"
        );
    }
}
