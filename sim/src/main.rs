//! `saga-sim`: seed sweeps, replays and planted-bug hunts of the
//! deterministic simulator.
//!
//! - `saga-sim run --seeds A..B [--faults P] [--orders N] [--jobs J] [--mutant M] [--no-corpus] [--record]`:
//!   replays the corpus (`sim/corpus/`), then the seeds
//! - `saga-sim hunt --minutes M [--start S] [--jobs J]`: unattended sweeps that grow the corpus
//! - `saga-sim replay --seed N [--faults P] [--orders N] [--trace] [--mermaid FILE] [--mutant M] [--record]`
//! - `saga-sim mutants [--seeds N] [--faults P] [--jobs J] [--engines sim,torture,differential]`
//!   (`--features mutants`; `mutant_hunt` module)
//! - `saga-sim corpus replay|repin`: the corpus from its stored inputs (`corpus_replay` module)
//! - `saga-sim bench [--seeds N] [--faults P] [--orders N] [--jobs J]`
//! - `saga-sim torture --seeds A..B [--faults P] [--jobs J] [--without KIND,..] [--redis-url URL]`:
//!   the same scenarios and plans on PostgreSQL and Redis (`torture` module)

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use purchase_saga::runtime::memory::{Scheduler, SchedulerReport};
use purchase_saga_sim::corpus::{self, Corpus, Entry};
use purchase_saga_sim::corpus_replay::{self, Status};
use purchase_saga_sim::floor::{floor_seed, IdleSoftware, SeedShape};
use purchase_saga_sim::hunt::{self, HuntSettings};
use purchase_saga_sim::mutant_hunt::{self, Engines, Hunting};
use purchase_saga_sim::summary::Summary;
use purchase_saga_sim::sweep::{commit, par_seeds, sweep, Options};
use purchase_saga_sim::torture::{self, TortureOutcome, TortureSettings};
use purchase_saga_sim::{mermaid, mutants, FaultKind, FaultPlan, Profile};

