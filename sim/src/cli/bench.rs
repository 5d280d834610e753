//! `saga-sim bench`: the simulator's speed beside turmoil's floor and the
//! in-memory runtime, in one run (BENCHMARKS.md, "The simulator").

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use purchase_saga::runtime::memory::{Scheduler, SchedulerReport};

use super::args::{Jobs, Workload};
use super::{bad_input, passed};
use crate::floor::{floor_seed, IdleSoftware, SeedShape};
use crate::sweep::{par_seeds, sweep, Options};

#[derive(Args)]
pub struct BenchArgs {
    /// Seeds `0..N` on each engine.
    #[arg(long, default_value_t = 500)]
    pub seeds: u64,
    #[command(flatten)]
    pub workload: Workload,
    #[command(flatten)]
    pub jobs: Jobs,
}

pub fn run(args: BenchArgs) -> ExitCode {
    if args.seeds == 0 {
        return bad_input("--seeds: must be at least 1");
    }
    let options = Options {
        faults: args.workload.faults,
        orders: args.workload.orders,
        mutant: None,
        without: None,
    };
    bench(args.seeds, args.jobs.jobs, &options)
}

/// `saga-sim bench`: the same scenarios on the simulator, then turmoil's
/// floor for each seed's own hosts and steps (`floor::floor_seed`: idle
/// software), then the in-memory runtime (seeded scheduler: random order
/// and duplicates, no network, no hosts), in one run, so the ratios are
/// this machine's now: how much of a seed is turmoil stepping and how much
/// the software, and the simulator's overhead over the in-memory runtime.
/// Returns 1 on any violation.
fn bench(seeds: u64, jobs: usize, options: &Options) -> ExitCode {
    let (sim, sim_cost) = Cost::of(|| sweep(0, seeds, jobs, options));
    // The floor: the same hosts and steps, seed by seed, with idle software.
    let shapes: Arc<Vec<SeedShape>> = Arc::new(
        sim.iter()
            .map(|o| o.shape.expect("a simulated seed has a shape"))
            .collect(),
    );
    let (floor, floor_cost) = {
        let shapes = shapes.clone();
        Cost::of(|| {
            par_seeds(
                0,
                seeds,
                jobs,
                Arc::new(move |seed| floor_seed(shapes[seed as usize], IdleSoftware::NEVER_WAKES, seed)),
                |_| false,
            )
        })
    };
    let inputs = {
        let options = options.clone();
        Arc::new(move |seed| options.input(seed).scenario)
    };
    let (memory, memory_cost) = Cost::of(|| {
        par_seeds(
            0,
            seeds,
            jobs,
            Arc::new(move |seed| Scheduler::run_scenario(&inputs(seed), seed, 150)),
            |r: &SchedulerReport| !r.violations.is_empty(),
        )
    });
    let sim_simulated: u64 = sim.iter().map(|o| o.simulated_ms).sum();
    let floor_simulated: u128 = floor.iter().map(|(_, d)| d.as_millis()).sum();
    let memory_simulated: i64 = memory.iter().map(|(_, r)| r.simulated.0).sum();
    let violations = sim.iter().filter(|o| !o.violations.is_empty()).count()
        + memory.iter().filter(|(_, r)| !r.violations.is_empty()).count();
    let host_steps: u64 = shapes.iter().map(|s| s.hosts as u64 * s.steps).sum();
    say!(
        "saga-sim bench --seeds {seeds} --faults {} --orders {} --jobs {jobs}",
        options.faults.name(),
        options.orders
    );
    say!(
        "{:<46} {:>6} {:>8} {:>8} {:>9} {:>10} {:>14}",
        "engine",
        "seeds",
        "wall s",
        "seeds/s",
        "CPU s",
        "CPU ms/seed",
        "simulated/wall"
    );
    let row = |name: &str, cost: &Cost, simulated_ms: f64| {
        say!(
            "{name:<46} {seeds:>6} {:>8.2} {:>8.1} {:>9.2} {:>10.1} {:>13.1}x",
            cost.wall_s,
            seeds as f64 / cost.wall_s.max(1e-9),
            cost.cpu_s,
            cost.cpu_s * 1000.0 / seeds as f64,
            simulated_ms / 1000.0 / cost.wall_s.max(1e-9)
        )
    };
    row(
        "turmoil simulator (drawn topologies)",
        &sim_cost,
        sim_simulated as f64,
    );
    row(
        "turmoil floor (same hosts and steps, idle)",
        &floor_cost,
        floor_simulated as f64,
    );
    row(
        "in-memory runtime (seeded order)",
        &memory_cost,
        memory_simulated as f64,
    );
    say!(
        "seeds' shape: {:.1} hosts and {:.0} steps per seed on average ({:.2} us of floor CPU per host-step)",
        shapes.iter().map(|s| s.hosts as f64).sum::<f64>() / seeds as f64,
        shapes.iter().map(|s| s.steps as f64).sum::<f64>() / seeds as f64,
        floor_cost.cpu_s * 1e6 / host_steps.max(1) as f64
    );
    say!(
        "the floor is {:.0}% of the simulator's CPU; the software above it {:.1} ms per seed",
        100.0 * floor_cost.cpu_s / sim_cost.cpu_s.max(1e-9),
        (sim_cost.cpu_s - floor_cost.cpu_s) * 1000.0 / seeds as f64
    );
    say!(
        "simulator overhead: {:.1}x the in-memory runtime's wall time per seed",
        sim_cost.wall_s / memory_cost.wall_s.max(1e-9)
    );
    say!(
        "10,000 seeds on the simulator at this rate: {:.0} s",
        10_000.0 * sim_cost.wall_s / seeds as f64
    );
    say!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    say!("violations: {violations}");
    passed(violations == 0)
}

/// Wall and CPU seconds of one engine's part of `saga-sim bench`.
struct Cost {
    wall_s: f64,
    cpu_s: f64,
}

impl Cost {
    /// Runs `work` and returns what it produced and what it cost.
    fn of<T>(work: impl FnOnce() -> T) -> (T, Cost) {
        let (started, cpu_start) = (Instant::now(), process_cpu_seconds());
        let out = work();
        let cost = Cost {
            wall_s: started.elapsed().as_secs_f64(),
            cpu_s: process_cpu_seconds() - cpu_start,
        };
        (out, cost)
    }
}

/// User plus system CPU seconds of this process, all threads
/// (`/proc/self/stat`, in clock ticks of 1/100 s, Linux's USER_HZ); 0 where
/// there is no /proc.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14 and stime 15.
    let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
