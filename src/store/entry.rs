//! Entries, write options, limits and the binary entry format.

use std::any::Any;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::StoreError;
use super::error::cut;

/// A stored value with the metadata a cache needs: when it was stored, how long it is fresh,
/// how long it may be served stale afterwards (grace), and its tags.
///
/// Cloning is cheap: one reference count (the value, its metadata and what a reader decoded
/// from it are shared by the clones).
#[derive(Clone)]
pub struct Entry(Arc<Parts>);

#[derive(Clone)]
struct Parts {
    value: Bytes,
    /// When it was stored, in microseconds since the epoch: the unit every age and purge
    /// comparison uses and the encoding keeps, converted once per write instead of per read.
    stored_at: u64,
    ttl: Option<Duration>,
    grace: Duration,
    /// `None` for untagged entries.
    tags: Option<Arc<[String]>>,
    /// What a reader decoded from the value, kept beside it (see [`Entry::decoded`]).
    // Read by the response cache (feature `cache`) only.
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    memo: OnceLock<Arc<dyn Any + Send + Sync>>,
    /// Made stale by a soft purge (its TTL cut to end then).
    soft_purged: bool,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&*self.0, &*other.0);
        a.value == b.value
            && a.stored_at == b.stored_at
            && a.ttl == b.ttl
            && a.grace == b.grace
            && a.tags == b.tags
            && a.soft_purged == b.soft_purged
    }
}

impl Eq for Entry {}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("value", &self.0.value)
            .field("stored_at", &self.stored_at())
            .field("ttl", &self.0.ttl)
            .field("grace", &self.0.grace)
            .field("tags", &self.tags())
            .finish()
    }
}

impl Entry {
    fn from_parts(
        value: Bytes,
        stored_at: u64,
        ttl: Option<Duration>,
        grace: Duration,
        tags: Option<Arc<[String]>>,
    ) -> Self {
        Entry(Arc::new(Parts {
            value,
            stored_at,
            ttl,
            grace,
            tags,
            memo: OnceLock::new(),
            soft_purged: false,
        }))
    }

    /// A new entry stored now, or as of [`SetOptions::as_of`] if that is earlier.
    pub fn new(value: Bytes, options: &SetOptions) -> Self {
        let now = micros(SystemTime::now());
        Entry::from_parts(
            value,
            options.as_of.map_or(now, |t| micros(t).min(now)),
            options.ttl,
            options.grace,
            (!options.tags.is_empty()).then(|| options.tags.clone()),
        )
    }

    /// The value decoded by `decode`, once per stored entry: the clones an in-process store
    /// hands out share the decoded form. `None` when `decode` fails (never remembered) or when
    /// another reader remembered a value of another type.
    #[cfg(feature = "cache")]
    pub(crate) fn decoded<T, F>(&self, decode: F) -> Option<Arc<T>>
    where
        T: Any + Send + Sync,
        F: FnOnce(&Bytes) -> Option<T>,
    {
        if let Some(done) = self.0.memo.get() {
            return done.clone().downcast::<T>().ok();
        }
        let value = Arc::new(decode(&self.0.value)?);
        // A reader that raced this one may have won: either value is the same decoding.
        let _ = self.0.memo.set(value.clone());
        Some(value)
    }

    /// The stored bytes.
    pub fn value(&self) -> &Bytes {
        &self.0.value
    }

    /// The stored bytes, by value.
    pub fn into_value(self) -> Bytes {
        self.0.value.clone()
    }