/// Where torture creates its databases when DATABASE_URL is unset.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A seed allocates and frees many small objects (turmoil's messages and
/// tasks, trace lines, rows); mimalloc serves them faster than the system
/// allocator (BENCHMARKS.md, "The simulator"). Allocation order and
/// addresses decide nothing in a run, so the trace is the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Take one fault kind out of every plan (e.g. `drop-publish`).
        #[arg(long, value_parser = parse_kind)]
        without: Option<FaultKind>,
        #[command(flatten)]
        corpus: CorpusArgs,
    },
    /// Runs fresh seeds until the time is up, alternating heavy and swarm
    /// plans; records failing seeds and seeds that reached a saga-path /
    /// fault-kinds combination the corpus lacked into the corpus.
    Hunt {
        /// Minutes of wall time (no new chunk starts after it).
        #[arg(long)]
        minutes: f64,
        /// First seed (default: derived from the commit, and printed).
        #[arg(long)]
        start: Option<u64>,
        #[arg(long, default_value_t = 20)]
        orders: usize,
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Rare seeds recorded at most.
        #[arg(long, default_value_t = 20)]
        rare_max: usize,
        /// The corpus folder.
        #[arg(long, default_value_os_t = corpus::default_dir())]
        corpus: PathBuf,
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
        /// Draw only this order's saga (with crashes, partitions, restarts).
        #[arg(long)]
        order: Option<String>,
        #[arg(long)]
        mutant: Option<String>,
        #[arg(long, value_parser = parse_kind)]
        without: Option<FaultKind>,
        /// If the seed fails, keep it in the corpus (found by a developer).
        #[arg(long)]
        record: bool,
        /// The corpus folder.
        #[arg(long, default_value_os_t = corpus::default_dir())]
        corpus: PathBuf,
    },
    /// Seeds/s, CPU and simulated/wall time of the simulator, beside
    /// turmoil's floor for the same hosts and steps (idle software) and the
    /// same scenarios on the in-memory runtime, in one run.
    Bench {
        /// Seeds `0..N` on each engine.
        #[arg(long, default_value_t = 500)]
        seeds: u64,
        #[arg(long, value_enum, default_value = "heavy")]
        faults: Profile,
        #[arg(long, default_value_t = 20)]
        orders: usize,
        #[arg(long, default_value_t = 2)]
        jobs: usize,
    },
    /// For each planted bug, the simulator, torture and its differential
    /// test in turn until one catches it, each catch shown clean without
    /// the mutant; exits 1 if a mutant survives, is caught only on a seed
    /// that is not clean without it, or was not run (needs `--features
    /// mutants`).
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
        #[arg(long, value_parser = parse_kind)]
        without: Option<FaultKind>,
        /// The engines to run, in this order: `sim`, `torture`,
        /// `differential` (comma separated). A mutant no selected engine can
        /// run is reported "not run" and fails the command.
        #[arg(long, default_value = "sim,torture,differential")]
        engines: String,
        /// Torture seeds tried per mutant the simulator missed.
        #[arg(long, default_value_t = 3)]
        torture_seeds: u64,
        #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
        database_url: String,
        /// Torture's Redis; default: a private redis-server per seed.
        #[arg(long)]
        redis_url: Option<String>,
        /// Fault kinds torture leaves out while hunting (as `torture
        /// --without`): a plan the adapters do not survive without the
        /// mutant would "catch" every mutant. Default: the kinds of issue
        /// 17; `--torture-without ''` once their fixes are in.
        #[arg(long, default_value = "issue-17")]
        torture_without: String,
        /// Keep each simulator seed that caught a mutant in the corpus.
        #[arg(long)]
        record: bool,
        /// The corpus folder.
        #[arg(long, default_value_os_t = corpus::default_dir())]
        corpus: PathBuf,
        /// A prebuilt differential test binary, `TARGET=PATH` (e.g.
        /// `store_model_vs_postgres=target/debug/deps/store_model_vs_postgres-1a2b`,
        /// built with `--features mutants`); a target not given is run
        /// with `cargo test --features mutants` in the workspace.
        #[arg(long)]
        test_bin: Vec<String>,
        /// Mutants (comma separated, or `all`) whose "not run" is accepted
        /// (e.g. the adapter mutants with `--engines sim`).
        #[arg(long)]
        accept_not_run: Vec<String>,
    },
    /// The corpus: `repin` re-runs entries from their stored inputs and
    /// records their new trace hashes once they still do what they were
    /// kept for.
    Corpus {
        #[command(subcommand)]
        command: CorpusCommand,
    },
    /// The simulator's scenarios and fault plans against the production
    /// adapters (PostgreSQL via DATABASE_URL, a private redis-server per
    /// seed unless --redis-url), plus faults only real servers have;
    /// exits 1 on any violation.
    Torture {
        /// A half-open range `A..B`.
        #[arg(long)]
        seeds: String,
        #[arg(long, value_enum, default_value = "heavy")]
        faults: Profile,
        #[arg(long, default_value_t = 20)]
        orders: usize,
        /// Seeds run at once, each with its own database and Redis.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Fault kinds taken out of every plan (the simulator's or
        /// torture's, comma separated or repeated; `issue-17` for the five
        /// kinds of issue 17).
        #[arg(long)]
        without: Vec<String>,
        /// The admin URL of the PostgreSQL server (each seed creates and
        /// drops its own database there).
        #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
        database_url: String,
        /// Use this Redis (a key prefix per seed) instead of a private
        /// redis-server; Redis connection kills are then not injected and
        /// "all data lost" deletes the seed's keys.
        #[arg(long)]
        redis_url: Option<String>,
        /// Longest wait for quiescence after the heal, in seconds.
        #[arg(long, default_value_t = 45)]
        quiescence_secs: u64,
        /// Switch on a planted bug process-wide (needs `--features mutants`).
        #[arg(long)]
        mutant: Option<String>,
        /// Do not fail when a path or fault kind never took effect (a
        /// short sweep: broker-loss and client-crash strike one seed in 8
        /// and in 4).
        #[arg(long)]
        no_coverage: bool,
    },
}

