//! The built `saga-sim` binary as a user and a script meet it (issue 27):
//! `--version` names the commit it was built from; every option has help
//! and the shared ones one default; the corpus is found relative to the
//! working directory; long runs say how far they are off a terminal;
//! `replay --order` refuses an id the seed does not have; Mermaid output
//! renders (one diagram per order, each under Mermaid's maxTextSize);
//! `--json` documents parse with their documented fields; `replay` prints
//! no Rust debug structs; a closed stdout ends the process quietly.

#[path = "../../tests/completions_support/mod.rs"]
mod completions_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use clap::CommandFactory;
use purchase_saga_sim::cli::Cli;
use serde_json::Value;

/// The binary under test: cargo's build of it, or `SAGA_SIM_BIN` when set
/// (a release build, or an older build to show what a test catches).
fn bin() -> Command {
    let path = std::env::var_os("SAGA_SIM_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_saga-sim").into());
    let mut command = Command::new(path);
    command.env_remove("SAGA_SIM_CORPUS");
    command
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    bin().current_dir(dir).args(args).output().expect("saga-sim runs")
}

/// `saga-sim ARGS` from the repository's root.
fn saga_sim(args: &[&str]) -> Output {
    run_in(&root(), args)
}

/// `run` of the `seeds` with three orders each and no coverage check,
/// then `extra`.
fn small_run<'a>(seeds: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--seeds", seeds, "--orders", "3", "--no-coverage"];
    args.extend_from_slice(extra);
    args
}

/// `replay --seed 7`, then `extra`.
fn replay_7<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["replay", "--seed", "7"];
    args.extend_from_slice(extra);
    args
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The repository's root (where `sim/corpus` is).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("saga-sim-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn version_names_the_commit_the_binary_was_built_from() {
    let out = saga_sim(&["--version"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let commit = stdout
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no commit in {stdout:?}"));
    assert_ne!(commit, "unknown", "built in a git checkout");
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())
        .output()
        .expect("git runs");
    let head = text(&head.stdout);
    let hex = commit.trim_end_matches("-dirty");
    assert!(
        hex.len() >= 12 && head.starts_with(hex),
        "--version says {commit}, HEAD is {head}"
    );
}

