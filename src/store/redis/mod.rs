//! [`RedisStore`]: a shared store on Redis, with timeouts on every command and a pub/sub
//! backplane.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

mod connection;
mod scripts;

pub(crate) use self::connection::{Batch, RedisConn, ScanNode, Target, Timeouts};
#[cfg(feature = "redis-cluster")]
pub(crate) use self::connection::{channel_route, cluster_client};
use self::scripts::{DELETE_IF_OLDER, INCR_WITH_TTL, REPLACE_IF_SAME};
use super::backplane::{BusOp, BusShared, Listener};
use super::breaker::{Breaker, BreakerSettings};
use super::entry::now_micros;
use super::marks::{TagMarks, Verdict};
use super::stats::BreakerState;
use super::stats::Counters;
use super::subscriber::{self, SubscribeConfig};
use super::{
    Entry, KeyPattern, Limits, Pattern, PurgeMode, SetOptions, Store, StoreError, StoreStats,
};

/// Keys unlinked per pipeline by background clean-up and pattern deletes.
const BATCH: usize = 500;
/// Keys asked of each `SCAN` page.
const SCAN_COUNT: usize = 1000;

/// A [`Store`] on Redis (feature `redis`), one server or a Redis Cluster (feature
/// `redis-cluster`; see [`RedisStore::builder`] for the URLs and the [module
/// docs](super#redis-key-layout-and-cluster-slots) for what runs where).
///
/// - One multiplexed, auto-reconnecting connection (redis-rs's `ConnectionManager`, or its
///   Cluster connection), connected lazily: building the store never blocks on Redis.
/// - Every command is bounded by the command timeout (default 500 ms): a hung Redis turns into
///   [`StoreError::Timeout`], never a hung request.
/// - Batches are pipelines: [`Store::get_many`] and [`Store::set_many`] cost one round trip.
/// - An entry is written together with its tag-index memberships in one `MULTI`.
/// - Tag purges are constant-cost invalidation marks; see the [module docs](super) for the
///   design and the key layout.
/// - A backplane (pub/sub on `ns:bus`, sharded on a Cluster) tells other instances what was
///   invalidated; it can be turned off with [`RedisStoreBuilder::backplane`]. A write or
///   invalidation that publishes returns once the channel has as many subscribers as it had
///   with every instance there (one `PUBSUB NUMSUB` or `SHARDNUMSUB` round trip, and a wait of at most 1 s while an instance whose
///   subscription dropped resubscribes): its local copies are dropped before the write
///   returns.
///
/// Cloning is cheap; clones share the connection. Must be built inside a Tokio runtime.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: RedisConn,
    prefix: String,
    limits: Limits,
    timeout: Duration,
    mark_ttl: Duration,
    publish_writes: bool,
    counters: Counters,
    breaker: Option<Breaker>,
    /// Invalidation marks known locally: tag -> last hard and soft purges (0: never).
    marks: Arc<quick_cache::sync::Cache<String, TagMarks>>,
    bus: Option<Arc<BusShared>>,
    _shutdown: Option<oneshot::Sender<()>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("backplane", &self.inner.bus.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`].
#[derive(Clone, Debug)]
pub struct RedisStoreBuilder {
    url: String,
    namespace: String,
    limits: Limits,
    timeout: Duration,
    connect_timeout: Duration,
    backplane: bool,
    ping_interval: Duration,
    known_marks: usize,
    mark_ttl: Duration,
    index_sweep_interval: Option<Duration>,
    publish_writes: bool,
    breaker: Option<BreakerSettings>,
}

impl RedisStoreBuilder {
    /// Namespace prefix of every key (default `strata`). Must not be empty or contain `:`-free
    /// control characters.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Limits enforced on keys, values and tags.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Bound on every command, connection included (default 500 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bound on establishing a connection (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether to run the pub/sub backplane (default on). Without it, other instances are not
    /// told of invalidations and tagged reads re-read their tags' marks every time (two round
    /// trips), since no push keeps known marks fresh.
    pub fn backplane(mut self, enabled: bool) -> Self {
        self.backplane = enabled;
        self
    }

    /// How often the backplane pings its connection to notice a dead peer (default 1 s).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Whether writes (`set`, `set_many`) are announced on the backplane (default on), so other
    /// instances' tiered stores drop their L1 copies of overwritten keys. Turn it off when no
    /// instance keeps an L1 over this namespace: each write then saves a `PUBLISH` and every
    /// subscriber a message. Deletes, tag purges, pattern deletes and clears are always
    /// announced.
    pub fn publish_writes(mut self, enabled: bool) -> Self {
        self.publish_writes = enabled;
        self
    }

    /// How many tags' invalidation marks to remember locally (default 100,000).
    pub fn known_marks(mut self, capacity: usize) -> Self {
        self.known_marks = capacity;
        self
    }

    /// How long a tag's invalidation mark is kept in Redis (default 7 days): longer than the
    /// longest entry lifetime you use, so no entry outlives the mark that hides it. The
    /// background clean-up removes the purged entries long before that.
    pub fn mark_ttl(mut self, ttl: Duration) -> Self {
        self.mark_ttl = ttl;
        self
    }

    /// How often to drop dead members (expired entries) from tag index sets (default 5 min;
    /// `None` turns it off). Runs in the background.
    pub fn index_sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.index_sweep_interval = interval;
        self
    }

    /// The circuit breaker on the store's commands (default: open after
    /// [`DEFAULT_BREAKER_FAILURES`](super::DEFAULT_BREAKER_FAILURES) consecutive timeouts or
    /// connection failures, probe after
    /// [`DEFAULT_BREAKER_COOL_DOWN`](super::DEFAULT_BREAKER_COOL_DOWN)); `None` turns it off,
    /// and every call then waits out its own timeout. While it is open, calls fail at once
    /// with [`StoreError::CircuitOpen`]: a cache in front passes through to its origin instead
    /// of waiting on a Redis that hangs.
    pub fn breaker(mut self, settings: Option<BreakerSettings>) -> Self {
        self.breaker = settings;
        self
    }

    /// Builds the store without contacting Redis.
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] for an invalid URL or namespace, or when not called inside a Tokio
    /// runtime.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        if self.namespace.is_empty() || self.namespace.chars().any(char::is_control) {
            return Err(StoreError::Config(format!(
                "namespace {:?} must be non-empty and free of control characters",
                self.namespace
            )));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(StoreError::Config("timeouts must be above zero".into()));
        }
        if self.breaker.is_some_and(|b| b.failures == 0) {
            return Err(StoreError::Config(
                "the breaker needs at least one failure to open".into(),
            ));
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::Config("RedisStore must be built inside a Tokio runtime".into())
        })?;
        let target = Target::parse(&self.url).map_err(StoreError::Config)?;
        let timeouts = Timeouts {
            connect: self.connect_timeout,
            response: self.timeout,
        };
        let conn = target
            .connect_lazily(timeouts)
            .map_err(StoreError::Config)?;
        let marks = Arc::new(quick_cache::sync::Cache::new(self.known_marks.max(16)));
        let prefix = self.namespace.clone();
        let (bus, shutdown) = if self.backplane {
            let shared = BusShared::new(format!("{prefix}:bus"));
            let (tx, rx) = oneshot::channel();
            let listener = Listener {
                shared: shared.clone(),
                on_op: {
                    let marks = marks.clone();
                    move |op: &BusOp| {
                        if let BusOp::Tags { tags, at, soft } = op {
                            for tag in tags {
                                raise_mark(&marks, tag, TagMarks::at(*at, *soft));
                            }
                        }
                    }
                },
                on_resync: {
                    let marks = marks.clone();
                    move || marks.clear()
                },
            };
            handle.spawn(subscriber::listen(
                target,
                shared.channel.clone(),
                SubscribeConfig {
                    connect_timeout: self.connect_timeout,
                    ping_interval: self.ping_interval,
                },
                rx,
                listener,
            ));
            (Some(shared), Some(tx))
        } else {
            (None, None)
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn,
                prefix,
                limits: self.limits,
                timeout: self.timeout,
                mark_ttl: self.mark_ttl,
                publish_writes: self.publish_writes,
                counters: Counters::default(),
                breaker: self
                    .breaker
                    .map(|settings| Breaker::new("redis store", settings)),
                marks,
                bus,
                _shutdown: shutdown,
            }),
        };
        if let Some(interval) = self.index_sweep_interval {
            let weak = Arc::downgrade(&store.inner);
            handle.spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.tick().await;
                loop {
                    ticker.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = (RedisStore { inner }).sweep_index().await {
                        tracing::debug!(error = %e, "redis store: index sweep failed");
                    }
                }
            });
        }
        Ok(store)
    }
}

/// `redis_version` from an `INFO server` reply.
fn server_version(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The longest a write waits for the backplane's subscribers to be back (see
/// `RedisStore::fence`).
const FENCE_BOUND: Duration = Duration::from_secs(1);
const FENCE_POLL: Duration = Duration::from_millis(5);

fn raise_mark(marks: &quick_cache::sync::Cache<String, TagMarks>, tag: &str, mark: TagMarks) {
    let current = marks.get(tag);
    let mut raised = current.unwrap_or_default();
    raised.raise(mark);
    if current != Some(raised) {
        marks.insert(tag.to_owned(), raised);
    }
}

impl RedisStore {
    /// A builder for a store at `url`:
    ///
    /// - `redis://[user:password@]host:port[/db]`, or `redis+unix:///path.sock`: one server;
    /// - `rediss://...`: one server over TLS (feature `redis-tls`; `#insecure` at the end
    ///   skips certificate checks, for tests only);
    /// - `redis-cluster://[user:password@]host:port,host:port,...` (`rediss-cluster://` over
    ///   TLS): a Redis Cluster, from any of its nodes (feature `redis-cluster`). See the
    ///   [module docs](super#redis-key-layout-and-cluster-slots) for what runs where.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            namespace: "strata".into(),
            limits: Limits::default(),
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            backplane: true,
            ping_interval: Duration::from_secs(1),
            known_marks: 100_000,
            mark_ttl: Duration::from_secs(7 * 24 * 3600),
            index_sweep_interval: Some(Duration::from_secs(300)),
            publish_writes: true,
            breaker: Some(BreakerSettings::default()),
        }
    }

    /// A store at `url` with the default settings.
    ///
    /// # Errors
    ///
    /// See [`RedisStoreBuilder::build`].
    pub fn new(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    /// The namespace prefix.
    pub fn namespace(&self) -> &str {
        &self.inner.prefix
    }

    /// Whether the backplane is subscribed right now.
    pub fn backplane_connected(&self) -> bool {
        self.inner
            .bus
            .as_ref()
            .is_some_and(|b| b.connected.load(Relaxed))
    }

    /// How many times the backplane has subscribed (0 before the first time).
    pub(crate) fn backplane_subscriptions(&self) -> u64 {
        self.inner
            .bus
            .as_ref()
            .map_or(0, |b| b.reconnects.load(Relaxed))
    }

    /// Waits, after publishing an invalidation that `reached` subscribers (the publish's own
    /// reply), until the backplane channel has as many subscribers as it had when every
    /// instance was there (at most [`FENCE_BOUND`]): an instance whose subscription dropped
    /// around the publish has then resubscribed, and so dropped its local copies, before this
    /// write returns. Without it, a read on that instance right after the write could still
    /// find the old value in its L1. Past the bound, the lower count is taken as the new
    /// normal (an instance left). When the publish reached everyone, as it nearly always does,
    /// this costs nothing: no round trip beyond the publish.
    async fn fence(&self, reached: u64) {
        let Some(bus) = &self.inner.bus else {
            return;
        };
        if reached >= bus.expected.fetch_max(reached, Relaxed) {
            return;
        }
        let deadline = tokio::time::Instant::now() + FENCE_BOUND;
        loop {
            let mut conn = self.inner.conn.clone();
            let Ok(now) = self
                .run("pubsub numsub", conn.subscribers(&bus.channel))
                .await
            else {
                return;
            };
            let expected = bus.expected.fetch_max(now, Relaxed);
            if now >= expected {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                bus.expected.store(now, Relaxed);
                tracing::warn!(
                    expected,
                    now,
                    "backplane: fewer subscribers than before; taking it as the new normal"
                );
                return;
            }
            tokio::time::sleep(FENCE_POLL).await;
        }
    }

    /// Sends `PING` and returns the round-trip time: a health check.
    ///
    /// # Errors
    ///
    /// [`StoreError::Timeout`] or [`StoreError::Backend`].
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let started = std::time::Instant::now();
        let mut conn = self.inner.conn.clone();
        let _: String = self
            .run("ping", redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(started.elapsed())
    }

    #[cfg(feature = "memory")]
    pub(crate) fn subscribe(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<super::backplane::BusEvent>> {
        self.inner.bus.as_ref().map(|b| b.events.subscribe())
    }

    fn key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.inner.prefix.len() + 3 + key.len());
        full.push_str(&self.inner.prefix);
        full.push_str(":k:");
        full.push_str(key);
        full
    }

    fn mark_key(&self, tag: &str) -> String {
        format!("{}:m:{tag}", self.inner.prefix)
    }

    fn soft_mark_key(&self, tag: &str) -> String {
        format!("{}:s:{tag}", self.inner.prefix)
    }

    fn index_key(&self, tag: &str) -> String {
        format!("{}:i:{tag}", self.inner.prefix)
    }

    /// Runs a Redis call under the command timeout and the circuit breaker, counting
    /// failures. The call is a future not yet polled: refused by an open breaker, it is
    /// dropped without sending anything.
    async fn run<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        // The ticket goes with this future: dropped unanswered (a cancelled request), a
        // probe's ticket gives the probe back.
        let ticket = match self.inner.breaker.as_ref().map(Breaker::admit) {
            Some(Err(_)) => return Err(StoreError::CircuitOpen { op }),
            Some(Ok(ticket)) => Some(ticket),
            None => None,
        };
        let (result, backend_down) = match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(Ok(value)) => {
                if let Some(ticket) = ticket {
                    ticket.success();
                }
                return Ok(value);
            }
            Ok(Err(e)) if e.is_timeout() => (
                StoreError::Timeout {
                    op,
                    after: self.inner.timeout,
                },
                true,
            ),
            Ok(Err(e)) => {
                // An answer (a script or type error) says the server is there.
                let down = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error();
                (StoreError::backend(op, e), down)
            }
            Err(_) => (
                StoreError::Timeout {
                    op,
                    after: self.inner.timeout,
                },
                true,
            ),
        };
        if let Some(ticket) = ticket {
            if backend_down {
                ticket.failure();
            } else {
                ticket.success();
            }
        }
        self.inner.counters.error(&result);
        Err(result)
    }

    /// Asks the server its version and refuses one older than Redis 7.0, whose `PEXPIRE`
    /// lacks the `NX`/`GT` options the tag index needs. Building the store never contacts
    /// Redis; call this at start-up to fail there, with a clear message, rather than on the
    /// first tagged write. Returns the version (`7.2.4`; Valkey reports its Redis-compatible
    /// one).
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] for a server older than 7.0 or one that does not say its
    /// version; the command's error when Redis cannot be reached.
    pub async fn check_server(&self) -> Result<String, StoreError> {
        let mut conn = self.inner.conn.clone();
        let info = self.run("info server", conn.info_server()).await?;
        let version = server_version(&info).ok_or_else(|| {
            StoreError::Config("the server did not report a redis_version in INFO".into())
        })?;
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(0);
        if major < 7 {
            return Err(StoreError::Config(format!(
                "Redis {version} is too old: tower-strata needs Redis 7.0 or later \
                 (PEXPIRE ... NX/GT keeps the tag index's expiry)"
            )));
        }
        Ok(version.to_owned())
    }

    /// The state of the circuit breaker on the store's commands (`None` when turned off).
    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.inner.breaker.as_ref().map(Breaker::state)
    }

    /// Queues the backplane publish of `op` as the batch's last command, when there is a
    /// backplane; [`run_publishing`](Self::run_publishing) reads its reply.
    fn publish(&self, pipe: &mut Batch, op: BusOp) {
        if let Some(bus) = &self.inner.bus {
            pipe.cmd(self.inner.conn.publish_command())
                .arg(bus.channel.as_str())
                .arg(bus.encode(op));
        }
    }

    /// Runs a batch that ends with [`publish`](Self::publish) (when there is a backplane) and
    /// returns the replies of the other commands, and how many subscribers the publish
    /// reached, for [`fence`](Self::fence).
    async fn run_publishing<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &Batch,
    ) -> Result<(T, u64), StoreError> {
        let mut conn = self.inner.conn.clone();
        let mut replies: Vec<redis::Value> = self.run(op, conn.run_batch(pipe)).await?;
        let reached = match &self.inner.bus {
            Some(_) => replies
                .pop()
                .and_then(|reply| <u64 as redis::FromRedisValue>::from_redis_value(reply).ok())
                .unwrap_or(0),
            None => 0,
        };
        let rest = T::from_redis_value(redis::Value::Array(replies))
            .map_err(|e| StoreError::backend(op, redis::RedisError::from(e)))?;
        Ok((rest, reached))
    }

    /// Drops entries whose tags were purged after they were stored, and marks stale those
    /// soft-purged since. Marks not known locally (or all of them, while the backplane is down)
    /// are fetched in one pipelined round trip.
    async fn filter_invalidated(&self, entries: &mut [Option<Entry>]) -> Result<(), StoreError> {
        let trust_local = self.backplane_connected();
        let mut unknown: Vec<String> = Vec::new();
        for entry in entries.iter().flatten() {
            for tag in entry.tags() {
                let known = trust_local && self.inner.marks.get(tag.as_str()).is_some();
                if !known && !unknown.contains(tag) {
                    unknown.push(tag.clone());
                }
            }
        }
        let mut fetched = std::collections::HashMap::new();
        if !unknown.is_empty() {
            let mut pipe = Batch::new();
            for tag in &unknown {
                pipe.cmd("GET").arg(self.mark_key(tag));
                pipe.cmd("GET").arg(self.soft_mark_key(tag));
            }
            let mut conn = self.inner.conn.clone();
            let marks: Vec<Option<u64>> = self.run("get marks", conn.run_batch(&pipe)).await?;
            for (tag, pair) in unknown.into_iter().zip(marks.chunks(2)) {
                let mark = TagMarks {
                    hard: pair[0].unwrap_or(0),
                    soft: pair.get(1).copied().flatten().unwrap_or(0),
                };
                if trust_local {
                    raise_mark(&self.inner.marks, &tag, mark);
                }
                fetched.insert(tag, mark);
            }
        }
        for slot in entries.iter_mut() {
            let Some(entry) = slot.take() else { continue };
            if entry.tags().is_empty() {
                *slot = Some(entry);
                continue;
            }
            let mut marks = TagMarks::default();
            for tag in entry.tags() {
                if let Some(mark) = fetched
                    .get(tag)
                    .copied()
                    .or_else(|| self.inner.marks.get(tag.as_str()))
                {
                    marks.raise(mark);
                }
            }
            *slot = match marks.verdict(entry.stored_at_micros()) {
                Verdict::Valid => Some(entry),
                Verdict::Invalid => None,
                Verdict::Soft(at) => Some(entry.soft_purged(at)).filter(|e| !e.is_expired()),
            };
        }
        Ok(())
    }

    fn decode(&self, raw: Option<Vec<u8>>) -> Result<Option<Entry>, StoreError> {
        match raw {
            None => Ok(None),
            Some(raw) => Entry::decode(Bytes::from(raw)).map(Some).inspect_err(|e| {
                self.inner.counters.error(e);
            }),
        }
    }

    fn count_reads(&self, entries: &[Option<Entry>]) {
        for entry in entries {
            match entry {
                Some(entry) => self.inner.counters.hit(entry.is_stale()),
                None => Counters::add(&self.inner.counters.misses, 1),
            }
        }
    }

    fn queue_set(&self, pipe: &mut Batch, key: &str, entry: &Entry) {
        let redis_key = self.key(key);
        let lifetime_ms = entry
            .lifetime()
            .map(|l| (l.as_millis().min(i64::MAX as u128) as u64).max(1));
        let cmd = pipe.cmd("SET").arg(&redis_key).arg(entry.encode().as_ref());
        if let Some(ms) = lifetime_ms {
            cmd.arg("PX").arg(ms);
        }
        cmd.ignore();
        for tag in entry.tags() {
            let index = self.index_key(tag);
            pipe.cmd("SADD").arg(&index).arg(key).ignore();
            match lifetime_ms {
                // The index set lives as long as its longest-lived member: NX sets a TTL on a
                // new set, GT extends it.
                Some(ms) => {
                    pipe.cmd("PEXPIRE").arg(&index).arg(ms).arg("NX").ignore();
                    pipe.cmd("PEXPIRE").arg(&index).arg(ms).arg("GT").ignore();
                }
                None => {
                    pipe.cmd("PERSIST").arg(&index).ignore();
                }
            }
        }
    }

    /// Writes a prepared entry (the tiered store hands over entries it already built).
    pub(crate) async fn set_entries(&self, items: &[(&str, Entry)]) -> Result<(), StoreError> {
        let mut pipe = Batch::new();
        // MULTI only where an entry and its index memberships must land together.
        if items.iter().any(|(_, e)| !e.tags().is_empty()) {
            pipe.atomic();
        }
        for (key, entry) in items {
            self.queue_set(&mut pipe, key, entry);
        }
        if !self.inner.publish_writes {
            let mut conn = self.inner.conn.clone();
            self.run("set", conn.run_batch::<()>(&pipe)).await?;
            Counters::add(&self.inner.counters.sets, items.len() as u64);
            return Ok(());
        }
        self.publish(
            &mut pipe,
            BusOp::Keys {
                keys: items.iter().map(|(k, _)| (*k).to_owned()).collect(),
            },
        );
        let ((), reached) = self.run_publishing("set", &pipe).await?;
        Counters::add(&self.inner.counters.sets, items.len() as u64);
        self.fence(reached).await;
        Ok(())
    }

    /// Scans keys matching a Redis pattern and unlinks them in batches. Never `KEYS`.
    async fn unlink_scanning(&self, pattern: &str) -> Result<u64, StoreError> {
        let mut scan = self.scan(pattern).await?;
        let mut removed = 0u64;
        while let Some(keys) = self.next_page(&mut scan).await? {
            removed += self.unlink(&keys).await?;
        }
        Ok(removed)
    }

    /// `UNLINK`s full Redis keys in one pipeline; returns how many existed.
    async fn unlink(&self, full_keys: &[String]) -> Result<u64, StoreError> {
        if full_keys.is_empty() {
            return Ok(0);
        }
        let mut pipe = Batch::new();
        for key in full_keys {
            pipe.cmd("UNLINK").arg(key);
        }
        let mut conn = self.inner.conn.clone();
        let counts: Vec<u64> = self.run("unlink", conn.run_batch(&pipe)).await?;
        Ok(counts.iter().sum())
    }

    /// One `SSCAN` page of a tag index set: up to [`BATCH`] members.
    async fn index_page(&self, set: &str, cursor: u64) -> Result<(u64, Vec<String>), StoreError> {
        let mut conn = self.inner.conn.clone();
        self.run(
            "sscan",
            redis::cmd("SSCAN")
                .arg(set)
                .arg(cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn),
        )
        .await
    }

    /// Removes a purged tag's entries (those stored at or before `at`) in batches, then the
    /// scanned members from its index set. Runs in the background after [`Store::delete_tag`].
    async fn clean_tag(&self, tag: String, at: u64) -> Result<u64, StoreError> {
        let index = self.index_key(&tag);
        let mut conn = self.inner.conn.clone();
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, members) = self.index_page(&index, cursor).await?;
            if !members.is_empty() {
                let mut pipe = Batch::new();
                for member in &members {
                    pipe.cmd("EVAL")
                        .arg(DELETE_IF_OLDER)
                        .arg(1)
                        .arg(self.key(member))
                        .arg(at);
                }
                pipe.cmd("SREM").arg(&index).arg(&members).ignore();
                let counts: Vec<u64> = self.run("clean tag", conn.run_batch(&pipe)).await?;
                removed += counts.iter().sum::<u64>();
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Drops members of tag index sets whose entries no longer exist (expired). Runs on an
    /// interval in the background; returns how many members went.
    ///
    /// # Errors
    ///
    /// Backend errors and timeouts; the sweep stops at the first.
    pub async fn sweep_index(&self) -> Result<u64, StoreError> {
        let mut conn = self.inner.conn.clone();
        let pattern = format!("{}:i:*", Pattern::escape(&self.inner.prefix));
        let index_prefix = format!("{}:i:", self.inner.prefix);
        let mut scan = self.scan(&pattern).await?;
        let mut dropped = 0;
        while let Some(sets) = self.next_page(&mut scan).await? {
            for set in sets {
                let Some(tag) = set.strip_prefix(&index_prefix) else {
                    continue;
                };
                let tag = tag.to_owned();
                let mut set_cursor: u64 = 0;
                loop {
                    let (next_member, members) = self.index_page(&set, set_cursor).await?;
                    if !members.is_empty() {
                        let mut pipe = Batch::new();
                        for member in &members {
                            pipe.cmd("EXISTS").arg(self.key(member));
                        }
                        let exists: Vec<bool> = self.run("exists", conn.run_batch(&pipe)).await?;
                        let dead: Vec<&String> = members
                            .iter()
                            .zip(exists)
                            .filter(|(_, e)| !e)
                            .map(|(m, _)| m)
                            .collect();
                        if !dead.is_empty() {
                            let n: u64 = self
                                .run(
                                    "srem",
                                    redis::cmd("SREM")
                                        .arg(self.index_key(&tag))
                                        .arg(&dead)
                                        .query_async(&mut conn),
                                )
                                .await?;
                            dropped += n;
                        }
                    }
                    if next_member == 0 {
                        break;
                    }
                    set_cursor = next_member;
                }
            }
        }
        Ok(dropped)
    }

    /// `SADD` or `SREM` of `members`; an empty list is a no-op (Redis refuses it).
    async fn change_set(
        &self,
        op: &'static str,
        command: &str,
        key: &str,
        members: &[&str],
    ) -> Result<u64, StoreError> {
        self.inner.limits.check_key(key)?;
        if members.is_empty() {
            return Ok(0);
        }
        let mut conn = self.inner.conn.clone();
        self.run(
            op,
            redis::cmd(command)
                .arg(self.key(key))
                .arg(members)
                .query_async(&mut conn),
        )
        .await
    }

    pub(crate) async fn publish_op(&self, op: BusOp) -> Result<(), StoreError> {
        if self.inner.bus.is_none() {
            return Ok(());
        }
        let mut pipe = Batch::new();
        self.publish(&mut pipe, op);
        let ((), reached) = self.run_publishing("publish", &pipe).await?;
        self.fence(reached).await;
        Ok(())
    }

    /// Purges a tag as of `at`, hard or soft; returns the index size at that moment. A hard
    /// purge's entries are removed in the background; a soft purge's stay, stale, until their
    /// grace runs out.
    pub(crate) async fn purge_tag_at(
        &self,
        tag: &str,
        at: u64,
        soft: bool,
    ) -> Result<u64, StoreError> {
        self.inner.limits.check_tag(tag)?;
        let mut pipe = Batch::new();
        let mark_key = if soft {
            self.soft_mark_key(tag)
        } else {
            self.mark_key(tag)
        };
        // A plain SET: two purges racing from machines whose clocks disagree can leave the
        // earlier time in Redis. Each instance's known marks only ever rise (`raise_mark`).
        pipe.cmd("SET")
            .arg(mark_key)
            .arg(at)
            .arg("PX")
            .arg(self.inner.mark_ttl.as_millis().max(1) as u64)
            .ignore();
        pipe.cmd("SCARD").arg(self.index_key(tag));
        self.publish(
            &mut pipe,
            BusOp::Tags {
                tags: vec![tag.to_owned()],
                at,
                soft,
            },
        );
        let ((count,), reached): ((u64,), u64) = self.run_publishing("purge tag", &pipe).await?;
        raise_mark(&self.inner.marks, tag, TagMarks::at(at, soft));
        self.fence(reached).await;
        if soft {
            return Ok(count);
        }
        Counters::add(&self.inner.counters.deletes, count);
        let store = self.clone();
        let tag = tag.to_owned();
        tokio::spawn(async move {
            if let Err(e) = store.clean_tag(tag.clone(), at).await {
                tracing::warn!(tag, error = %e, "redis store: tag clean-up stopped; marks still hide the entries");
            }
        });
        Ok(count)
    }

    /// Soft-purges full Redis keys (`ns:k:...`) as of `at`: one pipeline of `GET`s, then one of
    /// compare-and-replace scripts. Returns how many entries were soft-purged.
    async fn soft_purge_raw(&self, full_keys: &[String], at: u64) -> Result<u64, StoreError> {
        if full_keys.is_empty() {
            return Ok(0);
        }
        let mut conn = self.inner.conn.clone();
        let mut pipe = Batch::new();
        for key in full_keys {
            pipe.cmd("GET").arg(key);
        }
        let raws: Vec<Option<Vec<u8>>> = self.run("soft purge read", conn.run_batch(&pipe)).await?;
        let mut pipe = Batch::new();
        let mut queued = 0;
        for (key, raw) in full_keys.iter().zip(raws) {
            // Counters and sets are not entries: left alone by a soft purge.
            let Some(Ok(entry)) = raw.map(|r| Entry::decode(Bytes::from(r))) else {
                continue;
            };
            let stored = entry.stored_at_micros();
            let soft = entry.soft_purged(at);
            let left_ms = soft
                .time_to_live()
                .map_or(i64::MAX, |l| l.as_millis().min(i64::MAX as u128) as i64);
            pipe.cmd("EVAL")
                .arg(REPLACE_IF_SAME)
                .arg(1)
                .arg(key)
                .arg(stored)
                .arg(soft.encode().as_ref())
                .arg(left_ms);
            queued += 1;
        }
        if queued == 0 {
            return Ok(0);
        }
        let done: Vec<u64> = self.run("soft purge write", conn.run_batch(&pipe)).await?;
        Ok(done.into_iter().filter(|&n| n > 0).count() as u64)
    }

    /// Starts a walk of the keys matching a Redis pattern: on a Cluster, of every master.
    async fn scan(&self, pattern: &str) -> Result<KeyScan, StoreError> {
        let mut conn = self.inner.conn.clone();
        let nodes = self.run("cluster slots", conn.scan_nodes()).await?;
        Ok(KeyScan {
            nodes,
            node: 0,
            cursor: 0,
            pattern: pattern.to_owned(),
        })
    }

    /// The next page of a walk (`SCAN` never blocks Redis); `None` once every node is done.
    async fn next_page(&self, scan: &mut KeyScan) -> Result<Option<Vec<String>>, StoreError> {
        let Some(node) = scan.nodes.get(scan.node) else {
            return Ok(None);
        };
        let mut conn = self.inner.conn.clone();
        let (next, keys) = self
            .run(
                "scan",
                conn.scan_page(node, scan.cursor, &scan.pattern, SCAN_COUNT),
            )
            .await?;
        if next == 0 {
            scan.node += 1;
        }
        scan.cursor = next;
        Ok(Some(keys))
    }

    /// Purges the entries whose keys match, page by page: `SCAN` never blocks Redis, a glob is
    /// matched by Redis and a regular expression here, on the keys each page returns.
    async fn purge_scanning(
        &self,
        pattern: &KeyPattern,
        mode: PurgeMode,
    ) -> Result<u64, StoreError> {
        let prefix = Pattern::escape(&self.inner.prefix);
        let (redis_pattern, regex) = match pattern {
            KeyPattern::Glob(glob) => (format!("{prefix}:k:{}", glob.as_str()), None),
            KeyPattern::Regex(regex) => (format!("{prefix}:k:*"), Some(regex)),
        };
        let strip = format!("{}:k:", self.inner.prefix);
        let at = now_micros();
        let mut scan = self.scan(&redis_pattern).await?;
        let mut purged = 0;
        while let Some(mut keys) = self.next_page(&mut scan).await? {
            if let Some(regex) = regex {
                keys.retain(|k| k.strip_prefix(&strip).is_some_and(|k| regex.is_match(k)));
            }
            purged += match mode {
                PurgeMode::Hard => self.unlink(&keys).await?,
                PurgeMode::Soft => self.soft_purge_raw(&keys, at).await?,
            };
        }
        Ok(purged)
    }
}

