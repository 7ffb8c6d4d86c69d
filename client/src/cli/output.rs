//! What `tally` prints: a JSON document with `--json`, aligned text otherwise.
//!
//! Text for people never carries a peer's control characters raw: a host name, feature,
//! error message or machine id holding escape sequences could otherwise rewrite an admin's
//! screen or forge rows, so every line for people leaves through [`line`] or [`line_err`]
//! (`say!`, `say_err!`, tables, the failure printer [`print_error`]), which escape the whole
//! line with [`clean`]. Nothing else in the client prints: `client/clippy.toml` refuses
//! `println!`, `eprintln!` and the standard streams outside the few functions here that
//! allow them. CSV cells are cleaned the same way and neutralised against spreadsheet
//! formulas ([`csv_cell`]). JSON stays exact: serde escapes control characters.

use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Value};

use super::failure::BadLine;
use std::collections::BTreeMap;

use tally_protocol::{
    AssignmentChange, AssignmentEntry, AssignmentInfo, AuditEvent, BulkOutcome, Entitlement,
    EntitlementDeleted, EntitlementUpdated, FeatureFigures, FeatureRequires, FeatureStatus,
    GroupInfo, HeldLease, IssuedToken, LeaseId, LeaseInfo, LeaseSource, NodeInfo, PolicyDecision,
    QueueEntry, QueuePlace, RuleAdded, RuleInfo, ServerInfo, TokenInfo, UserInfo, UserSeen, Whoami,
};

/// Prints a line for people on stdout, with control characters escaped ([`line`]).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::output::line(&format!($($arg)*))
    };
}

/// Prints a line for people on stderr, with control characters escaped ([`line_err`]).
macro_rules! say_err {
    ($($arg:tt)*) => {
        $crate::cli::output::line_err(&format!($($arg)*))
    };
}

pub(crate) use say_err;

/// `text` for a terminal: every control, bidirectional or invisible format character
/// escaped (`\x1b`, `\n`, `\u{202e}`; see [`tally_protocol::text`]).
pub fn clean(text: &str) -> Cow<'_, str> {
    tally_protocol::text::escape(text)
}

/// Prints one line for people on stdout, escaped with [`clean`]: with the JSON documents
/// ([`Output::doc`]), the only way text reaches stdout (clippy's `disallowed_macros`, set
/// in `client/clippy.toml`, refuses `println!` anywhere else).
///
/// Printing never panics `tally`: see [`stdout_failed`] for a stdout that fails.
pub fn line(text: &str) {
    if let Err(err) = writeln!(stdout().lock(), "{}", clean(text)) {
        stdout_failed(err);
    }
}

/// Whether `tally` holds a lease: then nothing it prints matters as much as checking the
/// lease in (and running its command), so a stdout nobody reads is ignored.
static HOLDING: AtomicBool = AtomicBool::new(false);

/// From now on a stdout that fails loses what is printed and nothing else: `checkout`
/// calls it before it prints the grant, so that a closed pipe or a hung-up terminal cannot
/// end `tally` with the lease held and the command not run.
pub fn hold_through_broken_pipes() {
    HOLDING.store(true, Ordering::SeqCst);
}

/// The exit status of a `tally` whose reader went away: that of a process SIGPIPE ended,
/// as `tally ... | head` reports it in a shell.
pub const BROKEN_PIPE: u8 = 128 + 13;

/// Stdout failed. When its reader went away (`tally leases | head -1`) and no lease is
/// held, `tally` ends quietly, as a tool that SIGPIPE ends does; any other failure loses
/// the line. (SIGPIPE itself stays ignored: a server closing the connection while `tally`
/// writes to it must be an error `tally` handles, not a signal that kills it.)
fn stdout_failed(err: std::io::Error) {
    if err.kind() == std::io::ErrorKind::BrokenPipe && !HOLDING.load(Ordering::SeqCst) {
        std::process::exit(i32::from(BROKEN_PIPE));
    }
}

/// Prints one line for people on stderr, escaped with [`clean`]: the only way text
/// reaches stderr apart from the log, whose writer escapes it too ([`super::log`]).
/// Like [`line`], a failing stderr loses the line and nothing else.
#[allow(clippy::disallowed_methods)]
pub fn line_err(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", clean(text));
}

/// Stdout itself, for the CSV writer (its cells pass through [`csv_cell`]) and for
/// flushing.
#[allow(clippy::disallowed_methods)]
pub(super) fn stdout() -> std::io::Stdout {
    std::io::stdout()
}

/// Prints a JSON document on stdout, as serde_json writes it: exact, with every control
/// character escaped by JSON's own rules.
fn json_line(doc: &Value) {
    if let Err(err) = writeln!(stdout().lock(), "{doc}") {
        stdout_failed(err);
    }
}

/// One CSV cell: cleaned, and led by `'` when a spreadsheet would take it for a formula
/// (it starts with `=`, `+`, `-`, `@`, a tab or a carriage return).
pub fn csv_cell(text: &str) -> Cow<'_, str> {
    let cleaned = clean(text);
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{cleaned}"))
    } else {
        cleaned
    }
}

/// The columns of `user list --csv`.
const USER_COLUMNS: [&str; 6] = [
    "email",
    "name",
    "role",
    "state",
    "assigned_seats",
    "last_seen",
];

/// Where results go.
pub struct Output {
    json: bool,
}

/// RFC 3339 UTC to the second. Total: a time outside 1970..=9999 (which an older server may
/// have stored) prints as a number with a note instead of failing.
pub fn time(millis: i64) -> String {
    tally_protocol::format_time(millis)
}

fn source(source: LeaseSource) -> String {
    match source {
        LeaseSource::Floating => "floating".into(),
        LeaseSource::Assignment(id) => format!("assignment:{id}"),
    }
}

pub fn lease_json(lease: &LeaseInfo) -> Value {
    json!({
        "id": lease.id.to_string(),
        "feature": lease.feature,
        "seats": lease.seats,
        "user": lease.user,
        "host": lease.host,
        "kind": lease.kind.as_str(),
        "source": source(lease.source),
        "granted_at": time(lease.granted_at),
        "expires_at": time(lease.expires_at),
    })
}

pub fn entitlement_json(e: &Entitlement) -> Value {
    json!({
        "id": e.id,
        "feature": e.feature,
        "seats": e.seats,
        "starts_at": time(e.starts_at),
        "expires_at": e.expires_at.map(time),
        "kind": e.kind.as_str(),
        "borrowable": e.borrowable,
        "max_borrow_secs": e.max_borrow_secs,
        "reference": e.reference,
    })
}

fn group_json(group: &GroupInfo) -> Value {
    json!({ "name": group.name, "members": group.members })
}

/// A rule as SPEC §8 writes it: `{"id", "feature", "kind", "seats", "group", "each"}`; `id`
/// is null for the rule of a dry run, and `seats` null for kinds that take no number.
fn rule_json(rule: &RuleInfo) -> Value {
    let spec = &rule.rule;
    json!({
        "id": rule.id,
        "feature": spec.feature,
        "kind": spec.kind.as_str(),
        "seats": spec.kind.takes_number().then_some(spec.seats),
        "group": spec.group,
        "each": spec.each,
    })
}

fn status_json(figures: &FeatureFigures) -> Value {
    let f = &figures.status;
    json!({"feature": f.feature, "total": f.total, "assigned": f.assigned, "floating": f.floating,
           "in_use": f.in_use, "borrowed": f.borrowed, "available": f.available, "queued": f.queued,
           "reserved": figures.reserved})
}

