//! The floor of a seed's wall time under turmoil: a fixed number of hosts
//! and steps (default 14 hosts, 1270 steps of 10 ms, a heavy seed with one
//! process per service replica) with software that does nothing
//! (`purchase_saga_sim::floor`).
//!
//!     cargo run --release -p purchase-saga-sim --example turmoil_floor -- [HOSTS] [POLL_MS] [TASKS] [STEPS]
//!
//! Each host runs TASKS loops that sleep POLL_MS (default 0: one task that
//! never wakes). `saga-sim bench` runs the same floor for the exact hosts
//! and steps of the seeds it simulated; BENCHMARKS.md compares them.

use std::time::{Duration, Instant};

use purchase_saga_sim::floor::{floor_seed, IdleSoftware, SeedShape};
use purchase_saga_sim::SimSettings;

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let hosts = arg(1, 14);
    let poll_ms = arg(2, 0);
    let tasks = arg(3, 1);
    let steps = arg(4, 1270);
    let seeds = 50;
    let shape = SeedShape {
        hosts: hosts as usize,
        steps,
        tick: Duration::from_millis(SimSettings::default().tick_ms),
    };
    let software = IdleSoftware {
        tasks: u32::try_from(tasks).expect("tasks fit u32"),
        poll: (poll_ms > 0).then(|| Duration::from_millis(poll_ms)),
    };
    let started = Instant::now();
    for seed in 0..seeds {
        floor_seed(shape, software, seed);
    }
    let per_seed = started.elapsed().as_secs_f64() * 1000.0 / seeds as f64;
    println!(
        "{hosts} hosts, {tasks} task(s) each, polling every {poll_ms} ms (0: never): {per_seed:.1} ms per seed of {steps} steps ({:.2} us per host-step)",
        per_seed * 1000.0 / (steps as f64 * hosts.max(1) as f64)
    );
}
