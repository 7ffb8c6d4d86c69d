//! `tallyd.toml`: parsed strictly (unknown keys are errors), then [`Config::validate`]d.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The daemon's configuration (SPEC §5).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// IP address and port to accept clients on (a host name is refused, naming what is
    /// accepted: binding must not depend on name resolution at start).
    #[serde(default = "default_listen", deserialize_with = "socket_address")]
    pub listen: SocketAddr,
    /// Where the database, keys, certificates and the owner token live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// A database URL; absent means SQLite in `data_dir`. Never serialized: it may hold a
    /// password ([`Config::changes`] compares it apart).
    #[serde(default, skip_serializing)]
    pub database: Option<Secret>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub leases: LeaseConfig,
    #[serde(default)]
    pub borrow: BorrowConfig,
    #[serde(default)]
    pub users: UserConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub log: LogConfig,
    /// High availability on PostgreSQL (SPEC §7); read only when `database` is PostgreSQL.
    #[serde(default)]
    pub ha: HaConfig,
    /// Where notifications go besides the log (SPEC §9, R20), and how delivery retries.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// The HTTPS listener of `/metrics`, `/healthz` and `/readyz` (SPEC §10); absent: no
    /// HTTP at all.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// Lease history for usage reports (SPEC §10).
    #[serde(default)]
    pub history: HistoryConfig,
}

/// `[http]`: where metrics and health are served over HTTPS, and who may read the metrics.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// IP address and port of the HTTPS listener (changed only by a restart).
    #[serde(deserialize_with = "socket_address")]
    pub listen: SocketAddr,
    /// When set, `/metrics` needs `Authorization: Bearer TOKEN`; reloaded on SIGHUP.
    #[serde(default)]
    pub metrics_token: Option<Secret>,
}

impl HttpConfig {
    fn problems(&self, main: SocketAddr, problem: &mut impl FnMut(String)) {
        let (ip, main_ip) = (self.listen.ip(), main.ip());
        let overlap = ip == main_ip || ip.is_unspecified() || main_ip.is_unspecified();
        if overlap && self.listen.port() == main.port() && main.port() != 0 {
            problem(format!(
                "http.listen = {} takes the port of listen = {main}; give HTTP a port of its own, as in \"127.0.0.1:27080\"",
                self.listen
            ));
        }
        if let Some(token) = &self.metrics_token {
            let token = token.0.as_str();
            if token.len() < 16 {
                problem(format!(
                    "http.metrics_token is {} characters long; it must be at least 16 (e.g. the output of `openssl rand -hex 32`)",
                    token.len()
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                problem("http.metrics_token holds a space, a control or a non-ASCII character; it goes in an HTTP header, so it may hold only visible ASCII characters".into());
            }
        }
    }
}

/// How long lease history is kept (`[history]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// History older than this is pruned; reports cannot reach further back.
    #[serde(
        default = "default_history_keep",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    pub keep: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            keep: DEFAULT_HISTORY_KEEP,
        }
    }
}

/// `history.keep` unless configured: 400 days.
pub const DEFAULT_HISTORY_KEEP: Duration = Duration::from_secs(400 * 24 * 3600);

fn default_history_keep() -> Duration {
    DEFAULT_HISTORY_KEEP
}

/// The notification sinks (`[notify]`): webhooks and e-mail, and how each delivery is
/// retried. The log always gets every notification. Reloaded on SIGHUP.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Attempts at one notification per sink before that sink gives it up (logged at
    /// `warn` and counted as failed in `tally notify status`).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The wait after the first failed attempt; it doubles with each failure after it.
    #[serde(
        default = "default_backoff_min",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    pub backoff_min: Duration,
    /// The longest wait between two attempts.
    #[serde(
        default = "default_backoff_max",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    pub backoff_max: Duration,
    /// How long one attempt may take (connecting, TLS, sending) before it fails.
    #[serde(
        default = "default_notify_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    pub timeout: Duration,
    /// `[[notify.webhook]]`: each gets a signed JSON POST.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook: Vec<WebhookConfig>,
    /// `[notify.email]`: one relay, mail to the responsible people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff_min: default_backoff_min(),
            backoff_max: default_backoff_max(),
            timeout: default_notify_timeout(),
            webhook: Vec::new(),
            email: None,
        }
    }
}

/// One `[[notify.webhook]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the notifications are POSTed to.
    pub url: String,
    /// The HMAC-SHA256 key of the `Tally-Signature` header.
    pub secret: Secret,
    /// The kinds it gets; absent means every kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
    /// A PEM file of the CA that signed the receiver's certificate (a private CA); absent
    /// means the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// `[notify.email]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// `smtp://host[:port]` (port 25 by default; STARTTLS when the relay offers it) or
    /// `smtps://host[:port]` (implicit TLS, port 465 by default).
    pub smtp: String,
    /// The sender address.
    pub from: String,
    /// The responsible people: every notification goes to them.
    pub to: Vec<String>,
    /// The relay's user name, for relays that ask for AUTH (with `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The relay's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// The kinds mailed; absent means every kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
    /// A PEM file of the CA that signed the relay's certificate (a private CA); absent
    /// means the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// Where an `smtp` setting points, read by [`EmailConfig::relay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    pub host: String,
    pub port: u16,
    /// `smtps://`: TLS from the first byte; else STARTTLS when offered.
    pub implicit_tls: bool,
}

