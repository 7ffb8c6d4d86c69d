//! Online leases, as their holders and admins ask for them: checkout (R1, R2, R4),
//! heartbeat (R3), resume (R4), check-in, an admin's forced release (of one lease, or of
//! those an id prefix, a user or a host selects), and the listings.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tally_protocol::{
    validate_feature, Checkout, EndReason, EndedLease, ErrorBody, ErrorCode, HeartbeatAck,
    HeldLease, HoldersPage, LeaseCursor, LeaseId, LeaseInfo, LeaseKind, LeasePattern, LeaseSource,
    LeasesPage, LeasesQuery, ReleaseMatching, Resumed, Role,
};

use super::checks::{check_request, require_admin, unknown_name, username};
use super::policy::Who;
use super::prereqs::prerequisite_ids;
use super::{rfc3339, Action, Actor, Batch, Holder, Lease, Pool};

/// Where a checkout's seats come from, and the prerequisites' seats it also takes.
pub(super) type Seats = (LeaseSource, Vec<(String, LeaseSource)>);

impl Pool {
    /// Checks out `seats` floating seats (R1, R2), or returns the lease an earlier attempt
    /// of the same request got (R4).
    pub fn checkout(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request: &Checkout,
        new_id: LeaseId,
        batch: &mut Batch,
    ) -> Result<LeaseInfo, ErrorBody> {
        self.advance(now, batch);
        if let Some(info) = self.lease_of_request(now, actor, holder, request.request_id) {
            return Ok(info);
        }
        let feature = request.feature.as_str();
        let checked = self.check_checkout_whole(now, actor, holder, request);
        if let Err(refusal) = &checked {
            self.notify_refusal(now, feature, &actor.username, refusal, batch);
        }
        let (source, taken) = batch.audit_refusal(
            now,
            actor,
            Action::Checkout,
            feature,
            Some(feature),
            checked,
        )?;
        Ok(self.grant(
            now,
            actor,
            holder,
            request,
            new_id,
            (source, taken),
            "",
            batch,
        ))
    }

    /// The live lease this client instance got for `request_id`, renewed, if it got one:
    /// what a retried checkout returns (R4).
    pub(super) fn lease_of_request(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request_id: tally_protocol::RequestId,
    ) -> Option<LeaseInfo> {
        let id = self
            .ledger
            .by_request
            .get(&(holder.client, request_id))
            .copied()?;
        if self.ledger.leases[&id].user != actor.username {
            return None;
        }
        self.ledger.renew(holder.client, now);
        Some(self.ledger.info(&self.ledger.leases[&id]))
    }

    /// Whether a checkout would succeed now, prerequisites included: where its seats and
    /// its prerequisites' seats come from, or the refusal. Nothing is taken.
    pub(super) fn check_checkout_whole(
        &self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request: &Checkout,
    ) -> Result<Seats, ErrorBody> {
        let source = self.check_checkout(now, actor, holder, request)?;
        let taken = self.check_prerequisite_seats(now, actor, holder, request)?;
        Ok((source, taken))
    }

