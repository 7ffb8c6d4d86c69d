//! Usage reports (SPEC §10) through the real `tally` binary against a daemon on a stepped
//! clock: a scripted history of checkouts, check-ins and a refusal over three hours, read
//! back as `report usage --by hour` and `report users` in JSON and CSV with exact figures;
//! a member refused `forbidden`, an unknown feature `not_found` naming the nearest, and bad
//! arguments refused before connecting.

use std::time::Duration;

use serde_json::{json, Value};
use tally_client::Client;
use tally_protocol::{
    format_time, Checkin, Checkout, ErrorCode, LeaseId, Request, RequestId, Response, Role,
};

use crate::harness::*;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR_MS: i64 = 3_600_000;

async fn checkout(client: &Client, n: u8) -> Result<LeaseId, tally_client::Error> {
    let request = Request::Checkout(Checkout {
        request_id: RequestId([n; 16]),
        feature: "vray".into(),
        seats: 1,
    });
    match client.call(request).await? {
        Response::Lease(lease) => Ok(lease.id),
        other => panic!("unexpected {other:?}"),
    }
}

async fn checkin(client: &Client, lease: LeaseId) {
    client
        .call(Request::Checkin(Checkin { lease }))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_count_a_scripted_history_exactly() {
    // Leases live a day without a heartbeat, so that steps of the clock do not end them.
    let server = TestServer::start_stepped(|c| c.leases.ttl = Duration::from_secs(24 * 3600)).await;
    let now = server.now();
    let h = (now / HOUR_MS + 1) * HOUR_MS;
    server.step(Duration::from_millis((h - now) as u64));
    let owner = server.owner().await;
    let owner_file = client_file(&server, "owner", &server.owner_token());
    add_entitlement(&owner, "vray", 2, None).await;
    let mut clients = Vec::new();
    let mut files = Vec::new();
    for name in ["ana", "ben", "cy"] {
        let token = new_user(&owner, &format!("{name}@studio.com"), Role::Member).await;
        files.push(client_file(&server, name, &token));
        clients.push(Client::connect(server.client_config(&token)).await.unwrap());
    }
    let (ana, ben, cy) = (&clients[0], &clients[1], &clients[2]);

    // h: ana takes a seat; h+30m: ben the other, and cy is refused; h+1h30m: ana gives
    // hers back; h+2h30m: ben his.
    let a = checkout(ana, 1).await.unwrap();
    server.step(30 * MINUTE);
    let b = checkout(ben, 2).await.unwrap();
    let refused = checkout(cy, 3).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::NoSeat), "{refused}");
    server.step(60 * MINUTE);
    checkin(ana, a).await;
    server.step(60 * MINUTE);
    checkin(ben, b).await;
    server.step(30 * MINUTE);

    let since = format_time(h);
    let until = format_time(h + 3 * HOUR_MS);
    let range = ["--since", since.as_str(), "--until", until.as_str()];
    let out = tally(
        &owner_file,
        &[&["--json", "report", "usage", "--by", "hour"], &range[..]].concat(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let usage = stdout_json(&out);
    let row = |hour: i64, peak: u32, seat_hours: f64, checkouts: u32, denials: u32, users: u32| {
        json!({
            "feature": "vray",
            "period_start": format_time(h + hour * HOUR_MS),
            "pool": 2,
            "peak_in_use": peak,
            "seat_hours": seat_hours,
            "utilisation": seat_hours / 2.0,
            "checkouts": checkouts,
            "denials": denials,
            "distinct_users": users,
        })
    };
    assert_eq!(
        usage,
        json!({"usage": [
            row(0, 2, 1.5, 2, 1, 2),
            row(1, 2, 1.5, 0, 0, 2),
            row(2, 1, 0.5, 0, 0, 1),
        ], "meters": []})
    );

    let out = tally(
        &owner_file,
        &[&["--json", "report", "users"], &range[..]].concat(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let user = |name: &str, seat_hours: f64, checkouts: u32, denials: u32, last: Value| {
        json!({
            "user": format!("{name}@studio.com"),
            "feature": "vray",
            "seat_hours": seat_hours,
            "checkouts": checkouts,
            "denials": denials,
            "last_used": last,
        })
    };
    assert_eq!(
        stdout_json(&out),
        json!({"users": [
            user("ana", 1.5, 1, 0, json!(format_time(h + 90 * 60_000))),
            user("ben", 2.0, 1, 0, json!(format_time(h + 150 * 60_000))),
            user("cy", 0.0, 0, 1, Value::Null),
        ]})
    );

    // CSV, as the other listings write it.
    let out = tally(
        &owner_file,
        &[&["report", "usage", "--by", "hour", "--csv"], &range[..]].concat(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "feature,period_start,pool,peak_in_use,seat_hours,utilisation,checkouts,denials,distinct_users"
    );
    assert_eq!(lines[1], format!("vray,{since},2,2,1.500,0.750,2,1,2"));
    assert_eq!(lines.len(), 4);
    let out = tally(
        &owner_file,
        &[&["report", "users", "--csv"], &range[..]].concat(),
    )
    .await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "user,feature,seat_hours,checkouts,denials,last_used".to_string(),
            format!(
                "ana@studio.com,vray,1.500,1,0,{}",
                format_time(h + 90 * 60_000)
            ),
            format!(
                "ben@studio.com,vray,2.000,1,0,{}",
                format_time(h + 150 * 60_000)
            ),
            "cy@studio.com,vray,0.000,0,1,".to_string(),
        ]
    );

    // A table for people.
    let out = tally(
        &owner_file,
        &[&["report", "usage", "--by", "day"], &range[..]].concat(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("FEATURE"), "{text}");
    assert!(text.contains("PEAK_IN_USE"), "{text}");

    // Members are refused, first; an unknown feature is named with the nearest.
    let out = tally(&files[0], &["--json", "report", "usage"]).await;
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(stdout_json(&out)["error"]["code"], "forbidden");
    let out = tally(
        &files[0],
        &["--json", "report", "users", "--feature", "nope"],
    )
    .await;
    assert_eq!(stdout_json(&out)["error"]["code"], "forbidden");
    let out = tally(
        &owner_file,
        &["--json", "report", "usage", "--feature", "vary"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let error = &stdout_json(&out)["error"];
    assert_eq!(error["code"], "not_found");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("did you mean vray?"),
        "{error}"
    );
    let events = audit(&owner).await;
    assert!(
        events
            .iter()
            .any(|e| e.action == "report_usage" && e.outcome == "forbidden"),
        "the refusal is audited"
    );

    // Bad arguments are usage errors, before any server is asked.
    for (args, says) in [
        (
            vec!["report", "usage", "--by", "fortnight"],
            "--by fortnight is not a period",
        ),
        (
            vec![
                "report",
                "users",
                "--since",
                "2026-02-01",
                "--until",
                "2026-01-01",
            ],
            "is not before --until",
        ),
        (vec!["report", "usage", "--since", "yesterday"], "yesterday"),
    ] {
        let mut all = vec!["--server", "127.0.0.1:1", "--token", "x"];
        all.extend(args);
        let out = cli(&all);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}