    /// When the entry was stored (by the writer's clock).
    pub fn stored_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0.stored_at)
    }

    /// How long the entry is fresh after it was stored; `None` means it never goes stale.
    pub fn ttl(&self) -> Option<Duration> {
        self.0.ttl
    }

    /// How long the entry may be served stale after its TTL ran out.
    pub fn grace(&self) -> Duration {
        self.0.grace
    }

    /// The entry's tags.
    pub fn tags(&self) -> &[String] {
        self.0.tags.as_deref().unwrap_or_default()
    }

    /// Time since the entry was stored (zero if the writer's clock was ahead).
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.stored_at())
            .unwrap_or_default()
    }

    /// True when the entry's TTL has run out: it is inside its grace period. A store never
    /// returns an entry past its grace period.
    pub fn is_stale(&self) -> bool {
        self.0.ttl.is_some_and(|ttl| self.age() >= ttl)
    }

    /// Freshness left: `None` for an entry without TTL, zero once stale.
    pub fn time_to_stale(&self) -> Option<Duration> {
        self.0.ttl.map(|ttl| ttl.saturating_sub(self.age()))
    }

    /// How long the store keeps the entry: TTL plus grace, `None` when unbounded.
    pub fn retention(&self) -> Option<Duration> {
        self.0.ttl.map(|ttl| ttl.saturating_add(self.0.grace))
    }

    /// Time left before the store drops the entry (its TTL and grace both run out): `None`
    /// when unbounded.
    pub fn time_to_expiry(&self) -> Option<Duration> {
        self.retention().map(|l| l.saturating_sub(self.age()))
    }

    /// True when the entry is past TTL and grace: it must not be served at all.
    pub fn is_expired(&self) -> bool {
        self.time_to_expiry() == Some(Duration::ZERO)
    }

    /// Whether a soft purge made the entry stale: a reader on a coarse clock must not judge its
    /// freshness, which ends at the purge, to the microsecond.
    #[cfg(feature = "cache")]
    pub(crate) fn is_soft_purged(&self) -> bool {
        self.0.soft_purged
    }

    /// Time since the entry was stored, as of `now` (microseconds since the epoch).
    #[cfg(feature = "cache")]
    pub(crate) fn age_at(&self, now: u64) -> Duration {
        Duration::from_micros(now.saturating_sub(self.stored_at_micros()))
    }

    pub(crate) fn stored_at_micros(&self) -> u64 {
        self.0.stored_at
    }

    /// This entry soft-purged at `at` (microseconds since the epoch): stale from then on, and
    /// gone once its grace period after `at` has run out. The TTL is cut to end at `at`; an
    /// entry stored after `at` is returned unchanged.
    #[cfg(any(feature = "memory", feature = "redis"))]
    pub(crate) fn soft_purged(mut self, at: u64) -> Self {
        let stored = self.stored_at_micros();
        if at < stored {
            return self;
        }
        let cut = Duration::from_micros(at - stored);
        let parts = Arc::make_mut(&mut self.0);
        parts.ttl = Some(parts.ttl.map_or(cut, |ttl| ttl.min(cut)));
        parts.soft_purged = true;
        self
    }

    /// Encodes the entry in the versioned binary entry format (see the module docs).
    pub fn encode(&self) -> Bytes {
        let tag_bytes: usize = self.tags().iter().map(|t| 2 + t.len()).sum();
        let mut buf = BytesMut::with_capacity(HEADER_LEN + tag_bytes + self.0.value.len());
        buf.put_slice(MAGIC);
        buf.put_u8(FORMAT_VERSION);
        buf.put_u8(u8::from(self.0.ttl.is_some()));
        buf.put_u64(self.stored_at_micros());
        buf.put_u64(self.0.ttl.map_or(0, duration_millis));
        buf.put_u64(duration_millis(self.0.grace));
        buf.put_u16(self.tags().len() as u16);
        for tag in self.tags() {
            buf.put_u16(tag.len() as u16);
            buf.put_slice(tag.as_bytes());
        }
        buf.put_slice(&self.0.value);
        buf.freeze()
    }

    /// Decodes an entry written by [`Entry::encode`]. The value is a slice of `bytes`: no copy.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when the bytes are not an entry of a known format version.
    pub fn decode(bytes: Bytes) -> Result<Self, StoreError> {
        let corrupt = |reason| StoreError::Corrupt { reason };
        if bytes.len() < HEADER_LEN || &bytes[..2] != MAGIC {
            return Err(corrupt("not a tower-strata entry"));
        }
        let mut cursor = &bytes[2..];
        if cursor.get_u8() != FORMAT_VERSION {
            return Err(corrupt("unknown entry format version"));
        }
        let has_ttl = cursor.get_u8() == 1;
        let stored_at = cursor.get_u64();
        let ttl_ms = cursor.get_u64();
        let grace = Duration::from_millis(cursor.get_u64());
        let tag_count = cursor.get_u16() as usize;
        if tag_count == 0 {
            let offset = bytes.len() - cursor.remaining();
            return Ok(Entry::from_parts(
                bytes.slice(offset..),
                stored_at,
                has_ttl.then(|| Duration::from_millis(ttl_ms)),
                grace,
                None,
            ));
        }
        let mut tags = Vec::with_capacity(tag_count);
        for _ in 0..tag_count {
            if cursor.remaining() < 2 {
                return Err(corrupt("truncated tag list"));
            }
            let len = cursor.get_u16() as usize;
            if cursor.remaining() < len {
                return Err(corrupt("truncated tag"));
            }
            let tag =
                std::str::from_utf8(&cursor[..len]).map_err(|_| corrupt("tag is not UTF-8"))?;
            tags.push(tag.to_owned());
            cursor.advance(len);
        }
        let offset = bytes.len() - cursor.remaining();
        Ok(Entry::from_parts(
            bytes.slice(offset..),
            stored_at,
            has_ttl.then(|| Duration::from_millis(ttl_ms)),
            grace,
            Some(tags.into()),
        ))
    }
}

