//! Named users, roles and assigned seats (R2, R7–R9, R11) over the wire.

use std::time::Duration;

use tally_client::{Client, Error};
use tally_protocol::{
    Assign, AuditQuery, ClientId, ClientMessage, EndReason, EntitlementKind, EntitlementRemove,
    ErrorBody, ErrorCode, LeaseId, LeaseSource, NewEntitlement, Release, Request, Response, Revoke,
    Role, ServerMessage, StatusQuery, UserAdd, UserInfo, UserRef, PROTOCOL_VERSION,
};

use crate::harness::*;

/// Adds a user and signs them in.
async fn add_user(server: &TestServer, owner: &Client, email: &str, role: Role) -> Client {
    let token = new_user(owner, email, role).await;
    Client::connect(server.client_config(&token)).await.unwrap()
}

fn assign(user: &str, feature: &str, seats: u32) -> Assign {
    Assign {
        username: user.into(),
        feature: feature.into(),
        seats,
        entitlement: None,
        from: None,
        expires_at: None,
    }
}

fn user_ref(email: &str) -> UserRef {
    UserRef {
        username: email.into(),
    }
}

async fn entitlement(
    owner: &Client,
    feature: &str,
    seats: u32,
    kind: EntitlementKind,
    expires_at: Option<i64>,
) -> u64 {
    let new = NewEntitlement {
        feature: feature.into(),
        seats,
        starts_at: None,
        expires_at,
        kind,
        borrowable: false,
        max_borrow_secs: None,
        reference: String::new(),
    };
    match owner.call(Request::EntitlementAdd(new)).await.unwrap() {
        Response::Entitlement(e) => e.id,
        other => panic!("{other:?}"),
    }
}

async fn users(owner: &Client) -> Vec<UserInfo> {
    match owner.call(Request::UserList).await.unwrap() {
        Response::Users(users) => users,
        other => panic!("{other:?}"),
    }
}

/// Everything a refusal must leave as it was.
#[derive(Debug, PartialEq)]
struct State {
    status: Vec<tally_protocol::FeatureStatus>,
    users: Vec<UserInfo>,
    leases: Vec<LeaseId>,
}

async fn state(owner: &Client) -> State {
    let status = match owner
        .call(Request::Status(StatusQuery { feature: None }))
        .await
        .unwrap()
    {
        Response::Status(list) => list,
        other => panic!("{other:?}"),
    };
    State {
        status,
        users: users(owner).await,
        leases: leases(owner).await.iter().map(|l| l.id).collect(),
    }
}

/// Sends `request` as `actor`, expects a refusal with `code` whose message contains
/// `needle`, and checks that nothing changed but one audit event recording the refusal.
async fn refused(
    owner: &Client,
    actor: &Client,
    request: Request,
    code: ErrorCode,
    needle: &str,
) -> ErrorBody {
    let before = state(owner).await;
    let audit_before = audit(owner).await.len();
    let name = request.name();
    let err = match actor.call(request).await {
        Err(Error::Server(body)) => body,
        other => panic!("{name}: expected {code}, got {other:?}"),
    };
    assert_eq!(err.code, code, "{name}: {}", err.message);
    assert!(
        err.message.contains(needle),
        "{name}: {:?} does not mention {needle:?}",
        err.message
    );
    assert_eq!(
        state(owner).await,
        before,
        "{name} was refused but changed something"
    );
    let events = audit(owner).await;
    assert_eq!(
        events.len(),
        audit_before + 1,
        "{name}: the refusal is audited once"
    );
    assert_eq!(events[0].outcome, code.as_str(), "{name}: {:?}", events[0]);
    err
}

