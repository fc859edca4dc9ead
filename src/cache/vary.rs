//! `Vary` normalisation: [`VaryNormaliser`] maps a request's value of a header to the value the
//! origin can actually answer differently, so `Vary: Accept-Encoding` keeps one entry per
//! coding the application produces instead of one per browser. Built in: [`AcceptEncoding`]
//! and [`AcceptLanguage`]. A leaf of the module: `key` applies the normalisers when it names a
//! variant, and the service rewrites the request's header before it goes upstream.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Maps a request's value of one header to the value that selects its `Vary` variant.
///
/// `value` is the header's field lines combined with `, ` (empty when the request has none).
/// The result is both the variant's key and the value the request carries upstream when the
/// cache forwards it (an empty result removes the header), so it must be a value the origin
/// reads as meaning the same, and normalising it again must give it back unchanged.
///
/// Closures `Fn(&str) -> String` are normalisers:
///
/// ```
/// use tower_strata::cache::{CacheLayer, VaryNormaliser};
/// use tower_strata::store::MemoryStore;
///
/// // Phones and the rest: the origin answers two layouts.
/// let layer = CacheLayer::new(MemoryStore::new(1 << 20)).normalise_vary(
///     http::HeaderName::from_static("x-device"),
///     |value: &str| if value.contains("mobile") { "mobile" } else { "desktop" }.to_owned(),
/// );
/// # let _ = layer;
/// ```
pub trait VaryNormaliser: Send + Sync + 'static {
    /// The value that selects the variant, for a request whose header says `value`.
    fn normalise(&self, value: &str) -> String;
}

impl<F> VaryNormaliser for F
where
    F: Fn(&str) -> String + Send + Sync + 'static,
{
    fn normalise(&self, value: &str) -> String {
        self(value)
    }
}

/// `Accept-Encoding`: the best content coding the client accepts among those the application
/// produces (by the client's `q`, then the application's order), else `identity`.
///
/// With `AcceptEncoding::new(["br", "gzip"])`, `gzip, deflate, br, zstd` and `gzip, deflate,
/// br` are both `br`, `gzip, deflate` is `gzip`, and `br;q=0, *;q=0.5` is `gzip`.
///
/// ```
/// use tower_strata::cache::{AcceptEncoding, VaryNormaliser};
///
/// let normaliser = AcceptEncoding::new(["br", "gzip"]);
/// assert_eq!(normaliser.normalise("gzip, deflate, br, zstd"), "br");
/// assert_eq!(normaliser.normalise("gzip, deflate"), "gzip");
/// assert_eq!(normaliser.normalise(""), "identity");
/// ```
#[derive(Clone, Debug)]
pub struct AcceptEncoding {
    codings: Vec<String>,
}

impl AcceptEncoding {
    /// The codings the application produces, most preferred first (`br`, `gzip`, `zstd`,
    /// `deflate`); `identity` is always possible.
    pub fn new(codings: impl IntoIterator<Item = impl Into<String>>) -> Self {
        AcceptEncoding {
            codings: codings
                .into_iter()
                .map(|c| c.into().to_ascii_lowercase())
                .filter(|c| c != "identity" && !c.is_empty())
                .collect(),
        }
    }
}

impl VaryNormaliser for AcceptEncoding {
    fn normalise(&self, value: &str) -> String {
        let ranges = weighted(value);
        let q_of = |coding: &str| {
            ranges
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(coding))
                .or_else(|| ranges.iter().find(|(name, _)| *name == "*"))
                .map_or(0.0, |(_, q)| *q)
        };
        best(&self.codings, q_of).unwrap_or_else(|| "identity".to_owned())
    }
}

/// `Accept-Language`: the best language of a configured list that the client accepts (by the
/// client's `q`, then the list's order; a range matches a language it equals or is a prefix
/// of at a `-`, and `fr-CH` falls back to `fr`), else the list's first.
///
/// ```
/// use tower_strata::cache::{AcceptLanguage, VaryNormaliser};
///
/// let normaliser = AcceptLanguage::new(["en", "fr"]);
/// assert_eq!(normaliser.normalise("fr-CH, fr;q=0.9, en;q=0.8"), "fr");
/// assert_eq!(normaliser.normalise("de"), "en");
/// ```
#[derive(Clone, Debug)]
pub struct AcceptLanguage {
    languages: Vec<String>,
}

impl AcceptLanguage {
    /// The languages the application answers in, the default first.
    pub fn new(languages: impl IntoIterator<Item = impl Into<String>>) -> Self {
        AcceptLanguage {
            languages: languages
                .into_iter()
                .map(|l| l.into().to_ascii_lowercase())
                .filter(|l| !l.is_empty())
                .collect(),
        }
    }
}

impl VaryNormaliser for AcceptLanguage {
    fn normalise(&self, value: &str) -> String {
        let ranges = weighted(value);
        let matches = |range: &str, language: &str| {
            let (range, language) = (range.to_ascii_lowercase(), language);
            range == "*"
                || range == language
                || language
                    .strip_prefix(range.as_str())
                    .is_some_and(|rest| rest.starts_with('-'))
                || range
                    .strip_prefix(language)
                    .is_some_and(|rest| rest.starts_with('-'))
        };
        let q_of = |language: &str| {
            // The most specific range that names the language decides its weight.
            ranges
                .iter()
                .filter(|(range, _)| matches(range, language))
                .max_by_key(|(range, _)| if *range == "*" { 0 } else { range.len() })
                .map_or(0.0, |(_, q)| *q)
        };
        best(&self.languages, q_of)
            .or_else(|| self.languages.first().cloned())
            .unwrap_or_default()
    }
}

