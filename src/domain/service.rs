//! The six services of the founding document and its publisher/subscriber
//! table, written down once.
//!
//! The bus adapters route by [`subscribers`], the consumer refuses events a
//! service does not subscribe to, and a test holds the table to the founding
//! document's, so a new subscription is one line here and nowhere else.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::event::EventType;

/// A saga participant. Each owns its own tables and consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Service {
    Order,
    User,
    Inventory,
    Item,
    Payment,
    Notification,
}

impl Service {
    pub const ALL: [Service; 6] = [
        Service::Order,
        Service::User,
        Service::Inventory,
        Service::Item,
        Service::Payment,
        Service::Notification,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Order => "Order",
            Service::User => "User",
            Service::Inventory => "Inventory",
            Service::Item => "Item",
            Service::Payment => "Payment",
            Service::Notification => "Notification",
        }
    }

    /// Lower-case name: schema names, stream names, CLI values.
    pub fn slug(self) -> &'static str {
        match self {
            Service::Order => "order",
            Service::User => "user",
            Service::Inventory => "inventory",
            Service::Item => "item",
            Service::Payment => "payment",
            Service::Notification => "notification",
        }
    }

    pub fn from_slug(slug: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.slug() == slug)
    }

    /// The events this service consumes, in the founding document's order.
    pub fn subscriptions(self) -> &'static [EventType] {
        use EventType::*;
        match self {
            Service::Order => &[
                UserValidationFailed,
                PaymentProcessed,
                PaymentFailed,
                InventoryReservationFailed,
                ItemReservationFailed,
            ],
            Service::User => &[
                OrderCreated,
                PaymentFailed,
                InventoryReservationFailed,
                ItemReservationFailed,
            ],
            Service::Inventory => &[
                PaymentReserved,
                PaymentProcessed,
                PaymentFailed,
                ItemReservationFailed,
            ],
            Service::Item => &[PaymentFailed, InventoryReserved],
            // The saga deadline reaches the pivot (DESIGN.md "Timeouts").
            Service::Payment => &[ItemReserved, SagaDeadlinePassed],
            Service::Notification => &[OrderCompleted, OrderFailed, PaymentProcessed, PaymentFailed],
        }
    }

    pub fn subscribes_to(self, event_type: EventType) -> bool {
        self.subscriptions().contains(&event_type)
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The services that consume `event_type`, in [`Service::ALL`] order.
pub fn subscribers(event_type: EventType) -> Vec<Service> {
    Service::ALL
        .into_iter()
        .filter(|s| s.subscribes_to(event_type))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The founding document's publisher/subscriber table, transcribed by
    /// hand, plus the saga deadline of DESIGN.md.
    #[test]
    fn table_matches_the_founding_document() {
        use EventType::*;
        use Service::*;
        let expected: [(EventType, Service, &[Service]); 17] = [
            (OrderCreated, Order, &[User]),
            (OrderCompleted, Order, &[Notification]),
            (OrderFailed, Order, &[Notification]),
            (UserValidated, User, &[]),
            (UserValidationFailed, User, &[Order]),
            (PaymentReserved, User, &[Inventory]),
            (PaymentProcessed, Payment, &[Order, Inventory, Notification]),
            (
                PaymentFailed,
                Payment,
                &[Order, User, Inventory, Item, Notification],
            ),
            (PaymentRollback, User, &[]),
            (InventoryReserved, Inventory, &[Item]),
            (InventoryReservationFailed, Inventory, &[Order, User]),
            (InventoryRollback, Inventory, &[]),
            (ItemReserved, Item, &[Payment]),
            (ItemReservationFailed, Item, &[Order, User, Inventory]),
            (ItemRestored, Item, &[]),
            (NotificationSent, Notification, &[]),
            (SagaDeadlinePassed, Order, &[Payment]),
        ];
        assert_eq!(expected.len(), EventType::ALL.len());
        for (event_type, publisher, subs) in expected {
            assert_eq!(event_type.publisher(), publisher, "{event_type:?}");
            assert_eq!(subscribers(event_type), subs.to_vec(), "{event_type:?}");
        }
    }
}
