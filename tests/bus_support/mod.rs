//! What the Redis bus tests share: a distinct event per number (an
//! ORDER_CREATED, which only User consumes: one entry per publish), and a
//! raw connection for what the bus never does itself (SET on a dead-letter
//! key, XDEL, XCLAIM, reading counters).
#![allow(dead_code)] // Each test file uses a different part of this module.

use purchase_saga::domain::event::{OrderCreated, Payload};
use purchase_saga::domain::{Event, ItemId, OrderId, Timestamp, UserId};

use crate::common::TestRedis;

pub fn order_created(n: usize) -> Event {
    Event::new(
        OrderId::parse(format!("o-{n}")).unwrap(),
        UserId::parse("alice").unwrap(),
        Timestamp::SIM_EPOCH,
        Payload::OrderCreated(OrderCreated {
            item_id: ItemId::parse("sword").unwrap(),
            quantity: 1,
            total_amount: 100,
            payment_method: "WALLET".into(),
        }),
    )
}

/// A raw connection to the test's Redis.
pub async fn raw(r: &TestRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(r.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to Redis at {}: {e}", r.url))
}
