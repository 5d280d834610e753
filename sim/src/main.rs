//! `saga-sim`: seed sweeps, replays and planted-bug hunts of the
//! deterministic simulator.
//!
//! - `saga-sim run --seeds A..B [--faults P] [--orders N] [--jobs J] [--mutant M] [--no-corpus] [--record]`:
//!   replays the corpus (`sim/corpus/`), then the seeds
//! - `saga-sim hunt --minutes M [--start S] [--jobs J]`: unattended sweeps that grow the corpus
//! - `saga-sim replay --seed N [--faults P] [--orders N] [--trace] [--mermaid FILE] [--mutant M] [--record]`
//! - `saga-sim mutants [--seeds N] [--faults P] [--jobs J] [--engines sim,torture]` (`--features mutants`)
//! - `saga-sim bench [--seeds N] [--faults P] [--orders N] [--jobs J]`
//! - `saga-sim torture --seeds A..B [--faults P] [--jobs J] [--without KIND,..] [--redis-url URL]`:
//!   the same scenarios and plans on PostgreSQL and Redis (`torture` module)

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use clap::{Parser, Subcommand};
use purchase_saga::runtime::memory::{Scheduler, SchedulerReport};
use purchase_saga_sim::corpus::{self, Corpus, Entry};
use purchase_saga_sim::floor::{floor_seed, IdleSoftware, SeedShape};
use purchase_saga_sim::hunt::{self, HuntSettings};
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
        #[arg(long, value_parser = parse_kind)]
        without: Option<FaultKind>,
        /// The engines to run, in this order: `sim`, `torture` (comma
        /// separated); a mutant both miss is named with its differential
        /// test.
        #[arg(long, default_value = "sim,torture")]
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

/// Replays the corpus and prints what happened; false if a corpus seed
/// failed or cannot be read by this build.
fn replay_and_report(corpus: &Corpus, jobs: usize) -> bool {
    let started = Instant::now();
    let replayed = hunt::replay_corpus(corpus, jobs, false);
    println!(
        "corpus: {} seed(s) replayed in {:.1}s, {} drifted (generators changed since recorded), {} failing",
        replayed.seeds,
        started.elapsed().as_secs_f64(),
        replayed.drifted,
        replayed.failing.len()
    );
    for (entry, why) in &replayed.failing {
        println!("  CORPUS SEED FAILS: {entry}");
        for v in why {
            println!("    {v}");
        }
        let options = Options {
            faults: entry.profile().expect("a replayed entry's profile parsed"),
            orders: entry.orders,
            mutant: None,
            without: entry.without_kind().expect("a replayed entry's kind parsed"),
        };
        println!("    replay: {}", options.replay_command(entry.seed));
    }
    for (entry, e) in &replayed.unreadable {
        println!("  CORPUS SEED UNREADABLE: {entry}: {e}");
    }
    replayed.failing.is_empty() && replayed.unreadable.is_empty()
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
                    let entry = Entry::failure(outcome, &options, &commit, &corpus_args.found_by);
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
            let outcome = options.run_seed(seed);
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
                let entry = Entry::failure(&outcome, &options, &commit(), "developer");
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
        } => {
            let engines = match parse_engines(&engines) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("--engines: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut torture = TortureSettings::new(database_url, redis_url, faults);
            torture.orders = orders;
            torture.stop_at_first_finding = true;
            if engines.torture && !mutants::all_names().is_empty() {
                if let Err(e) = preflight(&torture) {
                    eprintln!("saga-sim mutants: {e} (or pass --engines sim)");
                    return ExitCode::from(2);
                }
            }
            torture.without = match torture::parse_kinds(&torture_without) {
                Ok(kinds) => kinds,
                Err(e) => {
                    eprintln!("--torture-without: {e}");
                    return ExitCode::from(2);
                }
            };
            hunt_mutants(
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
                    record: record.then_some(corpus),
                },
                &Options {
                    faults,
                    orders,
                    mutant: None,
                    without,
                },
            )
        }
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
            let command = torture_command(a, b, &settings, &without, mutant.as_deref());
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

