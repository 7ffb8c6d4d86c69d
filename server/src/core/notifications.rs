//! The notifications that time and refusals produce (SPEC R20): an entitlement expiring in
//! 14 days and in 1 day, an entitlement expired, and a feature's pool exhausted (at most
//! one an hour a feature). Each is queued in the batch of the change that caused it (the
//! `advance` that crossed the instant, the refused checkout) together with a mark that
//! keeps it from repeating after a restart or a failover: how far entitlements' expiry has
//! been looked at, and when each feature last sent `pool_exhausted`.
//!
//! The notifications that follow a request (`assignment_changed`, `user_removed`,
//! `user_limit_exceeded`) are queued by that request's module; `leader_changed` by the
//! engine when a node takes over.

use std::collections::{BTreeMap, HashMap};

use tally_protocol::{ErrorBody, ErrorCode};

use super::{rfc3339, Batch, NotificationKind, Pool};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// How long before its end an entitlement is announced as expiring, and how people read it.
pub const EXPIRING_BEFORE: [(i64, &str); 2] = [(14 * DAY, "14 days"), (DAY, "1 day")];

/// At most one `pool_exhausted` a feature in this long.
pub const EXHAUSTED_EVERY: i64 = HOUR;

/// The mark of how far entitlements' expiry has been looked at.
const EXPIRY_MARK: &str = "expiry_through";
/// The prefix of each feature's last `pool_exhausted` mark.
const EXHAUSTED_MARK: &str = "pool_exhausted:";

/// What keeps time-driven notifications from repeating.
#[derive(Debug, Clone)]
pub(super) struct Marks {
    /// Every expiry instant (an end, or 14 days or 1 day before it) at or before this has
    /// been notified; `None` on a store that never looked (nothing before the first look is
    /// announced: it is not news).
    expiry_through: Option<i64>,
    /// The first expiry instant after `expiry_through`: nothing to look at before it.
    /// `i64::MIN` when the entitlements changed and it must be found again.
    next_expiry: i64,
    /// When each feature last sent `pool_exhausted`.
    exhausted: HashMap<String, i64>,
}

impl Default for Marks {
    fn default() -> Self {
        Marks {
            expiry_through: None,
            next_expiry: i64::MIN,
            exhausted: HashMap::new(),
        }
    }
}

impl Marks {
    /// The marks a store kept.
    pub(super) fn restore(stored: &BTreeMap<String, i64>) -> Marks {
        Marks {
            expiry_through: stored.get(EXPIRY_MARK).copied(),
            next_expiry: i64::MIN,
            exhausted: stored
                .iter()
                .filter_map(|(key, at)| Some((key.strip_prefix(EXHAUSTED_MARK)?.to_string(), *at)))
                .collect(),
        }
    }

    /// The marks as a store keeps them.
    pub(super) fn stored(&self) -> BTreeMap<String, i64> {
        let mut stored: BTreeMap<String, i64> = self
            .exhausted
            .iter()
            .map(|(feature, at)| (format!("{EXHAUSTED_MARK}{feature}"), *at))
            .collect();
        if let Some(through) = self.expiry_through {
            stored.insert(EXPIRY_MARK.to_string(), through);
        }
        stored
    }

    /// The entitlements changed: their expiry instants are looked at again on the next
    /// `advance`.
    pub(super) fn entitlements_changed(&mut self) {
        self.next_expiry = i64::MIN;
    }
}

