//! `saga-sim mutants`: each planted bug on the engines that can see it, and
//! a table that reports only what ran.
//!
//! Per mutant, in order, until one catches it:
//! 1. **the simulator** (mutants in code it runs): seeds `0..budget` with
//!    the mutant on its thread; the first violation that counts
//!    (`catch::counts_as_catch`) in simulated time is the catch;
//! 2. **torture** (the production adapters): seeds `0..torture_seeds` with
//!    the mutant on process-wide; a finding that does not count (setup,
//!    a host failure, liveness about no saga state) is named and the hunt
//!    goes on to the next seed;
//! 3. **the differential test** that names it (`mutants::differential_case`):
//!    the test case is run (a prebuilt test binary given with `--test-bin`,
//!    else `cargo test --features mutants --test T -- --exact CASE` in the
//!    workspace) and read: the case switches the mutant on itself and
//!    passes only if the model-vs-server comparison disagreed, and re-runs
//!    the disagreeing case without the mutant, which must agree. "Caught"
//!    is that case's `ok`.
//!
//! A catch of the simulator or torture is shown clean without the mutant
//! in the same run: its seed runs again with the mutant off and must have
//! no finding, else the row says "NOT CLEAN" and the command fails.
//! A mutant no selected engine could run is "not run", never caught, and
//! fails the command unless `--accept-not-run` names it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use crate::catch::{first_catch, first_catch_in_time};
use crate::corpus::{Corpus, Entry};
use crate::mutants;
use crate::sweep::{commit, Options};
use crate::torture::{self, TortureSettings};

/// The engines `saga-sim mutants` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Engines {
    pub sim: bool,
    pub torture: bool,
    pub differential: bool,
}

impl Engines {
    /// `sim,torture,differential` or a part of it.
    pub fn parse(raw: &str) -> Result<Engines, String> {
        let mut engines = Engines {
            sim: false,
            torture: false,
            differential: false,
        };
        for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "sim" => engines.sim = true,
                "torture" => engines.torture = true,
                "differential" => engines.differential = true,
                other => {
                    return Err(format!(
                        "unknown engine {other:?}; known: sim, torture, differential"
                    ))
                }
            }
        }
        Ok(engines)
    }
}

/// How `saga-sim mutants` hunts.
pub struct Hunting {
    /// Simulator seeds tried per mutant at most.
    pub budget: u64,
    pub jobs: usize,
    pub engines: Engines,
    /// Torture seeds tried per mutant the simulator missed.
    pub torture_seeds: u64,
    pub torture: TortureSettings,
    /// `--torture-without` as given, for the command that repeats a seed.
    pub torture_without: Vec<String>,
    /// Prebuilt differential test binaries by test target
    /// (`store_model_vs_postgres`); a target not named is run through
    /// `cargo test`.
    pub test_bins: BTreeMap<String, PathBuf>,
    /// Mutants whose "not run" does not fail the command (`all` for every one).
    pub accept_not_run: Vec<String>,
    /// Keep each simulator seed that caught a mutant in this corpus.
    pub record: Option<PathBuf>,
}

/// Who caught a mutant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    Sim,
    Torture,
    /// The differential test target and its case.
    Differential {
        target: String,
        case: String,
    },
}

/// Whether the catching run was shown clean without the mutant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanWithout {
    /// The same seed, mutant off, found nothing.
    Clean,
    /// The same seed, mutant off, found this: the catch proves nothing.
    NotClean(String),
    /// The differential case itself re-runs its disagreeing case without
    /// the mutant and requires agreement (its `ok` includes it).
    InTheTest,
}

/// What became of one mutant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Caught {
        engine: Engine,
        /// The catching seed (simulator, torture).
        seed: Option<u64>,
        check: String,
        clean_without: CleanWithout,
    },
    /// Engines that can see it ran and missed it.
    Survived,
    /// No selected engine could run it (the reason).
    NotRun(String),
}

/// One row of the mutants table.
#[derive(Debug, Clone)]
pub struct Row {
    pub mutant: &'static str,
    pub verdict: Verdict,
    /// Seeds (or test cases) run with the mutant.
    pub tried: u64,
    /// What ran and why it did not count or catch, one note each.
    pub notes: Vec<String>,
}

