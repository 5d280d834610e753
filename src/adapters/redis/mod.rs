//! The Redis Streams bus: [`Bus`] with one stream per subscribing service
//! (`{prefix}:stream:{service}`) and one consumer group per stream, named
//! after the service (several replicas of a service share its group).
//!
//! - `publish` XADDs the encoded event to the stream of every subscriber
//!   (`domain::service::subscribers`). Streams are not capped at XADD: an
//!   approximate MAXLEN could drop entries the group has not acknowledged.
//!   [`RedisBus::trim`] removes only acknowledged entries instead (see
//!   `ops.rs`); whoever runs the bus calls it periodically.
//!   `publish_batch` sends the XADDs of a whole batch of events in one
//!   pipeline: one round trip per relay pass.
//! - `receive` first claims, with one Lua script: the pending entries of
//!   the group's consumers whose heartbeat key expired (their process is
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
//!   `{prefix}:dead:{service}` and only then XACKs the entry, in one Lua
//!   script: if the XADD fails (the key holds the wrong type) nothing
//!   changes and the entry stays pending. The dead-letter stream is capped
//!   (`MAXLEN ~`); what the cap drops is counted in
//!   `{prefix}:dead-trimmed:{service}` and logged.
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
//! it. All connections are `ConnectionManager`s: they reconnect by
//! themselves after Redis restarts.

mod command;
mod heartbeat;
mod operator;
mod ops;
mod scripts;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamId, StreamPendingCountReply, StreamReadReply};
use redis::{Client, RedisError};

use crate::domain::service::subscribers;
use crate::domain::{Event, Service};
use crate::runtime::bus::{Bus, BusError, Delivery, PartialPublish};
use crate::runtime::memory::streams::DELETED_WHILE_PENDING;

pub use command::RedisCommand;
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
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct RedisBus {
    client: Client,
    /// Shared connection for every non-blocking command.
    conn: ConnectionManager,
    /// One connection per consumer name, for XREADGROUP ... BLOCK.
    readers: Arc<Mutex<BTreeMap<String, ConnectionManager>>>,
    /// Groups known to exist (cleared for a service on NOGROUP).
    groups: Arc<Mutex<BTreeSet<Service>>>,
    /// Where each service's next XAUTOCLAIM scan starts.
    claim_cursor: Arc<Mutex<BTreeMap<Service, String>>>,
    /// Heartbeat keys of the consumers that received through this bus,
    /// refreshed by the heartbeat task while any clone of the bus lives
    /// (the task holds only a weak reference).
    alive: Arc<Mutex<BTreeSet<String>>>,
    /// Set by [`RedisBus::pause_heartbeat_while`].
    heartbeat_paused: Arc<Mutex<Option<heartbeat::PauseGate>>>,
    config: RedisConfig,
    /// The URL without its password, for error messages.
    target: String,
    /// How often each command and script ran, shared by clones (statement
    /// coverage).
    counts: StatementCounts<RedisCommand>,
}

/// `url` with its password replaced by `***`.
fn redact(url: &str) -> String {
    crate::adapters::postgres::redact_url(url)
}

