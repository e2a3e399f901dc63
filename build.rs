//! Names the commit in `ferry --version`: `0.1.0 (commit 3f9a1c7d2e4b)`, with `-dirty` when the
//! working tree had uncommitted changes, or `unknown` outside a git checkout (a crate tarball).

use std::process::Command;

fn main() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!("cargo:rustc-env=FERRY_COMMIT={commit}{}", if dirty { "-dirty" } else { "" });
    // A new commit moves the branch's ref; a checkout moves HEAD; an edit touches the index.
    for path in [".git/HEAD", ".git/refs/heads", ".git/index"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
