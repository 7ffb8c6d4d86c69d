//! The `tally` command line (SPEC §6): global options, commands, `--json` documents and
//! exit codes. Kept in the library so that test harnesses can link the same binary.

mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tally_protocol::{
    validate_feature, validate_username, Assign, AuditPageQuery, AuditQuery, EntitlementKind,
    EntitlementQuery, EntitlementRemove, ErrorCode, LeaseId, LeasesPageQuery, LeasesQuery,
    NewEntitlement, Release, Request, Response, Revoke, Role, StatusQuery, TokenMint, TokenRevoke,
    UserAdd, UserRef,
};

use crate::config::{machine_id_from, ClientFile, MACHINE_ID_FILES};
use crate::{Client, ClientConfig, Error};
use output::{say_err, Output};

/// Events or leases asked for per page; the server may send fewer.
const PAGE: u32 = 1000;

/// The environment variable a token may come in; the command run by `checkout -- CMD`
/// does not get it.
const TOKEN_ENV: &str = "TALLY_TOKEN";

/// Exit codes (SPEC §6).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NO_SEAT: u8 = 3;
    pub const DENIED: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
    /// `checkout -- CMD`: the command was found but cannot be run (as a shell says).
    pub const CANNOT_EXECUTE: u8 = 126;
    /// `checkout -- CMD`: the command was not found (as a shell says).
    pub const NOT_FOUND: u8 = 127;
}

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Command-line client of the Tally license server"
)]
struct Cli {
    /// Client configuration file.
    #[arg(long, global = true, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Server to use, HOST:PORT (repeatable; TALLY_SERVER takes a comma-separated list).
    #[arg(
        long = "server",
        global = true,
        env = "TALLY_SERVER",
        value_delimiter = ','
    )]
    servers: Vec<String>,
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long, global = true, env = "TALLY_CA")]
    ca: Option<PathBuf>,
    /// Token to sign in with.
    #[arg(long, global = true, env = "TALLY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the token.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        /// End of the assignment (RFC 3339 or YYYY-MM-DD); no later than the entitlement's.
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
        /// At most this many events (default 1000); they are fetched page by page.
        #[arg(long)]
        limit: Option<u32>,
        /// Print CSV instead of a table or JSON.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
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
enum TokenCommand {
    /// Revoke a token by id (`tally user tokens EMAIL` lists them); connections signed in
    /// with it end at once.
    Revoke { id: String },
}

#[derive(Debug, Args)]
struct CheckoutArgs {
    feature: String,
    #[arg(long, default_value_t = 1)]
    seats: u32,
    /// Command to run while holding the lease; tally exits with its status.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum EntitlementCommand {
    /// Add an entitlement.
    Add {
        feature: String,
        #[arg(long)]
        seats: u32,
        /// Start (RFC 3339 or YYYY-MM-DD, UTC); default now.
        #[arg(long)]
        starts: Option<String>,
        /// End (RFC 3339 or YYYY-MM-DD, UTC); default never.
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
enum ServerCommand {
    /// Server id, version, store, uptime and connections.
    Info,
}

/// A failure of a command, with its exit code.
struct Failure {
    code: u8,
    error_code: String,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: exit::USAGE,
            error_code: "invalid".into(),
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::Server(body) => match body.code {
                ErrorCode::NoSeat | ErrorCode::QueueTimeout => exit::NO_SEAT,
                ErrorCode::Unauthenticated | ErrorCode::Forbidden => exit::DENIED,
                _ => exit::FAILED,
            },
            Error::Unreachable(_) => exit::UNREACHABLE,
            Error::Config(_) => exit::USAGE,
            _ => exit::FAILED,
        };
        Failure {
            code,
            error_code: err.code_str().to_string(),
            message: err.to_string(),
        }
    }
}

/// Runs `tally` with the process's arguments.
pub fn main() -> ExitCode {
    main_with_machine_id_files(&MACHINE_ID_FILES.map(PathBuf::from))
}

