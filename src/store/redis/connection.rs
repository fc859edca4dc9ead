//! Where the store's commands go: one Redis server, or a Redis Cluster (feature
//! `redis-cluster`), behind one connection type.
//!
//! Everything that differs between the two lives here, so the store's own code is written once:
//!
//! - a [`Batch`] of commands is one pipeline on a server; on a Cluster it is split into one
//!   pipeline per hash slot, each sent to its slot's master, concurrently, and the replies are
//!   put back in order. Nothing ever sends a command or pipeline whose keys span slots: a
//!   Cluster answers those with `CROSSSLOT`, an error, not a non-atomic success. A batch of
//!   reads marked [`Batch::partial`] answers nil for the part whose node failed, so a hung
//!   master costs only its own keys;
//! - on a Cluster every node has its own connection and circuit breaker (see `cluster.rs`);
//! - `SCAN` walks one server, or every master of a Cluster in turn;
//! - the backplane publishes with `PUBLISH` on a server and `SPUBLISH` (sharded pub/sub) on a
//!   Cluster, and counts subscribers with `PUBSUB NUMSUB` or `PUBSUB SHARDNUMSUB`.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisFuture, RedisResult, Value};

#[cfg(feature = "redis-cluster")]
use super::cluster::Cluster;
#[cfg(feature = "redis-cluster")]
use super::routing::routing_key;
pub(crate) use super::routing::{Timeouts, backend_down};
use crate::store::breaker::BreakerSettings;
use crate::store::{StoreConfigError, StoreConfigErrorKind};

/// Refuses a key namespace that is empty or holds a control character: the store's and the
/// invalidation bus's keys and channels are named under it.
pub(crate) fn check_namespace(namespace: &str) -> Result<(), StoreConfigError> {
    if namespace.is_empty() || namespace.chars().any(char::is_control) {
        return Err(StoreConfigError::new(
            StoreConfigErrorKind::Namespace,
            format!("namespace {namespace:?} must be non-empty and free of control characters"),
        ));
    }
    Ok(())
}

/// A URL that cannot be used, with redis-rs's reason as the source.
fn bad_url(message: String, source: Option<redis::RedisError>) -> StoreConfigError {
    let err = StoreConfigError::new(StoreConfigErrorKind::Url, message);
    match source {
        Some(source) => err.with_source(source),
        None => err,
    }
}

/// What a URL names: one server, or the seed nodes of a Cluster.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// `redis://`, `rediss://` (feature `redis-tls`), `redis+unix://` or `unix://`.
    Server(Box<redis::Client>),
    /// `redis-cluster://host:port,host:port,...` (`rediss-cluster://` with TLS): the node URLs.
    #[cfg(feature = "redis-cluster")]
    Cluster(Vec<String>),
}

impl Target {
    /// Parses a store URL. A Cluster URL lists its seed nodes after the scheme, comma-separated,
    /// with optional `user:password@` in front of the list; it applies to every node.
    pub(crate) fn parse(url: &str) -> Result<Target, StoreConfigError> {
        if let Some((scheme, rest)) = url.split_once("://")
            && let Some(node_scheme) = match scheme {
                "redis-cluster" => Some("redis"),
                "rediss-cluster" => Some("rediss"),
                _ => None,
            }
        {
            return Self::cluster(node_scheme, rest, url);
        }
        redis::Client::open(url)
            .map(|client| Target::Server(Box::new(client)))
            .map_err(|e| bad_url(format!("Redis URL {url:?}: {e}"), Some(e)))
    }

