//! The Redis Streams bus: [`Bus`] with one stream per subscribing service
//! (`{prefix:service}:stream`) and one consumer group per stream, named
//! after the service (several replicas of a service share its group).
//! Every key of a service carries the hash tag `{prefix:service}` (see
//! `keys.rs`), so the bus runs on a single Redis and on a Redis Cluster
//! alike (`connection.rs`: a comma-separated `REDIS_URL`, or
//! [`RedisConfig::cluster`]): each script, MULTI and pipeline touches one
//! service's keys, in one slot.
//!
//! - `publish` XADDs the encoded event to the stream of every subscriber
//!   (`domain::service::subscribers`). Streams are not capped at XADD: an
//!   approximate MAXLEN could drop entries the group has not acknowledged.
//!   [`RedisBus::trim`] removes only acknowledged entries instead (see
//!   `ops.rs`); whoever runs the bus calls it periodically.
//!   `publish_batch` sends one pipeline per subscribing stream, all at
//!   once: each stream gets the batch's XADDs in the batch's order (one
//!   round trip per relay pass); a pipeline may not span slots.
//! - `receive` first claims, with one Lua script: the pending entries of
//!   the group's consumers whose heartbeat expired (their process is
//!   gone: taken within `heartbeat_ttl`, see `heartbeat.rs`), then entries
//!   whose delivery has been idle longer than the visibility timeout (a
//!   stuck replica's work, or an entry left for retry): XAUTOCLAIM, then each
//!   claimed entry's delivery count (`Delivery::attempt`) from an XPENDING
//!   of exactly that entry, and a dead letter (reason "deleted from the
//!   stream while pending", empty payload, the entry id) for each entry
//!   XAUTOCLAIM reports deleted while pending (Redis >= 7.0), which would
//!   otherwise vanish. While the dead-letter key holds the wrong type
//!   nothing is claimed (those dead letters could not be written). Then it
//!   reads new entries with XREADGROUP `>` and a short BLOCK. The group is
//!   created (MKSTREAM, from id 0) on first use and again whenever Redis
//!   answers NOGROUP (it restarted with nothing on disk).
//! - `ack` is XACK without XDEL: the entry stays in the stream until `trim`
//!   removes it (XTRIM MINID frees whole radix-tree nodes where per-entry
//!   XDEL fragments them, and recent entries stay inspectable).
//! - `dead_letter` XADDs payload, reason, entry id, service and attempt to
//!   `{prefix:service}:dead` and only then XACKs the entry, in one Lua
//!   script: if the XADD fails (the key holds the wrong type) nothing
//!   changes and the entry stays pending. The dead-letter stream is capped
//!   (`MAXLEN ~`); what the cap drops is counted in
//!   `{prefix:service}:dead-trimmed` and logged.
//!
//! The model of all this is `runtime::memory::streams` (what `MemoryBus`
//! and the simulator run on); `tests/bus_model_vs_redis.rs` holds the two
//! together.
//! - Consumers are never deleted by the port's operations (XGROUP
//!   DELCONSUMER drops a consumer's pending entries from the group, losing
//!   them). [`RedisBus::remove_idle_consumers`] deletes only consumers with
//!   nothing pending, atomically, for operators cleaning up after restarts.
//!
//! Blocking reads use one connection per consumer name, because a BLOCK on
//! the shared multiplexed connection would stall every other command behind
//! it. All connections reconnect by themselves after Redis restarts
//! (`ConnectionManager`s, or the cluster client's connections).

mod command;
pub mod connection;
mod heartbeat;
pub mod keys;
mod operator;
mod ops;
mod scripts;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::streams::{StreamId, StreamPendingCountReply, StreamReadReply};
use redis::RedisError;

use crate::domain::service::subscribers;
use crate::domain::{Event, Service};
use crate::runtime::bus::{Bus, BusError, Delivery, PartialPublish};
use crate::runtime::memory::streams::DELETED_WHILE_PENDING;

pub use command::RedisCommand;
pub use connection::{Endpoint, RedisConn};
pub use operator::PendingSummary;
pub use ops::{DeadLetterEntry, GroupStats, OldestPending, RedisMemory};
pub use scripts::is_oom;

use crate::adapters::coverage::StatementCounts;

