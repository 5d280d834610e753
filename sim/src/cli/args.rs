//! The flags several commands share, each with one help text and one
//! default everywhere it appears.

use std::path::PathBuf;

use clap::Args;

use crate::corpus::Corpus;
use crate::sweep::Options;
use crate::{FaultKind, FaultPlan, Profile};

/// Where torture creates its databases when DATABASE_URL is unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// What each seed runs: the fault profile and the scenario's size.
#[derive(Args, Clone, Copy)]
pub struct Workload {
    /// The fault profile each seed's plan is drawn from.
    #[arg(long, value_enum, default_value = "heavy")]
    pub faults: Profile,
    /// Orders in each seed's scenario.
    #[arg(long, default_value_t = 20)]
    pub orders: usize,
}

/// How many seeds run at once.
#[derive(Args, Clone, Copy)]
pub struct Jobs {
    /// Seeds run at once, each on its own OS thread (torture: each with its
    /// own database and Redis).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub jobs: usize,
}

/// The corpus folder.
#[derive(Args, Clone)]
pub struct CorpusDir {
    /// The corpus folder (`failures.jsonl`, `rare.jsonl`), relative to the
    /// working directory: `sim/corpus` from the repository's root.
    #[arg(long, env = "SAGA_SIM_CORPUS", default_value = "sim/corpus")]
    pub corpus: PathBuf,
}

impl CorpusDir {
    /// The corpus; an error naming the folder when there is none (a
    /// missing folder is a wrong working directory or a typo, not an empty
    /// corpus).
    pub fn load(&self) -> Result<Corpus, String> {
        if !self.corpus.is_dir() {
            let here = std::env::current_dir()
                .map(|d| format!(" (working directory {})", d.display()))
                .unwrap_or_default();
            return Err(format!(
                "--corpus: no corpus folder at {}{here}: run from the repository's root, or pass \
                 --corpus DIR (or SAGA_SIM_CORPUS)",
                self.corpus.display()
            ));
        }
        Corpus::load(&self.corpus).map_err(|e| format!("--corpus: {e}"))
    }
}

/// A planted bug and a fault kind taken out of the plans.
#[derive(Args, Clone)]
pub struct Variation {
    /// Switch on a planted bug (needs `--features mutants`).
    #[arg(long)]
    pub mutant: Option<String>,
    /// Take one fault kind out of every plan (e.g. `drop-publish`).
    #[arg(long, value_parser = parse_kind)]
    pub without: Option<FaultKind>,
}

impl Variation {
    /// The options every seed shares.
    pub fn options(&self, workload: Workload) -> Options {
        Options {
            faults: workload.faults,
            orders: workload.orders,
            mutant: self.mutant.clone(),
            without: self.without,
        }
    }

    /// An error when the mutant is unknown to this build.
    pub fn check(&self) -> Result<(), String> {
        crate::mutants::with(self.mutant.as_deref(), || ()).map_err(|e| format!("--mutant: {e}"))
    }
}

/// `--json`.
#[derive(Args, Clone, Copy)]
pub struct Json {
    /// Print the report as one JSON document on stdout instead of the
    /// table (field names: sim/README.md, "JSON output").
    #[arg(long)]
    pub json: bool,
}

fn at_least_one(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A fault kind by name.
pub fn parse_kind(raw: &str) -> Result<FaultKind, String> {
    FaultPlan::kind_named(raw).ok_or_else(|| {
        let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown fault kind {raw:?}; known: {}", names.join(", "))
    })
}

/// A half-open range of seeds `A..B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedRange {
    pub from: u64,
    /// The first seed not run.
    pub to: u64,
}

impl std::str::FromStr for SeedRange {
    type Err = String;

    fn from_str(raw: &str) -> Result<SeedRange, String> {
        parse_range(raw).map(|(from, to)| SeedRange { from, to })
    }
}

impl std::fmt::Display for SeedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.from, self.to)
    }
}

fn parse_range(raw: &str) -> Result<(u64, u64), String> {
    let (a, b) = raw
        .split_once("..")
        .ok_or_else(|| format!("{raw:?} is not A..B"))?;
    let a: u64 = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u64 = b.parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a >= b {
        return Err(format!("empty range {raw}"));
    }
    Ok((a, b))
}
