//! The seed corpus (`sim/corpus/`): seeds worth running again, kept in the
//! repository with what made them worth keeping.
//!
//! Two kinds of entry, one file each, one JSON object per line:
//! - `failures.jsonl`: a seed that violated an invariant once (found by CI,
//!   by a developer or by `saga-sim hunt`), with its profile, mutant and
//!   commit. Replayed without its mutant before every sweep: once its bug is
//!   fixed it must stay clean, so a bug that comes back is caught by the
//!   seed that found it first.
//! - `rare.jsonl`: a seed in which some order's saga reached a combination
//!   of saga path and fault kinds (`combinations`) that no corpus seed had
//!   reached, found by `hunt`. Rare paths are where the next bug is; the
//!   replay keeps them in every run.
//!
//! A seed names its run only together with the generators of the commit it
//! was found at: the recorded trace hash tells a replay whether the seed
//! still draws the same run ("drifted" otherwise; it is still run and must
//! still be clean).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::faults::{FaultKind, Profile};
use crate::run::SimOutcome;
use crate::sweep::Options;
use crate::world::EntryKind;

/// The corpus folder of this checkout (`sim/corpus/`).
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Why a seed is in the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// It violated an invariant (with `mutant`, the planted bug it exposed).
    Failure,
    /// It reached saga-path / fault-kind combinations the corpus lacked.
    Rare,
}

impl Kind {
    fn file(self) -> &'static str {
        match self {
            Kind::Failure => "failures.jsonl",
            Kind::Rare => "rare.jsonl",
        }
    }
}

/// One corpus line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    pub seed: u64,
    /// The fault profile's name (`heavy`, `swarm`, ...).
    pub faults: String,
    pub orders: usize,
    /// The planted bug the seed exposed (failures found by `mutants`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutant: Option<String>,
    /// A fault kind taken out of the plan (`--without`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub without: Option<String>,
    /// The commit the seed was found at (`git describe`).
    pub commit: String,
    /// Who found it: `ci`, `hunt`, `developer`, `mutants`.
    pub found_by: String,
    /// The trace hash at that commit (hex), to tell a drifted replay.
    pub hash: String,
    /// The first violations (failures) or the new combinations (rare seeds).
    pub why: Vec<String>,
}

impl Entry {
    /// An entry for `outcome`, run with `options`.
    pub fn from_outcome(
        kind: Kind,
        outcome: &SimOutcome,
        options: &Options,
        commit: &str,
        found_by: &str,
        why: Vec<String>,
    ) -> Entry {
        Entry {
            kind,
            seed: outcome.seed,
            faults: options.faults.name().to_string(),
            orders: options.orders,
            mutant: options.mutant.clone(),
            without: options.without.map(|k| k.name().to_string()),
            commit: commit.to_string(),
            found_by: found_by.to_string(),
            hash: format!("{:016x}", outcome.hash),
            why,
        }
    }

    /// A failure entry for `outcome`, kept with its first violations.
    pub fn failure(outcome: &SimOutcome, options: &Options, commit: &str, found_by: &str) -> Entry {
        let why = outcome.violations.iter().take(3).map(|v| v.to_string()).collect();
        Entry::from_outcome(Kind::Failure, outcome, options, commit, found_by, why)
    }

    /// The entry's profile, if this build knows it.
    pub fn profile(&self) -> Result<Profile, String> {
        <Profile as clap::ValueEnum>::from_str(&self.faults, false)
            .map_err(|_| format!("unknown fault profile {:?}", self.faults))
    }

    /// The entry's `without` kind, if any and if this build knows it.
    pub fn without_kind(&self) -> Result<Option<FaultKind>, String> {
        self.without
            .as_deref()
            .map(|name| {
                crate::FaultPlan::kind_named(name).ok_or_else(|| format!("unknown fault kind {name:?}"))
            })
            .transpose()
    }

    /// Whether `other` stands for the same run as this entry.
    fn same_run(&self, other: &Entry) -> bool {
        (
            self.kind,
            self.seed,
            &self.faults,
            self.orders,
            &self.mutant,
            &self.without,
        ) == (
            other.kind,
            other.seed,
            &other.faults,
            other.orders,
            &other.mutant,
            &other.without,
        )
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} --faults {} --orders {}",
            self.seed, self.faults, self.orders
        )?;
        if let Some(k) = &self.without {
            write!(f, " --without {k}")?;
        }
        if let Some(m) = &self.mutant {
            write!(f, " (mutant {m})")?;
        }
        write!(
            f,
            " [{} by {} at {}]",
            kind_name(self.kind),
            self.found_by,
            self.commit
        )
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Failure => "failure",
        Kind::Rare => "rare",
    }
}

