//! The `tallyd` command line: `tallyd [--config FILE]`, `tallyd check-config`,
//! `tallyd owner-token`, and `tallyd completions SHELL` and `tallyd man` for packagers. Kept
//! in the library so that test harnesses can link the same binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError};
use crate::error::{Context, Error, Result};
use crate::store::Store;
use crate::watchdog::Watchdog;
use crate::{init, store, Control};

#[derive(Debug, Parser)]
#[command(name = "tallyd", version, about = "The Tally floating license server")]
struct Args {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "TALLYD_CONFIG",
        default_value = "/etc/tally/tallyd.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration file and exit.
    CheckConfig,
    /// Mint a new owner token (needs access to the data directory) and write it to
    /// DATA_DIR/owner.token. Earlier owner tokens stay valid unless --revoke-others.
    OwnerToken {
        /// Revoke every other owner token (a leaked one). Needs tallyd stopped; while it
        /// runs, revoke tokens online with `tally user token revoke ID`.
        #[arg(long)]
        revoke_others: bool,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell)
    /// to standard output; needs no configuration.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to standard output; needs no configuration.
    Man,
}

/// Runs `tallyd` with the process's arguments.
pub fn main() -> ExitCode {
    main_with(|store| store)
}

/// Like [`main`], with the store passed through `wrap` before the server uses it: the test
/// build of the daemon wraps it to inject faults (a commit that panics or never returns).
pub fn main_with(wrap: impl FnOnce(Box<dyn Store>) -> Box<dyn Store>) -> ExitCode {
    let args = Args::parse();
    match &args.command {
        Some(Command::Completions { shell }) => {
            return written(completions(*shell, &mut std::io::stdout().lock()))
        }
        Some(Command::Man) => return written(man(&mut std::io::stdout().lock())),
        _ => {}
    }
    if let Some(Command::CheckConfig) = args.command {
        return check_config(&args.config);
    }
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            for line in err.lines() {
                eprintln!("tallyd: {line}");
            }
            return ExitCode::from(2);
        }
    };
    match args.command {
        Some(Command::OwnerToken { revoke_others }) => {
            let done = runtime().and_then(|rt| rt.block_on(owner_token(&config, revoke_others)));
            report(done, Logged::No)
        }
        Some(Command::CheckConfig | Command::Completions { .. } | Command::Man) => {
            ExitCode::SUCCESS
        }
        None => {
            init_logging(&config.log.format);
            let done = runtime().and_then(|rt| rt.block_on(serve(config, args.config, wrap)));
            report(done, Logged::Yes)
        }
    }
}

/// `tallyd check-config`: what a start would refuse (the file's values, and the files and
/// directories it names, as this user sees them), every problem on a line of its own naming
/// the file and the key, and exit status 2; or a line saying the file is valid, and 0.
fn check_config(path: &Path) -> ExitCode {
    let problems = match Config::read(path) {
        Err(err) => err.lines(),
        Ok(config) => {
            let mut problems = config.problems();
            problems.extend(crate::check::files(&config));
            ConfigError::Invalid {
                path: Some(path.to_path_buf()),
                problems,
            }
            .lines()
        }
    };
    if problems.is_empty() {
        println!(
            "{}: configuration is valid (files and data_dir checked as {})",
            path.display(),
            crate::check::running_user()
        );
        return ExitCode::SUCCESS;
    }
    for line in &problems {
        eprintln!("tallyd: {line}");
    }
    ExitCode::from(2)
}

/// Writes the completion script for `shell`.
fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut command = Args::command();
    clap_complete::generate(shell, &mut command, "tallyd", out);
    out.flush()
}

/// Writes the manual page.
fn man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Args::command()).render(out)
}

