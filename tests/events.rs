//! The wire form of every event: round trip, a pinned JSON snapshot per
//! type, and a clear reason for every kind of undecodable input.

use purchase_saga::domain::event::*;
use purchase_saga::domain::{ItemId, OrderId, Timestamp, UserId};

fn item() -> ItemId {
    ItemId::parse("sword").unwrap()
}

/// One sample of every event type, in `EventType::ALL` order.
fn samples() -> Vec<Event> {
    let payloads = vec![
        Payload::OrderCreated(OrderCreated {
            item_id: item(),
            quantity: 2,
            total_amount: 300,
            payment_method: "WALLET".into(),
        }),
        Payload::OrderCompleted(OrderCompleted {
            item_name: "Iron Sword".into(),
            total_amount: 300,
        }),
        Payload::OrderFailed(OrderFailed {
            reason: "out of stock: 1 left, 2 needed".into(),
            failed_step: FailedStep::ItemReservation,
        }),
        Payload::UserValidated(UserValidated {
            user_balance: 1000,
            required_amount: 300,
        }),
        Payload::UserValidationFailed(UserValidationFailed {
            reason: "insufficient balance: has 299, needs 300".into(),
            required_amount: 300,
        }),
        Payload::PaymentReserved(PaymentReserved {
            reserved_amount: 300,
            remaining_balance: 700,
            item_id: item(),
            quantity: 2,
            payment_method: "WALLET".into(),
        }),
        Payload::PaymentProcessed(PaymentProcessed {
            payment_amount: 300,
            payment_method: "WALLET".into(),
        }),
        Payload::PaymentFailed(PaymentFailed {
            reason: "payment method DECLINED_CARD was declined".into(),
            attempted_amount: 300,
            item_id: item(),
        }),
        Payload::PaymentRollback(PaymentRollback {
            refunded_amount: 300,
            balance: 1000,
        }),
        Payload::InventoryReserved(InventoryReserved {
            item_id: item(),
            reserved_slots: 2,
            available_slots: 8,
            total_amount: 300,
            payment_method: "WALLET".into(),
        }),
        Payload::InventoryReservationFailed(InventoryReservationFailed {
            reason: "not enough inventory space: 1 free, 2 needed".into(),
            item_id: item(),
            requested_slots: 2,
            available_slots: 1,
        }),
        Payload::InventoryRollback(InventoryRollback {
            released_slots: 2,
            available_slots: 10,
        }),
        Payload::ItemReserved(ItemReserved {
            item_id: item(),
            reserved_quantity: 2,
            remaining_stock: 3,
            total_amount: 300,
            payment_method: "WALLET".into(),
        }),
        Payload::ItemReservationFailed(ItemReservationFailed {
            reason: "out of stock: 1 left, 2 needed".into(),
            item_id: item(),
            requested_quantity: 2,
            available_stock: 1,
        }),
        Payload::ItemRestored(ItemRestored {
            item_id: item(),
            restored_quantity: 2,
            stock: 5,
        }),
        Payload::NotificationSent(NotificationSent {
            message: "Your purchase of Iron Sword is complete.".into(),
            notification_type: NotificationKind::PurchaseCompleted,
        }),
        Payload::SagaDeadlinePassed(SagaDeadlinePassed {
            item_id: item(),
            total_amount: 300,
            deadline: Timestamp::SIM_EPOCH,
        }),
    ];
    payloads
        .into_iter()
        .map(|p| {
            Event::new(
                OrderId::parse("order-1").unwrap(),
                UserId::parse("alice").unwrap(),
                Timestamp::SIM_EPOCH,
                p,
            )
        })
        .collect()
}

#[test]
fn every_type_has_a_sample() {
    let types: Vec<EventType> = samples().iter().map(Event::event_type).collect();
    assert_eq!(types, EventType::ALL.to_vec());
}

#[test]
fn every_event_round_trips() {
    for event in samples() {
        let wire = event.encode();
        assert_eq!(Event::decode(wire.as_bytes()), Ok(event.clone()), "{wire}");
        let value: serde_json::Value = serde_json::from_str(&wire).unwrap();
        assert_eq!(value["type"], event.event_type().as_str());
        assert_eq!(value["schemaVersion"], SCHEMA_VERSION);
    }
}

#[test]
fn every_event_json_is_pinned() {
    for event in samples() {
        let pretty: serde_json::Value = serde_json::from_str(&event.encode()).unwrap();
        insta::assert_json_snapshot!(event.event_type().as_str(), pretty);
    }
}

#[test]
fn event_ids_are_stable_and_distinct() {
    let ids: std::collections::BTreeSet<_> = samples().iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), samples().len(), "no two event types share an id");
    let again = samples();
    assert_eq!(
        samples()[0].event_id,
        again[0].event_id,
        "re-emission gives the same id"
    );
    // A later timestamp (re-emitted after a crash) does not change the id.
    let mut late = samples()[0].clone();
    late.timestamp = Timestamp(late.timestamp.0 + 60_000);
    let rebuilt = Event::new(
        late.order_id.clone(),
        late.user_id.clone(),
        late.timestamp,
        late.payload.clone(),
    );
    assert_eq!(rebuilt.event_id, samples()[0].event_id);
}

fn decode_err(raw: &str) -> DecodeError {
    Event::decode(raw.as_bytes()).expect_err(raw)
}

fn with(event: &Event, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let mut value: serde_json::Value = serde_json::from_str(&event.encode()).unwrap();
    edit(value.as_object_mut().unwrap());
    value.to_string()
}

#[test]
fn undecodable_input_says_why() {
    let e = &samples()[0];
    assert!(matches!(decode_err("{not json"), DecodeError::MalformedJson(_)));
    assert_eq!(decode_err("[1,2]"), DecodeError::NotAnObject);
    assert_eq!(
        decode_err(&with(e, |m| drop(
            m.insert("type".into(), "ORDER_EXPLODED".into())
        ))),
        DecodeError::UnknownType("ORDER_EXPLODED".into())
    );
    assert_eq!(
        decode_err(&with(e, |m| drop(m.remove("quantity")))),
        DecodeError::MissingField("quantity".into())
    );
    assert_eq!(
        decode_err(&with(e, |m| drop(m.remove("type")))),
        DecodeError::MissingField("type".into())
    );
    assert_eq!(
        decode_err(&with(e, |m| drop(m.insert("schemaVersion".into(), 2.into())))),
        DecodeError::UnsupportedSchemaVersion("2".into())
    );
    assert!(matches!(
        decode_err(&with(e, |m| drop(m.insert("quantity".into(), "two".into())))),
        DecodeError::InvalidField(_)
    ));
    assert!(matches!(
        decode_err(&with(e, |m| drop(m.insert("orderId".into(), "has space".into())))),
        DecodeError::InvalidField(_)
    ));
    assert!(matches!(
        decode_err(&with(e, |m| drop(m.insert("orderId".into(), "order-2".into())))),
        DecodeError::ForeignEventId { .. }
    ));
    assert!(matches!(
        decode_err(&" ".repeat(EVENT_BYTES_MAX + 1)),
        DecodeError::TooLarge(_)
    ));
}
