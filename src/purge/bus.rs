//! [`InvalidationBus`]: domain events mapped to purges, on one instance or on all of them over
//! Redis pub/sub.

use std::fmt;
use std::sync::Arc;
#[cfg(feature = "redis")]
use std::sync::atomic::AtomicBool;
#[cfg(feature = "redis")]
use std::time::Duration;

use super::PurgeConfigError;
use super::Purger;
use super::invalidate::{Counters, InvalidateStats, run};
use super::rules::{CompiledEventRule, EventRule, Targets};

/// Longest event name, in bytes.
const MAX_EVENT_LEN: usize = 256;

/// Why a bus could not be built or an event not published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The event name is empty or over 256 bytes.
    #[error("invalid event name {0:?}")]
    Event(String),
    /// The event was applied here but could not be sent to the other instances.
    #[error("invalidation bus: publishing to Redis failed: {0}")]
    Publish(String),
}

/// What every clone of the bus and its listener share.
struct Core {
    purger: Purger,
    rules: Vec<CompiledEventRule>,
    stats: Arc<Counters>,
}

impl Core {
    /// Purges what the rules for `event` name. Rules missing a payload field are skipped.
    async fn apply(self: Arc<Self>, event: String, payload: serde_json::Value) {
        Counters::add(&self.stats.events, 1);
        let mut targets = Targets::default();
        for rule in self.rules.iter().filter(|r| r.event == event) {
            match rule.apply(&payload, &mut targets) {
                Ok(()) => Counters::add(&self.stats.rule_firings, 1),
                Err(field) => {
                    Counters::add(&self.stats.skipped, 1);
                    tracing::warn!(
                        event,
                        field,
                        "invalidation event lacks a field its rule needs; rule skipped"
                    );
                }
            }
        }
        if !targets.is_empty() {
            run(
                self.purger.clone(),
                targets,
                self.stats.clone(),
                format!("event {event}"),
            )
            .await;
        }
    }
}

#[cfg(feature = "redis")]
struct Remote {
    instance: u64,
    channel: String,
    conn: crate::store::redis::RedisConn,
    timeout: Duration,
    connected: Arc<AtomicBool>,
    /// Publishing to a Redis that hangs fails at once after a few timeouts, as the store's
    /// commands do.
    breaker: crate::store::breaker::Breaker,
    // Dropping the last bus clone stops the listener.
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

struct Inner {
    core: Arc<Core>,
    #[cfg(feature = "redis")]
    remote: Option<Remote>,
}

/// A bus the application publishes domain events to (`product.updated {"id": 42}`), which
/// [`EventRule`]s turn into purges.
///
/// Built local-only, an event purges through this instance's [`Purger`]. Built with
/// [`InvalidationBusBuilder::redis`] (feature `redis`), events are also sent on a Redis pub/sub
/// channel (`{namespace}:events`) and every instance subscribed to it applies them to its own
/// purger.
///
/// # Each event applied once per instance
///
/// [`publish`](InvalidationBus::publish) applies the event locally first (so when it returns,
/// this instance's purges are done, even if Redis is down) and then publishes it with this
/// bus's random instance id; each bus's listener ignores messages carrying its own id, so the
/// publisher does not apply its echo a second time.
///
/// # Delivery
///
/// Publishing has a circuit breaker, as the Redis store's commands do: after three timeouts or
/// connection failures in a row, `publish` fails at once until a probe a second later gets
/// through. Redis pub/sub is at-most-once: an instance whose subscriber connection is down (it
/// reconnects with backoff, pinging to notice a half-open socket) misses the events published
/// meanwhile. Give cached entries a TTL that bounds how long such a miss can last. When the
/// instances share one store (one [`RedisStore`](crate::store::RedisStore) namespace, or
/// [`TieredStore`](crate::store::TieredStore)s on one namespace), a purge made by one
/// instance already reaches all of them through the store, and the local bus is enough; the
/// Redis bus is for instances with stores of their own (in-memory caches), or for events
/// published by processes that hold no store.
///
/// # Transactions
///
/// Publish events after the transaction that made them commits, e.g. from
/// [`TxHandle::after_commit`](crate::tx::TxHandle::after_commit), so no reader re-caches the
/// old row in between.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use bytes::Bytes;
/// use serde_json::json;
/// use tower_strata::purge::{EventRule, InvalidationBus, Purger};
/// use tower_strata::store::{MemoryStore, SetOptions, Store};
///
/// let store = std::sync::Arc::new(MemoryStore::new(1 << 20));
/// let options = SetOptions::new().ttl(Duration::from_secs(60)).tags(["product:42"]);
/// store.set("GET /products/42", Bytes::from_static(b"{}"), &options).await?;
///
/// let bus = InvalidationBus::builder(Purger::new(store.clone()))
///     .rule(EventRule::on("product.updated").purge_tags(["product:{id}", "products"]))
///     .build()?;
/// bus.publish("product.updated", json!({"id": 42})).await?;
/// assert!(store.get("GET /products/42").await?.is_none());
/// assert_eq!(bus.stats().rule_firings, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct InvalidationBus {
    inner: Arc<Inner>,
}

