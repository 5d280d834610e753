//! Operating the bus beyond the port: trimming acknowledged entries, the
//! dead-letter streams (list, replay), and the numbers for metrics.

use redis::streams::{StreamInfoGroupsReply, StreamPendingReply, StreamRangeReply};
use redis::RedisError;

use crate::domain::Service;
use crate::runtime::bus::{BusError, DeadLetter};

use super::RedisBus;

/// One entry of a dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterEntry {
    /// The id in the dead-letter stream (what `replay_dead_letter` takes).
    pub dead_id: String,
    pub letter: DeadLetter,
    /// The delivery count when it was dead-lettered.
    pub attempt: u32,
}

/// One consumer group's numbers (XINFO GROUPS), for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    /// Delivered and not acknowledged.
    pub pending: u64,
    /// In the stream and not yet delivered to the group (None when Redis
    /// cannot tell, e.g. after entries were deleted out of order).
    pub lag: Option<u64>,
}

/// Stream ids compare as (milliseconds, sequence).
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn text(entry: &redis::streams::StreamId, field: &str) -> String {
    entry.get::<String>(field).unwrap_or_default()
}

impl RedisBus {
    /// XINFO GROUPS of `service`'s stream; None when the stream does not
    /// exist (nothing was published to it yet, or Redis lost it).
    pub(super) async fn groups_info(
        &self,
        service: Service,
    ) -> Result<Option<StreamInfoGroupsReply>, BusError> {
        let mut conn = self.conn.clone();
        match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.stream_key(service))
            .query_async(&mut conn)
            .await
        {
            Ok(groups) => Ok(Some(groups)),
            Err(e) if e.to_string().contains("no such key") => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Removes the entries of `service`'s stream that every consumer group
    /// has acknowledged: XTRIM MINID at the oldest pending id of each group
    /// (or its last-delivered id when nothing is pending), the smallest over
    /// all groups. Returns how many entries went.
    ///
    /// Safe without a transaction: a group's oldest pending id only grows
    /// (new deliveries get ids above last-delivered-id; claims move entries
    /// between consumers, not ids), so a bound read a moment ago is still a
    /// lower bound of every entry that is or will be pending. A stream with
    /// no group is left alone: nobody has read it yet.
    pub async fn trim(&self, service: Service) -> Result<u64, BusError> {
        let Some(groups) = self.groups_info(service).await? else {
            return Ok(0);
        };
        let key = self.stream_key(service);
        let mut conn = self.conn.clone();
        let mut floor: Option<(u64, u64)> = None;
        let mut floor_id = String::new();
        for group in &groups.groups {
            // Planted bug: the floor ignores what is still pending.
            let bound = if group.pending > 0 && !crate::mutant!(TrimBelowPending) {
                let summary: StreamPendingReply = redis::cmd("XPENDING")
                    .arg(&key)
                    .arg(&group.name)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.err(e))?;
                match summary {
                    StreamPendingReply::Data(d) => d.start_id,
                    // Acknowledged meanwhile: the last-delivered id bounds it.
                    StreamPendingReply::Empty => group.last_delivered_id.clone(),
                }
            } else {
                group.last_delivered_id.clone()
            };
            let parsed = parse_id(&bound).ok_or_else(|| {
                BusError::Unavailable(format!(
                    "Redis returned a malformed stream id {bound:?} for {key}"
                ))
            })?;
            if floor.is_none_or(|f| parsed < f) {
                floor = Some(parsed);
                floor_id = bound;
            }
        }
        if floor.is_none() || floor == Some((0, 0)) {
            return Ok(0);
        }
        self.ran(super::RedisCommand::Trim);
        let trimmed: u64 = redis::cmd("XTRIM")
            .arg(&key)
            .arg("MINID")
            .arg(&floor_id)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(trimmed)
    }

