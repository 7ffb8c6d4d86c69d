//! Delivery of notifications (SPEC §9, R20) by a real `tallyd` process to a real SMTP server
//! and a real HTTP receiver (`sinks.rs`), driven by the `tally` binary: what each sink
//! receives, a sink that is down and comes back, one that stays down and is given up, a
//! `kill -9` with notifications pending, and `notify status` and `notify test`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::sinks::{notify_config, MailServer, WebhookReceiver};

const SECRET: &str = "notify-test-secret";
const WAIT: Duration = Duration::from_secs(30);

/// A daemon with `notify` as the `[notify]` section, and the owner's client file.
fn daemon(dir: &Path, notify: &str) -> DaemonProcess {
    DaemonProcess::start_with(dir, "30s", "1s", notify, Stdio::null())
}

/// `tally --config CONFIG --json ARGS...`.
fn tally(config: &Path, args: &[&str]) -> (Option<i32>, Value) {
    cli_json(config.to_str().unwrap(), args)
}

fn ok(config: &Path, args: &[&str]) -> Value {
    let (code, doc) = tally(config, args);
    assert_eq!(code, Some(0), "{args:?}: {doc}");
    doc
}

/// Adds a member and removes them: one `user_removed` about `email`.
fn add_and_remove(owner: &Path, email: &str) {
    ok(owner, &["user", "add", email, "--role", "member"]);
    ok(owner, &["user", "remove", email]);
}

/// Polls `notify status` until `done` holds of it; returns the last one.
fn status_until(owner: &Path, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = ok(owner, &["notify", "status"]);
        if done(&status) || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The entry of `sink` in a `notify status` or `notify test` document.
fn sink<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sink"] == name)
        .unwrap_or_else(|| panic!("no sink {name} in {doc}"))
}

/// The names of the sinks of a `notify status` or `notify test` document, in order.
fn sink_names(doc: &Value) -> Vec<String> {
    doc["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sink"].as_str().unwrap().to_string())
        .collect()
}

/// The keys of a JSON object, in order.
fn keys(object: &Value) -> Vec<&str> {
    object
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

/// The `[notify]` section with these retries, webhooks and e-mail relay.
fn notify_section(
    max_attempts: u32,
    backoff: (&str, &str),
    hooks: &[String],
    mail: Option<&MailServer>,
) -> String {
    let mut text = format!(
        "[notify]\nmax_attempts = {max_attempts}\nbackoff_min = {:?}\nbackoff_max = {:?}\ntimeout = \"5s\"\n",
        backoff.0, backoff.1
    );
    for url in hooks {
        text.push_str(&format!(
            "[[notify.webhook]]\nurl = {url:?}\nsecret = {SECRET:?}\n"
        ));
    }
    if let Some(mail) = mail {
        text.push_str(&format!(
            "[notify.email]\nsmtp = {:?}\nfrom = \"tally@studio.com\"\nto = [\"it-licenses@studio.com\"]\nca = {:?}\n",
            mail.url(),
            mail.ca_pem_path().to_str().unwrap()
        ));
        if let Some((user, password)) = mail.credentials() {
            text.push_str(&format!("user = {user:?}\npassword = {password:?}\n"));
        }
    }
    text
}

/// The user removed gets the e-mail too; the webhook body has exactly the six fields,
/// signed; the mail's subject names kind and subject, its Message-ID comes from the
/// notification's id; `notify status` counts each sink's delivery.
#[test]
fn every_sink_gets_each_notification_signed_and_addressed() {
    let dir = tempfile::tempdir().unwrap();
    let mail = MailServer::start();
    let hook = WebhookReceiver::start(SECRET);
    let daemon = daemon(dir.path(), &notify_config(&mail, &hook, SECRET));
    let owner = daemon.client_toml();
    add_and_remove(&owner, "ana@studio.com");

    let body = hook
        .wait_for(|b| b["kind"] == "user_removed", WAIT)
        .expect("the webhook got user_removed");
    assert_eq!(
        keys(&body),
        ["id", "kind", "at", "subject", "feature", "text"]
    );
    assert_eq!(body["subject"], "ana@studio.com");
    assert!(body["feature"].is_null());
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "{id}");
    let at = body["at"].as_str().unwrap();
    assert!(at.ends_with('Z') && at.contains('T'), "RFC 3339 UTC: {at}");

    let message = mail
        .wait_for(|m| m.body.contains(&id), WAIT)
        .expect("the e-mail of user_removed");
    assert_eq!(message.subject, "[Tally] user_removed: ana@studio.com");
    assert_eq!(message.from, "tally@studio.com");
    assert!(
        message.to.contains(&"it-licenses@studio.com".to_string())
            && message.to.contains(&"ana@studio.com".to_string()),
        "the responsible people and the user concerned: {:?}",
        message.to
    );
    assert!(
        message.message_id.starts_with(&id),
        "{}",
        message.message_id
    );
    assert!(message.body.contains(body["text"].as_str().unwrap()));
    assert!(hook.failures().is_empty(), "{:?}", hook.failures());

    let status = status_until(&owner, |s| {
        s["pending"] == 0 && sink(s, "email")["delivered"].as_u64() >= Some(1)
    });
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(status["failed"], 0, "{status}");
    let hook_name = format!("webhook {}", hook.url());
    assert_eq!(sink_names(&status), ["log", hook_name.as_str(), "email"]);
    for entry in status["sinks"].as_array().unwrap() {
        assert_eq!(keys(entry), ["sink", "delivered", "failed", "last_error"]);
        assert!(entry["delivered"].as_u64().unwrap() >= 1, "{status}");
        assert_eq!(entry["failed"], 0);
        assert!(entry["last_error"].is_null());
    }
    assert!(!status.to_string().contains(SECRET));
}

