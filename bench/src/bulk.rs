//! `tally-bench bulk`: bulk administration (SPEC R19) end to end. One daemon; the release
//! `tally` binary (next to this one) imports a CSV file of `rows` new users with their
//! tokens written to a file, then assigns a seat of one feature to each of them from a
//! second file. Each command is timed whole: reading and checking the file, the one
//! request, the server applying every row in one commit, and the files written.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::daemon::Daemon;

pub async fn run(tallyd: &Path, rows: usize) -> Result<Value> {
    let tally = crate::bulk::tally_beside(tallyd)?;
    let daemon = Daemon::start(tallyd, "60s", 16)?;
    let config = daemon.dir.path().join("data/client.toml");
    let work = tempfile::tempdir()?;

    let mut users = String::from("email,role,name\n");
    let mut assign = String::from("email,feature,seats\n");
    for i in 0..rows {
        users.push_str(&format!("user{i}@bench.example,member,Bench User {i}\n"));
        assign.push_str(&format!("user{i}@bench.example,bench,1\n"));
    }
    let users_file = work.path().join("users.csv");
    let assign_file = work.path().join("assign.csv");
    let tokens_file = work.path().join("tokens.csv");
    std::fs::write(&users_file, users)?;
    std::fs::write(&assign_file, assign)?;

    let cpu = daemon.cpu().meter()?;
    let (import, import_doc) = timed(
        &tally,
        &config,
        &[
            "user",
            "import",
            path(&users_file)?,
            "--tokens",
            path(&tokens_file)?,
        ],
    )?;
    let import_cpu = cpu.us_per_op(rows)?;
    check(&import_doc, rows, "import")?;
    let tokens = std::fs::read_to_string(&tokens_file)?.lines().count() - 1;
    if tokens != rows {
        bail!("the tokens file holds {tokens} tokens, not {rows}");
    }

    let seats = rows.to_string();
    let (_, added) = timed(
        &tally,
        &config,
        &["entitlement", "add", "bench", "--seats", &seats],
    )?;
    if added.get("entitlement").is_none() {
        bail!("entitlement add failed: {added}");
    }
    let cpu = daemon.cpu().meter()?;
    let (assigned, assign_doc) = timed(&tally, &config, &["assign", "--csv", path(&assign_file)?])?;
    let assign_cpu = cpu.us_per_op(rows)?;
    check(&assign_doc, rows, "assign")?;

    println!(
        "bulk: `tally user import` of {rows} new users (tokens to a file), then `tally assign --csv` of one seat to each, timed whole (SQLite, synchronous = FULL)"
    );
    let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    Ok(json!({
        "scenario": "bulk",
        "rows": rows,
        "import_secs": secs(import),
        "assign_secs": secs(assigned),
        "import_rows_per_sec": (rows as f64 / import.as_secs_f64()).round(),
        "assign_rows_per_sec": (rows as f64 / assigned.as_secs_f64()).round(),
        "ops_per_sec": (2.0 * rows as f64 / (import + assigned).as_secs_f64()).round(),
        "p50_ms": import.min(assigned).as_millis() as u64,
        "p99_ms": import.max(assigned).as_millis() as u64,
        "server_cpu_us_per_op": (import_cpu + assign_cpu) / 2.0,
        "import_server_cpu_us_per_row": import_cpu,
        "assign_server_cpu_us_per_row": assign_cpu,
    }))
}

fn path(path: &Path) -> Result<&str> {
    path.to_str().context("a temporary path that is not UTF-8")
}

/// The release `tally` binary beside `tallyd`, which the scenarios that time the CLI run.
pub(crate) fn tally_beside(tallyd: &Path) -> Result<std::path::PathBuf> {
    let tally = tallyd.with_file_name("tally");
    if !tally.exists() {
        bail!(
            "{} not found; build it with `cargo build --release -p tally-client`",
            tally.display()
        );
    }
    Ok(tally)
}

/// Runs `tally --config CONFIG --json ARGS`: how long it took and its JSON document.
pub(crate) fn timed(tally: &Path, config: &Path, args: &[&str]) -> Result<(Duration, Value)> {
    let started = Instant::now();
    let out = Command::new(tally)
        .arg("--config")
        .arg(config)
        .arg("--json")
        .args(args)
        .env_remove("TALLY_CONFIG")
        .output()?;
    let elapsed = started.elapsed();
    let doc = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "tally {args:?} printed no JSON; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((elapsed, doc))
}

/// Every row applied, none refused.
fn check(doc: &Value, rows: usize, what: &str) -> Result<()> {
    if doc["applied"] != json!(rows) || doc["failed"] != json!([]) {
        let shown: String = doc.to_string().chars().take(500).collect();
        bail!("the {what} did not apply every row: {shown}");
    }
    Ok(())
}
