//! The operator's commands on the bus beyond `ops.rs`: discarding dead
//! letters (`dlq drop`, `dlq purge`) and telling whether a service's
//! stream exists at all (`audit` and `status` fail on a prefix under which
//! nothing exists though the database says it should).

use crate::domain::Service;
use crate::runtime::bus::BusError;

use super::RedisBus;

impl RedisBus {
    /// Deletes dead letter `dead_id` of `service` (XDEL); whether it was
    /// there.
    pub async fn drop_dead_letter(&self, service: Service, dead_id: &str) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let deleted: u64 = redis::cmd("XDEL")
            .arg(self.dead_key(service))
            .arg(dead_id)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(deleted > 0)
    }

    /// Deletes every dead letter of `service` (XTRIM MAXLEN 0: the stream
    /// key stays, empty); how many went.
    pub async fn purge_dead_letters(&self, service: Service) -> Result<u64, BusError> {
        let mut conn = self.conn.clone();
        redis::cmd("XTRIM")
            .arg(self.dead_key(service))
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    /// Whether `service`'s stream exists (EXISTS: a stream stays once
    /// created, emptied by trimming or not).
    pub async fn stream_exists(&self, service: Service) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let n: u64 = redis::cmd("EXISTS")
            .arg(self.stream_key(service))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }
}

/// A consumer group's pending entries in one atomic reading: how many, and
/// the oldest (so a count of 0 never stands beside an oldest entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSummary {
    pub count: u64,
    pub oldest: Option<super::OldestPending>,
}

impl RedisBus {
    /// `service`'s pending count and oldest pending entry, read in one
    /// MULTI/EXEC (XPENDING summary, XPENDING - + 1, TIME); a count of 0
    /// and no oldest when the stream or the group does not exist.
    pub async fn pending_summary(&self, service: Service) -> Result<PendingSummary, BusError> {
        let mut conn = self.conn.clone();
        let (key, group) = (self.stream_key(service), Self::group(service));
        type Reply = (
            redis::streams::StreamPendingReply,
            Vec<(String, String, u64, u64)>,
            (u64, u64),
        );
        let reply: Result<Reply, redis::RedisError> = redis::pipe()
            .atomic()
            .cmd("XPENDING")
            .arg(&key)
            .arg(group)
            .cmd("XPENDING")
            .arg(&key)
            .arg(group)
            .arg("-")
            .arg("+")
            .arg(1)
            .cmd("TIME")
            .query_async(&mut conn)
            .await;
        let (summary, first, (seconds, micros)) = match reply {
            Ok(r) => r,
            Err(e) if Self::is_nogroup(&e) || e.to_string().contains("no such key") => {
                return Ok(PendingSummary {
                    count: 0,
                    oldest: None,
                })
            }
            Err(e) => return Err(self.err(e)),
        };
        let now_ms = seconds * 1_000 + micros / 1_000;
        let oldest = first
            .into_iter()
            .next()
            .map(|(entry_id, _consumer, idle_ms, deliveries)| {
                let added_ms = entry_id
                    .split_once('-')
                    .and_then(|(ms, _)| ms.parse::<u64>().ok())
                    .unwrap_or(now_ms);
                super::OldestPending {
                    age_ms: now_ms.saturating_sub(added_ms),
                    entry_id,
                    idle_ms,
                    deliveries,
                }
            });
        Ok(PendingSummary {
            count: summary.count() as u64,
            oldest,
        })
    }
}