/// Consumer names a bus keeps a blocking connection for; more is a bug
/// (consumer names are per replica task, a handful per process).
const READERS_MAX: usize = 256;

/// Settings of the Redis bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Prefix of every key of this bus (streams, dead-letter streams), so
    /// that several deployments or tests share one Redis.
    pub prefix: String,
    /// A delivery not acknowledged for this long is taken over by the next
    /// receive of any consumer of the group. Must exceed the slowest
    /// handler (a store transaction with its conflict retries), or live
    /// consumers take work from each other.
    pub visibility_timeout: Duration,
    /// How long a receive waits for new entries when none is there.
    pub block: Duration,
    /// Connecting to Redis, and every non-blocking command, time out after
    /// this.
    pub command_timeout: Duration,
    /// Dead-letter streams keep about this many entries (the oldest go).
    pub dead_letters_max: usize,
    /// Life of a consumer's heartbeat key. Every consumer name that
    /// received through this bus is refreshed several times per TTL by a
    /// task of the bus, whatever its handlers do; once the process is gone
    /// the key expires, and the next receive of any consumer of the group
    /// takes the gone consumer's pending entries at once instead of after
    /// the visibility timeout.
    pub heartbeat_ttl: Duration,
    /// A single URL is the seed of a Redis Cluster (a comma-separated
    /// list of URLs names a cluster whatever this says).
    pub cluster: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            prefix: "purchase-saga".to_string(),
            visibility_timeout: Duration::from_secs(30),
            block: Duration::from_millis(100),
            command_timeout: Duration::from_secs(5),
            dead_letters_max: 100_000,
            heartbeat_ttl: Duration::from_secs(2),
            cluster: false,
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct RedisBus {
    endpoint: Endpoint,
    /// Shared connection for every non-blocking command.
    conn: RedisConn,
    /// One connection per consumer name, for XREADGROUP ... BLOCK.
    readers: Arc<Mutex<BTreeMap<String, RedisConn>>>,
    /// Groups known to exist (cleared for a service on NOGROUP).
    groups: Arc<Mutex<BTreeSet<Service>>>,
    /// Where each service's next XAUTOCLAIM scan starts.
    claim_cursor: Arc<Mutex<BTreeMap<Service, String>>>,
    /// The consumers that received through this bus, by service, whose
    /// heartbeats the heartbeat task refreshes while any clone of the bus
    /// lives (the task holds only a weak reference).
    alive: Arc<Mutex<heartbeat::Consumers>>,
    /// Set by [`RedisBus::pause_heartbeat_while`].
    heartbeat_paused: Arc<Mutex<Option<heartbeat::PauseGate>>>,
    config: RedisConfig,
    /// The URL without its password, for error messages.
    target: String,
    /// How often each command and script ran, shared by clones (statement
    /// coverage).
    counts: StatementCounts<RedisCommand>,
}

/// `url` (or each URL of a comma-separated list) with its password
/// replaced by `***`.
fn redact(url: &str) -> String {
    url.split(',')
        .map(crate::adapters::postgres::redact_url)
        .collect::<Vec<_>>()
        .join(",")
}