pub fn user_json(user: &UserInfo) -> Value {
    json!({"username": user.username, "name": user.name, "role": user.role.as_str(), "state": user.state.as_str()})
}

pub fn assignment_json(a: &AssignmentInfo) -> Value {
    json!({"id": a.id, "user": a.user, "feature": a.feature, "seats": a.seats, "entitlement": a.entitlement,
           "expires_at": a.expires_at.map(time)})
}

/// A lease id as a table abbreviates it, `3f9c2b7a...c0e1`: `tally release` takes it as
/// written.
fn short_id(id: LeaseId) -> String {
    let text = id.to_string();
    format!("{}...{}", &text[..8], &text[28..])
}

/// "vray 2, nuke 1": seats per feature.
fn per_feature(list: &[(String, u32)]) -> String {
    let mut totals: BTreeMap<&str, u32> = BTreeMap::new();
    for (feature, seats) in list {
        *totals.entry(feature).or_default() += seats;
    }
    let parts: Vec<String> = totals
        .iter()
        .map(|(feature, seats)| format!("{feature} {seats}"))
        .collect();
    parts.join(", ")
}

/// A user's seats per feature, `[{"feature", "seats"}]`, from their assignments.
fn totals_json(assignments: &[AssignmentInfo]) -> Value {
    let mut totals: BTreeMap<&str, u32> = BTreeMap::new();
    for a in assignments {
        *totals.entry(&a.feature).or_default() += a.seats;
    }
    let list: Vec<Value> = totals
        .iter()
        .map(|(feature, seats)| json!({"feature": feature, "seats": seats}))
        .collect();
    json!(list)
}

/// "vray 3, nuke 1 (4 seats in all)", or that none are assigned.
fn totals_text(assignments: &[AssignmentInfo]) -> String {
    if assignments.is_empty() {
        return "no seats assigned".into();
    }
    let list: Vec<(String, u32)> = assignments
        .iter()
        .map(|a| (a.feature.clone(), a.seats))
        .collect();
    let all: u32 = assignments.iter().map(|a| a.seats).sum();
    format!("{} ({all} seat(s) in all)", per_feature(&list))
}

/// What became of an assignment a change touched: "assignment 4 (entitlement 1) now
/// holds 3" or "assignment 4 (entitlement 1) ended".
fn touched_text(a: &AssignmentInfo) -> String {
    if a.seats == 0 {
        format!("assignment {} (entitlement {}) ended", a.id, a.entitlement)
    } else {
        format!(
            "assignment {} (entitlement {}) now holds {}",
            a.id, a.entitlement, a.seats
        )
    }
}

/// One feature's figures on one line, for the heading of `status --all`.
fn figures(figures: &FeatureFigures) -> String {
    let f = &figures.status;
    let mut text = format!(
        "{}: {} total, {} assigned, {} floating, {} in use, {} borrowed, {} available, {} queued",
        f.feature, f.total, f.assigned, f.floating, f.in_use, f.borrowed, f.available, f.queued
    );
    if figures.reserved > 0 {
        text.push_str(&format!(", {} reserved", figures.reserved));
    }
    text
}

/// "5 seat(s) from 2027-01-01T00:00:00Z (entitlement 2)" for an entitlement not yet
/// started.
fn upcoming_text(e: &Entitlement) -> String {
    format!(
        "{} seat(s) from {} (entitlement {}{})",
        e.seats,
        time(e.starts_at),
        e.id,
        if e.kind == tally_protocol::EntitlementKind::Trial {
            ", trial"
        } else {
            ""
        }
    )
}

/// The columns of `leases`.
const LEASE_COLUMNS: [&str; 9] = [
    "id",
    "feature",
    "seats",
    "user",
    "host",
    "kind",
    "source",
    "granted_at",
    "expires_at",
];

/// What `leases` says when there are none.
const NO_LEASES: &str = "no leases held";

fn lease_row(l: &LeaseInfo) -> Vec<String> {
    vec![
        l.id.to_string(),
        l.feature.clone(),
        l.seats.to_string(),
        l.user.clone(),
        l.host.clone(),
        l.kind.as_str().to_string(),
        source(l.source),
        time(l.granted_at),
        time(l.expires_at),
    ]
}

fn assignment_entry_json(e: &AssignmentEntry) -> Value {
    let mut doc = assignment_json(&e.assignment);
    doc["suspended"] = json!(e.suspended);
    doc
}

/// The columns of the holders of `status --all`.
const HOLDER_COLUMNS: [&str; 9] = [
    "user", "host", "program", "pid", "address", "since", "seats", "kind", "lease",
];

fn holder_row(h: &HeldLease) -> Vec<String> {
    vec![
        h.lease.user.clone(),
        h.lease.host.clone(),
        h.program.clone(),
        h.pid.to_string(),
        h.address.clone(),
        time(h.lease.granted_at),
        h.lease.seats.to_string(),
        h.lease.kind.as_str().to_string(),
        short_id(h.lease.id),
    ]
}

/// `status --all`, the `lmstat -a` view, printed as it comes: each feature's figures, the
/// entitlements of it not yet started, and its holders underneath, page by page. JSON is
/// `{"features": [{...figures, "holders": [...], "upcoming": [...]}]}`.
pub enum StatusAll {
    Json(JsonList),
    Text {
        /// Whether no feature is out yet (no blank line before it).
        first: bool,
        /// The holders of the feature being printed.
        table: Table,
        /// Whether that feature has had a holder.
        any: bool,
    },
}

impl StatusAll {
    /// Starts a feature: its figures, and for people the entitlements not yet started.
    pub fn feature(
        &mut self,
        figures_of: &FeatureFigures,
        upcoming: &[Entitlement],
    ) -> std::io::Result<()> {
        let f = &figures_of.status;
        match self {
            StatusAll::Json(list) => list.open_object(&status_json(figures_of), "holders"),
            StatusAll::Text { first, table, any } => {
                if !std::mem::take(first) {
                    say!("");
                }
                say!("{}", figures(figures_of));
                for e in upcoming.iter().filter(|e| e.feature == f.feature) {
                    say!("  not started yet: {}", upcoming_text(e));
                }
                *table = Table::indented(&HOLDER_COLUMNS, 2);
                *any = false;
                Ok(())
            }
        }
    }

    /// A page of the feature's holders (those of other features left out).
    pub fn holders(&mut self, f: &FeatureStatus, page: &[HeldLease]) -> std::io::Result<()> {
        let theirs = page.iter().filter(|h| h.lease.feature == f.feature);
        match self {
            StatusAll::Json(list) => {
                for h in theirs {
                    list.item(&holder_json(h))?;
                }
                list.flush()
            }
            StatusAll::Text { table, any, .. } => {
                let rows: Vec<Vec<String>> = theirs.map(holder_row).collect();
                if !rows.is_empty() {
                    *any = true;
                    table.rows(rows);
                }
                stdout().flush()
            }
        }
    }

    /// Ends the feature: in JSON, its entitlements not yet started.
    pub fn end_feature(
        &mut self,
        f: &FeatureStatus,
        upcoming: &[Entitlement],
    ) -> std::io::Result<()> {
        match self {
            StatusAll::Json(list) => {
                let later: Vec<Value> = upcoming
                    .iter()
                    .filter(|e| e.feature == f.feature)
                    .map(|e| json!({"entitlement": e.id, "seats": e.seats, "starts_at": time(e.starts_at)}))
                    .collect();
                list.close_object(&[("upcoming", json!(later))])
            }
            StatusAll::Text { any, .. } => {
                if !*any {
                    say!("  no holders");
                }
                Ok(())
            }
        }
    }

