//! `saga-sim replay --seed N`: one seed, run again; its plan and trace
//! (`--trace`), its Mermaid diagrams (`--mermaid`), the paths its orders
//! took, the faults, the trace hash and the violations. Exits 1 on a
//! violation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::args::{CorpusDir, Json, Variation, Workload};
use super::json::{violations, Violation};
use super::{bad_input, passed};
use crate::corpus::Entry;
use crate::faults::FaultPlan;
use crate::mermaid;
use crate::run::SimOutcome;
use crate::sweep::commit;

#[derive(Args)]
pub struct ReplayArgs {
    /// The seed to run.
    #[arg(long)]
    pub seed: u64,
    #[command(flatten)]
    pub workload: Workload,
    /// Print the plan and the trace, one line per delivery, publish,
    /// fault and crash.
    #[arg(long)]
    pub trace: bool,
    /// Write Mermaid sequence diagrams: with --order, that order's saga to
    /// this file; without, one file per order (`<order>.mmd`) into this
    /// folder (a whole run is too big for Mermaid's default maxTextSize of
    /// 50,000 characters).
    #[arg(long, value_name = "PATH")]
    pub mermaid: Option<PathBuf>,
    /// Draw only this order's saga (with the crashes, partitions and
    /// restarts around it); an id the run does not have is refused.
    #[arg(long)]
    pub order: Option<String>,
    #[command(flatten)]
    pub variation: Variation,
    /// If the seed fails, keep it in the corpus (found by a developer).
    #[arg(long)]
    pub record: bool,
    #[command(flatten)]
    pub corpus: CorpusDir,
    #[command(flatten)]
    pub json: Json,
}

/// `saga-sim replay --json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplayReport {
    seed: u64,
    /// The fault profile (`heavy`, ...).
    profile: &'static str,
    orders: usize,
    mutant: Option<String>,
    without: Option<&'static str>,
    commit: String,
    /// The trace hash (hex), the one `run`'s corpus pins.
    trace_hash: String,
    simulated_ms: u64,
    wall_s: f64,
    /// Orders by outcome: `COMPLETED`, a failed step, `PENDING`, `REJECTED`.
    paths: BTreeMap<String, u64>,
    /// Each placed order's path, by order id.
    order_paths: BTreeMap<String, String>,
    /// Faults injected and rare states reached, by kind name.
    faults: BTreeMap<&'static str, u64>,
    dead_letters: u64,
    violations: Vec<Violation>,
    /// The fault plan, as the corpus stores it.
    plan: FaultPlan,
    /// The trace lines (with `--trace`).
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<Vec<String>>,
    /// The Mermaid files written (with `--mermaid`).
    diagrams: Vec<String>,
    passed: bool,
}

