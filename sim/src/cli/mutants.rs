//! `saga-sim mutants`: every planted bug on the engines that can see it
//! (`mutant_hunt.rs`), a table (or `--json`) of what became of each, and
//! the catches kept in the corpus with `--record`. Exits 1 if a mutant
//! survived, was caught only on a seed not clean without it, or was not
//! run (unless accepted).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use super::args::{CorpusDir, Jobs, Json, Workload, DEFAULT_DATABASE_URL};
use super::{bad_input, passed};
use crate::mutant_hunt::{self, CleanWithout, Engine, Engines, Hunting, Row, Verdict};
use crate::sweep::{commit, Options};
use crate::torture::{self, TortureSettings};
use crate::{mutants, FaultKind};

#[derive(Args)]
pub struct MutantsArgs {
    /// Simulator seeds tried per mutant at most (seeds `0..N`).
    #[arg(long, default_value_t = 1000)]
    pub seeds: u64,
    #[command(flatten)]
    pub workload: Workload,
    #[command(flatten)]
    pub jobs: Jobs,
    /// Take one fault kind out of every simulator plan (e.g. `drop-publish`).
    #[arg(long, value_parser = super::args::parse_kind)]
    pub without: Option<FaultKind>,
    /// The engines to run, in this order: `sim`, `torture`,
    /// `differential` (comma separated). A mutant no selected engine can
    /// run is reported "not run" and fails the command.
    #[arg(long, default_value = "sim,torture,differential")]
    pub engines: String,
    /// Torture seeds tried per mutant the simulator missed.
    #[arg(long, default_value_t = 3)]
    pub torture_seeds: u64,
    /// The admin URL of torture's PostgreSQL server.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Torture's Redis; default: a private redis-server per seed.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Fault kinds torture leaves out while hunting (as `torture
    /// --without`): a plan the adapters do not survive without the
    /// mutant would "catch" every mutant. Default: the kinds of issue
    /// 17; `--torture-without ''` once their fixes are in.
    #[arg(long, default_value = "issue-17")]
    pub torture_without: String,
    /// Keep each simulator seed that caught a mutant in the corpus.
    #[arg(long)]
    pub record: bool,
    #[command(flatten)]
    pub corpus: CorpusDir,
    /// A prebuilt differential test binary, `TARGET=PATH` (e.g.
    /// `store_model_vs_postgres=target/debug/deps/store_model_vs_postgres-1a2b`,
    /// built with `--features mutants`); a target not given is run
    /// with `cargo test --features mutants` in the workspace.
    #[arg(long)]
    pub test_bin: Vec<String>,
    /// Mutants (comma separated, or `all`) whose "not run" is accepted
    /// (e.g. the adapter mutants with `--engines sim`).
    #[arg(long)]
    pub accept_not_run: Vec<String>,
    #[command(flatten)]
    pub json: Json,
}

/// `saga-sim mutants --json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MutantsReport {
    command: String,
    commit: String,
    mutants: Vec<MutantJson>,
    /// Rows that failed, by how: `survived`, `notClean`, `notRun`.
    failed: BTreeMap<&'static str, usize>,
    wall_s: f64,
    passed: bool,
}

/// One mutant's row.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MutantJson {
    mutant: &'static str,
    /// `caught`, `survived` or `not-run`.
    verdict: &'static str,
    /// Who caught it: `sim`, `torture`, `differential`.
    engine: Option<&'static str>,
    /// The differential test target and case that caught it.
    test: Option<String>,
    seed: Option<u64>,
    check: Option<String>,
    /// `yes`, `in-test` or `no` (the same seed found something without it).
    clean_without: Option<&'static str>,
    tried: u64,
    /// The command that shows the catch again.
    again: Option<String>,
    notes: Vec<String>,
    /// Whether this row fails the command.
    fails: bool,
}

fn row_json(row: &Row, hunting: &Hunting, options: &Options) -> MutantJson {
    let mut json = MutantJson {
        mutant: row.mutant,
        verdict: "survived",
        engine: None,
        test: None,
        seed: None,
        check: None,
        clean_without: None,
        tried: row.tried,
        again: mutant_hunt::again(row, hunting, options),
        notes: row.notes.clone(),
        fails: row.fails(&hunting.accept_not_run),
    };
    match &row.verdict {
        Verdict::Caught {
            engine,
            seed,
            check,
            clean_without,
        } => {
            json.verdict = "caught";
            json.engine = Some(match engine {
                Engine::Sim => "sim",
                Engine::Torture => "torture",
                Engine::Differential { target, case } => {
                    json.test = Some(format!("{target} {case}"));
                    "differential"
                }
            });
            json.seed = *seed;
            json.check = Some(check.clone());
            json.clean_without = Some(match clean_without {
                CleanWithout::Clean => "yes",
                CleanWithout::InTheTest => "in-test",
                CleanWithout::NotClean(why) => {
                    json.notes
                        .push(format!("without the mutant the same seed found: {why}"));
                    "no"
                }
            });
        }
        Verdict::Survived => {}
        Verdict::NotRun(why) => {
            json.verdict = "not-run";
            json.notes.insert(0, why.clone());
        }
    }
    json
}

