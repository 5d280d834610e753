//! What every command's output shares: a closed stdout ends the process
//! quietly, and the `--json` forms are printed one way.
//!
//! `purchase-saga token list | head -1`: once `head` exits, the next write
//! to stdout fails with EPIPE. Rust ignores SIGPIPE, so `println!` panics
//! ("failed printing to stdout: Broken pipe"). Restoring SIGPIPE's default
//! would also let a peer that closed a socket kill `serve` (vectored
//! socket writes raise it), so instead the panic hook recognizes that one
//! panic and exits with [`EXIT_BROKEN_PIPE`] (128 + SIGPIPE, what a shell
//! reports for a process that SIGPIPE ended) without a word. Every other
//! panic keeps the default hook.
//!
//! JSON field names are camelCase and stable: a field may be added, none
//! is renamed or removed without a note in the README's operator section.

use serde::Serialize;

/// The exit code of a process whose stdout was closed under it.
pub const EXIT_BROKEN_PIPE: i32 = 141;

/// Whether a panic message is `println!`'s on a closed stdout.
pub fn is_broken_stdout(message: &str) -> bool {
    message.starts_with("failed printing to stdout") && message.contains("os error 32")
}

/// Installs the panic hook of the module docs (once per process).
pub fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if is_broken_stdout(message) {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        default(info);
    }));
}

/// Prints `value` as pretty JSON and a newline on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), String> {
    let json = serde_json::to_string_pretty(value).map_err(|e| format!("cannot write JSON: {e}"))?;
    println!("{json}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_broken_stdout;

    #[test]
    fn only_a_closed_stdout_is_quiet() {
        assert!(is_broken_stdout(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(!is_broken_stdout(
            "failed printing to stderr: Broken pipe (os error 32)"
        ));
        assert!(!is_broken_stdout(
            "failed printing to stdout: No space left on device (os error 28)"
        ));
        assert!(!is_broken_stdout("index out of bounds"));
    }
}
