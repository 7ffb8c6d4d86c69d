//! The messages of the protocol.
//!
//! A client opens with [`Hello`] and the server answers [`Welcome`]; the client then sends
//! [`Authenticate`]. After that the client sends [`ClientMessage::Request`]s, each with an id
//! the server echoes in its [`ServerMessage::Response`]; requests may be pipelined. Times are
//! milliseconds since the Unix epoch (UTC).
//!
//! Append-only: never reorder or remove a variant, never change a field.

use serde::{Deserialize, Serialize};

use crate::bulk::{Bulk, BulkOutcome, BulkRows, UserSeen};
use crate::credits::{
    Consume, Consumed, CreditsAdd, MeterInfo, MeterQuery, MeterUsageQuery, MeterUsageRow,
    PurchaseInfo, QuotaInfo, QuotaRef, QuotaSet,
};
use crate::notify::{NotifyStatus, SinkOutcome};
use crate::policy::{
    FeatureFigures, GroupAdd, GroupInfo, GroupMembers, GroupRef, PolicyAdd, PolicyCheck,
    PolicyDecision, PolicyQuery, RuleAdded, RuleInfo, RuleRef,
};
use crate::report::{UsageQuery, UsageRow, UserUsageRow, UsersQuery};
use crate::{ClientId, ErrorBody, ErrorCode, LeaseId, RequestId};

/// Milliseconds since the Unix epoch, UTC.
pub type UnixMillis = i64;

/// Everything a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    Hello(Hello),
    Authenticate(Authenticate),
    Request { id: u32, body: Request },
}

/// Everything the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    Welcome(Welcome),
    Authenticated(Authenticated),
    Response {
        id: u32,
        outcome: Outcome,
    },
    /// A connection-level refusal (wrong version, request before authentication, bad frame);
    /// the server closes the connection after sending it.
    Error(ErrorBody),
    /// How a queued checkout ended (SPEC R17), sent by the server unasked to the connection
    /// of the client instance that queued it, once the change is committed.
    Queue(QueueNotice),
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Ok(Response),
    Err(ErrorBody),
    /// A standby's answer (SPEC R15) to any request but `ServerInfo` and `ServerNodes`: the
    /// request was not applied, so it is always safe to send it again, to the leader.
    NotLeader(NotLeader),
}

impl Outcome {
    /// The answer as a result: a redirect is the error [`ErrorCode::NotLeader`].
    pub fn into_result(self) -> Result<Response, ErrorBody> {
        match self {
            Outcome::Ok(response) => Ok(response),
            Outcome::Err(err) => Err(err),
            Outcome::NotLeader(redirect) => Err(redirect.into()),
        }
    }
}

/// Where a standby sends a client: the request was not applied here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotLeader {
    /// The leader's advertised address, `HOST:PORT` or `[V6]:PORT`; `None` while no leader
    /// is known (one is being elected).
    pub leader: Option<String>,
    /// A sentence a person can act on.
    pub message: String,
}

impl From<NotLeader> for ErrorBody {
    /// For code that reports errors as an [`ErrorBody`]: code `not_leader`, the same message.
    fn from(redirect: NotLeader) -> Self {
        ErrorBody::new(ErrorCode::NotLeader, redirect.message)
    }
}

/// The first frame from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u16,
    pub client: ClientInfo,
}

/// Who is connecting: shown to admins as a lease's holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The program, e.g. `tally-cli 0.1.0` or an application's name.
    pub agent: String,
    /// The host name of the machine the client runs on.
    pub host: String,
    /// The client instance; leases belong to it and it resumes them after a reconnect.
    pub instance: ClientId,
    /// The machine id (`/etc/machine-id`), which borrowed seats are bound to.
    pub machine_id: String,
    /// The client's process id, for admins tracking down a holder.
    pub pid: u32,
}

/// The server's answer to a `Hello` it accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u16,
    /// Stable id of this server's data directory.
    pub server_id: String,
    /// The server's Ed25519 public key, which signs borrow tokens.
    pub signing_key: Vec<u8>,
    /// How often the client must heartbeat.
    pub heartbeat_interval_ms: u64,
    /// How long a lease lives without a heartbeat.
    pub lease_ttl_ms: u64,
    /// The server's software version.
    pub server_version: String,
}

/// The client's credential, sent once after `Welcome`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Authenticate {
    pub token: String,
}

impl std::fmt::Debug for Authenticate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticate { token: *** }")
    }
}

/// Sent when a token is accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Authenticated {
    pub username: String,
    pub role: Role,
}

