//! Golden bytes (enums are append-only), framing limits, and decoding arbitrary bytes.

use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

use super::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    hex(&postcard::to_allocvec(value).unwrap())
}

fn lease_info() -> LeaseInfo {
    LeaseInfo {
        id: LeaseId([0xab; 16]),
        feature: "vray".into(),
        seats: 2,
        user: "a@b".into(),
        host: "n1".into(),
        kind: LeaseKind::Online,
        source: LeaseSource::Assignment(7),
        granted_at: 1000,
        expires_at: 2000,
    }
}

/// Each variant's index is part of the wire format. If one of these fails, a variant was
/// reordered, removed or changed: put it back and append the new one at the end instead.
#[test]
fn golden_bytes() {
    let hello = ClientMessage::Hello(Hello {
        protocol_version: 1,
        client: ClientInfo {
            agent: "t".into(),
            host: "h".into(),
            instance: ClientId([1; 16]),
            machine_id: "m".into(),
            pid: 300,
        },
    });
    assert_eq!(
        encode(&hello),
        "00010174016801010101010101010101010101010101016dac02"
    );
    assert_eq!(
        encode(&ClientMessage::Authenticate(Authenticate {
            token: "k".into()
        })),
        "01016b"
    );
    let requests: Vec<(Request, &str)> = vec![
        (Request::Heartbeat, "00"),
        (
            Request::Checkout(Checkout {
                request_id: RequestId([2; 16]),
                feature: "f".into(),
                seats: 1,
            }),
            "0102020202020202020202020202020202016601",
        ),
        (
            Request::Checkin(Checkin {
                lease: LeaseId([3; 16]),
            }),
            "0203030303030303030303030303030303",
        ),
        (Request::Resume(Resume { leases: vec![] }), "0300"),
        (Request::Status(StatusQuery { feature: None }), "0400"),
        (
            Request::Leases(LeasesQuery {
                feature: None,
                user: Some("u".into()),
            }),
            "050001",
        ),
        (
            Request::EntitlementAdd(NewEntitlement {
                feature: "f".into(),
                seats: 3,
                starts_at: None,
                expires_at: Some(5),
                kind: EntitlementKind::Trial,
                borrowable: true,
                max_borrow_secs: None,
                reference: "r".into(),
            }),
            "0601660300010a0101000172",
        ),
        (
            Request::EntitlementList(EntitlementQuery { feature: None }),
            "0700",
        ),
        (
            Request::EntitlementRemove(EntitlementRemove { id: 9 }),
            "0809",
        ),
        (
            Request::Release(Release {
                lease: LeaseId([4; 16]),
            }),
            "0904040404040404040404040404040404",
        ),
        (Request::ServerInfo, "0a"),
        (
            Request::BorrowOnce(BorrowOnce {
                request_id: RequestId([3; 16]),
                feature: "f".into(),
                seats: 1,
                duration_secs: 300,
                machine_id: "m".into(),
            }),
            // index 26, the id, "f", 1 seat, 300 s (varint ac02), "m"
            "1a03030303030303030303030303030303016601ac02016d",
        ),
    ];
    for (request, expected) in requests {
        let name = request.name();
        let got = encode(&request);
        assert!(
            got.starts_with(expected),
            "{name}: {got} does not start with {expected}"
        );
    }
    let response = ServerMessage::Response {
        id: 5,
        outcome: Outcome::Ok(Response::Lease(lease_info())),
    };
    let expected = format!(
        "02050001{}04767261790203614062026e31000107d00fa01f",
        "ab".repeat(16)
    );
    assert_eq!(encode(&response), expected);
    let refusal = ServerMessage::Error(ErrorBody::new(ErrorCode::VersionUnsupported, "v"));
    assert_eq!(encode(&refusal), "030f0176");
}

/// The paged listings: their requests, answers and cursors, byte for byte.
#[test]
fn golden_bytes_of_pages() {
    let audit = Request::AuditPage(AuditPageQuery {
        query: AuditQuery {
            since: None,
            user: None,
            feature: Some("f".into()),
            limit: Some(5),
        },
        before: Some(300),
    });
    assert_eq!(encode(&audit), "1b0000010166010501ac02");
    let leases = Request::LeasesPage(LeasesPageQuery {
        query: LeasesQuery {
            feature: Some("f".into()),
            user: None,
        },
        after: Some(LeaseCursor {
            granted_at: 1000,
            id: LeaseId([5; 16]),
        }),
        limit: Some(2),
    });
    assert_eq!(
        encode(&leases),
        format!("1c0101660001d00f{}0102", "05".repeat(16))
    );
    let page = Response::AuditPage(AuditPage {
        events: vec![AuditEvent {
            at: 1000,
            actor: "a".into(),
            action: "b".into(),
            subject: "c".into(),
            feature: None,
            outcome: "ok".into(),
            reason: String::new(),
        }],
        next: Some(7),
    });
    assert_eq!(encode(&page), "1801d00f01610162016300026f6b000107");
    let page = Response::LeasesPage(LeasesPage {
        leases: vec![lease_info()],
        next: None,
    });
    assert_eq!(
        encode(&page),
        format!(
            "1901{}04767261790203614062026e31000107d00fa01f00",
            "ab".repeat(16)
        )
    );
}

#[test]
fn error_codes_keep_their_wire_index_and_names() {
    for (index, code) in ErrorCode::ALL.iter().enumerate() {
        assert_eq!(
            postcard::to_allocvec(code).unwrap(),
            vec![index as u8],
            "{code}"
        );
    }
    let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "unauthenticated",
            "forbidden",
            "not_found",
            "already_exists",
            "invalid",
            "no_seat",
            "user_limit",
            "borrowed",
            "has_assignments",
            "not_borrowable",
            "expired",
            "trial_locked",
            "self_or_owner",
            "queue_timeout",
            "not_leader",
            "version_unsupported",
            "rate_limited",
            "internal",
            "denied",
            "no_credit",
        ]
    );
}

#[test]
fn ids_round_trip_and_reject_garbage() {
    let id = LeaseId([0x5a; 16]);
    assert_eq!(LeaseId::from_hex(&id.to_string()).unwrap(), id);
    assert!(LeaseId::from_hex("xyz").is_err());
    assert!(LeaseId::from_hex(&"ab".repeat(15)).is_err());
}

