//! How a long run shows how far it is. On a terminal, a progress bar on
//! stderr (indicatif); elsewhere (a CI log, a pipe, `nohup`), once the
//! binary asked for it ([`lines_off_terminal`]), a line on stderr every
//! tenth of the seeds and at least every [`LINE_EVERY`], e.g.
//! `saga-sim: 1000/10000 seeds, 0 failing, 32s`. Library callers (tests)
//! get the bar only, which hides itself off a terminal. Stdout stays the
//! report's (`--json` included); a closed stderr loses progress lines and
//! nothing else. The line writer and the "is a line due" rule are
//! `purchase-saga`'s (`purchase_saga::cli::progress`), shared with its
//! `audit --wait`.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use purchase_saga::cli::progress::{self as shared, Lines};

/// The longest silence between two progress lines off a terminal.
pub const LINE_EVERY: Duration = Duration::from_secs(10);

static LINES: AtomicBool = AtomicBool::new(false);

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Prints progress lines on stderr when it is not a terminal (`saga-sim`
/// calls it at start).
pub fn lines_off_terminal() {
    LINES.store(true, Ordering::SeqCst);
}

/// Whether progress lines go to stderr (asked for, and not a terminal).
pub fn lines_wanted() -> bool {
    LINES.load(Ordering::SeqCst) && !shared::on_terminal()
}

/// Runs `work` with no progress lines from this thread's sweeps (a caller
/// that reports its own progress: `hunt`, one line per chunk).
pub fn quietly<T>(work: impl FnOnce() -> T) -> T {
    let before = QUIET.with(|q| q.replace(true));
    let out = work();
    QUIET.with(|q| q.set(before));
    out
}

/// Writes one progress line to stderr; a closed stderr is ignored.
pub fn line(text: &str) {
    shared::line("saga-sim", text);
}

/// One sweep's progress over `total` seeds.
pub struct Progress {
    bar: ProgressBar,
    lines: bool,
    total: u64,
    done: u64,
    failing: u64,
    started: Instant,
    due: Lines,
    tenths: u64,
}

impl Progress {
    pub fn seeds(total: u64) -> Progress {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} seeds {per_sec} eta {eta} {msg}")
                .expect("valid template"),
        );
        let started = Instant::now();
        Progress {
            bar,
            lines: lines_wanted() && !QUIET.with(Cell::get),
            total,
            done: 0,
            failing: 0,
            started,
            due: Lines::new(LINE_EVERY),
            tenths: 0,
        }
    }

    /// One more seed done (`seed`, failing or not).
    pub fn inc(&mut self, seed: u64, failed: bool) {
        self.done += 1;
        if failed {
            self.failing += 1;
            self.bar.set_message(format!("seed {seed} FAILED"));
        }
        self.bar.inc(1);
        if !self.lines {
            return;
        }
        let tenths = self.done * 10 / self.total.max(1);
        if self.due.due(tenths > self.tenths || self.done == self.total) {
            self.tenths = tenths;
            line(&format!(
                "{}/{} seeds, {} failing, {:.0}s",
                self.done,
                self.total,
                self.failing,
                self.started.elapsed().as_secs_f64()
            ));
        }
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}