pub fn run(args: ReplayArgs) -> ExitCode {
    if let Err(e) = args.variation.check() {
        return bad_input(&e);
    }
    let json = args.json.json;
    let options = args.variation.options(args.workload);
    let input = options.input(args.seed);
    // The ids this seed's orders have, to refuse another before running.
    let mut known: Vec<String> = input.scenario.orders.iter().map(|o| o.id.to_string()).collect();
    if let Some(order) = &args.order {
        if !known.contains(order) {
            known.sort();
            return bad_input(&format!(
                "--order: seed {} has no order {order:?}; its orders: {}",
                args.seed,
                known.join(", ")
            ));
        }
        if args.mermaid.is_none() {
            return bad_input("--order: draws one order's diagram: give --mermaid FILE too");
        }
    }
    if let (Some(path), None) = (&args.mermaid, &args.order) {
        if path.extension().is_some_and(|e| e == "mmd") {
            return bad_input(&format!(
                "--mermaid: without --order it names a folder (one <order>.mmd per order), not {}; \
                 add --order ID to draw one order into that file",
                path.display()
            ));
        }
    }
    let outcome = options.run_input(&input);
    let diagrams = match &args.mermaid {
        Some(path) => match write_diagrams(&outcome, path, args.order.as_deref(), &known) {
            Ok(files) => files,
            Err(e) => return bad_input(&e),
        },
        None => Vec::new(),
    };
    let ok = outcome.violations.is_empty();
    if json {
        super::out::json(&ReplayReport {
            seed: args.seed,
            profile: options.faults.name(),
            orders: options.orders,
            mutant: options.mutant.clone(),
            without: options.without.map(|k| k.name()),
            commit: commit(),
            trace_hash: format!("{:016x}", outcome.hash),
            simulated_ms: outcome.simulated_ms,
            wall_s: outcome.wall.as_secs_f64(),
            paths: outcome.paths.clone(),
            order_paths: outcome.order_paths.clone(),
            faults: outcome.faults.iter().map(|(k, n)| (k.name(), *n)).collect(),
            dead_letters: outcome.dead_letters,
            violations: violations(&outcome.violations),
            plan: input.plan.clone(),
            trace: args.trace.then(|| outcome.lines.clone()),
            diagrams: diagrams.iter().map(|p| p.display().to_string()).collect(),
            passed: ok,
        });
    } else {
        if args.trace {
            say!("plan:");
            super::out::print(&render_plan(&input.plan));
            for line in &outcome.lines {
                say!("{line}");
            }
        }
        let with = options
            .mutant
            .as_deref()
            .map_or(String::new(), |m| format!(" mutant {m}"));
        say!(
            "seed {} faults {} orders {}{with} (commit {})",
            args.seed,
            options.faults.name(),
            options.orders,
            commit()
        );
        say!(
            "paths: {}",
            counts(outcome.paths.iter().map(|(p, n)| (p.as_str(), *n)))
        );
        say!(
            "faults: {}",
            counts(outcome.faults.iter().map(|(k, n)| (k.name(), *n)))
        );
        say!(
            "simulated {}ms, wall {:.3}s",
            outcome.simulated_ms,
            outcome.wall.as_secs_f64()
        );
        for file in &diagrams {
            say!("diagram: {}", file.display());
        }
        say!("trace-hash: {:016x}", outcome.hash);
        say!("violations: {}", outcome.violations.len());
        for v in &outcome.violations {
            say!("  {v}");
        }
    }
    if args.record && !ok {
        let entry = Entry::failure(&input, &outcome, &options, &commit(), "developer");
        let said = match args.corpus.load().and_then(|mut c| c.add(entry)) {
            Ok(true) => format!("kept in {}", args.corpus.corpus.display()),
            Ok(false) => "already in the corpus".to_string(),
            Err(e) => format!("cannot keep it: {e}"),
        };
        if json {
            tell!("{said}");
        } else {
            say!("{said}");
        }
    }
    passed(ok)
}

/// `name count, name count, ...`, or `none`.
fn counts<'a>(pairs: impl Iterator<Item = (&'a str, u64)>) -> String {
    let parts: Vec<String> = pairs.map(|(name, n)| format!("{name} {n}")).collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// The plan, one field a line (`name: value`, lists one element a line),
/// from its serde form: every field the plan has, none of Rust's syntax.
fn render_plan(plan: &FaultPlan) -> String {
    let value = serde_json::to_value(plan).expect("a plan serializes");
    let mut s = String::new();
    let Some(fields) = value.as_object() else {
        return format!("  {value}\n");
    };
    for (name, v) in fields {
        match v {
            serde_json::Value::Array(items) => {
                s += &format!("  {name}: {} entries\n", items.len());
                for item in items {
                    s += &format!("    {item}\n");
                }
            }
            serde_json::Value::Object(map) if map.is_empty() => s += &format!("  {name}: none\n"),
            serde_json::Value::Null => s += &format!("  {name}: none\n"),
            other => s += &format!("  {name}: {other}\n"),
        }
    }
    s
}

/// Writes the diagrams: `order`'s to the file `path`, or every order's to
/// `path/<order>.mmd`. Returns the files written.
fn write_diagrams(
    outcome: &SimOutcome,
    path: &Path,
    order: Option<&str>,
    orders: &[String],
) -> Result<Vec<PathBuf>, String> {
    let write = |file: &Path, text: String| {
        std::fs::write(file, text).map_err(|e| format!("--mermaid: cannot write {}: {e}", file.display()))
    };
    if let Some(order) = order {
        write(path, mermaid::render_order(&outcome.entries, Some(order)))?;
        return Ok(vec![path.to_path_buf()]);
    }
    std::fs::create_dir_all(path)
        .map_err(|e| format!("--mermaid: cannot create the folder {}: {e}", path.display()))?;
    let mut files = Vec::new();
    for order in orders {
        let file = path.join(format!("{order}.mmd"));
        let text = mermaid::render_order(&outcome.entries, Some(order));
        if text.len() > mermaid::MAX_TEXT_SIZE {
            tell!(
                "warning: {} is {} characters, above Mermaid's default maxTextSize ({}): raise it to render",
                file.display(),
                text.len(),
                mermaid::MAX_TEXT_SIZE
            );
        }
        write(&file, text)?;
        files.push(file);
    }
    Ok(files)
}
