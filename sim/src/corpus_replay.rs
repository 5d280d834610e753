//! Replaying the corpus (`saga-sim run` before its seeds) and re-pinning
//! it (`saga-sim corpus repin`).
//!
//! Every entry runs from its stored inputs (`corpus::StoredInput`) and must
//! reproduce what it was kept for:
//! - its trace hash is the pinned one (for a mutant entry, of the run with
//!   its mutant). Another hash is **drifted** and fails: the code under
//!   test changed what the entry runs, so what it proved is unproven until
//!   `saga-sim corpus repin` has re-run it and checked it again;
//! - a failure entry with a mutant: with the mutant switched on it finds
//!   the pinned checks again, and without it the same inputs run clean. A
//!   build without `--features mutants` cannot switch it on: the entry is
//!   **not run** and fails (its clean half still runs);
//! - a failure entry without a mutant (a bug since fixed): clean;
//! - a rare entry: clean, and it reaches again every saga-path / fault-kind
//!   combination it was kept for.
//!
//! `repin` re-runs the chosen entries (an entry without stored inputs first
//! draws them from its seed with this commit's generators: the migration
//! path), requires what a replay requires except the hash and the exact
//! checks (a mutant entry must be caught by a check that counts,
//! `catch::counts_as_catch`, and be clean without its mutant; a rare entry
//! that no longer reaches all its combinations is kept for those it
//! reaches that no other entry was kept for), then records the new hash,
//! checks (or combinations) and `pinned_at` commit. An entry that no
//! longer does what it was kept for is left as it is and named.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::catch::counts_as_catch;
use crate::corpus::{checks_of, combinations, Corpus, Entry, Kind, StoredInput};
use crate::run::{input_from_seed, SimInput, SimOutcome, SimSettings};
use crate::sweep::{commit, par_seeds, Options};

/// What became of one entry's replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Same trace, same finding: the entry proves what it proved.
    Reproduced,
    /// It did what it was kept for, but its trace hash changed.
    Drifted,
    /// Its mutant could not be switched on in this build.
    NotRun,
    /// It no longer does what it was kept for (or cannot be run).
    Failing,
}

/// One entry's replay.
#[derive(Debug, Clone)]
pub struct EntryReplay {
    /// Index into the replayed entries.
    pub index: usize,
    pub entry: Entry,
    /// The trace hash now (hex), if the entry's run ran.
    pub hash_now: Option<String>,
    /// Why the entry was not run.
    pub not_run: Option<String>,
    /// What it failed to reproduce, one line each.
    pub problems: Vec<String>,
    /// The run with the mutant (or the only run), for a repin.
    pub outcome: Option<SimOutcome>,
}

impl EntryReplay {
    pub fn drifted(&self) -> bool {
        self.hash_now.as_ref().is_some_and(|now| *now != self.entry.hash)
    }

    pub fn status(&self) -> Status {
        if !self.problems.is_empty() {
            Status::Failing
        } else if self.not_run.is_some() {
            Status::NotRun
        } else if self.drifted() {
            Status::Drifted
        } else {
            Status::Reproduced
        }
    }
}

/// The command that re-pins `entry`.
pub fn repin_command(entry: &Entry) -> String {
    let features = if entry.mutant.is_some() {
        " --features mutants"
    } else {
        ""
    };
    let mut flags = format!(" --seed {} --faults {}", entry.seed, entry.faults);
    if let Some(m) = &entry.mutant {
        flags += &format!(" --mutant {m}");
    }
    format!("cargo run -p purchase-saga-sim --release{features} -- corpus repin{flags}")
}

/// Whether the requirements are a replay's (pinned hash and checks) or a
/// repin's (any catch that counts; the hash is what is being recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judge {
    Replay,
    Repin,
}

/// A run of one entry: with its mutant (or the only run), or the clean
/// half of a mutant entry.
#[derive(Clone)]
struct Planned {
    entry: usize,
    with_mutant: bool,
    input: SimInput,
    options: Options,
}

/// Replays `entries` on `jobs` threads (see the module docs).
pub fn replay(entries: &[Entry], jobs: usize) -> Vec<EntryReplay> {
    let inputs: Vec<Result<SimInput, String>> = entries.iter().map(Entry::run_input).collect();
    run_and_judge(entries, &inputs, jobs, Judge::Replay)
}

