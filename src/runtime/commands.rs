//! Commands from outside the saga: placing an order (the HTTP API, the demo,
//! the simulator's client) goes through the same transaction shape as an
//! event, so the order row and its ORDER_CREATED commit together.

use crate::domain::participants::order::{self, PlaceOrder, Rejection};
use crate::domain::{Row, RowKey, Service};

use super::transaction::{transact, TransactError};
use super::{Env, StoreError};

/// The result of placing an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// A new order was created and ORDER_CREATED is in the outbox.
    Created,
    /// The order id existed already (a retried request): nothing changed.
    Existing(Box<crate::domain::rows::Order>),
}

/// Why placing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Validates and creates the order in one transaction.
pub async fn place_order(env: &Env, cmd: &PlaceOrder) -> Result<Placed, PlaceError> {
    let mut keys = order::place_order_rows(cmd);
    keys.sort();
    let mut existing = None;
    let result = transact(env, Service::Order, None, &keys, |rows| {
        existing = rows.order(&cmd.order_id).cloned();
        order::place_order(rows, cmd, env.clock.now(), env.config.saga_deadline)
    })
    .await;
    match result {
        Ok(_) => Ok(match existing {
            Some(order) => Placed::Existing(Box::new(order)),
            None => Placed::Created,
        }),
        Err(TransactError::Store(e)) => Err(PlaceError::Store(e)),
        Err(TransactError::Step(r)) => Err(PlaceError::Rejected(r)),
    }
}

/// Reads one row of `service` (committed state), outside any saga step:
/// the read side of the HTTP API.
pub async fn read_row(env: &Env, key: &RowKey) -> Result<Option<Row>, StoreError> {
    let mut tx = env.store.begin(key.owner()).await?;
    tx.load(key).await
}