/// The list's member with the highest weight above zero; the earlier one on a tie.
fn best(list: &[String], q_of: impl Fn(&str) -> f32) -> Option<String> {
    let mut best: Option<(&String, f32)> = None;
    for item in list {
        let q = q_of(item);
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((item, q));
        }
    }
    best.map(|(item, _)| item.clone())
}

/// The members of a weighted list (`a;q=0.5, b`), with their weights (1 without `q`; a `q`
/// that does not parse counts as 0).
fn weighted(value: &str) -> Vec<(&str, f32)> {
    value
        .split(',')
        .filter_map(|member| {
            let mut parts = member.split(';');
            let name = parts.next()?.trim();
            if name.is_empty() {
                return None;
            }
            let mut q = 1.0;
            for param in parts {
                if let Some((k, v)) = param.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    q = v.trim().parse::<f32>().unwrap_or(0.0).clamp(0.0, 1.0);
                }
            }
            Some((name, q))
        })
        .collect()
}

/// A header's field lines combined into one value (`, `-joined); lines that are not text are
/// left out, and an absent header is empty.
pub(crate) fn combined(name: &HeaderName, headers: &HeaderMap) -> String {
    let mut out = String::new();
    for value in headers.get_all(name) {
        if let Ok(value) = value.to_str() {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(value);
        }
    }
    out
}

/// The normalisers a layer registered, by header.
#[derive(Clone, Default)]
pub(crate) struct VaryNormalisers(Vec<(HeaderName, Arc<dyn VaryNormaliser>)>);

impl std::fmt::Debug for VaryNormalisers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

impl VaryNormalisers {
    /// Registers (or replaces) the normaliser of `name`.
    pub(crate) fn insert(&mut self, name: HeaderName, normaliser: Arc<dyn VaryNormaliser>) {
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, normaliser));
    }

    pub(crate) fn get(&self, name: &HeaderName) -> Option<&dyn VaryNormaliser> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, normaliser)| &**normaliser)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Rewrites a request's headers to their normalised values, so the origin answers the
    /// variant the response will be filed under.
    pub(crate) fn rewrite(&self, headers: &mut HeaderMap) {
        for (name, normaliser) in &self.0 {
            let value = normaliser.normalise(&combined(name, headers));
            if value.is_empty() {
                headers.remove(name);
            } else if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name.clone(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What five common browsers send (Chrome, Firefox, Safari, Edge, and an older one).
    pub(crate) const BROWSERS: [&str; 5] = [
        "gzip, deflate, br, zstd",
        "gzip, deflate, br, zstd",
        "gzip, deflate, br",
        "gzip, deflate, br, zstd",
        "gzip, deflate",
    ];

    #[test]
    fn accept_encoding_picks_the_best_produced_coding() {
        let n = AcceptEncoding::new(["br", "gzip"]);
        assert_eq!(n.normalise(BROWSERS[0]), "br");
        assert_eq!(n.normalise(BROWSERS[2]), "br");
        assert_eq!(n.normalise(BROWSERS[4]), "gzip");
        assert_eq!(n.normalise("br;q=0, gzip;q=0.1"), "gzip");
        assert_eq!(n.normalise("gzip;q=0.5, br;q=0.4"), "gzip");
        assert_eq!(n.normalise("br;q=0, *;q=0.5"), "gzip");
        assert_eq!(n.normalise("zstd"), "identity");
        assert_eq!(n.normalise("GZIP"), "gzip");
        assert_eq!(n.normalise(""), "identity");
        // Idempotent: what it makes normalises to itself.
        for v in ["br", "gzip", "identity"] {
            assert_eq!(n.normalise(v), v);
        }
    }

    #[test]
    fn accept_language_matches_ranges_and_falls_back() {
        let n = AcceptLanguage::new(["en", "fr"]);
        assert_eq!(n.normalise("fr-CH, fr;q=0.9, en;q=0.8"), "fr");
        assert_eq!(n.normalise("en-US,en;q=0.9"), "en");
        assert_eq!(n.normalise("de-DE, fr;q=0.5"), "fr");
        assert_eq!(n.normalise("de"), "en");
        assert_eq!(n.normalise("fr;q=0, *"), "en");
        assert_eq!(n.normalise(""), "en");
        let regional = AcceptLanguage::new(["en", "fr-ca"]);
        assert_eq!(regional.normalise("fr"), "fr-ca");
        for v in ["en", "fr"] {
            assert_eq!(n.normalise(v), v);
        }
    }

    #[test]
    fn rewrite_sets_the_normalised_value() {
        let mut normalisers = VaryNormalisers::default();
        normalisers.insert(
            http::header::ACCEPT_ENCODING,
            Arc::new(AcceptEncoding::new(["gzip"])),
        );
        let mut headers = HeaderMap::new();
        headers.append(http::header::ACCEPT_ENCODING, "br".parse().unwrap());
        headers.append(http::header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        normalisers.rewrite(&mut headers);
        assert_eq!(
            headers
                .get_all(http::header::ACCEPT_ENCODING)
                .iter()
                .count(),
            1
        );
        assert_eq!(headers[http::header::ACCEPT_ENCODING], "gzip");
    }

    #[test]
    fn normalisers_are_object_safe() {
        let _: Arc<dyn VaryNormaliser> = Arc::new(|v: &str| v.to_owned());
    }
}
