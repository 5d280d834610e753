//! purchase-saga-sim: the deterministic simulator of the purchase saga.
//!
//! It runs the library's own runtime loops (`consumer::run`, `relay::run`,
//! `sweeper::run`) on turmoil hosts, one per service replica, over a
//! simulated store (the in-memory store under a latency and fault layer) and
//! a Redis-Streams-like broker host reached over turmoil's network. One seed
//! fixes the scenario, the fault plan and every random choice.
//!
//! **Architecture Invariant:** the simulator holds no saga rule and names no
//! saga event type. It learns outcomes from the domain's rows (`OrderStatus`,
//! `FailedStep`), correctness from `domain::invariants`, routing from the
//! domain's subscription table.
//!
//! # Layout
//! - [`faults`]: fault kinds, profiles and the [`faults::FaultPlan`] (data).
//! - [`world`]: state shared by hosts and driver: rng, counters, trace.
//! - [`clock`]: the runtime's clock over turmoil's simulated time.
//! - [`store`]: `SimStore`, latency, aborts and crash points over `MemoryStore`.
//! - [`broker`]: the broker's streams and its turmoil host; [`bus`]: the
//!   `SimBus` client and the wire protocol.
//! - [`config`]: the runtime's knobs in the simulator; [`host_env`]: the
//!   `Env` of one host's software (store, bus, clock, observers).
//! - [`client`]: the client host, its requests, its durable request log
//!   and the "one request, one order" check; [`host_crashes`]: the
//!   driver's broker-loss and client crashes.
//! - [`finding`]: violations of invariants and of the simulator's own checks.
//! - [`observer`]: trace lines and safety checks after every commit.
//! - [`run`]: builds the turmoil sim for one input and drives it to quiescence.
//! - [`quiescence`]: what is still pending; quiescence proven without
//!   waiting out the re-drive rounds.
//! - [`paths`]: what each order's saga came to; [`summary`], [`mermaid`]:
//!   reports; [`mutants`]: running with a planted bug.
//! - [`floor`]: turmoil stepping a seed's hosts with idle software, the
//!   floor `saga-sim bench` measures beside the seeds.
//! - [`sweep`]: many seeds on a thread pool; [`corpus`]: the runs kept in
//!   `sim/corpus/` with their drawn inputs; [`corpus_replay`]: their replay
//!   before every sweep and `corpus repin`; [`hunt`]: unattended sweeps
//!   that grow the corpus.
//! - [`mutant_hunt`]: `saga-sim mutants`, each planted bug on the engines
//!   that can see it; [`catch`]: which findings count as a catch.
//! - [`torture`]: the same workloads and plans against the production
//!   adapters on real PostgreSQL and Redis (`saga-sim torture`).
//! - [`progress`]: how long runs show how far they are; [`cli`]: the
//!   `saga-sim` command line, one module per command.

pub mod broker;
pub mod bus;
pub mod catch;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod corpus;
pub mod corpus_replay;
pub mod faults;
pub mod finding;
pub mod floor;
pub mod host_crashes;
pub mod host_env;
pub mod hunt;
pub mod mermaid;
pub mod mutant_hunt;
pub mod mutants;
pub mod observer;
pub mod paths;
pub mod progress;
pub mod quiescence;
pub mod run;
pub mod store;
pub mod summary;
pub mod sweep;
pub mod topology;
pub mod torture;
pub mod world;

pub use faults::{FaultKind, FaultPlan, Profile};
pub use run::{input_from_seed, run, SimInput, SimOutcome, SimSettings};
