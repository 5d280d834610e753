//! `saga-sim hunt`: unattended sweeps that grow the corpus.
//!
//! It runs chunks of fresh seeds, alternating the heavy and swarm profiles
//! (swarm switches fault kinds on and off per seed, so it reaches the
//! combinations heavy's everything-at-once plans blur), until its time is
//! up. A seed that violates an invariant is recorded as a failure; a clean
//! seed in which an order reached a saga-path / fault-kinds combination no
//! corpus seed reached is
//! recorded as rare (at most `rare_max` per hunt, so the corpus a sweep
//! replays stays small). Nothing is recorded twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::corpus::{combinations, Corpus, Entry, Kind};
use crate::faults::Profile;
use crate::run::SimOutcome;
use crate::sweep::{commit, par_seeds, Options};

/// What a hunt runs.
#[derive(Debug, Clone)]
pub struct HuntSettings {
    /// Wall time after which no new chunk starts.
    pub budget: Duration,
    /// The first seed; the hunt runs `start..` in order.
    pub start: u64,
    pub orders: usize,
    pub jobs: usize,
    /// Profiles taken in turn, one per chunk.
    pub profiles: Vec<Profile>,
    /// Seeds per chunk per job.
    pub chunk_per_job: u64,
    /// Rare seeds recorded at most.
    pub rare_max: usize,
}

/// What a hunt did.
#[derive(Debug, Default)]
pub struct HuntReport {
    pub seeds: u64,
    /// Seeds `start..next` were run.
    pub next: u64,
    pub failures: Vec<Entry>,
    pub rare: Vec<Entry>,
    pub wall: Duration,
}

/// Runs the hunt, appending what it finds to `corpus`.
pub fn hunt(settings: &HuntSettings, corpus: &mut Corpus) -> Result<HuntReport, String> {
    assert!(!settings.profiles.is_empty(), "a hunt needs a profile");
    let started = Instant::now();
    let commit = commit();
    let mut known = corpus.known_combinations();
    let mut report = HuntReport {
        next: settings.start,
        ..HuntReport::default()
    };
    let chunk = settings.chunk_per_job.max(1) * settings.jobs.max(1) as u64;
    let mut turn = 0;
    // At least one chunk; none starts after the budget.
    loop {
        if report.seeds > 0 && started.elapsed() >= settings.budget {
            break;
        }
        let profile = settings.profiles[turn % settings.profiles.len()];
        turn += 1;
        let options = Options {
            faults: profile,
            orders: settings.orders,
            mutant: None,
            without: None,
        };
        let (a, b) = (report.next, report.next.saturating_add(chunk));
        let runner = options.clone();
        let outcomes = par_seeds(
            a,
            b,
            settings.jobs,
            Arc::new(move |seed| runner.run_seed(seed)),
            |o: &SimOutcome| !o.violations.is_empty(),
        );
        report.next = b;
        report.seeds += b - a;
        for (_, outcome) in &outcomes {
            if !outcome.violations.is_empty() {
                let found = Entry::failure(outcome, &options, &commit, "hunt");
                if corpus.add(found.clone())? {
                    println!("hunt: FAILING {found}");
                    println!("      replay: {}", options.replay_command(outcome.seed));
                    report.failures.push(found);
                }
                continue;
            }
            if report.rare.len() >= settings.rare_max {
                continue;
            }
            let new: Vec<String> = combinations(outcome).difference(&known).cloned().collect();
            if new.is_empty() {
                continue;
            }
            known.extend(new.iter().cloned());
            let found = Entry::from_outcome(Kind::Rare, outcome, &options, &commit, "hunt", new);
            if corpus.add(found.clone())? {
                println!("hunt: rare {found}: {}", found.why.join(", "));
                report.rare.push(found);
            }
        }
    }
    report.wall = started.elapsed();
    Ok(report)
}

/// The result of replaying the corpus.
#[derive(Debug, Default)]
pub struct Replayed {
    pub seeds: usize,
    /// Entries whose trace hash changed since they were recorded (the
    /// generators changed): still run, still required clean.
    pub drifted: usize,
    /// Entries that violated an invariant now, with the violations.
    pub failing: Vec<(Entry, Vec<String>)>,
    /// Entries this build cannot run (unknown profile or fault kind).
    pub unreadable: Vec<(Entry, String)>,
}

/// Replays every corpus entry on `jobs` threads: without its mutant
/// (`with_mutants` false: what `saga-sim run` requires clean), or with the
/// mutant it was recorded with (true: a mutant's seed must still expose it;
/// needs `--features mutants`).
pub fn replay_corpus(corpus: &Corpus, jobs: usize, with_mutants: bool) -> Replayed {
    let mut replayed = Replayed::default();
    let mut runs: Vec<(Entry, Options)> = Vec::new();
    for entry in corpus.replayable() {
        match (entry.profile(), entry.without_kind()) {
            (Ok(faults), Ok(without)) => runs.push((
                entry.clone(),
                Options {
                    faults,
                    orders: entry.orders,
                    mutant: entry.mutant.clone().filter(|_| with_mutants),
                    without,
                },
            )),
            (Err(e), _) | (_, Err(e)) => replayed.unreadable.push((entry.clone(), e)),
        }
    }
    let runs = Arc::new(runs);
    let shared = runs.clone();
    let outcomes = par_seeds(
        0,
        runs.len() as u64,
        jobs,
        Arc::new(move |i| {
            let (entry, options) = &shared[i as usize];
            let outcome = options.input(entry.seed);
            crate::mutants::with(options.mutant.as_deref(), || {
                crate::run::run(&outcome, &Default::default())
            })
        }),
        |o: &Result<SimOutcome, String>| o.as_ref().map_or(true, |o| !o.violations.is_empty()),
    );
    for (i, outcome) in outcomes {
        let (entry, _) = &runs[i as usize];
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                replayed.unreadable.push((entry.clone(), e));
                continue;
            }
        };
        replayed.seeds += 1;
        let same_mutant = entry.mutant.is_none() || with_mutants;
        if same_mutant && entry.hash != format!("{:016x}", outcome.hash) {
            replayed.drifted += 1;
        }
        if !outcome.violations.is_empty() {
            let why = outcome.violations.iter().take(5).map(|v| v.to_string()).collect();
            replayed.failing.push((entry.clone(), why));
        }
    }
    replayed
}
