//! Groups and policy rules (SPEC §8, R16) through the `tally` binary against a `tallyd`
//! process: groups and rules changed, listed and audited; a dry run that stores nothing;
//! each kind of rule deciding real checkouts and borrows, with `denied` naming the rule;
//! `status` showing reserved seats; `policy check` explaining a decision; and rules that
//! survive a `kill -9` of the daemon.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use serde_json::{json, Value};

use crate::harness::*;

/// A client file for a user signed in with `token`, beside the daemon's own.
pub fn user_config(daemon: &DaemonProcess, name: &str, token: &str) -> PathBuf {
    user_config_beside(&daemon.client_toml(), name, token)
}

/// A client file `NAME.toml` beside `client_toml` (the owner's), the same but for `token`.
pub fn user_config_beside(client_toml: &Path, name: &str, token: &str) -> PathBuf {
    let text = std::fs::read_to_string(client_toml).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("token"))
        .map(str::to_string)
        .collect();
    lines.push(format!("token = {token:?}"));
    let path = client_toml.with_file_name(format!("{name}.toml"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Runs `tally --config CONFIG --json ARGS...` with its own data directory (borrows are
/// written there) and machine id.
fn tally(data: &Path, config: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let out: Output = Command::new(CLI)
        .args(["--config", config.to_str().unwrap(), "--json"])
        .args(args)
        .env("TALLY_DATA_DIR", data)
        .env("TALLY_MACHINE_ID", "policy-test-machine")
        .env_remove("TALLY_CONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    (out.status.code(), stdout_json(&out))
}

/// Starts `tally --json checkout FEATURE` as a user, holding a seat until killed.
fn hold(config: &Path, feature: &str) -> Child {
    let (child, _) = spawn_holder(config, feature);
    child
}

fn release(mut holder: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    holder.wait().unwrap();
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

struct Studio {
    _dir: tempfile::TempDir,
    data: PathBuf,
    daemon: DaemonProcess,
    owner: PathBuf,
    ana: PathBuf,
    bo: PathBuf,
}

impl Studio {
    fn start() -> Studio {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("user-data");
        let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
        let owner = daemon.client_toml();
        let mut studio = Studio {
            data,
            owner: owner.clone(),
            ana: owner.clone(),
            bo: owner,
            daemon,
            _dir: dir,
        };
        studio.ana = studio.user("ana@studio");
        studio.bo = studio.user("bo@studio");
        studio
    }

    fn user(&self, email: &str) -> PathBuf {
        let (code, doc) = self.owner(&["user", "add", email, "--role", "member"]);
        assert_eq!(code, Some(0), "{doc}");
        let token = doc["token"].as_str().unwrap();
        user_config(&self.daemon, email.split('@').next().unwrap(), token)
    }

    fn owner(&self, args: &[&str]) -> (Option<i32>, Value) {
        tally(&self.data, &self.owner, args)
    }

    fn ok(&self, args: &[&str]) -> Value {
        let (code, doc) = self.owner(args);
        assert_eq!(code, Some(0), "{args:?}: {doc}");
        doc
    }

    fn figures(&self, feature: &str) -> Value {
        self.ok(&["status", feature])["features"][0].clone()
    }
}

/// `tally checkout FEATURE -- true` as a user: its exit code and JSON error, if any.
fn try_checkout(config: &Path, feature: &str) -> (Option<i32>, Value) {
    let out = cli(&[
        "--config",
        config.to_str().unwrap(),
        "--json",
        "checkout",
        feature,
        "--",
        "true",
    ]);
    let code = out.status.code();
    let text = String::from_utf8_lossy(&out.stdout);
    let doc = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|doc| doc.get("error").is_some())
        .unwrap_or(Value::Null);
    (code, doc)
}

fn assert_denied(result: (Option<i32>, Value), rule: u64) {
    let (code, doc) = result;
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["error"]["code"], "denied", "{doc}");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("denied by rule {rule} (")),
        "{message}"
    );
}

fn rule_id(doc: &Value) -> u64 {
    doc["rule"]["id"].as_u64().unwrap()
}

#[test]
fn groups_and_rules_are_changed_listed_and_audited() {
    let studio = Studio::start();
    studio.ok(&["entitlement", "add", "nuke", "--seats", "4"]);

    let doc = studio.ok(&["group", "add", "juniors", "user:ana@studio"]);
    assert_eq!(
        doc,
        json!({ "group": { "name": "juniors", "members": ["user:ana@studio"] } })
    );
    let doc = studio.ok(&[
        "group",
        "member",
        "add",
        "juniors",
        "host:Render-*",
        "ip:10.1.2.3/16",
        "user:ana@studio",
    ]);
    assert_eq!(
        doc["group"]["members"],
        json!(["user:ana@studio", "host:render-*", "ip:10.1.0.0/16"])
    );
    let doc = studio.ok(&["group", "member", "remove", "juniors", "host:render-*"]);
    assert_eq!(
        doc["group"]["members"],
        json!(["user:ana@studio", "ip:10.1.0.0/16"])
    );
    let (code, doc) = studio.owner(&["group", "member", "remove", "juniors", "user:zed@studio"]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &json!("not_found")),
        "{doc}"
    );
    let (code, doc) = studio.owner(&["group", "add", "juniors"]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &json!("already_exists")),
        "{doc}"
    );
    // Malformed members and rules are usage errors, named, and nothing is sent.
    let (code, doc) = studio.owner(&["group", "add", "leads", "ana@studio"]);
    assert_eq!(code, Some(2), "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user:EMAIL"),
        "{doc}"
    );
    let (code, doc) = studio.owner(&["policy", "add", "nuke", "maximum", "2", "juniors"]);
    assert_eq!(code, Some(2), "{doc}");
    let (code, doc) = studio.owner(&["policy", "add", "nuke", "max", "2", "seniors"]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &json!("not_found")),
        "{doc}"
    );
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no group seniors"),
        "{doc}"
    );

    // A dry run says what the rule would do and stores nothing.
    let doc = studio.ok(&[
        "policy",
        "add",
        "nuke",
        "max",
        "1",
        "juniors",
        "--each",
        "--dry-run",
    ]);
    assert_eq!(
        doc,
        json!({
            "rule": { "id": null, "feature": "nuke", "kind": "max", "seats": 1, "group": "juniors", "each": true },
            "effect": { "leases_over": [], "users_denied": [] },
        })
    );
    assert_eq!(studio.ok(&["policy", "list"]), json!({ "rules": [] }));

    let doc = studio.ok(&["policy", "add", "nuke", "max", "1", "juniors", "--each"]);
    let max = rule_id(&doc);
    let doc = studio.ok(&["policy", "add", "nuke", "borrow-lowwater", "1"]);
    let lowwater = rule_id(&doc);
    assert_eq!(
        studio.ok(&["policy", "list", "nuke"]),
        json!({ "rules": [
            { "id": max, "feature": "nuke", "kind": "max", "seats": 1, "group": "juniors", "each": true },
            { "id": lowwater, "feature": "nuke", "kind": "borrow-lowwater", "seats": 1, "group": null, "each": false },
        ] })
    );
    let (code, doc) = studio.owner(&["policy", "add", "nuke", "max", "1", "juniors", "--each"]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &json!("already_exists")),
        "{doc}"
    );

    // A group a rule names cannot go; the refusal names the rule.
    let (code, doc) = studio.owner(&["group", "remove", "juniors"]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &json!("invalid")),
        "{doc}"
    );
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("rule {max} (nuke: max 1 juniors --each)")),
        "{doc}"
    );

    // Members may not change policy.
    let (code, doc) = tally(
        &studio.data,
        &studio.ana,
        &["policy", "remove", &max.to_string()],
    );
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(4), &json!("forbidden")),
        "{doc}"
    );
    let (code, doc) = tally(&studio.data, &studio.ana, &["group", "list"]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(4), &json!("forbidden")),
        "{doc}"
    );

    assert_eq!(
        studio.ok(&["policy", "remove", &max.to_string()]),
        json!({ "removed": max })
    );
    let (code, doc) = studio.owner(&["policy", "remove", &max.to_string()]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &json!("not_found")),
        "{doc}"
    );
    assert_eq!(
        studio.ok(&["group", "remove", "juniors"]),
        json!({ "removed": "juniors" })
    );
    assert_eq!(studio.ok(&["group", "list"]), json!({ "groups": [] }));

    // Every change and every refusal is in the audit log.
    let doc = studio.ok(&["audit", "--limit", "100"]);
    let events = doc["events"].as_array().unwrap();
    let seen = |action: &str, outcome: &str| {
        events
            .iter()
            .any(|e| e["action"] == action && e["outcome"] == outcome)
    };
    for (action, outcome) in [
        ("group_add", "ok"),
        ("group_add", "already_exists"),
        ("group_members", "ok"),
        ("group_members", "not_found"),
        ("policy_add", "ok"),
        ("policy_add", "not_found"),
        ("policy_add", "already_exists"),
        ("group_remove", "invalid"),
        ("group_remove", "ok"),
        ("policy_remove", "ok"),
        ("policy_remove", "forbidden"),
        ("policy_remove", "not_found"),
        ("group_list", "forbidden"),
    ] {
        assert!(seen(action, outcome), "no {action} {outcome} in {doc}");
    }
    assert!(
        !events.iter().any(|e| e["action"] == "policy_add"
            && e["reason"].as_str().unwrap_or_default().contains("dry")),
        "a dry run is not stored as a change"
    );
}

