//! Accounts and their tokens: `whoami`, `user add|list|deactivate|activate|remove`, and
//! `user token|tokens|token revoke`.

use tally_protocol::{TokenMint, UserAdd};

use super::args::{TokenCommand, UserCommand};
use super::bulk::{self, Kind};
use super::failure::{exit, Failure};
use super::output::Output;
use super::values;
use crate::Client;

/// An account or token command, checked and ready to send.
pub enum Action {
    Whoami,
    Add(UserAdd),
    List,
    /// `user list --csv`: with each user's last sign-in.
    ListCsv,
    /// A CSV file of users to import, remove or deactivate.
    Bulk(bulk::Action),
    MintToken(TokenMint),
    Tokens {
        username: String,
    },
    RevokeToken {
        id: String,
    },
    Deactivate {
        username: String,
    },
    Activate {
        username: String,
    },
    Remove {
        username: String,
    },
}

impl Action {
    /// `json` is the global `--json`, which `user list --csv` contradicts.
    pub fn new(command: UserCommand, json: bool) -> Result<Self, Failure> {
        Ok(match command {
            UserCommand::Import { file, tokens, bulk } => Action::Bulk(bulk::Action::new(
                bulk::Options {
                    kind: Kind::Import,
                    file,
                    dry_run: bulk.dry_run,
                    failures: bulk.failures,
                    tokens,
                },
                json,
            )?),
            UserCommand::List { csv: true } if json => {
                return Err(Failure::usage(
                    "--csv and --json ask for two formats; give one",
                ))
            }
            UserCommand::List { csv: true } => Action::ListCsv,
            UserCommand::Add { email, role, name } => Action::Add(UserAdd {
                username: values::username(email)?,
                role: values::role(&role)?,
                name,
            }),
            UserCommand::List { csv: false } => Action::List,
            UserCommand::Token {
                action: Some(TokenCommand::Revoke { id }),
                ..
            } => Action::RevokeToken { id },
            UserCommand::Token { email, label, .. } => Action::MintToken(TokenMint {
                // clap requires the name unless a subcommand is given.
                username: match email {
                    Some(email) => values::username(email)?,
                    None => String::new(),
                },
                label,
            }),
            UserCommand::Tokens { email } => Action::Tokens {
                username: values::username(email)?,
            },
            UserCommand::Deactivate { email, csv, bulk } => {
                match bulk::Action::with_csv(Kind::Deactivate, csv, bulk, json)? {
                    Some(bulk) => Action::Bulk(bulk),
                    None => Action::Deactivate {
                        username: values::username(email.unwrap_or_default())?,
                    },
                }
            }
            UserCommand::Activate { email } => Action::Activate {
                username: values::username(email)?,
            },
            UserCommand::Remove { email, csv, bulk } => {
                match bulk::Action::with_csv(Kind::Remove, csv, bulk, json)? {
                    Some(bulk) => Action::Bulk(bulk),
                    None => Action::Remove {
                        username: values::username(email.unwrap_or_default())?,
                    },
                }
            }
        })
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Action::Whoami => out.whoami(&client.whoami().await?),
            Action::Add(add) => {
                let (user, token) = client.add_user(add).await?;
                out.user_added(&user, &token);
            }
            Action::List => {
                let users = client.users().await?;
                // People see each user's seats per feature; JSON keeps the spec's document.
                let assignments = if out.is_json() {
                    Vec::new()
                } else {
                    client.assignments(None, None).await?
                };
                out.users(&users, &assignments).map_err(Failure::printing)?;
            }
            Action::ListCsv => out
                .users_csv(&client.users_seen().await?)
                .map_err(Failure::printing)?,
            Action::Bulk(bulk) => return bulk.run(client, out).await,
            Action::MintToken(mint) => out.token_issued(&client.mint_token(mint).await?),
            Action::Tokens { username } => out.tokens(&client.tokens(&username).await?),
            Action::RevokeToken { id } => out.token_revoked(&client.revoke_token(&id).await?),
            Action::Deactivate { username } => out.user(&client.deactivate_user(&username).await?),
            Action::Activate { username } => out.user(&client.activate_user(&username).await?),
            Action::Remove { username } => out.user_removed(&client.remove_user(&username).await?),
        }
        Ok(exit::OK)
    }
}
