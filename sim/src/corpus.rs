//! The seed corpus (`sim/corpus/`): runs worth repeating, kept in the
//! repository with what made them worth keeping and the inputs they ran.
//!
//! Two kinds of entry, one file each, one JSON object per line:
//! - `failures.jsonl`: a run that violated an invariant once (found by CI,
//!   by a developer, by `saga-sim hunt`, or by `saga-sim mutants` for a
//!   planted bug, with the mutant's name).
//! - `rare.jsonl`: a run in which some order's saga reached a combination
//!   of saga path and fault kinds (`combinations`) that no corpus entry had
//!   reached, found by `hunt`. Rare paths are where the next bug is.
//!
//! An entry keeps its drawn inputs ([`StoredInput`]: the scenario, the
//! fault plan and the topology, serialised with serde), not only its seed:
//! a replay runs what is stored, so a change of the generators cannot turn
//! the entry into another test. The seed still seeds what is not an input
//! but the run itself: turmoil's random stream and the simulator's
//! per-operation draws (latency, aborts, broker duplicates and drops).
//! What a replay requires of an entry, and the `repin` that follows a
//! change of the code under test, are in `corpus_replay.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use purchase_saga::workload::Scenario;
use serde::{Deserialize, Serialize};

use crate::faults::{FaultKind, FaultPlan, Profile};
use crate::run::{SimInput, SimOutcome};
use crate::sweep::Options;
use crate::topology::Topology;
use crate::world::EntryKind;

/// The corpus folder of the source tree this crate was built from, for
/// tests. The binary's default is `sim/corpus` relative to the working
/// directory (`cli::args::CorpusDir`), never a build-time path.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Why an entry is in the corpus.
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

/// What a run starts from besides its seed, as drawn when the entry was
/// kept (after `without` took a kind out of the plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInput {
    pub scenario: Scenario,
    pub plan: FaultPlan,
    /// Which services share a process.
    pub topology: Topology,
}

impl StoredInput {
    pub fn of(input: &SimInput) -> StoredInput {
        StoredInput {
            scenario: input.scenario.clone(),
            plan: input.plan.clone(),
            topology: input.topology.clone(),
        }
    }

    /// The run input: these inputs with the entry's seed.
    pub fn with_seed(&self, seed: u64) -> SimInput {
        SimInput {
            seed,
            scenario: self.scenario.clone(),
            plan: self.plan.clone(),
            topology: self.topology.clone(),
        }
    }
}

/// One corpus line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    /// Seeds turmoil and the simulator's per-operation draws (the inputs
    /// were drawn from it too, but are replayed from `input`).
    pub seed: u64,
    /// The fault profile's name (`heavy`, `swarm`, ...) the plan was drawn for.
    pub faults: String,
    pub orders: usize,
    /// The planted bug the run exposed (failures found by `mutants`):
    /// replayed with it switched on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutant: Option<String>,
    /// A fault kind taken out of the plan (`--without`; already out of the
    /// stored plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub without: Option<String>,
    /// The commit the run was found at (`git describe`).
    pub commit: String,
    /// Who found it: `ci`, `hunt`, `developer`, `mutants`.
    pub found_by: String,
    /// The trace hash (hex) of the entry's run at `pinned_at` (with its
    /// mutant for a mutant entry): a replay with another hash fails until
    /// `saga-sim corpus repin`.
    pub hash: String,
    /// The commit `hash` was pinned at: `commit` until a repin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_at: Option<String>,
    /// The first violations (failures) or the new combinations (rare entries).
    pub why: Vec<String>,
    /// The checks the pinned run found (distinct, sorted): a mutant entry
    /// must find them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// The drawn inputs. Absent only in a line written before inputs were
    /// kept: a replay refuses it and `saga-sim corpus repin` draws them
    /// from the seed with the generators of its commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<StoredInput>,
}

impl Entry {
    /// An entry for `outcome`, the run of `input` with `options`.
    pub fn from_outcome(
        kind: Kind,
        input: &SimInput,
        outcome: &SimOutcome,
        options: &Options,
        commit: &str,
        found_by: &str,
        why: Vec<String>,
    ) -> Entry {
        assert_eq!(input.seed, outcome.seed, "the outcome is the input's run");
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
            pinned_at: None,
            why,
            checks: checks_of(outcome),
            input: Some(StoredInput::of(input)),
        }
    }

    /// A failure entry for `outcome`, kept with its first violations.
    pub fn failure(
        input: &SimInput,
        outcome: &SimOutcome,
        options: &Options,
        commit: &str,
        found_by: &str,
    ) -> Entry {
        let why = outcome.violations.iter().take(3).map(|v| v.to_string()).collect();
        Entry::from_outcome(Kind::Failure, input, outcome, options, commit, found_by, why)
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

    /// The options of the entry's run (with its mutant).
    pub fn options(&self) -> Result<Options, String> {
        Ok(Options {
            faults: self.profile()?,
            orders: self.orders,
            mutant: self.mutant.clone(),
            without: self.without_kind()?,
        })
    }

    /// The run input: the stored inputs with the entry's seed.
    pub fn run_input(&self) -> Result<SimInput, String> {
        self.input
            .as_ref()
            .map(|stored| stored.with_seed(self.seed))
            .ok_or_else(|| "no stored inputs (a line from before inputs were kept): `saga-sim corpus repin` draws them from the seed".to_string())
    }

    /// The commit the hash was pinned at.
    pub fn pinned(&self) -> &str {
        self.pinned_at.as_deref().unwrap_or(&self.commit)
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

/// The distinct checks `outcome` found, sorted.
pub fn checks_of(outcome: &SimOutcome) -> Vec<String> {
    let checks: BTreeSet<&str> = outcome.violations.iter().map(|v| v.check.as_str()).collect();
    checks.into_iter().map(str::to_string).collect()
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

    /// Rewrites both files with the entries as they are now (after a
    /// repin), keeping comment lines where they were: the k-th entry line
    /// of a file becomes the k-th entry of its kind.
    pub fn save(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        for kind in [Kind::Failure, Kind::Rare] {
            let path = self.dir.join(kind.file());
            let old = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(format!("{}: {e}", path.display())),
            };
            let mut entries = self.entries.iter().filter(|e| e.kind == kind);
            let mut text = String::new();
            for line in old.lines() {
                let trimmed = line.trim();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    text += line;
                } else {
                    let Some(entry) = entries.next() else { continue };
                    text += &serde_json::to_string(entry).map_err(|e| e.to_string())?;
                }
                text.push('\n');
            }
            for entry in entries {
                text += &serde_json::to_string(entry).map_err(|e| e.to_string())?;
                text.push('\n');
            }
            if text.is_empty() && old.is_empty() {
                continue;
            }
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
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
            pinned_at: None,
            why: vec!["COMPLETED + crash".into()],
            checks: Vec::new(),
            input: None,
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
        assert_eq!(
            reloaded
                .entries
                .iter()
                .filter(|e| e.mutant.as_deref() == Some("double-refund"))
                .count(),
            1
        );
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
            e.run_input().unwrap_or_else(|err| panic!("{e}: {err}"));
        }
    }
}
