//! About the server: `server info` and `server nodes`.

use super::args::ServerCommand;
use super::failure::{exit, Failure};
use super::output::Output;
use crate::Client;

/// A server command, ready to send.
pub enum Action {
    Info,
    Nodes,
}

impl Action {
    pub fn new(command: ServerCommand) -> Self {
        match command {
            ServerCommand::Info => Action::Info,
            ServerCommand::Nodes => Action::Nodes,
        }
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Action::Info => out.server_info(&client.server_info().await?),
            Action::Nodes => out.server_nodes(&client.server_nodes().await?),
        }
        Ok(exit::OK)
    }
}