/// Runs each entry (and each mutant entry's clean half) and judges it.
fn run_and_judge(
    entries: &[Entry],
    inputs: &[Result<SimInput, String>],
    jobs: usize,
    judge: Judge,
) -> Vec<EntryReplay> {
    let mut replays: Vec<EntryReplay> = entries
        .iter()
        .enumerate()
        .map(|(index, entry)| EntryReplay {
            index,
            entry: entry.clone(),
            hash_now: None,
            not_run: None,
            problems: Vec::new(),
            outcome: None,
        })
        .collect();
    let mut planned = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let options = match entry.options() {
            Ok(o) => o,
            Err(e) => {
                replays[i]
                    .problems
                    .push(format!("cannot be read by this build: {e}"));
                continue;
            }
        };
        let input = match &inputs[i] {
            Ok(input) => input.clone(),
            Err(e) => {
                replays[i].problems.push(e.clone());
                continue;
            }
        };
        if entry.mutant.is_some() {
            planned.push(Planned {
                entry: i,
                with_mutant: false,
                input: input.clone(),
                options: Options {
                    mutant: None,
                    ..options.clone()
                },
            });
        }
        planned.push(Planned {
            entry: i,
            with_mutant: true,
            input,
            options,
        });
    }
    let planned = Arc::new(planned);
    let shared = planned.clone();
    let outcomes = par_seeds(
        0,
        planned.len() as u64,
        jobs,
        Arc::new(move |k| {
            let p = &shared[k as usize];
            let outcome = crate::mutants::with(p.options.mutant.as_deref(), || {
                crate::run::run(&p.input, &SimSettings::default())
            });
            (run_fails(p.options.mutant.is_some(), &outcome), outcome)
        }),
        |(fails, _): &(bool, Result<SimOutcome, String>)| *fails,
    );
    for (k, (_, outcome)) in outcomes {
        let p = &planned[k as usize];
        let replay = &mut replays[p.entry];
        match (outcome, p.with_mutant) {
            (Err(e), _) => replay.not_run = Some(e),
            (Ok(o), true) => {
                judge_run(replay, &o, judge);
                replay.hash_now = Some(format!("{:016x}", o.hash));
                replay.outcome = Some(o);
            }
            (Ok(o), false) => {
                if !o.violations.is_empty() {
                    replay
                        .problems
                        .push(format!("not clean without its mutant: {}", first_lines(&o)));
                }
            }
        }
    }
    replays
}

/// Whether one planned run failed, for the progress line's count: a run
/// with a mutant switched on must be caught by a check that counts (its
/// findings are the point), every other run must be clean. A run that
/// could not start (the mutant is not in this build) is not run, not
/// failing.
fn run_fails(with_a_mutant: bool, outcome: &Result<SimOutcome, String>) -> bool {
    match outcome {
        Err(_) => false,
        Ok(o) if with_a_mutant => !o.violations.iter().any(counts_as_catch),
        Ok(o) => !o.violations.is_empty(),
    }
}

/// The requirements of the entry's run (with its mutant, or its only run).
fn judge_run(replay: &mut EntryReplay, o: &SimOutcome, judge: Judge) {
    let entry = &replay.entry;
    match (entry.kind, &entry.mutant) {
        (Kind::Failure, Some(mutant)) => {
            if !o.violations.iter().any(counts_as_catch) {
                replay.problems.push(format!(
                    "{mutant} went unnoticed (findings: {})",
                    if o.violations.is_empty() {
                        "none".to_string()
                    } else {
                        first_lines(o)
                    }
                ));
            } else if judge == Judge::Replay {
                let now = checks_of(o);
                if entry.checks.is_empty() {
                    replay
                        .problems
                        .push("no pinned checks (a line from before they were kept): repin it".into());
                }
                let missing: Vec<&String> = entry.checks.iter().filter(|c| !now.contains(c)).collect();
                if !missing.is_empty() {
                    replay
                        .problems
                        .push(format!("did not find {missing:?} again (found {now:?})"));
                }
            }
        }
        (Kind::Failure, None) | (Kind::Rare, _) => {
            if !o.violations.is_empty() {
                replay.problems.push(first_lines(o));
            }
        }
    }
    if entry.kind == Kind::Rare && judge == Judge::Replay {
        let reached = combinations(o);
        let lost: Vec<&String> = entry.why.iter().filter(|c| !reached.contains(*c)).collect();
        if !lost.is_empty() {
            replay.problems.push(format!("no longer reaches {lost:?}"));
        }
    }
}

