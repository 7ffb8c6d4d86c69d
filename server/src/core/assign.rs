//! Assigning seats to users by name (SPEC R8), revoking them (R7), listing them, and the
//! end of an assignment (its own end, or its entitlement's).

use tally_protocol::{
    validate_feature, Assign, AssignmentChange, AssignmentEntry, AssignmentInfo, AssignmentsPage,
    AssignmentsQuery, EntitlementKind, ErrorBody, ErrorCode, LeaseKind, LeaseSource, Revoke,
    UserState,
};

use super::capacity::is_active;
use super::checks::{check_request, require_admin, username};
use super::{
    rfc3339, Action, Actor, Assignment, AuditEvent, AuditOutcome, Batch, EndReason,
    NotificationKind, Pool,
};

/// Where the seats of an assignment come from.
enum Donor {
    /// Unassigned floating seats of this entitlement.
    Floating(u64),
    /// Seats of another user's assignment, moved atomically.
    Assignment(u64),
}

impl Pool {
    /// Assigns seats to a user: from the floating pool (which needs that many `available`),
    /// or moved from another user's assignment with `from`. Admins only.
    pub fn assign(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &Assign,
        batch: &mut Batch,
    ) -> Result<AssignmentInfo, ErrorBody> {
        self.assign_moving(now, actor, request, batch)
            .map(|(assignment, _)| assignment)
    }

    /// [`assign`](Self::assign), answered with what it changed: the user's assignment, the
    /// other user's with `from`, and every assignment of the user after it.
    pub fn assign_with_totals(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &Assign,
        batch: &mut Batch,
    ) -> Result<AssignmentChange, ErrorBody> {
        let (assignment, donor) = self.assign_moving(now, actor, request, batch)?;
        let user = assignment.user.clone();
        let mut touched = vec![assignment];
        touched.extend(donor.map(|before| self.assignment_now(&before)));
        Ok(AssignmentChange {
            seats: request.seats,
            touched,
            assignments: self.assignments_of(&user),
        })
    }

    /// Assigns, and says which assignment the seats were moved from (as it was before).
    fn assign_moving(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &Assign,
        batch: &mut Batch,
    ) -> Result<(AssignmentInfo, Option<Assignment>), ErrorBody> {
        self.advance(now, batch);
        let user = username(&request.username);
        let from = request.from.as_deref().map(username);
        let checked = self.check_assign(now, actor, &user, from.as_deref(), request);
        let feature = Some(request.feature.as_str());
        let donor = batch.audit_refusal(now, actor, Action::Assign, &user, feature, checked)?;
        let mut moved_from = None;
        let entitlement = match donor {
            Donor::Floating(entitlement) => entitlement,
            Donor::Assignment(id) => {
                let donor = self.take_seats(id, request.seats, now, &actor.username, batch);
                moved_from = Some(donor.clone());
                let detail = format!(
                    "{} seat(s) of {} moved to {user}",
                    request.seats, donor.feature
                );
                batch.audit(
                    now,
                    actor,
                    Action::Revoke,
                    &donor.user,
                    Some(&donor.feature),
                    Ok(&detail),
                );
                batch.notify(
                    now,
                    NotificationKind::AssignmentChanged,
                    &donor.user,
                    Some(&donor.feature),
                    &format!(
                        "{} seat(s) of {} moved to {user}",
                        request.seats, donor.feature
                    ),
                );
                donor.entitlement
            }
        };
        let merged = self
            .assignments
            .values()
            .find(|a| {
                a.user == user && a.entitlement == entitlement && a.expires_at == request.expires_at
            })
            .map(|a| a.id);
        let assignment = match merged {
            Some(id) => {
                let before = self.assignments[&id].clone();
                self.track_assignment(&before, false);
                let existing = self.assignments.get_mut(&id).expect("assignment exists");
                existing.seats += request.seats;
                let after = existing.clone();
                self.track_assignment(&after, true);
                after
            }
            None => {
                let id = self.next_assignment_id;
                self.next_assignment_id += 1;
                batch.next_assignment_id = Some(self.next_assignment_id);
                let assignment = Assignment {
                    id,
                    user: user.clone(),
                    feature: request.feature.clone(),
                    entitlement,
                    seats: request.seats,
                    expires_at: request.expires_at,
                    created_at: now,
                };
                self.track_assignment(&assignment, true);
                self.assignments.insert(id, assignment.clone());
                assignment
            }
        };
        batch.upsert_assignment(assignment.clone());
        self.next_boundary = self.compute_next_boundary(now);
        let detail = match &from {
            Some(from) => format!(
                "{} seat(s) from {from}, entitlement {entitlement}",
                request.seats
            ),
            None => format!("{} seat(s), entitlement {entitlement}", request.seats),
        };
        batch.audit(
            now,
            actor,
            Action::Assign,
            &user,
            Some(&request.feature),
            Ok(&detail),
        );
        let text = match &from {
            Some(from) => format!(
                "{} seat(s) of {} moved from {from} to {user}",
                request.seats, request.feature
            ),
            None => format!(
                "{} seat(s) of {} assigned to {user} (entitlement {entitlement})",
                request.seats, request.feature
            ),
        };
        batch.notify(
            now,
            NotificationKind::AssignmentChanged,
            &user,
            Some(&request.feature),
            &text,
        );
        Ok((self.assignment_info(&assignment), moved_from))
    }