#[test]
fn include_exclude_and_max_decide_checkouts_and_name_the_rule() {
    let studio = Studio::start();
    studio.ok(&["entitlement", "add", "nuke", "--seats", "5"]);
    studio.ok(&["group", "add", "artists", "user:ana@studio"]);
    studio.ok(&["group", "add", "here", &format!("host:{}", this_host())]);
    studio.ok(&["group", "add", "loopback", "ip:127.0.0.0/8", "ip:::1"]);
    studio.ok(&[
        "group",
        "add",
        "elsewhere",
        "host:no-such-host-*",
        "ip:10.99.0.0/16",
    ]);

    // include: only members of the include groups.
    let include = rule_id(&studio.ok(&["policy", "add", "nuke", "include", "artists"]));
    assert_eq!(try_checkout(&studio.ana, "nuke").0, Some(0));
    assert_denied(try_checkout(&studio.bo, "nuke"), include);
    // A host or address member admits too.
    let by_place = rule_id(&studio.ok(&["policy", "add", "nuke", "include", "elsewhere"]));
    assert_denied(try_checkout(&studio.bo, "nuke"), include);
    studio.ok(&["policy", "remove", &by_place.to_string()]);
    let by_host = rule_id(&studio.ok(&["policy", "add", "nuke", "include", "here"]));
    assert_eq!(try_checkout(&studio.bo, "nuke").0, Some(0));
    studio.ok(&["policy", "remove", &by_host.to_string()]);
    let by_ip = rule_id(&studio.ok(&["policy", "add", "nuke", "include", "loopback"]));
    assert_eq!(try_checkout(&studio.bo, "nuke").0, Some(0));
    studio.ok(&["policy", "remove", &by_ip.to_string()]);

    // exclude wins over include.
    let exclude = rule_id(&studio.ok(&["policy", "add", "nuke", "exclude", "loopback"]));
    assert_denied(try_checkout(&studio.ana, "nuke"), exclude);
    // `policy check` exits 1 when the rules refuse, naming the rule that does.
    let check = |user: &str, ip: &str| {
        studio.owner(&["policy", "check", "nuke", "--user", user, "--ip", ip])
    };
    let (code, doc) = check("ana@studio", "127.0.0.1");
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["allowed"], false, "{doc}");
    assert_eq!(doc["rule"], exclude, "{doc}");
    let (code, doc) = check("ana@studio", "10.0.0.1");
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["allowed"], true, "{doc}");
    assert_eq!(doc["rule"], include, "{doc}");
    let (_, doc) = check("bo@studio", "10.0.0.1");
    assert_eq!(
        doc,
        json!({
            "allowed": false,
            "rule": include,
            "reason": format!("denied by rule {include} (nuke: include artists): only members of artists may use nuke, and bo@studio from 10.0.0.1 is not one"),
        })
    );
    studio.ok(&["policy", "remove", &exclude.to_string()]);
    studio.ok(&["policy", "remove", &include.to_string()]);

    // max: members of a group together, and each member.
    studio.ok(&["group", "member", "add", "artists", "user:bo@studio"]);
    let max = rule_id(&studio.ok(&["policy", "add", "nuke", "max", "2", "artists"]));
    let first = hold(&studio.ana, "nuke");
    let second = hold(&studio.bo, "nuke");
    assert_denied(try_checkout(&studio.ana, "nuke"), max);
    // The owner is no artist: the cap is not theirs.
    assert_eq!(try_checkout(&studio.owner, "nuke").0, Some(0));
    // A dry run of a tighter cap lists the newest lease over it and who it refuses.
    let doc = studio.ok(&["policy", "add", "nuke", "max", "1", "artists", "--dry-run"]);
    let over = doc["effect"]["leases_over"].as_array().unwrap();
    assert_eq!(over.len(), 1, "{doc}");
    assert_eq!(over[0]["user"], "bo@studio", "{doc}");
    assert_eq!(
        doc["effect"]["users_denied"],
        json!(["ana@studio", "bo@studio"]),
        "{doc}"
    );
    release(second);
    assert_eq!(try_checkout(&studio.bo, "nuke").0, Some(0));
    studio.ok(&["policy", "remove", &max.to_string()]);
    let each = rule_id(&studio.ok(&["policy", "add", "nuke", "max", "1", "artists", "--each"]));
    assert_denied(try_checkout(&studio.ana, "nuke"), each);
    assert_eq!(try_checkout(&studio.bo, "nuke").0, Some(0));
    release(first);
    assert_eq!(try_checkout(&studio.ana, "nuke").0, Some(0));

    // Denials are audited with their code and the rule (repeats of a member's refusals
    // within a minute are folded, R11).
    let doc = studio.ok(&["audit", "--feature", "nuke", "--limit", "200"]);
    for (user, rule) in [("bo@studio", include), ("ana@studio", exclude)] {
        let named = format!("denied by rule {rule} (");
        assert!(
            doc["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["actor"] == user
                    && e["action"] == "checkout"
                    && e["outcome"] == "denied"
                    && e["reason"].as_str().unwrap().starts_with(&named)),
            "{user}: {doc}"
        );
    }
}