/// Runs `tally`, reading the machine id from `files` (see [`crate::machine_id`]); test
/// harnesses stand in for other machines with files of their own.
pub fn main_with_machine_id_files(files: &[PathBuf]) -> ExitCode {
    restore_sigpipe();
    let json = std::env::args()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let parsed = Cli::command().try_get_matches().and_then(|matches| {
        let token_on_command_line = matches.value_source("token") == Some(ValueSource::CommandLine);
        Cli::from_arg_matches(&matches).map(|cli| (cli, token_on_command_line))
    });
    let cli = match parsed {
        Ok((cli, token_on_command_line)) => {
            if token_on_command_line {
                eprintln!("tally: warning: a token given with --token can be read by other users of this machine (in the process list); use --token-file FILE or the {TOKEN_ENV} environment variable");
            }
            cli
        }
        Err(err) => {
            use clap::error::ErrorKind;
            if json
                && !matches!(
                    err.kind(),
                    ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
                )
            {
                let message = err.kind().to_string();
                let detail = err.to_string();
                let detail = detail
                    .lines()
                    .next()
                    .unwrap_or(&message)
                    .trim_start_matches("error: ");
                output::print_error(true, "invalid", detail);
                return ExitCode::from(exit::USAGE);
            }
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    tracing_to_stderr();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            output::print_error(
                cli.json,
                "internal",
                &format!("cannot start the runtime: {err}"),
            );
            return ExitCode::from(exit::FAILED);
        }
    };
    let json = cli.json;
    let machine_id = machine_id_from(files, std::env::var("TALLY_MACHINE_ID").ok());
    match runtime.block_on(run(cli, machine_id)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            output::print_error(json, &failure.error_code, &failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// `tally ... | head` should end quietly when `head` stops reading, as other command-line
/// tools do, instead of failing to print. Rust ignores SIGPIPE by default; put it back.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called first thing in `main`, before any other thread exists, and installs
    // the default disposition, which runs no code of ours.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Warnings of the library (reconnects, lost leases) go to stderr; `TALLY_LOG` tunes them.
fn tracing_to_stderr() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli, machine_id: String) -> Result<u8, Failure> {
    let out = Output::new(cli.json);
    // Check what can be checked before touching the network.
    validate(&cli.command)?;
    // Borrows are checked on this machine, with a server only when one answers.
    if matches!(cli.command, Command::Borrows | Command::Verify { .. }) {
        return local_borrows(&cli, &machine_id, &out).await;
    }
    let mut config = client_config(&cli)?;
    config.machine_id = machine_id;
    let client = Client::connect(config).await?;
    match cli.command {
        Command::Status { feature } => {
            let response = client
                .call(Request::Status(StatusQuery { feature }))
                .await?;
            let Response::Status(features) = response else {
                return Err(bad(&response));
            };
            out.status(&features);
        }
        Command::Leases { feature, user } => {
            let query = LeasesQuery { feature, user };
            let mut leases = Vec::new();
            let mut after = None;
            loop {
                let request = Request::LeasesPage(LeasesPageQuery {
                    query: query.clone(),
                    after,
                    limit: Some(PAGE),
                });
                let response = client.call(request).await?;
                let Response::LeasesPage(page) = response else {
                    return Err(bad(&response));
                };
                leases.extend(page.leases);
                match page.next {
                    Some(next) if Some(next) != after => after = Some(next),
                    _ => break,
                }
            }
            out.leases(&leases);
        }
        Command::Checkout(args) => return checkout(&client, args, &out).await,
        Command::Entitlement(EntitlementCommand::Add {
            feature,
            seats,
            starts,
            expires,
            trial,
            borrowable,
            max_borrow,
            reference,
        }) => {
            let new = NewEntitlement {
                feature,
                seats,
                starts_at: starts.as_deref().map(parse_time).transpose()?,
                expires_at: expires.as_deref().map(parse_time).transpose()?,
                kind: if trial {
                    EntitlementKind::Trial
                } else {
                    EntitlementKind::Standard
                },
                borrowable,
                max_borrow_secs: max_borrow
                    .as_deref()
                    .map(parse_duration)
                    .transpose()?
                    .map(|d| d.as_secs()),
                reference: reference.unwrap_or_default(),
            };
            let response = client.call(Request::EntitlementAdd(new)).await?;
            let Response::Entitlement(entitlement) = response else {
                return Err(bad(&response));
            };
            out.entitlement(&entitlement);
        }
        Command::Entitlement(EntitlementCommand::List { feature }) => {
            let response = client
                .call(Request::EntitlementList(EntitlementQuery { feature }))
                .await?;
            let Response::Entitlements(list) = response else {
                return Err(bad(&response));
            };
            out.entitlements(&list);
        }
        Command::Entitlement(EntitlementCommand::Remove { id }) => {
            let id = parse_entitlement_id(&id)?;
            let response = client
                .call(Request::EntitlementRemove(EntitlementRemove { id }))
                .await?;
            let Response::EntitlementRemoved(id) = response else {
                return Err(bad(&response));
            };
            out.removed(id);
        }
        Command::Release { lease_id } => {
            let lease = parse_lease_id(&lease_id)?;
            let response = client.call(Request::Release(Release { lease })).await?;
            let Response::Released(id) = response else {
                return Err(bad(&response));
            };
            out.released(id);
        }
        Command::Whoami => {
            let response = client.call(Request::Whoami).await?;
            let Response::Whoami(me) = response else {
                return Err(bad(&response));
            };
            out.whoami(&me);
        }
        Command::User(command) => user_command(&client, command, &out).await?,
        Command::Assign {
            email,
            feature,
            seats,
            entitlement,
            from,
            expires,
        } => {
            let request = Assign {
                username: email,
                feature,
                seats,
                entitlement: entitlement
                    .as_deref()
                    .map(parse_entitlement_id)
                    .transpose()?,
                from,
                expires_at: expires.as_deref().map(parse_time).transpose()?,
            };
            let response = client.call(Request::Assign(request)).await?;
            let Response::Assignment(assignment) = response else {
                return Err(bad(&response));
            };
            out.assignment(&assignment);
        }
        Command::Revoke {
            email,
            feature,
            seats,
        } => {
            let request = Revoke {
                username: email,
                feature,
                seats,
            };
            let response = client.call(Request::Revoke(request)).await?;
            let Response::Revoked(count) = response else {
                return Err(bad(&response));
            };
            out.revoked(count);
        }
        Command::Borrow {
            feature,
            duration,
            seats,
        } => {
            let (lease, path) = client
                .borrow(&feature, seats, parse_duration(&duration)?)
                .await?;
            out.borrowed(&lease, &path);
        }
        Command::Return { feature } => {
            let seats = client.return_borrows(&feature).await?;
            out.returned(seats);
        }
        // Answered before connecting, by `local_borrows`.
        Command::Borrows | Command::Verify { .. } => {}
        Command::Audit {
            since,
            user,
            feature,
            limit,
            csv,
        } => {
            let mut query = AuditQuery {
                since: since.as_deref().map(parse_time).transpose()?,
                user,
                feature,
                limit: None,
            };
            let mut remaining = limit.unwrap_or(1000);
            let mut printer = out.audit(csv).map_err(printing)?;
            let mut before = None;
            while remaining > 0 {
                query.limit = Some(remaining.min(PAGE));
                let request = Request::AuditPage(AuditPageQuery {
                    query: query.clone(),
                    before,
                });
                let response = client.call(request).await?;
                let Response::AuditPage(page) = response else {
                    return Err(bad(&response));
                };
                let events = &page.events[..page.events.len().min(remaining as usize)];
                printer.page(events).map_err(printing)?;
                remaining -= events.len() as u32;
                match page.next {
                    Some(next) if !events.is_empty() && Some(next) != before => before = Some(next),
                    _ => break,
                }
            }
            printer.finish().map_err(printing)?;
        }
        Command::Server(ServerCommand::Info) => {
            let response = client.call(Request::ServerInfo).await?;
            let Response::ServerInfo(info) = response else {
                return Err(bad(&response));
            };
            out.server_info(&info);
        }
    }
    Ok(exit::OK)
}

async fn user_command(client: &Client, command: UserCommand, out: &Output) -> Result<(), Failure> {
    let user = |email: String| UserRef { username: email };
    let request = match command {
        UserCommand::Add { email, role, name } => Request::UserAdd(UserAdd {
            username: email,
            name,
            role: parse_role(&role)?,
        }),
        UserCommand::List => Request::UserList,
        UserCommand::Token {
            action: Some(TokenCommand::Revoke { id }),
            ..
        } => Request::TokenRevoke(TokenRevoke { id }),
        UserCommand::Token { email, label, .. } => Request::TokenMint(TokenMint {
            username: email.unwrap_or_default(),
            label,
        }),
        UserCommand::Tokens { email } => Request::TokenList(user(email)),
        UserCommand::Deactivate { email } => Request::UserDeactivate(user(email)),
        UserCommand::Activate { email } => Request::UserActivate(user(email)),
        UserCommand::Remove { email } => Request::UserRemove(user(email)),
    };
    match client.call(request).await? {
        Response::UserAdded { user, token } => out.user_added(&user, &token),
        Response::Users(users) => out.users(&users),
        Response::Token(token) => out.token(&token),
        Response::TokenIssued(issued) => out.token_issued(&issued),
        Response::Tokens(tokens) => out.tokens(&tokens),
        Response::TokenRevoked(id) => out.token_revoked(&id),
        Response::User(user) => out.user(&user),
        other => return Err(bad(&other)),
    }
    Ok(())
}

/// `borrows`: the borrows kept on this machine, checked with no network. `verify`: the
/// borrow of a feature, checked with the server when one is reachable (so a returned or
/// released borrow fails while online), else offline; the verdict says which.
async fn local_borrows(cli: &Cli, machine_id: &str, out: &Output) -> Result<u8, Failure> {
    let file = client_file(cli)?;
    let Some(ca) = cli.ca.clone().or(file.ca) else {
        return Err(Failure::usage(
            "checking a borrow needs the CA that certifies the server's signing key: set `ca` in the client file, --ca or TALLY_CA",
        ));
    };
    let trust = crate::Trust::from_file(&ca)?;
    let store = crate::BorrowStore::open_default()?;
    let Command::Verify { feature } = &cli.command else {
        out.borrows(&store.verify_all(&trust, machine_id)?);
        return Ok(exit::OK);
    };
    let online = match client_config(cli) {
        Ok(mut config) => {
            config.machine_id = machine_id.to_string();
            // Offline is the common case for a borrow: give up on the network quickly.
            config.connect_timeout = Duration::from_secs(3);
            config.request_timeout = Duration::from_secs(5);
            match Client::connect(config).await {
                Ok(client) => client
                    .verify_borrow(feature)
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
            let mut verdict = store.verify_offline(feature, &trust, machine_id)?;
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

fn bad(response: &Response) -> Failure {
    Failure::from(crate::session::unexpected(response))
}

fn printing(err: std::io::Error) -> Failure {
    Failure {
        code: exit::FAILED,
        error_code: "internal".into(),
        message: format!("cannot print the result: {err}"),
    }
}

/// Finds a command as `execvp` does: a name with a slash is a path, any other is looked for
/// in the directories of `PATH`. `NotFound` when nothing of that name exists,
/// `PermissionDenied` when it exists but is not an executable file.
fn find_program(name: &str) -> std::io::Result<PathBuf> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::PermissionsExt;
    let runnable = |path: &std::path::Path| -> std::io::Result<()> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(Error::new(ErrorKind::PermissionDenied, "not a file"));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "not executable (no x permission)",
            ));
        }
        Ok(())
    };
    if name.is_empty() {
        return Err(Error::new(ErrorKind::NotFound, "empty command name"));
    }
    if name.contains('/') {
        return runnable(name.as_ref()).map(|()| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut refused = None;
    for dir in std::env::split_paths(&path) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(name);
        match runnable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => refused = refused.or(Some(err)),
        }
    }
    Err(refused.unwrap_or_else(|| Error::new(ErrorKind::NotFound, "not found in PATH")))
}

/// Why `checkout -- CMD` could not start the command, with the exit status a shell
/// gives: 127 when it is not found, 126 when it is found but cannot be run.
fn spawn_failure(command: &str, err: &std::io::Error) -> Failure {
    if err.kind() == std::io::ErrorKind::NotFound {
        Failure {
            code: exit::NOT_FOUND,
            error_code: "command_not_found".into(),
            message: format!(
                "cannot run {command:?}: command not found; the seat was checked in again"
            ),
        }
    } else {
        Failure {
            code: exit::CANNOT_EXECUTE,
            error_code: "command_not_executable".into(),
            message: format!("cannot run {command:?}: {err}; the seat was checked in again"),
        }
    }
}

/// Arguments the server would refuse anyway are refused here, as usage errors.
fn validate(command: &Command) -> Result<(), Failure> {
    let feature = |f: &str| validate_feature(f).map_err(Failure::usage);
    match command {
        Command::Status { feature: Some(f) }
        | Command::Leases {
            feature: Some(f), ..
        } => feature(f)?,
        Command::Entitlement(EntitlementCommand::List { feature: Some(f) }) => feature(f)?,
        Command::Checkout(args) => {
            feature(&args.feature)?;
            if args.seats == 0 {
                return Err(Failure::usage("--seats must be at least 1"));
            }
        }
        Command::Entitlement(EntitlementCommand::Add {
            feature: f,
            seats,
            starts,
            expires,
            max_borrow,
            ..
        }) => {
            feature(f)?;
            if *seats == 0 {
                return Err(Failure::usage("--seats must be at least 1"));
            }
            for time in [starts, expires].into_iter().flatten() {
                parse_time(time)?;
            }
            if let Some(d) = max_borrow {
                parse_duration(d)?;
            }
        }
        Command::Entitlement(EntitlementCommand::Remove { id }) => {
            parse_entitlement_id(id)?;
        }
        Command::Release { lease_id } => {
            parse_lease_id(lease_id)?;
        }
        Command::User(UserCommand::Add { email, role, .. }) => {
            validate_username(email).map_err(Failure::usage)?;
            parse_role(role)?;
        }
        Command::User(UserCommand::Token {
            email: Some(email), ..
        }) => validate_username(email).map_err(Failure::usage)?,
        Command::User(UserCommand::Token { .. }) => {}
        Command::User(
            UserCommand::Tokens { email }
            | UserCommand::Deactivate { email }
            | UserCommand::Activate { email }
            | UserCommand::Remove { email },
        ) => validate_username(email).map_err(Failure::usage)?,
        Command::Assign {
            email,
            feature: f,
            seats,
            entitlement,
            from,
            expires,
        } => {
            validate_username(email).map_err(Failure::usage)?;
            feature(f)?;
            if *seats == 0 {
                return Err(Failure::usage("--seats must be at least 1"));
            }
            if let Some(id) = entitlement {
                parse_entitlement_id(id)?;
            }
            if let Some(from) = from {
                validate_username(from).map_err(Failure::usage)?;
            }
            if let Some(time) = expires {
                parse_time(time)?;
            }
        }
        Command::Revoke {
            email,
            feature: f,
            seats,
        } => {
            validate_username(email).map_err(Failure::usage)?;
            feature(f)?;
            if *seats == Some(0) {
                return Err(Failure::usage("--seats must be at least 1"));
            }
        }
        Command::Borrow {
            feature: f,
            duration,
            seats,
        } => {
            feature(f)?;
            parse_duration(duration)?;
            if *seats == 0 {
                return Err(Failure::usage("--seats must be at least 1"));
            }
        }
        Command::Return { feature: f } | Command::Verify { feature: f } => feature(f)?,
        Command::Audit {
            since,
            feature: f,
            limit,
            ..
        } => {
            if let Some(time) = since {
                parse_time(time)?;
            }
            if let Some(f) = f {
                feature(f)?;
            }
            if *limit == Some(0) {
                return Err(Failure::usage("--limit must be at least 1"));
            }
        }
        _ => {}
    }
    Ok(())
}

fn parse_role(text: &str) -> Result<Role, Failure> {
    Role::parse(text).ok_or_else(|| {
        Failure::usage(format!(
            "{text:?} is not a role; use admin, member or guest"
        ))
    })
}

/// The client file: `--config`, else the default one when it exists.
fn client_file(cli: &Cli) -> Result<ClientFile, Failure> {
    Ok(match &cli.config {
        Some(path) => ClientFile::load(path).map_err(|err| Failure::usage(err.to_string()))?,
        None => match default_config_path() {
            Some(path) if path.exists() => {
                ClientFile::load(&path).map_err(|err| Failure::usage(err.to_string()))?
            }
            _ => ClientFile::default(),
        },
    })
}

/// Merges the client file with flags and environment (flags win).
fn client_config(cli: &Cli) -> Result<ClientConfig, Failure> {
    let file = client_file(cli)?;
    let servers = if cli.servers.is_empty() {
        file.servers
    } else {
        cli.servers.clone()
    };
    let ca = cli.ca.clone().or(file.ca);
    let (token, token_file) = if cli.token.is_some() || cli.token_file.is_some() {
        (cli.token.clone(), cli.token_file.clone())
    } else {
        (file.token, file.token_file)
    };
    let mut config = ClientConfig::from_parts(servers, ca, token, token_file)
        .map_err(|err| Failure::usage(err.to_string()))?;
    config.agent = format!("tally-cli/{}", env!("CARGO_PKG_VERSION"));
    Ok(config)
}

/// `$XDG_CONFIG_HOME/tally/client.toml`, or `~/.config/tally/client.toml`.
fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("tally/client.toml"))
}

