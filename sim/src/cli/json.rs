//! The `--json` documents of `run`, `replay`, `torture` and `mutants`:
//! serde structs with stable camelCase field names, documented in
//! sim/README.md ("JSON output"). A field is added, never renamed or
//! retyped; counts are integers, times are `...Ms` integers or `...S`
//! seconds as floats.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::finding::Finding;
use crate::paths::required_paths;
use crate::summary::Summary;
use crate::FaultKind;

/// One finding of a run.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    /// The invariant's or check's name, e.g. `conservation`, `liveness`.
    pub check: String,
    /// What it is about, e.g. `order order-7`.
    pub subject: String,
    pub detail: String,
}

impl From<&Finding> for Violation {
    fn from(f: &Finding) -> Violation {
        Violation {
            check: f.check.clone(),
            subject: f.subject.clone(),
            detail: f.detail.clone(),
        }
    }
}

/// The findings of a run.
pub fn violations(findings: &[Finding]) -> Vec<Violation> {
    findings.iter().map(Violation::from).collect()
}

/// A sweep's totals (`summary.rs`), every path and fault kind named, zero
/// counts included.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub seeds: u64,
    pub orders: u64,
    /// Orders by outcome: `COMPLETED`, each failed step, `PENDING`, `REJECTED`.
    pub paths: BTreeMap<String, u64>,
    /// Faults injected, by kind name (torture's own kinds included).
    pub faults: BTreeMap<String, u64>,
    /// Rare states reached, by name.
    pub rare_states: BTreeMap<String, u64>,
    pub dead_letters: u64,
    /// Seeds with at least one violation.
    pub failing_seeds: Vec<u64>,
    pub simulated_ms: u64,
    pub wall_s: f64,
}

impl Totals {
    pub fn of(summary: &Summary, wall: Duration) -> Totals {
        let mut paths: BTreeMap<String, u64> = required_paths().into_iter().map(|p| (p, 0)).collect();
        paths.extend(summary.paths.clone());
        let count = |k: &FaultKind| summary.faults.get(k).copied().unwrap_or(0);
        let mut faults: BTreeMap<String, u64> = FaultKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), count(k)))
            .collect();
        faults.extend(summary.other_faults.iter().map(|(k, n)| (k.to_string(), *n)));
        Totals {
            seeds: summary.seeds,
            orders: summary.orders,
            paths,
            faults,
            rare_states: FaultKind::RARE
                .iter()
                .map(|k| (k.name().to_string(), count(k)))
                .collect(),
            dead_letters: summary.dead_letters,
            failing_seeds: summary.failing.iter().map(|(seed, _)| *seed).collect(),
            simulated_ms: summary.simulated_ms,
            wall_s: wall.as_secs_f64(),
        }
    }
}

/// One failing seed of a sweep.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailingSeed {
    pub seed: u64,
    pub violations: Vec<Violation>,
    /// The command that runs it again.
    pub again: String,
    /// Where its plan, findings and trace were saved (torture).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_file: Option<String>,
}