/// `saga-sim corpus ...`.
#[derive(Subcommand)]
enum CorpusCommand {
    /// Replays every entry from its stored inputs (as `run` does before
    /// its seeds); exits 1 unless every entry reproduced.
    Replay {
        #[arg(long, default_value_os_t = corpus::default_dir())]
        corpus: PathBuf,
        #[arg(long, default_value_t = 1)]
        jobs: usize,
    },
    /// Re-runs entries from their stored inputs (drawing them from the
    /// seed for an entry that has none), proves each still does what it
    /// was kept for (a mutant entry: caught with its mutant, clean
    /// without), and records the new trace hash, checks and commit.
    /// Exits 1 if an entry could not be re-pinned.
    Repin {
        #[arg(long, default_value_os_t = corpus::default_dir())]
        corpus: PathBuf,
        /// Only the entries of these seeds (default: all).
        #[arg(long)]
        seed: Vec<u64>,
        /// Only the entries of this profile.
        #[arg(long)]
        faults: Option<String>,
        /// Only the entries of this mutant.
        #[arg(long)]
        mutant: Option<String>,
        #[arg(long, default_value_t = 1)]
        jobs: usize,
    },
}

/// `saga-sim run`'s corpus flags.
#[derive(clap::Args)]
struct CorpusArgs {
    /// The corpus folder replayed before the new seeds.
    #[arg(long, default_value_os_t = corpus::default_dir())]
    corpus: PathBuf,
    /// Skip the corpus replay.
    #[arg(long)]
    no_corpus: bool,
    /// Keep the sweep's failing seeds in the corpus.
    #[arg(long)]
    record: bool,
    /// Who found what `--record` keeps (`ci`, `developer`, ...).
    #[arg(long, default_value = "developer")]
    found_by: String,
}

