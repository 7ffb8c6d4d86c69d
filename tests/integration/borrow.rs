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

/// A token signed with a key of one's own: the claims re-signed, with a certificate of one's
/// own making, with the server's real certificate, or in the first format with no
/// certificate at all. None verifies: forging needs the CA's private key.
#[tokio::test]
async fn a_token_forged_without_the_cas_key_is_refused() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    let data = tempfile::tempdir().unwrap();
    add(&owner, borrowable("vray", 2, None, None)).await;
    let ana = user(&server, &owner, "ana@studio.com", Role::Member, data.path()).await;
    let (_, path) = ana
        .borrow("vray", 1, Duration::from_secs(3600))
        .await
        .unwrap();
    let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
    let store = ana.borrow_store().unwrap();
    let trust = Trust::from_pem(&server.ca_pem()).unwrap();
    let machine = ana.machine_id().to_string();
    let now = now_millis();
    assert!(store.verify(&token, &trust, &machine, now, now).valid);

    let real = tally_protocol::decode_token(&token).unwrap();
    let mut claims = real.claims.clone();
    claims.expires_at += 365 * 86_400_000;
    claims.seats = 50;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let signature = key.sign(&claims.to_bytes());
    let own_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &pkcs8.as_ref().to_vec().into(),
        &rcgen::PKCS_ED25519,
    )
    .unwrap();
    let own_cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&own_key)
        .unwrap();
    // A CA of one's own, issuing a certificate for the key.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Tally private CA");
    let own_ca = ca_params.self_signed(&ca_key).unwrap();
    let issued = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .signed_by(&own_key, &own_ca, &ca_key)
        .unwrap();

    let forgeries = [
        (
            claims.encode(signature.as_ref(), &[own_cert.der().to_vec()]),
            "not certified by the configured CA",
        ),
        (
            claims.encode(
                signature.as_ref(),
                &[issued.der().to_vec(), own_ca.der().to_vec()],
            ),
            "not certified by the configured CA",
        ),
        (
            claims.encode(signature.as_ref(), &real.chain),
            "bad signature",
        ),
        (
            claims
                .encode(signature.as_ref(), &[own_cert.der().to_vec()])
                .split('.')
                .take(3)
                .collect::<Vec<_>>()
                .join(".")
                .replacen("tally2", "tally1", 1),
            "first format",
        ),
    ];
    for (forged, why) in &forgeries {
        let verdict = store.verify(forged, &trust, &machine, now, now);
        assert!(!verdict.valid, "{why}: {verdict:?}");
        assert!(verdict.reason.contains(why), "{why}: {}", verdict.reason);
    }
    // Put in place of the real token file, the forgery is refused by verify_offline too.
    std::fs::write(&path, &forgeries[0].0).unwrap();
    let verdict = store.verify_offline("vray", &trust, &machine).unwrap();
    assert!(!verdict.valid, "{verdict:?}");
    server.stop().await;
}

/// An admin's own CA: its certificate and key.
fn admin_ca() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Studio CA");
    (params.self_signed(&key).unwrap(), key)
}