impl fmt::Debug for InvalidationBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("InvalidationBus");
        d.field("rules", &self.inner.core.rules.len());
        #[cfg(feature = "redis")]
        d.field(
            "channel",
            &self.inner.remote.as_ref().map(|r| r.channel.as_str()),
        );
        d.finish_non_exhaustive()
    }
}

/// Builds an [`InvalidationBus`]; from [`InvalidationBus::builder`].
#[derive(Debug)]
pub struct InvalidationBusBuilder {
    purger: Purger,
    rules: Vec<EventRule>,
    #[cfg(feature = "redis")]
    redis: Option<RedisSettings>,
}

#[cfg(feature = "redis")]
#[derive(Debug)]
struct RedisSettings {
    url: String,
    namespace: String,
    timeout: Duration,
    connect_timeout: Duration,
    ping_interval: Duration,
}

impl InvalidationBusBuilder {
    /// Adds an event rule; every rule for an event applies.
    pub fn rule(mut self, rule: EventRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Sends events to every instance over Redis pub/sub at `url`, on the channel
    /// `strata:events` (see [`namespace`](InvalidationBusBuilder::namespace)). `url` takes the
    /// same forms as [`RedisStore::builder`](crate::store::RedisStore::builder): on a Redis
    /// Cluster (`redis-cluster://...`) the channel is a sharded one (`SPUBLISH`/`SSUBSCRIBE`).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis = Some(RedisSettings {
            url: url.into(),
            namespace: "strata".into(),
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            ping_interval: Duration::from_secs(1),
        });
        self
    }

    /// Changes the Redis settings: a Redis setter called before
    /// [`redis`](InvalidationBusBuilder::redis) has nothing to change and does nothing.
    #[cfg(feature = "redis")]
    fn with_redis(mut self, change: impl FnOnce(&mut RedisSettings)) -> Self {
        if let Some(redis) = &mut self.redis {
            change(redis);
        }
        self
    }

    /// The namespace of the Redis channel (`{namespace}:events`; default `strata`): instances
    /// of one application share it, other applications on the same Redis use their own.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn namespace(self, namespace: impl Into<String>) -> Self {
        self.with_redis(|redis| redis.namespace = namespace.into())
    }

    /// The timeout of a `PUBLISH` (default 500 ms).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn timeout(self, timeout: Duration) -> Self {
        self.with_redis(|redis| redis.timeout = timeout)
    }

    /// The timeout of connecting and subscribing, and of the subscriber's pings (default 1 s).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.with_redis(|redis| redis.connect_timeout = timeout)
    }

    /// How often the subscriber pings Redis to notice a dead connection (default 1 s).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn ping_interval(self, interval: Duration) -> Self {
        self.with_redis(|redis| redis.ping_interval = interval)
    }

    /// Checks the rules and, with Redis, starts the subscriber task.
    ///
    /// # Errors
    ///
    /// A [`PurgeConfigError`] for a malformed rule; with Redis, for an invalid URL, namespace
    /// or zero timeout, or when not called inside a Tokio runtime.
    pub fn build(self) -> Result<InvalidationBus, PurgeConfigError> {
        let rules = self
            .rules
            .into_iter()
            .map(EventRule::compile)
            .collect::<Result<Vec<_>, _>>()?;
        let core = Arc::new(Core {
            purger: self.purger,
            rules,
            stats: Arc::new(Counters::default()),
        });
        #[cfg(feature = "redis")]
        let remote = match self.redis {
            Some(settings) => Some(remote::start(settings, core.clone())?),
            None => None,
        };
        Ok(InvalidationBus {
            inner: Arc::new(Inner {
                core,
                #[cfg(feature = "redis")]
                remote,
            }),
        })
    }
}

impl InvalidationBus {
    /// A builder for a bus purging through `purger`.
    pub fn builder(purger: Purger) -> InvalidationBusBuilder {
        InvalidationBusBuilder {
            purger,
            rules: Vec::new(),
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// Publishes an event: applies its rules here, then (with Redis) sends it to the other
    /// instances. Purge failures are logged and counted in [`stats`](InvalidationBus::stats),
    /// not returned.
    ///
    /// # Errors
    ///
    /// [`BusError::Event`] for an empty or over-long name (nothing applied);
    /// [`BusError::Publish`] when Redis could not take it in time (applied here only).
    pub async fn publish(&self, event: &str, payload: serde_json::Value) -> Result<(), BusError> {
        if event.is_empty() || event.len() > MAX_EVENT_LEN {
            return Err(BusError::Event(event.chars().take(64).collect()));
        }
        #[cfg(feature = "redis")]
        let message = self
            .inner
            .remote
            .as_ref()
            .map(|remote| remote::encode(remote.instance, event, &payload));
        self.inner
            .core
            .clone()
            .apply(event.to_owned(), payload)
            .await;
        #[cfg(feature = "redis")]
        if let (Some(remote), Some(message)) = (&self.inner.remote, message) {
            remote::publish(remote, message).await?;
        }
        Ok(())
    }

    /// Whether events from other instances can arrive now: always for a local bus; with Redis,
    /// whether the subscriber is connected.
    pub fn connected(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            return remote.connected.load(std::sync::atomic::Ordering::Relaxed);
        }
        true
    }

    /// A snapshot of this bus's counters (events received here or from other instances, rule
    /// firings, skipped rules, purges, failures).
    pub fn stats(&self) -> InvalidateStats {
        self.inner.core.stats.snapshot()
    }
}

#[cfg(feature = "redis")]
mod remote {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    use serde::{Deserialize, Serialize};
    use tokio::sync::oneshot;

