//! `saga-sim corpus replay` and `saga-sim corpus repin`, and the corpus
//! replay `saga-sim run` does before its seeds (`corpus_replay.rs`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::args::{CorpusDir, Jobs};
use super::{bad_input, passed};
use crate::corpus::{Corpus, Entry};
use crate::corpus_replay::{self, EntryReplay, Status};
use crate::sweep::commit;

#[derive(Args)]
pub struct CorpusArgs {
    #[command(subcommand)]
    pub command: CorpusCommand,
}

#[derive(Subcommand)]
pub enum CorpusCommand {
    /// Replays every entry from its stored inputs (as `run` does before
    /// its seeds); exits 1 unless every entry reproduced.
    Replay {
        #[command(flatten)]
        corpus: CorpusDir,
        #[command(flatten)]
        jobs: Jobs,
    },
    /// Re-runs entries from their stored inputs (drawing them from the
    /// seed for an entry that has none), proves each still does what it
    /// was kept for (a mutant entry: caught with its mutant, clean
    /// without), and records the new trace hash, checks and commit.
    /// Exits 1 if an entry could not be re-pinned.
    Repin {
        #[command(flatten)]
        corpus: CorpusDir,
        /// Only the entries of these seeds (repeatable; default: all).
        #[arg(long)]
        seed: Vec<u64>,
        /// Only the entries of this fault profile.
        #[arg(long)]
        faults: Option<String>,
        /// Only the entries of this mutant.
        #[arg(long)]
        mutant: Option<String>,
        #[command(flatten)]
        jobs: Jobs,
    },
}

/// The corpus replayed from its stored inputs.
pub struct CorpusCheck {
    pub replays: Vec<EntryReplay>,
    pub wall: Duration,
}

/// The corpus replay in `saga-sim run --json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CorpusJson {
    pub entries: usize,
    pub reproduced: usize,
    pub drifted: usize,
    pub not_run: usize,
    pub failing: usize,
    /// Each entry that did not reproduce: `entry` as the corpus lists it,
    /// `status` (`drifted`, `not-run`, `failing`) and what happened.
    pub problems: Vec<CorpusProblem>,
    pub wall_s: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CorpusProblem {
    pub entry: String,
    pub status: &'static str,
    pub details: Vec<String>,
}

/// Replays `corpus` on `jobs` threads.
pub fn replay_corpus(corpus: &Corpus, jobs: usize) -> CorpusCheck {
    let started = Instant::now();
    let replays = corpus_replay::replay(&corpus.entries, jobs);
    CorpusCheck {
        replays,
        wall: started.elapsed(),
    }
}

impl CorpusCheck {
    fn count(&self, status: Status) -> usize {
        self.replays.iter().filter(|r| r.status() == status).count()
    }

    /// Whether every entry reproduced.
    pub fn passed(&self) -> bool {
        self.count(Status::Reproduced) == self.replays.len()
    }

    /// What did not reproduce, one line each, and how to go on.
    fn details(r: &EntryReplay) -> Vec<String> {
        let mut lines = match r.status() {
            Status::Reproduced => return Vec::new(),
            Status::Drifted => vec![format!(
                "trace hash {} pinned at {}, now {}",
                r.entry.hash,
                r.entry.pinned(),
                r.hash_now.as_deref().unwrap_or("-")
            )],
            Status::NotRun => vec![r.not_run.clone().unwrap_or_default()],
            Status::Failing => r.problems.clone(),
        };
        if r.status() == Status::NotRun {
            lines.push("run it: build saga-sim with --features mutants (or pass --no-corpus)".into());
        } else {
            lines.push(format!(
                "re-pin once the change is meant: {}",
                corpus_replay::repin_command(&r.entry)
            ));
        }
        lines
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "corpus: {} entries replayed from their stored inputs in {:.1}s: {} reproduced, {} drifted, {} not run, {} failing\n",
            self.replays.len(),
            self.wall.as_secs_f64(),
            self.count(Status::Reproduced),
            self.count(Status::Drifted),
            self.count(Status::NotRun),
            self.count(Status::Failing)
        );
        for r in self.replays.iter().filter(|r| r.status() != Status::Reproduced) {
            let what = match r.status() {
                Status::Drifted => "DRIFTED",
                Status::NotRun => "NOT RUN",
                _ => "FAILS",
            };
            s += &format!("  CORPUS ENTRY {what}: {}\n", r.entry);
            for line in Self::details(r) {
                s += &format!("    {line}\n");
            }
        }
        s
    }

    pub fn json(&self) -> CorpusJson {
        CorpusJson {
            entries: self.replays.len(),
            reproduced: self.count(Status::Reproduced),
            drifted: self.count(Status::Drifted),
            not_run: self.count(Status::NotRun),
            failing: self.count(Status::Failing),
            problems: self
                .replays
                .iter()
                .filter(|r| r.status() != Status::Reproduced)
                .map(|r| CorpusProblem {
                    entry: r.entry.to_string(),
                    status: match r.status() {
                        Status::Drifted => "drifted",
                        Status::NotRun => "not-run",
                        _ => "failing",
                    },
                    details: Self::details(r),
                })
                .collect(),
            wall_s: self.wall.as_secs_f64(),
        }
    }
}

pub fn run(args: CorpusArgs) -> ExitCode {
    match args.command {
        CorpusCommand::Replay { corpus, jobs } => match corpus.load() {
            Ok(corpus) => {
                let check = replay_corpus(&corpus, jobs.jobs);
                super::out::print(&check.render());
                passed(check.passed())
            }
            Err(e) => bad_input(&e),
        },
        CorpusCommand::Repin {
            corpus: dir,
            seed,
            faults,
            mutant,
            jobs,
        } => {
            let mut corpus = match dir.load() {
                Ok(c) => c,
                Err(e) => return bad_input(&e),
            };
            let chosen = |e: &Entry| {
                (seed.is_empty() || seed.contains(&e.seed))
                    && faults.as_ref().is_none_or(|f| *f == e.faults)
                    && mutant.as_ref().is_none_or(|m| e.mutant.as_ref() == Some(m))
            };
            let done = match corpus_replay::repin(&mut corpus, chosen, jobs.jobs) {
                Ok(done) => done,
                Err(e) => return bad_input(&format!("saga-sim corpus repin: {e}")),
            };
            let mut refused = 0;
            for r in &done {
                match (&r.refused, &r.old_hash) {
                    (Some(why), _) => {
                        refused += 1;
                        say!("NOT RE-PINNED {}: {why}", r.entry);
                    }
                    (None, Some(old)) => say!(
                        "re-pinned {}: {old} -> {}{}{}",
                        r.entry,
                        r.entry.hash,
                        if r.drawn {
                            " (inputs drawn from the seed)"
                        } else {
                            ""
                        },
                        if r.entry.checks.is_empty() {
                            String::new()
                        } else {
                            format!(", caught by {}, clean without", r.entry.checks.join(", "))
                        }
                    ),
                    (None, None) => say!("unchanged {}", r.entry),
                }
            }
            say!(
                "corpus repin: {} entries, {} re-pinned, {} unchanged, {} refused (commit {})",
                done.len(),
                done.iter().filter(|r| r.old_hash.is_some()).count(),
                done.iter()
                    .filter(|r| r.refused.is_none() && r.old_hash.is_none())
                    .count(),
                refused,
                commit()
            );
            passed(refused == 0)
        }
    }
}