impl NotifyConfig {
    /// Every problem of `[notify]`, each naming its key; reads no file (the CA files are
    /// read by `tallyd check-config` and when the sinks are made).
    fn problems(&self, problem: &mut impl FnMut(String)) {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if !(1..=1000).contains(&self.max_attempts) {
            problem(format!(
                "notify.max_attempts = {}; it must be between 1 and 1000",
                self.max_attempts
            ));
        }
        if self.backoff_min < Duration::from_millis(10) {
            problem(format!(
                "notify.backoff_min = {} is shorter than 10ms, the least it may be",
                show(self.backoff_min)
            ));
        }
        if self.backoff_max < self.backoff_min {
            problem(format!(
                "notify.backoff_max = {} is shorter than notify.backoff_min = {}",
                show(self.backoff_max),
                show(self.backoff_min)
            ));
        }
        if self.timeout < Duration::from_millis(100) {
            problem(format!(
                "notify.timeout = {} is shorter than 100ms, the least it may be",
                show(self.timeout)
            ));
        }
        let kinds = |key: &str, kinds: &Option<Vec<String>>, problem: &mut dyn FnMut(String)| {
            let Some(kinds) = kinds else { return };
            if kinds.is_empty() {
                problem(format!(
                    "{key}.kinds is empty; leave it out for every kind, or name some of: {}",
                    known_kinds()
                ));
            }
            for kind in kinds {
                if crate::core::NotificationKind::parse(kind).is_none() {
                    problem(format!(
                        "{key}.kinds: {kind:?} is not a notification kind; the kinds are {}",
                        known_kinds()
                    ));
                }
            }
        };
        let mut seen = Vec::new();
        for (i, hook) in self.webhook.iter().enumerate() {
            let key = format!("notify.webhook[{i}]");
            match webhook_url(&hook.url) {
                // Not repeated: it may hold a password.
                Err(why) => problem(format!("{key}.url {why}")),
                Ok(name) => {
                    if seen.contains(&name) {
                        problem(format!(
                            "{key}.url: another webhook has the same URL ({name}); give each webhook once"
                        ));
                    }
                    seen.push(name);
                }
            }
            if hook.secret.0.is_empty() {
                problem(format!("{key}.secret is empty; give the key the receiver checks the Tally-Signature with"));
            }
            kinds(&key, &hook.kinds, problem);
        }
        if let Some(email) = &self.email {
            if let Err(why) = email.relay() {
                problem(why);
            }
            if email.from.parse::<lettre::message::Mailbox>().is_err() {
                problem(format!(
                    "notify.email.from = {:?} is not an e-mail address",
                    email.from
                ));
            }
            if email.to.is_empty() {
                problem("notify.email.to is empty; name the responsible people's addresses".into());
            }
            for to in &email.to {
                if to.parse::<lettre::message::Mailbox>().is_err() {
                    problem(format!("notify.email.to: {to:?} is not an e-mail address"));
                }
            }
            match (&email.user, &email.password) {
                (Some(_), None) => {
                    problem("notify.email.user is set but notify.email.password is not".into())
                }
                (None, Some(_)) => {
                    problem("notify.email.password is set but notify.email.user is not".into())
                }
                _ => {}
            }
            kinds("notify.email", &email.kinds, problem);
        }
    }
}

/// The notification kinds, for the text of a problem.
fn known_kinds() -> String {
    crate::core::NotificationKind::ALL
        .iter()
        .map(|kind| kind.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A webhook URL's name as people read it (`webhook https://host:port/path`: no user,
/// password, query or fragment), or why it is not an http(s) URL (never repeating what
/// may be a credential).
pub fn webhook_url(url: &str) -> Result<String, &'static str> {
    let parsed =
        reqwest::Url::parse(url).map_err(|_| "is not a URL; give it as https://host/path")?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("is not an http:// or https:// URL");
    }
    let Some(host) = parsed.host_str() else {
        return Err("names no host");
    };
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    Ok(format!(
        "webhook {}://{host}{port}{}",
        parsed.scheme(),
        parsed.path()
    ))
}