const MAGIC: &[u8; 2] = b"TS";
const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 2 + 1 + 1 + 8 + 8 + 8 + 2;

pub(crate) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros().min(u64::MAX as u128) as u64)
}

/// The wall clock, read from a process-wide value that a background thread refreshes every
/// millisecond. A precise clock read costs ~50 ns on a virtual machine, more than a whole
/// in-memory hit, so expiry checks on the read path use this instead; they may see time up to
/// a tick (or a scheduling delay) late, so an entry can outlive its TTL by that much.
#[cfg(feature = "memory")]
pub(crate) fn coarse_now_micros() -> u64 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static NOW: AtomicU64 = AtomicU64::new(0);
    static TICKER: OnceLock<()> = OnceLock::new();
    TICKER.get_or_init(|| {
        NOW.store(now_micros(), Relaxed);
        let spawned = std::thread::Builder::new()
            .name("strata-clock".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_millis(1));
                    NOW.fetch_max(now_micros(), Relaxed);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no clock thread: expiry checks read the clock directly");
        }
    });
    // Never behind the precise clock by more than the thread's lag, and never ahead of it.
    match NOW.load(Relaxed) {
        0 => now_micros(),
        now => now,
    }
}

/// The coarse clock where there is one (feature `memory`), else the precise one: for ages
/// on the read path.
#[cfg(feature = "cache")]
pub(crate) fn clock_micros() -> u64 {
    #[cfg(feature = "memory")]
    {
        coarse_now_micros()
    }
    #[cfg(not(feature = "memory"))]
    {
        micros(SystemTime::now())
    }
}

#[cfg(any(feature = "memory", feature = "redis"))]
pub(crate) fn now_micros() -> u64 {
    micros(SystemTime::now())
}

fn duration_millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// How an entry is written: its TTL, grace period and tags.
///
/// ```
/// use std::time::Duration;
/// use tower_strata::store::SetOptions;
///
/// let options = SetOptions::new()
///     .ttl(Duration::from_secs(60))
///     .grace(Duration::from_secs(300))
///     .tags(["product:42", "products"]);
/// assert_eq!(options.get_tags().len(), 2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetOptions {
    ttl: Option<Duration>,
    grace: Duration,
    tags: Arc<[String]>,
    as_of: Option<SystemTime>,
}

impl SetOptions {
    /// No TTL, no grace, no tags.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// Sets how long the entry is fresh.
        fn ttl(ttl: Duration) => some ttl;

