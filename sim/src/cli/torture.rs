//! `saga-sim torture --seeds A..B`: the simulator's scenarios and fault
//! plans on the production adapters (`torture/`): the summary table and
//! the statement coverage, then each failing seed's findings, its trace
//! saved to a file, and the command that runs it again. Exits 1 on any
//! finding, and (unless `--no-coverage`) when a path or fault kind never
//! took effect or a saga-path statement never ran under a fault.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use super::args::{Jobs, Json, SeedRange, Workload, DEFAULT_DATABASE_URL};
use super::json::{violations, FailingSeed, Totals};
use super::{bad_input, passed};
use crate::summary::Summary;
use crate::sweep::{commit, par_seeds};
use crate::torture::{self, TortureOutcome, TortureSettings};

#[derive(Args)]
pub struct TortureArgs {
    /// The seeds to run: a half-open range `A..B`.
    #[arg(long)]
    pub seeds: SeedRange,
    #[command(flatten)]
    pub workload: Workload,
    #[command(flatten)]
    pub jobs: Jobs,
    /// Fault kinds taken out of every plan (the simulator's or
    /// torture's, comma separated or repeated; `issue-17` for the five
    /// kinds of issue 17).
    #[arg(long)]
    pub without: Vec<String>,
    /// The admin URL of the PostgreSQL server (each seed creates and
    /// drops its own database there).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Use this Redis (a key prefix per seed) instead of a private
    /// redis-server; Redis connection kills are then not injected and
    /// "all data lost" deletes the seed's keys.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Where the services' data lives: `single` (one fresh database per
    /// seed) or `split` (three, one per group of services as the cluster
    /// proof groups them, each holding only its services' schemas; adds
    /// the `db-down` fault).
    #[arg(long, default_value = "single", value_parser = torture::Layout::parse)]
    pub layout: torture::Layout,
    /// The private Redis each seed starts (without --redis-url): one
    /// redis-server, or a three-node Redis Cluster (`redis-server
    /// --cluster-enabled yes`, `redis-cli --cluster create`) whose
    /// clients are the cluster client and whose faults strike every node
    /// holding the seed's keys.
    #[arg(long, value_enum, default_value_t = torture::RedisLayout::Single)]
    pub redis: torture::RedisLayout,
    /// Longest wait for quiescence after the heal, in seconds.
    #[arg(long, default_value_t = 45)]
    pub quiescence_secs: u64,
    /// Switch on a planted bug process-wide (needs `--features mutants`).
    #[arg(long)]
    pub mutant: Option<String>,
    /// Do not fail when a path or fault kind never took effect (a
    /// short sweep: broker-loss and client-crash strike one seed in 8
    /// and in 4).
    #[arg(long)]
    pub no_coverage: bool,
    #[command(flatten)]
    pub json: Json,
}

/// `saga-sim torture --json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TortureReport {
    command: String,
    commit: String,
    totals: Totals,
    /// Saga-path statements that never ran under a fault.
    statements_missing: Vec<String>,
    /// Paths and fault kinds that never took effect.
    never_happened: Vec<String>,
    failing: Vec<FailingSeed>,
    passed: bool,
}

pub fn run(args: TortureArgs) -> ExitCode {
    let mut settings = TortureSettings::new(args.database_url, args.redis_url, args.workload.faults);
    settings.redis = args.redis;
    if settings.redis_url.is_some() && settings.redis == torture::RedisLayout::Cluster {
        return bad_input("saga-sim torture: --redis-url names a shared Redis, --redis cluster starts a private cluster: pick one");
    }
    settings.orders = args.workload.orders;
    settings.layout = args.layout;
    settings.quiescence_bound = std::time::Duration::from_secs(args.quiescence_secs);
    for raw in &args.without {
        match torture::parse_kinds(raw) {
            Ok(kinds) => settings.without.extend(kinds),
            Err(e) => return bad_input(&format!("--without: {e}")),
        }
    }
    if let Err(e) = crate::mutants::activate_process(args.mutant.as_deref()) {
        return bad_input(&format!("--mutant: {e}"));
    }
    if let Err(e) = preflight(&settings) {
        return bad_input(&format!("saga-sim torture: {e}"));
    }
    let (a, b) = (args.seeds.from, args.seeds.to);
    let command = settings.command(a, b, &args.without, args.mutant.as_deref());
    run_torture(
        a,
        b,
        args.jobs.jobs,
        &settings,
        &command,
        !args.no_coverage,
        args.json.json,
    )
}