    /// One page of the assignments, by id, after `query.after`, at most `limit`: admins see
    /// everyone's, members and guests their own (naming another user is `forbidden`). An
    /// unknown user or feature is `not_found`.
    pub fn assignments_page(
        &mut self,
        now: i64,
        actor: &Actor,
        query: &AssignmentsQuery,
        limit: usize,
        batch: &mut Batch,
    ) -> Result<AssignmentsPage, ErrorBody> {
        self.advance(now, batch);
        let checked = self.check_assignments_query(actor, query);
        let subject = query
            .user
            .as_deref()
            .map_or_else(|| "assignments".to_string(), username);
        let feature = query.feature.as_deref();
        let user =
            batch.audit_refusal(now, actor, Action::Assignments, &subject, feature, checked)?;
        let after = query.after.map_or(0, |id| id.saturating_add(1));
        let mut selected = self
            .assignments
            .range(after..)
            .map(|(_, a)| a)
            .filter(|a| user.as_deref().is_none_or(|u| a.user == u))
            .filter(|a| feature.is_none_or(|f| a.feature == f));
        let limit = limit.max(1);
        let page: Vec<AssignmentEntry> = selected
            .by_ref()
            .take(limit)
            .map(|a| {
                let usage = self.ledger.assignment_usage(a.id);
                AssignmentEntry {
                    assignment: self.assignment_info(a),
                    suspended: self
                        .users
                        .get(&a.user)
                        .is_none_or(|u| u.state != UserState::Active),
                    in_use: usage.online,
                    borrowed: usage.borrowed,
                }
            })
            .collect();
        let next = match page.last() {
            Some(last) if selected.next().is_some() => Some(last.assignment.id),
            _ => None,
        };
        Ok(AssignmentsPage {
            assignments: page,
            next,
        })
    }

    /// Whose assignments a listing may show (`None`: everyone's), or why not.
    fn check_assignments_query(
        &self,
        actor: &Actor,
        query: &AssignmentsQuery,
    ) -> Result<Option<String>, ErrorBody> {
        query.validate().map_err(ErrorBody::invalid)?;
        if let Some(feature) = &query.feature {
            validate_feature(feature).map_err(ErrorBody::invalid)?;
        }
        let user = query.user.as_deref().map(username);
        if !actor.role.is_admin() {
            if user.as_ref().is_some_and(|u| *u != actor.username) {
                return Err(ErrorBody::new(
                    ErrorCode::Forbidden,
                    format!(
                        "only an admin may list other users' assignments; {} is a {} and sees their own (leave out --user)",
                        actor.username,
                        actor.role.as_str()
                    ),
                ));
            }
            return Ok(Some(actor.username.clone()));
        }
        if let Some(user) = &user {
            self.existing(user)?;
        }
        if let Some(feature) = &query.feature {
            self.entitlements_of(feature)?;
        }
        Ok(user)
    }

    /// An assignment as it is now, from what it was: with 0 seats once it has ended.
    fn assignment_now(&self, before: &Assignment) -> AssignmentInfo {
        match self.assignments.get(&before.id) {
            Some(now) => self.assignment_info(now),
            None => AssignmentInfo {
                seats: 0,
                ..self.assignment_info(before)
            },
        }
    }

