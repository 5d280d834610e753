//! `saga-sim`: seed sweeps, replays and planted-bug hunts of the
//! deterministic simulator.
//!
//! - `saga-sim run --seeds A..B [--faults P] [--orders N] [--jobs J] [--mutant M]`
//! - `saga-sim replay --seed N [--faults P] [--orders N] [--trace] [--mermaid FILE] [--mutant M]`
//! - `saga-sim mutants [--seeds N] [--faults P] [--jobs J]` (`--features mutants`)

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use purchase_saga_sim::summary::Summary;
use purchase_saga_sim::{input_from_seed, mermaid, mutants, run, Profile, SimOutcome, SimSettings};

#[derive(Parser)]
#[command(name = "saga-sim", about = "Deterministic simulation of the purchase saga")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a range of seeds and prints a summary; exits 1 on any violation
    /// or if a saga path or fault kind never happened.
    Run {
        /// A half-open range `A..B`.
        #[arg(long)]
        seeds: String,
        #[arg(long, value_enum, default_value = "heavy")]
        faults: Profile,
        #[arg(long, default_value_t = 20)]
        orders: usize,
        /// OS threads, each running whole seeds on its own.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Do not fail when a path or fault kind never happened.
        #[arg(long)]
        no_coverage: bool,
        /// Switch on a planted bug (needs `--features mutants`).
        #[arg(long)]
        mutant: Option<String>,
    },
    /// Runs one seed and prints its trace hash and violations.
    Replay {
        #[arg(long)]
        seed: u64,
        #[arg(long, value_enum, default_value = "heavy")]
        faults: Profile,
        #[arg(long, default_value_t = 20)]
        orders: usize,
        /// Print the plan and the trace, one line per delivery, publish,
        /// fault and crash.
        #[arg(long)]
        trace: bool,
        /// Write a Mermaid sequence diagram of the run to this file.
        #[arg(long)]
        mermaid: Option<PathBuf>,
        #[arg(long)]
        mutant: Option<String>,
    },
    /// For each planted bug, runs seeds until one violates an invariant;
    /// exits 1 if any mutant survives (needs `--features mutants`).
    Mutants {
        /// Seeds tried per mutant at most.
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        #[arg(long, value_enum, default_value = "heavy")]
        faults: Profile,
        #[arg(long, default_value_t = 20)]
        orders: usize,
        #[arg(long, default_value_t = 1)]
        jobs: usize,
    },
}

fn parse_range(raw: &str) -> Result<(u64, u64), String> {
    let (a, b) = raw
        .split_once("..")
        .ok_or_else(|| format!("{raw:?} is not A..B"))?;
    let a: u64 = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u64 = b.parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a >= b {
        return Err(format!("empty range {raw}"));
    }
    Ok((a, b))
}

/// The commit the binary runs at, for replay commands (`-dirty` when the
/// work tree has uncommitted changes; `unknown` outside git).
fn commit() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The command that replays `seed`.
fn replay_command(seed: u64, faults: Profile, orders: usize, mutant: Option<&str>) -> String {
    let (features, flag) = match mutant {
        Some(m) => (" --features mutants", format!(" --mutant {m}")),
        None => ("", String::new()),
    };
    format!(
        "cargo run -p purchase-saga-sim --release{features} -- replay --seed {seed} --faults {} --orders {orders}{flag} --trace",
        faults.name()
    )
}

/// Runs one seed with the (validated) mutant.
fn run_seed(seed: u64, faults: Profile, orders: usize, mutant: Option<&str>) -> SimOutcome {
    let settings = SimSettings::default();
    let input = input_from_seed(seed, faults, orders, &settings);
    mutants::with(mutant, || run(&input, &settings)).expect("the mutant name was validated")
}

/// Runs seeds `a..b` on `jobs` threads; outcomes in seed order.
fn sweep(
    a: u64,
    b: u64,
    faults: Profile,
    orders: usize,
    jobs: usize,
    mutant: Option<String>,
) -> Vec<SimOutcome> {
    let bar = ProgressBar::new(b - a);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds {per_sec} eta {eta} {msg}")
            .expect("valid template"),
    );
    let next = Arc::new(AtomicU64::new(a));
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let (next, tx, mutant) = (next.clone(), tx.clone(), mutant.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= b
                    || tx
                        .send(run_seed(seed, faults, orders, mutant.as_deref()))
                        .is_err()
                {
                    return;
                }
            })
        })
        .collect();
    drop(tx);
    let mut outcomes = Vec::new();
    for o in rx {
        if !o.violations.is_empty() {
            bar.set_message(format!("seed {} FAILED", o.seed));
        }
        bar.inc(1);
        outcomes.push(o);
    }
    for w in workers {
        w.join().expect("a worker thread panicked");
    }
    bar.finish_and_clear();
    outcomes.sort_by_key(|o| o.seed);
    outcomes
}

