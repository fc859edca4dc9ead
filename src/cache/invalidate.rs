//! Invalidation: the one operation that removes every stored response of a URL (the plain
//! entry, or the `Vary` index and every variant), and the unsafe requests that call it
//! (RFC 9111 §4.4).
//!
//! Every path that invalidates goes through [`invalidate_url`] or, where no cache state is
//! at hand (a plain `Purger` over the store), [`remove_url`]: unsafe methods, the late write
//! of a miss invalidated in flight, a refresh that finds the page no longer cacheable,
//! `PURGE`, URL, key and JSON purges.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, Uri};
use tower_service::Service;
use tracing::Instrument as _;

use super::body::{CacheBody, Resp};
use super::ctx::Ctx;
use super::key::{KeyConfig, KeyPart, url_tag};
use super::outage::StoreOp;
use super::scope::CacheScope;
use super::stamp;
use super::state::Shared;
use super::upstream::{self, Upstream};
use crate::store::{PurgeMode, Store, StoreError};

/// Removes from the store every response stored for the URL whose primary store key is
/// `primary`: the entry under the key itself (a response, or the `Vary` index) and every
/// variant, which carry the URL's internal tag. Returns how many entries went.
///
/// Variants are reachable only through the index, which outlives them, so the variants' tag
/// is purged only when the key held something: a URL with nothing stored (most targets of
/// `POST`) costs one key purge and leaves no invalidation mark behind. A variant written
/// while its index is not yet there belongs to a fill in flight, which the caller's
/// [`Shared::forget`] makes undo itself.
///
/// Cost: one key purge, and one tag purge after it when the key held an entry, whatever the
/// number of variants.
pub(crate) async fn remove_url<St: Store + ?Sized>(
    store: &St,
    primary: &str,
    mode: PurgeMode,
) -> Result<u64, StoreError> {
    if !store.purge_key(primary, mode).await? {
        return Ok(0);
    }
    let variants = store.purge_tag(&url_tag(primary), mode).await?;
    Ok(1 + variants)
}

/// [`remove_url`], after forgetting what this process knows of the URL (a miss in flight on
/// it is not stored nor handed to its waiters, a background write of it undoes itself, its
/// hit-for-pass marker goes) and stamping the URL invalidated for `window` in the store, so
/// that fetches in flight on other instances are not stored either (see [`stamp`]).
pub(crate) async fn invalidate_url<St: Store + ?Sized>(
    store: &St,
    shared: &Shared,
    primary: &str,
    mode: PurgeMode,
    window: Duration,
) -> Result<u64, StoreError> {
    shared.forget(primary);
    stamp::write(store, primary, window).await?;
    remove_url(store, primary, mode).await
}

/// The cache's invalidation operation as other modules use it (`purge`): the key rules to
/// name a URL's entries, and the in-process state to forget. Cheap to clone.
#[cfg(feature = "purge")]
#[derive(Clone)]
pub(crate) struct Invalidator {
    key: Arc<KeyConfig>,
    shared: Arc<Shared>,
    /// How long an invalidation's stamp lives (the layer's fill window).
    fill_window: Duration,
}

#[cfg(feature = "purge")]
impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invalidator").finish_non_exhaustive()
    }
}

#[cfg(feature = "purge")]
impl Invalidator {
    pub(crate) fn new(key: KeyConfig, shared: Arc<Shared>, fill_window: Duration) -> Self {
        Invalidator {
            key: Arc::new(key),
            shared,
            fill_window,
        }
    }

    /// The primary store key of a GET of `uri` in the context of `headers` and `part`, with
    /// the cache's key rules: what [`Invalidator::purge_key`] purges to purge the URL.
    pub(crate) fn url_key(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        part: Option<&KeyPart>,
    ) -> Result<String, super::authority::InvalidAuthority> {
        let key = self.key.primary_for(uri, headers, part, None)?;
        Ok(key.store_key().to_owned())
    }

    /// [`invalidate_url`] with this cache's state.
    pub(crate) async fn invalidate<St: Store + ?Sized>(
        &self,
        store: &St,
        primary: &str,
        mode: PurgeMode,
    ) -> Result<u64, StoreError> {
        invalidate_url(store, &self.shared, primary, mode, self.fill_window).await
    }
}

/// A purge of one store key as the response cache sees it. A cache entry's key
/// ([`KeySpace::is_cache_entry`](crate::store::KeySpace::is_cache_entry)) names a URL:
/// every stored response of it goes ([`remove_url`]) and, with the cache's [`Invalidator`],
/// what the process knows of the URL and other instances' fetches in flight
/// ([`invalidate_url`]). Any other key is purged as it is. Returns how many entries went.
#[cfg(feature = "purge")]
pub(crate) async fn purge_key<St: Store + ?Sized>(
    store: &St,
    key: &str,
    mode: PurgeMode,
    cache: Option<&Invalidator>,
) -> Result<u64, StoreError> {
    match cache {
        _ if !crate::store::KeySpace::is_cache_entry(key) => {
            store.purge_key(key, mode).await.map(u64::from)
        }
        Some(cache) => cache.invalidate(store, key, mode).await,
        None => remove_url(store, key, mode).await,
    }
}

