//! How a long command shows that it is working, shared by both binaries
//! (`purchase-saga audit --wait`, and `saga-sim`'s sweeps through
//! `sim/src/progress.rs`): on a terminal an indicatif spinner or bar on
//! stderr; elsewhere (a CI log, a pipe, `nohup`) a line on stderr, e.g.
//! `purchase-saga: audit --wait: 3 orders not terminal; waited 4s of 60s`,
//! whenever what it counts changes and at least every so often
//! ([`Lines`]). Stdout stays the report's (`--json` included); a closed
//! stderr loses progress lines and nothing else.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Whether stderr is a terminal (a spinner or bar), else lines.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Writes `program: text` as one line to stderr; a closed stderr is
/// ignored.
pub fn line(program: &str, text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{program}: {text}");
}

/// A spinner on stderr that ticks by itself, showing its message (hidden
/// off a terminal: indicatif draws nothing there).
pub fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// When a progress line is due: whenever the caller says its count
/// changed, and otherwise once `every` has passed since the last line (or
/// since the start), so a long wait is never silent for longer.
#[derive(Debug, Clone, Copy)]
pub struct Lines {
    every: Duration,
    last: Instant,
}

impl Lines {
    pub fn new(every: Duration) -> Lines {
        Lines {
            every,
            last: Instant::now(),
        }
    }

    /// Whether a line is due now (`changed`: what the line counts moved);
    /// a due line counts as written.
    pub fn due(&mut self, changed: bool) -> bool {
        self.due_at(changed, Instant::now())
    }

    fn due_at(&mut self, changed: bool, now: Instant) -> bool {
        let due = changed || now.saturating_duration_since(self.last) >= self.every;
        if due {
            self.last = now;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_due_on_a_change_and_after_a_silence_of_every() {
        let mut lines = Lines::new(Duration::from_secs(5));
        let start = lines.last;
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(!lines.due_at(false, at(1)), "nothing new, too soon");
        assert!(lines.due_at(true, at(2)), "the count changed");
        assert!(!lines.due_at(false, at(6)), "4 s after the last line");
        assert!(lines.due_at(false, at(7)), "5 s of silence");
        assert!(!lines.due_at(false, at(8)));
    }
}
