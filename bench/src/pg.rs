//! A fresh PostgreSQL database for one run, and the cluster's leader row in it.
//!
//! A scenario on PostgreSQL never uses the database it is given: it creates one with a
//! random name on the same server, runs against it, and drops it afterwards (`WITH (FORCE)`,
//! whatever the run's outcome), unless told to keep it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::FutureExt;
use sqlx::{Connection, PgConnection};

/// The database of one run.
pub struct Database {
    /// Its name on the server.
    pub name: String,
    /// The URL that names it, for tallyd and for reading the leader row.
    pub url: String,
    /// The URL the run was given, whose database the new one is created and dropped from.
    server: String,
}

/// The live leader row: the node that leads, where clients are sent, and its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The node's id (`data_dir/node_id`).
    pub node: String,
    /// Its advertised address.
    pub address: String,
    /// One more at every change of leader.
    pub epoch: i64,
}

/// Runs `run` on a fresh database on `server`'s PostgreSQL, then drops the database, also
/// when `run` fails, panics or is interrupted (Ctrl-C), unless `keep`. Whatever `run` started
/// against the database must be stopped by the time its future completes (a [`Daemon`] is
/// killed when dropped).
///
/// [`Daemon`]: crate::daemon::Daemon
pub async fn with_fresh_database<T, F, Fut>(server: &str, keep: bool, run: F) -> Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let database = Database::create(server).await?;
    let outcome = tokio::select! {
        outcome = AssertUnwindSafe(run(database.url.clone())).catch_unwind() => outcome,
        _ = tokio::signal::ctrl_c() => Ok(Err(anyhow::anyhow!("interrupted"))),
    };
    if keep {
        eprintln!("kept the database {} ({})", database.name, database.url);
    } else if let Err(err) = database.drop_it().await {
        eprintln!(
            "warning: cannot drop the database {}: {err:#}",
            database.name
        );
    }
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

impl Database {
    /// Creates a database with a random name on the server of `server`.
    pub async fn create(server: &str) -> Result<Database> {
        let name = format!("tally_bench_{:016x}", rand::random::<u64>());
        let url = with_database(server, &name)?;
        let mut conn = PgConnection::connect(server)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(server)))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot create the database {name}"))?;
        conn.close().await?;
        Ok(Database {
            name,
            url,
            server: server.to_string(),
        })
    }

    /// Drops the database, ending any connection still open to it.
    async fn drop_it(&self) -> Result<()> {
        let mut conn = PgConnection::connect(&self.server).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        Ok(())
    }
}

/// A connection to the run's database, for reading the leader row and settings.
pub async fn connect(url: &str) -> Result<PgConnection> {
    PgConnection::connect(url)
        .await
        .with_context(|| format!("cannot connect to {}", redact(url)))
}

/// The leader row while its lease is live in the database's clock; `None` when no node
/// leads (never one yet, or its lease lapsed). Before the first node made its tables,
/// `None` too.
pub async fn leader(conn: &mut PgConnection) -> Result<Option<Leader>> {
    let row: Option<(String, String, i64)> = match sqlx::query_as(
        "SELECT node, address, epoch FROM tally_leader WHERE id = 1 AND expires_at > now()",
    )
    .fetch_optional(&mut *conn)
    .await
    {
        Ok(row) => row,
        // 42P01: undefined_table, before the first node migrated.
        Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("42P01") => None,
        Err(err) => return Err(err).context("cannot read the leader row"),
    };
    Ok(row.map(|(node, address, epoch)| Leader {
        node,
        address,
        epoch,
    }))
}

/// Waits until the leader row is live and `accept` takes it; gives up after `limit`.
pub async fn wait_for_leader(
    conn: &mut PgConnection,
    limit: Duration,
    accept: impl Fn(&Leader) -> bool,
) -> Result<Leader> {
    let started = Instant::now();
    loop {
        if let Some(leader) = leader(conn).await? {
            if accept(&leader) {
                return Ok(leader);
            }
        }
        if started.elapsed() > limit {
            bail!(
                "no expected leader in the tally_leader row within {limit:?} (last: {:?})",
                leader(conn).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The process ids of the server's backends connected to the database `conn` is on, but
/// `conn`'s own: the PostgreSQL side of a run, for its CPU time (the server must run on this
/// machine).
pub async fn backends(conn: &mut PgConnection) -> Result<Vec<u32>> {
    let pids: Vec<(i32,)> = sqlx::query_as(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(conn)
    .await
    .context("cannot list the database's backends")?;
    Ok(pids.into_iter().map(|(pid,)| pid as u32).collect())
}

/// A server setting, as `SHOW` prints it.
pub async fn setting(conn: &mut PgConnection, name: &str) -> Result<String> {
    let (value,): (String,) = sqlx::query_as(&format!("SHOW {name}"))
        .fetch_one(conn)
        .await
        .with_context(|| format!("SHOW {name}"))?;
    Ok(value)
}

/// `url` with its database replaced by `name` (the path after the host), keeping the user,
/// host, port and parameters.
fn with_database(url: &str, name: &str) -> Result<String> {
    let Some(scheme_end) = url.find("://") else {
        bail!("{} is not a postgres:// URL", redact(url));
    };
    let scheme = &url[..scheme_end];
    if scheme != "postgres" && scheme != "postgresql" {
        bail!("{} is not a postgres:// URL", redact(url));
    }
    let (base, query) = match url.find('?') {
        Some(at) => url.split_at(at),
        None => (url, ""),
    };
    let authority_start = scheme_end + 3;
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |at| authority_start + at);
    Ok(format!("{}/{name}{query}", &base[..authority_end]))
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _)) => format!(
                "{}://{user}:***{}",
                &url[..scheme_end],
                &url[scheme_end + 3 + at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_replaced_and_the_rest_kept() {
        let name = "tally_bench_1";
        for (given, expected) in [
            (
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres://postgres@127.0.0.1:5432/tally_bench_1",
            ),
            (
                "postgres://u:p@db/x?sslmode=disable",
                "postgres://u:p@db/tally_bench_1?sslmode=disable",
            ),
            ("postgresql://db", "postgresql://db/tally_bench_1"),
            (
                "postgres://db?sslmode=require",
                "postgres://db/tally_bench_1?sslmode=require",
            ),
        ] {
            assert_eq!(with_database(given, name).unwrap(), expected);
        }
        assert!(with_database("sqlite://x", name).is_err());
        assert!(with_database("db:5432", name).is_err());
    }

    #[test]
    fn a_password_is_not_shown() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    }
}
