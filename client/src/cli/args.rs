//! The arguments of `tally` as clap reads them: global options and every command, as text.
//!
//! Nothing here is checked beyond what clap checks (types, required arguments); each command
//! family's module turns its arguments into a request, with their validation, in one step.
//! Every argument and option says what it is for: `tally --help`, `tally COMMAND --help`,
//! the completions and the manual page are made from these texts.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

/// What `tally --help` ends with: exit codes and the environment.
const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  refused or failed (the message says why)
  2  usage error (nothing was sent)
  3  no seat free (or a queue wait ended unserved); `verify`: the borrow is not valid
  4  unauthenticated or forbidden
  5  cannot reach any server, or a server did not answer in time
  `checkout F -- CMD` exits with the command's status (126 or 127 when it cannot start).
  `checkout` ended by a signal before the server answered: 128 + the signal (130 for
  SIGINT). A stdout whose reader left (`tally leases | head`): 141, quietly.

Environment:
  TALLY_CONFIG      client file (default ~/.config/tally/client.toml), as --config
  TALLY_SERVER      servers, comma-separated HOST:PORT, as --server
  TALLY_CA          CA certificate file, as --ca
  TALLY_TOKEN       token to sign in with, as --token (not shown in the process list)
  TALLY_DATA_DIR    where borrow tokens are kept (default $XDG_DATA_HOME/tally or
                    ~/.local/share/tally)
  TALLY_MACHINE_ID  machine id for borrows, used only where /etc/machine-id is missing
  TALLY_LOG         log filter for the library's warnings on stderr (default warn)
  NO_COLOR          set to any non-empty value: no colour in help and warnings

A client file has `servers`, `ca` and `token_file` (or `token`); see the README.";

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Command-line client of the Tally license server",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,
    #[command(subcommand)]
    pub command: Command,
}

