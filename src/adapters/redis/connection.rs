//! One connection type for a single Redis and a Redis Cluster, so that the
//! bus's commands, scripts and pipelines are written once.
//!
//! - [`Endpoint::parse`]: a comma-separated list of node URLs
//!   (`redis://127.0.0.1:7001,redis://127.0.0.1:7002`) names a cluster;
//!   one URL names a single Redis unless `cluster` is set (`--redis-cluster`,
//!   `REDIS_CLUSTER=1`), which makes it the seed of a cluster.
//! - [`RedisConn`]: a `ConnectionManager` (single node, reconnects by
//!   itself) or the `redis` crate's async `ClusterConnection` (routes each
//!   command by its first key's slot, follows MOVED/ASK, reconnects).
//!   Both implement `ConnectionLike`; the few operations that must see
//!   every node (deleting a prefix's keys) branch here, nowhere else.
//!
//! On a cluster a pipeline, a MULTI and a script must stay in one slot:
//! the bus's keys carry the hash tag `{prefix:service}` (see `keys`).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Client, Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::keys;
use crate::domain::Service;

/// Where the bus's Redis is: one server or a cluster.
#[derive(Clone)]
pub enum Endpoint {
    Single(Client),
    Cluster(ClusterClient),
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_cluster() {
            "Endpoint::Cluster"
        } else {
            "Endpoint::Single"
        })
    }
}

/// Whether `url` (a `REDIS_URL`) names a cluster by itself: more than one
/// node URL, comma-separated.
pub fn names_cluster(url: &str) -> bool {
    url.split(',').filter(|u| !u.trim().is_empty()).count() > 1
}

impl Endpoint {
    /// The endpoint `url` names (see the module docs); `cluster` forces
    /// cluster mode for a single seed URL. The error does not repeat a
    /// password.
    pub fn parse(url: &str, cluster: bool) -> Result<Endpoint, String> {
        let nodes: Vec<&str> = url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        let shown = super::redact(url);
        if nodes.is_empty() {
            return Err(format!("REDIS_URL {shown:?} names no Redis"));
        }
        if nodes.len() == 1 && !cluster {
            return Client::open(nodes[0])
                .map(Endpoint::Single)
                .map_err(|e| format!("REDIS_URL {shown:?} is not a valid Redis URL: {e}"));
        }
        ClusterClientBuilder::new(nodes)
            .retries(2)
            .build()
            .map(Endpoint::Cluster)
            .map_err(|e| format!("REDIS_URL {shown:?} is not a valid list of Redis Cluster nodes: {e}"))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Endpoint::Cluster(_))
    }

    /// A new connection whose commands time out after `response` (connecting
    /// after `connect`).
    pub async fn connect(&self, connect: Duration, response: Duration) -> Result<RedisConn, RedisError> {
        match self {
            Endpoint::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(response)
                    .set_number_of_retries(2)
                    .set_max_delay(1000);
                Ok(RedisConn::Single(
                    ConnectionManager::new_with_config(client.clone(), config).await?,
                ))
            }
            Endpoint::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(response);
                Ok(RedisConn::Cluster(
                    client.get_async_connection_with_config(config).await?,
                ))
            }
        }
    }
}

/// A connection to the bus's Redis; see the module docs.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Keys looked at per slot when deleting a prefix on a cluster (a bus has
/// four keys per service; tests and torture a few more).
const SLOT_KEYS_MAX: usize = 10_000;

impl RedisConn {
    /// Every key of the bus with `prefix` (on every node of a cluster).
    /// A single server is SCANned; on a cluster every service's keys share
    /// one slot, listed on the node that owns it (CLUSTER GETKEYSINSLOT).
    pub async fn keys_of_prefix(&mut self, prefix: &str) -> Result<Vec<String>, RedisError> {
        let mut found = Vec::new();
        match self {
            RedisConn::Single(conn) => {
                let mut cursor: u64 = 0;
                // Bounded: a bus has a handful of keys per service.
                for _ in 0..100_000 {
                    let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(keys::scan_pattern(prefix))
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(conn)
                        .await?;
                    found.extend(batch.into_iter().filter(|k| keys::owned_by(prefix, k)));
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
            }
            RedisConn::Cluster(conn) => {
                for service in Service::ALL {
                    let tag = keys::tag(prefix, service);
                    let slot: u16 = redis::cmd("CLUSTER")
                        .arg("KEYSLOT")
                        .arg(&tag)
                        .query_async(conn)
                        .await?;
                    let listed = conn
                        .route_command(
                            redis::cmd("CLUSTER")
                                .arg("GETKEYSINSLOT")
                                .arg(slot)
                                .arg(SLOT_KEYS_MAX),
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                                slot,
                                SlotAddr::Master,
                            ))),
                        )
                        .await?;
                    let listed: Vec<String> = redis::from_redis_value(&listed)?;
                    found.extend(listed.into_iter().filter(|k| keys::owned_by(prefix, k)));
                }
            }
        }
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Deletes every key of the bus with `prefix` (one DEL per key, so
    /// never across slots); returns how many went.
    pub async fn delete_prefix(&mut self, prefix: &str) -> Result<u64, RedisError> {
        let mut deleted = 0;
        for key in self.keys_of_prefix(prefix).await? {
            let n: u64 = redis::cmd("DEL").arg(&key).query_async(self).await?;
            deleted += n;
        }
        Ok(deleted)
    }
}

/// A connection to `url` (see [`Endpoint::parse`]) with `timeout` for
/// connecting and for each command: for tools and tests that run raw
/// commands beside a bus.
pub async fn connect(url: &str, cluster: bool, timeout: Duration) -> Result<RedisConn, String> {
    let endpoint = Endpoint::parse(url, cluster)?;
    endpoint
        .connect(timeout, timeout)
        .await
        .map_err(|e| format!("cannot connect to Redis at {}: {e}", super::redact(url)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_urls_names_a_cluster_and_the_flag_forces_one() {
        assert!(!Endpoint::parse("redis://127.0.0.1:6379", false)
            .unwrap()
            .is_cluster());
        assert!(Endpoint::parse("redis://127.0.0.1:6379", true)
            .unwrap()
            .is_cluster());
        assert!(
            Endpoint::parse("redis://127.0.0.1:7001, redis://127.0.0.1:7002", false)
                .unwrap()
                .is_cluster()
        );
        assert!(names_cluster("redis://a:1,redis://b:2"));
        assert!(!names_cluster("redis://a:1,"));
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let err = Endpoint::parse("nope://:hunter2@x", false).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(Endpoint::parse(" , ", false).is_err());
    }
}