impl EmailConfig {
    /// The relay `smtp` names, or why it names none.
    pub fn relay(&self) -> Result<Relay, String> {
        let bad = || {
            format!(
                "notify.email.smtp = {:?} is not smtp://HOST[:PORT] or smtps://HOST[:PORT] (user and password go in notify.email.user and notify.email.password)",
                self.smtp
            )
        };
        let (implicit_tls, rest) = match self.smtp.split_once("://") {
            Some(("smtp", rest)) => (false, rest),
            Some(("smtps", rest)) => (true, rest),
            _ => return Err(bad()),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty()
            || rest.contains(['/', '@', '?', '#'])
            || rest.contains(char::is_whitespace)
        {
            return Err(bad());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') && !port.contains(']') => {
                match port.parse::<u16>() {
                    Ok(port) if port > 0 => (host, port),
                    _ => return Err(bad()),
                }
            }
            _ => (rest, if implicit_tls { 465 } else { 25 }),
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Relay {
            host: host.to_string(),
            port,
            implicit_tls,
        })
    }
}

/// A node of a cluster: where clients are sent when it leads, and how long leadership
/// lasts without a renewal.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// `host:port` clients are sent to when this node leads; absent means `listen`
    /// (which must then not be a wildcard address).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Leadership lapses this long after its last renewal in the database's clock; the
    /// leader renews every `lease / 3` and a standby takes over within about `lease`.
    #[serde(
        default = "default_ha_lease",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    pub lease: Duration,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            advertise: None,
            lease: default_ha_lease(),
        }
    }
}

impl HaConfig {
    /// The address clients are sent to when this node leads: `advertise`, or `listen`.
    pub fn advertised(&self, listen: SocketAddr) -> Result<String, String> {
        match &self.advertise {
            Some(address) => check_advertise(address).map(|()| address.clone()),
            None if listen.ip().is_unspecified() => Err(format!(
                "ha.advertise is needed: listen = {listen} is a wildcard address, which clients cannot be sent to; set ha.advertise = \"HOST:{}\" naming this node",
                listen.port()
            )),
            None => Ok(listen.to_string()),
        }
    }
}

/// `host:port`, with a port that reads; `[v6]:port` for IPv6 addresses.
fn check_advertise(address: &str) -> Result<(), String> {
    let bad = || {
        format!("ha.advertise = {address:?} is not HOST:PORT (a host name or address clients can reach, and its port, as in \"lic1.studio.lan:27010\")")
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(bad()),
    }
}

/// TLS: files to use, or the names to put in a generated certificate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; absent means a private CA and certificate are generated.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
    /// Subject names of a generated certificate (DNS names or IP addresses).
    #[serde(default = "default_names")]
    pub names: Vec<String>,
}

/// How long leases live without a heartbeat, and how often they are swept.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    #[serde(
        default = "default_ttl",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    pub ttl: Duration,
    #[serde(
        default = "default_sweep",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    pub sweep: Duration,
}

/// Limits of borrowing for offline use.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BorrowConfig {
    #[serde(
        default = "default_borrow_max",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    pub max: Duration,
    /// A certificate (PEM, with any intermediates after it) for the borrow signing key,
    /// issued by the CA clients trust. Needed when `tls.cert` is set: tallyd then has no CA
    /// key of its own to certify the signing key, and refuses borrows without it.
    #[serde(default)]
    pub signing_cert: Option<PathBuf>,
}

/// User policy.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The most active users; 0 means no limit.
    #[serde(default)]
    pub max_active: u32,
    /// Whether guests may draw floating seats.
    #[serde(default)]
    pub guests_use_floating: bool,
}

/// Connection limits; reloaded on SIGHUP.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_max_frame")]
    pub max_frame: usize,
    #[serde(
        default = "default_handshake_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    pub handshake_timeout: Duration,
    /// Failed sign-ins allowed per client address (an IPv4 address, an IPv6 /64) per minute;
    /// past it, further failures are answered `rate_limited`. A valid token always signs
    /// in. 0 turns the limit off.
    #[serde(default = "default_signin_failures")]
    pub signin_failures: u32,
    /// Connections from one address (an IPv4 address, an IPv6 /64) that have not signed in
    /// yet; past it, new ones from that address are closed at once. All addresses together
    /// may hold at most half of `max_connections` before signing in.
    #[serde(default = "default_max_unauthenticated_per_address")]
    pub max_unauthenticated_per_address: u32,
    /// Online leases one client instance may hold; past it, a checkout is `invalid`.
    /// Read at start.
    #[serde(default = "default_max_leases_per_client")]
    pub max_leases_per_client: u32,
}

/// Log output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` (the default) or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
}

/// A string kept out of logs: its `Debug` prints `***`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// Written as `***`: a configuration's settings as text ([`Config::changes`]) never hold
/// one.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML that does not read, an unknown key or a value of the wrong form: the parser
    /// stops at the first.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// Every problem [`Config::problems`] found, each naming its key; `path` when the
    /// configuration came from a file.
    #[error("{}", lines(path.as_deref(), problems).join("\n"))]
    Invalid {
        path: Option<PathBuf>,
        problems: Vec<String>,
    },
}

impl ConfigError {
    /// One line per problem, each naming the file it is in: what `tallyd check-config` and a
    /// failed start print, and what a failed reload logs, once each.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, problems } => lines(path.as_deref(), problems),
            other => vec![other.to_string()],
        }
    }
}

