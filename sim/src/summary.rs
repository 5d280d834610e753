//! The sweep's summary: outcomes per saga path, faults per kind, failing
//! seeds, speed; and the coverage check ("sometimes" assertions): a sweep in
//! which a saga path, an enabled fault kind or a rare state
//! (`FaultKind::RARE`, which some seeds are steered into) never happened
//! fails.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::faults::{FaultKind, Profile};
use crate::finding::Finding;
use crate::paths::required_paths;
use crate::run::SimOutcome;

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub seeds: u64,
    pub orders: u64,
    pub paths: BTreeMap<String, u64>,
    pub faults: BTreeMap<FaultKind, u64>,
    pub failing: Vec<(u64, Vec<Finding>)>,
    pub dead_letters: u64,
    pub simulated_ms: u64,
    /// Sum of each seed's own wall time (all threads).
    pub busy: Duration,
    /// Faults of kinds the simulator does not have, by name (torture's).
    pub other_faults: BTreeMap<&'static str, u64>,
}

impl Summary {
    pub fn add(&mut self, o: &SimOutcome) {
        self.seeds += 1;
        self.orders += o.orders;
        for (p, n) in &o.paths {
            *self.paths.entry(p.clone()).or_insert(0) += n;
        }
        for (k, n) in &o.faults {
            *self.faults.entry(*k).or_insert(0) += n;
        }
        if !o.violations.is_empty() {
            self.failing.push((o.seed, o.violations.clone()));
        }
        self.dead_letters += o.dead_letters;
        self.simulated_ms += o.simulated_ms;
        self.busy += o.wall;
    }

    /// Counts faults of kinds the simulator does not have (e.g. torture's),
    /// listed after the simulator's in the table.
    pub fn add_other_faults(&mut self, counts: impl IntoIterator<Item = (&'static str, u64)>) {
        for (name, n) in counts {
            *self.other_faults.entry(name).or_insert(0) += n;
        }
    }

    /// What should have happened at least once and never did.
    pub fn never_happened(&self, profile: Profile) -> Vec<String> {
        let mut missing: Vec<String> = required_paths()
            .into_iter()
            .filter(|p| self.paths.get(p).copied().unwrap_or(0) == 0)
            .map(|p| format!("path {p}"))
            .collect();
        if matches!(profile, Profile::Light | Profile::Heavy | Profile::Swarm) {
            missing.extend(
                FaultKind::ALL
                    .iter()
                    .filter(|k| self.faults.get(k).copied().unwrap_or(0) == 0)
                    .map(|k| format!("fault {k}")),
            );
            missing.extend(
                FaultKind::RARE
                    .iter()
                    .filter(|k| self.faults.get(k).copied().unwrap_or(0) == 0)
                    .map(|k| format!("rare state {k}")),
            );
        }
        missing
    }

    pub fn render(&self, wall: Duration) -> String {
        let mut s = String::new();
        let secs = wall.as_secs_f64().max(1e-9);
        let _ = writeln!(s, "seeds            {}", self.seeds);
        let _ = writeln!(s, "orders           {}", self.orders);
        let _ = writeln!(s, "outcomes per path:");
        let mut paths: Vec<String> = required_paths();
        paths.extend(
            self.paths
                .keys()
                .filter(|p| !required_paths().contains(p))
                .cloned(),
        );
        for p in paths {
            let _ = writeln!(s, "  {:<24} {}", p, self.paths.get(&p).copied().unwrap_or(0));
        }
        let _ = writeln!(s, "faults injected:");
        for k in FaultKind::ALL {
            let _ = writeln!(
                s,
                "  {:<24} {}",
                k.name(),
                self.faults.get(&k).copied().unwrap_or(0)
            );
        }
        for (name, n) in &self.other_faults {
            let _ = writeln!(s, "  {name:<24} {n}");
        }
        let _ = writeln!(s, "rare states reached:");
        for k in FaultKind::RARE {
            let _ = writeln!(
                s,
                "  {:<24} {}",
                k.name(),
                self.faults.get(&k).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(s, "dead letters     {}", self.dead_letters);
        let _ = writeln!(s, "violations       {} seed(s)", self.failing.len());
        let _ = writeln!(s, "wall time        {:.2}s", wall.as_secs_f64());
        let _ = writeln!(s, "seeds/s          {:.2}", self.seeds as f64 / secs);
        let _ = writeln!(
            s,
            "simulated/wall   {:.1}x (per thread: {:.1}x)",
            self.simulated_ms as f64 / 1000.0 / secs,
            self.simulated_ms as f64 / 1000.0 / self.busy.as_secs_f64().max(1e-9)
        );
        s
    }
}
