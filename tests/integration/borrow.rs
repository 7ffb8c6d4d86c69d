//! Borrowing seats for offline use (R6, and the `borrowed` refusals of R7–R9).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tally_client::{BorrowStore, Client, Error, Trust};
use tally_protocol::{
    Assign, EntitlementKind, EntitlementRemove, ErrorCode, LeaseKind, LeaseSource, NewEntitlement,
    Release, Request, Response, Revoke, Role, UserAdd, UserRef,
};

use crate::harness::*;

fn borrowable(
    feature: &str,
    seats: u32,
    max_borrow_secs: Option<u64>,
    expires_at: Option<i64>,
) -> NewEntitlement {
    NewEntitlement {
        feature: feature.into(),
        seats,
        starts_at: None,
        expires_at,
        kind: EntitlementKind::Standard,
        borrowable: true,
        max_borrow_secs,
        reference: String::new(),
    }
}

async fn add(owner: &Client, new: NewEntitlement) -> u64 {
    match owner.call(Request::EntitlementAdd(new)).await.unwrap() {
        Response::Entitlement(e) => e.id,
        other => panic!("{other:?}"),
    }
}

/// A user of the server with their own data directory for borrows.
async fn user(
    server: &TestServer,
    owner: &Client,
    email: &str,
    role: Role,
    data: &std::path::Path,
) -> Client {
    let request = Request::UserAdd(UserAdd {
        username: email.into(),
        name: String::new(),
        role,
    });
    let token = match owner.call(request).await.unwrap() {
        Response::UserAdded { token, .. } => token,
        other => panic!("{other:?}"),
    };
    let mut config = server.client_config(&token);
    config.data_dir = Some(data.to_path_buf());
    Client::connect(config).await.unwrap()
}

fn refused(result: Result<impl std::fmt::Debug, Error>, code: ErrorCode, needle: &str) {
    match result {
        Err(Error::Server(body)) => {
            assert_eq!(body.code, code, "{}", body.message);
            assert!(
                body.message.contains(needle),
                "{:?} does not mention {needle:?}",
                body.message
            );
        }
        other => panic!("expected {code}, got {other:?}"),
    }
}