#[test]
fn reserves_keep_seats_for_their_group_and_survive_a_restart() {
    let mut studio = Studio::start();
    studio.ok(&["entitlement", "add", "houdini", "--seats", "4"]);
    // One seat assigned by name is out of the floating pool: 3 float.
    studio.ok(&["assign", "bo@studio", "houdini"]);
    studio.ok(&["group", "add", "leads", "user:ana@studio"]);
    studio.ok(&["policy", "add", "houdini", "reserve", "2", "leads"]);
    let figures = studio.figures("houdini");
    assert_eq!(
        (
            figures["floating"].clone(),
            figures["reserved"].clone(),
            figures["available"].clone()
        ),
        (json!(3), json!(2), json!(1)),
        "{figures}"
    );

    // Others get the one unreserved seat, then no_seat naming the reserve.
    let owner_seat = hold(&studio.owner, "houdini");
    let (code, doc) = try_checkout(&studio.owner, "houdini");
    assert_eq!(code, Some(3), "{doc}");
    assert_eq!(doc["error"]["code"], "no_seat");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reserved for others by rule 1 (houdini: reserve 2 leads)"),
        "{doc}"
    );
    // bo's own assigned seat is his whatever the reserve.
    let bo_seat = hold(&studio.bo, "houdini");
    // A lead takes a reserved seat: one stays reserved.
    let ana_seat = hold(&studio.ana, "houdini");
    let figures = studio.figures("houdini");
    assert_eq!(
        (
            figures["in_use"].clone(),
            figures["reserved"].clone(),
            figures["available"].clone()
        ),
        (json!(3), json!(1), json!(0)),
        "{figures}"
    );

    // The rules and groups are in the store: after kill -9 they decide alike.
    studio.daemon.kill9();
    studio.daemon.restart();
    let (code, doc) = try_checkout(&studio.owner, "houdini");
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(3), &json!("no_seat")),
        "{doc}"
    );
    assert_eq!(
        studio.ok(&["policy", "list"])["rules"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        studio.ok(&["group", "list"]),
        json!({ "groups": [{ "name": "leads", "members": ["user:ana@studio"] }] })
    );
    assert_eq!(try_checkout(&studio.ana, "houdini").0, Some(0));
    for seat in [owner_seat, bo_seat, ana_seat] {
        release(seat);
    }
}

