//! Tokens and sessions (R22, R11): who may mint for whom, listing and revocation, sessions
//! bound to the account and its token, client instances bound to their user, refused
//! sign-ins in the audit log, and refusals folded and bounded.

use tally_client::{Client, Error};
use tally_protocol::{
    AuditEvent, Authenticate, Checkout, ClientId, ClientMessage, ErrorCode, IssuedToken, Request,
    RequestId, Response, Role, ServerMessage, TokenInfo, TokenMint, TokenRevoke, UserRef,
    PROTOCOL_VERSION,
};

use crate::harness::*;

fn mint(email: &str, label: &str) -> Request {
    Request::TokenMint(TokenMint {
        username: email.into(),
        label: label.into(),
    })
}

async fn minted(client: &Client, email: &str, label: &str) -> IssuedToken {
    match client.call(mint(email, label)).await.unwrap() {
        Response::TokenIssued(issued) => issued,
        other => panic!("{other:?}"),
    }
}

async fn tokens(client: &Client, email: &str) -> Vec<TokenInfo> {
    let request = Request::TokenList(UserRef {
        username: email.into(),
    });
    match client.call(request).await.unwrap() {
        Response::Tokens(tokens) => tokens,
        other => panic!("{other:?}"),
    }
}

fn refused_with(result: Result<Response, Error>, code: ErrorCode) -> String {
    match result {
        Err(Error::Server(body)) if body.code == code => body.message,
        other => panic!("expected {code}, got {other:?}"),
    }
}

/// Signs in with `token` as client instance `instance`; the answer to Authenticate.
async fn sign_in(server: &TestServer, token: &str, instance: ClientId) -> (RawConn, ServerMessage) {
    let mut raw = RawConn::connect(server).await;
    raw.send(&RawConn::hello(PROTOCOL_VERSION, instance)).await;
    assert!(matches!(raw.recv().await, Some(ServerMessage::Welcome(_))));
    raw.send(&ClientMessage::Authenticate(Authenticate {
        token: token.into(),
    }))
    .await;
    let answer = raw.recv().await.expect("an answer to Authenticate");
    (raw, answer)
}

async fn signed_in(server: &TestServer, token: &str, instance: ClientId) -> RawConn {
    let (raw, answer) = sign_in(server, token, instance).await;
    assert!(
        matches!(answer, ServerMessage::Authenticated(_)),
        "{answer:?}"
    );
    raw
}

#[tokio::test]
async fn only_the_owner_mints_tokens_for_the_owner_and_for_admins() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    let admin_token = new_user(&owner, "lead@studio.com", Role::Admin).await;
    new_user(&owner, "other@studio.com", Role::Admin).await;
    new_user(&owner, "ana@studio.com", Role::Member).await;
    let admin = Client::connect(server.client_config(&admin_token))
        .await
        .unwrap();

    let message = refused_with(
        admin.call(mint("owner@localhost", "")).await,
        ErrorCode::Forbidden,
    );
    assert!(message.contains("only the owner"), "{message}");
    refused_with(
        admin.call(mint("other@studio.com", "")).await,
        ErrorCode::Forbidden,
    );
    // The older request without a label follows the same rules.
    refused_with(
        admin
            .call(Request::UserToken(UserRef {
                username: "owner@localhost".into(),
            }))
            .await,
        ErrorCode::Forbidden,
    );
    // Admins mint for members, guests and themselves; the owner for anyone.
    minted(&admin, "ana@studio.com", "render node").await;
    minted(&admin, "lead@studio.com", "second laptop").await;
    minted(&owner, "other@studio.com", "").await;
    minted(&owner, "owner@localhost", "spare").await;
    assert_eq!(tokens(&owner, "owner@localhost").await.len(), 2);
}

