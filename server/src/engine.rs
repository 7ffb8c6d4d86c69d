//! The engine: the one task that owns the [`Pool`] and the group commit.
//!
//! Connections send it [`Job`]s. It takes every job waiting in its queue, applies each to the
//! pool (collecting their changes in one [`Batch`]), commits the batch in one transaction, and
//! only then answers them all (R5). While a commit is in flight, new jobs queue up and form
//! the next batch, so the commit rate grows with the load. If a commit fails, every job of
//! the batch gets `internal` and the pool is rebuilt from the store, so nothing is
//! half-applied.
//!
//! In a cluster (SPEC §7) the engine follows the node's [`Role`]: a standby holds no pool,
//! signs clients in from the database and answers every request `not_leader` with the
//! leader's address; on becoming leader it loads the pool as a restart does (R14), applies
//! what passed meanwhile, and only then serves, every commit fenced by its epoch (R13). The
//! moment the role changes or a commit is fenced off or fails, it stops: the jobs of the
//! batch in flight are dropped unanswered, and the connections opened while it led are
//! closed ([`Serving`]), so that clients go to the new leader and resend what is safe to
//! resend (checkouts and borrows carry request ids, which the new leader knows if the
//! commit went through).

use std::sync::Arc;
use std::time::Duration;

use tally_protocol::{
    key_id, BorrowClaims, BorrowOnce, Borrowed, ErrorBody, ErrorCode, IssuedToken, LeaseId,
    LeaseInfo, Outcome, QueueNotice, QueueOutcome, RequestId, Response, ServerMessage,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use crate::clock::Clock;
use crate::core::{
    require_admin, Action, Actor, AuditOutcome, Batch, Gauges, Holder, NewToken, NotificationKind,
    Policy, Pool, SignOut, SignedIn, Token,
};
use crate::fold::RefusalFolder;
use crate::ha::{Role, Serving};
use crate::http::Metrics;
use crate::init::{new_token, token_hash};
use crate::notices::Notices;
use crate::notify::Notifier;
use crate::route::{AuditRead, EngineKind, EngineRequest, NotifyRead, PoolRequest, ReportRead};
use crate::store::{ClusterStore, Fence, Store, StoreError};
use crate::watchdog::Watchdog;

/// Most jobs answered by one commit.
const MAX_BATCH: usize = 4096;

/// How long a batch may wait for the clients the last commit answered to come back.
const GATHER: Duration = Duration::from_micros(1000);

/// The most audit events one `Audit` query returns (it has no cursor: one page only).
pub const MAX_AUDIT_EVENTS: u32 = 10_000;

/// The most events, leases or assignments on one page of `AuditPage`, `LeasesPage`,
/// `HoldersPage` or `Assignments`.
pub const MAX_PAGE_ITEMS: u32 = 1000;

/// Roughly how much text one page may hold; a page ends early past it, so that an answer
/// stays far below the largest frame (`MAX_RESPONSE_FRAME`) whatever the rows hold.
pub const PAGE_BYTES: usize = 1024 * 1024;

/// The same bound for the answers of `Audit` and `Leases`, which have no cursor.
pub const UNPAGED_BYTES: usize = 8 * 1024 * 1024;

/// The most leases one `Leases` query returns.
pub const MAX_UNPAGED_LEASES: usize = 10_000;

/// Work for the engine.
#[derive(Debug)]
pub enum Job {
    /// A request of a signed-in connection.
    Request(RequestJob),
    /// A token presented at sign-in.
    SignIn(SignInJob),
    /// The pool's figures for `/metrics`, answered after the commit of what reading them
    /// brought up to date; a standby drops it unanswered.
    Gauges(oneshot::Sender<Gauges>),
}

/// A request, and where to send its outcome.
#[derive(Debug)]
pub struct RequestJob {
    /// Who the connection signed in as; the pool checks that the token and the account
    /// still stand, and what the role is now.
    pub session: Arc<SignedIn>,
    pub holder: Arc<Holder>,
    /// The request, routed: `ServerInfo` never comes here (see `route.rs`).
    pub request: EngineRequest,
    pub reply: oneshot::Sender<Outcome>,
}

/// A sign-in, and where to send its outcome.
#[derive(Debug)]
pub struct SignInJob {
    pub hash: [u8; 32],
    /// The address the token comes from: the actor of a refusal in the audit log, so that
    /// refusals from one address fold together.
    pub address: String,
    /// Who presents the token, for the audit log: host and program.
    pub peer: String,
    /// What the store said of a hash the pool did not know: `None` on the first attempt,
    /// then `Some(what the store holds)`. A token the store holds is adopted.
    pub looked_up: Option<Option<Token>>,
    pub reply: oneshot::Sender<SignInOutcome>,
}

/// How a sign-in went.
#[derive(Debug)]
pub enum SignInOutcome {
    Ok(SignedIn),
    /// The pool does not know the hash: ask the store, then send the job again.
    Unknown,
    /// Refused, and audited.
    Refused(ErrorBody),
}

/// An answer waiting for its batch to commit.
enum Reply {
    Ready(oneshot::Sender<Outcome>, Outcome),
    /// An authorised audit query, read from the store once the batch (and the refusals or
    /// changes it records) is committed; with the answer to give instead of an empty first
    /// page when it names a user or feature that does not exist (`Pool::audit_unknown`).
    Audit(oneshot::Sender<Outcome>, AuditRead, Option<ErrorBody>),
    /// An authorised `NotifyStatus` or `NotifyTest` (with the admin who asked), answered by
    /// the notifier once the batch (and its audit event) is committed.
    Notify(oneshot::Sender<Outcome>, NotifyRead, String),
    /// An authorised usage report, read from the store once the batch is committed.
    Report(oneshot::Sender<Outcome>, ReportJob),
    SignIn(oneshot::Sender<SignInOutcome>, SignInOutcome),
    Gauges(oneshot::Sender<Gauges>, Gauges),
}

/// A usage report to read after the commit (SPEC §10): its checked query and range.
struct ReportJob {
    read: ReportRead,
    feature: Option<String>,
    /// The whole hours read, or `None` when the range is wholly in the future.
    range: Option<(i64, i64)>,
    /// The `not_found` to answer when the feature is unknown to the pool and the store holds
    /// no history of it.
    unknown: Option<ErrorBody>,
}

/// Rollup rows deleted per pass of the history's pruning.
const PRUNE_ROWS: u32 = 10_000;

fn mint_token() -> NewToken {
    let token = new_token();
    NewToken {
        hash: token_hash(&token),
        token,
    }
}

/// Signs borrow tokens with the server's Ed25519 key.
pub struct Signer {
    pub key: ring::signature::Ed25519KeyPair,
    pub server_id: String,
    /// The DER certificate chain for `key` that every token carries, so clients can check
    /// it against the CA they trust ([`init::signing_chain`](crate::init::signing_chain));
    /// `None`: no certificate, so no borrows.
    pub chain: Option<Vec<Vec<u8>>>,
}

impl Signer {
    /// Refuses borrows when no certificate vouches for the key.
    fn ready(&self) -> Result<&[Vec<u8>], ErrorBody> {
        self.chain.as_deref().ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::NotBorrowable,
                "this server cannot issue borrow tokens its clients can verify: it uses the admin's TLS certificate (tls.cert), and no certificate for its signing key is configured; an admin must set borrow.signing_cert to one issued by the clients' CA for DATA_DIR/signing.csr",
            )
        })
    }

    /// The token for a granted borrow.
    fn token(&self, lease: &LeaseInfo, machine_id: &str) -> Result<String, ErrorBody> {
        let chain = self.ready()?;
        use ring::signature::KeyPair;
        let claims = BorrowClaims {
            server_id: self.server_id.clone(),
            key_id: key_id(self.key.public_key().as_ref()),
            lease: lease.id,
            feature: lease.feature.clone(),
            seats: lease.seats,
            user: lease.user.clone(),
            machine_id: machine_id.to_string(),
            issued_at: lease.granted_at,
            expires_at: lease.expires_at,
        };
        let signature = self.key.sign(&claims.to_bytes());
        Ok(claims.encode(signature.as_ref(), chain))
    }
}

