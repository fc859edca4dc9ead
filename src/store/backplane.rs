//! The Redis pub/sub backplane: invalidations from one instance reach every other.
//!
//! Messages carry keys, tags, patterns and actions, never values. Each [`RedisStore`]
//! (super::RedisStore) runs one listener task that owns a dedicated pub/sub connection, pings it
//! to notice a half-open socket, and reconnects with backoff. Every (re)subscription is announced
//! as [`BusEvent::Resync`]: whatever was published while the listener was away is lost, so local
//! copies (L1 entries, known tag marks) must be dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

/// One invalidation, as published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum BusOp {
    /// These keys changed or went.
    Keys { keys: Vec<String> },
    /// These tags were purged at `at` (microseconds since the epoch), hard or soft.
    Tags {
        tags: Vec<String>,
        at: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        soft: bool,
    },
    /// Keys matching this glob pattern went (or were soft-purged).
    Pattern { pattern: String },
    /// Keys matching this regular expression went (or were soft-purged).
    Regex { regex: String },
    /// The namespace was cleared.
    Clear,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BusMessage {
    /// The publishing instance, so it can ignore its own echo.
    pub src: u64,
    #[serde(flatten)]
    pub op: BusOp,
}

/// What listeners (the tiered store) are told.
#[cfg_attr(not(feature = "memory"), allow(dead_code))]
#[derive(Clone, Debug)]
pub(crate) enum BusEvent {
    /// Another instance invalidated something.
    Op(BusOp),
    /// The subscription was (re)established: anything may have been missed.
    Resync,
    /// The subscription was lost: until it is back, invalidations may be missed.
    Lost,
}

/// State shared by the store and its listener task.
#[derive(Debug)]
pub(crate) struct BusShared {
    pub instance: u64,
    pub channel: String,
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    pub received: AtomicU64,
    /// Subscribers the channel has when every instance is there: a publisher waits for them
    /// (see `RedisStore::fence`).
    pub expected: AtomicU64,
    pub events: broadcast::Sender<BusEvent>,
}

impl BusShared {
    pub fn new(channel: String) -> Arc<Self> {
        Arc::new(BusShared {
            instance: rand::random(),
            channel,
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            received: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            events: broadcast::channel(4096).0,
        })
    }

    pub fn encode(&self, op: BusOp) -> Vec<u8> {
        serde_json::to_vec(&BusMessage {
            src: self.instance,
            op,
        })
        .expect("bus messages always serialize")
    }
}

/// Settings of the listener task.
#[derive(Clone, Debug)]
pub(crate) struct ListenerConfig {
    pub connect_timeout: Duration,
    pub ping_interval: Duration,
}

/// Runs until `shutdown` fires or its sender drops. `on_op` applies an operation from another
/// instance to the store's own state (its known tag marks) before listeners hear of it;
/// `on_resync` drops that state.
pub(crate) async fn listen(
    client: redis::Client,
    shared: Arc<BusShared>,
    config: ListenerConfig,
    mut shutdown: oneshot::Receiver<()>,
    on_op: impl Fn(&BusOp) + Send + 'static,
    on_resync: impl Fn() + Send + 'static,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let session = async {
            let pubsub =
                match tokio::time::timeout(config.connect_timeout, client.get_async_pubsub()).await
                {
                    Ok(Ok(pubsub)) => pubsub,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "backplane: connect failed");
                        return false;
                    }
                    Err(_) => {
                        tracing::debug!("backplane: connect timed out");
                        return false;
                    }
                };
            let (mut sink, mut stream) = pubsub.split();
            match tokio::time::timeout(
                config.connect_timeout,
                sink.subscribe(shared.channel.as_str()),
            )
            .await
            {
                Ok(Ok(())) => {}
                _ => {
                    tracing::debug!("backplane: subscribe failed");
                    return false;
                }
            }
            // The count first: whoever sees `connected` sees the new subscription's number,
            // and a tiered store trusts its L1 only once it has dropped it for that number.
            shared.reconnects.fetch_add(1, Relaxed);
            shared.connected.store(true, Relaxed);
            on_resync();
            let _ = shared.events.send(BusEvent::Resync);
            tracing::debug!(channel = %shared.channel, "backplane: subscribed");
            let mut ping = tokio::time::interval(config.ping_interval);
            ping.tick().await;
            loop {
                tokio::select! {
                    message = stream.next() => {
                        let Some(message) = message else {
                            tracing::warn!("backplane: connection lost");
                            return true;
                        };
                        let Ok(message) = serde_json::from_slice::<BusMessage>(message.get_payload_bytes()) else {
                            tracing::warn!("backplane: ignoring a malformed message");
                            continue;
                        };
                        if message.src == shared.instance {
                            continue;
                        }
                        shared.received.fetch_add(1, Relaxed);
                        on_op(&message.op);
                        let _ = shared.events.send(BusEvent::Op(message.op));
                    }
                    _ = ping.tick() => {
                        let pong = tokio::time::timeout(config.connect_timeout, sink.ping::<redis::Value>()).await;
                        if !matches!(pong, Ok(Ok(_))) {
                            tracing::warn!("backplane: ping failed, reconnecting");
                            return true;
                        }
                    }
                }
            }
        };
        let was_connected = tokio::select! {
            connected = session => connected,
            _ = &mut shutdown => return,
        };
        shared.connected.store(false, Relaxed);
        if was_connected {
            // Before the back-off: local copies must stop being trusted now, not when the
            // subscription is back.
            let _ = shared.events.send(BusEvent::Lost);
            backoff = Duration::from_millis(50);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut shutdown => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
