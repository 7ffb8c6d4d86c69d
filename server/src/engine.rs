//! The engine: the one task that owns the [`Pool`] and the group commit.
//!
//! Connections send it [`Job`]s. It takes every job waiting in its queue, applies each to the
//! pool (collecting their changes in one [`Batch`]), commits the batch in one transaction, and
//! only then answers them all (R5). While a commit is in flight, new jobs queue up and form
//! the next batch, so the commit rate grows with the load. If a commit fails, every job of
//! the batch gets `internal` and the pool is rebuilt from the store, so nothing is
//! half-applied.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tally_protocol::{
    key_id, AuditQuery, BorrowClaims, Borrowed, ErrorBody, LeaseId, LeaseInfo, Outcome, Request,
    Response,
};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::core::{require_admin, Actor, Batch, Holder, NewToken, Policy, Pool};
use crate::init::{new_token, token_hash};
use crate::store::Store;

/// Most jobs answered by one commit.
const MAX_BATCH: usize = 4096;

/// How long a batch may wait for the clients the last commit answered to come back.
const GATHER: Duration = Duration::from_micros(1000);

/// The most audit events one query returns.
pub const MAX_AUDIT_EVENTS: u32 = 10_000;

/// A request for the engine, and where to send its outcome.
#[derive(Debug)]
pub struct Job {
    /// The user the connection signed in as; the pool checks they are still active and
    /// what their role is now.
    pub actor: Actor,
    pub holder: Holder,
    pub request: Request,
    pub reply: oneshot::Sender<Outcome>,
}

/// An answer waiting for its batch to commit.
enum Reply {
    Ready(oneshot::Sender<Outcome>, Outcome),
    /// An authorised audit query, read from the store once the batch (and the refusals or
    /// changes it records) is committed.
    Audit(oneshot::Sender<Outcome>, AuditQuery),
}

/// The current time in Unix milliseconds.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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
}

impl Signer {
    /// The token for a granted borrow.
    fn token(&self, lease: &LeaseInfo, machine_id: &str) -> String {
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
        claims.encode(signature.as_ref())
    }
}

pub struct Engine {
    signer: Signer,
    pool: Pool,
    store: Arc<dyn Store>,
    ttl_ms: i64,
    policy: Policy,
    sweep: Duration,
    /// Woken after a commit that queued notifications.
    outbox: Arc<Notify>,
}

impl Engine {
    pub fn new(
        pool: Pool,
        store: Arc<dyn Store>,
        signer: Signer,
        ttl: Duration,
        policy: Policy,
        sweep: Duration,
        outbox: Arc<Notify>,
    ) -> Self {
        Self {
            signer,
            pool,
            store,
            ttl_ms: ttl.as_millis() as i64,
            policy,
            sweep,
            outbox,
        }
    }

