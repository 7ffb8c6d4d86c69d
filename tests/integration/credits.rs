//! Metered credits and quotas (SPEC §11, R21) through the real `tally` binary against an
//! in-process daemon on a stepped clock: the seed example (a pool of 100, two quotas of 80,
//! the second user short of the pool), unlimited access, no access, a quota shorter than
//! the amount, members refused the admin commands, `consume --request-id` retried, purchases
//! expiring out of the balance, the meters in `report usage` and the audit log; usage
//! errors before connecting; and the library's `Client::consume` and `consume_with_id`.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tally_client::Client;
use tally_protocol::{format_time, ErrorCode, RequestId, Role};

use crate::harness::*;

const HOUR_MS: i64 = 3_600_000;

/// `tally --json ARGS...`: the exit code and the JSON document.
async fn json(config: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let out = tally(config, &[&["--json"], args].concat()).await;
    (out.status.code(), stdout_json(&out))
}

/// `tally --json ARGS...` that must succeed: its document.
async fn ok(config: &Path, args: &[&str]) -> Value {
    let (code, doc) = json(config, args).await;
    assert_eq!(code, Some(0), "{args:?}: {doc}");
    doc
}

/// `tally --json ARGS...` that must fail with `exit` and `code`: the error's message.
async fn refused(config: &Path, args: &[&str], exit: i32, code: &str) -> String {
    let (status, doc) = json(config, args).await;
    assert_eq!(status, Some(exit), "{args:?}: {doc}");
    assert_eq!(doc["error"]["code"], code, "{args:?}: {doc}");
    doc["error"]["message"].as_str().unwrap().to_string()
}

fn quota(user: &str, quota: Option<u64>, used: u64, remaining: Option<u64>) -> Value {
    json!({
        "user": user,
        "meter": "cloud",
        "quota": quota,
        "unlimited": quota.is_none() && remaining.is_none(),
        "used": used,
        "remaining": remaining,
    })
}