    /// Grants a checkout that [`check_checkout_whole`](Self::check_checkout_whole) allowed:
    /// the lease and its prerequisites' seats, recorded and audited (`detail` says where
    /// the grant came from when not from the request itself).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn grant(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request: &Checkout,
        new_id: LeaseId,
        (source, taken): Seats,
        detail: &str,
        batch: &mut Batch,
    ) -> LeaseInfo {
        let feature = request.feature.as_str();
        let lease = Lease {
            id: new_id,
            feature: feature.to_string(),
            seats: request.seats,
            user: actor.username.clone(),
            host: holder.host.clone(),
            peer: holder.peer.clone(),
            client: holder.client,
            request_id: request.request_id,
            kind: LeaseKind::Online,
            source,
            granted_at: now,
            expires_at: now + self.ledger.ttl_ms,
            entitlement: None,
            taken_with: None,
        };
        self.ledger.renew(holder.client, now);
        let expires_at = now + self.ledger.ttl_ms;
        self.ledger.grant(lease.clone(), expires_at, now, batch);
        let info = self.ledger.info(&lease);
        batch.audit(
            now,
            actor,
            Action::Checkout,
            &new_id.to_string(),
            Some(feature),
            Ok(detail),
        );
        for (requires, source) in taken {
            let (id, request_id) = prerequisite_ids(new_id, &requires);
            let seat = Lease {
                id,
                feature: requires,
                seats: 1,
                request_id,
                source,
                taken_with: Some(new_id),
                ..lease.clone()
            };
            self.ledger
                .grant(seat.clone(), now + self.ledger.ttl_ms, now, batch);
            let detail = format!("a prerequisite of {feature}, with lease {new_id}");
            batch.audit(
                now,
                actor,
                Action::Checkout,
                &id.to_string(),
                Some(&seat.feature),
                Ok(&detail),
            );
            batch.add_lease(seat);
        }
        batch.add_lease(lease);
        batch.tally_grant(feature);
        info
    }

    /// The seat of each prerequisite of the feature (R18) that a checkout must also take,
    /// and where it comes from; the prerequisites this client instance already holds are
    /// not taken again. With no seat of one, the whole checkout is refused naming it.
    fn check_prerequisite_seats(
        &self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request: &Checkout,
    ) -> Result<Vec<(String, LeaseSource)>, ErrorBody> {
        let prerequisites = self.prerequisites_of(&request.feature);
        if prerequisites.is_empty() {
            // Most features have none: no walk over the leases this instance holds, which
            // would make every checkout cost as much as the instance's leases.
            return Ok(Vec::new());
        }
        let session = self
            .ledger
            .sessions
            .get(&holder.client)
            .filter(|session| session.user == actor.username);
        let held: BTreeSet<&str> = session
            .map(|session| {
                session
                    .leases
                    .iter()
                    .filter_map(|id| self.ledger.leases.get(id))
                    .map(|l| l.feature.as_str())
                    .collect()
            })
            .unwrap_or_default();
        let count = session.map_or(0, |session| session.leases.len());
        let mut taken = Vec::new();
        for requires in prerequisites {
            if held.contains(requires.as_str()) {
                continue;
            }
            let seat = Checkout {
                request_id: request.request_id,
                feature: requires.clone(),
                seats: 1,
            };
            let source = self
                .check_checkout(now, actor, holder, &seat)
                .map_err(|err| {
                    // A rule that refuses the prerequisite refuses the checkout: `denied`
                    // (R16), not `no_seat`.
                    let code = if err.code == ErrorCode::Denied {
                        ErrorCode::Denied
                    } else {
                        ErrorCode::NoSeat
                    };
                    ErrorBody::new(
                        code,
                        format!(
                            "{} requires {requires}, and there is no seat of {requires} for you: {}",
                            request.feature, err.message
                        ),
                    )
                })?;
            taken.push((requires, source));
        }
        let max = self.policy.max_leases_per_client as usize;
        let after = count + 1 + taken.len();
        if max != 0 && !taken.is_empty() && after > max {
            return Err(ErrorBody::invalid(format!(
                "{} requires {} more seat(s) of its prerequisites, and this client instance may hold at most {max} leases (limits.max_leases_per_client); check some in first",
                request.feature,
                taken.len()
            )));
        }
        Ok(taken)
    }

    /// Where a checkout's seats come from (the user's free assignment first, else the
    /// floating pool), or which rule refuses it.
    fn check_checkout(
        &self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request: &Checkout,
    ) -> Result<LeaseSource, ErrorBody> {
        check_request(request)?;
        let max = self.policy.max_leases_per_client;
        let held = self
            .ledger
            .sessions
            .get(&holder.client)
            .map_or(0, |session| session.leases.len());
        if max != 0 && held >= max as usize {
            return Err(ErrorBody::invalid(format!(
                "this client instance already holds {held} leases, the most limits.max_leases_per_client allows; check some in first"
            )));
        }
        let feature = request.feature.as_str();
        let known = self.entitlements_of(feature)?;
        if self.capacity(feature, now) == 0 {
            if let Some(last) = known.iter().filter_map(|e| e.expires_at).max() {
                if known
                    .iter()
                    .all(|e| e.expires_at.is_some_and(|end| end <= now))
                {
                    return Err(ErrorBody::new(
                        ErrorCode::Expired,
                        format!(
                            "every entitlement of {feature} has expired, the last at {}",
                            rfc3339(last)
                        ),
                    ));
                }
            }
        }
        let who = Who::of(actor, holder);
        self.policy_denial(feature, &who, request.seats, false)?;
        if let Some(id) = self.free_assignment(&actor.username, feature, request.seats, now) {
            return Ok(LeaseSource::Assignment(id));
        }
        if actor.role == Role::Guest && !self.policy.guests_use_floating {
            return Err(ErrorBody::new(
                ErrorCode::NoSeat,
                format!(
                    "no seat of {feature} for you: guests use only seats assigned to them, and you have no free assigned seat of {feature}"
                ),
            ));
        }
        let capacity = self.floating_capacity(feature, now);
        let used = self.ledger.usage(feature).total();
        let free = capacity.saturating_sub(used);
        let kept = self.reserved_for_others(feature, &who, capacity);
        let yours = free.saturating_sub(kept);
        if request.seats > yours {
            let mut msg = format!(
                "no seat of {feature}: {used} of {capacity} floating seats are in use, {free} free, {} asked for",
                request.seats
            );
            msg.push_str(&self.reserve_note(feature, &who, capacity, kept, free));
            if actor.role.is_admin() && used > 0 {
                msg.push_str(&format!("; held by {}", self.holders_of(feature)));
            }
            return Err(ErrorBody::new(ErrorCode::NoSeat, msg));
        }
        Ok(LeaseSource::Floating)
    }

    /// The user's active assignment of `feature` with `seats` free, the one ending first.
    fn free_assignment(&self, user: &str, feature: &str, seats: u32, now: i64) -> Option<u64> {
        self.assignments
            .values()
            .filter(|a| a.user == user && a.feature == feature && self.assignment_active(a, now))
            .filter(|a| {
                a.seats
                    .saturating_sub(self.ledger.assignment_usage(a.id).total())
                    >= seats
            })
            .min_by_key(|a| (a.expires_at.unwrap_or(i64::MAX), a.id))
            .map(|a| a.id)
    }

    /// "alice@example.com on node7 (2), ..." for a `no_seat` message to an admin.
    fn holders_of(&self, feature: &str) -> String {
        let mut by_holder: BTreeMap<(String, String), u32> = BTreeMap::new();
        for lease in self.ledger.leases.values().filter(|l| l.feature == feature) {
            *by_holder
                .entry((lease.user.clone(), lease.host.clone()))
                .or_default() += lease.seats;
        }
        let mut holders: Vec<((String, String), u32)> = by_holder.into_iter().collect();
        holders.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let shown: Vec<String> = holders
            .iter()
            .take(10)
            .map(|((user, host), seats)| format!("{user} on {host} ({seats})"))
            .collect();
        let mut text = shown.join(", ");
        if holders.len() > 10 {
            text.push_str(&format!(" and {} more", holders.len() - 10));
        }
        text
    }

    /// Renews every online lease of the client's session (R3) and reports the leases that
    /// ended since its last heartbeat.
    pub fn heartbeat(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        batch: &mut Batch,
    ) -> HeartbeatAck {
        self.advance(now, batch);
        let renewed = match self.ledger.sessions.get(&holder.client) {
            Some(session) if session.user == actor.username => session.leases.len() as u32,
            _ => {
                return HeartbeatAck {
                    renewed: 0,
                    ended: Vec::new(),
                }
            }
        };
        self.ledger.renew(holder.client, now);
        let session = self
            .ledger
            .sessions
            .get_mut(&holder.client)
            .expect("session exists");
        HeartbeatAck {
            renewed,
            ended: std::mem::take(&mut session.ended),
        }
    }

    /// Binds leases the same user held on an earlier connection to this client instance and
    /// renews them (R4).
    pub fn resume(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        ids: &[LeaseId],
        batch: &mut Batch,
    ) -> Resumed {
        self.advance(now, batch);
        let mut resumed = Vec::new();
        let mut ended = Vec::new();
        let mut tombstones: HashMap<LeaseId, EndReason> = HashMap::new();
        if let Some(session) = self.ledger.sessions.get_mut(&holder.client) {
            if session.user == actor.username {
                session.ended.retain(|gone| {
                    let asked = ids.contains(&gone.lease);
                    if asked {
                        tombstones.insert(gone.lease, gone.reason);
                    }
                    !asked
                });
            }
        }
        for &id in ids {
            let owned = self
                .ledger
                .leases
                .get(&id)
                .is_some_and(|l| l.user == actor.username && l.kind == LeaseKind::Online);
            if !owned {
                let reason = tombstones.get(&id).copied().unwrap_or(EndReason::Unknown);
                ended.push(EndedLease { lease: id, reason });
                continue;
            }
            let lease = &self.ledger.leases[&id];
            if lease.client != holder.client {
                // The instance that held it learns at its next heartbeat that it moved.
                batch.audit(
                    now,
                    actor,
                    Action::Resume,
                    &id.to_string(),
                    Some(&lease.feature),
                    Ok(&format!(
                        "moved from {} to {} (another client instance)",
                        lease.host, holder.host
                    )),
                );
                self.ledger.rebind(id, holder, now);
                batch.update_lease(self.ledger.leases[&id].clone());
            } else if lease.host != holder.host || lease.peer != holder.peer {
                // The same instance, reconnected (from another address, say): admins see
                // where it is now.
                self.ledger.relocate(id, holder);
                batch.update_lease(self.ledger.leases[&id].clone());
            }
            resumed.push(id);
        }
        // The seats of prerequisites a resumed lease's checkout took (R18) go where it goes;
        // the client never learned of them, so they are not in `ids`.
        let linked: Vec<LeaseId> = resumed
            .iter()
            .flat_map(|id| self.ledger.taken.get(id).into_iter().flatten().copied())
            .collect();
        for &id in &linked {
            if self.ledger.leases[&id].client != holder.client {
                self.ledger.rebind(id, holder, now);
                batch.update_lease(self.ledger.leases[&id].clone());
            }
        }
        // A seat of a prerequisite resumed by itself, away from the lease it came with (on
        // another instance, or not named in this resume, so about to be checked in below),
        // is its own from now on: it no longer ends with that lease.
        for &id in &resumed {
            let lease = &self.ledger.leases[&id];
            let apart = lease.taken_with.is_some_and(|with| {
                self.ledger
                    .leases
                    .get(&with)
                    .is_none_or(|taker| taker.client != lease.client || !resumed.contains(&with))
            });
            if apart {
                self.ledger.unlink(id);
                batch.update_lease(self.ledger.leases[&id].clone());
            }
        }
        // A resume names every online lease the client instance holds. Any other lease of
        // its session is one it never learned of: a checkout committed while its answer
        // was lost (a dropped connection, a failover, a deadline that passed). Its
        // heartbeats would keep it for ever, a seat nobody uses; it is checked in now, and
        // a retry of that checkout, which comes after the resume, is granted afresh.
        let unknown: Vec<LeaseId> = self
            .ledger
            .sessions
            .get(&holder.client)
            .filter(|session| session.user == actor.username)
            .map(|session| {
                session
                    .leases
                    .iter()
                    .copied()
                    .filter(|id| !ids.contains(id) && !linked.contains(id))
                    // A grant from the queue (R17) may not have reached a client that was
                    // away; its `CheckoutWait`, sent again after this resume, claims it
                    // (and a `QueueCancel` gives it back).
                    .filter(|id| !self.queue.is_unclaimed_grant(id))
                    .filter(|id| {
                        self.ledger
                            .leases
                            .get(id)
                            .is_some_and(|l| l.kind == LeaseKind::Online)
                    })
                    .collect()
            })
            .unwrap_or_default();
        for id in unknown {
            self.ledger
                .end(id, EndReason::CheckedIn, now, &actor.username, batch);
        }
        self.ledger.renew(holder.client, now);
        let resumed = resumed
            .iter()
            .map(|id| self.ledger.info(&self.ledger.leases[id]))
            .collect();
        Resumed { resumed, ended }
    }

    /// The holder gives a lease back.
    pub fn checkin(
        &mut self,
        now: i64,
        actor: &Actor,
        lease: LeaseId,
        batch: &mut Batch,
    ) -> Result<LeaseId, ErrorBody> {
        self.give_back(now, actor, lease, None, batch)
    }

    /// Ends one of the actor's own leases (of `kind`, when given) as checked in, or refuses
    /// with `not_found`; check-in and the return of a borrow both come here.
    pub(super) fn give_back(
        &mut self,
        now: i64,
        actor: &Actor,
        lease: LeaseId,
        kind: Option<LeaseKind>,
        batch: &mut Batch,
    ) -> Result<LeaseId, ErrorBody> {
        self.advance(now, batch);
        let theirs = self
            .ledger
            .leases
            .get(&lease)
            .is_some_and(|l| l.user == actor.username && kind.is_none_or(|k| l.kind == k));
        if theirs {
            self.ledger
                .end(lease, EndReason::CheckedIn, now, &actor.username, batch);
            return Ok(lease);
        }
        let (action, message) = match kind {
            Some(LeaseKind::Borrowed) => (
                Action::Return,
                format!("you have no borrowed lease {lease}; it may have ended already"),
            ),
            _ => (Action::Checkin, format!("you hold no lease {lease}")),
        };
        let refused = Err(ErrorBody::not_found(message));
        batch.audit_refusal(now, actor, action, &lease.to_string(), None, refused)
    }

    /// An admin's forced check-in of anyone's lease.
    pub fn release(
        &mut self,
        now: i64,
        actor: &Actor,
        lease: LeaseId,
        batch: &mut Batch,
    ) -> Result<LeaseId, ErrorBody> {
        self.advance(now, batch);
        let checked = self.check_release(actor, lease);
        let subject = lease.to_string();
        batch.audit_refusal(now, actor, Action::Release, &subject, None, checked)?;
        self.ledger
            .end(lease, EndReason::Released, now, &actor.username, batch);
        Ok(lease)
    }

    fn check_release(&self, actor: &Actor, lease: LeaseId) -> Result<(), ErrorBody> {
        require_admin(actor, "release a lease")?;
        match self.ledger.leases.get(&lease) {
            None => Err(ErrorBody::not_found(format!(
                "no lease {lease}; `tally leases` lists the leases held"
            ))),
            // The token works offline whatever the server does: the seat stays used.
            Some(l) if l.kind == LeaseKind::Borrowed => Err(borrowed_lease(l)),
            Some(_) => Ok(()),
        }
    }

    /// Leases held, newest first; members and guests see only their own.
    pub fn list_leases(
        &mut self,
        now: i64,
        actor: &Actor,
        query: &LeasesQuery,
        batch: &mut Batch,
    ) -> Result<Vec<LeaseInfo>, ErrorBody> {
        self.leases_page(now, actor, query, None, usize::MAX, usize::MAX, batch)
            .map(|page| page.leases)
    }

    /// One page of the leases held, newest grant first and then by id, starting after
    /// `after`; members and guests see only their own. A page holds at most `limit` leases
    /// and ends early once it passes `max_bytes` (roughly, of text), so that no answer
    /// outgrows a frame; `next` is where the following page starts. A query by a feature
    /// or user that does not exist is refused (see `check_leases_query`).
    #[allow(clippy::too_many_arguments)]
    pub fn leases_page(
        &mut self,
        now: i64,
        actor: &Actor,
        query: &LeasesQuery,
        after: Option<LeaseCursor>,
        limit: usize,
        max_bytes: usize,
        batch: &mut Batch,
    ) -> Result<LeasesPage, ErrorBody> {
        self.advance(now, batch);
        // The names are filters that match nothing, not what the event is about: kept in
        // the reason only, so that a typo does not become a feature of the audit log.
        let checked = self.check_leases_query(actor, query);
        batch.audit_refusal(now, actor, Action::Leases, "leases", None, checked)?;
        let (page, next) = self.page_of_leases(actor, query, after, limit, max_bytes, |_| 0);
        Ok(LeasesPage {
            leases: page.iter().map(|l| self.ledger.info(l)).collect(),
            next,
        })
    }

    /// One page of the leases held, as [`leases_page`](Self::leases_page) selects them,
    /// each with its holder's program, process id and address: the holders `status --all`
    /// shows under each feature.
    #[allow(clippy::too_many_arguments)]
    pub fn holders_page(
        &mut self,
        now: i64,
        actor: &Actor,
        query: &LeasesQuery,
        after: Option<LeaseCursor>,
        limit: usize,
        max_bytes: usize,
        batch: &mut Batch,
    ) -> HoldersPage {
        self.advance(now, batch);
        let extra = |l: &Lease| 8 + l.peer.program.len() + l.peer.address.len();
        let (page, next) = self.page_of_leases(actor, query, after, limit, max_bytes, extra);
        HoldersPage {
            holders: page
                .iter()
                .map(|l| HeldLease {
                    lease: self.ledger.info(l),
                    program: l.peer.program.clone(),
                    pid: l.peer.pid,
                    address: l.peer.address.clone(),
                })
                .collect(),
            next,
        }
    }

    /// The leases of one page, and the cursor of the next; `extra` is how many more bytes
    /// a lease takes in the answer than its [`LeaseInfo`].
    fn page_of_leases(
        &self,
        actor: &Actor,
        query: &LeasesQuery,
        after: Option<LeaseCursor>,
        limit: usize,
        max_bytes: usize,
        extra: impl Fn(&Lease) -> usize,
    ) -> (Vec<&Lease>, Option<LeaseCursor>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = match after {
            Some(c) => Excluded((std::cmp::Reverse(c.granted_at), c.id)),
            None => Unbounded,
        };
        let mut matching = self
            .ledger
            .by_grant
            .range((from, Unbounded))
            .map(|(_, id)| &self.ledger.leases[id])
            .filter(|l| actor.role.is_admin() || l.user.eq_ignore_ascii_case(&actor.username))
            .filter(|l| query.feature.as_deref().is_none_or(|f| l.feature == f))
            .filter(|l| {
                query
                    .user
                    .as_deref()
                    .is_none_or(|u| l.user.eq_ignore_ascii_case(u))
            })
            .peekable();
        let limit = limit.max(1);
        let mut page = Vec::new();
        let mut bytes = 0;
        while let Some(lease) = matching.peek() {
            if page.len() == limit || (!page.is_empty() && bytes >= max_bytes) {
                break;
            }
            bytes += 64 + lease.feature.len() + lease.user.len() + lease.host.len() + extra(lease);
            page.push(*lease);
            matching.next();
        }
        let next = match page.last() {
            Some(last) if matching.peek().is_some() => Some(LeaseCursor {
                granted_at: last.granted_at,
                id: last.id,
            }),
            _ => None,
        };
        (page, next)
    }

    /// An admin's forced check-in of every online lease a pattern selects (like
    /// `lmremove`): one lease by id, unique prefix or `PREFIX...SUFFIX`, or those of a user
    /// and/or host, of one feature when given. A prefix that fits several leases is refused
    /// naming them; borrowed leases are never released (R6).
    pub fn release_matching(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &ReleaseMatching,
        batch: &mut Batch,
    ) -> Result<Vec<LeaseId>, ErrorBody> {
        self.advance(now, batch);
        let subject = release_subject(request);
        let feature = request.feature.as_deref();
        let checked = self.check_release_matching(actor, request);
        let ids = batch.audit_refusal(now, actor, Action::Release, &subject, feature, checked)?;
        let mut ended = Vec::new();
        for &id in &ids {
            // The seats of prerequisites go with the leases they were taken with (R18).
            for linked in self.ledger.linked(id) {
                if !ended.contains(&linked) {
                    ended.push(linked);
                }
            }
            self.ledger
                .end(id, EndReason::Released, now, &actor.username, batch);
        }
        Ok(ended)
    }

    /// The online leases a release selects, newest first, or why none may be released.
    fn check_release_matching(
        &self,
        actor: &Actor,
        request: &ReleaseMatching,
    ) -> Result<Vec<LeaseId>, ErrorBody> {
        require_admin(actor, "release a lease")?;
        if let Some(feature) = &request.feature {
            validate_feature(feature).map_err(ErrorBody::invalid)?;
        }
        let pattern = match &request.lease {
            Some(text) => Some(LeasePattern::parse(text).map_err(ErrorBody::invalid)?),
            None if request.user.is_none() && request.host.is_none() => {
                return Err(ErrorBody::invalid(
                    "name the lease to release (its id or the first digits of it), or a user or host whose leases to release",
                ))
            }
            None => None,
        };
        let user = request.user.as_deref().map(username);
        if let Some(user) = &user {
            self.existing(user)?;
        }
        let mut chosen: Vec<&Lease> = self
            .ledger
            .leases
            .values()
            .filter(|l| pattern.as_ref().is_none_or(|p| p.matches(&l.id)))
            .filter(|l| user.as_deref().is_none_or(|u| l.user == u))
            .filter(|l| {
                request
                    .host
                    .as_deref()
                    .is_none_or(|h| l.host.eq_ignore_ascii_case(h))
            })
            .filter(|l| request.feature.as_deref().is_none_or(|f| l.feature == f))
            .collect();
        chosen.sort_by_key(|l| (std::cmp::Reverse(l.granted_at), l.id));
        if let Some(pattern) = &pattern {
            if chosen.is_empty() {
                return Err(ErrorBody::not_found(format!(
                    "no lease {pattern}; `tally leases` lists the leases held"
                )));
            }
            if chosen.len() > 1 {
                return Err(ErrorBody::invalid(format!(
                    "{pattern} fits {} leases: {}; give more digits of the one to release",
                    chosen.len(),
                    describe_leases(&chosen)
                )));
            }
            return match chosen[0] {
                l if l.kind == LeaseKind::Borrowed => Err(borrowed_lease(l)),
                l => Ok(vec![l.id]),
            };
        }
        let (online, borrowed): (Vec<&Lease>, Vec<&Lease>) = chosen
            .into_iter()
            .partition(|l| l.kind == LeaseKind::Online);
        if online.is_empty() {
            let whose = release_subject(request);
            return Err(match borrowed.first() {
                Some(lease) => ErrorBody::new(
                    ErrorCode::Borrowed,
                    format!(
                        "{whose} holds no online lease, only borrowed ones, which cannot be released before they end or are returned (the first until {})",
                        rfc3339(lease.expires_at)
                    ),
                ),
                None => ErrorBody::not_found(format!(
                    "{whose} holds no lease; `tally leases` lists the leases held"
                )),
            });
        }
        Ok(online.iter().map(|l| l.id).collect())
    }

    /// Refuses a listing by a feature or user that does not exist, naming the nearest that
    /// does, rather than answering with nothing as if no lease were held: `leases --feature
    /// vary` is a typo, not an idle feature. Users are checked for admins only: others see
    /// their own leases whatever they ask, and learn no one's name.
    fn check_leases_query(&self, actor: &Actor, query: &LeasesQuery) -> Result<(), ErrorBody> {
        if let Some(feature) = query.feature.as_deref() {
            let known = self.known_features();
            if !known.contains(feature) {
                return Err(unknown_name(
                    "feature",
                    feature,
                    known,
                    "`tally status` lists the features",
                ));
            }
        }
        if let Some(user) = query.user.as_deref().filter(|_| actor.role.is_admin()) {
            if !self.users.contains_key(&username(user)) {
                return Err(unknown_name(
                    "user",
                    user,
                    self.users.keys().map(String::as_str),
                    "`tally user list` shows the users",
                ));
            }
        }
        Ok(())
    }

    /// The features that exist: those an entitlement names (active or not) and those a
    /// lease holds.
    /// `invalid` for a feature name that is not one, `not_found` (naming the nearest) for
    /// one that no entitlement or lease bears.
    pub(super) fn known_feature(&self, feature: &str) -> Result<(), ErrorBody> {
        validate_feature(feature).map_err(ErrorBody::invalid)?;
        let known = self.known_features();
        if known.contains(feature) {
            return Ok(());
        }
        Err(unknown_name(
            "feature",
            feature,
            known,
            "`tally status` lists the features",
        ))
    }

    /// "; 2 of the free seats are reserved for others by rule 1 (...)" when reserves keep
    /// some of the `free` floating seats from `who` (`kept` of them), for a `no_seat`.
    pub(super) fn reserve_note(
        &self,
        feature: &str,
        who: &Who,
        capacity: u32,
        kept: u32,
        free: u32,
    ) -> String {
        if kept == 0 {
            return String::new();
        }
        format!(
            "; {} of the free seats are reserved for others by {}",
            kept.min(free),
            self.reserves_keeping(feature, who, capacity)
        )
    }

    pub(super) fn known_features(&self) -> BTreeSet<&str> {
        self.entitlements
            .values()
            .map(|e| e.feature.as_str())
            .chain(self.ledger.leases.values().map(|l| l.feature.as_str()))
            .collect()
    }
}

