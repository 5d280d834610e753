//! purchase-saga: the item-purchase saga of the founding document as a
//! choreography of six services over an at-least-once bus.
//!
//! # Layout
//! - [`domain`]: events, participants as pure state machines, invariants.
//! - [`adapters`]: PostgreSQL store and Redis Streams bus (production).
//! - [`runtime`]: the async driver shared by production and the simulator:
//!   consumer, outbox relay, deadline sweeper, retries, dead-lettering, over
//!   small store and bus traits; plus deterministic in-memory adapters.
//! - [`adapters`]: the HTTP API (and the Postgres store, Redis bus).
//! - [`cli`]: the `purchase-saga` binary's commands and process wiring.
//!
//! See `ARCHITECTURE.md` for the map and the rules between layers.

pub mod adapters;
pub mod cli;
pub mod domain;
#[cfg(feature = "mutants")]
pub mod mutants;
pub mod runtime;
pub mod workload;

/// `mutant!(Name)`: whether the planted bug `Name` is active. The constant
/// `false` unless built with the `mutants` feature.
#[cfg(feature = "mutants")]
#[macro_export]
macro_rules! mutant {
    ($name:ident) => {
        $crate::mutants::is($crate::mutants::Mutant::$name)
    };
}

/// `mutant!(Name)`: whether the planted bug `Name` is active. The constant
/// `false` unless built with the `mutants` feature.
#[cfg(not(feature = "mutants"))]
#[macro_export]
macro_rules! mutant {
    ($name:ident) => {
        false
    };
}
