//! `saga-sim hunt --minutes M`: unattended sweeps that grow the corpus
//! (`hunt.rs`). Exits 1 if a seed failed.

use std::process::ExitCode;

use clap::Args;

use super::args::{CorpusDir, Jobs};
use super::{bad_input, passed};
use crate::hunt::{self, HuntSettings};
use crate::sweep::commit;
use crate::Profile;

#[derive(Args)]
pub struct HuntArgs {
    /// Minutes of wall time (no new chunk starts after it).
    #[arg(long)]
    pub minutes: f64,
    /// First seed (default: derived from the commit, and printed).
    #[arg(long)]
    pub start: Option<u64>,
    /// Orders in each seed's scenario.
    #[arg(long, default_value_t = 20)]
    pub orders: usize,
    #[command(flatten)]
    pub jobs: Jobs,
    /// Seeds per chunk per job (a chunk alternates heavy and swarm).
    #[arg(long, default_value_t = 200)]
    pub chunk: u64,
    /// Rare seeds one hunt records at most.
    #[arg(long, default_value_t = 5)]
    pub rare_max: usize,
    /// Rare entries the corpus holds at most (rare.jsonl): a full corpus
    /// records no more (failures are always recorded).
    #[arg(long, default_value_t = 40)]
    pub rare_cap: usize,
    #[command(flatten)]
    pub corpus: CorpusDir,
}

pub fn run(args: HuntArgs) -> ExitCode {
    if !(args.minutes.is_finite() && args.minutes > 0.0) {
        return bad_input("--minutes: must be a positive number");
    }
    if args.chunk == 0 {
        return bad_input("--chunk: must be at least 1");
    }
    let mut corpus = match args.corpus.load() {
        Ok(c) => c,
        Err(e) => return bad_input(&e),
    };
    // By default each commit hunts its own seeds (FNV-1a of the commit,
    // far above the sweeps' 0..N), printed for a repeat.
    let start = args.start.unwrap_or_else(|| {
        let fnv = commit().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        (fnv >> 24) | (1 << 40)
    });
    let (orders, jobs) = (args.orders, args.jobs.jobs);
    say!(
        "saga-sim hunt --minutes {} --start {start} --orders {orders} --jobs {jobs} (corpus {}, commit {})",
        args.minutes,
        args.corpus.corpus.display(),
        commit()
    );
    let settings = HuntSettings {
        budget: std::time::Duration::from_secs_f64(args.minutes * 60.0),
        start,
        orders,
        jobs,
        profiles: vec![Profile::Heavy, Profile::Swarm],
        chunk_per_job: args.chunk,
        rare_max: args.rare_max,
        rare_cap: args.rare_cap,
    };
    let lines = crate::progress::lines_wanted();
    let result = hunt::hunt(&settings, &mut corpus, &mut |line| say!("{line}"), &mut |done| {
        if lines {
            crate::progress::line(&format!(
                "hunt: {} seeds, {} failing, {:.0}s of {:.0}s",
                done.seeds,
                done.failures,
                done.wall.as_secs_f64(),
                settings.budget.as_secs_f64()
            ));
        }
    });
    match result {
        Ok(report) => {
            say!(
                "hunted seeds {start}..{} ({} seeds) in {:.0}s: {} failing; {} combinations new to the corpus, \
                 {} rare (reached by at most {} seed(s)); {} rare recorded ({} in the corpus before, cap {})",
                report.next,
                report.seeds,
                report.wall.as_secs_f64(),
                report.failures.len(),
                report.new_combinations,
                report.rare_combinations,
                hunt::rare_seen_max(report.seeds),
                report.rare.len(),
                report.rare_before,
                settings.rare_cap
            );
            passed(report.failures.is_empty())
        }
        Err(e) => bad_input(&format!("saga-sim hunt: {e}")),
    }
}