/// Durations such as `90s`, `15m`, `8h`, `7d`.
fn parse_duration(text: &str) -> Result<Duration, Failure> {
    let duration = humantime::parse_duration(text).map_err(|_| {
        Failure::usage(format!(
            "{text:?} is not a duration; use a number and a unit, like 90s, 15m, 8h or 7d"
        ))
    })?;
    if duration.is_zero() {
        return Err(Failure::usage(format!(
            "duration {text:?} must be longer than zero"
        )));
    }
    Ok(duration)
}

/// RFC 3339 times (`2027-01-31T18:00:00Z`) or dates (`2027-01-31`, midnight UTC), as Unix
/// milliseconds.
fn parse_time(text: &str) -> Result<i64, Failure> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    let time = humantime::parse_rfc3339(&full)
        .map_err(|_| Failure::usage(format!("{text:?} is not a time; use RFC 3339 UTC like 2027-01-31T18:00:00Z, or a date like 2027-01-31")))?;
    let millis = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Failure::usage(format!("{text:?} is before 1970")))?
        .as_millis();
    Ok(millis as i64)
}

fn parse_entitlement_id(text: &str) -> Result<u64, Failure> {
    text.parse().map_err(|_| {
        Failure::usage(format!(
            "{text:?} is not an entitlement id; `tally entitlement list` shows them"
        ))
    })
}

