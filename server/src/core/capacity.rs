//! Capacity arithmetic (SPEC R1, R8, R10): how many seats a feature's pool has at an
//! instant, how many of them are assigned by name or lent out, how many float, how many are
//! free, and the next instant at which any of that changes.
//!
//! Everything here reads the pool; the one writer, [`Pool::enforce_capacity`], ends the
//! newest leases a smaller pool can no longer hold.

use tally_protocol::{EndReason, Entitlement, LeaseKind, LeaseSource, UserState};

use super::ledger::SYSTEM;
use super::{Assignment, Batch, Pool};

/// Whether an entitlement counts at `now`: started and not yet ended.
pub(super) fn is_active(entitlement: &Entitlement, now: i64) -> bool {
    entitlement.starts_at <= now && entitlement.expires_at.is_none_or(|end| now < end)
}

impl Pool {
    /// The pool of a feature at `now`: seats of its active entitlements.
    pub fn capacity(&self, feature: &str, now: i64) -> u32 {
        self.entitlements
            .values()
            .filter(|e| e.feature == feature && is_active(e, now))
            .fold(0u32, |sum, e| sum.saturating_add(e.seats))
    }

    /// Seats of a feature assigned to active users at `now`: those of its entitlements.
    pub fn assigned(&self, feature: &str, now: i64) -> u32 {
        self.entitlements
            .values()
            .filter(|e| e.feature == feature)
            .fold(0u32, |sum, e| {
                sum.saturating_add(self.assigned_from(e.id, now))
            })
    }

    /// [`assigned`](Self::assigned) by walking every assignment, for `check_invariants`.
    pub(super) fn assigned_walked(&self, feature: &str, now: i64) -> u32 {
        self.assignments
            .values()
            .filter(|a| a.feature == feature && self.assignment_active(a, now))
            .fold(0u32, |sum, a| sum.saturating_add(a.seats))
    }

    /// Adds an assignment to (or, `add` false, takes it from) `assigned_totals` and
    /// `assignment_ends`: called as one is made, changed (taken out before, added after)
    /// or removed. The seats count only while the user is active.
    pub(super) fn track_assignment(&mut self, assignment: &Assignment, add: bool) {
        if let Some(end) = assignment.expires_at {
            if add {
                self.assignment_ends.insert((end, assignment.id));
            } else {
                self.assignment_ends.remove(&(end, assignment.id));
            }
        }
        let active = self
            .users
            .get(&assignment.user)
            .is_some_and(|u| u.state == UserState::Active);
        if active {
            self.count_assigned(assignment.entitlement, assignment.seats, add);
        }
    }

    /// Counts a user's assignments in `assigned_totals` (`add`), or no longer: as they are
    /// activated and deactivated.
    pub(super) fn track_user_assignments(&mut self, username: &str, add: bool) {
        let held: Vec<(u64, u32)> = self
            .assignments
            .values()
            .filter(|a| a.user == username)
            .map(|a| (a.entitlement, a.seats))
            .collect();
        for (entitlement, seats) in held {
            self.count_assigned(entitlement, seats, add);
        }
    }

    fn count_assigned(&mut self, entitlement: u64, seats: u32, add: bool) {
        let total = self.assigned_totals.entry(entitlement).or_default();
        *total = if add {
            total.saturating_add(seats)
        } else {
            total.saturating_sub(seats)
        };
    }

    /// The floating capacity of a feature: its pool less the seats assigned to active users.
    pub fn floating_capacity(&self, feature: &str, now: i64) -> u32 {
        self.capacity(feature, now)
            .saturating_sub(self.assigned(feature, now))
    }

    /// Floating seats a new checkout could get now.
    pub fn available(&self, feature: &str, now: i64) -> u32 {
        self.floating_capacity(feature, now)
            .saturating_sub(self.ledger.usage(feature).total())
    }

