//! The HTTPS side of `tallyd` (SPEC §10): `/metrics` read with a Prometheus text parser and
//! checked against `tally --json status` of the same moment, its counters, its bearer
//! token (also reloaded on SIGHUP), `/healthz`, `/readyz` on a single node, on a store that
//! stops answering and on a PostgreSQL cluster's leader and standby, TLS only, and
//! `tallyd check-config` on a bad `[http]`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_server::config::{HttpConfig, Secret};

use crate::cluster::{Cluster, ClusterSpec, TestDatabase};
use crate::harness::*;
use crate::policy::user_config;

/// An HTTPS client trusting only `ca_pem`, reaching `localhost` at `addr`.
fn https(ca_pem: &[u8], addr: SocketAddr) -> reqwest::Client {
    https_with(ca_pem, addr, reqwest::redirect::Policy::default())
}

/// The same, following redirects as `redirects` says.
pub fn https_with(
    ca_pem: &[u8],
    addr: SocketAddr,
    redirects: reqwest::redirect::Policy,
) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(ca_pem) {
        let cert: rustls_pki_types::CertificateDer = cert.expect("the CA is PEM");
        roots.add(cert).expect("the CA is usable");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .resolve("localhost", addr)
        .redirect(redirects)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{path}", addr.port())
}

/// GETs `path`: the status and the body.
async fn get(client: &reqwest::Client, addr: SocketAddr, path: &str) -> (u16, String) {
    let response = client.get(url(addr, path)).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// One scrape, parsed.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    async fn fetch(client: &reqwest::Client, addr: SocketAddr, token: Option<&str>) -> Scrape {
        let mut request = client.get(url(addr, "/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        let text = response.text().await.unwrap();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Scrape(prometheus_parse::Scrape::parse(lines).unwrap())
    }

    /// The value of the sample `name` whose labels are exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name} is not a number: {other:?}"),
            })
    }

    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// Every feature a per-feature gauge names, with its value.
    fn per_feature(&self, name: &str) -> BTreeMap<String, f64> {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| {
                let value = match s.value {
                    prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                    ref other => panic!("{name} is not a gauge: {other:?}"),
                };
                (s.labels.get("feature").unwrap().to_string(), value)
            })
            .collect()
    }

    fn has(&self, name: &str) -> bool {
        self.0.samples.iter().any(|s| s.metric == name)
    }
}

/// The gauges of `tally status`, and the JSON field of each.
const FIGURES: [(&str, &str); 7] = [
    ("tally_seats_total", "total"),
    ("tally_seats_assigned", "assigned"),
    ("tally_seats_in_use", "in_use"),
    ("tally_seats_borrowed", "borrowed"),
    ("tally_seats_available", "available"),
    ("tally_seats_reserved", "reserved"),
    ("tally_queue_seats", "queued"),
];

/// Polls `check` every 50 ms until it holds, for at most `within`.
async fn until<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `tally --config CONFIG --json ARGS...` with its own data directory and machine id
/// (for borrows).
pub fn tally(data: &Path, config: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(CLI)
        .args(["--config", config.to_str().unwrap(), "--json"])
        .args(args)
        .env("TALLY_DATA_DIR", data)
        .env("TALLY_MACHINE_ID", "http-test-machine")
        .env_remove("TALLY_CONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // A checkout prints its grant, then its outcome: the last document is the answer.
    let doc = text
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line).ok())
        .unwrap_or(Value::Null);
    (out.status.code(), doc)
}

/// Processes that hold seats or wait, ended when the test ends however it ends.
#[derive(Default)]
pub struct Holders(Vec<Child>);

impl Holders {
    pub fn hold(&mut self, config: &Path, feature: &str) {
        self.0.push(spawn_holder(config, feature).0);
    }