impl Row {
    /// Whether the row fails the command.
    pub fn fails(&self, accept_not_run: &[String]) -> bool {
        match &self.verdict {
            Verdict::Caught { clean_without, .. } => matches!(clean_without, CleanWithout::NotClean(_)),
            Verdict::Survived => true,
            Verdict::NotRun(_) => !accept_not_run.iter().any(|a| a == "all" || a == self.mutant),
        }
    }
}

/// Simulator seeds until one finds a violation that counts; its seed is
/// then run again without the mutant.
fn hunt_in_sim(mutant: &'static str, budget: u64, options: &Options, row: &mut Row) {
    let with = Options {
        mutant: Some(mutant.to_string()),
        ..options.clone()
    };
    for seed in 0..budget {
        row.tried += 1;
        let o = with.run_seed(seed);
        let Some(check) = first_catch_in_time(&o) else {
            if !o.violations.is_empty() && row.notes.len() < 3 {
                row.notes
                    .push(format!("sim seed {seed}: {} (not a catch)", o.violations[0]));
            }
            continue;
        };
        let without = options.run_seed(seed);
        row.verdict = Verdict::Caught {
            engine: Engine::Sim,
            seed: Some(seed),
            check,
            clean_without: match without.violations.first() {
                None => CleanWithout::Clean,
                Some(v) => CleanWithout::NotClean(v.to_string()),
            },
        };
        return;
    }
    row.verdict = Verdict::Survived;
}

/// Torture seeds with the mutant on process-wide until one finds a
/// violation that counts; that seed is then run again with it off. Runs
/// alone: the switch is the process's.
fn hunt_in_torture(mutant: &'static str, hunting: &Hunting, row: &mut Row) {
    for seed in 0..hunting.torture_seeds {
        mutants::activate_process(Some(mutant)).expect("the mutant names come from the build");
        row.tried += 1;
        let o = torture::run_seed(&hunting.torture, seed);
        mutants::activate_process(None).expect("switching off always works");
        let findings: Vec<_> = o.findings.iter().map(|(_, f)| f).collect();
        let Some(caught) = first_catch(findings.iter().copied()) else {
            if let Some(f) = findings.first() {
                row.notes.push(format!("torture seed {seed}: {f} (not a catch)"));
            }
            continue;
        };
        let check = caught.check.clone();
        let without = torture::run_seed(&hunting.torture, seed);
        row.verdict = Verdict::Caught {
            engine: Engine::Torture,
            seed: Some(seed),
            check,
            clean_without: match without.first() {
                None => CleanWithout::Clean,
                Some(f) => CleanWithout::NotClean(f.to_string()),
            },
        };
        return;
    }
    row.verdict = Verdict::Survived;
}

/// The workspace this binary was built from (where `cargo test` runs).
fn workspace_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("sim/ lies in the workspace")
}

/// What a run of one test case showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseResult {
    /// libtest reported `test CASE ... ok`.
    Passed,
    /// libtest reported `test CASE ... FAILED` (with the panic's line).
    Failed(String),
    /// The case did not run (no such case, a build error, ...).
    DidNotRun(String),
}

/// Reads libtest's output for `case`.
pub fn case_result(case: &str, status_ok: bool, output: &str) -> CaseResult {
    let line = format!("test {case} ... ");
    let verdict = output.lines().find_map(|l| l.strip_prefix(&line).map(str::trim));
    match verdict {
        Some("ok") if status_ok => CaseResult::Passed,
        Some(v) if v.starts_with("FAILED") || v == "ok" => CaseResult::Failed(
            output
                .lines()
                .find(|l| l.contains("panicked at") || l.starts_with("thread '"))
                .map(|l| l.trim().to_string())
                .unwrap_or_else(|| format!("exit status failure: {v}")),
        ),
        Some(other) => CaseResult::DidNotRun(format!("{case}: {other}")),
        None => CaseResult::DidNotRun(
            output
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .trim()
                .to_string(),
        ),
    }
}

