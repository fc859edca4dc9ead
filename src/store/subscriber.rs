//! One pub/sub subscription kept alive: the store's backplane and the invalidation bus both
//! listen through it.
//!
//! - On a server: a dedicated pub/sub connection (`SUBSCRIBE`), pinged to notice a half-open
//!   socket, reconnected with back-off (50 ms doubling to 2 s).
//! - On a Cluster (feature `redis-cluster`): sharded pub/sub (`SSUBSCRIBE`, Redis 7) on a
//!   RESP3 Cluster connection, which redis-rs routes to the master that owns the channel's
//!   slot. Sharded rather than a classic subscription on every node: a classic `PUBLISH` is
//!   broadcast over the cluster bus to every node, while a sharded one goes to one shard, and
//!   with every subscriber on that shard a publisher can count them (`PUBSUB SHARDNUMSUB`),
//!   which the store's write fence relies on. The owner is pinged through the same connection;
//!   a lost connection or a moved slot (`sunsubscribe`) is reported, and the subscription
//!   renewed with the same back-off, on a new client seeded with the masters that answer now
//!   (from the store's own slot map): redis-rs learns of a failover only from `MOVED` or a
//!   dropped connection, so a client that kept its map would go on subscribing at a master
//!   that hangs after its replica took over.
//!
//! Every (re)subscription is reported as [`Subscriber::subscribed`]: what was published while
//! the listener was away is lost, so local copies must be dropped.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::redis::Target;
#[cfg(feature = "redis-cluster")]
use super::redis::Timeouts;

/// What a subscription reports to its owner.
pub(crate) trait Subscriber: Send + 'static {
    /// The subscription was (re)established: anything published before may have been missed.
    fn subscribed(&mut self);
    /// A message arrived on the channel.
    fn message(&mut self, payload: &[u8]);
    /// The subscription was lost; until [`subscribed`](Subscriber::subscribed), messages are
    /// missed.
    fn lost(&mut self);
}

