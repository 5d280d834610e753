//! The saga's invariants as plain functions over a [`Snapshot`] of every
//! service's rows: the one definition of "correct" that the simulator, the
//! property tests and the production `audit` share.
//!
//! Safety invariants hold after every committed transaction; quiescence
//! invariants hold once faults healed, deadlines passed and queues drained.
//! Each violation names the invariant, the entity and the numbers.

use std::collections::BTreeMap;
use std::fmt;

use super::event::{Event, EventType, NotificationKind};
use super::ids::{EventId, ItemId, OrderId, UserId};
use super::rows::{
    Account, BalanceHold, CatalogEntry, InventoryAccount, ItemStock, NotificationLog, Order, OrderStatus,
    Payment, PaymentState, ReservationState, Row, SlotReservation, StockReservation,
};

/// Every row of every service at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub orders: BTreeMap<OrderId, Order>,
    pub catalog: BTreeMap<ItemId, CatalogEntry>,
    pub accounts: BTreeMap<UserId, Account>,
    pub balance_holds: BTreeMap<OrderId, BalanceHold>,
    pub inventory_accounts: BTreeMap<UserId, InventoryAccount>,
    pub slot_reservations: BTreeMap<OrderId, SlotReservation>,
    pub item_stocks: BTreeMap<ItemId, ItemStock>,
    pub stock_reservations: BTreeMap<OrderId, StockReservation>,
    pub payments: BTreeMap<OrderId, Payment>,
    pub notifications: BTreeMap<(OrderId, NotificationKind), NotificationLog>,
}

impl Snapshot {
    pub fn from_rows(rows: impl IntoIterator<Item = Row>) -> Snapshot {
        let mut s = Snapshot::default();
        for row in rows {
            s.insert(row);
        }
        s
    }

    pub fn insert(&mut self, row: Row) {
        match row {
            Row::Order(r) => drop(self.orders.insert(r.order_id.clone(), r)),
            Row::Catalog(r) => drop(self.catalog.insert(r.item_id.clone(), r)),
            Row::Account(r) => drop(self.accounts.insert(r.user_id.clone(), r)),
            Row::BalanceHold(r) => drop(self.balance_holds.insert(r.order_id.clone(), r)),
            Row::InventoryAccount(r) => drop(self.inventory_accounts.insert(r.user_id.clone(), r)),
            Row::SlotReservation(r) => drop(self.slot_reservations.insert(r.order_id.clone(), r)),
            Row::ItemStock(r) => drop(self.item_stocks.insert(r.item_id.clone(), r)),
            Row::StockReservation(r) => drop(self.stock_reservations.insert(r.order_id.clone(), r)),
            Row::Payment(r) => drop(self.payments.insert(r.order_id.clone(), r)),
            Row::NotificationLog(r) => drop(self.notifications.insert((r.order_id.clone(), r.kind), r)),
        }
    }

    fn sent(&self, order: &OrderId, kind: NotificationKind) -> i64 {
        self.notifications
            .get(&(order.clone(), kind))
            .map_or(0, |n| n.sent_count)
    }
}

/// The invariants, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    NonNegativeBalance,
    NonNegativeStock,
    SlotsWithinCapacity,
    BalanceMatchesHolds,
    StockMatchesReservations,
    SlotsMatchReservations,
    GrantOnlyWhenPaid,
    CompletedOnlyWhenPaid,
    NotificationAtMostOnce,
    AmountsAgree,
    TerminalNeverChanges,
    PivotDecidesOnce,
    EveryOrderTerminal,
    BalanceConservation,
    StockConservation,
    GrantExactlyOnce,
    NoOpenReservation,
    OneOutcomeNotification,
    PaidIffCompleted,
    CompensationExactlyOnce,
    CompensationOnlyAfterStep,
    NoDeadLetter,
}

