//! Where a torture seed's bus lives, and the faults that reach it there:
//!
//! - [`RedisLayout::Single`] (the default): a private `redis-server --save
//!   '' --appendonly no` on a free port (`purchase_saga_testkit::PrivateRedis`),
//!   started for the seed and stopped after it, so that `CLIENT KILL`, a
//!   pause and a restart (all data lost) disturb nobody else.
//! - [`RedisLayout::Cluster`] (`--redis cluster`): a private three-node
//!   Redis Cluster (`purchase_saga_testkit::RedisCluster`) per seed; the
//!   replicas, the checker and the witness reach it through the cluster
//!   client (its URL lists the three nodes). The six services' keys sit in
//!   six slots (hash tag `{prefix:service}`), spread over the masters.
//! - `--redis-url`: that server under the seed's own key prefix: "all data
//!   lost" deletes the prefix's keys, and connection kills, pauses and
//!   memory limits are not injected (torture cannot tell its connections
//!   from other users').
//!
//! Each fault's cluster meaning, counted by its effect as on one server:
//!
//! | fault | one server | a cluster |
//! | --- | --- | --- |
//! | `redis-kill` | `CLIENT KILL TYPE normal` | the same on every node, the kills summed |
//! | `redis-loss`, `broker-loss` | restart, new `run_id` | restart of every node holding the seed's keys (each keeps its `nodes.conf` and rejoins with its slots): a new `run_id` on each, and no key on it when it first answers |
//! | pause before a loss | `CLIENT PAUSE WRITE` | on every node |
//! | `redis-oom` | `maxmemory` under the used memory, a probe SET refused | on every node holding the seed's keys, each refusing a probe SET in one of its own slots |
//! | xdel, wrong-type dead key, poison | one-key scripts and commands | the same, routed by the key's slot (a service's keys share one) |
//!
//! A loss restarts every node that holds the seed's keys, not one: the
//! fault is "the broker lost the seed's data", and the checker's stream
//! cursors ([`super::streams::StreamWatch::lost`]) and dead-letter
//! expectations read a loss as all of it gone. A node with none of the
//! seed's keys (six slots may miss one of three masters) has nothing to
//! lose and is left running.

use std::time::Duration;

use purchase_saga::adapters::redis::connection::{self, RedisConn};
use purchase_saga::adapters::redis::keys;
use purchase_saga::domain::Service;
use purchase_saga_testkit::{PrivateRedis, RedisCluster};
use redis::aio::MultiplexedConnection;

use super::state::{Shared, Swallowed};

/// How long a restarted cluster node may take to be ok again.
const SETTLE_WITHIN: Duration = Duration::from_secs(10);
/// Redis's `CLUSTER_WRITABLE_DELAY`: a master back from a restart answers
/// `CLUSTERDOWN` this long.
pub const WRITABLE_DELAY_MS: u64 = 2_000;

/// The consumer name under which torture takes an entry to XDEL.
pub const XDEL_CONSUMER: &str = "torture-xdel";

/// Pending entries [`RedisTarget::take_entry`] looks through for one
/// still in the stream.
const TAKE_SCAN_MAX: u64 = 100;

/// What [`RedisTarget::xdel_if_untouched`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Xdel {
    /// Deleted while pending, its holder and count unchanged.
    Deleted,
    /// No longer pending (acknowledged: a consumer handled it), or the
    /// group is gone (Redis lost its data); left alone.
    NotPending,
    /// Pending as taken, but gone from the stream already; left alone.
    NotInStream,
    /// A consumer was handed it since (`holder` now, `deliveries` times in
    /// all): it holds the payload and will handle it, so deleting it now
    /// would expect a dead letter the bus rightly never writes; left alone.
    HandedOn { holder: String, deliveries: u64 },
}

/// Where a dead-letter stream waits while its key has the wrong type
/// (the same hash tag as the key, so the same slot).
fn aside(dead_key: &str) -> String {
    format!("{dead_key}:torture-aside")
}

/// Which private Redis a seed starts (without `--redis-url`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RedisLayout {
    /// One redis-server per seed.
    #[default]
    Single,
    /// A three-node Redis Cluster per seed.
    Cluster,
}

