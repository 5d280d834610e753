//! The store port's semantics, held against both adapters: every test below
//! runs once on `MemoryStore` and once on `PgStore` (a fresh database), so
//! the in-memory store that the simulator and the property tests trust
//! refuses what Postgres refuses, and Postgres does what the runtime expects.
//!
//! Concurrency is proven with channels: a transaction that must wait is
//! shown not to have finished while the other holds its lock (a bounded
//! wait that must time out), and to finish once the other commits.

mod common;

use std::sync::Arc;
use std::time::Duration;

use purchase_saga::domain::event::{OrderCreated, Payload};
use purchase_saga::domain::invariants::Snapshot;
use purchase_saga::domain::rows::{
    Account, BalanceHold, CatalogEntry, InventoryAccount, ItemStock, NotificationLog, Order, OrderStatus,
    Payment, PaymentState, ReservationState, SlotReservation, StockReservation,
};
use purchase_saga::domain::{
    DurationMs, Event, EventId, FailedStep, ItemId, NotificationKind, OrderId, Row, RowKey, Service,
    Timestamp, UserId,
};
use purchase_saga::runtime::memory::MemoryStore;
use purchase_saga::runtime::store::{
    Mark, OutboxEntry, Pruned, Quarantined, RedrivePolicy, Retention, Store, StoreError,
};
use tokio::sync::oneshot;

/// A store under test, with what it needs to stay alive.
enum Fixture {
    Memory(MemoryStore),
    Postgres(common::TestDb),
}

impl Fixture {
    async fn memory() -> Fixture {
        Fixture::Memory(MemoryStore::new().with_lock_timeout(Duration::from_secs(3)))
    }

    async fn postgres() -> Fixture {
        Fixture::Postgres(common::TestDb::create().await)
    }

    fn store(&self) -> Arc<dyn Store> {
        match self {
            Fixture::Memory(m) => Arc::new(m.clone()),
            Fixture::Postgres(db) => Arc::new(db.store.clone()),
        }
    }

    async fn seed(&self, rows: Vec<Row>) {
        match self {
            Fixture::Memory(m) => m.seed(rows),
            Fixture::Postgres(db) => db.store.seed_rows(&rows).await.expect("seed rows"),
        }
    }

    /// Adds `payload` to `service`'s outbox as if committed by another
    /// build; returns its seq.
    async fn enqueue_raw(&self, service: Service, payload: &str, now: Timestamp) -> i64 {
        match self {
            Fixture::Memory(m) => m.enqueue_raw(service, payload.as_bytes(), now),
            Fixture::Postgres(db) => sqlx::query_scalar(&format!(
                "INSERT INTO {}.outbox (event_id, event_type, order_id, payload, created_at)
                 VALUES (gen_random_uuid(), 'ORDER_CREATED', 'o-raw', $1, $2) RETURNING seq",
                purchase_saga::adapters::postgres::schema(service)
            ))
            .bind(payload)
            .bind(now.to_datetime())
            .fetch_one(db.store.pool())
            .await
            .expect("insert a raw outbox row"),
        }
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Fixture::Postgres(_))
    }
}

/// Runs each named test function against both stores.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Fixture::memory().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Fixture::postgres().await).await
                }
            )*
        }
    };
}

conformance!(
    dedupe_records_an_event_once,
    dedupe_waits_for_a_concurrent_transaction,
    dropped_transaction_leaves_nothing,
    for_update_waits_for_the_holder,
    concurrent_inserts_of_one_key_never_both_land,
    outbox_due_follows_the_redrive_policy,
    outbox_due_agrees_with_is_due_on_random_histories,
    undecodable_outbox_rows_are_quarantined_and_skipped,
    claims_share_the_outbox_and_end_with_mark_release_or_lease,
    rows_inserted_claimed_wait_for_their_lease_and_return_their_seqs,
    processed_reports_the_inbox,
    an_event_nobody_consumes_is_published_once,
    orders_past_deadline_finds_only_due_pending_orders,
    prune_is_bounded_by_the_batch,
    snapshot_round_trips_every_row_variant,
    batched_operations_agree_with_the_single_row_ones,
);

/// How long a transaction that must wait is given to (wrongly) finish.
const MUST_STILL_WAIT: Duration = Duration::from_millis(400);
/// Bound on anything that must finish.
const MUST_FINISH: Duration = Duration::from_secs(10);

const T0: Timestamp = Timestamp::SIM_EPOCH;

fn oid(s: &str) -> OrderId {
    OrderId::parse(s).unwrap()
}
fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}
fn iid(s: &str) -> ItemId {
    ItemId::parse(s).unwrap()
}
fn eid(n: u128) -> EventId {
    EventId(uuid::Uuid::from_u128(n))
}

fn order_created(order: &str) -> Event {
    Event::new(
        oid(order),
        uid("alice"),
        T0,
        Payload::OrderCreated(OrderCreated {
            item_id: iid("sword"),
            quantity: 1,
            total_amount: 100,
            payment_method: "WALLET".into(),
        }),
    )
}

fn account(balance: i64) -> Row {
    Row::Account(Account {
        user_id: uid("alice"),
        balance,
        opening_balance: 100,
    })
}

fn order_row(id: &str, status: OrderStatus, deadline: Timestamp, signalled: bool) -> Row {
    Row::Order(Order {
        order_id: oid(id),
        user_id: uid("alice"),
        item_id: iid("sword"),
        item_name: "Iron Sword".into(),
        quantity: 2,
        total_amount: 300,
        payment_method: "WALLET".into(),
        status,
        failed_step: (status == OrderStatus::Failed).then_some(FailedStep::Payment),
        failure_reason: (status == OrderStatus::Failed).then(|| "declined".to_string()),
        created_at: T0,
        deadline_at: deadline,
        deadline_signalled: signalled,
        updated_at: T0.plus(DurationMs(7)),
    })
}

