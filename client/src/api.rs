//! Typed requests: one [`Client`] method per request, each returning the answer's contents.
//!
//! Every method sends one [`Request`] and takes its [`Response`] variant apart here, in one
//! place, so that callers never match on `Response`. An answer of another variant (a server
//! that does not speak this protocol version correctly) is an [`Error::Protocol`] naming the
//! request and what came back. [`Client::call`] stays for requests without a method.

use tally_protocol::{
    Assign, AssignmentChange, AssignmentEntry, AssignmentInfo, AssignmentsPage, AssignmentsQuery,
    AuditPage, AuditPageQuery, Bulk, BulkOutcome, Checkin, CreditsAdd, Entitlement,
    EntitlementDelete, EntitlementDeleted, EntitlementQuery, EntitlementRemove, EntitlementUpdate,
    EntitlementUpdated, FeatureFigures, FeatureRequirement, FeatureRequires, FeatureStatus,
    GroupAdd, GroupInfo, GroupMembers, GroupRef, HeldLease, HoldersPage, IssuedToken, LeaseId,
    LeaseInfo, LeasesPage, LeasesPageQuery, LeasesQuery, MeterInfo, MeterQuery, MeterUsageRow,
    NewEntitlement, NodeInfo, NotifyStatus, PolicyAdd, PolicyCheck, PolicyDecision, PolicyQuery,
    PurchaseInfo, QueueEntry, QueueQuery, QuotaInfo, QuotaRef, QuotaSet, Release, ReleaseMatching,
    Request, Response, Return, Revoke, RuleAdded, RuleInfo, RuleRef, RuleSpec, ServerInfo,
    SinkOutcome, StatusQuery, TokenInfo, TokenMint, TokenRevoke, UserAdd, UserInfo, UserRef,
    UserSeen, Whoami,
};

use crate::{Client, Error};

/// Leases asked for per page by [`Client::leases`]; the server may send fewer.
pub const LEASES_PAGE: u32 = 1000;

/// How much of an unexpected answer an error quotes.
const QUOTED: usize = 200;

/// The contents of `response` when it matches `pattern`, as `value`; any other answer is
/// the error for the `name` request.
macro_rules! answer {
    ($name:expr, $response:expr, $pattern:pat => $value:expr) => {
        match $response {
            $pattern => Ok($value),
            other => Err($crate::api::unexpected($name, &other)),
        }
    };
}
pub(crate) use answer;

/// Sends a request and keeps the answer that matches `pattern`, as `value`.
macro_rules! ask {
    ($client:expr, $request:expr, $pattern:pat => $value:expr) => {{
        let request = $request;
        let name = request.name();
        answer!(name, $client.call(request).await?, $pattern => $value)
    }};
}