/// `problems`, each after the file's name when there is one.
fn lines(path: Option<&Path>, problems: &[String]) -> Vec<String> {
    problems
        .iter()
        .map(|problem| match path {
            Some(path) => format!("{}: {problem}", path.display()),
            None => problem.clone(),
        })
        .collect()
}

/// One key whose value differs between two configurations, as a reload reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted, as in the file: `leases.ttl`, `limits.max_connections`.
    pub key: String,
    /// The value before, as text; `(unset)` for an absent optional key, `(not shown)` for
    /// a database URL.
    pub old: String,
    /// The value after, likewise.
    pub new: String,
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        match config.problems() {
            problems if problems.is_empty() => Ok(config),
            problems => Err(ConfigError::Invalid {
                path: Some(path.to_path_buf()),
                problems,
            }),
        }
    }

    /// Reads and parses a configuration file, without validating it.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text, without validating it.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|err| err.to_string().trim_end().to_string())
    }

    /// A configuration with every default, serving from `data_dir` on `listen`.
    pub fn with_defaults(listen: SocketAddr, data_dir: PathBuf) -> Config {
        let mut config = Config::parse("").expect("the empty configuration parses");
        config.listen = listen;
        config.data_dir = data_dir;
        config
    }

    /// Checks what the types cannot: ranges, pairs of keys, and known values. Every problem
    /// is reported, not only the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems() {
            problems if problems.is_empty() => Ok(()),
            problems => Err(ConfigError::Invalid {
                path: None,
                problems,
            }),
        }
    }

    /// Every problem [`validate`](Self::validate) reports, each naming its key and, for a
    /// value out of range, the value and the range. Reads no file: `tallyd check-config`
    /// adds those checks (`crate::check`).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut problem = |text: String| problems.push(text);
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if self.data_dir.as_os_str().is_empty() {
            problem("data_dir is empty".into());
        }
        let database = self.database.as_ref().map(|url| url.0.as_str());
        match crate::store::Backend::from_url(database, &self.data_dir) {
            Err(err) => problem(format!("database: {err}")),
            Ok(crate::store::Backend::Postgres(url)) => {
                if let Err(err) = crate::store::check_postgres_url(&url) {
                    problem(format!("database: {err}"));
                }
                if let Err(err) = crate::ha::Timing::new(self.ha.lease) {
                    problem(err.to_string());
                }
                if let Err(err) = self.ha.advertised(self.listen) {
                    problem(err);
                }
            }
            Ok(crate::store::Backend::Sqlite(_)) => {}
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => problem("tls.cert is set but tls.key is not".into()),
            (None, Some(_)) => problem("tls.key is set but tls.cert is not".into()),
            _ => {}
        }
        if self.tls.cert.is_none() && self.tls.names.is_empty() {
            problem("tls.names must name at least one host for the generated certificate".into());
        }
        for bad in self
            .tls
            .names
            .iter()
            .filter(|n| n.is_empty() || n.contains(char::is_whitespace))
        {
            problem(format!("tls.names: {bad:?} is not a host name or address"));
        }
        let (ttl, sweep) = (self.leases.ttl, self.leases.sweep);
        if ttl < Duration::from_secs(1) {
            problem(format!(
                "leases.ttl = {} is shorter than 1s, the least it may be",
                show(ttl)
            ));
        }
        if sweep < Duration::from_millis(100) {
            problem(format!(
                "leases.sweep = {} is shorter than 100ms, the least it may be",
                show(sweep)
            ));
        } else if sweep > ttl {
            problem(format!(
                "leases.sweep = {} is longer than leases.ttl = {}; it must be between 100ms and leases.ttl",
                show(sweep),
                show(ttl)
            ));
        }
        if self.history.keep < Duration::from_secs(3600) {
            problem(format!(
                "history.keep = {} is shorter than 1h, the least it may be (reports count whole hours)",
                show(self.history.keep)
            ));
        } else if self.history.keep > Duration::from_secs(1000 * 24 * 3600) {
            problem(format!(
                "history.keep = {} is longer than 1000d, the most it may be",
                show(self.history.keep)
            ));
        }
        if self.borrow.max < Duration::from_secs(60) {
            problem(format!(
                "borrow.max = {} is shorter than 1m, the least it may be",
                show(self.borrow.max)
            ));
        }
        let limits = &self.limits;
        if limits.max_connections == 0 {
            problem("limits.max_connections = 0; it must be at least 1".into());
        }
        if !(1024..=16 * 1024 * 1024).contains(&limits.max_frame) {
            problem(format!(
                "limits.max_frame = {}; it must be between 1024 and 16777216",
                limits.max_frame
            ));
        }
        if limits.handshake_timeout < Duration::from_millis(100) {
            problem(format!(
                "limits.handshake_timeout = {} is shorter than 100ms, the least it may be",
                show(limits.handshake_timeout)
            ));
        }
        if limits.max_unauthenticated_per_address == 0 {
            problem("limits.max_unauthenticated_per_address = 0; it must be at least 1".into());
        }
        if limits.max_leases_per_client == 0 {
            problem("limits.max_leases_per_client = 0; it must be at least 1".into());
        }
        self.notify.problems(&mut problem);
        if let Some(http) = &self.http {
            http.problems(self.listen, &mut problem);
        }
        if !matches!(self.log.format.as_str(), "human" | "json") {
            problem(format!(
                "log.format must be \"human\" or \"json\", not {:?}",
                self.log.format
            ));
        }
        problems
    }

    /// Every key whose value differs in `new`, in the order of the keys' names. The
    /// database URL is compared but never shown.
    pub fn changes(&self, new: &Config) -> Vec<Change> {
        let (old_keys, new_keys) = (self.settings(), new.settings());
        let unset = || "(unset)".to_string();
        let mut keys: Vec<&String> = old_keys.keys().chain(new_keys.keys()).collect();
        keys.sort();
        keys.dedup();
        let mut changes: Vec<Change> = keys
            .into_iter()
            .filter(|key| old_keys.get(*key) != new_keys.get(*key))
            .map(|key| Change {
                key: key.clone(),
                old: old_keys.get(key).cloned().unwrap_or_else(unset),
                new: new_keys.get(key).cloned().unwrap_or_else(unset),
            })
            .collect();
        let database = |c: &Config| c.database.as_ref().map(|url| url.0.clone());
        if database(self) != database(new) {
            let shown = |url: Option<String>| match url {
                Some(_) => "(not shown)".to_string(),
                None => unset(),
            };
            changes.push(Change {
                key: "database".into(),
                old: shown(database(self)),
                new: shown(database(new)),
            });
            changes.sort_by(|a, b| a.key.cmp(&b.key));
        }
        // Secrets are written `***` in the settings: a change of one alone shows here.
        let secrets = |c: &Config| {
            let mut secrets: Vec<(String, Option<String>)> = c
                .notify
                .webhook
                .iter()
                .enumerate()
                .map(|(i, hook)| {
                    (
                        format!("notify.webhook[{i}].secret"),
                        Some(hook.secret.0.clone()),
                    )
                })
                .collect();
            // First, so that a different number of webhooks does not shift it.
            secrets.insert(
                0,
                (
                    "http.metrics_token".into(),
                    c.http
                        .as_ref()
                        .and_then(|h| h.metrics_token.as_ref())
                        .map(|t| t.0.clone()),
                ),
            );
            secrets.push((
                "notify.email.password".into(),
                c.notify
                    .email
                    .as_ref()
                    .and_then(|e| e.password.as_ref())
                    .map(|p| p.0.clone()),
            ));
            secrets
        };
        for ((key, old), (_, new)) in secrets(self).into_iter().zip(secrets(new)) {
            if old != new && !changes.iter().any(|c| key.starts_with(&c.key)) {
                let shown = |s: &Option<String>| match s {
                    Some(_) => "(not shown)".to_string(),
                    None => unset(),
                };
                changes.push(Change {
                    key,
                    old: shown(&old),
                    new: shown(&new),
                });
            }
        }
        changes.sort_by(|a, b| a.key.cmp(&b.key));
        changes
    }

    /// Every key but `database`, dotted, with its value as text (strings bare, durations
    /// as `1m 30s`); an absent optional key is not there.
    fn settings(&self) -> std::collections::BTreeMap<String, String> {
        fn flatten(
            prefix: &str,
            value: &toml::Value,
            out: &mut std::collections::BTreeMap<String, String>,
        ) {
            match value {
                toml::Value::Table(table) => {
                    for (key, value) in table {
                        let key = match prefix {
                            "" => key.clone(),
                            prefix => format!("{prefix}.{key}"),
                        };
                        flatten(&key, value, out);
                    }
                }
                toml::Value::String(text) => {
                    out.insert(prefix.to_string(), text.clone());
                }
                other => {
                    out.insert(prefix.to_string(), other.to_string());
                }
            }
        }
        let mut out = std::collections::BTreeMap::new();
        // Every value came from TOML text, so it is text TOML can hold again.
        let value = toml::Value::try_from(self).expect("a configuration serializes");
        flatten("", &value, &mut out);
        out
    }

    /// How often clients must heartbeat: a third of the ttl.
    pub fn heartbeat_interval(&self) -> Duration {
        self.leases.ttl / 3
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            names: default_names(),
        }
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            sweep: default_sweep(),
        }
    }
}

