//! Deterministic in-memory adapters: a store with Postgres's locking and
//! visibility rules, a bus with consumer-group semantics (the one model of
//! Redis Streams in `streams`, shared with the simulator's broker), and a seeded
//! scheduler that drives a whole saga without threads or sockets.
//!
//! **Architecture Invariant:** nothing here iterates a `HashMap`, reads a
//! clock or draws OS entropy; all order is `BTreeMap` order or the seed's.

pub mod bus;
pub mod harness;
pub mod scheduler;
pub mod store;
pub mod streams;

pub use bus::MemoryBus;
pub use harness::Harness;
pub use scheduler::{harness_config, Scheduler, SchedulerConfig, SchedulerReport};
pub use store::MemoryStore;