#[test]
fn feature_names() {
    for good in ["vray", "vray-render", "a", "nuke_13.2", &"a".repeat(64)] {
        assert!(validate_feature(good).is_ok(), "{good}");
    }
    for bad in ["", "Vray", "-x", ".x", "a b", "é", &"a".repeat(65)] {
        assert!(validate_feature(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn oversize_length_prefix_is_refused_before_reading_the_body() {
    let (mut near, far) = tokio::io::duplex(1024);
    let mut conn = Connection::new(far, DEFAULT_MAX_FRAME);
    near.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    match conn.recv::<ClientMessage>().await {
        Err(FrameError::Oversize { max }) => assert_eq!(max, DEFAULT_MAX_FRAME),
        other => panic!("expected Oversize, got {other:?}"),
    }
}

#[tokio::test]
async fn truncated_and_garbage_frames_are_errors() {
    let (mut near, far) = tokio::io::duplex(1024);
    let mut conn = Connection::new(far, DEFAULT_MAX_FRAME);
    near.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert!(matches!(
        conn.recv::<ClientMessage>().await,
        Err(FrameError::Decode(_))
    ));
    // A frame cut short by the peer closing.
    near.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
    drop(near);
    assert!(conn.recv::<ClientMessage>().await.is_err());
}

#[tokio::test]
async fn messages_round_trip_over_a_connection() {
    let (near, far) = tokio::io::duplex(1 << 16);
    let mut a = Connection::new(near, DEFAULT_MAX_FRAME);
    let mut b = Connection::new(far, DEFAULT_MAX_FRAME);
    let message = ServerMessage::Response {
        id: 9,
        outcome: Outcome::Ok(Response::Leases(vec![lease_info()])),
    };
    a.send(&message).await.unwrap();
    assert_eq!(b.recv::<ServerMessage>().await.unwrap(), Some(message));
    let too_big = ClientMessage::Authenticate(Authenticate {
        token: "x".repeat(DEFAULT_MAX_FRAME),
    });
    assert!(matches!(
        a.send(&too_big).await,
        Err(FrameError::TooLarge { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever a peer sends, decoding returns a value or an error; it never panics.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = postcard::from_bytes::<ClientMessage>(&bytes);
        let _ = postcard::from_bytes::<ServerMessage>(&bytes);
        let _ = postcard::from_bytes::<BorrowClaims>(&bytes);
        let _ = decode_token(&String::from_utf8_lossy(&bytes));
    }

    /// Borrow tokens built from arbitrary claims bytes are refused or read, never a panic.
    #[test]
    fn decoding_arbitrary_tokens_never_panics(claims in proptest::collection::vec(any::<u8>(), 0..256), sig in proptest::collection::vec(any::<u8>(), 0..80)) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!("{TOKEN_PREFIX}.{}.{}", b64.encode(&claims), b64.encode(&sig));
        let _ = decode_token(&token);
        let _ = decode_token(&format!("{token}.{}", b64.encode(&sig)));
    }
}

#[test]
fn borrow_tokens_round_trip() {
    let claims = BorrowClaims {
        server_id: "s".into(),
        key_id: key_id(&[9; 32]),
        lease: LeaseId([1; 16]),
        feature: "vray".into(),
        seats: 1,
        user: "a@b".into(),
        machine_id: "m".into(),
        issued_at: 1,
        expires_at: 2,
    };
    let chain = vec![vec![1, 2, 3], vec![4]];
    let token = claims.encode(&[7; 64], &chain);
    assert!(token.starts_with("tally2."));
    assert_eq!(token.split('.').count(), 5);
    let decoded = decode_token(&token).unwrap();
    assert_eq!(decoded.claims, claims);
    assert_eq!(decoded.signature, vec![7; 64]);
    assert_eq!(decoded.signed, claims.to_bytes());
    assert_eq!(decoded.chain, chain);
    // A `tally2` token without a certificate, or with too many, is refused.
    let bare = claims.encode(&[7; 64], &[]);
    let err = decode_token(&bare).unwrap_err().to_string();
    assert!(err.contains("at least one certificate"), "{err}");
    let long = claims.encode(&[7; 64], &vec![vec![1]; MAX_CHAIN + 1]);
    assert!(decode_token(&long)
        .unwrap_err()
        .to_string()
        .contains("more than"));
    // The first format still reads, with no chain, so a verifier can say what is wrong.
    let old = bare.replacen("tally2", "tally1", 1);
    assert_eq!(decode_token(&old).unwrap().chain, Vec::<Vec<u8>>::new());
    assert!(decode_token("tally1.AA").is_err());
    assert!(decode_token("tally1.AA.AA.AA").is_err());
    assert!(decode_token("tally9.AA.AA.AA")
        .unwrap_err()
        .to_string()
        .contains("unknown format"));
}

/// The first byte of every request and response is its variant's index: appended variants
/// keep the next number, and nothing may move.
#[test]
fn every_variant_keeps_its_index() {
    let user = || UserRef {
        username: "u".into(),
    };
    let requests: Vec<(Request, u8)> = vec![
        (Request::Heartbeat, 0),
        (Request::ServerInfo, 10),
        (Request::Whoami, 11),
        (
            Request::UserAdd(UserAdd {
                username: "u".into(),
                name: String::new(),
                role: Role::Member,
            }),
            12,
        ),
        (Request::UserList, 13),
        (Request::UserToken(user()), 14),
        (Request::UserDeactivate(user()), 15),
        (Request::UserActivate(user()), 16),
        (Request::UserRemove(user()), 17),
        (
            Request::Assign(Assign {
                username: "u".into(),
                feature: "f".into(),
                seats: 1,
                entitlement: None,
                from: None,
                expires_at: None,
            }),
            18,
        ),
        (
            Request::Revoke(Revoke {
                username: "u".into(),
                feature: "f".into(),
                seats: None,
            }),
            19,
        ),
        (
            Request::Audit(AuditQuery {
                since: None,
                user: None,
                feature: None,
                limit: None,
            }),
            20,
        ),
        (
            Request::Borrow(Borrow {
                feature: "f".into(),
                seats: 1,
                duration_secs: 1,
                machine_id: "m".into(),
            }),
            21,
        ),
        (
            Request::Return(Return {
                lease: LeaseId([0; 16]),
            }),
            22,
        ),
        (
            Request::TokenMint(TokenMint {
                username: "u".into(),
                label: "l".into(),
            }),
            23,
        ),
        (Request::TokenList(user()), 24),
        (Request::TokenRevoke(TokenRevoke { id: "i".into() }), 25),
        (
            Request::BorrowOnce(BorrowOnce {
                request_id: RequestId([0; 16]),
                feature: "f".into(),
                seats: 1,
                duration_secs: 1,
                machine_id: "m".into(),
            }),
            26,
        ),
        (
            Request::AuditPage(AuditPageQuery {
                query: AuditQuery {
                    since: None,
                    user: None,
                    feature: None,
                    limit: None,
                },
                before: None,
            }),
            27,
        ),
        (
            Request::LeasesPage(LeasesPageQuery {
                query: LeasesQuery {
                    feature: None,
                    user: None,
                },
                after: None,
                limit: None,
            }),
            28,
        ),
        (Request::ServerNodes, 29),
        (Request::Assignments(assignments_query()), 30),
        (Request::HoldersPage(leases_page_query()), 31),
        (Request::AssignWithTotals(assign()), 32),
        (Request::RevokeWithTotals(revoke()), 33),
        (Request::EntitlementUpdate(entitlement_update()), 34),
        (
            Request::EntitlementDelete(EntitlementDelete {
                id: 1,
                force: false,
            }),
            35,
        ),
        (Request::ReleaseMatching(release_matching()), 36),
        (Request::FeatureRequire(requirement()), 37),
        (Request::FeatureUnrequire(requirement()), 38),
        (Request::FeatureList, 39),
        (Request::GroupList, 42),
        (Request::Figures(StatusQuery { feature: None }), 48),
    ];
    for (request, index) in requests {
        assert_eq!(
            postcard::to_allocvec(&request).unwrap()[0],
            index,
            "{}",
            request.name()
        );
    }
    let responses: Vec<(Response, u8)> = vec![
        (Response::Revoked(1), 17),
        (Response::AuditEvents(vec![]), 18),
        (Response::Returned(LeaseId([0; 16])), 20),
        (Response::Token("t".into()), 14),
        (Response::Users(vec![]), 13),
        (
            Response::TokenIssued(IssuedToken {
                id: "i".into(),
                token: "t".into(),
            }),
            21,
        ),
        (Response::Tokens(vec![]), 22),
        (Response::TokenRevoked("i".into()), 23),
        (
            Response::AuditPage(AuditPage {
                events: vec![],
                next: None,
            }),
            24,
        ),
        (
            Response::LeasesPage(LeasesPage {
                leases: vec![],
                next: None,
            }),
            25,
        ),
        (Response::Nodes(vec![]), 26),
        (
            Response::Assignments(AssignmentsPage {
                assignments: vec![],
                next: None,
            }),
            27,
        ),
        (
            Response::Holders(HoldersPage {
                holders: vec![],
                next: None,
            }),
            28,
        ),
        (Response::AssignmentChange(assignment_change()), 29),
        (
            Response::EntitlementUpdated(EntitlementUpdated {
                entitlement: entitlement(),
                ended: vec![],
            }),
            30,
        ),
        (
            Response::EntitlementDeleted(EntitlementDeleted {
                id: 1,
                ended: vec![],
            }),
            31,
        ),
        (Response::ReleasedLeases(vec![]), 32),
        (Response::Features(vec![]), 33),
        (Response::Groups(vec![]), 35),
        (Response::Figures(vec![]), 41),
    ];
    for (response, index) in responses {
        assert_eq!(
            postcard::to_allocvec(&response).unwrap()[0],
            index,
            "{response:?}"
        );
    }
    let roles: Vec<u8> = [Role::Owner, Role::Admin, Role::Member, Role::Guest]
        .iter()
        .map(|r| postcard::to_allocvec(r).unwrap()[0])
        .collect();
    assert_eq!(roles, [0, 1, 2, 3]);
    let reasons: Vec<u8> = [
        EndReason::CheckedIn,
        EndReason::Expired,
        EndReason::Revoked,
        EndReason::Released,
        EndReason::Deactivated,
        EndReason::Unknown,
        EndReason::Moved,
    ]
    .iter()
    .map(|r| postcard::to_allocvec(r).unwrap()[0])
    .collect();
    assert_eq!(reasons, [0, 1, 2, 3, 4, 5, 6]);
}

/// A borrow with a request id may be resent after a reconnect (the server returns the same
/// lease); the first form, without one, may not.
#[test]
fn only_the_borrow_with_a_request_id_is_resent() {
    let once = Request::BorrowOnce(BorrowOnce {
        request_id: RequestId([1; 16]),
        feature: "f".into(),
        seats: 1,
        duration_secs: 60,
        machine_id: "m".into(),
    });
    assert!(once.is_idempotent());
    assert_eq!(once.name(), "borrow");
    let first = Request::Borrow(Borrow {
        feature: "f".into(),
        seats: 1,
        duration_secs: 60,
        machine_id: "m".into(),
    });
    assert!(!first.is_idempotent());
}

/// The messages of a cluster (SPEC §7), byte for byte: a standby's redirect is the third
/// `Outcome`, `ServerNodes` and `Nodes` come after every earlier request and answer, and
/// `ServerInfo` carries its cluster last.
#[test]
fn golden_bytes_of_the_cluster_messages() {
    let redirect = ServerMessage::Response {
        id: 5,
        outcome: Outcome::NotLeader(NotLeader {
            leader: Some("a:1".into()),
            message: "m".into(),
        }),
    };
    // Response 5, outcome index 2, Some("a:1"), "m"
    assert_eq!(encode(&redirect), "0205020103613a31016d");
    let unknown = Outcome::NotLeader(NotLeader {
        leader: None,
        message: String::new(),
    });
    assert_eq!(encode(&unknown), "020000");
    let outcomes: Vec<u8> = [
        Outcome::Ok(Response::Revoked(0)),
        Outcome::Err(ErrorBody::invalid("")),
        unknown,
    ]
    .iter()
    .map(|o| postcard::to_allocvec(o).unwrap()[0])
    .collect();
    assert_eq!(outcomes, [0, 1, 2]);

    assert_eq!(encode(&Request::ServerNodes), "1d");
    assert_eq!(Request::ServerNodes.name(), "server_nodes");
    let nodes = Response::Nodes(vec![NodeInfo {
        id: "n".into(),
        address: "h:1".into(),
        role: NodeRole::Standby,
        epoch: 3,
        last_seen: 1000,
    }]);
    // index 26, one node: "n", "h:1", standby, epoch 3 (zigzag 06), 1000 (zigzag d00f)
    assert_eq!(encode(&nodes), "1a01016e03683a310106d00f");
    let roles: Vec<u8> = [NodeRole::Leader, NodeRole::Standby]
        .iter()
        .map(|r| postcard::to_allocvec(r).unwrap()[0])
        .collect();
    assert_eq!(roles, [0, 1]);
    assert_eq!(
        [NodeRole::Leader.as_str(), NodeRole::Standby.as_str()],
        ["leader", "standby"]
    );

    let single = ServerInfo {
        id: "s".into(),
        version: "v".into(),
        protocol: 1,
        store: "sqlite".into(),
        uptime_secs: 2,
        connections: 3,
        cluster: None,
        listen: "h:1".into(),
        lease_ttl_ms: 60_000,
    };
    // index 10, "s", "v", 1, "sqlite", 2, 3, None, "h:1", 60000 (varint e0d403)
    assert_eq!(
        encode(&Response::ServerInfo(single.clone())),
        "0a01730176010673716c697465020300".to_string() + "03683a31" + "e0d403"
    );
    let clustered = ServerInfo {
        store: "postgres".into(),
        cluster: Some(ClusterInfo {
            node: "n".into(),
            role: NodeRole::Leader,
            epoch: 7,
            leader: Some("h:1".into()),
        }),
        ..single
    };
    // ... "postgres", 2, 3, then Some: "n", leader, epoch 7 (zigzag 0e), Some("h:1"),
    // then "h:1", 60000
    assert_eq!(
        encode(&Response::ServerInfo(clustered)),
        "0a0173017601".to_string()
            + "08706f737467726573"
            + "0203"
            + "01016e000e0103683a31"
            + "03683a31e0d403"
    );
}

/// A client built before `ServerInfo::cluster` reads a clustered server's `ServerInfo`: it
/// decodes the fields it knows and ignores the rest of the frame.
#[test]
fn an_older_client_reads_server_info_with_a_cluster() {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct FirstServerInfo {
        id: String,
        version: String,
        protocol: u16,
        store: String,
        uptime_secs: u64,
        connections: u64,
    }
    let info = ServerInfo {
        id: "s".into(),
        version: "v".into(),
        protocol: 1,
        store: "postgres".into(),
        uptime_secs: 2,
        connections: 3,
        cluster: Some(ClusterInfo {
            node: "n".into(),
            role: NodeRole::Standby,
            epoch: 7,
            leader: None,
        }),
        listen: "[::]:27010".into(),
        lease_ttl_ms: 60_000,
    };
    let bytes = postcard::to_allocvec(&info).unwrap();
    let old: FirstServerInfo = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(
        old,
        FirstServerInfo {
            id: "s".into(),
            version: "v".into(),
            protocol: 1,
            store: "postgres".into(),
            uptime_secs: 2,
            connections: 3,
        }
    );
}

/// A client built before `ServerInfo::listen` and `lease_ttl_ms` reads a newer server's
/// `ServerInfo`, cluster included, and ignores the two fields after it.
#[test]
fn a_client_built_before_listen_reads_server_info() {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct ClusterServerInfo {
        id: String,
        version: String,
        protocol: u16,
        store: String,
        uptime_secs: u64,
        connections: u64,
        cluster: Option<ClusterInfo>,
    }
    let cluster = ClusterInfo {
        node: "n".into(),
        role: NodeRole::Leader,
        epoch: 7,
        leader: Some("h:1".into()),
    };
    let info = ServerInfo {
        id: "s".into(),
        version: "v".into(),
        protocol: 1,
        store: "postgres".into(),
        uptime_secs: 2,
        connections: 3,
        cluster: Some(cluster.clone()),
        listen: "10.0.0.5:27010".into(),
        lease_ttl_ms: 60_000,
    };
    let bytes = postcard::to_allocvec(&info).unwrap();
    let old: ClusterServerInfo = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(old.cluster, Some(cluster));
    assert_eq!((old.uptime_secs, old.connections), (2, 3));
}

/// Code that reports errors as an `ErrorBody` sees a redirect as `not_leader`, with the
/// standby's sentence.
#[test]
fn a_redirect_reads_as_the_not_leader_error() {
    let redirect = NotLeader {
        leader: Some("[::1]:27010".into()),
        message: "this node is a standby; the leader is [::1]:27010".into(),
    };
    let body: ErrorBody = redirect.clone().into();
    assert_eq!(body.code, ErrorCode::NotLeader);
    assert_eq!(body.message, redirect.message);
    assert_eq!(Outcome::NotLeader(redirect).into_result(), Err(body));
    assert_eq!(
        Outcome::Ok(Response::Revoked(2)).into_result(),
        Ok(Response::Revoked(2))
    );
}

fn assignments_query() -> AssignmentsQuery {
    AssignmentsQuery {
        user: Some("u".into()),
        feature: None,
        after: Some(3),
        limit: Some(2),
    }
}

fn leases_page_query() -> LeasesPageQuery {
    LeasesPageQuery {
        query: LeasesQuery {
            feature: None,
            user: None,
        },
        after: None,
        limit: Some(2),
    }
}

fn assign() -> Assign {
    Assign {
        username: "u".into(),
        feature: "f".into(),
        seats: 1,
        entitlement: None,
        from: None,
        expires_at: None,
    }
}

fn revoke() -> Revoke {
    Revoke {
        username: "u".into(),
        feature: "f".into(),
        seats: Some(2),
    }
}

fn entitlement_update() -> EntitlementUpdate {
    EntitlementUpdate {
        id: 4,
        seats: Some(5),
        starts_at: None,
        expires_at: Some(None),
        borrowable: Some(true),
        max_borrow_secs: None,
        reference: Some("r".into()),
        force: true,
    }
}

fn release_matching() -> ReleaseMatching {
    ReleaseMatching {
        lease: None,
        user: Some("u".into()),
        host: Some("h".into()),
        feature: None,
    }
}

fn assignment_info() -> AssignmentInfo {
    AssignmentInfo {
        id: 7,
        user: "u".into(),
        feature: "f".into(),
        seats: 2,
        entitlement: 1,
        expires_at: None,
    }
}

fn assignment_change() -> AssignmentChange {
    AssignmentChange {
        seats: 1,
        touched: vec![assignment_info()],
        assignments: vec![],
    }
}

fn entitlement() -> Entitlement {
    Entitlement {
        id: 1,
        feature: "f".into(),
        seats: 3,
        starts_at: 1000,
        expires_at: None,
        kind: EntitlementKind::Standard,
        borrowable: false,
        max_borrow_secs: 60,
        reference: String::new(),
    }
}

/// The requests and answers of the admin views and of managing what exists (`assignments`,
/// `status --all`, assign and revoke with totals, `entitlement update` and `remove`,
/// `release` by pattern), byte for byte: each after every earlier variant.
#[test]
fn golden_bytes_of_the_admin_views() {
    // index 30, Some("u"), None, Some(3), Some(2)
    assert_eq!(
        encode(&Request::Assignments(assignments_query())),
        "1e0101750001030102"
    );
    // index 31, then a LeasesPageQuery as in `LeasesPage`
    assert_eq!(
        encode(&Request::HoldersPage(leases_page_query())),
        "1f0000000102"
    );
    // index 32 and 33, then the bodies of `Assign` and `Revoke`
    assert_eq!(
        encode(&Request::AssignWithTotals(assign())),
        "200175016601000000"
    );
    assert_eq!(
        encode(&Request::RevokeWithTotals(revoke())),
        "21017501660102"
    );
    // index 34: 4, Some(5), None, Some(None), Some(true), None, Some("r"), true
    assert_eq!(
        encode(&Request::EntitlementUpdate(entitlement_update())),
        "2204010500010001010001017201"
    );
    assert_eq!(
        encode(&Request::EntitlementDelete(EntitlementDelete {
            id: 9,
            force: true
        })),
        "230901"
    );
    // index 36: None, Some("u"), Some("h"), None
    assert_eq!(
        encode(&Request::ReleaseMatching(release_matching())),
        "240001017501016800"
    );

    let entry = AssignmentEntry {
        assignment: assignment_info(),
        suspended: true,
        in_use: 1,
        borrowed: 0,
    };
    // index 27, one entry: 7, "u", "f", 2, 1, None, true, 1, 0; next Some(7)
    assert_eq!(
        encode(&Response::Assignments(AssignmentsPage {
            assignments: vec![entry],
            next: Some(7),
        })),
        "1b0107017501660201000101000107"
    );
    let held = HeldLease {
        lease: lease_info(),
        program: "p".into(),
        pid: 300,
        address: "a".into(),
    };
    // index 28, one holder: the lease, "p", 300, "a"; next None
    assert_eq!(
        encode(&Response::Holders(HoldersPage {
            holders: vec![held],
            next: None,
        })),
        format!(
            "1c01{}04767261790203614062026e31000107d00fa01f0170ac02016100",
            "ab".repeat(16)
        )
    );
    // index 29: 1 seat, one touched, none after
    assert_eq!(
        encode(&Response::AssignmentChange(assignment_change())),
        "1d0101070175016602010000"
    );
    // index 30: the entitlement, one ended lease
    assert_eq!(
        encode(&Response::EntitlementUpdated(EntitlementUpdated {
            entitlement: entitlement(),
            ended: vec![LeaseId([1; 16])],
        })),
        format!("1e01016603d00f0000003c0001{}", "01".repeat(16))
    );
    assert_eq!(
        encode(&Response::EntitlementDeleted(EntitlementDeleted {
            id: 2,
            ended: vec![],
        })),
        "1f0200"
    );
    assert_eq!(
        encode(&Response::ReleasedLeases(vec![LeaseId([2; 16])])),
        format!("2001{}", "02".repeat(16))
    );
}

fn requirement() -> FeatureRequirement {
    FeatureRequirement {
        feature: "f".into(),
        requires: "p".into(),
    }
}

/// The requests and answer of prerequisites (SPEC R18), byte for byte: each after every
/// earlier variant.
#[test]
fn golden_bytes_of_prerequisites() {
    // index 37 and 38: "f", "p"
    assert_eq!(
        encode(&Request::FeatureRequire(requirement())),
        "2501660170"
    );
    assert_eq!(
        encode(&Request::FeatureUnrequire(requirement())),
        "2601660170"
    );
    // index 39, no body
    assert_eq!(encode(&Request::FeatureList), "27");
    // index 33, one feature: "f" requires ["p", "q"]
    assert_eq!(
        encode(&Response::Features(vec![FeatureRequires {
            feature: "f".into(),
            requires: vec!["p".into(), "q".into()],
        }])),
        "210101660201700171"
    );
}

/// The requests and answers of groups and policy rules (SPEC §8), byte for byte: each after
/// every earlier variant.
#[test]
fn golden_bytes_of_policy() {
    let requests: Vec<(Request, &str)> = vec![
        // index 40: "g", ["user:a@b"]
        (
            Request::GroupAdd(GroupAdd {
                name: "g".into(),
                members: vec!["user:a@b".into()],
            }),
            "2801670108757365723a614062",
        ),
        // index 41: "g", add, ["host:h"]
        (
            Request::GroupMembers(GroupMembers {
                name: "g".into(),
                add: true,
                members: vec!["host:h".into()],
            }),
            "290167010106686f73743a68",
        ),
        (Request::GroupList, "2a"),
        (
            Request::GroupRemove(GroupRef { name: "g".into() }),
            "2b0167",
        ),
        // index 44: "f", max (3), 2, Some("g"), each, dry run
        (
            Request::PolicyAdd(PolicyAdd {
                rule: RuleSpec {
                    feature: "f".into(),
                    kind: RuleKind::Max,
                    seats: 2,
                    group: Some("g".into()),
                    each: true,
                },
                dry_run: true,
            }),
            "2c016603020101670101",
        ),
        (Request::PolicyList(PolicyQuery { feature: None }), "2d00"),
        (Request::PolicyRemove(RuleRef { id: 7 }), "2e07"),
        // index 47: "f", "u", Some("h"), None
        (
            Request::PolicyCheck(PolicyCheck {
                feature: "f".into(),
                user: "u".into(),
                host: Some("h".into()),
                ip: None,
            }),
            "2f0166017501016800",
        ),
        (
            Request::Figures(StatusQuery {
                feature: Some("f".into()),
            }),
            "30010166",
        ),
    ];
    for (request, bytes) in requests {
        assert_eq!(encode(&request), bytes, "{}", request.name());
    }
    let kinds: Vec<String> = RuleKind::ALL.iter().map(encode).collect();
    assert_eq!(kinds, ["00", "01", "02", "03", "04", "05", "06"]);
    let responses: Vec<(Response, &str)> = vec![
        (
            Response::Group(GroupInfo {
                name: "g".into(),
                members: vec![],
            }),
            "22016700",
        ),
        (Response::Groups(vec![]), "2300"),
        (Response::GroupRemoved("g".into()), "240167"),
        // index 37: no id, "f", borrow-lowwater (5), 1, no group, not each; no lease over,
        // ["u"] denied
        (
            Response::RuleAdded(RuleAdded {
                rule: RuleInfo {
                    id: None,
                    rule: RuleSpec {
                        feature: "f".into(),
                        kind: RuleKind::BorrowLowwater,
                        seats: 1,
                        group: None,
                        each: false,
                    },
                },
                effect: RuleEffect {
                    leases_over: vec![],
                    users_denied: vec!["u".into()],
                },
            }),
            "250001660501000000010175",
        ),
        (Response::Rules(vec![]), "2600"),
        (Response::RuleRemoved(7), "2707"),
        // index 40: not allowed, Some(3), "r"
        (
            Response::PolicyDecision(PolicyDecision {
                allowed: false,
                rule: Some(3),
                reason: "r".into(),
            }),
            "280001030172",
        ),
        (Response::Figures(vec![]), "2900"),
    ];
    for (response, bytes) in responses {
        assert_eq!(encode(&response), bytes, "{response:?}");
    }
}

/// Lease ids as people type them: whole, by prefix, or abbreviated as `PREFIX...SUFFIX`;
/// anything else is refused naming what is wrong.
#[test]
fn lease_patterns_match_prefixes_and_abbreviations() {
    let id = LeaseId::from_hex("3f9c00000000000000000000000000e1").unwrap();
    let other = LeaseId::from_hex("3f9d00000000000000000000000000e1").unwrap();
    for text in ["3f9c", "3F9C0", "3f9c...e1", "3f9c…e1", &id.to_string()] {
        let pattern = LeasePattern::parse(text).unwrap();
        assert!(pattern.matches(&id), "{text}");
        assert!(!pattern.matches(&other), "{text}");
    }
    assert_eq!(
        LeasePattern::parse(&id.to_string()).unwrap().exact(),
        Some(id)
    );
    assert_eq!(LeasePattern::parse("3f9c").unwrap().exact(), None);
    assert_eq!(
        LeasePattern::parse("3f9c...e1").unwrap().to_string(),
        "3f9c...e1"
    );
    let err = LeasePattern::parse("3f9").unwrap_err();
    assert!(err.contains("at least 4 digits"), "{err}");
    let err = LeasePattern::parse("xyz1").unwrap_err();
    assert!(err.contains("hexadecimal"), "{err}");
    let err = LeasePattern::parse(&"a".repeat(33)).unwrap_err();
    assert!(err.contains("32 hexadecimal digits"), "{err}");
}

/// The wire indices of the queue's variants (SPEC R17), one constant each. On this branch
/// they follow the prerequisites directly; merged after the policy work (requests 40-48,
/// answers 34-41) they become requests 49, 50, 51 and answers 42, 43, 44: renumber here.
mod queue_index {
    pub const CHECKOUT_WAIT: u8 = 49;
    pub const QUEUE_CANCEL: u8 = 50;
    pub const QUEUE: u8 = 51;
    pub const QUEUED: u8 = 42;
    pub const QUEUE_LIST: u8 = 43;
    pub const QUEUE_CANCELLED: u8 = 44;
    /// `ServerMessage::Queue`, after `Error`.
    pub const NOTICE: u8 = 4;
}

/// The queue's requests, answers and notice, byte for byte (each index from
/// `queue_index`).
#[test]
fn golden_bytes_of_the_queue() {
    use queue_index::*;
    let id = "02".repeat(16);
    let wait = Request::CheckoutWait(CheckoutWait {
        checkout: Checkout {
            request_id: RequestId([2; 16]),
            feature: "f".into(),
            seats: 1,
        },
        wait_secs: Some(90),
    });
    // the id, "f", 1 seat, Some(90)
    assert_eq!(encode(&wait), format!("{CHECKOUT_WAIT:02x}{id}016601015a"));
    assert!(wait.is_idempotent() && !wait.is_read_only());
    let cancel = Request::QueueCancel(QueueCancel {
        request_id: RequestId([2; 16]),
    });
    assert_eq!(encode(&cancel), format!("{QUEUE_CANCEL:02x}{id}"));
    let query = Request::Queue(QueueQuery {
        feature: Some("f".into()),
    });
    assert_eq!(encode(&query), format!("{QUEUE:02x}010166"));
    assert!(query.is_read_only());
    let place = Response::Queued(QueuePlace {
        request_id: RequestId([2; 16]),
        feature: "f".into(),
        seats: 1,
        position: 3,
        since: 1000,
        deadline: None,
    });
    // the id, "f", 1 seat, position 3, since 1000 (zigzag varint d00f), no deadline
    assert_eq!(encode(&place), format!("{QUEUED:02x}{id}01660103d00f00"));
    let list = Response::Queue(vec![QueueEntry {
        feature: "f".into(),
        seats: 1,
        user: "u".into(),
        host: "h".into(),
        since: 1000,
        position: 1,
    }]);
    assert_eq!(
        encode(&list),
        format!("{QUEUE_LIST:02x}0101660101750168d00f01")
    );
    assert_eq!(
        encode(&Response::QueueCancelled(true)),
        format!("{QUEUE_CANCELLED:02x}01")
    );
    let ended = ServerMessage::Queue(QueueNotice {
        request_id: RequestId([2; 16]),
        outcome: QueueOutcome::Ended(ErrorBody::new(ErrorCode::QueueTimeout, "t")),
    });
    // the id, Ended (1), queue_timeout (13), "t"
    assert_eq!(encode(&ended), format!("{NOTICE:02x}{id}010d0174"));
    let granted = ServerMessage::Queue(QueueNotice {
        request_id: RequestId([2; 16]),
        outcome: QueueOutcome::Granted(lease_info()),
    });
    assert_eq!(
        encode(&granted),
        format!("{NOTICE:02x}{id}00{}", &encode(&lease_info()))
    );
}

/// The wire indices of bulk administration (SPEC R19), around those of the notification
/// outbox (53, 54; 46, 47).
mod bulk_index {
    pub const BULK: u8 = 52;
    pub const USERS_SEEN: u8 = 55;
    pub const BULK_OUTCOME: u8 = 45;
    pub const USERS_SEEN_ANSWER: u8 = 48;
}

/// Bulk requests and their answers, byte for byte (each index from `bulk_index`).
#[test]
fn golden_bytes_of_bulk_administration() {
    use bulk_index::*;
    let import = Request::Bulk(Bulk {
        rows: BulkRows::Import(vec![BulkRow {
            line: 2,
            row: UserAdd {
                username: "u".into(),
                name: "n".into(),
                role: Role::Member,
            },
        }]),
        dry_run: false,
        tokens: true,
    });
    // Import (0), one row: line 2, "u", "n", member (2); no dry run, tokens
    assert_eq!(encode(&import), format!("{BULK:02x}0001020175016e020001"));
    assert!(!import.is_idempotent() && !import.is_read_only());
    let remove = Request::Bulk(Bulk {
        rows: BulkRows::Remove(vec![BulkRow {
            line: 3,
            row: UserRef {
                username: "u".into(),
            },
        }]),
        dry_run: true,
        tokens: false,
    });
    // Remove (1), one row: line 3, "u"; a dry run, no tokens
    assert_eq!(encode(&remove), format!("{BULK:02x}01010301750100"));
    let revoke = Request::Bulk(Bulk {
        rows: BulkRows::Revoke(vec![BulkRow {
            line: 4,
            row: Revoke {
                username: "u".into(),
                feature: "f".into(),
                seats: None,
            },
        }]),
        dry_run: false,
        tokens: false,
    });
    // Revoke (4), one row: line 4, "u", "f", all seats
    assert_eq!(encode(&revoke), format!("{BULK:02x}04010401750166000000"));
    assert_eq!(encode(&Request::UsersSeen), format!("{USERS_SEEN:02x}"));
    assert!(Request::UsersSeen.is_read_only());
    let outcome = Response::Bulk(BulkOutcome {
        applied: 1,
        failed: vec![BulkFailure {
            line: 2,
            email: "u".into(),
            code: ErrorCode::AlreadyExists,
            reason: "r".into(),
        }],
        tokens: vec![BulkToken {
            line: 3,
            email: "v".into(),
            token: "t".into(),
        }],
    });
    // 1 applied; line 2, "u", already_exists (3), "r"; line 3, "v", "t"
    assert_eq!(
        encode(&outcome),
        format!("{BULK_OUTCOME:02x}0101020175030172010301760174")
    );
    let seen = Response::UsersSeen(vec![UserSeen {
        user: UserInfo {
            username: "u".into(),
            name: String::new(),
            role: Role::Member,
            state: UserState::Active,
            assigned_seats: 2,
        },
        last_seen: Some(1000),
    }]);
    // "u", "", member, active, 2 seats, last seen 1000 (zigzag varint d00f)
    assert_eq!(
        encode(&seen),
        format!("{USERS_SEEN_ANSWER:02x}0101750002000201d00f")
    );
}

/// The wire indices of the notification outbox's requests and answers (SPEC R20).
mod notify_index {
    pub const NOTIFY_STATUS: u8 = 53;
    pub const NOTIFY_TEST: u8 = 54;
    pub const NOTIFY_STATUS_ANSWER: u8 = 46;
    pub const NOTIFY_TESTED: u8 = 47;
}

/// The notification outbox's requests and answers, byte for byte (each index from
/// `notify_index`).
#[test]
fn golden_bytes_of_the_notification_outbox() {
    use notify_index::*;
    let status = Request::NotifyStatus;
    assert_eq!(encode(&status), format!("{NOTIFY_STATUS:02x}"));
    assert!(status.is_read_only() && status.is_idempotent());
    let test = Request::NotifyTest;
    assert_eq!(encode(&test), format!("{NOTIFY_TEST:02x}"));
    assert!(
        !test.is_read_only() && !test.is_idempotent(),
        "a resend sends it again"
    );
    let answer = Response::NotifyStatus(NotifyStatus {
        pending: 2,
        failed: 1,
        sinks: vec![
            SinkStatus {
                sink: "log".into(),
                delivered: 3,
                failed: 0,
                last_error: None,
            },
            SinkStatus {
                sink: "w".into(),
                delivered: 1,
                failed: 1,
                last_error: Some("e".into()),
            },
        ],
    });
    // pending 2, failed 1, 2 sinks: "log" 3 0 None, "w" 1 1 Some("e")
    assert_eq!(
        encode(&answer),
        format!("{NOTIFY_STATUS_ANSWER:02x}020102036c6f6703000001770101010165")
    );
    let tested = Response::NotifyTested(vec![
        SinkOutcome {
            sink: "log".into(),
            error: None,
        },
        SinkOutcome {
            sink: "w".into(),
            error: Some("e".into()),
        },
    ]);
    assert_eq!(
        encode(&tested),
        format!("{NOTIFY_TESTED:02x}02036c6f67000177010165")
    );
}

/// The wire indices of the usage reports' requests and answers (SPEC §10).
mod report_index {
    pub const REPORT_USAGE: u8 = 56;
    pub const REPORT_USERS: u8 = 57;
    pub const USAGE: u8 = 49;
    pub const USER_USAGE: u8 = 50;
}

/// The usage reports' requests and answers, byte for byte (each index from
/// `report_index`).
#[test]
fn golden_bytes_of_usage_reports() {
    use report_index::*;
    let usage = Request::ReportUsage(UsageQuery {
        feature: Some("f".into()),
        since: None,
        until: Some(1),
        by: ReportPeriod::Day,
    });
    // Some("f"), no since, until 1 (zigzag 2), Day (1)
    assert_eq!(encode(&usage), format!("{REPORT_USAGE:02x}01016600010201"));
    assert!(usage.is_read_only() && usage.is_idempotent());
    let users = Request::ReportUsers(UsersQuery {
        feature: None,
        since: Some(0),
        until: None,
    });
    assert_eq!(encode(&users), format!("{REPORT_USERS:02x}00010000"));
    assert!(users.is_read_only() && users.is_idempotent());
    let hour = Request::ReportUsage(UsageQuery {
        feature: None,
        since: None,
        until: None,
        by: ReportPeriod::Month,
    });
    // Hour 0, Day 1, Week 2, Month 3
    assert_eq!(encode(&hour), format!("{REPORT_USAGE:02x}00000003"));
    let answer = Response::Usage(vec![UsageRow {
        feature: "f".into(),
        period_start: 0,
        period_ms: 1,
        pool: 2,
        peak_in_use: 1,
        seat_ms: 3,
        checkouts: 4,
        denials: 5,
        distinct_users: 1,
    }]);
    assert_eq!(
        encode(&answer),
        format!("{USAGE:02x}0101660002020103040501")
    );
    let answer = Response::UserUsage(vec![UserUsageRow {
        user: "u".into(),
        feature: "f".into(),
        seat_ms: 1,
        checkouts: 2,
        denials: 0,
        last_used: Some(2),
    }]);
    assert_eq!(
        encode(&answer),
        format!("{USER_USAGE:02x}01017501660102000104")
    );
}

/// The wire indices of metered credits' requests and answers (SPEC §11).
mod credits_index {
    pub const CREDITS_ADD: u8 = 58;
    pub const CREDITS_STATUS: u8 = 59;
    pub const QUOTA_SET: u8 = 60;
    pub const QUOTA_REMOVE: u8 = 61;
    pub const QUOTA_LIST: u8 = 62;
    pub const CONSUME: u8 = 63;
    pub const REPORT_METERS: u8 = 64;
    pub const PURCHASE: u8 = 51;
    pub const METERS: u8 = 52;
    pub const QUOTA: u8 = 53;
    pub const QUOTAS: u8 = 54;
    pub const CONSUMED: u8 = 55;
    pub const METER_USAGE: u8 = 56;
}

/// Metered credits' requests and answers, byte for byte (each index from `credits_index`).
#[test]
fn golden_bytes_of_credits() {
    use credits_index::*;
    let add = Request::CreditsAdd(CreditsAdd {
        meter: "m".into(),
        amount: 300,
        expires_at: Some(1),
        reference: "r".into(),
    });
    // "m", 300 as a varint (ac 02), Some(1) zigzag 2, "r"
    assert_eq!(encode(&add), format!("{CREDITS_ADD:02x}016dac0201020172"));
    assert!(!add.is_idempotent() && !add.is_read_only());
    let status = Request::CreditsStatus(MeterQuery { meter: None });
    assert_eq!(encode(&status), format!("{CREDITS_STATUS:02x}00"));
    assert!(status.is_read_only());
    let set = Request::QuotaSet(QuotaSet {
        username: "u".into(),
        meter: "m".into(),
        quota: Some(80),
    });
    assert_eq!(encode(&set), format!("{QUOTA_SET:02x}0175016d0150"));
    assert!(set.is_idempotent() && !set.is_read_only());
    let remove = Request::QuotaRemove(QuotaRef {
        username: "u".into(),
        meter: "m".into(),
    });
    assert_eq!(encode(&remove), format!("{QUOTA_REMOVE:02x}0175016d"));
    let list = Request::QuotaList(MeterQuery {
        meter: Some("m".into()),
    });
    assert_eq!(encode(&list), format!("{QUOTA_LIST:02x}01016d"));
    assert!(list.is_read_only());
    let consume = Request::Consume(Consume {
        request_id: RequestId([7; 16]),
        meter: "m".into(),
        amount: 2,
    });
    assert_eq!(
        encode(&consume),
        format!("{CONSUME:02x}{}016d02", "07".repeat(16))
    );
    assert!(consume.is_idempotent() && !consume.is_read_only());
    let report = Request::ReportMeters(UsageQuery {
        feature: None,
        since: None,
        until: None,
        by: ReportPeriod::Day,
    });
    assert_eq!(encode(&report), format!("{REPORT_METERS:02x}00000001"));
    assert!(report.is_read_only());

    let purchase = Response::Purchase(PurchaseInfo {
        id: 1,
        meter: "m".into(),
        amount: 2,
        expires_at: None,
        reference: String::new(),
    });
    assert_eq!(encode(&purchase), format!("{PURCHASE:02x}01016d020000"));
    let meters = Response::Meters(vec![MeterInfo {
        meter: "m".into(),
        purchased: 5,
        consumed: 2,
        expired: 1,
        balance: 2,
    }]);
    assert_eq!(encode(&meters), format!("{METERS:02x}01016d05020102"));
    let quota = QuotaInfo {
        user: "u".into(),
        meter: "m".into(),
        quota: None,
        unlimited: true,
        used: 3,
        remaining: None,
    };
    assert_eq!(
        encode(&Response::Quota(quota.clone())),
        format!("{QUOTA:02x}0175016d00010300")
    );
    assert_eq!(
        encode(&Response::Quotas(vec![quota])),
        format!("{QUOTAS:02x}010175016d00010300")
    );
    let consumed = Response::Consumed(Consumed {
        consumed: 2,
        balance: 1,
        remaining: Some(0),
    });
    assert_eq!(encode(&consumed), format!("{CONSUMED:02x}02010100"));
    let usage = Response::MeterUsage(vec![MeterUsageRow {
        meter: "m".into(),
        period_start: 1,
        user: "u".into(),
        consumed: 4,
        consumptions: 1,
    }]);
    assert_eq!(encode(&usage), format!("{METER_USAGE:02x}01016d0201750401"));
}
