//! Client configuration: the servers, the CA that signed them, and the token.
//!
//! A client file (`client.toml`) has three keys: `servers = ["HOST:PORT", ...]`,
//! `ca = "PATH"` and `token_file = "PATH"` (or `token = "..."`). Relative paths are taken
//! from the file's directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tally_protocol::DEFAULT_PORT;

use crate::{files, Error};

/// One server: a host name or address, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

impl ServerAddr {
    /// Parses `HOST:PORT`, `[V6]:PORT` or `HOST` (port 27010); a bare IPv6 address takes
    /// port 27010 too. The host must be a host name or an IP address and the port a number
    /// from 1 to 65535: anything else (`lic1:port`, `https://lic1`, `a b`) is refused here,
    /// not found unreachable later.
    pub fn parse(text: &str) -> Result<ServerAddr, Error> {
        let text = text.trim();
        let bad = |why: &str| Error::Config(format!("server {text:?} is not HOST:PORT: {why}"));
        let port = |port: &str| match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(bad(&format!(
                "the port {port:?} is not a number from 1 to 65535"
            ))),
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let v6 = |host: &str| {
            host.parse::<std::net::Ipv6Addr>()
                .map(|_| host.to_string())
                .map_err(|_| bad(&format!("{host:?} is not an IPv6 address")))
        };
        if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("a `[` without its `]`"))?;
            let port = match after.strip_prefix(':') {
                Some(digits) => port(digits)?,
                None if after.is_empty() => DEFAULT_PORT,
                None => return Err(bad("after `]` comes `:PORT` or nothing")),
            };
            return Ok(ServerAddr {
                host: v6(host)?,
                port,
            });
        }
        let (host, port) = match text.split_once(':') {
            // More than one colon: a bare IPv6 address, or nothing.
            Some((_, rest)) if rest.contains(':') => (v6(text)?, DEFAULT_PORT),
            Some((host, digits)) => (checked_host(host).map_err(|why| bad(&why))?, port(digits)?),
            None => (checked_host(text).map_err(|why| bad(&why))?, DEFAULT_PORT),
        };
        Ok(ServerAddr { host, port })
    }
}

