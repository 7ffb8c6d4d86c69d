//! Lease history as hourly rollups (SPEC §10): what the usage reports read, written in the
//! same batch as the change that causes it.
//!
//! Two tables, one row per key and UTC hour in which something happened:
//!
//! - [`UsageHour`] per feature: the largest seats held and pool seen in the hour, the seats
//!   held and pool after its last change (`None`: no change of that kind in the hour, the
//!   previous hour's value carries on), seat-milliseconds, grants and denials;
//! - [`UserHour`] per feature and user: seat-milliseconds, grants, denials and the last
//!   instant of the hour at which the user held a seat.
//!
//! Seat-milliseconds are added when a lease ends, split over every hour it spanned; the
//! report adds those of leases still open. A batch holds at most one upsert per key
//! ([`HistoryRows`]), merged as the store merges them ([`UsageHour::merge`],
//! [`UserHour::merge`]), so that many checkouts in one group commit write one row per
//! feature-hour.

use std::collections::HashMap;

use tally_protocol::HOUR_MS;

use super::{Batch, Pool};

/// The mark (`Batch::mark`) of how far entitlements' starts and ends have been recorded
/// in the history, so that none is recorded twice or missed across a restart.
pub(super) const HISTORY_MARK: &str = "history_through";

/// The longest stretch of a lease that is recorded, back from its end: the longest
/// `history.keep` (1000 days). Older seat time could never be reported, and a lease whose
/// grant lies far in the past (a clock set wrong once) costs no more than this.
pub const MAX_HISTORY_MS: i64 = 1000 * 24 * HOUR_MS;

/// The start of the UTC hour holding `at`.
pub fn hour_of(at: i64) -> i64 {
    at.div_euclid(HOUR_MS) * HOUR_MS
}

/// One feature's rollup of one hour (or an upsert of it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageHour {
    pub feature: String,
    pub hour_start: i64,
    /// The largest pool set in the hour (0: none set).
    pub pool_max: u32,
    /// The pool after the hour's last change of it.
    pub pool_last: Option<u32>,
    /// The largest number of seats held after any change in the hour (0: none).
    pub peak: u32,
    /// The seats held after the hour's last grant or end.
    pub in_use_last: Option<u32>,
    /// Seat-milliseconds of ended leases within the hour.
    pub seat_ms: i64,
    /// Seats granted in the hour (one per lease).
    pub checkouts: i64,
    /// Refusals `no_seat`, `denied` and `queue_timeout` in the hour.
    pub denials: i64,
}

impl UsageHour {
    /// Folds a later upsert of the same key into this one: maxima and sums, the later
    /// `*_last` where it has one. Stores do the same in SQL.
    pub fn merge(&mut self, later: &UsageHour) {
        self.pool_max = self.pool_max.max(later.pool_max);
        self.pool_last = later.pool_last.or(self.pool_last);
        self.peak = self.peak.max(later.peak);
        self.in_use_last = later.in_use_last.or(self.in_use_last);
        self.seat_ms += later.seat_ms;
        self.checkouts += later.checkouts;
        self.denials += later.denials;
    }
}

/// One user's rollup of one feature in one hour (or an upsert of it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserHour {
    pub feature: String,
    pub user: String,
    pub hour_start: i64,
    pub seat_ms: i64,
    pub checkouts: i64,
    pub denials: i64,
    /// The last instant within the hour at which the user held a seat of the feature.
    pub last_used: Option<i64>,
}

impl UserHour {
    /// Folds a later upsert of the same key into this one, as stores do.
    pub fn merge(&mut self, later: &UserHour) {
        self.seat_ms += later.seat_ms;
        self.checkouts += later.checkouts;
        self.denials += later.denials;
        self.last_used = self.last_used.max(later.last_used);
    }
}

/// The rollup upserts of one batch, one per key.
#[derive(Debug, Default, Clone)]
pub struct HistoryRows {
    pub hours: HashMap<(String, i64), UsageHour>,
    pub user_hours: HashMap<(String, String, i64), UserHour>,
}

