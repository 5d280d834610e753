//! Layer 3: the production adapters of the runtime's ports.
//!
//! - [`postgres`]: the [`Store`](crate::runtime::Store) on PostgreSQL (sqlx),
//!   one schema per service, with the migrations of `migrations/`.
//! - [`redis`]: the [`Bus`](crate::runtime::Bus) on Redis Streams, one
//!   stream and one consumer group per subscribing service.
//!
//! **Architecture Invariant:** no saga rule lives here. An adapter maps the
//! ports' semantics (locks, dedupe, at-least-once delivery) onto a real
//! system and nothing more; the in-memory adapters define the semantics and
//! `tests/store_conformance.rs` holds both to the same tests.

pub mod postgres;
pub mod redis;
