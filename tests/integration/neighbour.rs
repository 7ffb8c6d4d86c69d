//! The `tally` binary under a hostile server and a hostile neighbour: times no calendar
//! holds (past year 9999, `i64::MAX`), borrow token files that are corrupt, huge, FIFOs or
//! devices beside good ones, a CA or token file that is `/dev/zero`, a FIFO or a gigabyte,
//! a token others can read, servers that are not `HOST:PORT`, and a lease listing that fills
//! a 16 MiB frame. Each case ends at once; the minute after which a run is killed is only a
//! safety net.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use tally_protocol::{
    key_id, BorrowClaims, Entitlement, EntitlementKind, FeatureStatus, HeldLease, LeaseId,
    LeaseInfo, LeaseKind, LeaseSource, LeasesPage, Outcome, Request, Response, MAX_RESPONSE_FRAME,
    MAX_TIME,
};

use crate::fake::{honest, FakeServer, Reply, Script};
use crate::harness::*;

/// Times past what RFC 3339 can write, and before 1970.
const FAR: [i64; 3] = [MAX_TIME + 1, i64::MAX, i64::MIN];

/// How long a run may take before it is killed and the test fails.
const SAFETY_NET: Duration = Duration::from_secs(60);

/// `tally ARGS` with the extra environment `env`, no HOME and no TALLY_* of the test's own.
fn tally(args: &[&str], env: &[(&str, OsString)]) -> Command {
    let mut command = Command::new(CLI);
    command
        .args(args)
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "TALLY_CONFIG",
        "TALLY_SERVER",
        "TALLY_CA",
        "TALLY_TOKEN",
        "TALLY_DATA_DIR",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
    ] {
        command.env_remove(var);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Runs `command` on a blocking thread (the fake server keeps serving meanwhile); kills it
/// and fails when it has not ended within [`SAFETY_NET`].
async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || {
        let child = command.spawn().expect("tally starts");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(child.wait_with_output());
        });
        match ended.recv_timeout(SAFETY_NET) {
            Ok(output) => output.expect("tally's output"),
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                panic!("tally did not end within {SAFETY_NET:?}");
            }
        }
    })
    .await
    .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lease(id: u128, feature: &str, granted_at: i64, expires_at: i64) -> LeaseInfo {
    LeaseInfo {
        id: LeaseId(id.to_be_bytes()),
        feature: feature.into(),
        seats: 1,
        user: "owner@localhost".into(),
        host: "h".into(),
        kind: LeaseKind::Online,
        source: LeaseSource::Floating,
        granted_at,
        expires_at,
    }
}

fn figures(feature: &str) -> FeatureStatus {
    FeatureStatus {
        feature: feature.into(),
        total: 1,
        assigned: 0,
        floating: 1,
        in_use: 1,
        borrowed: 0,
        available: 0,
        queued: 0,
    }
}