/// `host` when it is a host name (letters, digits, `-` and `_` in dot-separated labels of at
/// most 63 characters, a trailing dot allowed) or an IPv4 address; else why not.
fn checked_host(host: &str) -> Result<String, String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(host.to_string())
    } else if host.is_empty() {
        Err("the host is missing".into())
    } else {
        Err(format!("{host:?} is not a host name or IP address"))
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Everything a [`Client`](crate::Client) needs.
#[derive(Clone)]
pub struct ClientConfig {
    /// Tried in order; on failure the client moves to the next.
    pub servers: Vec<ServerAddr>,
    /// PEM certificates of the CA that signed the servers' certificates.
    pub ca_pem: Vec<u8>,
    /// The file `ca_pem` was read from, if it came from one: named when a server's
    /// certificate does not verify against it.
    pub ca_file: Option<PathBuf>,
    /// The user's token.
    pub token: String,
    /// A client certificate chain and its private key (PEM), for servers that require
    /// mutual TLS (`tls.client_ca`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The program, shown to admins as part of a lease's holder.
    pub agent: String,
    /// How long a request may take, from the call to the answer, resends and reconnects
    /// included: past it the caller gets [`Error::Timeout`] (or `Unreachable` when no
    /// server could be reached meanwhile).
    pub request_timeout: Duration,
    /// How long a check-in ([`Lease::release`](crate::Lease::release)) waits for the
    /// server's answer. Past it the lease is no longer heartbeated, so the server ends it
    /// when its ttl passes.
    pub release_timeout: Duration,
    /// How long connecting to one server may take (TCP, TLS and the handshake).
    pub connect_timeout: Duration,
    /// Where borrows and the clock are kept; `None` means the user's data directory (see
    /// [`BorrowStore::open_default`](crate::BorrowStore::open_default)).
    pub data_dir: Option<PathBuf>,
    /// The machine borrows are bound to, sent in `Hello`: [`machine_id()`] unless set.
    pub machine_id: String,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("servers", &self.servers)
            .field("token", &"***")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// The file as written on disk.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    #[serde(default)]
    pub servers: Vec<String>,
    pub ca: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub token: Option<String>,
    /// Client certificate (PEM), for servers that require mutual TLS.
    pub cert: Option<PathBuf>,
    /// Private key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// The permission bits of the file read (0 when none was): a file holding `token`
    /// should be readable by its owner alone.
    #[serde(skip)]
    pub mode: u32,
}

impl ClientFile {
    /// Reads a client file, resolving its relative paths against its directory.
    pub fn load(path: &Path) -> Result<ClientFile, Error> {
        let what = "client configuration";
        let read = files::read(path, what, files::TEXT_LIMIT)?;
        let text = files::text(path, what, read.bytes)?;
        let mut file: ClientFile = toml::from_str(&text)
            .map_err(|err| Error::Config(format!("{}: {err}", path.display())))?;
        file.mode = read.mode;
        let base = path.parent().unwrap_or(Path::new("."));
        file.ca = file.ca.map(|p| base.join(p));
        file.token_file = file.token_file.map(|p| base.join(p));
        file.cert = file.cert.map(|p| base.join(p));
        file.key = file.key.map(|p| base.join(p));
        Ok(file)
    }
}

impl ClientConfig {
    /// A configuration from parts; `ca_pem` is the CA certificate in PEM form.
    pub fn new(servers: Vec<ServerAddr>, ca_pem: Vec<u8>, token: impl Into<String>) -> Self {
        Self {
            servers,
            ca_pem,
            ca_file: None,
            token: token.into(),
            identity: None,
            agent: format!("tally-client/{}", env!("CARGO_PKG_VERSION")),
            request_timeout: Duration::from_secs(30),
            release_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            data_dir: None,
            machine_id: machine_id(),
        }
    }

    /// Reads the client file an application is given by its environment, as `tally` finds
    /// it: the file `TALLY_CONFIG` names, else [`default_client_file`] when it exists. The
    /// error says where it looked.
    pub fn from_env() -> Result<Self, Error> {
        if let Some(path) = std::env::var_os("TALLY_CONFIG").filter(|p| !p.is_empty()) {
            return Self::from_file(Path::new(&path));
        }
        match default_client_file() {
            Some(path) if path.exists() => Self::from_file(&path),
            Some(path) => Err(Error::Config(format!(
                "no client file: TALLY_CONFIG is not set, and there is none at {}; tallyd writes one at DATA_DIR/client.toml",
                path.display()
            ))),
            None => Err(Error::Config(
                "no client file: TALLY_CONFIG is not set, and neither is XDG_CONFIG_HOME or HOME, so there is no default path (~/.config/tally/client.toml)".into(),
            )),
        }
    }

    /// Reads a client file (`servers`, `ca`, `token_file` or `token`).
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let file = ClientFile::load(path)?;
        let identity = (file.cert.clone(), file.key.clone());
        Self::from_parts(file.servers, file.ca, file.token, file.token_file)?
            .with_identity_files(identity)
    }

    /// Adds a client certificate and key read from PEM files; both or neither.
    pub fn with_identity_files(
        mut self,
        files: (Option<PathBuf>, Option<PathBuf>),
    ) -> Result<Self, Error> {
        let read = |path: &Path, what: &str| {
            files::read(path, what, files::TEXT_LIMIT).map(|read| read.bytes)
        };
        self.identity = match files {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                read(&cert, "client certificate")?,
                read(&key, "client key")?,
            )),
            (Some(_), None) => return Err(Error::Config("`cert` is set but `key` is not".into())),
            (None, Some(_)) => return Err(Error::Config("`key` is set but `cert` is not".into())),
        };
        Ok(self)
    }

    /// Builds a configuration from the pieces a file, the environment or flags give.
    pub fn from_parts(
        servers: Vec<String>,
        ca: Option<PathBuf>,
        token: Option<String>,
        token_file: Option<PathBuf>,
    ) -> Result<Self, Error> {
        if servers.is_empty() {
            return Err(Error::Config(
                "no server given: set `servers` in the client file, --server or TALLY_SERVER"
                    .into(),
            ));
        }
        let servers = servers
            .iter()
            .map(|s| ServerAddr::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let ca = ca.ok_or_else(|| {
            Error::Config("no CA given: set `ca` in the client file, --ca or TALLY_CA".into())
        })?;
        let ca_pem = files::read(&ca, "CA file", files::TEXT_LIMIT)?.bytes;
        let token = match (token, token_file) {
            (Some(token), _) => token,
            (None, Some(path)) => files::read_text(&path, "token file", files::TEXT_LIMIT)?
                .trim()
                .to_string(),
            (None, None) => {
                return Err(Error::Config(
                    "no token given: set `token_file` in the client file, --token, --token-file or TALLY_TOKEN".into(),
                ))
            }
        };
        if token.is_empty() {
            return Err(Error::Config("the token is empty".into()));
        }
        let mut config = Self::new(servers, ca_pem, token);
        config.ca_file = Some(ca);
        Ok(config)
    }
}