async fn dedupe_records_an_event_once(f: Fixture) {
    let store = f.store();
    let mut tx = store.begin(Service::User).await.unwrap();
    assert!(
        tx.record_processed(eid(1), T0).await.unwrap(),
        "first sight of the id"
    );
    assert!(
        !tx.record_processed(eid(1), T0).await.unwrap(),
        "same id twice in one transaction"
    );
    tx.commit().await.unwrap();
    let mut tx = store.begin(Service::User).await.unwrap();
    assert!(
        !tx.record_processed(eid(1), T0).await.unwrap(),
        "committed id is a duplicate"
    );
    drop(tx);
    // Inboxes are per service: another service has not processed it.
    let mut tx = store.begin(Service::Item).await.unwrap();
    assert!(
        tx.record_processed(eid(1), T0).await.unwrap(),
        "another service's inbox is separate"
    );
}

async fn dedupe_waits_for_a_concurrent_transaction(f: Fixture) {
    let store = f.store();
    let mut first = store.begin(Service::User).await.unwrap();
    assert!(first.record_processed(eid(2), T0).await.unwrap());
    let (started_tx, started) = oneshot::channel();
    let (done_tx, mut done) = oneshot::channel();
    let s = store.clone();
    let second = tokio::spawn(async move {
        let mut tx = s.begin(Service::User).await.unwrap();
        started_tx.send(()).unwrap();
        let fresh = tx.record_processed(eid(2), T0).await;
        done_tx.send(fresh).unwrap();
    });
    started.await.unwrap();
    assert!(
        tokio::time::timeout(MUST_STILL_WAIT, &mut done).await.is_err(),
        "the second transaction must wait for the first to end"
    );
    first.commit().await.unwrap();
    let fresh = tokio::time::timeout(MUST_FINISH, done)
        .await
        .expect("released by the commit")
        .unwrap();
    assert_eq!(
        fresh,
        Ok(false),
        "after the first commits, the second sees a duplicate"
    );
    second.await.unwrap();
}

async fn dropped_transaction_leaves_nothing(f: Fixture) {
    let store = f.store();
    f.seed(vec![account(100)]).await;
    let mut tx = store.begin(Service::User).await.unwrap();
    assert!(tx.record_processed(eid(3), T0).await.unwrap());
    assert_eq!(
        tx.load_for_update(&RowKey::Account(uid("alice"))).await.unwrap(),
        Some(account(100))
    );
    tx.save(&account(40)).await.unwrap();
    assert_eq!(
        tx.load(&RowKey::Account(uid("alice"))).await.unwrap(),
        Some(account(40)),
        "own write visible"
    );
    drop(tx);
    let mut tx = store.begin(Service::Order).await.unwrap();
    tx.enqueue(&order_created("o-dropped"), T0, None).await.unwrap();
    drop(tx);

    let mut tx = store.begin(Service::User).await.unwrap();
    assert!(
        tx.record_processed(eid(3), T0).await.unwrap(),
        "the dropped inbox id is gone"
    );
    assert_eq!(
        tx.load_for_update(&RowKey::Account(uid("alice"))).await.unwrap(),
        Some(account(100)),
        "the dropped write is gone and the lock was released"
    );
    assert!(
        store.outbox_due(Service::Order, T0, 10).await.unwrap().is_empty(),
        "no outbox entry"
    );
}

async fn for_update_waits_for_the_holder(f: Fixture) {
    let store = f.store();
    f.seed(vec![account(100)]).await;
    let key = RowKey::Account(uid("alice"));
    let mut first = store.begin(Service::User).await.unwrap();
    assert_eq!(first.load_for_update(&key).await.unwrap(), Some(account(100)));
    let (started_tx, started) = oneshot::channel();
    let (done_tx, mut done) = oneshot::channel();
    let (s, k) = (store.clone(), key.clone());
    let second = tokio::spawn(async move {
        let mut tx = s.begin(Service::User).await.unwrap();
        started_tx.send(()).unwrap();
        let seen = tx.load_for_update(&k).await;
        done_tx.send(seen).unwrap();
        // Holds its own lock until dropped: nothing else to do.
    });
    started.await.unwrap();
    assert!(
        tokio::time::timeout(MUST_STILL_WAIT, &mut done).await.is_err(),
        "a second FOR UPDATE must wait for the holder"
    );
    first.save(&account(70)).await.unwrap();
    first.commit().await.unwrap();
    let seen = tokio::time::timeout(MUST_FINISH, done)
        .await
        .expect("released by the commit")
        .unwrap();
    assert_eq!(
        seen,
        Ok(Some(account(70))),
        "the waiter reads the committed row, not the one it waited on"
    );
    second.await.unwrap();
}

/// What the second of two inserting transactions experienced.
#[derive(Debug, PartialEq)]
enum Second {
    /// It waited at the read and then saw the first's row (MemoryStore
    /// locks absent keys).
    SawRow(Row),
    /// It read the key as absent, and its insert conflicted (Postgres: a
    /// unique violation once the first committed).
    Conflict,
    /// It committed an insert of a key the first inserted: a lost insert.
    Committed,
}

