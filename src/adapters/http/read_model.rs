//! The read side of the API that the [`Store`](crate::runtime::Store) port
//! does not offer: an order's events across every service's outbox (its
//! timeline), when each subscriber processed them (its inbox), a user's
//! orders newest first, and the items a user was granted. The runtime never needs these,
//! so they live here, behind a trait of their own, implemented by each store.
//!
//! A timeline lists what the outboxes still hold: entries are pruned after
//! the outbox retention (a day by default), so an old order shows its final
//! state with a shorter or empty timeline.

use std::sync::Arc;

use async_trait::async_trait;

use crate::adapters::postgres::{PgRoutes, PgStore, TimelineEntry};
use crate::domain::rows::{Order, ReservationState, SlotReservation};
use crate::domain::{Event, EventId, OrderId, Row, RowKey, Service, Timestamp, UserId};
use crate::runtime::memory::MemoryStore;
use crate::runtime::store::StoreResult;
use crate::runtime::{OutboxEntry, Store, StoreError};

/// Most granted items `GET /users/{id}` lists.
pub const GRANTED_ITEMS_MAX: usize = 1_000;

/// Reads for the API; see the module docs.
#[async_trait]
pub trait ReadModel: Send + Sync + 'static {
    /// The committed order, if any: one cheap read, since a request with
    /// `?wait=` polls it.
    async fn order(&self, id: &OrderId) -> StoreResult<Option<Order>>;

    /// Every outbox entry of `order`, of every service, oldest first.
    async fn order_events(&self, order: &OrderId) -> StoreResult<Vec<OutboxEntry>>;

    /// The slot reservations of `user` that became granted items.
    async fn granted_items(&self, user: &UserId) -> StoreResult<Vec<SlotReservation>>;

    /// Up to `limit` orders of `user`, newest first by (creation time,
    /// order id), strictly after the key `after` in that order.
    async fn user_orders(
        &self,
        user: &UserId,
        after: Option<&(Timestamp, OrderId)>,
        limit: usize,
    ) -> StoreResult<Vec<Order>>;

    /// When `service` processed each of `events` that it has processed.
    async fn processed_at(
        &self,
        service: Service,
        events: &[EventId],
    ) -> StoreResult<Vec<(EventId, Timestamp)>>;
    /// Every item of the catalog with its stock, sorted by id (`GET
    /// /items`; see [`super::items`]).
    async fn items(&self) -> StoreResult<Vec<super::views::ItemView>>;
}

/// The newest-first key of an order (see [`ReadModel::user_orders`]).
pub fn order_key(o: &Order) -> (Timestamp, OrderId) {
    (o.created_at, o.order_id.clone())
}

/// Oldest first: by the event's own timestamp, then by outbox position.
pub fn sort_timeline(entries: &mut [OutboxEntry]) {
    entries.sort_by_key(|e| (e.event.timestamp, e.created_at, e.seq));
}

#[async_trait]
impl ReadModel for MemoryStore {
    async fn order(&self, id: &OrderId) -> StoreResult<Option<Order>> {
        let mut tx = self.begin(Service::Order).await?;
        match tx.load(&RowKey::Order(id.clone())).await? {
            Some(Row::Order(o)) => Ok(Some(o)),
            Some(other) => unreachable!("an order key holds {other:?}"),
            None => Ok(None),
        }
    }

    async fn order_events(&self, order: &OrderId) -> StoreResult<Vec<OutboxEntry>> {
        let mut entries: Vec<OutboxEntry> = self
            .outbox()
            .into_iter()
            .filter(|e| &e.event.order_id == order)
            .collect();
        sort_timeline(&mut entries);
        Ok(entries)
    }

    async fn granted_items(&self, user: &UserId) -> StoreResult<Vec<SlotReservation>> {
        // A full snapshot: fine for the in-memory store, which holds a demo's
        // worth of rows.
        let snapshot = Store::snapshot(self).await?;
        Ok(snapshot
            .slot_reservations
            .into_values()
            .filter(|r| &r.user_id == user && r.state == ReservationState::Granted)
            .collect())
    }

    async fn user_orders(
        &self,
        user: &UserId,
        after: Option<&(Timestamp, OrderId)>,
        limit: usize,
    ) -> StoreResult<Vec<Order>> {
        let snapshot = Store::snapshot(self).await?;
        let mut orders: Vec<Order> = snapshot
            .orders
            .into_values()
            .filter(|o| &o.user_id == user && after.is_none_or(|a| &order_key(o) < a))
            .collect();
        orders.sort_by_key(|o| std::cmp::Reverse(order_key(o)));
        orders.truncate(limit);
        Ok(orders)
    }

