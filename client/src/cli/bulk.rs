//! Bulk administration from CSV files (SPEC §9, R19): `user import`, `user remove --csv`,
//! `user deactivate --csv`, `assign --csv` and `revoke --csv`, with `--template`,
//! `--dry-run`, `--failures OUT.csv` and the import's `--tokens OUT`.
//!
//! The whole file is read and checked before anything is sent, with the checks of the
//! single-row commands (`values`): every bad line is named with what is wrong on it, and a
//! file with one is refused as a usage error. A good file goes to the server as one
//! [`Bulk`] request, each row with its line number; the answer says how many rows applied
//! and which were refused.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tally_protocol::{
    encoded_len, validate_seats, Assign, Bulk, BulkOutcome, BulkRow, BulkRows, Request, Revoke,
    Role, UserAdd, UserRef, MAX_BULK_FRAME, MAX_BULK_ROWS,
};

use super::args::{BulkFlags, Command, UserCommand};
use super::failure::{exit, BadLine, Failure};
use super::output::{csv_cell, Output};
use super::values;
use crate::files;
use crate::Client;

/// The largest bulk file read, in bytes: well past what fits one request.
const FILE_LIMIT: u64 = 64 * 1024 * 1024;

/// Columns of a failures file besides the kind's own: where the row was and why it was
/// refused. A bulk file may carry them (a failures file sent again); they are not read.
const NOTE_COLUMNS: [&str; 3] = ["line", "code", "reason"];

/// What a bulk file does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Import,
    Remove,
    Deactivate,
    Assign,
    Revoke,
}

impl Kind {
    /// Every column, in the template's order.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Kind::Import => &["email", "role", "name"],
            Kind::Remove | Kind::Deactivate => &["email"],
            Kind::Assign => &["email", "feature", "seats", "entitlement"],
            Kind::Revoke => &["email", "feature", "seats"],
        }
    }

    /// The columns a file must have.
    fn required(self) -> &'static [&'static str] {
        match self {
            Kind::Import | Kind::Remove | Kind::Deactivate => &["email"],
            Kind::Assign | Kind::Revoke => &["email", "feature"],
        }
    }

    /// The command, for messages.
    fn command(self) -> &'static str {
        match self {
            Kind::Import => "user import",
            Kind::Remove => "user remove --csv",
            Kind::Deactivate => "user deactivate --csv",
            Kind::Assign => "assign --csv",
            Kind::Revoke => "revoke --csv",
        }
    }

    /// The template: the header line.
    pub fn template(self) -> String {
        self.columns().join(",")
    }
}

/// A bulk command, its file read and checked, ready to send, and where its results go.
pub struct Action {
    kind: Kind,
    rows: BulkRows,
    dry_run: bool,
    /// Import: the file the new users' tokens go to.
    tokens: Option<PathBuf>,
    /// The file the refused rows go to.
    failures: Option<PathBuf>,
    json: bool,
}

/// What a bulk command was given.
pub struct Options {
    pub kind: Kind,
    pub file: Option<PathBuf>,
    pub dry_run: bool,
    pub failures: Option<PathBuf>,
    pub tokens: Option<PathBuf>,
}

impl Action {
    /// The bulk form of a command given `--csv FILE`; `None` for its single-row form.
    /// (`--template` is answered before, with no server: [`template_of`].)
    pub fn with_csv(
        kind: Kind,
        csv: Option<PathBuf>,
        flags: BulkFlags,
        json: bool,
    ) -> Result<Option<Self>, Failure> {
        if csv.is_none() {
            if flags.dry_run || flags.failures.is_some() {
                return Err(Failure::usage(
                    "--dry-run and --failures go with --csv FILE",
                ));
            }
            return Ok(None);
        }
        let options = Options {
            kind,
            file: csv,
            dry_run: flags.dry_run,
            failures: flags.failures,
            tokens: None,
        };
        Self::new(options, json).map(Some)
    }

