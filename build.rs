//! Records the git commit this binary is built from as
//! `PURCHASE_SAGA_COMMIT` (for `--version` and the `saga_build_info`
//! metric): `PURCHASE_SAGA_COMMIT` from the environment when set (a build
//! outside a checkout, e.g. from a source tarball in CI), else
//! `git rev-parse --short=12 HEAD` (the commit checked out; uncommitted
//! changes are not marked), else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=PURCHASE_SAGA_COMMIT");
    let commit = std::env::var("PURCHASE_SAGA_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let head = git(&["rev-parse", "--short=12", "HEAD"])?;
            // Rebuild when HEAD moves (a commit, a checkout).
            for path in ["HEAD"] {
                if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
                // Absent when packed (then HEAD's file and packed-refs tell).
                if let Some(p) = git(&["rev-parse", "--git-path", &reference]) {
                    if std::path::Path::new(&p).exists() {
                        println!("cargo:rerun-if-changed={p}");
                    }
                }
            }
            Some(head)
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PURCHASE_SAGA_COMMIT={commit}");
}
