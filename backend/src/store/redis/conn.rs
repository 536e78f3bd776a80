//! One Redis, or a Redis Cluster found through the `--redis` node: the
//! connections natter's commands, scripts and subscriptions go through.
//!
//! Everything natter sends for a room names only that room's keys (hash tag
//! `{room}`), so a script or a pipeline of one room goes to the node that
//! holds the room's slot. What differs in a cluster: a pipeline may not mix
//! rooms (the writer sends one per room), the persistence settings are read
//! from every master, and a subscription to a room's shard channel is made
//! on the node that owns its slot (the crate routes `SSUBSCRIBE` by the
//! channel; the fan-out subscribes one channel per call and, when a node's
//! connection drops, replaces the whole subscription connection rather than
//! trust the crate's own resubscription, which sends several slots' channels
//! in one command).

use std::collections::HashMap;
use std::time::Duration;

use ::redis::aio::{AsyncPushSender, ConnectionLike, ConnectionManager, ConnectionManagerConfig, SendError};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use ::redis::{Cmd, FromRedisValue, Pipeline, ProtocolVersion, RedisFuture, Value};

use super::{Failure, RECONNECT_ATTEMPTS, RECONNECT_MAX_DELAY, RECONNECT_MIN_DELAY, durability, within};

/// Whether natter's Redis is one server or a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Single,
    Cluster,
}

/// A connection for commands and scripts (clones share its sockets).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    pub fn mode(&self) -> Mode {
        match self {
            Conn::Single(_) => Mode::Single,
            Conn::Cluster(_) => Mode::Cluster,
        }
    }

    /// The persistence settings of every master (one entry, named `Redis`,
    /// for a single server).
    pub async fn durability(&mut self, timeout: Duration) -> Result<Vec<(String, HashMap<String, String>)>, Failure> {
        match self {
            Conn::Single(c) => Ok(vec![("Redis".to_owned(), within(timeout, durability::read(c)).await?)]),
            Conn::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let reply = within(timeout, c.route_command(durability::command(), routing)).await?;
                let nodes = match reply {
                    Value::Map(nodes) => nodes,
                    other => vec![(Value::SimpleString("the cluster".into()), other)],
                };
                let mut out = Vec::new();
                for (node, settings) in nodes {
                    let node = String::from_redis_value(node).unwrap_or_else(|_| "a node".into());
                    let settings = HashMap::<String, String>::from_redis_value(settings)
                        .map_err(|e| Failure::Redis(::redis::RedisError::from(e)))?;
                    out.push((format!("cluster node {node}"), settings));
                }
                Ok(out)
            }
        }
    }
}

/// Whether the Redis at `client` is a cluster node (`INFO cluster`; a
/// server that does not answer it is taken for a single one).
pub async fn mode_of(client: &::redis::Client, timeout: Duration) -> Result<Mode, Failure> {
    let mut plain = within(timeout, client.get_multiplexed_async_connection()).await?;
    let info: Result<String, _> = within(timeout, ::redis::cmd("INFO").arg("cluster").query_async(&mut plain)).await;
    Ok(match info {
        Ok(info) if info.lines().any(|l| l.trim() == "cluster_enabled:1") => Mode::Cluster,
        _ => Mode::Single,
    })
}

/// The cluster client for `url`, a node of the cluster (the others are
/// found from it), with natter's timeouts and reconnection pauses.
fn cluster_client(
    url: &str,
    timeout: Duration,
    push: Option<Box<dyn AsyncPushSender>>,
) -> Result<ClusterClient, Failure> {
    let retry_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut builder = ClusterClient::builder(vec![url])
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .overall_response_timeout(Some(timeout))
        .retries(u32::try_from(RECONNECT_ATTEMPTS).unwrap_or(u32::MAX))
        .min_retry_wait(retry_ms(RECONNECT_MIN_DELAY))
        .max_retry_wait(retry_ms(RECONNECT_MAX_DELAY));
    if let Some(push) = push {
        builder = builder.use_protocol(ProtocolVersion::RESP3).push_sender(BoxedSender(push));
    }
    Ok(builder.build()?)
}

/// A connection manager's settings: natter's timeout and reconnection pauses.
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_min_delay(RECONNECT_MIN_DELAY)
        .set_max_delay(RECONNECT_MAX_DELAY)
        .set_number_of_retries(RECONNECT_ATTEMPTS)
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
}

/// The command connection: a connection manager for one server, a
/// cluster connection for a cluster.
pub async fn commands(client: &::redis::Client, url: &str, mode: Mode, timeout: Duration) -> Result<Conn, Failure> {
    match mode {
        Mode::Single => {
            let config = manager_config(timeout);
            Ok(Conn::Single(within(timeout, ConnectionManager::new_with_config(client.clone(), config)).await?))
        }
        Mode::Cluster => {
            let cluster = cluster_client(url, timeout, None)?;
            Ok(Conn::Cluster(within(timeout, cluster.get_async_connection()).await?))
        }
    }
}

/// A subscription connection (RESP3, pushes to a sender).
#[derive(Clone)]
pub enum Sub {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Sub {
    /// Connects one whose pushes go to `push`.
    pub async fn connect(
        client: &::redis::Client,
        url: &str,
        mode: Mode,
        timeout: Duration,
        push: impl AsyncPushSender,
    ) -> Result<Self, Failure> {
        match mode {
            Mode::Single => {
                let config = manager_config(timeout).set_push_sender(push);
                Ok(Sub::Single(within(timeout, ConnectionManager::new_with_config(client.clone(), config)).await?))
            }
            Mode::Cluster => {
                let cluster = cluster_client(url, timeout, Some(Box::new(push)))?;
                Ok(Sub::Cluster(within(timeout, cluster.get_async_connection()).await?))
            }
        }
    }

    /// Subscribes to one shard channel (its confirmation is the reply).
    pub async fn ssubscribe(&mut self, channel: &str, timeout: Duration) -> Result<(), Failure> {
        match self {
            Sub::Single(c) => within(timeout, ::redis::cmd("SSUBSCRIBE").arg(channel).exec_async(c)).await,
            Sub::Cluster(c) => within(timeout, c.ssubscribe(channel)).await,
        }
    }
}

/// A boxed push sender, as the cluster builder takes one by value.
struct BoxedSender(Box<dyn AsyncPushSender>);

impl AsyncPushSender for BoxedSender {
    fn send(&self, info: ::redis::PushInfo) -> Result<(), SendError> {
        self.0.send(info)
    }
}
