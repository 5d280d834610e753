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
                let found = Entry::failure(&options.input(outcome.seed), outcome, &options, &commit, "hunt");
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
            let input = options.input(outcome.seed);
            let found = Entry::from_outcome(Kind::Rare, &input, outcome, &options, &commit, "hunt", new);
            if corpus.add(found.clone())? {
                println!("hunt: rare {found}: {}", found.why.join(", "));
                report.rare.push(found);
            }
        }
    }
    report.wall = started.elapsed();
    Ok(report)
}