/// A server on a stepped clock at a few minutes past a whole hour (returned), and the
/// owner's client.
async fn server_at_an_hour() -> (TestServer, i64, Client) {
    let server = TestServer::start_stepped(|_| {}).await;
    let now = server.now();
    let mut h = (now / HOUR_MS + 1) * HOUR_MS;
    // The tests read h and the hour after it as one UTC day: never h at 23:00.
    if (h / HOUR_MS) % 24 == 23 {
        h += HOUR_MS;
    }
    server.step(Duration::from_millis((h - now + 5 * 60_000) as u64));
    let owner = server.owner().await;
    (server, h, owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_example_and_every_refusal_through_the_cli() {
    let (server, _, owner) = server_at_an_hour().await;
    let admin = client_file(&server, "owner", &server.owner_token());
    let mut files = Vec::new();
    for name in ["ana", "ben", "cy"] {
        let token = new_user(&owner, &format!("{name}@studio.com"), Role::Member).await;
        files.push(client_file(&server, name, &token));
    }
    let (ana, ben, cy) = (&files[0], &files[1], &files[2]);

    // An admin buys 100 credits and gives two members a quota of 80 each.
    let bought = ok(&admin, &["credits", "add", "cloud", "100", "--ref", "PO-7"]).await;
    let id = bought["purchase"]["id"].as_u64().expect("a purchase id");
    assert_eq!(
        bought,
        json!({"purchase": {"id": id, "meter": "cloud", "amount": 100, "expires_at": null, "reference": "PO-7"}})
    );
    for user in ["ana@studio.com", "ben@studio.com"] {
        assert_eq!(
            ok(&admin, &["quota", "set", user, "cloud", "80"]).await,
            json!({"quota": quota(user, Some(80), 0, Some(80))})
        );
    }

    // A quota is not dedicated: ana takes 80, ben gets only the 20 left, then nothing.
    assert_eq!(
        ok(ana, &["consume", "cloud", "80"]).await,
        json!({"consumed": 80, "balance": 20, "remaining": 0})
    );
    assert_eq!(
        ok(ben, &["consume", "cloud", "20"]).await,
        json!({"consumed": 20, "balance": 0, "remaining": 60})
    );
    let message = refused(ben, &["consume", "cloud", "1"], 1, "no_credit").await;
    assert!(message.contains("the pool of cloud holds 0"), "{message}");

    // No access: cy was never given any.
    let message = refused(cy, &["consume", "cloud", "1"], 1, "no_credit").await;
    assert!(
        message.contains("cy@studio.com has no access to the meter cloud"),
        "{message}"
    );

    // A quota shorter than the amount, with the pool holding enough.
    ok(&admin, &["credits", "add", "cloud", "100"]).await;
    let message = refused(ben, &["consume", "cloud", "61"], 1, "no_credit").await;
    assert!(
        message.contains("ben@studio.com has 60 left of their quota of cloud, less than 61"),
        "{message}"
    );
    let message = refused(ana, &["consume", "cloud", "1"], 1, "no_credit").await;
    assert!(message.contains("has 0 left of their quota"), "{message}");

    // Unlimited: no quota, no remaining; the pool is the only limit.
    assert_eq!(
        ok(
            &admin,
            &["quota", "set", "cy@studio.com", "cloud", "--unlimited"]
        )
        .await,
        json!({"quota": quota("cy@studio.com", None, 0, None)})
    );
    assert_eq!(
        ok(cy, &["consume", "cloud", "90"]).await,
        json!({"consumed": 90, "balance": 10, "remaining": null})
    );
    let message = refused(cy, &["consume", "cloud", "11"], 1, "no_credit").await;
    assert!(message.contains("the pool of cloud holds 10"), "{message}");

    // Members see their own quota; admins everyone's, by meter then user.
    assert_eq!(
        ok(ana, &["quota", "list"]).await,
        json!({"quotas": [quota("ana@studio.com", Some(80), 80, Some(0))]})
    );
    assert_eq!(
        ok(&admin, &["quota", "list", "cloud"]).await,
        json!({"quotas": [
            quota("ana@studio.com", Some(80), 80, Some(0)),
            quota("ben@studio.com", Some(80), 20, Some(60)),
            quota("cy@studio.com", None, 90, None),
        ]})
    );

    // Removing access keeps what was used; consuming is then refused.
    assert_eq!(
        ok(&admin, &["quota", "remove", "cy@studio.com", "cloud"]).await,
        json!({"quota": {"user": "cy@studio.com", "meter": "cloud", "quota": null, "unlimited": false, "used": 90, "remaining": 0}})
    );
    let message = refused(cy, &["consume", "cloud", "1"], 1, "no_credit").await;
    assert!(message.contains("no access"), "{message}");

    // Members may not buy credits nor set quotas: forbidden, exit 4.
    refused(ana, &["credits", "add", "cloud", "5"], 4, "forbidden").await;
    refused(
        ana,
        &["quota", "set", "ana@studio.com", "cloud", "500"],
        4,
        "forbidden",
    )
    .await;
    refused(
        ana,
        &["quota", "remove", "ben@studio.com", "cloud"],
        4,
        "forbidden",
    )
    .await;

    // Credits that would already have expired, a quota of a meter never bought, a quota
    // for nobody: refused naming what is wrong.
    let past = format_time(server.now() - HOUR_MS);
    let message = refused(
        &admin,
        &["credits", "add", "cloud", "5", "--expires", &past],
        1,
        "invalid",
    )
    .await;
    assert!(message.contains("not in the future"), "{message}");
    let message = refused(
        &admin,
        &["quota", "set", "ana@studio.com", "clouds", "5"],
        1,
        "not_found",
    )
    .await;
    assert!(message.contains("did you mean cloud?"), "{message}");
    refused(
        &admin,
        &["quota", "set", "nobody@studio.com", "cloud", "5"],
        1,
        "not_found",
    )
    .await;

    assert_eq!(
        ok(ana, &["credits", "status"]).await,
        json!({"meters": [{"meter": "cloud", "purchased": 200, "consumed": 190, "expired": 0, "balance": 10}]})
    );

    // For people: a line per change, tables for listings.
    let out = tally(ana, &["credits", "status"]).await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("METER"), "{text}");
    assert!(text.contains("cloud") && text.contains("190"), "{text}");
    let out = tally(&admin, &["quota", "list"]).await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("METER"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("ben@studio.com") && l.contains("60")),
        "{text}"
    );
    let out = tally(ben, &["consume", "cloud", "5"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "consumed 5 of cloud; balance 5, 55 of your quota left"
    );

    // Every purchase, quota and consumption, refused or not, is in the audit log.
    let events = ok(&admin, &["audit", "--limit", "1000"]).await;
    let events = events["events"].as_array().unwrap();
    let has = |action: &str, outcome: &str, actor: &str| {
        events.iter().any(|e| {
            e["action"] == action
                && e["actor"] == actor
                && e["feature"] == "cloud"
                && e["outcome"] == outcome
        })
    };
    let admin_name = owner.username().to_string();
    assert!(has("credits_add", "ok", &admin_name), "{events:?}");
    assert!(has("credits_add", "invalid", &admin_name), "{events:?}");
    assert!(has("quota_set", "ok", &admin_name), "{events:?}");
    assert!(has("quota_remove", "ok", &admin_name), "{events:?}");
    assert!(has("consume", "ok", "ana@studio.com"), "{events:?}");
    assert!(has("consume", "no_credit", "ben@studio.com"), "{events:?}");
    assert!(
        has("credits_add", "forbidden", "ana@studio.com"),
        "{events:?}"
    );
    assert!(
        has("quota_set", "forbidden", "ana@studio.com"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumption_retried_with_its_request_id_is_taken_once() {
    let (server, _, owner) = server_at_an_hour().await;
    let admin = client_file(&server, "owner", &server.owner_token());
    let token = new_user(&owner, "ana@studio.com", Role::Member).await;
    let ana = client_file(&server, "ana", &token);
    ok(&admin, &["credits", "add", "cloud", "50"]).await;
    ok(&admin, &["quota", "set", "ana@studio.com", "cloud", "30"]).await;

    let id = "00112233445566778899aabbccddeeff";
    let args = ["consume", "cloud", "7", "--request-id", id];
    let first = ok(&ana, &args).await;
    assert_eq!(
        first,
        json!({"consumed": 7, "balance": 43, "remaining": 23})
    );
    // A script that did not see the answer runs the same command again: the same answer,
    // nothing more taken.
    assert_eq!(ok(&ana, &args).await, first);
    assert_eq!(
        ok(&admin, &["credits", "status", "cloud"]).await,
        json!({"meters": [{"meter": "cloud", "purchased": 50, "consumed": 7, "expired": 0, "balance": 43}]})
    );
    // The id in capitals is the same id.
    let upper = id.to_uppercase();
    assert_eq!(
        ok(&ana, &["consume", "cloud", "7", "--request-id", &upper]).await,
        first
    );
    // The same id for another consumption is not a retry.
    let message = refused(
        &ana,
        &["consume", "cloud", "8", "--request-id", id],
        1,
        "invalid",
    )
    .await;
    assert!(
        message.contains("a new consumption needs a new id"),
        "{message}"
    );
    // Without an id, each run is a consumption of its own.
    ok(&ana, &["consume", "cloud", "7"]).await;
    assert_eq!(
        ok(&ana, &["consume", "cloud", "7"]).await,
        json!({"consumed": 7, "balance": 29, "remaining": 9})
    );
    // A refusal is the first answer too: retried after more credit is bought, still refused.
    let short = "ffeeddccbbaa99887766554433221100";
    let retry = ["consume", "cloud", "10", "--request-id", short];
    refused(&ana, &retry, 1, "no_credit").await;
    ok(&admin, &["quota", "set", "ana@studio.com", "cloud", "100"]).await;
    refused(&ana, &retry, 1, "no_credit").await;
    assert_eq!(
        ok(&ana, &["quota", "list", "cloud"]).await["quotas"][0]["used"],
        21
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_credits_leave_the_balance_and_reports_count_consumption() {
    let (server, h, owner) = server_at_an_hour().await;
    let admin = client_file(&server, "owner", &server.owner_token());
    let mut files = Vec::new();
    for name in ["ana", "ben"] {
        let token = new_user(&owner, &format!("{name}@studio.com"), Role::Member).await;
        files.push(client_file(&server, name, &token));
    }
    let (ana, ben) = (&files[0], &files[1]);
    add_entitlement(&owner, "vray", 1, None).await;

    // render: 10 expiring within the hour, 5 without an end; consumption draws the
    // expiring purchase first.
    let end = format_time(h + 30 * 60_000);
    let bought = ok(
        &admin,
        &["credits", "add", "render", "10", "--expires", &end],
    )
    .await;
    assert_eq!(bought["purchase"]["expires_at"], end.as_str());
    ok(&admin, &["credits", "add", "render", "5"]).await;
    ok(&admin, &["credits", "add", "cloud", "100"]).await;
    for user in ["ana@studio.com", "ben@studio.com"] {
        ok(&admin, &["quota", "set", user, "render", "--unlimited"]).await;
        ok(&admin, &["quota", "set", user, "cloud", "50"]).await;
    }
    ok(ana, &["consume", "render", "3"]).await;
    ok(ana, &["consume", "cloud", "10"]).await;
    ok(ana, &["consume", "cloud", "5"]).await;
    ok(ben, &["consume", "cloud", "20"]).await;
    assert_eq!(
        ok(&admin, &["credits", "status", "render"]).await,
        json!({"meters": [{"meter": "render", "purchased": 15, "consumed": 3, "expired": 0, "balance": 12}]})
    );

    // Past the end: the 7 left of the first purchase leave the balance.
    server.step(Duration::from_secs(3600));
    assert_eq!(
        ok(&admin, &["credits", "status"]).await,
        json!({"meters": [
            {"meter": "cloud", "purchased": 100, "consumed": 35, "expired": 0, "balance": 65},
            {"meter": "render", "purchased": 15, "consumed": 3, "expired": 7, "balance": 5},
        ]})
    );
    let message = refused(ben, &["consume", "render", "6"], 1, "no_credit").await;
    assert!(message.contains("the pool of render holds 5"), "{message}");
    ok(ben, &["consume", "render", "5"]).await;

    // The report: a row per meter, period and user, beside the features' rows.
    let since = format_time(h);
    let until = format_time(h + 3 * HOUR_MS);
    let range = ["--since", since.as_str(), "--until", until.as_str()];
    let report = ok(
        &admin,
        &[&["report", "usage", "--by", "hour"], &range[..]].concat(),
    )
    .await;
    let row = |meter: &str, hour: i64, user: &str, consumed: u64, consumptions: u64| {
        json!({
            "meter": meter,
            "period_start": format_time(h + hour * HOUR_MS),
            "user": user,
            "consumed": consumed,
            "consumptions": consumptions,
        })
    };
    let meters = json!([
        row("cloud", 0, "ana@studio.com", 15, 2),
        row("cloud", 0, "ben@studio.com", 20, 1),
        row("render", 0, "ana@studio.com", 3, 1),
        row("render", 1, "ben@studio.com", 5, 1),
    ]);
    assert_eq!(report["meters"], meters, "{report}");
    // Reports never go past the current hour: h and h+1.
    assert_eq!(report["usage"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(report["usage"][0]["feature"], "vray");

    // --feature naming a meter only: no features' rows, not a failure; naming a feature
    // only: no meters' rows; naming neither: not_found, saying so of both.
    let by_meter = ok(
        &admin,
        &[
            &["report", "usage", "--by", "hour", "--feature", "render"],
            &range[..],
        ]
        .concat(),
    )
    .await;
    assert_eq!(by_meter["usage"], json!([]), "{by_meter}");
    assert_eq!(by_meter["meters"], json!([meters[2], meters[3]]));
    let by_feature = ok(
        &admin,
        &[&["report", "usage", "--feature", "vray"], &range[..]].concat(),
    )
    .await;
    assert_eq!(by_feature["meters"], json!([]), "{by_feature}");
    assert_eq!(by_feature["usage"].as_array().unwrap().len(), 1);
    let message = refused(
        &admin,
        &["report", "usage", "--feature", "rendr"],
        1,
        "not_found",
    )
    .await;
    assert!(
        message.contains("no feature rendr") && message.contains("did you mean render?"),
        "{message}"
    );
    // A member is refused once, forbidden.
    refused(ana, &["report", "usage"], 4, "forbidden").await;

    // CSV: the features' as before; --meters, the meters'.
    let out = tally(
        &admin,
        &[&["report", "usage", "--by", "hour", "--csv"], &range[..]].concat(),
    )
    .await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("feature,period_start,pool,peak_in_use,"),
        "{text}"
    );
    assert!(!text.contains("cloud"), "{text}");
    let out = tally(
        &admin,
        &[
            &["report", "usage", "--by", "hour", "--csv", "--meters"],
            &range[..],
        ]
        .concat(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        [
            "meter,period_start,user,consumed,consumptions".to_string(),
            format!("cloud,{since},ana@studio.com,15,2"),
            format!("cloud,{since},ben@studio.com,20,1"),
            format!("render,{since},ana@studio.com,3,1"),
            format!("render,{},ben@studio.com,5,1", format_time(h + HOUR_MS)),
        ]
    );
    let only = ok(
        &admin,
        &[&["report", "usage", "--by", "hour", "--meters"], &range[..]].concat(),
    )
    .await;
    assert_eq!(only, json!({ "meters": meters }));

    // For people: the features' table, then "Credits consumed"; --meters alone.
    let out = tally(
        &admin,
        &[&["report", "usage", "--by", "day"], &range[..]].concat(),
    )
    .await;
    let text = String::from_utf8(out.stdout).unwrap();
    let (features, credits) = text.split_once("Credits consumed").expect(&text);
    assert!(features.starts_with("FEATURE"), "{text}");
    assert!(
        credits.contains("CONSUMPTIONS") && credits.contains("render"),
        "{text}"
    );
    let out = tally(
        &admin,
        &[&["report", "usage", "--meters"], &range[..]].concat(),
    )
    .await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("Credits consumed\nMETER"), "{text}");
    assert!(!text.contains("FEATURE"), "{text}");
}

#[test]
fn bad_amounts_quotas_and_request_ids_are_usage_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["consume", "cloud", "0"], "at least 1"),
        (
            &["consume", "cloud", "ten"],
            "\"ten\" is not a whole number",
        ),
        (
            &["credits", "add", "cloud", "-5"],
            "\"-5\" is not a whole number",
        ),
        (&["credits", "add", "Cloud", "5"], "meter name \"Cloud\""),
        (
            &["credits", "add", "cloud", "5", "--expires", "someday"],
            "\"someday\" is not a time",
        ),
        (
            &[
                "quota",
                "set",
                "ana@studio.com",
                "cloud",
                "80",
                "--unlimited",
            ],
            "not both",
        ),
        (
            &["quota", "set", "ana@studio.com", "cloud"],
            "or --unlimited",
        ),
        (
            &["quota", "set", "ana@studio.com", "cloud", "0"],
            "quota remove",
        ),
        (
            &["consume", "cloud", "1", "--request-id", "1234"],
            "32 hex digits",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["--json", "--server", "127.0.0.1:1", "--token", "x"];
        all.extend_from_slice(args);
        let out = cli(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let doc = stdout_json(&out);
        assert_eq!(doc["error"]["code"], "invalid", "{args:?}");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{args:?}: {message}");
    }
}

/// The library: each `consume` is a consumption of its own; `consume_with_id` with one id
/// answers a retry with the first answer and consumes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_consumes_once_per_request_id() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    let token = new_user(&owner, "ana@studio.com", Role::Member).await;
    let ana = Client::connect(server.client_config(&token)).await.unwrap();
    buy_credits(&owner, "cloud", 100).await;
    let info = owner
        .set_quota("ana@studio.com", "cloud", Some(60))
        .await
        .unwrap();
    assert_eq!((info.quota, info.remaining), (Some(60), Some(60)));

    let first = ana.consume("cloud", 10).await.unwrap();
    let second = ana.consume("cloud", 10).await.unwrap();
    assert_eq!((first.balance, first.remaining), (90, Some(50)));
    assert_eq!((second.balance, second.remaining), (80, Some(40)));

    let id = RequestId(rand::random());
    let once = ana.consume_with_id("cloud", 15, id).await.unwrap();
    let again = ana.consume_with_id("cloud", 15, id).await.unwrap();
    assert_eq!(once, again);
    assert_eq!(
        (once.consumed, once.balance, once.remaining),
        (15, 65, Some(25))
    );
    let meters = ana.credits_status(Some("cloud")).await.unwrap();
    assert_eq!((meters[0].consumed, meters[0].balance), (35, 65));
    let err = ana.consume_with_id("cloud", 16, id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid), "{err}");

    let err = ana.consume("cloud", 26).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoCredit), "{err}");
    let quotas = ana.quotas(None).await.unwrap();
    assert_eq!((quotas[0].used, quotas[0].remaining), (35, Some(25)));

    // The blocking wrapper does the same.
    let config = server.client_config(&token);
    tokio::task::spawn_blocking(move || {
        let client = tally_client::blocking::Client::connect(config).unwrap();
        let id = RequestId(rand::random());
        let a = client.consume_with_id("cloud", 5, id).unwrap();
        assert_eq!(client.consume_with_id("cloud", 5, id).unwrap(), a);
        assert_eq!((a.balance, a.remaining), (60, Some(20)));
        let b = client.consume("cloud", 5).unwrap();
        assert_eq!((b.balance, b.remaining), (55, Some(15)));
    })
    .await
    .unwrap();
}
