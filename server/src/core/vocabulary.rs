//! The words the audit log and the outbox are written in: audit actions, outcomes and
//! notification kinds.
//!
//! The core and the engine name them by these enums; the text (`as_str`) is what the store
//! keeps and what `AuditEvent` carries on the wire, so it never changes once released: the
//! audit log's CSV export and older rows read the same. A new action or kind is a new
//! variant with new text, added to `ALL` (the unit test pins every text).

use tally_protocol::{BulkRows, ErrorCode, Request};

/// What an audit event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A keep-alive of a client's online leases (audited only when refused).
    Heartbeat,
    Checkout,
    /// An online lease given back by its holder.
    Checkin,
    /// A borrowed lease given back before its end.
    Return,
    /// Leases bound to another client instance of the same user.
    Resume,
    Status,
    Leases,
    EntitlementAdd,
    EntitlementList,
    EntitlementRemove,
    /// An admin's forced check-in.
    Release,
    /// A lease ended by the server: expired, revoked, deactivated, over capacity.
    Reclaim,
    ServerInfo,
    Whoami,
    UserAdd,
    UserList,
    /// A token minted by the first request form (no label).
    UserToken,
    /// A user's tokens listed.
    UserTokens,
    UserDeactivate,
    UserActivate,
    UserRemove,
    Assign,
    /// Assigned seats taken back (or moved to another user).
    Revoke,
    /// An assignment that ended by itself or with its entitlement.
    AssignmentEnd,
    Audit,
    Borrow,
    TokenMint,
    TokenList,
    TokenRevoke,
    SignIn,
    /// A cluster's nodes listed (`server nodes`).
    ServerNodes,
    /// Assignments listed (`tally assignments`).
    Assignments,
    /// An entitlement changed (renewed or corrected).
    EntitlementUpdate,
    /// A prerequisite added to a feature (R18).
    FeatureRequire,
    /// A prerequisite dropped.
    FeatureUnrequire,
    /// The prerequisites listed.
    FeatureList,
    /// A group created (SPEC §8).
    GroupAdd,
    /// Members added to a group or removed from it.
    GroupMembers,
    /// A group removed.
    GroupRemove,
    /// The groups listed.
    GroupList,
    /// A policy rule added (R16).
    PolicyAdd,
    /// A policy rule removed.
    PolicyRemove,
    /// The policy rules listed.
    PolicyList,
    /// The rules' decision for one holder asked.
    PolicyCheck,
    /// A checkout's wait in the queue (R17): joined, left, timed out or dropped, and the
    /// queue listed. The grant itself is a `checkout`.
    Queue,
    /// How the delivery of notifications stands, asked (R20).
    NotifyStatus,
    /// A test notification sent to every sink (R20).
    NotifyTest,
    /// A usage report read (SPEC §10).
    ReportUsage,
    /// A report of usage by user read (SPEC §10).
    ReportUsers,
    /// Credits bought into a meter's pool (SPEC §11).
    CreditsAdd,
    /// The meters' figures read.
    CreditsStatus,
    /// A user's quota of a meter set, or unlimited access given.
    QuotaSet,
    /// A user's access to a meter taken away.
    QuotaRemove,
    /// Users' access to meters listed.
    QuotaList,
    /// Credits consumed (R21).
    Consume,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 55] = [
        Self::Heartbeat,
        Self::Checkout,
        Self::Checkin,
        Self::Return,
        Self::Resume,
        Self::Status,
        Self::Leases,
        Self::EntitlementAdd,
        Self::EntitlementList,
        Self::EntitlementRemove,
        Self::Release,
        Self::Reclaim,
        Self::ServerInfo,
        Self::Whoami,
        Self::UserAdd,
        Self::UserList,
        Self::UserToken,
        Self::UserTokens,
        Self::UserDeactivate,
        Self::UserActivate,
        Self::UserRemove,
        Self::Assign,
        Self::Revoke,
        Self::AssignmentEnd,
        Self::Audit,
        Self::Borrow,
        Self::TokenMint,
        Self::TokenList,
        Self::TokenRevoke,
        Self::SignIn,
        Self::ServerNodes,
        Self::Assignments,
        Self::EntitlementUpdate,
        Self::FeatureRequire,
        Self::FeatureUnrequire,
        Self::FeatureList,
        Self::GroupAdd,
        Self::GroupMembers,
        Self::GroupRemove,
        Self::GroupList,
        Self::PolicyAdd,
        Self::PolicyRemove,
        Self::PolicyList,
        Self::PolicyCheck,
        Self::Queue,
        Self::NotifyStatus,
        Self::NotifyTest,
        Self::ReportUsage,
        Self::ReportUsers,
        Self::CreditsAdd,
        Self::CreditsStatus,
        Self::QuotaSet,
        Self::QuotaRemove,
        Self::QuotaList,
        Self::Consume,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Heartbeat => "heartbeat",
            Self::Checkout => "checkout",
            Self::Checkin => "checkin",
            Self::Return => "return",
            Self::Resume => "resume",
            Self::Status => "status",
            Self::Leases => "leases",
            Self::EntitlementAdd => "entitlement_add",
            Self::EntitlementList => "entitlement_list",
            Self::EntitlementRemove => "entitlement_remove",
            Self::Release => "release",
            Self::Reclaim => "reclaim",
            Self::ServerInfo => "server_info",
            Self::Whoami => "whoami",
            Self::UserAdd => "user_add",
            Self::UserList => "user_list",
            Self::UserToken => "user_token",
            Self::UserTokens => "user_tokens",
            Self::UserDeactivate => "user_deactivate",
            Self::UserActivate => "user_activate",
            Self::UserRemove => "user_remove",
            Self::Assign => "assign",
            Self::Revoke => "revoke",
            Self::AssignmentEnd => "assignment_end",
            Self::Audit => "audit",
            Self::Borrow => "borrow",
            Self::TokenMint => "token_mint",
            Self::TokenList => "token_list",
            Self::TokenRevoke => "token_revoke",
            Self::SignIn => "sign_in",
            Self::ServerNodes => "server_nodes",
            Self::Assignments => "assignments",
            Self::EntitlementUpdate => "entitlement_update",
            Self::FeatureRequire => "feature_require",
            Self::FeatureUnrequire => "feature_unrequire",
            Self::FeatureList => "feature_list",
            Self::GroupAdd => "group_add",
            Self::GroupMembers => "group_members",
            Self::GroupRemove => "group_remove",
            Self::GroupList => "group_list",
            Self::PolicyAdd => "policy_add",
            Self::PolicyRemove => "policy_remove",
            Self::PolicyList => "policy_list",
            Self::PolicyCheck => "policy_check",
            Self::Queue => "queue",
            Self::NotifyStatus => "notify_status",
            Self::NotifyTest => "notify_test",
            Self::ReportUsage => "report_usage",
            Self::ReportUsers => "report_users",
            Self::CreditsAdd => "credits_add",
            Self::CreditsStatus => "credits_status",
            Self::QuotaSet => "quota_set",
            Self::QuotaRemove => "quota_remove",
            Self::QuotaList => "quota_list",
            Self::Consume => "consume",
        }
    }

    /// The action of a stored text, if it is one.
    pub fn parse(text: &str) -> Option<Action> {
        Self::ALL.into_iter().find(|action| action.as_str() == text)
    }

    /// The action a bulk file is audited under: each row is audited as its single-row
    /// request, and a refusal of the whole file as that request too.
    pub fn of_bulk(rows: &BulkRows) -> Action {
        match rows {
            BulkRows::Import(_) => Self::UserAdd,
            BulkRows::Remove(_) => Self::UserRemove,
            BulkRows::Deactivate(_) => Self::UserDeactivate,
            BulkRows::Assign(_) => Self::Assign,
            BulkRows::Revoke(_) => Self::Revoke,
        }
    }

    /// The action a request is audited under when it is refused before its handler (its
    /// token revoked, its account gone): the request's own name.
    pub fn of_request(request: &Request) -> Action {
        match request {
            Request::Heartbeat => Self::Heartbeat,
            Request::Checkout(_) => Self::Checkout,
            Request::Checkin(_) => Self::Checkin,
            Request::Resume(_) => Self::Resume,
            Request::Status(_) => Self::Status,
            Request::Leases(_) | Request::LeasesPage(_) | Request::HoldersPage(_) => Self::Leases,
            Request::EntitlementAdd(_) => Self::EntitlementAdd,
            Request::EntitlementList(_) => Self::EntitlementList,
            Request::EntitlementRemove(_) | Request::EntitlementDelete(_) => {
                Self::EntitlementRemove
            }
            Request::EntitlementUpdate(_) => Self::EntitlementUpdate,
            Request::Release(_) | Request::ReleaseMatching(_) => Self::Release,
            Request::ServerInfo => Self::ServerInfo,
            Request::Whoami => Self::Whoami,
            Request::UserAdd(_) => Self::UserAdd,
            Request::UserList => Self::UserList,
            Request::UserToken(_) => Self::UserToken,
            Request::UserDeactivate(_) => Self::UserDeactivate,
            Request::UserActivate(_) => Self::UserActivate,
            Request::UserRemove(_) => Self::UserRemove,
            Request::Assign(_) | Request::AssignWithTotals(_) => Self::Assign,
            Request::Revoke(_) | Request::RevokeWithTotals(_) => Self::Revoke,
            Request::Assignments(_) => Self::Assignments,
            Request::Audit(_) | Request::AuditPage(_) => Self::Audit,
            Request::Borrow(_) | Request::BorrowOnce(_) => Self::Borrow,
            Request::Return(_) => Self::Return,
            Request::TokenMint(_) => Self::TokenMint,
            Request::TokenList(_) => Self::TokenList,
            Request::TokenRevoke(_) => Self::TokenRevoke,
            Request::ServerNodes => Self::ServerNodes,
            Request::FeatureRequire(_) => Self::FeatureRequire,
            Request::FeatureUnrequire(_) => Self::FeatureUnrequire,
            Request::FeatureList => Self::FeatureList,
            Request::GroupAdd(_) => Self::GroupAdd,
            Request::GroupMembers(_) => Self::GroupMembers,
            Request::GroupRemove(_) => Self::GroupRemove,
            Request::GroupList => Self::GroupList,
            Request::PolicyAdd(_) => Self::PolicyAdd,
            Request::PolicyRemove(_) => Self::PolicyRemove,
            Request::PolicyList(_) => Self::PolicyList,
            Request::PolicyCheck(_) => Self::PolicyCheck,
            Request::Figures(_) => Self::Status,
            Request::CheckoutWait(_) => Self::Checkout,
            Request::QueueCancel(_) | Request::Queue(_) => Self::Queue,
            Request::Bulk(bulk) => Self::of_bulk(&bulk.rows),
            Request::UsersSeen => Self::UserList,
            Request::NotifyStatus => Self::NotifyStatus,
            Request::NotifyTest => Self::NotifyTest,
            Request::ReportUsage(_) => Self::ReportUsage,
            Request::ReportUsers(_) => Self::ReportUsers,
            Request::CreditsAdd(_) => Self::CreditsAdd,
            Request::CreditsStatus(_) => Self::CreditsStatus,
            Request::QuotaSet(_) => Self::QuotaSet,
            Request::QuotaRemove(_) => Self::QuotaRemove,
            Request::QuotaList(_) => Self::QuotaList,
            Request::Consume(_) => Self::Consume,
            Request::ReportMeters(_) => Self::ReportUsage,
        }
    }

    /// Whether a change of this kind is worth telling the admin reading the log at `info`:
    /// reclaims, forced releases, entitlement, assignment and user changes. Everyday
    /// checkouts, check-ins and the like are not.
    pub fn is_notable(self) -> bool {
        matches!(
            self,
            Self::Reclaim
                | Self::Release
                | Self::EntitlementAdd
                | Self::EntitlementRemove
                | Self::EntitlementUpdate
                | Self::FeatureRequire
                | Self::FeatureUnrequire
                | Self::GroupAdd
                | Self::GroupMembers
                | Self::GroupRemove
                | Self::PolicyAdd
                | Self::PolicyRemove
                | Self::CreditsAdd
                | Self::QuotaSet
                | Self::QuotaRemove
                | Self::Assign
                | Self::Revoke
                | Self::AssignmentEnd
                | Self::UserAdd
                | Self::UserDeactivate
                | Self::UserActivate
                | Self::UserRemove
        )
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an audited request went: done, or refused with an error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    Ok,
    Refused(ErrorCode),
}