/// Runs one differential test case and reads its result.
fn run_case(target: &str, case: &str, test_bins: &BTreeMap<String, PathBuf>) -> (CaseResult, String) {
    let (mut command, shown) = match test_bins.get(target) {
        Some(bin) => {
            let mut c = Command::new(bin);
            c.args([case, "--exact", "--test-threads", "1"]);
            (c, format!("{} {case} --exact", bin.display()))
        }
        None => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut c = Command::new(cargo);
            c.current_dir(workspace_dir()).args([
                "test",
                "--features",
                "mutants",
                "--test",
                target,
                "--",
                case,
                "--exact",
                "--test-threads",
                "1",
            ]);
            (
                c,
                format!("cargo test --features mutants --test {target} -- {case} --exact"),
            )
        }
    };
    // The case switches its mutant on itself; an inherited switch would
    // leak into its "without the mutant" half.
    command.env_remove("PURCHASE_SAGA_MUTANT");
    let result = match command.output() {
        Ok(out) => {
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            case_result(case, out.status.success(), &text)
        }
        Err(e) => CaseResult::DidNotRun(format!("cannot start {shown}: {e}")),
    };
    (result, shown)
}

/// The differential test case that names `mutant`, run and read.
fn hunt_in_differential(mutant: &'static str, hunting: &Hunting, row: &mut Row) {
    let (Some(test), Some(case)) = (
        mutants::differential_test(mutant),
        mutants::differential_case(mutant),
    ) else {
        if mutants::differential_test(mutant).is_some() {
            row.notes
                .push("a differential test is named but no case of it (mutants::differential_case)".into());
        }
        return;
    };
    let target = test
        .trim_start_matches("tests/")
        .trim_end_matches(".rs")
        .to_string();
    crate::progress::line(&format!("{mutant}: running {target} {case}"));
    let (result, shown) = run_case(&target, case, &hunting.test_bins);
    row.tried += 1;
    match result {
        CaseResult::Passed => {
            row.verdict = Verdict::Caught {
                engine: Engine::Differential {
                    target,
                    case: case.to_string(),
                },
                seed: None,
                check: "model-vs-server".into(),
                clean_without: CleanWithout::InTheTest,
            }
        }
        CaseResult::Failed(why) => {
            row.notes.push(format!("{shown}: FAILED: {why}"));
            row.verdict = Verdict::Survived;
        }
        CaseResult::DidNotRun(why) => {
            row.notes.push(format!("{shown}: did not run: {why}"));
            if !matches!(row.verdict, Verdict::Survived) {
                row.verdict = Verdict::NotRun(format!("{target} {case} did not run"));
            }
        }
    }
}

/// Runs every mutant (see the module docs); the rows in `Mutant::ALL` order.
pub fn hunt(hunting: &Hunting, options: &Options) -> Vec<Row> {
    let names = Arc::new(mutants::all_names());
    let sim_selected = hunting.engines.sim;
    // The simulator first, in parallel (a mutant per thread: its switch is
    // the thread's).
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..hunting.jobs.max(1))
        .map(|_| {
            let (next, names, tx) = (next.clone(), names.clone(), tx.clone());
            let options = options.clone();
            let (budget, sim) = (hunting.budget, hunting.engines.sim);
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&mutant) = names.get(i) else { return };
                let mut row = Row {
                    mutant,
                    verdict: Verdict::NotRun(if mutants::simulated(mutant) {
                        "no selected engine runs it".into()
                    } else {
                        "adapter code: only torture and its differential test run it; neither selected".into()
                    }),
                    tried: 0,
                    notes: Vec::new(),
                };
                if sim && mutants::simulated(mutant) {
                    hunt_in_sim(mutant, budget, &options, &mut row);
                }
                if tx.send((i, row)).is_err() {
                    return;
                }
            })
        })
        .collect();
    drop(tx);
    let mut rows: Vec<(usize, Row)> = Vec::new();
    for (i, row) in rx {
        if sim_selected {
            crate::progress::line(&format!(
                "simulator: {}/{} mutants, {}: {} after {} seed(s)",
                rows.len() + 1,
                names.len(),
                row.mutant,
                match row.verdict {
                    Verdict::Caught { .. } => "caught",
                    Verdict::Survived => "missed",
                    Verdict::NotRun(_) => "not simulated",
                },
                row.tried
            ));
        }
        rows.push((i, row));
    }
    for w in workers {
        w.join().expect("a worker thread panicked");
    }
    rows.sort_by_key(|(i, _)| *i);
    // Then torture, one mutant at a time, for what the simulator missed;
    // then the differential test cases.
    let mut rows: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect();
    for row in &mut rows {
        if !matches!(row.verdict, Verdict::Caught { .. }) && hunting.engines.torture {
            hunt_in_torture(row.mutant, hunting, row);
        }
        if !matches!(row.verdict, Verdict::Caught { .. }) && hunting.engines.differential {
            hunt_in_differential(row.mutant, hunting, row);
        }
        crate::progress::line(&format!(
            "{}: {}",
            row.mutant,
            match &row.verdict {
                Verdict::Caught { .. } => "caught",
                Verdict::Survived => "SURVIVED",
                Verdict::NotRun(_) => "NOT RUN",
            }
        ));
    }
    rows
}