impl Invariant {
    pub fn name(self) -> &'static str {
        match self {
            Invariant::NonNegativeBalance => "non-negative-balance",
            Invariant::NonNegativeStock => "non-negative-stock",
            Invariant::SlotsWithinCapacity => "slots-within-capacity",
            Invariant::BalanceMatchesHolds => "balance-matches-holds",
            Invariant::StockMatchesReservations => "stock-matches-reservations",
            Invariant::SlotsMatchReservations => "slots-match-reservations",
            Invariant::GrantOnlyWhenPaid => "grant-only-when-paid",
            Invariant::CompletedOnlyWhenPaid => "completed-only-when-paid",
            Invariant::NotificationAtMostOnce => "notification-at-most-once",
            Invariant::AmountsAgree => "amounts-agree",
            Invariant::TerminalNeverChanges => "terminal-never-changes",
            Invariant::PivotDecidesOnce => "pivot-decides-once",
            Invariant::EveryOrderTerminal => "every-order-terminal",
            Invariant::BalanceConservation => "balance-conservation",
            Invariant::StockConservation => "stock-conservation",
            Invariant::GrantExactlyOnce => "grant-exactly-once",
            Invariant::NoOpenReservation => "no-open-reservation",
            Invariant::OneOutcomeNotification => "one-outcome-notification",
            Invariant::PaidIffCompleted => "paid-iff-completed",
            Invariant::CompensationExactlyOnce => "compensation-exactly-once",
            Invariant::CompensationOnlyAfterStep => "compensation-only-after-step",
            Invariant::NoDeadLetter => "no-dead-letter",
        }
    }
}

/// One broken invariant: which, about what, and the numbers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    pub invariant: Invariant,
    /// The entity, e.g. `user u1` or `order o7`.
    pub subject: String,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.invariant.name(), self.subject, self.detail)
    }
}

struct Report(Vec<Violation>);

impl Report {
    fn check(
        &mut self,
        holds: bool,
        invariant: Invariant,
        subject: impl FnOnce() -> String,
        detail: impl FnOnce() -> String,
    ) {
        if !holds {
            self.0.push(Violation {
                invariant,
                subject: subject(),
                detail: detail(),
            });
        }
    }
}

/// Invariants that hold after every committed transaction.
pub fn check_safety(s: &Snapshot) -> Vec<Violation> {
    let mut r = Report(Vec::new());
    for (user, account) in &s.accounts {
        r.check(
            account.balance >= 0,
            Invariant::NonNegativeBalance,
            || format!("user {user}"),
            || format!("balance {}", account.balance),
        );
        let held: i64 = s
            .balance_holds
            .values()
            .filter(|h| &h.user_id == user && h.state == ReservationState::Held)
            .map(|h| h.amount)
            .sum();
        r.check(
            account.balance == account.opening_balance - held,
            Invariant::BalanceMatchesHolds,
            || format!("user {user}"),
            || {
                format!(
                    "balance {} != opening {} - held {held}",
                    account.balance, account.opening_balance
                )
            },
        );
    }
    for (item, stock) in &s.item_stocks {
        r.check(
            stock.stock >= 0,
            Invariant::NonNegativeStock,
            || format!("item {item}"),
            || format!("stock {}", stock.stock),
        );
        let held: i64 = s
            .stock_reservations
            .values()
            .filter(|h| &h.item_id == item && h.state == ReservationState::Held)
            .map(|h| h.quantity)
            .sum();
        r.check(
            stock.stock == stock.opening_stock - held,
            Invariant::StockMatchesReservations,
            || format!("item {item}"),
            || {
                format!(
                    "stock {} != opening {} - reserved {held}",
                    stock.stock, stock.opening_stock
                )
            },
        );
    }
    for (user, inv) in &s.inventory_accounts {
        r.check(
            inv.used_slots >= 0
                && inv.reserved_slots >= 0
                && inv.used_slots + inv.reserved_slots <= inv.capacity,
            Invariant::SlotsWithinCapacity,
            || format!("user {user}"),
            || {
                format!(
                    "used {} + reserved {} vs capacity {}",
                    inv.used_slots, inv.reserved_slots, inv.capacity
                )
            },
        );
        let sum = |state| -> i64 {
            s.slot_reservations
                .values()
                .filter(|x| &x.user_id == user && x.state == state)
                .map(|x| x.slots)
                .sum()
        };
        let (held, granted) = (sum(ReservationState::Held), sum(ReservationState::Granted));
        r.check(
            inv.reserved_slots == held && inv.used_slots == granted,
            Invariant::SlotsMatchReservations,
            || format!("user {user}"),
            || {
                format!(
                    "reserved {} vs held {held}, used {} vs granted {granted}",
                    inv.reserved_slots, inv.used_slots
                )
            },
        );
    }
    for (order, res) in &s.slot_reservations {
        if res.state == ReservationState::Granted {
            let paid = s.payments.get(order).map(|p| p.state);
            r.check(
                paid == Some(PaymentState::Processed),
                Invariant::GrantOnlyWhenPaid,
                || format!("order {order}"),
                || format!("item granted while payment is {paid:?}"),
            );
        }
    }
    for (id, order) in &s.orders {
        if order.status == OrderStatus::Completed {
            let paid = s.payments.get(id).map(|p| p.state);
            r.check(
                paid == Some(PaymentState::Processed),
                Invariant::CompletedOnlyWhenPaid,
                || format!("order {id}"),
                || format!("COMPLETED while payment is {paid:?}"),
            );
        }
    }
    check_amounts(s, &mut r);
    for ((order, kind), log) in &s.notifications {
        r.check(
            log.sent_count <= 1,
            Invariant::NotificationAtMostOnce,
            || format!("order {order}"),
            || format!("{} sent {} times", kind.as_str(), log.sent_count),
        );
    }
    r.0
}