async fn concurrent_inserts_of_one_key_never_both_land(f: Fixture) {
    let store = f.store();
    let key = RowKey::Order(oid("o-new"));
    let first_row = order_row("o-new", OrderStatus::Pending, T0.plus(DurationMs(60_000)), false);
    let mut second_row = first_row.clone();
    if let Row::Order(o) = &mut second_row {
        o.quantity = 3;
    }
    let mut first = store.begin(Service::Order).await.unwrap();
    assert_eq!(first.load_for_update(&key).await.unwrap(), None);
    first.save(&first_row).await.unwrap();

    let (started_tx, started) = oneshot::channel();
    let (done_tx, mut done) = oneshot::channel();
    let (s, k, row) = (store.clone(), key.clone(), second_row.clone());
    tokio::spawn(async move {
        let outcome = async {
            let mut tx = s.begin(Service::Order).await?;
            started_tx.send(()).unwrap();
            if let Some(existing) = tx.load_for_update(&k).await? {
                return Ok(Second::SawRow(existing));
            }
            tx.save(&row).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(Second::Committed)
        }
        .await;
        let outcome = match outcome {
            Err(StoreError::Conflict(_)) => Ok(Second::Conflict),
            other => other,
        };
        done_tx.send(outcome).unwrap();
    });
    started.await.unwrap();
    assert!(
        tokio::time::timeout(MUST_STILL_WAIT, &mut done).await.is_err(),
        "the second transaction must wait (at the read or at the insert) while the first is open"
    );
    first.commit().await.unwrap();
    let outcome = tokio::time::timeout(MUST_FINISH, done)
        .await
        .expect("released")
        .unwrap()
        .unwrap();
    let expected = if f.is_postgres() {
        Second::Conflict
    } else {
        Second::SawRow(first_row.clone())
    };
    assert_eq!(outcome, expected);
    let mut check = store.begin(Service::Order).await.unwrap();
    assert_eq!(
        check.load(&key).await.unwrap(),
        Some(first_row),
        "the first insert stands"
    );
}

async fn outbox_due_follows_the_redrive_policy(f: Fixture) {
    let store = f.store();
    let policy = RedrivePolicy {
        after: DurationMs(1000),
        republish_max: 2,
        horizon: DurationMs(10_000),
    };
    let mut tx = store.begin(Service::Order).await.unwrap();
    for order in ["o-a", "o-b", "o-c"] {
        tx.enqueue(&order_created(order), T0, None).await.unwrap();
    }
    tx.commit().await.unwrap();

    let due = |at: i64| {
        let store = store.clone();
        async move {
            let now = T0.plus(DurationMs(at));
            let entries = store.outbox_due(Service::Order, now, 100).await.unwrap();
            assert!(
                entries.iter().all(|e| policy.is_due(e, now)),
                "every returned entry is due"
            );
            let order = |e: &OutboxEntry| (e.last_published_at.is_some(), e.next_publish_at, e.seq);
            assert!(
                entries.windows(2).all(|w| order(&w[0]) < order(&w[1])),
                "never-published first by seq, then republishes by due time"
            );
            entries
        }
    };
    let orders = |entries: &[OutboxEntry]| -> Vec<String> {
        entries.iter().map(|e| e.event.order_id.to_string()).collect()
    };
    // Publishes `entries` at `at` as the relay does under `policy`.
    let publish = |entries: Vec<OutboxEntry>, at: i64, policy: RedrivePolicy| {
        let store = store.clone();
        async move {
            let now = T0.plus(DurationMs(at));
            let marks: Vec<Mark> = entries.iter().map(|e| policy.mark(e, now)).collect();
            store.mark_published(Service::Order, &marks, now).await.unwrap();
        }
    };

    let all = due(0).await;
    assert_eq!(
        orders(&all),
        ["o-a", "o-b", "o-c"],
        "never published: due at once"
    );
    assert_eq!(all[0].event, order_created("o-a"), "the event round-trips");
    assert_eq!(
        (
            all[0].published_count,
            all[0].last_published_at,
            all[0].next_publish_at
        ),
        (0, None, None)
    );
    let limited = store.outbox_due(Service::Order, T0, 2).await.unwrap();
    assert_eq!(orders(&limited), ["o-a", "o-b"], "limit bounds the batch");

    let (a, b, c) = (all[0].clone(), all[1].clone(), all[2].clone());
    publish(vec![a.clone(), b.clone()], 0, policy).await;
    assert_eq!(orders(&due(0).await), ["o-c"]);
    assert_eq!(orders(&due(999).await), ["o-c"], "republish waits `after`");
    let again = due(1000).await;
    assert_eq!(
        orders(&again),
        ["o-c", "o-a", "o-b"],
        "a new event goes before re-drives"
    );
    assert_eq!(
        (
            again[1].published_count,
            again[1].last_published_at,
            again[1].next_publish_at
        ),
        (1, Some(T0), Some(T0.plus(DurationMs(1000)))),
        "round 1 starts at +1000"
    );

    // Rounds start at +1000 (k=1) and +3000 (k=2); all three were last
    // published at +1000, so the next round for each is +3000.
    publish(vec![a.clone(), b.clone(), c.clone()], 1000, policy).await;
    assert_eq!(orders(&due(2999).await), Vec::<String>::new());
    // A second relay publishing `a` within the same round spends no round.
    publish(vec![a.clone()], 1500, policy).await;
    assert_eq!(orders(&due(3000).await), ["o-a", "o-b", "o-c"]);
    publish(vec![a.clone(), b.clone(), c.clone()], 3000, policy).await;
    // Past round 2 the gap stops doubling: a round every 2000 (+5000,
    // +7000, +9000) until the horizon, so there is no last round before it.
    assert_eq!(orders(&due(4_999).await), Vec::<String>::new());
    assert_eq!(orders(&due(5_000).await), ["o-a", "o-b", "o-c"]);
    publish(vec![a.clone(), b.clone(), c.clone()], 8_500, policy).await;
    assert_eq!(orders(&due(8_999).await), Vec::<String>::new());
    assert_eq!(orders(&due(9_000).await), ["o-a", "o-b", "o-c"]);
    publish(vec![a.clone(), b.clone(), c.clone()], 9_000, policy).await;
    // No round starts at or past the horizon (+10000).
    assert_eq!(orders(&due(100_000).await), Vec::<String>::new());
    // With more rounds, none that starts at or past the horizon: rounds at
    // +1000, +3000 and +7000, horizon 5000.
    let short = RedrivePolicy {
        after: DurationMs(1000),
        republish_max: 5,
        horizon: DurationMs(5000),
    };
    // (`due` checks against `policy`; these entries now follow another.)
    let due_raw = |at: i64| {
        let store = store.clone();
        async move {
            let now = T0.plus(DurationMs(at));
            store.outbox_due(Service::Order, now, 100).await.unwrap()
        }
    };
    publish(vec![a.clone(), b.clone(), c.clone()], 3000, short).await;
    assert!(due_raw(20_000).await.is_empty(), "past the horizon: never again");
    let long = RedrivePolicy {
        horizon: DurationMs(8000),
        ..short
    };
    publish(vec![a, b, c], 3000, long).await;
    assert_eq!(orders(&due_raw(6_999).await), Vec::<String>::new());
    let last = due_raw(7_000).await;
    assert_eq!(
        orders(&last),
        ["o-a", "o-b", "o-c"],
        "the +7000 round is within an 8000 horizon"
    );
    assert_eq!(last[0].next_publish_at, Some(T0.plus(DurationMs(7000))));
    store.mark_published(Service::Order, &[], T0).await.unwrap();
}