#[tokio::test]
async fn the_chaos_example_ten_named_seats_out_of_a_hundred() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    entitlement(&owner, "vray", 100, EntitlementKind::Standard, None).await;
    let mut named = Vec::new();
    for i in 0..10 {
        let email = format!("artist{i}@studio.com");
        let client = add_user(&server, &owner, &email, Role::Member).await;
        match owner
            .call(Request::Assign(assign(&email, "vray", 1)))
            .await
            .unwrap()
        {
            Response::Assignment(a) => assert_eq!((a.seats, a.feature.as_str()), (1, "vray")),
            other => panic!("{other:?}"),
        }
        named.push(client);
    }
    let figures = status(&owner, "vray").await;
    assert_eq!(
        (
            figures.total,
            figures.assigned,
            figures.floating,
            figures.available
        ),
        (100, 10, 90, 90)
    );
    // Other users get the 90 floating seats, and no more.
    let other = add_user(&server, &owner, "render@studio.com", Role::Member).await;
    let mut floating = Vec::new();
    for _ in 0..90 {
        let lease = other.checkout("vray", 1).await.unwrap();
        assert_eq!(lease.info().source, LeaseSource::Floating);
        floating.push(lease);
    }
    let err = other.checkout("vray", 1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoSeat));
    assert!(err.to_string().contains("90 of 90"), "{err}");
    // Each named artist still gets their seat, from their assignment.
    let mut held = Vec::new();
    for client in &named {
        let lease = client.checkout("vray", 1).await.unwrap();
        assert!(matches!(lease.info().source, LeaseSource::Assignment(_)));
        held.push(lease);
    }
    let figures = status(&owner, "vray").await;
    assert_eq!((figures.in_use, figures.available), (100, 0));
    // A named artist cannot take a second seat: theirs is in use and the pool is full.
    assert_eq!(
        named[0].checkout("vray", 1).await.unwrap_err().code(),
        Some(ErrorCode::NoSeat)
    );
    server.stop().await;
}

#[tokio::test]
async fn refusals_of_revoke_and_assign_change_nothing() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    let trial = entitlement(&owner, "nuke", 2, EntitlementKind::Trial, None).await;
    let ends = now_millis() + 3_600_000;
    let vray = entitlement(&owner, "vray", 3, EntitlementKind::Standard, Some(ends)).await;
    add_user(&server, &owner, "ana@studio.com", Role::Member).await;
    add_user(&server, &owner, "ben@studio.com", Role::Member).await;
    add_user(&server, &owner, "cat@studio.com", Role::Member).await;
    owner
        .call(Request::Assign(assign("ana@studio.com", "nuke", 1)))
        .await
        .unwrap();
    owner
        .call(Request::Assign(assign("ana@studio.com", "vray", 2)))
        .await
        .unwrap();

    // R7: trial assignments are locked, whole or in part.
    let revoke = |user: &str, feature: &str, seats: Option<u32>| {
        Request::Revoke(Revoke {
            username: user.into(),
            feature: feature.into(),
            seats,
        })
    };
    let err = refused(
        &owner,
        &owner,
        revoke("ana@studio.com", "nuke", None),
        ErrorCode::TrialLocked,
        "trial",
    )
    .await;
    assert!(
        err.message.contains(&format!("entitlement {trial}")),
        "{}",
        err.message
    );
    // R8: nor moved.
    let mut from_trial = assign("ben@studio.com", "nuke", 1);
    from_trial.from = Some("ana@studio.com".into());
    refused(
        &owner,
        &owner,
        Request::Assign(from_trial),
        ErrorCode::TrialLocked,
        "cannot be moved",
    )
    .await;
    // Nothing to revoke, or more than there is.
    refused(
        &owner,
        &owner,
        revoke("ben@studio.com", "vray", None),
        ErrorCode::NotFound,
        "no seats of vray",
    )
    .await;
    refused(
        &owner,
        &owner,
        revoke("ana@studio.com", "vray", Some(3)),
        ErrorCode::Invalid,
        "has 2 seat(s)",
    )
    .await;
    refused(
        &owner,
        &owner,
        revoke("nobody@studio.com", "vray", None),
        ErrorCode::NotFound,
        "nobody@studio.com",
    )
    .await;

    // R8: assigning needs free floating seats; one is left, two are asked for.
    refused(
        &owner,
        &owner,
        Request::Assign(assign("ben@studio.com", "vray", 2)),
        ErrorCode::NoSeat,
        "--from",
    )
    .await;
    // An expiry past the entitlement's end.
    let mut late = assign("ben@studio.com", "vray", 1);
    late.expires_at = Some(ends + 1000);
    refused(
        &owner,
        &owner,
        Request::Assign(late),
        ErrorCode::Invalid,
        "after the end of entitlement",
    )
    .await;
    // The wrong entitlement for the feature.
    let mut wrong = assign("ben@studio.com", "vray", 1);
    wrong.entitlement = Some(trial);
    refused(
        &owner,
        &owner,
        Request::Assign(wrong),
        ErrorCode::Invalid,
        "is for nuke",
    )
    .await;
    // Moving more than the donor has.
    let mut greedy = assign("ben@studio.com", "vray", 3);
    greedy.from = Some("ana@studio.com".into());
    refused(
        &owner,
        &owner,
        Request::Assign(greedy),
        ErrorCode::Invalid,
        "no single assignment",
    )
    .await;
    // A deactivated user cannot be given seats.
    owner
        .call(Request::UserDeactivate(user_ref("cat@studio.com")))
        .await
        .unwrap();
    refused(
        &owner,
        &owner,
        Request::Assign(assign("cat@studio.com", "vray", 1)),
        ErrorCode::Invalid,
        "deactivated",
    )
    .await;

    // What is allowed still works: a move is atomic and keeps the assigned total.
    let mut moved = assign("ben@studio.com", "vray", 1);
    moved.from = Some("ana@studio.com".into());
    moved.entitlement = Some(vray);
    owner.call(Request::Assign(moved)).await.unwrap();
    let list = users(&owner).await;
    let seats = |email: &str| {
        list.iter()
            .find(|u| u.username == email)
            .unwrap()
            .assigned_seats
    };
    assert_eq!(
        (seats("ana@studio.com"), seats("ben@studio.com")),
        (2, 1),
        "ana keeps her nuke seat and one vray"
    );
    assert_eq!(status(&owner, "vray").await.assigned, 2);
    server.stop().await;
}

