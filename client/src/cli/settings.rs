//! Where `tally` finds its server and credentials: the client file (`--config`, else the
//! default one when it exists) merged with flags and environment, flags winning.

use std::path::PathBuf;

use super::args::Globals;
use super::failure::Failure;
use crate::config::ClientFile;
use crate::ClientConfig;

/// The client file: `--config`, else the default one when it exists.
pub fn client_file(globals: &Globals) -> Result<ClientFile, Failure> {
    Ok(match &globals.config {
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
pub fn client_config(globals: &Globals) -> Result<ClientConfig, Failure> {
    let file = client_file(globals)?;
    let servers = if globals.servers.is_empty() {
        file.servers
    } else {
        globals.servers.clone()
    };
    let ca = globals.ca.clone().or(file.ca);
    let (token, token_file) = if globals.token.is_some() || globals.token_file.is_some() {
        (globals.token.clone(), globals.token_file.clone())
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