/// Every service that took something for an order took what the order
/// says: the balance hold and the payment its total, the stock and the
/// slots its quantity of its item, for its user. A reservation that held
/// nothing (REJECTED, TOMBSTONE) carries no amount and is not compared.
fn check_amounts(s: &Snapshot, r: &mut Report) {
    let took = |state: ReservationState| {
        matches!(
            state,
            ReservationState::Held | ReservationState::Granted | ReservationState::Released
        )
    };
    for (id, order) in &s.orders {
        let mut agree = |holds: bool, what: &str, found: String| {
            r.check(
                holds,
                Invariant::AmountsAgree,
                || format!("order {id}"),
                || {
                    format!(
                        "{what} is {found}; the order is {} x {} for {} by {}",
                        order.quantity, order.item_id, order.total_amount, order.user_id
                    )
                },
            )
        };
        if let Some(h) = s.balance_holds.get(id).filter(|h| took(h.state)) {
            agree(
                h.amount == order.total_amount && h.user_id == order.user_id,
                "the balance hold",
                format!("{} of {}", h.amount, h.user_id),
            );
        }
        if let Some(x) = s.slot_reservations.get(id).filter(|x| took(x.state)) {
            agree(
                x.slots == order.quantity && x.item_id == order.item_id && x.user_id == order.user_id,
                "the slot reservation",
                format!("{} slots for {} of {}", x.slots, x.item_id, x.user_id),
            );
        }
        if let Some(x) = s.stock_reservations.get(id).filter(|x| took(x.state)) {
            agree(
                x.quantity == order.quantity && x.item_id == order.item_id,
                "the stock reservation",
                format!("{} x {}", x.quantity, x.item_id),
            );
        }
        if let Some(p) = s.payments.get(id).filter(|p| p.state == PaymentState::Processed) {
            agree(
                p.amount == order.total_amount && p.user_id == order.user_id,
                "the processed payment",
                format!("{} from {}", p.amount, p.user_id),
            );
        }
    }
}

/// Invariants between two moments: what was decided stays decided.
pub fn check_transition(before: &Snapshot, after: &Snapshot) -> Vec<Violation> {
    let mut r = Report(Vec::new());
    for (id, old) in &before.orders {
        if old.status.is_terminal() {
            let new = after.orders.get(id).map(|o| (o.status, o.failed_step));
            r.check(
                new == Some((old.status, old.failed_step)),
                Invariant::TerminalNeverChanges,
                || format!("order {id}"),
                || format!("was {} {:?}, now {new:?}", old.status.as_str(), old.failed_step),
            );
        }
    }
    for (id, old) in &before.payments {
        let new = after.payments.get(id).map(|p| p.state);
        r.check(
            new == Some(old.state),
            Invariant::PivotDecidesOnce,
            || format!("order {id}"),
            || format!("payment was {}, now {new:?}", old.state.as_str()),
        );
    }
    r.0
}

