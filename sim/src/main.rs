//! `saga-sim`: seed sweeps and replays of the deterministic simulator.
//!
//! - `saga-sim run --seeds A..B [--faults P] [--orders N] [--jobs J]`
//! - `saga-sim replay --seed N [--faults P] [--orders N] [--trace] [--mermaid FILE]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use purchase_saga_sim::summary::Summary;
use purchase_saga_sim::{input_from_seed, mermaid, run, Profile, SimSettings};

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
    },
    /// Runs one seed and prints its trace hash and violations.
    Replay {
        #[arg(long)]
        seed: u64,
        #[arg(long, value_enum, default_value = "heavy")]
        faults: Profile,
        #[arg(long, default_value_t = 20)]
        orders: usize,
        /// Print the trace, one line per delivery, publish, fault and crash.
        #[arg(long)]
        trace: bool,
        /// Write a Mermaid sequence diagram of the run to this file.
        #[arg(long)]
        mermaid: Option<PathBuf>,
    },
}

fn parse_range(raw: &str) -> Result<(u64, u64), String> {
    let (a, b) = raw.split_once("..").ok_or_else(|| format!("{raw:?} is not A..B"))?;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = SimSettings::default();
    match cli.command {
        Command::Run {
            seeds,
            faults,
            orders,
            jobs,
            no_coverage,
        } => {
            let (a, b) = match parse_range(&seeds) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("--seeds: {e}");
                    return ExitCode::from(2);
                }
            };
            let started = Instant::now();
            let bar = ProgressBar::new(b - a);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} seeds {per_sec} eta {eta} {msg}")
                    .expect("valid template"),
            );
            let next = Arc::new(AtomicU64::new(a));
            let (tx, rx) = mpsc::channel();
            let workers: Vec<_> = (0..jobs.max(1))
                .map(|_| {
                    let (next, tx) = (next.clone(), tx.clone());
                    std::thread::spawn(move || loop {
                        let seed = next.fetch_add(1, Ordering::SeqCst);
                        if seed >= b {
                            return;
                        }
                        let outcome = run(&input_from_seed(seed, faults, orders, &settings), &settings);
                        if tx.send(outcome).is_err() {
                            return;
                        }
                    })
                })
                .collect();
            drop(tx);
            let mut outcomes: Vec<_> = Vec::new();
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
            let mut summary = Summary::default();
            for o in &outcomes {
                summary.add(o);
            }
            println!("saga-sim run --seeds {a}..{b} --faults {} --orders {orders}", faults.name());
            print!("{}", summary.render(started.elapsed()));
            let mut failed = false;
            if !summary.failing.is_empty() {
                failed = true;
                let commit = commit();
                println!("\nFAILING SEEDS (commit {commit}):");
                for (seed, violations) in &summary.failing {
                    println!("  seed {seed}:");
                    for v in violations.iter().take(5) {
                        println!("    {v}");
                    }
                    println!(
                        "    replay (at commit {commit}): cargo run -p purchase-saga-sim --release -- replay --seed {seed} --faults {} --orders {orders} --trace",
                        faults.name()
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
        } => {
            let input = input_from_seed(seed, faults, orders, &settings);
            let outcome = run(&input, &settings);
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
            println!("seed {seed} faults {} orders {orders}", faults.name());
            println!("paths: {:?}", outcome.paths);
            println!(
                "faults: {:?}",
                outcome.faults.iter().map(|(k, n)| (k.name(), *n)).collect::<Vec<_>>()
            );
            println!("simulated {}ms, wall {:.3}s", outcome.simulated_ms, outcome.wall.as_secs_f64());
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
    }
}
