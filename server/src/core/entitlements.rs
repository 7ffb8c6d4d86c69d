//! Entitlements, the seats a feature is licensed for (SPEC R10): adding, changing and
//! removing them, listing them, and the status figures of each feature they make up.

use std::collections::BTreeSet;

use tally_protocol::{
    validate_feature, EndReason, Entitlement, EntitlementDelete, EntitlementDeleted,
    EntitlementUpdate, EntitlementUpdated, ErrorBody, ErrorCode, FeatureFigures, FeatureStatus,
    LeaseId, LeaseKind, LeaseSource, NewEntitlement,
};

use super::capacity::is_active;
use super::checks::{check_request, require_admin};
use super::leases::describe_leases;
use super::{rfc3339, Action, Actor, Batch, Lease, Pool, DEFAULT_MAX_BORROW_SECS};

/// The longest reference (an order number, a contract) an entitlement may carry.
const MAX_REFERENCE: usize = 256;

impl Pool {
    /// Adds an entitlement (R10 dates). Admins only.
    pub fn add_entitlement(
        &mut self,
        now: i64,
        actor: &Actor,
        new: &NewEntitlement,
        batch: &mut Batch,
    ) -> Result<Entitlement, ErrorBody> {
        self.advance(now, batch);
        let checked = self.check_new_entitlement(now, actor, new);
        let entitlement = batch.audit_refusal(
            now,
            actor,
            Action::EntitlementAdd,
            &new.feature,
            Some(&new.feature),
            checked,
        )?;
        self.next_entitlement_id += 1;
        batch.next_entitlement_id = Some(self.next_entitlement_id);
        self.entitlements
            .insert(entitlement.id, entitlement.clone());
        self.next_boundary = self.compute_next_boundary(now);
        self.marks.entitlements_changed();
        let subject = format!("entitlement {}", entitlement.id);
        let detail = format!("{} seats", entitlement.seats);
        batch.audit(
            now,
            actor,
            Action::EntitlementAdd,
            &subject,
            Some(&entitlement.feature),
            Ok(&detail),
        );
        batch.add_entitlement(entitlement.clone());
        self.record_pool(&entitlement.feature, now, batch);
        Ok(entitlement)
    }

    fn check_new_entitlement(
        &self,
        now: i64,
        actor: &Actor,
        new: &NewEntitlement,
    ) -> Result<Entitlement, ErrorBody> {
        require_admin(actor, "add entitlements")?;
        check_request(new)?;
        let starts_at = new.starts_at.unwrap_or(now);
        if let Some(expires_at) = new.expires_at {
            if expires_at <= starts_at {
                return Err(ErrorBody::invalid(format!(
                    "expiry {} is not after the start {}",
                    rfc3339(expires_at),
                    rfc3339(starts_at)
                )));
            }
            if expires_at <= now {
                return Err(ErrorBody::invalid(format!(
                    "expiry {} is in the past",
                    rfc3339(expires_at)
                )));
            }
        }
        let max_borrow_secs = new.max_borrow_secs.unwrap_or(DEFAULT_MAX_BORROW_SECS);
        check_reference(&new.reference)?;
        Ok(Entitlement {
            id: self.next_entitlement_id,
            feature: new.feature.clone(),
            seats: new.seats,
            starts_at,
            expires_at: new.expires_at,
            kind: new.kind,
            borrowable: new.borrowable,
            max_borrow_secs,
            reference: new.reference.clone(),
        })
    }

    /// Removes an entitlement, as the first request form did: admins only; its assignments
    /// end, and leases the smaller pool can no longer hold end, newest first, with reason
    /// `revoked`, so that R1 holds at once.
    pub fn remove_entitlement(
        &mut self,
        now: i64,
        actor: &Actor,
        id: u64,
        batch: &mut Batch,
    ) -> Result<u64, ErrorBody> {
        let request = EntitlementDelete { id, force: true };
        self.delete_entitlement(now, actor, &request, batch)
            .map(|deleted| deleted.id)
    }

