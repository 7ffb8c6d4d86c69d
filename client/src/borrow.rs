//! Borrowed seats kept on this machine and checked with no network (SPEC R6).
//!
//! Layout of the user's data directory (`$TALLY_DATA_DIR`, else `$XDG_DATA_HOME/tally`,
//! else `~/.local/share/tally`):
//!
//! | path | what |
//! |---|---|
//! | `borrows/FEATURE.LEASE.token` | one borrow token each (mode 0600) |
//! | `pins/SERVER_ID` | the server's Ed25519 public key in hex, pinned at the first borrow |
//! | `clock` | the latest time this machine has seen, to notice a clock set back |

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::signature::{UnparsedPublicKey, ED25519};
use tally_protocol::{decode_token, key_id, BorrowClaims};

use crate::Error;

/// How far behind the latest time seen the clock may be before a borrow is refused.
pub const CLOCK_ROLLBACK_LIMIT_MS: i64 = 10 * 60 * 1000;

/// Whether a borrow may be used now, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub valid: bool,
    pub reason: String,
}

impl Verdict {
    fn no(reason: impl Into<String>) -> Self {
        Self {
            valid: false,
            reason: reason.into(),
        }
    }
}

/// One borrow kept on this machine.
#[derive(Debug, Clone)]
pub struct StoredBorrow {
    pub path: PathBuf,
    pub token: String,
    /// `None` when the file does not hold a readable token.
    pub claims: Option<BorrowClaims>,
}

/// The borrows, pinned keys and clock of one user on one machine.
#[derive(Debug, Clone)]
pub struct BorrowStore {
    dir: PathBuf,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn rfc3339(millis: i64) -> String {
    tally_protocol::format_time(millis)
}

fn io(what: &str, path: &Path, err: std::io::Error) -> Error {
    Error::Config(format!("cannot {what} {}: {err}", path.display()))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("write", &tmp, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io("write", path, e))
}

impl BorrowStore {
    /// The store in the user's data directory.
    pub fn open_default() -> Result<Self, Error> {
        if let Some(dir) = std::env::var_os("TALLY_DATA_DIR") {
            return Ok(Self::at(PathBuf::from(dir)));
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share"))
            })
            .ok_or_else(|| {
                Error::Config("neither TALLY_DATA_DIR, XDG_DATA_HOME nor HOME is set".into())
            })?;
        Ok(Self::at(base.join("tally")))
    }

    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps a token; returns the file it is in.
    pub fn save(&self, token: &str, claims: &BorrowClaims) -> Result<PathBuf, Error> {
        let path = self
            .dir
            .join("borrows")
            .join(format!("{}.{}.token", claims.feature, claims.lease));
        write_private(&path, format!("{token}\n").as_bytes())?;
        Ok(path)
    }

