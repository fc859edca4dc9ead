//! The Redis pub/sub backplane: invalidations from one instance reach every other.
//!
//! Messages carry keys, tags, patterns and actions, never values. Each [`RedisStore`]
//! (super::RedisStore) runs one listener task, a [`subscriber`](super::subscriber) on `ns:bus`
//! (sharded on a Cluster). Every (re)subscription is announced
//! as [`BusEvent::Resync`]: whatever was published while the listener was away is lost, so local
//! copies (L1 entries, known tag marks) must be dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::subscriber::Subscriber;

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
    pub(super) fn new(channel: String) -> Arc<Self> {
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

    pub(super) fn encode(&self, op: BusOp) -> Vec<u8> {
        serde_json::to_vec(&BusMessage {
            src: self.instance,
            op,
        })
        .expect("bus messages always serialize")
    }
}

/// Applies what the subscription reports to the store's shared state and tells listeners.
pub(crate) struct Listener<F, G> {
    pub shared: Arc<BusShared>,
    /// Applies an operation from another instance to the store's own state (its known tag
    /// marks) before listeners hear of it.
    pub on_op: F,
    /// Drops that state.
    pub on_resync: G,
}

impl<F, G> Subscriber for Listener<F, G>
where
    F: Fn(&BusOp) + Send + 'static,
    G: Fn() + Send + 'static,
{
    fn subscribed(&mut self) {
        // The count first: whoever sees `connected` sees the new subscription's number, and a
        // tiered store trusts its L1 only once it has dropped it for that number.
        self.shared.reconnects.fetch_add(1, Relaxed);
        self.shared.connected.store(true, Relaxed);
        (self.on_resync)();
        let _ = self.shared.events.send(BusEvent::Resync);
    }

    fn message(&mut self, payload: &[u8]) {
        let Ok(message) = serde_json::from_slice::<BusMessage>(payload) else {
            tracing::warn!("backplane: ignoring a malformed message");
            return;
        };
        if message.src == self.shared.instance {
            return;
        }
        self.shared.received.fetch_add(1, Relaxed);
        (self.on_op)(&message.op);
        let _ = self.shared.events.send(BusEvent::Op(message.op));
    }

    fn lost(&mut self) {
        self.shared.connected.store(false, Relaxed);
        let _ = self.shared.events.send(BusEvent::Lost);
    }
}