impl RedisBus {
    /// Connects to `url` and checks that Redis answers.
    pub async fn connect(url: &str, config: RedisConfig) -> Result<RedisBus, BusError> {
        keys::check_prefix(&config.prefix).map_err(BusError::Unavailable)?;
        assert!(
            config.visibility_timeout > config.block,
            "the visibility timeout must exceed the read block"
        );
        assert!(
            config.heartbeat_ttl >= heartbeat::TTL_MIN,
            "a heartbeat TTL under {:?} expires between refreshes",
            heartbeat::TTL_MIN
        );
        let target = redact(url);
        let endpoint = Endpoint::parse(url, config.cluster).map_err(BusError::Unavailable)?;
        let conn = endpoint
            .connect(config.command_timeout, config.command_timeout)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot connect to Redis at {target}: {e}")))?;
        let bus = RedisBus {
            endpoint,
            conn,
            readers: Arc::default(),
            groups: Arc::default(),
            claim_cursor: Arc::default(),
            alive: Arc::default(),
            heartbeat_paused: Arc::default(),
            config,
            target,
            counts: StatementCounts::new(),
        };
        let mut conn = bus.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| bus.err(e))?;
        tokio::spawn(heartbeat::run(
            Arc::downgrade(&bus.alive),
            bus.heartbeat_paused.clone(),
            bus.conn.clone(),
            bus.config.prefix.clone(),
            bus.config.heartbeat_ttl,
        ));
        Ok(bus)
    }

    /// Whether this bus runs on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.endpoint.is_cluster()
    }

    /// A connection of this bus's (shared by clones), for tools that run
    /// their own commands beside it.
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    /// Redis answers PING (on a cluster: every master does).
    pub async fn ping(&self) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Deletes every key of this bus's prefix (every service's streams,
    /// groups, dead letters, heartbeats; on every node of a cluster).
    /// Returns how many keys went. For tests, benchmarks and torture.
    pub async fn delete_all_keys(&self) -> Result<u64, BusError> {
        let mut conn = self.conn.clone();
        conn.delete_prefix(&self.config.prefix)
            .await
            .map_err(|e| self.err(e))
    }

    /// How often each command and script of the bus port has run through
    /// this bus and its clones, by [`RedisCommand`] name (zeros included).
    pub fn command_counts(&self) -> BTreeMap<&'static str, u64> {
        self.counts.snapshot()
    }

    /// The counters themselves (shared with this bus), for a harness that
    /// outlives the bus.
    pub fn command_counter(&self) -> StatementCounts<RedisCommand> {
        self.counts.clone()
    }

    fn ran(&self, command: RedisCommand) {
        self.counts.ran(command);
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The stream a service consumes.
    pub fn stream_key(&self, service: Service) -> String {
        keys::stream(&self.config.prefix, service)
    }

    /// The dead-letter stream of a service.
    pub fn dead_key(&self, service: Service) -> String {
        keys::dead(&self.config.prefix, service)
    }

    /// How many dead letters of a service the dead-letter stream's MAXLEN
    /// cap has dropped (a counter, absent while none).
    pub fn dead_trimmed_key(&self, service: Service) -> String {
        keys::dead_trimmed(&self.config.prefix, service)
    }

    /// The heartbeats of `service`'s consumers (a sorted set: consumer
    /// name -> expiry in the server's ms).
    pub fn alive_key(&self, service: Service) -> String {
        keys::alive(&self.config.prefix, service)
    }

    /// Marks `consumer` of `service` alive now and keeps its heartbeat
    /// refreshed while this bus lives, before it ever receives (its first
    /// receive does the same).
    pub async fn keep_alive(&self, service: Service, consumer: &str) -> Result<(), BusError> {
        heartbeat::insert(&self.alive, service, consumer);
        let mut conn = self.conn.clone();
        let _: i64 = scripts::heartbeat()
            .key(self.alive_key(service))
            .arg(self.config.heartbeat_ttl.as_millis() as u64)
            .arg(consumer)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Stops refreshing `consumer`'s heartbeat and deletes it, as if its
    /// process were gone: the next receive of another consumer of
    /// `service`'s group takes its pending entries. (Tests, and a process
    /// that stops one consumer while it keeps running.)
    pub async fn forget_consumer(&self, service: Service, consumer: &str) -> Result<(), BusError> {
        heartbeat::remove(&self.alive, service, consumer);
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("ZREM")
            .arg(self.alive_key(service))
            .arg(consumer)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Stops this bus's heartbeat task (every clone's) refreshing its
    /// consumers' keys while `paused` answers true (asked at every
    /// refresh): to the other consumers of their groups they look gone
    /// after one TTL, and the next receive of one of them takes their
    /// pending entries. For fault injection (torture cuts a replica off
    /// the bus this way, as a partition from Redis would); a receive of
    /// the paused bus still refreshes its caller's own key.
    pub fn pause_heartbeat_while(&self, paused: impl Fn() -> bool + Send + Sync + 'static) {
        *self.heartbeat_paused.lock().expect("pause mutex") = Some(Arc::new(paused));
    }

    /// The consumer group of a service.
    pub fn group(service: Service) -> &'static str {
        service.slug()
    }

    fn err(&self, e: RedisError) -> BusError {
        BusError::Unavailable(format!("Redis at {}: {e}", self.target))
    }

    fn is_nogroup(e: &RedisError) -> bool {
        e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
    }

    /// Creates `service`'s group (and stream) unless known to exist.
    async fn ensure_group(&self, service: Service) -> Result<(), BusError> {
        if self.groups.lock().expect("groups mutex").contains(&service) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        self.ran(RedisCommand::GroupCreate);
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream_key(service))
            .arg(Self::group(service))
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            // Out of memory, Redis refuses XGROUP CREATE before it looks
            // whether the group exists: a process started then must still
            // find the group that is there.
            Err(e) if scripts::is_oom(&e) => {
                let exists = self
                    .groups_info(service)
                    .await?
                    .is_some_and(|info| info.groups.iter().any(|g| g.name == Self::group(service)));
                if !exists {
                    return Err(self.err(e));
                }
            }
            Err(e) => return Err(self.err(e)),
        }
        self.groups.lock().expect("groups mutex").insert(service);
        Ok(())
    }

    fn forget_group(&self, service: Service) {
        self.groups.lock().expect("groups mutex").remove(&service);
        self.claim_cursor.lock().expect("cursor mutex").remove(&service);
    }

    /// The blocking-read connection of `consumer`.
    async fn reader(&self, consumer: &str) -> Result<RedisConn, RedisError> {
        if let Some(conn) = self.readers.lock().expect("readers mutex").get(consumer) {
            return Ok(conn.clone());
        }
        let response = self.config.block + self.config.command_timeout;
        let conn = self
            .endpoint
            .connect(self.config.command_timeout, response)
            .await?;
        let mut readers = self.readers.lock().expect("readers mutex");
        assert!(
            readers.len() < READERS_MAX,
            "more than {READERS_MAX} consumer names on one bus"
        );
        Ok(readers.entry(consumer.to_string()).or_insert(conn).clone())
    }

    fn payload(entry: &StreamId) -> Vec<u8> {
        match entry.map.get("payload") {
            Some(redis::Value::BulkString(bytes)) => bytes.clone(),
            // A foreign or malformed entry: the consumer dead-letters an
            // empty payload as undecodable, with the entry id.
            _ => Vec::new(),
        }
    }

    /// Entries of the group idle for longer than the visibility timeout,
    /// claimed for `consumer`, with their delivery counts: the claim
    /// script (see [`scripts`]) runs XAUTOCLAIM from this bus's cursor and
    /// reads each claimed entry's count with an XPENDING of exactly that
    /// entry, atomically, and dead-letters the entries deleted from the
    /// stream while pending. Fails with code `DEADKEY`, having changed
    /// nothing, while the dead-letter key holds the wrong type.
    async fn claim(&self, service: Service, consumer: &str, max: usize) -> Result<Vec<Delivery>, RedisError> {
        let key = self.stream_key(service);
        heartbeat::insert(&self.alive, service, consumer);
        let start = self
            .claim_cursor
            .lock()
            .expect("cursor mutex")
            .get(&service)
            .cloned()
            .unwrap_or_else(|| "0-0".to_string());
        let mut conn = self.conn.clone();
        self.ran(RedisCommand::ClaimScript);
        let reply: scripts::ClaimReply = scripts::claim()
            .key(&key)
            .key(self.dead_key(service))
            .key(self.dead_trimmed_key(service))
            .key(self.alive_key(service))
            .arg(Self::group(service))
            .arg(consumer)
            .arg(self.config.visibility_timeout.as_millis() as u64)
            .arg(&start)
            .arg(max)
            .arg(self.config.dead_letters_max)
            .arg(service.slug())
            .arg(DELETED_WHILE_PENDING)
            .arg(self.config.heartbeat_ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        self.claim_cursor
            .lock()
            .expect("cursor mutex")
            .insert(service, reply.next.clone());
        for id in &reply.deleted {
            tracing::warn!(%service, entry_id = %id, "entry deleted from the stream while pending; dead-lettered");
        }
        if reply.dead_trimmed > 0 {
            Self::warn_dead_trimmed(service, reply.dead_trimmed);
        }
        assert_eq!(
            reply.claimed.ids.len(),
            reply.counts.len(),
            "the claim script reads one count per claimed entry"
        );
        let counts: Vec<Option<u64>> = if crate::mutant!(ClaimDropsEntries) {
            self.counts_by_range(service, consumer, &reply.claimed.ids)
                .await?
        } else {
            reply.counts.iter().copied().map(Some).collect()
        };
        Ok(reply
            .claimed
            .ids
            .iter()
            .zip(counts)
            // Only the planted bug loses a count (and with it the entry).
            .filter_map(|(entry, count)| {
                Some(Delivery {
                    entry_id: entry.id.clone(),
                    attempt: u32::try_from(count?).unwrap_or(u32::MAX),
                    payload: Self::payload(entry),
                })
            })
            .collect())
    }

    /// The claim's counts as they were read before the fix (the planted
    /// bug `ClaimDropsEntries`): one XPENDING over the claimed id range for
    /// this consumer, as many rows as were claimed. An entry the consumer
    /// already held in that range fills a row, and a claimed entry gets no
    /// count.
    async fn counts_by_range(
        &self,
        service: Service,
        consumer: &str,
        claimed: &[StreamId],
    ) -> Result<Vec<Option<u64>>, RedisError> {
        let (Some(first), Some(last)) = (claimed.first(), claimed.last()) else {
            return Ok(Vec::new());
        };
        let mut conn = self.conn.clone();
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(self.stream_key(service))
            .arg(Self::group(service))
            .arg(&first.id)
            .arg(&last.id)
            .arg(claimed.len())
            .arg(consumer)
            .query_async(&mut conn)
            .await?;
        let counts: BTreeMap<&str, usize> = pending
            .ids
            .iter()
            .map(|p| (p.id.as_str(), p.times_delivered))
            .collect();
        Ok(claimed
            .iter()
            .map(|e| counts.get(e.id.as_str()).map(|c| *c as u64))
            .collect())
    }

    fn warn_dead_trimmed(service: Service, dropped: u64) {
        tracing::warn!(
            %service,
            dropped,
            "the dead-letter stream's MAXLEN cap dropped its oldest dead letters (counted in the dead-trimmed key)"
        );
    }

    /// New entries for `consumer`, waiting up to the block time if `block`.
    async fn read_new(
        &self,
        service: Service,
        consumer: &str,
        max: usize,
        block: bool,
    ) -> Result<Vec<Delivery>, RedisError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(Self::group(service))
            .arg(consumer)
            .arg("COUNT")
            .arg(max);
        let mut conn = if block {
            cmd.arg("BLOCK").arg(self.config.block.as_millis().max(1) as u64);
            self.reader(consumer).await?
        } else {
            self.conn.clone()
        };
        cmd.arg("STREAMS").arg(self.stream_key(service)).arg(">");
        self.ran(RedisCommand::ReadGroup);
        let reply: Option<StreamReadReply> = cmd.query_async(&mut conn).await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|entry| Delivery {
                payload: Self::payload(&entry),
                entry_id: entry.id,
                attempt: 1,
            })
            .collect())
    }

    /// The XADDs that publish `events`: one pipeline per subscribing
    /// service, each holding that service's XADDs in the batch's order,
    /// with the index in `events` of each XADD's event.
    fn publish_pipelines(&self, events: &[&Event]) -> BTreeMap<Service, (redis::Pipeline, Vec<usize>)> {
        let mut pipelines: BTreeMap<Service, (redis::Pipeline, Vec<usize>)> = BTreeMap::new();
        for (index, event) in events.iter().enumerate() {
            let targets = subscribers(event.event_type());
            if targets.is_empty() {
                continue;
            }
            let payload = event.encode();
            for service in targets {
                let (pipe, indexes) = pipelines
                    .entry(service)
                    .or_insert_with(|| (redis::pipe(), Vec::new()));
                pipe.cmd("XADD")
                    .arg(self.stream_key(service))
                    .arg("*")
                    .arg("payload")
                    .arg(payload.as_bytes())
                    .arg("type")
                    .arg(event.event_type().as_str())
                    .arg("event_id")
                    .arg(event.event_id.to_string())
                    .ignore();
                indexes.push(index);
            }
        }
        pipelines
    }

    async fn receive_once(
        &self,
        service: Service,
        consumer: &str,
        max: usize,
    ) -> Result<Vec<Delivery>, RedisError> {
        let mut batch = match self.claim(service, consumer, max).await {
            Ok(claimed) => claimed,
            // Claiming now could lose the entries deleted while pending
            // (they leave the pending list and cannot be dead-lettered):
            // leave the idle ones pending and read new entries only.
            Err(e) if e.code() == Some(scripts::DEAD_KEY_ERROR) => {
                tracing::error!(%service, error = %e, "not claiming idle entries until the dead-letter key is a stream again");
                Vec::new()
            }
            // The claim runs out of memory by design (see `scripts`); if a
            // server refuses it anyway, new entries still flow.
            Err(e) if scripts::is_oom(&e) => {
                tracing::error!(%service, error = %e, "Redis is out of memory and refused the claim; reading new entries only");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        if batch.len() < max {
            let fresh = self
                .read_new(service, consumer, max - batch.len(), batch.is_empty())
                .await?;
            batch.extend(fresh);
        }
        debug_assert!(batch.len() <= max, "a receive returns at most `max` deliveries");
        Ok(batch)
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        self.publish_batch(&[event])
            .await
            .map_err(|partial| partial.error)
    }

    /// One pipeline of XADDs per subscribing stream (a pipeline may not
    /// span a cluster's slots), sent at once: each stream gets the batch's
    /// events in order. Not MULTI/EXEC: a pipeline that fails may have
    /// written any part of its XADDs, so the batch counts as published up
    /// to its first event with an XADD in a failed pipeline; the relay
    /// publishes the rest again (a duplicate for the entries that did go
    /// out, which inboxes absorb).
    async fn publish_batch(&self, events: &[&Event]) -> Result<(), PartialPublish> {
        let pipelines = self.publish_pipelines(events);
        if pipelines.is_empty() {
            return Ok(());
        }
        self.ran(RedisCommand::PublishPipeline);
        let carried: BTreeSet<usize> = pipelines.values().flat_map(|(_, i)| i.iter().copied()).collect();
        if carried.len() > 1 {
            self.ran(RedisCommand::PublishPipelineMultiEvent);
        }
        let sent = pipelines.values().map(|(pipe, _)| {
            let mut conn = self.conn.clone();
            async move { pipe.query_async::<()>(&mut conn).await }
        });
        let results = futures::future::join_all(sent).await;
        let mut published = events.len();
        let mut first_error = None;
        for ((_, indexes), result) in pipelines.values().zip(results) {
            if let Err(e) = result {
                published = published.min(indexes[0]);
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(PartialPublish {
                published,
                error: self.err(e),
            }),
        }
    }

    async fn receive(&self, service: Service, consumer: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        assert!(max > 0, "a receive asks for at least one delivery");
        self.ensure_group(service).await?;
        match self.receive_once(service, consumer, max).await {
            Ok(batch) => Ok(batch),
            // Redis lost the group (restarted empty, or the stream was
            // deleted): create it again and read once more. Re-drive
            // republishes what was lost.
            Err(e) if Self::is_nogroup(&e) || e.to_string().contains("no longer exists") => {
                tracing::warn!(%service, error = %e, "consumer group missing; recreating it");
                self.forget_group(service);
                self.ensure_group(service).await?;
                self.receive_once(service, consumer, max)
                    .await
                    .map_err(|e| self.err(e))
            }
            Err(e) => Err(self.err(e)),
        }
    }

    async fn ack(&self, service: Service, entry_id: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        self.ran(RedisCommand::Ack);
        let _: i64 = redis::cmd("XACK")
            .arg(self.stream_key(service))
            .arg(Self::group(service))
            .arg(entry_id)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn dead_letter(&self, service: Service, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        self.ran(RedisCommand::DeadLetterScript);
        let dropped: u64 = scripts::dead_letter()
            .key(self.dead_key(service))
            .key(self.stream_key(service))
            .key(self.dead_trimmed_key(service))
            .arg(self.config.dead_letters_max)
            .arg(delivery.payload.as_slice())
            .arg(reason)
            .arg(&delivery.entry_id)
            .arg(service.slug())
            .arg(delivery.attempt)
            .arg(Self::group(service))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        if dropped > 0 {
            Self::warn_dead_trimmed(service, dropped);
        }
        Ok(())
    }
}
