//! Borrowed seats kept on this machine and checked with no network (SPEC R6).
//!
//! Trust rests on the CA of the client configuration (`ca = ...`), which the admin
//! provisions: every token carries the certificate chain of the server's signing key, and a
//! token is valid only when that chain leads to the CA ([`Trust`]) and the key it certifies
//! made the signature. Nothing in the user's own data directory is trusted: forging a token
//! needs the CA's private key.
//!
//! Layout of the user's data directory (`$TALLY_DATA_DIR`, else `$XDG_DATA_HOME/tally`,
//! else `~/.local/share/tally`):
//!
//! | path | what |
//! |---|---|
//! | `borrows/FEATURE.LEASE.token` | one borrow token each (mode 0600) |
//! | `clock` | the latest time this machine has seen, to notice a clock set back |

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use tally_protocol::{decode_token, BorrowClaims, ErrorBody, LeaseKind, LeasesQuery};

use crate::{files, Client, Error};

/// How far behind the latest time seen the clock may be before a borrow is refused; also
/// how far the clock may be behind a token's `issued_at` (the server's clock) before it
/// counts as set back.
pub const CLOCK_ROLLBACK_LIMIT_MS: i64 = 10 * 60 * 1000;

/// The extended key usage a signing certificate must allow when it lists any: code signing
/// (1.3.6.1.5.5.7.3.3), so a TLS server certificate of the same CA cannot sign borrows.
const BORROW_SIGNING_EKU: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// The CA certificates a borrow token's signing key must chain to: the client
/// configuration's `ca`.
#[derive(Debug, Clone)]
pub struct Trust {
    anchors: Vec<TrustAnchor<'static>>,
}

impl Trust {
    /// The CA certificates of a PEM file's contents.
    pub fn from_pem(ca_pem: &[u8]) -> Result<Trust, Error> {
        let mut anchors = Vec::new();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert =
                cert.map_err(|err| Error::Config(format!("the CA file is not PEM: {err}")))?;
            let anchor = webpki::anchor_from_trusted_cert(&cert)
                .map_err(|err| Error::Config(format!("the CA certificate is not usable: {err}")))?;
            anchors.push(anchor.to_owned());
        }
        if anchors.is_empty() {
            return Err(Error::Config("the CA file holds no certificate".into()));
        }
        Ok(Trust { anchors })
    }

    /// Reads the CA file named by the client configuration.
    pub fn from_file(path: &Path) -> Result<Trust, Error> {
        let pem = files::read(path, "CA file", files::TEXT_LIMIT)?.bytes;
        Self::from_pem(&pem)
    }

    /// Whether `chain` certifies, through this CA at `at`, the key that made `signature`
    /// over `signed`; the reason when not.
    fn check(
        &self,
        chain: &[Vec<u8>],
        signed: &[u8],
        signature: &[u8],
        at: i64,
    ) -> Result<(), String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err("the token carries no certificate for the server's signing key (a token of the first format, which cannot be trusted); borrow again while online".into());
        };
        let leaf = CertificateDer::from(leaf.as_slice());
        let ee = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|err| format!("the signing certificate cannot be read ({err})"))?;
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let time = UnixTime::since_unix_epoch(Duration::from_millis(at.max(0) as u64));
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &intermediates,
            time,
            webpki::KeyUsage::required_if_present(BORROW_SIGNING_EKU),
            None,
            None,
        )
        .map_err(|err| {
            format!("the signing key is not certified by the configured CA ({err}): the token was not issued by a server this CA vouches for")
        })?;
        ee.verify_signature(webpki::ring::ED25519, signed, signature)
            .map_err(|_| {
                "bad signature: the token was altered or was not issued by this server".to_string()
            })
    }
}

/// How a verdict was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// With no network: the token, the CA, the machine and the clock.
    Offline,
    /// Offline, and the server confirmed it still holds the borrow.
    Server,
}