fn parse_kind(raw: &str) -> Result<FaultKind, String> {
    FaultPlan::kind_named(raw).ok_or_else(|| {
        let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown fault kind {raw:?}; known: {}", names.join(", "))
    })
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
    println!(
        "saga-sim bench --seeds {seeds} --faults {} --orders {} --jobs {jobs}",
        options.faults.name(),
        options.orders
    );
    println!(
        "{:<46} {:>6} {:>8} {:>8} {:>9} {:>10} {:>14}",
        "engine", "seeds", "wall s", "seeds/s", "CPU s", "CPU ms/seed", "simulated/wall"
    );
    let row = |name: &str, cost: &Cost, simulated_ms: f64| {
        println!(
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
    println!(
        "seeds' shape: {:.1} hosts and {:.0} steps per seed on average ({:.2} us of floor CPU per host-step)",
        shapes.iter().map(|s| s.hosts as f64).sum::<f64>() / seeds as f64,
        shapes.iter().map(|s| s.steps as f64).sum::<f64>() / seeds as f64,
        floor_cost.cpu_s * 1e6 / host_steps.max(1) as f64
    );
    println!(
        "the floor is {:.0}% of the simulator's CPU; the software above it {:.1} ms per seed",
        100.0 * floor_cost.cpu_s / sim_cost.cpu_s.max(1e-9),
        (sim_cost.cpu_s - floor_cost.cpu_s) * 1000.0 / seeds as f64
    );
    println!(
        "simulator overhead: {:.1}x the in-memory runtime's wall time per seed",
        sim_cost.wall_s / memory_cost.wall_s.max(1e-9)
    );
    println!(
        "10,000 seeds on the simulator at this rate: {:.0} s",
        10_000.0 * sim_cost.wall_s / seeds as f64
    );
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    println!("violations: {violations}");
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
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

/// Replays the corpus from its stored inputs and prints what happened;
/// false if an entry did not reproduce, drifted or was not run
/// (`corpus_replay`).
fn replay_and_report(corpus: &Corpus, jobs: usize) -> bool {
    let started = Instant::now();
    let replays = corpus_replay::replay(&corpus.entries, jobs);
    let count = |status| replays.iter().filter(|r| r.status() == status).count();
    println!(
        "corpus: {} entries replayed from their stored inputs in {:.1}s: {} reproduced, {} drifted, {} not run, {} failing",
        replays.len(),
        started.elapsed().as_secs_f64(),
        count(Status::Reproduced),
        count(Status::Drifted),
        count(Status::NotRun),
        count(Status::Failing)
    );
    for r in replays.iter().filter(|r| r.status() != Status::Reproduced) {
        match r.status() {
            Status::Reproduced => {}
            Status::Drifted => println!(
                "  CORPUS ENTRY DRIFTED: {}: trace hash {} pinned at {}, now {}",
                r.entry,
                r.entry.hash,
                r.entry.pinned(),
                r.hash_now.as_deref().unwrap_or("-")
            ),
            Status::NotRun => println!(
                "  CORPUS ENTRY NOT RUN: {}: {}",
                r.entry,
                r.not_run.as_deref().unwrap_or("")
            ),
            Status::Failing => {
                println!("  CORPUS ENTRY FAILS: {}", r.entry);
                for p in &r.problems {
                    println!("    {p}");
                }
            }
        }
        if r.status() != Status::NotRun {
            println!(
                "    re-pin once the change is meant: {}",
                corpus_replay::repin_command(&r.entry)
            );
        } else {
            println!("    run it: build saga-sim with --features mutants (or pass --no-corpus)");
        }
    }
    count(Status::Reproduced) == replays.len()
}

/// `saga-sim corpus replay` and `saga-sim corpus repin`.
fn corpus_command(command: CorpusCommand) -> ExitCode {
    match command {
        CorpusCommand::Replay { corpus: dir, jobs } => match Corpus::load(&dir) {
            Ok(corpus) => {
                if replay_and_report(&corpus, jobs) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("--corpus: {e}");
                ExitCode::from(2)
            }
        },
        CorpusCommand::Repin {
            corpus: dir,
            seed,
            faults,
            mutant,
            jobs,
        } => {
            let mut corpus = match Corpus::load(&dir) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("--corpus: {e}");
                    return ExitCode::from(2);
                }
            };
            let chosen = |e: &Entry| {
                (seed.is_empty() || seed.contains(&e.seed))
                    && faults.as_ref().is_none_or(|f| *f == e.faults)
                    && mutant.as_ref().is_none_or(|m| e.mutant.as_ref() == Some(m))
            };
            let done = match corpus_replay::repin(&mut corpus, chosen, jobs) {
                Ok(done) => done,
                Err(e) => {
                    eprintln!("saga-sim corpus repin: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut refused = 0;
            for r in &done {
                match (&r.refused, &r.old_hash) {
                    (Some(why), _) => {
                        refused += 1;
                        println!("NOT RE-PINNED {}: {why}", r.entry);
                    }
                    (None, Some(old)) => println!(
                        "re-pinned {}: {old} -> {}{}{}",
                        r.entry,
                        r.entry.hash,
                        if r.drawn {
                            " (inputs drawn from the seed)"
                        } else {
                            ""
                        },
                        if r.entry.checks.is_empty() {
                            String::new()
                        } else {
                            format!(", caught by {:?}, clean without", r.entry.checks)
                        }
                    ),
                    (None, None) => println!("unchanged {}", r.entry),
                }
            }
            println!(
                "corpus repin: {} entries, {} re-pinned, {} unchanged, {} refused (commit {})",
                done.len(),
                done.iter().filter(|r| r.old_hash.is_some()).count(),
                done.iter()
                    .filter(|r| r.refused.is_none() && r.old_hash.is_none())
                    .count(),
                refused,
                commit()
            );
            if refused == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
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
            without,
            corpus: corpus_args,
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
            let mut corpus = match Corpus::load(&corpus_args.corpus) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("--corpus: {e}");
                    return ExitCode::from(2);
                }
            };
            let corpus_failed = !corpus_args.no_corpus && !replay_and_report(&corpus, jobs);
            let started = Instant::now();
            let options = Options {
                faults,
                orders,
                mutant: mutant.clone(),
                without,
            };
            let outcomes = sweep(a, b, jobs, &options);
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
            let mut failed = corpus_failed;
            if !summary.failing.is_empty() {
                failed = true;
                let commit = commit();
                println!("\nFAILING SEEDS (commit {commit}):");
                for outcome in outcomes.iter().filter(|o| !o.violations.is_empty()) {
                    println!("  seed {}:", outcome.seed);
                    for v in outcome.violations.iter().take(5) {
                        println!("    {v}");
                    }
                    println!("    replay: {}", options.replay_command(outcome.seed));
                    let input = options.input(outcome.seed);
                    let entry = Entry::failure(&input, outcome, &options, &commit, &corpus_args.found_by);
                    if corpus_args.record {
                        match corpus.add(entry) {
                            Ok(true) => println!("    kept in {}", corpus_args.corpus.display()),
                            Ok(false) => println!("    already in the corpus"),
                            Err(e) => eprintln!("    cannot keep it: {e}"),
                        }
                    } else {
                        println!(
                            "    keep it: add --record, or append to sim/corpus/failures.jsonl: {}",
                            serde_json::to_string(&entry).expect("an entry serializes")
                        );
                    }
                }
            }
            let mut missing = summary.never_happened(faults);
            if let Some(k) = without {
                missing.retain(|m| *m != format!("fault {k}"));
            }
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
        Command::Hunt {
            minutes,
            start,
            orders,
            jobs,
            rare_max,
            corpus: dir,
        } => {
            if !(minutes.is_finite() && minutes > 0.0) {
                eprintln!("--minutes: must be a positive number");
                return ExitCode::from(2);
            }
            let mut corpus = match Corpus::load(&dir) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("--corpus: {e}");
                    return ExitCode::from(2);
                }
            };
            // By default each commit hunts its own seeds (FNV-1a of the
            // commit, far above the sweeps' 0..N), printed for a repeat.
            let start = start.unwrap_or_else(|| {
                let fnv = commit().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                });
                (fnv >> 24) | (1 << 40)
            });
            println!(
                "saga-sim hunt --minutes {minutes} --start {start} --orders {orders} --jobs {jobs} (corpus {})",
                dir.display()
            );
            let settings = HuntSettings {
                budget: std::time::Duration::from_secs_f64(minutes * 60.0),
                start,
                orders,
                jobs,
                profiles: vec![Profile::Heavy, Profile::Swarm],
                chunk_per_job: 200,
                rare_max,
            };
            match hunt::hunt(&settings, &mut corpus) {
                Ok(report) => {
                    println!(
                        "hunted seeds {start}..{} ({} seeds) in {:.0}s: {} failing, {} rare recorded",
                        report.next,
                        report.seeds,
                        report.wall.as_secs_f64(),
                        report.failures.len(),
                        report.rare.len()
                    );
                    if report.failures.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("saga-sim hunt: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Replay {
            seed,
            faults,
            orders,
            trace,
            mermaid: diagram,
            order,
            mutant,
            without,
            record,
            corpus: dir,
        } => {
            if let Err(code) = check_mutant(mutant.as_deref()) {
                return code;
            }
            let options = Options {
                faults,
                orders,
                mutant: mutant.clone(),
                without,
            };
            let input = options.input(seed);
            let outcome = options.run_input(&input);
            if trace {
                println!("plan: {:?}", input.plan);
                for line in &outcome.lines {
                    println!("{line}");
                }
            }
            if let Some(path) = diagram {
                if let Err(e) =
                    std::fs::write(&path, mermaid::render_order(&outcome.entries, order.as_deref()))
                {
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
            if record && !outcome.violations.is_empty() {
                let entry = Entry::failure(&input, &outcome, &options, &commit(), "developer");
                match Corpus::load(&dir).and_then(|mut c| c.add(entry)) {
                    Ok(true) => println!("kept in {}", dir.display()),
                    Ok(false) => println!("already in the corpus"),
                    Err(e) => eprintln!("cannot keep it: {e}"),
                }
            }
            if outcome.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Bench {
            seeds,
            faults,
            orders,
            jobs,
        } => {
            if seeds == 0 {
                eprintln!("--seeds: must be at least 1");
                return ExitCode::from(2);
            }
            let options = Options {
                faults,
                orders,
                mutant: None,
                without: None,
            };
            bench(seeds, jobs, &options)
        }
        Command::Mutants {
            seeds,
            faults,
            orders,
            jobs,
            without,
            engines,
            torture_seeds,
            database_url,
            redis_url,
            torture_without,
            record,
            corpus,
            test_bin,
            accept_not_run,
        } => {
            if mutants::all_names().is_empty() {
                eprintln!("saga-sim was built without `--features mutants`: no planted bug to hunt");
                return ExitCode::from(2);
            }
            let engines = match Engines::parse(&engines) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("--engines: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut torture = TortureSettings::new(database_url, redis_url, faults);
            torture.orders = orders;
            torture.stop_at_first_finding = true;
            if engines.torture {
                if let Err(e) = preflight(&torture) {
                    eprintln!("saga-sim mutants: {e} (or leave torture out of --engines)");
                    return ExitCode::from(2);
                }
            }
            let mut test_bins = std::collections::BTreeMap::new();
            for raw in &test_bin {
                let Some((target, path)) = raw.split_once('=') else {
                    eprintln!("--test-bin: {raw:?} is not TARGET=PATH");
                    return ExitCode::from(2);
                };
                test_bins.insert(target.to_string(), PathBuf::from(path));
            }
            torture.without = match torture::parse_kinds(&torture_without) {
                Ok(kinds) => kinds,
                Err(e) => {
                    eprintln!("--torture-without: {e}");
                    return ExitCode::from(2);
                }
            };
            let passed = mutant_hunt::hunt_and_report(
                &Hunting {
                    budget: seeds,
                    jobs,
                    engines,
                    torture_seeds,
                    torture,
                    torture_without: vec![torture_without]
                        .into_iter()
                        .filter(|w| !w.is_empty())
                        .collect(),
                    test_bins,
                    accept_not_run: accept_not_run
                        .iter()
                        .flat_map(|a| a.split(','))
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_string)
                        .collect(),
                    record: record.then_some(corpus),
                },
                &Options {
                    faults,
                    orders,
                    mutant: None,
                    without,
                },
            );
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Corpus { command } => corpus_command(command),
        Command::Torture {
            seeds,
            faults,
            orders,
            jobs,
            without,
            database_url,
            redis_url,
            quiescence_secs,
            mutant,
            no_coverage,
        } => {
            let (a, b) = match parse_range(&seeds) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("--seeds: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut settings = TortureSettings::new(database_url, redis_url, faults);
            settings.orders = orders;
            settings.quiescence_bound = std::time::Duration::from_secs(quiescence_secs);
            for raw in &without {
                match torture::parse_kinds(raw) {
                    Ok(kinds) => settings.without.extend(kinds),
                    Err(e) => {
                        eprintln!("--without: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            if let Err(e) = mutants::activate_process(mutant.as_deref()) {
                eprintln!("--mutant: {e}");
                return ExitCode::from(2);
            }
            if let Err(e) = preflight(&settings) {
                eprintln!("saga-sim torture: {e}");
                return ExitCode::from(2);
            }
            let command = settings.command(a, b, &without, mutant.as_deref());
            run_torture(a, b, jobs, &settings, &command, !no_coverage)
        }
    }
}

/// Whether torture's servers are there (`torture::servers::preflight`).
fn preflight(settings: &TortureSettings) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(torture::servers::preflight(
            &settings.database_url,
            settings.redis_url.as_deref(),
        ))
}

/// Torture seeds `a..b` on `jobs` threads with a progress bar.
fn torture_sweep(a: u64, b: u64, jobs: usize, settings: &TortureSettings) -> Vec<TortureOutcome> {
    let settings = settings.clone();
    par_seeds(
        a,
        b,
        jobs,
        Arc::new(move |seed| torture::run_seed(&settings, seed)),
        |o: &TortureOutcome| !o.findings.is_empty(),
    )
    .into_iter()
    .map(|(_, o)| o)
    .collect()
}

/// `saga-sim torture`: the summary table, then each failing seed's plan,
/// findings and trace. Returns 1 on any finding, and (with `coverage`)
/// when a path or fault kind never took effect (`torture::never_happened`)
/// or a saga-path statement never ran under a fault (`torture::coverage`).
fn run_torture(
    a: u64,
    b: u64,
    jobs: usize,
    settings: &TortureSettings,
    command: &str,
    coverage: bool,
) -> ExitCode {
    let started = Instant::now();
    let outcomes = torture_sweep(a, b, jobs, settings);
    let mut summary = Summary::default();
    for o in &outcomes {
        summary.add(&o.as_sim_outcome());
        summary
            .add_other_faults(torture::Kind::ALL.map(|k| (k.name(), o.kinds.get(&k).copied().unwrap_or(0))));
        summary.add_other_faults([(
            torture::driver::PARTITION_TAKEOVER,
            o.effects
                .get(torture::driver::PARTITION_TAKEOVER)
                .copied()
                .unwrap_or(0),
        )]);
    }
    println!("{command} --jobs {jobs} (commit {})", commit());
    print!("{}", summary.render(started.elapsed()));
    let statements = torture::coverage::SweepCoverage::of(&outcomes, settings.profile);
    print!("{}", statements.render());
    let missing = torture::never_happened(&summary, settings.profile, &settings.without);
    let uncovered = coverage && (!missing.is_empty() || !statements.missing().is_empty());
    if coverage && !missing.is_empty() {
        println!("\nNEVER HAPPENED (coverage, effects): {}", missing.join(", "));
    }
    let failing: Vec<&TortureOutcome> = outcomes.iter().filter(|o| !o.findings.is_empty()).collect();
    if failing.is_empty() {
        return if uncovered {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        };
    }
    // The first failing seed's plan and trace here; every failing seed's in
    // a file (a trace is thousands of lines).
    let dir = std::env::temp_dir().join(format!("saga-sim-torture-{}", std::process::id()));
    let saved = std::fs::create_dir_all(&dir);
    println!("\n==== FAILING SEED {} ====", failing[0].seed());
    print!("{}", failing[0].failure_report());
    println!("\nFAILING SEEDS (commit {}):", commit());
    for o in &failing {
        println!("  seed {}:", o.seed());
        let file = dir.join(format!("seed-{}.txt", o.seed()));
        match saved
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|()| std::fs::write(&file, o.failure_report()).map_err(|e| e.to_string()))
        {
            Ok(()) => println!("    plan, findings and trace: {}", file.display()),
            Err(e) => println!("    (could not save the trace to {}: {e})", file.display()),
        }
        for v in o.violations().iter().take(5) {
            println!("    {v}");
        }
        println!(
            "    again: {}",
            command.replacen(
                &format!("--seeds {a}..{b}"),
                &format!("--seeds {}..{}", o.seed(), o.seed() + 1),
                1
            )
        );
    }
    ExitCode::from(1)
}
