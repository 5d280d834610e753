//! `saga-sim`: seed sweeps, replays, hunts and planted-bug hunts of the
//! deterministic simulator. The command line is the library's `cli`
//! module, one file per command (`saga-sim --help`).

use std::process::ExitCode;

/// A seed allocates and frees many small objects (turmoil's messages and
/// tasks, trace lines, rows); mimalloc serves them faster than the system
/// allocator (BENCHMARKS.md, "The simulator"). Allocation order and
/// addresses decide nothing in a run, so the trace is the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    purchase_saga_sim::cli::main()
}
