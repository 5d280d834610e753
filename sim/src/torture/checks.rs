//! What torture checks, with the simulator's invariants
//! (`domain::invariants`) and these additions:
//!
//! - on every commit, every ack and on the streams: see `witness.rs`
//!   (safety and transitions per commit, the compensation ledger, ack only
//!   after commit) and `streams.rs` (publish from the outbox, a mark only
//!   for what Redis received, no dead letter torture did not cause);
//! - from the runtime's observer events, [`REAL_EVENT_DEAD_LETTERED`] (a
//!   decodable event, which only torture's injected entries and rows are
//!   not, dead-lettered) and [`REPUBLISH_BOUNDED`] (a relay publishing one
//!   event more often than the re-drive schedule allows: an endless
//!   republish);
//! - at the end: quiescence ([`Checker::not_quiescent`]: every order
//!   terminal, every outbox row published and in each subscriber's inbox,
//!   every group drained, a lag Redis cannot count counted from the
//!   stream) within the bound, else `liveness`; `check_quiescent`; and
//!   that what had to be dead-lettered was: an entry XDELed while pending
//!   ([`DELETED_ENTRY_DEAD_LETTERED`]) and an undecodable entry sent while
//!   the dead-letter key had the wrong type ([`DEAD_LETTER_KEPT`]), unless
//!   Redis lost its data after them;
//! - a planned fault that did not take effect: [`FAULT_NOT_INJECTED`].
//!
//! Injected outbox rows (bad-outbox-row) are exempt from "published": a
//! relay may quarantine them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use purchase_saga::adapters::postgres::{schema, PgConfig, PgRoutes};
use purchase_saga::adapters::redis::{RedisBus, RedisConfig};
use purchase_saga::domain::invariants::{check_quiescent, check_safety, check_transition, Snapshot};
use purchase_saga::domain::service::subscribers;
use purchase_saga::domain::{Event, Service};
use purchase_saga::runtime::observer::{Disposition, Observer, RuntimeEvent};
use purchase_saga::runtime::trace::delivery_line;
use purchase_saga::runtime::{RedrivePolicy, Store};
use sqlx::Row as _;

use crate::finding::{check, Finding};

use super::databases::DbMap;
use super::state::Shared;

pub const REAL_EVENT_DEAD_LETTERED: &str = "real-event-dead-lettered";
pub const REPUBLISH_BOUNDED: &str = "republish-bounded";
pub const DELETED_ENTRY_DEAD_LETTERED: &str = "deleted-entry-dead-lettered";
pub const DEAD_LETTER_KEPT: &str = "dead-letter-kept";
/// Torture could not set a seed up or read what a check needs (not a
/// finding about the saga, but a seed that proves nothing).
pub const SETUP: &str = "torture-setup";
/// Split layout: a replica (or the client) holds a connection to a
/// database other than its service's (`databases.rs`).
pub const MISROUTED: &str = "misrouted-connection";
/// A planned fault that did not take effect (a pg-kill that terminated no
/// backend, a database that did not turn read-only, a Redis that did not
/// restart, ...): the seed did not run the plan it claims.
pub const FAULT_NOT_INJECTED: &str = "fault-not-injected";

/// The runtime's observer in torture: trace lines, and the checks that
/// need the runtime's own view (see the module docs).
pub struct TortureObserver {
    pub shared: Arc<Shared>,
    /// Publishes of one event allowed to the relays of its service: every
    /// round of the schedule plus the first, by each replica, twice over
    /// (a failed mark is a legitimate republish).
    pub publishes_max: u32,
}

impl TortureObserver {
    pub fn new(shared: Arc<Shared>, policy: RedrivePolicy, replicas: u8) -> TortureObserver {
        let rounds = policy.rounds_within_horizon() + 1;
        TortureObserver {
            shared,
            publishes_max: 2 * rounds * u32::from(replicas),
        }
    }
}

impl Observer for TortureObserver {
    fn observe(&self, event: RuntimeEvent<'_>) {
        match &event {
            RuntimeEvent::Handled {
                consumer,
                event: decoded,
                disposition,
                attempt,
                service,
                ..
            } => {
                let line = delivery_line(&event).expect("a handled delivery has a line");
                self.shared.log(format!("{consumer} #{attempt} | {line}"));
                if let (Disposition::DeadLettered { reason }, Some(e)) = (disposition, decoded) {
                    self.shared.found(Finding::new(
                        REAL_EVENT_DEAD_LETTERED,
                        format!("{} at {service}", e.summary()),
                        format!("dead-lettered: {reason}"),
                    ));
                }
            }
            RuntimeEvent::Published {
                service,
                event: e,
                republish,
            } => {
                let again = if *republish > 0 {
                    format!(" [republish {republish}]")
                } else {
                    String::new()
                };
                self.shared.log(format!(
                    "{service} -> Bus: {} {}{again}",
                    e.event_type(),
                    e.order_id
                ));
                let n = self.shared.published(e.event_id.to_string());
                if n > self.publishes_max {
                    self.shared.found(Finding::new(
                        REPUBLISH_BOUNDED,
                        format!("{} from {service}", e.summary()),
                        format!("published {n} times (the schedule allows {})", self.publishes_max),
                    ));
                }
            }
            RuntimeEvent::Quarantined { service, seq, reason } => {
                // Torture's bad-outbox-row fault writes such rows; the
                // checker's liveness exempts those and no other.
                self.shared
                    .log(format!("{service} outbox seq {seq} quarantined: {reason}"));
            }
            RuntimeEvent::Committed { .. }
            | RuntimeEvent::ConflictRetried { .. }
            | RuntimeEvent::RelayWoken { .. } => {}
        }
    }
}

