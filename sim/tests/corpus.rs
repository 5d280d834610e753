//! The corpus and `hunt` (sim/src/corpus.rs, corpus_replay.rs, hunt.rs): a
//! hunt records what it finds once; an entry replays its stored inputs,
//! whatever its seed draws now; a drifted entry fails until `repin`; an
//! entry without inputs is re-pinned from its seed; a mutant entry replays
//! with its mutant and is caught again (with `--features mutants`; without
//! it the entry is "not run").

use std::path::PathBuf;
use std::time::Duration;

use purchase_saga_sim::corpus::{combinations, Corpus, Entry, Kind};
use purchase_saga_sim::corpus_replay::{repin, replay, Status};
use purchase_saga_sim::hunt::{hunt, rare_seen_max, HuntSettings};
use purchase_saga_sim::sweep::{sweep, Options};
use purchase_saga_sim::Profile;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("saga-sim-corpus-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn settings(start: u64) -> HuntSettings {
    HuntSettings {
        // One chunk: the budget is over once the first chunk has run.
        budget: Duration::from_millis(1),
        start,
        orders: 6,
        jobs: 1,
        profiles: vec![Profile::Swarm],
        chunk_per_job: 3,
        rare_max: 10,
        rare_cap: 100,
    }
}

#[test]
fn a_hunt_keeps_new_combinations_once_and_a_second_hunt_over_the_same_seeds_keeps_nothing() {
    let dir = scratch("hunt");
    let mut corpus = Corpus::load(&dir).unwrap();
    let first = hunt(&settings(40), &mut corpus, &mut |_| {}, &mut |_| {}).expect("hunt");
    assert_eq!(first.seeds, 3);
    assert!(first.failures.is_empty(), "{:?}", first.failures);
    assert!(!first.rare.is_empty(), "an empty corpus lacks every combination");
    for e in &first.rare {
        assert_eq!(e.kind, Kind::Rare);
        assert!(!e.why.is_empty());
    }
    let mut reloaded = Corpus::load(&dir).unwrap();
    assert_eq!(
        reloaded.entries.len(),
        first.rare.len(),
        "what was kept is on disk"
    );
    let again = hunt(&settings(40), &mut reloaded, &mut |_| {}, &mut |_| {}).expect("hunt");
    assert!(
        again.rare.is_empty(),
        "the same seeds reach nothing new: {:?}",
        again.rare
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_hunt_keeps_the_combinations_rare_over_all_its_seeds_and_stops_at_the_rare_cap() {
    let dir = scratch("rare-budget");
    let mut corpus = Corpus::load(&dir).unwrap();
    let mut wide = settings(200);
    wide.chunk_per_job = 30;
    wide.jobs = 2;
    wide.rare_max = 4;
    let report = hunt(&wide, &mut corpus, &mut |_| {}, &mut |_| {}).expect("hunt");
    assert_eq!(report.seeds, 60);
    assert!(!report.rare.is_empty(), "60 seeds reach some combination once");
    assert!(report.rare.len() <= 4, "{} rare kept", report.rare.len());
    assert!(report.rare_combinations < report.new_combinations);
    // How many of the hunt's seeds reached each combination kept for.
    let options = Options {
        faults: Profile::Swarm,
        orders: 6,
        mutant: None,
        without: None,
    };
    let outcomes = sweep(200, 260, 2, &options);
    for e in &report.rare {
        for why in &e.why {
            let reached = outcomes.iter().filter(|o| combinations(o).contains(why)).count() as u64;
            assert!(
                reached <= rare_seen_max(60),
                "seed {} kept for {why}, which {reached} of the 60 seeds reached",
                e.seed
            );
        }
    }
    // A corpus holding `rare_cap` rare entries takes no more.
    let full = report.rare.len();
    let mut capped = settings(400);
    capped.rare_cap = full;
    let mut reloaded = Corpus::load(&dir).unwrap();
    let again = hunt(&capped, &mut reloaded, &mut |_| {}, &mut |_| {}).expect("hunt");
    assert!(again.rare.is_empty(), "{:?}", again.rare);
    assert_eq!(
        Corpus::load(&dir).unwrap().entries.len(),
        full,
        "rare.jsonl bounded"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn combinations_name_each_orders_path_with_the_faults_its_saga_lived_through() {
    let options = Options {
        faults: Profile::Heavy,
        orders: 6,
        mutant: None,
        without: None,
    };
    let outcome = options.run_seed(3);
    let combos = combinations(&outcome);
    let paths: std::collections::BTreeSet<&str> = outcome.order_paths.values().map(String::as_str).collect();
    assert!(!combos.is_empty());
    for c in &combos {
        let (path, kinds) = c.split_once(" + ").expect("path + {kinds}");
        assert!(paths.contains(path), "{c} names a path no order took");
        assert!(kinds.starts_with('{') && kinds.ends_with('}'), "{c}");
    }
}

fn light(orders: usize) -> Options {
    Options {
        faults: Profile::Light,
        orders,
        mutant: None,
        without: None,
    }
}

/// A corpus in `dir` holding the clean failure entry of `seed` (a bug
/// since fixed: its replay must be clean), pinned at its hash now.
fn kept_clean_entry(dir: &std::path::Path, seed: u64) -> (Corpus, Entry) {
    let options = light(6);
    let input = options.input(seed);
    let outcome = options.run_input(&input);
    assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
    let entry = Entry::failure(&input, &outcome, &options, "test", "developer");
    let mut corpus = Corpus::load(dir).unwrap();
    corpus.add(entry.clone()).unwrap();
    (corpus, entry)
}

#[test]
fn an_entry_replays_its_stored_inputs_not_what_its_seed_draws_now() {
    let dir = scratch("stored");
    let (_, mut entry) = kept_clean_entry(&dir, 5);
    // Another plan and scenario than seed 5 draws: seed 9's.
    let other = light(6).input(9);
    let stored = entry.input.as_mut().unwrap();
    assert_ne!(stored.plan, other.plan, "seeds 5 and 9 draw different plans");
    stored.plan = other.plan.clone();
    stored.scenario = other.scenario.clone();
    let edited = entry.run_input().unwrap();
    let edited_hash = format!("{:016x}", light(6).run_input(&edited).hash);
    let drawn_hash = format!("{:016x}", light(6).run_seed(5).hash);
    assert_ne!(edited_hash, drawn_hash);
    let replays = replay(std::slice::from_ref(&entry), 1);
    assert_eq!(
        replays[0].hash_now.as_deref(),
        Some(edited_hash.as_str()),
        "the replay ran the stored inputs"
    );
    assert_eq!(
        replays[0].status(),
        Status::Drifted,
        "pinned for the drawn inputs"
    );
    entry.hash = edited_hash;
    assert_eq!(replay(&[entry], 1)[0].status(), Status::Reproduced);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_drifted_entry_fails_the_replay_until_repin_records_its_new_hash() {
    let dir = scratch("drift");
    let (mut corpus, entry) = kept_clean_entry(&dir, 5);
    assert_eq!(replay(&corpus.entries, 1)[0].status(), Status::Reproduced);
    // The code under test changed what the entry runs: its hash moves.
    corpus.entries[0].hash = format!("{:016x}", u64::from_str_radix(&entry.hash, 16).unwrap() ^ 1);
    corpus.save().unwrap();
    let corpus = Corpus::load(&dir).unwrap();
    let drifted = replay(&corpus.entries, 1);
    assert_eq!(drifted[0].status(), Status::Drifted);
    assert_eq!(drifted[0].hash_now.as_deref(), Some(entry.hash.as_str()));
    let mut corpus = corpus;
    let done = repin(&mut corpus, |_| true, 1).unwrap();
    assert_eq!(done.len(), 1);
    assert!(done[0].refused.is_none(), "{:?}", done[0].refused);
    assert!(done[0].old_hash.is_some());
    let reloaded = Corpus::load(&dir).unwrap();
    assert_eq!(reloaded.entries[0].hash, entry.hash);
    assert!(
        reloaded.entries[0].pinned_at.is_some(),
        "the repin's commit is kept"
    );
    assert_eq!(replay(&reloaded.entries, 1)[0].status(), Status::Reproduced);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_entry_without_stored_inputs_fails_until_repin_draws_them_from_its_seed() {
    let dir = scratch("legacy");
    let (mut corpus, entry) = kept_clean_entry(&dir, 7);
    corpus.entries[0].input = None;
    corpus.save().unwrap();
    let mut corpus = Corpus::load(&dir).unwrap();
    let replays = replay(&corpus.entries, 1);
    assert_eq!(replays[0].status(), Status::Failing);
    assert!(
        replays[0].problems[0].contains("no stored inputs"),
        "{:?}",
        replays[0].problems
    );
    let done = repin(&mut corpus, |_| true, 1).unwrap();
    assert!(done[0].drawn && done[0].refused.is_none(), "{done:?}");
    let reloaded = Corpus::load(&dir).unwrap();
    assert_eq!(
        reloaded.entries[0].input, entry.input,
        "today's generators draw what was kept"
    );
    assert_eq!(replay(&reloaded.entries, 1)[0].status(), Status::Reproduced);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The heavy seed that double-refund is caught on first, its input and run.
#[cfg(feature = "mutants")]
fn double_refund_catch() -> (
    Options,
    purchase_saga_sim::SimInput,
    purchase_saga_sim::SimOutcome,
) {
    let options = Options {
        faults: Profile::Heavy,
        orders: 20,
        mutant: Some("double-refund".into()),
        without: None,
    };
    (0..50)
        .map(|seed| {
            let input = options.input(seed);
            let outcome = options.run_input(&input);
            (input, outcome)
        })
        .find(|(_, o)| !o.violations.is_empty())
        .map(|(input, outcome)| (options.clone(), input, outcome))
        .expect("double-refund is caught within 50 heavy seeds")
}

/// An entry kept for a planted bug replays with it switched on, finds the
/// same checks again and is clean without it; one that claims a check the
/// run does not find fails.
#[cfg(feature = "mutants")]
#[test]
fn a_mutant_entry_replays_with_its_mutant_and_is_caught_again() {
    let (options, input, outcome) = double_refund_catch();
    let entry = Entry::failure(&input, &outcome, &options, "test", "mutants");
    assert!(!entry.checks.is_empty());
    let replays = replay(std::slice::from_ref(&entry), 1);
    assert_eq!(
        replays[0].status(),
        Status::Reproduced,
        "{:?}",
        replays[0].problems
    );
    assert_eq!(replays[0].hash_now.as_deref(), Some(entry.hash.as_str()));
    let mut wrong = entry.clone();
    wrong.checks.push("no-such-check".into());
    let replays = replay(&[wrong], 1);
    assert_eq!(replays[0].status(), Status::Failing);
    assert!(
        replays[0].problems[0].contains("no-such-check"),
        "{:?}",
        replays[0].problems
    );
}

/// Without the mutants feature a mutant entry cannot be switched on: it is
/// "not run", which fails the replay, never a silent pass.
#[cfg(not(feature = "mutants"))]
#[test]
fn without_the_feature_a_mutant_entry_is_not_run() {
    let dir = scratch("not-run");
    let (_, mut entry) = kept_clean_entry(&dir, 5);
    entry.mutant = Some("double-refund".into());
    let replays = replay(&[entry], 1);
    assert_eq!(replays[0].status(), Status::NotRun);
    assert!(replays[0]
        .not_run
        .as_deref()
        .unwrap()
        .contains("--features mutants"));
    std::fs::remove_dir_all(&dir).unwrap();
}
