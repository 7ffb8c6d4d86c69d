//! What a hostile server says reaches a person's terminal escaped: in `tally`'s tables, its
//! own sentences, its error lines and its log (`-v`, `TALLY_LOG`), no escape sequence, bell,
//! C1 control, bidirectional override or newline of the server's arrives raw; `--json` keeps
//! the text exact. The server is the fake of `fake.rs`, trusted through the test server's
//! CA, answering every request with text meant to take the terminal over.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tally_protocol::{
    AssignmentEntry, AssignmentInfo, AssignmentsPage, AuditEvent, AuditPage, ClusterInfo,
    Entitlement, EntitlementKind, ErrorBody, ErrorCode, HeldLease, HoldersPage, IssuedToken,
    LeaseId, LeaseInfo, LeaseKind, LeaseSource, LeasesPage, NodeInfo, NodeRole, NotLeader, Outcome,
    Request, Response, Role, ServerInfo, TokenInfo, UserInfo, UserState, Whoami,
};

use crate::fake::*;
use crate::harness::*;

/// Text a server chose to take a terminal over: sets the window title (OSC ... BEL), clears
/// the screen (CSI), colours with the 8-bit CSI, opens a hyperlink with the 8-bit OSC,
/// reverses what follows (RLO, LRI), and forges a line of tally's own after a NEL, a DEL
/// and a newline, ending in a carriage return.
const ATTACK: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\u{9d}8;;http://evil\u{9c}\u{202e}txt.exe\u{2066}\u{85}\u{7f}\ntally: all seats released\r";

/// [`ATTACK`] as a person must see it.
const ESCAPED: &str = "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x9d8;;http://evil\\x9c\\u{202e}txt.exe\\u{2066}\\x85\\x7f\\ntally: all seats released\\r";

/// The characters of `bytes` that must not reach a terminal raw: controls other than the
/// newline and tab tally writes itself, and the bidirectional and line-separating
/// characters.
fn raw_controls(bytes: &[u8]) -> Vec<char> {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|&c| {
            (c.is_control() && c != '\n' && c != '\t')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        })
        .collect()
}