/// What a release names, for the audit log and messages: "lease 3f9c", "ana@studio.com on
/// render-07 (vray)".
fn release_subject(request: &ReleaseMatching) -> String {
    if let Some(lease) = &request.lease {
        return format!("lease {}", lease.trim());
    }
    let mut text = match (&request.user, &request.host) {
        (Some(user), Some(host)) => format!("{} on {host}", username(user)),
        (Some(user), None) => username(user),
        (None, Some(host)) => format!("host {host}"),
        (None, None) => "nobody".to_string(),
    };
    if let Some(feature) = &request.feature {
        text.push_str(&format!(" ({feature})"));
    }
    text
}

/// "ID (vray, ana@studio.com on render-07), ..." for a refusal, at most ten.
pub(super) fn describe_leases(leases: &[&Lease]) -> String {
    let mut shown: Vec<String> = leases
        .iter()
        .take(10)
        .map(|l| format!("{} ({}, {} on {})", l.id, l.feature, l.user, l.host))
        .collect();
    if leases.len() > 10 {
        shown.push(format!("and {} more", leases.len() - 10));
    }
    shown.join(", ")
}

/// The refusal to release a borrowed lease: its token works offline whatever the server
/// does, so the seat stays used until it ends or is returned.
fn borrowed_lease(lease: &Lease) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Borrowed,
        format!(
            "lease {} is borrowed by {} for offline use until {}; it cannot be released before it ends or is returned",
            lease.id,
            lease.user,
            rfc3339(lease.expires_at)
        ),
    )
}
