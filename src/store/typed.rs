//! [`TypedCache`]: typed values on any [`Store`], with single-flight `get_or_compute`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::{FutureExt, Shared};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{KeySpace, PurgeMode, SetOptions, Store, StoreError};

/// Values at or above this size are compressed when the `compression` feature is on.
pub const DEFAULT_COMPRESS_ABOVE: usize = 1024;

const CODEC_JSON: u8 = 0;
const CODEC_JSON_LZ4: u8 = 1;

/// An error from the typed [`TypedCache`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TypedCacheError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The value could not be serialized.
    #[error("could not encode the value: {0}")]
    Encode(#[source] Arc<serde_json::Error>),
    /// The stored bytes could not be turned back into the requested type.
    #[error("could not decode the cached value: {0}")]
    Decode(String),
}

/// The error of [`TypedCache::get_or_compute`]: the compute function's own error, shared by every
/// caller that waited for it, or a cache error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError<E> {
    /// The compute function failed; every waiter gets the same error and nothing was cached.
    #[error("the compute function failed")]
    Compute(Arc<E>),
    /// Encoding or decoding failed.
    #[error(transparent)]
    Cache(#[from] TypedCacheError),
}

#[derive(Clone)]
enum FlightError {
    Compute(Arc<dyn Any + Send + Sync>),
    Encode(Arc<serde_json::Error>),
}

type FlightFuture = Pin<Box<dyn Future<Output = Result<Bytes, FlightError>> + Send>>;
type Flight = Shared<FlightFuture>;

#[derive(Default)]
struct Flights {
    map: Mutex<HashMap<(String, TypeId), (u64, Flight)>>,
    next_id: AtomicU64,
}

/// Typed application values (`serde`) on any [`Store`], with default write options, optional
/// compression and single-flight computation.
///
/// Values are stored as JSON (one codec byte in front), LZ4-compressed above
/// [`DEFAULT_COMPRESS_ABOVE`] bytes with the `compression` feature.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tower_strata::store::{TypedCache, KeyBuilder, MemoryStore, SetOptions};
///
/// let cache = TypedCache::new(MemoryStore::new(16 << 20));
/// let key = KeyBuilder::new("product").part(42).build();
/// let options = SetOptions::new().ttl(Duration::from_secs(60)).tags(["products"]);
/// let name: String = cache
///     .get_or_compute(&key, &options, || async { Ok::<_, std::io::Error>("lamp".to_string()) })
///     .await?;
/// assert_eq!(name, "lamp");
/// assert_eq!(cache.get::<String>(&key).await?, Some("lamp".to_string()));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TypedCache<S> {
    store: S,
    defaults: SetOptions,
    compress_above: usize,
    flights: Arc<Flights>,
}

impl<S: fmt::Debug> fmt::Debug for TypedCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedCache")
            .field("store", &self.store)
            .field("defaults", &self.defaults)
            .field("compress_above", &self.compress_above)
            .finish_non_exhaustive()
    }
}

impl<S: Store + Clone> TypedCache<S> {
    /// A cache on `store` whose [`TypedCache::set_default`] writes use no TTL, grace or tags.
    pub fn new(store: S) -> Self {
        TypedCache {
            store,
            defaults: SetOptions::new(),
            compress_above: DEFAULT_COMPRESS_ABOVE,
            flights: Arc::default(),
        }
    }

