//! Identifiers of the saga's entities and of its events.
//!
//! Order, user and item ids are opaque strings (the founding document types
//! them as `String`); they are validated once, at the edge, so a malformed id
//! can never reach a store key or a stream name. Event ids are UUID v5 values
//! derived from what the event *is* (order, type, emitter), so an event that is
//! re-emitted after a crash carries the same id and is deduplicated.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest id accepted, in bytes. Ids end up in store keys and log lines.
pub const ID_LENGTH_MAX: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {ID_LENGTH_MAX} bytes, got {0}")]
    TooLong(usize),
    #[error("may only contain ASCII letters, digits, '-', '_', '.' and ':' (found {0:?})")]
    BadCharacter(char),
}

fn validate_id(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > ID_LENGTH_MAX {
        return Err(IdError::TooLong(raw.len()));
    }
    match raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        Some(c) => Err(IdError::BadCharacter(c)),
        None => Ok(()),
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `raw` and wraps it.
            pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
                let raw = raw.into();
                validate_id(&raw)?;
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

string_id!(
    /// An order, created by the Order service (a UUID in production, a
    /// seed-derived id in the simulator).
    OrderId
);
string_id!(
    /// A player account, owned by the User service.
    UserId
);
string_id!(
    /// A purchasable item, owned by the Item service (stock) and the Order
    /// service's catalog (name and price).
    ItemId
);

/// The stable identity of one event: equal for every emission of the same
/// logical event, different for any two different events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

/// Namespace of all event ids (a fixed random UUID; changing it changes
/// every event id, so it never changes).
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5f1c_2a7e_9b3d_4c61_8e0f_a4d2_7b19_c3e8);

impl EventId {
    /// Derives the id from what makes the event unique: the order, the event
    /// type, the emitting service and, for an emitter that sends the same type
    /// several times for one order (Notification), a qualifier.
    pub fn derive(order: &OrderId, event_type: &str, emitter: &str, qualifier: &str) -> Self {
        let name = format!("{order}|{event_type}|{emitter}|{qualifier}");
        EventId(Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes()))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_what_cannot_be_a_key() {
        assert_eq!(UserId::parse(""), Err(IdError::Empty));
        assert_eq!(UserId::parse("a b"), Err(IdError::BadCharacter(' ')));
        assert_eq!(UserId::parse("x".repeat(65)), Err(IdError::TooLong(65)));
        assert!(UserId::parse("user-1:eu.west_2").is_ok());
    }

    #[test]
    fn event_id_depends_on_every_part() {
        let o = OrderId::parse("o1").unwrap();
        let base = EventId::derive(&o, "ORDER_CREATED", "Order", "");
        assert_eq!(base, EventId::derive(&o, "ORDER_CREATED", "Order", ""));
        let other = OrderId::parse("o2").unwrap();
        assert_ne!(base, EventId::derive(&other, "ORDER_CREATED", "Order", ""));
        assert_ne!(base, EventId::derive(&o, "ORDER_FAILED", "Order", ""));
        assert_ne!(base, EventId::derive(&o, "ORDER_CREATED", "User", ""));
        assert_ne!(base, EventId::derive(&o, "ORDER_CREATED", "Order", "x"));
    }
}
