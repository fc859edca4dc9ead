//! Building a [`RedisStore`]: its settings, checked when built, and the tasks it starts
//! (the backplane's subscriber, the index sweep).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Inner, RedisStore, Target, Timeouts, check_namespace, raise_mark};
use crate::store::backplane::{BusOp, BusShared, Listener};
use crate::store::breaker::{Breaker, BreakerSettings};
use crate::store::marks::TagMarks;
use crate::store::stats::Counters;
use crate::store::subscriber::{self, SubscribeConfig};
use crate::store::{Limits, StoreConfigError, StoreConfigErrorKind};

/// Builds a [`RedisStore`].
#[derive(Clone, Debug)]
pub struct RedisStoreBuilder {
    url: String,
    namespace: String,
    limits: Limits,
    timeout: Duration,
    read_soft_timeout: Option<Duration>,
    connect_timeout: Duration,
    backplane: bool,
    ping_interval: Duration,
    known_marks: usize,
    mark_ttl: Duration,
    mark_retention: Duration,
    index_sweep_interval: Option<Duration>,
    publish_writes: bool,
    breaker: Option<BreakerSettings>,
}

impl RedisStoreBuilder {
    setters! {
        /// Namespace prefix of every key (default `strata`). Must not be empty or contain `:`-free
        /// control characters.
        fn namespace(namespace: impl Into<String>) => into namespace;

        /// Limits enforced on keys, values and tags.
        fn limits(limits: Limits) => set limits;

        /// Bound on every command, connection included (default 500 ms).
        fn timeout(timeout: Duration) => set timeout;

        /// How long a lookup ([`Store::get`](crate::store::Store::get), what a cache asks on
        /// each request; batches are not bounded by it) waits before it gives up with
        /// [`StoreError::Timeout`](crate::store::StoreError::Timeout) (default 50 ms; `None`:
        /// the command timeout). A cache in front then passes through to its origin, while the
        /// call finishes in the background under the command timeout, so the circuit breaker
        /// still learns that Redis hangs: with Redis hung, requests wait this long, not the
        /// command timeout, until the breaker opens.
        fn read_soft_timeout(timeout: Option<Duration>) => set read_soft_timeout;

        /// Bound on establishing a connection (default 1 s).
        fn connect_timeout(timeout: Duration) => set connect_timeout;

        /// Whether to run the pub/sub backplane (default on). Without it, other instances are not
        /// told of invalidations and tagged reads re-read their tags' marks every time (two round
        /// trips), since no push keeps known marks fresh.
        fn backplane(enabled: bool) => set backplane;

        /// How often the backplane pings its connection to notice a dead peer (default 1 s).
        fn ping_interval(interval: Duration) => set ping_interval;

        /// Whether writes (`set`, `set_many`) are announced on the backplane (default on), so other
        /// instances' tiered stores drop their L1 copies of overwritten keys. Turn it off when no
        /// instance keeps an L1 over this namespace: each write then saves a `PUBLISH` and every
        /// subscriber a message. Deletes, tag purges, pattern deletes and clears are always
        /// announced.
        fn publish_writes(enabled: bool) => set publish_writes;

        /// How many tags' invalidation marks to remember locally (default 100,000).
        fn known_marks(capacity: usize) => set known_marks;

        /// The longest a tag's invalidation mark is kept in Redis (default 7 days). A mark
        /// lives as long as the entries it hides can: the tag's index at the purge, and any
        /// entry of the tag written later (a fill that began before the purge) extends it to
        /// its own lifetime; without either it lives [`mark_retention`](Self::mark_retention).
        fn mark_ttl(ttl: Duration) => set mark_ttl;

        /// The shortest a tag's invalidation mark is kept in Redis (default 5 minutes): how long
        /// a fetch that began before a purge may take to write its entry, which the mark then
        /// hides. Marks of tags with nothing stored expire after this.
        fn mark_retention(retention: Duration) => set mark_retention;

        /// How often to drop dead members (expired entries) from tag index sets (default 5 min;
        /// `None` turns it off). Runs in the background.
        fn index_sweep_interval(interval: Option<Duration>) => set index_sweep_interval;

        /// The circuit breaker on the store's commands (default: open after
        /// [`DEFAULT_BREAKER_FAILURES`](crate::store::DEFAULT_BREAKER_FAILURES) consecutive timeouts or
        /// connection failures, probe after
        /// [`DEFAULT_BREAKER_COOL_DOWN`](crate::store::DEFAULT_BREAKER_COOL_DOWN)); `None` turns it off,
        /// and every call then waits out its own timeout. While it is open, calls fail at once
        /// with [`StoreError::CircuitOpen`](crate::store::StoreError::CircuitOpen): a cache in front passes through to its origin instead
        /// of waiting on a Redis that hangs. After each cool-down a background `PING` probes
        /// Redis and closes it when it answers; no request is ever the probe. On a Cluster
        /// every node has its own breaker with these settings, so a failed master turns off
        /// only its own slots.
        fn breaker(settings: Option<BreakerSettings>) => set breaker;
    }

