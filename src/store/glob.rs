//! Glob patterns with Redis `MATCH` semantics: `*`, `?`, `[abc]`, `[a-z]`, `[^a]` and `\` escapes.
//!
//! Written here rather than taken from `globset` because the memory store must match exactly
//! what Redis' `SCAN MATCH` matches (no `**`, no `{a,b}`, `*` crosses `/` and `:`), so one pattern
//! purges the same keys on every store. Patterns are validated when parsed, so a malformed one is
//! an error before any key is touched.

use super::StoreError;

/// Longest pattern accepted, in bytes.
pub(super) const MAX_PATTERN_LEN: usize = 1024;

/// A validated glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyChar,
    AnySeq,
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

impl Pattern {
    /// Parses and validates a pattern.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidPattern`] for an empty or over-long pattern, an unclosed `[`, an empty
    /// class `[]`, a reversed range `[z-a]` or a trailing `\`.
    pub fn new(pattern: &str) -> Result<Self, StoreError> {
        let invalid = invalid_pattern(pattern);
        check_len(
            pattern,
            MAX_PATTERN_LEN,
            "pattern is empty",
            "pattern is longer than 1024 bytes",
        )?;
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    // Consecutive stars match the same strings as one; folding them keeps
                    // matching linear.
                    if tokens.last() != Some(&Token::AnySeq) {
                        tokens.push(Token::AnySeq);
                    }
                }
                '?' => tokens.push(Token::AnyChar),
                '\\' => match chars.next() {
                    Some(escaped) => tokens.push(Token::Literal(escaped)),
                    None => return Err(invalid("pattern ends with an unfinished `\\` escape")),
                },
                '[' => {
                    let negated = chars.next_if_eq(&'^').is_some();
                    let mut items = Vec::new();
                    let mut closed = false;
                    while let Some(c) = chars.next() {
                        let low = match c {
                            ']' => {
                                closed = true;
                                break;
                            }
                            '\\' => chars
                                .next()
                                .ok_or_else(|| invalid("unfinished `\\` escape in a class"))?,
                            c => c,
                        };
                        if chars.peek() == Some(&'-') {
                            let mut ahead = chars.clone();
                            ahead.next();
                            match ahead.peek() {
                                Some(&']') | None => items.push((low, low)),
                                Some(_) => {
                                    chars.next();
                                    let mut high = chars.next().expect("peeked above");
                                    if high == '\\' {
                                        high = chars.next().ok_or_else(|| {
                                            invalid("unfinished `\\` escape in a class")
                                        })?;
                                    }
                                    if high < low {
                                        return Err(invalid("class range is reversed"));
                                    }
                                    items.push((low, high));
                                }
                            }
                        } else {
                            items.push((low, low));
                        }
                    }
                    if !closed {
                        return Err(invalid("unclosed `[` class"));
                    }
                    if items.is_empty() {
                        return Err(invalid("empty `[]` class"));
                    }
                    tokens.push(Token::Class { negated, items });
                }
                c => tokens.push(Token::Literal(c)),
            }
        }
        Ok(Pattern {
            source: pattern.to_owned(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the pattern has no wildcard: it names exactly one key.
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        // Iterative matcher with one backtrack point for the last `*`: linear in practice and
        // O(n*m) at worst, never exponential.
        let (mut t, mut p) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::AnySeq) => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                Some(token) if token.matches_one(text[t]) => {
                    t += 1;
                    p += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::AnySeq)
    }

    /// The pattern with every special character escaped, so Redis matches `literal` exactly.
    pub fn escape(literal: &str) -> String {
        let mut out = String::with_capacity(literal.len());
        for c in literal.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
}

impl Token {
    fn matches_one(&self, c: char) -> bool {
        match self {
            Token::Literal(l) => *l == c,
            Token::AnyChar => true,
            Token::AnySeq => true,
            Token::Class { negated, items } => {
                items.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

/// The error refusing `pattern` (cut to a loggable length) for a reason.
fn invalid_pattern(pattern: &str) -> impl Fn(&'static str) -> StoreError + '_ {
    move |reason| StoreError::InvalidPattern {
        pattern: super::error::cut(pattern),
        reason,
    }
}

/// Refuses an empty pattern, or one over `max` bytes, before any parsing.
fn check_len(
    pattern: &str,
    max: usize,
    empty: &'static str,
    too_long: &'static str,
) -> Result<(), StoreError> {
    match pattern.len() {
        0 => Err(invalid_pattern(pattern)(empty)),
        len if len > max => Err(invalid_pattern(pattern)(too_long)),
        _ => Ok(()),
    }
}

/// Longest regular expression accepted, in bytes, and the most memory its compiled form may use.
pub const MAX_REGEX_LEN: usize = 1024;
#[cfg(feature = "regex")]
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A compiled regular expression for a [`KeyPattern::Regex`] (feature `regex`, on the `regex`
/// crate). Without the feature there is no value of this type: [`KeyPattern::regex`] refuses
/// every expression, and no store ever meets one.
#[derive(Debug, Clone)]
pub struct RegexPattern(
    #[cfg(feature = "regex")] regex::Regex,
    #[cfg(not(feature = "regex"))] std::convert::Infallible,
);

impl RegexPattern {
    /// The expression as written.
    pub fn as_str(&self) -> &str {
        #[cfg(feature = "regex")]
        return self.0.as_str();
        #[cfg(not(feature = "regex"))]
        match self.0 {}
    }

    /// Whether the expression matches somewhere in `key`.
    pub fn is_match(&self, key: &str) -> bool {
        #[cfg(feature = "regex")]
        return self.0.is_match(key);
        #[cfg(not(feature = "regex"))]
        {
            let _ = key;
            match self.0 {}
        }
    }
}

/// What a pattern purge matches keys with: a Redis-style glob, or a regular expression.
///
/// A glob is matched by Redis itself (`SCAN MATCH`); a regular expression is matched on the
/// client side against the keys `SCAN` returns, so it costs a walk of the namespace either way
/// but never blocks Redis. Regular expressions use the `regex` crate: linear time, no
/// backtracking, and a size limit on the compiled form, so a hostile pattern cannot stall a
/// purge.
#[derive(Debug, Clone)]
pub enum KeyPattern {
    /// A glob with Redis `MATCH` semantics.
    Glob(Pattern),
    /// A regular expression, matched against whole keys only if anchored (`^...$`).
    Regex(RegexPattern),
}

impl KeyPattern {
    /// A glob pattern; see [`Pattern::new`].
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidPattern`] when the glob is malformed.
    pub fn glob(pattern: &str) -> Result<Self, StoreError> {
        Pattern::new(pattern).map(KeyPattern::Glob)
    }

    /// A regular expression.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidPattern`] when it is empty, longer than [`MAX_REGEX_LEN`], does not
    /// parse, or compiles to more than 1 MiB; always without the `regex` feature.
    pub fn regex(pattern: &str) -> Result<Self, StoreError> {
        let invalid = invalid_pattern(pattern);
        check_len(
            pattern,
            MAX_REGEX_LEN,
            "empty regular expression",
            "regular expression longer than 1024 bytes",
        )?;
        #[cfg(feature = "regex")]
        return regex::RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(|regex| KeyPattern::Regex(RegexPattern(regex)))
            .map_err(|error| match error {
                regex::Error::CompiledTooBig(_) => invalid("regular expression too large"),
                _ => invalid("not a valid regular expression"),
            });
        #[cfg(not(feature = "regex"))]
        Err(invalid(
            "purging by regular expression needs tower-strata's `regex` feature",
        ))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        match self {
            KeyPattern::Glob(glob) => glob.as_str(),
            KeyPattern::Regex(regex) => regex.as_str(),
        }
    }

    /// Whether `key` matches.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            KeyPattern::Glob(glob) => glob.matches(key),
            KeyPattern::Regex(regex) => regex.is_match(key),
        }
    }
}

impl From<Pattern> for KeyPattern {
    fn from(glob: Pattern) -> Self {
        KeyPattern::Glob(glob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_classes() {
        // (pattern, text, whether it matches)
        let cases = [
            // `*` and `?`
            ("user:*", "user:42", true),
            ("user:*", "user:", true),
            ("user:*", "users:1", false),
            ("*:42", "product:42", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("**", "", true),
            // `[...]` classes, ranges, negation and escapes
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("v[0-9]", "v7", true),
            ("v[0-9]", "va", false),
            ("x[a-]", "x-", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("[\\]]", "]", true),
        ];
        for (pattern, text, matches) in cases {
            let got = Pattern::new(pattern).unwrap().matches(text);
            assert_eq!(got, matches, "{pattern:?} on {text:?}");
        }
    }

    #[test]
    fn invalid_patterns_are_errors() {
        for bad in ["", "a[bc", "a[]", "a\\", "[z-a]", "[a\\"] {
            assert!(
                matches!(Pattern::new(bad), Err(StoreError::InvalidPattern { .. })),
                "{bad:?} should be invalid"
            );
        }
        assert!(Pattern::new(&"a".repeat(MAX_PATTERN_LEN + 1)).is_err());
    }

    #[test]
    fn escape_round_trips() {
        let literal = "a*b?c[d]e\\f";
        let p = Pattern::new(&Pattern::escape(literal)).unwrap();
        assert!(p.is_literal());
        assert!(p.matches(literal));
        assert!(!p.matches("aXbYc[d]e\\f"));
    }

    #[test]
    fn many_stars_stay_fast() {
        let p = Pattern::new(&"*a".repeat(50)).unwrap();
        assert!(!p.matches(&"a".repeat(49)));
    }
}
