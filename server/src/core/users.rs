//! Users: add, list, tokens, deactivate, activate, remove (SPEC R9), and `whoami`.

use std::collections::BTreeMap;

use tally_protocol::{
    validate_username, AssignmentInfo, ErrorBody, ErrorCode, LeaseKind, LeasesQuery, Role, UserAdd,
    UserInfo, UserState, Whoami,
};

use super::capacity::is_active;
use super::checks::{require_admin, username as normalized};
use super::{
    rfc3339, Action, Actor, Assignment, Batch, EndReason, NewToken, NotificationKind, Pool, User,
};

/// The longest display name.
const MAX_NAME: usize = 200;

impl Pool {
    /// Adds a user with a first token. Admins only; past `users.max_active`, `user_limit`
    /// and a `user_limit_exceeded` notification.
    pub fn add_user(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &UserAdd,
        token: NewToken,
        batch: &mut Batch,
    ) -> Result<(UserInfo, String), ErrorBody> {
        self.add_user_with(now, actor, request, Some(token), batch)
            .map(|(user, token)| (user, token.unwrap_or_default()))
    }

    /// [`add_user`](Self::add_user), with a first token only when one is given (a bulk
    /// import asked for no tokens, or a dry run): the token minted, if any.
    pub(super) fn add_user_with(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &UserAdd,
        token: Option<NewToken>,
        batch: &mut Batch,
    ) -> Result<(UserInfo, Option<String>), ErrorBody> {
        self.advance(now, batch);
        let username = normalized(&request.username);
        let checked = self.check_new_user(now, actor, &username, request, batch);
        batch.audit_refusal(now, actor, Action::UserAdd, &username, None, checked)?;
        let user = User {
            id: self.next_user_id,
            username: username.clone(),
            name: request.name.trim().to_string(),
            role: request.role,
            state: UserState::Active,
            created_at: now,
        };
        self.next_user_id += 1;
        batch.next_user_id = Some(self.next_user_id);
        self.insert_user(user.clone());
        batch.upsert_user(user.clone());
        let token = token.map(|token| self.first_token(user.id, token, now, batch));
        let detail = format!("role {}", request.role.as_str());
        batch.audit(now, actor, Action::UserAdd, &username, None, Ok(&detail));
        Ok((self.user_info(&username), token))
    }

    /// A new user's first token, labelled "first".
    fn first_token(&mut self, user: u64, token: NewToken, now: i64, batch: &mut Batch) -> String {
        let record = super::Token {
            id: super::token_id(&token.hash),
            hash: token.hash,
            user,
            label: "first".into(),
            created_at: now,
            last_used: None,
        };
        self.insert_token(record.clone());
        batch.add_token(record);
        token.token
    }

    fn check_new_user(
        &self,
        now: i64,
        actor: &Actor,
        username: &str,
        request: &UserAdd,
        batch: &mut Batch,
    ) -> Result<(), ErrorBody> {
        require_admin(actor, "add users")?;
        validate_username(username).map_err(ErrorBody::invalid)?;
        if request.role == Role::Owner {
            return Err(ErrorBody::invalid(
                "there is exactly one owner; add the user as an admin instead",
            ));
        }
        if request.name.chars().count() > MAX_NAME {
            return Err(ErrorBody::invalid(format!(
                "the name is longer than {MAX_NAME} characters"
            )));
        }
        if request.name.chars().any(char::is_control) {
            return Err(ErrorBody::invalid(
                "the name holds control characters (tabs, line breaks, NUL and the like); give it as plain text",
            ));
        }
        if self.users.contains_key(username) {
            return Err(ErrorBody::new(
                ErrorCode::AlreadyExists,
                format!("a user {username} already exists"),
            ));
        }
        self.check_user_limit(now, username, batch)
    }