    /// Ends the listing.
    pub fn finish(self) -> std::io::Result<()> {
        match self {
            StatusAll::Json(list) => list.finish(),
            StatusAll::Text { .. } => Ok(()),
        }
    }
}

fn holder_json(h: &HeldLease) -> Value {
    json!({"lease": h.lease.id.to_string(), "user": h.lease.user, "host": h.lease.host,
           "program": h.program, "pid": h.pid, "address": h.address,
           "since": time(h.lease.granted_at), "seats": h.lease.seats, "kind": h.lease.kind.as_str()})
}

/// `server info`'s document: with the address the server listens on and its lease ttl; on a
/// cluster (SPEC §7) also the node, its role, the epoch and the leader (`null` while none is
/// known).
fn server_info_json(info: &ServerInfo) -> Value {
    let mut doc = json!({"id": info.id, "version": info.version, "protocol": info.protocol,
        "store": info.store, "uptime_secs": info.uptime_secs, "connections": info.connections,
        "listen": info.listen, "lease_ttl_ms": info.lease_ttl_ms});
    if let Some(cluster) = &info.cluster {
        doc["node"] = json!(cluster.node);
        doc["role"] = json!(cluster.role.as_str());
        doc["epoch"] = json!(cluster.epoch);
        doc["leader"] = json!(cluster.leader);
    }
    doc
}

fn node_json(n: &NodeInfo) -> Value {
    json!({"id": n.id, "address": n.address, "role": n.role.as_str(), "epoch": n.epoch,
           "last_seen": time(n.last_seen)})
}

fn event_json(e: &AuditEvent) -> Value {
    json!({"at": time_millis(e.at), "actor": e.actor, "action": e.action, "subject": e.subject,
           "feature": e.feature, "outcome": e.outcome, "reason": e.reason})
}

/// RFC 3339 UTC to the millisecond, for audit events; total like [`time`].
fn time_millis(millis: i64) -> String {
    tally_protocol::format_time_millis(millis)
}

/// Prints a failure: `{"error": {...}}` on stdout with `--json`, a line on stderr otherwise.
pub fn print_error(json: bool, code: &str, message: &str) {
    print_error_lines(json, code, message, &[]);
}

/// [`print_error`] of a file with bad lines: in JSON, `lines` lists them
/// (`[{"line", "reason"}]`); for people, one line each under the message.
pub fn print_error_lines(json: bool, code: &str, message: &str, lines: &[BadLine]) {
    if json {
        let mut error = json!({"code": code, "message": message});
        if !lines.is_empty() {
            let lines: Vec<Value> = lines
                .iter()
                .map(|l| json!({"line": l.line, "reason": l.reason}))
                .collect();
            error["lines"] = json!(lines);
        }
        json_line(&json!({ "error": error }));
    } else if lines.is_empty() {
        say_err!("tally: {message}");
    } else {
        let head = message
            .split_once(": line ")
            .map_or(message, |(head, _)| head);
        say_err!("tally: {head}:");
        for l in lines {
            say_err!("  line {}: {}", l.line, l.reason);
        }
    }
}

/// Left-aligned columns, printed as rows come: the widths grow to fit each new batch of
/// rows and never shrink, so a long listing can be printed page by page.
pub struct Table {
    headers: Vec<String>,
    widths: Vec<usize>,
    /// Whether the header line is out.
    started: bool,
    /// Spaces before every line, for a table under a heading.
    indent: usize,
}

impl Table {
    fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_uppercase()).collect(),
            widths: headers.iter().map(|h| h.len()).collect(),
            started: false,
            indent: 0,
        }
    }

    /// A table printed `indent` spaces in, under a heading.
    fn indented(headers: &[&str], indent: usize) -> Self {
        Self {
            indent,
            ..Self::new(headers)
        }
    }

    fn line(&self, cells: &[String]) {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = self.widths[i]))
            .collect();
        say!(
            "{:indent$}{}",
            "",
            text.join("  ").trim_end(),
            indent = self.indent
        );
    }

    /// Prints rows (and the header before the first).
    fn rows(&mut self, rows: Vec<Vec<String>>) {
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .map(|row| row.iter().map(|cell| clean(cell).into_owned()).collect())
            .collect();
        for row in &rows {
            for (i, cell) in row.iter().enumerate() {
                self.widths[i] = self.widths[i].max(cell.chars().count());
            }
        }
        if !self.started {
            self.started = true;
            self.line(&self.headers);
        }
        for row in &rows {
            self.line(row);
        }
    }
}

/// Left-aligned columns.
pub(super) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    Table::new(headers).rows(rows);
}

/// A JSON document whose long list is written an element at a time, as pages come, so that
/// a listing of hundreds of thousands of entries never stands in memory as one `Value` (a
/// lying server can fill a 16 MiB frame with leases). What it writes reads exactly as the
/// document serialised whole: `{"leases":[{...},{...}]}` and a newline.
pub struct JsonList<W: Write = std::io::BufWriter<std::io::Stdout>> {
    out: W,
    /// Whether the next element is the first of its list (no comma before it).
    first: bool,
    /// What opens a list (`{"leases":[`, a feature of `status --all` and its `"holders":[`),
    /// held back until an element or the end comes: a first page the server refuses then
    /// leaves only the error document on stdout.
    pending: String,
}

impl JsonList {
    /// Starts the document `{"KEY":[` on stdout.
    pub fn start(key: &str) -> std::io::Result<Self> {
        let stdout = std::io::BufWriter::with_capacity(64 * 1024, stdout());
        JsonList::start_on(stdout, key)
    }
}

impl<W: Write> JsonList<W> {
    /// Starts the document `{"KEY":[` on `out` (held back).
    fn start_on(out: W, key: &str) -> std::io::Result<Self> {
        let mut list = Self {
            out,
            first: true,
            pending: "{".into(),
        };
        list.open(key)?;
        Ok(list)
    }