/// Checks that neither stream of `out` holds a raw control character.
fn assert_no_raw_controls(out: &Output) {
    for (name, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let raw = raw_controls(bytes);
        assert!(
            raw.is_empty(),
            "raw {raw:?} on {name}: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Runs `tally --config CONFIG ARGS...` off the runtime (the fake answers on it), with
/// `TALLY_LOG` set to `log` when given.
async fn tally(config: &Path, log: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(CLI);
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TALLY_CONFIG")
        .env_remove("TALLY_LOG")
        .env("HOME", "/nonexistent");
    if let Some(log) = log {
        command.env("TALLY_LOG", log);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn lease() -> LeaseInfo {
    LeaseInfo {
        id: LeaseId([7; 16]),
        feature: ATTACK.into(),
        seats: 1,
        user: ATTACK.into(),
        host: ATTACK.into(),
        kind: LeaseKind::Online,
        source: LeaseSource::Floating,
        granted_at: 1_700_000_000_000,
        expires_at: 1_700_000_060_000,
    }
}

fn user() -> UserInfo {
    UserInfo {
        username: ATTACK.into(),
        name: ATTACK.into(),
        role: Role::Member,
        state: UserState::Active,
        assigned_seats: 1,
    }
}

fn assignment() -> AssignmentInfo {
    AssignmentInfo {
        id: 4,
        user: ATTACK.into(),
        feature: ATTACK.into(),
        seats: 1,
        entitlement: 1,
        expires_at: None,
    }
}

/// The fake's answer to each request a listing sends: every string in it is [`ATTACK`].
fn hostile(request: &Request) -> Outcome {
    let response = match request {
        Request::Figures(_) => Response::Figures(vec![tally_protocol::FeatureFigures {
            status: tally_protocol::FeatureStatus {
                feature: ATTACK.into(),
                total: 5,
                assigned: 1,
                floating: 4,
                in_use: 1,
                borrowed: 0,
                available: 4,
                queued: 0,
            },
            reserved: 0,
        }]),
        Request::EntitlementList(_) => Response::Entitlements(vec![Entitlement {
            id: 1,
            feature: ATTACK.into(),
            seats: 5,
            // Not started yet: `status` lists it under the feature.
            starts_at: tally_protocol::now_millis() + 86_400_000,
            expires_at: None,
            kind: EntitlementKind::Standard,
            borrowable: false,
            max_borrow_secs: 0,
            reference: ATTACK.into(),
        }]),
        Request::HoldersPage(_) => Response::Holders(HoldersPage {
            holders: vec![HeldLease {
                lease: lease(),
                program: ATTACK.into(),
                pid: 42,
                address: ATTACK.into(),
            }],
            next: None,
        }),
        Request::LeasesPage(_) => Response::LeasesPage(LeasesPage {
            leases: vec![lease()],
            next: None,
        }),
        Request::Leases(_) => Response::Leases(vec![lease()]),
        Request::AuditPage(_) => Response::AuditPage(AuditPage {
            events: vec![AuditEvent {
                at: 1_700_000_000_000,
                actor: ATTACK.into(),
                action: ATTACK.into(),
                subject: ATTACK.into(),
                feature: Some(ATTACK.into()),
                outcome: ATTACK.into(),
                reason: ATTACK.into(),
            }],
            next: None,
        }),
        Request::Whoami => Response::Whoami(Whoami {
            user: user(),
            assignments: vec![assignment()],
            leases: vec![lease()],
        }),
        Request::ServerInfo => Response::ServerInfo(ServerInfo {
            id: ATTACK.into(),
            version: ATTACK.into(),
            protocol: 1,
            store: ATTACK.into(),
            uptime_secs: 5,
            connections: 1,
            cluster: Some(ClusterInfo {
                node: ATTACK.into(),
                role: NodeRole::Standby,
                epoch: 2,
                leader: Some(ATTACK.into()),
            }),
            listen: ATTACK.into(),
            lease_ttl_ms: 3_000,
        }),
        Request::ServerNodes => Response::Nodes(vec![NodeInfo {
            id: ATTACK.into(),
            address: ATTACK.into(),
            role: NodeRole::Leader,
            epoch: 2,
            last_seen: 1_700_000_000_000,
        }]),
        Request::UserList => Response::Users(vec![user()]),
        Request::Assignments(_) => Response::Assignments(AssignmentsPage {
            assignments: vec![AssignmentEntry {
                assignment: assignment(),
                suspended: false,
                in_use: 1,
                borrowed: 0,
            }],
            next: None,
        }),
        Request::TokenList(_) => Response::Tokens(vec![TokenInfo {
            id: ATTACK.into(),
            label: ATTACK.into(),
            created_at: 1_700_000_000_000,
            last_used: None,
        }]),
        Request::TokenMint(_) => Response::TokenIssued(IssuedToken {
            id: ATTACK.into(),
            token: ATTACK.into(),
        }),
        Request::TokenRevoke(_) => Response::TokenRevoked(ATTACK.into()),
        other => return honest(other),
    };
    Outcome::Ok(response)
}

/// Every listing and sentence of `tally` shows the server's text escaped, on a line of its
/// own, and its `--json` document carries the text exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_and_sentences_show_a_servers_text_escaped_and_json_keeps_it() {
    let server = TestServer::start().await;
    let fake = FakeServer::start(
        &server,
        Script::honest(1_000).replying(|r| Reply::Answer(hostile(r))),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = fake.client_toml(dir.path());
    // Each command, and where its JSON document holds the server's text.
    let commands: [(&[&str], &str); 14] = [
        (&["status"], "/features/0/feature"),
        (&["status", "--all"], "/features/0/holders/0/program"),
        (&["leases"], "/leases/0/host"),
        (&["audit"], "/events/0/reason"),
        (&["whoami"], "/user/name"),
        (&["server", "info"], "/server/leader"),
        (&["server", "nodes"], "/nodes/0/address"),
        (&["user", "list"], "/users/0/name"),
        (&["user", "tokens", "zoe@studio"], "/tokens/0/label"),
        (&["user", "token", "zoe@studio"], "/token"),
        (&["user", "token", "revoke", "abcd"], "/revoked"),
        (&["entitlement", "list"], "/entitlements/0/reference"),
        (&["assignments"], "/assignments/0/user"),
        (&["audit", "--csv"], ""),
    ];
    for (args, pointer) in commands {
        let out = tally(&config, None, args).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert_no_raw_controls(&out);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(ESCAPED),
            "{args:?} shows the text escaped: {text}"
        );
        // No line of the server's own: every line that says `tally:` is the escaped one.
        assert!(
            text.lines()
                .all(|line| !line.starts_with("tally: all seats")),
            "{args:?}: {text}"
        );
        if pointer.is_empty() {
            continue;
        }
        let mut json = vec!["--json"];
        json.extend_from_slice(args);
        let out = tally(&config, None, &json).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        let doc: Value = stdout_json(&out);
        assert_eq!(
            doc.pointer(pointer).and_then(Value::as_str),
            Some(ATTACK),
            "{args:?}: {doc}"
        );
    }
}

/// A refusal's message is the server's: the error line shows it escaped after `tally: `
/// and nothing else, and `--json`'s error document carries it exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_error_message_is_escaped_on_the_error_line() {
    let server = TestServer::start().await;
    let refuse = |request: &Request| match request {
        Request::Heartbeat | Request::Resume(_) => Reply::Answer(honest(request)),
        _ => Reply::Answer(Outcome::Err(ErrorBody::new(ErrorCode::Forbidden, ATTACK))),
    };
    let fake = FakeServer::start(&server, Script::honest(1_000).replying(refuse)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fake.client_toml(dir.path());

    for args in [&["status"][..], &["server", "info"], &["checkout", "vray"]] {
        let out = tally(&config, None, args).await;
        assert_eq!(out.status.code(), Some(4), "{args:?}: {out:?}");
        assert_no_raw_controls(&out);
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("tally: {ESCAPED}\n"),
            "{args:?}"
        );
    }

    let out = tally(&config, None, &["--json", "status"]).await;
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(
        stdout_json(&out),
        serde_json::json!({"error": {"code": "forbidden", "message": ATTACK}})
    );
}

/// The library's log shows what the server says escaped, one line per event: a refused
/// background heartbeat's message under `-v`, and the feature of the lease granted in
/// tally's own sentence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_show_a_refused_heartbeats_message_escaped() {
    let server = TestServer::start().await;
    let reply = |request: &Request| match request {
        Request::Checkout(_) => Reply::Answer(Outcome::Ok(Response::Lease(lease()))),
        Request::Checkin(checkin) => Reply::Answer(Outcome::Ok(Response::CheckedIn(checkin.lease))),
        Request::Heartbeat => {
            Reply::Answer(Outcome::Err(ErrorBody::new(ErrorCode::Forbidden, ATTACK)))
        }
        other => Reply::Answer(honest(other)),
    };
    // Heartbeats every 100 ms: a second of the command sees several refused.
    let fake = FakeServer::start(&server, Script::honest(100).replying(reply)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fake.client_toml(dir.path());

    let out = tally(
        &config,
        None,
        &["-v", "checkout", "vray", "--", "sleep", "1"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_no_raw_controls(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!("checked out 1 seat(s) of {ESCAPED} (lease")),
        "{log}"
    );
    let refused: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("background request refused"))
        .collect();
    assert!(!refused.is_empty(), "{log}");
    for line in refused {
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains(ESCAPED), "{line}");
    }
    // Every line is tally's or the log's: none starts with the server's forged text.
    assert!(
        log.lines()
            .all(|line| !line.starts_with("tally: all seats")),
        "{log}"
    );
}

/// A standby naming a forged leader: `TALLY_LOG=info` shows the leader followed and why it
/// cannot be reached with the name escaped, and the refusal that follows is escaped too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_leader_name_is_escaped_in_the_log() {
    let server = TestServer::start().await;
    // A leader name with escapes and a forged log line in it.
    const LEADER: &str = "\u{1b}]0;pwned\u{7}\u{202e}evil\nINFO forged.example:1";
    let statuses = Arc::new(AtomicUsize::new(0));
    let seen = statuses.clone();
    let reply = move |request: &Request| match request {
        Request::Figures(_) if seen.fetch_add(1, Ordering::SeqCst) == 0 => {
            Reply::Answer(Outcome::NotLeader(NotLeader {
                leader: Some(LEADER.into()),
                message: ATTACK.into(),
            }))
        }
        Request::Figures(_) => {
            Reply::Answer(Outcome::Err(ErrorBody::new(ErrorCode::NotLeader, ATTACK)))
        }
        other => Reply::Answer(honest(other)),
    };
    let fake = FakeServer::start(&server, Script::honest(1_000).replying(reply)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fake.client_toml(dir.path());

    let out = tally(&config, Some("info"), &["status"]).await;
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_no_raw_controls(&out);
    assert_eq!(statuses.load(Ordering::SeqCst), 2, "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    // Not a host name, so not followed; the log names it escaped.
    let named = "named the leader \"\\u{1b}]0;pwned\\u{7}\\u{202e}evil\\nINFO forged.example:1\", which is not HOST:PORT";
    assert!(log.contains(named), "{log}");
    assert!(
        log.lines().all(|line| !line.starts_with("INFO forged")),
        "a forged log line: {log}"
    );
    assert!(log.ends_with(&format!("tally: {ESCAPED}\n")), "{log}");
}