async fn orders_past_deadline_finds_only_due_pending_orders(f: Fixture) {
    let store = f.store();
    let now = T0.plus(DurationMs(10_000));
    f.seed(vec![
        order_row("o-due", OrderStatus::Pending, now, false),
        order_row("o-due-earlier", OrderStatus::Pending, T0, false),
        order_row("o-later", OrderStatus::Pending, now.plus(DurationMs(1)), false),
        order_row("o-signalled", OrderStatus::Pending, T0, true),
        order_row("o-completed", OrderStatus::Completed, T0, false),
        order_row("o-failed", OrderStatus::Failed, T0, false),
    ])
    .await;
    let mut due = store.orders_past_deadline(now, 100).await.unwrap();
    due.sort();
    assert_eq!(due, vec![oid("o-due"), oid("o-due-earlier")]);
    assert_eq!(
        store.orders_past_deadline(now, 1).await.unwrap().len(),
        1,
        "limit bounds the batch"
    );
    assert!(store
        .orders_past_deadline(T0.plus(DurationMs(-1)), 100)
        .await
        .unwrap()
        .is_empty());
}

async fn prune_is_bounded_by_the_batch(f: Fixture) {
    let store = f.store();
    let policy = RedrivePolicy {
        after: DurationMs(100),
        republish_max: 1,
        horizon: DurationMs(500),
    };
    let retention = Retention {
        inbox: DurationMs(1000),
        outbox: DurationMs(1000),
        batch: 2,
    };
    let mut tx = store.begin(Service::Order).await.unwrap();
    for n in 0..5 {
        assert!(tx.record_processed(eid(100 + n), T0).await.unwrap());
    }
    // Young: processed just before the prune's horizon.
    assert!(tx
        .record_processed(eid(200), T0.plus(DurationMs(1)))
        .await
        .unwrap());
    for order in ["o-1", "o-2", "o-3", "o-unpublished"] {
        tx.enqueue(&order_created(order), T0, None).await.unwrap();
    }
    tx.commit().await.unwrap();
    let entries = store.outbox_due(Service::Order, T0, 100).await.unwrap();
    let published: Vec<Mark> = entries
        .iter()
        .filter(|e| e.event.order_id != oid("o-unpublished"))
        .map(|e| policy.mark(e, T0))
        .collect();
    store
        .mark_published(Service::Order, &published, T0)
        .await
        .unwrap();

    let now = T0.plus(DurationMs(1000));
    let mut passes = Vec::new();
    for _ in 0..4 {
        passes.push(store.prune(Service::Order, now, retention, policy).await.unwrap());
    }
    let p = |inbox, outbox| Pruned { inbox, outbox };
    assert_eq!(
        passes,
        vec![p(2, 2), p(2, 1), p(1, 0), p(0, 0)],
        "at most `batch` per table per pass"
    );
    // Another service's tables are not touched.
    assert_eq!(
        store.prune(Service::User, now, retention, policy).await.unwrap(),
        p(0, 0)
    );

    let mut tx = store.begin(Service::Order).await.unwrap();
    assert!(
        tx.record_processed(eid(100), now).await.unwrap(),
        "a pruned id is forgotten"
    );
    assert!(
        !tx.record_processed(eid(200), now).await.unwrap(),
        "a young id is kept"
    );
    drop(tx);
    let left = store.outbox_due(Service::Order, now, 100).await.unwrap();
    assert_eq!(
        left.iter()
            .map(|e| e.event.order_id.to_string())
            .collect::<Vec<_>>(),
        ["o-unpublished"],
        "an entry never published is never pruned"
    );
}

