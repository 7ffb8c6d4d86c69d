//! Long listings (item 5 of issue 8): the audit log and the lease list come in pages with a
//! cursor and a bounded size, `tally audit` and `tally leases` page through them, and an
//! audit log of large events no longer breaks the connection.
//!
//! The servers run in-process while the `tally` binary runs as a child, so the tests use a
//! multi-threaded runtime: the server keeps serving while a test thread waits for `tally`.

use std::collections::BTreeSet;

use tally_protocol::{
    AuditPageQuery, AuditQuery, Checkout, LeasesPageQuery, LeasesQuery, Request, RequestId,
    Response,
};

use crate::harness::*;

fn audit_query(limit: Option<u32>) -> AuditQuery {
    AuditQuery {
        since: None,
        user: None,
        feature: None,
        limit,
    }
}

/// 1,200 leases and their 1,201 audit events: the paged requests cover them in pages of
/// at most 1,000 with nothing twice, the old requests still answer, and the CLI pages
/// through both within `--limit`, in JSON, CSV and tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_leases_page_through_the_protocol_and_the_cli() {
    let server = TestServer::start_with(|config| {
        config.leases.ttl = std::time::Duration::from_secs(60);
        // One client holds 1,200 leases: more than the default limit of one instance.
        config.limits.max_leases_per_client = 2000;
    })
    .await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 1500, None).await;
    let checkouts = (0..1200).map(|_| owner.checkout("vray", 1));
    let held: Vec<_> = futures::future::try_join_all(checkouts).await.unwrap();
    let ids: BTreeSet<String> = held.iter().map(|l| l.id().to_string()).collect();

    // Leases, page by page.
    let mut listed = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let request = Request::LeasesPage(LeasesPageQuery {
            query: LeasesQuery {
                feature: None,
                user: None,
            },
            after,
            limit: None,
        });
        let Response::LeasesPage(page) = owner.call(request).await.unwrap() else {
            panic!("not a page");
        };
        pages += 1;
        assert!(page.leases.len() <= 1000);
        listed.extend(page.leases.iter().map(|l| l.id.to_string()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(listed.len(), 1200);
    assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), ids);
    assert_eq!(leases(&owner).await.len(), 1200, "the old request answers");

    // The audit log, page by page, newest first.
    let mut events = Vec::new();
    let mut before = None;
    loop {
        let request = Request::AuditPage(AuditPageQuery {
            query: audit_query(None),
            before,
        });
        let Response::AuditPage(page) = owner.call(request).await.unwrap() else {
            panic!("not a page");
        };
        assert!(page.events.len() <= 1000);
        events.extend(page.events);
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(events.len(), 1201);
    assert!(events.windows(2).all(|w| w[0].at >= w[1].at));
    assert_eq!(events.last().unwrap().action, "entitlement_add");
    let old = owner
        .call(Request::Audit(audit_query(Some(5000))))
        .await
        .unwrap();
    assert!(matches!(old, Response::AuditEvents(list) if list.len() == 1201));

    let config = server.data_dir().join("client.toml");
    let config = config.to_str().unwrap();
    let doc = stdout_json(&cli(&["--config", config, "--json", "leases"]));
    let from_cli: BTreeSet<String> = doc["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(from_cli, ids);
    let out = cli(&["--config", config, "leases"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1 + 1200
    );

    for (limit, expected) in [("1100", 1100), ("5000", 1201), ("7", 7)] {
        let out = cli(&["--config", config, "--json", "audit", "--limit", limit]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let doc = stdout_json(&out);
        assert_eq!(doc["events"].as_array().unwrap().len(), expected, "{limit}");
    }
    let doc = stdout_json(&cli(&["--config", config, "--json", "audit"]));
    assert_eq!(
        doc["events"].as_array().unwrap().len(),
        1000,
        "the default limit"
    );
    let out = cli(&["--config", config, "audit", "--csv", "--limit", "1150"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    assert_eq!(
        reader.headers().unwrap(),
        vec!["at", "actor", "action", "subject", "feature", "outcome", "reason"]
    );
    assert_eq!(reader.records().count(), 1150);
    let out = cli(&["--config", config, "audit", "--limit", "1150"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1 + 1150
    );
    drop(held);
}

/// Refused checkouts with 60 KB feature names used to fill the audit log with about 36 MB,
/// past the largest frame: `tally audit` lost the connection on the answer and sent the
/// query again and again. Stored events are bounded now (about 1.4 KB at most here), and
/// 2,500 of them take three pages (at most 1,000 events a page), which the CLI reads in one
/// go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_log_of_large_events_comes_in_pages_that_fit() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    let refusals = (0..2500).map(|i| {
        owner.call(Request::Checkout(Checkout {
            request_id: RequestId(rand::random()),
            feature: format!("{i:04}{}", "x".repeat(60_000)),
            seats: 1,
        }))
    });
    for refused in futures::future::join_all(refusals).await {
        assert!(refused.is_err());
    }
    let config = server.data_dir().join("client.toml");
    let config = config.to_str().unwrap();
    let out = cli(&["--config", config, "--json", "audit", "--limit", "2500"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", out.status);
    let doc = stdout_json(&out);
    let events = doc["events"].as_array().unwrap();
    assert_eq!(events.len(), 2500);
    assert!(events
        .iter()
        .all(|e| e["reason"].as_str().unwrap().len() <= 1024));
    // The old request answers too, within its bound.
    match owner.call(Request::Audit(audit_query(Some(2500)))).await {
        Ok(Response::AuditEvents(events)) => assert_eq!(events.len(), 2500),
        other => panic!("unexpected {other:?}"),
    }
}