/// The first violations of `o`, on one line.
fn first_lines(o: &SimOutcome) -> String {
    o.violations
        .iter()
        .take(3)
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What `repin` did with one entry.
#[derive(Debug, Clone)]
pub struct Repinned {
    pub entry: Entry,
    /// The hash before (None if unchanged).
    pub old_hash: Option<String>,
    /// The inputs were drawn from the seed (the entry had none).
    pub drawn: bool,
    /// Why it was not re-pinned (it no longer does what it was kept for,
    /// or could not be run); None when it was.
    pub refused: Option<String>,
}

/// Re-pins the entries of `corpus` that `chosen` selects (see the module
/// docs) and saves the corpus if one changed. Entries that reproduce with
/// their pinned hash and stored inputs are left untouched.
pub fn repin(
    corpus: &mut Corpus,
    chosen: impl Fn(&Entry) -> bool,
    jobs: usize,
) -> Result<Vec<Repinned>, String> {
    let picked: Vec<usize> = (0..corpus.entries.len())
        .filter(|&i| chosen(&corpus.entries[i]))
        .collect();
    let entries: Vec<Entry> = picked.iter().map(|&i| corpus.entries[i].clone()).collect();
    let inputs: Vec<Result<SimInput, String>> = entries
        .iter()
        .map(|e| match e.run_input() {
            Ok(input) => Ok(input),
            Err(_) => draw_input(e),
        })
        .collect();
    let judged = run_and_judge(&entries, &inputs, jobs, Judge::Repin);
    // A rare entry is kept for combinations no other entry was kept for.
    let others_combinations: Vec<BTreeSet<String>> = picked
        .iter()
        .map(|&own| {
            corpus
                .entries
                .iter()
                .enumerate()
                .filter(|(i, e)| *i != own && e.kind == Kind::Rare)
                .flat_map(|(_, e)| e.why.iter().cloned())
                .collect()
        })
        .collect();
    let pinned_at = commit();
    let mut done = Vec::new();
    let mut changed = false;
    for (replay, input) in judged.into_iter().zip(&inputs) {
        let drawn = replay.entry.input.is_none();
        let mut refused = if !replay.problems.is_empty() {
            Some(replay.problems.join("; "))
        } else {
            replay.not_run.clone()
        };
        // What a rare entry is kept for now: the combinations it was kept
        // for if it still reaches them all, else those it reaches that no
        // other entry was kept for (none: it is rare no more).
        let mut rare_why = None;
        if let (None, Some(o), Kind::Rare) = (&refused, &replay.outcome, replay.entry.kind) {
            let reached = combinations(o);
            if !replay.entry.why.iter().all(|c| reached.contains(c)) {
                let others = &others_combinations[replay.index];
                let new: Vec<String> = reached.difference(others).cloned().collect();
                if new.is_empty() {
                    refused = Some(format!(
                        "no longer reaches {:?}, nor a combination no other entry has: delete its line",
                        replay.entry.why
                    ));
                } else {
                    rare_why = Some(new);
                }
            }
        }
        let mut entry = replay.entry.clone();
        let mut old_hash = None;
        if let (None, Some(o), Ok(input)) = (&refused, &replay.outcome, input) {
            let hash = format!("{:016x}", o.hash);
            let checks = if entry.mutant.is_some() {
                checks_of(o)
            } else {
                Vec::new()
            };
            if hash != entry.hash || drawn || checks != entry.checks || rare_why.is_some() {
                old_hash = Some(entry.hash.clone());
                entry.hash = hash;
                entry.pinned_at = Some(pinned_at.clone());
                entry.input = Some(StoredInput::of(input));
                if let Some(why) = rare_why {
                    entry.why = why;
                }
                if entry.mutant.is_some() {
                    entry.why = o.violations.iter().take(3).map(|v| v.to_string()).collect();
                    entry.checks = checks;
                }
                corpus.entries[picked[replay.index]] = entry.clone();
                changed = true;
            }
        }
        done.push(Repinned {
            entry,
            old_hash,
            drawn,
            refused,
        });
    }
    if changed {
        corpus.save()?;
    }
    Ok(done)
}

/// The inputs `entry`'s seed draws with this commit's generators (for an
/// entry kept before inputs were stored).
fn draw_input(entry: &Entry) -> Result<SimInput, String> {
    let options = entry.options()?;
    let mut input = input_from_seed(entry.seed, options.faults, entry.orders, &SimSettings::default());
    if let Some(kind) = options.without {
        input.plan = input.plan.without(kind);
    }
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Finding;

    fn outcome(violations: Vec<Finding>) -> Result<SimOutcome, String> {
        Ok(SimOutcome {
            seed: 0,
            entries: Vec::new(),
            lines: Vec::new(),
            hash: 0,
            violations,
            paths: Default::default(),
            order_paths: Default::default(),
            faults: Default::default(),
            orders: 0,
            dead_letters: 0,
            simulated_ms: 0,
            shape: None,
            wall: Default::default(),
        })
    }

    #[test]
    fn a_mutant_caught_is_no_failure_and_a_finding_without_one_is() {
        let caught = || outcome(vec![Finding::new("balance-conservation", "user u-1", "off by 7")]);
        assert!(!run_fails(true, &caught()), "the mutant did what it was kept for");
        assert!(run_fails(true, &outcome(Vec::new())), "the mutant went unnoticed");
        assert!(run_fails(false, &caught()), "a finding without a mutant");
        assert!(!run_fails(false, &outcome(Vec::new())));
        assert!(!run_fails(true, &Err("not in this build".into())), "not run");
    }
}