    /// Writes what is held back, then `text` as it is (JSON punctuation between lists).
    fn raw(&mut self, text: &str) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.out
                .write_all(std::mem::take(&mut self.pending).as_bytes())?;
        }
        self.out.write_all(text.as_bytes())
    }

    /// Opens the list `"KEY":[` inside the object being written (held back).
    fn open(&mut self, key: &str) -> std::io::Result<()> {
        self.pending.push_str(&serde_json::to_string(key)?);
        self.pending.push_str(":[");
        self.first = true;
        Ok(())
    }

    /// Writes one element of the open list.
    pub fn item(&mut self, item: &impl serde::Serialize) -> std::io::Result<()> {
        let comma = if std::mem::take(&mut self.first) {
            ""
        } else {
            ","
        };
        self.raw(comma)?;
        serde_json::to_writer(&mut self.out, item)?;
        Ok(())
    }

    /// Opens an object element of the open list with the fields of `head` (an object),
    /// then a list inside it under `key`: `{...head...,"KEY":[` (held back).
    /// [`JsonList::close_object`] closes both.
    fn open_object(&mut self, head: &Value, key: &str) -> std::io::Result<()> {
        if !std::mem::take(&mut self.first) {
            self.pending.push(',');
        }
        let text = head.to_string();
        let fields = text.strip_suffix('}').unwrap_or("{");
        self.pending.push_str(fields);
        if fields != "{" {
            self.pending.push(',');
        }
        self.open(key)
    }

    /// Closes the list [`JsonList::open_object`] opened, adds the fields `tail` after it,
    /// and closes the object: `],"K":V}`.
    fn close_object(&mut self, tail: &[(&str, Value)]) -> std::io::Result<()> {
        self.raw("]")?;
        for (key, value) in tail {
            self.raw(",")?;
            serde_json::to_writer(&mut self.out, key)?;
            self.raw(":")?;
            serde_json::to_writer(&mut self.out, value)?;
        }
        self.raw("}")?;
        // The object is an element of the list around it.
        self.first = false;
        Ok(())
    }

    /// Ends the list, then the document; flushes.
    pub fn finish(self) -> std::io::Result<()> {
        self.end().map(drop)
    }

    /// Ends the list, then the document; flushes, and gives the writer back.
    fn end(mut self) -> std::io::Result<W> {
        self.raw("]}\n")?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Flushes what is written so far (at the end of a page).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A listing printed page by page: JSON an element at a time ([`JsonList`]), or table rows
/// as they come; with `empty` printed for people when nothing came.
pub struct Listing<T> {
    sink: Sink,
    /// An element's JSON.
    json: fn(&T) -> Value,
    /// An element's table row.
    row: fn(&T) -> Vec<String>,
    /// What people see when the listing is empty.
    empty: &'static str,
    /// Whether any element came.
    any: bool,
}

enum Sink {
    Json(JsonList),
    Table(Table),
}

impl<T> Listing<T> {
    /// Prints one page.
    pub fn page(&mut self, items: &[T]) -> std::io::Result<()> {
        self.any |= !items.is_empty();
        match &mut self.sink {
            Sink::Json(list) => {
                for item in items {
                    list.item(&(self.json)(item))?;
                }
                list.flush()
            }
            Sink::Table(table) => {
                if !items.is_empty() {
                    table.rows(items.iter().map(self.row).collect());
                }
                stdout().flush()
            }
        }
    }

    /// Ends the listing.
    pub fn finish(self) -> std::io::Result<()> {
        match self.sink {
            Sink::Json(list) => list.finish(),
            Sink::Table(_) => {
                if !self.any {
                    say!("{}", self.empty);
                }
                Ok(())
            }
        }
    }
}

/// Prints audit events as their pages come: CSV and table rows at once, JSON an event at a
/// time.
pub enum AuditPrinter {
    Csv(Box<csv::Writer<std::io::Stdout>>),
    Table(Table),
    Json(JsonList),
}

const AUDIT_COLUMNS: [&str; 7] = [
    "at", "actor", "action", "subject", "feature", "outcome", "reason",
];

impl AuditPrinter {
    /// Prints one page of events.
    pub fn page(&mut self, events: &[AuditEvent]) -> std::io::Result<()> {
        match self {
            AuditPrinter::Csv(writer) => {
                for e in events {
                    let at = time_millis(e.at);
                    let fields = [
                        at.as_str(),
                        &e.actor,
                        &e.action,
                        &e.subject,
                        e.feature.as_deref().unwrap_or_default(),
                        &e.outcome,
                        &e.reason,
                    ];
                    writer.write_record(fields.iter().map(|f| csv_cell(f).into_owned()))?;
                }
                writer.flush()
            }
            AuditPrinter::Table(table) => {
                let rows = events
                    .iter()
                    .map(|e| {
                        vec![
                            time(e.at),
                            e.actor.clone(),
                            e.action.clone(),
                            e.subject.clone(),
                            e.feature.clone().unwrap_or_default(),
                            e.outcome.clone(),
                            e.reason.clone(),
                        ]
                    })
                    .collect();
                table.rows(rows);
                stdout().flush()
            }
            AuditPrinter::Json(list) => {
                for e in events {
                    list.item(&event_json(e))?;
                }
                list.flush()
            }
        }
    }

    /// Ends the listing: the JSON document, or the table's header when no event came.
    pub fn finish(self) -> std::io::Result<()> {
        match self {
            AuditPrinter::Csv(mut writer) => writer.flush(),
            AuditPrinter::Table(mut table) => {
                if !table.started {
                    table.rows(Vec::new());
                }
                Ok(())
            }
            AuditPrinter::Json(list) => list.finish(),
        }
    }
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    pub(super) fn doc(&self, value: Value) {
        json_line(&value);
    }

    /// A remark for people; silent with `--json`.
    pub fn note(&self, text: &str) {
        if !self.json {
            say_err!("{text}");
        }
    }

    /// Whether the result is one JSON document.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// The figures of each feature; for people, also the entitlements not yet started
    /// (`upcoming`), with their start. JSON is the spec's document.
    pub fn status(&self, features: &[FeatureFigures], upcoming: &[Entitlement]) {
        if self.json {
            let list: Vec<Value> = features.iter().map(status_json).collect();
            return self.doc(json!({ "features": list }));
        }
        if features.is_empty() {
            say!("no features yet: add one with `tally entitlement add FEATURE --seats N`");
            return;
        }
        let rows = features
            .iter()
            .map(|figures| {
                let f = &figures.status;
                [
                    &f.feature as &dyn ToString,
                    &f.total,
                    &f.assigned,
                    &f.floating,
                    &f.in_use,
                    &f.borrowed,
                    &f.available,
                    &f.queued,
                    &figures.reserved,
                ]
                .iter()
                .map(|v| v.to_string())
                .collect()
            })
            .collect();
        table(
            &[
                "feature",
                "total",
                "assigned",
                "floating",
                "in_use",
                "borrowed",
                "available",
                "queued",
                "reserved",
            ],
            rows,
        );
        if !upcoming.is_empty() {
            say!("");
            say!("not started yet:");
            for e in upcoming {
                say!("  {}: {}", e.feature, upcoming_text(e));
            }
        }
    }

    pub fn leases(&self, leases: &[LeaseInfo]) {
        if self.json {
            let list: Vec<Value> = leases.iter().map(lease_json).collect();
            return self.doc(json!({ "leases": list }));
        }
        if leases.is_empty() {
            say!("{NO_LEASES}");
            return;
        }
        table(&LEASE_COLUMNS, leases.iter().map(lease_row).collect());
    }

    /// `leases`, printed page by page as the pages come.
    pub fn leases_listing(&self) -> std::io::Result<Listing<LeaseInfo>> {
        let sink = if self.json {
            Sink::Json(JsonList::start("leases")?)
        } else {
            Sink::Table(Table::new(&LEASE_COLUMNS))
        };
        Ok(Listing {
            sink,
            json: lease_json,
            row: lease_row,
            empty: NO_LEASES,
            any: false,
        })
    }

    /// `assignments --json`, printed page by page as the pages come.
    pub fn assignments_listing(&self) -> std::io::Result<Listing<AssignmentEntry>> {
        Ok(Listing {
            sink: Sink::Json(JsonList::start("assignments")?),
            json: assignment_entry_json,
            row: |_| Vec::new(),
            empty: "",
            any: false,
        })
    }

    /// `status --all`, printed a feature at a time, each feature's holders page by page.
    pub fn status_all_printer(&self, features: &[FeatureFigures]) -> std::io::Result<StatusAll> {
        if self.json {
            return Ok(StatusAll::Json(JsonList::start("features")?));
        }
        if features.is_empty() {
            say!("no features yet: add one with `tally entitlement add FEATURE --seats N`");
        }
        Ok(StatusAll::Text {
            first: true,
            table: Table::indented(&HOLDER_COLUMNS, 2),
            any: false,
        })
    }

    /// The lease checked out. Printing it cannot fail the checkout: with `--json` a
    /// stdout that cannot be written is warned about on stderr, and the lease is still held
    /// (and the command run) and checked in as usual.
    pub fn lease_granted(&self, lease: &LeaseInfo, holding: bool) {
        if self.json {
            let mut stdout = stdout().lock();
            let doc = json!({ "lease": lease_json(lease) });
            if let Err(err) = writeln!(stdout, "{doc}").and_then(|()| stdout.flush()) {
                say_err!("tally: warning: cannot print the lease: {err}");
            }
            return;
        }
        say_err!(
            "checked out {} seat(s) of {} (lease {}){}",
            lease.seats,
            lease.feature,
            lease.id,
            if holding {
                "; holding until interrupted (Ctrl-C)"
            } else {
                ""
            }
        );
    }

    pub fn entitlement(&self, e: &Entitlement) {
        if self.json {
            return self.doc(json!({ "entitlement": entitlement_json(e) }));
        }
        say!(
            "added entitlement {}: {} seat(s) of {}",
            e.id,
            e.seats,
            e.feature
        );
    }

    /// A checkout that waits in the queue, said once on stderr when it is a terminal (a
    /// script reads the grant, or the failure, from stdout).
    pub fn queued(&self, place: &QueuePlace) {
        #[allow(clippy::disallowed_methods)]
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        if terminal {
            say_err!(
                "no seat of {} is free: waiting for {} seat(s) at position {} in the queue",
                place.feature,
                place.seats,
                place.position
            );
        }
    }

    /// The waiting checkouts (R17), each feature's in the order they are served. JSON is
    /// the spec's document.
    pub fn queue(&self, list: &[QueueEntry]) {
        if self.json {
            let list: Vec<Value> = list
                .iter()
                .map(|e| {
                    json!({
                        "feature": e.feature,
                        "seats": e.seats,
                        "user": e.user,
                        "host": e.host,
                        "since": time(e.since),
                        "position": e.position,
                    })
                })
                .collect();
            return self.doc(json!({ "queue": list }));
        }
        if list.is_empty() {
            say!("no checkout is waiting");
            return;
        }
        let rows = list
            .iter()
            .map(|e| {
                vec![
                    e.feature.clone(),
                    e.position.to_string(),
                    e.seats.to_string(),
                    e.user.clone(),
                    e.host.clone(),
                    time(e.since),
                ]
            })
            .collect();
        table(
            &["feature", "position", "seats", "user", "host", "since"],
            rows,
        );
    }

    /// Every feature with prerequisites (R18). JSON is the spec's document.
    pub fn features(&self, list: &[FeatureRequires]) {
        if self.json {
            let list: Vec<Value> = list
                .iter()
                .map(|f| json!({ "feature": f.feature, "requires": f.requires }))
                .collect();
            return self.doc(json!({ "features": list }));
        }
        if list.is_empty() {
            say!("no prerequisites: add one with `tally feature require FEATURE PREREQUISITE`");
            return;
        }
        let rows = list
            .iter()
            .map(|f| vec![f.feature.clone(), f.requires.join(", ")])
            .collect();
        table(&["feature", "requires"], rows);
    }

    /// A group after a change: `{"group": {"name", "members"}}`.
    pub fn group(&self, group: &GroupInfo) {
        if self.json {
            return self.doc(json!({ "group": group_json(group) }));
        }
        if group.members.is_empty() {
            say!("group {}: no members", group.name);
        } else {
            say!("group {}: {}", group.name, group.members.join(" "));
        }
    }

    /// Every group: `{"groups": [...]}`.
    pub fn groups(&self, groups: &[GroupInfo]) {
        if self.json {
            let list: Vec<Value> = groups.iter().map(group_json).collect();
            return self.doc(json!({ "groups": list }));
        }
        if groups.is_empty() {
            say!("no groups: add one with `tally group add NAME MEMBER...`");
            return;
        }
        let rows = groups
            .iter()
            .map(|g| vec![g.name.clone(), g.members.join(" ")])
            .collect();
        table(&["group", "members"], rows);
    }

    /// A group removed: `{"removed": NAME}`.
    pub fn group_removed(&self, name: &str) {
        if self.json {
            return self.doc(json!({ "removed": name }));
        }
        say!("removed group {name}");
    }

    /// A rule added, or what it would do: `{"rule": {...}, "effect": {"leases_over",
    /// "users_denied"}}`.
    pub fn rule_added(&self, added: &RuleAdded, dry_run: bool) {
        let effect = &added.effect;
        if self.json {
            let leases: Vec<Value> = effect.leases_over.iter().map(lease_json).collect();
            return self.doc(json!({
                "rule": rule_json(&added.rule),
                "effect": { "leases_over": leases, "users_denied": effect.users_denied },
            }));
        }
        let text = format!("{}: {}", added.rule.rule.feature, added.rule.rule.text());
        match added.rule.id {
            Some(id) => say!("added rule {id}: {text}"),
            None if dry_run => say!("dry run, nothing stored: {text}"),
            None => say!("{text}"),
        }
        if effect.leases_over.is_empty() {
            say!("no current lease is over it");
        } else {
            say!(
                "{} current lease(s) over it (they are not ended; the rule applies to new checkouts):",
                effect.leases_over.len()
            );
            for lease in &effect.leases_over {
                say!(
                    "  {} {} seat(s) of {} held by {} on {} since {}",
                    lease.id,
                    lease.seats,
                    lease.feature,
                    lease.user,
                    lease.host,
                    time(lease.granted_at)
                );
            }
        }
        if effect.users_denied.is_empty() {
            say!("no active user is refused by it");
        } else {
            say!(
                "active users it refuses: {}",
                effect.users_denied.join(", ")
            );
        }
    }

    /// Rules: `{"rules": [...]}`.
    pub fn rules(&self, rules: &[RuleInfo]) {
        if self.json {
            let list: Vec<Value> = rules.iter().map(rule_json).collect();
            return self.doc(json!({ "rules": list }));
        }
        if rules.is_empty() {
            say!("no rules: add one with `tally policy add FEATURE RULE...`");
            return;
        }
        let rows = rules
            .iter()
            .map(|r| {
                vec![
                    r.id.map(|id| id.to_string()).unwrap_or_default(),
                    r.rule.feature.clone(),
                    r.rule.text(),
                ]
            })
            .collect();
        table(&["id", "feature", "rule"], rows);
    }

    /// A rule removed: `{"removed": ID}`.
    pub fn rule_removed(&self, id: u64) {
        if self.json {
            return self.doc(json!({ "removed": id }));
        }
        say!("removed rule {id}");
    }

    /// How the rules decide for one holder: `{"allowed", "rule", "reason"}`.
    pub fn decision(&self, decision: &PolicyDecision) {
        if self.json {
            return self.doc(json!({
                "allowed": decision.allowed,
                "rule": decision.rule,
                "reason": decision.reason,
            }));
        }
        say!("{}", decision.reason);
    }

    pub fn entitlements(&self, list: &[Entitlement]) {
        if self.json {
            let list: Vec<Value> = list.iter().map(entitlement_json).collect();
            return self.doc(json!({ "entitlements": list }));
        }
        if list.is_empty() {
            say!("no entitlements");
            return;
        }
        let now = tally_protocol::now_millis();
        let rows = list
            .iter()
            .map(|e| {
                let state = if e.starts_at > now {
                    "not started"
                } else if e.expires_at.is_some_and(|end| end <= now) {
                    "expired"
                } else {
                    "active"
                };
                vec![
                    e.id.to_string(),
                    e.feature.clone(),
                    e.seats.to_string(),
                    state.to_string(),
                    time(e.starts_at),
                    e.expires_at.map_or("never".into(), time),
                    e.kind.as_str().to_string(),
                    if e.borrowable {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                    e.reference.clone(),
                ]
            })
            .collect();
        table(
            &[
                "id",
                "feature",
                "seats",
                "state",
                "starts_at",
                "expires_at",
                "kind",
                "borrowable",
                "reference",
            ],
            rows,
        );
    }

    /// An entitlement changed, and the leases the change ended (with --force).
    pub fn entitlement_updated(&self, updated: &EntitlementUpdated) {
        let e = &updated.entitlement;
        if self.json {
            let ended: Vec<String> = updated.ended.iter().map(LeaseId::to_string).collect();
            return self.doc(json!({ "entitlement": entitlement_json(e), "ended": ended }));
        }
        say!(
            "updated entitlement {}: {} seat(s) of {} from {} until {}, {}, reference {:?}",
            e.id,
            e.seats,
            e.feature,
            time(e.starts_at),
            e.expires_at.map_or("never".into(), time),
            if e.borrowable {
                format!(
                    "borrowable for up to {}",
                    humantime::format_duration(std::time::Duration::from_secs(e.max_borrow_secs))
                )
            } else {
                "not borrowable".into()
            },
            e.reference
        );
        self.ended(&updated.ended);
    }

    /// Leases a change ended, one line each.
    fn ended(&self, ended: &[LeaseId]) {
        if !ended.is_empty() {
            say!("ended {} lease(s):", ended.len());
            for id in ended {
                say!("  {id}");
            }
        }
    }

    pub fn removed(&self, deleted: &EntitlementDeleted) {
        if self.json {
            let ended: Vec<String> = deleted.ended.iter().map(LeaseId::to_string).collect();
            return self.doc(json!({ "removed": deleted.id, "ended": ended }));
        }
        say!("removed entitlement {}", deleted.id);
        self.ended(&deleted.ended);
    }

    pub fn released(&self, ids: &[LeaseId]) {
        if self.json {
            let ids: Vec<String> = ids.iter().map(LeaseId::to_string).collect();
            return self.doc(json!({ "released": ids }));
        }
        for id in ids {
            say!("released lease {id}");
        }
    }

    pub fn server_info(&self, info: &ServerInfo) {
        if self.json {
            return self.doc(json!({ "server": server_info_json(info) }));
        }
        say!("id           {}", info.id);
        say!("version      {}", info.version);
        say!("protocol     {}", info.protocol);
        say!("store        {}", info.store);
        say!("listen       {}", info.listen);
        say!(
            "lease ttl    {}",
            humantime::format_duration(std::time::Duration::from_millis(info.lease_ttl_ms))
        );
        say!(
            "uptime       {}",
            humantime::format_duration(std::time::Duration::from_secs(info.uptime_secs))
        );
        say!("connections  {}", info.connections);
        if let Some(cluster) = &info.cluster {
            say!("node         {}", cluster.node);
            say!("role         {}", cluster.role.as_str());
            say!("epoch        {}", cluster.epoch);
            say!(
                "leader       {}",
                cluster.leader.as_deref().unwrap_or("none known right now")
            );
        }
    }

    pub fn server_nodes(&self, nodes: &[NodeInfo]) {
        if self.json {
            let list: Vec<Value> = nodes.iter().map(node_json).collect();
            return self.doc(json!({ "nodes": list }));
        }
        let rows = nodes
            .iter()
            .map(|n| {
                vec![
                    n.id.clone(),
                    n.address.clone(),
                    n.role.as_str().into(),
                    n.epoch.to_string(),
                    time(n.last_seen),
                ]
            })
            .collect();
        table(&["id", "address", "role", "epoch", "last_seen"], rows);
    }

    pub fn whoami(&self, me: &Whoami) {
        if self.json {
            let assignments: Vec<Value> = me.assignments.iter().map(assignment_json).collect();
            let leases: Vec<Value> = me.leases.iter().map(lease_json).collect();
            return self.doc(
                json!({"user": user_json(&me.user), "assignments": assignments, "leases": leases}),
            );
        }
        let name = if me.user.name.is_empty() {
            String::new()
        } else {
            format!(" ({})", me.user.name)
        };
        say!(
            "{}{name}: {}, {}",
            me.user.username,
            me.user.role.as_str(),
            me.user.state.as_str()
        );
        if me.assignments.is_empty() {
            say!("no seats assigned to you");
        } else {
            say!("");
            self.assignment_table(&me.assignments);
        }
        say!("");
        self.leases(&me.leases);
    }

    fn assignment_table(&self, list: &[AssignmentInfo]) {
        let rows = list
            .iter()
            .map(|a| {
                vec![
                    a.id.to_string(),
                    a.feature.clone(),
                    a.seats.to_string(),
                    a.entitlement.to_string(),
                    a.expires_at.map_or("with the entitlement".into(), time),
                ]
            })
            .collect();
        table(
            &[
                "assignment",
                "feature",
                "seats",
                "entitlement",
                "expires_at",
            ],
            rows,
        );
    }

    pub fn user_added(&self, user: &UserInfo, token: &str) {
        if self.json {
            return self.doc(json!({"user": user_json(user), "token": token}));
        }
        say!("added {} ({})", user.username, user.role.as_str());
        say!("token (shown once; give it to them for their client file): {token}");
    }

    /// A bulk file's header line (`--template`), for people and scripts alike.
    pub fn template(&self, header: &str) {
        if self.json {
            return self.doc(json!({"template": header}));
        }
        say!("{header}");
    }

    /// The outcome of a bulk file of `rows` rows. `tokens_to`, for an import that stored
    /// its rows: the file holding the new users' tokens, or none when none were minted.
    pub fn bulk(
        &self,
        outcome: &BulkOutcome,
        rows: usize,
        dry_run: bool,
        tokens_to: Option<Option<&std::path::Path>>,
    ) {
        if self.json {
            let failed: Vec<Value> = outcome
                .failed
                .iter()
                .map(|f| {
                    json!({"line": f.line, "email": f.email, "code": f.code.as_str(), "reason": f.reason})
                })
                .collect();
            return self.doc(json!({"applied": outcome.applied, "failed": failed}));
        }
        let refused = outcome.failed.len();
        if dry_run {
            say!(
                "dry run: {} of {rows} row(s) would apply, {refused} would be refused; nothing was stored",
                outcome.applied
            );
        } else {
            say!(
                "{} of {rows} row(s) applied, {refused} refused",
                outcome.applied
            );
        }
        match tokens_to {
            Some(Some(path)) if outcome.applied > 0 => say!(
                "the new users' tokens are in {} (readable by you alone); give each user theirs",
                path.display()
            ),
            Some(None) if outcome.applied > 0 => say!(
                "the new users have no token yet: mint each one's with `tally user token EMAIL`, or import with --tokens FILE"
            ),
            _ => {}
        }
        if refused > 0 {
            table(
                &["line", "email", "code", "reason"],
                outcome
                    .failed
                    .iter()
                    .map(|f| {
                        vec![
                            f.line.to_string(),
                            f.email.clone(),
                            f.code.as_str().into(),
                            f.reason.clone(),
                        ]
                    })
                    .collect(),
            );
        }
    }

    /// Every user as CSV (`user list --csv`): `email,name,role,state,assigned_seats,last_seen`,
    /// each cell neutralised against spreadsheet formulas.
    pub fn users_csv(&self, users: &[UserSeen]) -> std::io::Result<()> {
        let mut writer = csv::Writer::from_writer(stdout());
        writer.write_record(USER_COLUMNS)?;
        for seen in users {
            let u = &seen.user;
            let seats = u.assigned_seats.to_string();
            let last_seen = seen.last_seen.map(time).unwrap_or_default();
            let cells = [
                u.username.as_str(),
                &u.name,
                u.role.as_str(),
                u.state.as_str(),
                &seats,
                &last_seen,
            ];
            writer.write_record(cells.map(|cell| csv_cell(cell).into_owned()))?;
        }
        writer.flush()
    }

    /// Every user; for people, with their assigned seats per feature (from `assignments`).
    pub fn users(
        &self,
        users: &[UserInfo],
        assignments: &[AssignmentEntry],
    ) -> std::io::Result<()> {
        if self.json {
            let mut list = JsonList::start("users")?;
            for u in users {
                let mut doc = user_json(u);
                doc["assigned_seats"] = json!(u.assigned_seats);
                list.item(&doc)?;
            }
            return list.finish();
        }
        let mut by_user: BTreeMap<&str, Vec<(String, u32)>> = BTreeMap::new();
        for entry in assignments {
            let a = &entry.assignment;
            by_user
                .entry(&a.user)
                .or_default()
                .push((a.feature.clone(), a.seats));
        }
        let rows = users
            .iter()
            .map(|u| {
                let seats = match by_user.get(u.username.as_str()) {
                    Some(list) if u.assigned_seats > 0 => {
                        format!("{} ({})", u.assigned_seats, per_feature(list))
                    }
                    _ => u.assigned_seats.to_string(),
                };
                vec![
                    u.username.clone(),
                    u.name.clone(),
                    u.role.as_str().into(),
                    u.state.as_str().into(),
                    seats,
                ]
            })
            .collect();
        table(
            &["username", "name", "role", "state", "assigned_seats"],
            rows,
        );
        Ok(())
    }

    pub fn token_issued(&self, issued: &IssuedToken) {
        if self.json {
            return self.doc(json!({ "token": issued.token, "id": issued.id }));
        }
        say!("new token {} (shown once): {}", issued.id, issued.token);
    }

    pub fn tokens(&self, tokens: &[TokenInfo]) {
        if self.json {
            let list: Vec<Value> = tokens
                .iter()
                .map(|t| {
                    json!({
                        "id": t.id,
                        "label": t.label,
                        "created_at": time(t.created_at),
                        "last_used": t.last_used.map(time),
                    })
                })
                .collect();
            return self.doc(json!({ "tokens": list }));
        }
        let rows = tokens
            .iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    t.label.clone(),
                    time(t.created_at),
                    t.last_used.map_or_else(|| "never".into(), time),
                ]
            })
            .collect();
        table(&["id", "label", "created_at", "last_used"], rows);
    }

    pub fn token_revoked(&self, id: &str) {
        if self.json {
            return self.doc(json!({ "revoked": id }));
        }
        say!("revoked token {id}; its connections are closed");
    }

    pub fn user(&self, user: &UserInfo) {
        if self.json {
            return self.doc(json!({ "user": user_json(user) }));
        }
        say!(
            "{}: {}, {}",
            user.username,
            user.role.as_str(),
            user.state.as_str()
        );
    }

    /// A user removed: said so.
    pub fn user_removed(&self, user: &UserInfo) {
        if self.json {
            return self.doc(json!({ "user": user_json(user) }));
        }
        say!("removed {} ({})", user.username, user.role.as_str());
    }

    /// `assign`: the assignment touched (and, with --from, the one the seats came from),
    /// and the user's totals after it.
    pub fn assigned(&self, user: &str, change: &AssignmentChange) {
        let user = user.trim().to_lowercase();
        let mine = change.touched.iter().find(|a| a.user == user);
        if self.json {
            return self.doc(json!({
                "assignment": mine.map(assignment_json),
                "touched": change.touched.iter().map(assignment_json).collect::<Vec<_>>(),
                "totals": totals_json(&change.assignments),
            }));
        }
        let feature = mine.map_or("", |a| a.feature.as_str());
        say!("assigned {} seat(s) of {feature} to {user}", change.seats);
        for a in &change.touched {
            let whose = if a.user == user {
                String::new()
            } else {
                format!("taken from {}: ", a.user)
            };
            say!("  {whose}{}", touched_text(a));
        }
        say!("{user} now has {}", totals_text(&change.assignments));
    }

    /// `revoke`: how many seats, the assignments they came from, and the user's totals
    /// after it.
    pub fn revoked(&self, user: &str, change: &AssignmentChange) {
        let user = user.trim().to_lowercase();
        if self.json {
            return self.doc(json!({
                "revoked": change.seats,
                "touched": change.touched.iter().map(assignment_json).collect::<Vec<_>>(),
                "totals": totals_json(&change.assignments),
            }));
        }
        let feature = change.touched.first().map_or("", |a| a.feature.as_str());
        say!("revoked {} seat(s) of {feature} from {user}", change.seats);
        for a in &change.touched {
            say!("  {}", touched_text(a));
        }
        say!("{user} now has {}", totals_text(&change.assignments));
    }

    /// `assignments`: who has which seats, per feature.
    pub fn assignments(&self, list: &[AssignmentEntry]) {
        if self.json {
            let list: Vec<Value> = list.iter().map(assignment_entry_json).collect();
            return self.doc(json!({ "assignments": list }));
        }
        if list.is_empty() {
            say!("no seats assigned: `tally assign EMAIL FEATURE --seats N` assigns some");
            return;
        }
        let mut by_feature: BTreeMap<&str, Vec<&AssignmentEntry>> = BTreeMap::new();
        for entry in list {
            by_feature
                .entry(&entry.assignment.feature)
                .or_default()
                .push(entry);
        }
        for (i, (feature, mut entries)) in by_feature.into_iter().enumerate() {
            if i > 0 {
                say!("");
            }
            entries.sort_by(|a, b| {
                (&a.assignment.user, a.assignment.id).cmp(&(&b.assignment.user, b.assignment.id))
            });
            let seats: u32 = entries.iter().map(|e| e.assignment.seats).sum();
            let users: std::collections::BTreeSet<&str> =
                entries.iter().map(|e| e.assignment.user.as_str()).collect();
            say!(
                "{feature}: {seats} seat(s) assigned to {} user(s)",
                users.len()
            );
            let rows = entries
                .iter()
                .map(|e| {
                    let a = &e.assignment;
                    vec![
                        a.user.clone(),
                        a.seats.to_string(),
                        e.in_use.to_string(),
                        e.borrowed.to_string(),
                        a.id.to_string(),
                        a.entitlement.to_string(),
                        a.expires_at.map_or("never".into(), time),
                        if e.suspended {
                            "suspended (user deactivated)".into()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect();
            Table::indented(
                &[
                    "user",
                    "seats",
                    "in_use",
                    "borrowed",
                    "assignment",
                    "entitlement",
                    "expires_at",
                    "note",
                ],
                2,
            )
            .rows(rows);
        }
    }

    /// A printer for audit events, page by page; CSV with `csv` (never asked for with `--json`).
    pub fn audit(&self, csv: bool) -> std::io::Result<AuditPrinter> {
        if csv {
            let mut writer = csv::Writer::from_writer(stdout());
            writer.write_record(AUDIT_COLUMNS)?;
            return Ok(AuditPrinter::Csv(Box::new(writer)));
        }
        if self.json {
            return Ok(AuditPrinter::Json(JsonList::start("events")?));
        }
        Ok(AuditPrinter::Table(Table::new(&AUDIT_COLUMNS)))
    }

    pub fn borrowed(&self, lease: &LeaseInfo, path: &std::path::Path) {
        if self.json {
            return self.doc(
                json!({"lease": lease_json(lease), "token_file": path.display().to_string()}),
            );
        }
        say!(
            "borrowed {} seat(s) of {} until {} for offline use on this machine",
            lease.seats,
            lease.feature,
            time(lease.expires_at)
        );
        say!("token: {}", path.display());
    }

    pub fn returned(&self, seats: u32) {
        if self.json {
            return self.doc(json!({ "returned": seats }));
        }
        say!("returned {seats} seat(s)");
    }

    pub fn borrows(&self, borrows: &[(crate::borrow::StoredBorrow, crate::Verdict)]) {
        if self.json {
            let list: Vec<Value> = borrows
                .iter()
                .map(|(b, verdict)| match &b.claims {
                    Some(c) => json!({"feature": c.feature, "seats": c.seats, "expires_at": time(c.expires_at),
                        "server_id": c.server_id, "valid": verdict.valid, "reason": verdict.reason,
                        "file": b.path.display().to_string()}),
                    None => json!({"feature": null, "seats": 0, "expires_at": null, "server_id": null,
                        "valid": false, "reason": verdict.reason, "file": b.path.display().to_string()}),
                })
                .collect();
            return self.doc(json!({ "borrows": list }));
        }
        if borrows.is_empty() {
            say!("no borrows on this machine");
            return;
        }
        let rows = borrows
            .iter()
            .map(|(b, verdict)| {
                let (feature, seats, expires) = match &b.claims {
                    Some(c) => (c.feature.clone(), c.seats.to_string(), time(c.expires_at)),
                    None => (b.path.display().to_string(), "?".into(), "?".into()),
                };
                vec![
                    feature,
                    seats,
                    expires,
                    if verdict.valid {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                    verdict.reason.clone(),
                ]
            })
            .collect();
        table(&["feature", "seats", "expires_at", "valid", "reason"], rows);
    }

    pub fn verdict(&self, verdict: &crate::Verdict) {
        if self.json {
            return self.doc(json!({"valid": verdict.valid, "reason": verdict.reason,
                "checked": verdict.checked.as_str()}));
        }
        say!(
            "{}: {}",
            if verdict.valid { "valid" } else { "not valid" },
            verdict.reason
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped() {
        assert_eq!(clean("node-7.studio"), "node-7.studio");
        assert!(matches!(clean("plain"), Cow::Borrowed(_)));
        assert_eq!(
            clean("evil\u{1b}[2J\u{1b}]0;x\u{7}\r\nrow"),
            "evil\\x1b[2J\\x1b]0;x\\x07\\r\\nrow"
        );
        assert_eq!(clean("a\u{9b}31mb"), "a\\x9b31mb");
        assert_eq!(clean("txt\u{202e}exe.doc"), "txt\\u{202e}exe.doc");
        assert_eq!(clean("tab\there"), "tab\\there");
        assert_eq!(clean("é ✓ 名"), "é ✓ 名");
    }

    /// `server info` names the node, its role, the epoch and the leader only on a cluster;
    /// a single node's document has its eight fields, the listen address and ttl among them.
    #[test]
    fn server_info_adds_the_cluster_fields_on_a_cluster() {
        use tally_protocol::{ClusterInfo, NodeRole};
        let single = ServerInfo {
            id: "s".into(),
            version: "0.1.0".into(),
            protocol: 1,
            store: "sqlite".into(),
            uptime_secs: 5,
            connections: 2,
            cluster: None,
            listen: "0.0.0.0:27010".into(),
            lease_ttl_ms: 60_000,
        };
        let doc = server_info_json(&single);
        let keys: Vec<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "id",
                "version",
                "protocol",
                "store",
                "uptime_secs",
                "connections",
                "listen",
                "lease_ttl_ms"
            ]
        );
        assert_eq!(doc["listen"], "0.0.0.0:27010");
        assert_eq!(doc["lease_ttl_ms"], 60_000);
        let standby = ServerInfo {
            store: "postgres".into(),
            cluster: Some(ClusterInfo {
                node: "n2".into(),
                role: NodeRole::Standby,
                epoch: 4,
                leader: Some("lic1.studio.lan:27010".into()),
            }),
            ..single
        };
        let doc = server_info_json(&standby);
        assert_eq!(doc["node"], "n2");
        assert_eq!(doc["role"], "standby");
        assert_eq!(doc["epoch"], 4);
        assert_eq!(doc["leader"], "lic1.studio.lan:27010");
        let mut electing = standby;
        electing.cluster.as_mut().unwrap().leader = None;
        assert!(server_info_json(&electing)["leader"].is_null());
    }

    #[test]
    fn nodes_list_their_last_heartbeat_as_an_rfc_3339_time() {
        let node = NodeInfo {
            id: "n1".into(),
            address: "[::1]:27010".into(),
            role: tally_protocol::NodeRole::Leader,
            epoch: 3,
            last_seen: 1_700_000_000_000,
        };
        assert_eq!(
            node_json(&node),
            json!({"id": "n1", "address": "[::1]:27010", "role": "leader", "epoch": 3,
                   "last_seen": "2023-11-14T22:13:20Z"})
        );
    }

    /// A document written an element at a time reads exactly as the one serialised whole,
    /// with lists nested in objects of the list (`status --all`) and empty lists too.
    #[test]
    fn a_streamed_document_reads_as_the_document_serialised_whole() {
        let written = |build: &dyn Fn(&mut JsonList<Vec<u8>>) -> std::io::Result<()>| {
            let mut list = JsonList::start_on(Vec::new(), "features").unwrap();
            build(&mut list).unwrap();
            String::from_utf8(list.end().unwrap()).unwrap()
        };
        assert_eq!(
            written(&|_| Ok(())),
            format!("{}\n", json!({"features": []}))
        );
        // Nothing is written before the first element or the end: a refused first page
        // leaves stdout to the error document.
        let mut list = JsonList::start_on(Vec::new(), "leases").unwrap();
        list.open_object(&json!({"feature": "vray"}), "holders")
            .unwrap();
        list.flush().unwrap();
        assert!(list.out.is_empty());
        let text = written(&|list| {
            list.item(&json!({"a": 1}))?;
            list.open_object(&json!({"feature": "vray", "total": 2}), "holders")?;
            list.item(&json!({"user": "ann"}))?;
            list.item(&json!({"user": "bob"}))?;
            list.close_object(&[("upcoming", json!([]))])?;
            list.open_object(&json!({}), "holders")?;
            list.close_object(&[])?;
            list.item(&"last")
        });
        let whole = json!({"features": [
            {"a": 1},
            {"feature": "vray", "total": 2, "holders": [{"user": "ann"}, {"user": "bob"}], "upcoming": []},
            {"holders": []},
            "last",
        ]});
        assert_eq!(text, format!("{whole}\n"));
    }

    #[test]
    fn csv_cells_that_a_spreadsheet_would_evaluate_are_neutralised() {
        for formula in [
            "=HYPERLINK(\"http://x\",\"y\")",
            "+1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            assert!(csv_cell(formula).starts_with('\''), "{formula:?}");
        }
        assert_eq!(csv_cell("\u{1b}[31m=1"), "\\x1b[31m=1");
        assert_eq!(csv_cell("=1\u{1b}"), "'=1\\x1b");
        assert_eq!(csv_cell("owner@localhost"), "owner@localhost");
        assert_eq!(
            csv_cell("2027-01-31T18:00:00.000Z"),
            "2027-01-31T18:00:00.000Z"
        );
    }
}