/// Safety plus what must hold once everything settled.
pub fn check_quiescent(s: &Snapshot) -> Vec<Violation> {
    let mut r = Report(check_safety(s));
    let mut completed_total: BTreeMap<&UserId, i64> = BTreeMap::new();
    let mut completed_quantity: BTreeMap<&ItemId, i64> = BTreeMap::new();
    for (id, order) in &s.orders {
        let subject = || format!("order {id}");
        r.check(
            order.status.is_terminal(),
            Invariant::EveryOrderTerminal,
            subject,
            || format!("still {} (deadline {})", order.status.as_str(), order.deadline_at),
        );
        let completed = order.status == OrderStatus::Completed;
        if completed {
            *completed_total.entry(&order.user_id).or_default() += order.total_amount;
            *completed_quantity.entry(&order.item_id).or_default() += order.quantity;
        }
        let slot = s.slot_reservations.get(id).map(|x| (x.state, x.slots));
        let hold = s.balance_holds.get(id).map(|x| x.state);
        let stock = s.stock_reservations.get(id).map(|x| x.state);
        let payment = s.payments.get(id).map(|p| p.state);
        if completed {
            r.check(
                slot == Some((ReservationState::Granted, order.quantity)),
                Invariant::GrantExactlyOnce,
                subject,
                || {
                    format!(
                        "COMPLETED order of {} has slot reservation {slot:?}",
                        order.quantity
                    )
                },
            );
        } else {
            r.check(
                !matches!(slot, Some((ReservationState::Granted, _))),
                Invariant::GrantExactlyOnce,
                subject,
                || "FAILED order granted its item".to_string(),
            );
            let open: Vec<&str> = [
                (hold == Some(ReservationState::Held), "balance"),
                (matches!(slot, Some((ReservationState::Held, _))), "slots"),
                (stock == Some(ReservationState::Held), "stock"),
            ]
            .into_iter()
            .filter_map(|(open, what)| open.then_some(what))
            .collect();
            r.check(open.is_empty(), Invariant::NoOpenReservation, subject, || {
                format!("FAILED order still holds {}", open.join(", "))
            });
        }
        let outcome_sent = (
            s.sent(id, NotificationKind::PurchaseCompleted),
            s.sent(id, NotificationKind::PurchaseFailed),
            s.sent(id, NotificationKind::PaymentCompleted),
            s.sent(id, NotificationKind::PaymentFailed),
        );
        // The pivot: once Payment processed an order the saga only goes
        // forward, so a settled system has it COMPLETED (the reverse,
        // COMPLETED only when paid, is a safety invariant).
        r.check(
            payment != Some(PaymentState::Processed) || completed,
            Invariant::PaidIffCompleted,
            subject,
            || format!("payment PROCESSED but the order is {}", order.status.as_str()),
        );
        let payment_failed = matches!(payment, Some(PaymentState::Declined | PaymentState::Cancelled));
        let expected = if completed {
            (1, 0, 1, 0)
        } else {
            (0, 1, 0, i64::from(payment_failed))
        };
        r.check(
            !order.status.is_terminal() || outcome_sent == expected,
            Invariant::OneOutcomeNotification,
            subject,
            || {
                format!(
                    "{} order sent (purchase-completed, purchase-failed, payment-completed, payment-failed) = {outcome_sent:?}, expected {expected:?}",
                    order.status.as_str()
                )
            },
        );
    }
    for (user, account) in &s.accounts {
        let spent = completed_total.get(user).copied().unwrap_or(0);
        r.check(
            account.balance == account.opening_balance - spent,
            Invariant::BalanceConservation,
            || format!("user {user}"),
            || {
                format!(
                    "balance {} != opening {} - completed orders {spent}",
                    account.balance, account.opening_balance
                )
            },
        );
    }
    for (item, stock) in &s.item_stocks {
        let sold = completed_quantity.get(item).copied().unwrap_or(0);
        r.check(
            stock.stock == stock.opening_stock - sold,
            Invariant::StockConservation,
            || format!("item {item}"),
            || {
                format!(
                    "stock {} != opening {} - sold {sold}",
                    stock.stock, stock.opening_stock
                )
            },
        );
    }
    r.0
}

/// The compensation that undoes a forward step, by the forward step's event
/// type: the balance hold, the slot reservation, the stock reservation.
pub const COMPENSATIONS: [(EventType, EventType); 3] = [
    (EventType::PaymentReserved, EventType::PaymentRollback),
    (EventType::InventoryReserved, EventType::InventoryRollback),
    (EventType::ItemReserved, EventType::ItemRestored),
];

fn forward_of(compensation: EventType) -> Option<EventType> {
    COMPENSATIONS
        .iter()
        .find(|(_, c)| *c == compensation)
        .map(|(f, _)| *f)
}

