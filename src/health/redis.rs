//! The Redis `PING` check (feature `redis`).

use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use super::check::{CheckFuture, CheckOutput, HealthCheck};

/// Checks Redis with a `PING` round trip over a connection it keeps (reconnecting after a
/// failure). Connecting and the `PING` are each bounded by the timeout, so a server that
/// accepts connections but never answers is reported unhealthy within it.
pub struct RedisCheck {
    client: redis::Client,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
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
        Self {
            client,
            timeout: Duration::from_secs(1),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Timeout of connecting and of the `PING` (each).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
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
        Box::pin(async move {
            let mut slot = self.conn.lock().await;
            let mut conn = match slot.take() {
                Some(conn) => conn,
                None => match self.connect().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        return CheckOutput::unhealthy(e)
                            .with_details(serde_json::json!({ "connected": false }));
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
                    .with_details(details(true)),
                Ok(Err(e)) => {
                    CheckOutput::unhealthy(format!("PING failed: {e}")).with_details(details(false))
                }
                Err(_) => CheckOutput::unhealthy(format!(
                    "PING timed out after {} ms",
                    self.timeout.as_millis()
                ))
                .with_details(details(false)),
            }
        })
    }
}
