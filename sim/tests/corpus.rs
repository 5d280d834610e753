//! The seed corpus and `hunt` (sim/src/corpus.rs, sim/src/hunt.rs): a hunt
//! records what it finds once, a replay tells a drifted seed, and a seed
//! kept for a planted bug still exposes it when replayed with it.

use std::path::PathBuf;
use std::time::Duration;

use purchase_saga_sim::corpus::{combinations, Corpus, Entry, Kind};
use purchase_saga_sim::hunt::{hunt, replay_corpus, HuntSettings};
use purchase_saga_sim::sweep::Options;
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
    }
}

#[test]
fn a_hunt_keeps_new_combinations_once_and_a_second_hunt_over_the_same_seeds_keeps_nothing() {
    let dir = scratch("hunt");
    let mut corpus = Corpus::load(&dir).unwrap();
    let first = hunt(&settings(40), &mut corpus).expect("hunt");
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
    let again = hunt(&settings(40), &mut reloaded).expect("hunt");
    assert!(
        again.rare.is_empty(),
        "the same seeds reach nothing new: {:?}",
        again.rare
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

#[test]
fn a_replay_counts_a_seed_whose_trace_changed_as_drifted_and_still_runs_it() {
    let dir = scratch("drift");
    let mut corpus = Corpus::load(&dir).unwrap();
    let options = Options {
        faults: Profile::Light,
        orders: 6,
        mutant: None,
        without: None,
    };
    let outcome = options.run_seed(5);
    let kept = |seed_hash: u64| {
        let mut o = outcome.clone();
        o.hash = seed_hash;
        Entry::from_outcome(Kind::Failure, &o, &options, "test", "developer", vec![])
    };
    corpus.add(kept(outcome.hash)).unwrap();
    let replayed = replay_corpus(&corpus, 1, false);
    assert_eq!(
        (replayed.seeds, replayed.drifted, replayed.failing.len()),
        (1, 0, 0)
    );
    let mut drifted = Corpus::load(&scratch("drift-2")).unwrap();
    drifted.add(kept(outcome.hash ^ 1)).unwrap();
    let replayed = replay_corpus(&drifted, 1, false);
    assert_eq!(
        (replayed.seeds, replayed.drifted, replayed.failing.len()),
        (1, 1, 0)
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(scratch("drift-2")).ok();
}

/// A seed kept for a planted bug exposes it again when replayed with it,
/// and is clean without it (what `saga-sim run` requires).
#[cfg(feature = "mutants")]
#[test]
fn a_seed_kept_for_a_mutant_still_exposes_it_and_is_clean_without_it() {
    let mutant = "double-refund";
    let options = Options {
        faults: Profile::Heavy,
        orders: 20,
        mutant: Some(mutant.into()),
        without: None,
    };
    let (seed, outcome) = (0..50)
        .map(|seed| (seed, options.run_seed(seed)))
        .find(|(_, o)| !o.violations.is_empty())
        .expect("double-refund is caught within 50 heavy seeds");
    let dir = scratch("mutant");
    let mut corpus = Corpus::load(&dir).unwrap();
    corpus
        .add(Entry::from_outcome(
            Kind::Failure,
            &outcome,
            &options,
            "test",
            "mutants",
            vec![],
        ))
        .unwrap();
    let with = replay_corpus(&corpus, 1, true);
    assert_eq!(with.failing.len(), 1, "seed {seed} replayed with {mutant}");
    assert_eq!(with.drifted, 0, "the same seed gives the same trace");
    let without = replay_corpus(&corpus, 1, false);
    assert!(without.failing.is_empty(), "{:?}", without.failing);
    std::fs::remove_dir_all(&dir).unwrap();
}