/// The forward steps and compensations each order's services emitted,
/// counted from committed outbox rows: one row per transaction that decided
/// to emit, so a redelivery or a re-drive of the same row (the same event id
/// on the bus again) is not counted again, while a second decision to
/// compensate is, even under the same derived id.
#[derive(Debug, Clone, Default)]
pub struct CompensationLedger {
    rows: BTreeMap<(OrderId, EventType), Vec<EventId>>,
    /// The amount of each PAYMENT_ROLLBACK row, by order.
    refunds: BTreeMap<OrderId, Vec<i64>>,
}

impl CompensationLedger {
    /// Records one committed outbox row; returns what it broke at once: a
    /// second compensation of one step, or a compensation of a step whose
    /// forward event was never committed.
    pub fn record(&mut self, event: &Event) -> Vec<Violation> {
        let mut r = Report(Vec::new());
        let kind = event.event_type();
        let order = &event.order_id;
        if let super::event::Payload::PaymentRollback(p) = &event.payload {
            self.refunds
                .entry(order.clone())
                .or_default()
                .push(p.refunded_amount);
        }
        let ids = self.rows.entry((order.clone(), kind)).or_default();
        ids.push(event.event_id);
        let count = ids.len();
        if let Some(forward) = forward_of(kind) {
            r.check(
                count == 1,
                Invariant::CompensationExactlyOnce,
                || format!("order {order}"),
                || format!("{kind} emitted {count} times (committed outbox rows)"),
            );
            let stepped = self.count(order, forward);
            r.check(
                stepped > 0,
                Invariant::CompensationOnlyAfterStep,
                || format!("order {order}"),
                || format!("{kind} emitted but {forward} never was"),
            );
        }
        r.0
    }

    fn count(&self, order: &OrderId, kind: EventType) -> usize {
        self.rows.get(&(order.clone(), kind)).map_or(0, Vec::len)
    }

    /// At quiescence: a COMPLETED order compensated nothing; a FAILED order
    /// compensated each forward step it took exactly once; every refund
    /// gave back the order's total (what the hold took, `AmountsAgree`).
    pub fn check_quiescent(&self, s: &Snapshot) -> Vec<Violation> {
        let mut r = Report(Vec::new());
        for (id, order) in &s.orders {
            for &refund in self.refunds.get(id).map_or(&[][..], Vec::as_slice) {
                r.check(
                    refund == order.total_amount,
                    Invariant::AmountsAgree,
                    || format!("order {id}"),
                    || {
                        format!(
                            "{} refunded {refund}; the order's total is {}",
                            EventType::PaymentRollback,
                            order.total_amount
                        )
                    },
                );
            }
            for (forward, compensation) in COMPENSATIONS {
                let (stepped, undone) = (self.count(id, forward), self.count(id, compensation));
                let expected = match order.status {
                    OrderStatus::Completed => 0,
                    OrderStatus::Failed => usize::from(stepped > 0),
                    OrderStatus::Pending => continue,
                };
                r.check(
                    undone == expected,
                    Invariant::CompensationExactlyOnce,
                    || format!("order {id}"),
                    || {
                        format!(
                            "{} order: {forward} x{stepped}, {compensation} x{undone}, expected x{expected}",
                            order.status.as_str()
                        )
                    },
                );
            }
        }
        r.0
    }
}

/// The compensation invariants over what the stores still hold: the
/// committed outbox rows of every service (`events`, in any order) and the
/// rows of `s`, at quiescence. Outbox rows are pruned past the re-drive
/// horizon, oldest first, so only the orders whose first event
/// (ORDER_CREATED, the saga's oldest row) is still among `events` are
/// checked: for them every later row is still there. Returns the
/// violations and how many orders were checked.
pub fn check_retained_compensations(events: &[Event], s: &Snapshot) -> (Vec<Violation>, usize) {
    let retained: std::collections::BTreeSet<&OrderId> = events
        .iter()
        .filter(|e| e.event_type() == EventType::OrderCreated)
        .map(|e| &e.order_id)
        .collect();
    let mut ledger = CompensationLedger::default();
    let mut found = Vec::new();
    let mut created_first: Vec<&Event> = events.iter().filter(|e| retained.contains(&e.order_id)).collect();
    // Forward steps before compensations, so "only after the step" does not
    // depend on the order the rows were read in.
    created_first.sort_by_key(|e| forward_of(e.event_type()).is_some());
    for event in created_first {
        found.extend(ledger.record(event));
    }
    let checked = Snapshot {
        orders: s
            .orders
            .iter()
            .filter(|(id, _)| retained.contains(id))
            .map(|(id, o)| (id.clone(), o.clone()))
            .collect(),
        ..Snapshot::default()
    };
    found.extend(ledger.check_quiescent(&checked));
    (found, checked.orders.len())
}