/// The options every command takes: where the server is and how to sign in.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct Globals {
    /// Client file naming the servers, the CA and the token [default:
    /// ~/.config/tally/client.toml].
    #[arg(long, global = true, env = "TALLY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Server to use, HOST:PORT, instead of the client file's (repeatable; TALLY_SERVER
    /// takes a comma-separated list).
    #[arg(
        long = "server",
        global = true,
        env = "TALLY_SERVER",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    pub servers: Vec<String>,
    /// CA certificate (PEM) that signed the server's certificate, instead of the client
    /// file's.
    #[arg(long, global = true, env = "TALLY_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Token to sign in with, instead of the client file's (others on this machine can read
    /// it in the process list: prefer TALLY_TOKEN or --token-file).
    #[arg(
        long,
        global = true,
        env = "TALLY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// File holding the token to sign in with.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print one JSON document on stdout, errors included.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print the client library's warnings (reconnects and the like); -vv for more.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Whether the token was given with --token rather than TALLY_TOKEN (set after parsing,
    /// to say where a refused token came from).
    #[arg(skip)]
    pub token_on_command_line: bool,
    /// Whether the servers were given with --server rather than TALLY_SERVER (set after
    /// parsing, to say where a malformed one came from).
    #[arg(skip)]
    pub servers_on_command_line: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Seat figures of every feature, or of one; with --all, who holds them.
    Status {
        /// Only this feature.
        feature: Option<String>,
        /// Under each feature, its holders: user, host, program, pid, address, since (like
        /// `lmstat -a`).
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Leases held (admins see everyone's, others their own).
    Leases {
        /// Only leases of this feature.
        #[arg(long)]
        feature: Option<String>,
        /// Only leases of this user (an e-mail address).
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
    },
    /// Check out seats and hold them until interrupted, or while running a command.
    Checkout(CheckoutArgs),
    /// Checkouts waiting for a seat, each feature's in the order they are served (admins
    /// see every one, others their own).
    Queue {
        /// Only this feature's queue.
        feature: Option<String>,
    },
    /// Manage entitlements (purchases of a feature).
    #[command(subcommand)]
    Entitlement(EntitlementCommand),
    /// Manage prerequisites: features whose checkout also takes a seat of another.
    #[command(subcommand)]
    Feature(FeatureCommand),
    /// Manage groups of users, hosts and addresses that policy rules name (admins).
    #[command(subcommand)]
    Group(GroupCommand),
    /// Manage policy rules: who may use a feature, seats reserved and capped, borrowing
    /// and queue priority (admins).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Force the check-in of online leases (admins), like `lmremove`: one by its id or a
    /// unique prefix of it, or every lease of a user or host.
    #[command(group(
        ArgGroup::new("which")
            .args(["lease_id", "user", "host"])
            .required(true)
            .multiple(true)
    ))]
    Release {
        /// The lease: its id, its first digits (at least 4, e.g. 3f9c) or PREFIX...SUFFIX as
        /// listings abbreviate it.
        #[arg(conflicts_with_all = ["user", "host", "feature"])]
        lease_id: Option<String>,
        /// Release every online lease of this user (an e-mail address).
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
        /// Release every online lease held on this host (with --user: that user's there).
        #[arg(long)]
        host: Option<String>,
        /// With --user or --host: only leases of this feature.
        #[arg(long)]
        feature: Option<String>,
    },
    /// About the server.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Notifications: how delivery to each sink stands, and a test sent to every sink
    /// (admins).
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Your account, the seats assigned to you and the leases you hold.
    Whoami,
    /// Manage users (admins).
    #[command(subcommand)]
    User(UserCommand),
    /// Who has which seats assigned by name, per feature (admins see everyone's, others
    /// their own).
    Assignments {
        /// Only this user's (an e-mail address).
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
        /// Only this feature's.
        #[arg(long)]
        feature: Option<String>,
    },
    /// Assign seats of a feature to a user by name (admins); with --csv, to every user of a
    /// file.
    Assign {
        /// The user (an e-mail address).
        #[arg(required_unless_present_any = ["csv", "template"])]
        email: Option<String>,
        /// The feature, e.g. vray.
        #[arg(required_unless_present_any = ["csv", "template"])]
        feature: Option<String>,
        /// How many seats.
        #[arg(long, default_value_t = 1)]
        seats: u32,
        /// The entitlement to draw from (default: the active one expiring last with room).
        #[arg(long, value_name = "ID")]
        entitlement: Option<String>,
        /// Take the seats from this user's assignment instead of the floating pool.
        #[arg(long, value_name = "EMAIL")]
        from: Option<String>,
        /// End of the assignment (RFC 3339, or YYYY-MM-DD: the end of that day, UTC); no later
        /// than the entitlement's.
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
        /// Assign from a CSV file with the columns email,feature,seats,entitlement (the last
        /// two may be left out: 1 seat, any entitlement with room).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["email", "feature", "from", "expires", "entitlement"])]
        csv: Option<PathBuf>,
        #[command(flatten)]
        bulk: BulkFlags,
    },
    /// Revoke seats assigned to a user (admins); all of them unless --seats.
    Revoke {
        /// The user (an e-mail address).
        #[arg(required_unless_present_any = ["csv", "template"])]
        email: Option<String>,
        /// The feature whose seats to revoke.
        #[arg(required_unless_present_any = ["csv", "template"])]
        feature: Option<String>,
        /// How many seats (default: all of them).
        #[arg(long)]
        seats: Option<u32>,
        /// Revoke from a CSV file with the columns email,feature,seats (seats may be left
        /// empty or out: all of them).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["email", "feature", "seats"])]
        csv: Option<PathBuf>,
        #[command(flatten)]
        bulk: BulkFlags,
    },
    /// Borrow seats for offline use on this machine.
    Borrow {
        /// The feature to borrow.
        feature: String,
        /// How long, e.g. 3d or 72h.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// How many seats.
        #[arg(long, default_value_t = 1)]
        seats: u32,
    },
    /// Give back the borrows of a feature that this machine holds; fails when the server
    /// confirms none (the token files stay).
    Return {
        /// The feature to give back.
        feature: String,
    },
    /// The borrows kept on this machine and whether they are valid (offline).
    Borrows,
    /// Check the stored borrow of a feature: with the server when one is reachable, else
    /// offline. Exit 0 if valid, else 3.
    Verify {
        /// The feature whose borrow to check.
        feature: String,
    },
    /// Read the audit log (admins), newest first.
    Audit {
        /// Only events at or after this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only events by or about this user.
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
        /// Only events about this feature.
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
    /// Metered credits (admins buy them; everyone signed in sees the meters' figures).
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Users' quotas of metered credits: set and remove them (admins), list them (members
    /// see their own).
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Consume credits of a meter for yourself; prints the amount, the meter's balance and
    /// what your quota has left. Refused whole (exit 1, no_credit) when you have no access,
    /// or your quota or the meter's balance is short.
    Consume {
        /// The meter, e.g. cloud-render.
        meter: String,
        /// How many credits, a whole number of at least 1.
        #[arg(allow_negative_numbers = true)]
        amount: String,
        /// The consumption's request id, 32 hex digits: run again with the same id (and the
        /// same meter and amount), it answers as the first run did and consumes nothing more,
        /// so a script can retry safely. Default: a new random id.
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
    },
    /// Usage reports from the server's lease history (admins). Reports count whole UTC
    /// hours: --since is rounded down and --until up to the hour. Default range: the last
    /// 7 days up to now.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Print a shell completion script for tally (no server needed).
    Completions {
        /// The shell to complete for.
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
        /// The user's e-mail address, which they sign in as.
        email: String,
        /// admin, member or guest.
        #[arg(long, default_value = "member")]
        role: String,
        /// Their full name, for listings.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Add the users of a CSV file with the columns email,role,name (role may be left empty
    /// or out: member).
    Import {
        /// The CSV file.
        #[arg(required_unless_present = "template")]
        file: Option<PathBuf>,
        /// Mint each new user's first token and write them to this new file (CSV
        /// line,email,token, readable by you alone); without it the users get no token,
        /// and `tally user token EMAIL` mints one.
        #[arg(long, value_name = "OUT")]
        tokens: Option<PathBuf>,
        #[command(flatten)]
        bulk: BulkFlags,
    },
    /// List users, with the seats assigned to each per feature.
    List {
        /// Print CSV (email,name,role,state,assigned_seats,last_seen) instead of a table or
        /// JSON.
        #[arg(long)]
        csv: bool,
    },
    /// Mint another token for a user, shown once; `user token revoke ID` revokes one.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Token {
        /// The user to mint a token for (an e-mail address).
        #[arg(required = true)]
        email: Option<String>,
        /// What the token is for, to tell it from the user's others.
        #[arg(long, default_value = "")]
        label: String,
        #[command(subcommand)]
        action: Option<TokenCommand>,
    },
    /// List a user's tokens (ids, labels, when last used; never the tokens).
    Tokens {
        /// The user whose tokens to list (an e-mail address).
        email: String,
    },
    /// Deactivate a user: their leases end and their assigned seats return to the pool.
    Deactivate {
        /// The user to deactivate (an e-mail address).
        #[arg(required_unless_present_any = ["csv", "template"])]
        email: Option<String>,
        /// Deactivate every user of a CSV file with the column email.
        #[arg(long, value_name = "FILE", conflicts_with = "email")]
        csv: Option<PathBuf>,
        #[command(flatten)]
        bulk: BulkFlags,
    },
    /// Activate a user again, restoring their assigned seats.
    Activate {
        /// The user to activate (an e-mail address).
        email: String,
    },
    /// Remove a user who has no assignments and no borrowed seats.
    Remove {
        /// The user to remove (an e-mail address).
        #[arg(required_unless_present_any = ["csv", "template"])]
        email: Option<String>,
        /// Remove every user of a CSV file with the column email.
        #[arg(long, value_name = "FILE", conflicts_with = "email")]
        csv: Option<PathBuf>,
        #[command(flatten)]
        bulk: BulkFlags,
    },
}