impl RedisBus {
    /// Connects to `url` and checks that Redis answers.
    pub async fn connect(url: &str, config: RedisConfig) -> Result<RedisBus, BusError> {
        assert!(!config.prefix.is_empty(), "a bus needs a key prefix");
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
        let client = Client::open(url).map_err(|e| {
            BusError::Unavailable(format!("REDIS_URL {target:?} is not a valid Redis URL: {e}"))
        })?;
        let conn = Self::manager(&client, &config, config.command_timeout)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot connect to Redis at {target}: {e}")))?;
        let bus = RedisBus {
            client,
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
            bus.config.heartbeat_ttl,
        ));
        Ok(bus)
    }

    async fn manager(
        client: &Client,
        config: &RedisConfig,
        response: Duration,
    ) -> Result<ConnectionManager, RedisError> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(config.command_timeout)
            .set_response_timeout(response)
            .set_number_of_retries(2)
            .set_max_delay(1000);
        ConnectionManager::new_with_config(client.clone(), manager_config).await
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
        format!("{}:stream:{}", self.config.prefix, service.slug())
    }

    /// The dead-letter stream of a service.
    pub fn dead_key(&self, service: Service) -> String {
        format!("{}:dead:{}", self.config.prefix, service.slug())
    }

    /// How many dead letters of a service the dead-letter stream's MAXLEN
    /// cap has dropped (a counter, absent while none).
    pub fn dead_trimmed_key(&self, service: Service) -> String {
        format!("{}:dead-trimmed:{}", self.config.prefix, service.slug())
    }

    /// The prefix of `service`'s heartbeat keys; a consumer's name
    /// completes its key.
    pub fn heartbeat_prefix(&self, service: Service) -> String {
        format!("{}:alive:{}:", self.config.prefix, service.slug())
    }

    /// Marks `consumer` of `service` alive now and keeps its heartbeat
    /// refreshed while this bus lives, before it ever receives (its first
    /// receive does the same).
    pub async fn keep_alive(&self, service: Service, consumer: &str) -> Result<(), BusError> {
        let key = format!("{}{consumer}", self.heartbeat_prefix(service));
        self.alive.lock().expect("alive mutex").insert(key.clone());
        let mut conn = self.conn.clone();
        let _: i64 = scripts::heartbeat()
            .key(&key)
            .arg(self.config.heartbeat_ttl.as_millis() as u64)
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
        let key = format!("{}{consumer}", self.heartbeat_prefix(service));
        self.alive.lock().expect("alive mutex").remove(&key);
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
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
    async fn reader(&self, consumer: &str) -> Result<ConnectionManager, RedisError> {
        if let Some(conn) = self.readers.lock().expect("readers mutex").get(consumer) {
            return Ok(conn.clone());
        }
        let response = self.config.block + self.config.command_timeout;
        let conn = Self::manager(&self.client, &self.config, response).await?;
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
        let heartbeat = self.heartbeat_prefix(service);
        self.alive
            .lock()
            .expect("alive mutex")
            .insert(format!("{heartbeat}{consumer}"));
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
            .arg(Self::group(service))
            .arg(consumer)
            .arg(self.config.visibility_timeout.as_millis() as u64)
            .arg(&start)
            .arg(max)
            .arg(self.config.dead_letters_max)
            .arg(service.slug())
            .arg(DELETED_WHILE_PENDING)
            .arg(&heartbeat)
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

    /// Appends to `pipe` the XADDs that publish `event` (one per
    /// subscribing service); returns how many.
    fn add_publish(&self, pipe: &mut redis::Pipeline, event: &Event) -> usize {
        let targets = subscribers(event.event_type());
        if targets.is_empty() {
            return 0;
        }
        let payload = event.encode();
        for service in &targets {
            pipe.cmd("XADD")
                .arg(self.stream_key(*service))
                .arg("*")
                .arg("payload")
                .arg(payload.as_bytes())
                .arg("type")
                .arg(event.event_type().as_str())
                .arg("event_id")
                .arg(event.event_id.to_string())
                .ignore();
        }
        targets.len()
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

    /// One pipeline of XADDs for the whole batch (one round trip), in
    /// order. Not MULTI/EXEC: a failure part of the way reports none of
    /// the batch as published, so the relay publishes all of it again (a
    /// duplicate for the entries that did go out, which inboxes absorb).
    async fn publish_batch(&self, events: &[&Event]) -> Result<(), PartialPublish> {
        let mut pipe = redis::pipe();
        let mut commands = 0;
        let mut carried = 0;
        for event in events {
            let added = self.add_publish(&mut pipe, event);
            commands += added;
            carried += usize::from(added > 0);
        }
        if commands == 0 {
            return Ok(());
        }
        self.ran(RedisCommand::PublishPipeline);
        if carried > 1 {
            self.ran(RedisCommand::PublishPipelineMultiEvent);
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| PartialPublish {
                published: 0,
                error: self.err(e),
            })
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
