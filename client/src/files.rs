//! Reading the small files the client is given or keeps (the CA, the client file, the token
//! file, the client certificate and key, borrow tokens, the clock), bounded.
//!
//! Every one of them is read through [`read`]: opened without blocking (a FIFO named as the
//! CA must not hang `tally`), refused unless it is a regular file (`/dev/zero` or a
//! directory is named as what it is), and read up to a limit that fits its format (a
//! gigabyte named as the token file is refused by its size, not read whole). Errors name the
//! file, what it was for, and the limit.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::Error;

/// PEM files (the CA, the client certificate and key), the client file and the token file:
/// a CA bundle of every public root is about 250 KiB.
pub const TEXT_LIMIT: u64 = 1024 * 1024;

/// A borrow token: its claims (well under 1 KiB), a signature, and at most
/// [`tally_protocol::MAX_CHAIN`] certificates of a few KiB each, in base64.
pub const BORROW_TOKEN_LIMIT: u64 = 64 * 1024;

/// The clock file: one number.
pub const CLOCK_LIMIT: u64 = 64;

/// A machine id file: 32 hex digits and a newline.
pub const MACHINE_ID_LIMIT: u64 = 4096;

/// What was read, and the file's permission bits.
#[derive(Debug)]
pub struct Contents {
    pub bytes: Vec<u8>,
    /// `st_mode & 0o7777` of the file read (of the opened file, not of the path).
    pub mode: u32,
}

/// Reads the regular file at `path`, which is the `what` of the message ("CA file", "token
/// file"), refusing anything else and anything past `limit` bytes.
pub fn read(path: &Path, what: &str, limit: u64) -> Result<Contents, Error> {
    let cannot = |err: std::io::Error| {
        Error::Config(format!("cannot read {what} {}: {err}", path.display()))
    };
    // O_NONBLOCK: opening a FIFO for reading waits for a writer otherwise. A regular file
    // reads the same either way.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(Error::Config(format!(
            "{what} {} is not a regular file (it is {}); give the path of a file",
            path.display(),
            file_type(&meta)
        )));
    }
    let too_big = |size: String| {
        Error::Config(format!(
            "{what} {} is too large ({size}); at most {} can be read from it",
            path.display(),
            bytes(limit)
        ))
    };
    if meta.len() > limit {
        return Err(too_big(bytes(meta.len())));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    // The file may grow after the check: read one byte past the limit to notice.
    read_up_to(file, limit + 1, &mut buf).map_err(cannot)?;
    if buf.len() as u64 > limit {
        return Err(too_big("it grew while being read".into()));
    }
    Ok(Contents {
        bytes: buf,
        mode: meta.mode() & 0o7777,
    })
}

/// [`read`] of a text file: UTF-8, or an error naming the file.
pub fn read_text(path: &Path, what: &str, limit: u64) -> Result<String, Error> {
    text(path, what, read(path, what, limit)?.bytes)
}

/// The bytes of a file as text, or an error naming the file.
pub fn text(path: &Path, what: &str, bytes: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(bytes)
        .map_err(|_| Error::Config(format!("{what} {} is not UTF-8 text", path.display())))
}

/// The warning for a file holding a token that others may read: its mode when group or
/// others can read it, with the fix. `None` when only its owner can, or it cannot be read.
// Only the command line warns; the library alone (libtally) does not call it.
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
pub fn readable_by_others(path: &Path, mode: u32, what: &str) -> Option<String> {
    (mode & 0o044 != 0).then(|| {
        format!(
            "{what} {} holds a token and can be read by other users of this machine (mode {mode:04o}); make it private with `chmod 600 {}`",
            path.display(),
            path.display()
        )
    })
}

fn read_up_to(file: File, limit: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
    file.take(limit).read_to_end(buf).map(|_| ())
}

/// What a file that is not a regular one is, for the message.
fn file_type(meta: &Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// A size for people: `1 MiB`, `64 KiB`, `17 bytes`.
fn bytes(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    match n {
        n if n >= GIB && n % GIB == 0 => format!("{} GiB", n / GIB),
        n if n >= MIB && n % MIB == 0 => format!("{} MiB", n / MIB),
        n if n >= KIB && n % KIB == 0 => format!("{} KiB", n / KIB),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    use super::*;

    fn message(result: Result<Contents, Error>) -> String {
        result.expect_err("refused").to_string()
    }

    #[test]
    fn a_small_regular_file_is_read_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "t\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let read = read(&path, "token file", 2).unwrap();
        assert_eq!(read.bytes, b"t\n");
        assert_eq!(read.mode, 0o640);
        assert!(readable_by_others(&path, read.mode, "the token file")
            .unwrap()
            .contains(&format!("chmod 600 {}", path.display())));
        assert_eq!(readable_by_others(&path, 0o600, "the token file"), None);
    }

    #[test]
    fn devices_fifos_and_directories_are_refused_by_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let err = message(read(Path::new("/dev/zero"), "CA file", TEXT_LIMIT));
        assert_eq!(
            err,
            "CA file /dev/zero is not a regular file (it is a character device); give the path of a file"
        );
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = message(read(&fifo, "token file", TEXT_LIMIT));
        assert!(
            err.contains("is not a regular file (it is a FIFO)"),
            "{err}"
        );
        let err = message(read(dir.path(), "CA file", TEXT_LIMIT));
        assert!(err.contains("(it is a directory)"), "{err}");
        // None of them waited for anything.
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_file_past_the_limit_is_refused_by_its_size_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.pem");
        let file = File::create(&path).unwrap();
        file.set_len(1 << 30).unwrap();
        let err = message(read(&path, "CA file", TEXT_LIMIT));
        assert_eq!(
            err,
            format!(
                "CA file {} is too large (1 GiB); at most 1 MiB can be read from it",
                path.display()
            )
        );
        std::fs::write(&path, [b'x'; 65]).unwrap();
        let err = message(read(&path, "clock file", CLOCK_LIMIT));
        assert!(
            err.contains("too large (65 bytes); at most 64 bytes"),
            "{err}"
        );
        std::fs::write(&path, [b'x'; 64]).unwrap();
        assert_eq!(
            read(&path, "clock file", CLOCK_LIMIT).unwrap().bytes.len(),
            64
        );
    }

    #[test]
    fn a_missing_file_and_binary_text_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let err = message(read(&path, "token file", TEXT_LIMIT));
        assert!(
            err.starts_with(&format!("cannot read token file {}: ", path.display())),
            "{err}"
        );
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let err = read_text(&path, "token file", TEXT_LIMIT)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("token file {} is not UTF-8 text", path.display())
        );
    }
}
