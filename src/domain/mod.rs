//! Layer 1: the saga itself, pure.
//!
//! **Architecture Invariant:** nothing here knows about tokio, Postgres,
//! Redis, turmoil or a clock. Time is an argument, randomness is a seed, and
//! every function returns values instead of performing effects; the runtime
//! (layer 2) and the adapters (layer 3) do the rest. `tests/architecture.rs`
//! holds this module to that.

pub mod event;
pub mod gateway;
pub mod ids;
pub mod invariants;
pub mod participants;
pub mod rows;
pub mod service;
pub mod time;

pub use event::{DecodeError, Event, EventType, FailedStep, NotificationKind, Payload};
pub use ids::{EventId, ItemId, OrderId, UserId};
pub use rows::{Row, RowKey, Rows};
pub use service::Service;
pub use time::{DurationMs, Timestamp};