    setters! {
        /// Sets the options used by [`TypedCache::set_default`].
        fn default_options(options: SetOptions) => set defaults;

        /// Compress values of at least this many bytes (feature `compression`; ignored without
        /// it). `usize::MAX` turns compression off.
        fn compress_above(bytes: usize) => set compress_above;
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The default write options.
    pub fn defaults(&self) -> &SetOptions {
        &self.defaults
    }

    /// Reads a value. Stale entries inside their grace period are returned too.
    ///
    /// # Errors
    ///
    /// [`TypedCacheError::Store`] from the store, or with [`StoreError::ReservedKey`] for a key
    /// in a layer's reserved space ([`KeySpace`]); [`TypedCacheError::Decode`] when the stored
    /// bytes are not a `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, TypedCacheError> {
        match self.store.get(KeySpace::application(key)?).await? {
            Some(entry) => decode(entry.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Writes a value with the given options.
    ///
    /// # Errors
    ///
    /// [`TypedCacheError::Encode`] or [`TypedCacheError::Store`] (limits and
    /// [`StoreError::ReservedKey`] included).
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        options: &SetOptions,
    ) -> Result<(), TypedCacheError> {
        let key = KeySpace::application(key)?;
        let bytes = encode(value, self.compress_above).map_err(TypedCacheError::Encode)?;
        Ok(self.store.set(key, bytes, options).await?)
    }

    /// Writes a value with the default options.
    ///
    /// # Errors
    ///
    /// As [`TypedCache::set`].
    pub async fn set_default<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), TypedCacheError> {
        self.set(key, value, &self.defaults.clone()).await
    }

    /// Removes a value.
    ///
    /// # Errors
    ///
    /// [`TypedCacheError::Store`].
    pub async fn delete(&self, key: &str) -> Result<bool, TypedCacheError> {
        let key = KeySpace::application(key)?;
        Ok(self.store.purge_key(key, PurgeMode::Hard).await?)
    }

    /// Returns the cached value, or computes, stores and returns it.
    ///
    /// # Concurrency
    ///
    /// Concurrent callers that miss the same key (and ask for the same types) share **one**
    /// call of `compute`: the first starts it, the others wait for its result. If a caller is
    /// cancelled, the others keep driving the computation. An error from `compute` is returned
    /// to every waiter (as the same `Arc`) and nothing is cached.
    ///
    /// # Fail-safe
    ///
    /// A stale entry (inside its grace period) triggers a recomputation; if that fails, the
    /// stale value is returned instead of the error. A store that fails is treated as a miss:
    /// the value is computed and returned, and the write error is logged.
    ///
    /// # Errors
    ///
    /// [`ComputeError::Compute`] with the function's error; [`ComputeError::Cache`] when the
    /// value cannot be encoded or decoded, or the key is in a reserved space
    /// ([`StoreError::ReservedKey`]).
    pub async fn get_or_compute<T, E, F, Fut>(
        &self,
        key: &str,
        options: &SetOptions,
        compute: F,
    ) -> Result<T, ComputeError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let key = KeySpace::application(key).map_err(TypedCacheError::from)?;
        let stale = match self.store.get(key).await {
            Ok(Some(entry)) if !entry.is_stale() => return Ok(decode(entry.value())?),
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(key, error = %e, "cache: read failed, computing");
                None
            }
        };
        let flight_key = (key.to_owned(), TypeId::of::<(T, E)>());
        let (id, flight) = {
            let mut map = self.flights.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(flight_key.clone())
                .or_insert_with(|| {
                    let id = self.flights.next_id.fetch_add(1, Relaxed);
                    (id, self.start_flight(key, options, compute))
                })
                .clone()
        };
        let result = flight.await;
        {
            let mut map = self.flights.map.lock().unwrap_or_else(|e| e.into_inner());
            if map
                .get(&flight_key)
                .is_some_and(|(current, _)| *current == id)
            {
                map.remove(&flight_key);
            }
        }
        match result {
            Ok(bytes) => Ok(decode(&bytes)?),
            Err(error) => {
                if let Some(stale) = stale {
                    tracing::warn!(key, "cache: compute failed, serving the stale value");
                    return Ok(decode(stale.value())?);
                }
                match error {
                    FlightError::Compute(any) => match any.downcast::<E>() {
                        Ok(e) => Err(ComputeError::Compute(e)),
                        Err(_) => unreachable!("flights are keyed by the error type"),
                    },
                    FlightError::Encode(e) => Err(TypedCacheError::Encode(e).into()),
                }
            }
        }
    }

    fn start_flight<T, E, F, Fut>(&self, key: &str, options: &SetOptions, compute: F) -> Flight
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let store = self.store.clone();
        let key = key.to_owned();
        let options = options.clone();
        let compress_above = self.compress_above;
        let flight: FlightFuture = Box::pin(async move {
            // A previous flight may have stored the value between this caller's miss and the
            // start of this flight: check again rather than compute twice.
            if let Ok(Some(entry)) = store.get(&key).await
                && !entry.is_stale()
            {
                return Ok(entry.into_value());
            }
            let value = compute()
                .await
                .map_err(|e| FlightError::Compute(Arc::new(e)))?;
            let bytes = encode(&value, compress_above).map_err(FlightError::Encode)?;
            if let Err(e) = store.set(&key, bytes.clone(), &options).await {
                tracing::warn!(key, error = %e, "cache: could not store the computed value");
            }
            Ok(bytes)
        });
        flight.shared()
    }
}