/// One row of every variant, optional fields set.
fn every_row_variant() -> Vec<Row> {
    let t = |ms| T0.plus(DurationMs(ms));
    vec![
        order_row("o-1", OrderStatus::Failed, t(300_000), true),
        order_row("o-2", OrderStatus::Pending, t(300_001), false),
        Row::Catalog(CatalogEntry {
            item_id: iid("sword"),
            name: "Iron Sword".into(),
            unit_price: 150,
        }),
        Row::Account(Account {
            user_id: uid("alice"),
            balance: 70,
            opening_balance: 1000,
        }),
        Row::BalanceHold(BalanceHold {
            order_id: oid("o-1"),
            user_id: uid("alice"),
            amount: 300,
            state: ReservationState::Released,
            updated_at: t(11),
        }),
        Row::InventoryAccount(InventoryAccount {
            user_id: uid("alice"),
            capacity: 10,
            used_slots: 2,
            reserved_slots: 3,
        }),
        Row::SlotReservation(SlotReservation {
            order_id: oid("o-1"),
            user_id: uid("alice"),
            item_id: iid("sword"),
            slots: 2,
            state: ReservationState::Granted,
            updated_at: t(12),
        }),
        Row::ItemStock(ItemStock {
            item_id: iid("sword"),
            stock: 4,
            opening_stock: 6,
        }),
        Row::StockReservation(StockReservation {
            order_id: oid("o-1"),
            item_id: iid("sword"),
            quantity: 2,
            state: ReservationState::Tombstone,
            updated_at: t(13),
        }),
        Row::Payment(Payment {
            order_id: oid("o-1"),
            user_id: uid("alice"),
            amount: 300,
            method: "DECLINED_CARD".into(),
            state: PaymentState::Declined,
            reason: Some("card declined".into()),
            updated_at: t(14),
        }),
        Row::Payment(Payment {
            order_id: oid("o-2"),
            user_id: uid("alice"),
            amount: 300,
            method: "WALLET".into(),
            state: PaymentState::Processed,
            reason: None,
            updated_at: t(15),
        }),
        Row::NotificationLog(NotificationLog {
            order_id: oid("o-1"),
            user_id: uid("alice"),
            kind: NotificationKind::PurchaseFailed,
            message: "Purchase failed: ünïcode ✓".into(),
            sent_count: 1,
            last_sent_at: t(16),
        }),
        Row::NotificationLog(NotificationLog {
            order_id: oid("o-1"),
            user_id: uid("alice"),
            kind: NotificationKind::PaymentFailed,
            message: "Payment failed".into(),
            sent_count: 1,
            last_sent_at: t(17),
        }),
        // The remaining enum values, so each is stored and read back once.
        Row::BalanceHold(BalanceHold {
            order_id: oid("o-2"),
            user_id: uid("alice"),
            amount: 300,
            state: ReservationState::Held,
            updated_at: t(18),
        }),
        Row::BalanceHold(BalanceHold {
            order_id: oid("o-3"),
            user_id: uid("bob"),
            amount: 0,
            state: ReservationState::Rejected,
            updated_at: t(19),
        }),
        Row::StockReservation(StockReservation {
            order_id: oid("o-2"),
            item_id: iid("sword"),
            quantity: 2,
            state: ReservationState::Held,
            updated_at: t(20),
        }),
        Row::Payment(Payment {
            order_id: oid("o-3"),
            user_id: uid("bob"),
            amount: 10,
            method: "WALLET".into(),
            state: PaymentState::Cancelled,
            reason: Some("saga deadline passed".into()),
            updated_at: t(21),
        }),
        Row::NotificationLog(NotificationLog {
            order_id: oid("o-2"),
            user_id: uid("alice"),
            kind: NotificationKind::PurchaseCompleted,
            message: "Purchased".into(),
            sent_count: 1,
            last_sent_at: t(22),
        }),
        Row::NotificationLog(NotificationLog {
            order_id: oid("o-2"),
            user_id: uid("alice"),
            kind: NotificationKind::PaymentCompleted,
            message: "Paid".into(),
            sent_count: 0,
            last_sent_at: t(23),
        }),
    ]
}

async fn snapshot_round_trips_every_row_variant(f: Fixture) {
    let store = f.store();
    let rows = every_row_variant();
    // Insert through transactions (absent key read under lock -> insert).
    for row in &rows {
        let mut tx = store.begin(row.key().owner()).await.unwrap();
        assert_eq!(tx.load_for_update(&row.key()).await.unwrap(), None);
        tx.save(row).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(store.snapshot().await.unwrap(), Snapshot::from_rows(rows.clone()));
    // Update through transactions (present key -> update), and read back.
    let mut updated = rows.clone();
    for row in &mut updated {
        if let Row::Order(o) = row {
            o.status = OrderStatus::Completed;
            o.failed_step = None;
            o.failure_reason = None;
            o.updated_at = o.updated_at.plus(DurationMs(1));
        }
        let mut tx = store.begin(row.key().owner()).await.unwrap();
        assert!(tx.load_for_update(&row.key()).await.unwrap().is_some());
        tx.save(row).await.unwrap();
        tx.commit().await.unwrap();
    }
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot, Snapshot::from_rows(updated.clone()));
    for row in &updated {
        let mut tx = store.begin(row.key().owner()).await.unwrap();
        assert_eq!(
            tx.load(&row.key()).await.unwrap().as_ref(),
            Some(row),
            "{:?}",
            row.key()
        );
    }
}