/// A checkout whose lease ends past year 9999 (or at `i64::MAX`) runs the command with
/// `--json`, prints the lease, and checks it in when the command ends.
#[tokio::test]
async fn a_checkout_past_year_9999_runs_the_command_and_checks_in() {
    let server = TestServer::start().await;
    for (n, at) in FAR.into_iter().enumerate() {
        let fake = FakeServer::start(
            &server,
            Script::honest(1_000).replying(move |request| match request {
                Request::Checkout(_) => Reply::Answer(Outcome::Ok(Response::Lease(lease(
                    7 + n as u128,
                    "vray",
                    at,
                    at,
                )))),
                Request::Checkin(checkin) => {
                    Reply::Answer(Outcome::Ok(Response::CheckedIn(checkin.lease)))
                }
                other => Reply::Answer(honest(other)),
            }),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let config = fake.client_toml(dir.path());
        let ran = dir.path().join("ran");
        let script = format!("echo ran > {}", ran.display());
        let out = run(tally(
            &[
                "--config",
                config.to_str().unwrap(),
                "--json",
                "checkout",
                "vray",
                "--",
                "sh",
                "-c",
                &script,
            ],
            &[],
        ))
        .await;
        assert_eq!(out.status.code(), Some(0), "{at}: {}", stderr(&out));
        assert!(ran.exists(), "{at}: the command did not run");
        let doc = stdout_json(&out);
        let printed = doc["lease"]["expires_at"].as_str().unwrap();
        assert!(printed.contains(&at.to_string()), "{at}: {printed}");
        assert!(
            fake.requests().contains(&"checkin"),
            "{at}: the lease was not checked in: {:?}",
            fake.requests()
        );
    }
}

/// `leases`, `status` and `status --all` print leases and entitlements whose times lie
/// outside 1970..=9999, for people and in JSON.
#[tokio::test]
async fn listings_print_times_past_year_9999_and_before_1970() {
    let server = TestServer::start().await;
    let leases: Vec<LeaseInfo> = FAR
        .into_iter()
        .enumerate()
        .map(|(n, at)| lease(n as u128 + 1, "vray", at, at))
        .collect();
    let holders: Vec<HeldLease> = leases
        .iter()
        .map(|l| HeldLease {
            lease: l.clone(),
            program: "p".into(),
            pid: 1,
            address: "127.0.0.1".into(),
        })
        .collect();
    let entitlements: Vec<Entitlement> = FAR
        .into_iter()
        .enumerate()
        .map(|(n, at)| Entitlement {
            id: n as u64 + 1,
            feature: "vray".into(),
            seats: 1,
            starts_at: at,
            expires_at: Some(at),
            kind: EntitlementKind::Standard,
            borrowable: true,
            max_borrow_secs: u64::MAX,
            reference: String::new(),
        })
        .collect();
    let fake = FakeServer::start(
        &server,
        Script::honest(1_000).replying(move |request| {
            Reply::Answer(match request {
                Request::LeasesPage(_) | Request::Leases(_) => {
                    Outcome::Ok(Response::LeasesPage(LeasesPage {
                        leases: leases.clone(),
                        next: None,
                    }))
                }
                Request::HoldersPage(_) => {
                    Outcome::Ok(Response::Holders(tally_protocol::HoldersPage {
                        holders: holders.clone(),
                        next: None,
                    }))
                }
                Request::Figures(_) => {
                    Outcome::Ok(Response::Figures(vec![tally_protocol::FeatureFigures {
                        status: figures("vray"),
                        reserved: 0,
                    }]))
                }
                Request::EntitlementList(_) => {
                    Outcome::Ok(Response::Entitlements(entitlements.clone()))
                }
                other => honest(other),
            })
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = fake.client_toml(dir.path());
    let config = config.to_str().unwrap();
    for args in [
        &["leases"][..],
        &["status"],
        &["status", "--all"],
        &["entitlement", "list"],
    ] {
        for json in [false, true] {
            let mut all = vec!["--config", config];
            if json {
                all.push("--json");
            }
            all.extend_from_slice(args);
            let out = run(tally(&all, &[])).await;
            assert_eq!(out.status.code(), Some(0), "{all:?}: {}", stderr(&out));
            let text = if json {
                stdout_json(&out).to_string()
            } else {
                stdout(&out)
            };
            // `status` shows no times in JSON, and for people only the entitlements that
            // start later.
            match (args, json) {
                (["status"], true) => {}
                (["status"], false) => assert!(text.contains("after year 9999"), "{text}"),
                _ => assert!(
                    text.contains("after year 9999") && text.contains("before 1970"),
                    "{all:?}: {text}"
                ),
            }
        }
    }
}

/// Signs borrow tokens as the test server would, for this machine.
struct Signer {
    key: Ed25519KeyPair,
    chain: Vec<Vec<u8>>,
}

impl Signer {
    fn of(server: &TestServer) -> Signer {
        let data = server.data_dir();
        Signer {
            key: Ed25519KeyPair::from_pkcs8(&std::fs::read(data.join("signing.key")).unwrap())
                .unwrap(),
            chain: CertificateDer::pem_file_iter(data.join("tls/signing.pem"))
                .unwrap()
                .map(|c| c.unwrap().as_ref().to_vec())
                .collect(),
        }
    }

    fn token(&self, feature: &str, expires_at: i64) -> String {
        let now = tally_protocol::now_millis();
        let claims = BorrowClaims {
            server_id: "fake".into(),
            key_id: key_id(self.key.public_key().as_ref()),
            lease: LeaseId(rand::random()),
            feature: feature.into(),
            seats: 1,
            user: "owner@localhost".into(),
            machine_id: MACHINE.into(),
            issued_at: now,
            expires_at,
        };
        let signature = self.key.sign(&claims.to_bytes());
        claims.encode(signature.as_ref(), &self.chain)
    }
}

/// The machine the planted tokens are bound to.
const MACHINE: &str = "neighbour-test-machine";

/// The environment of a `tally` that keeps its borrows in `data` on the machine
/// [`MACHINE`].
fn borrow_env(dir: &Path, data: &Path) -> Vec<(&'static str, OsString)> {
    let id = dir.join("machine-id");
    std::fs::write(&id, format!("{MACHINE}\n")).unwrap();
    vec![
        ("TALLY_DATA_DIR", data.into()),
        ("TALLY_TEST_MACHINE_ID_FILES", id.into()),
    ]
}

/// A borrow directory with a good token, one past year 9999, one at `i64::MAX`, and beside
/// them a corrupt one, an empty one, a FIFO, `/dev/zero` and a sparse gigabyte: `tally
/// borrows` lists every good one and names each bad file, at once.
#[tokio::test]
async fn one_bad_borrow_file_does_not_hide_the_good_ones() {
    let server = TestServer::start().await;
    let signer = Signer::of(&server);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let borrows = data.join("borrows");
    std::fs::create_dir_all(&borrows).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let now = tally_protocol::now_millis();
    let good = [
        ("good", now + 3_600_000),
        ("far", MAX_TIME + 1),
        ("last", i64::MAX),
    ];
    for (feature, expires_at) in good {
        std::fs::write(
            borrows.join(format!("{feature}.1.token")),
            signer.token(feature, expires_at) + "\n",
        )
        .unwrap();
    }
    std::fs::write(borrows.join("corrupt.1.token"), "tally2.garbage\n").unwrap();
    std::fs::write(borrows.join("empty.1.token"), "").unwrap();
    nix::unistd::mkfifo(
        &borrows.join("fifo.1.token"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/zero", borrows.join("zero.1.token")).unwrap();
    std::fs::File::create(borrows.join("huge.1.token"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let ca = server.data_dir().join("tls/ca.pem");
    let env = borrow_env(dir.path(), &data);
    let ca = ca.to_str().unwrap();

    let out = run(tally(&["--json", "--ca", ca, "borrows"], &env)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc = stdout_json(&out);
    let list = doc["borrows"].as_array().unwrap();
    let entry = |name: &str| {
        list.iter()
            .find(|b| {
                b["file"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/{name}.1.token"))
            })
            .unwrap_or_else(|| panic!("{name} is not listed: {doc}"))
    };
    for (feature, expires_at) in good {
        let borrow = entry(feature);
        assert_eq!(borrow["valid"], true, "{borrow}");
        assert_eq!(borrow["feature"], feature);
        if expires_at > MAX_TIME {
            assert!(
                borrow["expires_at"]
                    .as_str()
                    .unwrap()
                    .contains(&expires_at.to_string()),
                "{borrow}"
            );
        }
    }
    let bad = [
        ("corrupt", "malformed token"),
        ("empty", "malformed token"),
        ("fifo", "is not a regular file (it is a FIFO)"),
        ("zero", "is not a regular file (it is a character device)"),
        ("huge", "is too large (1 GiB); at most 64 KiB"),
    ];
    for (name, why) in bad {
        let borrow = entry(name);
        assert_eq!(borrow["valid"], false, "{borrow}");
        assert!(borrow["reason"].as_str().unwrap().contains(why), "{borrow}");
    }
    assert_eq!(list.len(), good.len() + bad.len(), "{doc}");

    // For people: each good feature on its row, each bad file named on its own.
    let out = run(tally(&["--ca", ca, "borrows"], &env)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for (feature, _) in good {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{feature} "))),
            "{text}"
        );
    }
    for (name, _) in bad {
        assert!(text.contains(&format!("{name}.1.token")), "{text}");
    }

    // `verify` of the far feature is not hidden by the bad files either.
    let out = run(tally(&["--json", "--ca", ca, "verify", "last"], &env)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["valid"], true);
}

/// What a file given as the CA or the token file can be that is no PEM or token.
enum Hostile {
    DevZero,
    Fifo,
    Huge,
}

impl Hostile {
    const ALL: [Hostile; 3] = [Hostile::DevZero, Hostile::Fifo, Hostile::Huge];

    /// Makes it in `dir`; returns its path and what the error must say.
    fn make(&self, dir: &Path, name: &str) -> (PathBuf, &'static str) {
        match self {
            Hostile::DevZero => (
                PathBuf::from("/dev/zero"),
                "is not a regular file (it is a character device)",
            ),
            Hostile::Fifo => {
                let path = dir.join(name);
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .unwrap();
                (path, "is not a regular file (it is a FIFO)")
            }
            Hostile::Huge => {
                let path = dir.join(name);
                std::fs::File::create(&path)
                    .unwrap()
                    .set_len(1 << 30)
                    .unwrap();
                (path, "is too large (1 GiB); at most 1 MiB")
            }
        }
    }
}

/// `/dev/zero`, a FIFO or a sparse gigabyte as the CA (for a command that needs a server,
/// and for `borrows`), the token file or the client file is refused at once with a usage
/// error naming the file and what is wrong with it; nothing is dialled.
#[tokio::test]
async fn a_device_fifo_or_huge_file_as_ca_token_or_config_fails_at_once() {
    let server = TestServer::start().await;
    let fake = FakeServer::start(&server, Script::honest(1_000)).await;
    let good_ca = server.data_dir().join("tls/ca.pem");
    let server_arg = format!("localhost:{}", fake.addr.port());
    for hostile in Hostile::ALL {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let env = vec![("TALLY_DATA_DIR", data.into_os_string())];
        let token = dir.path().join("token");
        std::fs::write(&token, "t\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();

        let (ca, why) = hostile.make(dir.path(), "ca.pem");
        let ca = ca.to_str().unwrap();
        let token_arg = token.to_str().unwrap();
        for args in [
            vec![
                "--server",
                &server_arg,
                "--ca",
                ca,
                "--token-file",
                token_arg,
                "status",
            ],
            vec!["--ca", ca, "borrows"],
        ] {
            let mut all = vec!["--json"];
            all.extend(args);
            let out = run(tally(&all, &env)).await;
            assert_eq!(out.status.code(), Some(2), "{all:?}: {}", stderr(&out));
            let message = stdout_json(&out)["error"]["message"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                message.contains(&format!("CA file {ca} {why}")),
                "{all:?}: {message}"
            );
        }

        let (bad_token, why) = hostile.make(dir.path(), "bad-token");
        let bad_token = bad_token.to_str().unwrap();
        let out = run(tally(
            &[
                "--json",
                "--server",
                &server_arg,
                "--ca",
                good_ca.to_str().unwrap(),
                "--token-file",
                bad_token,
                "status",
            ],
            &env,
        ))
        .await;
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let message = stdout_json(&out)["error"]["message"].to_string();
        assert!(
            message.contains(&format!("token file {bad_token} {why}")),
            "{message}"
        );

        let (bad_config, why) = hostile.make(dir.path(), "client.toml");
        let bad_config = bad_config.to_str().unwrap();
        let out = run(tally(&["--json", "--config", bad_config, "status"], &env)).await;
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let message = stdout_json(&out)["error"]["message"].to_string();
        assert!(
            message.contains(&format!("client configuration {bad_config} {why}")),
            "{message}"
        );
    }
    assert_eq!(fake.accepted.load(Ordering::SeqCst), 0);
}

/// A token file, or a client file holding `token`, that others can read is warned about
/// once, naming the file and `chmod 600`; a private one is not.
#[tokio::test]
async fn a_token_others_can_read_is_warned_about() {
    let server = TestServer::start().await;
    let fake = FakeServer::start(
        &server,
        Script::honest(1_000).replying(|request| match request {
            Request::Figures(_) => Reply::Answer(Outcome::Ok(Response::Figures(Vec::new()))),
            Request::EntitlementList(_) => {
                Reply::Answer(Outcome::Ok(Response::Entitlements(Vec::new())))
            }
            other => Reply::Answer(honest(other)),
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = fake.client_toml(dir.path());
    let token = dir.path().join("token");
    let status = |config: PathBuf| async move {
        let out = run(tally(
            &["--config", config.to_str().unwrap(), "status"],
            &[],
        ))
        .await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stderr(&out)
    };
    let quiet = status(config.clone()).await;
    assert!(!quiet.contains("warning"), "{quiet}");

    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let warned = status(config.clone()).await;
    let fix = format!("chmod 600 {}", token.display());
    assert_eq!(warned.matches(&fix).count(), 1, "{warned}");
    assert!(
        warned.contains(&format!("the token file {} holds a token", token.display())),
        "{warned}"
    );
    assert!(warned.contains("mode 0644"), "{warned}");

    // The token in the client file itself.
    let inline = dir.path().join("inline.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("token_file"))
        .chain(["token = \"t\""])
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&inline, text).unwrap();
    std::fs::set_permissions(&inline, std::fs::Permissions::from_mode(0o640)).unwrap();
    let warned = status(inline.clone()).await;
    let fix = format!("chmod 600 {}", inline.display());
    assert_eq!(warned.matches(&fix).count(), 1, "{warned}");
    std::fs::set_permissions(&inline, std::fs::Permissions::from_mode(0o600)).unwrap();
    let quiet = status(inline).await;
    assert!(!quiet.contains("warning"), "{quiet}");
}

/// A `servers` entry that is not HOST:PORT is a usage error (exit 2) naming the entry and
/// where it was given, and no server of the list is dialled, not even a good one before it.
#[tokio::test]
async fn a_server_that_is_not_host_port_is_a_usage_error() {
    let server = TestServer::start().await;
    let fake = FakeServer::start(&server, Script::honest(1_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fake.client_toml(dir.path());
    let good = format!("localhost:{}", fake.addr.port());
    let text = std::fs::read_to_string(&config).unwrap();
    for bad in [
        "lic1:port",
        "lic1:27010:1",
        "https://lic1",
        "lic1 27010",
        "lic1:0",
    ] {
        let edited = text.replace(
            &format!("servers = [\"{good}\"]"),
            &format!("servers = [\"{good}\", \"{bad}\"]"),
        );
        assert_ne!(edited, text);
        std::fs::write(&config, edited).unwrap();
        let out = run(tally(
            &["--json", "--config", config.to_str().unwrap(), "status"],
            &[],
        ))
        .await;
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        let doc = stdout_json(&out);
        assert_eq!(doc["error"]["code"], "invalid");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("server {bad:?} is not HOST:PORT")),
            "{message}"
        );
        assert!(
            message.contains(&format!("`servers` in {}", config.display())),
            "{message}"
        );
    }
    std::fs::write(&config, &text).unwrap();
    let out = run(tally(
        &[
            "--json",
            "--config",
            config.to_str().unwrap(),
            "--server",
            &good,
            "--server",
            "lic1:port",
            "status",
        ],
        &[],
    ))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let message = stdout_json(&out)["error"]["message"].to_string();
    assert!(message.contains("(given in --server)"), "{message}");
    let out = run(tally(
        &["--json", "--config", config.to_str().unwrap(), "status"],
        &[("TALLY_SERVER", format!("{good},lic1:port").into())],
    ))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let message = stdout_json(&out)["error"]["message"].to_string();
    assert!(message.contains("TALLY_SERVER"), "{message}");
    assert_eq!(fake.accepted.load(Ordering::SeqCst), 0);
}

/// The peak resident memory of the children this test process has waited for, in KiB.
fn children_peak_rss_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .unwrap()
        .max_rss()
}

/// A lying server that fills a whole 16 MiB frame with leases: `tally --json leases`
/// prints every one of them as one document, writing them as they come, so that its peak
/// memory stays a small multiple of the frame rather than of the JSON of every lease.
#[tokio::test]
async fn a_16_mib_lease_listing_is_printed_in_bounded_memory() {
    let server = TestServer::start().await;
    let one = postcard::to_allocvec(&lease(u128::MAX, "f", 1, 2))
        .unwrap()
        .len();
    let count = (MAX_RESPONSE_FRAME - 1024) / one;
    let leases: Vec<LeaseInfo> = (0..count)
        .map(|n| lease(u128::MAX - n as u128, "f", 1, 2))
        .collect();
    let page = Outcome::Ok(Response::LeasesPage(LeasesPage { leases, next: None }));
    let fake = FakeServer::start(
        &server,
        Script::honest(1_000).replying(move |request| match request {
            Request::LeasesPage(_) => Reply::Answer(page.clone()),
            other => Reply::Answer(honest(other)),
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = fake.client_toml(dir.path());
    let out = run(tally(
        &["--json", "--config", config.to_str().unwrap(), "leases"],
        &[],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let printed = doc["leases"].as_array().unwrap();
    assert_eq!(printed.len(), count);
    assert_eq!(printed[0]["expires_at"], "1970-01-01T00:00:00Z");
    let peak_mib = children_peak_rss_kib() / 1024;
    eprintln!("{count} leases in a 16 MiB frame: tally's peak RSS {peak_mib} MiB");
    // Holding the frame and the decoded page is about a hundred MiB; the JSON of every
    // lease as one document took gigabytes.
    assert!(peak_mib < 320, "peak RSS {peak_mib} MiB");
}
