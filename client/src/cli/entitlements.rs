//! Entitlements (purchases of a feature): `entitlement add`, `list`, `update` and `remove`.

use tally_protocol::{EntitlementKind, EntitlementUpdate, NewEntitlement};

use super::args::EntitlementCommand;
use super::failure::{exit, Failure};
use super::output::Output;
use super::values;
use crate::Client;

/// An entitlement command, checked and ready to send.
pub enum Action {
    Add(NewEntitlement),
    List { feature: Option<String> },
    Update(EntitlementUpdate),
    Remove { id: u64, force: bool },
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
                max_borrow_secs: max_borrow_secs(max_borrow.as_deref())?,
                reference: reference.unwrap_or_default(),
            }),
            EntitlementCommand::List { feature } => Action::List {
                feature: values::feature_opt(feature)?,
            },
            EntitlementCommand::Update {
                id,
                seats,
                starts,
                expires,
                borrowable,
                no_borrowable,
                max_borrow,
                reference,
                force,
            } => {
                let update = EntitlementUpdate {
                    id: values::entitlement_id(&id)?,
                    seats: seats.map(values::seats).transpose()?,
                    starts_at: values::start_opt(starts.as_deref())?,
                    expires_at: match expires.as_deref() {
                        None => None,
                        Some(text) if text.eq_ignore_ascii_case("never") => Some(None),
                        Some(text) => Some(Some(values::end(text)?)),
                    },
                    borrowable: match (borrowable, no_borrowable) {
                        (true, _) => Some(true),
                        (_, true) => Some(false),
                        _ => None,
                    },
                    max_borrow_secs: max_borrow_secs(max_borrow.as_deref())?,
                    reference,
                    force,
                };
                let nothing = update.seats.is_none()
                    && update.starts_at.is_none()
                    && update.expires_at.is_none()
                    && update.borrowable.is_none()
                    && update.max_borrow_secs.is_none()
                    && update.reference.is_none();
                if nothing {
                    return Err(Failure::usage(
                        "nothing to change: give --seats, --starts, --expires, --borrowable or --no-borrowable, --max-borrow or --ref",
                    ));
                }
                Action::Update(update)
            }
            EntitlementCommand::Remove { id, force } => Action::Remove {
                id: values::entitlement_id(&id)?,
                force,
            },
        })
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Action::Add(new) => out.entitlement(&client.add_entitlement(new).await?),
            Action::List { feature } => {
                out.entitlements(&client.entitlements(feature.as_deref()).await?)
            }
            Action::Update(update) => {
                out.entitlement_updated(&client.update_entitlement(update).await?)
            }
            Action::Remove { id, force } => {
                out.removed(&client.delete_entitlement(id, force).await?)
            }
        }
        Ok(exit::OK)
    }
}

/// `--max-borrow`, in whole seconds.
fn max_borrow_secs(text: Option<&str>) -> Result<Option<u64>, Failure> {
    Ok(text.map(values::duration).transpose()?.map(|d| d.as_secs()))
}
