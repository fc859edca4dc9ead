//! The `Cache-Group-Invalidation` response header (IETF HTTP cache groups draft) and the
//! [`Invalidation`] response extension.

use http::HeaderMap;
use http::header::HeaderName;

/// `Cache-Group-Invalidation`: an RFC 8941 List of Strings naming the cache groups (our tags) a
/// response to an unsafe method invalidates.
pub static CACHE_GROUP_INVALIDATION: HeaderName =
    HeaderName::from_static("cache-group-invalidation");

/// Tags and keys a handler asks to purge, as a response extension: honoured on responses to
/// unsafe methods exactly like a rule (after commit inside the transaction layer, only when
/// the response succeeded).
///
/// ```
/// use tower_strata::purge::Invalidation;
///
/// let mut response = http::Response::new(());
/// response
///     .extensions_mut()
///     .insert(Invalidation::tags(["product:42", "products"]).and_keys(["price:42"]));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invalidation {
    /// Tags to purge.
    pub tags: Vec<String>,
    /// Store keys to purge.
    pub keys: Vec<String>,
}

impl Invalidation {
    /// Purge these tags.
    pub fn tags(tags: impl IntoIterator<Item = impl Into<String>>) -> Invalidation {
        Invalidation {
            tags: tags.into_iter().map(Into::into).collect(),
            keys: Vec::new(),
        }
    }

    /// Purge these store keys.
    pub fn keys(keys: impl IntoIterator<Item = impl Into<String>>) -> Invalidation {
        Invalidation {
            tags: Vec::new(),
            keys: keys.into_iter().map(Into::into).collect(),
        }
    }

    /// Also purge these store keys.
    pub fn and_keys(mut self, keys: impl IntoIterator<Item = impl Into<String>>) -> Invalidation {
        self.keys.extend(keys.into_iter().map(Into::into));
        self
    }
}

/// The groups named by every `Cache-Group-Invalidation` field line, combined as RFC 8941
/// says (joined with commas). A field that fails to parse is ignored as a whole (RFC 8941
/// §4.2) with a warning; members that are not Strings are ignored (the draft), as are their
/// parameters. `None` when the header is absent.
pub(crate) fn groups(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut lines = headers.get_all(&CACHE_GROUP_INVALIDATION).iter().peekable();
    lines.peek()?;
    let mut combined = Vec::new();
    for (i, line) in lines.enumerate() {
        if i > 0 {
            combined.push(b',');
        }
        combined.extend_from_slice(line.as_bytes());
    }
    match parse_string_list(&combined) {
        Ok(groups) => Some(groups),
        Err(reason) => {
            tracing::warn!(reason, "malformed Cache-Group-Invalidation header ignored");
            Some(Vec::new())
        }
    }
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// RFC 8941 §4.2.5.
    fn string(&mut self) -> Result<String, &'static str> {
        if !self.eat(b'"') {
            return Err("expected a string");
        }
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err("unterminated string"),
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c as char);
                            self.pos += 1;
                        }
                        _ => return Err("bad escape in string"),
                    }
                }
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(c @ 0x20..=0x7e) => {
                    out.push(c as char);
                    self.pos += 1;
                }
                Some(_) => return Err("invalid character in string"),
            }
        }
    }

    /// Any bare item (RFC 8941 §4.2.3.1); `Some` only for a String.
    fn bare_item(&mut self) -> Result<Option<String>, &'static str> {
        match self.peek() {
            Some(b'"') => self.string().map(Some),
            Some(b'-' | b'0'..=b'9') => {
                self.pos += 1;
                while matches!(self.peek(), Some(b'0'..=b'9' | b'.')) {
                    self.pos += 1;
                }
                Ok(None)
            }
            Some(b'?') => {
                self.pos += 1;
                if self.eat(b'0') || self.eat(b'1') {
                    Ok(None)
                } else {
                    Err("bad boolean")
                }
            }
            Some(b':') => {
                self.pos += 1;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=')
                {
                    self.pos += 1;
                }
                if self.eat(b':') {
                    Ok(None)
                } else {
                    Err("bad byte sequence")
                }
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => {
                self.pos += 1;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c))
                {
                    self.pos += 1;
                }
                Ok(None)
            }
            _ => Err("expected an item"),
        }
    }

    /// RFC 8941 §4.2.3.2, values discarded.
    fn parameters(&mut self) -> Result<(), &'static str> {
        while self.eat(b';') {
            self.skip_sp();
            match self.peek() {
                Some(c) if c.is_ascii_lowercase() || c == b'*' => self.pos += 1,
                _ => return Err("bad parameter key"),
            }
            while matches!(self.peek(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c))
            {
                self.pos += 1;
            }
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Ok(())
    }

    /// One list member (item or inner list); `Some` only for a String item.
    fn member(&mut self) -> Result<Option<String>, &'static str> {
        if self.eat(b'(') {
            loop {
                self.skip_sp();
                if self.eat(b')') {
                    break;
                }
                self.bare_item()?;
                self.parameters()?;
                if !matches!(self.peek(), Some(b' ' | b')')) {
                    return Err("bad inner list");
                }
            }
            self.parameters()?;
            return Ok(None);
        }
        let item = self.bare_item()?;
        self.parameters()?;
        Ok(item)
    }
}

/// An RFC 8941 List, keeping its String members (RFC 8941 §4.2.1).
pub(crate) fn parse_string_list(input: &[u8]) -> Result<Vec<String>, &'static str> {
    let mut parser = Parser { input, pos: 0 };
    let mut out = Vec::new();
    parser.skip_sp();
    if parser.peek().is_none() {
        return Ok(out);
    }
    loop {
        if let Some(group) = parser.member()?
            && !group.is_empty()
            && !out.contains(&group)
        {
            out.push(group);
        }
        parser.skip_ows();
        if parser.peek().is_none() {
            return Ok(out);
        }
        if !parser.eat(b',') {
            return Err("expected ',' between members");
        }
        parser.skip_ows();
        if parser.peek().is_none() {
            return Err("trailing ','");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_lists_parse() {
        let ok = |s: &str| parse_string_list(s.as_bytes()).unwrap();
        assert_eq!(ok(r#""a", "b""#), ["a", "b"]);
        assert_eq!(
            ok(r#""product:42";p=1,"products""#),
            ["product:42", "products"]
        );
        assert_eq!(ok(r#""a\"b\\c""#), [r#"a"b\c"#]);
        assert_eq!(ok(r#"token, "x", 12, ?1, :aGk=:, ("y" "z");q=1"#), ["x"]);
        assert_eq!(ok(r#""a" ,	"a""#), ["a"]);
        assert_eq!(ok(""), Vec::<String>::new());
    }

    #[test]
    fn malformed_lists_fail() {
        for bad in [
            r#""a"#,
            r#""a","#,
            r#""a" "b""#,
            r#""a\n""#,
            r#""a";"#,
            "(\"a\"",
            ",",
            "\u{7f}",
        ] {
            assert!(parse_string_list(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn field_lines_combine() {
        let mut headers = HeaderMap::new();
        assert_eq!(groups(&headers), None);
        headers.append(&CACHE_GROUP_INVALIDATION, "\"a\"".parse().unwrap());
        headers.append(&CACHE_GROUP_INVALIDATION, "\"b\"".parse().unwrap());
        assert_eq!(groups(&headers).unwrap(), ["a", "b"]);
        headers.append(&CACHE_GROUP_INVALIDATION, "\"c".parse().unwrap());
        assert_eq!(groups(&headers).unwrap(), Vec::<String>::new());
    }
}