    #[cfg(feature = "redis-cluster")]
    fn cluster(node_scheme: &str, rest: &str, url: &str) -> Result<Target, StoreConfigError> {
        let (auth, list) = match rest.rsplit_once('@') {
            Some((auth, list)) => (format!("{auth}@"), list),
            None => (String::new(), rest),
        };
        let list = list.trim_end_matches('/');
        let nodes: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|node| format!("{node_scheme}://{auth}{node}"))
            .collect();
        if nodes.is_empty() {
            return Err(bad_url(
                format!("Redis Cluster URL {url:?} names no node"),
                None,
            ));
        }
        for node in &nodes {
            // Checks each node's address (and TLS support) now, not on the first command.
            redis::Client::open(node.as_str()).map_err(|e| {
                bad_url(
                    format!("Redis Cluster URL {url:?}, node {node:?}: {e}"),
                    Some(e),
                )
            })?;
        }
        Ok(Target::Cluster(nodes))
    }

    #[cfg(not(feature = "redis-cluster"))]
    fn cluster(_: &str, _: &str, url: &str) -> Result<Target, StoreConfigError> {
        Err(StoreConfigError::new(
            StoreConfigErrorKind::FeatureDisabled,
            format!(
                "Redis URL {url:?}: a Redis Cluster needs tower-strata's `redis-cluster` feature"
            ),
        ))
    }

    /// A connection that connects lazily (building a store never blocks on Redis) and
    /// reconnects by itself. On a Cluster each node gets its own `breaker`, if any; on a server
    /// the caller keeps one.
    pub(crate) fn connect_lazily(
        &self,
        timeouts: Timeouts,
        breaker: Option<BreakerSettings>,
    ) -> Result<RedisConn, StoreConfigError> {
        #[cfg(not(feature = "redis-cluster"))]
        let _ = breaker;
        match self {
            Target::Server(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeouts.connect))
                    .set_response_timeout(Some(timeouts.response))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config((**client).clone(), config)
                    .map(RedisConn::Server)
                    .map_err(|e| bad_url(format!("Redis connection: {e}"), Some(e)))
            }
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(nodes) => Cluster::new(nodes, timeouts, breaker)
                .map(RedisConn::Cluster)
                .map_err(|e| bad_url(format!("Redis Cluster client: {e}"), Some(e))),
        }
    }
}

/// A Cluster client on `nodes`. With a push sender it speaks RESP3, which redis-rs needs for
/// subscriptions on a Cluster connection.
#[cfg(feature = "redis-cluster")]
pub(crate) fn cluster_client(
    nodes: &[String],
    timeouts: Timeouts,
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> RedisResult<redis::cluster::ClusterClient> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(timeouts.connect)
        .response_timeout(timeouts.response)
        // A few quick retries follow MOVED/ASK redirections and a reconnect; the store's own
        // timeout and breaker bound the rest.
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(100);
    if let Some(push) = push {
        builder = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push);
    }
    builder.build()
}

/// A connection to a server or a Cluster. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub(crate) enum RedisConn {
    Server(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(std::sync::Arc<Cluster>),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Server(conn) => conn.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            RedisConn::Cluster(cluster) => Box::pin(cluster.command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "redis-cluster")]
            RedisConn::Cluster(cluster) => {
                Box::pin(cluster.packed_commands(pipeline, offset, count))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Server(conn) => conn.get_db(),
            #[cfg(feature = "redis-cluster")]
            RedisConn::Cluster(_) => 0,
        }
    }
}

/// Where one `SCAN` walk runs: the server, or one Cluster master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScanNode {
    Server,
    #[cfg(feature = "redis-cluster")]
    Master {
        host: String,
        port: u16,
    },
}

impl RedisConn {
    /// Whether this is a Cluster connection.
    pub(crate) fn is_cluster(&self) -> bool {
        !matches!(self, RedisConn::Server(_))
    }

    /// The command that publishes on the backplane: sharded on a Cluster, so a message goes to
    /// the one shard that owns the channel instead of being broadcast over the cluster bus, and
    /// every subscriber sits on that shard, where `PUBSUB SHARDNUMSUB` can count them all.
    pub(crate) fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Runs `batch` and converts the replies of the commands not marked ignored, in order.
    pub(crate) async fn run_batch<T: FromRedisValue>(&mut self, batch: &Batch) -> RedisResult<T> {
        match self {
            RedisConn::Server(conn) => batch.pipeline(0..batch.cmds.len()).query_async(conn).await,
            #[cfg(feature = "redis-cluster")]
            RedisConn::Cluster(cluster) => {
                let mut groups = batch.slot_groups();
                if !batch.atomic {
                    // Without MULTI, one pipeline per master carries all its slots' commands.
                    groups = cluster.by_master(groups).await;
                }
                // One pipeline per slot (or master), each to its master, all in flight at
                // once; each keeps every reply so they can be put back in the batch's order.
                let cluster = &*cluster;
                let sends = groups.iter().map(|(slot, indices)| {
                    let pipe = batch.pipeline_keeping_all(indices);
                    async move { cluster.pipeline(*slot, &pipe).await }
                });
                let replies = futures_util::future::join_all(sends).await;
                let answered = replies.iter().filter(|r| r.is_ok()).count();
                let mut ordered: Vec<Option<Value>> = vec![None; batch.cmds.len()];
                for ((_, indices), values) in groups.iter().zip(replies) {
                    match values {
                        Ok(values) => {
                            for (&index, value) in indices.iter().zip(values) {
                                ordered[index] = Some(value);
                            }
                        }
                        // A partial batch answers nil for a failed node's part, as long as
                        // some node answered.
                        Err(_) if batch.partial && answered > 0 => {}
                        Err(e) => return Err(e),
                    }
                }
                let kept: Vec<Value> = ordered
                    .into_iter()
                    .zip(&batch.cmds)
                    .filter(|(_, (_, ignored))| !ignored)
                    .map(|(value, _)| value.unwrap_or(Value::Nil))
                    .collect();
                T::from_redis_value(Value::Array(kept)).map_err(Into::into)
            }
        }
    }