/// A user's role (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Owner,
    Admin,
    Member,
    Guest,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Guest => "guest",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            "guest" => Some(Role::Guest),
            _ => None,
        }
    }

    /// Owners and admins may manage the pool.
    pub fn is_admin(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// A request, after authentication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Renews every lease this connection holds.
    Heartbeat,
    Checkout(Checkout),
    Checkin(Checkin),
    /// Binds leases granted to this client instance on an earlier connection to this one.
    Resume(Resume),
    Status(StatusQuery),
    Leases(LeasesQuery),
    EntitlementAdd(NewEntitlement),
    EntitlementList(EntitlementQuery),
    EntitlementRemove(EntitlementRemove),
    /// An admin's forced check-in of someone's lease.
    Release(Release),
    ServerInfo,
    /// Who am I: my account, my assignments, my leases.
    Whoami,
    UserAdd(UserAdd),
    UserList,
    /// Mint another token for a user.
    UserToken(UserRef),
    UserDeactivate(UserRef),
    UserActivate(UserRef),
    UserRemove(UserRef),
    Assign(Assign),
    Revoke(Revoke),
    Audit(AuditQuery),
    /// Borrow seats for offline use.
    Borrow(Borrow),
    /// Give a borrowed lease back before it ends.
    Return(Return),
    /// Mints a token with a label (SPEC R22); answered with [`Response::TokenIssued`].
    TokenMint(TokenMint),
    /// Lists a user's tokens, never the tokens themselves.
    TokenList(UserRef),
    /// Revokes one token by id; its open connections end at once.
    TokenRevoke(TokenRevoke),
    /// Borrow seats for offline use, with a request id: a retry returns the same lease and
    /// token (R4). Clients send this rather than `Borrow`.
    BorrowOnce(BorrowOnce),
    /// One page of the audit log, newest first (`Audit` answers only the first page).
    AuditPage(AuditPageQuery),
    /// One page of the lease listing (`Leases` answers only the first page).
    LeasesPage(LeasesPageQuery),
    /// The nodes of a cluster and their roles (admins); answered with [`Response::Nodes`],
    /// by standbys too.
    ServerNodes,
    /// One page of the seats assigned by name (admins: everyone's; members and guests: their
    /// own); answered with [`Response::Assignments`].
    Assignments(AssignmentsQuery),
    /// One page of the leases with what their holders said of themselves (program, pid,
    /// address), for `status --all`; answered with [`Response::Holders`].
    HoldersPage(LeasesPageQuery),
    /// `Assign`, answered with [`Response::AssignmentChange`]: the assignments it touched and
    /// the user's assignments after it. Clients send this rather than `Assign`.
    AssignWithTotals(Assign),
    /// `Revoke`, answered with [`Response::AssignmentChange`]. Clients send this rather than
    /// `Revoke`.
    RevokeWithTotals(Revoke),
    /// Changes an entitlement (renewals and corrections); answered with
    /// [`Response::EntitlementUpdated`].
    EntitlementUpdate(EntitlementUpdate),
    /// Removes an entitlement, refusing to end leases unless `force`; answered with
    /// [`Response::EntitlementDeleted`]. Clients send this rather than `EntitlementRemove`,
    /// which ends them.
    EntitlementDelete(EntitlementDelete),
    /// An admin's forced check-in of the online leases a pattern selects: an id prefix, or a
    /// user, host and feature (like `lmremove`); answered with [`Response::ReleasedLeases`].
    ReleaseMatching(ReleaseMatching),
    /// Makes a checkout of a feature also take a seat of another for the same client
    /// instance (SPEC R18; admins); answered with [`Response::Features`].
    FeatureRequire(FeatureRequirement),
    /// Drops a prerequisite (admins); answered with [`Response::Features`].
    FeatureUnrequire(FeatureRequirement),
    /// Every feature with prerequisites and what it requires; answered with
    /// [`Response::Features`].
    FeatureList,
    /// Creates a group (SPEC §8; admins); answered with [`Response::Group`].
    GroupAdd(GroupAdd),
    /// Adds or removes members of a group (admins); answered with [`Response::Group`].
    GroupMembers(GroupMembers),
    /// Every group (admins); answered with [`Response::Groups`].
    GroupList,
    /// Removes a group no rule uses (admins); answered with [`Response::GroupRemoved`].
    GroupRemove(GroupRef),
    /// Adds a rule to a feature, or says what it would do (R16; admins); answered with
    /// [`Response::RuleAdded`].
    PolicyAdd(PolicyAdd),
    /// The rules of a feature or of all (admins); answered with [`Response::Rules`].
    PolicyList(PolicyQuery),
    /// Removes a rule (admins); answered with [`Response::RuleRemoved`].
    PolicyRemove(RuleRef),
    /// How the rules decide for one holder (admins); answered with
    /// [`Response::PolicyDecision`].
    PolicyCheck(PolicyCheck),
    /// `Status` with the seats each feature's reserves keep; answered with
    /// [`Response::Figures`]. Clients send it instead of `Status`.
    Figures(StatusQuery),
    /// A checkout that waits in the feature's queue when no seat is free (SPEC R17):
    /// answered with [`Response::Lease`] when a seat is free now, else with
    /// [`Response::Queued`], and the grant (or the end of the wait) comes later as
    /// [`ServerMessage::Queue`]. A retry with the same request id returns the lease or the
    /// place, so a client resends it after a reconnect.
    CheckoutWait(CheckoutWait),
    /// Leaves the queue: the client gave up the wait of this request id; answered with
    /// [`Response::QueueCancelled`].
    QueueCancel(QueueCancel),
    /// The queue of one feature or of all: admins see every entry, others their own;
    /// answered with [`Response::Queue`].
    Queue(QueueQuery),
    /// Every row of a bulk file (SPEC R19; admins), applied row by row in one commit;
    /// answered with [`Response::Bulk`].
    Bulk(Bulk),
    /// How the delivery of notifications to each sink stands (R20; admins); answered with
    /// [`Response::NotifyStatus`].
    NotifyStatus,
    /// Sends one notification of kind `test` straight to every sink, not through the
    /// outbox (R20; admins); answered with [`Response::NotifyTested`].
    NotifyTest,
    /// `UserList` with each user's last sign-in (admins); answered with
    /// [`Response::UsersSeen`]. Clients send it for `tally user list --csv`.
    UsersSeen,
    /// Usage per feature and period (SPEC §10; admins); answered with
    /// [`Response::Usage`].
    ReportUsage(UsageQuery),
    /// Usage per user and feature (SPEC §10; admins); answered with
    /// [`Response::UserUsage`].
    ReportUsers(UsersQuery),
    /// Credits bought into a meter's pool (SPEC §11; admins); answered with
    /// [`Response::Purchase`].
    CreditsAdd(CreditsAdd),
    /// Each meter's figures; answered with [`Response::Meters`].
    CreditsStatus(MeterQuery),
    /// A user's quota of a meter, or unlimited access (admins); answered with
    /// [`Response::Quota`].
    QuotaSet(QuotaSet),
    /// Takes a user's access to a meter away (admins); answered with [`Response::Quota`].
    QuotaRemove(QuotaRef),
    /// Users' access to meters: admins see everyone's, others their own; answered with
    /// [`Response::Quotas`].
    QuotaList(MeterQuery),
    /// Consumes credits (R21): exactly once per request id, a retry answered with the first
    /// answer; answered with [`Response::Consumed`].
    Consume(Consume),
    /// Credits consumed per meter, period and user (SPEC §10, §11; admins); answered with
    /// [`Response::MeterUsage`].
    ReportMeters(MeterUsageQuery),
}