impl Default for BorrowConfig {
    fn default() -> Self {
        Self {
            max: default_borrow_max(),
            signing_cert: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_frame: default_max_frame(),
            handshake_timeout: default_handshake_timeout(),
            signin_failures: default_signin_failures(),
            max_unauthenticated_per_address: default_max_unauthenticated_per_address(),
            max_leases_per_client: default_max_leases_per_client(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: default_log_format(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], tally_protocol::DEFAULT_PORT))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/tally")
}
fn default_names() -> Vec<String> {
    vec!["localhost".into()]
}
fn default_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_sweep() -> Duration {
    Duration::from_secs(5)
}
fn default_borrow_max() -> Duration {
    Duration::from_secs(168 * 3600)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_frame() -> usize {
    tally_protocol::DEFAULT_MAX_FRAME
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_signin_failures() -> u32 {
    10
}
fn default_max_unauthenticated_per_address() -> u32 {
    64
}
fn default_max_leases_per_client() -> u32 {
    1000
}
fn default_ha_lease() -> Duration {
    Duration::from_secs(3)
}
fn default_max_attempts() -> u32 {
    10
}
fn default_backoff_min() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(3600)
}
fn default_notify_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_log_format() -> String {
    "human".into()
}

/// Reads `listen`: an IP address and port. A host name is refused, saying what is accepted:
/// a name may resolve to several addresses, or to none while the network comes up.
fn socket_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "listen = {text:?} is not an IP address and port; listen takes an IP address, not a host name, and a port: \"127.0.0.1:27010\" (this machine only), \"0.0.0.0:27010\" (every IPv4 address) or \"[::]:27010\" (every IPv6 address)"
        ))
    })
}

