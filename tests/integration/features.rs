//! The client library without its command line: an application that depends on
//! `tally-client` with `default-features = false` must get the library alone, with none of
//! the CLI's dependencies, and it must build that way.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates only the `tally` command line needs.
const CLI_ONLY: &[&str] = &[
    "clap",
    "clap_complete",
    "clap_mangen",
    "csv",
    "nix",
    "serde_json",
    "tracing-subscriber",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn cargo(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The normal dependencies of tally-client, one crate name per line.
fn dependencies(features: &[&str]) -> Vec<String> {
    let mut args = vec![
        "tree",
        "-p",
        "tally-client",
        "-e",
        "normal",
        "--prefix",
        "none",
    ];
    args.extend(features);
    args.push("--offline");
    let out = cargo(&args);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn the_client_library_builds_without_the_command_line_or_its_dependencies() {
    // With default features the CLI's crates are there: the listing can tell.
    let full = dependencies(&[]);
    for name in CLI_ONLY {
        assert!(full.iter().any(|d| d == name), "{name} not in {full:?}");
    }
    let lean = dependencies(&["--no-default-features"]);
    assert!(lean.iter().any(|d| d == "tokio"), "{lean:?}");
    for name in CLI_ONLY {
        assert!(
            !lean.iter().any(|d| d == name),
            "{name} is a dependency of tally-client without its `cli` feature"
        );
    }
    // And the library compiles that way. Its own target directory: the one this test runs
    // from may be locked by the cargo that started it (`cargo test`), and its artifacts
    // carry other features. Checked once, later runs find it up to date.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("tally-client-lib-only");
    let target = target.to_str().expect("a UTF-8 target path");
    cargo(&[
        "check",
        "-p",
        "tally-client",
        "--lib",
        "--no-default-features",
        "--offline",
        "--quiet",
        "--target-dir",
        target,
    ]);
}
