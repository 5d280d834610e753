//! `saga-sim`'s command line: the flags of each command and what it
//! prints, one module per command (as `src/cli/` does for
//! `purchase-saga`); the work itself is the library's (`sweep`, `hunt`,
//! `corpus_replay`, `mutant_hunt`, `torture`, ...).
//!
//! - [`run`]: `saga-sim run`: the corpus, then a range of seeds;
//! - [`replay`]: one seed, its trace and its Mermaid diagrams;
//! - [`hunt`]: unattended sweeps that grow the corpus;
//! - [`bench`]: the simulator's speed beside turmoil's floor and the
//!   in-memory runtime;
//! - [`mutants`]: every planted bug on the engines that can see it;
//! - [`corpus`]: `corpus replay` and `corpus repin`;
//! - [`torture`]: the scenarios on the production adapters;
//! - `completions`: a shell completion script (bash, zsh, fish, elvish,
//!   powershell), written by `purchase_saga::cli::completions`.
//!
//! Shared: [`args`] (the flags several commands take, with one default
//! each), [`out`] (stdout and stderr, a closed pipe ending the process
//! quietly), [`json`] (the `--json` documents, sim/README.md).
//!
//! Exit codes: 0 clean, 1 a finding (violation, coverage gap, survived
//! mutant, drifted corpus entry), 2 bad input or a missing server, 141 the
//! reader of stdout went away (`| head`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A line on stdout (`println!` without the panic on a closed pipe).
macro_rules! say {
    () => {
        $crate::cli::out::print("\n")
    };
    ($($arg:tt)*) => {
        $crate::cli::out::print(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// A line on stderr (`eprintln!` without the panic on a closed pipe).
macro_rules! tell {
    ($($arg:tt)*) => {
        $crate::cli::out::tell(&format!($($arg)*))
    };
}

pub mod args;
pub mod bench;
pub mod corpus;
pub mod hunt;
pub mod json;
pub mod mutants;
pub mod out;
pub mod replay;
pub mod run;
pub mod torture;

/// `saga-sim --version`: the package version and the commit it was built
/// from (`build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SAGA_SIM_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "saga-sim",
    version = VERSION,
    about = "Deterministic simulation of the purchase saga",
    after_help = "Exit codes: 0 clean; 1 a violation, coverage gap, survived mutant or drifted corpus entry; \
                  2 bad input or a missing server; 141 stdout closed by its reader (e.g. `| head`)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Replays the corpus, then runs a range of seeds and prints a summary;
    /// exits 1 on any violation or if a saga path or fault kind never
    /// happened.
    Run(run::RunArgs),
    /// Runs fresh seeds until the time is up, alternating heavy and swarm
    /// plans; keeps failing seeds, and the seeds that reached the rarest
    /// saga-path / fault-kinds combinations the corpus lacked, in the corpus.
    Hunt(hunt::HuntArgs),
    /// Runs one seed and prints its plan, paths, faults, trace hash and
    /// violations (and with --trace its trace, with --mermaid its diagrams).
    Replay(replay::ReplayArgs),
    /// Seeds/s, CPU and simulated/wall time of the simulator, beside
    /// turmoil's floor for the same hosts and steps (idle software) and the
    /// same scenarios on the in-memory runtime, in one run.
    Bench(bench::BenchArgs),
    /// For each planted bug, the simulator, torture and its differential
    /// test in turn until one catches it, each catch shown clean without
    /// the mutant; exits 1 if a mutant survives, is caught only on a seed
    /// that is not clean without it, or was not run (needs `--features
    /// mutants`).
    Mutants(mutants::MutantsArgs),
    /// The corpus: `replay` runs every entry from its stored inputs;
    /// `repin` re-runs entries and records their new trace hashes once they
    /// still do what they were kept for.
    Corpus(corpus::CorpusArgs),
    /// The simulator's scenarios and fault plans against the production
    /// adapters (PostgreSQL via DATABASE_URL, a private redis-server per
    /// seed unless --redis-url), plus faults only real servers have;
    /// exits 1 on any violation.
    Torture(torture::TortureArgs),
    /// Prints the shell completion script for every command and flag:
    /// `saga-sim completions bash > ~/.local/share/bash-completion/completions/saga-sim`
    /// (zsh, fish, elvish, powershell alike).
    Completions(purchase_saga::cli::completions::CompletionsArgs),
}

/// `saga-sim`'s entry point.
pub fn main() -> ExitCode {
    crate::progress::lines_off_terminal();
    match Cli::parse().command {
        Command::Run(args) => run::run(args),
        Command::Hunt(args) => hunt::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Mutants(args) => mutants::run(args),
        Command::Corpus(args) => corpus::run(args),
        Command::Torture(args) => torture::run(args),
        Command::Completions(args) => {
            use clap::CommandFactory;
            purchase_saga::cli::completions::write_script(args.shell, Cli::command(), "saga-sim")
                .unwrap_or_else(|e| {
                    tell!("saga-sim: {e}");
                    ExitCode::from(74)
                })
        }
    }
}

/// The exit code of a finished command: 0 when it passed, 1 otherwise.
pub fn passed(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Bad input: says so on stderr, exit code 2.
pub fn bad_input(what: &str) -> ExitCode {
    tell!("{what}");
    ExitCode::from(2)
}
