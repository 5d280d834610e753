//! The check behind both binaries' completions tests (`tests/cli.rs` for
//! `purchase-saga`, `sim/tests/cli.rs` for `saga-sim`, which includes this
//! file by path): for every shell clap_complete knows, `completions SHELL`
//! succeeds and its script names the binary, every subcommand at every
//! depth and every long flag that is not hidden.

use std::process::Output;

/// The shells `completions` takes.
pub const SHELLS: [&str; 5] = ["bash", "zsh", "fish", "elvish", "powershell"];

/// Every visible subcommand name and long flag of `command`, at every depth.
fn words(command: &clap::Command, out: &mut Vec<String>) {
    for arg in command.get_arguments() {
        if let Some(long) = arg.get_long().filter(|_| !arg.is_hide_set()) {
            out.push(long.to_string());
        }
    }
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        out.push(sub.get_name().to_string());
        words(sub, out);
    }
}

/// Runs `completions SHELL` through `run` for each shell and asserts that
/// the script covers `command` (the binary `name`); `--help` and
/// `--version` are clap's own and left out.
pub fn assert_completions_cover(name: &str, command: clap::Command, run: impl Fn(&[&str]) -> Output) {
    let mut expected = vec![name.to_string()];
    words(&command, &mut expected);
    expected.retain(|w| w != "help" && w != "version");
    expected.sort();
    expected.dedup();
    assert!(expected.len() > 10, "{name}: {expected:?}");
    for shell in SHELLS {
        let out = run(&["completions", shell]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name} completions {shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // fish writes flags as `-l redis-prefix`, the others `--redis-prefix`.
        let missing: Vec<&String> = expected.iter().filter(|w| !script.contains(w.as_str())).collect();
        assert!(missing.is_empty(), "{name}'s {shell} script lacks {missing:?}");
    }
}