impl Request {
    /// A short name for logs and the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Heartbeat => "heartbeat",
            Request::Checkout(_) => "checkout",
            Request::Checkin(_) => "checkin",
            Request::Resume(_) => "resume",
            Request::Status(_) => "status",
            Request::Leases(_) => "leases",
            Request::EntitlementAdd(_) => "entitlement_add",
            Request::EntitlementList(_) => "entitlement_list",
            Request::EntitlementRemove(_) => "entitlement_remove",
            Request::Release(_) => "release",
            Request::ServerInfo => "server_info",
            Request::Whoami => "whoami",
            Request::UserAdd(_) => "user_add",
            Request::UserList => "user_list",
            Request::UserToken(_) => "user_token",
            Request::UserDeactivate(_) => "user_deactivate",
            Request::UserActivate(_) => "user_activate",
            Request::UserRemove(_) => "user_remove",
            Request::Assign(_) => "assign",
            Request::Revoke(_) => "revoke",
            Request::Audit(_) => "audit",
            Request::Borrow(_) => "borrow",
            Request::Return(_) => "return",
            Request::TokenMint(_) => "token_mint",
            Request::TokenList(_) => "token_list",
            Request::TokenRevoke(_) => "token_revoke",
            Request::BorrowOnce(_) => "borrow",
            Request::AuditPage(_) => "audit",
            Request::LeasesPage(_) => "leases",
            Request::ServerNodes => "server_nodes",
            Request::Assignments(_) => "assignments",
            Request::HoldersPage(_) => "leases",
            Request::AssignWithTotals(_) => "assign",
            Request::RevokeWithTotals(_) => "revoke",
            Request::EntitlementUpdate(_) => "entitlement_update",
            Request::EntitlementDelete(_) => "entitlement_remove",
            Request::ReleaseMatching(_) => "release",
            Request::FeatureRequire(_) => "feature_require",
            Request::FeatureUnrequire(_) => "feature_unrequire",
            Request::FeatureList => "feature_list",
            Request::GroupAdd(_) => "group_add",
            Request::GroupMembers(_) => "group_members",
            Request::GroupList => "group_list",
            Request::GroupRemove(_) => "group_remove",
            Request::PolicyAdd(_) => "policy_add",
            Request::PolicyList(_) => "policy_list",
            Request::PolicyRemove(_) => "policy_remove",
            Request::PolicyCheck(_) => "policy_check",
            Request::Figures(_) => "status",
            Request::CheckoutWait(_) => "checkout",
            Request::QueueCancel(_) => "queue_cancel",
            Request::Queue(_) => "queue",
            Request::Bulk(bulk) => match bulk.rows {
                BulkRows::Import(_) => "user_import",
                BulkRows::Remove(_) => "user_remove_csv",
                BulkRows::Deactivate(_) => "user_deactivate_csv",
                BulkRows::Assign(_) => "assign_csv",
                BulkRows::Revoke(_) => "revoke_csv",
            },
            Request::NotifyStatus => "notify_status",
            Request::NotifyTest => "notify_test",
            Request::UsersSeen => "user_list",
            Request::ReportUsage(_) => "report_usage",
            Request::ReportUsers(_) => "report_users",
            Request::CreditsAdd(_) => "credits_add",
            Request::CreditsStatus(_) => "credits_status",
            Request::QuotaSet(_) => "quota_set",
            Request::QuotaRemove(_) => "quota_remove",
            Request::QuotaList(_) => "quota_list",
            Request::Consume(_) => "consume",
            Request::ReportMeters(_) => "report_usage",
        }
    }

    /// Whether the request only reads: a client that got no answer to it knows that nothing
    /// changed.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Status(_)
                | Request::Leases(_)
                | Request::LeasesPage(_)
                | Request::HoldersPage(_)
                | Request::EntitlementList(_)
                | Request::ServerInfo
                | Request::ServerNodes
                | Request::Whoami
                | Request::UserList
                | Request::TokenList(_)
                | Request::Audit(_)
                | Request::AuditPage(_)
                | Request::Assignments(_)
                | Request::FeatureList
                | Request::GroupList
                | Request::PolicyList(_)
                | Request::PolicyCheck(_)
                | Request::Figures(_)
                | Request::Queue(_)
                | Request::UsersSeen
                | Request::NotifyStatus
                | Request::ReportUsage(_)
                | Request::ReportUsers(_)
                | Request::CreditsStatus(_)
                | Request::QuotaList(_)
                | Request::ReportMeters(_)
        )
    }

    /// Whether sending the request twice has the effect of sending it once, so that a client
    /// may resend it after losing the connection.
    pub fn is_idempotent(&self) -> bool {
        !matches!(
            self,
            Request::EntitlementAdd(_)
                | Request::EntitlementRemove(_)
                | Request::Release(_)
                | Request::UserAdd(_)
                | Request::UserToken(_)
                | Request::TokenMint(_)
                | Request::UserRemove(_)
                | Request::Assign(_)
                | Request::Revoke(_)
                | Request::Borrow(_)
                | Request::AssignWithTotals(_)
                | Request::RevokeWithTotals(_)
                | Request::EntitlementUpdate(_)
                | Request::EntitlementDelete(_)
                | Request::ReleaseMatching(_)
                | Request::GroupAdd(_)
                | Request::GroupMembers(_)
                | Request::GroupRemove(_)
                | Request::PolicyAdd(_)
                | Request::PolicyRemove(_)
                | Request::Bulk(_)
                | Request::NotifyTest
                | Request::CreditsAdd(_)
        )
    }
}