impl HistoryRows {
    pub fn is_empty(&self) -> bool {
        self.hours.is_empty() && self.user_hours.is_empty()
    }

    pub fn len(&self) -> usize {
        self.hours.len() + self.user_hours.len()
    }

    fn hour(&mut self, feature: &str, at: i64) -> &mut UsageHour {
        let hour_start = hour_of(at);
        self.hours
            .entry((feature.to_string(), hour_start))
            .or_insert_with(|| UsageHour {
                feature: feature.to_string(),
                hour_start,
                ..UsageHour::default()
            })
    }

    fn user_hour(&mut self, feature: &str, user: &str, at: i64) -> &mut UserHour {
        let hour_start = hour_of(at);
        self.user_hours
            .entry((feature.to_string(), user.to_string(), hour_start))
            .or_insert_with(|| UserHour {
                feature: feature.to_string(),
                user: user.to_string(),
                hour_start,
                ..UserHour::default()
            })
    }

    /// The seats held of `feature` changed at `at` to `in_use`.
    pub fn in_use(&mut self, feature: &str, at: i64, in_use: u32) {
        let row = self.hour(feature, at);
        row.peak = row.peak.max(in_use);
        row.in_use_last = Some(in_use);
    }

    /// The pool of `feature` is `pool` from `at`.
    pub fn pool(&mut self, feature: &str, at: i64, pool: u32) {
        let row = self.hour(feature, at);
        row.pool_max = row.pool_max.max(pool);
        row.pool_last = Some(pool);
    }

    /// A lease of `feature` was granted to `user` at `at`; `in_use` seats are held now.
    pub fn grant(&mut self, feature: &str, user: &str, at: i64, in_use: u32) {
        self.in_use(feature, at, in_use);
        self.hour(feature, at).checkouts += 1;
        let row = self.user_hour(feature, user, at);
        row.checkouts += 1;
        row.last_used = row.last_used.max(Some(at));
    }

    /// A lease of `seats` seats held by `user` from `granted_at` ended at `at`; `in_use`
    /// seats are held now. Its seat-milliseconds go to every hour it spanned.
    pub fn end(
        &mut self,
        feature: &str,
        user: &str,
        seats: u32,
        granted_at: i64,
        at: i64,
        in_use: u32,
    ) {
        self.in_use(feature, at, in_use);
        let mut from = granted_at.max(at.saturating_sub(MAX_HISTORY_MS));
        while from < at {
            let hour_end = hour_of(from) + HOUR_MS;
            let to = at.min(hour_end);
            let seat_ms = i64::from(seats) * (to - from);
            self.hour(feature, from).seat_ms += seat_ms;
            let row = self.user_hour(feature, user, from);
            row.seat_ms += seat_ms;
            row.last_used = row.last_used.max(Some(to));
            from = to;
        }
    }

    /// A checkout, queued checkout or borrow of `feature` by `user` was refused at `at`
    /// with `no_seat`, `denied` or `queue_timeout`.
    pub fn deny(&mut self, feature: &str, user: &str, at: i64) {
        self.hour(feature, at).denials += 1;
        self.user_hour(feature, user, at).denials += 1;
    }

    /// Merges the upserts of a later batch into these.
    pub fn absorb(&mut self, later: HistoryRows) {
        for (key, row) in later.hours {
            match self.hours.get_mut(&key) {
                Some(slot) => slot.merge(&row),
                None => {
                    self.hours.insert(key, row);
                }
            }
        }
        for (key, row) in later.user_hours {
            match self.user_hours.get_mut(&key) {
                Some(slot) => slot.merge(&row),
                None => {
                    self.user_hours.insert(key, row);
                }
            }
        }
    }
}

impl Pool {
    /// Records the pool of `feature` at `now`, after one of its entitlements was added,
    /// changed or removed.
    pub(super) fn record_pool(&mut self, feature: &str, now: i64, batch: &mut Batch) {
        if self.history_through.is_none() {
            self.record_pool_boundaries(now, batch);
        }
        let pool = self.capacity(feature, now);
        batch.history.pool(feature, now, pool);
        self.mark_history(now, batch);
    }