        /// Sets or clears the TTL.
        fn ttl_opt(ttl: Option<Duration>) => set ttl;

        /// Sets how long the entry may be served stale after its TTL (only with a TTL).
        fn grace(grace: Duration) => set grace;
    }

    /// Sets the entry's tags.
    pub fn tags(mut self, tags: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Records the entry as stored at `time` rather than now (a later time counts as now).
    ///
    /// A cache sets this to when it *began* fetching the value: if a tag purge happens while
    /// the fetch is in flight, the purge's invalidation mark is newer than the entry, so the
    /// value the fetch read before the purge is never served after it, even though it is
    /// written afterwards. The TTL runs from `time` too.
    pub fn as_of(mut self, time: SystemTime) -> Self {
        self.as_of = Some(time);
        self
    }

    /// The TTL.
    pub fn get_ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The grace period.
    pub fn get_grace(&self) -> Duration {
        self.grace
    }

    /// The tags.
    pub fn get_tags(&self) -> &[String] {
        &self.tags
    }
}

/// Limits a store enforces before any I/O, with a clear error for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes. Default 512.
    pub max_key_len: usize,
    /// Largest value, in bytes; larger values are refused, never truncated. Default 4 MiB.
    pub max_value_size: usize,
    /// Most tags on one entry. Default 64.
    pub max_tags: usize,
    /// Longest tag, in bytes. Default 1,024 (Fastly's limit for a surrogate key).
    pub max_tag_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_len: 512,
            max_value_size: 4 * 1024 * 1024,
            max_tags: 64,
            max_tag_len: 1024,
        }
    }
}