/// With the admin's own TLS certificate tallyd has no CA key: borrows are refused, naming
/// `borrow.signing_cert`, until that names a certificate the admin's CA issued for the
/// signing key; then tokens verify against the admin's CA. A certificate for another key
/// stops tallyd at start.
#[tokio::test]
async fn with_the_admins_certificate_borrows_need_borrow_signing_cert() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_key) = admin_ca();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert_path, server_cert.pem()).unwrap();
    std::fs::write(&key_path, server_key.serialize_pem()).unwrap();
    let data_dir = dir.path().join("data");
    let start = |signing_cert: Option<std::path::PathBuf>| {
        let (cert, key, data_dir) = (cert_path.clone(), key_path.clone(), data_dir.clone());
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut config = test_config(
                addr,
                &data_dir,
                Duration::from_secs(3),
                Duration::from_millis(200),
            );
            config.tls.cert = Some(cert);
            config.tls.key = Some(key);
            config.borrow.signing_cert = signing_cert;
            config.validate().unwrap();
            let root = tally_server::init::prepare_data_dir(&config).unwrap().root;
            let store = tally_server::store::open(None, &root).await.unwrap();
            let (ready_tx, ready) = tokio::sync::oneshot::channel();
            let control = tally_server::Control {
                ready: Some(ready_tx),
                ..Default::default()
            };
            let shutdown = control.shutdown.clone();
            let task = tokio::spawn(tally_server::run(listener, config, store, control));
            (addr, shutdown, task, ready)
        }
    };
    let connect = |addr: std::net::SocketAddr, token: String, data: &Path| {
        let mut config = tally_client::ClientConfig::new(
            vec![tally_client::ServerAddr {
                host: "localhost".into(),
                port: addr.port(),
            }],
            ca.pem().into_bytes(),
            token,
        );
        config.data_dir = Some(data.to_path_buf());
        Client::connect(config)
    };
    let data = dir.path().join("user-data");

    let (addr, shutdown, task, ready) = start(None).await;
    ready.await.expect("tallyd started");
    let owner_token = std::fs::read_to_string(data_dir.join("owner.token"))
        .unwrap()
        .trim()
        .to_string();
    let owner = connect(addr, owner_token.clone(), &data).await.unwrap();
    add(&owner, borrowable("vray", 2, None, None)).await;
    refused(
        owner.borrow("vray", 1, Duration::from_secs(600)).await,
        ErrorCode::NotBorrowable,
        "borrow.signing_cert",
    );
    assert_eq!(
        status(&owner, "vray").await.borrowed,
        0,
        "no seat was taken"
    );
    let csr = data_dir.join("signing.csr");
    assert!(std::fs::read_to_string(&csr)
        .unwrap()
        .contains("CERTIFICATE REQUEST"));
    drop(owner);
    shutdown.cancel();
    task.await.unwrap().unwrap();

    // A certificate for another key: tallyd refuses to start, naming the setting.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let wrong = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .signed_by(&other, &ca, &ca_key)
        .unwrap();
    let wrong_path = dir.path().join("wrong-signing.pem");
    std::fs::write(&wrong_path, wrong.pem()).unwrap();
    let (_, _, task, _ready) = start(Some(wrong_path)).await;
    let err = task.await.unwrap().unwrap_err();
    assert!(
        format!("{err:#}").contains("borrow.signing_cert")
            && format!("{err:#}").contains("not a certificate for this server's signing key"),
        "{err:#}"
    );

    // The admin's CA issues a certificate for the signing key (what signing.csr asks for).
    let pkcs8 = std::fs::read(data_dir.join("signing.key")).unwrap();
    let signing_key =
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.into(), &rcgen::PKCS_ED25519).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
    let signing_cert = params.signed_by(&signing_key, &ca, &ca_key).unwrap();
    let signing_path = dir.path().join("signing.pem");
    std::fs::write(&signing_path, signing_cert.pem()).unwrap();
    let (addr, shutdown, task, ready) = start(Some(signing_path)).await;
    ready.await.expect("tallyd started");
    let owner = connect(addr, owner_token, &data).await.unwrap();
    let (lease, _) = owner
        .borrow("vray", 1, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(lease.kind, LeaseKind::Borrowed);
    let trust = Trust::from_file(&ca_path).unwrap();
    let verdict = owner
        .borrow_store()
        .unwrap()
        .verify_offline("vray", &trust, owner.machine_id())
        .unwrap();
    assert!(verdict.valid, "{verdict:?}");
    drop(owner);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// `TALLY_MACHINE_ID` cannot move a borrow to another machine that has an id of its own;
/// on a machine without one (a container) it is the machine id.
#[tokio::test]
async fn tally_machine_id_does_not_override_the_machines_own_id() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("user-data");
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let run = |files: &Path, env: &str, args: &[&str]| {
        Command::new(CLI)
            .args(args)
            .env("TALLY_DATA_DIR", &data)
            .env("TALLY_TEST_MACHINE_ID_FILES", files)
            .env("TALLY_MACHINE_ID", env)
            .env("HOME", "/nonexistent")
            .output()
            .unwrap()
    };
    let laptop = dir.path().join("laptop-machine-id");
    std::fs::write(&laptop, "laptop-1\n").unwrap();
    let desktop = dir.path().join("desktop-machine-id");
    std::fs::write(&desktop, "desktop-9\n").unwrap();
    let container = dir.path().join("no-such-machine-id");
    let add = [
        "--config",
        config,
        "entitlement",
        "add",
        "vray",
        "--seats",
        "2",
        "--borrowable",
    ];
    assert_eq!(run(&laptop, "x", &add).status.code(), Some(0));
    let out = run(
        &laptop,
        "desktop-9",
        &[
            "--config", config, "--json", "borrow", "vray", "--for", "1h",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let verify = ["--config", config, "--json", "verify", "vray"];
    // The laptop, whatever the variable says.
    let out = run(&laptop, "desktop-9", &verify);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Another machine with an id of its own cannot claim the laptop's.
    let out = run(&desktop, "laptop-1", &verify);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(reason(&out).contains("another machine"), "{out:?}");
    // A container without a machine id: the variable is its id.
    let out = run(&container, "laptop-1", &verify);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = run(&container, "desktop-9", &verify);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

/// Online, `verify` asks the server: a token file restored after its borrow was returned
/// fails while a server answers, and (as with every offline license) passes offline.
#[tokio::test]
async fn verify_asks_the_server_when_one_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("user-data");
    let mut daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let tally = |args: &[&str]| tally_on(&data, "laptop-1", args);
    tally(&[
        "--config",
        config,
        "entitlement",
        "add",
        "vray",
        "--seats",
        "2",
        "--borrowable",
    ]);
    let out = tally(&[
        "--config", config, "--json", "borrow", "vray", "--for", "1h",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let token_file = stdout_json(&out)["token_file"]
        .as_str()
        .unwrap()
        .to_string();
    let saved = std::fs::read(&token_file).unwrap();

    let verify = ["--config", config, "--json", "verify", "vray"];
    let out = tally(&verify);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout_json(&out)["checked"], "server");
    assert!(reason(&out).contains("the server"), "{out:?}");

    let out = tally(&["--config", config, "--json", "return", "vray"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout_json(&out)["returned"], 1);
    assert!(!Path::new(&token_file).exists());

    // The copy put back: valid offline, but the server no longer holds the borrow.
    std::fs::write(&token_file, &saved).unwrap();
    let out = tally(&verify);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(stdout_json(&out)["checked"], "server");
    assert!(reason(&out).contains("no longer holds"), "{out:?}");

    daemon.kill9();
    let out = tally(&verify);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout_json(&out)["checked"], "offline");
    assert!(
        reason(&out).contains("checked offline: no server reachable"),
        "{out:?}"
    );
}

/// A borrow whose answer is lost is sent again with the same request id and gets the same
/// lease and the same token (R4); the same id for another machine is another borrow.
#[tokio::test]
async fn a_retried_borrow_returns_the_same_lease_and_token() {
    use tally_protocol::{BorrowOnce, ClientId, Outcome, RequestId, ServerMessage};
    let server = TestServer::start().await;
    let owner = server.owner().await;
    add(&owner, borrowable("vray", 3, None, None)).await;
    let instance = ClientId(rand::random());
    let borrow = |machine: &str| {
        Request::BorrowOnce(BorrowOnce {
            request_id: RequestId([9; 16]),
            feature: "vray".into(),
            seats: 1,
            duration_secs: 600,
            machine_id: machine.into(),
        })
    };
    let granted = |answer: ServerMessage| match answer {
        ServerMessage::Response {
            outcome: Outcome::Ok(Response::Borrowed(b)),
            ..
        } => b,
        other => panic!("{other:?}"),
    };
    let mut first = RawConn::signed_in(&server, instance).await;
    let a = granted(first.request(1, borrow("m1")).await);
    // The answer is "lost": the client reconnects and sends the request again.
    drop(first);
    let mut second = RawConn::signed_in(&server, instance).await;
    let b = granted(second.request(1, borrow("m1")).await);
    assert_eq!(a.lease.id, b.lease.id);
    assert_eq!(a.token, b.token, "the same token, signed again");
    assert_eq!(status(&owner, "vray").await.borrowed, 1);

    // The same request id bound to another machine is a borrow of its own.
    let c = granted(second.request(2, borrow("m2")).await);
    assert_ne!(c.lease.id, a.lease.id);
    assert_eq!(status(&owner, "vray").await.borrowed, 2);

    // The first request form still works, each one a new borrow.
    let old = Request::Borrow(tally_protocol::Borrow {
        feature: "vray".into(),
        seats: 1,
        duration_secs: 600,
        machine_id: "m1".into(),
    });
    let d = granted(second.request(3, old).await);
    assert!(![a.lease.id, c.lease.id].contains(&d.lease.id));
    assert_eq!(status(&owner, "vray").await.borrowed, 3);
    server.stop().await;
}

/// `tally return` with another user's token on the laptop: the server holds no such borrow
/// for them, so nothing is returned, the command fails and the token file stays; its owner
/// can still give the seat back.
#[tokio::test]
async fn return_keeps_the_token_unless_the_server_confirms() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("user-data");
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let owner_config = daemon.client_toml();
    let owner_config = owner_config.to_str().unwrap();
    let tally = |args: &[&str]| tally_on(&data, "laptop-1", args);
    tally(&[
        "--config",
        owner_config,
        "entitlement",
        "add",
        "vray",
        "--seats",
        "2",
        "--borrowable",
    ]);
    let out = tally(&[
        "--config",
        owner_config,
        "--json",
        "user",
        "add",
        "ben@studio.com",
    ]);
    let ben_token = stdout_json(&out)["token"].as_str().unwrap().to_string();
    let out = tally(&[
        "--config",
        owner_config,
        "--json",
        "borrow",
        "vray",
        "--for",
        "1h",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let token_file = stdout_json(&out)["token_file"]
        .as_str()
        .unwrap()
        .to_string();

    let out = tally(&[
        "--config",
        owner_config,
        "--token",
        &ben_token,
        "--json",
        "return",
        "vray",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let error = &stdout_json(&out)["error"];
    assert_eq!(error["code"], "not_found");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("nothing to return")
            && error["message"].as_str().unwrap().contains("is kept"),
        "{error}"
    );
    assert!(Path::new(&token_file).exists(), "the token file stays");
    let out = tally(&["--config", owner_config, "--json", "status", "vray"]);
    assert_eq!(stdout_json(&out)["features"][0]["borrowed"], 1);

    let out = tally(&["--config", owner_config, "--json", "return", "vray"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout_json(&out)["returned"], 1);
    assert!(!Path::new(&token_file).exists());
    let out = tally(&["--config", owner_config, "--json", "status", "vray"]);
    assert_eq!(stdout_json(&out)["features"][0]["borrowed"], 0);

    // Nothing left: an error, not `returned 0`.
    let out = tally(&["--config", owner_config, "return", "vray"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no borrow of vray is kept")
            || String::from_utf8_lossy(&out.stdout).contains("no borrow of vray is kept"),
        "{out:?}"
    );
}
