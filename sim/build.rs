//! Fixes the commit `saga-sim` was built from into the binary as
//! `SAGA_SIM_COMMIT` (read by `sweep::commit`, printed by `--version` and
//! recorded in the corpus): `git describe --always --dirty --abbrev=12` of
//! this checkout; outside git (a source tarball, a container build without
//! `.git`) the `SAGA_SIM_COMMIT` or `GIT_COMMIT` environment variable;
//! `unknown` only when none is there. The script runs again when HEAD, the branch it points
//! to, the index or a source file changes, so the commit and its `-dirty`
//! mark follow the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SAGA_SIM_COMMIT");
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The sources whose edits make the tree dirty (directories: cargo
    // looks at every file under them).
    for source in [
        "src",
        "build.rs",
        "Cargo.toml",
        "../src",
        "../migrations",
        "../Cargo.toml",
    ] {
        let path = manifest.join(source);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    if let (Some(git_dir), Some(common)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ) {
        let git_dir = PathBuf::from(git_dir);
        let common = manifest.join(common);
        let mut watched = vec![
            git_dir.join("HEAD"),
            git_dir.join("index"),
            common.join("packed-refs"),
        ];
        if let Some(branch) = std::fs::read_to_string(git_dir.join("HEAD"))
            .ok()
            .and_then(|head| head.strip_prefix("ref: ").map(|r| r.trim().to_string()))
        {
            watched.push(common.join(branch));
        }
        for path in watched.into_iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let from_env = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
    };
    let commit = git(&["describe", "--always", "--dirty", "--abbrev=12"])
        .or_else(|| from_env("SAGA_SIM_COMMIT"))
        .or_else(|| from_env("GIT_COMMIT"))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SAGA_SIM_COMMIT={commit}");
}
