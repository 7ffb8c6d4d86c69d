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
        (&["--json", "release", "xyz"], "\"xyz\" is not a lease id"),
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
            "in_use": 0, "borrowed": 0, "available": 100, "queued": 0, "reserved": 0}]})
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
        serde_json::json!({"removed": id.parse::<u64>().unwrap(), "ended": []})
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
    assert_eq!(stdout_json(&out), serde_json::json!({"released": [id]}));
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

    let (_, doc) = run(&["assignments", "--feature", "vray"]);
    assert_eq!(doc["assignments"][0]["user"], "ana@studio.com");
    assert_eq!(doc["assignments"][0]["suspended"], false);
    let (code, doc) = run(&["status", "--all"]);
    assert_eq!(code, Some(0));
    assert_eq!(doc["features"][0]["holders"], serde_json::json!([]));

    let (code, doc) = run(&["revoke", "ana@studio.com", "vray", "--seats", "1"]);
    assert_eq!(code, Some(0));
    assert_eq!(doc["revoked"], 1);
    assert_eq!(
        doc["totals"],
        serde_json::json!([{"feature": "vray", "seats": 1}])
    );
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

/// The keys of a JSON object, in order.
fn keys(doc: &serde_json::Value) -> Vec<&str> {
    doc.as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

/// Issue 11, item 6: `assignments` (admins see everyone's, members their own), `assign` and
/// `revoke` answering with the assignment touched and the user's totals, `user list` with
/// seats per feature, and `user remove` saying "removed".
#[tokio::test]
async fn assignments_and_the_answers_of_assign_and_revoke_show_who_has_what() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| cli_json(config, args);
    let text = |args: &[&str]| {
        let mut all = vec!["--config", config];
        all.extend_from_slice(args);
        let out = cli(&all);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["entitlement", "add", "vray", "--seats", "10"]);
    run(&["entitlement", "add", "nuke", "--seats", "5"]);
    let (_, doc) = run(&["user", "add", "ana@studio.com"]);
    let ana = doc["token"].as_str().unwrap().to_string();
    run(&["user", "add", "ben@studio.com"]);

    let (code, doc) = run(&["assign", "ana@studio.com", "vray", "--seats", "2"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(keys(&doc), ["assignment", "touched", "totals"]);
    assert_eq!(
        keys(&doc["assignment"]),
        [
            "id",
            "user",
            "feature",
            "seats",
            "entitlement",
            "expires_at"
        ]
    );
    assert_eq!(
        doc["totals"],
        serde_json::json!([{"feature": "vray", "seats": 2}])
    );
    let out = text(&["assign", "ana@studio.com", "nuke"]);
    assert!(
        out.contains("assigned 1 seat(s) of nuke to ana@studio.com"),
        "{out}"
    );
    assert!(
        out.contains("ana@studio.com now has nuke 1, vray 2 (3 seat(s) in all)"),
        "{out}"
    );
    let out = text(&[
        "assign",
        "ben@studio.com",
        "vray",
        "--from",
        "ana@studio.com",
    ]);
    assert!(
        out.contains("taken from ana@studio.com: assignment 1"),
        "{out}"
    );
    assert!(out.contains("now holds 1"), "{out}");

    let (_, doc) = run(&["assignments"]);
    let list = doc["assignments"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(
        keys(&list[0]),
        [
            "id",
            "user",
            "feature",
            "seats",
            "entitlement",
            "expires_at",
            "suspended"
        ]
    );
    let (_, doc) = run(&["assignments", "--feature", "vray"]);
    assert_eq!(doc["assignments"].as_array().unwrap().len(), 2);
    let out = text(&["assignments"]);
    assert!(
        out.contains("vray: 2 seat(s) assigned to 2 user(s)"),
        "{out}"
    );
    assert!(
        out.contains("nuke: 1 seat(s) assigned to 1 user(s)"),
        "{out}"
    );

    // Ana sees her own, and may not look at ben's.
    let mine = cli(&["--config", config, "--token", &ana, "--json", "assignments"]);
    assert_eq!(mine.status.code(), Some(0), "{mine:?}");
    let doc = stdout_json(&mine);
    let users: Vec<&str> = doc["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["ana@studio.com", "ana@studio.com"]);
    let out = cli(&[
        "--config",
        config,
        "--token",
        &ana,
        "--json",
        "assignments",
        "--user",
        "ben@studio.com",
    ]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let (code, doc) = run(&["assignments", "--user", "nobody@studio.com"]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &serde_json::json!("not_found"))
    );

    let out = text(&["user", "list"]);
    let line = out
        .lines()
        .find(|l| l.starts_with("ana@studio.com"))
        .unwrap();
    assert!(line.contains("2 (nuke 1, vray 1)"), "{out}");

    let (_, doc) = run(&["user", "deactivate", "ben@studio.com"]);
    assert_eq!(doc["user"]["state"], "deactivated");
    let (_, doc) = run(&["assignments", "--user", "ben@studio.com"]);
    assert_eq!(doc["assignments"][0]["suspended"], true);
    let out = text(&["assignments", "--user", "ben@studio.com"]);
    assert!(out.contains("suspended"), "{out}");

    let (code, doc) = run(&["revoke", "ben@studio.com", "vray"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["revoked"], 1);
    assert_eq!(doc["touched"][0]["seats"], 0, "the assignment ended");
    assert_eq!(doc["totals"], serde_json::json!([]));
    let out = text(&["revoke", "ana@studio.com", "vray"]);
    assert!(
        out.contains("revoked 1 seat(s) of vray from ana@studio.com"),
        "{out}"
    );
    assert!(out.contains("ended"), "{out}");
    assert!(
        out.contains("ana@studio.com now has nuke 1 (1 seat(s) in all)"),
        "{out}"
    );

    let out = text(&["user", "remove", "ben@studio.com"]);
    assert_eq!(out.trim(), "removed ben@studio.com (member)");
}

/// Issue 11, item 6: `status --all`, the `lmstat -a` view, shows each feature's holders
/// (user, host, program, pid, address, since), and `status` and `entitlement list` show
/// entitlements not yet started, with their start.
#[tokio::test]
async fn status_all_shows_the_holders_and_what_starts_later() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config_path = daemon.client_toml();
    let config = config_path.to_str().unwrap();
    let run = |args: &[&str]| cli_json(config, args);
    run(&["entitlement", "add", "vray", "--seats", "2"]);
    run(&[
        "entitlement",
        "add",
        "nuke",
        "--seats",
        "5",
        "--starts",
        "2099-01-01",
    ]);
    let (mut holder, lease) = spawn_holder(&config_path, "vray");

    let (code, doc) = run(&["status", "--all"]);
    assert_eq!(code, Some(0), "{doc}");
    let features = doc["features"].as_array().unwrap();
    let vray = features.iter().find(|f| f["feature"] == "vray").unwrap();
    assert_eq!(vray["in_use"], 1);
    let held = &vray["holders"][0];
    assert_eq!(
        keys(held),
        ["lease", "user", "host", "program", "pid", "address", "since", "seats", "kind"]
    );
    assert_eq!(held["lease"], lease.to_string());
    assert_eq!(held["user"], "owner@localhost");
    assert_eq!(held["pid"], holder.id());
    assert_eq!(held["address"], "127.0.0.1");
    assert!(
        held["program"].as_str().unwrap().contains("tally"),
        "{held}"
    );
    assert!(held["since"].as_str().unwrap().ends_with('Z'));
    let nuke = features.iter().find(|f| f["feature"] == "nuke").unwrap();
    assert_eq!(nuke["total"], 0);
    assert_eq!(nuke["holders"], serde_json::json!([]));
    assert_eq!(nuke["upcoming"][0]["starts_at"], "2099-01-01T00:00:00Z");

    let out = cli(&["--config", config, "status", "-a"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("vray: 2 total, 0 assigned, 2 floating, 1 in use"),
        "{text}"
    );
    let id = lease.to_string();
    let short = format!("{}...{}", &id[..8], &id[28..]);
    let row = text.lines().find(|l| l.contains(&short)).expect(&text);
    assert!(row.starts_with("  owner@localhost"), "{text}");
    assert!(
        row.contains(&holder.id().to_string()) && row.contains("127.0.0.1"),
        "{text}"
    );
    assert!(
        text.contains("  not started yet: 5 seat(s) from 2099-01-01T00:00:00Z"),
        "{text}"
    );
    assert!(text.contains("  no holders"), "{text}");

    // `status` keeps the spec's document; people also see what starts later.
    let (_, doc) = run(&["status"]);
    assert_eq!(keys(&doc), ["features"]);
    let out = cli(&["--config", config, "status"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("not started yet:"), "{text}");
    assert!(
        text.contains("nuke: 5 seat(s) from 2099-01-01T00:00:00Z"),
        "{text}"
    );
    let out = cli(&["--config", config, "entitlement", "list"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let row = text.lines().find(|l| l.contains("nuke")).expect(&text);
    assert!(
        row.contains("not started") && row.contains("2099-01-01T00:00:00Z"),
        "{text}"
    );

    // The abbreviated id of the listing releases the lease, as written.
    let (code, doc) = run(&["release", &short]);
    assert_eq!(
        (code, doc),
        (Some(0), serde_json::json!({"released": [id]}))
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
}

/// Issue 11, item 7: `entitlement update` renews and corrects, refusing with the figures a
/// change that would end leases unless --force, which ends the newest and lists them;
/// `entitlement remove` likewise.
#[tokio::test]
async fn entitlement_update_and_remove_end_leases_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config_path = daemon.client_toml();
    let config = config_path.to_str().unwrap();
    let run = |args: &[&str]| cli_json(config, args);
    let (_, doc) = run(&[
        "entitlement",
        "add",
        "vray",
        "--seats",
        "2",
        "--ref",
        "PO-1",
    ]);
    let id = doc["entitlement"]["id"].as_u64().unwrap().to_string();
    let (mut first, _) = spawn_holder(&config_path, "vray");
    std::thread::sleep(Duration::from_millis(20));
    let (mut second, newest) = spawn_holder(&config_path, "vray");

    let (code, doc) = run(&["entitlement", "update", &id, "--seats", "1"]);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["error"]["code"], "invalid");
    let message = doc["error"]["message"].as_str().unwrap();
    for figure in [
        "1 seat(s)",
        "2 floating seat(s) are in use",
        "end 1 lease(s)",
        "--force",
    ] {
        assert!(message.contains(figure), "{figure}: {message}");
    }
    let (_, doc) = run(&["status", "vray"]);
    assert_eq!(doc["features"][0]["total"], 2, "nothing changed");

    let (code, doc) = run(&["entitlement", "update", &id, "--seats", "1", "--force"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(keys(&doc), ["entitlement", "ended"]);
    assert_eq!(doc["entitlement"]["seats"], 1);
    assert_eq!(doc["ended"], serde_json::json!([newest.to_string()]));

    // A renewal: more seats, no end, a new order number, borrowable.
    let out = cli(&[
        "--config",
        config,
        "entitlement",
        "update",
        &id,
        "--seats",
        "4",
        "--expires",
        "never",
        "--ref",
        "PO-2",
        "--borrowable",
        "--max-borrow",
        "3d",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("updated entitlement 1: 4 seat(s) of vray"),
        "{text}"
    );
    assert!(
        text.contains("until never, borrowable for up to 3days"),
        "{text}"
    );
    let (_, doc) = run(&["entitlement", "list"]);
    let e = &doc["entitlements"][0];
    assert_eq!(
        (e["seats"].as_u64(), e["reference"].as_str()),
        (Some(4), Some("PO-2"))
    );
    assert!(e["expires_at"].is_null());
    assert_eq!(e["max_borrow_secs"], 3 * 86_400);
    let (code, doc) = run(&["entitlement", "update", &id, "--expires", "2020-01-01"]);
    assert_eq!(code, Some(1));
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("remove it"),
        "{doc}"
    );
    let (_, doc) = run(&["audit", "--limit", "20"]);
    assert!(
        doc["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "entitlement_update"
                && e["reason"]
                    .as_str()
                    .unwrap()
                    .contains("reference from \"PO-1\" to \"PO-2\"")),
        "{doc}"
    );

    // Removing it would end the remaining lease: refused, then forced.
    let (_, doc) = run(&["leases"]);
    let left = doc["leases"][0]["id"].as_str().unwrap().to_string();
    let (code, doc) = run(&["entitlement", "remove", &id]);
    assert_eq!(code, Some(1), "{doc}");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("would end 1 lease(s)") && message.contains(&left),
        "{message}"
    );
    let (code, doc) = run(&["entitlement", "remove", &id, "--force"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(
        doc,
        serde_json::json!({"removed": id.parse::<u64>().unwrap(), "ended": [left]})
    );
    for child in [&mut first, &mut second] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Issue 11, item 7: `release` takes a unique id prefix (an ambiguous one is refused
/// naming the candidates), or `--user`/`--host` like `lmremove`; online leases only.
#[tokio::test]
async fn release_takes_a_prefix_or_a_user_or_host() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| cli_json(config, args);
    run(&["entitlement", "add", "vray", "--seats", "20"]);
    run(&["entitlement", "add", "nuke", "--seats", "20"]);
    let client = tally_client::Client::connect(daemon.client_config())
        .await
        .unwrap();
    let mut held = Vec::new();
    for feature in ["vray", "vray", "nuke", "nuke", "nuke"] {
        held.push(client.checkout(feature, 1).await.unwrap());
    }
    let ids: Vec<String> = held.iter().map(|l| l.id().to_string()).collect();

    // The first six digits of one lease name it.
    let (code, doc) = run(&["release", &ids[0][..6]]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["released"], serde_json::json!([ids[0]]));
    let (code, doc) = run(&["release", &ids[0][..6]]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &serde_json::json!("not_found"))
    );
    // Too short to name anything: a usage error, before any request.
    let (code, doc) = run(&["release", "3f9"]);
    assert_eq!(code, Some(2), "{doc}");

    let host = hostname();
    let (code, doc) = run(&["release", "--user", "owner@localhost", "--feature", "nuke"]);
    assert_eq!(code, Some(0), "{doc}");
    let mut released: Vec<String> = doc["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    released.sort();
    let mut nuke = ids[2..].to_vec();
    nuke.sort();
    assert_eq!(released, nuke);
    let (code, doc) = run(&["release", "--host", &host]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["released"], serde_json::json!([ids[1]]));
    let (code, doc) = run(&["release", "--host", "no-such-host"]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &serde_json::json!("not_found"))
    );
    let out = cli(&["--config", config, "release", "--feature", "vray"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--feature alone names nothing: {out:?}"
    );
    let (_, doc) = run(&["status"]);
    for feature in doc["features"].as_array().unwrap() {
        assert_eq!(feature["in_use"], 0, "{doc}");
    }
}

/// The host name this machine's clients send (as `tally_client` reads it).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap()
        .trim()
        .to_string()
}

/// Issue 11, item 7: borrowing a feature this machine already borrows says so, and
/// borrows nothing more; once it is returned, borrowing works again.
#[test]
fn borrowing_a_feature_this_machine_already_borrows_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let data = dir.path().join("user-data");
    let machine = dir.path().join("machine-id");
    std::fs::write(&machine, "laptop-1\n").unwrap();
    let tally = |args: &[&str]| {
        let mut all = vec!["--config", config, "--json"];
        all.extend_from_slice(args);
        let out = Command::new(CLI)
            .args(&all)
            .env("TALLY_DATA_DIR", &data)
            .env("TALLY_TEST_MACHINE_ID_FILES", &machine)
            .env_remove("TALLY_MACHINE_ID")
            .env_remove("TALLY_CONFIG")
            .env("HOME", "/nonexistent")
            .output()
            .unwrap();
        (out.status.code(), stdout_json(&out))
    };
    tally(&["entitlement", "add", "vray", "--seats", "3", "--borrowable"]);
    let (code, doc) = tally(&["borrow", "vray", "--for", "1h"]);
    assert_eq!(code, Some(0), "{doc}");
    let lease = doc["lease"]["id"].as_str().unwrap().to_string();
    let (code, doc) = tally(&["borrow", "vray", "--for", "2h"]);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["error"]["code"], "already_exists");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("already borrows 1 seat(s) of vray"),
        "{message}"
    );
    assert!(
        message.contains(&lease) && message.contains("tally return vray"),
        "{message}"
    );
    let (_, doc) = tally(&["status", "vray"]);
    assert_eq!(
        doc["features"][0]["borrowed"], 1,
        "nothing more was borrowed"
    );
    let (code, _) = tally(&["return", "vray"]);
    assert_eq!(code, Some(0));
    let (code, doc) = tally(&["borrow", "vray", "--for", "2h"]);
    assert_eq!(code, Some(0), "{doc}");
}

/// Issue 11, item 8: `tally --help` lists the global options apart from the command's own
/// and ends with the exit codes and the environment; each command's help too.
#[test]
fn the_help_separates_global_options_and_documents_exit_codes_and_environment() {
    let out = cli(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    for word in [
        "Global options:",
        "Exit codes:",
        "5  cannot reach any server",
        "TALLY_CONFIG",
        "TALLY_TOKEN",
        "TALLY_SERVER",
        "TALLY_DATA_DIR",
        "TALLY_MACHINE_ID",
        "NO_COLOR",
        "assignments",
    ] {
        assert!(help.contains(word), "{word} missing: {help}");
    }
    let out = cli(&["entitlement", "update", "--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    let (own, global) = help.split_once("Global options:").expect(&help);
    for option in ["--seats", "--expires", "--no-borrowable", "--force", "<ID>"] {
        assert!(own.contains(option), "{option}: {help}");
    }
    assert!(
        global.contains("--token-file") && !own.contains("--token-file"),
        "{help}"
    );
}

/// Runs `tally` as [`cli`] does, with more environment, and no client file, XDG directory
/// or token from the environment of the test run.
fn cli_env(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut command = Command::new(CLI);
    command
        .args(args)
        .env_remove("TALLY_CONFIG")
        .env_remove("TALLY_TOKEN")
        .env_remove("TALLY_SERVER")
        .env_remove("TALLY_CA")
        .env_remove("TALLY_LOG")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", "/nonexistent");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn error_message(out: &std::process::Output) -> String {
    stdout_json(out)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A server whose certificate the given CA did not sign is "not trusted" (exit 4), naming
/// the CA file and where tallyd keeps its own; a missing client file names the path looked
/// at; a refused token names where it came from.
#[test]
fn an_untrusted_server_a_missing_client_file_and_a_refused_token_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();

    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, rcgen_free_ca()).unwrap();
    let other_ca = other_ca.to_str().unwrap();
    let out = cli_env(
        &[],
        &["--config", config, "--ca", other_ca, "--json", "status"],
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(stdout_json(&out)["error"]["code"], "untrusted");
    let message = error_message(&out);
    assert!(message.contains("is not trusted"), "{message}");
    assert!(
        message.contains(&format!("not signed by the CA in {other_ca}")),
        "{message}"
    );
    assert!(message.contains("DATA_DIR/tls/ca.pem"), "{message}");
    // Without --json: the same, on stderr.
    let out = cli_env(&[], &["--config", config, "--ca", other_ca, "status"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("tally: server "), "{stderr}");
    assert!(stderr.contains("is not trusted"), "{stderr}");

    // No client file: the path looked at is named.
    let out = cli_env(&[], &["--json", "status"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let message = error_message(&out);
    assert!(message.starts_with("no server given"), "{message}");
    assert!(
        message.contains("there is none at /nonexistent/.config/tally/client.toml"),
        "{message}"
    );
    assert!(message.contains("--config"), "{message}");
    let out = cli_env(&[("XDG_CONFIG_HOME", "/nowhere")], &["--json", "status"]);
    assert!(
        error_message(&out).contains("none at /nowhere/tally/client.toml"),
        "{out:?}"
    );

    // A refused token, from each place a token comes from.
    let bad_file = dir.path().join("bad.token");
    std::fs::write(&bad_file, "nope\n").unwrap();
    let bad_file = bad_file.to_str().unwrap();
    let bad_config = dir.path().join("bad-client.toml");
    let text = std::fs::read_to_string(config)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("token"))
        .map(|line| format!("{line}\n"))
        .collect::<String>();
    std::fs::write(&bad_config, format!("{text}token_file = {bad_file:?}\n")).unwrap();
    let bad_config = bad_config.to_str().unwrap();
    // The environment, the arguments, and where the message says the token came from.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], String);
    let cases: &[Case] = &[
        (
            &[],
            &["--config", config, "--token", "nope"],
            "came from --token".into(),
        ),
        (
            &[("TALLY_TOKEN", "nope")],
            &["--config", config],
            "came from the TALLY_TOKEN environment variable".into(),
        ),
        (
            &[],
            &["--config", config, "--token-file", bad_file],
            format!("came from the token file {bad_file} (--token-file)"),
        ),
        (
            &[],
            &["--config", bad_config],
            format!("came from the token file {bad_file} (`token_file` in {bad_config})"),
        ),
    ];
    for (env, args, needle) in cases {
        let mut all = args.to_vec();
        all.extend(["--json", "status"]);
        let out = cli_env(env, &all);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {out:?}");
        assert_eq!(stdout_json(&out)["error"]["code"], "unauthenticated");
        let message = error_message(&out);
        assert!(message.contains("not recognised"), "{message}");
        assert!(message.contains(needle.as_str()), "{args:?}: {message}");
    }
}

/// clap's usage errors read like tally's others (`tally: ...`), and a duration written as
/// two words is shown how to write it.
#[test]
fn usage_errors_of_the_parser_carry_the_prefix_and_a_hint_for_durations() {
    let out = cli_env(&[], &["borrow", "vray", "--for", "3", "days"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("tally: unexpected argument 'days' found"),
        "{stderr}"
    );
    assert!(stderr.contains("--for 3d"), "{stderr}");
    assert!(stderr.contains("--for \"3 days\""), "{stderr}");
    assert!(stderr.contains("Usage: tally"), "{stderr}");
    assert!(
        !stderr.contains("'-- days'"),
        "clap's tip would mislead: {stderr}"
    );
    // The feature after the duration: the hint all the same.
    let out = cli_env(&[], &["--json", "borrow", "--for=3", "Days", "vray"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let message = error_message(&out);
    assert!(message.contains("--for 3d"), "{message}");
    assert!(message.contains("--for \"3 Days\""), "{message}");
    // Any other mistake clap finds: the prefix, no hint.
    let out = cli_env(&[], &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("tally: unrecognized subcommand 'frobnicate'"),
        "{stderr}"
    );
    assert!(!stderr.contains("duration"), "{stderr}");
    // Help is not an error.
    let out = cli_env(&[], &["--help"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: tally"));
}

/// The library's reconnect warnings reach stderr with `-v` only; the command's own
/// outcome is unchanged.
#[test]
fn reconnect_warnings_are_printed_with_v_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap().to_string();
    let out = cli_env(
        &[],
        &[
            "--config",
            &config,
            "entitlement",
            "add",
            "vray",
            "--seats",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut holders = Vec::new();
    for verbose in [false, true] {
        // With --json the grant goes to stdout: stderr holds nothing but the warnings.
        let mut args = vec!["--config", config.as_str(), "--json", "checkout", "vray"];
        if verbose {
            args.insert(0, "-v");
        }
        args.extend(["--", "sh", "-c", "sleep 5"]);
        let child = Command::new(CLI)
            .args(&args)
            .env_remove("TALLY_LOG")
            .env("HOME", "/nonexistent")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        holders.push((verbose, child));
    }
    let mut held = false;
    for _ in 0..100 {
        let doc = stdout_json(&cli(&["--config", &config, "--json", "status", "vray"]));
        if doc["features"][0]["in_use"] == 2 {
            held = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(held, "both seats were never held");
    daemon.kill9();
    std::thread::sleep(Duration::from_millis(500));
    daemon.restart();
    for (verbose, child) in holders {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if verbose {
            assert!(
                stderr.contains("connection to the license server lost; reconnecting"),
                "{stderr}"
            );
        } else {
            assert!(stderr.is_empty(), "printed without -v: {stderr}");
        }
    }
}

/// Units in any case and long forms, RFC 3339 at any offset, a bare date at the start of
/// its day in --starts and --since and at its end in --expires; every answer in UTC.
#[test]
fn times_and_durations_are_read_in_every_form_and_answered_in_utc() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| cli_json(config, args);

    let (code, doc) = run(&[
        "entitlement",
        "add",
        "nuke",
        "--seats",
        "5",
        "--starts",
        "2027-01-01",
        "--expires",
        "2027-12-31",
        "--max-borrow",
        "3 Days",
    ]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["entitlement"]["starts_at"], "2027-01-01T00:00:00Z");
    assert_eq!(doc["entitlement"]["expires_at"], "2027-12-31T23:59:59Z");
    assert_eq!(doc["entitlement"]["max_borrow_secs"], 3 * 86_400);

    let (code, doc) = run(&[
        "entitlement",
        "add",
        "vray",
        "--seats",
        "5",
        "--expires",
        "2030-06-30T20:00:00+02:00",
        "--max-borrow",
        "2W",
    ]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["entitlement"]["expires_at"], "2030-06-30T18:00:00Z");
    assert_eq!(doc["entitlement"]["max_borrow_secs"], 14 * 86_400);
    let (code, doc) = run(&[
        "entitlement",
        "add",
        "maya",
        "--seats",
        "1",
        "--starts",
        "2026-01-01T09:00:00-05:00",
        "--max-borrow",
        "1h30M",
    ]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["entitlement"]["starts_at"], "2026-01-01T14:00:00Z");
    assert_eq!(doc["entitlement"]["max_borrow_secs"], 5_400);

    run(&["user", "add", "ana@studio.com"]);
    let (code, doc) = run(&[
        "assign",
        "ana@studio.com",
        "vray",
        "--expires",
        "2029-06-30",
    ]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["assignment"]["expires_at"], "2029-06-30T23:59:59Z");

    // The whole of the day named: events of today are found from its start.
    let today = &tally_protocol::format_time(now_millis())[..10];
    let (code, doc) = run(&["audit", "--since", today, "--feature", "vray"]);
    assert_eq!(code, Some(0), "{doc}");
    let events = doc["events"].as_array().unwrap();
    assert!(!events.is_empty());
    assert!(events
        .iter()
        .all(|e| e["at"].as_str().unwrap().ends_with('Z')));
    let (code, doc) = run(&["audit", "--since", "2099-01-01T00:00:00+14:00"]);
    assert_eq!((code, doc), (Some(0), serde_json::json!({"events": []})));

    // Tables print UTC too.
    let out = cli(&["--config", config, "entitlement", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("2027-12-31T23:59:59Z"), "{table}");
    assert!(table.contains("2030-06-30T18:00:00Z"), "{table}");

    for (args, needle) in [
        (
            &[
                "entitlement",
                "add",
                "x",
                "--seats",
                "1",
                "--expires",
                "2027-02-30",
            ][..],
            "month 2 of 2027 has 28 days",
        ),
        (
            &[
                "entitlement",
                "add",
                "x",
                "--seats",
                "1",
                "--expires",
                "2027-01-31T18:00:00",
            ],
            "has no UTC offset",
        ),
        (
            &[
                "entitlement",
                "add",
                "x",
                "--seats",
                "1",
                "--max-borrow",
                "3 months",
            ],
            "\"months\" in \"3 months\" is not a unit of duration",
        ),
        (&["borrow", "vray", "--for", "3"], "\"3\" has no unit"),
    ] {
        let (code, doc) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {doc}");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{args:?}: {message}");
    }
}

/// A feature or user that does not exist is said to, with the nearest name; a removed
/// user's history stays readable; --csv with --json and a --limit past its maximum are
/// usage errors; `return` with nothing borrowed fails.
#[test]
fn typos_are_not_silence() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| cli_json(config, args);
    run(&["entitlement", "add", "vray", "--seats", "2"]);
    run(&["user", "add", "ana@studio.com"]);
    run(&["user", "add", "bob@studio.com"]);
    run(&["user", "remove", "bob@studio.com"]);

    let (code, doc) = run(&["leases", "--feature", "vary"]);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["error"]["code"], "not_found");
    assert_eq!(
        doc["error"]["message"],
        "no feature vary exists; did you mean vray? `tally status` lists the features"
    );
    let (code, doc) = run(&["leases", "--user", "ana@studo.com"]);
    assert_eq!(code, Some(1), "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean ana@studio.com?"),
        "{doc}"
    );
    let (code, doc) = run(&["leases", "--feature", "vray"]);
    assert_eq!((code, doc), (Some(0), serde_json::json!({"leases": []})));

    let (code, doc) = run(&["audit", "--user", "nobody@x"]);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["error"]["code"], "not_found");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("no user nobody@x exists, and no audit event names it"),
        "{message}"
    );
    let (code, doc) = run(&["audit", "--feature", "vary"]);
    assert_eq!(code, Some(1), "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(did you mean vray?)"),
        "{doc}"
    );
    // Without --json: on stderr, exit 1.
    let out = cli(&["--config", config, "audit", "--user", "nobody@x"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("tally: no user nobody@x exists"));
    // A removed user's history is still there.
    let (code, doc) = run(&["audit", "--user", "bob@studio.com"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["events"][0]["action"], "user_remove");

    let (code, doc) = run(&["audit", "--csv"]);
    assert_eq!(code, Some(2), "{doc}");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("--csv") && message.contains("--json"),
        "{message}"
    );
    let (code, doc) = run(&["audit", "--limit", "100001"]);
    assert_eq!(code, Some(2), "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("--limit 100001 is past its maximum, 100000"),
        "{doc}"
    );
    let (code, _) = run(&["audit", "--limit", "100000"]);
    assert_eq!(code, Some(0));

    // Nothing borrowed on this machine: an error, not "returned 0".
    let data = dir.path().join("user-data");
    let out = cli_env(
        &[("TALLY_DATA_DIR", data.to_str().unwrap())],
        &["--config", config, "--json", "return", "vray"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(stdout_json(&out)["error"]["code"], "not_found");
    assert!(
        error_message(&out)
            .contains("nothing to return: no borrow of vray is kept on this machine"),
        "{out:?}"
    );
}
