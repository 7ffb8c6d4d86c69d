//! Seats and leases: `status` (and `status --all`, the `lmstat -a` view), `leases`,
//! `checkout` (with `--wait`, in the feature's queue), `queue` and `release`.

use tally_protocol::{
    now_millis, Entitlement, FeatureFigures, LeasePattern, LeasesQuery, ReleaseMatching,
};

use super::args::CheckoutArgs;
use super::failure::{exit, Failure};
use super::hold::{self, Signals};
use super::output::Output;
use super::values;
use crate::{Client, Error};

/// A seats-and-leases command, checked and ready to send.
pub enum Action {
    Status {
        feature: Option<String>,
        all: bool,
    },
    Leases(LeasesQuery),
    Checkout(Checkout),
    Release(ReleaseMatching),
    /// `queue [FEATURE]`.
    Queue(Option<String>),
}

/// `checkout`: the seats to take, and the command to run while holding them (none: hold
/// until interrupted).
pub struct Checkout {
    feature: String,
    seats: u32,
    /// `--wait`: `None` does not wait; `Some(None)` waits with no limit.
    wait: Option<Option<std::time::Duration>>,
    command: Vec<String>,
}

impl Action {
    pub fn status(feature: Option<String>, all: bool) -> Result<Self, Failure> {
        Ok(Action::Status {
            feature: values::feature_opt(feature)?,
            all,
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
            wait: match args.wait.as_deref() {
                None => None,
                Some("") => Some(None),
                Some(text) => Some(Some(values::duration(text)?)),
            },
            command: args.command,
        }))
    }

    pub fn queue(feature: Option<String>) -> Result<Self, Failure> {
        Ok(Action::Queue(values::feature_opt(feature)?))
    }

    /// `release LEASE_ID` (a full id, a prefix or `PREFIX...SUFFIX`), or `release --user U
    /// [--host H] [--feature F]`; clap has made sure one of the lease, user or host is there.
    pub fn release(
        lease: Option<String>,
        user: Option<String>,
        host: Option<String>,
        feature: Option<String>,
    ) -> Result<Self, Failure> {
        if let Some(text) = &lease {
            LeasePattern::parse(text)
                .map_err(|err| Failure::usage(format!("{err}; `tally leases` shows lease ids")))?;
        }
        Ok(Action::Release(ReleaseMatching {
            lease,
            user: user.map(values::username).transpose()?,
            host,
            feature: values::feature_opt(feature)?,
        }))
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Action::Status { feature, all } => {
                let features = client.figures(feature.as_deref()).await?;
                // JSON keeps the document of the spec; people also see what starts later.
                let upcoming = if out.is_json() && !all {
                    Vec::new()
                } else {
                    upcoming(client, feature.as_deref()).await?
                };
                if all {
                    status_all(client, out, &features, &upcoming).await?;
                } else {
                    out.status(&features, &upcoming);
                }
            }
            Action::Leases(query) => {
                let mut listing = out.leases_listing().map_err(Failure::printing)?;
                client
                    .each_leases_page(query, |page| listing.page(&page).map_err(Failure::printing))
                    .await?;
                listing.finish().map_err(Failure::printing)?;
            }
            Action::Checkout(checkout) => {
                let mut signals = Signals::install()?;
                super::output::hold_through_broken_pipes();
                let lease = tokio::select! {
                    lease = take(client, &checkout, out) => lease?,
                    signal = signals.recv() => return Err(hold::interrupted(signal, &checkout.feature)),
                };
                return if checkout.command.is_empty() {
                    hold::until_signal(lease, &checkout.feature, signals, out).await
                } else {
                    hold::around_command(lease, &checkout.feature, &checkout.command, signals, out)
                        .await
                };
            }
            Action::Release(release) => out.released(&client.release_matching(release).await?),
            Action::Queue(feature) => out.queue(&client.queue(feature.as_deref()).await?),
        }
        Ok(exit::OK)
    }
}

/// The checkout's lease: at once, or after a wait in the feature's queue (said once on a
/// terminal's stderr, with the place).
async fn take(client: &Client, checkout: &Checkout, out: &Output) -> Result<crate::Lease, Error> {
    let Some(limit) = checkout.wait else {
        return client.checkout(&checkout.feature, checkout.seats).await;
    };
    let (queued, place) = tokio::sync::oneshot::channel();
    let wait = client.checkout_wait_with(&checkout.feature, checkout.seats, limit, Some(queued));
    tokio::pin!(wait);
    tokio::select! {
        lease = &mut wait => return lease,
        place = place => if let Ok(place) = place {
            out.queued(&place);
        },
    }
    wait.await
}

/// `status --all`: each feature with its holders, asked for a feature at a time and
/// printed page by page, so that no listing is held whole.
async fn status_all(
    client: &Client,
    out: &Output,
    features: &[FeatureFigures],
    upcoming: &[Entitlement],
) -> Result<(), Failure> {
    let mut printer = out
        .status_all_printer(features)
        .map_err(Failure::printing)?;
    for figures in features {
        printer
            .feature(figures, upcoming)
            .map_err(Failure::printing)?;
        let f = &figures.status;
        let query = LeasesQuery {
            feature: Some(f.feature.clone()),
            user: None,
        };
        client
            .each_holders_page(query, |page| {
                printer.holders(f, &page).map_err(Failure::printing)
            })
            .await?;
        printer
            .end_feature(f, upcoming)
            .map_err(Failure::printing)?;
    }
    printer.finish().map_err(Failure::printing)
}

/// The entitlements not yet started (of one feature, when given), soonest first.
async fn upcoming(client: &Client, feature: Option<&str>) -> Result<Vec<Entitlement>, Error> {
    let now = now_millis();
    let mut later: Vec<Entitlement> = client
        .entitlements(feature)
        .await?
        .into_iter()
        .filter(|e| e.starts_at > now)
        .collect();
    later.sort_by_key(|e| (e.starts_at, e.id));
    Ok(later)
}