impl Limits {
    /// Checks a key's length only: what a read needs (a key with odd characters simply
    /// misses; writes check it fully).
    ///
    /// # Errors
    ///
    /// [`StoreError::KeyTooLong`] or [`StoreError::InvalidKey`] for an empty key.
    #[inline]
    pub fn check_key_len(&self, key: &str) -> Result<(), StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidKey {
                key: String::new(),
                reason: "key is empty",
            });
        }
        if key.len() > self.max_key_len {
            return Err(StoreError::KeyTooLong {
                len: key.len(),
                max: self.max_key_len,
            });
        }
        Ok(())
    }

    /// Checks a key: non-empty, within the length limit, no control characters.
    ///
    /// # Errors
    ///
    /// [`StoreError::KeyTooLong`] or [`StoreError::InvalidKey`].
    pub fn check_key(&self, key: &str) -> Result<(), StoreError> {
        self.check_key_len(key)?;
        // ASCII keys (the usual case) are checked byte by byte; others char by char for C1
        // controls.
        let has_control = if key.is_ascii() {
            key.bytes().any(|b| b.is_ascii_control())
        } else {
            key.chars().any(char::is_control)
        };
        if has_control {
            return Err(StoreError::InvalidKey {
                key: cut(key),
                reason: "key contains a control character",
            });
        }
        Ok(())
    }

    /// Checks a value's size and the options' tags.
    ///
    /// # Errors
    ///
    /// [`StoreError::ValueTooLarge`] or [`StoreError::InvalidTag`].
    pub fn check_entry(&self, value: &[u8], options: &SetOptions) -> Result<(), StoreError> {
        if value.len() > self.max_value_size {
            return Err(StoreError::ValueTooLarge {
                len: value.len(),
                max: self.max_value_size,
            });
        }
        if options.tags.len() > self.max_tags {
            return Err(StoreError::InvalidTag {
                tag: cut(&options.tags[self.max_tags]),
                reason: "too many tags on one entry",
            });
        }
        for tag in options.tags.iter() {
            self.check_tag(tag)?;
        }
        Ok(())
    }

    /// Checks a write: the key in full, then the value and its tags.
    #[cfg(any(feature = "memory", feature = "redis"))]
    pub(crate) fn check_set(
        &self,
        key: &str,
        value: &[u8],
        options: &SetOptions,
    ) -> Result<(), StoreError> {
        self.check_key(key)?;
        self.check_entry(value, options)
    }

    /// A batch's entries, once [`Limits::check_set`] passed for every item: none is written
    /// unless all pass.
    #[cfg(any(feature = "memory", feature = "redis"))]
    pub(crate) fn checked_entries<'k>(
        &self,
        items: &[(&'k str, Bytes)],
        options: &SetOptions,
    ) -> Result<Vec<(&'k str, Entry)>, StoreError> {
        items
            .iter()
            .try_for_each(|(key, value)| self.check_set(key, value, options))?;
        Ok(items
            .iter()
            .map(|(key, value)| (*key, Entry::new(value.clone(), options)))
            .collect())
    }

    /// Checks one tag: non-empty, within the length limit, no whitespace or control characters
    /// (tags travel in space-separated headers).
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidTag`].
    pub fn check_tag(&self, tag: &str) -> Result<(), StoreError> {
        let reason = if tag.is_empty() {
            "tag is empty"
        } else if tag.len() > self.max_tag_len.min(u16::MAX as usize) {
            "tag is over the length limit"
        } else if tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
            "tag contains whitespace or a control character"
        } else {
            return Ok(());
        };
        Err(StoreError::InvalidTag {
            tag: cut(tag),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let options = SetOptions::new()
            .ttl(Duration::from_secs(30))
            .grace(Duration::from_secs(5))
            .tags(["a", "bé"]);
        let entry = Entry::new(Bytes::from_static(b"hello \x00 world"), &options);
        let decoded = Entry::decode(entry.encode()).unwrap();
        assert_eq!(decoded.value(), entry.value());
        assert_eq!(decoded.ttl(), Some(Duration::from_secs(30)));
        assert_eq!(decoded.grace(), Duration::from_secs(5));
        assert_eq!(decoded.tags(), ["a", "bé"]);
        assert_eq!(decoded.stored_at_micros(), entry.stored_at_micros());
    }

    #[test]
    fn decode_rejects_garbage() {
        for bad in [
            &b""[..],
            b"TS",
            b"{\"json\":1}",
            &[
                b'T', b'S', 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0,
            ],
        ] {
            assert!(matches!(
                Entry::decode(Bytes::copy_from_slice(bad)),
                Err(StoreError::Corrupt { .. })
            ));
        }
        // A tag count that points past the end.
        let mut e = Entry::new(Bytes::new(), &SetOptions::new())
            .encode()
            .to_vec();
        let n = e.len();
        e[n - 1] = 5;
        assert!(Entry::decode(Bytes::from(e)).is_err());
    }

    #[test]
    fn staleness() {
        let fresh = Entry::new(
            Bytes::new(),
            &SetOptions::new().ttl(Duration::from_secs(60)),
        );
        assert!(!fresh.is_stale());
        let mut old = fresh.clone();
        Arc::make_mut(&mut old.0).stored_at = micros(SystemTime::now() - Duration::from_secs(61));
        assert!(old.is_stale());
        assert!(old.is_expired());
        Arc::make_mut(&mut old.0).grace = Duration::from_secs(60);
        assert!(!old.is_expired());
        let forever = Entry::new(Bytes::new(), &SetOptions::new());
        assert!(!forever.is_stale() && !forever.is_expired());
    }

    #[test]
    fn limits() {
        let limits = Limits::default();
        assert!(limits.check_key("").is_err());
        assert!(limits.check_key(&"k".repeat(513)).is_err());
        assert!(limits.check_key("a\nb").is_err());
        assert!(limits.check_key("product:42").is_ok());
        let big = vec![0u8; limits.max_value_size + 1];
        assert!(matches!(
            limits.check_entry(&big, &SetOptions::new()),
            Err(StoreError::ValueTooLarge { .. })
        ));
        assert!(
            limits
                .check_entry(b"x", &SetOptions::new().tags(["a b"]))
                .is_err()
        );
        assert!(
            limits
                .check_entry(
                    b"x",
                    &SetOptions::new().tags((0..65).map(|i| i.to_string()))
                )
                .is_err()
        );
    }
}