    fn check_assign(
        &self,
        now: i64,
        actor: &Actor,
        user: &str,
        from: Option<&str>,
        request: &Assign,
    ) -> Result<Donor, ErrorBody> {
        require_admin(actor, "assign seats")?;
        check_request(request)?;
        let feature = request.feature.as_str();
        self.existing(user)?;
        if self.users[user].state == UserState::Deactivated {
            return Err(ErrorBody::invalid(format!(
                "{user} is deactivated; activate them before assigning seats"
            )));
        }
        if let Some(id) = request.entitlement {
            let Some(entitlement) = self.entitlements.get(&id) else {
                return Err(ErrorBody::not_found(format!(
                    "no entitlement {id}; `tally entitlement list` shows them"
                )));
            };
            if entitlement.feature != feature {
                return Err(ErrorBody::invalid(format!(
                    "entitlement {id} is for {}, not {feature}",
                    entitlement.feature
                )));
            }
            if !is_active(entitlement, now) {
                return Err(ErrorBody::invalid(format!(
                    "entitlement {id} is not active now (from {} until {})",
                    rfc3339(entitlement.starts_at),
                    entitlement.expires_at.map_or("never".into(), rfc3339)
                )));
            }
        }
        if let Some(expires_at) = request.expires_at {
            if expires_at <= now {
                return Err(ErrorBody::invalid(format!(
                    "expiry {} is in the past",
                    rfc3339(expires_at)
                )));
            }
        }
        self.check_assign_prerequisites(user, feature)?;
        let donor = match from {
            None => self.floating_donor(now, user, request)?,
            Some(from) => self.assignment_donor(now, user, from, request)?,
        };
        let entitlement = match donor {
            Donor::Floating(id) => id,
            Donor::Assignment(id) => self.assignments[&id].entitlement,
        };
        if let (Some(expires_at), Some(end)) = (
            request.expires_at,
            self.entitlements[&entitlement].expires_at,
        ) {
            if expires_at > end {
                return Err(ErrorBody::invalid(format!(
                    "expiry {} is after the end of entitlement {entitlement} ({})",
                    rfc3339(expires_at),
                    rfc3339(end)
                )));
            }
        }
        Ok(donor)
    }

    /// Unassigned floating seats: that many must be `available`, from the named
    /// entitlement or the active one expiring last that has room.
    fn floating_donor(&self, now: i64, user: &str, request: &Assign) -> Result<Donor, ErrorBody> {
        let feature = request.feature.as_str();
        self.entitlements_of(feature)?;
        let available = self.available(feature, now);
        if request.seats > available {
            return Err(ErrorBody::new(
                ErrorCode::NoSeat,
                format!(
                    "only {available} floating seat(s) of {feature} are free, {} asked for; take them from a user with `tally assign {user} {feature} --from EMAIL`",
                    request.seats
                ),
            ));
        }
        let room = |id: u64| self.unassigned(id, now);
        match request.entitlement {
            Some(id) if room(id) >= request.seats => Ok(Donor::Floating(id)),
            Some(id) => Err(ErrorBody::new(
                ErrorCode::NoSeat,
                format!("entitlement {id} has only {} unassigned seat(s), {} asked for", room(id), request.seats),
            )),
            None => self
                .entitlements
                .values()
                .filter(|e| e.feature == feature && is_active(e, now) && room(e.id) >= request.seats)
                .max_by_key(|e| (e.expires_at.unwrap_or(i64::MAX), std::cmp::Reverse(e.id)))
                .map(|e| Donor::Floating(e.id))
                .ok_or_else(|| {
                    ErrorBody::new(
                        ErrorCode::NoSeat,
                        format!(
                            "no active entitlement of {feature} has {} unassigned seat(s); name one with --entitlement or assign fewer",
                            request.seats
                        ),
                    )
                }),
        }
    }