/// No event was given up: every service's dead-letter count is zero.
pub fn check_dead_letters(counts: &[(super::Service, u64)]) -> Vec<Violation> {
    let mut r = Report(Vec::new());
    for &(service, count) in counts {
        r.check(
            count == 0,
            Invariant::NoDeadLetter,
            || format!("service {service}"),
            || format!("{count} dead letter(s) (`dlq list --service {}`)", service.slug()),
        );
    }
    r.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Timestamp;

    fn order(status: OrderStatus) -> Order {
        Order {
            order_id: OrderId::parse("o1").unwrap(),
            user_id: UserId::parse("alice").unwrap(),
            item_id: ItemId::parse("sword").unwrap(),
            item_name: "Sword".into(),
            quantity: 2,
            total_amount: 300,
            payment_method: "WALLET".into(),
            status,
            failed_step: None,
            failure_reason: None,
            created_at: Timestamp::SIM_EPOCH,
            deadline_at: Timestamp::SIM_EPOCH,
            deadline_signalled: false,
            updated_at: Timestamp::SIM_EPOCH,
        }
    }

    fn hold(amount: i64, state: ReservationState) -> BalanceHold {
        BalanceHold {
            order_id: OrderId::parse("o1").unwrap(),
            user_id: UserId::parse("alice").unwrap(),
            amount,
            state,
            updated_at: Timestamp::SIM_EPOCH,
        }
    }

    fn payment(amount: i64, state: PaymentState) -> Payment {
        Payment {
            order_id: OrderId::parse("o1").unwrap(),
            user_id: UserId::parse("alice").unwrap(),
            amount,
            method: "WALLET".into(),
            state,
            reason: None,
            updated_at: Timestamp::SIM_EPOCH,
        }
    }

    fn named(violations: &[Violation], invariant: Invariant) -> usize {
        violations.iter().filter(|v| v.invariant == invariant).count()
    }

    #[test]
    fn a_hold_or_payment_of_another_amount_breaks_amounts_agree() {
        let agreeing = Snapshot::from_rows([
            Row::Order(order(OrderStatus::Pending)),
            Row::BalanceHold(hold(300, ReservationState::Released)),
            Row::Payment(payment(300, PaymentState::Processed)),
        ]);
        assert_eq!(named(&check_safety(&agreeing), Invariant::AmountsAgree), 0);

        let wrong_hold = Snapshot::from_rows([
            Row::Order(order(OrderStatus::Pending)),
            Row::BalanceHold(hold(299, ReservationState::Released)),
        ]);
        assert_eq!(named(&check_safety(&wrong_hold), Invariant::AmountsAgree), 1);

        let wrong_payment = Snapshot::from_rows([
            Row::Order(order(OrderStatus::Pending)),
            Row::Payment(payment(30, PaymentState::Processed)),
        ]);
        assert_eq!(named(&check_safety(&wrong_payment), Invariant::AmountsAgree), 1);
    }

    #[test]
    fn a_reservation_that_took_nothing_carries_no_amount() {
        let rejected = Snapshot::from_rows([
            Row::Order(order(OrderStatus::Failed)),
            Row::BalanceHold(hold(0, ReservationState::Rejected)),
            Row::Payment(payment(0, PaymentState::Declined)),
        ]);
        assert_eq!(named(&check_safety(&rejected), Invariant::AmountsAgree), 0);
    }

    #[test]
    fn a_processed_payment_of_a_failed_order_breaks_paid_iff_completed() {
        let failed = Snapshot::from_rows([
            Row::Order(order(OrderStatus::Failed)),
            Row::Payment(payment(300, PaymentState::Processed)),
        ]);
        assert_eq!(named(&check_quiescent(&failed), Invariant::PaidIffCompleted), 1);
        let completed = Snapshot::from_rows([
            Row::Order(order(OrderStatus::Completed)),
            Row::Payment(payment(300, PaymentState::Processed)),
        ]);
        assert_eq!(
            named(&check_quiescent(&completed), Invariant::PaidIffCompleted),
            0
        );
    }

    fn event(payload: crate::domain::Payload) -> Event {
        Event::new(
            OrderId::parse("o1").unwrap(),
            UserId::parse("alice").unwrap(),
            Timestamp::SIM_EPOCH,
            payload,
        )
    }

    fn reserved() -> Event {
        event(crate::domain::Payload::PaymentReserved(
            crate::domain::event::PaymentReserved {
                reserved_amount: 300,
                remaining_balance: 700,
                item_id: ItemId::parse("sword").unwrap(),
                quantity: 2,
                payment_method: "WALLET".into(),
            },
        ))
    }

    fn rolled_back() -> Event {
        event(crate::domain::Payload::PaymentRollback(
            crate::domain::event::PaymentRollback {
                refunded_amount: 300,
                balance: 1000,
            },
        ))
    }

    #[test]
    fn a_second_compensation_row_breaks_exactly_once_even_under_the_same_id() {
        let mut ledger = CompensationLedger::default();
        assert!(ledger.record(&reserved()).is_empty());
        assert!(ledger.record(&rolled_back()).is_empty());
        let again = ledger.record(&rolled_back());
        assert_eq!(named(&again, Invariant::CompensationExactlyOnce), 1, "{again:?}");
    }

    #[test]
    fn a_compensation_without_its_step_is_found_at_once() {
        let mut ledger = CompensationLedger::default();
        let found = ledger.record(&rolled_back());
        assert_eq!(named(&found, Invariant::CompensationOnlyAfterStep), 1);
    }

    #[test]
    fn a_failed_order_compensates_each_step_it_took_and_a_completed_one_none() {
        let mut ledger = CompensationLedger::default();
        ledger.record(&reserved());
        let failed = Snapshot::from_rows([Row::Order(order(OrderStatus::Failed))]);
        assert_eq!(
            named(
                &ledger.check_quiescent(&failed),
                Invariant::CompensationExactlyOnce
            ),
            1,
            "the hold was never given back"
        );
        ledger.record(&rolled_back());
        assert!(ledger.check_quiescent(&failed).is_empty());
        let completed = Snapshot::from_rows([Row::Order(order(OrderStatus::Completed))]);
        assert_eq!(
            named(
                &ledger.check_quiescent(&completed),
                Invariant::CompensationExactlyOnce
            ),
            1,
            "a completed order compensated"
        );
    }

    fn created() -> Event {
        event(crate::domain::Payload::OrderCreated(
            crate::domain::event::OrderCreated {
                item_id: ItemId::parse("sword").unwrap(),
                quantity: 2,
                total_amount: 300,
                payment_method: "WALLET".into(),
            },
        ))
    }

    #[test]
    fn retained_compensations_are_checked_only_for_orders_whose_first_row_is_kept() {
        let failed = Snapshot::from_rows([Row::Order(order(OrderStatus::Failed))]);
        // Rows read compensation first: the order of the rows does not matter.
        let (found, checked) = check_retained_compensations(&[rolled_back(), reserved(), created()], &failed);
        assert_eq!((found, checked), (vec![], 1));
        // ORDER_CREATED pruned: the rest may be partial, nothing is claimed.
        let (found, checked) = check_retained_compensations(&[rolled_back()], &failed);
        assert_eq!((found, checked), (vec![], 0));
        let (twice, _) =
            check_retained_compensations(&[created(), reserved(), rolled_back(), rolled_back()], &failed);
        assert!(
            named(&twice, Invariant::CompensationExactlyOnce) >= 1,
            "{twice:?}"
        );
    }

    #[test]
    fn a_refund_of_another_amount_than_the_total_breaks_amounts_agree() {
        let failed = Snapshot::from_rows([Row::Order(order(OrderStatus::Failed))]);
        let short = event(crate::domain::Payload::PaymentRollback(
            crate::domain::event::PaymentRollback {
                refunded_amount: 299,
                balance: 999,
            },
        ));
        let (found, _) = check_retained_compensations(&[created(), reserved(), short], &failed);
        assert_eq!(named(&found, Invariant::AmountsAgree), 1, "{found:?}");
    }

    #[test]
    fn a_dead_letter_anywhere_breaks_no_dead_letter() {
        use crate::domain::Service;
        assert!(check_dead_letters(&[(Service::User, 0), (Service::Order, 0)]).is_empty());
        let found = check_dead_letters(&[(Service::User, 0), (Service::Payment, 2)]);
        assert_eq!(found.len(), 1);
        assert!(found[0].to_string().contains("payment"), "{}", found[0]);
    }
}
