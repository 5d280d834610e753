//! What Redis received, read from Redis itself: [`StreamWatch`] reads every
//! subscriber stream and dead-letter stream of a seed (XRANGE from where it
//! last stopped) and holds them to the delivery rules:
//!
//! - **publish from the outbox** ([`check::PUBLISH_FROM_OUTBOX`]): every
//!   event on a stream is a committed outbox row of its emitter (the outbox
//!   is read after the streams, and no row is pruned during a seed), and
//!   every entry decodes, except the undecodable entries torture itself
//!   injected;
//! - **a mark only for what Redis holds**
//!   ([`check::MARK_AFTER_PUBLISH`]): an outbox row marked published `n`
//!   times was received `n` times by each subscriber's stream, counting the
//!   publishes torture's fault layer dropped on purpose (`drop-publish`:
//!   the bus answered OK and lost it). The marks are read before the
//!   streams, so every publish a mark counts was on a stream by then;
//! - **no dead letter** ([`check::NO_DEAD_LETTER`]): every dead letter,
//!   the claim script's for deleted entries included, is one torture
//!   expects (an entry it injected as poison or XDELed while pending).
//!
//! Streams lose entries only when Redis loses its data and when torture
//! XDELs one, so the watch reads them right before each (the driver calls
//! [`StreamWatch::scan`]) and once at the end, with the replicas stopped.
//! On the private redis-server a loss first pauses every client's writes
//! (`CLIENT PAUSE WRITE`), so no publish lands between the last read and
//! the restart; on a shared Redis (`--redis-url`) it cannot, and the mark
//! check counts only the marks made before the first loss.

use std::collections::{BTreeMap, BTreeSet};

use purchase_saga::adapters::postgres::{schema, PgRoutes};
use purchase_saga::adapters::redis::connection::RedisConn;
use purchase_saga::adapters::redis::RedisBus;
use purchase_saga::domain::service::subscribers;
use purchase_saga::domain::{Event, EventId, Service};
use redis::streams::StreamRangeReply;
use sqlx::Row as _;

use crate::finding::{check, Finding};

use super::checks::Expected;
use super::state::Shared;

/// Entries read per XRANGE call.
const PAGE: usize = 1000;

/// An outbox row as the mark check reads it.
struct Marked {
    event: Event,
    published_count: u32,
}

/// See the module docs.
#[derive(Default)]
pub struct StreamWatch {
    /// The last entry id read, per stream key.
    cursors: BTreeMap<String, String>,
    /// Entries on each subscriber's stream, per event, over the whole run.
    received: BTreeMap<EventId, BTreeMap<Service, u32>>,
    /// Dead letters already judged, by (service, dead-letter stream id).
    dead_seen: BTreeSet<(Service, String)>,
    /// With a shared Redis: each row's mark count at the first loss (the
    /// mark check counts no further; see the module docs).
    marks_capped_at: Option<BTreeMap<(Service, EventId), u32>>,
    pub scans: u64,
    pub entries_read: u64,
}

impl StreamWatch {
    /// Reads what is new on every stream and checks it. `injected` holds
    /// the outbox rows torture inserted (exempt), `expected` the entries
    /// torture made poison or deleted.
    pub async fn scan(
        &mut self,
        shared: &Shared,
        store: &PgRoutes,
        conn: &mut RedisConn,
        keys: &RedisBus,
        expected: &[Expected],
    ) -> Result<(), String> {
        self.scans += 1;
        let marks = read_marks(store).await?;
        let mut on_streams: Vec<(Service, String, Event)> = Vec::new();
        for service in Service::ALL {
            let key = keys.stream_key(service);
            for (id, payload) in self.read_new(conn, &key).await? {
                self.entries_read += 1;
                match Event::decode(&payload) {
                    Ok(event) => {
                        *self
                            .received
                            .entry(event.event_id)
                            .or_default()
                            .entry(service)
                            .or_insert(0) += 1;
                        on_streams.push((service, id, event));
                    }
                    Err(e) if !is_expected(expected, service, &id) => shared.found(Finding::new(
                        check::PUBLISH_FROM_OUTBOX,
                        format!("{service} entry {id}"),
                        format!("an undecodable entry no fault put there reached the stream: {e}"),
                    )),
                    Err(_) => {}
                }
            }
            self.judge_dead_letters(shared, conn, keys, service, expected)
                .await?;
        }
        let outbox: BTreeSet<(Service, EventId)> = read_marks(store)
            .await?
            .into_iter()
            .map(|m| (m.event.emitter(), m.event.event_id))
            .collect();
        for (service, id, event) in on_streams {
            if !outbox.contains(&(event.emitter(), event.event_id)) {
                shared.found(Finding::new(
                    check::PUBLISH_FROM_OUTBOX,
                    format!("{service} entry {id}"),
                    format!(
                        "{} reached the stream but is no committed outbox row of {}",
                        event.summary(),
                        event.emitter()
                    ),
                ));
            }
        }
        self.check_marks(shared, &marks);
        Ok(())
    }