/// The combinations a run reached: for each placed order, its path with
/// the set of fault kinds that happened while its saga ran (from its
/// placement to its last publish or delivery in the trace), e.g.
/// `PAYMENT + {crash-after-publish, duplicate}`. A heavy plan injects every
/// kind somewhere in a seed; what a single saga lived through is rarer.
pub fn combinations(outcome: &SimOutcome) -> BTreeSet<String> {
    let mut windows: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for e in &outcome.entries {
        let order = match &e.kind {
            EntryKind::Place { order } => order,
            EntryKind::Publish { order, .. } | EntryKind::Delivery { order, .. } => order,
            _ => continue,
        };
        let w = windows.entry(order.as_str()).or_insert((e.at_ms, e.at_ms));
        w.0 = w.0.min(e.at_ms);
        w.1 = w.1.max(e.at_ms);
    }
    let faults: Vec<(i64, FaultKind)> = outcome
        .entries
        .iter()
        .filter_map(|e| match e.kind {
            EntryKind::Fault { kind, .. } => Some((e.at_ms, kind)),
            _ => None,
        })
        .collect();
    outcome
        .order_paths
        .iter()
        .map(|(order, path)| {
            let kinds: BTreeSet<&str> = windows
                .get(order.as_str())
                .map(|&(from, to)| {
                    faults
                        .iter()
                        .filter(|(at, _)| (from..=to).contains(at))
                        .map(|(_, k)| k.name())
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{path} + {{{}}}",
                kinds.into_iter().collect::<Vec<_>>().join(", ")
            )
        })
        .collect()
}

/// The corpus on disk.
#[derive(Debug, Clone)]
pub struct Corpus {
    dir: PathBuf,
    pub entries: Vec<Entry>,
}

impl Corpus {
    /// Reads `dir`'s files (missing files are empty). A malformed line is an
    /// error naming the file and line: the corpus is kept by hand too.
    pub fn load(dir: &Path) -> Result<Corpus, String> {
        let mut entries = Vec::new();
        for kind in [Kind::Failure, Kind::Rare] {
            let path = dir.join(kind.file());
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("{}: {e}", path.display())),
            };
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let entry: Entry =
                    serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
                if entry.kind != kind {
                    return Err(format!(
                        "{}:{}: a {} entry in the {} file",
                        path.display(),
                        i + 1,
                        kind_name(entry.kind),
                        kind_name(kind)
                    ));
                }
                entries.push(entry);
            }
        }
        Ok(Corpus {
            dir: dir.to_path_buf(),
            entries,
        })
    }

    /// The combinations the corpus's rare seeds were kept for.
    pub fn known_combinations(&self) -> BTreeSet<String> {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::Rare)
            .flat_map(|e| e.why.iter().cloned())
            .collect()
    }

    /// Failure entries recorded for `mutant` (tried first by `mutants`).
    pub fn seeds_for_mutant(&self, mutant: &str) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::Failure && e.mutant.as_deref() == Some(mutant))
            .collect()
    }

    /// Appends `entry` unless the corpus already holds the same run;
    /// returns whether it was added.
    pub fn add(&mut self, entry: Entry) -> Result<bool, String> {
        if self.entries.iter().any(|e| e.same_run(&entry)) {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let path = self.dir.join(entry.kind.file());
        let line = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(file, "{line}").map_err(|e| format!("{}: {e}", path.display()))?;
        self.entries.push(entry);
        Ok(true)
    }

    /// The entries a sweep replays: every failure and rare seed, each run
    /// without a mutant (a mutant's seed must be clean on the real code).
    pub fn replayable(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, seed: u64) -> Entry {
        Entry {
            kind,
            seed,
            faults: "heavy".into(),
            orders: 20,
            mutant: None,
            without: None,
            commit: "abc".into(),
            found_by: "developer".into(),
            hash: "00".into(),
            why: vec!["COMPLETED + crash".into()],
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("saga-sim-corpus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn entries_round_trip_through_the_files_and_a_same_run_is_added_once() {
        let dir = scratch("round-trip");
        let mut corpus = Corpus::load(&dir).expect("a missing folder is an empty corpus");
        assert!(corpus.entries.is_empty());
        assert!(corpus.add(entry(Kind::Failure, 7)).unwrap());
        assert!(
            corpus.add(entry(Kind::Rare, 7)).unwrap(),
            "another kind is another entry"
        );
        assert!(
            !corpus.add(entry(Kind::Failure, 7)).unwrap(),
            "the same run twice"
        );
        let mut other = entry(Kind::Failure, 7);
        other.mutant = Some("double-refund".into());
        assert!(corpus.add(other).unwrap(), "with a mutant it is another run");
        let reloaded = Corpus::load(&dir).unwrap();
        assert_eq!(reloaded.entries.len(), 3);
        assert_eq!(reloaded.seeds_for_mutant("double-refund").len(), 1);
        assert_eq!(
            reloaded.known_combinations().into_iter().collect::<Vec<_>>(),
            vec!["COMPLETED + crash"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_file_and_line() {
        let dir = scratch("malformed");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("failures.jsonl"), "# comment\n{\"kind\":\"failure\"}\n").unwrap();
        let err = Corpus::load(&dir).unwrap_err();
        assert!(err.contains("failures.jsonl:2"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_committed_corpus_parses_and_names_known_profiles_and_kinds() {
        let corpus = Corpus::load(&default_dir()).expect("sim/corpus parses");
        for e in &corpus.entries {
            e.profile().unwrap_or_else(|err| panic!("{e}: {err}"));
            e.without_kind().unwrap_or_else(|err| panic!("{e}: {err}"));
        }
    }
}
