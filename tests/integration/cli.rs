//! The `tally` and `tallyd` binaries as a user runs them: JSON documents, exit codes, and
//! the README's first five minutes.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

#[test]
fn usage_errors_exit_2_and_name_what_is_wrong() {
    // No server is needed: arguments are checked first.
    let cases: &[(&[&str], &str)] = &[
        (&["--json", "checkout", "Bad Name"], "Bad Name"),
        (
            &[
                "--json",
                "entitlement",
                "add",
                "vray",
                "--seats",
                "3",
                "--max-borrow",
                "ten",
            ],
            "\"ten\" is not a duration",
        ),
        (
            &["--json", "entitlement", "add", "vray", "--seats", "0"],
            "--seats",
        ),
        (
            &[
                "--json",
                "entitlement",
                "add",
                "vray",
                "--seats",
                "1",
                "--expires",
                "tomorrow",
            ],
            "\"tomorrow\" is not a time",
        ),
        (&["--json", "release", "xyz"], "\"xyz\" is not an id"),
        (
            &["--json", "entitlement", "remove", "abc"],
            "not an entitlement id",
        ),
        (&["--json", "frobnicate"], "frobnicate"),
        (&["--json", "checkout", "vray", "--seats", "many"], "many"),
    ];
    for (args, needle) in cases {
        let out = cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let doc = stdout_json(&out);
        assert_eq!(doc["error"]["code"], "invalid", "{args:?}");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{args:?}: {message:?} does not mention {needle:?}"
        );
    }
    // Without --json the message goes to stderr.
    let out = cli(&["checkout", "Bad Name"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Bad Name"));
    assert!(out.stdout.is_empty());
}

#[test]
fn no_reachable_server_exits_5() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, rcgen_free_ca()).unwrap();
    let port = free_port().to_string();
    let server = format!("127.0.0.1:{port}");
    let out = cli(&[
        "--json",
        "--server",
        &server,
        "--ca",
        ca.to_str().unwrap(),
        "--token",
        "t",
        "status",
    ]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let doc = stdout_json(&out);
    assert!(doc["error"]["message"].as_str().unwrap().contains(&server));
}

/// Any well-formed CA certificate will do for a client that never gets to TLS.
fn rcgen_free_ca() -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(
        "127.0.0.1:1".parse().unwrap(),
        dir.path(),
        Duration::from_secs(60),
        Duration::from_secs(5),
    );
    let data = tally_server::init::prepare_data_dir(&config).unwrap();
    tally_server::init::ensure_certificates(&config, &data).unwrap();
    std::fs::read_to_string(data.ca_cert()).unwrap()
}

