//! Prerequisites (SPEC R18) through the `tally` binary against a `tallyd` process:
//! `feature require`, `list` and `unrequire`; a checkout that takes its prerequisite with
//! it, a refusal that takes nothing, a check-in that returns both, and a `kill -9` of the
//! daemon after which the link between the two seats holds.

use std::time::Duration;

use crate::harness::*;

fn in_use(config: &str, feature: &str) -> serde_json::Value {
    let (code, doc) = cli_json(config, &["status", feature]);
    assert_eq!(code, Some(0), "{doc}");
    doc["features"][0]["in_use"].clone()
}

#[test]
fn a_checkout_takes_its_prerequisite_and_both_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), "3s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| cli_json(config, args);

    for (feature, seats) in [("maya", "1"), ("vray", "2")] {
        let (code, doc) = run(&["entitlement", "add", feature, "--seats", seats]);
        assert_eq!(code, Some(0), "{doc}");
    }
    let (code, doc) = run(&["feature", "list"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc, serde_json::json!({ "features": [] }));
    let (code, doc) = run(&["feature", "require", "vray", "maya"]);
    assert_eq!(code, Some(0), "{doc}");
    let required = serde_json::json!({ "features": [{ "feature": "vray", "requires": ["maya"] }] });
    assert_eq!(doc, required);
    let (_, doc) = run(&["feature", "list"]);
    assert_eq!(doc, required);
    let (code, doc) = run(&["feature", "require", "maya", "vray"]);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["error"]["code"], "invalid");
    assert!(
        doc["error"]["message"].as_str().unwrap().contains("cycle"),
        "{doc}"
    );

    // The checkout of vray takes a seat of maya with it.
    let (mut holder, vray) = spawn_holder(daemon.client_toml().as_path(), "vray");
    assert_eq!(in_use(config, "vray"), 1);
    assert_eq!(in_use(config, "maya"), 1);

    // No seat of maya is left: a second checkout of vray is refused naming maya, and
    // takes nothing.
    let out = cli(&[
        "--config", config, "--json", "checkout", "vray", "--", "true",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let doc = stdout_json(&out);
    assert_eq!(doc["error"]["code"], "no_seat");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vray requires maya"),
        "{doc}"
    );
    assert_eq!(in_use(config, "vray"), 1);
    assert_eq!(in_use(config, "maya"), 1);

    // After a kill -9 the holder resumes the lease it knows of; the seat of maya, which it
    // never learned of, stays with it past a whole ttl because the link was stored.
    daemon.kill9();
    daemon.restart();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(in_use(config, "vray"), 1);
    assert_eq!(in_use(config, "maya"), 1);
    let (_, doc) = run(&["leases"]);
    let leases = doc["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 2, "{doc}");
    assert!(leases.iter().any(|l| l["id"] == vray.to_string()), "{doc}");

    // Checking vray in returns both seats.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    holder.wait().unwrap();
    assert_eq!(in_use(config, "vray"), 0);
    assert_eq!(in_use(config, "maya"), 0);

    let (code, doc) = run(&["feature", "unrequire", "vray", "maya"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc, serde_json::json!({ "features": [] }));
    let (code, doc) = run(&["feature", "unrequire", "vray", "maya"]);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["error"]["code"], "not_found");
}

#[test]
fn assignments_follow_prerequisites_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| cli_json(config, args);
    let ok = |args: &[&str]| {
        let (code, doc) = run(args);
        assert_eq!(code, Some(0), "{args:?}: {doc}");
        doc
    };
    ok(&["entitlement", "add", "maya", "--seats", "2"]);
    ok(&["entitlement", "add", "vray", "--seats", "2"]);
    ok(&["user", "add", "ana@studio"]);
    ok(&["user", "add", "bo@studio"]);
    ok(&["assign", "ana@studio", "vray"]);
    // A requirement that assignments made before would break is refused, naming them.
    let (code, doc) = run(&["feature", "require", "vray", "maya"]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &serde_json::json!("invalid")),
        "{doc}"
    );
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ana@studio"),
        "{doc}"
    );
    ok(&["revoke", "ana@studio", "vray"]);
    ok(&["feature", "require", "vray", "maya"]);

    // Assigning vray needs maya assigned.
    let (code, doc) = run(&["assign", "ana@studio", "vray"]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &serde_json::json!("invalid")),
        "{doc}"
    );
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vray requires maya"),
        "{doc}"
    );
    ok(&["assign", "ana@studio", "maya"]);
    ok(&["assign", "ana@studio", "vray"]);

    // Her maya cannot be revoked, nor moved away, while her vray needs it.
    let (code, doc) = run(&["revoke", "ana@studio", "maya"]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &serde_json::json!("has_assignments")),
        "{doc}"
    );
    let (code, doc) = run(&["assign", "bo@studio", "maya", "--from", "ana@studio"]);
    assert_eq!(
        (code, &doc["error"]["code"]),
        (Some(1), &serde_json::json!("has_assignments")),
        "{doc}"
    );
    ok(&["revoke", "ana@studio", "vray"]);
    ok(&["revoke", "ana@studio", "maya"]);
}
