//! Every kind of notification of SPEC R20 reaching a real SMTP server and a webhook
//! receiver, each caused the way it is in a studio: a user past `users.max_active`, seats
//! assigned and moved, a user removed, a feature out of seats, an entitlement running out
//! (on a stepped clock, 14 days and 1 day before and at its end) and, on a PostgreSQL
//! cluster, a new leader after the old one is killed.

use std::time::Duration;

use serde_json::Value;
use tally_protocol::{Assign, ErrorCode, Role, UserAdd};

use crate::cluster::{Cluster, ClusterSpec, TestDatabase};
use crate::harness::*;
use crate::sinks::{notify_config, Mail, MailServer, WebhookReceiver};

const SECRET: &str = "kinds-secret";
const DAY: Duration = Duration::from_secs(24 * 3600);
const WAIT: Duration = Duration::from_secs(30);

/// Waits until both sinks have the notification of `kind` that `pred` accepts; returns the
/// webhook body and the e-mail, checked against each other.
fn both(
    mail: &MailServer,
    hook: &WebhookReceiver,
    kind: &str,
    pred: impl Fn(&Value) -> bool,
) -> (Value, Mail) {
    let body = hook
        .wait_for(|b| b["kind"] == kind && pred(b), WAIT)
        .unwrap_or_else(|| panic!("no {kind} at the webhook; it got {:#?}", hook.received()));
    let id = body["id"].as_str().expect("an id").to_string();
    let subject = body["subject"].as_str().expect("a subject").to_string();
    let mail = mail
        .wait_for(|m| m.body.contains(&id), WAIT)
        .unwrap_or_else(|| panic!("no e-mail of {kind} {id}; got {:#?}", mail.received()));
    assert!(
        mail.subject.contains(kind) && mail.subject.contains(&subject),
        "the subject line names the kind and subject: {:?}",
        mail.subject
    );
    assert!(
        mail.to.iter().any(|to| to == "it-licenses@studio.com"),
        "the responsible people get it: {:?}",
        mail.to
    );
    (body, mail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_reaches_a_real_smtp_server_and_a_webhook() {
    let mail = MailServer::start();
    let hook = WebhookReceiver::start(SECRET);
    let notify = notify_config(&mail, &hook, SECRET);
    let server = TestServer::start_stepped(|config| {
        let parsed = tally_server::config::Config::parse(&format!(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/nonexistent\"\n{notify}"
        ))
        .expect("the sinks' configuration parses");
        config.notify = parsed.notify;
        config.users.max_active = 2;
    })
    .await;
    let owner = server.owner().await;

    // user_limit_exceeded: a third active person past `users.max_active = 2`.
    new_user(&owner, "ana@studio.com", Role::Member).await;
    new_user(&owner, "bo@studio.com", Role::Member).await;
    let refused = owner
        .add_user(UserAdd {
            username: "cy@studio.com".into(),
            name: String::new(),
            role: Role::Member,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::UserLimit), "{refused}");
    let (body, _) = both(&mail, &hook, "user_limit_exceeded", |_| true);
    assert_eq!(body["subject"], "cy@studio.com");
    assert!(body["feature"].is_null());

    // assignment_changed: assigned, then moved; each to the user concerned too.
    let ends = server.now() + 20 * DAY.as_millis() as i64;
    add_entitlement(&owner, "vray", 2, Some(ends)).await;
    let assign = |user: &str, from: Option<&str>| Assign {
        username: user.into(),
        feature: "vray".into(),
        seats: 1,
        entitlement: None,
        from: from.map(str::to_string),
        expires_at: None,
    };
    owner.assign(assign("ana@studio.com", None)).await.unwrap();
    let (body, to_ana) = both(&mail, &hook, "assignment_changed", |b| {
        b["subject"] == "ana@studio.com"
    });
    assert_eq!(body["feature"], "vray");
    assert!(
        body["text"].as_str().unwrap().contains("assigned"),
        "{body}"
    );
    assert!(
        to_ana.to.iter().any(|to| to == "ana@studio.com"),
        "{:?}",
        to_ana.to
    );
    owner
        .assign(assign("bo@studio.com", Some("ana@studio.com")))
        .await
        .unwrap();
    let (body, to_bo) = both(&mail, &hook, "assignment_changed", |b| {
        b["subject"] == "bo@studio.com"
    });
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("moved from ana@studio.com"),
        "{body}"
    );
    assert!(
        to_bo.to.iter().any(|to| to == "bo@studio.com"),
        "{:?}",
        to_bo.to
    );
    both(&mail, &hook, "assignment_changed", |b| {
        b["subject"] == "ana@studio.com" && b["text"].as_str().unwrap().contains("moved to")
    });

    // pool_exhausted: two seats, one assigned to bo: the owner's checkout of two is refused.
    let refused = owner.checkout("vray", 2).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::NoSeat), "{refused}");
    let (body, _) = both(&mail, &hook, "pool_exhausted", |_| true);
    assert_eq!(
        (&body["subject"], &body["feature"]),
        (&"vray".into(), &"vray".into())
    );

    // user_removed: bo's seats revoked first, then the account; bo hears of it too.
    owner
        .revoke(tally_protocol::Revoke {
            username: "bo@studio.com".into(),
            feature: "vray".into(),
            seats: None,
        })
        .await
        .unwrap();
    owner.remove_user("bo@studio.com").await.unwrap();
    let (_, to_bo) = both(&mail, &hook, "user_removed", |b| {
        b["subject"] == "bo@studio.com"
    });
    assert!(
        to_bo.to.iter().any(|to| to == "bo@studio.com"),
        "{:?}",
        to_bo.to
    );

    // entitlement_expiring 14 days and 1 day before, then entitlement_expired.
    server.step(7 * DAY);
    let (body, _) = both(&mail, &hook, "entitlement_expiring", |b| {
        b["text"].as_str().unwrap().contains("14 days")
    });
    assert_eq!(body["feature"], "vray");
    server.step(12 * DAY);
    both(&mail, &hook, "entitlement_expiring", |b| {
        b["text"].as_str().unwrap().contains("1 day")
    });
    server.step(DAY);
    both(&mail, &hook, "entitlement_expired", |_| true);

    // Each once: no id twice at the webhook, and every body's signature checked out.
    let ids: Vec<String> = hook
        .received()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "delivered once each: {ids:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_announced_by_mail_and_webhook() {
    let Some(db) = TestDatabase::create("kinds_leader").await else {
        return;
    };
    let mail = MailServer::start();
    let hook = WebhookReceiver::start(SECRET);
    let mut spec = ClusterSpec::new(2);
    spec.extra = notify_config(&mail, &hook, SECRET);
    let mut cluster = Cluster::start(db, spec).await;
    let (first, epoch) = cluster.wait_leadership(WAIT).await;
    let first_addr = cluster.nodes[first].addr.to_string();
    let (body, _) = both(&mail, &hook, "leader_changed", |b| {
        b["subject"] == first_addr.as_str()
    });
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("is now the cluster's leader"),
        "{body}"
    );

    cluster.kill9(first);
    let (second, _) = cluster.wait_leader_after(epoch, WAIT).await;
    let second_addr = cluster.nodes[second].addr.to_string();
    let (body, _) = both(&mail, &hook, "leader_changed", |b| {
        b["subject"] == second_addr.as_str()
    });
    let text = body["text"].as_str().unwrap();
    assert!(text.contains(&format!("after {first_addr}")), "{text}");
}