impl RedisLayout {
    pub fn name(self) -> &'static str {
        match self {
            RedisLayout::Single => "single",
            RedisLayout::Cluster => "cluster",
        }
    }
}

/// Whether a private Redis of `layout` can be started: `redis-server`
/// (and, for a cluster, `redis-cli`) runs. The error says what to install.
pub fn preflight(layout: RedisLayout) -> Result<(), String> {
    let mut needed = vec!["redis-server"];
    if layout == RedisLayout::Cluster {
        needed.push("redis-cli");
    }
    for program in needed {
        let version = std::process::Command::new(program).arg("--version").output();
        if !matches!(&version, Ok(o) if o.status.success()) {
            return Err(format!(
                "cannot run {program} ({version:?}). To fix: {}",
                purchase_saga_testkit::INSTALL
            ));
        }
    }
    Ok(())
}

/// A node of the seed's Redis that holds some of its keys.
#[derive(Debug, Clone)]
pub struct KeyNode {
    /// Index into the cluster's nodes (0 on one server).
    pub index: usize,
    pub url: String,
    /// The services whose keys (one slot each) it owns.
    pub services: Vec<Service>,
}

/// Where a seed's bus lives; see the module docs.
pub enum RedisTarget {
    Private(PrivateRedis),
    Cluster {
        cluster: RedisCluster,
        prefix: String,
        /// Losses so far (each about [`WRITABLE_DELAY_MS`] of CLUSTERDOWN).
        losses: u64,
    },
    Shared {
        url: String,
        prefix: String,
    },
}

impl RedisTarget {
    /// Starts the seed's private Redis of `layout`, or names the shared
    /// one (`redis_url`). Blocks while the servers start.
    pub fn start(redis_url: Option<&str>, layout: RedisLayout, prefix: &str) -> Result<RedisTarget, String> {
        match (redis_url, layout) {
            (Some(url), RedisLayout::Single) => Ok(RedisTarget::Shared {
                url: url.to_string(),
                prefix: prefix.to_string(),
            }),
            (Some(_), RedisLayout::Cluster) => Err(
                "--redis-url names a shared Redis; --redis cluster starts a private cluster: pick one".into(),
            ),
            (None, RedisLayout::Single) => PrivateRedis::start().map(RedisTarget::Private),
            (None, RedisLayout::Cluster) => RedisCluster::start().map(|cluster| RedisTarget::Cluster {
                cluster,
                prefix: prefix.to_string(),
                losses: 0,
            }),
        }
    }

    /// The URL the bus connects to (the three nodes, comma-separated, on
    /// a cluster: the bus then takes the cluster client).
    pub fn url(&self) -> String {
        match self {
            RedisTarget::Private(p) => p.url(),
            RedisTarget::Cluster { cluster, .. } => cluster.url(),
            RedisTarget::Shared { url, .. } => url.clone(),
        }
    }

    /// How long the bus was down for its losses on a cluster (each node
    /// back from one refuses keyed commands for Redis's writable delay); 0
    /// on one server, whose restart is over when it answers PING. The
    /// driver holds the heal back by this much for a waiting xdel, as for
    /// the other faults that stop deliveries.
    pub fn downtime_ms(&self) -> u64 {
        match self {
            RedisTarget::Cluster { losses, .. } => losses * WRITABLE_DELAY_MS,
            _ => 0,
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster { .. })
    }

    /// A connection that routes each command by its key (the cluster
    /// client on a cluster, once every node's cluster state is ok: see
    /// [`RedisTarget::settle`]).
    async fn conn(&self) -> Result<RedisConn, String> {
        self.settle().await?;
        connection::connect(&self.url(), false, Duration::from_secs(5)).await
    }

    /// On a cluster, waits until every node reports `cluster_state:ok`:
    /// after a loss its restarted nodes answer `CLUSTERDOWN` to every keyed
    /// command for about two seconds (Redis's writable delay), which the
    /// replicas meet as the loss's downtime, and which torture's own keyed
    /// commands (the streams read, an entry taken, a probe SET) wait out.
    /// At once when the cluster is ok, and on one server.
    pub async fn settle(&self) -> Result<(), String> {
        self.settle_within(SETTLE_WITHIN).await
    }

