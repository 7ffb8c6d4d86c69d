//! Range checks of the numbers in requests: times, seat counts and durations.
//!
//! Every request that carries a time, a count or a duration has a `validate` here that checks
//! each of them and names the field and its range when one is out of it. The server calls it
//! before the request touches the pool (after the role check, so that a member still gets
//! `forbidden` first) and answers `invalid` with the text, so no arithmetic or printing further
//! on meets a number it cannot handle.

use crate::time::validate_time;
use crate::{
    Assign, AssignmentsQuery, AuditQuery, Borrow, BorrowOnce, Checkout, EntitlementUpdate,
    NewEntitlement, Revoke, UnixMillis,
};

/// The most seats one request may name.
pub const MAX_SEATS: u32 = 1_000_000;

/// The longest duration a request may name (ten years), so that no arithmetic on it can
/// overflow.
pub const MAX_DURATION_SECS: u64 = 10 * 365 * 86_400;

/// Checks that a seat count in `field` lies between 1 and [`MAX_SEATS`].
pub fn validate_seats(field: &str, seats: u32) -> Result<(), String> {
    if (1..=MAX_SEATS).contains(&seats) {
        Ok(())
    } else {
        Err(format!(
            "{field} must be between 1 and {MAX_SEATS}, not {seats}"
        ))
    }
}

/// Checks that a duration in seconds in `field` lies between one second and
/// [`MAX_DURATION_SECS`] (ten years).
pub fn validate_duration_secs(field: &str, secs: u64) -> Result<(), String> {
    if (1..=MAX_DURATION_SECS).contains(&secs) {
        Ok(())
    } else {
        Err(format!(
            "{field} must be between 1 and {MAX_DURATION_SECS} seconds (ten years), not {secs}"
        ))
    }
}

fn validate_optional_time(field: &str, at: Option<UnixMillis>) -> Result<(), String> {
    at.map_or(Ok(()), |at| validate_time(field, at))
}

impl Checkout {
    /// Checks `seats`.
    pub fn validate(&self) -> Result<(), String> {
        validate_seats("seats", self.seats)
    }
}

impl NewEntitlement {
    /// Checks `seats`, `starts_at`, `expires_at` and `max_borrow_secs`.
    pub fn validate(&self) -> Result<(), String> {
        validate_seats("seats", self.seats)?;
        validate_optional_time("starts_at", self.starts_at)?;
        validate_optional_time("expires_at", self.expires_at)?;
        self.max_borrow_secs.map_or(Ok(()), |secs| {
            validate_duration_secs("max_borrow_secs", secs)
        })
    }
}

impl EntitlementUpdate {
    /// Checks `seats`, `starts_at`, `expires_at` and `max_borrow_secs` when given.
    pub fn validate(&self) -> Result<(), String> {
        self.seats
            .map_or(Ok(()), |seats| validate_seats("seats", seats))?;
        validate_optional_time("starts_at", self.starts_at)?;
        validate_optional_time("expires_at", self.expires_at.flatten())?;
        self.max_borrow_secs.map_or(Ok(()), |secs| {
            validate_duration_secs("max_borrow_secs", secs)
        })
    }
}

impl AssignmentsQuery {
    /// Checks that `limit`, when given, is at least 1 (larger limits are capped by the
    /// server).
    pub fn validate(&self) -> Result<(), String> {
        match self.limit {
            Some(0) => Err("limit must be at least 1, not 0".into()),
            _ => Ok(()),
        }
    }
}

impl Assign {
    /// Checks `seats` and `expires_at`.
    pub fn validate(&self) -> Result<(), String> {
        validate_seats("seats", self.seats)?;
        validate_optional_time("expires_at", self.expires_at)
    }
}

impl Revoke {
    /// Checks `seats` when given.
    pub fn validate(&self) -> Result<(), String> {
        self.seats
            .map_or(Ok(()), |seats| validate_seats("seats", seats))
    }
}

impl AuditQuery {
    /// Checks `since` and that `limit`, when given, is at least 1 (larger limits are capped by
    /// the server).
    pub fn validate(&self) -> Result<(), String> {
        validate_optional_time("since", self.since)?;
        match self.limit {
            Some(0) => Err("limit must be at least 1, not 0".into()),
            _ => Ok(()),
        }
    }
}

impl Borrow {
    /// Checks `seats` and `duration_secs`.
    pub fn validate(&self) -> Result<(), String> {
        validate_borrow(self.seats, self.duration_secs)
    }
}

impl BorrowOnce {
    /// Checks `seats` and `duration_secs`.
    pub fn validate(&self) -> Result<(), String> {
        validate_borrow(self.seats, self.duration_secs)
    }
}

