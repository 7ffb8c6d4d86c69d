//! The elector: one task per node that takes, keeps and gives back the leadership row.
//!
//! # Timing
//!
//! The only clock two nodes share is the database's. A node takes the row when its
//! `expires_at` is before the database's `now()`, and sets it (and every renewal sets it) to
//! the database's `now() + lease`. The leader measures its own leadership on its local
//! monotonic clock instead, from the instant `s` it *started* the statement that took or
//! renewed the row: it leads only until `s + lease - margin` ([`Timing::leads_until`]).
//!
//! Why that is safe: the database reads `now()` after the statement reached it, so at a real
//! time no earlier than `s`; the row therefore lapses in the database no earlier than real
//! time `s + lease`, and no standby can take it before then. The leader steps down at
//! `s + lease - margin` by its own clock, `margin` earlier. The margin absorbs a difference
//! in the *rate* of the two clocks (not their setting, which does not matter) and the
//! scheduling delay between the deadline and the step-down being published; with the
//! default `margin = lease / 3` a 3 s lease leaves one second, far more than any clock drift.
//! Every statement runs under a client-side timeout shorter than the margin, and a timeout
//! or an error counts as a failed renewal, so a leader whose database connection hangs steps
//! down on time rather than waiting on its socket. The fence ([`super::check_epoch`]) backs
//! this up: a commit of an old epoch fails even if the step-down were late.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::{Role, CHANNEL};

/// The shortest lease accepted: below it, the statement timeout (a quarter of the lease)
/// would be shorter than a busy database's ordinary latency, and leadership would flap.
pub const MIN_LEASE: Duration = Duration::from_millis(300);

/// The longest lease accepted: a failover waits up to a lease and a third.
pub const MAX_LEASE: Duration = Duration::from_secs(3600);

/// Takes the row for this node when it has lapsed in the database's clock, or when it names
/// this node (a takeover or renewal of ours that was cancelled on our side but ran on the
/// server: we do not lead under that epoch, so we take a new one rather than leave the
/// cluster without a leader for a lease). The epoch grows by one either way. The row is
/// locked by the conflict; two nodes racing for it are ordered by that lock and the second
/// sees the first's fresh expiry. Returns the new epoch, if taken, and the address of the
/// leader whose lease is current, read from the snapshot before the statement.
const ACQUIRE: &str = "\
WITH taken AS (
    INSERT INTO tally_leader (id, node, address, epoch, expires_at)
    VALUES (1, $1, $2, 1, now() + $3 * interval '1 millisecond')
    ON CONFLICT (id) DO UPDATE
        SET node = EXCLUDED.node,
            address = EXCLUDED.address,
            epoch = tally_leader.epoch + 1,
            expires_at = EXCLUDED.expires_at
        WHERE tally_leader.expires_at < now() OR tally_leader.node = EXCLUDED.node
    RETURNING epoch
)
SELECT (SELECT epoch FROM taken),
       (SELECT address FROM tally_leader WHERE id = 1 AND expires_at >= now())";

/// Extends the lease of our epoch; no row means another node has taken over (or the lease
/// lapsed, which a timely leader never lets happen).
const RENEW: &str = "\
UPDATE tally_leader SET expires_at = now() + $3 * interval '1 millisecond'
WHERE id = 1 AND node = $1 AND epoch = $2 AND expires_at >= now()";

/// Gives the row up at once and wakes the standbys (the notification is sent at commit,
/// only when the row was ours).
const RESIGN: &str = "\
WITH resigned AS (
    UPDATE tally_leader SET expires_at = '-infinity'
    WHERE id = 1 AND node = $1 AND epoch = $2
    RETURNING 1
)
SELECT pg_notify($3, '') FROM resigned";

/// Records that this node is alive, and where it can be reached, for `tally server nodes`.
const HEARTBEAT: &str = "\
INSERT INTO tally_nodes (id, address, last_seen) VALUES ($1, $2, now())
ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, last_seen = EXCLUDED.last_seen";

/// Why an elector could not start.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// The `[ha] lease` is outside the accepted range.
    #[error("ha.lease must be between {} ms and {} s, not {} ms", MIN_LEASE.as_millis(), MAX_LEASE.as_secs(), .0.as_millis())]
    Lease(Duration),
    /// The node id is empty.
    #[error("the node id is empty")]
    NoNodeId,
    /// The advertised address is empty.
    #[error("ha.advertise is empty")]
    NoAddress,
}

/// The periods the elector works by, all derived from the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a taken or renewed row lasts in the database's clock.
    pub lease: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
    /// How often a standby tries to take over: half as long as `renew_every`, so that a
    /// lapsed lease is taken within `lease / 6` of lapsing (one cheap statement a poll).
    pub poll_every: Duration,
    /// How much earlier than the row's expiry the leader steps down (see the module docs).
    pub margin: Duration,
    /// The client-side limit on every statement; shorter than `margin`.
    pub statement_timeout: Duration,
    /// How soon the leader tries again after a failed renewal.
    pub retry_after: Duration,
}