fn parse_lease_id(text: &str) -> Result<LeaseId, Failure> {
    LeaseId::from_hex(text)
        .map_err(|err| Failure::usage(format!("{err}; `tally leases` shows lease ids")))
}

/// `tally checkout`: hold until SIGINT/SIGTERM, or around a command.
async fn checkout(client: &Client, args: CheckoutArgs, out: &Output) -> Result<u8, Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: a signal that comes as soon as the grant is printed must still lead
    // to a check-in.
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return Err(Failure {
            code: exit::FAILED,
            error_code: "internal".into(),
            message: "cannot install signal handlers".into(),
        });
    };
    let mut lease = client.checkout(&args.feature, args.seats).await?;
    if args.command.is_empty() {
        out.lease_granted(lease.info(), true);
        let code = tokio::select! {
            _ = term.recv() => exit::OK,
            _ = int.recv() => exit::OK,
            reason = lease.lost() => {
                let message = format!("lease {} of {} was lost: {}", lease.id(), args.feature, reason.as_str());
                return Err(Failure { code: exit::FAILED, error_code: "lease_lost".into(), message });
            }
        };
        lease.release().await?;
        out.note(&format!("checked in {}", args.feature));
        return Ok(code);
    }
    // Find the command before saying anything: one that cannot start gives the seat back
    // now rather than at its ttl, and prints only the failure (with `--json`, the one
    // document on stdout).
    let program = match find_program(&args.command[0]) {
        Ok(program) => program,
        Err(err) => {
            if let Err(release) = lease.release().await {
                say_err!("tally: warning: check-in failed: {release}");
            }
            return Err(spawn_failure(&args.command[0], &err));
        }
    };
    out.lease_granted(lease.info(), false);
    // The command gets no token of ours: it may be anything, and the token is the user's.
    let spawned = tokio::process::Command::new(&program)
        .arg0(&args.command[0])
        .args(&args.command[1..])
        .env_remove(TOKEN_ENV)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            // Found but still not startable (a missing interpreter, a bad format): the
            // lease document is out already, so the reason goes to stderr in any case.
            if let Err(release) = lease.release().await {
                say_err!("tally: warning: check-in failed: {release}");
            }
            let failure = spawn_failure(&args.command[0], &err);
            say_err!("tally: {}", failure.message);
            return Ok(failure.code);
        }
    };
    let pid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    let forward = |signal: nix::sys::signal::Signal| {
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(pid, signal);
        }
    };
    let mut warned = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = term.recv() => forward(nix::sys::signal::Signal::SIGTERM),
            _ = int.recv() => forward(nix::sys::signal::Signal::SIGINT),
            reason = lease.lost(), if !warned => {
                warned = true;
                say_err!("tally: warning: lease {} of {} was lost ({}); the command keeps running unlicensed", lease.id(), args.feature, reason.as_str());
            }
        }
    };
    let status = status.map_err(|err| Failure {
        code: exit::FAILED,
        error_code: "internal".into(),
        message: format!("waiting for the command: {err}"),
    })?;
    if let Err(err) = lease.release().await {
        say_err!("tally: warning: check-in failed: {err}");
    }
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        _ => 1,
    };
    Ok(code.clamp(0, 255) as u8)
}