#[tokio::test]
async fn refusals_of_user_changes_change_nothing() {
    let server = TestServer::start_with(|c| c.users.max_active = 3).await;
    let owner = server.owner().await;
    entitlement(&owner, "vray", 2, EntitlementKind::Standard, None).await;
    let admin = add_user(&server, &owner, "admin@studio.com", Role::Admin).await;
    add_user(&server, &owner, "ana@studio.com", Role::Member).await;
    add_user(&server, &owner, "ben@studio.com", Role::Member).await;

    let add = |email: &str| {
        Request::UserAdd(UserAdd {
            username: email.into(),
            name: String::new(),
            role: Role::Member,
        })
    };
    refused(
        &owner,
        &owner,
        add("ana@studio.com"),
        ErrorCode::AlreadyExists,
        "already exists",
    )
    .await;
    refused(
        &owner,
        &owner,
        add("ANA@studio.com"),
        ErrorCode::AlreadyExists,
        "already exists",
    )
    .await;
    refused(
        &owner,
        &owner,
        add("not-an-email"),
        ErrorCode::Invalid,
        "not an e-mail",
    )
    .await;
    let owner_again = Request::UserAdd(UserAdd {
        username: "boss@studio.com".into(),
        name: String::new(),
        role: Role::Owner,
    });
    refused(
        &owner,
        &owner,
        owner_again,
        ErrorCode::Invalid,
        "exactly one owner",
    )
    .await;
    // Three active users besides the owner, who is not counted (R9): the admin, ana, ben.
    refused(
        &owner,
        &owner,
        add("dan@studio.com"),
        ErrorCode::UserLimit,
        "allows 3 active users and has 3",
    )
    .await;

    refused(
        &owner,
        &admin,
        Request::UserDeactivate(user_ref("admin@studio.com")),
        ErrorCode::SelfOrOwner,
        "yourself",
    )
    .await;
    refused(
        &owner,
        &admin,
        Request::UserDeactivate(user_ref("owner@localhost")),
        ErrorCode::SelfOrOwner,
        "owner",
    )
    .await;
    refused(
        &owner,
        &admin,
        Request::UserRemove(user_ref("owner@localhost")),
        ErrorCode::SelfOrOwner,
        "owner",
    )
    .await;
    refused(
        &owner,
        &owner,
        Request::UserRemove(user_ref("owner@localhost")),
        ErrorCode::SelfOrOwner,
        "yourself",
    )
    .await;
    refused(
        &owner,
        &owner,
        Request::UserDeactivate(user_ref("zed@studio.com")),
        ErrorCode::NotFound,
        "zed@studio.com",
    )
    .await;

    owner
        .call(Request::Assign(assign("ana@studio.com", "vray", 1)))
        .await
        .unwrap();
    let err = refused(
        &owner,
        &owner,
        Request::UserRemove(user_ref("ana@studio.com")),
        ErrorCode::HasAssignments,
        "1 seat(s) of vray",
    )
    .await;
    assert!(err.message.contains("revoke"), "{}", err.message);

    // Deactivating ana suspends her seat; when the floating pool fills meanwhile,
    // activating her again is refused, naming the feature.
    owner
        .call(Request::UserDeactivate(user_ref("ana@studio.com")))
        .await
        .unwrap();
    let figures = status(&owner, "vray").await;
    assert_eq!(
        (figures.assigned, figures.available),
        (0, 2),
        "her seat floats again"
    );
    let ben = {
        let token = match owner
            .call(Request::UserToken(user_ref("ben@studio.com")))
            .await
            .unwrap()
        {
            Response::Token(token) => token,
            other => panic!("{other:?}"),
        };
        Client::connect(server.client_config(&token)).await.unwrap()
    };
    let _a = ben.checkout("vray", 1).await.unwrap();
    let _b = ben.checkout("vray", 1).await.unwrap();
    refused(
        &owner,
        &owner,
        Request::UserActivate(user_ref("ana@studio.com")),
        ErrorCode::NoSeat,
        "vray",
    )
    .await;
    drop((_a, _b));

    // The user limit applies to activation too.
    let token = new_user(&owner, "eve@studio.com", Role::Guest).await;
    assert!(!token.is_empty());
    for _ in 0..100 {
        if status(&owner, "vray").await.in_use == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    refused(
        &owner,
        &owner,
        Request::UserActivate(user_ref("ana@studio.com")),
        ErrorCode::UserLimit,
        "active users",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn every_admin_request_is_refused_to_members_guests_and_strangers() {
    // Many wrong tokens come from one address here; the sign-in limit has its own test.
    let server = TestServer::start_with(|c| c.limits.signin_failures = 0).await;
    let owner = server.owner().await;
    let ent = entitlement(&owner, "vray", 5, EntitlementKind::Standard, None).await;
    let member = add_user(&server, &owner, "mia@studio.com", Role::Member).await;
    let guest = add_user(&server, &owner, "gus@studio.com", Role::Guest).await;
    let held = owner.checkout("vray", 1).await.unwrap();
    let deactivated_token = new_user(&owner, "dee@studio.com", Role::Admin).await;
    let deactivated = Client::connect(server.client_config(&deactivated_token))
        .await
        .unwrap();

    let admin_requests = || {
        vec![
            Request::UserAdd(UserAdd {
                username: "x@studio.com".into(),
                name: String::new(),
                role: Role::Member,
            }),
            Request::UserList,
            Request::UserToken(user_ref("mia@studio.com")),
            Request::UserDeactivate(user_ref("mia@studio.com")),
            Request::UserActivate(user_ref("owner@localhost")),
            Request::UserRemove(user_ref("gus@studio.com")),
            Request::EntitlementAdd(NewEntitlement {
                feature: "vray".into(),
                seats: 1,
                starts_at: None,
                expires_at: None,
                kind: EntitlementKind::Standard,
                borrowable: false,
                max_borrow_secs: None,
                reference: String::new(),
            }),
            Request::EntitlementRemove(EntitlementRemove { id: ent }),
            Request::Assign(assign("mia@studio.com", "vray", 1)),
            Request::Revoke(Revoke {
                username: "mia@studio.com".into(),
                feature: "vray".into(),
                seats: None,
            }),
            Request::Release(Release { lease: held.id() }),
            Request::FeatureRequire(tally_protocol::FeatureRequirement {
                feature: "vray".into(),
                requires: "vray".into(),
            }),
            Request::FeatureUnrequire(tally_protocol::FeatureRequirement {
                feature: "vray".into(),
                requires: "nuke".into(),
            }),
            Request::Audit(AuditQuery {
                since: None,
                user: None,
                feature: None,
                limit: None,
            }),
        ]
    };
    for request in admin_requests() {
        refused(
            &owner,
            &member,
            request.clone(),
            ErrorCode::Forbidden,
            "only an admin",
        )
        .await;
        refused(
            &owner,
            &guest,
            request,
            ErrorCode::Forbidden,
            "only an admin",
        )
        .await;
    }
    // A user deactivated while connected is signed out (at once; at the latest at their
    // next request).
    owner
        .call(Request::UserDeactivate(user_ref("dee@studio.com")))
        .await
        .unwrap();
    let before = state(&owner).await;
    match deactivated.call(Request::UserList).await {
        Err(Error::Server(body)) => assert_eq!(body.code, ErrorCode::Unauthenticated),
        other => panic!("{other:?}"),
    }
    // and cannot sign in again.
    match Client::connect(server.client_config(&deactivated_token)).await {
        Err(Error::Server(body)) => {
            assert_eq!(body.code, ErrorCode::Unauthenticated);
            assert!(body.message.contains("deactivated"), "{}", body.message);
        }
        other => panic!("{other:?}"),
    }
    // No token and a wrong token never get as far as a request.
    for request in admin_requests() {
        let mut raw = RawConn::connect(&server).await;
        raw.send(&RawConn::hello(PROTOCOL_VERSION, ClientId(rand::random())))
            .await;
        assert!(matches!(raw.recv().await, Some(ServerMessage::Welcome(_))));
        raw.send(&ClientMessage::Request {
            id: 1,
            body: request.clone(),
        })
        .await;
        match raw.recv().await {
            Some(ServerMessage::Error(body)) => assert_eq!(body.code, ErrorCode::Unauthenticated),
            other => panic!("no token: {other:?}"),
        }
        let mut raw = RawConn::connect(&server).await;
        raw.send(&RawConn::hello(PROTOCOL_VERSION, ClientId(rand::random())))
            .await;
        assert!(matches!(raw.recv().await, Some(ServerMessage::Welcome(_))));
        raw.send(&ClientMessage::Authenticate(tally_protocol::Authenticate {
            token: "f".repeat(64),
        }))
        .await;
        match raw.recv().await {
            Some(ServerMessage::Error(body)) => assert_eq!(body.code, ErrorCode::Unauthenticated),
            other => panic!("wrong token: {other:?}"),
        }
    }
    assert_eq!(state(&owner).await, before, "strangers changed something");
    server.stop().await;
}

#[tokio::test]
async fn revoking_ends_online_leases_on_the_revoked_seats_and_the_holder_is_told() {
    let server = TestServer::start_with(|c| c.leases.ttl = Duration::from_millis(1500)).await;
    let owner = server.owner().await;
    entitlement(&owner, "maya", 4, EntitlementKind::Standard, None).await;
    let ana = add_user(&server, &owner, "ana@studio.com", Role::Member).await;
    owner
        .call(Request::Assign(assign("ana@studio.com", "maya", 2)))
        .await
        .unwrap();
    let mut first = ana.checkout("maya", 1).await.unwrap();
    // Granted in the same millisecond or not, the second is never older than the first.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut second = ana.checkout("maya", 1).await.unwrap();
    assert!(matches!(second.info().source, LeaseSource::Assignment(_)));
    let revoke = Revoke {
        username: "ana@studio.com".into(),
        feature: "maya".into(),
        seats: Some(1),
    };
    assert_eq!(
        owner.call(Request::Revoke(revoke)).await.unwrap(),
        Response::Revoked(1)
    );
    // The newest lease on the revoked seat ends; the holder learns it at its next heartbeat.
    let reason = tokio::select! {
        reason = second.lost() => reason,
        reason = first.lost() => panic!("the older lease ended ({reason:?}) instead of the newer"),
        _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("the holder was not told within 5 s"),
    };
    assert_eq!(reason, EndReason::Revoked);
    assert!(first.is_lost().is_none());
    let figures = status(&owner, "maya").await;
    assert_eq!(
        (figures.assigned, figures.in_use, figures.available),
        (1, 1, 3)
    );
    let events = audit(&owner).await;
    assert!(events
        .iter()
        .any(|e| e.action == "revoke" && e.outcome == "ok" && e.subject == "ana@studio.com"));
    assert!(events
        .iter()
        .any(|e| e.action == "reclaim" && e.reason.starts_with("revoked")));
    server.stop().await;
}

#[tokio::test]
async fn deactivating_ends_leases_at_once_and_activating_restores_seats() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    entitlement(&owner, "vray", 3, EntitlementKind::Standard, None).await;
    let ana = add_user(&server, &owner, "ana@studio.com", Role::Member).await;
    owner
        .call(Request::Assign(assign("ana@studio.com", "vray", 1)))
        .await
        .unwrap();
    let mut lease = ana.checkout("vray", 1).await.unwrap();
    owner
        .call(Request::UserDeactivate(user_ref("ana@studio.com")))
        .await
        .unwrap();
    let figures = status(&owner, "vray").await;
    assert_eq!(
        (figures.assigned, figures.in_use, figures.available),
        (0, 0, 3)
    );
    let reason = tokio::time::timeout(Duration::from_secs(10), lease.lost())
        .await
        .unwrap();
    assert_eq!(reason, EndReason::Deactivated);
    match owner
        .call(Request::UserActivate(user_ref("ana@studio.com")))
        .await
        .unwrap()
    {
        Response::User(user) => {
            assert_eq!((user.state.as_str(), user.assigned_seats), ("active", 1))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(status(&owner, "vray").await.assigned, 1);
    let events = audit(&owner).await;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert!(
        actions.contains(&"user_deactivate") && actions.contains(&"user_activate"),
        "{actions:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn whoami_shows_the_account_its_assignments_and_leases() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    entitlement(&owner, "vray", 3, EntitlementKind::Standard, None).await;
    let ana = add_user(&server, &owner, "Ana@Studio.com", Role::Member).await;
    owner
        .call(Request::Assign(assign("ana@studio.com", "vray", 2)))
        .await
        .unwrap();
    let lease = ana.checkout("vray", 1).await.unwrap();
    match ana.call(Request::Whoami).await.unwrap() {
        Response::Whoami(me) => {
            assert_eq!(
                me.user.username, "ana@studio.com",
                "usernames are case-insensitive"
            );
            assert_eq!(me.user.role, Role::Member);
            assert_eq!(me.assignments.len(), 1);
            assert_eq!(me.assignments[0].seats, 2);
            assert_eq!(me.leases.len(), 1);
            assert_eq!(me.leases[0].id, lease.id());
        }
        other => panic!("{other:?}"),
    }
    // Members see only their own leases.
    let _owners = owner.checkout("vray", 1).await.unwrap();
    assert_eq!(leases(&ana).await.len(), 1);
    assert_eq!(leases(&owner).await.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn the_audit_log_is_queryable_by_time_user_and_feature() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    entitlement(&owner, "vray", 3, EntitlementKind::Standard, None).await;
    entitlement(&owner, "nuke", 3, EntitlementKind::Standard, None).await;
    add_user(&server, &owner, "ana@studio.com", Role::Member).await;
    let since = now_millis();
    tokio::time::sleep(Duration::from_millis(5)).await;
    owner
        .call(Request::Assign(assign("ana@studio.com", "vray", 1)))
        .await
        .unwrap();
    owner
        .call(Request::Assign(assign("ana@studio.com", "nuke", 1)))
        .await
        .unwrap();
    let query =
        |since: Option<i64>, user: Option<&str>, feature: Option<&str>, limit: Option<u32>| {
            Request::Audit(AuditQuery {
                since,
                user: user.map(Into::into),
                feature: feature.map(Into::into),
                limit,
            })
        };
    let events = |response: Response| match response {
        Response::AuditEvents(events) => events,
        other => panic!("{other:?}"),
    };
    let recent = events(
        owner
            .call(query(Some(since), None, None, None))
            .await
            .unwrap(),
    );
    assert_eq!(recent.len(), 2, "{recent:?}");
    let about_ana = events(
        owner
            .call(query(None, Some("ana@studio.com"), None, None))
            .await
            .unwrap(),
    );
    assert_eq!(
        about_ana.len(),
        3,
        "added and two assignments: {about_ana:?}"
    );
    let nuke = events(
        owner
            .call(query(None, None, Some("nuke"), None))
            .await
            .unwrap(),
    );
    assert!(
        nuke.iter().all(|e| e.feature.as_deref() == Some("nuke")) && nuke.len() == 2,
        "{nuke:?}"
    );
    let newest = events(owner.call(query(None, None, None, Some(1))).await.unwrap());
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].feature.as_deref(), Some("nuke"), "newest first");
    server.stop().await;
}
