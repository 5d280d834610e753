//! Layer 3: the production adapters of the runtime's ports, and the HTTP API.
//!
//! - [`postgres`]: the [`Store`](crate::runtime::Store) on PostgreSQL (sqlx),
//!   one schema per service, with the migrations of `migrations/`.
//! - [`redis`]: the [`Bus`](crate::runtime::Bus) on Redis Streams, one
//!   stream and one consumer group per subscribing service.
//! - [`http`]: the HTTP API (axum) over the runtime's `Env` and a read model.
//! - [`tokens`]: the API's bearer tokens (hashed; Postgres or memory).
//! - [`metrics`]: Prometheus metrics (an observer, scrape-time gauges, `/metrics`).
//! - [`coverage`]: per-statement run counters of the Postgres and Redis adapters.
//!
//! **Architecture Invariant:** no saga rule lives here. An adapter maps the
//! ports' semantics (locks, dedupe, at-least-once delivery) onto a real
//! system and nothing more; the in-memory adapters define the semantics and
//! `tests/store_conformance.rs` holds both to the same tests. The HTTP API
//! validates input and calls `runtime::commands`; it never writes a row
//! itself.

pub mod coverage;
pub mod http;
pub mod metrics;
pub mod postgres;
pub mod redis;
pub mod tokens;
