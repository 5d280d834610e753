//! `purchase-saga status [--json]`: the health of a running deployment in
//! one look, read from PostgreSQL and Redis (nothing is written):
//!
//! - per service: its consumer group's lag (entries not yet delivered),
//!   pending entries (delivered, not acknowledged) and the age of the
//!   oldest, its outbox backlog (never published) and its dead letters;
//!   the same readings as the `/metrics` gauges (`GaugeSources::read`);
//! - Redis's memory against `maxmemory`, and whether it is out of memory
//!   (then it refuses publishes and dead letters until acknowledged entries
//!   are trimmed; the consumers keep draining, see `adapters::redis`);
//! - sagas by state (orders PENDING, COMPLETED, FAILED);
//! - the oldest saga not terminal, with its last event.
//!
//! A source that cannot be read is named in `errors` and its numbers are
//! null; the exit code is then 1 (0 when everything was read). When the
//! bus holds no stream under `--redis-prefix` though the database shows
//! events consumed from it (a mistyped `REDIS_PREFIX`: every number would
//! read zero), the exit code is 3 and `busMismatch` says why
//! ([`bus_check`](super::bus_check)).
//!
//! Consistency: a service's pending count and its oldest pending entry
//! come from one atomic reading (`RedisBus::pending_summary`), so "0
//! pending" never stands beside an oldest entry; ages are never negative
//! (the oldest order's age is measured on this host's clock against a
//! creation time another host's clock wrote: a skew reads as 0, not as a
//! negative age).

use std::process::ExitCode;

use serde::Serialize;

use crate::adapters::metrics::{GaugeSources, ServiceReading};
use crate::adapters::postgres::PgRoutes;
use crate::adapters::redis::{PendingSummary, RedisBus, RedisMemory};
use crate::domain::rows::OrderStatus;
use crate::domain::{Service, Timestamp};
use crate::runtime::{Clock, SystemClock};

use super::backend::{Backend, Needs};
use super::GlobalArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One service's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub service: &'static str,
    /// Entries in the stream not yet delivered to the group.
    pub consumer_lag: Option<u64>,
    /// Delivered and not acknowledged.
    pub pending: Option<u64>,
    pub oldest_pending_age_ms: Option<u64>,
    pub oldest_pending_deliveries: Option<u64>,
    /// Outbox rows never published.
    pub outbox_backlog: Option<i64>,
    pub dead_letters: Option<u64>,
}

/// The last event of the oldest saga in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastEvent {
    #[serde(rename = "type")]
    pub event_type: &'static str,
    pub service: &'static str,
    pub at: Timestamp,
}

/// The oldest order that is not terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OldestInFlight {
    pub order_id: String,
    pub user_id: String,
    pub created_at: Timestamp,
    pub age_ms: i64,
    pub deadline_at: Timestamp,
    /// None when its outbox entries are gone (pruned) or not yet read.
    pub last_event: Option<LastEvent>,
}

/// Redis's memory (INFO memory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BusMemory {
    pub used_bytes: u64,
    /// 0: no limit.
    pub max_bytes: u64,
    pub policy: String,
    /// At or over `maxmemory`: see [`RedisMemory::out_of_memory`].
    pub out_of_memory: bool,
}

impl From<RedisMemory> for BusMemory {
    fn from(m: RedisMemory) -> BusMemory {
        BusMemory {
            out_of_memory: m.out_of_memory(),
            used_bytes: m.used_bytes,
            max_bytes: m.max_bytes,
            policy: m.policy,
        }
    }
}

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub services: Vec<ServiceStatus>,
    /// None when Redis could not be read.
    pub bus_memory: Option<BusMemory>,
    /// Orders by status (PENDING, COMPLETED, FAILED); None when unread.
    pub sagas: Option<std::collections::BTreeMap<&'static str, i64>>,
    pub oldest_in_flight: Option<OldestInFlight>,
    /// What could not be read, with the reason.
    pub errors: Vec<String>,
    /// Set when the bus holds nothing under the prefix though the database
    /// says it should (exit 3): the message, naming the prefix and the
    /// streams expected.
    pub bus_mismatch: Option<String>,
}

/// Keeps `result`'s value, or records its error under `what`.
fn keep<T>(errors: &mut Vec<String>, what: &str, result: Option<Result<T, String>>) -> Option<T> {
    match result? {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(format!("{what}: {e}"));
            None
        }
    }
}