fn validate_borrow(seats: u32, duration_secs: u64) -> Result<(), String> {
    validate_seats("seats", seats)?;
    validate_duration_secs("duration_secs", duration_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EntitlementKind, RequestId, MAX_TIME};

    fn entitlement() -> NewEntitlement {
        NewEntitlement {
            feature: "vray".into(),
            seats: 1,
            starts_at: None,
            expires_at: None,
            kind: EntitlementKind::Standard,
            borrowable: true,
            max_borrow_secs: None,
            reference: String::new(),
        }
    }

    /// The error of `validate`, which must name `field`.
    fn refused(result: Result<(), String>, field: &str) -> String {
        let err = result.expect_err("out of range");
        assert!(err.starts_with(field), "{err:?} names {field}");
        err
    }

    #[test]
    fn every_time_count_and_duration_of_a_new_entitlement_is_checked() {
        assert!(entitlement().validate().is_ok());
        let at_the_end = NewEntitlement {
            seats: MAX_SEATS,
            starts_at: Some(0),
            expires_at: Some(MAX_TIME),
            max_borrow_secs: Some(MAX_DURATION_SECS),
            ..entitlement()
        };
        assert!(at_the_end.validate().is_ok());
        for seats in [0, MAX_SEATS + 1, u32::MAX] {
            let err = refused(
                NewEntitlement {
                    seats,
                    ..entitlement()
                }
                .validate(),
                "seats",
            );
            assert!(err.contains("between 1 and 1000000"), "{err}");
        }
        for at in [MAX_TIME + 1, i64::MAX, -1, i64::MIN] {
            refused(
                NewEntitlement {
                    starts_at: Some(at),
                    ..entitlement()
                }
                .validate(),
                "starts_at",
            );
            refused(
                NewEntitlement {
                    expires_at: Some(at),
                    ..entitlement()
                }
                .validate(),
                "expires_at",
            );
        }
        for secs in [0, MAX_DURATION_SECS + 1, u64::MAX] {
            let err = refused(
                NewEntitlement {
                    max_borrow_secs: Some(secs),
                    ..entitlement()
                }
                .validate(),
                "max_borrow_secs",
            );
            assert!(err.contains("ten years"), "{err}");
        }
    }

    #[test]
    fn the_other_requests_check_theirs() {
        let checkout = |seats| Checkout {
            request_id: RequestId([1; 16]),
            feature: "vray".into(),
            seats,
        };
        assert!(checkout(1).validate().is_ok());
        refused(checkout(0).validate(), "seats");
        refused(checkout(u32::MAX).validate(), "seats");

        let assign = |seats, expires_at| Assign {
            username: "a@b".into(),
            feature: "vray".into(),
            seats,
            entitlement: None,
            from: None,
            expires_at,
        };
        assert!(assign(1, Some(MAX_TIME)).validate().is_ok());
        refused(assign(0, None).validate(), "seats");
        refused(assign(1, Some(i64::MAX)).validate(), "expires_at");

        let revoke = |seats| Revoke {
            username: "a@b".into(),
            feature: "vray".into(),
            seats,
        };
        assert!(revoke(None).validate().is_ok());
        refused(revoke(Some(0)).validate(), "seats");
        refused(revoke(Some(MAX_SEATS + 1)).validate(), "seats");

        let audit = |since, limit| AuditQuery {
            since,
            user: None,
            feature: None,
            limit,
        };
        assert!(audit(Some(0), Some(u32::MAX)).validate().is_ok());
        refused(audit(Some(i64::MIN), None).validate(), "since");
        refused(audit(None, Some(0)).validate(), "limit");

        let update = |seats, expires_at, max_borrow_secs| EntitlementUpdate {
            id: 1,
            seats,
            starts_at: None,
            expires_at,
            borrowable: None,
            max_borrow_secs,
            reference: None,
            force: false,
        };
        assert!(update(None, Some(None), None).validate().is_ok());
        assert!(update(
            Some(MAX_SEATS),
            Some(Some(MAX_TIME)),
            Some(MAX_DURATION_SECS)
        )
        .validate()
        .is_ok());
        refused(update(Some(0), None, None).validate(), "seats");
        refused(
            update(None, Some(Some(i64::MIN)), None).validate(),
            "expires_at",
        );
        refused(update(None, None, Some(0)).validate(), "max_borrow_secs");
        let starts = EntitlementUpdate {
            starts_at: Some(i64::MAX),
            ..update(None, None, None)
        };
        refused(starts.validate(), "starts_at");

        let assignments = |limit| AssignmentsQuery {
            user: None,
            feature: None,
            after: None,
            limit,
        };
        assert!(assignments(Some(u32::MAX)).validate().is_ok());
        refused(assignments(Some(0)).validate(), "limit");

        let borrow = |seats, duration_secs| Borrow {
            feature: "vray".into(),
            seats,
            duration_secs,
            machine_id: "m".into(),
        };
        assert!(borrow(1, MAX_DURATION_SECS).validate().is_ok());
        refused(borrow(0, 60).validate(), "seats");
        refused(borrow(1, 0).validate(), "duration_secs");
        refused(borrow(1, u64::MAX).validate(), "duration_secs");
    }
}