    /// Reads and checks the file (a progress bar on a terminal, unless `json`).
    pub fn new(options: Options, json: bool) -> Result<Self, Failure> {
        let Some(path) = options.file else {
            return Err(Failure::usage(format!(
                "{} needs a CSV file (--template prints its header)",
                options.kind.command()
            )));
        };
        let contents = files::read(&path, "CSV file", FILE_LIMIT)?;
        let progress = progress_bar(json, contents.bytes.len() as u64);
        let parsed = parse(options.kind, &contents.bytes, |done| {
            progress.set_position(done)
        });
        progress.finish_and_clear();
        let rows = parsed.map_err(|lines| bad_file(&path, lines))?;
        if rows.is_empty() {
            return Err(Failure::usage(format!(
                "{} has no rows under its header; nothing to do",
                path.display()
            )));
        }
        check_size(&path, &rows)?;
        Ok(Action {
            kind: options.kind,
            rows,
            dry_run: options.dry_run,
            tokens: options.tokens,
            failures: options.failures,
            json,
        })
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        // The files are made before anything is sent: tokens minted for a file that cannot
        // be written would be lost.
        let tokens = match (&self.tokens, self.dry_run) {
            (Some(path), false) => Some((private_file(path, "tokens file")?, path.clone())),
            _ => None,
        };
        let failures = match &self.failures {
            Some(path) => Some(new_file(path, "failures file")?),
            None => None,
        };
        let rows = self.rows.len();
        let spinner = spinner(self.json, rows, self.dry_run);
        let answer = client
            .bulk(Bulk {
                rows: self.rows.clone(),
                dry_run: self.dry_run,
                tokens: tokens.is_some(),
            })
            .await;
        spinner.finish_and_clear();
        let outcome = answer?;
        if let Some((file, path)) = tokens {
            write_tokens(file, &path, &outcome)?;
        }
        if let Some(file) = failures {
            let path = self.failures.as_deref().unwrap_or(Path::new(""));
            write_failures(file, path, self.kind, &self.rows, &outcome)?;
        }
        let import = self.kind == Kind::Import && !self.dry_run;
        let tokens_to = match (&self.tokens, import) {
            (Some(path), true) => Some(Some(path.as_path())),
            (None, true) => Some(None),
            _ => None,
        };
        out.bulk(&outcome, rows, self.dry_run, tokens_to);
        Ok(if outcome.failed.is_empty() {
            exit::OK
        } else {
            exit::FAILED
        })
    }
}

/// The kind of bulk file whose header `--template` asks for, if it does.
pub fn template_of(command: &Command) -> Option<Kind> {
    let asked = |flags: &BulkFlags, kind| flags.template.then_some(kind);
    match command {
        Command::User(UserCommand::Import { bulk, .. }) => asked(bulk, Kind::Import),
        Command::User(UserCommand::Remove { bulk, .. }) => asked(bulk, Kind::Remove),
        Command::User(UserCommand::Deactivate { bulk, .. }) => asked(bulk, Kind::Deactivate),
        Command::Assign { bulk, .. } => asked(bulk, Kind::Assign),
        Command::Revoke { bulk, .. } => asked(bulk, Kind::Revoke),
        _ => None,
    }
}