/// USER_VALIDATED has no subscriber: it is published once and never
/// re-driven, while PAYMENT_RESERVED of the same step is.
async fn an_event_nobody_consumes_is_published_once(f: Fixture) {
    use purchase_saga::domain::event::{PaymentReserved, UserValidated};
    let store = f.store();
    let policy = RedrivePolicy {
        after: DurationMs(1000),
        republish_max: 3,
        horizon: DurationMs(60_000),
    };
    let validated = Event::new(
        oid("o-v"),
        uid("alice"),
        T0,
        Payload::UserValidated(UserValidated {
            user_balance: 500,
            required_amount: 100,
        }),
    );
    let reserved = Event::new(
        oid("o-v"),
        uid("alice"),
        T0,
        Payload::PaymentReserved(PaymentReserved {
            reserved_amount: 100,
            remaining_balance: 400,
            item_id: iid("sword"),
            quantity: 1,
            payment_method: "WALLET".into(),
        }),
    );
    let mut tx = store.begin(Service::User).await.unwrap();
    tx.enqueue(&validated, T0, None).await.unwrap();
    tx.enqueue(&reserved, T0, None).await.unwrap();
    tx.commit().await.unwrap();
    let first = store.outbox_due(Service::User, T0, 10).await.unwrap();
    assert_eq!(first.len(), 2, "both are published once");
    let marks: Vec<Mark> = first.iter().map(|e| policy.mark(e, T0)).collect();
    store.mark_published(Service::User, &marks, T0).await.unwrap();
    let later = store
        .outbox_due(Service::User, T0.plus(DurationMs(5_000)), 10)
        .await
        .unwrap();
    let types: Vec<_> = later.iter().map(|e| e.event.event_type()).collect();
    assert_eq!(
        types,
        [reserved.event_type()],
        "only the consumed event is re-driven"
    );
}

