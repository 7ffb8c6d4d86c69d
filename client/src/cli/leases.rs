//! Seats and leases: `status`, `leases`, `checkout` and `release`.

use tally_protocol::{LeaseId, LeasesQuery};

use super::args::CheckoutArgs;
use super::failure::{exit, Failure};
use super::hold::{self, Signals};
use super::output::Output;
use super::values;
use crate::Client;

/// A seats-and-leases command, checked and ready to send.
pub enum Action {
    Status { feature: Option<String> },
    Leases(LeasesQuery),
    Checkout(Checkout),
    Release(LeaseId),
}

/// `checkout`: the seats to take, and the command to run while holding them (none: hold
/// until interrupted).
pub struct Checkout {
    feature: String,
    seats: u32,
    command: Vec<String>,
}

impl Action {
    pub fn status(feature: Option<String>) -> Result<Self, Failure> {
        Ok(Action::Status {
            feature: values::feature_opt(feature)?,
        })
    }

    pub fn leases(feature: Option<String>, user: Option<String>) -> Result<Self, Failure> {
        Ok(Action::Leases(LeasesQuery {
            feature: values::feature_opt(feature)?,
            user,
        }))
    }

    pub fn checkout(args: CheckoutArgs) -> Result<Self, Failure> {
        Ok(Action::Checkout(Checkout {
            feature: values::feature(args.feature)?,
            seats: values::seats(args.seats)?,
            command: args.command,
        }))
    }

    pub fn release(lease_id: &str) -> Result<Self, Failure> {
        Ok(Action::Release(values::lease_id(lease_id)?))
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Action::Status { feature } => out.status(&client.status(feature.as_deref()).await?),
            Action::Leases(query) => out.leases(&client.leases(query).await?),
            Action::Checkout(checkout) => {
                let signals = Signals::install()?;
                let lease = client.checkout(&checkout.feature, checkout.seats).await?;
                return if checkout.command.is_empty() {
                    hold::until_signal(lease, &checkout.feature, signals, out).await
                } else {
                    hold::around_command(lease, &checkout.feature, &checkout.command, signals, out)
                        .await
                };
            }
            Action::Release(lease) => out.released(client.release(lease).await?),
        }
        Ok(exit::OK)
    }
}