/// The checker's view of a seed's servers, on connections of its own.
pub struct Checker {
    /// The seed's databases (the checker reads them all, through routes).
    pub dbs: DbMap,
    /// For key names; each check connects afresh ([`Checker::fresh_bus`]).
    pub bus: RedisBus,
    pub redis_url: String,
    pub redis: RedisConfig,
    /// Outbox rows torture inserted, per service (exempt from "published").
    pub injected_rows: std::sync::Mutex<BTreeMap<Service, BTreeSet<i64>>>,
}

impl Checker {
    pub async fn snapshot(&self) -> Result<Snapshot, String> {
        snapshot_of(&self.dbs).await
    }

    /// A bus on new connections: one made before a restart or a
    /// `CLIENT KILL` may still be reconnecting, and the checker must see
    /// the server, not its own connection's trouble.
    pub async fn fresh_bus(&self) -> Result<RedisBus, String> {
        RedisBus::connect(&self.redis_url, self.redis.clone())
            .await
            .map_err(|e| e.to_string())
    }

    fn injected(&self, service: Service) -> BTreeSet<i64> {
        self.injected_rows
            .lock()
            .expect("injected rows mutex")
            .get(&service)
            .cloned()
            .unwrap_or_default()
    }

    /// Why the seed is not quiescent yet, if it is not.
    pub async fn not_quiescent(&self) -> Result<Option<String>, String> {
        let snapshot = self.snapshot().await?;
        let open = snapshot
            .orders
            .values()
            .filter(|o| !o.status.is_terminal())
            .count();
        if open > 0 {
            return Ok(Some(format!("{open} orders not terminal")));
        }
        let store = fresh_store(&self.dbs).await?;
        let outcome = self.undelivered(&store).await;
        store.close().await;
        if let Some(why) = outcome? {
            return Ok(Some(why));
        }
        let bus = self.fresh_bus().await?;
        for service in Service::ALL {
            if let Some(stats) = bus.group_stats(service).await.map_err(|e| e.to_string())? {
                // Redis answers no lag when it cannot count it (an entry
                // was deleted in the range): count the entries past the
                // group's last delivered id instead, never assume 0.
                let lag = match stats.lag {
                    Some(lag) => lag,
                    None => self.undelivered_entries(&bus, service).await?,
                };
                if stats.pending > 0 || lag > 0 {
                    return Ok(Some(format!(
                        "{service}'s group: {} pending, lag {lag} (Redis: {:?})",
                        stats.pending, stats.lag
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Entries of `service`'s stream after its group's last delivered id
    /// (what XINFO's lag counts), read from the stream itself.
    async fn undelivered_entries(&self, bus: &RedisBus, service: Service) -> Result<u64, String> {
        // The cluster client when the URL lists a cluster's nodes.
        let mut conn = purchase_saga::adapters::redis::connection::connect(
            &self.redis_url,
            false,
            std::time::Duration::from_secs(5),
        )
        .await?;
        let stream = bus.stream_key(service);
        let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("XINFO GROUPS {stream}: {e}"))?;
        let Some(group) = groups.groups.iter().find(|g| g.name == RedisBus::group(service)) else {
            return Err(format!("{stream} has no group {}", RedisBus::group(service)));
        };
        let after: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(format!("({}", group.last_delivered_id))
            .arg("+")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("XRANGE {stream}: {e}"))?;
        Ok(after.ids.len() as u64)
    }

    /// An outbox row (not injected) never published or not yet in a
    /// subscriber's inbox.
    async fn undelivered(&self, store: &PgRoutes) -> Result<Option<String>, String> {
        let mut inboxes: BTreeMap<Service, BTreeSet<String>> = BTreeMap::new();
        for service in Service::ALL {
            let ids: Vec<String> =
                sqlx::query_scalar(&format!("SELECT event_id::text FROM {}.inbox", schema(service)))
                    .fetch_all(pool_of(store, service)?)
                    .await
                    .map_err(|e| e.to_string())?;
            inboxes.insert(service, ids.into_iter().collect());
        }
        for service in Service::ALL {
            let injected = self.injected(service);
            let rows = sqlx::query(&format!(
                "SELECT seq, payload, published_count FROM {}.outbox ORDER BY seq",
                schema(service)
            ))
            .fetch_all(pool_of(store, service)?)
            .await
            .map_err(|e| e.to_string())?;
            for r in rows {
                let seq: i64 = r.try_get("seq").map_err(|e| e.to_string())?;
                if injected.contains(&seq) {
                    continue;
                }
                let published: i32 = r.try_get("published_count").map_err(|e| e.to_string())?;
                if published == 0 {
                    return Ok(Some(format!("{service} outbox seq {seq} never published")));
                }
                let payload: String = r.try_get("payload").map_err(|e| e.to_string())?;
                let event = Event::decode(payload.as_bytes())
                    .map_err(|e| format!("{service} outbox seq {seq} does not decode: {e}"))?;
                for s in subscribers(event.event_type()) {
                    if !inboxes[&s].contains(&event.event_id.to_string()) {
                        return Ok(Some(format!("{} never reached {s}", event.summary())));
                    }
                }
            }
        }
        Ok(None)
    }

    /// [`Checker::dead_lettered`], tried again while the connection
    /// recovers from a fault (a restarted Redis, killed connections).
    pub async fn dead_lettered_retrying(&self, service: Service) -> Result<BTreeSet<String>, String> {
        let mut tries = 0;
        loop {
            match self.dead_lettered(service).await {
                Err(_) if tries < 10 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// Entry ids in `service`'s dead-letter stream.
    pub async fn dead_lettered(&self, service: Service) -> Result<BTreeSet<String>, String> {
        Ok(self
            .fresh_bus()
            .await?
            .dead_letters(service, 100_000)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|d| d.letter.entry_id)
            .collect())
    }
}

/// Routes on a fresh one-connection pool per database: a pooled
/// connection would keep statements prepared before an additive
/// migration, and the checker must see the database, not that defect.
pub async fn fresh_store(dbs: &DbMap) -> Result<PgRoutes, String> {
    let config = PgConfig {
        connections_max: 1,
        acquire_timeout: Duration::from_secs(5),
        ..PgConfig::default()
    };
    dbs.routes(&config).await
}

/// The pool of `service`'s database.
fn pool_of(store: &PgRoutes, service: Service) -> Result<&sqlx::PgPool, String> {
    Ok(store.of(service).map_err(|e| e.to_string())?.pool())
}

/// Every row of the seed's databases (in audit order when split), on
/// fresh connections.
pub async fn snapshot_of(dbs: &DbMap) -> Result<Snapshot, String> {
    let store = fresh_store(dbs).await?;
    let snapshot = store.snapshot().await.map_err(|e| e.to_string());
    store.close().await;
    snapshot
}

/// The safety checks of one snapshot, and of the step from the last one.
pub fn check_snapshot(shared: &Shared, before: Option<&Snapshot>, now: &Snapshot) {
    for v in check_safety(now) {
        shared.found(Finding::from(v));
    }
    if let Some(before) = before {
        for v in check_transition(before, now) {
            shared.found(Finding::from(v));
        }
    }
}

/// The end-of-run invariants on the final snapshot.
pub fn check_final(shared: &Shared, last: &Snapshot) {
    for v in check_quiescent(last) {
        shared.found(Finding::from(v));
    }
}

/// An entry torture expects in a dead-letter stream.
#[derive(Debug, Clone)]
pub struct Expected {
    pub service: Service,
    pub entry_id: String,
    /// The check that fails without it.
    pub check: &'static str,
    pub what: String,
    pub at_ms: u64,
}

/// Checks that each expected dead letter is there (unless Redis lost its
/// data after it was expected).
pub async fn check_dead_letters(
    shared: &Shared,
    checker: &Checker,
    expected: &[Expected],
    last_loss_ms: Option<u64>,
) {
    for e in expected {
        if last_loss_ms.is_some_and(|lost| lost >= e.at_ms) {
            continue;
        }
        match checker.dead_lettered_retrying(e.service).await {
            Ok(ids) if ids.contains(&e.entry_id) => {}
            Ok(_) => shared.found(Finding::new(
                e.check,
                format!("entry {} of {}", e.entry_id, e.service),
                format!(
                    "{} is not in the dead-letter stream: lost without a trace",
                    e.what
                ),
            )),
            Err(err) => shared.found(Finding::new(SETUP, format!("dead letters of {}", e.service), err)),
        }
    }
}

/// A finding of the liveness check.
pub fn liveness(bound: Duration, why: &str) -> Finding {
    Finding::new(
        check::LIVENESS,
        "run",
        format!("not quiescent {}ms after healing: {why}", bound.as_millis()),
    )
}
