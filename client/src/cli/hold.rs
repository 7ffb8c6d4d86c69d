//! Holding a checked-out lease (`tally checkout`): until SIGINT, SIGTERM or SIGHUP, or
//! around a command run as a child process, with those signals forwarded to it and its exit
//! status passed on (as a shell gives it: 126 and 127 when it cannot start).
//!
//! No wait outlasts a signal: one that comes while the checkout is unanswered ends
//! `tally` at once (exit 128 + the signal's number), and one that comes while the check-in
//! is unanswered ends that wait (the check-in has its own deadline besides, the client's
//! `release_timeout`); a command's exit status is passed on in every case.

use std::path::PathBuf;

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::failure::{exit, Failure};
use super::output::{say_err, Output};
use crate::Lease;

/// The environment variable a token may come in; the command run by `checkout -- CMD`
/// does not get it.
pub const TOKEN_ENV: &str = "TALLY_TOKEN";

/// SIGTERM, SIGINT and SIGHUP, caught. A hangup (the terminal closed, the session
/// ended) is handled as SIGTERM is: the lease is checked in, and a command gets the signal.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Installs the handlers. Done before checking out: a signal that comes as soon as the
    /// grant is printed must still lead to a check-in.
    pub fn install() -> Result<Self, Failure> {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Ok(Self { term, int, hup }),
            _ => Err(Failure::internal("cannot install signal handlers")),
        }
    }

    /// The next of the three signals to come.
    pub async fn recv(&mut self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal::{SIGHUP, SIGINT, SIGTERM};
        tokio::select! {
            _ = self.term.recv() => SIGTERM,
            _ = self.int.recv() => SIGINT,
            _ = self.hup.recv() => SIGHUP,
        }
    }
}

/// The failure of a `tally checkout` interrupted by `signal` before the server answered
/// the checkout: exit 128 + the signal's number, as a shell reports a process it ended.
pub fn interrupted(signal: nix::sys::signal::Signal, feature: &str) -> Failure {
    Failure {
        code: 128 + signal as u8,
        error_code: "interrupted".into(),
        lines: Vec::new(),
        message: format!(
            "interrupted by {} before the server answered the checkout of {feature}; if it granted the seat after all, the seat returns to the pool when its lease ttl passes",
            signal.as_str()
        ),
    }
}

/// Checks the lease in, waiting at most the release deadline, and less if a signal comes
/// meanwhile; a failure is a warning (the seat returns when its ttl passes).
async fn check_in(lease: Lease, signals: &mut Signals) {
    let id = lease.id();
    tokio::select! {
        released = lease.release() => {
            if let Err(err) = released {
                say_err!("tally: warning: check-in of lease {id} failed: {err}; the seat returns to the pool when its lease ttl passes");
            }
        }
        signal = signals.recv() => {
            say_err!("tally: warning: {} while checking lease {id} in: not waiting for the server; the seat returns to the pool when its lease ttl passes", signal.as_str());
        }
    }
}

/// Holds the lease until SIGINT or SIGTERM, then checks it in; fails if the server ends
/// the lease first.
pub async fn until_signal(
    mut lease: Lease,
    feature: &str,
    mut signals: Signals,
    out: &Output,
) -> Result<u8, Failure> {
    out.lease_granted(lease.info(), true);
    tokio::select! {
        _ = signals.recv() => {}
        reason = lease.lost() => {
            let message = format!("lease {} of {} was lost: {}", lease.id(), feature, reason.as_str());
            return Err(Failure { code: exit::FAILED, error_code: "lease_lost".into(), message, lines: Vec::new() });
        }
    };
    let id = lease.id();
    tokio::select! {
        released = lease.release() => released?,
        signal = signals.recv() => {
            let message = format!("{} while checking lease {id} of {feature} in: not waiting for the server; the seat returns to the pool when its lease ttl passes", signal.as_str());
            return Err(Failure { code: exit::FAILED, error_code: "interrupted".into(), message, lines: Vec::new() });
        }
    }
    out.note(&format!("checked in {feature}"));
    Ok(exit::OK)
}

/// Runs `command` while holding the lease and exits with its status; the lease is checked
/// in when it ends, or at once when it cannot start.
pub async fn around_command(
    mut lease: Lease,
    feature: &str,
    command: &[String],
    mut signals: Signals,
    out: &Output,
) -> Result<u8, Failure> {
    // Find the command before saying anything: one that cannot start gives the seat back
    // now rather than at its ttl, and prints only the failure (with `--json`, the one
    // document on stdout).
    let program = match find_program(&command[0]) {
        Ok(program) => program,
        Err(err) => {
            check_in(lease, &mut signals).await;
            return Err(spawn_failure(&command[0], &err));
        }
    };
    out.lease_granted(lease.info(), false);
    // The command gets no token of ours: it may be anything, and the token is the user's.
    let spawned = tokio::process::Command::new(&program)
        .arg0(&command[0])
        .args(&command[1..])
        .env_remove(TOKEN_ENV)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            // Found but still not startable (a missing interpreter, a bad format): the
            // lease document is out already, so the reason goes to stderr in any case.
            check_in(lease, &mut signals).await;
            let failure = spawn_failure(&command[0], &err);
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
            signal = signals.recv() => forward(signal),
            reason = lease.lost(), if !warned => {
                warned = true;
                say_err!("tally: warning: lease {} of {} was lost ({}); the command keeps running unlicensed", lease.id(), feature, reason.as_str());
            }
        }
    };
    let status =
        status.map_err(|err| Failure::internal(format!("waiting for the command: {err}")))?;
    check_in(lease, &mut signals).await;
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        _ => 1,
    };
    Ok(code.clamp(0, 255) as u8)
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
            lines: Vec::new(),
            message: format!(
                "cannot run {command:?}: command not found; the seat was checked in again"
            ),
        }
    } else {
        Failure {
            code: exit::CANNOT_EXECUTE,
            error_code: "command_not_executable".into(),
            lines: Vec::new(),
            message: format!("cannot run {command:?}: {err}; the seat was checked in again"),
        }
    }
}