/// The error for an answer that does not fit the `name` request, quoting the start of it.
pub(crate) fn unexpected(name: &str, response: &Response) -> Error {
    let mut text = format!("{response:?}");
    if text.len() > QUOTED {
        let mut end = QUOTED;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    Error::Protocol(format!(
        "the server answered the {name} request with something else: {text}"
    ))
}

impl Client {
    /// Seat figures of every feature, or of one.
    pub async fn status(&self, feature: Option<&str>) -> Result<Vec<FeatureStatus>, Error> {
        let query = StatusQuery {
            feature: feature.map(str::to_string),
        };
        ask!(self, Request::Status(query), Response::Status(features) => features)
    }

    /// The status figures with the seats each feature's reserves keep (SPEC R16):
    /// what `tally status` shows.
    pub async fn figures(&self, feature: Option<&str>) -> Result<Vec<FeatureFigures>, Error> {
        let query = StatusQuery {
            feature: feature.map(str::to_string),
        };
        ask!(self, Request::Figures(query), Response::Figures(features) => features)
    }

    /// One page of the lease listing: leases after `query.after`, and the cursor of the
    /// next page when there is one.
    pub async fn leases_page(&self, query: LeasesPageQuery) -> Result<LeasesPage, Error> {
        ask!(self, Request::LeasesPage(query), Response::LeasesPage(page) => page)
    }

    /// Every lease the query selects (admins see everyone's), read page by page.
    pub async fn leases(&self, query: LeasesQuery) -> Result<Vec<LeaseInfo>, Error> {
        let mut leases = Vec::new();
        self.each_leases_page(query, |page| {
            leases.extend(page);
            Ok::<_, Error>(())
        })
        .await?;
        Ok(leases)
    }

    /// Every lease the query selects, handed to `each` a page at a time as the pages come,
    /// so that a long listing can be printed without holding all of it.
    pub async fn each_leases_page<E: From<Error>>(
        &self,
        query: LeasesQuery,
        mut each: impl FnMut(Vec<LeaseInfo>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut after = None;
        loop {
            let page = self
                .leases_page(LeasesPageQuery {
                    query: query.clone(),
                    after,
                    limit: Some(LEASES_PAGE),
                })
                .await?;
            each(page.leases)?;
            match page.next {
                Some(next) if Some(next) != after => after = Some(next),
                _ => return Ok(()),
            }
        }
    }

    /// The leases the query selects, as far as the server's one bounded page of the bare
    /// `Leases` request holds them; [`Client::leases`] reads them all.
    pub async fn leases_first_page(&self, query: LeasesQuery) -> Result<Vec<LeaseInfo>, Error> {
        ask!(self, Request::Leases(query), Response::Leases(leases) => leases)
    }

    /// Checks a lease of this client in, waiting for the answer at most the release
    /// deadline; the id of the lease checked in.
    pub(crate) async fn checkin(&self, lease: LeaseId) -> Result<LeaseId, Error> {
        let request = Request::Checkin(Checkin { lease });
        let response = self.call_within(request, self.release_timeout()).await?;
        answer!("checkin", response, Response::CheckedIn(id) => id)
    }

    /// An admin's forced check-in of someone's lease; the id of the lease released.
    pub async fn release(&self, lease: LeaseId) -> Result<LeaseId, Error> {
        ask!(self, Request::Release(Release { lease }), Response::Released(id) => id)
    }

    /// Gives a borrowed lease back before it ends; the id of the lease returned.
    pub async fn return_borrow(&self, lease: LeaseId) -> Result<LeaseId, Error> {
        ask!(self, Request::Return(Return { lease }), Response::Returned(id) => id)
    }

    /// Adds an entitlement (admins).
    pub async fn add_entitlement(&self, new: NewEntitlement) -> Result<Entitlement, Error> {
        ask!(self, Request::EntitlementAdd(new), Response::Entitlement(entitlement) => entitlement)
    }

    /// The entitlements of every feature, or of one.
    pub async fn entitlements(&self, feature: Option<&str>) -> Result<Vec<Entitlement>, Error> {
        let query = EntitlementQuery {
            feature: feature.map(str::to_string),
        };
        ask!(self, Request::EntitlementList(query), Response::Entitlements(list) => list)
    }

    /// Removes an entitlement by id (admins); the id removed.
    pub async fn remove_entitlement(&self, id: u64) -> Result<u64, Error> {
        let remove = EntitlementRemove { id };
        ask!(self, Request::EntitlementRemove(remove), Response::EntitlementRemoved(id) => id)
    }

    /// The server's id, version, store, uptime and connections, and on a cluster the
    /// answering node's role, epoch and leader. Standbys answer it themselves.
    pub async fn server_info(&self) -> Result<ServerInfo, Error> {
        ask!(self, Request::ServerInfo, Response::ServerInfo(info) => info)
    }

    /// The nodes of the cluster with their roles and last heartbeats (admins). Standbys
    /// answer it themselves; a single SQLite server refuses it as `invalid`.
    pub async fn server_nodes(&self) -> Result<Vec<NodeInfo>, Error> {
        ask!(self, Request::ServerNodes, Response::Nodes(nodes) => nodes)
    }

    /// This client's account, the seats assigned to it and the leases it holds.
    pub async fn whoami(&self) -> Result<Whoami, Error> {
        ask!(self, Request::Whoami, Response::Whoami(me) => me)
    }

    /// Adds a user (admins): the account and its first token, which is shown only now.
    pub async fn add_user(&self, add: UserAdd) -> Result<(UserInfo, String), Error> {
        ask!(self, Request::UserAdd(add), Response::UserAdded { user, token } => (user, token))
    }

    /// Every user (admins).
    pub async fn users(&self) -> Result<Vec<UserInfo>, Error> {
        ask!(self, Request::UserList, Response::Users(users) => users)
    }

    /// Every user with the last sign-in of any of their tokens (admins).
    /// Usage per feature and period from the server's lease history (admins, SPEC §10).
    pub async fn report_usage(
        &self,
        query: tally_protocol::UsageQuery,
    ) -> Result<Vec<tally_protocol::UsageRow>, Error> {
        ask!(self, Request::ReportUsage(query), Response::Usage(rows) => rows)
    }

    /// Usage per user and feature from the server's lease history (admins, SPEC §10).
    pub async fn report_users(
        &self,
        query: tally_protocol::UsersQuery,
    ) -> Result<Vec<tally_protocol::UserUsageRow>, Error> {
        ask!(self, Request::ReportUsers(query), Response::UserUsage(rows) => rows)
    }

    pub async fn users_seen(&self) -> Result<Vec<UserSeen>, Error> {
        ask!(self, Request::UsersSeen, Response::UsersSeen(users) => users)
    }

    /// Applies the rows of a bulk file (admins, SPEC R19), each on its own, in one commit:
    /// how many applied, the rows refused and, for an import asking for them, the new
    /// users' tokens.
    pub async fn bulk(&self, bulk: Bulk) -> Result<BulkOutcome, Error> {
        ask!(self, Request::Bulk(bulk), Response::Bulk(outcome) => outcome)
    }

    /// Mints a labelled token for a user: its id and the token, which is shown only now.
    pub async fn mint_token(&self, mint: TokenMint) -> Result<IssuedToken, Error> {
        ask!(self, Request::TokenMint(mint), Response::TokenIssued(issued) => issued)
    }

    /// A user's tokens: ids, labels and last use, never the tokens themselves.
    pub async fn tokens(&self, username: &str) -> Result<Vec<TokenInfo>, Error> {
        let user = user_ref(username);
        ask!(self, Request::TokenList(user), Response::Tokens(tokens) => tokens)
    }

    /// Revokes a token by id; connections signed in with it end at once. The id revoked.
    pub async fn revoke_token(&self, id: &str) -> Result<String, Error> {
        let revoke = TokenRevoke { id: id.to_string() };
        ask!(self, Request::TokenRevoke(revoke), Response::TokenRevoked(id) => id)
    }

    /// Deactivates a user (admins): their leases end, their assigned seats return.
    pub async fn deactivate_user(&self, username: &str) -> Result<UserInfo, Error> {
        let user = user_ref(username);
        ask!(self, Request::UserDeactivate(user), Response::User(user) => user)
    }

    /// Activates a user again (admins), restoring their assigned seats.
    pub async fn activate_user(&self, username: &str) -> Result<UserInfo, Error> {
        let user = user_ref(username);
        ask!(self, Request::UserActivate(user), Response::User(user) => user)
    }

    /// Removes a user with no assignments and no borrowed seats (admins).
    pub async fn remove_user(&self, username: &str) -> Result<UserInfo, Error> {
        let user = user_ref(username);
        ask!(self, Request::UserRemove(user), Response::User(user) => user)
    }

    /// Assigns seats of a feature to a user (admins).
    pub async fn assign(&self, assign: Assign) -> Result<AssignmentInfo, Error> {
        ask!(self, Request::Assign(assign), Response::Assignment(assignment) => assignment)
    }

    /// Revokes seats assigned to a user (admins); how many seats were revoked.
    pub async fn revoke(&self, revoke: Revoke) -> Result<u32, Error> {
        ask!(self, Request::Revoke(revoke), Response::Revoked(count) => count)
    }

    /// One page of the audit log, newest first, and the cursor of the next page.
    pub async fn audit_page(&self, query: AuditPageQuery) -> Result<AuditPage, Error> {
        ask!(self, Request::AuditPage(query), Response::AuditPage(page) => page)
    }

    /// Assigns seats of a feature to a user (admins): the assignments it touched and the
    /// user's assignments after it.
    pub async fn assign_with_totals(&self, assign: Assign) -> Result<AssignmentChange, Error> {
        ask!(self, Request::AssignWithTotals(assign), Response::AssignmentChange(change) => change)
    }

    /// Revokes seats assigned to a user (admins): how many, the assignments it took them
    /// from and the user's assignments after it.
    pub async fn revoke_with_totals(&self, revoke: Revoke) -> Result<AssignmentChange, Error> {
        ask!(self, Request::RevokeWithTotals(revoke), Response::AssignmentChange(change) => change)
    }

    /// One page of the seats assigned by name (admins see everyone's, others their own).
    pub async fn assignments_page(
        &self,
        query: AssignmentsQuery,
    ) -> Result<AssignmentsPage, Error> {
        ask!(self, Request::Assignments(query), Response::Assignments(page) => page)
    }

    /// Every assignment of `user` and `feature` (each optional), read page by page.
    pub async fn assignments(
        &self,
        user: Option<&str>,
        feature: Option<&str>,
    ) -> Result<Vec<AssignmentEntry>, Error> {
        let mut all = Vec::new();
        self.each_assignments_page(user, feature, |page| {
            all.extend(page);
            Ok::<_, Error>(())
        })
        .await?;
        Ok(all)
    }

    /// Every assignment of `user` and `feature`, handed to `each` a page at a time.
    pub async fn each_assignments_page<E: From<Error>>(
        &self,
        user: Option<&str>,
        feature: Option<&str>,
        mut each: impl FnMut(Vec<AssignmentEntry>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut after = None;
        loop {
            let page = self
                .assignments_page(AssignmentsQuery {
                    user: user.map(str::to_string),
                    feature: feature.map(str::to_string),
                    after,
                    limit: Some(LEASES_PAGE),
                })
                .await?;
            each(page.assignments)?;
            match page.next {
                Some(next) if Some(next) != after => after = Some(next),
                _ => return Ok(()),
            }
        }
    }

    /// One page of the leases with what their holders said of themselves.
    pub async fn holders_page(&self, query: LeasesPageQuery) -> Result<HoldersPage, Error> {
        ask!(self, Request::HoldersPage(query), Response::Holders(page) => page)
    }

    /// Every lease the query selects with its holder's program, pid and address (admins
    /// see everyone's), read page by page.
    pub async fn holders(&self, query: LeasesQuery) -> Result<Vec<HeldLease>, Error> {
        let mut holders = Vec::new();
        self.each_holders_page(query, |page| {
            holders.extend(page);
            Ok::<_, Error>(())
        })
        .await?;
        Ok(holders)
    }

    /// The leases with their holders, handed to `each` a page at a time.
    pub async fn each_holders_page<E: From<Error>>(
        &self,
        query: LeasesQuery,
        mut each: impl FnMut(Vec<HeldLease>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut after = None;
        loop {
            let page = self
                .holders_page(LeasesPageQuery {
                    query: query.clone(),
                    after,
                    limit: Some(LEASES_PAGE),
                })
                .await?;
            each(page.holders)?;
            match page.next {
                Some(next) if Some(next) != after => after = Some(next),
                _ => return Ok(()),
            }
        }
    }

    /// Changes an entitlement (admins): as it is now, and the leases the change ended.
    pub async fn update_entitlement(
        &self,
        update: EntitlementUpdate,
    ) -> Result<EntitlementUpdated, Error> {
        ask!(self, Request::EntitlementUpdate(update), Response::EntitlementUpdated(updated) => updated)
    }

    /// Removes an entitlement (admins), refusing to end leases unless `force`: the id
    /// removed and the leases ended.
    pub async fn delete_entitlement(
        &self,
        id: u64,
        force: bool,
    ) -> Result<EntitlementDeleted, Error> {
        let delete = EntitlementDelete { id, force };
        ask!(self, Request::EntitlementDelete(delete), Response::EntitlementDeleted(deleted) => deleted)
    }

    /// An admin's forced check-in of the online leases a pattern selects (an id or unique
    /// prefix, or a user and/or host): the leases released.
    pub async fn release_matching(&self, release: ReleaseMatching) -> Result<Vec<LeaseId>, Error> {
        ask!(self, Request::ReleaseMatching(release), Response::ReleasedLeases(ids) => ids)
    }

    /// Makes a checkout of `feature` also take a seat of `requires` (admins, SPEC R18):
    /// every feature's prerequisites after the change.
    pub async fn require_feature(
        &self,
        feature: &str,
        requires: &str,
    ) -> Result<Vec<FeatureRequires>, Error> {
        let requirement = requirement(feature, requires);
        ask!(self, Request::FeatureRequire(requirement), Response::Features(list) => list)
    }

    /// Drops a prerequisite (admins): every feature's prerequisites after the change.
    pub async fn unrequire_feature(
        &self,
        feature: &str,
        requires: &str,
    ) -> Result<Vec<FeatureRequires>, Error> {
        let requirement = requirement(feature, requires);
        ask!(self, Request::FeatureUnrequire(requirement), Response::Features(list) => list)
    }

    /// Every feature with prerequisites, and what it requires.
    pub async fn feature_requirements(&self) -> Result<Vec<FeatureRequires>, Error> {
        ask!(self, Request::FeatureList, Response::Features(list) => list)
    }

    /// The checkouts waiting in the queue of `feature`, or of every feature, each feature's
    /// in the order they are served (admins see every entry, others their own).
    pub async fn queue(&self, feature: Option<&str>) -> Result<Vec<QueueEntry>, Error> {
        let query = QueueQuery {
            feature: feature.map(str::to_string),
        };
        ask!(self, Request::Queue(query), Response::Queue(entries) => entries)
    }
}

/// Groups and policy rules (SPEC §8, R16; admins).
impl Client {
    /// Creates a group with its first members (`user:EMAIL`, `host:GLOB`, `ip:CIDR`).
    pub async fn add_group(&self, name: &str, members: &[String]) -> Result<GroupInfo, Error> {
        let group = GroupAdd {
            name: name.to_string(),
            members: members.to_vec(),
        };
        ask!(self, Request::GroupAdd(group), Response::Group(group) => group)
    }

    /// Adds members to a group (`add`) or removes them: the group after the change.
    pub async fn change_group_members(
        &self,
        name: &str,
        add: bool,
        members: &[String],
    ) -> Result<GroupInfo, Error> {
        let change = GroupMembers {
            name: name.to_string(),
            add,
            members: members.to_vec(),
        };
        ask!(self, Request::GroupMembers(change), Response::Group(group) => group)
    }

    /// Every group, by name.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>, Error> {
        ask!(self, Request::GroupList, Response::Groups(groups) => groups)
    }

    /// Removes a group no rule names.
    pub async fn remove_group(&self, name: &str) -> Result<String, Error> {
        let group = GroupRef {
            name: name.to_string(),
        };
        ask!(self, Request::GroupRemove(group), Response::GroupRemoved(name) => name)
    }

    /// Adds a rule, or with `dry_run` only says what it would do.
    pub async fn add_rule(&self, rule: RuleSpec, dry_run: bool) -> Result<RuleAdded, Error> {
        let add = PolicyAdd { rule, dry_run };
        ask!(self, Request::PolicyAdd(add), Response::RuleAdded(added) => added)
    }

    /// The rules of a feature, or of every feature.
    pub async fn rules(&self, feature: Option<&str>) -> Result<Vec<RuleInfo>, Error> {
        let query = PolicyQuery {
            feature: feature.map(str::to_string),
        };
        ask!(self, Request::PolicyList(query), Response::Rules(rules) => rules)
    }

    /// Removes a rule by id.
    pub async fn remove_rule(&self, id: u64) -> Result<u64, Error> {
        ask!(self, Request::PolicyRemove(RuleRef { id }), Response::RuleRemoved(id) => id)
    }

    /// How the rules of a feature decide for one holder; nothing is taken.
    pub async fn check_policy(&self, check: PolicyCheck) -> Result<PolicyDecision, Error> {
        ask!(self, Request::PolicyCheck(check), Response::PolicyDecision(decision) => decision)
    }
}

fn requirement(feature: &str, requires: &str) -> FeatureRequirement {
    FeatureRequirement {
        feature: feature.to_string(),
        requires: requires.to_string(),
    }
}

fn user_ref(username: &str) -> UserRef {
    UserRef {
        username: username.to_string(),
    }
}

/// The notification outbox (SPEC §9, R20; admins).
impl Client {
    /// How delivery stands: notifications not settled, those a sink gave up on, and each
    /// sink's counts and latest error.
    pub async fn notify_status(&self) -> Result<NotifyStatus, Error> {
        ask!(self, Request::NotifyStatus, Response::NotifyStatus(status) => status)
    }

    /// Sends a test notification straight to every sink: the outcome at each.
    pub async fn notify_test(&self) -> Result<Vec<SinkOutcome>, Error> {
        ask!(self, Request::NotifyTest, Response::NotifyTested(outcomes) => outcomes)
    }
}

/// Metered credits and quotas (SPEC §11, R21); [`Client::consume`] is beside `borrow`.
impl Client {
    /// Buys credits into a meter's pool (admins).
    pub async fn add_credits(&self, add: CreditsAdd) -> Result<PurchaseInfo, Error> {
        ask!(self, Request::CreditsAdd(add), Response::Purchase(purchase) => purchase)
    }

    /// Each meter's figures (purchased, consumed, expired, balance), or one meter's.
    pub async fn credits_status(&self, meter: Option<&str>) -> Result<Vec<MeterInfo>, Error> {
        let query = MeterQuery {
            meter: meter.map(str::to_string),
        };
        ask!(self, Request::CreditsStatus(query), Response::Meters(meters) => meters)
    }

    /// Gives a user a quota of a meter (`Some`) or unlimited access (`None`) (admins).
    pub async fn set_quota(
        &self,
        username: &str,
        meter: &str,
        quota: Option<u64>,
    ) -> Result<QuotaInfo, Error> {
        let set = QuotaSet {
            username: username.to_string(),
            meter: meter.to_string(),
            quota,
        };
        ask!(self, Request::QuotaSet(set), Response::Quota(info) => info)
    }

    /// Takes a user's access to a meter away (admins); what they used stays counted.
    pub async fn remove_quota(&self, username: &str, meter: &str) -> Result<QuotaInfo, Error> {
        let quota = QuotaRef {
            username: username.to_string(),
            meter: meter.to_string(),
        };
        ask!(self, Request::QuotaRemove(quota), Response::Quota(info) => info)
    }

    /// Users' access to meters, by meter then user (admins see everyone's, others their
    /// own).
    pub async fn quotas(&self, meter: Option<&str>) -> Result<Vec<QuotaInfo>, Error> {
        let query = MeterQuery {
            meter: meter.map(str::to_string),
        };
        ask!(self, Request::QuotaList(query), Response::Quotas(quotas) => quotas)
    }

    /// Credits consumed per meter, period and user (admins, SPEC §10, §11); the query's
    /// `feature` names a meter.
    pub async fn report_meters(
        &self,
        query: tally_protocol::UsageQuery,
    ) -> Result<Vec<MeterUsageRow>, Error> {
        ask!(self, Request::ReportMeters(query), Response::MeterUsage(rows) => rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer of the variant asked for is taken apart; any other is a protocol error
    /// naming the request, with a bounded quote of the answer.
    #[test]
    fn an_answer_of_another_variant_is_a_protocol_error_naming_the_request() {
        let pick = |response| -> Result<u32, Error> {
            answer!("revoke", response, Response::Revoked(count) => count)
        };
        assert_eq!(pick(Response::Revoked(3)).unwrap(), 3);
        let err = pick(Response::Users(Vec::new())).unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("the revoke request"), "{text}");
        assert!(text.contains("Users([])"), "{text}");
        let long = Response::TokenRevoked("é".repeat(1000));
        let text = unexpected("token_revoke", &long).to_string();
        assert!(text.len() < 300, "{} bytes", text.len());
        assert!(text.ends_with("..."), "{text}");
    }
}
