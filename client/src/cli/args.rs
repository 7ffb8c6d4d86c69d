//! The arguments of `tally` as clap reads them: global options and every command, as text.
//!
//! Nothing here is checked beyond what clap checks (types, required arguments); each command
//! family's module turns its arguments into a request, with their validation, in one step.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Command-line client of the Tally license server"
)]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,
    #[command(subcommand)]
    pub command: Command,
}

/// The options every command takes: where the server is and how to sign in.
#[derive(Debug, Args)]
pub struct Globals {
    /// Client configuration file.
    #[arg(long, global = true, env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Server to use, HOST:PORT (repeatable; TALLY_SERVER takes a comma-separated list).
    #[arg(
        long = "server",
        global = true,
        env = "TALLY_SERVER",
        value_delimiter = ','
    )]
    pub servers: Vec<String>,
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long, global = true, env = "TALLY_CA")]
    pub ca: Option<PathBuf>,
    /// Token to sign in with.
    #[arg(long, global = true, env = "TALLY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the token.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print the client library's warnings (reconnects and the like); -vv for more.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Whether the token was given with --token rather than TALLY_TOKEN (set after parsing,
    /// to say where a refused token came from).
    #[arg(skip)]
    pub token_on_command_line: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Seat figures of every feature, or of one.
    Status { feature: Option<String> },
    /// Leases held (admins see everyone's).
    Leases {
        #[arg(long)]
        feature: Option<String>,
        #[arg(long)]
        user: Option<String>,
    },
    /// Check out seats and hold them until interrupted, or while running a command.
    Checkout(CheckoutArgs),
    /// Manage entitlements (purchases of a feature).
    #[command(subcommand)]
    Entitlement(EntitlementCommand),
    /// Force the check-in of someone's lease (admins).
    Release { lease_id: String },
    /// About the server.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Your account, the seats assigned to you and the leases you hold.
    Whoami,
    /// Manage users (admins).
    #[command(subcommand)]
    User(UserCommand),
    /// Assign seats of a feature to a user by name (admins).
    Assign {
        email: String,
        feature: String,
        #[arg(long, default_value_t = 1)]
        seats: u32,
        /// The entitlement to draw from (default: the active one expiring last with room).
        #[arg(long)]
        entitlement: Option<String>,
        /// Take the seats from this user's assignment instead of the floating pool.
        #[arg(long)]
        from: Option<String>,
        /// End of the assignment (RFC 3339, or YYYY-MM-DD: the end of that day, UTC); no later
        /// than the entitlement's.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Revoke seats assigned to a user (admins); all of them unless --seats.
    Revoke {
        email: String,
        feature: String,
        #[arg(long)]
        seats: Option<u32>,
    },
    /// Borrow seats for offline use on this machine.
    Borrow {
        feature: String,
        /// How long, e.g. 3d or 72h.
        #[arg(long = "for")]
        duration: String,
        #[arg(long, default_value_t = 1)]
        seats: u32,
    },
    /// Give back the borrows of a feature that this machine holds; fails when the server
    /// confirms none (the token files stay).
    Return { feature: String },
    /// The borrows kept on this machine and whether they are valid (offline).
    Borrows,
    /// Check the stored borrow of a feature: with the server when one is reachable, else
    /// offline. Exit 0 if valid, else 3.
    Verify { feature: String },
    /// Read the audit log (admins), newest first.
    Audit {
        /// Only events at or after this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Only events by or about this user.
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        feature: Option<String>,
        /// At most this many events (default 1000, at most 100000); they are fetched page by
        /// page.
        #[arg(long)]
        limit: Option<u32>,
        /// Print CSV instead of a table or JSON.
        #[arg(long)]
        csv: bool,
    },
    /// Print a shell completion script for tally (no server needed).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print tally's manual page in roff (no server needed), e.g. `tally man | man -l -`.
    Man,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; prints their first token, shown once.
    Add {
        email: String,
        /// admin, member or guest.
        #[arg(long, default_value = "member")]
        role: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List users.
    List,
    /// Mint another token for a user, shown once; `user token revoke ID` revokes one.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Token {
        #[arg(required = true)]
        email: Option<String>,
        /// What the token is for, to tell it from the user's others.
        #[arg(long, default_value = "")]
        label: String,
        #[command(subcommand)]
        action: Option<TokenCommand>,
    },
    /// List a user's tokens (ids, labels, when last used; never the tokens).
    Tokens { email: String },
    /// Deactivate a user: their leases end and their assigned seats return to the pool.
    Deactivate { email: String },
    /// Activate a user again, restoring their assigned seats.
    Activate { email: String },
    /// Remove a user who has no assignments and no borrowed seats.
    Remove { email: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Revoke a token by id (`tally user tokens EMAIL` lists them); connections signed in
    /// with it end at once.
    Revoke { id: String },
}

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    pub feature: String,
    #[arg(long, default_value_t = 1)]
    pub seats: u32,
    /// Command to run while holding the lease; tally exits with its status.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum EntitlementCommand {
    /// Add an entitlement.
    Add {
        feature: String,
        #[arg(long)]
        seats: u32,
        /// Start (RFC 3339 or YYYY-MM-DD, UTC); default now.
        #[arg(long)]
        starts: Option<String>,
        /// End (RFC 3339, or YYYY-MM-DD: the end of that day, UTC); default never.
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        trial: bool,
        #[arg(long)]
        borrowable: bool,
        /// Longest borrow, e.g. 72h or 7d (default 168h).
        #[arg(long)]
        max_borrow: Option<String>,
        /// Free text, e.g. the order number.
        #[arg(long = "ref")]
        reference: Option<String>,
    },
    /// List entitlements.
    List { feature: Option<String> },
    /// Remove an entitlement by id.
    Remove { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Server id, version, store, uptime and connections; on a cluster also this node's
    /// id, role, epoch and the leader.
    Info,
    /// The nodes of the cluster: id, address, role, epoch, last heartbeat (admins).
    Nodes,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap's own consistency checks over every command and argument.
    #[test]
    fn the_argument_definitions_are_consistent() {
        Cli::command().debug_assert();
    }
}