#[tokio::test]
async fn tokens_are_listed_and_a_revoked_one_ends_its_connections_at_once() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    let first = new_user(&owner, "ana@studio.com", Role::Member).await;
    let laptop = minted(&owner, "ana@studio.com", "laptop").await;

    let mut on_laptop = signed_in(&server, &laptop.token, ClientId(rand::random())).await;
    let on_desk = Client::connect(server.client_config(&first)).await.unwrap();
    let listed = tokens(&on_desk, "ana@studio.com").await;
    assert_eq!(listed.len(), 2);
    let entry = listed.iter().find(|t| t.id == laptop.id).unwrap();
    assert_eq!(entry.label, "laptop");
    assert!(entry.last_used.is_some(), "the sign-in is recorded");
    // A member sees only their own tokens.
    refused_with(
        on_desk
            .call(Request::TokenList(UserRef {
                username: "owner@localhost".into(),
            }))
            .await,
        ErrorCode::Forbidden,
    );

    let revoked = owner
        .call(Request::TokenRevoke(TokenRevoke {
            id: laptop.id.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(revoked, Response::TokenRevoked(laptop.id.clone()));
    // The open connection ends without asking anything.
    match on_laptop.recv().await {
        Some(ServerMessage::Error(err)) => {
            assert_eq!(err.code, ErrorCode::Unauthenticated);
            assert!(err.message.contains("revoked"), "{}", err.message);
        }
        other => panic!("expected the connection to end, got {other:?}"),
    }
    assert!(on_laptop.recv().await.is_none());
    let (_, answer) = sign_in(&server, &laptop.token, ClientId(rand::random())).await;
    assert!(matches!(answer, ServerMessage::Error(e) if e.code == ErrorCode::Unauthenticated));
    // The other token is untouched.
    assert_eq!(tokens(&on_desk, "ana@studio.com").await.len(), 1);
    let events = audit(&owner).await;
    assert!(events
        .iter()
        .any(|e| e.action == "token_revoke" && e.subject == laptop.id && e.outcome == "ok"));
}

#[tokio::test]
async fn a_removed_users_connection_never_acts_for_a_new_account_of_the_same_name() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    let old = new_user(&owner, "ana@studio.com", Role::Admin).await;
    let mut old_session = signed_in(&server, &old, ClientId(rand::random())).await;
    owner
        .call(Request::UserRemove(UserRef {
            username: "ana@studio.com".into(),
        }))
        .await
        .unwrap();
    new_user(&owner, "ana@studio.com", Role::Admin).await;
    // Whatever the old connection sends now, it is not the new ana.
    old_session
        .send(&ClientMessage::Request {
            id: 1,
            body: Request::UserList,
        })
        .await;
    loop {
        match old_session.recv().await {
            None => break,
            Some(ServerMessage::Error(err)) => {
                assert_eq!(err.code, ErrorCode::Unauthenticated, "{err:?}");
            }
            Some(ServerMessage::Response { outcome, .. }) => {
                assert!(
                    matches!(outcome, tally_protocol::Outcome::Err(ref e) if e.code == ErrorCode::Unauthenticated),
                    "the old session acted: {outcome:?}"
                );
            }
            Some(other) => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn another_user_reusing_a_client_instance_id_gets_a_session_of_their_own() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 5, None).await;
    let ana_token = new_user(&owner, "ana@studio.com", Role::Member).await;
    let ben_token = new_user(&owner, "ben@studio.com", Role::Member).await;
    let instance = ClientId([7; 16]);
    let checkout = |n: u8| {
        Request::Checkout(Checkout {
            request_id: RequestId([n; 16]),
            feature: "vray".into(),
            seats: 1,
        })
    };
    let mut ana = signed_in(&server, &ana_token, instance).await;
    let mut ben = signed_in(&server, &ben_token, instance).await;
    let ana_lease = match ana.request(1, checkout(1)).await {
        ServerMessage::Response {
            outcome: tally_protocol::Outcome::Ok(Response::Lease(lease)),
            ..
        } => lease,
        other => panic!("{other:?}"),
    };
    // Ben's retry of "the same" request id is his own checkout, not ana's lease.
    let ben_lease = match ben.request(1, checkout(1)).await {
        ServerMessage::Response {
            outcome: tally_protocol::Outcome::Ok(Response::Lease(lease)),
            ..
        } => lease,
        other => panic!("{other:?}"),
    };
    assert_ne!(ben_lease.id, ana_lease.id);
    assert_eq!(ben_lease.user, "ben@studio.com");
    // One heartbeat renews the leases of its own session only.
    match ana.request(2, Request::Heartbeat).await {
        ServerMessage::Response {
            outcome: tally_protocol::Outcome::Ok(Response::Heartbeat(ack)),
            ..
        } => assert_eq!(ack.renewed, 1, "ana's heartbeat renewed ben's lease"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn refused_sign_ins_and_deactivated_accounts_are_audited() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    let ana = new_user(&owner, "ana@studio.com", Role::Member).await;
    owner
        .call(Request::UserDeactivate(UserRef {
            username: "ana@studio.com".into(),
        }))
        .await
        .unwrap();
    let (_, answer) = sign_in(&server, "not-a-token", ClientId(rand::random())).await;
    assert!(matches!(answer, ServerMessage::Error(ref e) if e.code == ErrorCode::Unauthenticated));
    let (_, answer) = sign_in(&server, &ana, ClientId(rand::random())).await;
    match answer {
        ServerMessage::Error(e) => assert!(e.message.contains("deactivated"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    let events = audit(&owner).await;
    let sign_ins: Vec<&AuditEvent> = events.iter().filter(|e| e.action == "sign_in").collect();
    assert_eq!(sign_ins.len(), 2, "{sign_ins:?}");
    assert!(sign_ins
        .iter()
        .all(|e| e.outcome == "unauthenticated" && e.subject.starts_with("127.0.0.1 raw")));
    // An unknown token is the address's refusal, a deactivated account's its own.
    assert!(sign_ins
        .iter()
        .any(|e| e.actor == "127.0.0.1" && e.reason.contains("not recognised")));
    assert!(sign_ins
        .iter()
        .any(|e| e.actor == "ana@studio.com" && e.reason.contains("deactivated")));
}

#[tokio::test]
async fn a_flood_of_refused_checkouts_cannot_grow_the_audit_log() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 1, None).await;
    let token = new_user(&owner, "ana@studio.com", Role::Member).await;
    let ana = Client::connect(server.client_config(&token)).await.unwrap();
    let before = audit(&owner).await.len();
    let huge = "X".repeat(60_000);
    for i in 0..200 {
        let feature = format!("{huge}{i}");
        let request = Request::Checkout(Checkout {
            request_id: RequestId(rand::random()),
            feature,
            seats: 1,
        });
        refused_with(ana.call(request).await, ErrorCode::Invalid);
    }
    let _held = ana.checkout("vray", 1).await.unwrap();
    for _ in 0..200 {
        assert!(ana.checkout("vray", 1).await.is_err());
    }
    let events = audit(&owner).await;
    let new = &events[..events.len() - before];
    // One invalid refusal, one no_seat refusal and the checkout itself.
    assert_eq!(new.len(), 3, "{new:?}");
    for event in new {
        assert!(event.subject.len() <= 320 && event.reason.len() <= 1024);
        assert!(event.feature.as_ref().is_none_or(|f| f.len() <= 64));
    }
}
