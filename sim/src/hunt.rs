//! `saga-sim hunt`: unattended sweeps that grow the corpus.
//!
//! It runs chunks of fresh seeds, alternating the heavy and swarm profiles
//! (swarm switches fault kinds on and off per seed, so it reaches the
//! combinations heavy's everything-at-once plans blur), until its time is
//! up. A seed that violates an invariant is recorded as a failure at once.
//!
//! Rare seeds are chosen at the end, over everything the hunt ran. Almost
//! every seed reaches some saga-path / fault-kinds combination
//! (`corpus::combinations`) that no corpus entry was kept for, so "new to
//! the corpus" alone filled the budget from the first few dozen seeds with
//! combinations that the next thousand seeds reach again. A combination is
//! rare when at most [`rare_seen_max`] of the hunt's seeds reached it (one
//! in a thousand, at least once); the rarest are taken first, each by the
//! first seed that reached it, and a seed once taken covers all its rare
//! combinations. At most `rare_max` rare seeds per hunt, and none once the
//! corpus holds `rare_cap` rare entries, so the corpus a sweep replays
//! stays small. Nothing is recorded twice.

use std::collections::{BTreeMap, BTreeSet};
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
    /// Rare seeds recorded at most by one hunt.
    pub rare_max: usize,
    /// Rare entries the corpus holds at most: a hunt records none beyond.
    pub rare_cap: usize,
}

/// What a hunt did.
#[derive(Debug, Default)]
pub struct HuntReport {
    pub seeds: u64,
    /// Seeds `start..next` were run.
    pub next: u64,
    pub failures: Vec<Entry>,
    pub rare: Vec<Entry>,
    /// Combinations new to the corpus that the hunt reached, and how many
    /// of them were rare ([`rare_seen_max`] seeds or fewer).
    pub new_combinations: usize,
    pub rare_combinations: usize,
    /// Rare entries the corpus held before the hunt.
    pub rare_before: usize,
    pub wall: Duration,
}

/// What one chunk did, for the caller's progress line.
#[derive(Debug, Clone, Copy)]
pub struct ChunkDone {
    /// Seeds run so far, failing seeds recorded so far.
    pub seeds: u64,
    pub failures: usize,
    pub wall: Duration,
}

/// A combination is rare when at most this many of the hunt's `seeds`
/// reached it: one in a thousand, and at least one.
pub fn rare_seen_max(seeds: u64) -> u64 {
    (seeds / 1_000).max(1)
}

/// A clean seed that reached combinations the corpus lacked.
struct Candidate {
    seed: u64,
    profile: Profile,
    /// Indices into the hunt's combination names.
    new: Vec<usize>,
}

/// Runs the hunt, appending what it finds to `corpus`. `said` gets each
/// line worth showing at once (a failing seed and its replay command) and
/// `chunk` each chunk's totals.
pub fn hunt(
    settings: &HuntSettings,
    corpus: &mut Corpus,
    said: &mut dyn FnMut(String),
    chunk_done: &mut dyn FnMut(ChunkDone),
) -> Result<HuntReport, String> {
    assert!(!settings.profiles.is_empty(), "a hunt needs a profile");
    let started = Instant::now();
    let commit = commit();
    let known = corpus.known_combinations();
    let mut report = HuntReport {
        next: settings.start,
        rare_before: corpus.entries.iter().filter(|e| e.kind == Kind::Rare).count(),
        ..HuntReport::default()
    };
    // Every combination new to the corpus, by index, and how many seeds
    // reached each.
    let mut names: Vec<String> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen: Vec<u64> = Vec::new();
    // The first candidate that reached each combination.
    let mut first: Vec<usize> = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    let chunk = settings.chunk_per_job.max(1) * settings.jobs.max(1) as u64;
    let mut turn = 0;
    // At least one chunk; none starts after the budget.
    loop {
        if report.seeds > 0 && started.elapsed() >= settings.budget {
            break;
        }
        let profile = settings.profiles[turn % settings.profiles.len()];
        turn += 1;
        let options = options(profile, settings.orders);
        let (a, b) = (report.next, report.next.saturating_add(chunk));
        let runner = options.clone();
        let outcomes = crate::progress::quietly(|| {
            par_seeds(
                a,
                b,
                settings.jobs,
                Arc::new(move |seed| runner.run_seed(seed)),
                |o: &SimOutcome| !o.violations.is_empty(),
            )
        });
        report.next = b;
        report.seeds += b - a;
        for (_, outcome) in &outcomes {
            if !outcome.violations.is_empty() {
                let found = Entry::failure(&options.input(outcome.seed), outcome, &options, &commit, "hunt");
                if corpus.add(found.clone())? {
                    said(format!("hunt: FAILING {found}"));
                    said(format!("      replay: {}", options.replay_command(outcome.seed)));
                    report.failures.push(found);
                }
                continue;
            }
            let mut new = Vec::new();
            for combination in combinations(outcome).difference(&known) {
                let i = *index.entry(combination.clone()).or_insert_with(|| {
                    names.push(combination.clone());
                    seen.push(0);
                    first.push(candidates.len());
                    names.len() - 1
                });
                seen[i] += 1;
                new.push(i);
            }
            if !new.is_empty() {
                candidates.push(Candidate {
                    seed: outcome.seed,
                    profile,
                    new,
                });
            }
        }
        chunk_done(ChunkDone {
            seeds: report.seeds,
            failures: report.failures.len(),
            wall: started.elapsed(),
        });
    }
    let threshold = rare_seen_max(report.seeds);
    report.new_combinations = names.len();
    report.rare_combinations = seen.iter().filter(|n| **n <= threshold).count();
    let room = settings
        .rare_max
        .min(settings.rare_cap.saturating_sub(report.rare_before));
    // The rarest combinations first (fewest seeds, then by name), each
    // taken by the first seed that reached it.
    let mut rare: Vec<usize> = (0..names.len()).filter(|i| seen[*i] <= threshold).collect();
    rare.sort_by(|x, y| seen[*x].cmp(&seen[*y]).then_with(|| names[*x].cmp(&names[*y])));
    let mut covered: BTreeSet<usize> = BTreeSet::new();
    for combination in rare {
        if report.rare.len() >= room {
            break;
        }
        if covered.contains(&combination) {
            continue;
        }
        let c = &candidates[first[combination]];
        let why: Vec<usize> = c.new.iter().copied().filter(|i| seen[*i] <= threshold).collect();
        covered.extend(why.iter().copied());
        // The seed runs again (deterministic) for its entry.
        let options = options(c.profile, settings.orders);
        let input = options.input(c.seed);
        let outcome = options.run_input(&input);
        let why = why.iter().map(|i| names[*i].clone()).collect();
        let found = Entry::from_outcome(Kind::Rare, &input, &outcome, &options, &commit, "hunt", why);
        if corpus.add(found.clone())? {
            said(format!("hunt: rare {found}: {}", found.why.join(", ")));
            report.rare.push(found);
        }
    }
    report.wall = started.elapsed();
    Ok(report)
}

fn options(profile: Profile, orders: usize) -> Options {
    Options {
        faults: profile,
        orders,
        mutant: None,
        without: None,
    }
}
