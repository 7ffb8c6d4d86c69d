//! Seats assigned to users by name: `assign` and `revoke` (admins), and `assignments`, who
//! has which (admins see everyone's, others their own).

use tally_protocol::{Assign, Revoke};

use super::bulk;
use super::failure::{exit, Failure};
use super::output::Output;
use super::values;
use crate::Client;

/// An assignment command, checked and ready to send.
pub enum Action {
    Assign(Assign),
    Revoke(Revoke),
    /// A CSV file of assignments or revocations.
    Bulk(bulk::Action),
    List {
        user: Option<String>,
        feature: Option<String>,
    },
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

    pub fn list(user: Option<String>, feature: Option<String>) -> Result<Self, Failure> {
        Ok(Action::List {
            user: user.map(values::username).transpose()?,
            feature: values::feature_opt(feature)?,
        })
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Action::Assign(assign) => {
                let user = assign.username.clone();
                out.assigned(&user, &client.assign_with_totals(assign).await?);
            }
            Action::Revoke(revoke) => {
                let user = revoke.username.clone();
                out.revoked(&user, &client.revoke_with_totals(revoke).await?);
            }
            // JSON is written page by page; people see them grouped by feature.
            Action::List { user, feature } if out.is_json() => {
                let mut listing = out.assignments_listing().map_err(Failure::printing)?;
                client
                    .each_assignments_page(user.as_deref(), feature.as_deref(), |page| {
                        listing.page(&page).map_err(Failure::printing)
                    })
                    .await?;
                listing.finish().map_err(Failure::printing)?;
            }
            Action::Bulk(bulk) => return bulk.run(client, out).await,
            Action::List { user, feature } => out.assignments(
                &client
                    .assignments(user.as_deref(), feature.as_deref())
                    .await?,
            ),
        }
        Ok(exit::OK)
    }
}