    /// Removes an entitlement (admins only), refusing with the leases it would end (those
    /// drawn from its assignments, and the newest floating ones the smaller pool can no
    /// longer hold) unless `force`, which ends them with reason `revoked`. Refused while
    /// seats of it are borrowed. Its assignments end.
    pub fn delete_entitlement(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &EntitlementDelete,
        batch: &mut Batch,
    ) -> Result<EntitlementDeleted, ErrorBody> {
        self.advance(now, batch);
        let id = request.id;
        let subject = format!("entitlement {id}");
        let feature = self.entitlements.get(&id).map(|e| e.feature.clone());
        let checked = self.check_delete(now, actor, request);
        let feature = batch.audit_refusal(
            now,
            actor,
            Action::EntitlementRemove,
            &subject,
            feature.as_deref(),
            checked,
        )?;
        let held = self.online_leases_of(&feature);
        let assignments: Vec<u64> = self
            .assignments
            .values()
            .filter(|a| a.entitlement == id)
            .map(|a| a.id)
            .collect();
        for assignment in assignments {
            let why = format!("entitlement {id} removed");
            self.end_assignment(
                assignment,
                EndReason::Revoked,
                now,
                &actor.username,
                &why,
                batch,
            );
        }
        self.entitlements.remove(&id);
        batch.remove_entitlement(id);
        self.record_pool(&feature, now, batch);
        self.enforce_capacity(&feature, now, EndReason::Revoked, batch);
        let ended: Vec<LeaseId> = held
            .into_iter()
            .filter(|l| !self.ledger.leases.contains_key(l))
            .collect();
        let detail = match ended.len() {
            0 => String::new(),
            n => format!("{n} lease(s) ended"),
        };
        batch.audit(
            now,
            actor,
            Action::EntitlementRemove,
            &subject,
            Some(&feature),
            Ok(&detail),
        );
        self.next_boundary = self.compute_next_boundary(now);
        self.marks.entitlements_changed();
        Ok(EntitlementDeleted { id, ended })
    }

    /// The feature of an entitlement that may be removed, or why not.
    fn check_delete(
        &self,
        now: i64,
        actor: &Actor,
        request: &EntitlementDelete,
    ) -> Result<String, ErrorBody> {
        require_admin(actor, "remove entitlements")?;
        let id = request.id;
        let entitlement = self.entitlement(id)?;
        self.no_borrows_from(id)?;
        if request.force {
            return Ok(entitlement.feature.clone());
        }
        let feature = entitlement.feature.as_str();
        let from_assignments: Vec<&Lease> = self
            .ledger
            .leases
            .values()
            .filter(|l| l.kind == LeaseKind::Online)
            .filter(|l| match l.source {
                LeaseSource::Assignment(a) => self
                    .assignments
                    .get(&a)
                    .is_some_and(|a| a.entitlement == id),
                LeaseSource::Floating => false,
            })
            .collect();
        let capacity = self
            .capacity(feature, now)
            .saturating_sub(if is_active(entitlement, now) {
                entitlement.seats
            } else {
                0
            });
        let assigned = self
            .assigned(feature, now)
            .saturating_sub(self.assigned_from(id, now));
        let floating = capacity.saturating_sub(assigned);
        let usage = self.ledger.usage(feature);
        let over = self
            .ledger
            .newest_online(usage.total().saturating_sub(floating), |l| {
                l.feature == feature && l.source == LeaseSource::Floating
            });
        let mut ending = from_assignments;
        ending.extend(over.iter().map(|id| &self.ledger.leases[id]));
        if ending.is_empty() {
            return Ok(entitlement.feature.clone());
        }
        Err(ErrorBody::invalid(format!(
            "removing entitlement {id} ({} seat(s) of {feature}) would end {} lease(s): {}; wait until they are checked in, or remove it with --force to end them",
            entitlement.seats,
            ending.len(),
            describe_leases(&ending)
        )))
    }