    /// Refuses one more active user past `users.max_active`, queueing the notification.
    fn check_user_limit(
        &self,
        now: i64,
        username: &str,
        batch: &mut Batch,
    ) -> Result<(), ErrorBody> {
        let max = self.policy.max_active;
        if max == 0 {
            return Ok(());
        }
        let active = self.active_users;
        if active >= max as usize {
            let message = format!(
                "the server allows {max} active users and has {active}; deactivate someone or raise users.max_active"
            );
            batch.notify(
                now,
                NotificationKind::UserLimitExceeded,
                username,
                None,
                &format!("{username} was refused: {message}"),
            );
            return Err(ErrorBody::new(ErrorCode::UserLimit, message));
        }
        Ok(())
    }

    /// Every user, by username.
    pub fn users(
        &self,
        now: i64,
        actor: &Actor,
        batch: &mut Batch,
    ) -> Result<Vec<UserInfo>, ErrorBody> {
        let checked = require_admin(actor, "list users");
        batch.audit_refusal(now, actor, Action::UserList, "users", None, checked)?;
        Ok(self.users.keys().map(|name| self.user_info(name)).collect())
    }

    /// Deactivates a user: their online leases end (reason `deactivated`) and their
    /// assignments are suspended, the seats going back to the floating pool. Refused while
    /// they hold borrowed seats, and for oneself and the owner.
    pub fn deactivate_user(
        &mut self,
        now: i64,
        actor: &Actor,
        username: &str,
        batch: &mut Batch,
    ) -> Result<UserInfo, ErrorBody> {
        self.advance(now, batch);
        let username = normalized(username);
        let checked = require_admin(actor, "deactivate users")
            .and_then(|()| self.existing(&username))
            .and_then(|()| self.not_self_or_owner(actor, &username, "deactivate"))
            .and_then(|()| self.no_borrows(&username, "deactivate them"));
        batch.audit_refusal(now, actor, Action::UserDeactivate, &username, None, checked)?;
        if self.users[&username].state == UserState::Deactivated {
            return Ok(self.user_info(&username));
        }
        self.end_online_leases_of(
            &username,
            EndReason::Deactivated,
            now,
            &actor.username,
            batch,
        );
        let user = self.users.get_mut(&username).expect("user exists");
        user.state = UserState::Deactivated;
        batch.upsert_user(user.clone());
        self.active_users -= 1;
        batch.sign_outs.push(super::SignOut::User(user.id));
        self.track_user_assignments(&username, false);
        let suspended = self.assigned_seats(&username);
        let detail = format!("{suspended} assigned seats suspended");
        batch.audit(
            now,
            actor,
            Action::UserDeactivate,
            &username,
            None,
            Ok(&detail),
        );
        Ok(self.user_info(&username))
    }

    /// Activates a user and restores their suspended assignments; refused past
    /// `users.max_active` and, naming the feature, where the pool no longer has room.
    pub fn activate_user(
        &mut self,
        now: i64,
        actor: &Actor,
        username: &str,
        batch: &mut Batch,
    ) -> Result<UserInfo, ErrorBody> {
        self.advance(now, batch);
        let username = normalized(username);
        let checked =
            require_admin(actor, "activate users").and_then(|()| self.existing(&username));
        batch.audit_refusal(now, actor, Action::UserActivate, &username, None, checked)?;
        if self.users[&username].state == UserState::Active {
            return Ok(self.user_info(&username));
        }
        let checked = self
            .check_user_limit(now, &username, batch)
            .and_then(|()| self.check_room_to_restore(&username, now));
        batch.audit_refusal(now, actor, Action::UserActivate, &username, None, checked)?;
        let user = self.users.get_mut(&username).expect("user exists");
        user.state = UserState::Active;
        batch.upsert_user(user.clone());
        self.active_users += 1;
        self.track_user_assignments(&username, true);
        let detail = format!("{} assigned seats restored", self.assigned_seats(&username));
        batch.audit(
            now,
            actor,
            Action::UserActivate,
            &username,
            None,
            Ok(&detail),
        );
        Ok(self.user_info(&username))
    }