    /// `tally checkout FEATURE --wait -- true`, which waits in the queue.
    fn wait(&mut self, config: &Path, feature: &str) {
        let child = Command::new(CLI)
            .args(["--config", config.to_str().unwrap(), "--json", "checkout"])
            .args([feature, "--wait", "--", "true"])
            .env("HOME", "/nonexistent")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.0.push(child);
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A daemon process serving `[http]` on a port of its own, with `extra` configuration.
fn daemon_with_http(dir: &Path, extra: &str, env: &[(&str, &str)]) -> (DaemonProcess, SocketAddr) {
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = std::fs::File::create(dir.join("tallyd.log")).unwrap();
    let config = format!("[http]\nlisten = \"{http}\"\n{extra}");
    let daemon = DaemonProcess::start_env(dir, &config, Stdio::from(log), env);
    (daemon, http)
}

/// With several features, an assignment, leases, a borrow, a reserve rule and a queued
/// checkout, every per-feature gauge equals `tally --json status` of the same moment, each
/// entitlement's end is exported, and the checkouts and denials counters rise with each
/// grant and each refusal (`no_seat`, `denied`, `queue_timeout`).
#[tokio::test]
async fn metrics_agree_with_tally_status_and_count_checkouts_and_denials() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("user-data");
    let (daemon, http) = daemon_with_http(dir.path(), "", &[]);
    let owner = daemon.client_toml();
    let ok = |config: &Path, args: &[&str]| {
        let (code, doc) = tally(&data, config, args);
        assert_eq!(code, Some(0), "{args:?}: {doc}");
        doc
    };
    let vray = ok(
        &owner,
        &["entitlement", "add", "vray", "--seats", "6", "--borrowable"],
    );
    let nuke = ok(
        &owner,
        &[
            "entitlement",
            "add",
            "nuke",
            "--seats",
            "1",
            "--expires",
            "2031-05-01T12:00:00Z",
        ],
    );
    ok(&owner, &["entitlement", "add", "maya", "--seats", "3"]);
    let mut users = BTreeMap::new();
    for name in ["ana", "bo"] {
        let email = format!("{name}@studio");
        let doc = ok(&owner, &["user", "add", &email, "--role", "member"]);
        let token = doc["token"].as_str().unwrap();
        users.insert(name, user_config(&daemon, name, token));
    }
    let (ana, bo) = (users["ana"].clone(), users["bo"].clone());
    ok(&owner, &["assign", "bo@studio", "vray"]);
    ok(&owner, &["group", "add", "leads", "user:ana@studio"]);
    ok(&owner, &["policy", "add", "vray", "reserve", "2", "leads"]);
    ok(&owner, &["group", "add", "outsiders", "user:bo@studio"]);
    ok(&owner, &["policy", "add", "nuke", "exclude", "outsiders"]);

    let mut holders = Holders::default();
    holders.hold(&owner, "vray");
    holders.hold(&bo, "vray");
    holders.hold(&owner, "nuke");
    ok(&owner, &["borrow", "vray", "--for", "1h"]);
    holders.wait(&ana, "nuke");
    // Refused: no seat of nuke without waiting, and bo by the exclude rule.
    let (code, doc) = tally(&data, &owner, &["checkout", "nuke", "--", "true"]);
    assert_ne!(code, Some(0), "{doc}");
    assert_eq!(doc["error"]["code"], "no_seat", "{doc}");
    let (code, doc) = tally(&data, &bo, &["checkout", "nuke", "--", "true"]);
    assert_ne!(code, Some(0), "{doc}");
    assert_eq!(doc["error"]["code"], "denied", "{doc}");

    let client = https(
        &std::fs::read(daemon.data_dir.join("tls/ca.pem")).unwrap(),
        http,
    );
    let status = || ok(&owner, &["status"]);
    until(Duration::from_secs(10), "ana queued for nuke", || {
        let status = status();
        async move {
            status["features"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["feature"] == "nuke" && f["queued"] == 1)
        }
    })
    .await;

    let scrape = Scrape::fetch(&client, http, None).await;
    let status = status();
    let features = status["features"].as_array().unwrap();
    let names: BTreeSet<String> = features
        .iter()
        .map(|f| f["feature"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["maya".into(), "nuke".into(), "vray".into()])
    );
    for (metric, field) in FIGURES {
        let exported = scrape.per_feature(metric);
        let shown: BTreeMap<String, f64> = features
            .iter()
            .map(|f| {
                let feature = f["feature"].as_str().unwrap().to_string();
                (feature, f[field].as_f64().unwrap())
            })
            .collect();
        assert_eq!(exported, shown, "{metric} against status's {field}");
    }
    // The state this test made, so that agreeing is not agreeing on zeros.
    let vray_figures = &features.iter().find(|f| f["feature"] == "vray").unwrap();
    assert_eq!(
        (
            vray_figures["assigned"].as_u64(),
            vray_figures["in_use"].as_u64(),
            vray_figures["borrowed"].as_u64(),
            vray_figures["reserved"].as_u64(),
            vray_figures["available"].as_u64(),
        ),
        (Some(1), Some(2), Some(1), Some(2), Some(1)),
        "{vray_figures}"
    );
    let nuke_id = nuke["entitlement"]["id"].to_string();
    assert_eq!(
        scrape.value(
            "tally_entitlement_expiry_timestamp_seconds",
            &[("feature", "nuke"), ("entitlement", &nuke_id)]
        ),
        Some(1_935_403_200.0)
    );
    let vray_id = vray["entitlement"]["id"].to_string();
    assert_eq!(
        scrape.value(
            "tally_entitlement_expiry_timestamp_seconds",
            &[("feature", "vray"), ("entitlement", &vray_id)]
        ),
        None,
        "an entitlement that never ends has no end"
    );
    assert_eq!(scrape.value("tally_users_active", &[]), Some(3.0));
    assert_eq!(scrape.value("tally_leader", &[]), Some(1.0));
    assert_eq!(scrape.value("tally_epoch", &[]), Some(0.0));
    // The three holders and ana's wait are connected; the CLI runs of status may be too.
    assert!(scrape.count("tally_connections", &[]) >= 4.0);
    assert!(scrape.count("tally_commit_seconds_count", &[]) >= 10.0);
    let checkouts =
        |s: &Scrape, feature: &str| s.count("tally_checkouts_total", &[("feature", feature)]);
    let denials = |s: &Scrape, feature: &str, reason: &str| {
        s.count(
            "tally_denials_total",
            &[("feature", feature), ("reason", reason)],
        )
    };
    // Owner's and bo's leases and the borrow; the owner's nuke.
    assert_eq!(checkouts(&scrape, "vray"), 3.0);
    assert_eq!(checkouts(&scrape, "nuke"), 1.0);
    assert_eq!(denials(&scrape, "nuke", "no_seat"), 1.0);
    assert_eq!(denials(&scrape, "nuke", "denied"), 1.0);
    assert_eq!(denials(&scrape, "nuke", "queue_timeout"), 0.0);

    // One more grant, one more refusal of each kind.
    ok(&owner, &["checkout", "vray", "--", "true"]);
    let (_, doc) = tally(&data, &owner, &["checkout", "nuke", "--", "true"]);
    assert_eq!(doc["error"]["code"], "no_seat", "{doc}");
    let (_, doc) = tally(&data, &bo, &["checkout", "nuke", "--", "true"]);
    assert_eq!(doc["error"]["code"], "denied", "{doc}");
    let (_, doc) = tally(
        &data,
        &owner,
        &["checkout", "nuke", "--wait", "1s", "--", "true"],
    );
    assert_eq!(doc["error"]["code"], "queue_timeout", "{doc}");
    let scrape = Scrape::fetch(&client, http, None).await;
    assert_eq!(checkouts(&scrape, "vray"), 4.0);
    assert_eq!(checkouts(&scrape, "nuke"), 1.0);
    assert_eq!(denials(&scrape, "nuke", "no_seat"), 2.0);
    assert_eq!(denials(&scrape, "nuke", "denied"), 2.0);
    assert_eq!(denials(&scrape, "nuke", "queue_timeout"), 1.0);
    assert_eq!(checkouts(&scrape, "maya"), 0.0);

    // Metered credits (SPEC §11): the balance and what was consumed, by meter, as
    // `credits status` has them.
    ok(&owner, &["credits", "add", "cloud", "100"]);
    ok(&owner, &["quota", "set", "ana@studio", "cloud", "80"]);
    ok(&ana, &["consume", "cloud", "30"]);
    let (_, doc) = tally(&data, &ana, &["consume", "cloud", "60"]);
    assert_eq!(doc["error"]["code"], "no_credit", "{doc}");
    let status = ok(&owner, &["credits", "status", "cloud"]);
    let scrape = Scrape::fetch(&client, http, None).await;
    let cloud = [("meter", "cloud")];
    assert_eq!(
        (
            scrape.value("tally_credits_balance", &cloud),
            scrape.count("tally_credits_consumed_total", &cloud),
        ),
        (
            status["meters"][0]["balance"].as_f64(),
            status["meters"][0]["consumed"].as_f64().unwrap(),
        ),
        "{status}"
    );
    assert_eq!(scrape.value("tally_credits_balance", &cloud), Some(70.0));
}

/// `/metrics` with `http.metrics_token`: no header or a wrong token is 401, the right one
/// 200; `/healthz` and `/readyz` need none; unknown paths are 404, other methods 405, and
/// bytes that are not HTTP 400.
#[tokio::test]
async fn the_metrics_token_is_required_and_the_probes_need_none() {
    const TOKEN: &str = "metrics-token-0123456789";
    let server = TestServer::start_with(|config| {
        config.http = Some(HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_token: Some(Secret(TOKEN.into())),
        });
    })
    .await;
    let http = server.http.expect("[http] is served");
    let client = https(&server.ca_pem(), http);
    let metrics = |auth: Option<String>| {
        let mut request = client.get(url(http, "/metrics"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move { request.send().await.unwrap() }
    };
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_string()),
    ] {
        let response = metrics(auth.clone()).await;
        assert_eq!(response.status().as_u16(), 401, "{auth:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body = response.text().await.unwrap();
        assert!(!body.contains("tally_"), "{body}");
    }
    let response = metrics(Some(format!("Bearer {TOKEN}"))).await;
    assert_eq!(response.status().as_u16(), 200);
    let scrape = Scrape::fetch(&client, http, Some(TOKEN)).await;
    assert_eq!(scrape.value("tally_leader", &[]), Some(1.0));
    assert!(scrape.has("tally_users_active"));

    assert_eq!(get(&client, http, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(&client, http, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(get(&client, http, "/nothing/here").await.0, 404);
    // The dashboard, to its sign-in page without a session.
    let (status, page) = get(&client, http, "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(r#"<form method="post" action="/signin">"#),
        "{page}"
    );
    let post = client.post(url(http, "/metrics")).bearer_auth(TOKEN);
    assert_eq!(post.send().await.unwrap().status().as_u16(), 405);
    // Not HTTP at all, over TLS: 400, and the daemon serves on.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = RawConn::tls(http, &server.ca_pem()).await;
        tls.write_all(b"\x00\x01 nonsense\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert_eq!(get(&client, http, "/healthz").await.0, 200);
    server.stop().await;
}

/// The listener speaks TLS only: a plain HTTP request gets no HTTP answer, and the
/// daemon serves on.
#[tokio::test]
async fn plain_http_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|config| {
        config.http = Some(HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_token: None,
        });
    })
    .await;
    let http = server.http.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer))
        .await
        .expect("the connection is closed")
        .ok();
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let client = https(&server.ca_pem(), http);
    let plain = client
        .get(format!("http://localhost:{}/healthz", http.port()))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    assert_eq!(get(&client, http, "/healthz").await.0, 200);
    server.stop().await;
}