/// Methods RFC 9110 §9.2.1 defines as safe. Any other method (`POST`, `PUT`, `M-SEARCH`, ...)
/// invalidates what it targets when it succeeds.
pub(crate) fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// A successful request with an unsafe method invalidates its URI and its `Location` and
/// `Content-Location` on the same host (RFC 9111 §4.4), every variant of each.
///
/// The call upstream runs to its end even when the client leaves (the response future is
/// dropped): a write the origin performs after its client hung up still invalidates. An
/// outcome the cache cannot know (the call failed, or never answered because it panicked)
/// invalidates the request's URI as a success would; only an answer that says the request
/// failed (4xx, 5xx, 1xx) leaves the cache alone.
pub(crate) async fn unsafe_request<S, St, B, RB>(
    ctx: &Arc<Ctx<St>>,
    mut svc: S,
    request: Request<B>,
) -> Result<Resp<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    RB: Send + 'static,
{
    let uri = request.uri().clone();
    let headers = request.headers().clone();
    let part = request.extensions().get::<KeyPart>().cloned();
    // A private scope's unsafe request also invalidates its principal's entries of the URL
    // (another principal's are theirs: a private cache never sees other users' writes).
    let principal = CacheScope::of(&request).map(str::to_owned);
    let call = svc.call(request);
    let task_ctx = ctx.clone();
    let write = async move {
        let result = call.await;
        let key_config = &task_ctx.config.key;
        let principal = principal.as_deref();
        let mut targets = Vec::with_capacity(6);
        let mut target = |uri: &Uri| {
            targets.extend(
                key_config
                    .primary_for(uri, &headers, part.as_ref(), None)
                    .ok(),
            );
            if principal.is_some() {
                targets.extend(
                    key_config
                        .primary_for(uri, &headers, part.as_ref(), principal)
                        .ok(),
                );
            }
        };
        let changed = match &result {
            Ok(response) => response.status().is_success() || response.status().is_redirection(),
            Err(_) => true,
        };
        if changed {
            target(&uri);
        }
        if let Ok(response) = &result
            && changed
        {
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                if let Some(location) = response
                    .headers()
                    .get(&name)
                    .and_then(|v| same_host_target(key_config, &uri, &headers, v))
                {
                    target(&location);
                }
            }
        }
        for target in targets {
            let key = target.store_key();
            let window = task_ctx.config.fill_window();
            match invalidate_url(
                &**task_ctx.store_for(&target),
                &task_ctx.shared,
                key,
                PurgeMode::Hard,
                window,
            )
            .await
            {
                Ok(_) => Shared::count(&task_ctx.shared.invalidations),
                Err(error) => task_ctx.shared.store_failed(StoreOp::Invalidate, &error),
            }
        }
        result
    };
    let timeout = ctx.config.upstream_timeout;
    let answer = async {
        match tokio::runtime::Handle::try_current() {
            // Detached, so that dropping this future (the client hung up) or the upstream
            // timeout does not cancel it: it still invalidates when the service answers.
            Ok(runtime) => match runtime.spawn(write.in_current_span()).await {
                Ok(result) => result,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(error) => panic!("the write's task was cancelled: {error}"),
            },
            Err(_) => write.await,
        }
    };
    match upstream::within(timeout, answer).await {
        Upstream::Done(result) => Ok(result?.map(CacheBody::passthrough)),
        Upstream::TimedOut => Ok(upstream::timed_out(ctx, false)),
    }
}

/// A `Location`-style target on the request's host, as a URI the key can be built from.
/// Hosts are compared in their normalised form, so `http://EXAMPLE.com:80/b` is on
/// `example.com`.
fn same_host_target(
    keys: &KeyConfig,
    uri: &Uri,
    headers: &HeaderMap,
    value: &HeaderValue,
) -> Option<Uri> {
    let target: Uri = value.to_str().ok()?.parse().ok()?;
    match target.authority() {
        Some(_) => {
            let host = keys.authority(uri, headers).ok()?;
            let named = keys.authority(&target, &HeaderMap::new()).ok()?;
            (named == host).then_some(target)
        }
        None if target.path().starts_with('/') => {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = target.path_and_query().cloned();
            Uri::from_parts(parts).ok()
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_targets() {
        let keys = KeyConfig {
            default_scheme: "http".into(),
            ..KeyConfig::default()
        };
        let same_host_target = |uri: &Uri, headers: &HeaderMap, value: &HeaderValue| {
            same_host_target(&keys, uri, headers, value)
        };
        let uri: Uri = "/a".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.com"));
        let same = same_host_target(&uri, &headers, &HeaderValue::from_static("/b?x=1")).unwrap();
        assert!(
            same_host_target(
                &uri,
                &headers,
                &HeaderValue::from_static("http://EXAMPLE.com:80/c")
            )
            .is_some()
        );
        assert_eq!(same.path_and_query().unwrap().as_str(), "/b?x=1");
        assert!(
            same_host_target(
                &uri,
                &headers,
                &HeaderValue::from_static("http://example.com/c")
            )
            .is_some()
        );
        assert!(
            same_host_target(
                &uri,
                &headers,
                &HeaderValue::from_static("http://evil.com/c")
            )
            .is_none()
        );
    }

    #[test]
    fn safe_methods() {
        assert!(is_safe(&Method::GET) && is_safe(&Method::OPTIONS));
        assert!(!is_safe(&Method::POST));
        assert!(!is_safe(&Method::from_bytes(b"M-SEARCH").unwrap()));
    }
}