fn check_mutant(mutant: Option<&str>) -> Result<(), ExitCode> {
    match mutants::with(mutant, || ()) {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("--mutant: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            seeds,
            faults,
            orders,
            jobs,
            no_coverage,
            mutant,
        } => {
            let (a, b) = match parse_range(&seeds) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("--seeds: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(code) = check_mutant(mutant.as_deref()) {
                return code;
            }
            let started = Instant::now();
            let outcomes = sweep(a, b, faults, orders, jobs, mutant.clone());
            let mut summary = Summary::default();
            for o in &outcomes {
                summary.add(o);
            }
            let with = mutant
                .as_deref()
                .map_or(String::new(), |m| format!(" --mutant {m}"));
            println!(
                "saga-sim run --seeds {a}..{b} --faults {} --orders {orders}{with}",
                faults.name()
            );
            print!("{}", summary.render(started.elapsed()));
            let mut failed = false;
            if !summary.failing.is_empty() {
                failed = true;
                println!("\nFAILING SEEDS (commit {}):", commit());
                for (seed, violations) in &summary.failing {
                    println!("  seed {seed}:");
                    for v in violations.iter().take(5) {
                        println!("    {v}");
                    }
                    println!(
                        "    replay: {}",
                        replay_command(*seed, faults, orders, mutant.as_deref())
                    );
                }
            }
            let missing = summary.never_happened(faults);
            if !missing.is_empty() && !no_coverage {
                failed = true;
                println!("\nNEVER HAPPENED (coverage): {}", missing.join(", "));
            }
            if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Replay {
            seed,
            faults,
            orders,
            trace,
            mermaid: diagram,
            mutant,
        } => {
            if let Err(code) = check_mutant(mutant.as_deref()) {
                return code;
            }
            let settings = SimSettings::default();
            let input = input_from_seed(seed, faults, orders, &settings);
            let outcome = run_seed(seed, faults, orders, mutant.as_deref());
            if trace {
                println!("plan: {:?}", input.plan);
                for line in &outcome.lines {
                    println!("{line}");
                }
            }
            if let Some(path) = diagram {
                if let Err(e) = std::fs::write(&path, mermaid::render(&outcome.entries)) {
                    eprintln!("cannot write {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
            let with = mutant
                .as_deref()
                .map_or(String::new(), |m| format!(" mutant {m}"));
            println!(
                "seed {seed} faults {} orders {orders}{with} (commit {})",
                faults.name(),
                commit()
            );
            println!("paths: {:?}", outcome.paths);
            println!(
                "faults: {:?}",
                outcome
                    .faults
                    .iter()
                    .map(|(k, n)| (k.name(), *n))
                    .collect::<Vec<_>>()
            );
            println!(
                "simulated {}ms, wall {:.3}s",
                outcome.simulated_ms,
                outcome.wall.as_secs_f64()
            );
            println!("trace-hash: {:016x}", outcome.hash);
            println!("violations: {}", outcome.violations.len());
            for v in &outcome.violations {
                println!("  {v}");
            }
            if outcome.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Mutants {
            seeds,
            faults,
            orders,
            jobs,
        } => hunt_mutants(seeds, faults, orders, jobs),
    }
}

/// One row of the mutants table.
struct Hunt {
    mutant: &'static str,
    caught: Option<(u64, String)>,
    tried: u64,
}

fn hunt_mutants(budget: u64, faults: Profile, orders: usize, jobs: usize) -> ExitCode {
    let names = mutants::names();
    if names.is_empty() {
        eprintln!("saga-sim was built without `--features mutants`: no planted bug to hunt");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let names = Arc::new(names);
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let (next, names, tx) = (next.clone(), names.clone(), tx.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&mutant) = names.get(i) else { return };
                let mut hunt = Hunt {
                    mutant,
                    caught: None,
                    tried: 0,
                };
                for seed in 0..budget {
                    hunt.tried += 1;
                    let o = run_seed(seed, faults, orders, Some(mutant));
                    if let Some(v) = o.violations.first() {
                        hunt.caught = Some((seed, v.check.clone()));
                        break;
                    }
                }
                eprintln!(
                    "{mutant}: {}",
                    if hunt.caught.is_some() {
                        "caught"
                    } else {
                        "SURVIVED"
                    }
                );
                if tx.send((i, hunt)).is_err() {
                    return;
                }
            })
        })
        .collect();
    drop(tx);
    let mut rows: Vec<(usize, Hunt)> = rx.into_iter().collect();
    for w in workers {
        w.join().expect("a worker thread panicked");
    }
    rows.sort_by_key(|(i, _)| *i);
    println!(
        "saga-sim mutants --seeds {budget} --faults {} --orders {orders} (commit {})",
        faults.name(),
        commit()
    );
    println!(
        "{:<26} {:<7} {:>6} {:>6}  {:<26} replay",
        "mutant", "caught", "seed", "tried", "invariant"
    );
    let mut survivors = 0;
    for (_, h) in &rows {
        match &h.caught {
            Some((seed, invariant)) => println!(
                "{:<26} {:<7} {:>6} {:>6}  {:<26} {}",
                h.mutant,
                "yes",
                seed,
                h.tried,
                invariant,
                replay_command(*seed, faults, orders, Some(h.mutant))
            ),
            None => {
                survivors += 1;
                println!(
                    "{:<26} {:<7} {:>6} {:>6}  {:<26} -",
                    h.mutant, "NO", "-", h.tried, "-"
                );
            }
        }
    }
    println!("wall time {:.1}s", started.elapsed().as_secs_f64());
    if survivors > 0 {
        println!("{survivors} mutant(s) survived");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