/// The answer to a successful request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Heartbeat(HeartbeatAck),
    Lease(LeaseInfo),
    CheckedIn(LeaseId),
    Resumed(Resumed),
    Status(Vec<FeatureStatus>),
    Leases(Vec<LeaseInfo>),
    Entitlement(Entitlement),
    Entitlements(Vec<Entitlement>),
    EntitlementRemoved(u64),
    Released(LeaseId),
    ServerInfo(ServerInfo),
    Whoami(Whoami),
    /// A new user and their first token (shown once).
    UserAdded {
        user: UserInfo,
        token: String,
    },
    Users(Vec<UserInfo>),
    /// A new token (shown once).
    Token(String),
    User(UserInfo),
    Assignment(AssignmentInfo),
    /// How many seats were revoked.
    Revoked(u32),
    AuditEvents(Vec<AuditEvent>),
    Borrowed(Borrowed),
    Returned(LeaseId),
    TokenIssued(IssuedToken),
    Tokens(Vec<TokenInfo>),
    TokenRevoked(String),
    AuditPage(AuditPage),
    LeasesPage(LeasesPage),
    /// The answer to `ServerNodes`.
    Nodes(Vec<NodeInfo>),
    /// The answer to `Assignments`.
    Assignments(AssignmentsPage),
    /// The answer to `HoldersPage`.
    Holders(HoldersPage),
    /// The answer to `AssignWithTotals` and `RevokeWithTotals`.
    AssignmentChange(AssignmentChange),
    /// The answer to `EntitlementUpdate`.
    EntitlementUpdated(EntitlementUpdated),
    /// The answer to `EntitlementDelete`.
    EntitlementDeleted(EntitlementDeleted),
    /// The answer to `ReleaseMatching`: the leases released.
    ReleasedLeases(Vec<LeaseId>),
    /// The answer to `FeatureRequire`, `FeatureUnrequire` and `FeatureList`: every feature
    /// with prerequisites, by name, after the change.
    Features(Vec<FeatureRequires>),
    /// The answer to `GroupAdd` and `GroupMembers`: the group after the change.
    Group(GroupInfo),
    /// The answer to `GroupList`: every group, by name.
    Groups(Vec<GroupInfo>),
    /// The answer to `GroupRemove`: the name of the group removed.
    GroupRemoved(String),
    /// The answer to `PolicyAdd`: the rule (stored unless a dry run) and its effect.
    RuleAdded(RuleAdded),
    /// The answer to `PolicyList`: rules by feature, then id.
    Rules(Vec<RuleInfo>),
    /// The answer to `PolicyRemove`: the id of the rule removed.
    RuleRemoved(u64),
    /// The answer to `PolicyCheck`.
    PolicyDecision(PolicyDecision),
    /// The answer to `Figures`.
    Figures(Vec<FeatureFigures>),
    /// The answer to `CheckoutWait` when no seat was free: the checkout waits in the queue.
    Queued(QueuePlace),
    /// The answer to `Queue`: the entries, each feature's in the order they are served.
    Queue(Vec<QueueEntry>),
    /// The answer to `QueueCancel`: whether an entry was waiting (and now is not).
    QueueCancelled(bool),
    /// The answer to `Bulk`: how many rows applied, the rows refused and the new tokens.
    Bulk(BulkOutcome),
    /// The answer to `NotifyStatus`.
    NotifyStatus(NotifyStatus),
    /// The answer to `NotifyTest`: the outcome at each sink, the log first.
    NotifyTested(Vec<SinkOutcome>),
    /// The answer to `UsersSeen`: every user, by username, with their last sign-in.
    UsersSeen(Vec<UserSeen>),
    /// The answer to `ReportUsage`: each feature's periods in order, features by name.
    Usage(Vec<UsageRow>),
    /// The answer to `ReportUsers`: by user, then feature.
    UserUsage(Vec<UserUsageRow>),
    /// The answer to `CreditsAdd`.
    Purchase(PurchaseInfo),
    /// The answer to `CreditsStatus`: meters by name.
    Meters(Vec<MeterInfo>),
    /// The answer to `QuotaSet` and `QuotaRemove`: the user's access after the change.
    Quota(QuotaInfo),
    /// The answer to `QuotaList`: by meter, then user.
    Quotas(Vec<QuotaInfo>),
    /// The answer to `Consume`.
    Consumed(Consumed),
    /// The answer to `ReportMeters`: by meter, period, then user.
    MeterUsage(Vec<MeterUsageRow>),
}

