//! Borrowing seats for offline use (SPEC R6).
//!
//! A borrow is a lease of kind `borrowed` with a fixed end and no heartbeats. It comes from
//! the user's own assignment when that is borrowable and has room, else from the floating
//! pool. A floating borrow is charged to one borrowable entitlement, and the seats charged to
//! an entitlement plus those assigned from it never exceed its seats, so borrowed seats
//! always fit in the pool until they end: a borrow never outlives its entitlement (nor its
//! assignment), and the entitlement cannot be removed while it has borrows.
//!
//! A borrow carries a request id like a checkout (R4): the same client sending the same
//! request id for the same machine gets the lease its first try got. The lease is keyed by a
//! digest of the request id and the machine id ([`borrow_key`]), so a retry naming another
//! machine is a new borrow and never a second token for one seat.

use sha2::{Digest, Sha256};
use tally_protocol::{
    Borrow, BorrowOnce, Entitlement, ErrorBody, ErrorCode, LeaseId, LeaseInfo, LeaseKind,
    LeaseSource, RequestId, Role,
};

use super::capacity::is_active;
use super::checks::check_request;
use super::policy::Who;
use super::{rfc3339, Action, Actor, Batch, Holder, Lease, Pool, DEFAULT_MAX_BORROW_SECS};

/// Where a borrow draws from, and the longest it may last.
struct Source {
    source: LeaseSource,
    entitlement: u64,
    /// The latest end allowed, and which limit sets it.
    until: i64,
    limit: String,
}

/// The request id a borrow's lease is kept under: the client's request id bound to the
/// machine the token is for.
pub fn borrow_key(request: &BorrowOnce) -> RequestId {
    let digest = Sha256::new()
        .chain_update(b"tally borrow\0")
        .chain_update(request.request_id.0)
        .chain_update(request.machine_id.as_bytes())
        .finalize();
    let mut key = [0; 16];
    key.copy_from_slice(&digest[..16]);
    RequestId(key)
}

impl Pool {
    /// Grants a borrow of the first request form, which has no request id: every request is
    /// a new borrow.
    pub fn borrow(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request: &Borrow,
        new_id: LeaseId,
        batch: &mut Batch,
    ) -> Result<LeaseInfo, ErrorBody> {
        let request = BorrowOnce {
            // The new lease's id is fresh, so no earlier lease is kept under it.
            request_id: RequestId(new_id.0),
            feature: request.feature.clone(),
            seats: request.seats,
            duration_secs: request.duration_secs,
            machine_id: request.machine_id.clone(),
        };
        self.borrow_once(now, actor, holder, &request, new_id, batch)
    }

    /// Grants a borrow, or says which rule refuses it; returns the lease an earlier try of
    /// the same request got, while it lasts (R4).
    pub fn borrow_once(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request: &BorrowOnce,
        new_id: LeaseId,
        batch: &mut Batch,
    ) -> Result<LeaseInfo, ErrorBody> {
        self.advance(now, batch);
        let key = borrow_key(request);
        if let Some(id) = self.ledger.by_request.get(&(holder.client, key)).copied() {
            let lease = &self.ledger.leases[&id];
            if lease.user == actor.username && lease.kind == LeaseKind::Borrowed {
                return Ok(self.ledger.info(lease));
            }
        }
        let checked = self
            .check_borrow(now, actor, holder, request)
            .and_then(|source| {
                let ends = now.saturating_add((request.duration_secs as i64).saturating_mul(1000));
                if ends > source.until {
                    return Err(ErrorBody::invalid(format!(
                        "{} can be borrowed until {} at the latest ({}); ask for a shorter time",
                        request.feature,
                        rfc3339(source.until),
                        source.limit
                    )));
                }
                Ok(source)
            });
        let feature = request.feature.as_str();
        if let Err(refusal) = &checked {
            self.notify_refusal(now, feature, &actor.username, refusal, batch);
        }
        let source =
            batch.audit_refusal(now, actor, Action::Borrow, feature, Some(feature), checked)?;
        let ends = now.saturating_add((request.duration_secs as i64).saturating_mul(1000));
        let lease = Lease {
            taken_with: None,
            id: new_id,
            feature: request.feature.clone(),
            seats: request.seats,
            user: actor.username.clone(),
            host: holder.host.clone(),
            peer: holder.peer.clone(),
            client: holder.client,
            request_id: key,
            kind: LeaseKind::Borrowed,
            source: source.source,
            granted_at: now,
            expires_at: ends,
            entitlement: matches!(source.source, LeaseSource::Floating)
                .then_some(source.entitlement),
        };
        self.ledger.grant(lease.clone(), now, now, batch);
        let info = self.ledger.info(&lease);
        let detail = format!(
            "{} seat(s) until {} on {}",
            lease.seats,
            rfc3339(ends),
            request.machine_id
        );
        batch.audit(
            now,
            actor,
            Action::Borrow,
            &new_id.to_string(),
            Some(&request.feature),
            Ok(&detail),
        );
        batch.add_lease(lease);
        batch.tally_grant(feature);
        Ok(info)
    }