    use crate::store::redis::{Target, Timeouts, check_namespace};
    use crate::store::subscriber::{self, SubscribeConfig, Subscriber};

    use super::{BusError, Core, PurgeConfigError, RedisSettings, Remote};
    use crate::purge::PurgeConfigErrorKind;

    #[derive(Serialize, Deserialize)]
    struct Message {
        /// The publishing bus, so it can ignore its own echo.
        src: u64,
        event: String,
        payload: serde_json::Value,
    }

    pub(super) fn encode(instance: u64, event: &str, payload: &serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&Message {
            src: instance,
            event: event.to_owned(),
            payload: payload.clone(),
        })
        .expect("JSON values always serialize")
    }

    pub(super) fn start(
        settings: RedisSettings,
        core: Arc<Core>,
    ) -> Result<Remote, PurgeConfigError> {
        // The store's checks and errors, under this module's kinds, with the store's as source.
        let refused = |kind: PurgeConfigErrorKind| {
            move |e: crate::store::StoreConfigError| {
                PurgeConfigError::new(kind, format!("invalidation bus: {}", e.message()))
                    .with_source(e)
            }
        };
        check_namespace(&settings.namespace).map_err(refused(PurgeConfigErrorKind::Namespace))?;
        if settings.timeout.is_zero()
            || settings.connect_timeout.is_zero()
            || settings.ping_interval.is_zero()
        {
            return Err(PurgeConfigError::new(
                PurgeConfigErrorKind::Setting,
                "the invalidation bus's timeouts and ping interval must be above zero",
            ));
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            PurgeConfigError::new(
                PurgeConfigErrorKind::NoRuntime,
                "the Redis invalidation bus must be built inside a Tokio runtime",
            )
        })?;
        let bad_url = refused(PurgeConfigErrorKind::Url);
        let target = Target::parse(&settings.url).map_err(bad_url)?;
        let conn = target
            .connect_lazily(
                Timeouts {
                    connect: settings.connect_timeout,
                    response: settings.timeout,
                },
                None,
            )
            .map_err(bad_url)?;
        let instance = rand::random();
        let channel = format!("{}:events", settings.namespace);
        let connected = Arc::new(AtomicBool::new(false));
        let (shutdown, stop) = oneshot::channel();
        handle.spawn(subscriber::listen(
            target,
            channel.clone(),
            SubscribeConfig {
                connect_timeout: settings.connect_timeout,
                ping_interval: settings.ping_interval,
                conn: Some(conn.clone()),
            },
            stop,
            Listener {
                instance,
                connected: connected.clone(),
                core,
            },
        ));
        Ok(Remote {
            instance,
            channel,
            conn,
            timeout: settings.timeout,
            connected,
            breaker: crate::store::breaker::Breaker::new(
                "invalidation bus",
                crate::store::BreakerSettings::default(),
            ),
            _shutdown: shutdown,
        })
    }

    pub(super) async fn publish(remote: &Remote, message: Vec<u8>) -> Result<(), BusError> {
        let Ok(ticket) = remote.breaker.admit() else {
            return Err(BusError::Publish(
                "not sent: the circuit to Redis is open".into(),
            ));
        };
        let mut conn = remote.conn.clone();
        let mut cmd = redis::cmd(conn.publish_command());
        cmd.arg(&remote.channel).arg(message);
        let publish = cmd.query_async::<i64>(&mut conn);
        match tokio::time::timeout(remote.timeout, publish).await {
            Ok(Ok(_)) => {
                ticket.success();
                Ok(())
            }
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    ticket.failure();
                } else {
                    ticket.success();
                }
                Err(BusError::Publish(e.to_string()))
            }
            Err(_) => {
                ticket.failure();
                Err(BusError::Publish(format!(
                    "timed out after {:?}",
                    remote.timeout
                )))
            }
        }
    }

    /// Applies the events of other instances as they arrive.
    struct Listener {
        instance: u64,
        connected: Arc<AtomicBool>,
        core: Arc<Core>,
    }

    impl Subscriber for Listener {
        fn subscribed(&mut self) {
            self.connected.store(true, Relaxed);
        }

        fn message(&mut self, payload: &[u8]) {
            let Ok(message) = serde_json::from_slice::<Message>(payload) else {
                tracing::warn!("invalidation bus: ignoring a malformed message");
                return;
            };
            if message.src == self.instance {
                return; // applied when it was published
            }
            // Apply off the listener so a slow purge does not hold up the next events.
            tokio::spawn(self.core.clone().apply(message.event, message.payload));
        }

        fn lost(&mut self) {
            self.connected.store(false, Relaxed);
        }
    }
}