pub struct Engine {
    signer: Signer,
    pool: Pool,
    /// Folds repeated identical refusals in the audit log (R11).
    folder: RefusalFolder,
    /// Told, after each commit, which connections must end.
    sign_outs: broadcast::Sender<SignOut>,
    store: Arc<dyn Store>,
    ttl_ms: i64,
    policy: Policy,
    sweep: Duration,
    /// Woken after a commit that queued notifications.
    outbox: Arc<Notify>,
    /// How often the loop pings the systemd watchdog, if there is one.
    watchdog: Option<Duration>,
    /// Where every decision by time takes `now` from; a step of a manual clock wakes the
    /// sweep.
    clock: Clock,
    /// The node's role and the database, in a cluster; `None` for a single node.
    cluster: Option<Cluster>,
    /// What connections are told: whether this node serves, under which epoch.
    serving: watch::Sender<Serving>,
    /// The fence of every commit: [`Fence::Single`] for a single node, the epoch it leads
    /// under in a cluster.
    fence: Fence,
    /// Where queue notices (R17) go once their batch is committed.
    notices: Arc<Notices>,
    /// The outbox's deliverer, which answers `NotifyStatus` and `NotifyTest` once they are
    /// authorised; `None` where nothing delivers (they are then answered `internal`).
    notifier: Option<Arc<Notifier>>,
    /// Where committed grants and denials are counted and commits timed (`/metrics`).
    metrics: Arc<Metrics>,
    /// How long lease history is kept (`history.keep`).
    history_keep_ms: i64,
    /// When the history was last pruned; a pass runs at most once a minute, in a task of
    /// its own, while none is running.
    pruned_at: i64,
    pruning: Arc<std::sync::atomic::AtomicBool>,
}

/// What the engine of a cluster's node follows.
pub struct Cluster {
    /// The role the elector decides.
    pub role: watch::Receiver<Role>,
    /// Where a standby signs clients in.
    pub store: Arc<dyn ClusterStore>,
    /// This node's advertised address, for requests it held while no leader was known and
    /// then took the leadership itself.
    pub address: String,
    /// How long a standby that knows no leader holds a request, waiting for one to be
    /// elected, before answering `not_leader` without an address.
    pub hold: Duration,
}

/// Why serving stopped.
enum Stopped {
    /// Every connection is gone: the server is shutting down.
    Done,
    /// This node no longer leads, or cannot tell that it still does (a commit failed or was
    /// fenced off).
    Lost { fenced: bool },
}

/// Resolves when `role` no longer says this node leads under `epoch` (or the elector is
/// gone); never, for a single node.
async fn leadership_lost(role: Option<watch::Receiver<Role>>, epoch: i64) {
    match role {
        Some(mut role) => {
            let _ = role.wait_for(|role| role.epoch() != Some(epoch)).await;
        }
        None => std::future::pending().await,
    }
}