    /// Whether an assignment takes seats out of the floating pool now: its user is active,
    /// its entitlement is active and it has not ended.
    pub(super) fn assignment_active(&self, assignment: &Assignment, now: i64) -> bool {
        self.users
            .get(&assignment.user)
            .is_some_and(|u| u.state == UserState::Active)
            && self
                .entitlements
                .get(&assignment.entitlement)
                .is_some_and(|e| is_active(e, now))
            && assignment.expires_at.is_none_or(|end| now < end)
    }

    /// When an assignment really ends: its own end, or its entitlement's when that comes
    /// first (R10).
    pub(super) fn assignment_end(&self, assignment: &Assignment) -> Option<i64> {
        let entitlement = self
            .entitlements
            .get(&assignment.entitlement)
            .and_then(|e| e.expires_at);
        match (assignment.expires_at, entitlement) {
            (Some(own), Some(of_entitlement)) => Some(own.min(of_entitlement)),
            (own, of_entitlement) => own.or(of_entitlement),
        }
    }

    /// Seats of an entitlement assigned to active users: none while it is not active; else
    /// its total less the assignments past their end that are not ended yet.
    pub(super) fn assigned_from(&self, entitlement: u64, now: i64) -> u32 {
        if !self
            .entitlements
            .get(&entitlement)
            .is_some_and(|e| is_active(e, now))
        {
            return 0;
        }
        let total = self.assigned_totals.get(&entitlement).copied().unwrap_or(0);
        let past_end = self
            .assignment_ends
            .range(..=(now, u64::MAX))
            .filter_map(|(_, id)| self.assignments.get(id))
            .filter(|a| a.entitlement == entitlement)
            .filter(|a| {
                self.users
                    .get(&a.user)
                    .is_some_and(|u| u.state == UserState::Active)
            })
            .fold(0u32, |sum, a| sum.saturating_add(a.seats));
        total.saturating_sub(past_end)
    }

    /// [`assigned_from`](Self::assigned_from) by walking every assignment, for
    /// `check_invariants`.
    pub(super) fn assigned_from_walked(&self, entitlement: u64, now: i64) -> u32 {
        self.assignments
            .values()
            .filter(|a| a.entitlement == entitlement && self.assignment_active(a, now))
            .fold(0u32, |sum, a| sum.saturating_add(a.seats))
    }

    /// Floating borrowed seats charged to an entitlement.
    pub(super) fn borrowed_from(&self, entitlement: u64) -> u32 {
        self.ledger
            .leases
            .values()
            .filter(|l| l.kind == LeaseKind::Borrowed && l.entitlement == Some(entitlement))
            .map(|l| l.seats)
            .sum()
    }

    /// Seats of an entitlement neither assigned to active users nor lent out floating.
    pub(super) fn unassigned(&self, entitlement: u64, now: i64) -> u32 {
        self.entitlements[&entitlement]
            .seats
            .saturating_sub(self.assigned_from(entitlement, now))
            .saturating_sub(self.borrowed_from(entitlement))
    }

    /// The next instant after `now` at which an entitlement starts or ends or an
    /// assignment ends; `i64::MAX` when there is none.
    pub(super) fn compute_next_boundary(&self, now: i64) -> i64 {
        let entitlements = self
            .entitlements
            .values()
            .flat_map(|e| [Some(e.starts_at), e.expires_at]);
        let assignments = self
            .assignment_ends
            .range((now.saturating_add(1), 0)..)
            .next()
            .map(|&(end, _)| end);
        entitlements
            .chain(std::iter::once(assignments))
            .flatten()
            .filter(|&t| t > now)
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Ends the newest floating online leases of `feature` until they fit its floating
    /// capacity.
    pub(super) fn enforce_capacity(
        &mut self,
        feature: &str,
        now: i64,
        reason: EndReason,
        batch: &mut Batch,
    ) {
        let capacity = self.floating_capacity(feature, now);
        let excess = self.ledger.usage(feature).total().saturating_sub(capacity);
        self.ledger.end_newest(
            excess,
            |l| l.feature == feature && l.source == LeaseSource::Floating,
            reason,
            now,
            SYSTEM,
            batch,
        );
    }
}
