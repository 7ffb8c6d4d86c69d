//! The pool's invariants, checked from scratch: R1 for every feature and assignment, the
//! usage counters against the leases, and the sessions against the leases they list. The
//! property tests call [`Pool::check_invariants`] after every step. With checkouts waiting
//! (R17), also that none waits while its checkout would succeed.

use std::collections::HashMap;

use tally_protocol::LeaseSource;

use super::ledger::Usage;
use super::Pool;

impl Pool {
    /// Checks R1 for every feature and assignment at `now`, and that the usage counters
    /// agree with the leases; returns a description of the first breach.
    pub fn check_invariants(&self, now: i64) -> Result<(), String> {
        for e in self.entitlements.values() {
            let (kept, walked) = (
                self.assigned_from(e.id, now),
                self.assigned_from_walked(e.id, now),
            );
            if kept != walked {
                return Err(format!(
                    "entitlement {}: {kept} seats assigned to active users by the totals kept, {walked} by the assignments",
                    e.id
                ));
            }
            let (kept, walked) = (
                self.assigned(&e.feature, now),
                self.assigned_walked(&e.feature, now),
            );
            if kept != walked {
                return Err(format!(
                    "{}: {kept} seats assigned to active users by the totals kept, {walked} by the assignments",
                    e.feature
                ));
            }
        }
        let active = self.count_active_users();
        if active != self.active_users {
            return Err(format!(
                "{active} active users other than the owner, but the count kept says {}",
                self.active_users
            ));
        }
        let listed = self.ledger.by_grant.len() == self.ledger.leases.len()
            && self.ledger.by_grant.iter().all(|(granted, id)| {
                self.ledger
                    .leases
                    .get(id)
                    .is_some_and(|l| l.granted_at == granted.0)
            });
        if !listed {
            return Err(format!(
                "{} leases, but the listing order holds {} entries, not one for each",
                self.ledger.leases.len(),
                self.ledger.by_grant.len()
            ));
        }
        let mut floating: HashMap<&str, Usage> = HashMap::new();
        let mut assigned: HashMap<u64, Usage> = HashMap::new();
        for lease in self.ledger.leases.values() {
            let usage = match lease.source {
                LeaseSource::Floating => floating.entry(lease.feature.as_str()).or_default(),
                LeaseSource::Assignment(id) => assigned.entry(id).or_default(),
            };
            usage.take(lease.kind, lease.seats);
        }
        for (feature, usage) in &floating {
            let cached = self.ledger.usage(feature);
            if (cached.online, cached.borrowed) != (usage.online, usage.borrowed) {
                return Err(format!(
                    "usage counters of {feature} disagree with the leases"
                ));
            }
            let capacity = self.floating_capacity(feature, now);
            if usage.online + usage.borrowed > capacity {
                return Err(format!(
                    "R1: {feature} has {} floating seats out of a floating capacity of {capacity}",
                    usage.online + usage.borrowed
                ));
            }
        }
        for (id, usage) in &assigned {
            let cached = self.ledger.assignment_usage(*id);
            if (cached.online, cached.borrowed) != (usage.online, usage.borrowed) {
                return Err(format!(
                    "usage counters of assignment {id} disagree with the leases"
                ));
            }
            let Some(assignment) = self.assignments.get(id) else {
                return Err(format!("leases draw from assignment {id}, which is gone"));
            };
            if usage.online + usage.borrowed > assignment.seats {
                return Err(format!(
                    "R1: assignment {id} has {} seats leased out of {}",
                    usage.online + usage.borrowed,
                    assignment.seats
                ));
            }
            if !self.assignment_active(assignment, now) {
                return Err(format!(
                    "leases draw from assignment {id}, which is not active"
                ));
            }
        }
        for entitlement in self.entitlements.values() {
            let assigned =
                self.assigned_from(entitlement.id, now) + self.borrowed_from(entitlement.id);
            if assigned > entitlement.seats {
                return Err(format!(
                    "entitlement {} has {assigned} seats assigned or borrowed floating out of {}",
                    entitlement.id, entitlement.seats
                ));
            }
        }
        for lease in self.ledger.leases.values() {
            let Some(with) = lease.taken_with else {
                continue;
            };
            let linked = self
                .ledger
                .taken
                .get(&with)
                .is_some_and(|set| set.contains(&lease.id));
            match self.ledger.leases.get(&with) {
                Some(taker) if taker.client == lease.client && linked => {}
                _ => {
                    return Err(format!(
                        "R18: lease {} of {} was taken with lease {with}, which its client instance no longer holds",
                        lease.id, lease.feature
                    ))
                }
            }
        }
        for (client, session) in &self.ledger.sessions {
            for id in &session.leases {
                match self.ledger.leases.get(id) {
                    Some(lease) if lease.client == *client => {}
                    _ => {
                        return Err(format!(
                            "session {client} lists lease {id} it does not hold"
                        ))
                    }
                }
            }
        }
        self.check_queue(now)
    }
}