/// Whether torture's servers are there (`torture::servers::preflight`;
/// `redis-cli` too for a private cluster).
pub fn preflight(settings: &TortureSettings) -> Result<(), String> {
    if settings.redis_url.is_none() {
        torture::redis_target::preflight(settings.redis)?;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(torture::servers::preflight(
            &settings.database_url,
            settings.redis_url.as_deref(),
        ))
}

/// Torture seeds `a..b` on `jobs` threads, with progress.
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

fn run_torture(
    a: u64,
    b: u64,
    jobs: usize,
    settings: &TortureSettings,
    command: &str,
    coverage: bool,
    json: bool,
) -> ExitCode {
    let started = Instant::now();
    let outcomes = torture_sweep(a, b, jobs, settings);
    let wall = started.elapsed();
    let mut summary = Summary::default();
    for o in &outcomes {
        summary.add(&o.as_sim_outcome());
        summary.add_other_faults(
            torture::Kind::ALL
                .into_iter()
                .filter(|k| k.drawn_in(settings.layout))
                .map(|k| (k.name(), o.kinds.get(&k).copied().unwrap_or(0))),
        );
        summary.add_other_faults([(
            torture::driver::PARTITION_TAKEOVER,
            o.effects
                .get(torture::driver::PARTITION_TAKEOVER)
                .copied()
                .unwrap_or(0),
        )]);
    }
    let command = format!("{command} --jobs {jobs}");
    let statements = torture::coverage::SweepCoverage::of(&outcomes, settings.profile);
    let missing = torture::never_happened(&summary, settings.profile, &settings.without, settings.layout);
    let uncovered = coverage && (!missing.is_empty() || !statements.missing().is_empty());
    if !json {
        say!("{command} (commit {})", commit());
        super::out::print(&summary.render(wall));
        super::out::print(&statements.render());
        if coverage && !missing.is_empty() {
            say!("\nNEVER HAPPENED (coverage, effects): {}", missing.join(", "));
        }
    }
    let failing: Vec<&TortureOutcome> = outcomes.iter().filter(|o| !o.findings.is_empty()).collect();
    // The first failing seed's plan and trace here; every failing seed's in
    // a file (a trace is thousands of lines).
    let dir = std::env::temp_dir().join(format!("saga-sim-torture-{}", std::process::id()));
    let saved = if failing.is_empty() {
        Ok(())
    } else {
        std::fs::create_dir_all(&dir)
    };
    if let (Some(first), false) = (failing.first(), json) {
        say!("\n==== FAILING SEED {} ====", first.seed());
        super::out::print(&first.failure_report());
        say!("\nFAILING SEEDS (commit {}):", commit());
    }
    let mut failing_json = Vec::new();
    for o in &failing {
        let file = dir.join(format!("seed-{}.txt", o.seed()));
        let written = saved
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|()| std::fs::write(&file, o.failure_report()).map_err(|e| e.to_string()));
        let again = command.replacen(
            &format!("--seeds {a}..{b}"),
            &format!("--seeds {}..{}", o.seed(), o.seed() + 1),
            1,
        );
        if !json {
            say!("  seed {}:", o.seed());
            match &written {
                Ok(()) => say!("    plan, findings and trace: {}", file.display()),
                Err(e) => say!("    (could not save the trace to {}: {e})", file.display()),
            }
            for v in o.violations().iter().take(5) {
                say!("    {v}");
            }
            say!("    again: {again}");
        }
        failing_json.push(FailingSeed {
            seed: o.seed(),
            violations: violations(&o.violations()),
            again,
            trace_file: written.is_ok().then(|| file.display().to_string()),
        });
    }
    let ok = failing.is_empty() && !uncovered;
    if json {
        super::out::json(&TortureReport {
            command,
            commit: commit(),
            totals: Totals::of(&summary, wall),
            statements_missing: statements.missing(),
            never_happened: if coverage { missing } else { Vec::new() },
            failing: failing_json,
            passed: ok,
        });
    }
    passed(ok)
}
