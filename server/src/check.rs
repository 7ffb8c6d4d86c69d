//! `tallyd check-config`: what a start would refuse, found without starting and without
//! changing anything. Beyond [`Config::problems`] it reads the files the configuration
//! names (the certificate and key, and that the key belongs to the certificate;
//! `tls.client_ca`; `borrow.signing_cert`; the notification sinks' `ca`) and looks at `data_dir` and the SQLite file as
//! the user running the check (the systemd unit runs it as the daemon's user). Every
//! problem is reported, each naming its key.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::unistd::AccessFlags;
use ring::signature::Ed25519KeyPair;

use crate::config::Config;
use crate::init::{self, DataDir};
use crate::store::Backend;

/// The problems a start would meet in the files and directories `config` names, each
/// naming its key; empty when there are none. Creates, changes and connects to nothing.
pub fn files(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let dir = DataDir::new(&config.data_dir);
    // An empty data_dir is one of Config::problems.
    if !config.data_dir.as_os_str().is_empty() {
        data_dir(&config.data_dir, &mut problems);
    }
    match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => server_pair(("tls.cert", cert), ("tls.key", key), &mut problems),
        // Made at the first start; once made, start reads them.
        (None, None) if dir.server_cert().exists() || dir.server_key().exists() => {
            let key = "the generated certificate (tls.cert is not set)";
            server_pair(
                (key, &dir.server_cert()),
                (key, &dir.server_key()),
                &mut problems,
            )
        }
        // Config::problems names a lone tls.cert or tls.key.
        _ => {}
    }
    if let Some(path) = &config.tls.client_ca {
        if let Err(err) = init::client_verifier(path) {
            problems.push(format!("tls.client_ca: {err}"));
        }
    }
    if let Some(path) = &config.borrow.signing_cert {
        match init::read_chain(path) {
            Err(err) => problems.push(format!("borrow.signing_cert: {err}")),
            Ok(chain) => {
                if let Some(key) = signing_key(&dir, &mut problems) {
                    if let Err(why) = init::certifies(&chain, &key, None, SystemTime::now()) {
                        problems.push(format!(
                            "borrow.signing_cert = {}: {why}; issue it for the key in {}",
                            path.display(),
                            dir.signing_csr().display()
                        ));
                    }
                }
            }
        }
    }
    let cas = config
        .notify
        .webhook
        .iter()
        .enumerate()
        .map(|(i, hook)| (format!("notify.webhook[{i}].ca"), &hook.ca))
        .chain(
            config
                .notify
                .email
                .iter()
                .map(|email| ("notify.email.ca".to_string(), &email.ca)),
        );
    for (key, ca) in cas {
        if let Some(path) = ca {
            if let Err(err) = crate::notify::sinks::read_pem_certs(path) {
                problems.push(format!("{key}: {err}"));
            }
        }
    }
    let database = config.database.as_ref().map(|url| url.0.as_str());
    if let Ok(Backend::Sqlite(file)) = Backend::from_url(database, &config.data_dir) {
        sqlite_file(&file, database.is_some(), &config.data_dir, &mut problems);
    }
    problems
}

/// Who runs this check, for messages about permissions: `user tally (uid 998)`.
pub fn running_user() -> String {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => format!("user {} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// `data_dir` is a directory this user can write, or one it can create: its nearest
/// existing ancestor is a directory it can write.
fn data_dir(path: &Path, problems: &mut Vec<String>) {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => {
            problems.push(format!("data_dir = {shown} is not a directory"));
        }
        Ok(_) => {
            if let Err(errno) = nix::unistd::access(
                path,
                AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK,
            ) {
                problems.push(format!(
                    "data_dir = {shown} is not writable by {}: {}",
                    running_user(),
                    errno.desc()
                ));
            }
        }
        // Not there, or a file stands where a directory above it should be.
        Err(err) if matches!(err.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            let Some(ancestor) = nearest_existing(path) else {
                problems.push(format!(
                    "data_dir = {shown} does not exist, and none of the directories above it does"
                ));
                return;
            };
            if !ancestor.is_dir() {
                problems.push(format!(
                    "data_dir = {shown} cannot be created: {} is not a directory",
                    ancestor.display()
                ));
            } else if let Err(errno) =
                nix::unistd::access(&ancestor, AccessFlags::W_OK | AccessFlags::X_OK)
            {
                problems.push(format!(
                    "data_dir = {shown} does not exist, and {} cannot create it: {} is not writable ({})",
                    running_user(),
                    ancestor.display(),
                    errno.desc()
                ));
            }
        }
        Err(err) => problems.push(format!("data_dir = {shown}: {err}")),
    }
}

/// The nearest ancestor of `path` that exists (`.` for a relative path's top).
fn nearest_existing(path: &Path) -> Option<PathBuf> {
    let mut at = path.parent();
    while let Some(dir) = at {
        let dir = match dir.as_os_str().is_empty() {
            true => Path::new("."),
            false => dir,
        };
        if std::fs::symlink_metadata(dir).is_ok() {
            return Some(dir.to_path_buf());
        }
        at = dir.parent();
    }
    None
}

/// The server's certificate and key read, and the key is the certificate's.
fn server_pair(cert: (&str, &Path), key: (&str, &Path), problems: &mut Vec<String>) {
    let certs = init::read_certs(cert.1).map_err(|err| format!("{}: {err}", cert.0));
    let private = init::read_key(key.1).map_err(|err| format!("{}: {err}", key.0));
    match (certs, private) {
        (Ok(certs), Ok(private)) => match init::check_pair(certs, private) {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                problems.push(match cert.0 == key.0 {
                    true => format!(
                        "{}: {} is not the key of {}",
                        key.0,
                        key.1.display(),
                        cert.1.display()
                    ),
                    false => format!(
                        "{} = {} is not the key of {} = {}: the private key does not belong to the certificate",
                        key.0,
                        key.1.display(),
                        cert.0,
                        cert.1.display()
                    ),
                })
            }
            Err(err) => problems.push(format!(
                "{} = {} cannot serve {} = {}: {err}",
                key.0,
                key.1.display(),
                cert.0,
                cert.1.display()
            )),
        },
        (certs, private) => problems.extend(certs.err().into_iter().chain(private.err())),
    }
}