/// Check out `seats` seats of `feature`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkout {
    /// Chosen by the client; a retry with the same id returns the same lease.
    pub request_id: RequestId,
    pub feature: String,
    pub seats: u32,
}

/// Give a lease back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkin {
    pub lease: LeaseId,
}

/// Resume leases after a reconnect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    pub leases: Vec<LeaseId>,
}

/// The answer to `Resume`: the leases now bound to this connection, and those that ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resumed {
    pub resumed: Vec<LeaseInfo>,
    pub ended: Vec<EndedLease>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// How many leases were renewed.
    pub renewed: u32,
    /// Leases of this connection that ended since the last heartbeat, and why.
    pub ended: Vec<EndedLease>,
}

/// A lease that is no longer held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndedLease {
    pub lease: LeaseId,
    pub reason: EndReason,
}

/// Why a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EndReason {
    /// The holder checked it in.
    CheckedIn,
    /// Not renewed within the lease's time to live, or its entitlement expired.
    Expired,
    /// An admin revoked the seats it was drawn from, or removed its entitlement.
    Revoked,
    /// An admin released it (forced check-in).
    Released,
    /// The holder's account was deactivated.
    Deactivated,
    /// The server no longer knows the lease (e.g. it ended before a restart).
    Unknown,
    /// Another client instance of the same user resumed it.
    Moved,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::CheckedIn => "checked_in",
            EndReason::Expired => "expired",
            EndReason::Revoked => "revoked",
            EndReason::Released => "released",
            EndReason::Deactivated => "deactivated",
            EndReason::Unknown => "unknown",
            EndReason::Moved => "moved",
        }
    }
}

/// Which seats of the pool a lease holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LeaseSource {
    Floating,
    /// Seats assigned to the holder by name: the assignment's id.
    Assignment(u64),
}

/// Whether a lease is heartbeated or borrowed for offline use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LeaseKind {
    Online,
    Borrowed,
}

impl LeaseKind {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "online" => Some(Self::Online),
            "borrowed" => Some(Self::Borrowed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Online => "online",
            LeaseKind::Borrowed => "borrowed",
        }
    }
}

