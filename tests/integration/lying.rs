//! The client against a server that lies (issue 12): a fake that speaks the protocol with
//! the test server's certificate and signs with the test server's own borrow key, so that
//! what it sends verifies, and then claims something other than what was asked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tally_client::{Client, ServerAddr};
use tally_protocol::{
    key_id, Authenticated, BorrowClaims, Borrowed, ClientMessage, Connection, HeartbeatAck,
    LeaseId, LeaseInfo, LeaseKind, LeaseSource, Outcome, Request, Response, Role, ServerMessage,
    Welcome, DEFAULT_MAX_FRAME, MAX_RESPONSE_FRAME,
};

use crate::harness::*;

/// Serves one connection as the test server would, except that a borrow is answered with a
/// token signed by the server's key whose feature is `claimed`; records every request.
async fn lying_server(
    server: &TestServer,
    welcome: Welcome,
    claimed: &'static str,
    seen: Arc<Mutex<Vec<Request>>>,
) -> ServerAddr {
    let (listener, acceptor) = crate::fake::listen_as(server).await;
    let addr = listener.local_addr().unwrap();
    let key =
        Ed25519KeyPair::from_pkcs8(&std::fs::read(server.data_dir().join("signing.key")).unwrap())
            .unwrap();
    let chain: Vec<Vec<u8>> =
        CertificateDer::pem_file_iter(server.data_dir().join("tls/signing.pem"))
            .unwrap()
            .map(|c| c.unwrap().as_ref().to_vec())
            .collect();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut conn = Connection::with_limits(tls, DEFAULT_MAX_FRAME, MAX_RESPONSE_FRAME);
            let Ok(Some(ClientMessage::Hello(_))) = conn.recv::<ClientMessage>().await else {
                continue;
            };
            conn.send(&ServerMessage::Welcome(welcome.clone()))
                .await
                .unwrap();
            let Ok(Some(ClientMessage::Authenticate(_))) = conn.recv::<ClientMessage>().await
            else {
                continue;
            };
            let signed_in = Authenticated {
                username: "owner@localhost".into(),
                role: Role::Owner,
            };
            conn.send(&ServerMessage::Authenticated(signed_in))
                .await
                .unwrap();
            while let Ok(Some(ClientMessage::Request { id, body })) =
                conn.recv::<ClientMessage>().await
            {
                seen.lock().unwrap().push(body.clone());
                let outcome = match body {
                    Request::BorrowOnce(borrow) => {
                        let now = tally_protocol::now_millis();
                        let claims = BorrowClaims {
                            server_id: welcome.server_id.clone(),
                            key_id: key_id(key.public_key().as_ref()),
                            lease: LeaseId(rand::random()),
                            feature: claimed.into(),
                            seats: borrow.seats,
                            user: "owner@localhost".into(),
                            machine_id: borrow.machine_id.clone(),
                            issued_at: now,
                            expires_at: now + 3_600_000,
                        };
                        let signature = key.sign(&claims.to_bytes());
                        let lease = LeaseInfo {
                            id: claims.lease,
                            feature: borrow.feature.clone(),
                            seats: borrow.seats,
                            user: claims.user.clone(),
                            host: "h".into(),
                            kind: LeaseKind::Borrowed,
                            source: LeaseSource::Floating,
                            granted_at: now,
                            expires_at: claims.expires_at,
                        };
                        let token = claims.encode(signature.as_ref(), &chain);
                        Outcome::Ok(Response::Borrowed(Borrowed { lease, token }))
                    }
                    Request::Return(ret) => Outcome::Ok(Response::Returned(ret.lease)),
                    _ => Outcome::Ok(Response::Heartbeat(HeartbeatAck {
                        renewed: 0,
                        ended: Vec::new(),
                    })),
                };
                if conn
                    .send(&ServerMessage::Response { id, outcome })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    ServerAddr::parse(&addr.to_string()).unwrap()
}

/// A borrow token that verifies but is not for what was asked (another feature, or a path
/// where the feature should be) is given back to the server and nothing is written: the
/// feature names the token's file, and a lying server must not choose where files go.
#[tokio::test]
async fn a_signed_borrow_token_for_something_else_is_given_back_and_nothing_is_written() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    let welcome = owner.welcome().clone();
    for claimed in ["nuke", "../../escaped"] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = lying_server(&server, welcome.clone(), claimed, seen.clone()).await;
        let home = tempfile::tempdir().unwrap();
        let data = home.path().join("tally");
        let mut config = server.client_config(&server.owner_token());
        config.servers = vec![addr];
        config.data_dir = Some(data.clone());
        let client = Client::connect(config).await.unwrap();
        let err = client
            .borrow("vray", 1, Duration::from_secs(3600))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not the one asked for"), "{claimed}: {err}");
        assert!(err.contains(claimed), "{claimed}: {err}");
        let returned = seen
            .lock()
            .unwrap()
            .iter()
            .any(|r| matches!(r, Request::Return(_)));
        assert!(returned, "{claimed}: the borrow was not given back");
        let borrows = std::fs::read_dir(data.join("borrows"))
            .map(|dir| dir.count())
            .unwrap_or(0);
        assert_eq!(borrows, 0, "{claimed}: a token file was written");
        assert!(!home.path().join("escaped").exists());
        assert!(!data.join("escaped").exists());
    }
}