/// Every argument of every (sub)command, with the command's path.
fn all_args(command: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
    for arg in command.get_arguments() {
        out.push((path.to_string(), arg.clone()));
    }
    for sub in command.get_subcommands() {
        all_args(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

#[test]
fn every_option_of_every_command_has_help() {
    let mut args = Vec::new();
    all_args(&Cli::command(), "saga-sim", &mut args);
    assert!(args.len() > 50, "{} arguments", args.len());
    let bare: Vec<String> = args
        .iter()
        .filter(|(_, a)| a.get_help().is_none_or(|h| h.to_string().trim().is_empty()))
        .map(|(path, a)| format!("{path} --{}", a.get_id()))
        .collect();
    assert!(bare.is_empty(), "options without help: {bare:?}");
}

#[test]
fn shared_options_have_one_default_everywhere_and_the_corpus_is_relative() {
    let mut args = Vec::new();
    all_args(&Cli::command(), "saga-sim", &mut args);
    let expected = [
        ("jobs", "1"),
        ("faults", "heavy"),
        ("orders", "20"),
        ("corpus", "sim/corpus"),
    ];
    for (id, default) in expected {
        let found: Vec<(String, Vec<String>)> = args
            .iter()
            // `corpus repin --faults` filters the entries: no default.
            .filter(|(path, a)| a.get_id() == id && !(id == "faults" && path.ends_with("corpus repin")))
            .map(|(path, a)| {
                (
                    path.clone(),
                    a.get_default_values()
                        .iter()
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect(),
                )
            })
            .collect();
        assert!(found.len() >= 3, "--{id} on {found:?}");
        for (path, defaults) in &found {
            assert_eq!(defaults, &vec![default.to_string()], "{path} --{id}");
        }
    }
    // No absolute build-time path in the help either.
    let out = saga_sim(&["hunt", "--help"]);
    let help = text(&out.stdout);
    assert!(help.contains("[default: sim/corpus]"), "{help}");
    assert!(!help.contains(env!("CARGO_MANIFEST_DIR")), "{help}");
}

#[test]
fn the_corpus_is_looked_for_from_the_working_directory_and_a_missing_one_is_an_error() {
    let dir = scratch("no-corpus");
    // `hunt` away from the repository writes nowhere: it says where it
    // looked and stops.
    let out = run_in(&dir, &["hunt", "--minutes", "0.01", "--orders", "2"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no corpus folder at sim/corpus"), "{stderr}");
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing written"
    );
    // `run` needs the corpus unless told not to replay it.
    let out = run_in(&dir, &small_run("0..1", &[]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run_in(&dir, &small_run("0..1", &["--no-corpus"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // `--corpus DIR` and SAGA_SIM_CORPUS name another folder.
    let corpus = dir.join("kept");
    std::fs::create_dir_all(&corpus).unwrap();
    let out = bin()
        .current_dir(&dir)
        .env("SAGA_SIM_CORPUS", &corpus)
        .args(["corpus", "replay"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("corpus: 0 entries"),
        "{}",
        text(&out.stdout)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_off_a_terminal_prints_progress_counts_on_stderr() {
    let out = saga_sim(&small_run("0..4", &["--no-corpus"]));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for n in 1..=4 {
        assert!(
            stderr.contains(&format!("saga-sim: {n}/4 seeds, 0 failing")),
            "{n}/4 missing from {stderr:?}"
        );
    }
    assert!(
        !text(&out.stdout).contains("seeds, 0 failing"),
        "progress stays off stdout"
    );
}

/// Issue 27: `corpus replay`'s progress line counted a mutant entry's run
/// with its mutant as failing: it fails on purpose. A corpus of one mutant
/// entry (two runs: with its mutant, and clean without) has no failing run,
/// whether this build can switch the mutant on (it is caught) or not (not
/// run).
#[test]
fn corpus_replay_progress_does_not_count_mutant_entries_as_failing() {
    let dir = scratch("corpus-mutant");
    let kept = std::fs::read_to_string(root().join("sim/corpus/failures.jsonl")).unwrap();
    let entry = kept
        .lines()
        .find(|l| l.contains("\"mutant\":\"skip-inbox-dedupe\""))
        .expect("a mutant entry in the corpus");
    std::fs::write(dir.join("failures.jsonl"), format!("{entry}\n")).unwrap();
    let out = saga_sim(&["corpus", "replay", "--corpus", dir.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("saga-sim: 2/2 seeds, 0 failing"), "{stderr}");
    assert!(!stderr.contains("1 failing"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn replay_refuses_an_order_the_seed_does_not_have_and_names_those_it_has() {
    let dir = scratch("order");
    let file = dir.join("x.mmd");
    let out = saga_sim(&replay_7(&[
        "--orders",
        "3",
        "--mermaid",
        file.to_str().unwrap(),
        "--order",
        "nonexistent",
    ]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no order \"nonexistent\""), "{stderr}");
    assert!(stderr.contains("order-0, order-1, order-2"), "{stderr}");
    assert!(!file.exists(), "no diagram written");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mermaid_output_is_one_diagram_per_order_each_under_mermaids_max_text_size() {
    let dir = scratch("mermaid");
    let folder = dir.join("diagrams");
    let out = saga_sim(&replay_7(&["--mermaid", folder.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 20, "one per order: {files:?}");
    let mut whole = 0;
    for f in &files {
        let diagram = std::fs::read_to_string(f).unwrap();
        whole += diagram.len();
        assert!(diagram.starts_with("sequenceDiagram"), "{}", f.display());
        assert!(
            diagram.len() < purchase_saga_sim::mermaid::MAX_TEXT_SIZE,
            "{}: {} characters",
            f.display(),
            diagram.len()
        );
        let order = f.file_stem().unwrap().to_str().unwrap();
        assert!(
            diagram.contains(&format!("({order})")),
            "{} draws its order",
            f.display()
        );
    }
    assert!(whole > 0);
    // One order to a file; a `.mmd` path without --order is refused (it
    // would be a folder).
    let one = dir.join("one.mmd");
    let out = saga_sim(&replay_7(&[
        "--mermaid",
        one.to_str().unwrap(),
        "--order",
        "order-3",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read_to_string(&one).unwrap().contains("(order-3)"));
    let out = saga_sim(&replay_7(&["--mermaid", dir.join("all.mmd").to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn replay_prints_no_rust_debug_structs() {
    let out = saga_sim(&replay_7(&["--trace"]));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for debug in [
        "FaultPlan {",
        "TimedFault",
        "Some(",
        "[(\"",
        "{\"COMPLETED\":",
        "BTreeMap",
    ] {
        assert!(
            !stdout.contains(debug),
            "{debug:?} in:\n{}",
            &stdout[..2000.min(stdout.len())]
        );
    }
    assert!(stdout.contains("plan:\n  "), "the plan, one field a line");
    let paths = stdout.lines().find(|l| l.starts_with("paths: ")).unwrap();
    assert!(paths.contains("COMPLETED "), "{paths}");
}

/// Issue 27: `saga-sim` had no shell completions.
#[test]
fn completions_cover_every_command_for_each_shell() {
    completions_support::assert_completions_cover("saga-sim", Cli::command(), saga_sim);
    let out = saga_sim(&["completions", "cmd.exe"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&out.stdout), text(&out.stderr)))
}

#[test]
fn run_json_has_the_documented_fields() {
    let out = saga_sim(&small_run("0..2", &["--no-corpus", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc = json_of(&out);
    assert_eq!(doc["passed"], true);
    assert!(doc["command"]
        .as_str()
        .unwrap()
        .starts_with("saga-sim run --seeds 0..2"));
    assert!(doc["commit"].is_string());
    assert!(doc["corpus"].is_null());
    let totals = &doc["totals"];
    assert_eq!(totals["seeds"], 2);
    assert_eq!(totals["orders"], 6);
    let paths: u64 = totals["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(paths, 6, "every order has a path");
    assert!(totals["paths"]["COMPLETED"].is_u64());
    assert!(totals["faults"]["crash"].is_u64());
    assert!(totals["rareStates"].is_object());
    assert!(totals["deadLetters"].is_u64());
    assert_eq!(totals["failingSeeds"], serde_json::json!([]));
    assert!(totals["simulatedMs"].as_u64().unwrap() > 0);
    assert!(totals["wallS"].is_f64());
    assert_eq!(doc["failing"], serde_json::json!([]));
    assert!(doc["neverHappened"].is_array());
}

#[test]
fn replay_json_agrees_with_the_human_report() {
    let human = saga_sim(&replay_7(&[]));
    let hash = text(&human.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("trace-hash: ").map(str::to_string))
        .unwrap();
    let out = saga_sim(&replay_7(&["--json", "--trace"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc = json_of(&out);
    assert_eq!(doc["traceHash"], hash.as_str());
    assert_eq!(doc["seed"], 7);
    assert_eq!(doc["profile"], "heavy");
    assert_eq!(doc["orders"], 20);
    assert_eq!(doc["passed"], true);
    assert_eq!(doc["violations"], serde_json::json!([]));
    assert_eq!(doc["orderPaths"].as_object().unwrap().len() as u64, {
        let paths = doc["paths"].as_object().unwrap();
        paths.values().map(|v| v.as_u64().unwrap()).sum::<u64>()
            - paths.get("REJECTED").and_then(Value::as_u64).unwrap_or(0)
    });
    assert!(
        doc["plan"]["heal_at_ms"].is_u64(),
        "the plan as the corpus stores it"
    );
    assert!(doc["trace"].as_array().unwrap().len() > 100);
    assert!(doc["simulatedMs"].as_u64().unwrap() > 0);
    assert!(doc["faults"].is_object());
}

/// Starts `args` with stdout piped, reads one line, closes the pipe and
/// returns how the process ended.
fn read_one_line_and_close(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = bin()
        .current_dir(root())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("saga-sim starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(!first.is_empty(), "a first line");
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    (out.status, text(&out.stderr))
}

#[test]
fn a_closed_stdout_ends_the_process_quietly() {
    // `run` prints its corpus line, then sweeps for a second or more, then
    // writes the summary into the closed pipe.
    let empty = scratch("closed-stdout");
    let corpus = empty.to_str().unwrap();
    for args in [replay_7(&["--trace"]), small_run("0..2", &["--corpus", corpus])] {
        let (status, stderr) = read_one_line_and_close(&args);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_eq!(status.code(), Some(141), "{args:?}: {status:?} {stderr}");
    }
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn mutants_json_lists_every_mutant_or_says_the_build_has_none() {
    let out = saga_sim(&[
        "mutants",
        "--engines",
        "sim",
        "--seeds",
        "5",
        "--orders",
        "4",
        "--jobs",
        "2",
        "--accept-not-run",
        "all",
        "--json",
    ]);
    if purchase_saga_sim::mutants::all_names().is_empty() {
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).contains("--features mutants"));
        return;
    }
    let doc = json_of(&out);
    let rows = doc["mutants"].as_array().unwrap();
    assert_eq!(rows.len(), purchase_saga_sim::mutants::all_names().len());
    for row in rows {
        assert!(row["mutant"].is_string());
        let verdict = row["verdict"].as_str().unwrap();
        assert!(["caught", "survived", "not-run"].contains(&verdict), "{row}");
        assert!(row["tried"].is_u64() && row["fails"].is_boolean() && row["notes"].is_array());
        if verdict == "caught" {
            assert!(row["engine"].is_string() && row["check"].is_string() && row["again"].is_string());
        }
    }
    assert!(doc["failed"]["survived"].is_u64());
    assert_eq!(doc["passed"].as_bool().unwrap(), out.status.success());
}

#[test]
fn torture_json_has_the_documented_fields() {
    let out = saga_sim(&[
        "torture",
        "--seeds",
        "0..1",
        "--faults",
        "none",
        "--orders",
        "2",
        "--no-coverage",
        "--json",
    ]);
    let doc = json_of(&out);
    assert!(out.status.success(), "{doc}");
    assert_eq!(doc["passed"], true);
    assert!(doc["command"]
        .as_str()
        .unwrap()
        .starts_with("saga-sim torture --seeds 0..1"));
    assert_eq!(doc["totals"]["seeds"], 1);
    assert_eq!(doc["totals"]["orders"], 2);
    assert!(doc["totals"]["faults"].is_object());
    assert!(doc["statementsMissing"].is_array());
    assert_eq!(doc["failing"], serde_json::json!([]));
}