/// A checked-out seat (or seats) as the server reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: LeaseId,
    pub feature: String,
    pub seats: u32,
    pub user: String,
    pub host: String,
    pub kind: LeaseKind,
    pub source: LeaseSource,
    pub granted_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// Ask for the status of one feature, or of all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusQuery {
    pub feature: Option<String>,
}

/// The status figures of one feature (SPEC §1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureStatus {
    pub feature: String,
    pub total: u32,
    pub assigned: u32,
    pub floating: u32,
    pub in_use: u32,
    pub borrowed: u32,
    pub available: u32,
    pub queued: u32,
}

/// List leases, optionally of one feature or one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeasesQuery {
    pub feature: Option<String>,
    pub user: Option<String>,
}

/// Whether an entitlement was bought or is a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntitlementKind {
    Standard,
    Trial,
}

impl EntitlementKind {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "standard" => Some(Self::Standard),
            "trial" => Some(Self::Trial),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EntitlementKind::Standard => "standard",
            EntitlementKind::Trial => "trial",
        }
    }
}

/// One purchase of a feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlement {
    pub id: u64,
    pub feature: String,
    pub seats: u32,
    pub starts_at: UnixMillis,
    pub expires_at: Option<UnixMillis>,
    pub kind: EntitlementKind,
    pub borrowable: bool,
    pub max_borrow_secs: u64,
    /// Free text, e.g. the order number.
    pub reference: String,
}

/// Add an entitlement. Absent times mean "now" and "never".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEntitlement {
    pub feature: String,
    pub seats: u32,
    pub starts_at: Option<UnixMillis>,
    pub expires_at: Option<UnixMillis>,
    pub kind: EntitlementKind,
    pub borrowable: bool,
    /// Absent: the default of 168 hours.
    pub max_borrow_secs: Option<u64>,
    pub reference: String,
}

/// List entitlements, optionally of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntitlementQuery {
    pub feature: Option<String>,
}

/// Remove an entitlement by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntitlementRemove {
    pub id: u64,
}

/// Force the check-in of a lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub lease: LeaseId,
}

/// What `tally server info` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub id: String,
    pub version: String,
    pub protocol: u16,
    /// `sqlite` or `postgres`.
    pub store: String,
    pub uptime_secs: u64,
    pub connections: u64,
    /// This node's place in a PostgreSQL cluster (SPEC §7); `None` on a single SQLite node.
    /// Added after the others: a client built before it reads the fields it knows and
    /// skips the rest of the frame.
    pub cluster: Option<ClusterInfo>,
    /// The address the server listens on, as bound (`0.0.0.0:27010`). Added after
    /// `cluster`, like it for older clients.
    pub listen: String,
    /// `leases.ttl`: how long a lease lives without a heartbeat. Added with `listen`.
    pub lease_ttl_ms: u64,
}

/// A node's role in a cluster (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeRole {
    /// Holds the pool and serves it.
    Leader,
    /// Answers `ServerInfo` and `ServerNodes`, and redirects everything else to the leader.
    Standby,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Leader => "leader",
            NodeRole::Standby => "standby",
        }
    }
}

/// The answering node's place in its cluster, part of [`ServerInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// This node's id, made at its first start and kept in its data directory.
    pub node: String,
    pub role: NodeRole,
    /// The epoch this node knows: it grows by one at every change of leader.
    pub epoch: i64,
    /// The leader's advertised address, `HOST:PORT`; `None` while no leader is known.
    pub leader: Option<String>,
}

/// One node of a cluster as `server nodes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id.
    pub id: String,
    /// Where clients reach it (its advertised address), `HOST:PORT`.
    pub address: String,
    pub role: NodeRole,
    /// The epoch the answering node reports for it: for the leader, the epoch it leads
    /// under.
    pub epoch: i64,
    /// Its last heartbeat in the database (the database's clock).
    pub last_seen: UnixMillis,
}

/// Whether a user may sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UserState {
    Active,
    Deactivated,
}

impl UserState {
    pub fn as_str(self) -> &'static str {
        match self {
            UserState::Active => "active",
            UserState::Deactivated => "deactivated",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "deactivated" => Some(Self::Deactivated),
            _ => None,
        }
    }
}

/// A user as admins see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub username: String,
    pub name: String,
    pub role: Role,
    pub state: UserState,
    /// Seats assigned to the user by name (suspended while deactivated).
    pub assigned_seats: u32,
}

/// Add a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserAdd {
    pub username: String,
    pub name: String,
    pub role: Role,
}

/// Names a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRef {
    pub username: String,
}

/// Assign seats of a feature to a user by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assign {
    pub username: String,
    pub feature: String,
    pub seats: u32,
    /// The entitlement to draw from; absent: the active one expiring last that has room.
    pub entitlement: Option<u64>,
    /// Take the seats from this user's assignment instead of the floating pool.
    pub from: Option<String>,
    pub expires_at: Option<UnixMillis>,
}

