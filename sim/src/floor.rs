//! The floor under a seed's cost: turmoil stepping the same hosts the same
//! number of steps with software that never wakes.
//!
//! A seed's CPU time is turmoil's own per-step work (entering each host's
//! tokio runtime, advancing its paused clock, scanning the links) plus
//! whatever the hosts' software does. [`floor_seed`] measures the first
//! part alone for one seed's shape ([`SeedShape`]: its hosts and its
//! steps), so `saga-sim bench` can run the floor of exactly the seeds it
//! just simulated, in the same run, and say how much of the simulator's time
//! is the saga and how much is the stepping (issue 15's "measured beside the
//! turmoil floor"). `examples/turmoil_floor.rs` runs it for a fixed shape.

use std::time::Duration;

/// What fixes a seed's stepping cost: the turmoil hosts it ran (processes,
/// broker, client), the steps it took and the tick of each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedShape {
    pub hosts: usize,
    pub steps: u64,
    pub tick: Duration,
}

/// What each floor host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleSoftware {
    /// Tasks per host.
    pub tasks: u32,
    /// Each task sleeps this long in a loop; `None`: it never wakes.
    pub poll: Option<Duration>,
}

impl IdleSoftware {
    /// One task per host that never wakes: the pure cost of stepping.
    pub const NEVER_WAKES: IdleSoftware = IdleSoftware { tasks: 1, poll: None };
}

/// Steps a turmoil simulation of `shape.hosts` hosts running `software`
/// for `shape.steps` steps of `shape.tick` (the caller times it). Returns
/// the simulated time covered.
pub fn floor_seed(shape: SeedShape, software: IdleSoftware, seed: u64) -> Duration {
    let mut sim = turmoil::Builder::new()
        .tick_duration(shape.tick)
        .simulation_duration(Duration::from_secs(24 * 3600))
        .rng_seed(seed)
        .build();
    for i in 0..shape.hosts {
        sim.host(format!("h{i}"), move || async move {
            for _ in 0..software.tasks {
                tokio::task::spawn_local(async move {
                    match software.poll {
                        None => std::future::pending::<()>().await,
                        Some(poll) => loop {
                            tokio::time::sleep(poll).await;
                        },
                    }
                });
            }
            std::future::pending::<()>().await;
            Ok(())
        });
    }
    for _ in 0..shape.steps {
        sim.step().expect("idle hosts do not fail");
    }
    sim.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_seed_covers_its_steps_of_simulated_time() {
        let tick = Duration::from_millis(10);
        let shape = SeedShape {
            hosts: 3,
            steps: 25,
            tick,
        };
        assert_eq!(floor_seed(shape, IdleSoftware::NEVER_WAKES, 7), tick * 25);
        let polling = IdleSoftware {
            tasks: 2,
            poll: Some(Duration::from_millis(50)),
        };
        assert_eq!(floor_seed(shape, polling, 7), tick * 25);
    }
}
