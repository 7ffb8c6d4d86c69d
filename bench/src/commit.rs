//! The durable limit of the checkout scenario: how long one durable single-row commit takes
//! on the disk of the daemon's data directory, and what that allows a closed loop of
//! connections.
//!
//! The database is opened with the store's own options
//! ([`tally_server::store::SqliteStore::connect_options`]: WAL, `synchronous = FULL`) through
//! sqlx, as `tallyd` opens its own, in a file beside the daemon's data directory. Each commit
//! is a transaction of one `INSERT`, begun and committed as the store commits a batch. After
//! a warm-up, [`SAMPLES`] commits run one after the other and their median and 90th
//! percentile are the figures.
//!
//! A connection with one request outstanding completes at most one request per commit plus
//! one round trip, so `conns` connections complete at most
//! `conns / (commit + round trip)` requests per second, whatever the server does between
//! ([`durable_limit`]). Group commit lets them share one commit, which is why the figure
//! counts it once per cycle.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use sqlx::sqlite::SqlitePoolOptions;
use tally_server::store::SqliteStore;

/// Commits timed, after [`WARMUP`] untimed ones.
pub const SAMPLES: usize = 200;

/// Commits made before timing: the file and its WAL grow to their first size, the
/// statement is prepared.
pub const WARMUP: usize = 20;

/// What [`measure`] found.
#[derive(Debug, Clone, Copy)]
pub struct CommitTimes {
    /// The median commit, in milliseconds.
    pub median_ms: f64,
    /// The 90th percentile, in milliseconds.
    pub p90_ms: f64,
    /// Commits timed.
    pub samples: usize,
}

/// Times `samples` durable single-row commits, after `warmup` untimed ones, on a fresh
/// database `file` opened as the SQLite store opens its own. The file (and its WAL) is
/// removed afterwards.
pub async fn measure(file: &Path, warmup: usize, samples: usize) -> Result<CommitTimes> {
    let options = SqliteStore::connect_options(file)?;
    // One connection: the commits are sequential, as the engine's are.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, body BLOB NOT NULL)",
    )
    .execute(&pool)
    .await?;
    // A row about the size of a lease's.
    let body = [7u8; 64];
    let mut times = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        let started = Instant::now();
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO probe (at, body) VALUES (?, ?)")
            .bind(i as i64)
            .bind(&body[..])
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if i >= warmup {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
    times.sort_by(f64::total_cmp);
    Ok(CommitTimes {
        median_ms: quantile(&times, 0.5),
        p90_ms: quantile(&times, 0.9),
        samples,
    })
}

/// The `q` quantile of sorted `values` (nearest rank), 0 when there are none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Requests per second that `conns` connections, each with one request outstanding, can
/// complete when every request waits for a commit of `commit_ms` and a round trip of
/// `round_trip_ms`.
pub fn durable_limit(conns: usize, commit_ms: f64, round_trip_ms: f64) -> f64 {
    conns as f64 / ((commit_ms + round_trip_ms) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_connections_over_one_cycle() {
        // 64 connections, a 0.9 ms commit and a 0.55 ms round trip: 64 / 1.45 ms.
        let limit = durable_limit(64, 0.9, 0.55);
        assert!((limit - 44_137.9).abs() < 1.0, "{limit}");
        assert_eq!(durable_limit(256, 1.0, 1.0), 128_000.0);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), 6.0);
        assert_eq!(quantile(&values, 0.9), 9.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[tokio::test]
    async fn commits_are_timed_on_a_durable_database_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("probe.sqlite");
        // The store's options give WAL and synchronous = FULL (2).
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(SqliteStore::connect_options(&file).unwrap())
            .await
            .unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        assert_eq!((mode.as_str(), synchronous), ("wal", 2));
        std::fs::remove_file(&file).unwrap();

        let times = measure(&file, 2, 10).await.unwrap();
        assert_eq!(times.samples, 10);
        assert!(times.median_ms > 0.0, "{times:?}");
        assert!(times.p90_ms >= times.median_ms, "{times:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
