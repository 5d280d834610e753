//! Work in flight across the services, as `audit` judges quiescence: per
//! service the bus entries its consumer group holds unacknowledged
//! (pending) or has not been given yet (undelivered), the outbox rows its
//! relay has not published, and two progress counters (highest outbox
//! sequence, inbox rows) that grow with every step a service applies.
//!
//! The system is quiescent when nothing is in flight before and after a
//! snapshot of every service's state, no step ran in between (the progress
//! counters did not move), and the snapshot holds no order that is not
//! terminal. Then nothing can still change the snapshot's orders: their
//! events are all applied, and re-drive publishes only the events of orders
//! that are not terminal. New orders may arrive meanwhile; they are not in
//! the snapshot.

use std::fmt;

use crate::adapters::postgres::{Activity, PgRoutes};
use crate::adapters::redis::RedisBus;
use crate::domain::invariants::Snapshot;
use crate::domain::Service;

/// Most undelivered entries counted per service when Redis cannot tell the
/// group's lag (enough to say "not quiescent").
const UNDELIVERED_COUNT_MAX: usize = 1_000;

/// One service's work in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceInFlight {
    pub service: Service,
    /// Delivered to a consumer and not acknowledged.
    pub pending: u64,
    /// In the service's stream, not yet delivered to its group.
    pub undelivered: u64,
    /// The service's own tables: unpublished outbox rows, progress counters.
    pub activity: Activity,
}

impl ServiceInFlight {
    fn is_quiet(&self) -> bool {
        self.pending == 0 && self.undelivered == 0 && self.activity.unpublished == 0
    }
}

/// Every service's work in flight, in [`Service::ALL`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight(pub Vec<ServiceInFlight>);

/// Every service's own tables' [`Activity`], in [`Service::ALL`] order.
pub async fn activities(pg: &PgRoutes) -> Result<Vec<Activity>, String> {
    let mut all = Vec::with_capacity(Service::ALL.len());
    for service in Service::ALL {
        all.push(pg.activity(service).await.map_err(|e| e.to_string())?);
    }
    Ok(all)
}

impl InFlight {
    /// Reads it from PostgreSQL (outboxes, inboxes) and Redis (groups).
    pub async fn read(pg: &PgRoutes, redis: &RedisBus) -> Result<InFlight, String> {
        InFlight::read_bus(activities(pg).await?, redis).await
    }

    /// Reads the bus's part from Redis (groups) beside `activities`, the
    /// services' tables read just before ([`activities`]): each table is
    /// read before its stream, so an event the relay publishes in between
    /// is counted in one or the other.
    pub async fn read_bus(activities: Vec<Activity>, redis: &RedisBus) -> Result<InFlight, String> {
        let mut services = Vec::with_capacity(Service::ALL.len());
        for (service, activity) in Service::ALL.into_iter().zip(activities) {
            let (pending, undelivered) = if service.subscriptions().is_empty() {
                (0, 0) // No stream, no group.
            } else {
                let group = redis.group_stats(service).await.map_err(|e| e.to_string())?;
                let undelivered = redis
                    .undelivered(service, UNDELIVERED_COUNT_MAX)
                    .await
                    .map_err(|e| e.to_string())?;
                (group.map_or(0, |g| g.pending), undelivered)
            };
            services.push(ServiceInFlight {
                service,
                pending,
                undelivered,
                activity,
            });
        }
        Ok(InFlight(services))
    }

    pub fn is_quiet(&self) -> bool {
        self.0.iter().all(ServiceInFlight::is_quiet)
    }

    /// Whether no service applied or emitted anything between `self` and
    /// `later`.
    fn same_progress(&self, later: &InFlight) -> bool {
        let progress = |f: &InFlight| -> Vec<(i64, i64)> {
            f.0.iter()
                .map(|s| (s.activity.outbox_seq_max, s.activity.inbox_rows))
                .collect()
        };
        progress(self) == progress(later)
    }

    /// (pending, undelivered, unpublished) over every service.
    pub fn totals(&self) -> (u64, u64, i64) {
        self.0.iter().fold((0, 0, 0), |(p, u, o), s| {
            (p + s.pending, u + s.undelivered, o + s.activity.unpublished)
        })
    }
}

impl fmt::Display for InFlight {
    /// One line per service with something in flight, e.g.
    /// `  payment: 2 pending, 1 undelivered, 0 unpublished`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in self.0.iter().filter(|s| !s.is_quiet()) {
            writeln!(
                f,
                "  {}: {} pending, {} undelivered, {} unpublished",
                s.service.slug(),
                s.pending,
                s.undelivered,
                s.activity.unpublished
            )?;
        }
        Ok(())
    }
}

/// Orders of `snapshot` that are not terminal.
pub fn orders_in_flight(snapshot: &Snapshot) -> usize {
    snapshot
        .orders
        .values()
        .filter(|o| !o.status.is_terminal())
        .count()
}

