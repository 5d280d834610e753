//! `saga-sim run --seeds A..B`: replays the corpus from its stored inputs,
//! then runs the seeds and prints the summary (`summary.rs`), each failing
//! seed with its replay command, and what never happened (coverage).
//! Exits 1 on a violation, a corpus entry that did not reproduce, or a
//! saga path or fault kind that never happened (unless `--no-coverage`).

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use super::args::{CorpusDir, Jobs, Json, SeedRange, Variation, Workload};
use super::corpus::{replay_corpus, CorpusCheck, CorpusJson};
use super::json::{violations, FailingSeed, Totals};
use super::{bad_input, passed};
use crate::corpus::Entry;
use crate::summary::Summary;
use crate::sweep::{commit, sweep};

#[derive(Args)]
pub struct RunArgs {
    /// The seeds to run: a half-open range `A..B`.
    #[arg(long)]
    pub seeds: SeedRange,
    #[command(flatten)]
    pub workload: Workload,
    #[command(flatten)]
    pub jobs: Jobs,
    /// Do not fail when a path or fault kind never happened.
    #[arg(long)]
    pub no_coverage: bool,
    #[command(flatten)]
    pub variation: Variation,
    #[command(flatten)]
    pub corpus: CorpusDir,
    /// Skip the corpus replay.
    #[arg(long)]
    pub no_corpus: bool,
    /// Keep the sweep's failing seeds in the corpus.
    #[arg(long)]
    pub record: bool,
    /// Who found what `--record` keeps (`ci`, `developer`, ...).
    #[arg(long, default_value = "developer")]
    pub found_by: String,
    #[command(flatten)]
    pub json: Json,
}

/// `saga-sim run --json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunReport {
    /// The command, as `saga-sim run ...`.
    command: String,
    commit: String,
    /// The corpus replay (absent with `--no-corpus`).
    corpus: Option<CorpusJson>,
    totals: Totals,
    failing: Vec<FailingSeed>,
    /// Paths, fault kinds and rare states that never happened.
    never_happened: Vec<String>,
    passed: bool,
}

pub fn run(args: RunArgs) -> ExitCode {
    if let Err(e) = args.variation.check() {
        return bad_input(&e);
    }
    let json = args.json.json;
    // The corpus is read before anything runs: a missing folder is an
    // error unless it is not wanted.
    let mut corpus = match args.corpus.load() {
        Ok(c) => Some(c),
        Err(_) if args.no_corpus && !args.record => None,
        Err(e) => return bad_input(&e),
    };
    let check: Option<CorpusCheck> = match (&corpus, args.no_corpus) {
        (Some(c), false) => Some(replay_corpus(c, args.jobs.jobs)),
        _ => None,
    };
    if let (Some(check), false) = (&check, json) {
        say!("{}", check.render().trim_end());
    }
    let options = args.variation.options(args.workload);
    let (a, b) = (args.seeds.from, args.seeds.to);
    let started = Instant::now();
    let outcomes = sweep(a, b, args.jobs.jobs, &options);
    let wall = started.elapsed();
    let mut summary = Summary::default();
    for o in &outcomes {
        summary.add(o);
    }
    let with = options
        .mutant
        .as_deref()
        .map_or(String::new(), |m| format!(" --mutant {m}"));
    let command = format!(
        "saga-sim run --seeds {a}..{b} --faults {} --orders {}{with}",
        options.faults.name(),
        options.orders
    );
    if !json {
        say!("{command}");
        super::out::print(&summary.render(wall));
    }
    let commit = commit();
    let mut failing = Vec::new();
    if !summary.failing.is_empty() && !json {
        say!("\nFAILING SEEDS (commit {commit}):");
    }
    for outcome in outcomes.iter().filter(|o| !o.violations.is_empty()) {
        let again = options.replay_command(outcome.seed);
        let input = options.input(outcome.seed);
        let entry = Entry::failure(&input, outcome, &options, &commit, &args.found_by);
        let kept = match (&mut corpus, args.record) {
            (Some(corpus), true) => match corpus.add(entry.clone()) {
                Ok(true) => format!("kept in {}", args.corpus.corpus.display()),
                Ok(false) => "already in the corpus".to_string(),
                Err(e) => format!("cannot keep it: {e}"),
            },
            _ => format!(
                "keep it: add --record, or append to {}/failures.jsonl: {}",
                args.corpus.corpus.display(),
                serde_json::to_string(&entry).expect("an entry serializes")
            ),
        };
        if json {
            if args.record {
                tell!("seed {}: {kept}", outcome.seed);
            }
        } else {
            say!("  seed {}:", outcome.seed);
            for v in outcome.violations.iter().take(5) {
                say!("    {v}");
            }
            say!("    replay: {again}");
            say!("    {kept}");
        }
        failing.push(FailingSeed {
            seed: outcome.seed,
            violations: violations(&outcome.violations),
            again,
            trace_file: None,
        });
    }
    let mut missing = summary.never_happened(options.faults);
    if let Some(k) = options.without {
        missing.retain(|m| *m != format!("fault {k}"));
    }
    let uncovered = !missing.is_empty() && !args.no_coverage;
    if uncovered && !json {
        say!("\nNEVER HAPPENED (coverage): {}", missing.join(", "));
    }
    let ok = check.as_ref().is_none_or(CorpusCheck::passed) && failing.is_empty() && !uncovered;
    if json {
        super::out::json(&RunReport {
            command,
            commit,
            corpus: check.as_ref().map(CorpusCheck::json),
            totals: Totals::of(&summary, wall),
            failing,
            never_happened: missing,
            passed: ok,
        });
    }
    passed(ok)
}