impl Engine {
    pub fn new(
        pool: Pool,
        store: Arc<dyn Store>,
        signer: Signer,
        sweep: Duration,
        outbox: Arc<Notify>,
        sign_outs: broadcast::Sender<SignOut>,
    ) -> Self {
        Self {
            signer,
            ttl_ms: pool.ttl_ms(),
            policy: pool.policy(),
            pool,
            folder: RefusalFolder::default(),
            sign_outs,
            store,
            sweep,
            outbox,
            watchdog: None,
            clock: Clock::system(),
            cluster: None,
            serving: watch::channel(Serving::Leader { epoch: 0 }).0,
            fence: Fence::Single,
            notices: Arc::new(Notices::default()),
            notifier: None,
            metrics: Arc::default(),
            history_keep_ms: crate::config::DEFAULT_HISTORY_KEEP.as_millis() as i64,
            pruned_at: i64::MIN,
            pruning: Arc::default(),
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Keeps lease history for `keep` (`history.keep`), pruning what is older.
    pub fn with_history_keep(mut self, keep: Duration) -> Self {
        self.history_keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        self
    }

    pub fn with_notifier(mut self, notifier: Arc<Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    pub fn with_notices(mut self, notices: Arc<Notices>) -> Self {
        self.notices = notices;
        self
    }

    /// Follows `cluster`'s role instead of serving as a single node: a standby to begin with.
    pub fn in_cluster(mut self, cluster: Cluster) -> Self {
        self.serving.send_replace(Serving::Standby { leader: None });
        self.cluster = Some(cluster);
        self
    }

    /// Whether the engine serves, and under which epoch; connections and the notifier
    /// follow it.
    pub fn serving(&self) -> watch::Receiver<Serving> {
        self.serving.subscribe()
    }

    /// Takes time from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Pings the systemd watchdog from the loop every `every` (see `watchdog.rs`).
    pub fn with_watchdog(mut self, every: Option<Duration>) -> Self {
        self.watchdog = every;
        self
    }

    /// Serves jobs until every sender is gone, then returns after the last commit.
    pub async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        match self.cluster.take() {
            None => {
                self.catch_up().await;
                self.serve(&mut jobs, None).await;
            }
            Some(cluster) => {
                if !self.follow(&mut jobs, cluster).await {
                    tracing::debug!("engine stopped");
                    return;
                }
            }
        }
        // Refusals folded but not yet written.
        let mut batch = Batch::default();
        self.folder.flush(i64::MAX, &mut batch.audit);
        let _ = self.flush(batch, Vec::new(), None).await;
        tracing::debug!("engine stopped");
    }

    /// A cluster's node: a standby until the elector says it leads, then the leader until it
    /// no longer does, and so on until every connection is gone. Returns whether it was
    /// leading at the end (so that the last folded refusals can be written).
    async fn follow(&mut self, jobs: &mut mpsc::Receiver<Job>, cluster: Cluster) -> bool {
        let Cluster {
            role: mut roles,
            store,
            address,
            hold,
        } = cluster;
        // Requests that came while no leader was known: answered with the leader once the
        // elector names one, so that clients do not poll the cluster while it elects.
        let mut held: Vec<(tokio::time::Instant, RequestJob)> = Vec::new();
        let mut watchdog = Watchdog::new(self.watchdog);
        // An epoch whose commit was fenced off: never served again, whatever the elector
        // still believes.
        let mut fenced: Option<i64> = None;
        // The leader this node last knew of, for the news of its own takeover.
        let mut last_leader: Option<String> = None;
        loop {
            // A standby.
            let epoch = loop {
                watchdog.ping_if_due();
                let role = roles.borrow_and_update().clone();
                let leader = match role {
                    Role::Leader { epoch } if fenced != Some(epoch) => {
                        // Back to this node, which serves them as soon as the pool is loaded.
                        for (_, job) in held.drain(..) {
                            not_leader(job, Some(&address));
                        }
                        break epoch;
                    }
                    Role::Leader { .. } => None,
                    Role::Standby { leader } => leader,
                };
                if leader.is_some() {
                    last_leader.clone_from(&leader);
                }
                if leader.is_some() {
                    for (_, job) in held.drain(..) {
                        not_leader(job, leader.as_deref());
                    }
                }
                let now = tokio::time::Instant::now();
                let (due, kept): (Vec<_>, Vec<_>) =
                    held.drain(..).partition(|(until, _)| *until <= now);
                held = kept;
                for (_, job) in due {
                    not_leader(job, None);
                }
                let next_due = held.iter().map(|(until, _)| *until).min();
                self.serving.send_if_modified(|serving| {
                    let standby = Serving::Standby {
                        leader: leader.clone(),
                    };
                    let changed = *serving != standby;
                    *serving = standby;
                    changed
                });
                tokio::select! {
                    biased;
                    job = jobs.recv() => match job {
                        Some(Job::Request(job)) if leader.is_none() => {
                            held.push((tokio::time::Instant::now() + hold, job));
                        }
                        Some(job) => standby(job, leader.as_deref(), &store),
                        None => {
                            for (_, job) in held.drain(..) {
                                not_leader(job, None);
                            }
                            return false;
                        }
                    },
                    // A held request's time is up: the loop answers it.
                    () = async {
                        match next_due {
                            Some(due) => tokio::time::sleep_until(due).await,
                            None => std::future::pending().await,
                        }
                    } => {},
                    changed = roles.changed() => if changed.is_err() {
                        // The elector is gone: the node is stopping. Answer what is left.
                        for (_, job) in held.drain(..) {
                            not_leader(job, None);
                        }
                        while let Some(job) = jobs.recv().await {
                            standby(job, None, &store);
                        }
                        return false;
                    },
                    () = watchdog.due() => {}
                }
            };

            // The leader, once the pool is loaded and what passed meanwhile is applied.
            self.fence = Fence::Epoch(epoch);
            let role = Some(roles.clone());
            let ready = tokio::select! {
                ready = self.take_over(&address, epoch, last_leader.as_deref()) => ready,
                () = leadership_lost(role.clone(), epoch) => Err("the leadership was lost while loading the pool".to_string()),
            };
            if let Err(why) = ready {
                tracing::warn!(epoch, why, "not serving under this epoch");
                if roles.borrow().epoch() == Some(epoch) {
                    // Still the leader by the elector: try again in a moment, not in a spin.
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        () = leadership_lost(role, epoch) => {}
                    }
                }
                continue;
            }
            self.serving.send_replace(Serving::Leader { epoch });
            tracing::info!(
                epoch,
                leases = self.pool.lease_count(),
                "serving as the cluster's leader; every online lease has one ttl to be renewed"
            );
            match self.serve(jobs, role).await {
                Stopped::Done => return true,
                Stopped::Lost { fenced: was_fenced } => {
                    if was_fenced {
                        fenced = Some(epoch);
                    }
                    self.serving.send_replace(Serving::Standby { leader: None });
                    self.pool = Pool::restore(
                        Default::default(),
                        self.ttl_ms,
                        self.policy,
                        self.clock.now_millis(),
                    );
                    self.folder = RefusalFolder::default();
                    tracing::warn!(epoch, "stopped serving: this node is a standby now");
                }
            }
        }
    }

    /// Loads the pool and applies what passed since it was last served, once.
    async fn take_over(
        &mut self,
        address: &str,
        epoch: i64,
        before: Option<&str>,
    ) -> Result<(), String> {
        let started = std::time::Instant::now();
        let snapshot = self
            .store
            .load()
            .await
            .map_err(|err| format!("cannot load the pool: {err}"))?;
        self.pool = Pool::restore(snapshot, self.ttl_ms, self.policy, self.clock.now_millis());
        tracing::info!(
            leases = self.pool.lease_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pool loaded from the database"
        );
        let mut batch = Batch::default();
        let now = self.clock.now_millis();
        self.pool.advance(now, &mut batch);
        // The news goes out with the takeover's first commit, under its epoch (R20): a node
        // that fails to commit it has not taken over.
        let after = match before {
            Some(before) if before != address => format!(", after {before}"),
            _ => String::new(),
        };
        batch.notify(
            now,
            NotificationKind::LeaderChanged,
            address,
            None,
            &format!("{address} is now the cluster's leader (epoch {epoch}{after})"),
        );
        self.store
            .commit(&batch, self.fence)
            .await
            .map_err(|err| format!("cannot record the takeover: {err}"))?;
        log_changes(&batch);
        self.outbox.notify_one();
        Ok(())
    }

    /// Serves jobs, a batch at a time, until every sender is gone or, in a cluster, the
    /// leadership of the current epoch is lost (`role`).
    async fn serve(
        &mut self,
        jobs: &mut mpsc::Receiver<Job>,
        role: Option<watch::Receiver<Role>>,
    ) -> Stopped {
        let epoch = match self.fence {
            Fence::Epoch(epoch) => epoch,
            Fence::Single => 0,
        };
        let mut sweep = tokio::time::interval(self.sweep);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watchdog = Watchdog::new(self.watchdog);
        let clock = self.clock.clone();
        // How many jobs the last commit answered.
        let mut answered = 0;
        loop {
            // Only a loop that keeps turning pings: a stuck commit goes quiet.
            watchdog.ping_if_due();
            let mut batch = Batch::default();
            let mut replies = Vec::new();
            let queue_due = self.pool.queue_next_due();
            tokio::select! {
                biased;
                () = leadership_lost(role.clone(), epoch) => return Stopped::Lost { fenced: false },
                job = jobs.recv() => match job {
                    Some(job) => self.apply(job, &mut batch, &mut replies),
                    None => return Stopped::Done,
                },
                _ = sweep.tick() => self.sweep(&mut batch),
                // A stepped test clock is applied at once, not at the next tick.
                () = clock.stepped() => self.sweep(&mut batch),
                () = until_millis(&clock, queue_due) => self.sweep(&mut batch),
                () = watchdog.due() => {}
            }
            // Gather the batch. Clients answered by the last commit come back within a
            // few hundred microseconds; waiting that long for them (when there is already
            // work, so never on an idle server) lets them share this commit instead of
            // forming a second cohort that always waits a whole commit for the first.
            // One timer for the whole gathering, armed only if it has to wait at all.
            let gather = tokio::time::sleep(GATHER);
            tokio::pin!(gather);
            while replies.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => self.apply(job, &mut batch, &mut replies),
                    Err(_) if replies.len() < answered => {
                        tokio::select! {
                            biased;
                            job = jobs.recv() => match job {
                                Some(job) => self.apply(job, &mut batch, &mut replies),
                                None => break,
                            },
                            () = &mut gather => break,
                        }
                    }
                    Err(_) => break,
                }
            }
            answered = replies.len();
            self.serve_queue(&mut batch);
            if let Err(lost) = self.flush(batch, replies, role.clone()).await {
                return lost;
            }
        }
    }

    /// Gives the seats freed so far to the checkouts waiting for them (R17), before any
    /// later request can take them.
    fn serve_queue(&mut self, batch: &mut Batch) {
        let now = self.clock.now_millis();
        self.pool
            .serve_queue(now, &mut || LeaseId(rand::random()), batch);
    }

    /// Reclaims what lapsed and writes the refusals folded long enough.
    fn sweep(&mut self, batch: &mut Batch) {
        let now = self.clock.now_millis();
        self.pool.sweep(now, batch);
        self.folder.flush(now, &mut batch.audit);
        self.prune_history(now);
    }

    /// Deletes lease history older than `history.keep`, a bounded pass at a time in its own
    /// transaction, off the engine's loop, at most once a minute (10,000 rows a pass per
    /// table: 14 million a day, far more than any pool writes).
    fn prune_history(&mut self, now: i64) {
        use std::sync::atomic::Ordering;
        if now.saturating_sub(self.pruned_at) < 60_000 || self.pruning.swap(true, Ordering::SeqCst)
        {
            return;
        }
        self.pruned_at = now;
        let before = crate::core::history::hour_of(now.saturating_sub(self.history_keep_ms));
        let store = self.store.clone();
        let pruning = self.pruning.clone();
        tokio::spawn(async move {
            match store.prune_history(before, PRUNE_ROWS).await {
                Ok(deleted) if deleted > 0 => {
                    tracing::debug!(deleted, before, "lease history pruned");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "pruning lease history failed; retrying later")
                }
            }
            pruning.store(false, Ordering::SeqCst);
        });
    }

    fn apply(&mut self, job: Job, batch: &mut Batch, replies: &mut Vec<Reply>) {
        let now = self.clock.now_millis();
        let job = match job {
            Job::Request(job) => job,
            Job::SignIn(job) => return self.sign_in(now, job, batch, replies),
            Job::Gauges(reply) => {
                let gauges = self.pool.gauges(now, batch);
                replies.push(Reply::Gauges(reply, gauges));
                return;
            }
        };
        let RequestJob {
            session,
            holder,
            request,
            reply,
        } = job;
        // The token and the account as they are now, not as they were at sign-in.
        let actor = match self.pool.authorize_session(session.user_id, &session.token) {
            Ok(actor) => actor,
            Err(err) => {
                let actor = Actor {
                    username: session.username.clone(),
                    role: session.role,
                };
                batch.audit(
                    now,
                    &actor,
                    request.action,
                    "refused request",
                    None,
                    Err(&err),
                );
                replies.push(Reply::Ready(reply, Outcome::Err(err)));
                return;
            }
        };
        // The client instance is here: its waiting checkouts keep their places, and the
        // seats freed by the requests before this one go to the queue first.
        self.pool.queue_seen(holder.client, now);
        self.serve_queue(batch);
        let request = match request.kind {
            EngineKind::Pool(request) => request,
            EngineKind::Audit(read) => {
                // Only a first page stands for the whole query.
                let unknown = match read.before {
                    None => self.pool.audit_unknown(&read.query),
                    Some(_) => None,
                };
                return Self::audit(now, &actor, read, unknown, batch, reply, replies);
            }
            EngineKind::Report(read) => {
                return self.report(now, &actor, read, batch, reply, replies);
            }
            EngineKind::Notify(read) => {
                let (action, what) = match read {
                    NotifyRead::Status => (Action::NotifyStatus, "read the notification status"),
                    NotifyRead::Test => (Action::NotifyTest, "send a test notification"),
                };
                let checked = require_admin(&actor, what);
                let detail = match read {
                    NotifyRead::Status => "",
                    NotifyRead::Test => "a test notification to every sink",
                };
                let outcome = checked.as_ref().map(|()| detail);
                batch.audit(now, &actor, action, "notifications", None, outcome);
                match checked {
                    Ok(()) => replies.push(Reply::Notify(reply, read, actor.username.clone())),
                    Err(err) => replies.push(Reply::Ready(reply, Outcome::Err(err))),
                }
                return;
            }
        };
        let outcome = match self.handle(now, &actor, &holder, request, batch) {
            Ok(response) => Outcome::Ok(response),
            Err(err) => Outcome::Err(err),
        };
        replies.push(Reply::Ready(reply, outcome));
    }

    /// Checks an audit read: the store answers it once the batch has committed, or, when it
    /// finds nothing, `unknown` does.
    fn audit(
        now: i64,
        actor: &Actor,
        read: AuditRead,
        unknown: Option<ErrorBody>,
        batch: &mut Batch,
        reply: oneshot::Sender<Outcome>,
        replies: &mut Vec<Reply>,
    ) {
        let checked = require_admin(actor, "read the audit log")
            .and_then(|()| read.query.validate().map_err(ErrorBody::invalid));
        match checked {
            Ok(()) => replies.push(Reply::Audit(reply, read, unknown)),
            Err(err) => {
                batch.audit(now, actor, Action::Audit, "audit log", None, Err(&err));
                replies.push(Reply::Ready(reply, Outcome::Err(err)));
            }
        }
    }

    /// Checks a usage report: admins only, then the query (its range and feature). The
    /// store answers it once the batch has committed; a refusal is audited.
    fn report(
        &self,
        now: i64,
        actor: &Actor,
        read: ReportRead,
        batch: &mut Batch,
        reply: oneshot::Sender<Outcome>,
        replies: &mut Vec<Reply>,
    ) {
        let (action, feature, since, until, by) = match &read {
            ReportRead::Usage(q) => (
                Action::ReportUsage,
                q.feature.clone(),
                q.since,
                q.until,
                Some(q.by),
            ),
            ReportRead::Users(q) => (
                Action::ReportUsers,
                q.feature.clone(),
                q.since,
                q.until,
                None,
            ),
            ReportRead::Meters(q) => (
                Action::ReportUsage,
                q.feature.clone(),
                q.since,
                q.until,
                Some(q.by),
            ),
        };
        let meters = matches!(read, ReportRead::Meters(_));
        let checked = require_admin(actor, "read usage reports")
            .and_then(|()| {
                tally_protocol::validate_range(since, until).map_err(ErrorBody::invalid)
            })
            .and_then(|()| match &feature {
                Some(f) => tally_protocol::validate_feature(f).map_err(|e| ErrorBody::invalid(e.to_string())),
                None => Ok(()),
            })
            .and_then(|()| {
                let range = crate::core::report::report_range(since, until, now);
                let (Some(by), Some((since, until))) = (by, range) else {
                    return Ok(range);
                };
                let features = match (&feature, meters) {
                    (Some(_), _) => 1,
                    (None, false) => self.pool.report_features().max(1) as u64,
                    (None, true) => self.pool.meter_count().max(1) as u64,
                };
                let rows = crate::core::report::period_count(since, until, by) * features;
                if rows > tally_protocol::MAX_REPORT_ROWS {
                    return Err(ErrorBody::invalid(format!(
                        "a report by {} of {} to {} would have about {rows} rows, more than the {} one answer holds; ask for a shorter range, a longer --by or one --feature",
                        by.as_str(),
                        crate::core::rfc3339(since),
                        crate::core::rfc3339(until),
                        tally_protocol::MAX_REPORT_ROWS
                    )));
                }
                Ok(range)
            });
        match checked {
            Ok(range) => {
                let unknown = feature.as_deref().and_then(|f| match meters {
                    true => self.pool.meter_unknown(f),
                    false => self.pool.report_unknown(f),
                });
                replies.push(Reply::Report(
                    reply,
                    ReportJob {
                        read,
                        feature,
                        range,
                        unknown,
                    },
                ));
            }
            Err(err) => {
                batch.audit(
                    now,
                    actor,
                    action,
                    "usage report",
                    feature.as_deref(),
                    Err(&err),
                );
                replies.push(Reply::Ready(reply, Outcome::Err(err)));
            }
        }
    }

    fn sign_in(&mut self, now: i64, job: SignInJob, batch: &mut Batch, replies: &mut Vec<Reply>) {
        let SignInJob {
            hash,
            address,
            peer,
            looked_up,
            reply,
        } = job;
        let last_try = looked_up.is_some();
        if let Some(Some(token)) = looked_up {
            self.pool.adopt_token(token);
        }
        let refused = |batch: &mut Batch, actor: &str, err: ErrorBody| {
            let actor = Actor {
                username: actor.to_string(),
                role: tally_protocol::Role::Guest,
            };
            batch.audit(now, &actor, Action::SignIn, &peer, None, Err(&err));
            SignInOutcome::Refused(err)
        };
        let outcome = match self.pool.sign_in(now, &hash, batch) {
            Ok(signed_in) => SignInOutcome::Ok(signed_in),
            // The account is known: its refusals are its own.
            Err(Some((username, err))) => refused(batch, &username, err),
            Err(None) if !last_try => SignInOutcome::Unknown,
            Err(None) => {
                let err = ErrorBody::new(
                    tally_protocol::ErrorCode::Unauthenticated,
                    "the token is not recognised; check token_file or --token",
                );
                refused(batch, &address, err)
            }
        };
        replies.push(Reply::SignIn(reply, outcome));
    }

    fn handle(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request: PoolRequest,
        batch: &mut Batch,
    ) -> Result<Response, ErrorBody> {
        let pool = &mut self.pool;
        match request {
            PoolRequest::Heartbeat => Ok(Response::Heartbeat(
                pool.heartbeat(now, actor, holder, batch),
            )),
            PoolRequest::Checkout(checkout) => {
                let id = LeaseId(rand::random());
                pool.checkout(now, actor, holder, &checkout, id, batch)
                    .map(Response::Lease)
            }
            PoolRequest::Checkin(checkin) => pool
                .checkin(now, actor, checkin.lease, batch)
                .map(Response::CheckedIn),
            PoolRequest::Resume(resume) => Ok(Response::Resumed(pool.resume(
                now,
                actor,
                holder,
                &resume.leases,
                batch,
            ))),
            PoolRequest::Status(query) => pool
                .status(now, query.feature.as_deref(), batch)
                .map(Response::Status),
            PoolRequest::Leases(query) => pool
                .leases_page(
                    now,
                    actor,
                    &query,
                    None,
                    MAX_UNPAGED_LEASES,
                    UNPAGED_BYTES,
                    batch,
                )
                .map(|page| Response::Leases(page.leases)),
            PoolRequest::LeasesPage(page) => {
                let limit = page.limit.unwrap_or(MAX_PAGE_ITEMS).min(MAX_PAGE_ITEMS);
                pool.leases_page(
                    now,
                    actor,
                    &page.query,
                    page.after,
                    limit as usize,
                    PAGE_BYTES,
                    batch,
                )
                .map(Response::LeasesPage)
            }
            PoolRequest::EntitlementAdd(new) => pool
                .add_entitlement(now, actor, &new, batch)
                .map(Response::Entitlement),
            PoolRequest::EntitlementList(query) => {
                pool.advance(now, batch);
                Ok(Response::Entitlements(
                    pool.list_entitlements(query.feature.as_deref()),
                ))
            }
            PoolRequest::EntitlementRemove(remove) => pool
                .remove_entitlement(now, actor, remove.id, batch)
                .map(Response::EntitlementRemoved),
            PoolRequest::Release(release) => pool
                .release(now, actor, release.lease, batch)
                .map(Response::Released),
            PoolRequest::Whoami => pool.whoami(now, actor, batch).map(Response::Whoami),
            PoolRequest::UserAdd(add) => pool
                .add_user(now, actor, &add, mint_token(), batch)
                .map(|(user, token)| Response::UserAdded { user, token }),
            PoolRequest::UserList => pool.users(now, actor, batch).map(Response::Users),
            PoolRequest::UsersSeen => pool.users_seen(now, actor, batch).map(Response::UsersSeen),
            PoolRequest::Bulk(bulk) => pool
                .bulk(now, actor, &bulk, &mut mint_token, batch)
                .map(Response::Bulk),
            PoolRequest::UserToken(user) => {
                let token = mint_token();
                let text = token.token.clone();
                pool.mint_token(now, actor, &user.username, "", token, batch)
                    .map(|_| Response::Token(text))
            }
            PoolRequest::TokenMint(mint) => {
                let token = mint_token();
                let text = token.token.clone();
                pool.mint_token(now, actor, &mint.username, &mint.label, token, batch)
                    .map(|id| Response::TokenIssued(IssuedToken { id, token: text }))
            }
            PoolRequest::TokenList(user) => pool
                .tokens_of(now, actor, &user.username, batch)
                .map(Response::Tokens),
            PoolRequest::TokenRevoke(revoke) => pool
                .revoke_token(now, actor, &revoke.id, batch)
                .map(Response::TokenRevoked),
            PoolRequest::UserDeactivate(user) => pool
                .deactivate_user(now, actor, &user.username, batch)
                .map(Response::User),
            PoolRequest::UserActivate(user) => pool
                .activate_user(now, actor, &user.username, batch)
                .map(Response::User),
            PoolRequest::UserRemove(user) => pool
                .remove_user(now, actor, &user.username, batch)
                .map(Response::User),
            PoolRequest::Assign(assign) => pool
                .assign(now, actor, &assign, batch)
                .map(Response::Assignment),
            PoolRequest::Revoke(revoke) => pool
                .revoke(now, actor, &revoke, batch)
                .map(Response::Revoked),
            // The first borrow request has no request id: each one is a new borrow.
            PoolRequest::Borrow(borrow) => {
                let request = BorrowOnce {
                    request_id: RequestId(rand::random()),
                    feature: borrow.feature,
                    seats: borrow.seats,
                    duration_secs: borrow.duration_secs,
                    machine_id: borrow.machine_id,
                };
                borrow_signed(pool, &self.signer, now, actor, holder, &request, batch)
            }
            PoolRequest::BorrowOnce(request) => {
                borrow_signed(pool, &self.signer, now, actor, holder, &request, batch)
            }
            PoolRequest::Return(ret) => pool
                .return_borrow(now, actor, ret.lease, batch)
                .map(Response::Returned),
            PoolRequest::Assignments(query) => {
                let limit = query.limit.unwrap_or(MAX_PAGE_ITEMS).min(MAX_PAGE_ITEMS);
                pool.assignments_page(now, actor, &query, limit as usize, batch)
                    .map(Response::Assignments)
            }
            PoolRequest::HoldersPage(page) => {
                let limit = page.limit.unwrap_or(MAX_PAGE_ITEMS).min(MAX_PAGE_ITEMS);
                Ok(Response::Holders(pool.holders_page(
                    now,
                    actor,
                    &page.query,
                    page.after,
                    limit as usize,
                    PAGE_BYTES,
                    batch,
                )))
            }
            PoolRequest::AssignWithTotals(assign) => pool
                .assign_with_totals(now, actor, &assign, batch)
                .map(Response::AssignmentChange),
            PoolRequest::RevokeWithTotals(revoke) => pool
                .revoke_with_totals(now, actor, &revoke, batch)
                .map(Response::AssignmentChange),
            PoolRequest::EntitlementUpdate(update) => pool
                .update_entitlement(now, actor, &update, batch)
                .map(Response::EntitlementUpdated),
            PoolRequest::EntitlementDelete(delete) => pool
                .delete_entitlement(now, actor, &delete, batch)
                .map(Response::EntitlementDeleted),
            PoolRequest::ReleaseMatching(release) => pool
                .release_matching(now, actor, &release, batch)
                .map(Response::ReleasedLeases),
            PoolRequest::FeatureRequire(requirement) => pool
                .require(now, actor, &requirement, batch)
                .map(Response::Features),
            PoolRequest::FeatureUnrequire(requirement) => pool
                .unrequire(now, actor, &requirement, batch)
                .map(Response::Features),
            PoolRequest::FeatureList => Ok(Response::Features(pool.prerequisites(now, batch))),
            PoolRequest::GroupAdd(group) => pool
                .add_group(now, actor, &group, batch)
                .map(Response::Group),
            PoolRequest::GroupMembers(change) => pool
                .change_group_members(now, actor, &change, batch)
                .map(Response::Group),
            PoolRequest::GroupList => pool.list_groups(now, actor, batch).map(Response::Groups),
            PoolRequest::GroupRemove(group) => pool
                .remove_group(now, actor, &group, batch)
                .map(Response::GroupRemoved),
            PoolRequest::PolicyAdd(rule) => pool
                .add_rule(now, actor, &rule, batch)
                .map(Response::RuleAdded),
            PoolRequest::PolicyList(query) => pool
                .list_rules(now, actor, &query, batch)
                .map(Response::Rules),
            PoolRequest::PolicyRemove(rule) => pool
                .remove_rule(now, actor, rule, batch)
                .map(Response::RuleRemoved),
            PoolRequest::PolicyCheck(check) => pool
                .check_policy(now, actor, &check, batch)
                .map(Response::PolicyDecision),
            PoolRequest::Figures(query) => pool
                .figures(now, query.feature.as_deref(), batch)
                .map(Response::Figures),
            PoolRequest::CheckoutWait(wait) => {
                let id = LeaseId(rand::random());
                pool.checkout_wait(now, actor, holder, &wait, id, batch)
            }
            PoolRequest::QueueCancel(cancel) => Ok(Response::QueueCancelled(pool.queue_cancel(
                now,
                actor,
                holder,
                cancel.request_id,
                batch,
            ))),
            PoolRequest::Queue(query) => pool
                .queue_list(now, actor, &query, batch)
                .map(Response::Queue),
            PoolRequest::CreditsAdd(add) => pool
                .credits_add(now, actor, &add, batch)
                .map(Response::Purchase),
            PoolRequest::CreditsStatus(query) => pool
                .credits_status(now, actor, &query, batch)
                .map(Response::Meters),
            PoolRequest::QuotaSet(set) => {
                pool.quota_set(now, actor, &set, batch).map(Response::Quota)
            }
            PoolRequest::QuotaRemove(quota) => pool
                .quota_remove(now, actor, &quota, batch)
                .map(Response::Quota),
            PoolRequest::QuotaList(query) => pool
                .quota_list(now, actor, &query, batch)
                .map(Response::Quotas),
            PoolRequest::Consume(consume) => pool
                .consume(now, actor, &consume, batch)
                .map(Response::Consumed),
        }
    }

    /// Makes the batch durable, then answers its jobs. In a cluster, a commit that fails,
    /// is fenced off, or is overtaken by the loss of the leadership answers nothing and
    /// stops the serving (`Err`).
    async fn flush(
        &mut self,
        mut batch: Batch,
        replies: Vec<Reply>,
        role: Option<watch::Receiver<Role>>,
    ) -> Result<(), Stopped> {
        let pool = &self.pool;
        self.folder
            .fold(self.clock.now_millis(), &mut batch.audit, |actor| {
                pool.is_admin(actor)
            });
        if !batch.is_empty() {
            let started = std::time::Instant::now();
            if let Fence::Epoch(epoch) = self.fence {
                let committed = tokio::select! {
                    committed = self.store.commit(&batch, self.fence) => committed,
                    () = leadership_lost(role, epoch) => Err(StoreError::Fenced(crate::ha::Fenced::Lapsed { epoch })),
                };
                self.metrics.observe_commit(started.elapsed());
                if let Err(err) = committed {
                    let fenced = err.is_fenced();
                    // Unanswered: the connections close, and clients resend what is safe to
                    // the new leader, which has this batch exactly if it was committed.
                    tracing::error!(epoch, error = %err, jobs = replies.len(), "commit not acknowledged; this node stops serving");
                    drop(replies);
                    return Err(Stopped::Lost { fenced });
                }
            } else if let Err(err) = self.commit_timed(&batch).await {
                tracing::error!(error = %err, rows = batch.rows(), "commit failed; answering `internal` and reloading the pool from the store");
                for reply in replies {
                    match reply {
                        Reply::Ready(reply, _)
                        | Reply::Audit(reply, _, _)
                        | Reply::Report(reply, _)
                        | Reply::Notify(reply, _, _) => {
                            let _ = reply.send(Outcome::Err(ErrorBody::internal()));
                        }
                        Reply::SignIn(reply, _) => {
                            let _ = reply.send(SignInOutcome::Refused(ErrorBody::internal()));
                        }
                        // Unanswered: the scrape exports the node's own metrics only.
                        Reply::Gauges(..) => {}
                    }
                }
                // The reloaded pool has no queue (it lives in memory): every wait ends, and
                // a grant that was not committed is no grant.
                let mut waiting = self.pool.queue_waiting();
                waiting.extend(
                    batch
                        .queue_notices
                        .iter()
                        .map(|(client, notice)| (*client, notice.request_id)),
                );
                for (client, request_id) in waiting {
                    let err = ErrorBody::new(
                        ErrorCode::Internal,
                        "the server could not record a change and reloaded its pool, which ended this wait in the queue; check out again",
                    );
                    self.notices.send(
                        client,
                        ServerMessage::Queue(QueueNotice {
                            request_id,
                            outcome: QueueOutcome::Ended(err),
                        }),
                    );
                }
                self.reload().await;
                return Ok(());
            }
            for sign_out in batch.sign_outs.drain(..) {
                // No receiver means no connection is open: nothing to end.
                let _ = self.sign_outs.send(sign_out);
            }
            tracing::trace!(
                rows = batch.rows(),
                jobs = replies.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "committed"
            );
            log_changes(&batch);
            if !batch.notifications.is_empty() {
                self.outbox.notify_one();
            }
        }
        // Committed (or nothing to write): what it granted and denied counts.
        self.metrics.count(&batch.tallies);
        // Committed: the queue's grants are durable, so their clients may be told.
        for (client, notice) in batch.queue_notices.drain(..) {
            self.notices.send(client, ServerMessage::Queue(notice));
        }
        for reply in replies {
            match reply {
                Reply::Ready(reply, outcome) => {
                    let _ = reply.send(outcome);
                }
                Reply::SignIn(reply, outcome) => {
                    let _ = reply.send(outcome);
                }
                Reply::Gauges(reply, gauges) => {
                    let _ = reply.send(gauges);
                }
                Reply::Notify(reply, read, actor) => {
                    let notifier = self.notifier.clone();
                    tokio::spawn(async move {
                        let outcome = match (notifier, read) {
                            (None, _) => Outcome::Err(ErrorBody::internal()),
                            (Some(notifier), NotifyRead::Status) => match notifier.status().await {
                                Ok(status) => Outcome::Ok(Response::NotifyStatus(status)),
                                Err(err) => {
                                    tracing::error!(error = %err, "notification status query failed");
                                    Outcome::Err(ErrorBody::internal())
                                }
                            },
                            (Some(notifier), NotifyRead::Test) => {
                                Outcome::Ok(Response::NotifyTested(notifier.test(&actor).await))
                            }
                        };
                        let _ = reply.send(outcome);
                    });
                }
                Reply::Report(reply, job) => {
                    let store = self.store.clone();
                    let clock = self.clock.clone();
                    tokio::spawn(async move {
                        let outcome = read_report(store.as_ref(), &clock, job).await;
                        let _ = reply.send(outcome);
                    });
                }
                Reply::Audit(reply, mut read, unknown) => {
                    let (cap, max_bytes) = if read.paged {
                        (MAX_PAGE_ITEMS, PAGE_BYTES)
                    } else {
                        (MAX_AUDIT_EVENTS, UNPAGED_BYTES)
                    };
                    read.query.limit = Some(read.query.limit.unwrap_or(1000).min(cap));
                    let store = self.store.clone();
                    tokio::spawn(async move {
                        let found = store.audit(&read.query, read.before, max_bytes).await;
                        let outcome = match (found, unknown) {
                            // A typo, not a quiet log: say so, with the nearest name.
                            (Ok(page), Some(unknown)) if page.events.is_empty() => {
                                Outcome::Err(unknown)
                            }
                            (Ok(page), _) if read.paged => Outcome::Ok(Response::AuditPage(page)),
                            (Ok(page), _) => Outcome::Ok(Response::AuditEvents(page.events)),
                            (Err(err), _) => {
                                tracing::error!(error = %err, "audit query failed");
                                Outcome::Err(ErrorBody::internal())
                            }
                        };
                        let _ = reply.send(outcome);
                    });
                }
            }
        }
        Ok(())
    }

    /// A single node's commit, timed for `/metrics`.
    async fn commit_timed(&self, batch: &Batch) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let committed = self.store.commit(batch, self.fence).await;
        self.metrics.observe_commit(started.elapsed());
        committed
    }

    /// Rebuilds the pool from the store after a failed commit, then applies what passed
    /// meanwhile.
    async fn reload(&mut self) {
        self.load().await;
        self.catch_up().await;
    }

    /// Replaces the pool with what the store holds, retrying until the store answers.
    async fn load(&mut self) {
        loop {
            match self.store.load().await {
                Ok(snapshot) => {
                    self.pool =
                        Pool::restore(snapshot, self.ttl_ms, self.policy, self.clock.now_millis());
                    tracing::warn!(
                        leases = self.pool.lease_count(),
                        "pool reloaded from the store"
                    );
                    return;
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot reload the pool from the store; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Applies every start and end that passed while the pool was not serving (after a
    /// start or a reload) and makes that durable, before any request is served (R10).
    async fn catch_up(&mut self) {
        loop {
            let started = std::time::Instant::now();
            let mut batch = Batch::default();
            self.pool.advance(self.clock.now_millis(), &mut batch);
            let advanced = started.elapsed();
            if batch.is_empty() {
                tracing::debug!(
                    advance_ms = advanced.as_millis() as u64,
                    "nothing passed while not serving"
                );
                return;
            }
            match self.store.commit(&batch, self.fence).await {
                Ok(()) => {
                    tracing::debug!(
                        advance_ms = advanced.as_millis() as u64,
                        commit_ms = (started.elapsed() - advanced).as_millis() as u64,
                        leases_ended = batch.leases_removed.len(),
                        "applied what passed while not serving"
                    );
                    log_changes(&batch);
                    if !batch.notifications.is_empty() {
                        self.outbox.notify_one();
                    }
                    return;
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot record the ends that passed while not serving; reloading and retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.load().await;
                }
            }
        }
    }
}

/// Resolves at `due` (Unix milliseconds) by `clock`; never when `None`. For a manual clock
/// the wait is in real time, but stepping the clock wakes the sweep anyway.
async fn until_millis(clock: &Clock, due: Option<i64>) {
    match due {
        Some(due) => {
            let wait = due.saturating_sub(clock.now_millis()).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait)).await
        }
        None => std::future::pending().await,
    }
}

/// A standby's `not_leader`, naming the leader when it is known.
fn not_leader(job: RequestJob, leader: Option<&str>) {
    let message = match leader {
        Some(leader) => format!("this node is a standby; the leader is at {leader}"),
        None => "this node is a standby and no leader is known right now (one is being elected); try again in a moment".to_string(),
    };
    let _ = job
        .reply
        .send(Outcome::NotLeader(tally_protocol::NotLeader {
            leader: leader.map(str::to_string),
            message,
        }));
}

/// A standby's answer to a job: a sign-in from the database, `not_leader` to a request.
fn standby(job: Job, leader: Option<&str>, store: &Arc<dyn ClusterStore>) {
    match job {
        Job::Request(job) => not_leader(job, leader),
        // A standby holds no pool: `/metrics` exports the node's own metrics only.
        Job::Gauges(_) => {}
        Job::SignIn(job) => {
            let store = store.clone();
            tokio::spawn(async move {
                let outcome = match store.account(&job.hash).await {
                    Ok(Some((session, true))) => SignInOutcome::Ok(session),
                    Ok(Some((session, false))) => SignInOutcome::Refused(ErrorBody::new(
                        ErrorCode::Unauthenticated,
                        format!(
                            "the account {} is deactivated; ask an admin to activate it",
                            session.username
                        ),
                    )),
                    Ok(None) => SignInOutcome::Refused(ErrorBody::new(
                        ErrorCode::Unauthenticated,
                        "the token is not recognised; check token_file or --token",
                    )),
                    Err(err) => {
                        tracing::error!(error = %err, "a standby cannot look the token up");
                        SignInOutcome::Refused(ErrorBody::internal())
                    }
                };
                let _ = job.reply.send(outcome);
            });
        }
    }
}

/// Grants a borrow (or finds the one an earlier try of the request got) and signs its
/// token; a repeated request gets the same token, since the claims are the lease's.
fn borrow_signed(
    pool: &mut Pool,
    signer: &Signer,
    now: i64,
    actor: &Actor,
    holder: &Holder,
    request: &BorrowOnce,
    batch: &mut Batch,
) -> Result<Response, ErrorBody> {
    let feature = request.feature.as_str();
    let ready = signer.ready().map(|_| ());
    batch.audit_refusal(now, actor, Action::Borrow, feature, Some(feature), ready)?;
    let lease = pool.borrow_once(now, actor, holder, request, LeaseId(rand::random()), batch)?;
    let token = signer.token(&lease, &request.machine_id)?;
    Ok(Response::Borrowed(Borrowed { lease, token }))
}

/// Tells the admin reading the log what changed: reclaims, forced releases and entitlement
/// changes at `info`; everyday checkouts, check-ins and refusals at `debug`.
fn log_changes(batch: &Batch) {
    use crate::logtext::peer;
    for event in &batch.audit {
        let feature = event.feature.as_deref().unwrap_or("");
        let notable = AuditOutcome::parse(&event.outcome) == Some(AuditOutcome::Ok)
            && Action::parse(&event.action).is_some_and(Action::is_notable);
        if notable {
            tracing::info!(actor = %peer(&event.actor), action = %event.action, subject = %peer(&event.subject), feature = %peer(feature), detail = %peer(&event.reason), "pool changed");
        } else {
            tracing::debug!(actor = %peer(&event.actor), action = %event.action, subject = %peer(&event.subject), feature = %peer(feature), outcome = %event.outcome, detail = %peer(&event.reason), "audit");
        }
    }
}

/// Reads a usage report from the store and computes it (SPEC §10); a store that fails
/// answers `internal`, logged.
async fn read_report(store: &dyn Store, clock: &Clock, job: ReportJob) -> Outcome {
    use crate::core::report;
    let ReportJob {
        read,
        feature,
        range,
        unknown,
    } = job;
    let Some((since, until)) = range else {
        return Outcome::Ok(match read {
            ReportRead::Usage(_) => Response::Usage(Vec::new()),
            ReportRead::Users(_) => Response::UserUsage(Vec::new()),
            ReportRead::Meters(_) => Response::MeterUsage(Vec::new()),
        });
    };
    let feature = feature.as_deref();
    let answer = match read {
        ReportRead::Usage(query) => {
            let periods = report::periods(since, until, query.by);
            store
                .usage_history(feature, since, until, query.by, &periods)
                .await
                .map(|data| {
                    // Taken after the read: every open lease it saw was granted by then.
                    let now = clock.now_millis();
                    let known =
                        !data.hours.is_empty() || !data.before.is_empty() || !data.open.is_empty();
                    (
                        known,
                        Response::Usage(report::usage(&data, feature, &periods, now)),
                    )
                })
        }
        ReportRead::Users(_) => store.user_history(feature, since, until).await.map(|data| {
            let now = clock.now_millis();
            let known = !data.rows.is_empty() || !data.open.is_empty();
            (
                known,
                Response::UserUsage(report::users(&data, since, until, now)),
            )
        }),
        ReportRead::Meters(query) => store.meter_hours(feature, since, until).await.map(|hours| {
            (
                !hours.is_empty(),
                Response::MeterUsage(report::meter_usage(&hours, query.by)),
            )
        }),
    };
    match (answer, unknown) {
        // A typo, not a quiet feature: say so, with the nearest name.
        (Ok((false, _)), Some(unknown)) => Outcome::Err(unknown),
        (Ok((_, response)), _) => Outcome::Ok(response),
        (Err(err), _) => {
            tracing::error!(error = %err, "usage report query failed");
            Outcome::Err(ErrorBody::internal())
        }
    }
}