/// What Redis says of one service beyond the gauges.
#[derive(Debug, Clone, Default)]
pub struct BusExtras {
    /// The pending count and the oldest pending entry, read together.
    pub pending: Option<Result<PendingSummary, String>>,
    /// Undelivered entries counted when the group's lag is unknown (no
    /// group yet: the whole stream).
    pub undelivered: Option<Result<u64, String>>,
}

/// Most undelivered entries counted when Redis cannot tell the lag.
const UNDELIVERED_COUNT_MAX: usize = 100_000;

/// One service's row from its gauge reading and the extras.
fn service_status(
    service: Service,
    reading: ServiceReading,
    extras: BusExtras,
    errors: &mut Vec<String>,
) -> ServiceStatus {
    let what = |source: &str| format!("{} {source}", service.slug());
    let group = keep(errors, &what("consumer group"), reading.group);
    let summary = keep(errors, &what("pending entries"), extras.pending);
    let oldest = summary.as_ref().and_then(|p| p.oldest.clone());
    let undelivered = keep(errors, &what("undelivered entries"), extras.undelivered);
    // The count read with the oldest entry when there is one; else the
    // group's (no group yet: nothing delivered, nothing pending).
    let pending = match &summary {
        Some(p) => Some(p.count),
        None if extras_unread(&group) => None,
        None => group.map(|g| g.map_or(0, |g| g.pending)),
    };
    ServiceStatus {
        service: service.slug(),
        consumer_lag: group.and_then(|g| g.and_then(|g| g.lag)).or(undelivered),
        pending,
        oldest_pending_age_ms: oldest.as_ref().map(|o| o.age_ms),
        oldest_pending_deliveries: oldest.as_ref().map(|o| o.deliveries),
        outbox_backlog: keep(errors, &what("outbox backlog"), reading.outbox_backlog),
        dead_letters: keep(errors, &what("dead letters"), reading.dead_letters),
    }
}

/// Whether the group could not be read (then neither could the pending
/// entries).
fn extras_unread(group: &Option<Option<crate::adapters::redis::GroupStats>>) -> bool {
    group.is_none()
}

/// Reads the whole status; `redis` is the bus or why it could not be
/// reached.
pub async fn read(pg: &PgRoutes, redis: Result<RedisBus, String>, now: Timestamp) -> Status {
    let mut errors = Vec::new();
    let redis = match redis {
        Ok(bus) => Some(bus),
        Err(e) => {
            errors.push(format!("redis: {e}"));
            None
        }
    };
    let sources = GaugeSources {
        postgres: Some(pg.clone()),
        redis: redis.clone(),
    };
    let mut services = Vec::new();
    for service in Service::ALL {
        let reading = sources.read(service).await;
        let mut extras = BusExtras::default();
        if let (Some(bus), Some(Ok(group))) = (&redis, &reading.group) {
            extras.pending = Some(bus.pending_summary(service).await.map_err(|e| e.to_string()));
            if group.is_none_or(|g| g.lag.is_none()) {
                let counted = bus.undelivered(service, UNDELIVERED_COUNT_MAX).await;
                extras.undelivered = Some(counted.map_err(|e| e.to_string()));
            }
        }
        services.push(service_status(service, reading, extras, &mut errors));
    }
    let bus_memory = match &redis {
        Some(bus) => keep(
            &mut errors,
            "redis memory",
            Some(bus.memory().await.map_err(|e| e.to_string())),
        )
        .map(BusMemory::from),
        None => None,
    };
    let sagas = keep(
        &mut errors,
        "orders by status",
        Some(pg.orders_by_status().await.map_err(|e| e.to_string())),
    )
    .map(|counts| counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect());
    let oldest = keep(
        &mut errors,
        "oldest order in flight",
        Some(pg.oldest_pending_order().await.map_err(|e| e.to_string())),
    )
    .flatten();
    let oldest_in_flight = match oldest {
        None => None,
        Some(order) => {
            debug_assert_eq!(order.status, OrderStatus::Pending);
            let timeline = keep(
                &mut errors,
                "the oldest order's timeline",
                Some(pg.timeline(&order.order_id).await.map_err(|e| e.to_string())),
            );
            let last_event = timeline.and_then(|t| t.last().cloned()).map(|e| LastEvent {
                event_type: e.event_type.as_str(),
                service: e.service.slug(),
                at: e.created_at,
            });
            Some(OldestInFlight {
                order_id: order.order_id.to_string(),
                user_id: order.user_id.to_string(),
                created_at: order.created_at,
                age_ms: now.since(order.created_at).0.max(0),
                deadline_at: order.deadline_at,
                last_event,
            })
        }
    };
    let bus_mismatch = match &redis {
        Some(bus) => keep(
            &mut errors,
            "bus and database agreement",
            Some(match super::inflight::activities(pg).await {
                Ok(activities) => super::bus_check::check(&activities, bus).await,
                Err(e) => Err(e),
            }),
        )
        .flatten(),
        None => None,
    };
    Status {
        services,
        bus_memory,
        sagas,
        oldest_in_flight,
        errors,
        bus_mismatch,
    }
}

