//! The read side of PgStore that the HTTP API and the CLI use: an order, a
//! player, an item, an order's timeline, backlog numbers.

mod common;

use purchase_saga::domain::event::{OrderCreated, Payload};
use purchase_saga::domain::rows::{
    Account, CatalogEntry, InventoryAccount, ItemStock, ReservationState, SlotReservation,
};
use purchase_saga::domain::{DurationMs, Event, ItemId, OrderId, Row, Service, Timestamp, UserId};
use purchase_saga::runtime::store::{RedrivePolicy, Store};

#[tokio::test]
async fn reads_return_committed_rows_and_the_timeline() {
    let db = common::TestDb::create().await;
    let store = &db.store;
    let alice = UserId::parse("alice").unwrap();
    let sword = ItemId::parse("sword").unwrap();
    let t0 = Timestamp::SIM_EPOCH;
    let granted = |order: &str, at: i64, state| SlotReservation {
        order_id: OrderId::parse(order).unwrap(),
        user_id: alice.clone(),
        item_id: sword.clone(),
        slots: 1,
        state,
        updated_at: t0.plus(DurationMs(at)),
    };
    store
        .seed_rows(&[
            Row::Account(Account {
                user_id: alice.clone(),
                balance: 70,
                opening_balance: 100,
            }),
            Row::InventoryAccount(InventoryAccount {
                user_id: alice.clone(),
                capacity: 5,
                used_slots: 2,
                reserved_slots: 0,
            }),
            Row::Catalog(CatalogEntry {
                item_id: sword.clone(),
                name: "Iron Sword".into(),
                unit_price: 15,
            }),
            Row::ItemStock(ItemStock {
                item_id: sword.clone(),
                stock: 3,
                opening_stock: 5,
            }),
            Row::SlotReservation(granted("o-2", 2, ReservationState::Granted)),
            Row::SlotReservation(granted("o-1", 1, ReservationState::Granted)),
            Row::SlotReservation(granted("o-3", 3, ReservationState::Released)),
        ])
        .await
        .unwrap();
    assert_eq!(store.account(&alice).await.unwrap().map(|a| a.balance), Some(70));
    assert_eq!(
        store
            .inventory_account(&alice)
            .await
            .unwrap()
            .map(|a| a.used_slots),
        Some(2)
    );
    assert_eq!(
        store.catalog_entry(&sword).await.unwrap().map(|c| c.unit_price),
        Some(15)
    );
    assert_eq!(store.item_stock(&sword).await.unwrap().map(|s| s.stock), Some(3));
    assert_eq!(
        store.account(&UserId::parse("nobody").unwrap()).await.unwrap(),
        None
    );
    assert_eq!(store.order(&OrderId::parse("o-1").unwrap()).await.unwrap(), None);
    let items: Vec<String> = store
        .granted_items(&alice, 10)
        .await
        .unwrap()
        .iter()
        .map(|s| s.order_id.to_string())
        .collect();
    assert_eq!(items, ["o-1", "o-2"], "granted only, oldest first");
    assert_eq!(store.granted_items(&alice, 1).await.unwrap().len(), 1);

    let order = OrderId::parse("o-9").unwrap();
    let created = Event::new(
        order.clone(),
        alice.clone(),
        t0,
        Payload::OrderCreated(OrderCreated {
            item_id: sword.clone(),
            quantity: 1,
            total_amount: 15,
            payment_method: "WALLET".into(),
        }),
    );
    let mut tx = store.begin(Service::Order).await.unwrap();
    tx.enqueue(&created, t0, None).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.outbox_backlog(Service::Order).await.unwrap(), 1);
    assert_eq!(store.table_sizes(Service::Order).await.unwrap(), (1, 0));
    let policy = RedrivePolicy {
        after: DurationMs(1000),
        republish_max: 1,
        horizon: DurationMs(60_000),
    };
    let due = store.outbox_due(Service::Order, t0, 10).await.unwrap();
    let published = t0.plus(DurationMs(5));
    store
        .mark_published(Service::Order, &[policy.mark(&due[0], published)], published)
        .await
        .unwrap();
    assert_eq!(store.outbox_backlog(Service::Order).await.unwrap(), 0);
    let timeline = store.timeline(&order).await.unwrap();
    assert_eq!(timeline.len(), 1);
    assert_eq!(timeline[0].service, Service::Order);
    assert_eq!(timeline[0].event_id, created.event_id);
    assert_eq!(timeline[0].payload, created.encode());
    assert_eq!(
        (timeline[0].published_count, timeline[0].last_published_at),
        (1, Some(t0.plus(DurationMs(5))))
    );
    assert!(store
        .timeline(&OrderId::parse("o-none").unwrap())
        .await
        .unwrap()
        .is_empty());
}
