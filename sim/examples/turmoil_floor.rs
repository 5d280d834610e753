//! The floor of a seed's wall time under turmoil: the same number of hosts
//! and steps as a standard heavy seed (14 hosts, 1270 steps of 10 ms, the
//! mean simulated time of one), with software that does nothing.
//!
//!     cargo run --release -p purchase-saga-sim --example turmoil_floor -- [HOSTS] [POLL_MS] [TASKS]
//!
//! Each host runs TASKS loops that sleep POLL_MS (default 0: one task that
//! never wakes). BENCHMARKS.md, "The simulator", compares it with a run.

use std::time::{Duration, Instant};

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
    let (seeds, steps) = (50, 1270);
    let started = Instant::now();
    for seed in 0..seeds {
        let mut sim = turmoil::Builder::new()
            .tick_duration(Duration::from_millis(10))
            .simulation_duration(Duration::from_secs(3600))
            .rng_seed(seed)
            .build();
        for i in 0..hosts {
            sim.host(format!("h{i}"), move || async move {
                for _ in 0..tasks {
                    tokio::task::spawn_local(async move {
                        if poll_ms == 0 {
                            std::future::pending::<()>().await;
                        }
                        loop {
                            tokio::time::sleep(Duration::from_millis(poll_ms)).await;
                        }
                    });
                }
                std::future::pending::<()>().await;
                Ok(())
            });
        }
        for _ in 0..steps {
            sim.step().expect("idle hosts do not fail");
        }
    }
    let per_seed = started.elapsed().as_secs_f64() * 1000.0 / seeds as f64;
    println!(
        "{hosts} hosts, {tasks} task(s) each, polling every {poll_ms} ms (0: never): {per_seed:.1} ms per seed of {steps} steps ({:.2} us per host-step)",
        per_seed * 1000.0 / (steps as f64 * hosts.max(1) as f64)
    );
}
