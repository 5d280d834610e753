//! Layer 3: adapters from the runtime's ports to the world: the HTTP API
//! (axum) and, on the adapters branch, the Postgres store and the Redis
//! Streams bus.
//!
//! **Architecture Invariant:** adapters hold no saga rule. The HTTP API
//! validates input and calls `runtime::commands`; it never writes a row
//! itself.

pub mod http;