impl Timing {
    /// The timing for `lease`, or why that lease is refused.
    pub fn new(lease: Duration) -> Result<Timing, HaError> {
        if !(MIN_LEASE..=MAX_LEASE).contains(&lease) {
            return Err(HaError::Lease(lease));
        }
        Ok(Timing {
            lease,
            renew_every: lease / 3,
            poll_every: lease / 6,
            margin: lease / 3,
            statement_timeout: lease / 4,
            retry_after: lease / 10,
        })
    }

    /// Until when a node that started taking or renewing the row at `start` (its local
    /// monotonic clock) may act as leader: `start + lease - margin`.
    pub fn leads_until(&self, start: Instant) -> Instant {
        start + self.lease - self.margin
    }
}

/// What the elector needs to know about its node.
#[derive(Debug, Clone)]
pub struct ElectorConfig {
    /// This node's id, unique in the cluster and stable across restarts (kept in `data_dir`).
    pub node: String,
    /// Where clients are sent when this node leads (`[ha] advertise`).
    pub address: String,
    /// The lease (`[ha] lease`).
    pub lease: Duration,
}

/// A running elector. Its [`Role`] channel says whether this node may grant; dropping the
/// elector stops it and gives up leadership.
#[derive(Debug)]
pub struct Elector {
    /// The node's role as last decided.
    role: watch::Receiver<Role>,
    /// Stops the task; the task resigns when it leads.
    stop: CancellationToken,
    /// The elector's task.
    task: JoinHandle<()>,
}

impl Elector {
    /// Starts the elector on its own small connection pool to `database`, so that the
    /// store's connections, busy with commits, never delay a renewal. The tables of
    /// [`super::SCHEMA`] must exist. Connections are made lazily: a database that is down
    /// leaves the node a standby until it comes back.
    pub fn start(database: PgConnectOptions, config: ElectorConfig) -> Result<Elector, HaError> {
        let timing = Timing::new(config.lease)?;
        if config.node.is_empty() {
            return Err(HaError::NoNodeId);
        }
        if config.address.is_empty() {
            return Err(HaError::NoAddress);
        }
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(timing.statement_timeout)
            .connect_lazy_with(database.options([(
                "statement_timeout",
                format!("{}ms", timing.statement_timeout.as_millis()),
            )]));
        let (role_tx, role) = watch::channel(Role::Standby { leader: None });
        let stop = CancellationToken::new();
        let task = Task {
            pool,
            config,
            timing,
            role: role_tx,
            stop: stop.clone(),
            wake: Arc::new(Notify::new()),
        };
        let task = tokio::spawn(task.run());
        Ok(Elector { role, stop, task })
    }

    /// The node's role; `changed()` wakes on every change.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Stops the elector. A leader first publishes `Standby`, then gives the row up so that a
    /// standby takes over at once instead of after the lease.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }

    /// Ends the task where it stands, with no resignation, as if the process were killed.
    #[cfg(test)]
    pub(crate) async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How a spell of leadership ended.
enum Ended {
    /// The lease was lost or could not be renewed in time; compete again.
    Lost,
    /// The elector was stopped.
    Stopped,
}

/// The elector's task and what it works with.
struct Task {
    /// The elector's own connections.
    pool: PgPool,
    /// This node.
    config: ElectorConfig,
    /// The periods, from the lease.
    timing: Timing,
    /// Where the role is published.
    role: watch::Sender<Role>,
    /// Set when the elector is stopped.
    stop: CancellationToken,
    /// Woken by a resignation notified on [`CHANNEL`].
    wake: Arc<Notify>,
}

impl Task {
    async fn run(self) {
        let listener = tokio::spawn(listen(
            self.pool.clone(),
            self.wake.clone(),
            self.timing.renew_every,
        ));
        let heartbeat = tokio::spawn(heartbeat(
            self.pool.clone(),
            self.config.clone(),
            self.timing,
        ));
        loop {
            let start = Instant::now();
            let acquired = timeout(
                self.timing.statement_timeout,
                sqlx::query_as::<_, (Option<i64>, Option<String>)>(ACQUIRE)
                    .bind(&self.config.node)
                    .bind(&self.config.address)
                    .bind(millis(self.timing.lease))
                    .fetch_one(&self.pool),
            )
            .await;
            match acquired {
                Ok(Ok((Some(epoch), _))) => match self.lead(epoch, start).await {
                    Ended::Lost => continue,
                    Ended::Stopped => break,
                },
                Ok(Ok((None, leader))) => self.publish(Role::Standby { leader }),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "cannot read or take the leadership");
                    self.publish(Role::Standby { leader: None });
                }
                Err(_) => {
                    tracing::warn!("reading or taking the leadership timed out");
                    self.publish(Role::Standby { leader: None });
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = sleep(self.timing.poll_every) => {}
                _ = self.wake.notified() => {}
            }
        }
        listener.abort();
        heartbeat.abort();
        // A connection stalled on its socket must not hold up the shutdown.
        let _ = timeout(self.timing.statement_timeout, self.pool.close()).await;
    }

