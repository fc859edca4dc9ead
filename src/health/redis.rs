//! The Redis `PING` check (feature `redis`), of one server or of every node of a Cluster.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr};
use tokio::time::Instant;

use super::check::{CheckFuture, CheckOutput, HealthCheck};

/// Checks Redis with a `PING` round trip over a connection it keeps (reconnecting after a
/// failure). Connecting and the `PING` are each bounded by the timeout, so a server that
/// accepts connections but never answers is reported unhealthy within it.
///
/// On a Redis Cluster ([`RedisCheck::cluster`]) it asks a node for the cluster's nodes
/// (`CLUSTER NODES`) and pings each, concurrently, reporting every node under `nodes` (its
/// address, role, slots, the cluster's flags for it, whether it answered): healthy when all
/// answer, degraded when some do not (their slots fail, or wait for a replica's promotion),
/// unhealthy when no master answers.
pub struct RedisCheck {
    /// The server, or a Cluster's seed nodes.
    clients: Vec<redis::Client>,
    cluster: bool,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// A Cluster's connections, by node address.
    nodes: tokio::sync::Mutex<HashMap<String, MultiplexedConnection>>,
}

impl std::fmt::Debug for RedisCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCheck")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisCheck {
    /// A check of the server `client` points at, with a 1 s timeout.
    pub fn new(client: redis::Client) -> Self {
        Self::with_clients(vec![client], false)
    }

    /// A check of a Redis Cluster reached through its `seeds` (any of its nodes; the
    /// credentials and TLS settings of the first apply to every node), with a 1 s timeout.
    pub fn cluster(seeds: impl IntoIterator<Item = redis::Client>) -> Self {
        Self::with_clients(seeds.into_iter().collect(), true)
    }

    fn with_clients(clients: Vec<redis::Client>, cluster: bool) -> Self {
        Self {
            clients,
            cluster,
            timeout: Duration::from_secs(1),
            conn: tokio::sync::Mutex::new(None),
            nodes: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Timeout of connecting and of the `PING` (each).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn connect(&self, client: &redis::Client) -> Result<MultiplexedConnection, String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!("connect failed: {e}")),
            Err(_) => Err(format!(
                "connect timed out after {} ms",
                self.timeout.as_millis()
            )),
        }
    }
}

impl HealthCheck for RedisCheck {
    fn check(&self) -> CheckFuture<'_> {
        if self.cluster {
            return Box::pin(self.check_cluster());
        }
        Box::pin(async move {
            let mut slot = self.conn.lock().await;
            let mut conn = match slot.take() {
                Some(conn) => conn,
                None => match self.connect(&self.clients[0]).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        return CheckOutput::unhealthy(e)
                            .details(serde_json::json!({ "connected": false }));
                    }
                },
            };
            let start = Instant::now();
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            let result = tokio::time::timeout(self.timeout, ping).await;
            let round_trip = start.elapsed();
            let details = |connected: bool| {
                serde_json::json!({
                    "connected": connected,
                    "ping_ms": round_trip.as_secs_f64() * 1e3,
                })
            };
            match result {
                Ok(Ok(reply)) if reply == "PONG" => {
                    *slot = Some(conn);
                    CheckOutput::healthy(details(true))
                }
                Ok(Ok(reply)) => CheckOutput::unhealthy(format!("unexpected PING reply {reply:?}"))
                    .details(details(true)),
                Ok(Err(e)) => {
                    CheckOutput::unhealthy(format!("PING failed: {e}")).details(details(false))
                }
                Err(_) => CheckOutput::unhealthy(format!(
                    "PING timed out after {} ms",
                    self.timeout.as_millis()
                ))
                .details(details(false)),
            }
        })
    }
}

/// One node of a `CLUSTER NODES` reply.
#[derive(Debug, PartialEq)]
struct ClusterNode {
    host: String,
    port: u16,
    flags: String,
    slots: String,
}

impl ClusterNode {
    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn is_master(&self) -> bool {
        self.flags.split(',').any(|f| f == "master")
    }
}

/// Parses `CLUSTER NODES`: `id host:port@bus[,hostname] flags master ping pong epoch link
/// slot...`, one node a line; nodes without an address are left out.
fn parse_nodes(reply: &str) -> Vec<ClusterNode> {
    reply
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
            let flags = (*fields.get(2)?).to_owned();
            if flags.contains("noaddr") || flags.contains("handshake") {
                return None;
            }
            Some(ClusterNode {
                host: host.to_owned(),
                port,
                flags,
                slots: fields.get(8..).unwrap_or_default().join(" "),
            })
        })
        .collect()
}