/// Whether the system was quiescent around `snapshot`: empty when it was,
/// else the reasons it was not (see the module docs). The counts are
/// `after`'s, the reading the audit prints per service, so the header and
/// the lines under it agree; work seen only by `before` is named apart.
pub fn busy_reasons(before: &InFlight, snapshot: &Snapshot, after: &InFlight) -> Vec<String> {
    let mut reasons = Vec::new();
    let (pending, undelivered, unpublished) = after.totals();
    let mut count = |n: u64, what: &str| {
        if n > 0 {
            reasons.push(format!("{n} {what}"));
        }
    };
    count(pending, "bus entries pending");
    count(undelivered, "bus entries undelivered");
    count(u64::try_from(unpublished).unwrap_or(0), "outbox rows unpublished");
    count(orders_in_flight(snapshot) as u64, "orders not terminal");
    if reasons.is_empty() && !before.is_quiet() {
        let (p, u, o) = before.totals();
        reasons.push(format!(
            "work in flight when the audit began reading ({p} pending, {u} undelivered, {o} unpublished)"
        ));
    }
    if reasons.is_empty() && !before.same_progress(after) {
        reasons.push("services applied events while the audit read their state".to_string());
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::rows::{Order, OrderStatus};
    use crate::domain::{ItemId, OrderId, Timestamp, UserId};

    fn quiet() -> InFlight {
        InFlight(
            Service::ALL
                .into_iter()
                .map(|service| ServiceInFlight {
                    service,
                    pending: 0,
                    undelivered: 0,
                    activity: Activity {
                        unpublished: 0,
                        outbox_seq_max: 10,
                        inbox_rows: 10,
                    },
                })
                .collect(),
        )
    }

    fn snapshot_with(status: OrderStatus) -> Snapshot {
        let order = Order {
            order_id: OrderId::parse("o-1").unwrap(),
            user_id: UserId::parse("u-1").unwrap(),
            item_id: ItemId::parse("i-1").unwrap(),
            item_name: "Item".into(),
            quantity: 1,
            total_amount: 10,
            payment_method: "CARD".into(),
            status,
            failed_step: None,
            failure_reason: None,
            created_at: Timestamp::SIM_EPOCH,
            deadline_at: Timestamp::SIM_EPOCH,
            deadline_signalled: false,
            updated_at: Timestamp::SIM_EPOCH,
        };
        Snapshot::from_rows([crate::domain::Row::Order(order)])
    }

    #[test]
    fn quiet_before_and_after_with_terminal_orders_is_quiescent() {
        let done = snapshot_with(OrderStatus::Completed);
        assert!(busy_reasons(&quiet(), &done, &quiet()).is_empty());
    }

    #[test]
    fn anything_in_flight_is_named() {
        let done = snapshot_with(OrderStatus::Completed);
        let mut busy = quiet();
        busy.0[1].pending = 2;
        busy.0[2].undelivered = 3;
        busy.0[0].activity.unpublished = 4;
        assert_eq!(
            busy_reasons(&quiet(), &done, &busy),
            [
                "2 bus entries pending",
                "3 bus entries undelivered",
                "4 outbox rows unpublished"
            ]
        );
        let pending = snapshot_with(OrderStatus::Pending);
        assert_eq!(
            busy_reasons(&quiet(), &pending, &quiet()),
            ["1 orders not terminal"]
        );
        assert_eq!(orders_in_flight(&pending), 1);
    }

    /// Issue 27: "9 bus entries pending" in the header above lines that add
    /// up to 4. The header counts the reading the lines print.
    #[test]
    fn the_header_counts_what_the_lines_show() {
        let done = snapshot_with(OrderStatus::Completed);
        let mut before = quiet();
        before.0[1].pending = 9;
        let mut after = quiet();
        after.0[1].pending = 3;
        after.0[2].pending = 1;
        let reasons = busy_reasons(&before, &done, &after);
        let lines = after.to_string();
        let summed: u64 = after.0.iter().map(|s| s.pending).sum();
        assert_eq!(reasons, [format!("{summed} bus entries pending")], "{lines}");
        assert_eq!(lines, "  user: 3 pending, 0 undelivered, 0 unpublished\n  inventory: 1 pending, 0 undelivered, 0 unpublished\n");
        assert_eq!(
            busy_reasons(&before, &done, &quiet()),
            ["work in flight when the audit began reading (9 pending, 0 undelivered, 0 unpublished)"],
            "busy before, quiet after: still not quiescent, and said apart"
        );
    }

    #[test]
    fn progress_between_the_readings_is_not_quiescent() {
        let done = snapshot_with(OrderStatus::Completed);
        let mut later = quiet();
        later.0[5].activity.inbox_rows += 1;
        assert!(later.is_quiet(), "nothing in flight at either reading");
        assert_eq!(
            busy_reasons(&quiet(), &done, &later),
            ["services applied events while the audit read their state"]
        );
    }
}