fn cell<T: ToString>(v: Option<T>) -> String {
    v.map_or("?".to_string(), |v| v.to_string())
}

/// The human form: a table of services, then sagas and the oldest in
/// flight, then what could not be read.
pub fn render(status: &Status) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if let Some(m) = &status.bus_mismatch {
        let _ = writeln!(s, "error: {m}");
    }
    let _ = writeln!(
        s,
        "{:<13} {:>8} {:>8} {:>16} {:>8} {:>8}",
        "service", "lag", "pending", "oldest-pending", "outbox", "dead"
    );
    for r in &status.services {
        let oldest = match (r.oldest_pending_age_ms, r.oldest_pending_deliveries) {
            (Some(ms), Some(n)) => format!("{:.1}s x{n}", ms as f64 / 1000.0),
            _ if r.pending == Some(0) => "-".to_string(),
            _ => "?".to_string(),
        };
        let _ = writeln!(
            s,
            "{:<13} {:>8} {:>8} {:>16} {:>8} {:>8}",
            r.service,
            cell(r.consumer_lag),
            cell(r.pending),
            oldest,
            cell(r.outbox_backlog),
            cell(r.dead_letters)
        );
    }
    match &status.bus_memory {
        Some(m) if m.out_of_memory => {
            let _ = writeln!(
                s,
                "redis memory: OUT OF MEMORY: {} used, maxmemory {} ({}): publishes and dead letters are \
                 refused until acknowledged entries are trimmed",
                m.used_bytes, m.max_bytes, m.policy
            );
        }
        Some(m) if m.max_bytes > 0 => {
            let _ = writeln!(
                s,
                "redis memory: {} used of maxmemory {} ({})",
                m.used_bytes, m.max_bytes, m.policy
            );
        }
        Some(m) => {
            let _ = writeln!(s, "redis memory: {} used, no maxmemory", m.used_bytes);
        }
        None => s.push_str("redis memory: ?\n"),
    }
    match &status.sagas {
        Some(counts) => {
            let by_state: Vec<String> = [OrderStatus::Pending, OrderStatus::Completed, OrderStatus::Failed]
                .iter()
                .map(|st| {
                    format!(
                        "{} {}",
                        counts.get(st.as_str()).copied().unwrap_or(0),
                        st.as_str()
                    )
                })
                .collect();
            let _ = writeln!(s, "sagas: {}", by_state.join(", "));
        }
        None => s.push_str("sagas: ?\n"),
    }
    match &status.oldest_in_flight {
        None if status.sagas.is_some() => s.push_str("oldest in flight: none\n"),
        None => s.push_str("oldest in flight: ?\n"),
        Some(o) => {
            let last = o.last_event.as_ref().map_or("no event kept".to_string(), |e| {
                format!("last event {} from {} at {}", e.event_type, e.service, e.at)
            });
            let _ = writeln!(
                s,
                "oldest in flight: order {} of {}, created {} ({:.1}s ago, deadline {}); {last}",
                o.order_id,
                o.user_id,
                o.created_at,
                o.age_ms as f64 / 1000.0,
                o.deadline_at
            );
        }
    }
    for e in &status.errors {
        let _ = writeln!(s, "error: {e}");
    }
    s
}

