//! Cache keys: method, scheme, host, path, query, an app-supplied part, key cookies and `Vary`.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};

use super::authority::{self, InvalidAuthority};
use super::scope::CacheScope;
use super::vary::{VaryNormalisers, combined};
use crate::store::{KeySpace, TagSpace};

/// An app-supplied part of the cache key (tenant, locale), attached as a request extension by
/// a layer or middleware in front of the cache.
///
/// ```
/// use tower_strata::cache::KeyPart;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(KeyPart::new("tenant=acme"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPart(String);

impl KeyPart {
    /// A key part; different parts never share entries.
    pub fn new(part: impl Into<String>) -> Self {
        KeyPart(part.into())
    }

    /// The part's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The raw request body (the framed gRPC message) of a cacheable gRPC call, attached as a
/// request extension by `GrpcKeyLayer` (feature `tonic`) or by the app, for the cache to key
/// on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcMessage(pub Bytes);

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// How request URIs are turned into keys.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyConfig {
    pub sort_query: bool,
    /// Query parameters left out of the key; a trailing `*` matches a prefix (`utm_*`).
    pub ignored_params: Vec<String>,
    /// Path prefixes whose requests may carry cookies, with the cookies that are part of the
    /// key.
    pub cookie_routes: Vec<(String, Vec<String>)>,
    /// Scheme assumed when the request URI has none (servers see origin-form URIs).
    pub default_scheme: String,
    /// The `Vary` normalisers, by header.
    pub normalisers: VaryNormalisers,
}

/// Keys longer than this are replaced by a hash; the full identity is kept in the entry and
/// compared on every read, so a collision is a miss, never a wrong response.
const MAX_PLAIN_KEY: usize = 200;

impl KeyConfig {
    /// The key cookies for this path if the route opted in, `None` if requests with cookies
    /// must bypass the cache.
    pub(crate) fn cookie_route(&self, path: &str) -> Option<&[String]> {
        self.cookie_routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, names)| names.as_slice())
    }

    /// The primary identity of a request: what a stored GET response for it is filed under.
    /// HEAD shares GET's identity.
    ///
    /// # Errors
    ///
    /// [`InvalidAuthority`] when the request's authority cannot be keyed.
    pub(crate) fn identity<B>(&self, request: &Request<B>) -> Result<String, InvalidAuthority> {
        let mut out = String::with_capacity(64);
        self.write_identity(
            &mut out,
            request.uri(),
            request.headers(),
            request.extensions().get::<KeyPart>(),
            CacheScope::of(request),
        )?;
        Ok(out)
    }

    /// The request's primary key, identity and store key in one buffer.
    pub(crate) fn primary<B>(&self, request: &Request<B>) -> Result<PrimaryKey, InvalidAuthority> {
        self.primary_for(
            request.uri(),
            request.headers(),
            request.extensions().get::<KeyPart>(),
            CacheScope::of(request),
        )
    }

    /// [`KeyConfig::primary`] for a GET of `uri` in the context of a request's headers, key
    /// part and principal (a private scope's): the one way a URL is named, whether to look it
    /// up, store it, purge it or invalidate it.
    pub(crate) fn primary_for(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        part: Option<&KeyPart>,
        principal: Option<&str>,
    ) -> Result<PrimaryKey, InvalidAuthority> {
        let mut buf = String::with_capacity(96);
        buf.push_str(PLAIN_PREFIX);
        self.write_identity(&mut buf, uri, headers, part, principal)?;
        Ok(PrimaryKey::from_buffer(buf, principal.map(str::to_owned)))
    }

    /// The request's primary store key built in `buffer` (cleared first), when it is a plain
    /// one (`"c:"` and the identity); `None` when it would be hashed or the request's
    /// authority is invalid.
    pub(crate) fn plain_primary<'b, B>(
        &self,
        buffer: &'b mut String,
        request: &Request<B>,
    ) -> Option<&'b str> {
        buffer.clear();
        buffer.push_str(PLAIN_PREFIX);
        self.write_identity(
            buffer,
            request.uri(),
            request.headers(),
            request.extensions().get::<KeyPart>(),
            CacheScope::of(request),
        )
        .ok()?;
        let identity = &buffer[PLAIN_PREFIX.len()..];
        is_plain(identity).then_some(buffer.as_str())
    }

    /// The scheme a request's key names: the URI's, else the configured one.
    fn scheme<'a>(&'a self, uri: &'a Uri) -> &'a str {
        uri.scheme_str().unwrap_or(&self.default_scheme)
    }

    /// The normalised authority a request's key names (see [`super::authority`]).
    pub(crate) fn authority(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<String, InvalidAuthority> {
        authority::request_authority(self.scheme(uri), uri, headers)
    }

    /// Appends the identity of a GET for `uri` to `out`.
    ///
    /// The fields are joined so that no value of one can spell another: the URL comes first
    /// and holds no space (the authority is checked, a URI's path and query cannot), and every
    /// field after it is a space, its name and a length-prefixed value (`k=5:acme1`), so a
    /// principal, a key part, a cookie or a `Vary` value cannot forge the fields that follow
    /// it. A private scope's principal is the first of them (`p=`); shared identities have
    /// none, so no shared request can name a private entry.
    fn write_identity(
        &self,
        out: &mut String,
        uri: &Uri,
        headers: &HeaderMap,
        part: Option<&KeyPart>,
        principal: Option<&str>,
    ) -> Result<(), InvalidAuthority> {
        let scheme = self.scheme(uri);
        out.push_str("GET ");
        push_lower(out, scheme);
        out.push_str("://");
        authority::write_request_authority(out, scheme, uri, headers)?;
        out.push_str(uri.path());
        if let Some(query) = uri.query() {
            if !self.sort_query && self.ignored_params.is_empty() {
                out.push('?');
                out.push_str(query);
            } else {
                let query = self.normalise_query(query);
                if !query.is_empty() {
                    out.push('?');
                    out.push_str(&query);
                }
            }
        }
        if let Some(principal) = principal {
            out.push_str(" p=");
            push_counted(out, principal);
        }
        if let Some(part) = part {
            out.push_str(" k=");
            push_counted(out, part.as_str());
        }
        if let Some(names) = self.cookie_route(uri.path())
            && !names.is_empty()
        {
            out.push_str(" c=");
            for name in names {
                let value = cookie_value(headers, name).unwrap_or_default();
                out.push_str(name);
                out.push('=');
                push_counted(out, &value);
                out.push(';');
            }
        }
        Ok(())
    }

    fn normalise_query(&self, query: &str) -> String {
        if !self.sort_query && self.ignored_params.is_empty() {
            return query.to_owned();
        }
        let mut params: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let name = p.split_once('=').map_or(*p, |(n, _)| n);
                !self
                    .ignored_params
                    .iter()
                    .any(|ignored| match ignored.strip_suffix('*') {
                        Some(prefix) => name.starts_with(prefix),
                        None => name == ignored,
                    })
            })
            .collect();
        if self.sort_query {
            params.sort_unstable();
        }
        params.join("&")
    }
}