pub fn run(args: MutantsArgs) -> ExitCode {
    if mutants::all_names().is_empty() {
        return bad_input("saga-sim was built without `--features mutants`: no planted bug to hunt");
    }
    let engines = match Engines::parse(&args.engines) {
        Ok(e) => e,
        Err(e) => return bad_input(&format!("--engines: {e}")),
    };
    let faults = args.workload.faults;
    let mut torture = TortureSettings::new(args.database_url, args.redis_url, faults);
    torture.orders = args.workload.orders;
    torture.stop_at_first_finding = true;
    if engines.torture {
        if let Err(e) = super::torture::preflight(&torture) {
            return bad_input(&format!(
                "saga-sim mutants: {e} (or leave torture out of --engines)"
            ));
        }
    }
    let mut test_bins = BTreeMap::new();
    for raw in &args.test_bin {
        let Some((target, path)) = raw.split_once('=') else {
            return bad_input(&format!("--test-bin: {raw:?} is not TARGET=PATH"));
        };
        test_bins.insert(target.to_string(), PathBuf::from(path));
    }
    torture.without = match torture::parse_kinds(&args.torture_without) {
        Ok(kinds) => kinds,
        Err(e) => return bad_input(&format!("--torture-without: {e}")),
    };
    let record = if args.record {
        match args.corpus.load() {
            Ok(_) => Some(args.corpus.corpus.clone()),
            Err(e) => return bad_input(&e),
        }
    } else {
        None
    };
    let hunting = Hunting {
        budget: args.seeds,
        jobs: args.jobs.jobs,
        engines,
        torture_seeds: args.torture_seeds,
        torture,
        torture_without: vec![args.torture_without]
            .into_iter()
            .filter(|w| !w.is_empty())
            .collect(),
        test_bins,
        accept_not_run: args
            .accept_not_run
            .iter()
            .flat_map(|a| a.split(','))
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect(),
        record,
    };
    let options = Options {
        faults,
        orders: args.workload.orders,
        mutant: None,
        without: args.without,
    };
    let started = Instant::now();
    let rows = mutant_hunt::hunt(&hunting, &options);
    let wall = started.elapsed();
    let without = options
        .without
        .map_or(String::new(), |k| format!(" --without {k}"));
    let chosen: Vec<&str> = [
        (engines.sim, "sim"),
        (engines.torture, "torture"),
        (engines.differential, "differential"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    let command = format!(
        "saga-sim mutants --engines {} --seeds {} --torture-seeds {} --faults {} --orders {}{without}",
        chosen.join(","),
        hunting.budget,
        hunting.torture_seeds,
        faults.name(),
        options.orders,
    );
    let json = args.json.json;
    if !json {
        say!("{command} (commit {})", commit());
        super::out::print(&mutant_hunt::render(&rows, &hunting, &options));
        say!("wall time {:.1}s", wall.as_secs_f64());
    }
    if let Some(dir) = &hunting.record {
        match mutant_hunt::record_sim_catches(dir, &rows, &options) {
            Ok(lines) if !json => lines.iter().for_each(|l| say!("{l}")),
            Ok(lines) => lines.iter().for_each(|l| tell!("{l}")),
            Err(e) => tell!("--record: {e}"),
        }
    }
    let failures = mutant_hunt::failures(&rows, &hunting);
    if !json {
        for (n, what) in failures {
            if n > 0 {
                say!("{n} mutant(s) {what}");
            }
        }
    }
    let ok = mutant_hunt::all_passed(&rows, &hunting);
    if json {
        super::out::json(&MutantsReport {
            command,
            commit: commit(),
            mutants: rows.iter().map(|r| row_json(r, &hunting, &options)).collect(),
            failed: ["survived", "notClean", "notRun"]
                .into_iter()
                .zip(failures.iter().map(|(n, _)| *n))
                .collect(),
            wall_s: wall.as_secs_f64(),
            passed: ok,
        });
    }
    passed(ok)
}
