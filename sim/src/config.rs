//! The library's runtime knobs as the simulator sets them
//! ([`runtime_config`]): scaled down from production so that a seed runs
//! every re-drive round and prune pass in a few simulated seconds. The run
//! (`run.rs`), the store's fault layer (`store.rs`) and torture read them.

use std::time::Duration;

use purchase_saga::domain::DurationMs;
use purchase_saga::runtime::{Dispatch, Retention, RuntimeConfig};

use crate::faults::FaultPlan;

/// Who publishes the events of a seed's steps: the committing task (send
/// on commit, production's default) in three seeds of four, only the relay
/// (the benchmark's control, with the relays woken by commits) in the
/// fourth, so both paths and their crash points run in every sweep. Drawn
/// from the seed alone, so a corpus entry keeps its mode.
pub fn dispatch_for(seed: u64) -> Dispatch {
    if seed % 4 == 3 {
        Dispatch::Relay
    } else {
        Dispatch::Commit
    }
}

/// The runtime's knobs in the simulator: small batches, quick polls, the
/// plan's deadline, re-drive after 2 s, a relay's claim held 2 s.
///
/// The lease is scaled like the re-drive (production: 30 s lease, 60 s
/// re-drive). At production's 30 s, a relay that crashed holding a claim
/// kept its entries from every relay for 30 s of simulated time, and a run
/// waited that long for them after the faults healed: most of a heavy
/// seed's simulated time, for nothing the checks look at. A pass of the
/// simulator's relay (8 entries, a 500 ms bus timeout that releases the
/// rest) stays well under 2 s.
pub fn runtime_config(plan: &FaultPlan) -> RuntimeConfig {
    let mut config = RuntimeConfig {
        batch_size: 8,
        deliveries_max: 10,
        conflict_retries_max: 8,
        conflict_backoff: Duration::from_millis(5),
        idle_poll: Duration::from_millis(50),
        error_backoff: Duration::from_millis(200),
        saga_deadline: DurationMs(plan.saga_deadline_ms),
        prune_interval: Duration::from_millis(PRUNE_INTERVAL_MS),
        // Production holds a claim for 3 s, far less than its first
        // re-drive round (60 s); here 1 s of 2 s. A relay whose mark failed
        // (store unavailable, crash after publish) must not sit out the
        // rounds under its lease.
        relay_lease: Duration::from_millis(1_000),
        ..RuntimeConfig::default()
    };
    config.redrive.after = DurationMs(2_000);
    // Production's rounds and retention scaled to a seed: the rounds of
    // 2, 6, 14, 22 and 30 s (below) leave every event committed before
    // healing (at most 15 s) a round after it; the inbox keeps an id past
    // the last round plus every redelivery of it (10 deliveries, 1.5 s
    // visibility), so the pruners delete during a lingering seed and a
    // deleted id can no longer come back.
    config.redrive.horizon = DurationMs(32_000);
    config.retention = Retention {
        outbox: DurationMs(32_000),
        inbox: DurationMs(60_000),
        batch: 64,
    };
    assert!(
        config.retention.inbox.0 > config.redrive.horizon.0 + i64::from(config.deliveries_max) * 1_500,
        "the inbox must outlive every republish and redelivery"
    );
    // Rounds at 2, 6 and 14 s, then (re-drive has no last round) every
    // 8 s until the 32 s horizon: 22 and 30 s. A seed thus runs the
    // repeating rounds that production reaches after its doubling ones.
    config.redrive.republish_max = 3;
    config
}

/// Period of each replica's prune pass in the simulator.
pub const PRUNE_INTERVAL_MS: u64 = 2_000;