    /// Every borrow kept here, by file name.
    pub fn list(&self) -> Result<Vec<StoredBorrow>, Error> {
        let dir = self.dir.join("borrows");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io("read", &dir, err)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "token"))
            .collect();
        paths.sort();
        let mut borrows = Vec::new();
        for path in paths {
            let token = fs::read_to_string(&path)
                .map_err(|e| io("read", &path, e))?
                .trim()
                .to_string();
            let claims = decode_token(&token).ok().map(|signed| signed.claims);
            borrows.push(StoredBorrow {
                path,
                token,
                claims,
            });
        }
        Ok(borrows)
    }

    /// The borrows of one feature.
    pub fn of_feature(&self, feature: &str) -> Result<Vec<StoredBorrow>, Error> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|b| {
                b.claims.as_ref().map_or_else(
                    || {
                        b.path.file_name().is_some_and(|n| {
                            n.to_string_lossy().starts_with(&format!("{feature}."))
                        })
                    },
                    |c| c.feature == feature,
                )
            })
            .collect())
    }

    pub fn remove(&self, borrow: &StoredBorrow) -> Result<(), Error> {
        fs::remove_file(&borrow.path).map_err(|e| io("remove", &borrow.path, e))
    }

    fn pin_path(&self, server_id: &str) -> PathBuf {
        let safe: String = server_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        self.dir.join("pins").join(safe)
    }

    /// The key pinned for a server, if any.
    pub fn pinned(&self, server_id: &str) -> Option<Vec<u8>> {
        let text = fs::read_to_string(self.pin_path(server_id)).ok()?;
        hex::decode(text.trim()).ok()
    }

    /// Pins a server's key on first use; refuses a different key later.
    pub fn pin(&self, server_id: &str, key: &[u8]) -> Result<(), Error> {
        match self.pinned(server_id) {
            Some(pinned) if pinned == key => Ok(()),
            Some(_) => Err(Error::Protocol(format!(
                "server {server_id} presents a signing key other than the one pinned in {}; if its key was replaced on purpose, delete that file",
                self.pin_path(server_id).display()
            ))),
            None => write_private(&self.pin_path(server_id), hex::encode(key).as_bytes()),
        }
    }

    /// Records that the clock read `now`; returns the latest time seen before.
    pub fn observe_clock(&self, now: i64) -> Result<i64, Error> {
        let path = self.dir.join("clock");
        let latest = fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .unwrap_or(0);
        if now > latest {
            write_private(&path, now.to_string().as_bytes())?;
        }
        Ok(latest)
    }

    /// Checks one token with no network: format, the pinned key's signature, the machine,
    /// the clock and the expiry.
    pub fn verify(&self, token: &str, machine_id: &str, now: i64, latest_seen: i64) -> Verdict {
        let signed = match decode_token(token) {
            Ok(signed) => signed,
            Err(err) => return Verdict::no(format!("malformed token ({err})")),
        };
        let claims = &signed.claims;
        let Some(key) = self.pinned(&claims.server_id) else {
            return Verdict::no(format!(
                "no key is pinned for server {}; borrow again while online",
                claims.server_id
            ));
        };
        if key_id(&key) != claims.key_id {
            return Verdict::no(format!(
                "signed by key {}, not by the pinned key {}",
                claims.key_id,
                key_id(&key)
            ));
        }
        if UnparsedPublicKey::new(&ED25519, &key)
            .verify(&signed.signed, &signed.signature)
            .is_err()
        {
            return Verdict::no(
                "bad signature: the token was altered or was not issued by this server",
            );
        }
        if claims.machine_id != machine_id {
            return Verdict::no("the token is bound to another machine");
        }
        if latest_seen - now > CLOCK_ROLLBACK_LIMIT_MS {
            return Verdict::no(format!(
                "clock rolled back: it reads {}, but this machine has seen {}",
                rfc3339(now),
                rfc3339(latest_seen)
            ));
        }
        if now >= claims.expires_at {
            return Verdict::no(format!("expired at {}", rfc3339(claims.expires_at)));
        }
        Verdict {
            valid: true,
            reason: format!("valid until {}", rfc3339(claims.expires_at)),
        }
    }
}

/// Whether this machine holds a valid borrow of `feature`, checked with no network, in the
/// user's data directory.
pub fn verify_offline(feature: &str) -> Result<Verdict, Error> {
    BorrowStore::open_default()?.verify_offline(feature)
}

impl BorrowStore {
    /// Whether this store holds a valid borrow of `feature` for this machine, now.
    pub fn verify_offline(&self, feature: &str) -> Result<Verdict, Error> {
        let now = now_millis();
        let latest = self.observe_clock(now)?;
        let machine = crate::machine_id();
        let borrows = self.of_feature(feature)?;
        if borrows.is_empty() {
            return Ok(Verdict::no(format!(
                "no borrow of {feature} on this machine"
            )));
        }
        let verdicts: Vec<Verdict> = borrows
            .iter()
            .map(|b| self.verify(&b.token, &machine, now, latest))
            .collect();
        Ok(verdicts
            .iter()
            .find(|v| v.valid)
            .cloned()
            .unwrap_or_else(|| verdicts[0].clone()))
    }
}