/// The failure of a file with bad lines: every one, with what is wrong on it.
fn bad_file(path: &Path, lines: Vec<BadLine>) -> Failure {
    let mut failure = Failure::usage(format!(
        "{} has {} bad line(s), so nothing was sent: {}",
        path.display(),
        lines.len(),
        lines
            .iter()
            .map(|l| format!("line {}: {}", l.line, l.reason))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    failure.lines = lines;
    failure
}

/// Refuses a file too large for one request.
fn check_size(path: &Path, rows: &BulkRows) -> Result<(), Failure> {
    let too_large = |what: String| {
        Failure::usage(format!(
            "{} is too large for one request ({what}); one file may have at most {MAX_BULK_ROWS} rows and {} MiB: split it",
            path.display(),
            MAX_BULK_FRAME / (1024 * 1024)
        ))
    };
    if rows.len() > MAX_BULK_ROWS {
        return Err(too_large(format!("{} rows", rows.len())));
    }
    let request = Request::Bulk(Bulk {
        rows: rows.clone(),
        dry_run: false,
        tokens: true,
    });
    // The frame holds the request's id and envelope too.
    let len = encoded_len(&request) + 64;
    if len > MAX_BULK_FRAME {
        return Err(too_large(format!("{len} bytes once encoded")));
    }
    Ok(())
}

/// Reads the rows of a bulk file of `kind`, or names every bad line. `progress` hears how
/// many bytes are read.
pub fn parse(kind: Kind, bytes: &[u8], progress: impl Fn(u64)) -> Result<BulkRows, Vec<BadLine>> {
    // A spreadsheet's UTF-8 byte order mark is not part of the first column's name.
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut bad = Vec::new();
    let mut record = csv::ByteRecord::new();
    let mut header: Option<Header> = None;
    let mut rows = Rows::new(kind);
    let mut lines = LineCounter::new(bytes);
    loop {
        let line = reader.position().line();
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(err) => {
                bad.push(BadLine {
                    line: err.position().map_or(line, |p| lines.at(p.byte())),
                    reason: format!("not CSV: {err}"),
                });
                continue;
            }
        }
        // The reader's own line count skips blank lines: count them from the bytes.
        let line = record.position().map_or(line, |p| lines.at(p.byte()));
        // indicatif draws at most a few times a second, whatever the calls.
        progress(record.position().map_or(0, |p| p.byte()));
        let cells = match cells(&record) {
            Ok(cells) => cells,
            Err(reason) => {
                bad.push(BadLine { line, reason });
                continue;
            }
        };
        let Some(header) = &header else {
            match Header::read(kind, &cells) {
                Ok(read) => header = Some(read),
                Err(reason) => {
                    bad.push(BadLine { line, reason });
                    // Nothing below can be read without the header.
                    return Err(bad);
                }
            }
            continue;
        };
        if cells.len() != header.width {
            bad.push(BadLine {
                line,
                reason: format!(
                    "{} column(s) where the header has {}",
                    cells.len(),
                    header.width
                ),
            });
            continue;
        }
        if let Err(reason) = rows.push(header, line, &cells) {
            bad.push(BadLine { line, reason });
        }
    }
    progress(bytes.len() as u64);
    if header.is_none() {
        bad.push(BadLine {
            line: 1,
            reason: format!(
                "the file is empty; its first line is the header: {}",
                kind.template()
            ),
        });
    }
    if bad.is_empty() {
        Ok(rows.rows)
    } else {
        Err(bad)
    }
}

/// The physical line of a byte offset, counted forward as records come in order.
struct LineCounter<'a> {
    bytes: &'a [u8],
    /// The offset counted up to, and the line it is on (from 1).
    offset: usize,
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            offset: 0,
            line: 1,
        }
    }

    /// The line of the record the reader says starts at `offset`: the reader gives the
    /// offset before the blank lines it skips, so those are stepped over here.
    fn at(&mut self, offset: u64) -> u64 {
        let mut offset = (offset as usize).min(self.bytes.len());
        while matches!(self.bytes.get(offset), Some(b'\n' | b'\r')) {
            offset += 1;
        }
        if offset < self.offset {
            self.offset = 0;
            self.line = 1;
        }
        let newlines = self.bytes[self.offset..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        self.line += newlines as u64;
        self.offset = offset;
        self.line
    }
}

/// The cells of a record as text, or why they are not UTF-8.
fn cells(record: &csv::ByteRecord) -> Result<Vec<String>, String> {
    record
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            String::from_utf8(cell.to_vec()).map_err(|_| {
                format!(
                    "column {} is not valid UTF-8; save the file as UTF-8",
                    i + 1
                )
            })
        })
        .collect()
}

/// Where each column of a file is.
struct Header {
    /// The index of each of the kind's columns (by [`Kind::columns`]), if present.
    index: Vec<Option<usize>>,
    /// How many columns every row has.
    width: usize,
}

