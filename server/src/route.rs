//! Where a signed-in request is answered, decided once as it arrives: `ServerInfo` and
//! `ServerNodes` by the connection, audit reads from the store and the notification
//! outbox's status and test by the notifier once the engine's batch has committed, every
//! other request by the pool. The engine's handler takes a
//! [`PoolRequest`], which has no variant for the others, so no request can reach the wrong
//! handler.

use crate::core::Action;
use tally_protocol::{
    Assign, AssignmentsQuery, AuditQuery, Borrow, BorrowOnce, Bulk, Checkin, Checkout,
    CheckoutWait, Consume, CreditsAdd, EntitlementDelete, EntitlementQuery, EntitlementRemove,
    EntitlementUpdate, FeatureRequirement, GroupAdd, GroupMembers, GroupRef, LeasesPageQuery,
    LeasesQuery, MeterQuery, NewEntitlement, PolicyAdd, PolicyCheck, PolicyQuery, QueueCancel,
    QueueQuery, QuotaRef, QuotaSet, Release, ReleaseMatching, Request, Resume, Return, Revoke,
    RuleRef, StatusQuery, TokenMint, TokenRevoke, UsageQuery, UserAdd, UserRef, UsersQuery,
};

/// Who answers a request.
#[derive(Debug)]
pub enum Route {
    /// The connection, from what it holds.
    ServerInfo,
    /// The connection (admins only).
    ServerNodes,
    /// The engine.
    Engine(EngineRequest),
}

/// A request for the engine, with its name for the audit log.
#[derive(Debug)]
pub struct EngineRequest {
    /// [`Request::name`], for the log.
    pub name: &'static str,
    /// What the audit log calls it, for the event of a refusal.
    pub action: Action,
    pub kind: EngineKind,
}

/// What the engine does with a request.
#[derive(Debug)]
pub enum EngineKind {
    /// Check the role and the query, then read the store after the commit.
    Audit(AuditRead),
    /// Apply it to the pool.
    Pool(PoolRequest),
    /// Check the role, then ask the notifier after the commit.
    Notify(NotifyRead),
    /// Check the role and the query, then read the lease history after the commit.
    Report(ReportRead),
}

/// A usage report asked for (SPEC §10).
#[derive(Debug)]
pub enum ReportRead {
    Usage(UsageQuery),
    Users(UsersQuery),
    /// Credits consumed per meter, period and user (the query's `feature` names a meter).
    Meters(UsageQuery),
}

/// What the notifier is asked, once an admin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyRead {
    /// How delivery stands (`NotifyStatus`).
    Status,
    /// A test notification to every sink (`NotifyTest`).
    Test,
}

/// An audit query and how to answer it.
#[derive(Debug)]
pub struct AuditRead {
    pub query: AuditQuery,
    /// The page cursor of `AuditPage`.
    pub before: Option<u64>,
    /// `AuditPage` (answered with a page) rather than `Audit` (with its events only).
    pub paged: bool,
}

/// Every request the pool answers: [`Request`] without `ServerInfo`, `ServerNodes`, `Audit`
/// and `AuditPage`, with the same bodies.
#[derive(Debug)]
pub enum PoolRequest {
    Heartbeat,
    Checkout(Checkout),
    Checkin(Checkin),
    Resume(Resume),
    Status(StatusQuery),
    Leases(LeasesQuery),
    EntitlementAdd(NewEntitlement),
    EntitlementList(EntitlementQuery),
    EntitlementRemove(EntitlementRemove),
    Release(Release),
    Whoami,
    UserAdd(UserAdd),
    UserList,
    UserToken(UserRef),
    UserDeactivate(UserRef),
    UserActivate(UserRef),
    UserRemove(UserRef),
    Assign(Assign),
    Revoke(Revoke),
    Borrow(Borrow),
    Return(Return),
    TokenMint(TokenMint),
    TokenList(UserRef),
    TokenRevoke(TokenRevoke),
    BorrowOnce(BorrowOnce),
    LeasesPage(LeasesPageQuery),
    Assignments(AssignmentsQuery),
    HoldersPage(LeasesPageQuery),
    AssignWithTotals(Assign),
    RevokeWithTotals(Revoke),
    EntitlementUpdate(EntitlementUpdate),
    EntitlementDelete(EntitlementDelete),
    ReleaseMatching(ReleaseMatching),
    FeatureRequire(FeatureRequirement),
    FeatureUnrequire(FeatureRequirement),
    FeatureList,
    GroupAdd(GroupAdd),
    GroupMembers(GroupMembers),
    GroupList,
    GroupRemove(GroupRef),
    PolicyAdd(PolicyAdd),
    PolicyList(PolicyQuery),
    PolicyRemove(RuleRef),
    PolicyCheck(PolicyCheck),
    Figures(StatusQuery),
    CheckoutWait(CheckoutWait),
    QueueCancel(QueueCancel),
    Queue(QueueQuery),
    Bulk(Bulk),
    UsersSeen,
    CreditsAdd(CreditsAdd),
    CreditsStatus(MeterQuery),
    QuotaSet(QuotaSet),
    QuotaRemove(QuotaRef),
    QuotaList(MeterQuery),
    Consume(Consume),
}