/// Revoke seats of a user's assignments of a feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revoke {
    pub username: String,
    pub feature: String,
    /// Absent: all of them.
    pub seats: Option<u32>,
}

/// Seats of one entitlement given by name to one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentInfo {
    pub id: u64,
    pub user: String,
    pub feature: String,
    pub seats: u32,
    pub entitlement: u64,
    pub expires_at: Option<UnixMillis>,
}

/// What `whoami` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Whoami {
    pub user: UserInfo,
    pub assignments: Vec<AssignmentInfo>,
    pub leases: Vec<LeaseInfo>,
}

/// Query the audit log; every filter is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditQuery {
    pub since: Option<UnixMillis>,
    /// Events by this user or about them.
    pub user: Option<String>,
    pub feature: Option<String>,
    /// At most this many, newest first (the server caps it).
    pub limit: Option<u32>,
}

/// One line of the audit log (R11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub at: UnixMillis,
    /// The username, or `system`.
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub feature: Option<String>,
    /// `ok`, or the error code of a refusal.
    pub outcome: String,
    pub reason: String,
}

/// Borrow `seats` seats of `feature` for `duration_secs`, bound to this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Borrow {
    pub feature: String,
    pub seats: u32,
    pub duration_secs: u64,
    /// The machine the token is bound to (`/etc/machine-id` or `TALLY_MACHINE_ID`).
    pub machine_id: String,
}

/// Borrow `seats` seats of `feature` for `duration_secs`, bound to this machine; sent again
/// with the same `request_id` after a lost answer, it returns the same lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BorrowOnce {
    /// Chosen by the client; a retry with the same id (and machine) returns the same lease.
    pub request_id: RequestId,
    pub feature: String,
    pub seats: u32,
    pub duration_secs: u64,
    /// The machine the token is bound to (`/etc/machine-id`; `TALLY_MACHINE_ID` only where
    /// the machine has none).
    pub machine_id: String,
}

/// A granted borrow: the lease, and the signed token the client verifies offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Borrowed {
    pub lease: LeaseInfo,
    pub token: String,
}

/// Return a borrowed lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Return {
    pub lease: LeaseId,
}

/// A new token for a user, with a label to tell it from their others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenMint {
    pub username: String,
    pub label: String,
}

/// A token just minted: shown once, stored only as a hash.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuedToken {
    /// The token's id, for `user tokens` and `user token revoke`.
    pub id: String,
    pub token: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuedToken {{ id: {}, token: *** }}", self.id)
    }
}

/// What is known of a token, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub label: String,
    pub created_at: UnixMillis,
    /// The last sign-in with it, to the minute.
    pub last_used: Option<UnixMillis>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRevoke {
    pub id: String,
}

/// Ask for one page of the audit log, newest first. A client reads the whole log by asking
/// again with `before` set to the `next` of the page it got, until `next` is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditPageQuery {
    /// The filters; `limit` is the most events on this page (the server caps it, and also
    /// ends a page early to keep its answer small).
    pub query: AuditQuery,
    /// Only events older than this cursor (the `next` of the page before); absent: from the
    /// newest.
    pub before: Option<u64>,
}

/// One page of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    /// Newest first.
    pub events: Vec<AuditEvent>,
    /// The cursor to ask for the next page with; absent when no older event matches.
    pub next: Option<u64>,
}

/// Where a page of leases ends: leases are listed newest grant first, then by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseCursor {
    pub granted_at: UnixMillis,
    pub id: LeaseId,
}

/// Ask for one page of leases. A client lists them all by asking again with `after` set to
/// the `next` of the page it got, until `next` is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeasesPageQuery {
    /// The filters.
    pub query: LeasesQuery,
    /// Only leases listed after this cursor (the `next` of the page before); absent: from
    /// the first.
    pub after: Option<LeaseCursor>,
    /// The most leases on this page (the server caps it).
    pub limit: Option<u32>,
}

/// One page of leases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeasesPage {
    /// Newest grant first, then by id.
    pub leases: Vec<LeaseInfo>,
    /// The cursor to ask for the next page with; absent when this page is the last.
    pub next: Option<LeaseCursor>,
}

/// Ask for one page of the seats assigned by name. A client lists them all by asking again
/// with `after` set to the `next` of the page it got, until `next` is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignmentsQuery {
    /// Only this user's (members and guests may name only themselves).
    pub user: Option<String>,
    /// Only this feature's.
    pub feature: Option<String>,
    /// Only assignments with a larger id (the `next` of the page before); absent: from the
    /// first.
    pub after: Option<u64>,
    /// The most assignments on this page (the server caps it).
    pub limit: Option<u32>,
}