    fn check_borrow(
        &self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request: &BorrowOnce,
    ) -> Result<Source, ErrorBody> {
        check_request(request)?;
        let feature = request.feature.as_str();
        if request.machine_id.trim().is_empty() || request.machine_id.len() > 128 {
            return Err(ErrorBody::invalid(
                "the client sent no usable machine id; set TALLY_MACHINE_ID or check /etc/machine-id",
            ));
        }
        let known = self.entitlements_of(feature)?;
        if !known.iter().any(|e| e.borrowable && is_active(e, now)) {
            return Err(ErrorBody::new(
                ErrorCode::NotBorrowable,
                format!("no active entitlement of {feature} allows borrowing; check it out online instead"),
            ));
        }
        let who = Who::of(actor, holder);
        self.policy_denial(feature, &who, request.seats, true)?;
        let server_max = if self.policy.borrow_max_ms > 0 {
            self.policy.borrow_max_ms
        } else {
            DEFAULT_MAX_BORROW_SECS as i64 * 1000
        };
        // The user's own borrowable assignment first.
        let mine = self
            .assignments
            .values()
            .filter(|a| {
                a.user == actor.username && a.feature == feature && self.assignment_active(a, now)
            })
            .filter(|a| self.entitlements[&a.entitlement].borrowable)
            .filter(|a| {
                a.seats
                    .saturating_sub(self.ledger.assignment_usage(a.id).total())
                    >= request.seats
            })
            .max_by_key(|a| (a.expires_at.unwrap_or(i64::MAX), a.id));
        if let Some(assignment) = mine {
            let entitlement = &self.entitlements[&assignment.entitlement];
            let (until, limit) = self.borrow_limit(now, entitlement, server_max);
            let (until, limit) = match assignment.expires_at {
                Some(end) if end < until => {
                    (end, format!("the end of your assignment {}", assignment.id))
                }
                _ => (until, limit),
            };
            return Ok(Source {
                source: LeaseSource::Assignment(assignment.id),
                entitlement: entitlement.id,
                until,
                limit,
            });
        }
        if actor.role == Role::Guest && !self.policy.guests_use_floating {
            return Err(ErrorBody::new(
                ErrorCode::NoSeat,
                format!("no seat of {feature} to borrow: guests borrow only seats assigned to them, and you have no free borrowable assigned seat of {feature}"),
            ));
        }
        let free = self.available(feature, now);
        let capacity = self.floating_capacity(feature, now);
        let kept = self.reserved_for_others(feature, &who, capacity);
        let yours = free.saturating_sub(kept);
        if request.seats > yours {
            let mut msg = format!(
                "no seat of {feature} to borrow: {free} floating seat(s) free, {} asked for",
                request.seats
            );
            msg.push_str(&self.reserve_note(feature, &who, capacity, kept, free));
            return Err(ErrorBody::new(ErrorCode::NoSeat, msg));
        }
        self.check_lowwater(feature, request.seats, now)?;
        let entitlement = known
            .iter()
            .filter(|e| {
                e.borrowable && is_active(e, now) && self.unassigned(e.id, now) >= request.seats
            })
            .max_by_key(|e| (self.borrow_limit(now, e, server_max).0, e.id))
            .ok_or_else(|| {
                ErrorBody::new(
                    ErrorCode::NoSeat,
                    format!(
                        "the borrowable entitlements of {feature} have no {} seat(s) left to lend",
                        request.seats
                    ),
                )
            })?;
        let (until, limit) = self.borrow_limit(now, entitlement, server_max);
        Ok(Source {
            source: LeaseSource::Floating,
            entitlement: entitlement.id,
            until,
            limit,
        })
    }

    /// The latest end a borrow from `entitlement` may have, and which limit sets it.
    fn borrow_limit(&self, now: i64, entitlement: &Entitlement, server_max: i64) -> (i64, String) {
        let own = now.saturating_add((entitlement.max_borrow_secs as i64).saturating_mul(1000));
        let server = now.saturating_add(server_max);
        let mut best = (
            own,
            format!(
                "entitlement {}'s max_borrow of {}",
                entitlement.id,
                human(entitlement.max_borrow_secs)
            ),
        );
        if server < best.0 {
            best = (
                server,
                format!(
                    "the server's borrow.max of {}",
                    human((server_max / 1000) as u64)
                ),
            );
        }
        if let Some(end) = entitlement.expires_at {
            if end < best.0 {
                best = (end, format!("the end of entitlement {}", entitlement.id));
            }
        }
        best
    }

    /// Gives a borrowed lease back: the seat is free at once.
    pub fn return_borrow(
        &mut self,
        now: i64,
        actor: &Actor,
        lease: LeaseId,
        batch: &mut Batch,
    ) -> Result<LeaseId, ErrorBody> {
        self.give_back(now, actor, lease, Some(LeaseKind::Borrowed), batch)
    }

    /// Refuses to remove an entitlement that seats are borrowed from.
    pub(super) fn no_borrows_from(&self, entitlement: u64) -> Result<(), ErrorBody> {
        let borrows = self.borrows_from(entitlement);
        let Some(until) = borrows.iter().map(|l| l.expires_at).max() else {
            return Ok(());
        };
        let borrowed: u32 = borrows.iter().map(|l| l.seats).sum();
        Err(ErrorBody::new(
            ErrorCode::Borrowed,
            format!(
                "{borrowed} seat(s) of entitlement {entitlement} are borrowed for offline use until {}; remove it after the borrows end or are returned",
                rfc3339(until)
            ),
        ))
    }

    /// The borrowed leases whose seats come from an entitlement: floating ones charged to
    /// it, and those from its assignments.
    pub(super) fn borrows_from(&self, entitlement: u64) -> Vec<&Lease> {
        self.ledger
            .leases
            .values()
            .filter(|l| l.kind == LeaseKind::Borrowed)
            .filter(|l| match l.source {
                LeaseSource::Floating => l.entitlement == Some(entitlement),
                LeaseSource::Assignment(id) => self
                    .assignments
                    .get(&id)
                    .is_some_and(|a| a.entitlement == entitlement),
            })
            .collect()
    }
}

fn human(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}