    /// Trims `services`' streams every `interval` until shutdown (the
    /// periodic caller [`RedisBus::trim`] needs). Failures are logged and
    /// retried at the next tick.
    pub async fn run_trimmer(
        self,
        services: Vec<Service>,
        interval: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        assert!(!interval.is_zero(), "a trim interval of zero would spin");
        loop {
            for &service in &services {
                match self.trim(service).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(%service, trimmed = n, "trimmed acknowledged entries"),
                    Err(e) => tracing::warn!(%service, error = %e, "trim failed"),
                }
            }
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Deletes the consumers of `service`'s group that have no pending
    /// entry and have been idle for at least `idle_min` (replicas that are
    /// gone: every restart may bring a new consumer name). The check and the
    /// delete run in one Lua script, atomically, so no entry can be handed
    /// to a consumer between the check and its deletion: a consumer that
    /// still has pending entries is never deleted (XGROUP DELCONSUMER would
    /// drop them from the group unacknowledged). Returns how many went.
    pub async fn remove_idle_consumers(
        &self,
        service: Service,
        idle_min: std::time::Duration,
    ) -> Result<u64, BusError> {
        const SCRIPT: &str = r#"
            local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
            if not ok then return 0 end
            local removed = 0
            for _, c in ipairs(consumers) do
                local name, pending, idle
                for i = 1, #c, 2 do
                    if c[i] == 'name' then name = c[i + 1]
                    elseif c[i] == 'pending' then pending = c[i + 1]
                    elseif c[i] == 'idle' then idle = c[i + 1] end
                end
                if pending == 0 and idle >= tonumber(ARGV[2]) then
                    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
                    removed = removed + 1
                end
            end
            return removed
        "#;
        let mut conn = self.conn.clone();
        redis::Script::new(SCRIPT)
            .key(self.stream_key(service))
            .arg(Self::group(service))
            .arg(idle_min.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    /// Consumer names of `service`'s group with their pending counts.
    pub async fn consumers(&self, service: Service) -> Result<Vec<(String, u64)>, BusError> {
        let mut conn = self.conn.clone();
        let reply: Result<redis::streams::StreamInfoConsumersReply, RedisError> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(self.stream_key(service))
            .arg(Self::group(service))
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(r) => Ok(r
                .consumers
                .into_iter()
                .map(|c| (c.name, c.pending as u64))
                .collect()),
            Err(e) if Self::is_nogroup(&e) || e.to_string().contains("no such key") => Ok(Vec::new()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Up to `count` dead letters of `service`, oldest first.
    pub async fn dead_letters(
        &self,
        service: Service,
        count: usize,
    ) -> Result<Vec<DeadLetterEntry>, BusError> {
        let mut conn = self.conn.clone();
        let range: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.dead_key(service))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(range
            .ids
            .iter()
            .map(|entry| DeadLetterEntry {
                dead_id: entry.id.clone(),
                letter: DeadLetter {
                    service,
                    entry_id: text(entry, "entry_id"),
                    reason: text(entry, "reason"),
                    payload: Self::payload(entry),
                },
                attempt: entry.get::<u32>("attempt").unwrap_or(0),
            })
            .collect())
    }

    /// Puts dead letter `dead_id` of `service` back on the service's stream
    /// (a new entry, delivered with attempt 1) and removes it from the
    /// dead-letter stream, in one MULTI/EXEC. Returns the new entry id, or
    /// None if there is no such dead letter.
    pub async fn replay_dead_letter(
        &self,
        service: Service,
        dead_id: &str,
    ) -> Result<Option<String>, BusError> {
        let mut conn = self.conn.clone();
        let range: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.dead_key(service))
            .arg(dead_id)
            .arg(dead_id)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        let Some(entry) = range.ids.first() else {
            return Ok(None);
        };
        let (new_id, _deleted): (String, i64) = redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(self.stream_key(service))
            .arg("*")
            .arg("payload")
            .arg(Self::payload(entry))
            .arg("replayed_from")
            .arg(dead_id)
            .cmd("XDEL")
            .arg(self.dead_key(service))
            .arg(dead_id)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(Some(new_id))
    }

    /// Entries delivered to `service`'s group and not yet acknowledged.
    pub async fn pending_count(&self, service: Service) -> Result<u64, BusError> {
        let mut conn = self.conn.clone();
        let reply: Result<StreamPendingReply, RedisError> = redis::cmd("XPENDING")
            .arg(self.stream_key(service))
            .arg(Self::group(service))
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(r) => Ok(r.count() as u64),
            Err(e) if Self::is_nogroup(&e) => Ok(0),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Entries in `service`'s stream (acknowledged ones included until
    /// trimmed).
    pub async fn stream_len(&self, service: Service) -> Result<u64, BusError> {
        let mut conn = self.conn.clone();
        redis::cmd("XLEN")
            .arg(self.stream_key(service))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    /// `service`'s consumer group numbers, or None while the stream or the
    /// group does not exist.
    pub async fn group_stats(&self, service: Service) -> Result<Option<GroupStats>, BusError> {
        let mut conn = self.conn.clone();
        let reply: Result<StreamInfoGroupsReply, RedisError> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.stream_key(service))
            .query_async(&mut conn)
            .await;
        let groups = match reply {
            Ok(g) => g,
            Err(e) if e.to_string().contains("no such key") => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        Ok(groups
            .groups
            .into_iter()
            .find(|g| g.name == Self::group(service))
            .map(|g| GroupStats {
                pending: g.pending as u64,
                lag: g.lag.map(|l| l as u64),
            }))
    }

    /// How many of `service`'s dead letters the dead-letter stream's cap
    /// (`RedisConfig::dead_letters_max`, MAXLEN ~) has dropped.
    pub async fn dead_letters_trimmed(&self, service: Service) -> Result<u64, BusError> {
        let mut conn = self.conn.clone();
        let count: Option<u64> = redis::cmd("GET")
            .arg(self.dead_trimmed_key(service))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(count.unwrap_or(0))
    }

    /// Entries in `service`'s dead-letter stream.
    pub async fn dead_letter_count(&self, service: Service) -> Result<u64, BusError> {
        let mut conn = self.conn.clone();
        redis::cmd("XLEN")
            .arg(self.dead_key(service))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }
}

/// Redis's memory as INFO memory reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisMemory {
    pub used_bytes: u64,
    /// `maxmemory`; 0 when unlimited.
    pub max_bytes: u64,
    /// `maxmemory-policy`, e.g. `noeviction`.
    pub policy: String,
}

impl RedisMemory {
    /// Used memory at or over a set `maxmemory`: with `noeviction`, Redis
    /// refuses every command that may grow memory (publishes, dead
    /// letters); with an eviction policy it deletes keys to make room.
    pub fn out_of_memory(&self) -> bool {
        self.max_bytes > 0 && self.used_bytes >= self.max_bytes
    }

    /// Of several nodes' readings, the one nearest its limit: one out of
    /// memory first, then the highest share of `maxmemory` used, then (no
    /// limit anywhere) the most used. None for no reading.
    pub fn tightest(nodes: Vec<RedisMemory>) -> Option<RedisMemory> {
        nodes.into_iter().max_by(|a, b| {
            let share = |m: &RedisMemory| {
                if m.max_bytes == 0 {
                    0.0
                } else {
                    m.used_bytes as f64 / m.max_bytes as f64
                }
            };
            (a.out_of_memory(), a.max_bytes > 0)
                .cmp(&(b.out_of_memory(), b.max_bytes > 0))
                .then(share(a).total_cmp(&share(b)))
                .then(a.used_bytes.cmp(&b.used_bytes))
        })
    }

    /// Parses the `INFO memory` section.
    pub fn parse(info: &str) -> Option<RedisMemory> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        Some(RedisMemory {
            used_bytes: field("used_memory")?.parse().ok()?,
            max_bytes: field("maxmemory")?.parse().ok()?,
            policy: field("maxmemory_policy")?.to_string(),
        })
    }
}

/// The oldest entry a consumer group holds unacknowledged (XPENDING).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldestPending {
    pub entry_id: String,
    /// Time since the entry was added to the stream (its id's milliseconds
    /// against the Redis server's clock, so no client clock is involved).
    pub age_ms: u64,
    /// Time since it was last delivered to a consumer.
    pub idle_ms: u64,
    /// Deliveries so far.
    pub deliveries: u64,
}

impl RedisBus {
    // Issue 16, `audit` and `status`: read-only, additive.

    /// Entries of `service`'s stream its group has not been given yet: the
    /// group's lag when Redis knows it, else counted after the group's
    /// last-delivered id (up to `count_max`); every entry of the stream
    /// when the group does not exist yet (nobody has read it).
    pub async fn undelivered(&self, service: Service, count_max: usize) -> Result<u64, BusError> {
        assert!(count_max > 0, "a count of at least one entry");
        let Some(groups) = self.groups_info(service).await? else {
            return Ok(0);
        };
        let Some(group) = groups.groups.iter().find(|g| g.name == Self::group(service)) else {
            return self.stream_len(service).await;
        };
        if let Some(lag) = group.lag {
            return Ok(lag as u64);
        }
        let (key, mut conn) = (self.stream_key(service), self.conn.clone());
        let after: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg(format!("({}", group.last_delivered_id))
            .arg("+")
            .arg("COUNT")
            .arg(count_max)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(after.ids.len() as u64)
    }

    /// The ids of up to `count_max` entries `consumer` of `service`'s group
    /// holds unacknowledged, oldest first.
    pub async fn pending_of(
        &self,
        service: Service,
        consumer: &str,
        count_max: usize,
    ) -> Result<Vec<String>, BusError> {
        let mut conn = self.conn.clone();
        let reply: Result<Vec<(String, String, u64, u64)>, RedisError> = redis::cmd("XPENDING")
            .arg(self.stream_key(service))
            .arg(Self::group(service))
            .arg("-")
            .arg("+")
            .arg(count_max)
            .arg(consumer)
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(entries) => Ok(entries.into_iter().map(|(id, ..)| id).collect()),
            Err(e) if Self::is_nogroup(&e) || e.to_string().contains("no such key") => Ok(Vec::new()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Redis's used memory, `maxmemory` and policy (INFO memory); on a
    /// cluster, the master nearest its limit ([`RedisMemory::tightest`]):
    /// a stream's writes are refused when its own node is full.
    pub async fn memory(&self) -> Result<RedisMemory, BusError> {
        let mut conn = self.conn.clone();
        // A single server answers a string; a cluster client asks every
        // master and answers a map of node -> string.
        let reply: redis::Value = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        let infos: Vec<String> = match reply {
            redis::Value::Map(nodes) => nodes
                .iter()
                .map(|(_, info)| redis::from_redis_value(info))
                .collect::<Result<_, _>>(),
            single => redis::from_redis_value(&single).map(|info| vec![info]),
        }
        .map_err(|e| self.err(e))?;
        let parsed: Option<Vec<RedisMemory>> = infos.iter().map(|i| RedisMemory::parse(i)).collect();
        parsed.and_then(RedisMemory::tightest).ok_or_else(|| {
            BusError::Unavailable(format!(
                "Redis at {} answered INFO memory without used_memory, maxmemory or maxmemory_policy",
                self.target
            ))
        })
    }

    /// The oldest unacknowledged entry of `service`'s group, if any.
    pub async fn oldest_pending(&self, service: Service) -> Result<Option<OldestPending>, BusError> {
        let mut conn = self.conn.clone();
        let reply: Result<Vec<(String, String, u64, u64)>, RedisError> = redis::cmd("XPENDING")
            .arg(self.stream_key(service))
            .arg(Self::group(service))
            .arg("-")
            .arg("+")
            .arg(1)
            .query_async(&mut conn)
            .await;
        let first = match reply {
            Ok(entries) => entries.into_iter().next(),
            Err(e) if Self::is_nogroup(&e) || e.to_string().contains("no such key") => None,
            Err(e) => return Err(self.err(e)),
        };
        let Some((entry_id, _consumer, idle_ms, deliveries)) = first else {
            return Ok(None);
        };
        let (seconds, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        let now_ms = seconds * 1_000 + micros / 1_000;
        let added_ms = parse_id(&entry_id).map_or(now_ms, |(ms, _)| ms);
        Ok(Some(OldestPending {
            entry_id,
            age_ms: now_ms.saturating_sub(added_ms),
            idle_ms,
            deliveries,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_id, RedisMemory};

    #[test]
    fn info_memory_is_read_by_field_name_not_prefix() {
        let info = "# Memory\r\nused_memory:1259352\r\nused_memory_human:1.20M\r\nmaxmemory:1108936\r\n\
                    maxmemory_human:1.06M\r\nmaxmemory_policy:noeviction\r\n";
        let memory = RedisMemory::parse(info).unwrap();
        assert_eq!(
            memory,
            RedisMemory {
                used_bytes: 1_259_352,
                max_bytes: 1_108_936,
                policy: "noeviction".into()
            }
        );
        assert!(memory.out_of_memory());
        let unlimited = RedisMemory {
            max_bytes: 0,
            ..memory
        };
        assert!(!unlimited.out_of_memory(), "maxmemory 0 is no limit");
        assert_eq!(RedisMemory::parse("used_memory:1\r\n"), None);
    }

    #[test]
    fn the_node_nearest_its_limit_stands_for_a_cluster() {
        let node = |used, max| RedisMemory {
            used_bytes: used,
            max_bytes: max,
            policy: "noeviction".into(),
        };
        assert_eq!(
            RedisMemory::tightest(vec![node(900, 1000), node(5000, 0), node(100, 100)]),
            Some(node(100, 100)),
            "out of memory first"
        );
        assert_eq!(
            RedisMemory::tightest(vec![node(500, 1000), node(5000, 0), node(800, 1000)]),
            Some(node(800, 1000))
        );
        assert_eq!(
            RedisMemory::tightest(vec![node(5, 0), node(7, 0)]),
            Some(node(7, 0))
        );
        assert_eq!(RedisMemory::tightest(Vec::new()), None);
    }

    #[test]
    fn stream_ids_order_numerically() {
        assert!(parse_id("9-5").unwrap() < parse_id("10-0").unwrap());
        assert!(parse_id("10-2").unwrap() < parse_id("10-10").unwrap());
        assert_eq!(parse_id("x"), None);
    }
}