/// The command that shows a caught mutant's catch again.
pub fn again(row: &Row, hunting: &Hunting, options: &Options) -> Option<String> {
    let Verdict::Caught { engine, seed, .. } = &row.verdict else {
        return None;
    };
    Some(match engine {
        Engine::Sim => Options {
            mutant: Some(row.mutant.to_string()),
            ..options.clone()
        }
        .replay_command(seed.expect("a simulator catch has a seed")),
        Engine::Torture => {
            let seed = seed.expect("a torture catch has a seed");
            format!(
                "cargo run -p purchase-saga-sim --release --features mutants -- {}",
                hunting
                    .torture
                    .command(seed, seed + 1, &hunting.torture_without, Some(row.mutant))
                    .trim_start_matches("saga-sim ")
            )
        }
        Engine::Differential { target, case } => {
            format!("cargo test --features mutants --test {target} -- {case} --exact")
        }
    })
}

/// The table `saga-sim mutants` prints, one row per mutant.
pub fn render(rows: &[Row], hunting: &Hunting, options: &Options) -> String {
    let mut s = format!(
        "{:<32} {:<40} {:>6} {:<28} {:<14} {:>6}  again\n",
        "mutant", "engine", "seed", "check", "clean without", "tried"
    );
    for row in rows {
        let line = match &row.verdict {
            Verdict::Caught {
                engine,
                seed,
                check,
                clean_without,
            } => {
                let name = match engine {
                    Engine::Sim => "simulator".to_string(),
                    Engine::Torture => "torture".to_string(),
                    Engine::Differential { target, .. } => format!("differential ({target})"),
                };
                let again = again(row, hunting, options).unwrap_or_default();
                let clean = match clean_without {
                    CleanWithout::Clean => "yes".to_string(),
                    CleanWithout::NotClean(_) => "NOT CLEAN".to_string(),
                    CleanWithout::InTheTest => "yes (in test)".to_string(),
                };
                format!(
                    "{:<32} {:<40} {:>6} {:<28} {:<14} {:>6}  {again}",
                    row.mutant,
                    name,
                    seed.map_or("-".to_string(), |s| s.to_string()),
                    check,
                    clean,
                    row.tried
                )
            }
            Verdict::Survived => format!(
                "{:<32} {:<40} {:>6} {:<28} {:<14} {:>6}  -",
                row.mutant, "NONE (survived)", "-", "-", "-", row.tried
            ),
            Verdict::NotRun(why) => format!(
                "{:<32} {:<40} {:>6} {:<28} {:<14} {:>6}  {why}",
                row.mutant,
                if row.fails(&hunting.accept_not_run) {
                    "NOT RUN"
                } else {
                    "not run (accepted)"
                },
                "-",
                "-",
                "-",
                row.tried
            ),
        };
        s += &line;
        s.push('\n');
        if let Verdict::Caught {
            clean_without: CleanWithout::NotClean(why),
            ..
        } = &row.verdict
        {
            s += &format!("    without the mutant the same seed found: {why}\n");
        }
        if !matches!(row.verdict, Verdict::Caught { .. }) {
            for note in &row.notes {
                s += &format!("    {note}\n");
            }
        }
    }
    s
}