/// `outbox_due` against a model that applies `RedrivePolicy::is_due` to
/// every entry, over a seeded random history of enqueues, relay passes that
/// publish a random part of what is due, and time jumps.
async fn outbox_due_agrees_with_is_due_on_random_histories(f: Fixture) {
    use rand::{Rng, SeedableRng};
    let store = f.store();
    let policy = RedrivePolicy {
        after: DurationMs(500),
        republish_max: 3,
        horizon: DurationMs(20_000),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut model: Vec<OutboxEntry> = Vec::new();
    let mut now = T0;
    let mut published_total = 0;
    for step in 0..60 {
        now = now.plus(DurationMs(rng.random_range(0..1500)));
        if step < 12 {
            let mut tx = store.begin(Service::Order).await.unwrap();
            let event = order_created(&format!("o-{step}"));
            tx.enqueue(&event, now, None).await.unwrap();
            tx.commit().await.unwrap();
            let due = store.outbox_due(Service::Order, now, 100).await.unwrap();
            let entry = due
                .iter()
                .find(|e| e.event == event)
                .expect("a new entry is due")
                .clone();
            assert_eq!((entry.created_at, entry.published_count), (now, 0));
            model.push(entry);
        }
        let mut expected: Vec<&OutboxEntry> = model.iter().filter(|e| policy.is_due(e, now)).collect();
        expected.sort_by_key(|e| (e.last_published_at.is_some(), policy.next_republish(e), e.seq));
        let expected: Vec<i64> = expected.into_iter().map(|e| e.seq).collect();
        let due = store.outbox_due(Service::Order, now, 100).await.unwrap();
        let got: Vec<i64> = due.iter().map(|e| e.seq).collect();
        assert_eq!(got, expected, "step {step} at +{}ms", now.since(T0).0);
        let marks: Vec<Mark> = due
            .iter()
            .filter(|_| rng.random_ratio(2, 3))
            .map(|e| policy.mark(e, now))
            .collect();
        let publish: Vec<i64> = marks.iter().map(|m| m.seq).collect();
        store.mark_published(Service::Order, &marks, now).await.unwrap();
        for entry in model.iter_mut().filter(|e| publish.contains(&e.seq)) {
            entry.published_count += 1;
            entry.last_published_at = Some(now);
        }
        published_total += publish.len();
    }
    assert!(
        published_total > 20,
        "the history republished entries: {published_total}"
    );
    // Past its doubling rounds an entry goes on at the capped gap (no last
    // round): some entry got there, so the repeating rounds were compared.
    let repeating = model
        .iter()
        .filter(|e| e.published_count > policy.republish_max + 1)
        .count();
    assert!(repeating > 0, "some entry was re-driven past its doubling rounds");
}

/// Rows this build cannot decode between rows it can: one that no build
/// decodes is quarantined once, with the reason; one a newer build wrote
/// (a higher `schemaVersion`) is given back for that build, once; the
/// claim returns the others, and neither is due again for this build.
async fn undecodable_outbox_rows_are_quarantined_and_skipped(f: Fixture) {
    let store = f.store();
    let enqueue = |order: &'static str| {
        let store = store.clone();
        async move {
            let mut tx = store.begin(Service::Order).await.unwrap();
            tx.enqueue(&order_created(order), T0, None).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    enqueue("o-a").await;
    let newer = order_created("o-b")
        .encode()
        .replace("\"schemaVersion\":1", "\"schemaVersion\":2");
    let newer = f.enqueue_raw(Service::Order, &newer, T0).await;
    let bad = f.enqueue_raw(Service::Order, "{not json", T0).await;
    enqueue("o-c").await;

    let claimed = store
        .claim_due(Service::Order, T0, DurationMs(0), 10)
        .await
        .unwrap();
    let orders: Vec<String> = claimed
        .entries
        .iter()
        .map(|e| e.event.order_id.to_string())
        .collect();
    assert_eq!(orders, ["o-a", "o-c"], "the rows around it are claimed");
    assert_eq!(claimed.quarantined.len(), 1, "{claimed:?}");
    assert_eq!(claimed.quarantined[0].seq, bad);
    assert!(
        claimed.quarantined[0]
            .reason
            .starts_with("undecodable event: malformed JSON"),
        "{claimed:?}"
    );
    assert_eq!(
        claimed.left_for_newer,
        [Quarantined {
            seq: newer,
            reason: "schema version 2 is newer than this build reads (1)".into()
        }]
    );
    let again = store
        .claim_due(Service::Order, T0.plus(DurationMs(60_000)), DurationMs(0), 10)
        .await
        .unwrap();
    assert!(again.quarantined.is_empty(), "reported once");
    assert!(again.left_for_newer.is_empty(), "given back once");
    assert_eq!(again.entries.len(), 2);
}

/// Two relays claiming at once take different entries; a claim ends with
/// the mark, with a release, or when its lease runs out.
async fn claims_share_the_outbox_and_end_with_mark_release_or_lease(f: Fixture) {
    let store = f.store();
    let policy = RedrivePolicy {
        after: DurationMs(60_000),
        republish_max: 1,
        horizon: DurationMs(600_000),
    };
    let mut tx = store.begin(Service::Order).await.unwrap();
    for order in ["o-1", "o-2", "o-3", "o-4", "o-5"] {
        tx.enqueue(&order_created(order), T0, None).await.unwrap();
    }
    tx.commit().await.unwrap();
    let lease = DurationMs(1000);
    let claim = |at: i64, limit: usize| {
        let store = store.clone();
        async move {
            let claimed = store
                .claim_due(Service::Order, T0.plus(DurationMs(at)), lease, limit)
                .await
                .unwrap();
            assert!(claimed.quarantined.is_empty());
            claimed.entries
        }
    };
    let orders = |entries: &[OutboxEntry]| -> Vec<String> {
        entries.iter().map(|e| e.event.order_id.to_string()).collect()
    };
    let a = claim(0, 3).await;
    let b = claim(0, 10).await;
    assert_eq!(orders(&a), ["o-1", "o-2", "o-3"]);
    assert_eq!(orders(&b), ["o-4", "o-5"], "the second relay takes the rest");
    assert!(
        claim(999, 10).await.is_empty(),
        "everything is held within the lease"
    );

    // Relay A publishes o-1 and o-2 (mark), B fails to publish o-4 (release).
    let marks: Vec<Mark> = a[..2].iter().map(|e| policy.mark(e, T0)).collect();
    store.mark_published(Service::Order, &marks, T0).await.unwrap();
    store.release(Service::Order, &[b[0].seq]).await.unwrap();
    let retried = claim(500, 10).await;
    assert_eq!(orders(&retried), ["o-4"], "released: due at once");
    // o-3 (A) and o-5 (B) were never marked: due again when the lease ends.
    let expired = claim(1000, 10).await;
    assert_eq!(orders(&expired), ["o-3", "o-5"]);
    let now = T0.plus(DurationMs(1000));
    let marks: Vec<Mark> = retried
        .iter()
        .chain(&expired)
        .map(|e| policy.mark(e, now))
        .collect();
    store.mark_published(Service::Order, &marks, now).await.unwrap();
    // Every one comes back in its re-drive round (+60 s), not before.
    assert!(claim(59_999, 10).await.is_empty());
    assert_eq!(
        orders(&claim(60_000, 10).await),
        ["o-1", "o-2", "o-3", "o-4", "o-5"]
    );
}

/// Send on commit: rows inserted claimed (`claimed_until`, in the step's
/// own transaction) are no relay's until the claim ends; the seqs the
/// enqueue returns are the rows' (the committer marks by them), in the
/// events' order; a mark ends the claim, and a release makes a row due at
/// once.
async fn rows_inserted_claimed_wait_for_their_lease_and_return_their_seqs(f: Fixture) {
    let store = f.store();
    let policy = RedrivePolicy {
        after: DurationMs(60_000),
        republish_max: 1,
        horizon: DurationMs(600_000),
    };
    let until = T0.plus(DurationMs(3000));
    let mut tx = store.begin(Service::Order).await.unwrap();
    let one = tx.enqueue(&order_created("o-1"), T0, Some(until)).await.unwrap();
    let many = tx
        .enqueue_many(
            &[order_created("o-2"), order_created("o-3"), order_created("o-4")],
            T0,
            Some(until),
        )
        .await
        .unwrap();
    let free = tx.enqueue(&order_created("o-5"), T0, None).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(many.len(), 3);
    let seqs: Vec<i64> = [one]
        .into_iter()
        .chain(many.iter().copied())
        .chain([free])
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs ascend in enqueue order: {seqs:?}"
    );
    let lease = DurationMs(1000);
    let claim = |at: i64| {
        let store = store.clone();
        async move {
            store
                .claim_due(Service::Order, T0.plus(DurationMs(at)), lease, 10)
                .await
                .unwrap()
                .entries
        }
    };
    let unclaimed = claim(0).await;
    assert_eq!(
        unclaimed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [free],
        "only the row inserted unclaimed is due before the claim ends"
    );
    // The committer marks o-1 and o-2 by the seqs it was given, and gives
    // o-3 back (its publish failed); o-4 it never reached (it died).
    let sent: Vec<OutboxEntry> = [("o-1", one), ("o-2", many[0])]
        .into_iter()
        .map(|(order, seq)| OutboxEntry {
            seq,
            event: order_created(order),
            created_at: T0,
            published_count: 0,
            last_published_at: None,
            next_publish_at: None,
        })
        .collect();
    // A relay published what it claimed (o-5).
    let marks: Vec<Mark> = sent
        .iter()
        .chain(&unclaimed)
        .map(|e| policy.mark(e, T0))
        .collect();
    store.mark_published(Service::Order, &marks, T0).await.unwrap();
    store.release(Service::Order, &[many[1]]).await.unwrap();
    let orders = |entries: &[OutboxEntry]| -> Vec<String> {
        entries.iter().map(|e| e.event.order_id.to_string()).collect()
    };
    let released = claim(2999).await;
    assert_eq!(orders(&released), ["o-3"], "released: due at once");
    let recovered = claim(3000).await;
    assert_eq!(
        orders(&recovered),
        ["o-4"],
        "the dead committer's row is due when its claim ends; the marked ones are not"
    );
    let at = T0.plus(DurationMs(3000));
    let marks: Vec<Mark> = released
        .iter()
        .chain(&recovered)
        .map(|e| policy.mark(e, at))
        .collect();
    store.mark_published(Service::Order, &marks, at).await.unwrap();
    assert!(claim(59_999).await.is_empty());
    assert_eq!(
        orders(&claim(60_000).await),
        ["o-1", "o-2", "o-3", "o-4", "o-5"],
        "marked rows re-drive in their round, whoever marked them"
    );
}

async fn processed_reports_the_inbox(f: Fixture) {
    let store = f.store();
    assert!(!store.processed(Service::User, eid(7)).await.unwrap());
    let mut tx = store.begin(Service::User).await.unwrap();
    assert!(tx.record_processed(eid(7), T0).await.unwrap());
    assert!(
        !store.processed(Service::User, eid(7)).await.unwrap(),
        "not before the commit"
    );
    tx.commit().await.unwrap();
    assert!(store.processed(Service::User, eid(7)).await.unwrap());
    assert!(
        !store.processed(Service::Order, eid(7)).await.unwrap(),
        "per service"
    );
    store
        .writable(Service::User)
        .await
        .expect("a healthy store is writable");
}

/// The batch operations of batched apply (one statement per table on
/// PostgreSQL): absent keys read as None and are inserted, present ones
/// read back and updated, unread ones upserted; the inbox answers per id;
/// the outbox keeps the order given.
async fn batched_operations_agree_with_the_single_row_ones(f: Fixture) {
    let store = f.store();
    let rows = every_row_variant();
    let by_service = |rows: &[Row]| {
        let mut out: std::collections::BTreeMap<Service, Vec<Row>> = Default::default();
        for row in rows {
            out.entry(row.key().owner()).or_default().push(row.clone());
        }
        for rows in out.values_mut() {
            rows.sort_by_key(Row::key);
        }
        out
    };
    for (service, rows) in by_service(&rows) {
        let keys: Vec<RowKey> = rows.iter().map(Row::key).collect();
        let mut tx = store.begin(service).await.unwrap();
        assert_eq!(
            tx.load_for_update_many(&keys).await.unwrap(),
            vec![None; keys.len()],
            "{service}: absent"
        );
        tx.save_many(&rows).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(store.snapshot().await.unwrap(), Snapshot::from_rows(rows.clone()));
    let mut updated = rows.clone();
    for row in &mut updated {
        if let Row::Order(o) = row {
            o.status = OrderStatus::Completed;
            o.failed_step = None;
            o.failure_reason = None;
        }
        if let Row::Account(a) = row {
            a.balance -= 1;
        }
    }
    for (service, rows) in by_service(&updated) {
        let keys: Vec<RowKey> = rows.iter().map(Row::key).collect();
        let mut tx = store.begin(service).await.unwrap();
        let read = tx.load_for_update_many(&keys).await.unwrap();
        let before: Vec<Option<Row>> = by_service(&every_row_variant())[&service]
            .iter()
            .cloned()
            .map(Some)
            .collect();
        assert_eq!(read, before, "{service}: read back in key order");
        tx.save_many(&rows).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(
        store.snapshot().await.unwrap(),
        Snapshot::from_rows(updated.clone())
    );
    // Never read in the transaction: an upsert of a present and an absent key.
    let mut tx = store.begin(Service::User).await.unwrap();
    let upserts = vec![
        account(7),
        Row::Account(Account {
            user_id: uid("zed"),
            balance: 3,
            opening_balance: 3,
        }),
    ];
    tx.save_many(&upserts).await.unwrap();
    tx.commit().await.unwrap();
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.accounts[&uid("alice")].balance, 7);
    assert_eq!(snapshot.accounts[&uid("zed")].balance, 3);

    // The inbox answers per id; the outbox keeps the order given.
    let mut tx = store.begin(Service::Order).await.unwrap();
    assert!(tx.record_processed(eid(2), T0).await.unwrap());
    tx.commit().await.unwrap();
    let events = [order_created("o-c"), order_created("o-a"), order_created("o-b")];
    let mut tx = store.begin(Service::Order).await.unwrap();
    assert_eq!(
        tx.record_processed_many(&[eid(1), eid(2), eid(3)], T0)
            .await
            .unwrap(),
        [true, false, true]
    );
    tx.enqueue_many(&events, T0, None).await.unwrap();
    tx.commit().await.unwrap();
    let due = store.outbox_due(Service::Order, T0, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        events,
        "enqueued in the order given"
    );
    assert!(due.windows(2).all(|w| w[0].seq < w[1].seq));
    let mut tx = store.begin(Service::Order).await.unwrap();
    assert_eq!(
        tx.record_processed_many(&[eid(1), eid(3), eid(4)], T0)
            .await
            .unwrap(),
        [false, false, true],
        "committed ids are duplicates"
    );
}