fn encode<T: Serialize + ?Sized>(
    value: &T,
    compress_above: usize,
) -> Result<Bytes, Arc<serde_json::Error>> {
    let mut out = BytesMut::new().writer();
    out.get_mut().put_u8(CODEC_JSON);
    serde_json::to_writer(&mut out, value).map_err(Arc::new)?;
    let out = out.into_inner();
    #[cfg(feature = "compression")]
    if out.len() > compress_above {
        let mut compressed = Vec::with_capacity(out.len() / 2 + 8);
        compressed.push(CODEC_JSON_LZ4);
        compressed.extend_from_slice(&lz4_flex::compress_prepend_size(&out[1..]));
        return Ok(Bytes::from(compressed));
    }
    #[cfg(not(feature = "compression"))]
    let _ = compress_above;
    Ok(out.freeze())
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TypedCacheError> {
    let (codec, body) = bytes
        .split_first()
        .ok_or_else(|| TypedCacheError::Decode("empty value".into()))?;
    match *codec {
        CODEC_JSON => {
            serde_json::from_slice(body).map_err(|e| TypedCacheError::Decode(e.to_string()))
        }
        CODEC_JSON_LZ4 => {
            #[cfg(feature = "compression")]
            {
                let raw = lz4_flex::decompress_size_prepended(body)
                    .map_err(|e| TypedCacheError::Decode(e.to_string()))?;
                serde_json::from_slice(&raw).map_err(|e| TypedCacheError::Decode(e.to_string()))
            }
            #[cfg(not(feature = "compression"))]
            Err(TypedCacheError::Decode(
                "value is LZ4-compressed but the `compression` feature is off".into(),
            ))
        }
        other => Err(TypedCacheError::Decode(format!(
            "unknown codec byte {other}"
        ))),
    }
}

/// Builds consistent keys: parts joined with `:`, with `%` and `:` inside a part
/// percent-escaped so `("a:b")` and `("a", "b")` never collide.
///
/// ```
/// use tower_strata::store::KeyBuilder;
///
/// assert_eq!(KeyBuilder::new("product").part(42).build(), "product:42");
/// assert_eq!(KeyBuilder::new("user").part("a:b").build(), "user:a%3Ab");
/// // Never a key of the response cache's reserved spaces:
/// assert_eq!(KeyBuilder::new("c").part("GET /").build(), "%63:GET /");
/// ```
#[derive(Clone, Debug)]
pub struct KeyBuilder(String);

impl KeyBuilder {
    /// Starts a key with its first part.
    pub fn new(prefix: impl fmt::Display) -> Self {
        let mut key = KeyBuilder(String::new());
        key.push_escaped(&prefix.to_string());
        key
    }

    /// Appends a part.
    pub fn part(mut self, part: impl fmt::Display) -> Self {
        self.0.push(':');
        self.push_escaped(&part.to_string());
        self
    }

    /// The key. A key that would fall in a layer's reserved space ([`KeySpace`]: its first
    /// part is `c`, `l` or `i`, or begins `c#`) has its first character percent-escaped, so it
    /// stays the application's and never meets another part list's key.
    pub fn build(mut self) -> String {
        if KeySpace::of(&self.0).is_reserved() {
            let first = self.0.remove(0);
            self.0.insert_str(0, &format!("%{:02X}", u32::from(first)));
        }
        self.0
    }

    fn push_escaped(&mut self, part: &str) {
        for c in part.chars() {
            match c {
                '%' => self.0.push_str("%25"),
                ':' => self.0.push_str("%3A"),
                c => self.0.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trip() {
        let value = vec!["x".repeat(100); 50];
        let bytes = encode(&value, 1024).unwrap();
        #[cfg(feature = "compression")]
        assert_eq!(bytes[0], CODEC_JSON_LZ4);
        assert_eq!(decode::<Vec<String>>(&bytes).unwrap(), value);
        let small = encode(&1u8, 1024).unwrap();
        assert_eq!(&small[..], b"\x001");
        assert!(decode::<u8>(&[9, b'1']).is_err());
        assert!(decode::<u8>(&[]).is_err());
    }
}
