//! About the server: `server info`.

use super::args::ServerCommand;
use super::failure::{exit, Failure};
use super::output::Output;
use crate::Client;

/// A server command, ready to send.
pub enum Action {
    Info,
}

impl Action {
    pub fn new(command: ServerCommand) -> Self {
        match command {
            ServerCommand::Info => Action::Info,
        }
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Action::Info => out.server_info(&client.server_info().await?),
        }
        Ok(exit::OK)
    }
}
