//! Where `saga-sim` writes. Stdout holds the report (a table, or one JSON
//! document with `--json`); stderr holds errors and progress.
//!
//! A reader that goes away early (`saga-sim replay --seed 7 --trace |
//! head`) ends the process at once, quietly, with exit status 141
//! (128 + SIGPIPE: what a shell shows for a C tool that a closed pipe
//! stopped): the report was cut, so the command did not succeed, and
//! there is nobody left to tell. Rust ignores SIGPIPE, and `println!`
//! panics on the write error instead; the process is not switched back to
//! dying by the signal because torture writes to sockets of servers it
//! kills on purpose.

use std::io::{ErrorKind, Write};

use serde::Serialize;

/// Exit status when stdout's reader went away.
pub const CLOSED_PIPE: i32 = 141;

/// Writes `text` to stdout as it is.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(CLOSED_PIPE);
        }
        tell(&format!("saga-sim: cannot write to stdout: {e}"));
        std::process::exit(74);
    }
}

/// Writes `text` and a newline to stderr; a closed stderr is ignored.
pub fn tell(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Prints `doc` as one pretty JSON document on stdout.
pub fn json<T: Serialize>(doc: &T) {
    let text = serde_json::to_string_pretty(doc).expect("a report serializes");
    print(&format!("{text}\n"));
}