    /// [`RedisTarget::settle`] waiting at most `within` (none: one look).
    async fn settle_within(&self, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        for url in self.node_urls() {
            if !self.is_cluster() {
                break;
            }
            loop {
                let info: Result<String, String> = match node_conn(&url).await {
                    Ok(mut conn) => redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match info {
                    Ok(info) if info.contains("cluster_state:ok") => break,
                    last if tokio::time::Instant::now() >= deadline => {
                        return Err(format!(
                            "the cluster node {url} is not ok after {within:?}: {last:?}"
                        ))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        Ok(())
    }

    /// Every server of a private Redis (each node of a cluster); none on a
    /// shared one (never disturbed).
    fn node_urls(&self) -> Vec<String> {
        match self {
            RedisTarget::Private(p) => vec![p.url()],
            RedisTarget::Cluster { cluster, .. } => cluster.node_urls(),
            RedisTarget::Shared { .. } => Vec::new(),
        }
    }

    /// The nodes of a private Redis that own the seed's keys: the one
    /// server, or each cluster master owning a service's slot (the slot of
    /// its hash tag, by CLUSTER KEYSLOT, against each node's own slot
    /// ranges in CLUSTER NODES). None on a shared Redis.
    pub async fn key_nodes(&self) -> Result<Vec<KeyNode>, String> {
        let (cluster, prefix) = match self {
            RedisTarget::Private(p) => {
                return Ok(vec![KeyNode {
                    index: 0,
                    url: p.url(),
                    services: Service::ALL.to_vec(),
                }])
            }
            RedisTarget::Shared { .. } => return Ok(Vec::new()),
            RedisTarget::Cluster { cluster, prefix, .. } => (cluster, prefix),
        };
        let urls = cluster.node_urls();
        let mut owned: Vec<Vec<(u16, u16)>> = Vec::new();
        for url in &urls {
            let mut conn = node_conn(url).await?;
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("CLUSTER NODES on {url}: {e}"))?;
            owned.push(own_slots(&nodes));
        }
        let mut conn = node_conn(&urls[0]).await?;
        let mut found: Vec<KeyNode> = Vec::new();
        for service in Service::ALL {
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(keys::tag(prefix, service))
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("CLUSTER KEYSLOT: {e}"))?;
            let index = owned
                .iter()
                .position(|ranges| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
                .ok_or_else(|| format!("no node owns slot {slot} ({service}'s keys)"))?;
            match found.iter_mut().find(|n| n.index == index) {
                Some(node) => node.services.push(service),
                None => found.push(KeyNode {
                    index,
                    url: urls[index].clone(),
                    services: vec![service],
                }),
            }
        }
        found.sort_by_key(|n| n.index);
        Ok(found)
    }

    /// Loses every key of the seed: a restart without persistence (on a
    /// cluster, of every node holding its keys; see the module docs), or
    /// the prefix's keys deleted on a shared server.
    pub async fn lose_everything(&mut self) -> Result<String, String> {
        if self.is_cluster() {
            return self.lose_cluster().await;
        }
        match self {
            RedisTarget::Private(p) => {
                p.restart()?;
                Ok("redis-server restarted without persistence".into())
            }
            RedisTarget::Cluster { .. } => unreachable!("handled above"),
            RedisTarget::Shared { url, prefix } => {
                // Every key of the bus's prefix, on every node of a
                // cluster, one DEL per key (never across slots).
                let mut conn = connection::connect(url, false, Duration::from_secs(5)).await?;
                let deleted = conn
                    .delete_prefix(prefix)
                    .await
                    .map_err(|e| format!("deleting the keys of prefix {prefix}: {e}"))?;
                Ok(format!("{deleted} keys of prefix {prefix} deleted"))
            }
        }
    }

    /// The nodes holding the seed's keys restarted (the writes of the
    /// others held by the loss's pause are let go), each seen empty when it
    /// first answers (a restarted master refuses every keyed command until
    /// its cluster state is ok again, so no client can have written there
    /// yet). Returns without waiting for that (see [`RedisTarget::settle`]).
    async fn lose_cluster(&mut self) -> Result<String, String> {
        let holders = self.key_nodes().await?;
        let which: Vec<usize> = holders.iter().map(|n| n.index).collect();
        let RedisTarget::Cluster { cluster, losses, .. } = self else {
            unreachable!("a cluster target");
        };
        *losses += 1;
        tokio::task::block_in_place(|| cluster.restart_nodes(&which))?;
        let mut kept = Vec::new();
        for node in &holders {
            let mut conn = node_conn(&node.url).await?;
            let n: u64 = redis::cmd("DBSIZE")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("DBSIZE on {}: {e}", node.url))?;
            if n > 0 {
                kept.push(format!("{} kept {n} keys", node.url));
            }
        }
        self.unpause().await;
        if !kept.is_empty() {
            return Err(format!("restarted without persistence, yet {}", kept.join(", ")));
        }
        let restarted: Vec<String> = holders
            .iter()
            .map(|n| {
                let services: Vec<&str> = n.services.iter().map(|s| s.slug()).collect();
                format!("{} ({})", n.url, services.join(","))
            })
            .collect();
        Ok(format!(
            "{} of {} cluster nodes restarted without persistence, empty when back: {}",
            holders.len(),
            self.node_urls().len(),
            restarted.join("; ")
        ))
    }

    /// Each node holding the seed's keys with its `run_id` (a new one
    /// after each restart); none on a shared server.
    pub async fn run_ids(&self) -> Result<Vec<(String, String)>, String> {
        let mut ids = Vec::new();
        for node in self.key_nodes().await? {
            let mut conn = node_conn(&node.url).await?;
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("INFO server on {}: {e}", node.url))?;
            let id = info
                .lines()
                .find_map(|l| l.strip_prefix("run_id:"))
                .map(|id| id.trim().to_string())
                .ok_or_else(|| format!("INFO server on {} without run_id", node.url))?;
            ids.push((node.url, id));
        }
        Ok(ids)
    }

    /// Holds every client's writes for up to `ms` (`CLIENT PAUSE WRITE`,
    /// on every node of a cluster), so what the streams hold stays put
    /// while torture reads it before a restart; false on a shared server
    /// (not paused).
    pub async fn pause_writes(&self, ms: u64) -> Result<bool, String> {
        let nodes = self.node_urls();
        for url in &nodes {
            let mut conn = node_conn(url).await?;
            let _: String = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(ms)
                .arg("WRITE")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("CLIENT PAUSE on {url}: {e}"))?;
        }
        Ok(!nodes.is_empty())
    }

    /// Ends a [`RedisTarget::pause_writes`] on every node (where the
    /// restart did not).
    pub async fn unpause(&self) {
        for url in self.node_urls() {
            if let Ok(mut conn) = node_conn(&url).await {
                let _: Result<String, _> = redis::cmd("CLIENT").arg("UNPAUSE").query_async(&mut conn).await;
            }
        }
    }

    /// A connection of the checker's own (the cluster client on a
    /// cluster).
    pub async fn connection(&self) -> Result<RedisConn, String> {
        self.conn().await
    }

    /// Leaves nothing of the seed behind on a shared Redis (a private one
    /// stops with its guard).
    pub async fn clean_up(&mut self) -> Result<(), String> {
        match self {
            RedisTarget::Private(_) | RedisTarget::Cluster { .. } => Ok(()),
            RedisTarget::Shared { .. } => self.lose_everything().await.map(drop),
        }
    }

    /// On a cluster: how many of its nodes hold some of the seed's keys
    /// now (each service's slot counted on its owner by CLUSTER
    /// COUNTKEYSINSLOT), and how many own a service's slot, logged and
    /// kept as the checked counts `cluster-nodes-with-keys` and
    /// `cluster-nodes-owning-slots`. Nothing on one server.
    pub async fn note_spread(&self, shared: &Shared) -> Result<(), String> {
        let RedisTarget::Cluster { prefix, .. } = self else {
            return Ok(());
        };
        let mut with_keys = Vec::new();
        let owners = self.key_nodes().await?;
        shared.set_checked("cluster-nodes-owning-slots", owners.len() as u64);
        for node in owners {
            let mut conn = node_conn(&node.url).await?;
            let mut n = 0;
            for service in &node.services {
                let slot: u16 = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(keys::tag(prefix, *service))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| format!("CLUSTER KEYSLOT: {e}"))?;
                let count: u64 = redis::cmd("CLUSTER")
                    .arg("COUNTKEYSINSLOT")
                    .arg(slot)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| format!("CLUSTER COUNTKEYSINSLOT on {}: {e}", node.url))?;
                n += count;
            }
            if n > 0 {
                with_keys.push(format!("{} holds {n}", node.url));
            }
        }
        shared.log(format!(
            "== Redis Cluster: the seed's keys on {} of {} nodes: {} ==",
            with_keys.len(),
            self.node_urls().len(),
            with_keys.join("; ")
        ));
        shared.set_checked("cluster-nodes-with-keys", with_keys.len() as u64);
        Ok(())
    }

    /// Kills every other normal client connection of each node of the
    /// private Redis; the kills per node, in node order. None on a shared
    /// server (not injected).
    pub async fn kill_clients(&self) -> Result<Option<Vec<i64>>, String> {
        let nodes = self.node_urls();
        if nodes.is_empty() {
            return Ok(None);
        }
        let mut killed = Vec::new();
        for url in &nodes {
            let mut conn = node_conn(url).await?;
            let n: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .arg("SKIPME")
                .arg("yes")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("CLIENT KILL on {url}: {e}"))?;
            killed.push(n);
        }
        Ok(Some(killed))
    }

    /// Takes one entry of `group` for a consumer of torture's own
    /// ([`XDEL_CONSUMER`], which never handles it nor keeps a heartbeat, so
    /// the bus takes its entries over as a gone consumer's): an entry no
    /// consumer was handed yet, else one left pending past `idle_ms` (a
    /// delivery its consumer gave up on for now). Returns its id and its
    /// delivery count, read in the same step, or None when the group has
    /// neither; an error at once while a cluster node is back from a loss
    /// and not ok yet (its callers look again later).
    ///
    /// A pending entry is claimed by its id (XCLAIM), after XRANGE shows
    /// it still in the stream, never by XAUTOCLAIM: XAUTOCLAIM (and XCLAIM
    /// of a missing id) removes every entry deleted while pending that it
    /// meets from the pending list, whatever its idle time, without a
    /// trace; here that would be torture destroying the entries its
    /// earlier xdels left for the bus to dead-letter.
    pub async fn take_entry(
        &self,
        stream: &str,
        group: &str,
        idle_ms: u64,
    ) -> Result<Option<(String, u64)>, String> {
        // Never waits for a cluster back from a loss: its callers look
        // again soon, and the driver must not stall meanwhile.
        self.settle_within(Duration::ZERO).await?;
        let mut conn = connection::connect(&self.url(), false, Duration::from_secs(5)).await?;
        redis::Script::new(
            "local id
             local fresh = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1,
                 'STREAMS', KEYS[1], '>')
             if fresh and fresh[1][2][1] then
                 id = fresh[1][2][1][1]
             else
                 for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+',
                     ARGV[4])) do
                     if #redis.call('XRANGE', KEYS[1], p[1], p[1]) == 1 then
                         redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], p[1])
                         id = p[1]
                         break
                     end
                 end
             end
             if not id then return false end
             return {id, redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1][4]}",
        )
        .key(stream)
        .arg(group)
        .arg(XDEL_CONSUMER)
        .arg(idle_ms)
        .arg(TAKE_SCAN_MAX)
        .invoke_async(&mut conn)
        .await
        .map_err(|e| format!("taking an entry of {stream}: {e}"))
    }

    /// XDEL of `entry`, only if it is still pending under the consumer that
    /// held it when it was taken or swallowed, with the same delivery
    /// count: no consumer was handed it since (the bus takes a
    /// heartbeat-less consumer's entries over at once, and any entry after
    /// the visibility timeout), so none holds its payload and will handle
    /// it. Checked and deleted in one step.
    pub async fn xdel_if_untouched(
        &self,
        stream: &str,
        group: &str,
        entry: &Swallowed,
    ) -> Result<Xdel, String> {
        let mut conn = self.conn().await?;
        let (deleted, holder, deliveries): (i64, String, u64) = redis::Script::new(
            "local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
             if not ok then return {0, '', 0} end
             if #p == 0 then return {0, '', 0} end
             if p[1][2] ~= ARGV[3] or p[1][4] ~= tonumber(ARGV[4]) then
                 return {0, p[1][2], p[1][4]}
             end
             return {redis.call('XDEL', KEYS[1], ARGV[2]), p[1][2], p[1][4]}",
        )
        .key(stream)
        .arg(group)
        .arg(&entry.entry_id)
        .arg(&entry.consumer)
        .arg(entry.deliveries)
        .invoke_async(&mut conn)
        .await
        .map_err(|e| format!("XDEL {stream} {}: {e}", entry.entry_id))?;
        Ok(match (deleted, holder.is_empty()) {
            (1, _) => Xdel::Deleted,
            (_, true) => Xdel::NotPending,
            (_, false) if holder == entry.consumer && deliveries == entry.deliveries => Xdel::NotInStream,
            (_, false) => Xdel::HandedOn { holder, deliveries },
        })
    }

    /// Makes `dead_key` a string; a dead-letter stream already there (the
    /// dead letters of earlier faults) is renamed aside until
    /// [`RedisTarget::free_dead_key`]. Returns whether the key is now the
    /// string.
    pub async fn occupy_dead_key(&self, dead_key: &str) -> Result<bool, String> {
        let mut conn = self.conn().await?;
        let set: i64 = redis::Script::new(
            "if redis.call('EXISTS', KEYS[1]) == 1 then
                 if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return 0 end
                 redis.call('RENAME', KEYS[1], KEYS[2])
             end
             redis.call('SET', KEYS[1], 'torture-wrong-type')
             return 1",
        )
        .key(dead_key)
        .key(aside(dead_key))
        .invoke_async(&mut conn)
        .await
        .map_err(|e| format!("SET {dead_key}: {e}"))?;
        Ok(set == 1)
    }

    /// Deletes `dead_key` if it is still the string
    /// [`RedisTarget::occupy_dead_key`] left, and puts back the stream it
    /// set aside, in one step (no dead letter can land in between).
    pub async fn free_dead_key(&self, dead_key: &str) -> Result<(), String> {
        let mut conn = self.conn().await?;
        let _: i64 = redis::Script::new(
            "if redis.call('TYPE', KEYS[1]).ok == 'string' then
                 redis.call('DEL', KEYS[1])
                 if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[1]) end
             end
             return 1",
        )
        .key(dead_key)
        .key(aside(dead_key))
        .invoke_async(&mut conn)
        .await
        .map_err(|e| format!("freeing {dead_key}: {e}"))?;
        Ok(())
    }

    /// Appends an entry that is not an event to `stream`; returns its id.
    pub async fn add_poison(&self, stream: &str) -> Result<String, String> {
        let mut conn = self.conn().await?;
        redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("payload")
            .arg("torture: not an event")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("XADD {stream}: {e}"))
    }
}