/// The borrow signing key in the data directory, when it is there to check
/// `borrow.signing_cert` against (the first start makes it).
fn signing_key(dir: &DataDir, problems: &mut Vec<String>) -> Option<Ed25519KeyPair> {
    let path = dir.signing_key();
    match std::fs::read(&path) {
        Ok(bytes) => match Ed25519KeyPair::from_pkcs8(&bytes) {
            Ok(key) => Some(key),
            Err(_) => {
                problems.push(format!(
                    "data_dir: {} is not an Ed25519 PKCS#8 key",
                    path.display()
                ));
                None
            }
        },
        Err(err) if err.kind() == ErrorKind::NotFound => None,
        Err(err) => {
            problems.push(format!("data_dir: cannot read {}: {err}", path.display()));
            None
        }
    }
}

/// The SQLite file can be opened for writing: if it exists, this user can read and write it;
/// if `database` names it outside `data_dir`, its directory exists (SQLite makes the file,
/// not the directory) and this user can write there (for the file, its journal and WAL).
fn sqlite_file(file: &Path, named: bool, data_dir: &Path, problems: &mut Vec<String>) {
    let key = match named {
        true => "database",
        false => "data_dir",
    };
    if file.exists() {
        if let Err(errno) = nix::unistd::access(file, AccessFlags::R_OK | AccessFlags::W_OK) {
            problems.push(format!(
                "{key}: the SQLite database {} is not writable by {}: {}",
                file.display(),
                running_user(),
                errno.desc()
            ));
        }
    }
    let Some(parent) = file.parent().filter(|p| named && *p != data_dir) else {
        return;
    };
    if !parent.is_dir() {
        problems.push(format!(
            "database: the directory of the SQLite database, {}, does not exist (SQLite makes the file, not its directory)",
            parent.display()
        ));
    } else if let Err(errno) = nix::unistd::access(parent, AccessFlags::W_OK | AccessFlags::X_OK) {
        problems.push(format!(
            "database: the directory of the SQLite database, {}, is not writable by {}: {}",
            parent.display(),
            running_user(),
            errno.desc()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_data_dir_is_checked_at_its_nearest_existing_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        assert_eq!(nearest_existing(&deep).unwrap(), tmp.path());
        assert_eq!(
            nearest_existing(Path::new("tally-data")).unwrap(),
            Path::new(".")
        );
        let mut problems = Vec::new();
        data_dir(&deep, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(!deep.exists(), "the check made the directory");
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        data_dir(&file, &mut problems);
        data_dir(&file.join("data"), &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].ends_with("is not a directory"), "{problems:?}");
        assert!(
            problems[1].contains(&format!("{} is not a directory", file.display())),
            "{problems:?}"
        );
    }

    #[test]
    fn the_generated_certificate_is_checked_once_it_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config::with_defaults("127.0.0.1:0".parse().unwrap(), tmp.path().into());
        assert!(files(&config).is_empty(), "{:?}", files(&config));
        let dir = DataDir::new(tmp.path());
        std::fs::create_dir(tmp.path().join("tls")).unwrap();
        std::fs::write(dir.server_cert(), "not a certificate").unwrap();
        let problems = files(&config);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("server.pem"), "{problems:?}");
        assert!(problems[1].contains("server.key"), "{problems:?}");
    }
}