/// `notify test` reaches every sink at once, not through the outbox: STARTTLS with AUTH, and
/// `smtps://` through the implicit-TLS relay. A wrong password is reported as that sink's
/// failure with exit 1. A member is refused, and both requests are audited.
#[test]
fn notify_test_reports_each_sink_and_is_for_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    let mail = MailServer::start_with_auth("relay-user", "relay-password");
    let hook = WebhookReceiver::start(SECRET);
    let daemon = daemon(
        dir.path(),
        &notify_section(3, ("1s", "1s"), &[hook.url()], Some(&mail)),
    );
    let owner = daemon.client_toml();
    let tested = ok(&owner, &["notify", "test"]);
    let hook_name = format!("webhook {}", hook.url());
    assert_eq!(sink_names(&tested), ["log", hook_name.as_str(), "email"]);
    for entry in tested["sinks"].as_array().unwrap() {
        assert_eq!(keys(entry), ["sink", "ok", "error"]);
        assert_eq!(entry["ok"], true, "{tested}");
        assert!(entry["error"].is_null());
    }
    // Straight to the sinks: nothing went through the outbox.
    let body = hook.received().into_iter().find(|b| b["kind"] == "test");
    let body = body.expect("the webhook got the test at once");
    let message = mail
        .wait_for(|m| m.subject.starts_with("[Tally] test: "), WAIT)
        .expect("the relay took the test after STARTTLS and AUTH");
    assert!(message.body.contains(body["id"].as_str().unwrap()));
    assert_eq!(message.to, ["it-licenses@studio.com"]);
    let status = ok(&owner, &["notify", "status"]);
    assert_eq!(sink(&status, "email")["delivered"], 0, "{status}");

    // People's output: one line per sink.
    let out = cli(&["--config", owner.to_str().unwrap(), "notify", "test"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("email: delivered"), "{text}");

    // A member may do neither.
    let (code, doc) = tally(
        &owner,
        &["user", "add", "bo@studio.com", "--role", "member"],
    );
    assert_eq!(code, Some(0), "{doc}");
    let member = crate::policy::user_config(&daemon, "bo", doc["token"].as_str().unwrap());
    for command in ["status", "test"] {
        let (code, doc) = tally(&member, &["notify", command]);
        assert_eq!(code, Some(4), "{doc}");
        assert_eq!(doc["error"]["code"], "forbidden", "{doc}");
    }
    let audit = ok(&owner, &["audit"]);
    let events = audit["events"].as_array().unwrap();
    for action in ["notify_status", "notify_test"] {
        assert!(
            events
                .iter()
                .any(|e| e["action"] == action && e["outcome"] == "ok"),
            "{action} audited: {audit}"
        );
        assert!(
            events.iter().any(|e| e["action"] == action
                && e["actor"] == "bo@studio.com"
                && e["outcome"] != "ok"),
            "{action} refused and audited: {audit}"
        );
    }
    drop(daemon);

    // The wrong password: that sink fails, the others do not; exit 1.
    let dir = tempfile::tempdir().unwrap();
    let wrong = notify_section(3, ("1s", "1s"), &[], Some(&mail))
        .replace("relay-password", "not-the-password");
    let daemon = self::daemon(dir.path(), &wrong);
    let (code, tested) = tally(&daemon.client_toml(), &["notify", "test"]);
    assert_eq!(code, Some(1), "{tested}");
    assert_eq!(sink(&tested, "log")["ok"], true);
    let email = sink(&tested, "email");
    assert_eq!(email["ok"], false, "{tested}");
    assert!(!email["error"].as_str().unwrap().is_empty());
    assert!(!tested.to_string().contains("not-the-password"));
    drop(daemon);

    // smtps://: TLS from the first byte, through the relay in front of the server.
    let dir = tempfile::tempdir().unwrap();
    let smtps = MailServer::start_implicit_tls();
    assert!(smtps.url().starts_with("smtps://"));
    let daemon = self::daemon(
        dir.path(),
        &notify_section(3, ("1s", "1s"), &[], Some(&smtps)),
    );
    let tested = ok(&daemon.client_toml(), &["notify", "test"]);
    assert_eq!(sink(&tested, "email")["ok"], true, "{tested}");
    smtps
        .wait_for(|m| m.subject.starts_with("[Tally] test: "), WAIT)
        .expect("the test mail over smtps://");
}