impl Header {
    fn read(kind: Kind, cells: &[String]) -> Result<Self, String> {
        let columns = kind.columns();
        let mut index = vec![None; columns.len()];
        let mut problems = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for (i, cell) in cells.iter().enumerate() {
            let name = cell.to_ascii_lowercase();
            if seen.contains(&name) {
                problems.push(format!("column {name:?} appears twice"));
                continue;
            }
            match columns.iter().position(|c| *c == name) {
                Some(at) => index[at] = Some(i),
                None if NOTE_COLUMNS.contains(&name.as_str()) => {}
                None => problems.push(format!("unknown column {cell:?}")),
            }
            seen.push(name);
        }
        for required in kind.required() {
            let at = columns
                .iter()
                .position(|c| c == required)
                .expect("a column");
            if index[at].is_none() {
                problems.push(format!("no {required} column"));
            }
        }
        if problems.is_empty() {
            Ok(Self {
                index,
                width: cells.len(),
            })
        } else {
            Err(format!(
                "bad header: {}; the header of {} is {} (columns after email may be left out)",
                problems.join(", "),
                kind.command(),
                kind.template()
            ))
        }
    }
}

/// The rows read so far.
struct Rows {
    kind: Kind,
    rows: BulkRows,
}

impl Rows {
    fn new(kind: Kind) -> Self {
        let rows = match kind {
            Kind::Import => BulkRows::Import(Vec::new()),
            Kind::Remove => BulkRows::Remove(Vec::new()),
            Kind::Deactivate => BulkRows::Deactivate(Vec::new()),
            Kind::Assign => BulkRows::Assign(Vec::new()),
            Kind::Revoke => BulkRows::Revoke(Vec::new()),
        };
        Self { kind, rows }
    }