    /// Where a `SCAN` of the whole keyspace must run: the server, or every Cluster master (a
    /// Cluster's `SCAN` sees only the node it is sent to).
    pub(crate) async fn scan_nodes(&mut self) -> RedisResult<Vec<ScanNode>> {
        match self {
            RedisConn::Server(_) => Ok(vec![ScanNode::Server]),
            #[cfg(feature = "redis-cluster")]
            RedisConn::Cluster(cluster) => Ok(cluster
                .masters()
                .await?
                .iter()
                .map(|node| ScanNode::Master {
                    host: node.host.clone(),
                    port: node.port,
                })
                .collect()),
        }
    }

    /// One `SCAN` page on `node`.
    pub(crate) async fn scan_page(
        &mut self,
        node: &ScanNode,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> RedisResult<(u64, Vec<String>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        match (self, node) {
            #[cfg(feature = "redis-cluster")]
            (RedisConn::Cluster(cluster), ScanNode::Master { host, port }) => {
                let node = cluster.known(host, *port).ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::ClusterConnectionNotFound,
                        "unknown Cluster node",
                        format!("{host}:{port}"),
                    ))
                })?;
                let reply = cluster.command_on(&node, &cmd).await?;
                FromRedisValue::from_redis_value(reply).map_err(Into::into)
            }
            (conn, _) => cmd.query_async(conn).await,
        }
    }

    /// How many instances are subscribed to the backplane `channel` (on a Cluster, asked of
    /// the shard that owns it, where every sharded subscriber is).
    pub(crate) async fn subscribers(&mut self, channel: &str) -> RedisResult<u64> {
        match self {
            RedisConn::Server(conn) => {
                let (_, count): (String, u64) = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(channel)
                    .query_async(conn)
                    .await?;
                Ok(count)
            }
            #[cfg(feature = "redis-cluster")]
            RedisConn::Cluster(cluster) => {
                let mut cmd = redis::cmd("PUBSUB");
                cmd.arg("SHARDNUMSUB").arg(channel);
                let slot = super::routing::slot(channel.as_bytes());
                let reply = cluster.command_at(slot, &cmd).await?;
                let (_, count): (String, u64) = FromRedisValue::from_redis_value(reply)?;
                Ok(count)
            }
        }
    }

    /// `INFO server` of the server, or of one Cluster node.
    pub(crate) async fn info_server(&mut self) -> RedisResult<String> {
        match self {
            RedisConn::Server(conn) => redis::cmd("INFO").arg("server").query_async(conn).await,
            #[cfg(feature = "redis-cluster")]
            RedisConn::Cluster(cluster) => {
                let mut cmd = redis::cmd("INFO");
                cmd.arg("server");
                let reply = cluster.command_anywhere(&cmd).await?;
                FromRedisValue::from_redis_value(reply).map_err(Into::into)
            }
        }
    }
}

/// The route to the master that owns a sharded channel.
#[cfg(feature = "redis-cluster")]
pub(crate) fn channel_route(channel: &str) -> redis::cluster_routing::RoutingInfo {
    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
        channel,
        SlotAddr::Master,
    )))
}

