//! Bulk administration from CSV files (SPEC §9, R19) through the `tally` binary against a
//! `tallyd` process: malformed files refused naming every bad line with nothing sent; a
//! well-formed file applied row by row with the refused rows reported; the tokens file;
//! failures files sent again; dry runs that store nothing; `user list --csv`; and the
//! admin-only rule.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::harness::*;
use crate::policy::user_config;

struct Site {
    dir: tempfile::TempDir,
    daemon: DaemonProcess,
    owner: PathBuf,
}

impl Site {
    fn start() -> Site {
        Self::start_with("")
    }

    fn start_with(extra: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let daemon = DaemonProcess::start_with(dir.path(), "30s", "1s", extra, Stdio::null());
        let owner = daemon.client_toml();
        Site { dir, daemon, owner }
    }

    /// A file in the site's directory holding `text`.
    fn file(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `tally --json ARGS` as the owner: exit code and document.
    fn owner(&self, args: &[&str]) -> (Option<i32>, Value) {
        let out = self.run(&self.owner, args, true);
        (out.status.code(), stdout_json(&out))
    }

    fn ok(&self, args: &[&str]) -> Value {
        let (code, doc) = self.owner(args);
        assert_eq!(code, Some(0), "{args:?}: {doc}");
        doc
    }

    fn run(&self, config: &Path, args: &[&str], json: bool) -> Output {
        let mut command = Command::new(CLI);
        command.args(["--config", config.to_str().unwrap()]);
        if json {
            command.arg("--json");
        }
        command
            .args(args)
            .env_remove("TALLY_CONFIG")
            .env("HOME", "/nonexistent")
            .output()
            .unwrap()
    }

    fn usernames(&self) -> Vec<String> {
        self.ok(&["user", "list"])["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_string())
            .collect()
    }

    fn member(&self, email: &str) -> PathBuf {
        let doc = self.ok(&["user", "add", email]);
        let token = doc["token"].as_str().unwrap();
        user_config(&self.daemon, email.split('@').next().unwrap(), token)
    }
}

/// The lines a refused file names, from the JSON error's `lines`, after checking that the
/// refusal is a usage error.
fn bad_lines(result: (Option<i32>, Value)) -> Vec<(u64, String)> {
    let (code, doc) = result;
    assert_eq!(code, Some(2), "{doc}");
    assert_eq!(doc["error"]["code"], "invalid", "{doc}");
    doc["error"]["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no lines: {doc}"))
        .iter()
        .map(|l| {
            (
                l["line"].as_u64().unwrap(),
                l["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `(line, email, code)` of each failed row of a bulk answer.
fn failed(doc: &Value) -> Vec<(u64, String, String)> {
    doc["failed"]
        .as_array()
        .unwrap_or_else(|| panic!("no failed: {doc}"))
        .iter()
        .map(|f| {
            (
                f["line"].as_u64().unwrap(),
                f["email"].as_str().unwrap().to_string(),
                f["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

#[test]
fn templates_print_each_header_without_a_server() {
    for (args, header) in [
        (&["user", "import", "--template"][..], "email,role,name"),
        (&["user", "remove", "--template"], "email"),
        (&["user", "deactivate", "--template"], "email"),
        (&["assign", "--template"], "email,feature,seats,entitlement"),
        (&["revoke", "--template"], "email,feature,seats"),
    ] {
        let out = cli(&[&["--server", "127.0.0.1:1"], args].concat());
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), header);
    }
}

/// Every kind of malformed line is named with its line number and what is wrong, and
/// nothing is sent.
#[test]
fn malformed_files_are_refused_naming_every_bad_line() {
    let site = Site::start();
    let before = site.usernames();
    let header = site.file("header.csv", "email,rol,name\na@x.org,member,A\n");
    let lines = bad_lines(site.owner(&["user", "import", header.to_str().unwrap()]));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].0, 1);
    assert!(lines[0].1.contains("unknown column \"rol\""), "{lines:?}");
    let missing = site.file("missing.csv", "name,role\nA,member\n");
    let lines = bad_lines(site.owner(&["user", "import", missing.to_str().unwrap()]));
    assert!(lines[0].1.contains("no email column"), "{lines:?}");
    let twice = site.file("twice.csv", "email,name,email\n");
    let lines = bad_lines(site.owner(&["user", "import", twice.to_str().unwrap()]));
    assert!(lines[0].1.contains("twice"), "{lines:?}");

    let mut import = b"email,role,name\n".to_vec();
    import.extend_from_slice(b"ok@x.org,member,Ok\n"); // 2
    import.extend_from_slice(b"too@x.org,member,Too,many\n"); // 3: count
    import.extend_from_slice(b"utf@x.org,member,\xff\xfe\n"); // 4: UTF-8
    import.extend_from_slice(b"not an email,member,N\n"); // 5: email
    import.extend_from_slice(b"role@x.org,boss,R\n"); // 6: role
    import.extend_from_slice(b",member,Empty\n"); // 7: empty required cell
    import.extend_from_slice(b"fine@x.org,,Fine\n"); // 8
    let import = site.file("import.csv", import);
    let lines = bad_lines(site.owner(&["user", "import", import.to_str().unwrap()]));
    let numbers: Vec<u64> = lines.iter().map(|l| l.0).collect();
    assert_eq!(numbers, [3, 4, 5, 6, 7], "{lines:?}");
    assert!(
        lines[0].1.contains("4 column(s) where the header has 3"),
        "{lines:?}"
    );
    assert!(lines[1].1.contains("UTF-8"), "{lines:?}");
    assert!(lines[2].1.contains("e-mail"), "{lines:?}");
    assert!(lines[3].1.contains("not a role"), "{lines:?}");
    assert!(lines[4].1.contains("email cell is empty"), "{lines:?}");

    let assign = site.file(
        "assign.csv",
        "email,feature,seats,entitlement\n\
         a@x.org,maya,1,\n\
         b@x.org,bad feature,1,\n\
         c@x.org,maya,two,\n\
         d@x.org,maya,0,\n\
         e@x.org,maya,1,E-7\n\
         f@x.org,,1,\n",
    );
    let lines = bad_lines(site.owner(&["assign", "--csv", assign.to_str().unwrap()]));
    let numbers: Vec<u64> = lines.iter().map(|l| l.0).collect();
    assert_eq!(numbers, [3, 4, 5, 6, 7], "{lines:?}");
    assert!(lines[0].1.contains("feature"), "{lines:?}");
    assert!(lines[1].1.contains("whole number"), "{lines:?}");
    assert!(lines[2].1.contains("between 1"), "{lines:?}");
    assert!(lines[3].1.contains("entitlement id"), "{lines:?}");
    assert!(lines[4].1.contains("feature cell is empty"), "{lines:?}");

    // For people: the message, then one line per bad line, on stderr.
    let out = site.run(
        &site.owner,
        &["user", "import", import.to_str().unwrap()],
        false,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for line in [3, 4, 5, 6, 7] {
        assert!(err.contains(&format!("  line {line}: ")), "{err}");
    }
    assert!(out.stdout.is_empty());
    assert_eq!(site.usernames(), before);
}

/// A 10,000-row file with exactly three bad lines: exactly those three are named and
/// nothing is applied.
#[test]
fn ten_thousand_rows_with_three_bad_lines_are_refused_naming_exactly_those() {
    let site = Site::start();
    let before = site.usernames();
    let mut text = String::from("email,role,name\n");
    for i in 0..10_000 {
        let line = i + 2;
        match line {
            17 => text.push_str("no-at-sign,member,Bad\n"),
            5_003 => text.push_str(&format!("u{i}@x.org,root,Bad\n")),
            10_001 => text.push_str(&format!("u{i}@x.org,member\n")),
            _ => text.push_str(&format!("u{i}@x.org,member,User {i}\n")),
        }
    }
    let file = site.file("big.csv", text);
    let lines = bad_lines(site.owner(&["user", "import", file.to_str().unwrap()]));
    let numbers: Vec<u64> = lines.iter().map(|l| l.0).collect();
    assert_eq!(numbers, [17, 5_003, 10_001], "{lines:?}");
    assert_eq!(site.usernames(), before);
}

/// A well-formed 10,000-row import applies every row but the three the server refuses (a
/// duplicate in the file, an existing user, one past `users.max_active`), reports exactly
/// those, and writes the others' tokens to an owner-only file only, tokens that sign in.
#[test]
fn ten_thousand_row_import_applies_all_but_three_refusable_rows() {
    // The owner is not counted; old@x.org and 9,997 new users make 9,998.
    let site = Site::start_with("[users]\nmax_active = 9998\n");
    site.ok(&["user", "add", "old@x.org"]);
    let mut text = String::from("email,role,name\n");
    for i in 0..10_000 {
        let line = i + 2;
        match line {
            60 => text.push_str("u10@x.org,member,Again\n"),
            70 => text.push_str("old@x.org,admin,Old\n"),
            _ => text.push_str(&format!("u{i}@x.org,member,User {i}\n")),
        }
    }
    let file = site.file("big.csv", text);
    let tokens = site.path("tokens.csv");
    let started = std::time::Instant::now();
    let out = site.run(
        &site.owner,
        &[
            "user",
            "import",
            file.to_str().unwrap(),
            "--tokens",
            tokens.to_str().unwrap(),
        ],
        true,
    );
    let elapsed = started.elapsed();
    let doc = stdout_json(&out);
    assert_eq!(out.status.code(), Some(1), "{doc}");
    assert_eq!(doc["applied"], 9_997, "{doc}");
    assert_eq!(
        failed(&doc),
        [
            (60, "u10@x.org".to_string(), "already_exists".to_string()),
            (70, "old@x.org".to_string(), "already_exists".to_string()),
            (10_001, "u9999@x.org".to_string(), "user_limit".to_string()),
        ],
        "{doc}"
    );
    // The answer is exactly {"applied", "failed"}: no token in it.
    assert_eq!(doc.as_object().unwrap().len(), 2, "{doc}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows = csv_rows(&tokens);
    assert_eq!(rows.len(), 9_997);
    for row in &rows {
        assert!(!stdout.contains(&row[2]), "a token reached stdout");
    }
    let meta = std::fs::metadata(&tokens).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        (rows[0][0].as_str(), rows[0][1].as_str()),
        ("2", "u0@x.org")
    );
    // A token from the file signs in as its user.
    let last = rows.last().unwrap();
    let config = user_config(&site.daemon, "last", &last[2]);
    let out = site.run(&config, &["whoami"], true);
    assert_eq!(stdout_json(&out)["user"]["username"], last[1].as_str());
    let count = site.ok(&["user", "list"])["users"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(count, 1 + 1 + 9_997);
    assert!(
        elapsed < std::time::Duration::from_secs(60),
        "10,000 rows took {elapsed:?}"
    );
}

/// Without --tokens the users are made with no token, and the output says how to mint one.
#[test]
fn an_import_without_tokens_makes_users_without_tokens() {
    let site = Site::start();
    let file = site.file("import.csv", "email\nann@x.org\nbob@x.org\n");
    let out = site.run(
        &site.owner,
        &["user", "import", file.to_str().unwrap()],
        false,
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 of 2 row(s) applied, 0 refused"), "{text}");
    assert!(text.contains("tally user token EMAIL"), "{text}");
    let tokens = site.ok(&["user", "tokens", "ann@x.org"]);
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 0, "{tokens}");
    let doc = site.ok(&["user", "token", "ann@x.org"]);
    assert!(doc["token"].as_str().is_some());
}

/// The tokens file is never written through a symbolic link nor over someone else's file,
/// and is checked before anything is sent.
#[test]
fn the_tokens_file_refuses_links_and_others_files() {
    let site = Site::start();
    let file = site.file("import.csv", "email\nann@x.org\n");
    let target = site.file("target", "keep");
    let link = site.path("link.csv");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (code, doc) = site.owner(&[
        "user",
        "import",
        file.to_str().unwrap(),
        "--tokens",
        link.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("symbolic link"),
        "{doc}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    if nix::unistd::geteuid().is_root() {
        let theirs = site.file("theirs.csv", "theirs");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let (code, doc) = site.owner(&[
            "user",
            "import",
            file.to_str().unwrap(),
            "--tokens",
            theirs.to_str().unwrap(),
        ]);
        assert_eq!(code, Some(2), "{doc}");
        assert!(
            doc["error"]["message"]
                .as_str()
                .unwrap()
                .contains("another user"),
            "{doc}"
        );
        assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "theirs");
        assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 65534);
    }
    // Nothing was sent.
    assert!(!site.usernames().contains(&"ann@x.org".to_string()));
}

/// A dry run reports what would happen, stores nothing and mints no token.
#[test]
fn a_dry_run_stores_nothing() {
    let site = Site::start_with("[users]\nmax_active = 2\n");
    site.ok(&["user", "add", "old@x.org"]);
    let before = site.usernames();
    let file = site.file(
        "import.csv",
        "email,role,name\nann@x.org,member,Ann\nold@x.org,member,Old\nbob@x.org,guest,Bob\n",
    );
    let tokens = site.path("tokens.csv");
    let (code, doc) = site.owner(&[
        "user",
        "import",
        file.to_str().unwrap(),
        "--dry-run",
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["applied"], 1, "{doc}");
    assert_eq!(
        failed(&doc),
        [
            (3, "old@x.org".into(), "already_exists".into()),
            (4, "bob@x.org".into(), "user_limit".into()),
        ]
    );
    assert_eq!(site.usernames(), before);
    assert!(!tokens.exists());
    // The same file for real gives the same outcome.
    let (_, real) = site.owner(&["user", "import", file.to_str().unwrap()]);
    assert_eq!(real, doc);
}

/// Remove, deactivate, assign and revoke files, each with rows the server refuses; a
/// failures file, fixed, applies when sent again.
#[test]
fn remove_deactivate_assign_and_revoke_files_report_their_refusals() {
    let site = Site::start();
    site.ok(&["entitlement", "add", "maya", "--seats", "3"]);
    let users = site.file(
        "users.csv",
        "email\nann@x.org\nbob@x.org\ncid@x.org\ndee@x.org\neve@x.org\n",
    );
    site.ok(&["user", "import", users.to_str().unwrap()]);

    let assign = site.file(
        "assign.csv",
        "email,feature,seats\nann@x.org,maya,1\nbob@x.org,maya,2\ncid@x.org,maya,1\nzed@x.org,maya,1\ndee@x.org,maya,\n",
    );
    let failures = site.path("assign-failures.csv");
    let (code, doc) = site.owner(&[
        "assign",
        "--csv",
        assign.to_str().unwrap(),
        "--failures",
        failures.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["applied"], 2, "{doc}");
    assert_eq!(
        failed(&doc),
        [
            (4, "cid@x.org".into(), "no_seat".into()),
            (5, "zed@x.org".into(), "not_found".into()),
            (6, "dee@x.org".into(), "no_seat".into()),
        ]
    );
    let rows = csv_rows(&failures);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0][..3], ["4", "cid@x.org", "no_seat"]);
    assert_eq!(rows[0][4..], ["maya", "1", ""]);
    // More seats, and the failures file without the unknown user, sent again.
    site.ok(&["entitlement", "add", "maya", "--seats", "2"]);
    let text = std::fs::read_to_string(&failures).unwrap();
    let fixed: Vec<&str> = text.lines().filter(|l| !l.contains("zed@")).collect();
    let fixed = site.file("fixed.csv", fixed.join("\n") + "\n");
    let doc = site.ok(&["assign", "--csv", fixed.to_str().unwrap()]);
    assert_eq!(doc["applied"], 2, "{doc}");
    assert_eq!(failed(&doc), []);

    let revoke = site.file(
        "revoke.csv",
        "email,feature,seats\nann@x.org,maya,\nbob@x.org,maya,1\neve@x.org,maya,1\n",
    );
    let (code, doc) = site.owner(&["revoke", "--csv", revoke.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["applied"], 2, "{doc}");
    assert_eq!(failed(&doc)[0].0, 4, "{doc}");
    assert_eq!(failed(&doc)[0].1, "eve@x.org", "{doc}");

    // bob keeps a seat: has_assignments; nobody@ does not exist.
    let remove = site.file("remove.csv", "email\nann@x.org\nbob@x.org\nnobody@x.org\n");
    let (code, doc) = site.owner(&["user", "remove", "--csv", remove.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["applied"], 1, "{doc}");
    assert_eq!(
        failed(&doc),
        [
            (3, "bob@x.org".into(), "has_assignments".into()),
            (4, "nobody@x.org".into(), "not_found".into()),
        ]
    );
    let deactivate = site.file("deactivate.csv", "email\ncid@x.org\nann@x.org\n");
    let (code, doc) = site.owner(&["user", "deactivate", "--csv", deactivate.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["applied"], 1, "{doc}");
    assert_eq!(failed(&doc), [(3, "ann@x.org".into(), "not_found".into())]);
    let list = site.ok(&["user", "list"]);
    let cid = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "cid@x.org")
        .unwrap();
    assert_eq!(cid["state"], "deactivated");

    // For people: the summary and a table of the failures.
    let out = site.run(
        &site.owner,
        &["user", "remove", "--csv", remove.to_str().unwrap()],
        false,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 of 3 row(s) applied, 3 refused"), "{text}");
    assert!(
        text.contains("LINE") && text.contains("has_assignments"),
        "{text}"
    );
}

/// `user list --csv` exports every user with last_seen, cells a spreadsheet would run
/// neutralised; what a file imported comes back out.
#[test]
fn user_list_csv_round_trip() {
    let site = Site::start();
    let file = site.file(
        "import.csv",
        "email,role,name\nann@x.org,admin,\"Ann, Jr.\"\nbob@x.org,guest,=SUM(A1)\n",
    );
    site.ok(&["user", "import", file.to_str().unwrap()]);
    let out = site.run(&site.owner, &["user", "list", "--csv"], false);
    assert_eq!(out.status.code(), Some(0));
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "email",
            "name",
            "role",
            "state",
            "assigned_seats",
            "last_seen"
        ]
    );
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    let row = |email: &str| rows.iter().find(|r| r[0] == email).unwrap().clone();
    assert_eq!(row("ann@x.org")[1..5], ["Ann, Jr.", "admin", "active", "0"]);
    assert_eq!(row("ann@x.org")[5], "");
    assert_eq!(row("bob@x.org")[1], "'=SUM(A1)");
    // The owner signed in: last_seen is an RFC 3339 UTC time.
    let owner = rows.iter().find(|r| r[2] == "owner").unwrap();
    assert!(
        owner[5].ends_with('Z') && owner[5].contains('T'),
        "{owner:?}"
    );
    // --csv and --json ask for two formats.
    let (code, _) = site.owner(&["user", "list", "--csv"]);
    assert_eq!(code, Some(2));
}

/// A member's bulk file is refused `forbidden`, and nothing of it applies.
#[test]
fn a_bulk_file_is_for_admins_only() {
    let site = Site::start();
    let member = site.member("mem@x.org");
    let before = site.usernames();
    let file = site.file("import.csv", "email\nann@x.org\n");
    let out = site.run(&member, &["user", "import", file.to_str().unwrap()], true);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(stdout_json(&out)["error"]["code"], "forbidden");
    let remove = site.file("remove.csv", "email\nmem@x.org\n");
    let out = site.run(
        &member,
        &[
            "user",
            "remove",
            "--csv",
            remove.to_str().unwrap(),
            "--dry-run",
        ],
        true,
    );
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(site.usernames(), before);
}