/// Settings of a subscription.
#[derive(Clone)]
pub(crate) struct SubscribeConfig {
    /// Bound on connecting, subscribing and each ping.
    pub connect_timeout: Duration,
    /// How often to ping.
    pub ping_interval: Duration,
    /// The store's (or bus's) connection: on a Cluster, its slot map says which masters
    /// answer when the subscription is renewed.
    #[cfg_attr(not(feature = "redis-cluster"), allow(dead_code))]
    pub conn: Option<super::redis::RedisConn>,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Listens on `channel` until `shutdown` fires or its sender drops.
pub(crate) async fn listen(
    target: Target,
    channel: String,
    config: SubscribeConfig,
    shutdown: oneshot::Receiver<()>,
    subscriber: impl Subscriber,
) {
    match target {
        Target::Server(client) => {
            listen_server(*client, channel, config, shutdown, subscriber).await
        }
        #[cfg(feature = "redis-cluster")]
        Target::Cluster(nodes) => {
            listen_cluster(nodes, channel, config, shutdown, subscriber).await;
        }
    }
}

async fn listen_server(
    client: redis::Client,
    channel: String,
    config: SubscribeConfig,
    mut shutdown: oneshot::Receiver<()>,
    mut subscriber: impl Subscriber,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let session = async {
            let pubsub =
                match tokio::time::timeout(config.connect_timeout, client.get_async_pubsub()).await
                {
                    Ok(Ok(pubsub)) => pubsub,
                    Ok(Err(e)) => {
                        tracing::debug!(channel, error = %e, "subscriber: connect failed");
                        return false;
                    }
                    Err(_) => {
                        tracing::debug!(channel, "subscriber: connect timed out");
                        return false;
                    }
                };
            let (mut sink, mut stream) = pubsub.split();
            if !matches!(
                tokio::time::timeout(config.connect_timeout, sink.subscribe(channel.as_str()))
                    .await,
                Ok(Ok(()))
            ) {
                tracing::debug!(channel, "subscriber: subscribe failed");
                return false;
            }
            subscriber.subscribed();
            tracing::debug!(channel, "subscriber: subscribed");
            let mut ping = tokio::time::interval(config.ping_interval);
            ping.tick().await;
            loop {
                tokio::select! {
                    message = stream.next() => {
                        let Some(message) = message else {
                            tracing::warn!(channel, "subscriber: connection lost");
                            return true;
                        };
                        subscriber.message(message.get_payload_bytes());
                    }
                    _ = ping.tick() => {
                        let pong = tokio::time::timeout(config.connect_timeout, sink.ping::<redis::Value>()).await;
                        if !matches!(pong, Ok(Ok(_))) {
                            tracing::warn!(channel, "subscriber: ping failed, reconnecting");
                            return true;
                        }
                    }
                }
            }
        };
        let was_subscribed = tokio::select! {
            subscribed = session => subscribed,
            _ = &mut shutdown => return,
        };
        if was_subscribed {
            // Before the back-off: local copies must stop being trusted now, not when the
            // subscription is back.
            subscriber.lost();
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut shutdown => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(feature = "redis-cluster")]
async fn listen_cluster(
    nodes: Vec<String>,
    channel: String,
    config: SubscribeConfig,
    mut shutdown: oneshot::Receiver<()>,
    mut subscriber: impl Subscriber,
) {
    use redis::PushKind;

    use super::redis::{channel_route, cluster_client};

    let timeouts = Timeouts {
        connect: config.connect_timeout,
        response: config.connect_timeout,
    };
    // A client seeded with `seeds`, and the channel its pushes arrive on.
    let connect = |seeds: &[String]| {
        let (push, pushes) = tokio::sync::mpsc::unbounded_channel();
        let client = cluster_client(seeds, timeouts, Some(push))?;
        let conn = client.get_pending_async_connection_with_config(
            redis::cluster::ClusterConfig::new()
                .set_connection_timeout(timeouts.connect)
                .set_response_timeout(timeouts.response),
        );
        Ok::<_, redis::RedisError>((conn, pushes))
    };
    let (mut conn, mut pushes) = match connect(&nodes) {
        Ok(connected) => connected,
        Err(e) => {
            // The URL was checked when the store was built; this is not expected.
            tracing::error!(channel, error = %e, "subscriber: no Cluster client, not listening");
            return;
        }
    };
    let router = match &config.conn {
        Some(super::redis::RedisConn::Cluster(router)) => Some(router.clone()),
        _ => None,
    };
    // Set when the subscription was lost: the next attempt starts from a new client.
    let mut renew = false;
    let mut subscribed = false;
    let mut backoff = FIRST_BACKOFF;
    let mut next_try = tokio::time::Instant::now();
    let mut ping = tokio::time::interval(config.ping_interval);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            push = pushes.recv() => {
                let Some(push) = push else { return };
                match push.kind {
                    PushKind::SMessage => {
                        if let Some(redis::Value::BulkString(payload)) = push.data.get(1) {
                            subscriber.message(payload);
                        }
                    }
                    // redis-rs renews subscriptions after a reconnect by itself.
                    PushKind::SSubscribe if !subscribed => {
                        subscribed = true;
                        backoff = FIRST_BACKOFF;
                        subscriber.subscribed();
                    }
                    PushKind::Disconnection | PushKind::SUnsubscribe if subscribed => {
                        tracing::warn!(channel, "subscriber: sharded subscription lost");
                        subscribed = false;
                        renew = true;
                        next_try = tokio::time::Instant::now() + backoff;
                        subscriber.lost();
                    }
                    _ => {}
                }
            }
            _ = ping.tick(), if subscribed => {
                let pong = tokio::time::timeout(
                    config.connect_timeout,
                    conn.route_command(redis::cmd("PING"), channel_route(&channel)),
                )
                .await;
                if !matches!(pong, Ok(Ok(_))) {
                    tracing::warn!(channel, "subscriber: ping of the channel's shard failed");
                    subscribed = false;
                    renew = true;
                    next_try = tokio::time::Instant::now() + backoff;
                    subscriber.lost();
                }
            }
            _ = tokio::time::sleep_until(next_try), if !subscribed => {
                if renew && let Some(router) = &router {
                    // Seeded with the masters that answer now, so its slot map is theirs.
                    let seeds = router.live_seeds().await;
                    match connect(if seeds.is_empty() { &nodes } else { &seeds }) {
                        Ok((new_conn, new_pushes)) => {
                            (conn, pushes) = (new_conn, new_pushes);
                            renew = false;
                        }
                        Err(e) => tracing::debug!(channel, error = %e, "subscriber: new Cluster client failed"),
                    }
                }
                // Subscribing again on a connection that is still subscribed is harmless: the
                // server confirms again.
                let done = tokio::time::timeout(config.connect_timeout, conn.ssubscribe(channel.as_str())).await;
                if matches!(done, Ok(Ok(()))) {
                    if !subscribed {
                        subscribed = true;
                        backoff = FIRST_BACKOFF;
                        tracing::debug!(channel, "subscriber: subscribed (sharded)");
                        subscriber.subscribed();
                    }
                } else {
                    tracing::debug!(channel, "subscriber: sharded subscribe failed");
                    next_try = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