impl AuditOutcome {
    /// The stored text: `ok`, or the error code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused(code) => code.as_str(),
        }
    }

    /// The outcome of a stored text, if it is one.
    pub fn parse(text: &str) -> Option<AuditOutcome> {
        if text == Self::Ok.as_str() {
            return Some(Self::Ok);
        }
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
            .map(Self::Refused)
    }
}

/// What a notification in the outbox is about (SPEC R20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationKind {
    /// An add or activation refused past `users.max_active`.
    UserLimitExceeded,
    /// An entitlement ends in 14 days, or in 1 day.
    EntitlementExpiring,
    /// An entitlement has ended.
    EntitlementExpired,
    /// A feature refused a checkout for lack of seats (at most one an hour a feature).
    PoolExhausted,
    /// Seats assigned to a user, revoked from them, moved, or ended with their assignment.
    AssignmentChanged,
    UserRemoved,
    /// A node of a cluster took over as leader.
    LeaderChanged,
}

impl NotificationKind {
    /// Every kind.
    pub const ALL: [NotificationKind; 7] = [
        Self::UserLimitExceeded,
        Self::EntitlementExpiring,
        Self::EntitlementExpired,
        Self::PoolExhausted,
        Self::AssignmentChanged,
        Self::UserRemoved,
        Self::LeaderChanged,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserLimitExceeded => "user_limit_exceeded",
            Self::EntitlementExpiring => "entitlement_expiring",
            Self::EntitlementExpired => "entitlement_expired",
            Self::PoolExhausted => "pool_exhausted",
            Self::AssignmentChanged => "assignment_changed",
            Self::UserRemoved => "user_removed",
            Self::LeaderChanged => "leader_changed",
        }
    }

    /// Whether the user the notification is about hears of it too (by e-mail, their
    /// username being their address), besides the responsible people.
    pub fn to_subject(self) -> bool {
        matches!(self, Self::AssignmentChanged | Self::UserRemoved)
    }

    /// The kind of a stored text, if it is one.
    pub fn parse(text: &str) -> Option<NotificationKind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