/// Whether every row passed (caught and clean without, or an accepted
/// "not run").
pub fn all_passed(rows: &[Row], hunting: &Hunting) -> bool {
    rows.iter().all(|r| !r.fails(&hunting.accept_not_run))
}

/// How many rows failed each way: survived, caught on a seed not clean
/// without the mutant, not run (and not accepted).
pub fn failures(rows: &[Row], hunting: &Hunting) -> [(usize, &'static str); 3] {
    let count = |f: &dyn Fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count();
    [
        (count(&|r| r.verdict == Verdict::Survived), "survived"),
        (
            count(&|r| {
                matches!(
                    r.verdict,
                    Verdict::Caught {
                        clean_without: CleanWithout::NotClean(_),
                        ..
                    }
                )
            }),
            "caught on a seed that is not clean without the mutant",
        ),
        (
            count(&|r| matches!(r.verdict, Verdict::NotRun(_)) && r.fails(&hunting.accept_not_run)),
            "not run (no engine that can see it ran; --accept-not-run to accept)",
        ),
    ]
}

/// Keeps the simulator seed that caught each mutant (clean without it) in
/// the corpus at `dir`, with its drawn inputs; one line per seed said.
pub fn record_sim_catches(dir: &Path, rows: &[Row], options: &Options) -> Result<Vec<String>, String> {
    let mut corpus = Corpus::load(dir)?;
    let commit = commit();
    let mut said = Vec::new();
    for row in rows {
        let Verdict::Caught {
            engine: Engine::Sim,
            seed: Some(seed),
            clean_without: CleanWithout::Clean,
            ..
        } = &row.verdict
        else {
            continue;
        };
        let options = Options {
            mutant: Some(row.mutant.to_string()),
            ..options.clone()
        };
        let input = options.input(*seed);
        let outcome = options.run_input(&input);
        let entry = Entry::failure(&input, &outcome, &options, &commit, "mutants");
        said.push(match corpus.add(entry) {
            Ok(true) => format!("{}: seed {seed} kept in the corpus", row.mutant),
            Ok(false) => format!("{}: seed {seed} already in the corpus", row.mutant),
            Err(e) => format!("{}: cannot keep seed {seed}: {e}", row.mutant),
        });
    }
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_is_caught_only_when_libtest_says_it_passed() {
        let case = "planted::a_row_select_without_for_update_is_found";
        let ok = format!("running 1 test\ntest {case} ... ok\n\ntest result: ok. 1 passed; 0 failed");
        assert_eq!(case_result(case, true, &ok), CaseResult::Passed);
        assert!(matches!(case_result(case, false, &ok), CaseResult::Failed(_)));
        let failed = format!(
            "running 1 test\ntest {case} ... FAILED\n\nthread '{case}' panicked at tests/x.rs:1:1:\nPgNoRowLock went unnoticed\n"
        );
        assert!(matches!(case_result(case, false, &failed), CaseResult::Failed(_)));
        let none =
            "running 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 9 filtered out";
        assert!(matches!(case_result(case, true, none), CaseResult::DidNotRun(_)));
        let build = "error[E0425]: cannot find value `x` in this scope\nerror: could not compile";
        assert!(matches!(
            case_result(case, false, build),
            CaseResult::DidNotRun(_)
        ));
    }

    #[test]
    fn a_not_run_row_fails_unless_accepted_and_a_catch_not_clean_without_fails() {
        let row = |verdict| Row {
            mutant: "pg-no-row-lock",
            verdict,
            tried: 0,
            notes: Vec::new(),
        };
        let not_run = row(Verdict::NotRun("no engine".into()));
        assert!(not_run.fails(&[]));
        assert!(!not_run.fails(&["pg-no-row-lock".into()]));
        assert!(!not_run.fails(&["all".into()]));
        assert!(not_run.fails(&["trim-below-pending".into()]));
        assert!(row(Verdict::Survived).fails(&["all".into()]));
        let caught = |clean_without| {
            row(Verdict::Caught {
                engine: Engine::Sim,
                seed: Some(3),
                check: "balance-conservation".into(),
                clean_without,
            })
        };
        assert!(!caught(CleanWithout::Clean).fails(&[]));
        assert!(caught(CleanWithout::NotClean("[liveness] run".into())).fails(&[]));
    }
}
