//! The `tally` command line (SPEC §6): global options, commands, `--json` documents and
//! exit codes. Kept in the library (behind the default `cli` feature) so that test
//! harnesses can link the same binary.
//!
//! A run reads the arguments (`args`), turns the command into its checked request once
//! (`plan`, each family in its own module), so that a usage error exits 2 before any
//! server is asked, then connects and runs it. Every family module (`leases`,
//! `entitlements`, `users`, `assignments`, `borrow`, `audit`, `server`, `notify`, `report`,
//! `credits`, `docs`) holds both
//! halves of its commands; `hold` runs the command of `checkout -- CMD`, `settings` merges
//! the client file with flags, `values` reads times, durations and ids, `output` prints,
//! `log` writes the library's log.

mod args;
mod assignments;
mod audit;
mod borrow;
mod bulk;
mod credits;
mod docs;
mod entitlements;
mod failure;
mod features;
mod hold;
mod leases;
mod log;
mod notify;
mod output;
mod policy;
mod report;
mod server;
mod settings;
mod users;
mod values;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::config::{machine_id_from, MACHINE_ID_FILES};
use crate::Client;
use args::{Cli, Command};
pub use failure::exit;
use failure::Failure;
use hold::TOKEN_ENV;
use output::Output;

/// A command turned into what it will do, its arguments checked.
enum Action {
    /// Answered here with no server and no configuration.
    Docs(docs::Action),
    /// Answered on this machine, with a server only when one answers.
    Local(borrow::Local),
    /// Sent to the server.
    Remote(Remote),
    /// `--template` of a bulk command: the header line of its CSV file, with no server.
    Template(bulk::Kind),
}

/// A command for the server, by family.
enum Remote {
    Leases(leases::Action),
    Entitlements(entitlements::Action),
    Features(features::Action),
    Policy(policy::Action),
    Users(users::Action),
    Assignments(assignments::Action),
    Borrow(borrow::Action),
    Audit(audit::Action),
    Server(server::Action),
    Notify(notify::Action),
    Report(report::Action),
    Credits(credits::Action),
}

/// Checks a command's arguments and turns it into its action: arguments the server would
/// refuse anyway are refused here, as usage errors, each value parsed once. `json` is the
/// global `--json`, which some commands' own options contradict.
fn plan(command: Command, json: bool) -> Result<Action, Failure> {
    use Remote as R;
    if let Some(kind) = bulk::template_of(&command) {
        return Ok(Action::Template(kind));
    }
    Ok(Action::Remote(match command {
        Command::Status { feature, all } => R::Leases(leases::Action::status(feature, all)?),
        Command::Leases { feature, user } => R::Leases(leases::Action::leases(feature, user)?),
        Command::Checkout(args) => R::Leases(leases::Action::checkout(args)?),
        Command::Queue { feature } => R::Leases(leases::Action::queue(feature)?),
        Command::Release {
            lease_id,
            user,
            host,
            feature,
        } => R::Leases(leases::Action::release(lease_id, user, host, feature)?),
        Command::Assignments { user, feature } => {
            R::Assignments(assignments::Action::list(user, feature)?)
        }
        Command::Entitlement(command) => R::Entitlements(entitlements::Action::new(command)?),
        Command::Feature(command) => R::Features(features::Action::new(command)?),
        Command::Group(command) => R::Policy(policy::Action::group(command)?),
        Command::Policy(command) => R::Policy(policy::Action::policy(command)?),
        Command::Whoami => R::Users(users::Action::Whoami),
        Command::User(command) => R::Users(users::Action::new(command, json)?),
        Command::Assign {
            email,
            feature,
            seats,
            entitlement,
            from,
            expires,
            csv,
            bulk,
        } => match bulk::Action::with_csv(bulk::Kind::Assign, csv, bulk, json)? {
            Some(bulk) => R::Assignments(assignments::Action::Bulk(bulk)),
            None => R::Assignments(assignments::Action::assign(
                email.unwrap_or_default(),
                feature.unwrap_or_default(),
                seats,
                entitlement,
                from,
                expires,
            )?),
        },
        Command::Revoke {
            email,
            feature,
            seats,
            csv,
            bulk,
        } => match bulk::Action::with_csv(bulk::Kind::Revoke, csv, bulk, json)? {
            Some(bulk) => R::Assignments(assignments::Action::Bulk(bulk)),
            None => R::Assignments(assignments::Action::revoke(
                email.unwrap_or_default(),
                feature.unwrap_or_default(),
                seats,
            )?),
        },
        Command::Borrow {
            feature,
            duration,
            seats,
        } => R::Borrow(borrow::Action::borrow(feature, &duration, seats)?),
        Command::Return { feature } => R::Borrow(borrow::Action::give_back(feature)?),
        Command::Borrows => return Ok(Action::Local(borrow::Local::Borrows)),
        Command::Verify { feature } => return Ok(Action::Local(borrow::Local::verify(feature)?)),
        Command::Audit {
            since,
            user,
            feature,
            limit,
            csv,
        } => R::Audit(audit::Action::new(since, user, feature, limit, csv, json)?),
        Command::Server(command) => R::Server(server::Action::new(command)),
        Command::Notify(command) => R::Notify(notify::Action::new(command)),
        Command::Report(command) => R::Report(report::Action::new(command, json)?),
        Command::Credits(command) => R::Credits(credits::Action::credits(command)?),
        Command::Quota(command) => R::Credits(credits::Action::quota(command)?),
        Command::Consume {
            meter,
            amount,
            request_id,
        } => R::Credits(credits::Action::consume(meter, amount, request_id)?),
        Command::Completions { shell } => {
            return Ok(Action::Docs(docs::Action::Completions(shell)))
        }
        Command::Man => return Ok(Action::Docs(docs::Action::Man)),
    }))
}