impl Checked {
    pub fn as_str(self) -> &'static str {
        match self {
            Checked::Offline => "offline",
            Checked::Server => "server",
        }
    }
}

/// Whether a borrow may be used now, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub valid: bool,
    pub reason: String,
    /// Whether the server was asked.
    pub checked: Checked,
}

impl Verdict {
    fn no(reason: impl Into<String>) -> Self {
        Self {
            valid: false,
            reason: reason.into(),
            checked: Checked::Offline,
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
    /// Why the file could not be read (not a regular file, too large, not text), naming
    /// it; `token` is empty then. One such file does not hide the others.
    pub unreadable: Option<String>,
}

/// The borrows, pinned keys and clock of one user on one machine.
#[derive(Debug, Clone)]
pub struct BorrowStore {
    dir: PathBuf,
}

/// Milliseconds since the Unix epoch, now: the one reading of the system clock.
pub use tally_protocol::now_millis;

fn rfc3339(millis: i64) -> String {
    tally_protocol::format_time(millis)
}

fn io(what: &str, path: &Path, err: std::io::Error) -> Error {
    Error::Config(format!("cannot {what} {}: {err}", path.display()))
}

/// Writes `contents` to `path` through a temporary file created exclusively, under a
/// random name, in a directory that is this user's and writable by no one else (made mode
/// 0700 when missing). In a shared or world-writable data directory another local user could
/// otherwise plant a symlink at a predictable temporary name and have the write truncate a
/// file of the victim's, or the rename turn the token or clock file into a link.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(|e| io("create", parent, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    // `create_new` is O_CREAT | O_EXCL: it fails on anything already there, a symlink too.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("write", &tmp, e))?;
    let written = (|| {
        // The new file is ours: the directory must be too, and closed to others.
        let mine = file.metadata().map_err(|e| io("read", &tmp, e))?.uid();
        let dir = fs::symlink_metadata(parent).map_err(|e| io("read", parent, e))?;
        if !dir.is_dir() || dir.uid() != mine || dir.mode() & 0o022 != 0 {
            return Err(Error::Config(format!(
                "refusing to write in {}: it is not a directory of this user's that only this user can write (mode {:o}); set TALLY_DATA_DIR to a directory of your own with mode 0700",
                parent.display(),
                dir.mode() & 0o7777
            )));
        }
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(|e| io("write", &tmp, e))?;
        // A rename replaces a symlink planted at `path` rather than following it.
        fs::rename(&tmp, path).map_err(|e| io("write", path, e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
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

    /// Keeps a token; returns the file it is in. The file is named after the feature, so
    /// a feature that is not a valid name (a path, `..`, control characters: a lying
    /// server's claim) is refused before anything is written.
    pub fn save(&self, token: &str, claims: &BorrowClaims) -> Result<PathBuf, Error> {
        tally_protocol::validate_feature(&claims.feature).map_err(|why| {
            Error::Protocol(format!(
                "the borrow token names a feature that is not a valid name ({why}); nothing was saved"
            ))
        })?;
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
            let (token, unreadable) =
                match files::read_text(&path, "borrow token file", files::BORROW_TOKEN_LIMIT) {
                    Ok(text) => (text.trim().to_string(), None),
                    Err(err) => (String::new(), Some(err.to_string())),
                };
            let claims = decode_token(&token).ok().map(|signed| signed.claims);
            borrows.push(StoredBorrow {
                path,
                token,
                claims,
                unreadable,
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

    /// Records that the clock read `now`; returns the latest time seen before.
    pub fn observe_clock(&self, now: i64) -> Result<i64, Error> {
        let path = self.dir.join("clock");
        // A clock file that cannot be read (a FIFO, garbage) counts as no time seen, and is
        // replaced.
        let latest = files::read_text(&path, "clock file", files::CLOCK_LIMIT)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .unwrap_or(0);
        if now > latest {
            write_private(&path, now.to_string().as_bytes())?;
        }
        Ok(latest)
    }

    /// Checks one token with no network: its format, that the configured CA certifies the
    /// key that signed it, the machine, the clock (against the latest time seen and the
    /// token's issue) and the expiry.
    pub fn verify(
        &self,
        token: &str,
        trust: &Trust,
        machine_id: &str,
        now: i64,
        latest_seen: i64,
    ) -> Verdict {
        let signed = match decode_token(token) {
            Ok(signed) => signed,
            Err(err) => return Verdict::no(format!("malformed token ({err})")),
        };
        let claims = &signed.claims;
        if let Err(why) = trust.check(
            &signed.chain,
            &signed.signed,
            &signed.signature,
            claims.issued_at,
        ) {
            return Verdict::no(why);
        }
        if claims.machine_id != machine_id {
            return Verdict::no("the token is bound to another machine");
        }
        if latest_seen.saturating_sub(now) > CLOCK_ROLLBACK_LIMIT_MS {
            return Verdict::no(format!(
                "clock rolled back: it reads {}, but this machine has seen {}",
                rfc3339(now),
                rfc3339(latest_seen)
            ));
        }
        if claims.issued_at.saturating_sub(now) > CLOCK_ROLLBACK_LIMIT_MS {
            return Verdict::no(format!(
                "clock rolled back: it reads {}, before the token was issued at {}",
                rfc3339(now),
                rfc3339(claims.issued_at)
            ));
        }
        if now >= claims.expires_at {
            return Verdict::no(format!("expired at {}", rfc3339(claims.expires_at)));
        }
        Verdict {
            valid: true,
            reason: format!("valid until {}", rfc3339(claims.expires_at)),
            checked: Checked::Offline,
        }
    }
}

/// Whether this machine holds a valid borrow of `feature`, checked with no network, in the
/// user's data directory, against the CA certificates in `ca_pem` (the client
/// configuration's `ca`; an application may embed its vendor's CA instead).
pub fn verify_offline(feature: &str, ca_pem: &[u8]) -> Result<Verdict, Error> {
    BorrowStore::open_default()?.verify_offline(
        feature,
        &Trust::from_pem(ca_pem)?,
        &crate::machine_id(),
    )
}

impl BorrowStore {
    /// Checks every borrow kept here with no network, noting the clock.
    pub fn verify_all(
        &self,
        trust: &Trust,
        machine_id: &str,
    ) -> Result<Vec<(StoredBorrow, Verdict)>, Error> {
        let now = now_millis();
        let latest = self.observe_clock(now)?;
        Ok(self
            .list()?
            .into_iter()
            .map(|borrow| {
                let verdict = self.check(&borrow, trust, machine_id, now, latest);
                (borrow, verdict)
            })
            .collect())
    }

    /// [`BorrowStore::verify`] of a kept borrow; one whose file could not be read is not
    /// valid, and says why.
    fn check(
        &self,
        borrow: &StoredBorrow,
        trust: &Trust,
        machine_id: &str,
        now: i64,
        latest: i64,
    ) -> Verdict {
        match &borrow.unreadable {
            Some(why) => Verdict::no(why.clone()),
            None => self.verify(&borrow.token, trust, machine_id, now, latest),
        }
    }

    /// The borrows of `feature` kept here, each with its offline verdict, valid ones first.
    fn verdicts(
        &self,
        feature: &str,
        trust: &Trust,
        machine_id: &str,
    ) -> Result<Vec<(StoredBorrow, Verdict)>, Error> {
        let now = now_millis();
        let latest = self.observe_clock(now)?;
        let mut verdicts: Vec<(StoredBorrow, Verdict)> = self
            .of_feature(feature)?
            .into_iter()
            .map(|b| {
                let verdict = self.check(&b, trust, machine_id, now, latest);
                (b, verdict)
            })
            .collect();
        verdicts.sort_by_key(|(_, v)| !v.valid);
        Ok(verdicts)
    }

    /// Whether this store holds a valid borrow of `feature` for this machine, now.
    pub fn verify_offline(
        &self,
        feature: &str,
        trust: &Trust,
        machine_id: &str,
    ) -> Result<Verdict, Error> {
        Ok(self
            .verdicts(feature, trust, machine_id)?
            .into_iter()
            .next()
            .map(|(_, verdict)| verdict)
            .unwrap_or_else(|| Verdict::no(format!("no borrow of {feature} on this machine"))))
    }
}

impl Client {
    /// Whether this machine holds a valid borrow of `feature`: checked offline, then with
    /// the server this client is connected to, which must still hold the borrow (so one
    /// returned, released or ended fails while online). A token of another server or
    /// another user cannot be asked about; its verdict stays the offline one and says so.
    pub async fn verify_borrow(&self, feature: &str) -> Result<Verdict, Error> {
        let store = self.borrow_store()?;
        let mut first = None;
        for (borrow, verdict) in store.verdicts(feature, self.trust(), self.machine_id())? {
            let (Some(claims), true) = (&borrow.claims, verdict.valid) else {
                first.get_or_insert(verdict);
                continue;
            };
            let verdict = self.ask_server(claims).await?;
            if verdict.valid {
                return Ok(verdict);
            }
            first.get_or_insert(verdict);
        }
        Ok(first.unwrap_or_else(|| Verdict::no(format!("no borrow of {feature} on this machine"))))
    }

    /// Asks the server whether it still holds the borrow of a token that is valid offline.
    async fn ask_server(&self, claims: &BorrowClaims) -> Result<Verdict, Error> {
        let until = rfc3339(claims.expires_at);
        let offline = |why: String| Verdict {
            valid: true,
            reason: format!("valid until {until}; checked offline: {why}"),
            checked: Checked::Offline,
        };
        if claims.server_id != self.welcome().server_id {
            return Ok(offline(format!(
                "the token is from server {}, not from the server reached ({})",
                claims.server_id,
                self.welcome().server_id
            )));
        }
        if !claims.user.eq_ignore_ascii_case(self.username()) {
            return Ok(offline(format!(
                "the token is {}'s and this client signed in as {}",
                claims.user,
                self.username()
            )));
        }
        let query = LeasesQuery {
            feature: Some(claims.feature.clone()),
            user: Some(claims.user.clone()),
        };
        let leases = self.leases_first_page(query).await?;
        let held = leases
            .iter()
            .any(|l| l.id == claims.lease && l.kind == LeaseKind::Borrowed);
        Ok(Verdict {
            valid: held,
            reason: if held {
                format!("valid until {until}; checked with the server, which holds the borrow")
            } else {
                format!(
                    "checked with the server: it no longer holds borrow {} of {} (returned, released or ended)",
                    claims.lease, claims.feature
                )
            },
            checked: Checked::Server,
        })
    }

    /// Gives back every borrow of `feature` kept on this machine from this server; returns
    /// how many seats the server confirmed. A token file goes only once the server confirms
    /// its return (or once it has ended by itself); when nothing could be returned, the
    /// answer is `not_found`, naming each token and why, and the files stay.
    pub async fn return_borrows(&self, feature: &str) -> Result<u32, Error> {
        let store = self.borrow_store()?;
        let mut returned = 0;
        let mut kept = Vec::new();
        let borrows = store.of_feature(feature)?;
        for borrow in &borrows {
            let Some(claims) = &borrow.claims else {
                kept.push(borrow.unreadable.clone().unwrap_or_else(|| {
                    format!("{} is not a readable token", borrow.path.display())
                }));
                continue;
            };
            if claims.server_id != self.welcome().server_id {
                kept.push(format!(
                    "{} is from server {}, not from the server reached ({})",
                    borrow.path.display(),
                    claims.server_id,
                    self.welcome().server_id
                ));
                continue;
            }
            match self.return_borrow(claims.lease).await {
                Ok(_) => {
                    returned += claims.seats;
                    store.remove(borrow)?;
                }
                // The borrow ended by itself: nothing is stranded, the file can go.
                Err(Error::Server(body))
                    if body.code == tally_protocol::ErrorCode::NotFound
                        && claims.expires_at <= now_millis() =>
                {
                    store.remove(borrow)?;
                }
                Err(Error::Server(body)) if body.code == tally_protocol::ErrorCode::NotFound => {
                    kept.push(format!(
                        "the server does not hold borrow {} of {} for {} ({}); {} is kept",
                        claims.lease,
                        claims.feature,
                        self.username(),
                        body.message,
                        borrow.path.display()
                    ));
                }
                Err(err) => return Err(err),
            }
        }
        if returned > 0 {
            return Ok(returned);
        }
        let message = if borrows.is_empty() {
            format!(
                "nothing to return: no borrow of {feature} is kept on this machine (in {})",
                store.dir().join("borrows").display()
            )
        } else if kept.is_empty() {
            format!("nothing to return: every borrow of {feature} on this machine had already ended; their token files are removed")
        } else {
            format!("nothing to return: {}", kept.join("; "))
        };
        Err(Error::Server(ErrorBody::not_found(message)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token's feature names its file: one that is not a valid feature name (a path, a
    /// parent directory, a control character) is refused and nothing is written.
    #[test]
    fn a_token_is_saved_only_under_a_valid_feature_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = BorrowStore::at(dir.path().join("tally"));
        let claims = |feature: &str| BorrowClaims {
            server_id: "s".into(),
            key_id: "k".into(),
            lease: tally_protocol::LeaseId([7; 16]),
            feature: feature.into(),
            seats: 1,
            user: "ann@studio.test".into(),
            machine_id: "m".into(),
            issued_at: 0,
            expires_at: 1,
        };
        for bad in ["../../escaped", "/etc/passwd", "a/b", "v\u{1b}ray", ""] {
            let err = store
                .save("tally2.x", &claims(bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a valid name"), "{bad:?}: {err}");
        }
        assert!(!dir.path().join("escaped").exists());
        assert!(!dir.path().join("tally/borrows").exists());
        let path = store.save("tally2.x", &claims("vray")).unwrap();
        assert!(
            path.starts_with(dir.path().join("tally/borrows")),
            "{path:?}"
        );
    }

    /// A symlink planted at the clock file's old temporary name, or at the clock file
    /// itself, is neither followed nor left in place: the victim's file is untouched and the
    /// clock is a regular file. A data directory others can write is refused.
    #[test]
    fn planted_symlinks_are_not_followed_and_a_shared_directory_is_refused() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let data = dir.path().join("tally");
        let store = BorrowStore::at(data.clone());
        store.observe_clock(1).unwrap();
        assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o777, 0o700);
        std::os::unix::fs::symlink(&victim, data.join("clock.tmp")).unwrap();
        std::fs::remove_file(data.join("clock")).unwrap();
        std::os::unix::fs::symlink(&victim, data.join("clock")).unwrap();
        store.observe_clock(2).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let clock = std::fs::symlink_metadata(data.join("clock")).unwrap();
        assert!(clock.file_type().is_file(), "the clock is a link");
        assert_eq!(std::fs::read_to_string(data.join("clock")).unwrap(), "2");

        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = store.observe_clock(3).unwrap_err().to_string();
        assert!(err.contains("refusing to write in"), "{err}");
        assert!(err.contains("TALLY_DATA_DIR"), "{err}");
        assert_eq!(std::fs::read_to_string(data.join("clock")).unwrap(), "2");
        let leftovers = std::fs::read_dir(&data)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with(".clock.")
            })
            .count();
        assert_eq!(leftovers, 0, "a temporary file was left behind");
    }
}