/// The files a Linux machine keeps its id in: systemd's, then D-Bus's.
pub const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// This machine's id, which borrows are bound to: the first of [`MACHINE_ID_FILES`] that
/// holds one. `TALLY_MACHINE_ID` counts only on a machine with none of its own (a container
/// without a machine id); elsewhere it cannot move a borrow to another machine.
pub fn machine_id() -> String {
    machine_id_from(&MACHINE_ID_FILES, std::env::var("TALLY_MACHINE_ID").ok())
}

/// The machine id read from `files` in order, else `fallback` (the value of
/// `TALLY_MACHINE_ID`), else empty. Tests pass files of their own.
pub fn machine_id_from(files: &[impl AsRef<Path>], fallback: Option<String>) -> String {
    files
        .iter()
        .filter_map(|path| {
            files::read_text(path.as_ref(), "machine id file", files::MACHINE_ID_LIMIT).ok()
        })
        .map(|text| text.trim().to_string())
        .find(|id| !id.is_empty())
        .or_else(|| fallback.map(|id| id.trim().to_string()))
        .unwrap_or_default()
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// The client file of the user when none is named: `$XDG_CONFIG_HOME/tally/client.toml`,
/// or `~/.config/tally/client.toml`; `None` when neither variable is set.
pub fn default_client_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("tally/client.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(
            ServerAddr::parse("lic1:27011").unwrap(),
            ServerAddr {
                host: "lic1".into(),
                port: 27011
            }
        );
        assert_eq!(ServerAddr::parse("lic1").unwrap().port, DEFAULT_PORT);
        assert_eq!(
            ServerAddr::parse("[::1]:9").unwrap(),
            ServerAddr {
                host: "::1".into(),
                port: 9
            }
        );
        assert_eq!(ServerAddr::parse("::1").unwrap().host, "::1");
        assert_eq!(
            ServerAddr::parse("[2001:db8::1]").unwrap(),
            ServerAddr {
                host: "2001:db8::1".into(),
                port: DEFAULT_PORT
            }
        );
        assert_eq!(ServerAddr::parse("10.0.0.7:1").unwrap().host, "10.0.0.7");
        assert_eq!(
            ServerAddr::parse("lic-1.studio_lan.").unwrap().port,
            DEFAULT_PORT
        );
        let refused = [
            (
                "lic1:http",
                "the port \"http\" is not a number from 1 to 65535",
            ),
            ("lic1:port", "the port \"port\" is not a number"),
            ("lic1:0", "the port \"0\""),
            ("lic1:65536", "the port \"65536\""),
            ("lic1:", "the port \"\""),
            (":80", "the host is missing"),
            ("", "it is empty"),
            ("https://lic1", "the port \"//lic1\""),
            ("lic1:27010:5", "\"lic1:27010:5\" is not an IPv6 address"),
            (
                "lic1 27010",
                "\"lic1 27010\" is not a host name or IP address",
            ),
            ("lic1/x:1", "is not a host name"),
            ("-lic1", "is not a host name"),
            ("a..b", "is not a host name"),
            ("[lic1]:1", "\"lic1\" is not an IPv6 address"),
            ("[::1]x", "after `]`"),
            ("[::1", "without its `]`"),
        ];
        for (text, why) in refused {
            let err = ServerAddr::parse(text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("server {:?} is not HOST:PORT: ", text.trim())),
                "{text:?}: {err}"
            );
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn client_file_rejects_unknown_keys_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(
            &path,
            "servers = [\"a:1\"]\nca = \"ca.pem\"\ntoken_file = \"t\"\n",
        )
        .unwrap();
        let file = ClientFile::load(&path).unwrap();
        assert_eq!(file.ca.unwrap(), dir.path().join("ca.pem"));
        std::fs::write(&path, "servers = [\"a:1\"]\nsrevers = 1\n").unwrap();
        let err = ClientFile::load(&path).err().unwrap().to_string();
        assert!(err.contains("srevers"), "{err}");
    }

    #[test]
    fn tally_machine_id_counts_only_where_the_machine_has_no_id() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc-machine-id");
        let dbus = dir.path().join("dbus-machine-id");
        let files = [&etc, &dbus];
        let env = || Some("chosen-by-the-user".to_string());
        // A container: no machine id of its own.
        assert_eq!(machine_id_from(&files, env()), "chosen-by-the-user");
        assert_eq!(machine_id_from(&files, None), "");
        // An empty file is no id.
        std::fs::write(&etc, "\n").unwrap();
        assert_eq!(machine_id_from(&files, env()), "chosen-by-the-user");
        // D-Bus's id, then systemd's first: the variable no longer counts.
        std::fs::write(&dbus, "dbus-id\n").unwrap();
        assert_eq!(machine_id_from(&files, env()), "dbus-id");
        std::fs::write(&etc, "etc-id\n").unwrap();
        assert_eq!(machine_id_from(&files, env()), "etc-id");
    }
}