impl std::fmt::Display for NotificationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts are stored and exported: changing one breaks every log already written.
    #[test]
    fn every_action_keeps_its_stored_text() {
        let texts: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(
            texts,
            [
                "heartbeat",
                "checkout",
                "checkin",
                "return",
                "resume",
                "status",
                "leases",
                "entitlement_add",
                "entitlement_list",
                "entitlement_remove",
                "release",
                "reclaim",
                "server_info",
                "whoami",
                "user_add",
                "user_list",
                "user_token",
                "user_tokens",
                "user_deactivate",
                "user_activate",
                "user_remove",
                "assign",
                "revoke",
                "assignment_end",
                "audit",
                "borrow",
                "token_mint",
                "token_list",
                "token_revoke",
                "sign_in",
                "server_nodes",
                "assignments",
                "entitlement_update",
                "feature_require",
                "feature_unrequire",
                "feature_list",
                "group_add",
                "group_members",
                "group_remove",
                "group_list",
                "policy_add",
                "policy_remove",
                "credits_add",
                "quota_set",
                "quota_remove",
                "policy_list",
                "policy_check",
                "queue",
                "notify_status",
                "notify_test",
                "report_usage",
                "report_users",
                "credits_add",
                "credits_status",
                "quota_set",
                "quota_remove",
                "quota_list",
                "consume",
            ]
        );
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
            assert_eq!(action.to_string(), action.as_str());
        }
        assert_eq!(Action::parse("checkout "), None);
    }

    #[test]
    fn only_changes_to_the_pool_and_its_people_are_notable() {
        let notable: Vec<&str> = Action::ALL
            .iter()
            .filter(|a| a.is_notable())
            .map(|a| a.as_str())
            .collect();
        assert_eq!(
            notable,
            [
                "entitlement_add",
                "entitlement_remove",
                "release",
                "reclaim",
                "user_add",
                "user_deactivate",
                "user_activate",
                "user_remove",
                "assign",
                "revoke",
                "assignment_end",
                "entitlement_update",
                "feature_require",
                "feature_unrequire",
                "group_add",
                "group_members",
                "group_remove",
                "policy_add",
                "policy_remove",
            ]
        );
    }

    /// A request refused before its handler is audited under the request's own name.
    #[test]
    fn a_request_is_audited_under_its_name() {
        use tally_protocol::{
            Assign, AssignmentsQuery, Checkin, EntitlementDelete, EntitlementQuery,
            EntitlementUpdate, LeaseId, LeasesPageQuery, LeasesQuery, ReleaseMatching, Revoke,
            StatusQuery, UserRef,
        };
        let assign = Assign {
            username: "ana@studio".into(),
            feature: "vray".into(),
            seats: 1,
            entitlement: None,
            from: None,
            expires_at: None,
        };
        let revoke = Revoke {
            username: "ana@studio".into(),
            feature: "vray".into(),
            seats: None,
        };
        let requests = [
            Request::Heartbeat,
            Request::Checkin(Checkin {
                lease: LeaseId([1; 16]),
            }),
            Request::Status(StatusQuery { feature: None }),
            Request::Leases(LeasesQuery {
                feature: None,
                user: None,
            }),
            Request::EntitlementList(EntitlementQuery { feature: None }),
            Request::ServerInfo,
            Request::ServerNodes,
            Request::Whoami,
            Request::UserList,
            Request::UserRemove(UserRef {
                username: "ana@studio".into(),
            }),
            Request::Assignments(AssignmentsQuery {
                user: None,
                feature: None,
                after: None,
                limit: None,
            }),
            Request::HoldersPage(LeasesPageQuery {
                query: LeasesQuery {
                    feature: None,
                    user: None,
                },
                after: None,
                limit: None,
            }),
            Request::AssignWithTotals(assign),
            Request::RevokeWithTotals(revoke),
            Request::EntitlementUpdate(EntitlementUpdate {
                id: 1,
                seats: Some(2),
                starts_at: None,
                expires_at: None,
                borrowable: None,
                max_borrow_secs: None,
                reference: None,
                force: false,
            }),
            Request::EntitlementDelete(EntitlementDelete { id: 1, force: true }),
            Request::ReleaseMatching(ReleaseMatching {
                lease: Some("3f9c".into()),
                user: None,
                host: None,
                feature: None,
            }),
            Request::FeatureRequire(tally_protocol::FeatureRequirement {
                feature: "vray".into(),
                requires: "maya".into(),
            }),
            Request::FeatureUnrequire(tally_protocol::FeatureRequirement {
                feature: "vray".into(),
                requires: "maya".into(),
            }),
            Request::FeatureList,
            Request::GroupAdd(tally_protocol::GroupAdd {
                name: "juniors".into(),
                members: vec![],
            }),
            Request::GroupMembers(tally_protocol::GroupMembers {
                name: "juniors".into(),
                add: true,
                members: vec![],
            }),
            Request::GroupRemove(tally_protocol::GroupRef {
                name: "juniors".into(),
            }),
            Request::GroupList,
            Request::PolicyRemove(tally_protocol::RuleRef { id: 1 }),
            Request::PolicyList(tally_protocol::PolicyQuery { feature: None }),
            Request::PolicyCheck(tally_protocol::PolicyCheck {
                feature: "vray".into(),
                user: "ana@studio".into(),
                host: None,
                ip: None,
            }),
            Request::Figures(StatusQuery { feature: None }),
        ];
        for request in &requests {
            assert_eq!(Action::of_request(request).as_str(), request.name());
        }
    }

    #[test]
    fn outcomes_are_ok_or_the_error_code() {
        assert_eq!(AuditOutcome::Ok.as_str(), "ok");
        assert_eq!(AuditOutcome::parse("ok"), Some(AuditOutcome::Ok));
        for code in ErrorCode::ALL {
            let outcome = AuditOutcome::Refused(code);
            assert_eq!(outcome.as_str(), code.as_str());
            assert_eq!(AuditOutcome::parse(code.as_str()), Some(outcome));
        }
        assert_eq!(AuditOutcome::Refused(ErrorCode::NoSeat).as_str(), "no_seat");
        assert_eq!(AuditOutcome::parse("fine"), None);
    }

    #[test]
    fn every_notification_kind_keeps_its_stored_text() {
        let texts: Vec<&str> = NotificationKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            texts,
            [
                "user_limit_exceeded",
                "entitlement_expiring",
                "entitlement_expired",
                "pool_exhausted",
                "assignment_changed",
                "user_removed",
                "leader_changed",
            ]
        );
        for kind in NotificationKind::ALL {
            assert_eq!(NotificationKind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
    }
}