/// The command line that runs `a..b` again.
fn torture_command(
    a: u64,
    b: u64,
    settings: &TortureSettings,
    without: &[String],
    mutant: Option<&str>,
) -> String {
    let mut flags = String::new();
    for w in without {
        flags += &format!(" --without {w}");
    }
    if let Some(m) = mutant {
        flags += &format!(" --mutant {m}");
    }
    if let Some(url) = &settings.redis_url {
        flags += &format!(" --redis-url {url}");
    }
    format!(
        "saga-sim torture --seeds {a}..{b} --faults {} --orders {}{flags}",
        settings.profile.name(),
        settings.orders
    )
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
/// when a path or fault kind never took effect (`torture::never_happened`).
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
    }
    println!("{command} --jobs {jobs} (commit {})", commit());
    print!("{}", summary.render(started.elapsed()));
    let missing = torture::never_happened(&summary, settings.profile, &settings.without);
    let uncovered = coverage && !missing.is_empty();
    if uncovered {
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

/// The engines `saga-sim mutants` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Engines {
    sim: bool,
    torture: bool,
}

fn parse_engines(raw: &str) -> Result<Engines, String> {
    let mut engines = Engines {
        sim: false,
        torture: false,
    };
    for name in raw.split(',').map(str::trim) {
        match name {
            "sim" => engines.sim = true,
            "torture" => engines.torture = true,
            other => return Err(format!("unknown engine {other:?}; known: sim, torture")),
        }
    }
    Ok(engines)
}

/// How `saga-sim mutants` hunts.
struct Hunting {
    /// Simulator seeds tried per mutant at most.
    budget: u64,
    jobs: usize,
    engines: Engines,
    /// Torture seeds tried per mutant the simulator missed.
    torture_seeds: u64,
    torture: TortureSettings,
    /// `--torture-without` as given, for the command that repeats a seed.
    torture_without: Vec<String>,
    /// Keep each simulator seed that caught a mutant in this corpus.
    record: Option<PathBuf>,
}

/// Keeps the simulator seed that caught each mutant in the corpus at
/// `dir` (its run is repeated for the trace hash).
fn record_mutant_seeds(dir: &std::path::Path, rows: &[(usize, Hunt)], options: &Options) {
    let mut corpus = match Corpus::load(dir) {
        Ok(c) => c,
        Err(e) => return eprintln!("--record: {e}"),
    };
    let commit = commit();
    for (_, h) in rows {
        let Some((Engine::Sim, seed, _)) = &h.caught else {
            continue;
        };
        let options = Options {
            mutant: Some(h.mutant.to_string()),
            ..options.clone()
        };
        let outcome = options.run_seed(*seed);
        let entry = Entry::failure(&outcome, &options, &commit, "mutants");
        match corpus.add(entry) {
            Ok(added) => println!(
                "{}: seed {seed} {}",
                h.mutant,
                if added {
                    "kept in the corpus"
                } else {
                    "already in the corpus"
                }
            ),
            Err(e) => eprintln!("{}: cannot keep seed {seed}: {e}", h.mutant),
        }
    }
}

/// Who caught a mutant.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Engine {
    Sim,
    Torture,
    /// Neither: the differential test that catches it (not a failure).
    Differential(&'static str),
}

/// One row of the mutants table.
struct Hunt {
    mutant: &'static str,
    /// The engine, the seed and the check found first in time.
    caught: Option<(Engine, u64, String)>,
    tried: u64,
}

/// Simulator seeds until one finds a violation.
fn hunt_in_sim(mutant: &'static str, budget: u64, options: &Options, hunt: &mut Hunt) {
    let options = Options {
        mutant: Some(mutant.to_string()),
        ..options.clone()
    };
    for seed in 0..budget {
        hunt.tried += 1;
        let o = options.run_seed(seed);
        if let Some(check) = mutants::first_in_time(&o) {
            hunt.caught = Some((Engine::Sim, seed, check));
            return;
        }
    }
}

/// Torture seeds with the mutant on process-wide until one finds a
/// violation. Runs alone: the switch is the process's.
fn hunt_in_torture(mutant: &'static str, hunting: &Hunting, hunt: &mut Hunt) {
    mutants::activate_process(Some(mutant)).expect("the mutant names come from the build");
    for seed in 0..hunting.torture_seeds {
        hunt.tried += 1;
        let o = torture::run_seed(&hunting.torture, seed);
        if let Some(first) = o.first() {
            hunt.caught = Some((Engine::Torture, seed, first.check.clone()));
            break;
        }
    }
    mutants::activate_process(None).expect("switching off always works");
}