    /// Changes an entitlement: its seats, start, expiry, borrowing and reference (renewals
    /// and corrections). Admins only. A change that leaves the pool too small for the
    /// floating seats in use is refused with the figures unless `force`, which ends the
    /// newest online floating leases (reason `revoked`); one below the seats assigned from
    /// the entitlement or borrowed from it, or that would end it before a borrow ends, is
    /// refused whatever `force` says.
    pub fn update_entitlement(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &EntitlementUpdate,
        batch: &mut Batch,
    ) -> Result<EntitlementUpdated, ErrorBody> {
        self.advance(now, batch);
        let subject = format!("entitlement {}", request.id);
        let feature = self
            .entitlements
            .get(&request.id)
            .map(|e| e.feature.clone());
        let checked = self.check_update(now, actor, request);
        let plan = batch.audit_refusal(
            now,
            actor,
            Action::EntitlementUpdate,
            &subject,
            feature.as_deref(),
            checked,
        )?;
        let entitlement = plan.updated;
        self.entitlements
            .insert(entitlement.id, entitlement.clone());
        batch.update_entitlement(entitlement.clone());
        self.record_pool(&entitlement.feature, now, batch);
        for &id in &plan.ends {
            self.ledger
                .end(id, EndReason::Revoked, now, &actor.username, batch);
        }
        self.next_boundary = self.compute_next_boundary(now);
        self.marks.entitlements_changed();
        let mut detail = plan.changes.join(", ");
        if !plan.ends.is_empty() {
            detail.push_str(&format!("; {} lease(s) ended", plan.ends.len()));
        }
        batch.audit(
            now,
            actor,
            Action::EntitlementUpdate,
            &subject,
            Some(&entitlement.feature),
            Ok(&detail),
        );
        Ok(EntitlementUpdated {
            entitlement,
            ended: plan.ends,
        })
    }

    /// The entitlement as the update leaves it, what changed and the leases it ends, or why
    /// it is refused.
    fn check_update(
        &self,
        now: i64,
        actor: &Actor,
        request: &EntitlementUpdate,
    ) -> Result<UpdatePlan, ErrorBody> {
        require_admin(actor, "change entitlements")?;
        request.validate().map_err(ErrorBody::invalid)?;
        let id = request.id;
        let old = self.entitlement(id)?;
        let (new, changes) = updated(old, request)?;
        if changes.is_empty() {
            return Err(ErrorBody::invalid(format!(
                "nothing to change: entitlement {id} already has what was given (--seats, --starts, --expires, --borrowable or --no-borrowable, --max-borrow, --ref)"
            )));
        }
        if let Some(end) = new.expires_at {
            if request.expires_at.is_some() && end <= now {
                return Err(ErrorBody::invalid(format!(
                    "expiry {} is in the past; to end entitlement {id} now, remove it (`tally entitlement remove {id}`)",
                    rfc3339(end)
                )));
            }
            if end <= new.starts_at {
                return Err(ErrorBody::invalid(format!(
                    "expiry {} is not after the start {}",
                    rfc3339(end),
                    rfc3339(new.starts_at)
                )));
            }
        }
        let feature = old.feature.as_str();
        let (was, will) = (is_active(old, now), is_active(&new, now));
        let assigned = self.assigned_from(id, now);
        let borrows = self.borrows_from(id);
        let borrowed_until = borrows.iter().map(|l| l.expires_at).max();
        if was && !will {
            if self.assignments.values().any(|a| a.entitlement == id) {
                return Err(ErrorBody::new(
                    ErrorCode::HasAssignments,
                    format!(
                        "entitlement {id} has seats assigned to users; its start cannot move past now until they are revoked (`tally assignments --feature {feature}` lists them)"
                    ),
                ));
            }
            if let Some(until) = borrowed_until {
                return Err(ErrorBody::new(
                    ErrorCode::Borrowed,
                    format!(
                        "seats of entitlement {id} are borrowed for offline use until {}; its start cannot move past now before they end or are returned",
                        rfc3339(until)
                    ),
                ));
            }
        }
        if will {
            let borrowed = self.borrowed_from(id);
            let floor = assigned.saturating_add(borrowed);
            if new.seats < floor {
                let (code, what) = if new.seats < assigned {
                    (
                        ErrorCode::HasAssignments,
                        format!("revoke some first (`tally assignments --feature {feature}` lists them)"),
                    )
                } else {
                    (
                        ErrorCode::Borrowed,
                        format!(
                            "shrink it after the borrows end or are returned (the last until {})",
                            rfc3339(borrowed_until.unwrap_or_default())
                        ),
                    )
                };
                return Err(ErrorBody::new(
                    code,
                    format!(
                        "entitlement {id} has {assigned} seat(s) assigned to users and {borrowed} lent out floating for offline use, so it cannot have fewer than {floor} seats, not {}; {what}",
                        new.seats
                    ),
                ));
            }
        }
        if let (Some(end), Some(until)) = (new.expires_at, borrowed_until) {
            if until > end {
                return Err(ErrorBody::new(
                    ErrorCode::Borrowed,
                    format!(
                        "seats of entitlement {id} are borrowed for offline use until {}, after the new expiry {}; a borrow never outlives its entitlement, so end it after they end or are returned",
                        rfc3339(until),
                        rfc3339(end)
                    ),
                ));
            }
        }
        let before = if was { old.seats } else { 0 };
        let after = if will { new.seats } else { 0 };
        let capacity = self
            .capacity(feature, now)
            .saturating_sub(before)
            .saturating_add(after);
        let floating = capacity.saturating_sub(self.assigned(feature, now));
        let usage = self.ledger.usage(feature);
        let excess = usage.total().saturating_sub(floating);
        let ends = self.ledger.newest_online(excess, |l| {
            l.feature == feature && l.source == LeaseSource::Floating
        });
        if usage.borrowed > floating {
            return Err(ErrorBody::new(
                ErrorCode::Borrowed,
                format!(
                    "{} floating seat(s) of {feature} are borrowed for offline use and the change leaves {floating} floating; change it after the borrows end or are returned",
                    usage.borrowed
                ),
            ));
        }
        if !ends.is_empty() && !request.force {
            let leases: Vec<&Lease> = ends.iter().map(|l| &self.ledger.leases[l]).collect();
            return Err(ErrorBody::invalid(format!(
                "with this change {feature} has {capacity} seat(s), {floating} of them floating, and {} floating seat(s) are in use ({} online, {} borrowed): it would end {} lease(s): {}; wait until they are checked in, or give --force to end them (newest first)",
                usage.total(),
                usage.online,
                usage.borrowed,
                leases.len(),
                describe_leases(&leases)
            )));
        }
        Ok(UpdatePlan {
            updated: new,
            changes,
            ends,
        })
    }