/// A client for the node at `host:port`, with `seed`'s credentials and TLS settings.
fn client_at(seed: &redis::Client, host: &str, port: u16) -> redis::RedisResult<redis::Client> {
    let info = seed.get_connection_info().clone();
    let addr = match info.addr().clone() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure,
            tls_params,
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    redis::Client::open(info.set_addr(addr))
}

impl RedisCheck {
    /// Runs `cmd` on the node at `address` (`client` reaches it), over the connection kept
    /// for it; a failed connection is dropped and made again next time.
    async fn on_node(
        &self,
        address: &str,
        client: &redis::Client,
        cmd: &redis::Cmd,
    ) -> Result<redis::Value, String> {
        let kept = self.nodes.lock().await.remove(address);
        let mut conn = match kept {
            Some(conn) => conn,
            None => self.connect(client).await?,
        };
        match tokio::time::timeout(self.timeout, cmd.query_async::<redis::Value>(&mut conn)).await {
            Ok(Ok(value)) => {
                self.nodes.lock().await.insert(address.to_owned(), conn);
                Ok(value)
            }
            Ok(Err(e)) => Err(format!("{e}")),
            Err(_) => Err(format!("timed out after {} ms", self.timeout.as_millis())),
        }
    }

    async fn check_cluster(&self) -> CheckOutput {
        let Some(seed) = self.clients.first() else {
            return CheckOutput::unhealthy("no Redis Cluster node to ask");
        };
        // The cluster's view of its nodes, from the first seed that answers.
        let mut ask = redis::cmd("CLUSTER");
        ask.arg("NODES");
        let mut view = Err("no seed node".to_owned());
        for client in &self.clients {
            let address = match client.get_connection_info().addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    format!("{host}:{port}")
                }
                other => format!("{other}"),
            };
            view = self.on_node(&address, client, &ask).await;
            if view.is_ok() {
                break;
            }
        }
        let nodes = match view
            .and_then(|v| redis::from_redis_value::<String>(v).map_err(|e| e.to_string()))
        {
            Ok(reply) => parse_nodes(&reply),
            Err(e) => {
                return CheckOutput::unhealthy(format!("no Cluster node answered: {e}"))
                    .details(serde_json::json!({ "cluster": true, "nodes": [] }));
            }
        };
        let pings = nodes.iter().map(|node| async move {
            let started = Instant::now();
            let answer = match client_at(seed, &node.host, node.port) {
                Ok(client) => {
                    self.on_node(&node.address(), &client, &redis::cmd("PING"))
                        .await
                }
                Err(e) => Err(e.to_string()),
            };
            (answer, started.elapsed())
        });
        let answers = futures_util::future::join_all(pings).await;
        let mut report = Vec::new();
        let (mut masters_up, mut down) = (0, Vec::new());
        for (node, (answer, took)) in nodes.iter().zip(answers) {
            let ok = answer.is_ok();
            if ok && node.is_master() {
                masters_up += 1;
            }
            if !ok {
                down.push(node.address());
            }
            report.push(serde_json::json!({
                "address": node.address(),
                "role": if node.is_master() { "master" } else { "replica" },
                "flags": node.flags,
                "slots": node.slots,
                "ok": ok,
                "ping_ms": took.as_secs_f64() * 1e3,
                "error": answer.err(),
            }));
        }
        let details = serde_json::json!({ "cluster": true, "nodes": report });
        if masters_up == 0 {
            CheckOutput::unhealthy("no Redis Cluster master answers").details(details)
        } else if !down.is_empty() {
            CheckOutput::degraded(
                details,
                format!(
                    "{} of {} Redis Cluster nodes do not answer: {}",
                    down.len(),
                    nodes.len(),
                    down.join(", ")
                ),
            )
        } else {
            CheckOutput::healthy(details)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_parsed() {
        let reply = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b2 127.0.0.1:7001@17001,host.example slave a1 0 1 1 connected\n\
                     c3 :0@0 master,noaddr - 0 0 2 disconnected\n";
        let nodes = parse_nodes(reply);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].address(), "127.0.0.1:7000");
        assert!(nodes[0].is_master());
        assert_eq!(nodes[0].slots, "0-5460");
        assert_eq!(nodes[1].address(), "127.0.0.1:7001");
        assert!(!nodes[1].is_master());
    }
}