    /// Whether the floating pool and each entitlement can give back a suspended user's
    /// assignments.
    fn check_room_to_restore(&self, username: &str, now: i64) -> Result<(), ErrorBody> {
        let mut by_feature: BTreeMap<&str, u32> = BTreeMap::new();
        let mut by_entitlement: BTreeMap<u64, u32> = BTreeMap::new();
        for assignment in self.assignments.values().filter(|a| a.user == username) {
            let active_entitlement = self
                .entitlements
                .get(&assignment.entitlement)
                .is_some_and(|e| is_active(e, now));
            if active_entitlement && assignment.expires_at.is_none_or(|end| now < end) {
                *by_feature.entry(&assignment.feature).or_default() += assignment.seats;
                *by_entitlement.entry(assignment.entitlement).or_default() += assignment.seats;
            }
        }
        for (feature, seats) in by_feature {
            let available = self.available(feature, now);
            if seats > available {
                return Err(ErrorBody::new(
                    ErrorCode::NoSeat,
                    format!(
                        "cannot restore {seats} assigned seats of {feature} to {username}: only {available} floating seats of {feature} are free; free some or revoke the assignment first"
                    ),
                ));
            }
        }
        for (entitlement, seats) in by_entitlement {
            let room = self.unassigned(entitlement, now);
            if seats > room {
                let feature = &self.entitlements[&entitlement].feature;
                return Err(ErrorBody::new(
                    ErrorCode::NoSeat,
                    format!(
                        "cannot restore {seats} assigned seats of {feature} to {username}: entitlement {entitlement} has only {room} unassigned"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Removes a user and their tokens. Refused while they have assignments or borrowed
    /// seats, and for oneself and the owner. Their online leases end.
    pub fn remove_user(
        &mut self,
        now: i64,
        actor: &Actor,
        username: &str,
        batch: &mut Batch,
    ) -> Result<UserInfo, ErrorBody> {
        self.advance(now, batch);
        let username = normalized(username);
        let checked = require_admin(actor, "remove users")
            .and_then(|()| self.existing(&username))
            .and_then(|()| self.not_self_or_owner(actor, &username, "remove"))
            .and_then(|()| self.no_assignments(&username))
            .and_then(|()| self.no_borrows(&username, "remove them"));
        batch.audit_refusal(now, actor, Action::UserRemove, &username, None, checked)?;
        let info = self.user_info(&username);
        self.end_online_leases_of(
            &username,
            EndReason::Deactivated,
            now,
            &actor.username,
            batch,
        );
        if let Some(user) = self.users.remove(&username) {
            self.active_users -= usize::from(counted(&user));
            self.user_ids.remove(&user.id);
            self.remove_tokens_of(user.id);
            batch.remove_user(&user);
        }
        batch.audit(now, actor, Action::UserRemove, &username, None, Ok(""));
        batch.notify(
            now,
            NotificationKind::UserRemoved,
            &username,
            None,
            &format!("the account {username} was removed by {}", actor.username),
        );
        Ok(info)
    }

    /// The signed-in user's account, assignments and leases.
    pub fn whoami(
        &mut self,
        now: i64,
        actor: &Actor,
        batch: &mut Batch,
    ) -> Result<Whoami, ErrorBody> {
        let leases = self.list_leases(
            now,
            actor,
            &LeasesQuery {
                feature: None,
                user: Some(actor.username.clone()),
            },
            batch,
        )?;
        self.existing(&actor.username)?;
        Ok(Whoami {
            user: self.user_info(&actor.username),
            assignments: self.assignments_of(&actor.username),
            leases,
        })
    }

    // ----- helpers --------------------------------------------------------------------

    pub(super) fn user_info(&self, username: &str) -> UserInfo {
        let user = &self.users[username];
        UserInfo {
            username: user.username.clone(),
            name: user.name.clone(),
            role: user.role,
            state: user.state,
            assigned_seats: self.assigned_seats(username),
        }
    }

    fn assigned_seats(&self, username: &str) -> u32 {
        self.assignments
            .values()
            .filter(|a| a.user == username)
            .map(|a| a.seats)
            .sum()
    }

    pub(super) fn assignments_of(&self, username: &str) -> Vec<AssignmentInfo> {
        self.assignments
            .values()
            .filter(|a| a.user == username)
            .map(|a| self.assignment_info(a))
            .collect()
    }

    /// An assignment as users see it, with the end it really has (R10).
    pub(super) fn assignment_info(&self, a: &Assignment) -> AssignmentInfo {
        AssignmentInfo {
            id: a.id,
            user: a.user.clone(),
            feature: a.feature.clone(),
            seats: a.seats,
            entitlement: a.entitlement,
            expires_at: self.assignment_end(a),
        }
    }

    pub(super) fn existing(&self, username: &str) -> Result<(), ErrorBody> {
        self.user(username).map(|_| ())
    }

    /// The user of this name, or `not_found`.
    pub(super) fn user(&self, username: &str) -> Result<&User, ErrorBody> {
        self.users.get(username).ok_or_else(|| {
            ErrorBody::not_found(format!("no user {username}; `tally user list` shows them"))
        })
    }

    pub(super) fn insert_user(&mut self, user: User) {
        self.next_user_id = self.next_user_id.max(user.id + 1);
        self.user_ids.insert(user.id, user.username.clone());
        self.active_users += usize::from(counted(&user));
        if let Some(before) = self.users.insert(user.username.clone(), user) {
            self.active_users -= usize::from(counted(&before));
        }
    }

    /// Active users other than the owner, counted afresh (what `active_users` keeps).
    pub(super) fn count_active_users(&self) -> usize {
        self.users.values().filter(|u| counted(u)).count()
    }

    fn not_self_or_owner(
        &self,
        actor: &Actor,
        username: &str,
        what: &str,
    ) -> Result<(), ErrorBody> {
        if username == actor.username {
            return Err(ErrorBody::new(
                ErrorCode::SelfOrOwner,
                format!("you cannot {what} yourself; ask another admin"),
            ));
        }
        if self.users[username].role == Role::Owner {
            return Err(ErrorBody::new(
                ErrorCode::SelfOrOwner,
                format!("nobody can {what} the owner {username}"),
            ));
        }
        Ok(())
    }

    fn no_assignments(&self, username: &str) -> Result<(), ErrorBody> {
        let held = self.assignments_of(username);
        if held.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = held
            .iter()
            .map(|a| format!("{} seat(s) of {} (assignment {})", a.seats, a.feature, a.id))
            .collect();
        Err(ErrorBody::new(
            ErrorCode::HasAssignments,
            format!(
                "{username} has assignments: {}; revoke them first (`tally revoke {username} FEATURE`)",
                list.join(", ")
            ),
        ))
    }

    /// Refuses while the user holds borrowed seats, saying until when.
    pub(super) fn no_borrows(&self, username: &str, what: &str) -> Result<(), ErrorBody> {
        let mut borrowed: BTreeMap<&str, (u32, i64)> = BTreeMap::new();
        for lease in self
            .ledger
            .leases
            .values()
            .filter(|l| l.user == username && l.kind == LeaseKind::Borrowed)
        {
            let entry = borrowed.entry(&lease.feature).or_insert((0, 0));
            entry.0 += lease.seats;
            entry.1 = entry.1.max(lease.expires_at);
        }
        if borrowed.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = borrowed
            .iter()
            .map(|(feature, (seats, until))| {
                format!("{seats} seat(s) of {feature} until {}", rfc3339(*until))
            })
            .collect();
        Err(ErrorBody::new(
            ErrorCode::Borrowed,
            format!(
                "{username} has borrowed {} for offline use; {what} after the borrows end or are returned",
                list.join(", ")
            ),
        ))
    }

    fn end_online_leases_of(
        &mut self,
        username: &str,
        reason: EndReason,
        now: i64,
        actor: &str,
        batch: &mut Batch,
    ) {
        let ids: Vec<_> = self
            .ledger
            .leases
            .values()
            .filter(|l| l.user == username && l.kind == LeaseKind::Online)
            .map(|l| l.id)
            .collect();
        for id in ids {
            self.ledger.end(id, reason, now, actor, batch);
        }
    }
}

/// Whether `users.max_active` counts the user: active, and not the owner (R9).
fn counted(user: &User) -> bool {
    user.state == UserState::Active && user.role != Role::Owner
}
