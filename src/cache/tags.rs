//! Response tags: `Surrogate-Key`, `Cache-Tag` and the [`CacheTags`] extension.

use http::HeaderMap;
use http::header::HeaderName;

use super::ctx::Ctx;
use super::state::Shared;
use crate::store::{Store, TagSpace};

/// `Surrogate-Key`: space-separated tags (Fastly, Varnish).
pub(crate) static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// `Cache-Tag`: comma-separated tags (Cloudflare).
pub(crate) static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// Longest tag, in bytes (Fastly's limit).
pub const MAX_TAG_LEN: usize = 1024;
/// Longest tag header, in bytes (Fastly's limit); tags past it are dropped.
pub const MAX_TAG_HEADER_LEN: usize = 16 * 1024;

/// Tags a handler attaches to a response as an extension, stored with the entry alongside
/// those from `Surrogate-Key` and `Cache-Tag` headers, for purging by tag.
///
/// ```
/// use tower_strata::cache::CacheTags;
///
/// let mut response = http::Response::new(());
/// response.extensions_mut().insert(CacheTags::new(["product:42", "products"]));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheTags(Vec<String>);

impl CacheTags {
    /// The given tags.
    pub fn new(tags: impl IntoIterator<Item = impl Into<String>>) -> Self {
        CacheTags(tags.into_iter().map(Into::into).collect())
    }

    /// The tags.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// Reads a response's tags, enforcing the limits (over-limit tags are dropped and logged, the
/// response is served all the same), and strips the tag headers if the layer says so.
pub(crate) fn extract_tags<St: Store>(
    ctx: &Ctx<St>,
    headers: &mut HeaderMap,
    extension: Option<&CacheTags>,
) -> Vec<String> {
    let limits = ctx.store.limits();
    let mut tags: Vec<String> = Vec::new();
    let add = |tag: &str, tags: &mut Vec<String>| {
        if tag.is_empty() {
            return;
        }
        if tag.len() > MAX_TAG_LEN || limits.check_tag(tag).is_err() {
            Shared::count(&ctx.shared.dropped_tags);
            tracing::warn!(
                len = tag.len(),
                "cache tag dropped: over the length limit or invalid"
            );
            return;
        }
        // A response cannot tag itself into the cache's own spaces (a URL's variants, a
        // user's private entries): those tags are the cache's to give.
        if TagSpace::of(tag).is_reserved() {
            Shared::count(&ctx.shared.dropped_tags);
            tracing::warn!("cache tag in the reserved `~` space dropped");
            return;
        }
        if !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_owned());
        }
    };
    for (name, separator) in [(&SURROGATE_KEY, None), (&CACHE_TAG, Some(','))] {
        for value in headers.get_all(name) {
            let Ok(value) = value.to_str() else {
                Shared::count(&ctx.shared.dropped_tags);
                tracing::warn!(header = %name, "cache tag header is not visible ASCII; dropped");
                continue;
            };
            let mut used = 0;
            let parts: Box<dyn Iterator<Item = &str>> = match separator {
                None => Box::new(value.split_ascii_whitespace()),
                Some(c) => Box::new(value.split(c).map(str::trim)),
            };
            for tag in parts {
                used += tag.len() + 1;
                if used > MAX_TAG_HEADER_LEN + 1 {
                    Shared::count(&ctx.shared.dropped_tags);
                    tracing::warn!(header = %name, "cache tag past the header size limit dropped");
                    continue;
                }
                add(tag, &mut tags);
            }
        }
    }
    if let Some(ext) = extension {
        for tag in ext.as_slice() {
            add(tag, &mut tags);
        }
    }
    if tags.len() > limits.max_tags {
        let dropped = tags.len() - limits.max_tags;
        tracing::warn!(
            dropped,
            "cache tags past the store's tag count limit dropped"
        );
        for _ in 0..dropped {
            Shared::count(&ctx.shared.dropped_tags);
        }
        tags.truncate(limits.max_tags);
    }
    if ctx.config.strip_tag_headers {
        headers.remove(&SURROGATE_KEY);
        headers.remove(&CACHE_TAG);
    }
    tags
}