/// Decides who answers `request`.
pub fn route(request: Request) -> Route {
    let name = request.name();
    let action = Action::of_request(&request);
    let audit = |read| {
        Route::Engine(EngineRequest {
            name,
            action,
            kind: EngineKind::Audit(read),
        })
    };
    let pool = match request {
        Request::ServerInfo => return Route::ServerInfo,
        Request::ServerNodes => return Route::ServerNodes,
        Request::Audit(query) => {
            return audit(AuditRead {
                query,
                before: None,
                paged: false,
            })
        }
        Request::AuditPage(page) => {
            return audit(AuditRead {
                query: page.query,
                before: page.before,
                paged: true,
            })
        }
        Request::NotifyStatus => {
            let kind = EngineKind::Notify(NotifyRead::Status);
            return Route::Engine(EngineRequest { name, action, kind });
        }
        Request::NotifyTest => {
            let kind = EngineKind::Notify(NotifyRead::Test);
            return Route::Engine(EngineRequest { name, action, kind });
        }
        Request::ReportUsage(query) => {
            let kind = EngineKind::Report(ReportRead::Usage(query));
            return Route::Engine(EngineRequest { name, action, kind });
        }
        Request::ReportUsers(query) => {
            let kind = EngineKind::Report(ReportRead::Users(query));
            return Route::Engine(EngineRequest { name, action, kind });
        }
        Request::ReportMeters(query) => {
            let kind = EngineKind::Report(ReportRead::Meters(query));
            return Route::Engine(EngineRequest { name, action, kind });
        }
        Request::Heartbeat => PoolRequest::Heartbeat,
        Request::Checkout(body) => PoolRequest::Checkout(body),
        Request::Checkin(body) => PoolRequest::Checkin(body),
        Request::Resume(body) => PoolRequest::Resume(body),
        Request::Status(body) => PoolRequest::Status(body),
        Request::Leases(body) => PoolRequest::Leases(body),
        Request::EntitlementAdd(body) => PoolRequest::EntitlementAdd(body),
        Request::EntitlementList(body) => PoolRequest::EntitlementList(body),
        Request::EntitlementRemove(body) => PoolRequest::EntitlementRemove(body),
        Request::Release(body) => PoolRequest::Release(body),
        Request::Whoami => PoolRequest::Whoami,
        Request::UserAdd(body) => PoolRequest::UserAdd(body),
        Request::UserList => PoolRequest::UserList,
        Request::UserToken(body) => PoolRequest::UserToken(body),
        Request::UserDeactivate(body) => PoolRequest::UserDeactivate(body),
        Request::UserActivate(body) => PoolRequest::UserActivate(body),
        Request::UserRemove(body) => PoolRequest::UserRemove(body),
        Request::Assign(body) => PoolRequest::Assign(body),
        Request::Revoke(body) => PoolRequest::Revoke(body),
        Request::Borrow(body) => PoolRequest::Borrow(body),
        Request::Return(body) => PoolRequest::Return(body),
        Request::TokenMint(body) => PoolRequest::TokenMint(body),
        Request::TokenList(body) => PoolRequest::TokenList(body),
        Request::TokenRevoke(body) => PoolRequest::TokenRevoke(body),
        Request::BorrowOnce(body) => PoolRequest::BorrowOnce(body),
        Request::LeasesPage(body) => PoolRequest::LeasesPage(body),
        Request::Assignments(body) => PoolRequest::Assignments(body),
        Request::HoldersPage(body) => PoolRequest::HoldersPage(body),
        Request::AssignWithTotals(body) => PoolRequest::AssignWithTotals(body),
        Request::RevokeWithTotals(body) => PoolRequest::RevokeWithTotals(body),
        Request::EntitlementUpdate(body) => PoolRequest::EntitlementUpdate(body),
        Request::EntitlementDelete(body) => PoolRequest::EntitlementDelete(body),
        Request::ReleaseMatching(body) => PoolRequest::ReleaseMatching(body),
        Request::FeatureRequire(body) => PoolRequest::FeatureRequire(body),
        Request::FeatureUnrequire(body) => PoolRequest::FeatureUnrequire(body),
        Request::FeatureList => PoolRequest::FeatureList,
        Request::GroupAdd(body) => PoolRequest::GroupAdd(body),
        Request::GroupMembers(body) => PoolRequest::GroupMembers(body),
        Request::GroupList => PoolRequest::GroupList,
        Request::GroupRemove(body) => PoolRequest::GroupRemove(body),
        Request::PolicyAdd(body) => PoolRequest::PolicyAdd(body),
        Request::PolicyList(body) => PoolRequest::PolicyList(body),
        Request::PolicyRemove(body) => PoolRequest::PolicyRemove(body),
        Request::PolicyCheck(body) => PoolRequest::PolicyCheck(body),
        Request::Figures(body) => PoolRequest::Figures(body),
        Request::CheckoutWait(body) => PoolRequest::CheckoutWait(body),
        Request::QueueCancel(body) => PoolRequest::QueueCancel(body),
        Request::Queue(body) => PoolRequest::Queue(body),
        Request::Bulk(body) => PoolRequest::Bulk(body),
        Request::UsersSeen => PoolRequest::UsersSeen,
        Request::CreditsAdd(body) => PoolRequest::CreditsAdd(body),
        Request::CreditsStatus(body) => PoolRequest::CreditsStatus(body),
        Request::QuotaSet(body) => PoolRequest::QuotaSet(body),
        Request::QuotaRemove(body) => PoolRequest::QuotaRemove(body),
        Request::QuotaList(body) => PoolRequest::QuotaList(body),
        Request::Consume(body) => PoolRequest::Consume(body),
    };
    Route::Engine(EngineRequest {
        name,
        action,
        kind: EngineKind::Pool(pool),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_protocol::{AuditPageQuery, RequestId, StatusQuery};

    fn query() -> AuditQuery {
        AuditQuery {
            since: Some(5),
            user: Some("ana@studio.com".into()),
            feature: None,
            limit: Some(10),
        }
    }

    #[test]
    fn server_info_and_nodes_stay_with_the_connection() {
        assert!(matches!(route(Request::ServerInfo), Route::ServerInfo));
        assert!(matches!(route(Request::ServerNodes), Route::ServerNodes));
    }

    #[test]
    fn audit_reads_keep_their_query_and_cursor() {
        let Route::Engine(EngineRequest {
            name: "audit",
            kind: EngineKind::Audit(read),
            ..
        }) = route(Request::Audit(query()))
        else {
            panic!("Audit is not an audit read");
        };
        assert_eq!(
            (read.query, read.before, read.paged),
            (query(), None, false)
        );
        let page = Request::AuditPage(AuditPageQuery {
            query: query(),
            before: Some(42),
        });
        let Route::Engine(EngineRequest {
            kind: EngineKind::Audit(read),
            ..
        }) = route(page)
        else {
            panic!("AuditPage is not an audit read");
        };
        assert_eq!((read.before, read.paged), (Some(42), true));
    }

    #[test]
    fn pool_requests_keep_their_body_and_name() {
        let checkout = Checkout {
            request_id: RequestId([3; 16]),
            feature: "vray".into(),
            seats: 2,
        };
        match route(Request::Checkout(checkout.clone())) {
            Route::Engine(EngineRequest {
                name: "checkout",
                kind: EngineKind::Pool(PoolRequest::Checkout(body)),
                ..
            }) => assert_eq!(body, checkout),
            other => panic!("{other:?}"),
        }
        let status = Request::Status(StatusQuery { feature: None });
        assert!(matches!(
            route(status),
            Route::Engine(EngineRequest {
                name: "status",
                kind: EngineKind::Pool(PoolRequest::Status(_)),
                ..
            })
        ));
    }

    /// The requests of the admin views and of managing what exists go to the pool, audited
    /// under the actions of the requests they extend.
    #[test]
    fn the_admin_views_and_changes_go_to_the_pool() {
        let release = Request::ReleaseMatching(ReleaseMatching {
            lease: Some("3f9c".into()),
            user: None,
            host: None,
            feature: None,
        });
        match route(release) {
            Route::Engine(EngineRequest {
                name: "release",
                action: Action::Release,
                kind: EngineKind::Pool(PoolRequest::ReleaseMatching(body)),
            }) => assert_eq!(body.lease.as_deref(), Some("3f9c")),
            other => panic!("{other:?}"),
        }
        let delete = Request::EntitlementDelete(EntitlementDelete { id: 4, force: true });
        assert!(matches!(
            route(delete),
            Route::Engine(EngineRequest {
                action: Action::EntitlementRemove,
                kind: EngineKind::Pool(PoolRequest::EntitlementDelete(EntitlementDelete {
                    id: 4,
                    force: true
                })),
                ..
            })
        ));
        let assignments = Request::Assignments(AssignmentsQuery {
            user: None,
            feature: Some("vray".into()),
            after: None,
            limit: None,
        });
        assert!(matches!(
            route(assignments),
            Route::Engine(EngineRequest {
                name: "assignments",
                action: Action::Assignments,
                kind: EngineKind::Pool(PoolRequest::Assignments(_)),
            })
        ));
    }
}