fn hunt_mutants(hunting: &Hunting, options: &Options) -> ExitCode {
    let names = mutants::all_names();
    if names.is_empty() {
        eprintln!("saga-sim was built without `--features mutants`: no planted bug to hunt");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    // The simulator first, in parallel (a mutant per thread: its switch is
    // the thread's).
    let next = Arc::new(AtomicUsize::new(0));
    let names = Arc::new(names);
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..hunting.jobs.max(1))
        .map(|_| {
            let (next, names, tx) = (next.clone(), names.clone(), tx.clone());
            let options = options.clone();
            let (budget, sim) = (hunting.budget, hunting.engines.sim);
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&mutant) = names.get(i) else { return };
                let mut hunt = Hunt {
                    mutant,
                    caught: None,
                    tried: 0,
                };
                if sim && mutants::simulated(mutant) {
                    hunt_in_sim(mutant, budget, &options, &mut hunt);
                }
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
    // Then torture, one mutant at a time, for what the simulator missed;
    // then the differential tests' names.
    for (_, hunt) in &mut rows {
        if hunt.caught.is_none() && hunting.engines.torture {
            hunt_in_torture(hunt.mutant, hunting, hunt);
        }
        if hunt.caught.is_none() {
            if let Some(test) = mutants::differential_test(hunt.mutant) {
                hunt.caught = Some((Engine::Differential(test), 0, "differential".into()));
            }
        }
        eprintln!(
            "{}: {}",
            hunt.mutant,
            if hunt.caught.is_some() {
                "caught"
            } else {
                "SURVIVED"
            }
        );
    }
    let without = options
        .without
        .map_or(String::new(), |k| format!(" --without {k}"));
    println!(
        "saga-sim mutants --seeds {} --torture-seeds {} --faults {} --orders {}{without} (commit {})",
        hunting.budget,
        hunting.torture_seeds,
        options.faults.name(),
        options.orders,
        commit()
    );
    println!(
        "{:<26} {:<48} {:>6} {:<28} {:>6}  again",
        "mutant", "engine", "seed", "check", "tried"
    );
    let mut survivors = 0;
    for (_, h) in &rows {
        match &h.caught {
            Some((Engine::Sim, seed, check)) => println!(
                "{:<26} {:<48} {:>6} {:<28} {:>6}  {}",
                h.mutant,
                "simulator",
                seed,
                check,
                h.tried,
                Options {
                    mutant: Some(h.mutant.to_string()),
                    ..options.clone()
                }
                .replay_command(*seed)
            ),
            Some((Engine::Torture, seed, check)) => println!(
                "{:<26} {:<48} {:>6} {:<28} {:>6}  cargo run -p purchase-saga-sim --release --features mutants -- {}",
                h.mutant,
                "torture",
                seed,
                check,
                h.tried,
                torture_command(*seed, seed + 1, &hunting.torture, &hunting.torture_without, Some(h.mutant))
                    .trim_start_matches("saga-sim ")
            ),
            Some((Engine::Differential(test), _, _)) => println!(
                "{:<26} {:<48} {:>6} {:<28} {:>6}  PURCHASE_SAGA_MUTANT={} cargo test --features mutants --test {}",
                h.mutant,
                format!("differential ({test})"),
                "-",
                "model-vs-server",
                h.tried,
                h.mutant,
                test.trim_start_matches("tests/").trim_end_matches(".rs")
            ),
            None => {
                survivors += 1;
                println!(
                    "{:<26} {:<48} {:>6} {:<28} {:>6}  -",
                    h.mutant, "NONE (survived)", "-", "-", h.tried
                );
            }
        }
    }
    println!("wall time {:.1}s", started.elapsed().as_secs_f64());
    if let Some(dir) = &hunting.record {
        record_mutant_seeds(dir, &rows, options);
    }
    if survivors > 0 {
        println!("{survivors} mutant(s) survived");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