    /// Serves jobs until every sender is gone, then returns after the last commit.
    pub async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut sweep = tokio::time::interval(self.sweep);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // How many jobs the last commit answered.
        let mut answered = 0;
        loop {
            let mut batch = Batch::default();
            let mut replies = Vec::new();
            tokio::select! {
                biased;
                job = jobs.recv() => match job {
                    Some(job) => self.apply(job, &mut batch, &mut replies),
                    None => break,
                },
                _ = sweep.tick() => self.pool.sweep(now_millis(), &mut batch),
            }
            // Gather the batch. Clients answered by the last commit come back within a
            // few hundred microseconds; waiting that long for them (when there is already
            // work, so never on an idle server) lets them share this commit instead of
            // forming a second cohort that always waits a whole commit for the first.
            let gather_until = tokio::time::Instant::now() + GATHER;
            while replies.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => self.apply(job, &mut batch, &mut replies),
                    Err(_) if replies.len() < answered => {
                        match tokio::time::timeout_at(gather_until, jobs.recv()).await {
                            Ok(Some(job)) => self.apply(job, &mut batch, &mut replies),
                            Ok(None) | Err(_) => break,
                        }
                    }
                    Err(_) => break,
                }
            }
            answered = replies.len();
            self.flush(batch, replies).await;
        }
        tracing::debug!("engine stopped");
    }

    fn apply(&mut self, job: Job, batch: &mut Batch, replies: &mut Vec<Reply>) {
        let now = now_millis();
        let Job {
            actor,
            holder,
            request,
            reply,
        } = job;
        // The account as it is now, not as it was when the connection signed in.
        let actor = match self.pool.authorize(&actor.username) {
            Ok(actor) => actor,
            Err(err) => {
                replies.push(Reply::Ready(reply, Outcome::Err(err)));
                return;
            }
        };
        if let Request::Audit(query) = request {
            match require_admin(&actor, "read the audit log") {
                Ok(()) => replies.push(Reply::Audit(reply, query)),
                Err(err) => {
                    batch.audit(now, &actor, "audit", "audit log", None, Err(&err));
                    replies.push(Reply::Ready(reply, Outcome::Err(err)));
                }
            }
            return;
        }
        let outcome = match self.handle(now, &actor, &holder, request, batch) {
            Ok(response) => Outcome::Ok(response),
            Err(err) => Outcome::Err(err),
        };
        replies.push(Reply::Ready(reply, outcome));
    }

    fn handle(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request: Request,
        batch: &mut Batch,
    ) -> Result<Response, ErrorBody> {
        let pool = &mut self.pool;
        match request {
            Request::Heartbeat => Ok(Response::Heartbeat(
                pool.heartbeat(now, actor, holder, batch),
            )),
            Request::Checkout(checkout) => {
                let id = LeaseId(rand::random());
                pool.checkout(now, actor, holder, &checkout, id, batch)
                    .map(Response::Lease)
            }
            Request::Checkin(checkin) => pool
                .checkin(now, actor, checkin.lease, batch)
                .map(Response::CheckedIn),
            Request::Resume(resume) => Ok(Response::Resumed(pool.resume(
                now,
                actor,
                holder,
                &resume.leases,
                batch,
            ))),
            Request::Status(query) => pool
                .status(now, query.feature.as_deref(), batch)
                .map(Response::Status),
            Request::Leases(query) => Ok(Response::Leases(pool.leases(now, actor, &query, batch))),
            Request::EntitlementAdd(new) => pool
                .add_entitlement(now, actor, &new, batch)
                .map(Response::Entitlement),
            Request::EntitlementList(query) => {
                pool.advance(now, batch);
                Ok(Response::Entitlements(
                    pool.entitlements(query.feature.as_deref()),
                ))
            }
            Request::EntitlementRemove(remove) => pool
                .remove_entitlement(now, actor, remove.id, batch)
                .map(Response::EntitlementRemoved),
            Request::Release(release) => pool
                .release(now, actor, release.lease, batch)
                .map(Response::Released),
            Request::Whoami => pool.whoami(now, actor, batch).map(Response::Whoami),
            Request::UserAdd(add) => pool
                .add_user(now, actor, &add, mint_token(), batch)
                .map(|(user, token)| Response::UserAdded { user, token }),
            Request::UserList => pool.users(now, actor, batch).map(Response::Users),
            Request::UserToken(user) => pool
                .add_token(now, actor, &user.username, mint_token(), batch)
                .map(Response::Token),
            Request::UserDeactivate(user) => pool
                .deactivate_user(now, actor, &user.username, batch)
                .map(Response::User),
            Request::UserActivate(user) => pool
                .activate_user(now, actor, &user.username, batch)
                .map(Response::User),
            Request::UserRemove(user) => pool
                .remove_user(now, actor, &user.username, batch)
                .map(Response::User),
            Request::Assign(assign) => pool
                .assign(now, actor, &assign, batch)
                .map(Response::Assignment),
            Request::Revoke(revoke) => pool
                .revoke(now, actor, &revoke, batch)
                .map(Response::Revoked),
            Request::Borrow(borrow) => {
                let id = LeaseId(rand::random());
                let lease = pool.borrow(now, actor, holder, &borrow, id, batch)?;
                let token = self.signer.token(&lease, &borrow.machine_id);
                Ok(Response::Borrowed(Borrowed { lease, token }))
            }
            Request::Return(ret) => pool
                .return_borrow(now, actor, ret.lease, batch)
                .map(Response::Returned),
            // Answered elsewhere: server info by the connection, audit queries after the
            // commit (see `apply`).
            Request::ServerInfo | Request::Audit(_) => {
                tracing::error!(
                    request = request.name(),
                    "request reached the wrong handler"
                );
                Err(ErrorBody::internal())
            }
        }
    }

    /// Makes the batch durable, then answers its jobs.
    async fn flush(&mut self, batch: Batch, replies: Vec<Reply>) {
        if !batch.is_empty() {
            let started = std::time::Instant::now();
            if let Err(err) = self.store.commit(&batch).await {
                tracing::error!(error = %err, rows = batch.rows(), "commit failed; answering `internal` and reloading the pool from the store");
                for reply in replies {
                    let (Reply::Ready(reply, _) | Reply::Audit(reply, _)) = reply;
                    let _ = reply.send(Outcome::Err(ErrorBody::internal()));
                }
                self.reload().await;
                return;
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
        for reply in replies {
            match reply {
                Reply::Ready(reply, outcome) => {
                    let _ = reply.send(outcome);
                }
                Reply::Audit(reply, mut query) => {
                    query.limit = Some(query.limit.unwrap_or(1000).min(MAX_AUDIT_EVENTS));
                    let store = self.store.clone();
                    tokio::spawn(async move {
                        let outcome = match store.audit(&query).await {
                            Ok(events) => Outcome::Ok(Response::AuditEvents(events)),
                            Err(err) => {
                                tracing::error!(error = %err, "audit query failed");
                                Outcome::Err(ErrorBody::internal())
                            }
                        };
                        let _ = reply.send(outcome);
                    });
                }
            }
        }
    }

    async fn reload(&mut self) {
        loop {
            match self.store.load().await {
                Ok(snapshot) => {
                    self.pool = Pool::restore(snapshot, self.ttl_ms, self.policy, now_millis());
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
}

/// Tells the admin reading the log what changed: reclaims, forced releases and entitlement
/// changes at `info`; everyday checkouts, check-ins and refusals at `debug`.
fn log_changes(batch: &Batch) {
    use crate::logtext::peer;
    for event in &batch.audit {
        let feature = event.feature.as_deref().unwrap_or("");
        let notable = event.outcome == "ok"
            && matches!(
                event.action.as_str(),
                "reclaim"
                    | "release"
                    | "entitlement_add"
                    | "entitlement_remove"
                    | "assign"
                    | "revoke"
                    | "assignment_end"
                    | "user_add"
                    | "user_deactivate"
                    | "user_activate"
                    | "user_remove"
            );
        if notable {
            tracing::info!(actor = %peer(&event.actor), action = %event.action, subject = %peer(&event.subject), feature = %peer(feature), detail = %peer(&event.reason), "pool changed");
        } else {
            tracing::debug!(actor = %peer(&event.actor), action = %event.action, subject = %peer(&event.subject), feature = %peer(feature), outcome = %event.outcome, detail = %peer(&event.reason), "audit");
        }
    }
}
