//! Borrowed seats for offline use: `borrow` and `return` (with the server), `borrows` and
//! `verify` (on this machine, with the server only when one answers).

use std::time::Duration;

use super::args::Globals;
use super::failure::{exit, Failure};
use super::output::Output;
use super::settings::{client_config_from, client_file};
use super::values;
use crate::{BorrowStore, Client, Trust};

/// A borrow command that needs the server, checked and ready to send.
pub enum Action {
    Borrow {
        feature: String,
        seats: u32,
        duration: Duration,
    },
    Return {
        feature: String,
    },
}

/// A borrow command answered on this machine.
pub enum Local {
    /// The borrows kept here, checked with no network.
    Borrows,
    /// The borrow of a feature, checked with the server when one is reachable, else offline.
    Verify { feature: String },
}

impl Action {
    pub fn borrow(feature: String, duration: &str, seats: u32) -> Result<Self, Failure> {
        Ok(Action::Borrow {
            feature: values::feature(feature)?,
            duration: values::duration(duration)?,
            seats: values::seats(seats)?,
        })
    }

    pub fn give_back(feature: String) -> Result<Self, Failure> {
        Ok(Action::Return {
            feature: values::feature(feature)?,
        })
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Action::Borrow {
                feature,
                seats,
                duration,
            } => {
                if let Some(held) = already_borrowed(client, &feature).await? {
                    return Err(Failure {
                        code: exit::FAILED,
                        error_code: "already_exists".into(),
                        lines: Vec::new(),
                        message: format!(
                            "this machine already borrows {} seat(s) of {feature} until {} (lease {}); to borrow for longer or more seats, give it back first with `tally return {feature}`",
                            held.seats,
                            tally_protocol::format_time(held.expires_at),
                            held.lease
                        ),
                    });
                }
                let (lease, path) = client.borrow(&feature, seats, duration).await?;
                out.borrowed(&lease, &path);
            }
            Action::Return { feature } => out.returned(client.return_borrows(&feature).await?),
        }
        Ok(exit::OK)
    }
}

/// The borrow of `feature` this machine holds from this server, if any: a token kept here
/// that is valid offline, for this user, and that the server still holds.
async fn already_borrowed(
    client: &Client,
    feature: &str,
) -> Result<Option<tally_protocol::BorrowClaims>, Failure> {
    let store = client.borrow_store()?;
    let server = &client.welcome().server_id;
    let kept: Vec<tally_protocol::BorrowClaims> = store
        .verify_all(client.trust(), client.machine_id())?
        .into_iter()
        .filter(|(_, verdict)| verdict.valid)
        .filter_map(|(borrow, _)| borrow.claims)
        .filter(|c| c.feature == feature && &c.server_id == server)
        .filter(|c| c.user.eq_ignore_ascii_case(client.username()))
        .collect();
    let Some(first) = kept.into_iter().min_by_key(|c| c.expires_at) else {
        return Ok(None);
    };
    // A borrow returned or ended meanwhile does not count: the server must still hold one.
    let verdict = client.verify_borrow(feature).await?;
    Ok(verdict.valid.then_some(first))
}

impl Local {
    pub fn verify(feature: String) -> Result<Self, Failure> {
        Ok(Local::Verify {
            feature: values::feature(feature)?,
        })
    }

    /// `borrows`: the borrows kept on this machine, checked with no network. `verify`: the
    /// borrow of a feature, checked with the server when one is reachable (so a returned or
    /// released borrow fails while online), else offline; the verdict says which.
    pub async fn run(
        self,
        globals: &Globals,
        machine_id: &str,
        out: &Output,
    ) -> Result<u8, Failure> {
        let found = client_file(globals)?;
        let Some(ca) = globals.ca.clone().or(found.file.ca.clone()) else {
            return Err(found.missing(
                "no CA given (checking a borrow needs the CA that certifies the server's signing key)",
                "ca",
                "--ca FILE or TALLY_CA",
            ));
        };
        let trust = Trust::from_file(&ca)?;
        let store = BorrowStore::open_default()?;
        let Local::Verify { feature } = self else {
            out.borrows(&store.verify_all(&trust, machine_id)?);
            return Ok(exit::OK);
        };
        let online = match client_config_from(globals, &found) {
            Ok(settings) => {
                let mut config = settings.config.clone();
                config.machine_id = machine_id.to_string();
                // Offline is the common case for a borrow: give up on the network quickly.
                config.connect_timeout = Duration::from_secs(3);
                config.request_timeout = Duration::from_secs(5);
                match Client::connect(config)
                    .await
                    .map_err(|err| settings.sign_in_failure(err).message)
                {
                    Ok(client) => client
                        .verify_borrow(&feature)
                        .await
                        .map_err(|err| format!("the server did not answer ({err})")),
                    Err(err) => Err(format!("no server reachable ({err})")),
                }
            }
            Err(failure) => Err(format!("no server configured ({})", failure.message)),
        };
        let verdict = match online {
            Ok(verdict) => verdict,
            Err(why) => {
                let mut verdict = store.verify_offline(&feature, &trust, machine_id)?;
                verdict.reason = format!("{}; checked offline: {why}", verdict.reason);
                verdict
            }
        };
        out.verdict(&verdict);
        Ok(if verdict.valid {
            exit::OK
        } else {
            exit::NO_SEAT
        })
    }
}