    /// Builds the store without contacting Redis.
    ///
    /// # Errors
    ///
    /// A [`StoreConfigError`] for an invalid URL, namespace or setting, or when not called
    /// inside a Tokio runtime.
    pub fn build(self) -> Result<RedisStore, StoreConfigError> {
        check_namespace(&self.namespace)?;
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(StoreConfigError::new(
                StoreConfigErrorKind::Setting,
                "timeouts must be above zero",
            ));
        }
        if self.breaker.is_some_and(|b| b.failures == 0) {
            return Err(StoreConfigError::new(
                StoreConfigErrorKind::Setting,
                "the breaker needs at least one failure to open",
            ));
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreConfigError::new(
                StoreConfigErrorKind::NoRuntime,
                "RedisStore must be built inside a Tokio runtime",
            )
        })?;
        let target = Target::parse(&self.url)?;
        let timeouts = Timeouts {
            connect: self.connect_timeout,
            response: self.timeout,
        };
        let conn = target.connect_lazily(timeouts, self.breaker)?;
        let conn_is_cluster = conn.is_cluster();
        // A Cluster's breakers are its nodes'; a server's is the store's.
        let breaker = match conn.is_cluster() {
            true => None,
            false => self
                .breaker
                .map(|settings| Breaker::new("redis store", settings)),
        };
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
                    conn: Some(conn.clone()),
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
                read_soft_timeout: self.read_soft_timeout,
                mark_ttl: self.mark_ttl,
                mark_retention: self.mark_retention.min(self.mark_ttl),
                publish_writes: self.publish_writes,
                counters: Counters::default(),
                ops: crate::instruments::RemoteOps::new(if conn_is_cluster {
                    "redis-cluster"
                } else {
                    "redis"
                }),
                breaker,
                marks,
                bus,
                _shutdown: shutdown,
            }),
        };
        if self.breaker.is_some() || store.inner.conn.is_cluster() {
            // The breakers' probe (and on a Cluster the slot map's refresh): a few times per
            // cool-down, so an open breaker is probed soon after its cool-down ends.
            let period = self.breaker.map_or(Duration::from_millis(250), |settings| {
                (settings.cool_down / 4)
                    .clamp(Duration::from_millis(10), Duration::from_millis(250))
            });
            handle.spawn(crate::background::tick_while_alive(
                Arc::downgrade(&store.inner),
                tokio::time::Instant::now() + period,
                period,
                |inner| async move { RedisStore { inner }.probe().await },
            ));
        }
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

impl RedisStore {
    /// A builder for a store at `url`:
    ///
    /// - `redis://[user:password@]host:port[/db]`, or `redis+unix:///path.sock`: one server;
    /// - `rediss://...`: one server over TLS (feature `redis-tls`; `#insecure` at the end
    ///   skips certificate checks, for tests only);
    /// - `redis-cluster://[user:password@]host:port,host:port,...` (`rediss-cluster://` over
    ///   TLS): a Redis Cluster, from any of its nodes (feature `redis-cluster`). See the
    ///   [module docs](crate::store#redis-key-layout-and-cluster-slots) for what runs where.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            namespace: "strata".into(),
            limits: Limits::default(),
            timeout: Duration::from_millis(500),
            read_soft_timeout: Some(Duration::from_millis(50)),
            connect_timeout: Duration::from_secs(1),
            backplane: true,
            ping_interval: Duration::from_secs(1),
            known_marks: 100_000,
            mark_ttl: Duration::from_secs(7 * 24 * 3600),
            mark_retention: Duration::from_secs(300),
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
    pub fn try_new(url: impl Into<String>) -> Result<Self, StoreConfigError> {
        Self::builder(url).build()
    }
}
