//! The deadline sweeper (Order service): finds PENDING orders past their
//! deadline and, in one transaction each, marks the deadline signalled and
//! emits SAGA_DEADLINE_PASSED to the pivot. Also runs the pruning pass of
//! every local service's inbox and outbox.

use std::time::Duration;

use crate::domain::participants::order;
use crate::domain::Service;

use super::backoff;
use super::transaction::{transact, Committed, TransactError};
use super::{sleep_or_stop, Env, Shutdown, StoreError};

/// Signals every order found past its deadline (up to one batch); returns
/// how many were signalled. An order whose transaction fails for a reason
/// of its own (a row that does not decode) is logged and skipped, so it
/// cannot hold back the deadlines of the orders after it; a store that is
/// unavailable ends the pass with the error.
pub async fn sweep_once(env: &Env) -> Result<usize, StoreError> {
    let now = env.clock.now();
    let due = env.store.orders_past_deadline(now, env.config.batch_size).await?;
    let mut signalled = 0;
    for order_id in &due {
        let keys = order::deadline_rows(order_id);
        let result = transact(env, Service::Order, None, &keys, |rows| {
            Ok::<_, std::convert::Infallible>(order::deadline_passed(rows, order_id, env.clock.now()))
        })
        .await;
        match result {
            Ok(Committed::Applied { emitted, .. }) => signalled += emitted,
            Ok(Committed::Duplicate) => unreachable!("the sweeper does not dedupe"),
            Err(TransactError::Store(e)) if e.is_unavailable() => return Err(e),
            Err(TransactError::Store(e)) => {
                tracing::warn!(%order_id, error = %e, "deadline of this order not signalled; sweeping the others");
            }
            Err(TransactError::Step(never)) => match never {},
        }
    }
    Ok(signalled)
}

/// Sweeps deadlines until shutdown.
pub async fn run(env: Env, mut shutdown: Shutdown) {
    let mut failures: u32 = 0;
    loop {
        let pause = match sweep_once(&env).await {
            Ok(n) if n == env.config.batch_size => {
                failures = 0;
                Duration::ZERO
            }
            Ok(_) => {
                failures = 0;
                env.config.idle_poll
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, failures, "deadline sweep failed");
                backoff::after_failures(env.config.error_backoff, env.config.error_backoff_max, failures)
            }
        };
        if sleep_or_stop(&mut shutdown, pause).await {
            return;
        }
    }
}

/// Sagas still PENDING one capped re-drive gap past their deadline: by
/// then a lost event was re-driven and the saga should have ended
/// (`RedrivePolicy::gap_max`). Logged when there are any.
pub async fn overdue_once(env: &Env) -> Result<u64, StoreError> {
    let grace = env.config.redrive.gap_max();
    let before = env.clock.now().plus(crate::domain::DurationMs(-grace.0));
    let overdue = env.store.overdue_sagas(before).await?;
    if overdue > 0 {
        tracing::warn!(
            overdue,
            grace_ms = grace.0,
            "sagas past their deadline plus the grace period and still not terminal"
        );
    }
    Ok(overdue)
}

/// Prunes `services`' inboxes and outboxes every `prune_interval` until
/// shutdown; where the Order service is local, also reports overdue sagas
/// ([`overdue_once`]).
pub async fn run_pruner(env: Env, services: Vec<Service>, mut shutdown: Shutdown) {
    let mut retention = env.config.retention;
    if crate::mutant!(PruneLiveInbox) {
        // Planted bug: inbox ids go as soon as the first re-drive round
        // starts, while republishes and redeliveries of them still come.
        retention.inbox = env.config.redrive.after;
    }
    loop {
        if services.contains(&Service::Order) {
            if let Err(e) = overdue_once(&env).await {
                tracing::warn!(error = %e, "counting overdue sagas failed");
            }
        }
        for &service in &services {
            let now = env.clock.now();
            match env.store.prune(service, now, retention, env.config.redrive).await {
                Ok(p) if p.inbox + p.outbox > 0 => {
                    tracing::debug!(%service, inbox = p.inbox, outbox = p.outbox, "pruned")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%service, error = %e, "prune failed"),
            }
        }
        if sleep_or_stop(&mut shutdown, env.config.prune_interval).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::gateway::SimulatedGateway;
    use crate::domain::rows::{Order, OrderStatus};
    use crate::domain::{DurationMs, ItemId, OrderId, Row, Timestamp, UserId};
    use crate::runtime::memory::{MemoryBus, MemoryStore};
    use crate::runtime::{ManualClock, NoObserver, RuntimeConfig};

    fn order(id: &str, status: OrderStatus, deadline: Timestamp) -> Row {
        Row::Order(Order {
            order_id: OrderId::parse(id).unwrap(),
            user_id: UserId::parse("alice").unwrap(),
            item_id: ItemId::parse("sword").unwrap(),
            item_name: "Sword".into(),
            quantity: 1,
            total_amount: 100,
            payment_method: "WALLET".into(),
            status,
            failed_step: None,
            failure_reason: None,
            created_at: Timestamp::SIM_EPOCH,
            deadline_at: deadline,
            deadline_signalled: true,
            updated_at: Timestamp::SIM_EPOCH,
        })
    }

    #[tokio::test]
    async fn a_pending_saga_is_overdue_only_one_capped_gap_past_its_deadline() {
        let t0 = Timestamp::SIM_EPOCH;
        let clock = Arc::new(ManualClock::starting_at(t0));
        let store = MemoryStore::new();
        store.seed([
            order("o-stuck", OrderStatus::Pending, t0),
            order("o-done", OrderStatus::Failed, t0),
        ]);
        let config = RuntimeConfig::default();
        let grace = config.redrive.gap_max();
        let env = Env {
            store: Arc::new(store),
            bus: Arc::new(MemoryBus::new(clock.clone(), DurationMs(1000))),
            clock: clock.clone(),
            gateway: Arc::new(SimulatedGateway::default()),
            observer: Arc::new(NoObserver),
            config,
        };
        clock.set(t0.plus(DurationMs(grace.0 - 1)));
        assert_eq!(overdue_once(&env).await.unwrap(), 0, "still inside the grace");
        clock.set(t0.plus(grace));
        assert_eq!(overdue_once(&env).await.unwrap(), 1, "only the PENDING one");
    }
}
