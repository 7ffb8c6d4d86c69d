//! What the metrics read from the pool at scrape time (SPEC §10): the status figures of
//! every feature, computed by [`Pool::figures`] as `tally status` gets them, each
//! entitlement's end, and the active users.

use tally_protocol::{FeatureFigures, UserState};

use super::{Batch, Pool};

/// The pool's figures at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauges {
    /// Every feature's status figures with its reserved seats, as `Figures` answers them.
    pub figures: Vec<FeatureFigures>,
    /// (feature, entitlement id, end in Unix milliseconds) of each entitlement that ends.
    pub expiries: Vec<(String, u64, i64)>,
    /// Accounts in state `active`, the owner included.
    pub users_active: u64,
    /// Every meter's figures (SPEC §11), by name.
    pub meters: Vec<tally_protocol::MeterInfo>,
}

impl Pool {
    /// The figures the metrics export, brought up to `now` first (what passed is recorded
    /// in `batch`, as for any read).
    pub fn gauges(&mut self, now: i64, batch: &mut Batch) -> Gauges {
        // With no feature named there is no name to refuse, so the figures always come; a
        // scrape is never the place to panic.
        let figures = self.figures(now, None, batch).unwrap_or_default();
        let expiries = self
            .entitlements
            .values()
            .filter_map(|e| Some((e.feature.clone(), e.id, e.expires_at?)))
            .collect();
        let users_active = self
            .users
            .values()
            .filter(|u| u.state == UserState::Active)
            .count() as u64;
        let meters = self
            .credits
            .meters()
            .into_iter()
            .map(|meter| self.meter_info(meter, now))
            .collect();
        Gauges {
            figures,
            expiries,
            users_active,
            meters,
        }
    }
}
