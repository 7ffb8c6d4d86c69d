//! Accounts and their tokens: `whoami`, `user add|list|deactivate|activate|remove`, and
//! `user token|tokens|token revoke`.

use tally_protocol::{TokenMint, UserAdd};

use super::args::{TokenCommand, UserCommand};
use super::failure::{exit, Failure};
use super::output::Output;
use super::values;
use crate::Client;

/// An account or token command, checked and ready to send.
pub enum Action {
    Whoami,
    Add(UserAdd),
    List,
    MintToken(TokenMint),
    Tokens { username: String },
    RevokeToken { id: String },
    Deactivate { username: String },
    Activate { username: String },
    Remove { username: String },
}

impl Action {
    pub fn new(command: UserCommand) -> Result<Self, Failure> {
        Ok(match command {
            UserCommand::Add { email, role, name } => Action::Add(UserAdd {
                username: values::username(email)?,
                role: values::role(&role)?,
                name,
            }),
            UserCommand::List => Action::List,
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
            UserCommand::Deactivate { email } => Action::Deactivate {
                username: values::username(email)?,
            },
            UserCommand::Activate { email } => Action::Activate {
                username: values::username(email)?,
            },
            UserCommand::Remove { email } => Action::Remove {
                username: values::username(email)?,
            },
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