/// A walk of the keys matching a pattern, node by node, page by page.
struct KeyScan {
    nodes: Vec<ScanNode>,
    node: usize,
    cursor: u64,
    pattern: String,
}

impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.limits.check_key(key)?;
        let mut conn = self.inner.conn.clone();
        let raw: Option<Vec<u8>> = self
            .run(
                "get",
                redis::cmd("GET").arg(self.key(key)).query_async(&mut conn),
            )
            .await?;
        let mut found = [self.decode(raw)?];
        self.filter_invalidated(&mut found).await?;
        self.count_reads(&found);
        let [found] = found;
        Ok(found)
    }

    async fn set(&self, key: &str, value: Bytes, options: &SetOptions) -> Result<(), StoreError> {
        self.inner.limits.check_key(key)?;
        self.inner.limits.check_entry(&value, options)?;
        self.set_entries(&[(key, Entry::new(value, options))]).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.limits.check_key(key)?;
        let mut pipe = Batch::new();
        pipe.cmd("UNLINK").arg(self.key(key));
        self.publish(
            &mut pipe,
            BusOp::Keys {
                keys: vec![key.to_owned()],
            },
        );
        let ((n,), reached): ((u64,), u64) = self.run_publishing("delete", &pipe).await?;
        Counters::add(&self.inner.counters.deletes, n);
        self.fence(reached).await;
        Ok(n > 0)
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Entry>>, StoreError> {
        for key in keys {
            self.inner.limits.check_key(key)?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // A pipeline of GETs rather than MGET: one round trip, and no multi-key command that a
        // Cluster would refuse across slots.
        let mut pipe = Batch::new();
        for key in keys {
            pipe.cmd("GET").arg(self.key(key));
        }
        let mut conn = self.inner.conn.clone();
        let raws: Vec<Option<Vec<u8>>> = self.run("get_many", conn.run_batch(&pipe)).await?;
        let mut found = raws
            .into_iter()
            .map(|raw| self.decode(raw))
            .collect::<Result<Vec<_>, _>>()?;
        self.filter_invalidated(&mut found).await?;
        self.count_reads(&found);
        Ok(found)
    }

    async fn set_many(
        &self,
        items: &[(&str, Bytes)],
        options: &SetOptions,
    ) -> Result<(), StoreError> {
        for (key, value) in items {
            self.inner.limits.check_key(key)?;
            self.inner.limits.check_entry(value, options)?;
        }
        if items.is_empty() {
            return Ok(());
        }
        let entries: Vec<(&str, Entry)> = items
            .iter()
            .map(|(k, v)| (*k, Entry::new(v.clone(), options)))
            .collect();
        self.set_entries(&entries).await
    }

    async fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, StoreError> {
        self.inner.limits.check_key(key)?;
        let ttl_ms = ttl.map_or(0, |t| (t.as_millis().min(i64::MAX as u128) as u64).max(1));
        let mut conn = self.inner.conn.clone();
        self.run(
            "incr",
            redis::cmd("EVAL")
                .arg(INCR_WITH_TTL)
                .arg(1)
                .arg(self.key(key))
                .arg(delta)
                .arg(ttl_ms)
                .query_async(&mut conn),
        )
        .await
    }

    async fn set_add(&self, key: &str, members: &[&str]) -> Result<u64, StoreError> {
        self.change_set("set_add", "SADD", key, members).await
    }

    async fn set_remove(&self, key: &str, members: &[&str]) -> Result<u64, StoreError> {
        self.change_set("set_remove", "SREM", key, members).await
    }

    async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        self.inner.limits.check_key(key)?;
        let mut conn = self.inner.conn.clone();
        self.run(
            "set_members",
            redis::cmd("SMEMBERS")
                .arg(self.key(key))
                .query_async(&mut conn),
        )
        .await
    }

    async fn delete_tag(&self, tag: &str) -> Result<u64, StoreError> {
        self.purge_tag_at(tag, now_micros(), false).await
    }

    async fn delete_matching(&self, pattern: &str) -> Result<u64, StoreError> {
        let parsed = Pattern::new(pattern)?;
        let full = format!(
            "{}:k:{}",
            Pattern::escape(&self.inner.prefix),
            parsed.as_str()
        );
        let removed = self.unlink_scanning(&full).await?;
        Counters::add(&self.inner.counters.deletes, removed);
        self.publish_op(BusOp::Pattern {
            pattern: parsed.as_str().to_owned(),
        })
        .await?;
        Ok(removed)
    }

    async fn purged_since(
        &self,
        tags: &[String],
        since: std::time::SystemTime,
    ) -> Result<bool, StoreError> {
        if tags.is_empty() {
            return Ok(false);
        }
        // An empty entry carrying the tags, stored at `since`: the marks hide it or make it stale
        // exactly when a purge since then covers one of them. Known marks answer without a
        // round trip.
        let probe = Entry::new(
            Bytes::new(),
            &SetOptions::new().tags(tags.iter().cloned()).as_of(since),
        );
        let mut probe = [Some(probe)];
        self.filter_invalidated(&mut probe).await?;
        Ok(probe[0].as_ref().is_none_or(Entry::is_stale))
    }

    async fn purge_key(&self, key: &str, mode: PurgeMode) -> Result<bool, StoreError> {
        if mode == PurgeMode::Hard {
            return self.delete(key).await;
        }
        self.inner.limits.check_key(key)?;
        let purged = self.soft_purge_raw(&[self.key(key)], now_micros()).await? > 0;
        self.publish_op(BusOp::Keys {
            keys: vec![key.to_owned()],
        })
        .await?;
        Ok(purged)
    }

    async fn purge_tag(&self, tag: &str, mode: PurgeMode) -> Result<u64, StoreError> {
        self.purge_tag_at(tag, now_micros(), mode == PurgeMode::Soft)
            .await
    }

    async fn purge_matching(
        &self,
        pattern: &KeyPattern,
        mode: PurgeMode,
    ) -> Result<u64, StoreError> {
        let purged = self.purge_scanning(pattern, mode).await?;
        if mode == PurgeMode::Hard {
            Counters::add(&self.inner.counters.deletes, purged);
        }
        self.publish_op(match pattern {
            KeyPattern::Glob(glob) => BusOp::Pattern {
                pattern: glob.as_str().to_owned(),
            },
            KeyPattern::Regex(regex) => BusOp::Regex {
                regex: regex.as_str().to_owned(),
            },
        })
        .await?;
        Ok(purged)
    }

    async fn clear(&self) -> Result<u64, StoreError> {
        let prefix = Pattern::escape(&self.inner.prefix);
        let removed = self.unlink_scanning(&format!("{prefix}:k:*")).await?;
        self.unlink_scanning(&format!("{prefix}:i:*")).await?;
        self.unlink_scanning(&format!("{prefix}:m:*")).await?;
        self.unlink_scanning(&format!("{prefix}:s:*")).await?;
        self.inner.marks.clear();
        Counters::add(&self.inner.counters.deletes, removed);
        self.publish_op(BusOp::Clear).await?;
        Ok(removed)
    }

    fn stats(&self) -> StoreStats {
        let mut stats = self.inner.counters.snapshot();
        if let Some(breaker) = &self.inner.breaker {
            stats.breaker = Some(breaker.state());
            stats.rejected = breaker.rejected();
        }
        stats
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }
}