    /// The entitlement of an id, or `not_found`.
    fn entitlement(&self, id: u64) -> Result<&Entitlement, ErrorBody> {
        self.entitlements.get(&id).ok_or_else(|| {
            ErrorBody::not_found(format!(
                "no entitlement {id}; `tally entitlement list` shows them"
            ))
        })
    }

    /// The ids of the online leases of a feature.
    fn online_leases_of(&self, feature: &str) -> Vec<LeaseId> {
        self.ledger
            .leases
            .values()
            .filter(|l| l.feature == feature && l.kind == LeaseKind::Online)
            .map(|l| l.id)
            .collect()
    }

    /// Entitlements, optionally of one feature, by id.
    pub fn list_entitlements(&self, feature: Option<&str>) -> Vec<Entitlement> {
        self.entitlements
            .values()
            .filter(|e| feature.is_none_or(|f| e.feature == f))
            .cloned()
            .collect()
    }

    /// The status figures of one feature or of every feature known (SPEC §1).
    pub fn status(
        &mut self,
        now: i64,
        feature: Option<&str>,
        batch: &mut Batch,
    ) -> Result<Vec<FeatureStatus>, ErrorBody> {
        let figures = self.figures(now, feature, batch)?;
        Ok(figures.into_iter().map(|f| f.status).collect())
    }

    /// The status figures with the seats each feature's reserves keep unused (R16): what
    /// `tally status` shows.
    pub fn figures(
        &mut self,
        now: i64,
        feature: Option<&str>,
        batch: &mut Batch,
    ) -> Result<Vec<FeatureFigures>, ErrorBody> {
        self.advance(now, batch);
        let mut features: BTreeSet<&str> = self
            .entitlements
            .values()
            .map(|e| e.feature.as_str())
            .collect();
        features.extend(self.ledger.leases.values().map(|l| l.feature.as_str()));
        if let Some(wanted) = feature {
            validate_feature(wanted).map_err(ErrorBody::invalid)?;
            if !features.contains(wanted) {
                return Err(unknown_feature(wanted));
            }
            features.retain(|f| *f == wanted);
        }
        Ok(features
            .into_iter()
            .map(|feature| {
                let total = self.capacity(feature, now);
                let assigned = self.assigned(feature, now);
                let floating = total.saturating_sub(assigned);
                let mut usage = self.ledger.usage(feature);
                // Seats reserves keep for their groups are not available to others (R16).
                let reserved = self
                    .reserves(feature, floating)
                    .iter()
                    .fold(0u32, |sum, unused| sum.saturating_add(unused.seats));
                let available = floating
                    .saturating_sub(usage.total())
                    .saturating_sub(reserved);
                for assignment in self.assignments.values().filter(|a| a.feature == feature) {
                    let used = self.ledger.assignment_usage(assignment.id);
                    usage.online += used.online;
                    usage.borrowed += used.borrowed;
                }
                FeatureFigures {
                    status: FeatureStatus {
                        feature: feature.to_string(),
                        total,
                        assigned,
                        floating,
                        in_use: usage.online,
                        borrowed: usage.borrowed,
                        available,
                        queued: self.queue.queued_seats(feature),
                    },
                    reserved,
                }
            })
            .collect())
    }
}