impl KeyConfig {
    /// A `Cookie` header with only the request's key cookies `names` (in that order), for a
    /// request the cache makes on the clients' behalf; `None` when the request has none.
    pub(crate) fn key_cookie_header(
        &self,
        headers: &HeaderMap,
        names: &[String],
    ) -> Option<HeaderValue> {
        let mut out = String::new();
        for name in names {
            if let Some(value) = cookie_value(headers, name) {
                if !out.is_empty() {
                    out.push_str("; ");
                }
                let _ = write!(out, "{name}={value}");
            }
        }
        HeaderValue::from_str(&out).ok().filter(|_| !out.is_empty())
    }
}

/// Appends `value` behind its length in bytes (`5:acme1`): a key field that no value of
/// another field can spell.
fn push_counted(out: &mut String, value: &str) {
    let _ = write!(out, "{}:", value.len());
    out.push_str(value);
}

fn push_lower(out: &mut String, s: &str) {
    out.extend(s.chars().map(|c| c.to_ascii_lowercase()));
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
}

/// The header names that the comma-separated lists of every `list` header (`Vary`,
/// `Connection`) name, lower-cased, in order; names that are not valid header names are
/// skipped.
pub(crate) fn listed_names(
    headers: &HeaderMap,
    list: HeaderName,
) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(list)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
}

/// The header names a `Vary` lists, lower-cased, sorted, deduplicated.
pub(crate) fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = listed_names(headers, header::VARY).collect();
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