/// One assignment as `tally assignments` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentEntry {
    pub assignment: AssignmentInfo,
    /// Its user is deactivated: the seats are back in the floating pool until the user is
    /// activated again.
    pub suspended: bool,
    /// Seats of it held by online leases now.
    pub in_use: u32,
    /// Seats of it borrowed for offline use now.
    pub borrowed: u32,
}

/// One page of assignments, by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentsPage {
    pub assignments: Vec<AssignmentEntry>,
    /// The cursor to ask for the next page with; absent when this page is the last.
    pub next: Option<u64>,
}

/// A lease with what its holder said of itself, for the `lmstat -a` view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldLease {
    pub lease: LeaseInfo,
    /// The program holding it, as its client named itself (`tally-cli 0.1.0`, an
    /// application's name).
    pub program: String,
    /// The holding process's id on its host.
    pub pid: u32,
    /// The IP address its client connected from.
    pub address: String,
}

/// One page of leases with their holders, in the order of [`LeasesPage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldersPage {
    pub holders: Vec<HeldLease>,
    /// The cursor to ask for the next page with; absent when this page is the last.
    pub next: Option<LeaseCursor>,
}

/// What an assignment or revocation changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentChange {
    /// How many seats were assigned or revoked.
    pub seats: u32,
    /// The assignments the request changed, as they are now (`seats` 0: it ended): the
    /// user's, and with `from` the other user's too.
    pub touched: Vec<AssignmentInfo>,
    /// Every assignment of the user after the change, all features.
    pub assignments: Vec<AssignmentInfo>,
}

/// Change an entitlement: each field given replaces the entitlement's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntitlementUpdate {
    pub id: u64,
    pub seats: Option<u32>,
    pub starts_at: Option<UnixMillis>,
    /// `Some(None)`: it never ends.
    pub expires_at: Option<Option<UnixMillis>>,
    pub borrowable: Option<bool>,
    pub max_borrow_secs: Option<u64>,
    pub reference: Option<String>,
    /// End the newest online leases the smaller pool cannot hold instead of refusing.
    pub force: bool,
}

/// An entitlement as changed, and the leases the change ended (with `force`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementUpdated {
    pub entitlement: Entitlement,
    pub ended: Vec<LeaseId>,
}

/// Remove an entitlement by id; one whose removal would end leases only with `force`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntitlementDelete {
    pub id: u64,
    pub force: bool,
}

/// An entitlement removed, and the leases its removal ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementDeleted {
    pub id: u64,
    pub ended: Vec<LeaseId>,
}

/// Which online leases an admin releases: one lease by id or unique prefix
/// ([`LeasePattern`]), or every lease of a user and/or host, optionally of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseMatching {
    /// A lease id, a prefix of one, or `PREFIX...SUFFIX`; absent: select by the others.
    pub lease: Option<String>,
    pub user: Option<String>,
    pub host: Option<String>,
    pub feature: Option<String>,
}

/// A prerequisite: a checkout of `feature` also takes a seat of `requires` (SPEC R18).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureRequirement {
    pub feature: String,
    pub requires: String,
}

/// A feature and the features a checkout of it also takes a seat of, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureRequires {
    pub feature: String,
    pub requires: Vec<String>,
}

/// A checkout that waits for a seat in the feature's queue (SPEC R17). `Checkout` itself
/// never changes (the wire); this wraps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckoutWait {
    pub checkout: Checkout,
    /// How long to wait in the queue, in seconds; `None`: no limit. When it passes
    /// unserved the wait ends with `queue_timeout`.
    pub wait_secs: Option<u64>,
}

/// Leave the queue: the wait of this checkout's request id is given up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCancel {
    pub request_id: RequestId,
}

/// List the queue of one feature, or of all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueQuery {
    pub feature: Option<String>,
}

/// Where a waiting checkout stands in its feature's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePlace {
    pub request_id: RequestId,
    pub feature: String,
    pub seats: u32,
    /// 1 for the first entry served.
    pub position: u32,
    /// When it joined the queue.
    pub since: UnixMillis,
    /// When the wait ends unserved; `None`: no limit.
    pub deadline: Option<UnixMillis>,
}

/// One waiting checkout, as `tally queue` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub feature: String,
    pub seats: u32,
    pub user: String,
    pub host: String,
    /// When it joined the queue.
    pub since: UnixMillis,
    /// 1 for the first entry of its feature served.
    pub position: u32,
}

/// How a queued checkout ended, sent unasked to the client instance that queued it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueNotice {
    /// The request id of its `CheckoutWait`.
    pub request_id: RequestId,
    pub outcome: QueueOutcome,
}

/// The end of a wait in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueueOutcome {
    /// A seat was granted: the lease, durable, held by the client instance like any other.
    Granted(LeaseInfo),
    /// The wait ended unserved: `queue_timeout` when its time passed, or why the entry was
    /// dropped (the client was gone for one ttl, the checkout can no longer succeed).
    Ended(ErrorBody),
}