/// Writes a duration as [`duration`] reads it: `1m 30s`.
fn duration_text<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*value))
}

/// Reads durations such as `90s`, `15m`, `8h` or `7d`.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|err| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration like 90s, 15m, 8h or 7d ({err})"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::parse("listen = \"127.0.0.1:1\"\nlistne = 3\n").unwrap_err();
        assert!(err.contains("listne"), "{err}");
        let err = Config::parse("[leases]\nttl = \"5s\"\ntll = \"1s\"\n").unwrap_err();
        assert!(err.contains("tll"), "{err}");
    }

    #[test]
    fn durations_name_the_bad_value() {
        let err = Config::parse("[leases]\nttl = \"five seconds\"\n").unwrap_err();
        assert!(err.contains("five seconds"), "{err}");
    }

    #[test]
    fn validate_rejects_out_of_range_values() {
        let mut config = Config::parse("").unwrap();
        config.validate().unwrap();
        config.leases.ttl = Duration::from_millis(500);
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("leases.ttl"));
        let config = Config::parse("[tls]\ncert = \"/x.pem\"\n").unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("tls.key"));
        let config = Config::parse("database = \"postgres://x@y/z\"\n").unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("ha.advertise is needed"), "{err}");
        assert!(err.contains("0.0.0.0:27010"), "{err}");
        let config = Config::parse(
            "listen = \"127.0.0.1:27010\"\ndatabase = \"postgres://x@y/z\"\n[ha]\nlease = \"100ms\"\n",
        )
        .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("ha.lease"), "{err}");
        for bad in [
            "lic1",
            "lic1:",
            ":27010",
            "lic1:http",
            "lic 1:27010",
            "lic1:0",
        ] {
            let config = Config::parse(&format!(
                "database = \"postgres://x@y/z\"\n[ha]\nadvertise = {bad:?}\n"
            ))
            .unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("is not HOST:PORT"), "{bad}: {err}");
        }
        for good in ["lic1.studio.lan:27010", "10.0.0.5:27010", "[fd00::5]:27010"] {
            let config = Config::parse(&format!(
                "database = \"postgres://x@y/z\"\n[ha]\nadvertise = {good:?}\n"
            ))
            .unwrap();
            config
                .validate()
                .unwrap_or_else(|err| panic!("{good}: {err}"));
        }
        let config = Config::parse("database = \"sqlite://\"\n").unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("names no file"));
        for key in ["max_unauthenticated_per_address", "max_leases_per_client"] {
            let config = Config::parse(&format!("[limits]\n{key} = 0\n")).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("limits.{key}")), "{err}");
        }
        let config = Config::parse("[log]\nformat = \"xml\"\n").unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("log.format"));
    }

    #[test]
    fn every_problem_is_reported_with_its_values() {
        let config = Config::parse(
            "[leases]\nttl = \"60s\"\nsweep = \"90s\"\n[limits]\nmax_connections = 0\n[log]\nformat = \"xml\"\n",
        )
        .unwrap();
        let problems = config.problems();
        assert_eq!(
            problems,
            [
                "leases.sweep = 1m 30s is longer than leases.ttl = 1m; it must be between 100ms and leases.ttl",
                "limits.max_connections = 0; it must be at least 1",
                "log.format must be \"human\" or \"json\", not \"xml\"",
            ]
        );
        let err = ConfigError::Invalid {
            path: Some("/etc/tally/tallyd.toml".into()),
            problems,
        };
        let lines = err.lines();
        assert_eq!(lines.len(), 3);
        assert!(lines
            .iter()
            .all(|line| line.starts_with("/etc/tally/tallyd.toml: ")));
        assert_eq!(err.to_string(), lines.join("\n"));
    }

    #[test]
    fn listen_takes_an_ip_address_and_says_so_for_a_host_name() {
        let err = Config::parse("listen = \"localhost:27010\"\n").unwrap_err();
        assert!(
            err.contains("listen = \"localhost:27010\" is not an IP address and port"),
            "{err}"
        );
        assert!(err.contains("\"0.0.0.0:27010\""), "{err}");
        for good in [
            "0.0.0.0:27010",
            "[::]:27010",
            "127.0.0.1:1",
            "[fd00::5]:27010",
        ] {
            let config = Config::parse(&format!("listen = {good:?}\n")).unwrap();
            assert_eq!(config.listen, good.parse::<SocketAddr>().unwrap());
        }
    }

    #[test]
    fn a_postgres_url_that_does_not_read_is_a_problem_that_does_not_show_it() {
        let config = Config::parse(
            "listen = \"127.0.0.1:27010\"\ndatabase = \"postgres://tally:hunter2@db:notaport/tally\"\n",
        )
        .unwrap();
        let problems = config.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("database: "), "{problems:?}");
        assert!(!problems[0].contains("hunter2"), "{problems:?}");
    }

    #[test]
    fn changes_name_each_key_with_both_values_and_never_a_database_url() {
        let old = Config::parse("").unwrap();
        assert!(old.changes(&old.clone()).is_empty());
        let new = Config::parse(
            "listen = \"127.0.0.1:1\"\ndatabase = \"postgres://u:hunter2@h/d\"\n[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n[leases]\nttl = \"90s\"\n",
        )
        .unwrap();
        let changes = old.changes(&new);
        let shown: Vec<(&str, &str, &str)> = changes
            .iter()
            .map(|c| (c.key.as_str(), c.old.as_str(), c.new.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("database", "(unset)", "(not shown)"),
                ("leases.ttl", "1m", "1m 30s"),
                ("listen", "0.0.0.0:27010", "127.0.0.1:1"),
                ("tls.cert", "(unset)", "/c.pem"),
                ("tls.key", "(unset)", "/k.pem"),
            ]
        );
        let mut other = new.clone();
        other.database = Some(Secret("postgres://u:other@h/d".into()));
        let changes = new.changes(&other);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].old.as_str(), changes[0].new.as_str()),
            ("(not shown)", "(not shown)")
        );
    }

    /// `[http]`: absent means no HTTP; unknown keys are refused; each problem names its
    /// key; the token never prints, and a change of it alone shows without its value.
    #[test]
    fn the_http_section_is_checked_key_by_key_and_its_token_never_shows() {
        assert!(Config::parse("").unwrap().http.is_none());
        let err =
            Config::parse("[http]\nlisten = \"127.0.0.1:27080\"\ntoken = \"x\"\n").unwrap_err();
        assert!(err.contains("token"), "{err}");
        let err = Config::parse("[http]\nlisten = \"localhost:27080\"\n").unwrap_err();
        assert!(err.contains("listen") && err.contains("localhost"), "{err}");
        let err = Config::parse("[http]\nmetrics_token = \"0123456789abcdef\"\n").unwrap_err();
        assert!(err.contains("listen"), "{err}");
        let text = |token: &str| {
            format!("listen = \"0.0.0.0:27010\"\n[http]\nlisten = \"127.0.0.1:27010\"\nmetrics_token = {token:?}\n")
        };
        let problems = Config::parse(&text("short one")).unwrap().problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("http.listen = 127.0.0.1:27010"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("http.metrics_token is 9 characters"),
            "{problems:?}"
        );
        assert!(
            problems[2].starts_with("http.metrics_token holds a space"),
            "{problems:?}"
        );
        let good =
            "[http]\nlisten = \"127.0.0.1:27080\"\nmetrics_token = \"s3cret-s3cret-s3cret\"\n";
        let config = Config::parse(good).unwrap();
        config.validate().unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
        let mut other = config.clone();
        other.http.as_mut().unwrap().metrics_token = Some(Secret("another-token-entirely".into()));
        let changes = config.changes(&other);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].key, "http.metrics_token");
        assert!(
            !format!("{changes:?}").contains("s3cret")
                && !format!("{changes:?}").contains("another")
        );
        other.http.as_mut().unwrap().listen = "127.0.0.1:27081".parse().unwrap();
        let keys: Vec<String> = config.changes(&other).into_iter().map(|c| c.key).collect();
        assert_eq!(keys, ["http.listen", "http.metrics_token"]);
    }

    #[test]
    fn secrets_do_not_print() {
        let config = Config::parse("database = \"sqlite:///tmp/secret-path.db\"\n").unwrap();
        assert!(!format!("{config:?}").contains("secret-path"));
    }

    #[test]
    fn example_configurations_parse_and_validate() {
        for name in ["tallyd.toml", "dev.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../config")
                .join(name);
            Config::load(&path).unwrap_or_else(|err| panic!("{name}: {err}"));
        }
    }

    /// The example's `[http]`, with its commented `metrics_token` uncommented, parses and
    /// validates.
    #[test]
    fn the_examples_http_section_parses_with_its_token() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tallyd.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let text = text.replace("# metrics_token = ", "metrics_token = ");
        let config = Config::parse(&text).unwrap();
        config.validate().unwrap();
        let http = config.http.expect("the example serves HTTP");
        assert_eq!(http.listen.to_string(), "127.0.0.1:27080");
        assert!(http.metrics_token.is_some());
    }

    /// The example's commented `[[notify.webhook]]` and `[notify.email]`, uncommented, parse
    /// and validate: the documentation cannot go stale.
    #[test]
    fn the_examples_notify_sinks_parse_when_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tallyd.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut notify = String::new();
        let mut inside = false;
        for line in text.lines() {
            if line.starts_with('[') {
                inside = line == "[notify]";
            }
            let uncommented = line.strip_prefix("# ").unwrap_or(line);
            let is_setting = uncommented.starts_with('[')
                || uncommented.split_once(" = ").is_some_and(|(key, _)| {
                    !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
            if inside && is_setting {
                notify.push_str(uncommented);
                notify.push('\n');
            }
        }
        assert!(notify.contains("[[notify.webhook]]"), "{notify}");
        assert!(notify.contains("[notify.email]"), "{notify}");
        let config = Config::parse(&notify).unwrap_or_else(|err| panic!("{err}\n{notify}"));
        config.validate().unwrap();
        assert_eq!(config.notify.webhook.len(), 1);
        let email = config.notify.email.as_ref().unwrap();
        assert_eq!(
            email.relay().unwrap(),
            Relay {
                host: "relay.studio.lan".into(),
                port: 25,
                implicit_tls: false
            }
        );
        assert!(!format!("{config:?}").contains("a long random string"));
        assert!(!format!("{config:?}").contains("password = \"...\""));
    }

    #[test]
    fn every_bad_notify_value_is_named_with_its_key() {
        let config = Config::parse(
            r#"
[notify]
max_attempts = 0
backoff_min = "1s"
backoff_max = "10ms"
timeout = "1ms"

[[notify.webhook]]
url = "ftp://hooks.studio.lan/x"
secret = ""
kinds = ["pool_exhausted", "pool_exausted"]

[[notify.webhook]]
url = "https://u:hunter2@hooks.studio.lan/y"
secret = "s"
kinds = []

[[notify.webhook]]
url = "https://other:pw@hooks.studio.lan/y"
secret = "t"

[notify.email]
smtp = "smtp://user:pw@relay:25"
from = "not an address"
to = ["it@studio.lan", "nobody"]
password = "p"
kinds = ["test"]
"#,
        )
        .unwrap();
        let problems = config.problems();
        for expected in [
            "notify.max_attempts = 0",
            "notify.backoff_max = 10ms is shorter than notify.backoff_min = 1s",
            "notify.timeout = 1ms",
            "notify.webhook[0].url is not an http:// or https:// URL",
            "notify.webhook[0].secret is empty",
            "notify.webhook[0].kinds: \"pool_exausted\" is not a notification kind",
            "notify.webhook[1].kinds is empty",
            "notify.webhook[2].url: another webhook has the same URL (webhook https://hooks.studio.lan/y)",
            "notify.email.smtp = \"smtp://user:pw@relay:25\" is not smtp://HOST[:PORT]",
            "notify.email.from = \"not an address\" is not an e-mail address",
            "notify.email.to: \"nobody\" is not an e-mail address",
            "notify.email.password is set but notify.email.user is not",
            "notify.email.kinds: \"test\" is not a notification kind",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected}\n{problems:#?}"
            );
        }
        assert_eq!(problems.len(), 13, "{problems:#?}");
        assert!(!problems.iter().any(|p| p.contains("hunter2")));
        assert!(!format!("{config:?}").contains("\"p\""));
        let good = Config::parse("[notify.email]\nsmtp = \"smtps://[fd00::5]\"\nfrom = \"t@s.lan\"\nto = [\"a@s.lan\"]\n").unwrap();
        good.validate().unwrap();
        assert_eq!(
            good.notify.email.unwrap().relay().unwrap(),
            Relay {
                host: "fd00::5".into(),
                port: 465,
                implicit_tls: true
            }
        );
    }

    #[test]
    fn a_changed_secret_is_a_change_that_does_not_show_it() {
        let config = |secret: &str| {
            Config::parse(&format!(
                "[[notify.webhook]]\nurl = \"https://h.lan/x\"\nsecret = {secret:?}\n"
            ))
            .unwrap()
        };
        let changes = config("old-secret").changes(&config("new-secret"));
        assert_eq!(
            changes,
            [Change {
                key: "notify.webhook[0].secret".into(),
                old: "(not shown)".into(),
                new: "(not shown)".into(),
            }]
        );
        assert!(config("a").changes(&config("a")).is_empty());
    }
}