    /// Seats moved from another user's assignment: one assignment of theirs must hold
    /// them, not borrowed and not from a trial.
    fn assignment_donor(
        &self,
        now: i64,
        user: &str,
        from: &str,
        request: &Assign,
    ) -> Result<Donor, ErrorBody> {
        let feature = request.feature.as_str();
        self.existing(from)?;
        if from == user {
            return Err(ErrorBody::invalid(format!(
                "{user} cannot take seats from themselves"
            )));
        }
        let theirs: Vec<&Assignment> = self
            .assignments
            .values()
            .filter(|a| a.user == from && a.feature == feature && self.assignment_active(a, now))
            .filter(|a| request.entitlement.is_none_or(|id| a.entitlement == id))
            .collect();
        if theirs.is_empty() {
            return Err(ErrorBody::not_found(format!(
                "{from} has no active assignment of {feature} to take seats from"
            )));
        }
        if let Some(trial) = theirs.iter().find(|a| self.is_trial(a.entitlement)) {
            return Err(ErrorBody::new(
                ErrorCode::TrialLocked,
                format!(
                    "{from}'s seats of {feature} come from trial entitlement {}; assignments from a trial cannot be moved",
                    trial.entitlement
                ),
            ));
        }
        let donor = theirs
            .iter()
            .filter(|a| a.seats >= request.seats)
            .max_by_key(|a| (a.expires_at.unwrap_or(i64::MAX), a.id))
            .ok_or_else(|| {
                ErrorBody::invalid(format!(
                    "no single assignment of {from} holds {} seat(s) of {feature} (they have {}); assign fewer",
                    request.seats,
                    theirs.iter().map(|a| a.seats.to_string()).collect::<Vec<_>>().join(" and ")
                ))
            })?;
        let borrowed = self.ledger.assignment_usage(donor.id).borrowed;
        if donor.seats - request.seats < borrowed {
            return Err(self.borrowed_refusal(from, feature, donor.id, borrowed, "move them"));
        }
        // Moving away the last of their seats of a prerequisite (R18) is a revoke of it.
        let left: u32 = self
            .assignments
            .values()
            .filter(|a| a.user == from && a.feature == feature)
            .map(|a| a.seats)
            .sum::<u32>()
            - request.seats;
        if left == 0 {
            self.check_revoke_prerequisites(from, feature)?;
        }
        Ok(Donor::Assignment(donor.id))
    }

    /// Revokes some or all seats of a user's assignments of a feature, newest assignment
    /// first. Online leases on revoked seats end (reason `revoked`). Admins only.
    pub fn revoke(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &Revoke,
        batch: &mut Batch,
    ) -> Result<u32, ErrorBody> {
        self.revoke_taking(now, actor, request, batch)
            .map(|(revoked, _)| revoked)
    }

    /// [`revoke`](Self::revoke), answered with what it changed: the assignments it took
    /// seats from, and every assignment of the user after it.
    pub fn revoke_with_totals(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &Revoke,
        batch: &mut Batch,
    ) -> Result<AssignmentChange, ErrorBody> {
        let (revoked, taken) = self.revoke_taking(now, actor, request, batch)?;
        Ok(AssignmentChange {
            seats: revoked,
            touched: taken.iter().map(|a| self.assignment_now(a)).collect(),
            assignments: self.assignments_of(&username(&request.username)),
        })
    }

    /// Revokes, and says which assignments lost seats (as they were before).
    fn revoke_taking(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &Revoke,
        batch: &mut Batch,
    ) -> Result<(u32, Vec<Assignment>), ErrorBody> {
        self.advance(now, batch);
        let user = username(&request.username);
        let checked = self.check_revoke(actor, &user, request);
        let feature = Some(request.feature.as_str());
        let plan = batch.audit_refusal(now, actor, Action::Revoke, &user, feature, checked)?;
        let mut revoked = 0;
        let mut taken = Vec::new();
        for (id, take) in plan {
            taken.push(self.take_seats(id, take, now, &actor.username, batch));
            revoked += take;
        }
        self.next_boundary = self.compute_next_boundary(now);
        let detail = format!("{revoked} seat(s) of {}", request.feature);
        batch.audit(
            now,
            actor,
            Action::Revoke,
            &user,
            Some(&request.feature),
            Ok(&detail),
        );
        batch.notify(
            now,
            NotificationKind::AssignmentChanged,
            &user,
            Some(&request.feature),
            &format!(
                "{revoked} seat(s) of {} revoked from {user}",
                request.feature
            ),
        );
        Ok((revoked, taken))
    }

    /// Which assignments lose how many seats, or why none may.
    fn check_revoke(
        &self,
        actor: &Actor,
        user: &str,
        request: &Revoke,
    ) -> Result<Vec<(u64, u32)>, ErrorBody> {
        require_admin(actor, "revoke seats")?;
        check_request(request)?;
        let feature = request.feature.as_str();
        self.existing(user)?;
        let mut theirs: Vec<&Assignment> = self
            .assignments
            .values()
            .filter(|a| a.user == user && a.feature == feature)
            .collect();
        if theirs.is_empty() {
            return Err(ErrorBody::not_found(format!(
                "{user} has no seats of {feature} assigned"
            )));
        }
        theirs.sort_by_key(|a| std::cmp::Reverse(a.id));
        let total: u32 = theirs.iter().map(|a| a.seats).sum();
        let wanted = request.seats.unwrap_or(total);
        if wanted == 0 || wanted > total {
            return Err(ErrorBody::invalid(format!(
                "{user} has {total} seat(s) of {feature} assigned; cannot revoke {wanted}"
            )));
        }
        if wanted == total {
            self.check_revoke_prerequisites(user, feature)?;
        }
        let mut plan = Vec::new();
        let mut left = wanted;
        for assignment in theirs {
            if left == 0 {
                break;
            }
            let take = left.min(assignment.seats);
            if self.is_trial(assignment.entitlement) {
                return Err(ErrorBody::new(
                    ErrorCode::TrialLocked,
                    format!(
                        "{user}'s seats of {feature} come from trial entitlement {}; assignments from a trial cannot be revoked",
                        assignment.entitlement
                    ),
                ));
            }
            let borrowed = self.ledger.assignment_usage(assignment.id).borrowed;
            if assignment.seats - take < borrowed {
                return Err(self.borrowed_refusal(
                    user,
                    feature,
                    assignment.id,
                    borrowed,
                    "revoke",
                ));
            }
            plan.push((assignment.id, take));
            left -= take;
        }
        Ok(plan)
    }