/// At most `MAX_CONNECTIONS` HTTP connections at once: past them a connection is closed at
/// once, and a slot frees when one ends.
#[tokio::test]
async fn http_connections_are_capped() {
    let server = TestServer::start_with(|config| {
        config.http = Some(HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_token: None,
        });
        config.limits.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let http = server.http.unwrap();
    let client = https(&server.ca_pem(), http);
    // Connections that never start their handshake hold every slot.
    let mut silent = Vec::new();
    for _ in 0..tally_server::http::MAX_CONNECTIONS {
        silent.push(tokio::net::TcpStream::connect(http).await.unwrap());
    }
    until(
        Duration::from_secs(10),
        "a connection past the cap refused",
        || {
            let request = client.get(url(http, "/healthz"));
            async move { request.send().await.is_err() }
        },
    )
    .await;
    silent.pop();
    until(Duration::from_secs(10), "a slot freed", || {
        let request = client.get(url(http, "/healthz"));
        async move { request.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    server.stop().await;
}

/// `/readyz` is 503 once the store stops answering (the fault wrapper's `ping-hang`), while
/// `/healthz` stays 200; the metrics token is reloaded on SIGHUP.
#[tokio::test]
async fn readyz_fails_when_the_store_does_not_answer_and_the_token_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, http) = daemon_with_http(
        dir.path(),
        "metrics_token = \"first-token-0123456789\"\n",
        &[("TALLYD_TEST_FAULT", "ping-hang")],
    );
    let client = https(
        &std::fs::read(daemon.data_dir.join("tls/ca.pem")).unwrap(),
        http,
    );
    assert_eq!(get(&client, http, "/readyz").await, (200, "ready\n".into()));
    Scrape::fetch(&client, http, Some("first-token-0123456789")).await;

    // A new token on SIGHUP: the old one is refused, the new one taken.
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    let text = text.replace("first-token-0123456789", "second-token-0123456789");
    std::fs::write(&daemon.config_path, text).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let first = client
        .get(url(http, "/metrics"))
        .bearer_auth("first-token-0123456789");
    until(Duration::from_secs(10), "the old token refused", || {
        let request = first.try_clone().unwrap();
        async move { request.send().await.unwrap().status().as_u16() == 401 }
    })
    .await;
    Scrape::fetch(&client, http, Some("second-token-0123456789")).await;

    let owner = daemon.client_toml();
    let out = cli(&[
        "--config",
        owner.to_str().unwrap(),
        "entitlement",
        "add",
        "vray",
        "--seats",
        "1",
        "--ref",
        "fault-injection",
    ]);
    assert!(out.status.success(), "{out:?}");
    let (status, body) = get(&client, http, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, "not ready: the database did not answer within 2s\n");
    assert_eq!(get(&client, http, "/healthz").await, (200, "ok\n".into()));
}

/// `tallyd check-config` names each bad key of `[http]`.
#[test]
fn check_config_names_the_bad_http_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = |text: &str| -> PathBuf {
        let path = dir.path().join("tallyd.toml");
        let data = dir.path().join("data");
        let text = format!(
            "listen = \"127.0.0.1:27010\"\ndata_dir = {:?}\n{text}",
            data.display().to_string()
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let check = |path: &Path| {
        let out = Command::new(DAEMON)
            .args(["check-config", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = check(&config(
        "[http]\nlisten = \"127.0.0.1:27080\"\ntoken = \"x\"\n",
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("token") && err.contains("metrics_token"),
        "{err}"
    );
    let (code, err) = check(&config(
        "[http]\nlisten = \"127.0.0.1:27010\"\nmetrics_token = \"short\"\n",
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("http.listen = 127.0.0.1:27010 takes the port of listen"),
        "{err}"
    );
    assert!(
        err.contains("http.metrics_token is 5 characters long"),
        "{err}"
    );
    let (code, err) = check(&config("[http]\nlisten = \"127.0.0.1:27080\"\n"));
    assert_eq!(code, Some(0), "{err}");
}

/// On a 2-node PostgreSQL cluster, `/readyz` is 200 on the leader and 503 on the standby
/// (naming the leader), whose `/metrics` has no pool figures; cut from its database, the
/// leader's `/readyz` turns 503 and the other node's 200.
#[tokio::test]
async fn readyz_follows_the_leadership_of_a_cluster() {
    let Some(db) = TestDatabase::create("http_readyz").await else {
        return;
    };
    let mut cluster = Cluster::start(db, ClusterSpec::new(2).proxied().with_http()).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let standby = 1 - leader;
    let ca = std::fs::read(cluster.founder_data_dir().join("tls/ca.pem")).unwrap();
    let addr = |i: usize| cluster.nodes[i].http.expect("[http] is served");
    let (leader_http, standby_http) = (addr(leader), addr(standby));
    let (to_leader, to_standby) = (https(&ca, leader_http), https(&ca, standby_http));
    until(Duration::from_secs(20), "the leader ready", || {
        let request = to_leader.get(url(leader_http, "/readyz"));
        async move { request.send().await.unwrap().status().as_u16() == 200 }
    })
    .await;
    let (status, body) = get(&to_standby, standby_http, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("not ready: this node is a standby"),
        "{body}"
    );
    let scrape = Scrape::fetch(&to_standby, standby_http, None).await;
    assert_eq!(scrape.value("tally_leader", &[]), Some(0.0));
    for absent in ["tally_seats_total", "tally_users_active", "tally_epoch"] {
        assert!(!scrape.has(absent), "a standby exports {absent}");
    }
    let scrape = Scrape::fetch(&to_leader, leader_http, None).await;
    assert_eq!(scrape.value("tally_leader", &[]), Some(1.0));
    let epoch = scrape
        .value("tally_epoch", &[])
        .expect("the leader's epoch");
    assert!(epoch >= 1.0, "{epoch}");

    // The leader's database connection cut: not ready there, and the other takes over.
    cluster.proxy(leader).cut();
    until(Duration::from_secs(20), "the cut leader not ready", || {
        let request = to_leader.get(url(leader_http, "/readyz"));
        async move { request.send().await.unwrap().status().as_u16() == 503 }
    })
    .await;
    until(Duration::from_secs(20), "the other node ready", || {
        let request = to_standby.get(url(standby_http, "/readyz"));
        async move { request.send().await.unwrap().status().as_u16() == 200 }
    })
    .await;
    assert_eq!(get(&to_leader, leader_http, "/healthz").await.0, 200);
}
