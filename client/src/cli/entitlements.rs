//! Entitlements (purchases of a feature): `entitlement add`, `list` and `remove`.

use tally_protocol::{EntitlementKind, NewEntitlement};

use super::args::EntitlementCommand;
use super::failure::{exit, Failure};
use super::output::Output;
use super::values;
use crate::Client;

/// An entitlement command, checked and ready to send.
pub enum Action {
    Add(NewEntitlement),
    List { feature: Option<String> },
    Remove(u64),
}

impl Action {
    pub fn new(command: EntitlementCommand) -> Result<Self, Failure> {
        Ok(match command {
            EntitlementCommand::Add {
                feature,
                seats,
                starts,
                expires,
                trial,
                borrowable,
                max_borrow,
                reference,
            } => Action::Add(NewEntitlement {
                feature: values::feature(feature)?,
                seats: values::seats(seats)?,
                starts_at: values::start_opt(starts.as_deref())?,
                expires_at: values::end_opt(expires.as_deref())?,
                kind: if trial {
                    EntitlementKind::Trial
                } else {
                    EntitlementKind::Standard
                },
                borrowable,
                max_borrow_secs: max_borrow
                    .as_deref()
                    .map(values::duration)
                    .transpose()?
                    .map(|d| d.as_secs()),
                reference: reference.unwrap_or_default(),
            }),
            EntitlementCommand::List { feature } => Action::List {
                feature: values::feature_opt(feature)?,
            },
            EntitlementCommand::Remove { id } => Action::Remove(values::entitlement_id(&id)?),
        })
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Action::Add(new) => out.entitlement(&client.add_entitlement(new).await?),
            Action::List { feature } => {
                out.entitlements(&client.entitlements(feature.as_deref()).await?)
            }
            Action::Remove(id) => out.removed(client.remove_entitlement(id).await?),
        }
        Ok(exit::OK)
    }
}