    /// With a shared Redis, about to lose its keys: the mark check stops
    /// counting here (see the module docs).
    pub async fn cap_marks(&mut self, store: &PgRoutes) -> Result<(), String> {
        if self.marks_capped_at.is_none() {
            let marks = read_marks(store).await?;
            self.marks_capped_at = Some(
                marks
                    .into_iter()
                    .map(|m| ((m.event.emitter(), m.event.event_id), m.published_count))
                    .collect(),
            );
        }
        Ok(())
    }

    /// The streams are gone (Redis lost its data): read from their start.
    pub fn lost(&mut self) {
        self.cursors.clear();
    }

    fn check_marks(&self, shared: &Shared, marks: &[Marked]) {
        for m in marks {
            let e = &m.event;
            let subs = subscribers(e.event_type());
            let mut marked = m.published_count;
            if let Some(cap) = &self.marks_capped_at {
                marked = marked.min(cap.get(&(e.emitter(), e.event_id)).copied().unwrap_or(0));
            }
            if subs.is_empty() || marked == 0 {
                continue;
            }
            let counts = self.received.get(&e.event_id);
            let received = subs
                .iter()
                .map(|s| counts.and_then(|c| c.get(s)).copied().unwrap_or(0))
                .min()
                .unwrap_or(0);
            let dropped = shared.publishes_dropped(e.event_id);
            if received + dropped < marked {
                shared.found(Finding::new(
                    check::MARK_AFTER_PUBLISH,
                    format!("{} outbox {}", e.emitter(), e.event_id),
                    format!(
                        "{} marked published {marked} times; Redis received it {received} times \
                         (and the fault layer dropped {dropped})",
                        e.summary()
                    ),
                ));
            }
        }
    }

    async fn judge_dead_letters(
        &mut self,
        shared: &Shared,
        conn: &mut RedisConn,
        keys: &RedisBus,
        service: Service,
        expected: &[Expected],
    ) -> Result<(), String> {
        let key = keys.dead_key(service);
        let range: Result<StreamRangeReply, redis::RedisError> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(conn)
            .await;
        let range = match range {
            Ok(r) => r,
            // wrong-type-dead-key: nothing can be dead-lettered there now.
            Err(e) if e.to_string().contains("WRONGTYPE") => return Ok(()),
            Err(e) => return Err(format!("XRANGE {key}: {e}")),
        };
        for entry in range.ids {
            if !self.dead_seen.insert((service, entry.id.clone())) {
                continue;
            }
            let entry_id: String = entry.get("entry_id").unwrap_or_default();
            let reason: String = entry.get("reason").unwrap_or_default();
            if !is_expected(expected, service, &entry_id) {
                shared.found(Finding::new(
                    check::NO_DEAD_LETTER,
                    format!("{service} entry {entry_id}"),
                    format!("dead-lettered, and no fault made it poison: {reason}"),
                ));
            }
        }
        Ok(())
    }

    /// Entries of `key` after the cursor, as (id, payload).
    async fn read_new(&mut self, conn: &mut RedisConn, key: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut out = Vec::new();
        loop {
            let start = match self.cursors.get(key) {
                Some(last) => format!("({last}"),
                None => "-".to_string(),
            };
            let range: StreamRangeReply = redis::cmd("XRANGE")
                .arg(key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(conn)
                .await
                .map_err(|e| format!("XRANGE {key}: {e}"))?;
            let n = range.ids.len();
            for entry in range.ids {
                let payload = match entry.map.get("payload") {
                    Some(redis::Value::BulkString(bytes)) => bytes.clone(),
                    _ => Vec::new(),
                };
                self.cursors.insert(key.to_string(), entry.id.clone());
                out.push((entry.id, payload));
            }
            if n < PAGE {
                return Ok(out);
            }
        }
    }
}

fn is_expected(expected: &[Expected], service: Service, entry_id: &str) -> bool {
    expected
        .iter()
        .any(|e| e.service == service && e.entry_id == entry_id)
}

/// Every outbox row that decodes (torture's injected rows do not, or are
/// quarantined copies never published), with its mark count.
async fn read_marks(store: &PgRoutes) -> Result<Vec<Marked>, String> {
    let mut all = Vec::new();
    for service in Service::ALL {
        let rows = sqlx::query(&format!(
            "SELECT payload, published_count FROM {}.outbox",
            schema(service)
        ))
        .fetch_all(store.of(service).map_err(|e| e.to_string())?.pool())
        .await
        .map_err(|e| format!("{} outbox: {e}", schema(service)))?;
        for r in rows {
            let payload: String = r.try_get("payload").map_err(|e| e.to_string())?;
            let count: i32 = r.try_get("published_count").map_err(|e| e.to_string())?;
            if let Ok(event) = Event::decode(payload.as_bytes()) {
                all.push(Marked {
                    event,
                    published_count: u32::try_from(count).unwrap_or(0),
                });
            }
        }
    }
    Ok(all)
}