    /// Takes `seats` seats away from an assignment (removing it when none are left), ending
    /// the newest online leases that no longer fit; returns what the assignment was.
    fn take_seats(
        &mut self,
        id: u64,
        seats: u32,
        now: i64,
        actor: &str,
        batch: &mut Batch,
    ) -> Assignment {
        let before = self.assignments[&id].clone();
        let left = before.seats - seats;
        self.shrink_assignment_leases(id, left, EndReason::Revoked, now, actor, batch);
        self.track_assignment(&before, false);
        if left == 0 {
            self.assignments.remove(&id);
            batch.remove_assignment(id);
        } else {
            let assignment = self.assignments.get_mut(&id).expect("assignment exists");
            assignment.seats = left;
            let after = assignment.clone();
            self.track_assignment(&after, true);
            batch.upsert_assignment(after);
        }
        before
    }

    /// Ends the newest online leases drawn from an assignment until they fit in `seats`.
    fn shrink_assignment_leases(
        &mut self,
        id: u64,
        seats: u32,
        reason: EndReason,
        now: i64,
        actor: &str,
        batch: &mut Batch,
    ) {
        let excess = self
            .ledger
            .assignment_usage(id)
            .total()
            .saturating_sub(seats);
        let source = LeaseSource::Assignment(id);
        self.ledger
            .end_newest(excess, |l| l.source == source, reason, now, actor, batch);
    }

    /// Removes an assignment, ending the online leases drawn from it.
    pub(super) fn end_assignment(
        &mut self,
        id: u64,
        reason: EndReason,
        now: i64,
        actor: &str,
        why: &str,
        batch: &mut Batch,
    ) {
        self.shrink_assignment_leases(id, 0, reason, now, actor, batch);
        let Some(assignment) = self.assignments.remove(&id) else {
            return;
        };
        self.track_assignment(&assignment, false);
        batch.remove_assignment(id);
        let detail = format!(
            "{} seats of {} for {} ({why})",
            assignment.seats, assignment.feature, assignment.user
        );
        batch.audit_raw(AuditEvent {
            at: now,
            actor: actor.to_string(),
            action: Action::AssignmentEnd.as_str().to_string(),
            subject: assignment.user.clone(),
            feature: Some(assignment.feature.clone()),
            outcome: AuditOutcome::Ok.as_str().to_string(),
            reason: detail.clone(),
        });
        batch.notify(
            now,
            NotificationKind::AssignmentChanged,
            &assignment.user,
            Some(&assignment.feature),
            &format!(
                "the assignment of {} seat(s) of {} to {} ended ({why})",
                assignment.seats, assignment.feature, assignment.user
            ),
        );
    }

    fn is_trial(&self, entitlement: u64) -> bool {
        self.entitlements
            .get(&entitlement)
            .is_some_and(|e| e.kind == EntitlementKind::Trial)
    }

    /// R7's message: "USER has borrowed N seat(s) of FEATURE for offline use until TIME; ...".
    fn borrowed_refusal(
        &self,
        user: &str,
        feature: &str,
        assignment: u64,
        seats: u32,
        what: &str,
    ) -> ErrorBody {
        let until = self
            .ledger
            .leases
            .values()
            .filter(|l| {
                l.source == LeaseSource::Assignment(assignment) && l.kind == LeaseKind::Borrowed
            })
            .map(|l| l.expires_at)
            .max()
            .unwrap_or_default();
        ErrorBody::new(
            ErrorCode::Borrowed,
            format!(
                "{user} has borrowed {seats} seat(s) of {feature} for offline use until {}; {what} after the borrow ends or is returned",
                rfc3339(until)
            ),
        )
    }
}