    /// Leads under `epoch`, taken by a statement started at `start`, until the lease is lost
    /// or the elector is stopped.
    async fn lead(&self, epoch: i64, start: Instant) -> Ended {
        let mut until = self.timing.leads_until(start);
        if Instant::now() >= until {
            tracing::warn!(epoch, "took the leadership too slowly to use it");
            return Ended::Lost;
        }
        tracing::info!(epoch, node = %self.config.node, "leading");
        self.publish(Role::Leader { epoch });
        // Wakes the standbys, so that they name this node to clients at once instead of at
        // their next poll. Best effort: they poll anyway.
        let _ = timeout(
            self.timing.statement_timeout,
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&self.pool),
        )
        .await;
        let mut next = start + self.timing.renew_every;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    self.resign(epoch).await;
                    return Ended::Stopped;
                }
                _ = sleep_until(until) => return self.step_down(epoch, "no renewal succeeded in time"),
                _ = sleep_until(next) => {}
            }
            let renew_start = Instant::now();
            let renewed = tokio::select! {
                biased;
                _ = sleep_until(until) => return self.step_down(epoch, "no renewal succeeded in time"),
                renewed = timeout(
                    self.timing.statement_timeout,
                    sqlx::query(RENEW)
                        .bind(&self.config.node)
                        .bind(epoch)
                        .bind(millis(self.timing.lease))
                        .execute(&self.pool),
                ) => renewed,
            };
            match renewed {
                Ok(Ok(done)) if done.rows_affected() == 1 => {
                    until = self.timing.leads_until(renew_start);
                    next = renew_start + self.timing.renew_every;
                }
                Ok(Ok(_)) => return self.step_down(epoch, "another node holds the leadership"),
                Ok(Err(err)) => {
                    tracing::warn!(epoch, error = %err, "renewing the leadership failed");
                    next = Instant::now() + self.timing.retry_after;
                }
                Err(_) => {
                    tracing::warn!(epoch, "renewing the leadership timed out");
                    next = Instant::now() + self.timing.retry_after;
                }
            }
        }
    }

    fn step_down(&self, epoch: i64, why: &str) -> Ended {
        tracing::warn!(epoch, why, "stepping down");
        self.publish(Role::Standby { leader: None });
        Ended::Lost
    }

    /// Publishes `Standby` first (the node stops granting), then gives the row up.
    async fn resign(&self, epoch: i64) {
        self.publish(Role::Standby { leader: None });
        let resigned = timeout(
            self.timing.statement_timeout,
            sqlx::query(RESIGN)
                .bind(&self.config.node)
                .bind(epoch)
                .bind(CHANNEL)
                .execute(&self.pool),
        )
        .await;
        match resigned {
            Ok(Ok(_)) => tracing::info!(epoch, "resigned the leadership"),
            Ok(Err(err)) => {
                tracing::warn!(epoch, error = %err, "cannot resign; the lease lapses by itself")
            }
            Err(_) => tracing::warn!(epoch, "resigning timed out; the lease lapses by itself"),
        }
    }

    fn publish(&self, role: Role) {
        self.role.send_if_modified(|current| {
            if *current == role {
                return false;
            }
            if let Role::Standby { leader } = &role {
                match leader {
                    Some(leader) => {
                        tracing::info!(%leader, "standing by; the leader is at {leader}")
                    }
                    None => tracing::info!("standing by; no leader is known right now"),
                }
            }
            *current = role;
            true
        });
    }
}

/// Wakes the elector when a leader resigns. Without it (a listener that cannot connect, or
/// a pooler in transaction mode) standbys still notice within `poll_every`.
async fn listen(pool: PgPool, wake: Arc<Notify>, retry: Duration) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => {
                    while listener.recv().await.is_ok() {
                        wake.notify_one();
                    }
                }
                Err(err) => tracing::debug!(error = %err, "cannot listen for resignations"),
            },
            Err(err) => tracing::debug!(error = %err, "cannot listen for resignations"),
        }
        sleep(retry).await;
    }
}

/// Records every `renew_every` that this node is alive. Failures only delay `last_seen`.
async fn heartbeat(pool: PgPool, config: ElectorConfig, timing: Timing) {
    loop {
        let beat = timeout(
            timing.statement_timeout,
            sqlx::query(HEARTBEAT)
                .bind(&config.node)
                .bind(&config.address)
                .execute(&pool),
        )
        .await;
        if !matches!(beat, Ok(Ok(_))) {
            tracing::debug!("the node's heartbeat failed");
        }
        sleep(timing.renew_every).await;
    }
}

/// A duration in whole milliseconds, as the statements take it.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