#[test]
fn borrow_rules_keep_seats_from_leaving() {
    let studio = Studio::start();
    studio.ok(&["entitlement", "add", "maya", "--seats", "3", "--borrowable"]);
    studio.ok(&["group", "add", "freelancers", "user:bo@studio"]);
    let exclude = rule_id(&studio.ok(&["policy", "add", "maya", "borrow-exclude", "freelancers"]));
    let lowwater = rule_id(&studio.ok(&["policy", "add", "maya", "borrow-lowwater", "2"]));

    let (code, doc) = tally(&studio.data, &studio.bo, &["borrow", "maya", "--for", "1h"]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &json!("denied")),
        "{doc}"
    );
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("denied by rule {exclude} ")),
        "{doc}"
    );
    // A freelancer still checks maya out online.
    assert_eq!(try_checkout(&studio.bo, "maya").0, Some(0));

    // Of 3 floating seats, 2 are never lent: one borrow, then denied by the low-water mark.
    let (code, doc) = tally(
        &studio.data,
        &studio.ana,
        &["borrow", "maya", "--for", "1h"],
    );
    assert_eq!(code, Some(0), "{doc}");
    let (code, doc) = tally(
        &studio.data,
        &studio.owner,
        &["borrow", "maya", "--for", "1h"],
    );
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &json!("denied")),
        "{doc}"
    );
    assert!(
        doc["error"]["message"].as_str().unwrap().contains(&format!(
            "denied by rule {lowwater} (maya: borrow-lowwater 2)"
        )),
        "{doc}"
    );
    // The seats kept from borrowing are still there to check out online.
    assert_eq!(try_checkout(&studio.owner, "maya").0, Some(0));
}