/// A webhook that is down and comes back gets the notification once, with the same id; one
/// that stays down is given up after max_attempts, with its last error in `notify status`;
/// neither delays the e-mail.
#[test]
fn a_sink_down_is_retried_a_sink_that_stays_down_is_given_up_and_neither_delays_another() {
    let dir = tempfile::tempdir().unwrap();
    let mail = MailServer::start();
    let flaky = WebhookReceiver::start(SECRET);
    flaky.set_down(true);
    // Nothing listens on a port that was free a moment ago.
    let dead = format!("http://127.0.0.1:{}/gone", free_port());
    let daemon = daemon(
        dir.path(),
        &notify_section(
            6,
            ("300ms", "600ms"),
            &[flaky.url(), dead.clone()],
            Some(&mail),
        ),
    );
    let owner = daemon.client_toml();
    let started = Instant::now();
    add_and_remove(&owner, "cy@studio.com");
    mail.wait_for(|m| m.subject == "[Tally] user_removed: cy@studio.com", WAIT)
        .expect("the e-mail, while both webhooks fail");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the e-mail waited for the webhooks: {:?}",
        started.elapsed()
    );
    assert!(flaky.wait_refused(2, WAIT), "retried while down");
    let status = ok(&owner, &["notify", "status"]);
    assert_eq!(status["pending"], 1, "{status}");
    let flaky_name = format!("webhook {}", flaky.url());
    assert!(
        sink(&status, &flaky_name)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503")),
        "{status}"
    );
    flaky.set_down(false);
    let body = flaky
        .wait_for(|b| b["subject"] == "cy@studio.com", WAIT)
        .expect("delivered once the receiver is up");

    let status = status_until(&owner, |s| s["pending"] == 0);
    assert_eq!(status["pending"], 0, "settled: {status}");
    assert_eq!(status["failed"], 1, "{status}");
    let gone = sink(&status, &format!("webhook {dead}"));
    assert_eq!(
        (gone["delivered"].as_u64(), gone["failed"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(
        gone["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("connect")),
        "{status}"
    );
    let up = sink(&status, &flaky_name);
    assert_eq!(
        (up["delivered"].as_u64(), up["failed"].as_u64()),
        (Some(1), Some(0))
    );
    // Once: no second delivery of the same id after a while.
    std::thread::sleep(Duration::from_secs(1));
    let same: Vec<Value> = flaky
        .received()
        .into_iter()
        .filter(|b| b["id"] == body["id"])
        .collect();
    assert_eq!(same.len(), 1, "{same:?}");
    assert_eq!(
        mail.received()
            .iter()
            .filter(|m| m.body.contains(body["id"].as_str().unwrap()))
            .count(),
        1
    );
}

/// Notifications pending when `tallyd` is killed with SIGKILL are delivered after the
/// restart, each once; those already delivered to a sink are not sent to it again.
#[test]
fn notifications_pending_at_a_sigkill_are_delivered_after_the_restart_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let mail = MailServer::start();
    let hook = WebhookReceiver::start(SECRET);
    hook.set_down(true);
    let mut daemon = daemon(
        dir.path(),
        &notify_section(20, ("200ms", "400ms"), &[hook.url()], Some(&mail)),
    );
    let owner = daemon.client_toml();
    let users = ["d1@studio.com", "d2@studio.com", "d3@studio.com"];
    for user in users {
        add_and_remove(&owner, user);
    }
    for user in users {
        mail.wait_for(|m| m.to.contains(&user.to_string()), WAIT)
            .unwrap_or_else(|| panic!("mail to {user} before the kill"));
    }
    assert!(hook.wait_refused(3, WAIT));
    // Recorded as delivered by e-mail (not only received), so that the kill cannot fall
    // between the relay's answer and the record, which would rightly send it again.
    let status = status_until(&owner, |s| sink(s, "email")["delivered"] == 3);
    assert_eq!(sink(&status, "email")["delivered"], 3, "{status}");
    daemon.kill9();
    hook.set_down(false);
    daemon.restart();
    for user in users {
        hook.wait_for(|b| b["subject"] == user, WAIT)
            .unwrap_or_else(|| panic!("{user} at the webhook after the restart"));
    }
    let status = status_until(&owner, |s| s["pending"] == 0);
    assert_eq!(
        (&status["pending"], &status["failed"]),
        (&0.into(), &0.into()),
        "{status}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let removed: Vec<Value> = hook
        .received()
        .into_iter()
        .filter(|b| b["kind"] == "user_removed")
        .collect();
    assert_eq!(removed.len(), 3, "each once at the webhook: {removed:#?}");
    let mails: Vec<String> = mail
        .received()
        .into_iter()
        .filter(|m| m.subject.starts_with("[Tally] user_removed"))
        .map(|m| m.subject)
        .collect();
    assert_eq!(
        mails.len(),
        3,
        "each once by e-mail, not again after the restart: {mails:?}"
    );
    assert!(hook.failures().is_empty(), "{:?}", hook.failures());
}

/// A `[notify]` section whose CA file does not exist stops the start with the key named.
#[test]
fn a_sink_that_cannot_be_made_stops_the_start_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tallyd.toml");
    let text = daemon_config(
        free_port(),
        &dir.path().join("data"),
        "30s",
        "1s",
        "[[notify.webhook]]\nurl = \"https://hooks.studio.lan/x\"\nsecret = \"s\"\nca = \"/nonexistent/ca.pem\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(DAEMON)
        .args(["--config", config.to_str().unwrap()])
        .env("TALLY_LOG", "info")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("notify.webhook[0]") && log.contains("/nonexistent/ca.pem"),
        "{log}"
    );
    // check-config finds it first.
    let out = std::process::Command::new(DAEMON)
        .args(["check-config", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("notify.webhook[0].ca: cannot read /nonexistent/ca.pem"),
        "{text}"
    );
}

/// SIGHUP applies a changed `[notify]`: a sink added is used at once, by `notify test` and
/// `notify status`, without a restart.
#[test]
fn a_reload_applies_the_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let mail = MailServer::start();
    let hook = WebhookReceiver::start(SECRET);
    let daemon = daemon(
        dir.path(),
        &notify_section(3, ("1s", "1s"), &[hook.url()], None),
    );
    let owner = daemon.client_toml();
    assert_eq!(sink_names(&ok(&owner, &["notify", "status"])).len(), 2);
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    let added = notify_section(3, ("1s", "1s"), &[hook.url()], Some(&mail));
    let before = notify_section(3, ("1s", "1s"), &[hook.url()], None);
    std::fs::write(&daemon.config_path, text.replace(&before, &added)).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let status = status_until(&owner, |s| sink_names(s).len() == 3);
    assert_eq!(
        sink_names(&status).last().map(String::as_str),
        Some("email"),
        "{status}"
    );
    add_and_remove(&owner, "ed@studio.com");
    mail.wait_for(|m| m.subject == "[Tally] user_removed: ed@studio.com", WAIT)
        .expect("the sink added by the reload delivers");
}

/// A failover neither loses a notification nor sends again one a sink took: the e-mail sent
/// by the first leader is not sent again by the second, and the webhook that was down
/// during the first leader's time gets it once from the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_neither_loses_nor_resends_a_delivery() {
    use crate::cluster::{Cluster, ClusterSpec, TestDatabase};
    use tally_protocol::{Role, UserAdd};
    let Some(db) = TestDatabase::create("notify_failover").await else {
        return;
    };
    let mail = MailServer::start();
    let hook = WebhookReceiver::start(SECRET);
    hook.set_down(true);
    let mut spec = ClusterSpec::new(2);
    spec.extra = notify_section(50, ("200ms", "400ms"), &[hook.url()], Some(&mail));
    let mut cluster = Cluster::start(db, spec).await;
    let (first, epoch) = cluster.wait_leadership(WAIT).await;
    let owner = cluster.owner().await;
    owner
        .add_user(UserAdd {
            username: "fo@studio.com".into(),
            name: String::new(),
            role: Role::Member,
        })
        .await
        .unwrap();
    owner.remove_user("fo@studio.com").await.unwrap();
    let subject = "[Tally] user_removed: fo@studio.com";
    tokio::task::block_in_place(|| mail.wait_for(|m| m.subject == subject, WAIT))
        .expect("the first leader mails it");
    // Recorded as delivered by e-mail, and the webhook refused at least twice.
    let deadline = Instant::now() + WAIT;
    loop {
        let status = owner.notify_status().await.unwrap();
        let email = status.sinks.iter().find(|s| s.sink == "email").unwrap();
        if email.delivered as usize >= mail.received().len() && hook.refused() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.kill9(first);
    cluster.wait_leader_after(epoch, WAIT).await;
    hook.set_down(false);
    let body =
        tokio::task::block_in_place(|| hook.wait_for(|b| b["subject"] == "fo@studio.com", WAIT))
            .expect("the new leader delivers to the webhook");
    let deadline = Instant::now() + WAIT;
    loop {
        let status = owner.notify_status().await.unwrap();
        if status.pending == 0 {
            assert_eq!(status.failed, 0, "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_hook = hook
        .received()
        .iter()
        .filter(|b| b["id"] == body["id"])
        .count();
    assert_eq!(at_hook, 1, "once at the webhook");
    let mailed = mail
        .received()
        .iter()
        .filter(|m| m.subject == subject)
        .count();
    assert_eq!(mailed, 1, "not mailed again by the new leader");
}