/// Runs `tally` as a user on a machine: `data` is the user's data directory, `machine` the
/// machine id its machine-id file holds (a file of the test's, see `tests/bin/tally.rs`).
fn tally_on(data: &Path, machine: &str, args: &[&str]) -> Output {
    let machine_file = data.with_extension(format!("machine-id-{machine}"));
    std::fs::write(&machine_file, format!("{machine}\n")).unwrap();
    Command::new(CLI)
        .args(args)
        .env("TALLY_DATA_DIR", data)
        .env("TALLY_TEST_MACHINE_ID_FILES", &machine_file)
        .env_remove("TALLY_MACHINE_ID")
        .env_remove("TALLY_CONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

fn reason(out: &Output) -> String {
    stdout_json(out)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_borrow_verifies_offline_and_fails_for_the_right_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("user-data");
    let mut daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let ca_path = dir.path().join("data/tls/ca.pem");
    let ca = ca_path.to_str().unwrap();
    let tally = |args: &[&str], machine: &str| tally_on(&data, machine, args);
    tally(
        &[
            "--config",
            config,
            "entitlement",
            "add",
            "vray",
            "--seats",
            "2",
            "--borrowable",
        ],
        "m1",
    );
    let out = tally(
        &[
            "--config", config, "--json", "borrow", "vray", "--for", "2d",
        ],
        "laptop-1",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc = stdout_json(&out);
    assert_eq!(doc["lease"]["kind"], "borrowed");
    let token_file = doc["token_file"].as_str().unwrap().to_string();
    assert!(token_file.starts_with(data.to_str().unwrap()));

    // With the server stopped: only the CA is needed.
    daemon.kill9();
    let out = tally(&["--ca", ca, "--json", "verify", "vray"], "laptop-1");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout_json(&out)["valid"], true);
    assert_eq!(stdout_json(&out)["checked"], "offline");
    let out = tally(&["--ca", ca, "--json", "borrows"], "laptop-1");
    let borrows = stdout_json(&out);
    assert_eq!(borrows["borrows"][0]["feature"], "vray");
    assert_eq!(borrows["borrows"][0]["valid"], true);
    // Without a CA nothing can be checked: a usage error naming what to set.
    let out = tally(&["--json", "verify", "vray"], "laptop-1");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stdout_json(&out)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("set `ca`"));

    // Another machine.
    let out = tally(&["--ca", ca, "--json", "verify", "vray"], "laptop-2");
    assert_eq!(out.status.code(), Some(3));
    assert!(reason(&out).contains("another machine"), "{out:?}");

    // Any byte changed.
    let store = BorrowStore::at(data.clone());
    let trust = Trust::from_pem(&std::fs::read(&ca_path).unwrap()).unwrap();
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let now = now_millis();
    assert!(store.verify(&token, &trust, "laptop-1", now, now).valid);
    for i in 0..token.len() {
        let mut bytes = token.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        let verdict = store.verify(&altered, &trust, "laptop-1", now, now);
        assert!(
            !verdict.valid,
            "byte {i} changed and the token still verifies"
        );
        assert!(
            verdict.reason.contains("malformed")
                || verdict.reason.contains("signature")
                || verdict.reason.contains("certif"),
            "byte {i}: {}",
            verdict.reason
        );
    }

    // Expired.
    let verdict = store.verify(&token, &trust, "laptop-1", now + 3 * 86_400_000, 0);
    assert!(
        !verdict.valid && verdict.reason.contains("expired"),
        "{verdict:?}"
    );

    // The clock set back before the token was issued, with no clock file at all.
    let verdict = store.verify(&token, &trust, "laptop-1", now - 86_400_000, 0);
    assert!(
        !verdict.valid && verdict.reason.contains("before the token was issued"),
        "{verdict:?}"
    );

    // The clock set back: this machine has seen a time an hour ahead of its clock.
    std::fs::write(data.join("clock"), (now + 3_600_000).to_string()).unwrap();
    let out = tally(&["--ca", ca, "--json", "verify", "vray"], "laptop-1");
    assert_eq!(out.status.code(), Some(3));
    assert!(reason(&out).contains("clock rolled back"), "{out:?}");
}

#[tokio::test]
async fn borrowed_seats_block_revoke_deactivate_and_remove_until_returned() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    let data = tempfile::tempdir().unwrap();
    add(&owner, borrowable("vray", 4, None, None)).await;
    let ana = user(&server, &owner, "ana@studio.com", Role::Member, data.path()).await;
    let ben = user(
        &server,
        &owner,
        "ben@studio.com",
        Role::Member,
        &data.path().join("ben"),
    )
    .await;
    let assign = Assign {
        username: "ana@studio.com".into(),
        feature: "vray".into(),
        seats: 1,
        entitlement: None,
        from: None,
        expires_at: None,
    };
    owner.call(Request::Assign(assign.clone())).await.unwrap();
    let (lease, _) = ana
        .borrow("vray", 1, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(lease.kind, LeaseKind::Borrowed);
    assert!(
        matches!(lease.source, LeaseSource::Assignment(_)),
        "from her own assignment first"
    );
    let figures = status(&owner, "vray").await;
    assert_eq!(
        (
            figures.assigned,
            figures.borrowed,
            figures.in_use,
            figures.available
        ),
        (1, 1, 0, 3)
    );

    let revoke = Request::Revoke(Revoke {
        username: "ana@studio.com".into(),
        feature: "vray".into(),
        seats: None,
    });
    let err = owner.call(revoke.clone()).await.unwrap_err();
    refused(
        Err::<(), _>(err.clone()),
        ErrorCode::Borrowed,
        "ana@studio.com has borrowed 1 seat(s) of vray for offline use until",
    );
    assert!(
        err.to_string()
            .contains("revoke after the borrow ends or is returned"),
        "{err}"
    );
    let mut take = assign.clone();
    take.username = "ben@studio.com".into();
    take.from = Some("ana@studio.com".into());
    refused(
        owner.call(Request::Assign(take)).await,
        ErrorCode::Borrowed,
        "for offline use until",
    );
    refused(
        owner
            .call(Request::UserDeactivate(UserRef {
                username: "ana@studio.com".into(),
            }))
            .await,
        ErrorCode::Borrowed,
        "1 seat(s) of vray until",
    );
    refused(
        owner
            .call(Request::Release(Release { lease: lease.id }))
            .await,
        ErrorCode::Borrowed,
        "cannot be released",
    );

    // A floating borrow blocks removing the user and the entitlement.
    let (_, _) = ben
        .borrow("vray", 1, Duration::from_secs(600))
        .await
        .unwrap();
    refused(
        owner
            .call(Request::UserRemove(UserRef {
                username: "ben@studio.com".into(),
            }))
            .await,
        ErrorCode::Borrowed,
        "remove them after",
    );
    refused(
        owner
            .call(Request::EntitlementRemove(EntitlementRemove { id: 1 }))
            .await,
        ErrorCode::Borrowed,
        "remove it after",
    );

    // After the return, the revoke goes through.
    assert_eq!(ana.return_borrows("vray").await.unwrap(), 1);
    assert!(
        ana.borrow_store()
            .unwrap()
            .of_feature("vray")
            .unwrap()
            .is_empty(),
        "the token file is gone"
    );
    assert_eq!(owner.call(revoke).await.unwrap(), Response::Revoked(1));
    assert_eq!(
        status(&owner, "vray").await.borrowed,
        1,
        "ben's borrow is still counted"
    );
    server.stop().await;
}

#[tokio::test]
async fn every_limit_of_a_borrow_is_enforced() {
    let server = TestServer::start_with(|c| c.borrow.max = Duration::from_secs(48 * 3600)).await;
    let owner = server.owner().await;
    let data = tempfile::tempdir().unwrap();
    let ana = user(&server, &owner, "ana@studio.com", Role::Member, data.path()).await;
    let day = Duration::from_secs(86_400);

    // The entitlement's max_borrow (24h here).
    add(&owner, borrowable("maya", 2, Some(86_400), None)).await;
    refused(
        ana.borrow("maya", 1, day * 2).await,
        ErrorCode::Invalid,
        "max_borrow",
    );
    assert!(ana.borrow("maya", 1, day).await.is_ok());

    // The server's borrow.max (48h) below the entitlement's default of 168h.
    add(&owner, borrowable("nuke", 2, None, None)).await;
    refused(
        ana.borrow("nuke", 1, day * 3).await,
        ErrorCode::Invalid,
        "borrow.max",
    );
    assert!(ana.borrow("nuke", 1, day * 2).await.is_ok());

    // The entitlement's end, an hour away.
    add(
        &owner,
        borrowable("houdini", 2, None, Some(now_millis() + 3_600_000)),
    )
    .await;
    refused(
        ana.borrow("houdini", 1, Duration::from_secs(7200)).await,
        ErrorCode::Invalid,
        "the end of entitlement",
    );
    let (lease, _) = ana
        .borrow("houdini", 1, Duration::from_secs(1800))
        .await
        .unwrap();
    assert!(lease.expires_at <= now_millis() + 3_600_000);

    // Not borrowable.
    let mut online_only = borrowable("katana", 2, None, None);
    online_only.borrowable = false;
    add(&owner, online_only).await;
    refused(
        ana.borrow("katana", 1, day).await,
        ErrorCode::NotBorrowable,
        "allows borrowing",
    );

    // A guest borrows only from their own assignment.
    let gus = user(
        &server,
        &owner,
        "gus@studio.com",
        Role::Guest,
        &data.path().join("gus"),
    )
    .await;
    refused(
        gus.borrow("nuke", 1, day).await,
        ErrorCode::NoSeat,
        "guests borrow only seats assigned to them",
    );
    let assign = Assign {
        username: "gus@studio.com".into(),
        feature: "nuke".into(),
        seats: 1,
        entitlement: None,
        from: None,
        expires_at: None,
    };
    owner.call(Request::Assign(assign)).await.unwrap();
    let (lease, _) = gus.borrow("nuke", 1, day).await.unwrap();
    assert!(matches!(lease.source, LeaseSource::Assignment(_)));
    refused(
        gus.borrow("nuke", 1, day).await,
        ErrorCode::NoSeat,
        "guests",
    );

    // Nothing refused was granted: every figure adds up.
    let figures = status(&owner, "nuke").await;
    assert_eq!(
        (
            figures.total,
            figures.assigned,
            figures.borrowed,
            figures.available
        ),
        (2, 1, 2, 0)
    );
    server.stop().await;
}

#[tokio::test]
async fn borrows_survive_sigkill_and_need_no_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("user-data");
    let mut daemon = DaemonProcess::start(dir.path(), "2s", "200ms");
    let mut owner = daemon.client_config();
    owner.data_dir = Some(data.clone());
    let owner = Client::connect(owner).await.unwrap();
    add(&owner, borrowable("vray", 3, None, None)).await;
    let (lease, _) = owner
        .borrow("vray", 2, Duration::from_secs(3600))
        .await
        .unwrap();
    drop(owner);

    daemon.kill9();
    daemon.restart();
    // Two ttls with nobody heartbeating.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let owner = Client::connect(daemon.client_config()).await.unwrap();
    let held = leases(&owner).await;
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].id, held[0].kind), (lease.id, LeaseKind::Borrowed));
    let figures = status(&owner, "vray").await;
    assert_eq!(
        (figures.borrowed, figures.in_use, figures.available),
        (2, 0, 1)
    );
}