    async fn processed_at(
        &self,
        service: Service,
        events: &[EventId],
    ) -> StoreResult<Vec<(EventId, Timestamp)>> {
        Ok(events
            .iter()
            .filter_map(|id| MemoryStore::processed_at(self, service, *id).map(|at| (*id, at)))
            .collect())
    }

    async fn items(&self) -> StoreResult<Vec<super::views::ItemView>> {
        super::items::memory_items(self).await
    }
}

#[async_trait]
impl ReadModel for PgStore {
    async fn order(&self, id: &OrderId) -> StoreResult<Option<Order>> {
        PgStore::order(self, id).await
    }

    async fn order_events(&self, order: &OrderId) -> StoreResult<Vec<OutboxEntry>> {
        timeline_entries(self.timeline(order).await?)
    }

    async fn granted_items(&self, user: &UserId) -> StoreResult<Vec<SlotReservation>> {
        PgStore::granted_items(self, user, GRANTED_ITEMS_MAX).await
    }

    async fn user_orders(
        &self,
        user: &UserId,
        after: Option<&(Timestamp, OrderId)>,
        limit: usize,
    ) -> StoreResult<Vec<Order>> {
        PgStore::user_orders(self, user, after, limit).await
    }

    async fn processed_at(
        &self,
        service: Service,
        events: &[EventId],
    ) -> StoreResult<Vec<(EventId, Timestamp)>> {
        PgStore::processed_at(self, service, events).await
    }

    async fn items(&self) -> StoreResult<Vec<super::views::ItemView>> {
        super::items::pg_items(self, self).await
    }
}

/// A PostgreSQL timeline as outbox entries, oldest first.
fn timeline_entries(timeline: Vec<TimelineEntry>) -> StoreResult<Vec<OutboxEntry>> {
    let mut entries = timeline
        .into_iter()
        .enumerate()
        .map(|(position, t)| {
            let event = Event::decode(t.payload.as_bytes()).map_err(|e| {
                StoreError::Fatal(format!("{} outbox holds an undecodable event: {e}", t.service))
            })?;
            Ok(OutboxEntry {
                seq: i64::try_from(position).unwrap_or(i64::MAX),
                event,
                created_at: t.created_at,
                published_count: t.published_count,
                last_published_at: t.last_published_at,
                next_publish_at: None,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    sort_timeline(&mut entries);
    Ok(entries)
}

/// Each read on the database of the service that owns it; an order's
/// events fan out over the routed services' outboxes.
#[async_trait]
impl ReadModel for PgRoutes {
    async fn items(&self) -> StoreResult<Vec<super::views::ItemView>> {
        super::items::pg_items(self.of(Service::Order)?, self.of(Service::Item)?).await
    }

    async fn order(&self, id: &OrderId) -> StoreResult<Option<Order>> {
        self.of(Service::Order)?.order(id).await
    }

    async fn order_events(&self, order: &OrderId) -> StoreResult<Vec<OutboxEntry>> {
        timeline_entries(self.timeline(order).await?)
    }

    async fn granted_items(&self, user: &UserId) -> StoreResult<Vec<SlotReservation>> {
        self.of(Service::Inventory)?
            .granted_items(user, GRANTED_ITEMS_MAX)
            .await
    }

    async fn user_orders(
        &self,
        user: &UserId,
        after: Option<&(Timestamp, OrderId)>,
        limit: usize,
    ) -> StoreResult<Vec<Order>> {
        self.of(Service::Order)?.user_orders(user, after, limit).await
    }

    async fn processed_at(
        &self,
        service: Service,
        events: &[EventId],
    ) -> StoreResult<Vec<(EventId, Timestamp)>> {
        self.of(service)?.processed_at(service, events).await
    }
}

#[async_trait]
impl<T: ReadModel + ?Sized> ReadModel for Arc<T> {
    async fn order(&self, id: &OrderId) -> StoreResult<Option<Order>> {
        (**self).order(id).await
    }
    async fn order_events(&self, order: &OrderId) -> StoreResult<Vec<OutboxEntry>> {
        (**self).order_events(order).await
    }
    async fn granted_items(&self, user: &UserId) -> StoreResult<Vec<SlotReservation>> {
        (**self).granted_items(user).await
    }
    async fn user_orders(
        &self,
        user: &UserId,
        after: Option<&(Timestamp, OrderId)>,
        limit: usize,
    ) -> StoreResult<Vec<Order>> {
        (**self).user_orders(user, after, limit).await
    }
    async fn processed_at(
        &self,
        service: Service,
        events: &[EventId],
    ) -> StoreResult<Vec<(EventId, Timestamp)>> {
        (**self).processed_at(service, events).await
    }
    async fn items(&self) -> StoreResult<Vec<super::views::ItemView>> {
        (**self).items().await
    }
}