impl KeyConfig {
    /// The identity of one variant: the primary identity plus the request's values of the
    /// `Vary` headers, normalised (RFC 9111 §4.1) so that requests meaning the same share a
    /// variant: field lines are combined, whitespace around list commas and runs of
    /// whitespace are dropped, and the values of fields defined as case-insensitive are
    /// lower-cased. A header with a registered [`VaryNormaliser`](super::VaryNormaliser) keys
    /// on what the normaliser makes of its combined value instead.
    pub(crate) fn variant_identity(
        &self,
        primary: &str,
        names: &[HeaderName],
        headers: &HeaderMap,
    ) -> String {
        let mut out = String::with_capacity(primary.len() + 32);
        out.push_str(primary);
        let mut value = String::new();
        for name in names {
            value.clear();
            match self.normalisers.get(name) {
                Some(normaliser) => value.push_str(&normaliser.normalise(&combined(name, headers))),
                None => normalised_values(&mut value, name, headers),
            }
            out.push_str(" v:");
            out.push_str(name.as_str());
            out.push('=');
            push_counted(&mut out, &value);
        }
        out
    }

    /// The variant identity a request selects under a stored response's `Vary` names (the
    /// primary identity itself when there are none).
    pub(crate) fn select_variant(
        &self,
        identity: &str,
        names: &[HeaderName],
        headers: &HeaderMap,
    ) -> String {
        if names.is_empty() {
            identity.to_owned()
        } else {
            self.variant_identity(identity, names, headers)
        }
    }
}

