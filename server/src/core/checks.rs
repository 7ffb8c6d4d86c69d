//! The checks every request family shares: the role, a feature name with the numbers of a
//! request, and the form of a username. Each is written once here; the request modules
//! call them before a request touches the pool.

use tally_protocol::{
    validate_feature, Assign, BorrowOnce, Checkout, ErrorBody, ErrorCode, NewEntitlement, Revoke,
};

use super::Actor;

/// Refuses with `forbidden` unless the actor is an owner or admin.
pub fn require_admin(actor: &Actor, what: &str) -> Result<(), ErrorBody> {
    if actor.role.is_admin() {
        Ok(())
    } else {
        Err(ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "only an admin may {what}; {} is a {}",
                actor.username,
                actor.role.as_str()
            ),
        ))
    }
}

/// A request that names a feature and carries numbers (seats, times, durations) that the
/// protocol range-checks.
pub(super) trait FeatureRequest {
    fn feature(&self) -> &str;
    /// The protocol's range checks of the request's numbers (`validate_seats` and the like).
    fn numbers(&self) -> Result<(), String>;
}

/// Checks the feature name, then the numbers, of a request: `invalid` naming what is wrong.
pub(super) fn check_request(request: &impl FeatureRequest) -> Result<(), ErrorBody> {
    validate_feature(request.feature()).map_err(ErrorBody::invalid)?;
    request.numbers().map_err(ErrorBody::invalid)
}

macro_rules! feature_request {
    ($($request:ty),*) => {$(
        impl FeatureRequest for $request {
            fn feature(&self) -> &str {
                &self.feature
            }

            fn numbers(&self) -> Result<(), String> {
                self.validate()
            }
        }
    )*};
}

feature_request!(Checkout, NewEntitlement, Assign, Revoke, BorrowOnce);

/// A username as the pool keys it: trimmed and in lowercase, so that `Ana@Studio.com ` and
/// `ana@studio.com` name the same account.
pub(super) fn username(text: &str) -> String {
    text.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use tally_protocol::{RequestId, Role};

    use super::*;

    fn checkout(feature: &str, seats: u32) -> Checkout {
        Checkout {
            feature: feature.into(),
            seats,
            request_id: RequestId([0; 16]),
        }
    }

    #[test]
    fn a_request_is_checked_for_its_feature_name_first_then_its_numbers() {
        assert!(check_request(&checkout("vray", 1)).is_ok());
        let err = check_request(&checkout("no such/feature", 0)).unwrap_err();
        assert_eq!(err.code, ErrorCode::Invalid);
        assert!(err.message.contains("feature"), "{}", err.message);
        let err = check_request(&checkout("vray", 0)).unwrap_err();
        assert_eq!(err.code, ErrorCode::Invalid);
        assert!(err.message.starts_with("seats"), "{}", err.message);
    }

    #[test]
    fn usernames_are_trimmed_and_lowercased() {
        assert_eq!(username("  Ana@Studio.COM\t"), "ana@studio.com");
    }

    #[test]
    fn only_owners_and_admins_pass_require_admin() {
        let actor = |role| Actor {
            username: "ana@studio".into(),
            role,
        };
        assert!(require_admin(&actor(Role::Owner), "x").is_ok());
        assert!(require_admin(&actor(Role::Admin), "x").is_ok());
        let err = require_admin(&actor(Role::Member), "add users").unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        assert_eq!(
            err.message,
            "only an admin may add users; ana@studio is a member"
        );
    }
}