    /// Checks one row, with the single-row commands' checks, and keeps it; or says every
    /// thing wrong with it.
    fn push(&mut self, header: &Header, line: u64, cells: &[String]) -> Result<(), String> {
        let columns = self.kind.columns();
        let cell = |name: &str| -> &str {
            let at = columns.iter().position(|c| *c == name).expect("a column");
            header.index[at].map_or("", |i| cells[i].as_str())
        };
        let mut problems = Vec::new();
        let email = check(
            &mut problems,
            required(cell("email"), "email").and_then(values::username),
        );
        match &mut self.rows {
            BulkRows::Import(rows) => {
                let role = match cell("role") {
                    "" => Some(Role::Member),
                    role => check(&mut problems, values::role(role)),
                };
                if let (Some(username), Some(role)) = (email, role) {
                    let name = cell("name").to_string();
                    rows.push(BulkRow {
                        line,
                        row: UserAdd {
                            username,
                            name,
                            role,
                        },
                    });
                }
            }
            BulkRows::Remove(rows) | BulkRows::Deactivate(rows) => {
                if let Some(username) = email {
                    rows.push(BulkRow {
                        line,
                        row: UserRef { username },
                    });
                }
            }
            BulkRows::Assign(rows) => {
                let feature = check(
                    &mut problems,
                    required(cell("feature"), "feature").and_then(values::feature),
                );
                let seats = check(&mut problems, seats(cell("seats")).map(|s| s.unwrap_or(1)));
                let entitlement = match cell("entitlement") {
                    "" => Some(None),
                    id => check(&mut problems, values::entitlement_id(id).map(Some)),
                };
                if let (Some(username), Some(feature), Some(seats), Some(entitlement)) =
                    (email, feature, seats, entitlement)
                {
                    rows.push(BulkRow {
                        line,
                        row: Assign {
                            username,
                            feature,
                            seats,
                            entitlement,
                            from: None,
                            expires_at: None,
                        },
                    });
                }
            }
            BulkRows::Revoke(rows) => {
                let feature = check(
                    &mut problems,
                    required(cell("feature"), "feature").and_then(values::feature),
                );
                let seats = check(&mut problems, seats(cell("seats")));
                if let (Some(username), Some(feature), Some(seats)) = (email, feature, seats) {
                    rows.push(BulkRow {
                        line,
                        row: Revoke {
                            username,
                            feature,
                            seats,
                        },
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The value of a checked cell; its problem noted.
fn check<T>(problems: &mut Vec<String>, result: Result<T, Failure>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(failure) => {
            problems.push(failure.message);
            None
        }
    }
}

/// A cell that must not be empty.
fn required(text: &str, column: &str) -> Result<String, Failure> {
    if text.is_empty() {
        return Err(Failure::usage(format!("the {column} cell is empty")));
    }
    Ok(text.to_string())
}

/// A seats cell: empty (the command's default), or a whole number from 1 to `MAX_SEATS`.
fn seats(text: &str) -> Result<Option<u32>, Failure> {
    if text.is_empty() {
        return Ok(None);
    }
    let seats: u32 = text
        .parse()
        .map_err(|_| Failure::usage(format!("seats {text:?} is not a whole number of seats")))?;
    validate_seats("seats", seats).map_err(Failure::usage)?;
    Ok(Some(seats))
}

/// The progress of reading and checking the file: a bar on a terminal, nothing otherwise.
fn progress_bar(json: bool, len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), draw_target(json));
    if let Ok(style) = ProgressStyle::with_template("checking {bar:40} {bytes}/{total_bytes}") {
        bar.set_style(style);
    }
    bar
}

/// A spinner while the server applies the rows.
fn spinner(json: bool, rows: usize, dry_run: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, draw_target(json));
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    let doing = if dry_run { "checking" } else { "applying" };
    bar.set_message(format!("the server is {doing} {rows} row(s)"));
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Where progress goes: stderr when it is a terminal and the output is for people.
fn draw_target(json: bool) -> ProgressDrawTarget {
    use std::io::IsTerminal;
    #[allow(clippy::disallowed_methods)]
    let terminal = std::io::stderr().is_terminal();
    if json || !terminal {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}

/// Creates a file that only its owner can read for the new users' tokens. Refused through
/// a symbolic link, and over a file that is not a regular file of the user running `tally`.
fn private_file(path: &Path, what: &str) -> Result<File, Failure> {
    let cannot = |err: std::io::Error| {
        Failure::usage(format!("cannot write the {what} {}: {err}", path.display()))
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        check_existing(path, what, &meta)?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(cannot)?;
    // The path may have changed since it was looked at: judge the file opened.
    let meta = file.metadata().map_err(cannot)?;
    check_existing(path, what, &meta)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(cannot)?;
    file.set_len(0).map_err(cannot)?;
    Ok(file)
}

/// Refuses a path that is a link, not a regular file, or someone else's.
fn check_existing(path: &Path, what: &str, meta: &std::fs::Metadata) -> Result<(), Failure> {
    if meta.file_type().is_symlink() {
        return Err(Failure::usage(format!(
            "the {what} {} is a symbolic link; give the path of the file itself",
            path.display()
        )));
    }
    if !meta.is_file() {
        return Err(Failure::usage(format!(
            "the {what} {} exists and is not a regular file",
            path.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Failure::usage(format!(
            "the {what} {} belongs to another user (uid {}); give a new path",
            path.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// Creates the failures file (owner-only too: it names users).
fn new_file(path: &Path, what: &str) -> Result<File, Failure> {
    private_file(path, what)
}

/// Writes `line,email,token` for each new user.
fn write_tokens(file: File, path: &Path, outcome: &BulkOutcome) -> Result<(), Failure> {
    let cannot = |err: csv::Error| {
        Failure::internal(format!(
            "cannot write the tokens file {}: {err}",
            path.display()
        ))
    };
    let mut writer = csv::Writer::from_writer(file);
    writer
        .write_record(["line", "email", "token"])
        .map_err(cannot)?;
    for t in &outcome.tokens {
        let line = t.line.to_string();
        writer
            .write_record([line.as_str(), &csv_cell(&t.email), &t.token])
            .map_err(cannot)?;
    }
    finish(writer).map_err(cannot)
}

/// Writes `line,email,code,reason` and the row's other columns for each refused row, so
/// that the file, once the cause is fixed, can be given to the same command again.
fn write_failures(
    file: File,
    path: &Path,
    kind: Kind,
    rows: &BulkRows,
    outcome: &BulkOutcome,
) -> Result<(), Failure> {
    let cannot = |err: csv::Error| {
        Failure::internal(format!(
            "cannot write the failures file {}: {err}",
            path.display()
        ))
    };
    let failed: HashSet<u64> = outcome.failed.iter().map(|f| f.line).collect();
    let mut cells: HashMap<u64, Vec<String>> = row_cells(rows)
        .filter(|(line, _)| failed.contains(line))
        .collect();
    let mut writer = csv::Writer::from_writer(file);
    let mut header = vec!["line", "email", "code", "reason"];
    header.extend_from_slice(&kind.columns()[1..]);
    writer.write_record(&header).map_err(cannot)?;
    for failed in &outcome.failed {
        let mut row = cells.remove(&failed.line).unwrap_or_default().into_iter();
        let email = row.next().unwrap_or_else(|| failed.email.clone());
        let mut record = vec![
            failed.line.to_string(),
            email,
            failed.code.as_str().to_string(),
            csv_cell(&failed.reason).into_owned(),
        ];
        record.extend(row);
        record.resize(header.len(), String::new());
        writer.write_record(&record).map_err(cannot)?;
    }
    finish(writer).map_err(cannot)
}

fn finish(mut writer: csv::Writer<File>) -> Result<(), csv::Error> {
    writer.flush()?;
    let file = writer.into_inner().map_err(|err| err.into_error())?;
    file.sync_all()?;
    Ok(())
}

/// Each row's line and cells, in the kind's column order, as they were read.
fn row_cells(rows: &BulkRows) -> Box<dyn Iterator<Item = (u64, Vec<String>)> + '_> {
    let seats = |s: Option<u32>| s.map(|s| s.to_string()).unwrap_or_default();
    match rows {
        BulkRows::Import(r) => Box::new(r.iter().map(|r| {
            let row = &r.row;
            let cells = vec![
                row.username.clone(),
                row.role.as_str().into(),
                row.name.clone(),
            ];
            (r.line, cells)
        })),
        BulkRows::Remove(r) | BulkRows::Deactivate(r) => {
            Box::new(r.iter().map(|r| (r.line, vec![r.row.username.clone()])))
        }
        BulkRows::Assign(r) => Box::new(r.iter().map(|r| {
            let row = &r.row;
            let cells = vec![
                row.username.clone(),
                row.feature.clone(),
                row.seats.to_string(),
                row.entitlement.map(|e| e.to_string()).unwrap_or_default(),
            ];
            (r.line, cells)
        })),
        BulkRows::Revoke(r) => Box::new(r.iter().map(move |r| {
            let row = &r.row;
            let cells = vec![row.username.clone(), row.feature.clone(), seats(row.seats)];
            (r.line, cells)
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(kind: Kind, text: &[u8]) -> Vec<(u64, String)> {
        parse(kind, text, |_| {})
            .unwrap_err()
            .into_iter()
            .map(|b| (b.line, b.reason))
            .collect()
    }

    fn lines(kind: Kind, text: &[u8]) -> Vec<u64> {
        bad(kind, text).into_iter().map(|(line, _)| line).collect()
    }

    #[test]
    fn a_good_import_keeps_each_row_with_its_line_and_the_defaults() {
        let text = b"\xef\xbb\xbfEmail,name,role\nann@x.org,Ann,admin\n\nbob@x.org,\"Bob, Jr.\",\n";
        let BulkRows::Import(rows) = parse(Kind::Import, text, |_| {}).unwrap() else {
            panic!("not an import");
        };
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].line, rows[0].row.role), (2, Role::Admin));
        assert_eq!(rows[1].line, 4);
        assert_eq!(rows[1].row.name, "Bob, Jr.");
        assert_eq!(rows[1].row.role, Role::Member);
    }

    #[test]
    fn optional_columns_may_be_left_out() {
        let BulkRows::Assign(rows) =
            parse(Kind::Assign, b"email,feature\na@x.org,f\n", |_| {}).unwrap()
        else {
            panic!("not an assign");
        };
        assert_eq!((rows[0].row.seats, rows[0].row.entitlement), (1, None));
        let BulkRows::Revoke(rows) =
            parse(Kind::Revoke, b"email,feature,seats\na@x.org,f,\n", |_| {}).unwrap()
        else {
            panic!("not a revoke");
        };
        assert_eq!(rows[0].row.seats, None);
    }

    #[test]
    fn bad_headers_are_named_on_line_one() {
        for header in [&b"email,rol\n"[..], b"name,role\n", b"email,email\n", b""] {
            let found = bad(Kind::Import, header);
            assert_eq!(found.len(), 1, "{header:?}: {found:?}");
            assert_eq!(found[0].0, 1);
        }
        assert!(bad(Kind::Import, b"email,rol\n")[0]
            .1
            .contains("unknown column"));
        assert!(bad(Kind::Import, b"email,email\n")[0].1.contains("twice"));
        assert!(bad(Kind::Assign, b"email,seats\n")[0]
            .1
            .contains("no feature column"));
    }

    #[test]
    fn every_bad_line_is_named_and_reading_goes_on() {
        let text = b"email,feature,seats,entitlement\n\
            a@x.org,f,1,\n\
            not-an-email,f,1,\n\
            b@x.org,bad feature,1,\n\
            c@x.org,f,zero,\n\
            d@x.org,f,0,\n\
            e@x.org,f,1,e7\n\
            ,f,1,\n\
            f@x.org,f\n\
            g@x.org,\xff,1,\n\
            h@x.org,f,2,3\n";
        assert_eq!(lines(Kind::Assign, text), [3, 4, 5, 6, 7, 8, 9, 10]);
        let found = bad(Kind::Assign, text);
        assert!(found[0].1.contains("e-mail"), "{found:?}");
        assert!(found[2].1.contains("whole number"), "{found:?}");
        assert!(found[3].1.contains("between 1"), "{found:?}");
        assert!(found[4].1.contains("entitlement"), "{found:?}");
        assert!(found[5].1.contains("empty"), "{found:?}");
        assert!(found[6].1.contains("column(s)"), "{found:?}");
        assert!(found[7].1.contains("UTF-8"), "{found:?}");
    }

    #[test]
    fn a_bad_role_and_a_quoted_cell_over_two_lines_keep_physical_line_numbers() {
        let text = b"email,role,name\na@x.org,member,\"two\nlines\"\nb@x.org,boss,B\n";
        assert_eq!(
            bad(Kind::Import, text),
            [(
                4,
                "\"boss\" is not a role; use admin, member or guest".to_string()
            )]
        );
    }

    #[test]
    fn a_failures_file_is_read_again_with_its_notes_ignored() {
        let text =
            b"line,email,code,reason,feature,seats,entitlement\n7,a@x.org,no_seat,none left,f,2,\n";
        let BulkRows::Assign(rows) = parse(Kind::Assign, text, |_| {}).unwrap() else {
            panic!("not an assign");
        };
        assert_eq!((rows[0].row.feature.as_str(), rows[0].row.seats), ("f", 2));
    }

    #[test]
    fn templates_are_the_headers() {
        assert_eq!(Kind::Import.template(), "email,role,name");
        assert_eq!(Kind::Remove.template(), "email");
        assert_eq!(Kind::Assign.template(), "email,feature,seats,entitlement");
        assert_eq!(Kind::Revoke.template(), "email,feature,seats");
    }

    #[test]
    fn a_file_past_the_row_limit_is_refused_naming_it() {
        let rows = BulkRows::Remove(
            (0..MAX_BULK_ROWS as u64 + 1)
                .map(|i| BulkRow {
                    line: i + 2,
                    row: UserRef {
                        username: format!("u{i}@x.org"),
                    },
                })
                .collect(),
        );
        let failure = check_size(Path::new("big.csv"), &rows).unwrap_err();
        assert!(failure
            .message
            .contains(&format!("at most {MAX_BULK_ROWS} rows")));
    }
}