/// A health check of a [`RedisStore`]'s circuit breaker, from [`RedisStore::breaker_check`]:
/// healthy while closed, degraded (not down: a cache in front passes through to its origin)
/// while open or probing, with how many calls it refused and how often it opened. It sends
/// nothing to Redis.
#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
#[derive(Clone, Debug)]
pub struct BreakerCheck {
    store: RedisStore,
}

#[cfg(feature = "health")]
impl RedisStore {
    /// A health check of this store's circuit breaker; see [`BreakerCheck`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_strata::health::{Check, Health};
    /// use tower_strata::store::RedisStore;
    ///
    /// let store = RedisStore::new("redis://127.0.0.1:6379")?;
    /// let health = Health::builder()
    ///     .check(Check::optional("redis-breaker", store.breaker_check()))
    ///     .build()?;
    /// # let _ = health;
    /// # Ok(())
    /// # }
    /// ```
    pub fn breaker_check(&self) -> BreakerCheck {
        BreakerCheck {
            store: self.clone(),
        }
    }
}

#[cfg(feature = "health")]
impl crate::health::HealthCheck for BreakerCheck {
    fn check(&self) -> crate::health::CheckFuture<'_> {
        use crate::health::CheckOutput;
        let output = match &self.store.inner.breaker {
            None => CheckOutput::healthy(serde_json::json!({ "breaker": "off" })),
            Some(breaker) => {
                let state = breaker.state();
                let details = serde_json::json!({
                    "breaker": state,
                    "rejected": breaker.rejected(),
                    "opened": breaker.opened(),
                });
                if state == BreakerState::Closed {
                    CheckOutput::healthy(details)
                } else {
                    CheckOutput::degraded(
                        details,
                        "circuit to Redis open: store calls fail at once, the cache passes through",
                    )
                }
            }
        };
        Box::pin(std::future::ready(output))
    }
}

#[cfg(test)]
mod tests {
    use super::server_version;

    #[test]
    fn the_version_is_read_from_info() {
        let info = "# Server\r\nredis_version:6.2.14\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(server_version(info), Some("6.2.14"));
        assert_eq!(
            server_version("# Server\r\nredis_mode:standalone\r\n"),
            None
        );
        assert_eq!(server_version("redis_version:\r\n"), None);
    }
}