impl Pool {
    /// Every entitlement of `feature`, active or not; `not_found` when it has none.
    pub(super) fn entitlements_of(&self, feature: &str) -> Result<Vec<&Entitlement>, ErrorBody> {
        let known: Vec<&Entitlement> = self
            .entitlements
            .values()
            .filter(|e| e.feature == feature)
            .collect();
        if known.is_empty() {
            return Err(unknown_feature(feature));
        }
        Ok(known)
    }
}

/// An update checked: the entitlement as it will be, what changes (for the audit log) and
/// the leases it ends.
struct UpdatePlan {
    updated: Entitlement,
    changes: Vec<String>,
    ends: Vec<LeaseId>,
}

/// The entitlement with the update's fields, and a phrase for each that changes.
fn updated(
    old: &Entitlement,
    request: &EntitlementUpdate,
) -> Result<(Entitlement, Vec<String>), ErrorBody> {
    let mut new = old.clone();
    let mut changes = Vec::new();
    let end = |at: Option<i64>| at.map_or_else(|| "never".to_string(), rfc3339);
    if let Some(seats) = request.seats.filter(|&s| s != old.seats) {
        changes.push(format!("seats from {} to {seats}", old.seats));
        new.seats = seats;
    }
    if let Some(starts_at) = request.starts_at.filter(|&t| t != old.starts_at) {
        changes.push(format!(
            "start from {} to {}",
            rfc3339(old.starts_at),
            rfc3339(starts_at)
        ));
        new.starts_at = starts_at;
    }
    if let Some(expires_at) = request.expires_at.filter(|&t| t != old.expires_at) {
        changes.push(format!(
            "expiry from {} to {}",
            end(old.expires_at),
            end(expires_at)
        ));
        new.expires_at = expires_at;
    }
    if let Some(borrowable) = request.borrowable.filter(|&b| b != old.borrowable) {
        changes.push(format!(
            "borrowable from {} to {borrowable}",
            old.borrowable
        ));
        new.borrowable = borrowable;
    }
    if let Some(secs) = request
        .max_borrow_secs
        .filter(|&s| s != old.max_borrow_secs)
    {
        changes.push(format!(
            "max_borrow from {}s to {secs}s",
            old.max_borrow_secs
        ));
        new.max_borrow_secs = secs;
    }
    if let Some(reference) = request.reference.as_ref().filter(|r| **r != old.reference) {
        check_reference(reference)?;
        changes.push(format!(
            "reference from {:?} to {reference:?}",
            old.reference
        ));
        new.reference = reference.clone();
    }
    Ok((new, changes))
}

/// A reference (an order number) fit to store and show: bounded, plain text.
pub(crate) fn check_reference(reference: &str) -> Result<(), ErrorBody> {
    if reference.len() > MAX_REFERENCE {
        return Err(ErrorBody::invalid(format!(
            "reference is longer than {MAX_REFERENCE} characters"
        )));
    }
    if reference.chars().any(char::is_control) {
        return Err(ErrorBody::invalid(
            "reference holds control characters (tabs, line breaks, NUL and the like); give it as plain text",
        ));
    }
    Ok(())
}

/// A feature no entitlement names.
fn unknown_feature(feature: &str) -> ErrorBody {
    ErrorBody::not_found(format!(
        "no entitlement for feature {feature}; `tally entitlement list` shows the licensed features"
    ))
}