impl Remote {
    async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Remote::Leases(action) => action.run(client, out).await,
            Remote::Entitlements(action) => action.run(client, out).await,
            Remote::Features(action) => action.run(client, out).await,
            Remote::Policy(action) => action.run(client, out).await,
            Remote::Users(action) => action.run(client, out).await,
            Remote::Assignments(action) => action.run(client, out).await,
            Remote::Borrow(action) => action.run(client, out).await,
            Remote::Audit(action) => action.run(client, out).await,
            Remote::Server(action) => action.run(client, out).await,
            Remote::Notify(action) => action.run(client, out).await,
            Remote::Report(action) => action.run(client, out).await,
            Remote::Credits(action) => action.run(client, out).await,
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
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let json = args
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--json");
    let parsed = Cli::command().try_get_matches().and_then(|matches| {
        let token_on_command_line = matches.value_source("token") == Some(ValueSource::CommandLine);
        let servers_on_command_line =
            matches.value_source("servers") == Some(ValueSource::CommandLine);
        Cli::from_arg_matches(&matches)
            .map(|cli| (cli, token_on_command_line, servers_on_command_line))
    });
    let cli = match parsed {
        Ok((mut cli, token_on_command_line, servers_on_command_line)) => {
            cli.globals.servers_on_command_line = servers_on_command_line;
            if token_on_command_line {
                output::line_err(&format!("tally: warning: a token given with --token can be read by other users of this machine (in the process list); use --token-file FILE or the {TOKEN_ENV} environment variable"));
            }
            cli.globals.token_on_command_line = token_on_command_line;
            cli
        }
        // Help and version: what was asked for, on stdout.
        Err(err) if !err.use_stderr() => {
            let _ = err.print();
            return ExitCode::from(exit::OK);
        }
        Err(err) => {
            let (first, rest) = usage_error(&err, &args);
            output::print_error(json, "invalid", &first);
            if !json {
                for line in rest.lines() {
                    output::line_err(line);
                }
            }
            return ExitCode::from(exit::USAGE);
        }
    };
    let Cli { globals, command } = cli;
    let json = globals.json;
    // Check what can be checked before touching the network, or even the runtime.
    let action = match plan(command, json) {
        Ok(action) => action,
        Err(failure) => return fail(json, failure),
    };
    let action = match action {
        Action::Docs(docs) => return docs.run().map_or_else(|f| fail(json, f), ExitCode::from),
        Action::Template(kind) => {
            Output::new(json).template(&kind.template());
            return ExitCode::from(exit::OK);
        }
        Action::Local(local) => Ok(local),
        Action::Remote(remote) => Err(remote),
    };
    tracing_to_stderr(globals.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return fail(
                json,
                Failure::internal(format!("cannot start the runtime: {err}")),
            )
        }
    };
    let machine_id = machine_id_from(files, std::env::var("TALLY_MACHINE_ID").ok());
    let out = Output::new(json);
    let result = runtime.block_on(async {
        match action {
            // Borrows are checked on this machine, with a server only when one answers.
            Ok(local) => local.run(&globals, &machine_id, &out).await,
            Err(remote) => {
                let mut settings = settings::client_config(&globals)?;
                settings.config.machine_id = machine_id;
                let client = Client::connect(settings.config.clone())
                    .await
                    .map_err(|err| settings.sign_in_failure(err))?;
                remote.run(&client, &out).await
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => fail(json, failure),
    }
}

/// Prints the failure (a JSON document with `--json`) and gives its exit code.
fn fail(json: bool, failure: Failure) -> ExitCode {
    if failure.error_code != failure::BROKEN_PIPE {
        output::print_error_lines(json, &failure.error_code, &failure.message, &failure.lines);
    }
    ExitCode::from(failure.code)
}

/// clap's usage error as tally prints its own: its first line after `tally: `, with a hint
/// when a duration was written with a space (`--for 3 days`); and the rest (clap's tips,
/// the usage line), for people.
fn usage_error(err: &clap::Error, args: &[String]) -> (String, String) {
    let text = err.render().to_string();
    let mut lines = text.lines();
    let first = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string();
    let rest: Vec<&str> = lines.collect();
    let Some(hint) = duration_hint(args) else {
        return (first, rest.join("\n"));
    };
    // clap's own tip (`-- days` passes it as a value) would mislead here.
    let usage: Vec<&str> = rest
        .iter()
        .copied()
        .skip_while(|line| !line.starts_with("Usage:"))
        .collect();
    (
        format!("{first}; {hint}"),
        format!("\n{}", usage.join("\n")),
    )
}

/// The options that take a duration.
const DURATION_OPTIONS: [&str; 2] = ["--for", "--max-borrow"];

/// For arguments holding an option that takes a duration, a number, and a unit as separate
/// words (`--for 3 days`), how to write that duration.
fn duration_hint(args: &[String]) -> Option<String> {
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .take_while(|a| *a != "--")
        .collect();
    args.windows(2).enumerate().find_map(|(i, pair)| {
        let (number, word) = (pair[0], pair[1]);
        let unit = values::unit_symbol(word)?;
        let (option, number) = match number.split_once('=') {
            Some((option, number)) if option.starts_with("--") => (option, number),
            _ => (*args.get(i.checked_sub(1)?)?, number),
        };
        if !DURATION_OPTIONS.contains(&option)
            || number.is_empty()
            || !number.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(format!(
            "a duration is one word: write {option} {number}{unit}, or quote it: {option} \"{number} {word}\""
        ))
    })
}

/// Warnings of the library (reconnects, lost leases) go to stderr with `-v` (`-vv`: what it
/// does, `-vvv`: debugging); `TALLY_LOG` sets the level instead. `tally` reports what
/// concerns the command itself on its own.
fn tracing_to_stderr(verbose: u8) {
    let level = match verbose {
        0 => "error",
        1 => "warn",
        2 => "info",
        _ => "debug",
    };
    log::to_stderr(level);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn planned(args: &[&str]) -> Result<Action, Failure> {
        let cli = Cli::try_parse_from(std::iter::once("tally").chain(args.iter().copied()))
            .expect("clap accepts the arguments");
        plan(cli.command, cli.globals.json)
    }

    /// Every family refuses what the server would refuse, as a usage error naming it,
    /// before anything connects; the first wrong argument is the one named.
    #[test]
    fn each_command_is_checked_once_before_connecting() {
        let refused: &[(&[&str], &str)] = &[
            (&["status", "Bad Name"], "Bad Name"),
            (&["leases", "--feature", "Bad Name"], "Bad Name"),
            (&["checkout", "vray", "--seats", "0"], "--seats"),
            (&["release", "xyz"], "`tally leases`"),
            (&["release", "3f9"], "at least 4 digits"),
            (&["release", "--user", "not an email"], "not an email"),
            (
                &["release", "--host", "h", "--feature", "Bad Name"],
                "Bad Name",
            ),
            (&["assignments", "--feature", "Bad Name"], "Bad Name"),
            (&["entitlement", "update", "3"], "nothing to change"),
            (
                &["entitlement", "update", "3", "--expires", "someday"],
                "\"someday\" is not a time",
            ),
            (
                &["entitlement", "update", "x", "--seats", "2"],
                "not an entitlement id",
            ),
            (&["entitlement", "update", "3", "--seats", "0"], "--seats"),
            (&["entitlement", "list", "Bad Name"], "Bad Name"),
            (
                &[
                    "entitlement",
                    "add",
                    "vray",
                    "--seats",
                    "1",
                    "--starts",
                    "soon",
                ],
                "\"soon\" is not a time",
            ),
            (
                &["user", "add", "ann@example.com", "--role", "root"],
                "\"root\" is not a role",
            ),
            (
                &["assign", "ann@example.com", "vray", "--entitlement", "x"],
                "not an entitlement id",
            ),
            (
                &["assign", "ann@example.com", "Bad Name", "--expires", "soon"],
                "Bad Name",
            ),
            (
                &["assign", "ann@example.com", "vray", "--expires", "soon"],
                "\"soon\" is not a time",
            ),
            (
                &["revoke", "ann@example.com", "vray", "--seats", "0"],
                "--seats",
            ),
            (&["borrow", "vray", "--for", "0s"], "longer than zero"),
            (&["return", "Bad Name"], "Bad Name"),
            (&["verify", "Bad Name"], "Bad Name"),
            (
                &["audit", "--since", "yesterday"],
                "\"yesterday\" is not a time",
            ),
            (&["audit", "--limit", "0"], "--limit"),
            (
                &["audit", "--limit", "100001"],
                "--limit 100001 is past its maximum, 100000",
            ),
            (&["borrow", "vray", "--for", "3 months"], "not a unit"),
            (&["credits", "add", "cloud", "0"], "at least 1"),
            (
                &["credits", "add", "cloud", "100", "--expires", "soon"],
                "\"soon\" is not a time",
            ),
            (&["credits", "status", "Cloud"], "meter name"),
            (
                &[
                    "quota",
                    "set",
                    "ann@example.com",
                    "cloud",
                    "5",
                    "--unlimited",
                ],
                "not both",
            ),
            (&["quota", "set", "ann@example.com", "cloud"], "--unlimited"),
            (
                &["quota", "remove", "not an email", "cloud"],
                "not an email",
            ),
            (
                &["consume", "cloud", "ten"],
                "\"ten\" is not a whole number",
            ),
            (
                &["consume", "cloud", "1", "--request-id", "xyz"],
                "32 hex digits",
            ),
            (
                &[
                    "entitlement",
                    "add",
                    "vray",
                    "--seats",
                    "1",
                    "--expires",
                    "2027-02-29",
                ],
                "has 28 days",
            ),
        ];
        for (args, needle) in refused {
            let Err(failure) = planned(args) else {
                panic!("{args:?} was accepted");
            };
            assert_eq!(failure.code, exit::USAGE, "{args:?}");
            assert!(
                failure.message.contains(needle),
                "{args:?}: {}",
                failure.message
            );
        }
        let accepted: &[&[&str]] = &[
            &["status"],
            &["checkout", "vray", "--", "true"],
            &[
                "entitlement",
                "add",
                "vray",
                "--seats",
                "3",
                "--expires",
                "2027-01-31",
                "--max-borrow",
                "3d",
            ],
            &[
                "assign",
                "ann@example.com",
                "vray",
                "--from",
                "bob@example.com",
                "--entitlement",
                "7",
            ],
            &["user", "token", "revoke", "tok_1"],
            &["audit", "--since", "2026-01-01T00:00:00Z", "--csv"],
            &[
                "audit",
                "--since",
                "2026-01-01T00:00:00+02:00",
                "--limit",
                "100000",
            ],
            &["borrow", "vray", "--for", "3 Days"],
            &["server", "info"],
            &["server", "nodes"],
            &["status", "--all"],
            &["status", "-a", "vray"],
            &["assignments", "--user", "ann@example.com"],
            &["release", "3f9c...e1"],
            &["release", "--user", "ann@example.com", "--feature", "vray"],
            &["release", "--host", "render-07"],
            &[
                "entitlement",
                "update",
                "3",
                "--expires",
                "never",
                "--force",
            ],
            &["entitlement", "update", "3", "--no-borrowable"],
            &["entitlement", "remove", "3", "--force"],
            &[
                "credits",
                "add",
                "cloud",
                "100",
                "--expires",
                "2027-01-31",
                "--ref",
                "PO-7",
            ],
            &["credits", "status"],
            &["quota", "set", "ann@example.com", "cloud", "--unlimited"],
            &["quota", "list", "cloud"],
            &[
                "consume",
                "cloud",
                "3",
                "--request-id",
                "0123456789abcdef0123456789abcdef",
            ],
            &["report", "usage", "--meters", "--csv"],
        ];
        for args in accepted {
            assert!(matches!(planned(args), Ok(Action::Remote(_))), "{args:?}");
        }
        assert!(matches!(planned(&["borrows"]), Ok(Action::Local(_))));
        assert!(matches!(planned(&["verify", "vray"]), Ok(Action::Local(_))));
        assert!(matches!(planned(&["man"]), Ok(Action::Docs(_))));
        assert!(matches!(
            planned(&["completions", "zsh"]),
            Ok(Action::Docs(_))
        ));
    }

    /// `--csv` and `--json` ask for two formats: refused together, in either order.
    #[test]
    fn csv_and_json_are_refused_together() {
        for args in [["--json", "audit", "--csv"], ["audit", "--csv", "--json"]] {
            let Err(failure) = planned(&args) else {
                panic!("{args:?} was accepted");
            };
            assert_eq!(failure.code, exit::USAGE);
            assert_eq!(
                failure.message,
                "--csv and --json ask for two formats; give one of them"
            );
        }
    }

    /// A duration given as two words after an option that takes one is shown written as
    /// one; nothing else is.
    #[test]
    fn a_duration_in_two_words_gets_a_hint() {
        let hint =
            |args: &[&str]| duration_hint(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        assert_eq!(
            hint(&["borrow", "vray", "--for", "3", "days"]).unwrap(),
            "a duration is one word: write --for 3d, or quote it: --for \"3 days\""
        );
        assert!(
            hint(&["entitlement", "add", "x", "--max-borrow=2", "Weeks"])
                .unwrap()
                .contains("--max-borrow 2w")
        );
        assert_eq!(hint(&["checkout", "vray", "--seats", "3", "d"]), None);
        assert_eq!(hint(&["borrow", "vray", "--for", "3", "vray"]), None);
        assert_eq!(
            hint(&["checkout", "vray", "--", "--for", "3", "days"]),
            None
        );
    }

    /// clap's errors lose their `error: ` (tally puts its own prefix), and the hint takes
    /// the place of clap's tip.
    #[test]
    fn usage_errors_of_clap_are_reworded() {
        let args: Vec<String> = ["borrow", "vray", "--for", "3", "days"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        let err = Cli::command()
            .try_get_matches_from(std::iter::once("tally".to_string()).chain(args.clone()))
            .unwrap_err();
        let (first, rest) = usage_error(&err, &args);
        assert_eq!(
            first,
            "unexpected argument 'days' found; a duration is one word: write --for 3d, or quote it: --for \"3 days\""
        );
        assert!(rest.contains("Usage: tally borrow"), "{rest}");
        assert!(!rest.contains("tip:"), "{rest}");
    }
}