impl Pool {
    /// Queues `entitlement_expiring` and `entitlement_expired` for every instant passed
    /// since the last look; O(1) until the next such instant.
    pub(super) fn notify_expiry(&mut self, now: i64, batch: &mut Batch) {
        if now < self.marks.next_expiry {
            return;
        }
        if let Some(through) = self.marks.expiry_through {
            for e in self.entitlements.values() {
                let Some(end) = e.expires_at else { continue };
                let what = format!(
                    "{} seat(s) of {} (entitlement {}{})",
                    e.seats,
                    e.feature,
                    e.id,
                    if e.reference.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", e.reference)
                    }
                );
                let subject = format!("entitlement {}", e.id);
                for (before, label) in EXPIRING_BEFORE {
                    let at = end.saturating_sub(before);
                    // Once it has ended, that is the news.
                    if through < at && at <= now && now < end {
                        batch.notify(
                            now,
                            NotificationKind::EntitlementExpiring,
                            &subject,
                            Some(&e.feature),
                            &format!("{what} expire in {label}, at {}", rfc3339(end)),
                        );
                    }
                }
                if through < end && end <= now {
                    batch.notify(
                        now,
                        NotificationKind::EntitlementExpired,
                        &subject,
                        Some(&e.feature),
                        &format!("{what} expired at {}", rfc3339(end)),
                    );
                }
            }
        }
        self.marks.expiry_through = Some(now);
        batch.mark(EXPIRY_MARK, now);
        self.marks.next_expiry = self
            .entitlements
            .values()
            .filter_map(|e| e.expires_at)
            .flat_map(|end| {
                EXPIRING_BEFORE
                    .iter()
                    .map(move |(before, _)| end.saturating_sub(*before))
                    .chain([end])
            })
            .filter(|at| *at > now)
            .min()
            .unwrap_or(i64::MAX);
    }

    /// After a checkout or borrow of `feature` was refused: `pool_exhausted` when it was for
    /// lack of seats, unless the feature sent one within the hour.
    pub(super) fn notify_refusal(
        &mut self,
        now: i64,
        feature: &str,
        user: &str,
        refusal: &ErrorBody,
        batch: &mut Batch,
    ) {
        if refusal.code != ErrorCode::NoSeat {
            return;
        }
        if let Some(last) = self.marks.exhausted.get(feature) {
            if now.saturating_sub(*last) < EXHAUSTED_EVERY {
                return;
            }
        }
        self.marks.exhausted.insert(feature.to_string(), now);
        batch.mark(&format!("{EXHAUSTED_MARK}{feature}"), now);
        batch.notify(
            now,
            NotificationKind::PoolExhausted,
            feature,
            Some(feature),
            &format!(
                "{feature} refused {user} for lack of seats: {}",
                refusal.message
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use tally_protocol::{
        Checkout, EntitlementKind, EntitlementUpdate, NewEntitlement, RequestId, Role,
    };

    use super::*;
    use crate::core::{Actor, Holder, Policy, Snapshot};

    const T0: i64 = 1_800_000_000_000;

    fn owner() -> Actor {
        Actor {
            username: "owner@studio.com".into(),
            role: Role::Owner,
        }
    }

    fn kinds(batch: &Batch) -> Vec<(String, String)> {
        batch
            .notifications
            .iter()
            .map(|n| (n.kind.clone(), n.text.clone()))
            .collect()
    }

    fn pool_with(expires_at: i64) -> Pool {
        // Leases live for two days without a heartbeat: none lapses under these tests.
        let mut pool = Pool::new(2 * DAY, Policy::default());
        let mut batch = Batch::default();
        pool.add_entitlement(
            T0,
            &owner(),
            &NewEntitlement {
                feature: "vray".into(),
                seats: 2,
                starts_at: None,
                expires_at: Some(expires_at),
                kind: EntitlementKind::Standard,
                borrowable: false,
                max_borrow_secs: None,
                reference: "PO-7".into(),
            },
            &mut batch,
        )
        .unwrap();
        pool
    }

    #[test]
    fn an_entitlement_is_announced_14_days_and_1_day_before_and_when_it_ends_once_each() {
        let end = T0 + 30 * DAY;
        let mut pool = pool_with(end);
        let mut seen = Vec::new();
        // Every hour for 31 days: each instant is announced once, at the first look past it.
        let mut now = T0;
        while now <= end + DAY {
            let mut batch = Batch::default();
            pool.advance(now, &mut batch);
            for (kind, text) in kinds(&batch) {
                seen.push((now, kind, text));
            }
            now += HOUR;
        }
        let at: Vec<(i64, &str)> = seen.iter().map(|(t, k, _)| (*t, k.as_str())).collect();
        assert_eq!(
            at,
            [
                (end - 14 * DAY, "entitlement_expiring"),
                (end - DAY, "entitlement_expiring"),
                (end, "entitlement_expired"),
            ]
        );
        assert!(seen[0].2.contains("expire in 14 days"), "{}", seen[0].2);
        assert!(seen[0].2.contains("entitlement 1, PO-7"), "{}", seen[0].2);
        assert!(seen[1].2.contains("expire in 1 day"), "{}", seen[1].2);
        assert!(seen[2].2.contains("expired at"), "{}", seen[2].2);
    }

    #[test]
    fn instants_passed_while_down_are_announced_after_a_restart_and_never_twice() {
        let end = T0 + 20 * DAY;
        let mut pool = pool_with(end);
        let mut store = Snapshot::default();
        let mut batch = Batch::default();
        pool.advance(T0, &mut batch);
        store.apply(&batch);
        store.entitlements = pool.snapshot().entitlements;
        assert!(
            batch.notifications.is_empty(),
            "nothing is news at the first look"
        );
        // Down from T0 until after the 14-day instant: announced once on the way up.
        let later = end - 10 * DAY;
        let mut pool = Pool::restore(store.clone(), 60_000, Policy::default(), later);
        let mut batch = Batch::default();
        pool.advance(later, &mut batch);
        assert_eq!(kinds(&batch).len(), 1, "{:?}", kinds(&batch));
        store.apply(&batch);
        // Restarted again at once: the mark holds.
        let mut pool = Pool::restore(store.clone(), 60_000, Policy::default(), later);
        let mut batch = Batch::default();
        pool.advance(later + 1, &mut batch);
        assert!(batch.notifications.is_empty(), "{:?}", kinds(&batch));
        // Down past the end: the end is the news, not the 1-day warning.
        let mut pool = Pool::restore(store, 60_000, Policy::default(), end + DAY);
        let mut batch = Batch::default();
        pool.advance(end + DAY, &mut batch);
        let got: Vec<String> = kinds(&batch).into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, ["entitlement_expired"]);
    }

    #[test]
    fn a_renewal_moves_the_announcements() {
        let end = T0 + 20 * DAY;
        let mut pool = pool_with(end);
        let mut batch = Batch::default();
        pool.advance(T0, &mut batch);
        let renewed = end + 60 * DAY;
        pool.update_entitlement(
            T0 + HOUR,
            &owner(),
            &EntitlementUpdate {
                id: 1,
                seats: None,
                starts_at: None,
                expires_at: Some(Some(renewed)),
                borrowable: None,
                max_borrow_secs: None,
                reference: None,
                force: false,
            },
            &mut Batch::default(),
        )
        .unwrap();
        let mut batch = Batch::default();
        pool.advance(end + DAY, &mut batch);
        assert!(batch.notifications.is_empty(), "{:?}", kinds(&batch));
        let mut batch = Batch::default();
        pool.advance(renewed - 14 * DAY, &mut batch);
        assert_eq!(kinds(&batch).len(), 1);
    }

    #[test]
    fn pool_exhausted_at_most_once_an_hour_a_feature() {
        let mut pool = pool_with(T0 + 365 * DAY);
        let mut batch = Batch::default();
        let admin = owner();
        let holder = Holder {
            client: tally_protocol::ClientId([1; 16]),
            host: "ws1".into(),
            peer: crate::core::Peer {
                program: "maya".into(),
                pid: 1,
                address: "10.0.0.1".into(),
            },
        };
        let mut n = 0u128;
        let mut checkout = |pool: &mut Pool, now: i64, batch: &mut Batch| {
            n += 1;
            pool.checkout(
                now,
                &admin,
                &holder,
                &Checkout {
                    request_id: RequestId(n.to_le_bytes()),
                    feature: "vray".into(),
                    seats: 1,
                },
                tally_protocol::LeaseId(n.to_le_bytes()),
                batch,
            )
        };
        checkout(&mut pool, T0, &mut batch).unwrap();
        checkout(&mut pool, T0, &mut batch).unwrap();
        let exhausted = |batch: &Batch| {
            batch
                .notifications
                .iter()
                .filter(|n| n.kind == "pool_exhausted")
                .count()
        };
        assert_eq!(exhausted(&batch), 0);
        for minute in 0..60 {
            checkout(&mut pool, T0 + minute * 60_000, &mut batch).unwrap_err();
        }
        assert_eq!(exhausted(&batch), 1, "once in the first hour");
        let first = batch
            .notifications
            .iter()
            .find(|n| n.kind == "pool_exhausted")
            .unwrap();
        assert_eq!(first.feature.as_deref(), Some("vray"));
        assert!(first.text.contains("lack of seats"), "{}", first.text);
        checkout(&mut pool, T0 + HOUR, &mut batch).unwrap_err();
        assert_eq!(exhausted(&batch), 2, "again an hour later");
        assert_eq!(
            batch.marks,
            [
                ("expiry_through".to_string(), T0),
                ("pool_exhausted:vray".to_string(), T0 + HOUR)
            ]
        );
    }
}