/// `purchase-saga status`.
pub async fn run_status(global: &GlobalArgs, args: &StatusArgs) -> Result<ExitCode, String> {
    if global.in_memory {
        return Err(
            "status reads a running deployment's PostgreSQL and Redis; the in-memory store lives \
             only inside one process"
                .into(),
        );
    }
    let backend = Backend::open(global, 2, Needs::StoreOnly).await?;
    let pg = backend.postgres().ok_or("status needs PostgreSQL")?.clone();
    let redis = super::backend::connect_redis(global).await;
    let status = read(&pg, redis, SystemClock.now()).await;
    if args.json {
        let json = serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        print!("{}", render(&status));
    }
    Ok(if status.bus_mismatch.is_some() {
        ExitCode::from(super::bus_check::EXIT_BUS_MISMATCH)
    } else if status.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::redis::GroupStats;

    #[test]
    fn a_redis_out_of_memory_is_said_so() {
        let memory = RedisMemory {
            used_bytes: 1_300,
            max_bytes: 1_200,
            policy: "noeviction".into(),
        };
        let mut status = Status {
            services: Vec::new(),
            bus_memory: Some(memory.clone().into()),
            sagas: None,
            oldest_in_flight: None,
            errors: Vec::new(),
            bus_mismatch: None,
        };
        let shown = render(&status);
        assert!(
            shown.contains("redis memory: OUT OF MEMORY: 1300 used, maxmemory 1200 (noeviction)"),
            "{shown}"
        );
        let json = serde_json::to_string(&status).unwrap();
        assert!(json.contains(r#""outOfMemory":true"#), "{json}");
        status.bus_memory = Some(
            RedisMemory {
                used_bytes: 1_000,
                ..memory
            }
            .into(),
        );
        assert!(render(&status).contains("redis memory: 1000 used of maxmemory 1200 (noeviction)\n"));
    }

    #[test]
    fn a_missing_group_counts_the_stream_and_a_failed_read_is_named() {
        let mut errors = Vec::new();
        let reading = ServiceReading {
            outbox_backlog: Some(Ok(4)),
            group: Some(Ok(None)),
            dead_letters: Some(Err("down".into())),
        };
        let extras = BusExtras {
            pending: Some(Ok(PendingSummary {
                count: 0,
                oldest: None,
            })),
            undelivered: Some(Ok(3)),
        };
        let row = service_status(Service::User, reading, extras, &mut errors);
        assert_eq!(
            (
                row.consumer_lag,
                row.pending,
                row.outbox_backlog,
                row.dead_letters
            ),
            (Some(3), Some(0), Some(4), None)
        );
        assert_eq!(errors, ["user dead letters: down"]);
        let reading = ServiceReading {
            outbox_backlog: Some(Ok(0)),
            group: Some(Ok(Some(GroupStats {
                pending: 2,
                lag: Some(7),
            }))),
            dead_letters: Some(Ok(1)),
        };
        let row = service_status(Service::User, reading, BusExtras::default(), &mut errors);
        assert_eq!(
            (row.consumer_lag, row.pending),
            (Some(7), Some(2)),
            "the group's own lag"
        );
    }

    /// Issue 27: "pending 0" beside an oldest pending entry. The group's
    /// count (XINFO) was read before an entry was delivered; the row shows
    /// the count read with the oldest entry, never 0 beside it.
    #[test]
    fn the_pending_count_is_the_one_read_with_the_oldest_entry() {
        let mut errors = Vec::new();
        let reading = ServiceReading {
            outbox_backlog: Some(Ok(0)),
            group: Some(Ok(Some(GroupStats {
                pending: 0,
                lag: Some(0),
            }))),
            dead_letters: Some(Ok(0)),
        };
        let oldest = crate::adapters::redis::OldestPending {
            entry_id: "5-0".into(),
            age_ms: 1_200,
            idle_ms: 10,
            deliveries: 1,
        };
        let extras = BusExtras {
            pending: Some(Ok(PendingSummary {
                count: 1,
                oldest: Some(oldest),
            })),
            undelivered: None,
        };
        let row = service_status(Service::User, reading, extras, &mut errors);
        assert_eq!((row.pending, row.oldest_pending_age_ms), (Some(1), Some(1_200)));
        let shown = render(&Status {
            services: vec![row],
            bus_memory: None,
            sagas: None,
            oldest_in_flight: None,
            errors,
            bus_mismatch: None,
        });
        assert!(
            shown.contains("user                 0        1          1.2s x1"),
            "{shown}"
        );
    }
}