/// The exit code of printing completions or the manual page.
fn written(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tallyd: cannot write to standard output: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the log is set up: then it is where errors go (stderr, or the journal, as text
/// or JSON), and nothing else prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logged {
    Yes,
    No,
}

/// The exit code of a command, printing its error once: to the log when there is one,
/// otherwise to stderr.
fn report(result: Result<()>, logged: Logged) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            match logged {
                Logged::Yes => tracing::error!(error = %err, "tallyd failed"),
                Logged::No => eprintln!("tallyd: {err}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: in a file or the journal they are escape sequences.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(
    config: Config,
    path: PathBuf,
    wrap: impl FnOnce(Box<dyn Store>) -> Box<dyn Store>,
) -> Result<()> {
    let listener = crate::listen(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let store = store::open(
        config.database.as_ref().map(|s| s.0.as_str()),
        &init::prepare_data_dir(&config)?.root,
    )
    .await
    .context("cannot open the store")?;
    let store = wrap(store);
    let (reload_tx, reload_rx) = watch::channel(config.clone());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let watchdog = Watchdog::period_from_env();
    if let Some(every) = watchdog {
        tracing::info!(
            every_ms = every.as_millis() as u64,
            "pinging the systemd watchdog from the engine"
        );
    }
    let control = Control {
        shutdown: Default::default(),
        reload: Some(reload_rx),
        ready: Some(ready_tx),
        watchdog,
        clock: Default::default(),
        // Bound by `run` from `http.listen`, with the protocol listener's errors' form.
        http: None,
    };
    let shutdown = control.shutdown.clone();
    tokio::spawn(async move {
        if ready_rx.await.is_ok() {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        }
    });
    tokio::spawn(signals(shutdown, reload_tx, path));
    crate::run(listener, config, store, control).await
}

/// SIGTERM and SIGINT stop the server; SIGHUP re-reads the configuration file.
async fn signals(
    shutdown: tokio_util::sync::CancellationToken,
    reload: watch::Sender<Config>,
    path: PathBuf,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload_config(&reload, &path),
        }
    }
    tracing::info!("stop requested");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
}

fn reload_config(reload: &watch::Sender<Config>, path: &Path) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
    match Config::load(path) {
        Ok(config) => {
            let _ = reload.send(config);
        }
        // Each problem once, on a line of its own; the running configuration stays.
        Err(err) => {
            for line in err.lines() {
                tracing::error!(error = %line, "SIGHUP: configuration not reloaded, still running with the one read before");
            }
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

async fn owner_token(config: &Config, revoke_others: bool) -> Result<()> {
    let database = config.database.as_ref().map(|s| s.0.as_str());
    let clustered = matches!(
        store::Backend::from_url(database, &config.data_dir),
        Ok(store::Backend::Postgres(_))
    );
    if revoke_others && clustered {
        // Stopping this node does not stop the leader, whose pool keeps the tokens it knows.
        return Err(Error::Invalid(
            "--revoke-others cannot be used on a cluster (database is PostgreSQL): the leader keeps the tokens it knows in memory; revoke a leaked owner token online with `tally user tokens owner@localhost` and `tally user token revoke ID`".into(),
        ));
    }
    let dir = init::prepare_data_dir(config)?;
    // A running daemon keeps the tokens it knows in memory: revoking behind its back would
    // leave them working, so revoking needs it stopped (or is done online, one by one).
    let _lock = match revoke_others {
        true => Some(init::lock_data_dir(&dir).map_err(|err| {
            Error::Invalid(format!(
                "{err:#}\n--revoke-others needs tallyd stopped (systemctl stop tallyd); while it runs, revoke a leaked token with `tally user tokens owner@localhost` and `tally user token revoke ID`"
            ))
        })?),
        false => None,
    };
    let store = store::open(config.database.as_ref().map(|s| s.0.as_str()), &dir.root)
        .await
        .context("cannot open the store")?;
    let token = init::new_token();
    let (owner, revoked) = store
        .add_owner_token(
            &init::token_hash(&token),
            tally_protocol::now_millis(),
            revoke_others,
        )
        .await?;
    init::write_private(&dir.owner_token(), format!("{token}\n").as_bytes())?;
    store.close().await;
    println!("{token}");
    eprintln!(
        "new token for {owner}, also written to {}",
        dir.owner_token().display()
    );
    if revoke_others {
        eprintln!("revoked {revoked} other owner token(s)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arguments_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn completions_name_every_subcommand() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
            let mut out = Vec::new();
            completions(shell, &mut out).unwrap();
            let script = String::from_utf8(out).unwrap();
            for word in [
                "tallyd",
                "check-config",
                "owner-token",
                "--revoke-others",
                "--config",
            ] {
                assert!(script.contains(word), "{shell:?} completions lack {word}");
            }
        }
    }

    #[test]
    fn the_man_page_documents_the_subcommands() {
        let mut out = Vec::new();
        man(&mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH tallyd"),
            "{page}"
        );
        assert!(
            page.contains(r"check\-config") && page.contains(r"owner\-token"),
            "{page}"
        );
    }
}