/// The request's values of one `Vary` header, normalised, into `out`.
fn normalised_values(out: &mut String, name: &HeaderName, headers: &HeaderMap) {
    let fold_case = CASE_INSENSITIVE_VALUES.contains(&name.as_str());
    let mut first = true;
    for value in headers.get_all(name) {
        // Non-UTF-8 values are percent-encoded (and `%` in text values is too), so different
        // bytes never compare equal.
        let Ok(value) = value.to_str() else {
            if !first {
                out.push(',');
            }
            first = false;
            for b in value.as_bytes() {
                let _ = write!(out, "%{b:02x}");
            }
            continue;
        };
        for element in value.split(',') {
            let element = element.trim();
            if element.is_empty() {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            let mut space = false;
            for c in element.chars() {
                if c == ' ' || c == '\t' {
                    space = true;
                    continue;
                }
                if space {
                    out.push(' ');
                    space = false;
                }
                match c {
                    '%' => out.push_str("%25"),
                    c if fold_case => out.push(c.to_ascii_lowercase()),
                    c => out.push(c),
                }
            }
        }
    }
}

/// Request fields whose values are case-insensitive tokens, so a `Vary` on them keys on the
/// lower-cased value. Others keep their case: `Vary: Authorization` must never merge two
/// credentials that differ in case.
const CASE_INSENSITIVE_VALUES: [&str; 4] = [
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
];

/// A request's primary key: its identity (what a stored response for it is filed under) and
/// the store key, which is the identity behind [`PLAIN_PREFIX`] when short and printable (one
/// buffer for both), else a hash.
#[derive(Clone, Debug)]
pub(crate) struct PrimaryKey {
    /// `"c:"` followed by the identity.
    buf: String,
    hashed: Option<String>,
    /// The principal of a private scope's key (it is in the identity too).
    principal: Option<String>,
}

impl PrimaryKey {
    fn from_buffer(buf: String, principal: Option<String>) -> Self {
        let identity = &buf[PLAIN_PREFIX.len()..];
        let hashed = (!is_plain(identity)).then(|| hashed_key(identity));
        PrimaryKey {
            buf,
            hashed,
            principal,
        }
    }

    /// The primary key of an identity built elsewhere (gRPC calls).
    pub(crate) fn from_identity(identity: &str) -> Self {
        let mut buf = String::with_capacity(PLAIN_PREFIX.len() + identity.len());
        buf.push_str(PLAIN_PREFIX);
        buf.push_str(identity);
        Self::from_buffer(buf, None)
    }

    /// The principal of a private scope's key, `None` for a shared one.
    pub(crate) fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    /// The identity.
    pub(crate) fn identity(&self) -> &str {
        &self.buf[PLAIN_PREFIX.len()..]
    }

    /// The store key.
    pub(crate) fn store_key(&self) -> &str {
        self.hashed.as_deref().unwrap_or(&self.buf)
    }
}

/// Store keys of plain (unhashed) identities start with this.
pub(crate) const PLAIN_PREFIX: &str = KeySpace::CacheEntry.prefix();

fn hashed_key(identity: &str) -> String {
    KeySpace::HashedCacheEntry.key(&hash128(identity))
}

/// The store key for an identity: the identity itself when short and printable, else a hash.
pub(crate) fn store_key(identity: &str) -> String {
    if is_plain(identity) {
        KeySpace::CacheEntry.key(identity)
    } else {
        hashed_key(identity)
    }
}

/// Whether an identity is its own store key: short, and printable (a store key must be).
fn is_plain(identity: &str) -> bool {
    identity.len() <= MAX_PLAIN_KEY && !identity.chars().any(char::is_control)
}

/// The internal tag every stored `Vary` variant of the response under `primary` carries, so a
/// URL purge reaches all variants with one tag purge (`~url:` and a 128-bit hash of the key:
/// fixed length, and a collision only purges more). Responses without `Vary` carry none.
pub(crate) fn url_tag(primary: &str) -> String {
    let mut tag = TagSpace::CacheUrl.prefix().to_owned();
    tag.push_str(&hash128(primary));
    tag
}

/// 32 hex digits of two 64-bit FNV-1a hashes of `text`.
fn hash128(text: &str) -> String {
    let a = fnv1a(text.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let b = fnv1a(text.as_bytes(), 0x6c62_272e_07bb_0142);
    format!("{a:016x}{b:016x}")
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = seed;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KeyConfig {
        KeyConfig {
            default_scheme: "http".into(),
            ..KeyConfig::default()
        }
    }

    #[test]
    fn host_scheme_and_query() {
        let c = config();
        let a = Request::get("http://A.example/p?x=1").body(()).unwrap();
        let b = Request::get("/p?x=1")
            .header("host", "b.example")
            .body(())
            .unwrap();
        assert_eq!(c.identity(&a).unwrap(), "GET http://a.example/p?x=1");
        assert_eq!(c.identity(&b).unwrap(), "GET http://b.example/p?x=1");
        let head = Request::head("http://a.example/p?x=1").body(()).unwrap();
        assert_eq!(c.identity(&head), c.identity(&a));
    }

    #[test]
    fn query_normalisation() {
        let mut c = config();
        c.sort_query = true;
        c.ignored_params = vec!["utm_*".into(), "fbclid".into()];
        let a = Request::get("http://h/p?b=2&utm_source=x&a=1&fbclid=9")
            .body(())
            .unwrap();
        assert_eq!(c.identity(&a).unwrap(), "GET http://h/p?a=1&b=2");
    }

    #[test]
    fn key_part_and_cookies() {
        let mut c = config();
        c.cookie_routes = vec![("/i18n".into(), vec!["lang".into()])];
        let mut r = Request::get("http://h/i18n/x")
            .header("cookie", "session=s; lang=fr")
            .body(())
            .unwrap();
        r.extensions_mut().insert(KeyPart::new("t1"));
        assert_eq!(
            c.identity(&r).unwrap(),
            "GET http://h/i18n/x k=2:t1 c=lang=2:fr;"
        );
        assert!(c.cookie_route("/other").is_none());
    }

    #[test]
    fn long_keys_are_hashed() {
        let long = "x".repeat(300);
        assert!(store_key(&long).starts_with("c#"));
        assert_eq!(store_key(&long).len(), 34);
        assert_ne!(store_key(&long), store_key(&"y".repeat(300)));
        assert_eq!(store_key("GET a"), "c:GET a");
    }

    #[test]
    fn primary_keys_match_store_keys() {
        let c = config();
        for uri in ["http://h/a?x=1", &format!("http://h/{}", "y".repeat(300))] {
            let r = Request::get(uri).body(()).unwrap();
            let key = c.primary(&r).unwrap();
            assert_eq!(key.identity(), c.identity(&r).unwrap());
            assert_eq!(key.store_key(), store_key(&c.identity(&r).unwrap()));
            assert!(KeySpace::is_cache_entry(key.store_key()));
        }
    }

    #[test]
    fn variant_values_are_normalised_but_keep_case_where_it_matters() {
        let names = [header::ACCEPT_ENCODING, header::AUTHORIZATION];
        let mut a = HeaderMap::new();
        a.append(header::ACCEPT_ENCODING, "GZIP ,  br".parse().unwrap());
        a.append(header::AUTHORIZATION, "Bearer  Abc".parse().unwrap());
        let mut b = HeaderMap::new();
        b.append(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        b.append(header::ACCEPT_ENCODING, "br".parse().unwrap());
        b.append(header::AUTHORIZATION, "Bearer Abc".parse().unwrap());
        let c = config();
        assert_eq!(
            c.variant_identity("p", &names, &a),
            c.variant_identity("p", &names, &b)
        );
        b.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_ne!(
            c.variant_identity("p", &names, &a),
            c.variant_identity("p", &names, &b)
        );
    }

    #[test]
    fn hosts_are_checked_and_normalised_before_keying() {
        let c = config();
        let with_host = |host: &str| {
            Request::get("/app.js")
                .header("host", host)
                .body(())
                .unwrap()
        };
        // A host that spells a path must not name another URL's entry.
        assert!(c.identity(&with_host("127.0.0.1:8080/static")).is_err());
        let mut buffer = String::new();
        assert!(c.plain_primary(&mut buffer, &with_host("a/b")).is_none());
        let plain = c.identity(&with_host("example.com")).unwrap();
        for same in ["EXAMPLE.com:80", "example.com.", "Example.Com:"] {
            assert_eq!(c.identity(&with_host(same)).unwrap(), plain, "{same}");
        }
        assert_ne!(c.identity(&with_host("example.com:8080")).unwrap(), plain);
    }

    #[test]
    fn no_key_field_can_spell_another() {
        let mut c = config();
        c.cookie_routes = vec![("/i18n".into(), vec!["lang".into()])];
        // A key part that spells the cookie field, against the real cookie.
        let mut forged = Request::get("http://h/i18n/x").body(()).unwrap();
        forged
            .extensions_mut()
            .insert(KeyPart::new("t1 c=lang=fr;"));
        let mut real = Request::get("http://h/i18n/x")
            .header("cookie", "lang=fr")
            .body(())
            .unwrap();
        real.extensions_mut().insert(KeyPart::new("t1"));
        assert_ne!(c.identity(&forged).unwrap(), c.identity(&real).unwrap());
        // One Vary value that spells the next, against both values sent.
        let names = [header::ACCEPT, HeaderName::from_static("x-b")];
        let mut one = HeaderMap::new();
        one.insert(header::ACCEPT, "a v:x-b=b".parse().unwrap());
        one.insert("x-b", "c".parse().unwrap());
        let mut two = HeaderMap::new();
        two.insert(header::ACCEPT, "a".parse().unwrap());
        two.insert("x-b", "b v:x-b=c".parse().unwrap());
        assert_ne!(
            c.variant_identity("p", &names, &one),
            c.variant_identity("p", &names, &two)
        );
        // Bytes that are not text never equal their percent-encoding as text.
        let mut raw = HeaderMap::new();
        raw.insert(header::ACCEPT, HeaderValue::from_bytes(b"\xff").unwrap());
        let mut text = HeaderMap::new();
        text.insert(header::ACCEPT, "%ff".parse().unwrap());
        assert_ne!(
            c.variant_identity("p", &names[..1], &raw),
            c.variant_identity("p", &names[..1], &text)
        );
        // A principal that spells a key part, against the real key part.
        let mut forged = Request::get("http://h/x").body(()).unwrap();
        forged
            .extensions_mut()
            .insert(CacheScope::private("u k=2:t1"));
        let mut real = Request::get("http://h/x").body(()).unwrap();
        real.extensions_mut().insert(CacheScope::private("u"));
        real.extensions_mut().insert(KeyPart::new("t1"));
        assert_ne!(c.identity(&forged).unwrap(), c.identity(&real).unwrap());
    }

    #[test]
    fn principals_are_keyed_and_shared_requests_never_name_them() {
        let c = config();
        let shared = Request::get("http://h/me").body(()).unwrap();
        let mut alice = Request::get("http://h/me").body(()).unwrap();
        alice.extensions_mut().insert(CacheScope::private("alice"));
        let mut explicit_shared = Request::get("http://h/me").body(()).unwrap();
        explicit_shared.extensions_mut().insert(CacheScope::Shared);
        assert_eq!(c.identity(&alice).unwrap(), "GET http://h/me p=5:alice");
        assert_eq!(c.identity(&shared), c.identity(&explicit_shared));
        assert_ne!(c.identity(&shared), c.identity(&alice));
        let key = c.primary(&alice).unwrap();
        assert_eq!(key.principal(), Some("alice"));
        assert_eq!(c.primary(&shared).unwrap().principal(), None);
    }

    #[test]
    fn url_tags_are_fixed_length_and_distinct() {
        assert_eq!(url_tag("c:GET a").len(), 37);
        assert_ne!(url_tag("c:GET a"), url_tag("c:GET b"));
    }
}