#[tokio::test]
async fn the_readme_tour_works_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();

    let out = cli(&[
        "--config",
        config,
        "--json",
        "entitlement",
        "add",
        "vray",
        "--seats",
        "100",
        "--ref",
        "PO-7",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc = stdout_json(&out);
    let keys: Vec<&String> = doc["entitlement"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "id",
            "feature",
            "seats",
            "starts_at",
            "expires_at",
            "kind",
            "borrowable",
            "max_borrow_secs",
            "reference"
        ]
    );
    assert_eq!(doc["entitlement"]["max_borrow_secs"], 168 * 3600);
    assert_eq!(doc["entitlement"]["reference"], "PO-7");

    let out = cli(&["--config", config, "--json", "status"]);
    let doc = stdout_json(&out);
    assert_eq!(
        doc,
        serde_json::json!({"features": [{"feature": "vray", "total": 100, "assigned": 0, "floating": 100,
            "in_use": 0, "borrowed": 0, "available": 100, "queued": 0}]})
    );

    // `checkout -- CMD` holds a seat while the command runs and exits with its status.
    let mut held = Command::new(CLI)
        .args([
            "--config",
            config,
            "checkout",
            "vray",
            "--",
            "sh",
            "-c",
            "sleep 3; exit 7",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = false;
    for _ in 0..100 {
        let doc = stdout_json(&cli(&["--config", config, "--json", "status", "vray"]));
        if doc["features"][0]["in_use"] == 1 {
            seen = true;
            let leases = stdout_json(&cli(&["--config", config, "--json", "leases"]));
            let lease = &leases["leases"][0];
            let keys: Vec<&String> = lease.as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                [
                    "id",
                    "feature",
                    "seats",
                    "user",
                    "host",
                    "kind",
                    "source",
                    "granted_at",
                    "expires_at"
                ]
            );
            assert_eq!(lease["kind"], "online");
            assert_eq!(lease["source"], "floating");
            assert!(lease["granted_at"].as_str().unwrap().ends_with('Z'));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen, "in_use never showed 1");
    let status = held.wait().unwrap();
    assert_eq!(status.code(), Some(7));
    let doc = stdout_json(&cli(&["--config", config, "--json", "status", "vray"]));
    assert_eq!(doc["features"][0]["in_use"], 0, "the seat was freed");

    // No seat: exit 3. Unknown feature: exit 1.
    let out = cli(&[
        "--config", config, "--json", "checkout", "vray", "--seats", "101", "--", "true",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout_json(&out)["error"]["code"], "no_seat");
    let out = cli(&["--config", config, "--json", "status", "maya"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["error"]["code"], "not_found");

    // A bad token: exit 4.
    let out = cli(&["--config", config, "--json", "--token", "nope", "status"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(stdout_json(&out)["error"]["code"], "unauthenticated");

    let doc = stdout_json(&cli(&["--config", config, "--json", "server", "info"]));
    assert_eq!(doc["server"]["store"], "sqlite");
    assert_eq!(doc["server"]["protocol"], 1);

    let doc = stdout_json(&cli(&["--config", config, "--json", "entitlement", "list"]));
    let id = doc["entitlements"][0]["id"].as_u64().unwrap().to_string();
    let out = cli(&["--config", config, "--json", "entitlement", "remove", &id]);
    assert_eq!(
        stdout_json(&out),
        serde_json::json!({"removed": id.parse::<u64>().unwrap()})
    );
}

#[tokio::test]
async fn release_by_an_admin_frees_the_seat() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    cli(&[
        "--config",
        config,
        "entitlement",
        "add",
        "nuke",
        "--seats",
        "1",
    ]);
    let client = tally_client::Client::connect(daemon.client_config())
        .await
        .unwrap();
    let lease = client.checkout("nuke", 1).await.unwrap();
    let id = lease.id().to_string();
    let out = cli(&["--config", config, "--json", "release", &id]);
    assert_eq!(stdout_json(&out), serde_json::json!({"released": id}));
    let out = cli(&["--config", config, "--json", "release", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["error"]["code"], "not_found");
    let doc = stdout_json(&cli(&["--config", config, "--json", "status", "nuke"]));
    assert_eq!(doc["features"][0]["available"], 1);
}

#[test]
fn check_config_names_the_problem_and_owner_token_mints_a_working_token() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:1\"\n[leases]\nttl = \"0s\"\n").unwrap();
    let out = Command::new(DAEMON)
        .args(["check-config", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("leases.ttl"),
        "{out:?}"
    );
    std::fs::write(&bad, "listen = \"127.0.0.1:1\"\nverbose = true\n").unwrap();
    let out = Command::new(DAEMON)
        .args(["check-config", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("verbose"),
        "{out:?}"
    );
    // The example as written, but for a data directory this user can make.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/tallyd.toml"
    ))
    .unwrap();
    let data_dir = format!(
        "data_dir = {:?}",
        dir.path().join("data").display().to_string()
    );
    let example = example.replace("data_dir = \"/var/lib/tally\"", &data_dir);
    assert!(example.contains(&data_dir));
    std::fs::write(&bad, example).unwrap();
    let out = Command::new(DAEMON)
        .args(["check-config", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let run = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(run.path(), "30s", "1s");
    let out = Command::new(DAEMON)
        .args([
            "owner-token",
            "--config",
            daemon.config_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(token.len(), 64);
    let config = daemon.client_toml();
    let out = cli(&[
        "--config",
        config.to_str().unwrap(),
        "--token",
        &token,
        "--json",
        "status",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[tokio::test]
async fn the_admin_tour_prints_the_documents_of_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| cli_json(config, args);
    run(&["entitlement", "add", "vray", "--seats", "10"]);

    let (code, doc) = run(&["user", "add", "ana@studio.com", "--name", "Ana Lima"]);
    assert_eq!(code, Some(0));
    let keys: Vec<&String> = doc["user"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["username", "name", "role", "state"]);
    assert_eq!(doc["user"]["role"], "member");
    let token = doc["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);

    let (_, doc) = run(&["assign", "ana@studio.com", "vray", "--seats", "2"]);
    let keys: Vec<&String> = doc["assignment"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "id",
            "user",
            "feature",
            "seats",
            "entitlement",
            "expires_at"
        ]
    );
    assert_eq!(doc["assignment"]["seats"], 2);

    let (_, doc) = run(&["user", "list"]);
    let ana = doc["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "ana@studio.com")
        .unwrap();
    let keys: Vec<&String> = ana.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["username", "name", "role", "state", "assigned_seats"]
    );
    assert_eq!(ana["assigned_seats"], 2);

    let (_, doc) = run(&["status", "vray"]);
    assert_eq!(doc["features"][0]["assigned"], 2);
    assert_eq!(doc["features"][0]["floating"], 8);

    // Ana signs in with her own token and sees what is hers.
    let out = cli(&["--config", config, "--token", &token, "--json", "whoami"]);
    let doc = stdout_json(&out);
    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["user", "assignments", "leases"]);
    assert_eq!(doc["user"]["username"], "ana@studio.com");
    assert_eq!(doc["assignments"][0]["seats"], 2);
    // and may not manage anyone: exit 4, forbidden.
    let out = cli(&[
        "--config", config, "--token", &token, "--json", "user", "list",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(stdout_json(&out)["error"]["code"], "forbidden");

    let (code, doc) = run(&["revoke", "ana@studio.com", "vray", "--seats", "1"]);
    assert_eq!((code, doc), (Some(0), serde_json::json!({"revoked": 1})));
    let (_, doc) = run(&["user", "token", "ana@studio.com"]);
    assert_eq!(doc["token"].as_str().unwrap().len(), 64);
    let (code, doc) = run(&["user", "remove", "ana@studio.com"]);
    assert_eq!(code, Some(1));
    assert_eq!(doc["error"]["code"], "has_assignments");
    let (_, doc) = run(&["user", "deactivate", "ana@studio.com"]);
    assert_eq!(doc["user"]["state"], "deactivated");
    let (_, doc) = run(&["user", "activate", "ana@studio.com"]);
    assert_eq!(doc["user"]["state"], "active");

    let (_, doc) = run(&["audit", "--user", "ana@studio.com", "--limit", "3"]);
    let events = doc["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    let keys: Vec<&String> = events[0].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["at", "actor", "action", "subject", "feature", "outcome", "reason"]
    );
    assert_eq!(events[0]["action"], "user_activate");

    let out = cli(&["--config", config, "audit", "--csv", "--feature", "vray"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("at,actor,action,subject,feature,outcome,reason")
    );
    let rows: Vec<&str> = lines.collect();
    assert!(
        rows.iter()
            .any(|r| r.contains(",assign,ana@studio.com,vray,ok,\"2 seat(s), entitlement 1\"")),
        "{text}"
    );

    // Bad arguments are usage errors, before any request.
    let out = cli(&["--config", config, "--json", "user", "add", "not-an-email"]);
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&[
        "--config", config, "--json", "user", "add", "x@y.z", "--role", "king",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout_json(&out)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("king"));
}

/// `checkout F -- CMD` whose command cannot start gives the seat back at once and exits as
/// a shell does: 127 when the command is not found, 126 when it cannot be executed; with
/// `--json` stdout holds exactly one document, the error, naming the command.
#[test]
fn a_command_that_cannot_start_gives_the_seat_back_and_exits_127_or_126() {
    let dir = tempfile::tempdir().unwrap();
    // A long ttl: a seat kept by mistake would still show as in use.
    let daemon = DaemonProcess::start(dir.path(), "60s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let out = cli(&[
        "--config",
        config,
        "entitlement",
        "add",
        "vray",
        "--seats",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let not_executable = dir.path().join("render.sh");
    std::fs::write(&not_executable, "#!/bin/sh\nexit 0\n").unwrap();
    let not_executable = not_executable.to_str().unwrap();
    let missing = dir.path().join("no-such-renderer");
    let missing = missing.to_str().unwrap();
    let cases = [
        (missing, 127, "command_not_found"),
        ("no-such-renderer-on-the-path", 127, "command_not_found"),
        (not_executable, 126, "command_not_executable"),
    ];
    for (command, exit, code) in cases {
        let out = cli(&[
            "--config", config, "--json", "checkout", "vray", "--", command, "--frame", "1",
        ]);
        assert_eq!(out.status.code(), Some(exit), "{command}: {out:?}");
        let stdout = String::from_utf8(out.stdout.clone()).unwrap();
        assert_eq!(stdout.lines().count(), 1, "one document: {stdout:?}");
        let doc = stdout_json(&out);
        assert_eq!(doc["error"]["code"], code, "{doc}");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(message.contains(command), "{message:?} names {command:?}");
        let status = stdout_json(&cli(&["--config", config, "--json", "status", "vray"]));
        assert_eq!(
            status["features"][0]["in_use"], 0,
            "{command}: the seat was given back at once"
        );
        // Without --json: the same exit status, the reason on stderr, nothing on stdout.
        let out = cli(&["--config", config, "checkout", "vray", "--", command]);
        assert_eq!(out.status.code(), Some(exit), "{command}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(command));
    }
    // A script whose interpreter is missing looks runnable, so the grant is printed
    // before the start fails: still one document, the reason on stderr, the seat freed.
    let bad_interpreter = dir.path().join("render-py");
    std::fs::write(&bad_interpreter, "#!/nonexistent/python\n").unwrap();
    std::fs::set_permissions(
        &bad_interpreter,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let bad_interpreter = bad_interpreter.to_str().unwrap();
    let out = cli(&[
        "--config",
        config,
        "--json",
        "checkout",
        "vray",
        "--",
        bad_interpreter,
    ]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one document: {stdout:?}");
    assert!(stdout_json(&out)["lease"]["id"].is_string());
    assert!(String::from_utf8_lossy(&out.stderr).contains(bad_interpreter));
    let status = stdout_json(&cli(&["--config", config, "--json", "status", "vray"]));
    assert_eq!(
        status["features"][0]["in_use"], 0,
        "the seat was given back"
    );
    // The seat is free for a command that does start.
    let out = cli(&["--config", config, "checkout", "vray", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// The command run by `checkout -- CMD` does not inherit `TALLY_TOKEN`, and a token on
/// the command line draws one warning (it is visible to other local users) while one from
/// the environment draws none.
#[test]
fn the_token_stays_out_of_the_child_and_a_token_on_the_command_line_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let token = std::fs::read_to_string(daemon.data_dir.join("owner.token"))
        .unwrap()
        .trim()
        .to_string();
    let out = cli(&[
        "--config",
        config,
        "entitlement",
        "add",
        "vray",
        "--seats",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let tally = |args: &[&str]| {
        Command::new(CLI)
            .args(args)
            .env_remove("TALLY_CONFIG")
            .env("HOME", "/nonexistent")
            .env("TALLY_TOKEN", &token)
            .env("TALLY_OTHER", "kept")
            .output()
            .unwrap()
    };
    let show = r#"printf '%s|%s' "${TALLY_TOKEN-unset}" "${TALLY_OTHER-unset}""#;
    let out = tally(&[
        "--config", config, "checkout", "vray", "--", "sh", "-c", show,
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "unset|kept");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("--token"), "{stderr}");

    let out = tally(&[
        "--config", config, "--token", &token, "--json", "checkout", "vray", "--", "sh", "-c", show,
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.ends_with("unset|kept"), "{stdout}");
    assert!(!stdout.contains(&token));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr
            .matches("warning: a token given with --token")
            .count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("--token-file"), "{stderr}");
}

/// Strings a peer chose (a client's host name, a refused feature name) reach an admin's
/// terminal escaped in tables, and CSV cells that a spreadsheet would evaluate are
/// neutralised; JSON keeps them exact.
#[tokio::test]
async fn peer_text_is_escaped_for_terminals_and_neutralised_in_csv() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let owner = tally_client::Client::connect(daemon.client_config())
        .await
        .unwrap();
    add_entitlement(&owner, "vray", 5, None).await;
    let ca = std::fs::read(daemon.data_dir.join("tls/ca.pem")).unwrap();
    let token = std::fs::read_to_string(daemon.data_dir.join("owner.token"))
        .unwrap()
        .trim()
        .to_string();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], daemon.port).into();
    // Clears the screen, then writes a forged row.
    let host = "\u{1b}[2J\u{1b}[Hrender-01  vray  1  ceo@studio";
    let mut raw = RawConn::signed_in_to(addr, &ca, &token, host)
        .await
        .unwrap();
    let formula = "=HYPERLINK(\"http://evil.example\",\"click\")";
    for (id, feature) in [(1, "vray"), (2, formula), (3, "+cmd|' /C calc'!A0")] {
        let answer = raw
            .request(
                id,
                tally_protocol::Request::Checkout(tally_protocol::Checkout {
                    request_id: tally_protocol::RequestId(rand::random()),
                    feature: feature.into(),
                    seats: 1,
                }),
            )
            .await;
        assert!(
            matches!(answer, tally_protocol::ServerMessage::Response { .. }),
            "{answer:?}"
        );
    }
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();

    let out = cli(&["--config", config, "leases"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!out.stdout.contains(&0x1b), "raw ESC in {out:?}");
    // The server keeps no control character of what a peer says of itself (PostgreSQL's
    // text could not even hold a NUL): each is stored as U+FFFD.
    let stored = "\u{FFFD}[2J\u{FFFD}[Hrender-01  vray  1  ceo@studio";
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains(stored), "{table}");
    let doc = stdout_json(&cli(&["--config", config, "--json", "leases"]));
    assert_eq!(
        doc["leases"][0]["host"], stored,
        "JSON shows what is stored"
    );

    let out = cli(&["--config", config, "audit"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!out.stdout.contains(&0x1b), "raw ESC in {out:?}");

    let out = cli(&["--config", config, "audit", "--csv"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!out.stdout.contains(&0x1b), "raw ESC in {out:?}");
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    let mut cells = Vec::new();
    for record in reader.records() {
        cells.extend(record.unwrap().iter().map(str::to_string));
    }
    for cell in &cells {
        assert!(
            !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
            "a cell a spreadsheet would evaluate: {cell:?}"
        );
    }
    assert!(
        cells.iter().any(|c| c == &format!("'{formula}")),
        "the refused feature, neutralised: {cells:?}"
    );
}

#[tokio::test]
async fn user_token_tokens_and_revoke_print_the_documents_of_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| cli_json(config, args);
    run(&["user", "add", "ana@studio.com"]);
    let (code, doc) = run(&["user", "token", "ana@studio.com", "--label", "laptop"]);
    assert_eq!(code, Some(0), "{doc}");
    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["token", "id"]);
    let id = doc["id"].as_str().unwrap().to_string();
    let token = doc["token"].as_str().unwrap().to_string();

    let (_, doc) = run(&["user", "tokens", "ana@studio.com"]);
    let list = doc["tokens"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let laptop = list.iter().find(|t| t["id"] == id.as_str()).unwrap();
    let keys: Vec<&String> = laptop.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["id", "label", "created_at", "last_used"]);
    assert_eq!(laptop["label"], "laptop");
    assert!(
        !doc.to_string().contains(&token),
        "a listing never shows a token"
    );

    let (code, doc) = run(&["user", "token", "revoke", &id]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["revoked"], id.as_str());
    let out = cli(&["--config", config, "--token", &token, "--json", "whoami"]);
    assert_eq!(out.status.code(), Some(4));
    let (code, doc) = run(&["user", "token", "revoke", &id]);
    assert_eq!(code, Some(1));
    assert_eq!(doc["error"]["code"], "not_found");
}