/// What every bulk command (a CSV file of rows, SPEC R19) takes.
#[derive(Debug, Args)]
pub struct BulkFlags {
    /// Check every row of the file as it would apply and report the outcome, storing
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the refused rows to this new CSV file (line,email,code,reason and the row's
    /// own columns): fix them and give the file to the same command again.
    #[arg(long, value_name = "OUT.csv")]
    pub failures: Option<PathBuf>,
    /// Print the header line of the command's CSV file and exit.
    #[arg(long)]
    pub template: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Revoke a token by id (`tally user tokens EMAIL` lists them); connections signed in
    /// with it end at once.
    Revoke {
        /// The token's id.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    /// The feature to check out.
    pub feature: String,
    /// How many seats.
    #[arg(long, default_value_t = 1)]
    pub seats: u32,
    /// When no seat is free, wait in the feature's queue (first come, first served) for at
    /// most DURATION (90s, 15m, 8h, 7d); with no value, with no limit. When it passes
    /// unserved: exit 3 with queue_timeout.
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "")]
    pub wait: Option<String>,
    /// Command to run while holding the lease; tally exits with its status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum EntitlementCommand {
    /// Add an entitlement.
    Add {
        /// The feature it licenses, e.g. vray.
        feature: String,
        /// How many seats.
        #[arg(long)]
        seats: u32,
        /// Start (RFC 3339 or YYYY-MM-DD, UTC); default now.
        #[arg(long, value_name = "TIME")]
        starts: Option<String>,
        /// End (RFC 3339, or YYYY-MM-DD: the end of that day, UTC); default never.
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
        /// A trial: its assignments cannot be revoked or moved.
        #[arg(long)]
        trial: bool,
        /// Its seats may be borrowed for offline use.
        #[arg(long)]
        borrowable: bool,
        /// Longest borrow, e.g. 72h or 7d (default 168h).
        #[arg(long, value_name = "DURATION")]
        max_borrow: Option<String>,
        /// Free text, e.g. the order number.
        #[arg(long = "ref", value_name = "TEXT")]
        reference: Option<String>,
    },
    /// List entitlements, with their start and end (including ones not yet started).
    List {
        /// Only this feature's.
        feature: Option<String>,
    },
    /// Change an entitlement: a renewal or a correction. Only what is given changes.
    Update {
        /// The entitlement's id (`tally entitlement list` shows them).
        id: String,
        /// How many seats; fewer than the floating seats in use is refused unless --force.
        #[arg(long)]
        seats: Option<u32>,
        /// Start (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long, value_name = "TIME")]
        starts: Option<String>,
        /// End (RFC 3339 or YYYY-MM-DD, UTC), or `never`.
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
        /// Its seats may be borrowed for offline use from now on.
        #[arg(long, conflicts_with = "no_borrowable")]
        borrowable: bool,
        /// Its seats may no longer be borrowed (borrows already made stay).
        #[arg(long)]
        no_borrowable: bool,
        /// Longest borrow from now on, e.g. 72h or 7d.
        #[arg(long, value_name = "DURATION")]
        max_borrow: Option<String>,
        /// Free text, e.g. the order number of the renewal.
        #[arg(long = "ref", value_name = "TEXT")]
        reference: Option<String>,
        /// End the newest online leases the smaller pool cannot hold, instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Remove an entitlement by id; refused if that would end leases, unless --force.
    Remove {
        /// The entitlement's id (`tally entitlement list` shows them).
        id: String,
        /// End the leases its removal leaves no room for, and list them.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum FeatureCommand {
    /// Make every checkout of FEATURE also take one seat of PREREQUISITE for the same
    /// client instance (unless it holds one already), and assigning FEATURE need an
    /// assignment of PREREQUISITE (admins).
    Require {
        /// The feature that needs another, e.g. vray.
        feature: String,
        /// The feature it needs, e.g. maya.
        prerequisite: String,
    },
    /// Drop a prerequisite (admins).
    Unrequire {
        /// The feature that needed another.
        feature: String,
        /// The feature it no longer needs.
        prerequisite: String,
    },
    /// List every feature with prerequisites, and what it requires.
    List,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group, with members given as user:EMAIL, host:GLOB (the client's host name;
    /// `*` and `?` wildcards) or ip:CIDR (the address the server sees).
    Add {
        /// The group's name, e.g. juniors.
        name: String,
        /// Its first members, e.g. user:ana@studio.com host:render-* ip:10.1.0.0/16.
        members: Vec<String>,
    },
    /// Add members to a group or remove them.
    #[command(subcommand)]
    Member(GroupMemberCommand),
    /// List every group and its members.
    List,
    /// Remove a group no rule names.
    Remove {
        /// The group's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupMemberCommand {
    /// Add members (those it has already are left as they are).
    Add {
        /// The group's name.
        name: String,
        /// user:EMAIL, host:GLOB or ip:CIDR.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove members.
    Remove {
        /// The group's name.
        name: String,
        /// Members as the group lists them.
        #[arg(required = true)]
        members: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Add a rule to a feature: include GROUP, exclude GROUP, reserve N GROUP, max N GROUP
    /// [--each], borrow-exclude GROUP, borrow-lowwater N, priority N GROUP. Says which
    /// current leases it puts over its limit and which active users it refuses.
    Add {
        /// The feature the rule is for, e.g. nuke.
        feature: String,
        /// The rule, e.g. `max 2 juniors`.
        #[arg(required = true, num_args = 1..=3)]
        rule: Vec<String>,
        /// For max: the limit holds for each member rather than for the group together.
        #[arg(long)]
        each: bool,
        /// Only say what the rule would do; store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the rules of a feature, or of every feature.
    List {
        /// Only this feature's rules.
        feature: Option<String>,
    },
    /// Remove a rule by its id.
    Remove {
        /// The rule's id, as `policy list` shows it.
        id: u64,
    },
    /// Explain how the rules decide a checkout of FEATURE for one holder (nothing is
    /// taken); exits 0 when allowed, 1 when not.
    Check {
        /// The feature.
        feature: String,
        /// The user (an e-mail address).
        #[arg(long, value_name = "EMAIL")]
        user: String,
        /// The host name the user's client reports.
        #[arg(long)]
        host: Option<String>,
        /// The address the user connects from.
        #[arg(long)]
        ip: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Per feature and period: pool, peak seats held at once, seat-hours, utilisation,
    /// checkouts, denials and distinct users; then, per meter, period and user, the credits
    /// consumed (a second table, "Credits consumed"; `meters` in JSON). Reports count
    /// whole UTC hours; default range: the last 7 days up to now.
    Usage {
        /// Only this feature, or this meter (a name that is only one of them leaves the
        /// other's rows empty).
        #[arg(long)]
        feature: Option<String>,
        /// The start of the range (RFC 3339 or YYYY-MM-DD), rounded down to the hour;
        /// default: 7 days before --until.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// The end of the range, excluded (RFC 3339 or YYYY-MM-DD, the start of that day),
        /// rounded up to the hour; default: now.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// The length of a period: hour, day, week (ISO, from Monday) or month, in UTC.
        #[arg(long, value_name = "PERIOD", default_value = "day")]
        by: String,
        /// Print CSV instead of a table or JSON: the features' rows, or with --meters the
        /// meters' (meter,period_start,user,consumed,consumptions).
        #[arg(long)]
        csv: bool,
        /// Only the credits consumed per meter, period and user: the table, the CSV, or
        /// JSON `{"meters": [...]}`.
        #[arg(long)]
        meters: bool,
    },
    /// Per user and feature over the range: seat-hours, checkouts, denials and the last
    /// time they held a seat. Reports count whole UTC hours; default range: the last 7 days
    /// up to now.
    Users {
        /// Only this feature.
        #[arg(long)]
        feature: Option<String>,
        /// The start of the range (RFC 3339 or YYYY-MM-DD), rounded down to the hour;
        /// default: 7 days before --until.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// The end of the range, excluded (RFC 3339 or YYYY-MM-DD, the start of that day),
        /// rounded up to the hour; default: now.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Print CSV instead of a table or JSON.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CreditsCommand {
    /// Buy credits into a meter's pool (admins); the meter is made by its first purchase.
    Add {
        /// The meter, named like a feature, e.g. cloud-render.
        meter: String,
        /// How many credits, a whole number of at least 1.
        #[arg(allow_negative_numbers = true)]
        amount: String,
        /// When what is left of them stops counting (RFC 3339, or YYYY-MM-DD: the end of
        /// that day, UTC); default never.
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
        /// Free text, e.g. the order number.
        #[arg(long = "ref", value_name = "TEXT")]
        reference: Option<String>,
    },
    /// Each meter's credits: purchased, consumed, expired (left in purchases that ended)
    /// and the balance.
    Status {
        /// Only this meter.
        meter: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Give a user a quota of a meter, or unlimited access (admins). What they consumed
    /// before counts against it. A quota reserves nothing: it caps what the user may take
    /// from the meter's pool.
    Set {
        /// The user (an e-mail address).
        email: String,
        /// The meter, which must have had a purchase.
        meter: String,
        /// The quota: how many credits the user may consume in all.
        #[arg(allow_negative_numbers = true)]
        amount: Option<String>,
        /// No quota: the user may consume whatever the pool holds.
        #[arg(long)]
        unlimited: bool,
    },
    /// Take a user's access to a meter away (admins); what they consumed stays counted.
    Remove {
        /// The user (an e-mail address).
        email: String,
        /// The meter.
        meter: String,
    },
    /// Users' access to meters: quota, used and remaining (admins see everyone's, others
    /// their own).
    List {
        /// Only this meter.
        meter: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Notifications not yet delivered everywhere, those a sink gave up on, and per sink
    /// how many it delivered and gave up and its latest error.
    Status,
    /// Send one notification of kind `test` straight to every sink (not through the
    /// outbox) and report each outcome; exit 1 when any sink failed.
    Test,
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

    /// Every command, argument and option says what it is for (item 8 of issue 11): the
    /// help, completions and manual page are made from these texts.
    #[test]
    fn every_command_argument_and_option_is_described() {
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(sub_path.clone());
                }
                check(sub, &sub_path, missing);
            }
        }
        let mut missing = Vec::new();
        check(&Cli::command(), "tally", &mut missing);
        assert!(missing.is_empty(), "undescribed: {missing:?}");
    }

    /// `tally --help` lists the global options apart from the commands' own, and ends
    /// with the exit codes and the environment variables.
    #[test]
    fn the_help_lists_global_options_exit_codes_and_environment() {
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("Global options:"), "{help}");
        for word in [
            "Exit codes:",
            "TALLY_CONFIG",
            "TALLY_TOKEN",
            "TALLY_SERVER",
            "TALLY_DATA_DIR",
            "TALLY_MACHINE_ID",
            "NO_COLOR",
        ] {
            assert!(help.contains(word), "{word} missing from {help}");
        }
        let mut cli = Cli::command();
        cli.build();
        let release = cli.find_subcommand_mut("release").unwrap();
        let help = release.render_help().to_string();
        let (own, global) = help.split_once("Global options:").expect(&help);
        assert!(own.contains("--user") && own.contains("--host"), "{help}");
        assert!(
            global.contains("--config") && !own.contains("--config"),
            "{help}"
        );
    }
}
