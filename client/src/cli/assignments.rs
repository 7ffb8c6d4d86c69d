//! Seats assigned to users by name: `assign` and `revoke` (admins).

use tally_protocol::{Assign, Revoke};

use super::failure::{exit, Failure};
use super::output::Output;
use super::values;
use crate::Client;

/// An assignment command, checked and ready to send.
pub enum Action {
    Assign(Assign),
    Revoke(Revoke),
}

impl Action {
    pub fn assign(
        email: String,
        feature: String,
        seats: u32,
        entitlement: Option<String>,
        from: Option<String>,
        expires: Option<String>,
    ) -> Result<Self, Failure> {
        Ok(Action::Assign(Assign {
            username: values::username(email)?,
            feature: values::feature(feature)?,
            seats: values::seats(seats)?,
            entitlement: entitlement
                .as_deref()
                .map(values::entitlement_id)
                .transpose()?,
            from: from.map(values::username).transpose()?,
            expires_at: values::end_opt(expires.as_deref())?,
        }))
    }

    pub fn revoke(email: String, feature: String, seats: Option<u32>) -> Result<Self, Failure> {
        Ok(Action::Revoke(Revoke {
            username: values::username(email)?,
            feature: values::feature(feature)?,
            seats: seats.map(values::seats).transpose()?,
        }))
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Action::Assign(assign) => out.assignment(&client.assign(assign).await?),
            Action::Revoke(revoke) => out.revoked(client.revoke(revoke).await?),
        }
        Ok(exit::OK)
    }
}