    /// Records the pool at every start and end of an entitlement since the history's mark,
    /// each at its own instant (called by `advance` when a boundary has passed, and first
    /// after a restore). With no mark yet (history begins), records the pool and the seats
    /// held now.
    pub(super) fn record_pool_boundaries(&mut self, now: i64, batch: &mut Batch) {
        let Some(through) = self.history_through else {
            let features: std::collections::BTreeSet<String> = self
                .entitlements
                .values()
                .map(|e| e.feature.clone())
                .collect();
            for feature in &features {
                batch
                    .history
                    .pool(feature, now, self.capacity(feature, now));
            }
            let held: Vec<(String, u32)> = self
                .ledger
                .in_use_all()
                .map(|(feature, seats)| (feature.clone(), seats))
                .collect();
            for (feature, seats) in &held {
                batch.history.in_use(feature, now, *seats);
            }
            if !features.is_empty() || !held.is_empty() {
                self.mark_history(now, batch);
            }
            return;
        };
        let mut instants: Vec<(i64, &str)> = self
            .entitlements
            .values()
            .flat_map(|e| {
                [Some(e.starts_at), e.expires_at].map(|t| t.map(|t| (t, e.feature.as_str())))
            })
            .flatten()
            .filter(|&(t, _)| through < t && t <= now)
            .collect();
        if instants.is_empty() {
            return;
        }
        instants.sort_unstable();
        instants.dedup();
        let pools: Vec<(i64, String, u32)> = instants
            .into_iter()
            .map(|(t, feature)| (t, feature.to_string(), self.capacity(feature, t)))
            .collect();
        for (t, feature, pool) in pools {
            batch.history.pool(&feature, t, pool);
        }
        self.mark_history(now, batch);
    }

    /// Moves the history's mark to `now`: every boundary up to it is recorded.
    fn mark_history(&mut self, now: i64, batch: &mut Batch) {
        if self.history_through.is_none_or(|through| through < now) {
            self.history_through = Some(now);
            batch.mark(HISTORY_MARK, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = HOUR_MS;

    #[test]
    fn an_ended_lease_is_split_over_every_hour_it_spanned() {
        let mut rows = HistoryRows::default();
        rows.grant("vray", "ana", H / 2, 2);
        rows.end("vray", "ana", 2, H / 2, 2 * H + 60_000, 0);
        let hour = |h: i64| rows.hours[&("vray".to_string(), h * H)].clone();
        assert_eq!(hour(0).seat_ms, H);
        assert_eq!(hour(0).checkouts, 1);
        assert_eq!((hour(0).peak, hour(0).in_use_last), (2, Some(2)));
        assert_eq!(hour(1).seat_ms, 2 * H);
        assert_eq!(hour(1).in_use_last, None, "nothing changed in that hour");
        assert_eq!(hour(2).seat_ms, 120_000);
        assert_eq!(hour(2).in_use_last, Some(0));
        let user = &rows.user_hours[&("vray".to_string(), "ana".to_string(), H)];
        assert_eq!((user.seat_ms, user.last_used), (2 * H, Some(2 * H)));
        let last = &rows.user_hours[&("vray".to_string(), "ana".to_string(), 2 * H)];
        assert_eq!(last.last_used, Some(2 * H + 60_000));
    }

    #[test]
    fn upserts_of_one_key_merge_like_the_store() {
        let mut rows = HistoryRows::default();
        rows.in_use("f", 10, 5);
        rows.in_use("f", 20, 3);
        rows.pool("f", 30, 8);
        rows.deny("f", "u", 40);
        let mut later = HistoryRows::default();
        later.in_use("f", 50, 4);
        later.deny("f", "u", 60);
        rows.absorb(later);
        let row = &rows.hours[&("f".to_string(), 0)];
        assert_eq!(
            (row.peak, row.in_use_last, row.pool_max, row.pool_last),
            (5, Some(4), 8, Some(8))
        );
        assert_eq!(row.denials, 2);
        assert_eq!(rows.user_hours.len(), 1);
    }
}