/// Commands sent together: a pipeline on a server; on a Cluster, one pipeline per hash slot.
/// Built like a [`redis::Pipeline`]: `batch.cmd("GET").arg(key)`, `.ignore()` to leave a
/// reply out.
#[derive(Default)]
pub(crate) struct Batch {
    cmds: Vec<(Cmd, bool)>,
    atomic: bool,
    partial: bool,
}

impl Batch {
    pub(crate) fn new() -> Self {
        Batch::default()
    }

    /// Wraps the batch in `MULTI`/`EXEC`; on a Cluster each slot's commands are one
    /// transaction, and the batch as a whole is not atomic.
    pub(crate) fn atomic(&mut self) -> &mut Self {
        self.atomic = true;
        self
    }

    /// Reads whose failed part may answer nil: on a Cluster, a node that fails costs only the
    /// keys it serves, as long as another node answered.
    pub(crate) fn partial(&mut self) -> &mut Self {
        self.partial = true;
        self
    }

    pub(crate) fn cmd(&mut self, name: &str) -> &mut Self {
        self.cmds.push((redis::cmd(name), false));
        self
    }

    /// Adds an argument to the last command.
    pub(crate) fn arg<T: redis::ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        if let Some((cmd, _)) = self.cmds.last_mut() {
            cmd.arg(arg);
        }
        self
    }

    /// Leaves the last command's reply out of the result.
    pub(crate) fn ignore(&mut self) -> &mut Self {
        if let Some((_, ignored)) = self.cmds.last_mut() {
            *ignored = true;
        }
        self
    }

    fn pipeline(&self, indices: std::ops::Range<usize>) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        if self.atomic {
            pipe.atomic();
        }
        for (cmd, ignored) in &self.cmds[indices] {
            pipe.add_command(cmd.clone());
            if *ignored {
                pipe.ignore();
            }
        }
        pipe
    }

    #[cfg(feature = "redis-cluster")]
    fn pipeline_keeping_all(&self, indices: &[usize]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        if self.atomic {
            pipe.atomic();
        }
        for &index in indices {
            pipe.add_command(self.cmds[index].0.clone());
        }
        pipe
    }

    /// The commands' indices grouped by hash slot, in order of first appearance. A command
    /// with no key joins the first group (a batch of keyless commands has no slot).
    #[cfg(feature = "redis-cluster")]
    fn slot_groups(&self) -> Vec<(Option<u16>, Vec<usize>)> {
        let mut groups: Vec<(Option<u16>, Vec<usize>)> = Vec::new();
        let mut keyless = Vec::new();
        for (index, (cmd, _)) in self.cmds.iter().enumerate() {
            let Some(key) = routing_key(cmd) else {
                keyless.push(index);
                continue;
            };
            let slot = Some(super::routing::slot(&key));
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, group)) => group.push(index),
                None => groups.push((slot, vec![index])),
            }
        }
        if !keyless.is_empty() {
            match groups.first_mut() {
                Some((_, first)) => {
                    first.extend(keyless);
                    first.sort_unstable();
                }
                None => groups.push((None, keyless)),
            }
        }
        groups
    }
}

#[cfg(all(test, feature = "redis-cluster"))]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_names_every_node_with_its_credentials() {
        let Target::Cluster(nodes) =
            Target::parse("redis-cluster://user:pw@127.0.0.1:7000,127.0.0.1:7001/").unwrap()
        else {
            panic!("not a cluster")
        };
        assert_eq!(
            nodes,
            [
                "redis://user:pw@127.0.0.1:7000",
                "redis://user:pw@127.0.0.1:7001"
            ]
        );
        assert!(Target::parse("redis-cluster://").is_err());
        assert!(Target::parse("redis-cluster://127.0.0.1:notaport").is_err());
        assert!(matches!(
            Target::parse("redis://127.0.0.1:6379"),
            Ok(Target::Server(_))
        ));
    }

    #[test]
    fn a_batch_is_split_by_slot_and_keeps_its_order() {
        let mut batch = Batch::new();
        batch.cmd("GET").arg("{a}1");
        batch.cmd("GET").arg("{b}1");
        batch.cmd("GET").arg("{a}2");
        batch.cmd("EVAL").arg("return 1").arg(1).arg("{b}2");
        batch.cmd("PING");
        let groups: Vec<Vec<usize>> = batch.slot_groups().into_iter().map(|(_, g)| g).collect();
        assert_eq!(groups, vec![vec![0, 2, 4], vec![1, 3]]);
    }
}
