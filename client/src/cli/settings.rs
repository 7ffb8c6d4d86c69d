//! Where `tally` finds its server and credentials: the client file (`--config`, else the
//! default one when it exists) merged with flags and environment, flags winning; and, for
//! messages that say what to fix, where each setting came from.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tally_protocol::ErrorCode;

use super::args::Globals;
use super::failure::Failure;
use super::output::say_err;
use crate::config::ClientFile;
use crate::{files, ClientConfig, Error, ServerAddr};

/// The client file as found: what it holds, and where it is or where it was looked for.
pub struct Found {
    pub file: ClientFile,
    /// The file read; `None` when there was none.
    pub path: Option<PathBuf>,
    /// Where a file was looked for when none was given: the default path, if any.
    looked_at: Option<PathBuf>,
}

impl Found {
    /// A usage error for a setting that is missing (`what`: "no server given" and the
    /// like): how to give it, in the client file (`key`) or with `flags`, and, when no
    /// client file was found, which path was looked at.
    pub fn missing(&self, what: &str, key: &str, flags: &str) -> Failure {
        if let Some(path) = &self.path {
            return Failure::usage(format!(
                "{what}: set `{key}` in {}, or give {flags}",
                path.display()
            ));
        }
        let looked = match &self.looked_at {
            Some(path) => format!(
                "--config and TALLY_CONFIG are not set, and there is none at {}",
                path.display()
            ),
            None => "--config and TALLY_CONFIG are not set, and neither is XDG_CONFIG_HOME or HOME, so there is no default path (~/.config/tally/client.toml)".to_string(),
        };
        Failure::usage(format!(
            "{what}, and no client file was found: {looked}; give a client file with --config FILE and set `{key}` there (tallyd writes one at DATA_DIR/client.toml), or give {flags}"
        ))
    }
}

/// The client file: `--config` (or `TALLY_CONFIG`), else the default one when it exists.
/// One that holds a `token` and that others can read is warned about.
pub fn client_file(globals: &Globals) -> Result<Found, Failure> {
    let found = find_client_file(globals)?;
    if let (Some(path), Some(_)) = (&found.path, &found.file.token) {
        warn_if_readable(path, found.file.mode, "the client file");
    }
    Ok(found)
}

/// Prints one warning when the file at `path` (of mode `mode`) holds a token others can
/// read.
fn warn_if_readable(path: &Path, mode: u32, what: &str) {
    if let Some(warning) = files::readable_by_others(path, mode, what) {
        say_err!("tally: warning: {warning}");
    }
}

fn find_client_file(globals: &Globals) -> Result<Found, Failure> {
    let load =
        |path: &PathBuf| ClientFile::load(path).map_err(|err| Failure::usage(err.to_string()));
    if let Some(path) = &globals.config {
        return Ok(Found {
            file: load(path)?,
            path: Some(path.clone()),
            looked_at: None,
        });
    }
    let default = crate::config::default_client_file();
    Ok(match default {
        Some(path) if path.exists() => Found {
            file: load(&path)?,
            path: Some(path),
            looked_at: None,
        },
        _ => Found {
            file: ClientFile::default(),
            path: None,
            looked_at: default,
        },
    })
}

/// The settings of a run: the client's configuration, and where its token came from.
pub struct Settings {
    pub config: ClientConfig,
    /// Where the token came from (`--token`, `TALLY_TOKEN`, a token file's path), named
    /// when the server refuses it.
    pub token_origin: String,
}

/// Merges the client file with flags and environment (flags win).
pub fn client_config(globals: &Globals) -> Result<Settings, Failure> {
    client_config_from(globals, &client_file(globals)?)
}

/// [`client_config`] with the client file already found.
pub fn client_config_from(globals: &Globals, found: &Found) -> Result<Settings, Failure> {
    let in_file = |key: &str| match &found.path {
        Some(path) => format!("`{key}` in {}", path.display()),
        None => format!("`{key}`"),
    };
    let (servers, servers_origin) = if globals.servers.is_empty() {
        (found.file.servers.clone(), in_file("servers"))
    } else if globals.servers_on_command_line {
        (globals.servers.clone(), "--server".to_string())
    } else {
        (
            globals.servers.clone(),
            "the TALLY_SERVER environment variable".to_string(),
        )
    };
    let ca = globals.ca.clone().or(found.file.ca.clone());
    let (token, token_file, token_origin) = if globals.token.is_some() {
        let origin = if globals.token_on_command_line {
            "--token".to_string()
        } else {
            "the TALLY_TOKEN environment variable".to_string()
        };
        (globals.token.clone(), None, origin)
    } else if let Some(path) = &globals.token_file {
        let origin = format!("the token file {} (--token-file)", path.display());
        (None, Some(path.clone()), origin)
    } else if found.file.token.is_some() {
        (found.file.token.clone(), None, in_file("token"))
    } else {
        let origin = match &found.file.token_file {
            Some(path) => format!(
                "the token file {} ({})",
                path.display(),
                in_file("token_file")
            ),
            None => String::new(),
        };
        (None, found.file.token_file.clone(), origin)
    };
    if servers.is_empty() {
        return Err(found.missing(
            "no server given",
            "servers",
            "--server HOST:PORT or TALLY_SERVER",
        ));
    }
    // An entry that is not HOST:PORT is the user's to fix, before anything is dialled.
    for entry in &servers {
        ServerAddr::parse(entry)
            .map_err(|err| Failure::usage(format!("{err} (given in {servers_origin})")))?;
    }
    if ca.is_none() {
        return Err(found.missing("no CA given", "ca", "--ca FILE or TALLY_CA"));
    }
    if token.is_none() && token_file.is_none() {
        return Err(found.missing(
            "no token given",
            "token_file",
            "--token-file FILE or TALLY_TOKEN",
        ));
    }
    if let Some(path) = &token_file {
        if let Ok(meta) = std::fs::metadata(path) {
            warn_if_readable(path, meta.mode() & 0o7777, "the token file");
        }
    }
    let identity = (found.file.cert.clone(), found.file.key.clone());
    let mut config = ClientConfig::from_parts(servers, ca, token, token_file)
        .and_then(|config| config.with_identity_files(identity))
        .map_err(|err| Failure::usage(err.to_string()))?;
    config.agent = format!("tally-cli/{}", env!("CARGO_PKG_VERSION"));
    Ok(Settings {
        config,
        token_origin,
    })
}

impl Settings {
    /// The failure of signing in: a refused token says where it came from.
    pub fn sign_in_failure(&self, err: Error) -> Failure {
        let mut failure = Failure::from(err);
        if failure.error_code == ErrorCode::Unauthenticated.as_str() {
            failure.message = format!(
                "{}; the token tried came from {}",
                failure.message, self.token_origin
            );
        }
        failure
    }
}
