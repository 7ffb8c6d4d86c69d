//! The Python client (`client/python`): built into a virtualenv with maturin and tested by
//! its pytest suite against the daemon and `tally` binaries of this test package, so that
//! `cargo nextest run --workspace` covers it like the rest.
//!
//! The virtualenv is `target/py-venv` (`.ci/run` creates it and installs maturin and pytest
//! there; this test does the same when they are missing). The extension is built in the
//! debug profile into `target/py-build`, a target directory of its own: the one this test
//! runs from may be locked by the cargo that started it, and the module's build (without
//! linking libpython) would otherwise undo the workspace's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{CLI, DAEMON};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Runs `command`, failing the test with its output unless it succeeds.
fn run(command: &mut Command, what: &str) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: cannot start it: {err}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_python_client_passes_its_tests_against_a_real_tallyd() {
    let python3_runs = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !python3_runs {
        eprintln!("skipped: python3 not found, so the Python client is not tested");
        return;
    }
    let venv = target_dir().join("py-venv");
    let bin = venv.join("bin");
    if !bin.join("python").exists() {
        run(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "python3 -m venv",
        );
    }
    if !bin.join("maturin").exists() || !bin.join("pytest").exists() {
        run(
            Command::new(bin.join("pip")).args(["install", "--quiet", "maturin", "pytest"]),
            "pip install maturin pytest",
        );
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let client = workspace().join("client/python");
    run(
        Command::new(bin.join("maturin"))
            .args(["develop", "--quiet", "--manifest-path"])
            .arg(client.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir().join("py-build"))
            .env("VIRTUAL_ENV", &venv)
            .env("PATH", &path)
            .env_remove("CARGO_TARGET_DIR"),
        "maturin develop (building the tally module)",
    );
    let out = run(
        Command::new(bin.join("python"))
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(client.join("tests"))
            .current_dir(&client)
            .env("TALLYD", DAEMON)
            .env("TALLY_CLI", CLI)
            .env("PATH", &path)
            .env_remove("TALLY_CONFIG"),
        "pytest client/python/tests",
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(" passed"),
        "pytest ran no test:\n{summary}"
    );
    assert!(
        !summary.contains(" skipped"),
        "pytest skipped tests:\n{summary}"
    );
}