/// A plain connection to one server (one node of a cluster: commands
/// without keys, run on that node).
pub(super) async fn node_conn(url: &str) -> Result<MultiplexedConnection, String> {
    redis::Client::open(url)
        .map_err(|e| e.to_string())?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("Redis at {url}: {e}"))
}

/// The slot ranges the answering node owns, from its CLUSTER NODES (the
/// `myself` line: fields 9 on are slots `A-B` or `A`, or migrations in
/// brackets, skipped).
fn own_slots(cluster_nodes: &str) -> Vec<(u16, u16)> {
    let Some(line) = cluster_nodes.lines().find(|l| l.contains("myself")) else {
        return Vec::new();
    };
    line.split_whitespace()
        .skip(8)
        .filter(|f| !f.starts_with('['))
        .filter_map(|f| match f.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => f.parse().ok().map(|s| (s, s)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::own_slots;

    #[test]
    fn a_nodes_own_slots_come_from_its_myself_line() {
        let nodes = "07c3 127.0.0.1:30004@31004 master - 0 1 2 connected 5461-10922\n\
                     e7d1 127.0.0.1:30002@31002 myself,master - 0 0 1 connected 0-5460 12000 [12001->-e7d1]\n";
        assert_eq!(own_slots(nodes), vec![(0, 5460), (12000, 12000)]);
        assert!(own_slots("").is_empty());
    }
}
