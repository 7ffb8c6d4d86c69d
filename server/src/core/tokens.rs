//! Tokens (SPEC R22): sign-in, minting by role, listing and revocation.
//!
//! A token is 32 random bytes shown once; the pool keeps its SHA-256, an id derived from
//! that hash (so that whoever mints a token, the engine or `tallyd owner-token`, names it
//! the same way without a shared counter), a label, and when it was last used. Sessions
//! are bound to the account id and the token id, so revoking a token or removing an
//! account ends what was signed in with it.

use tally_protocol::{ErrorBody, ErrorCode, Role, TokenInfo, UserState};

use super::checks::{require_admin, username as normalized};
use super::{Action, Actor, Batch, NewToken, Pool};

/// The longest token label.
const MAX_LABEL: usize = 100;

/// How stale `last_used` may be before a sign-in writes it again.
const LAST_USED_EVERY_MS: i64 = 60_000;

/// One token as the pool and the store keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// [`token_id`] of the hash.
    pub id: String,
    pub hash: [u8; 32],
    /// The account it signs in as.
    pub user: u64,
    pub label: String,
    pub created_at: i64,
    /// The last sign-in with it, to the minute.
    pub last_used: Option<i64>,
}

/// The id of a token: the first 8 bytes of its hash, in hex. Shown and typed by admins;
/// it says nothing usable about the token itself.
pub fn token_id(hash: &[u8; 32]) -> String {
    hash[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Who a connection signed in as: what every later request is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub user_id: u64,
    pub username: String,
    pub role: Role,
    pub token: String,
}

impl Pool {
    /// Signs a token in: `Ok` for a known token of an active account, `Err(None)` for a hash
    /// the pool does not know, `Err(Some((username, error)))` for a deactivated account.
    /// Refusals are audited by the caller, which knows the peer.
    pub fn sign_in(
        &mut self,
        now: i64,
        hash: &[u8; 32],
        batch: &mut Batch,
    ) -> Result<SignedIn, Option<(String, ErrorBody)>> {
        let id = self.token_hashes.get(hash).ok_or(None)?.clone();
        let token = self.tokens.get_mut(&id).ok_or(None)?;
        let username = self.user_ids.get(&token.user).ok_or(None)?;
        let user = &self.users[username];
        if user.state != UserState::Active {
            let err = ErrorBody::new(
                ErrorCode::Unauthenticated,
                format!(
                    "the account {} is deactivated; ask an admin to activate it",
                    user.username
                ),
            );
            return Err(Some((user.username.clone(), err)));
        }
        if token
            .last_used
            .is_none_or(|at| now - at >= LAST_USED_EVERY_MS)
        {
            token.last_used = Some(now);
            batch.use_token(&id, now);
        }
        Ok(SignedIn {
            user_id: user.id,
            username: user.username.clone(),
            role: user.role,
            token: id,
        })
    }

    /// Takes in a token the store holds but the pool does not (one `tallyd owner-token`
    /// wrote while this server ran); false if its account is unknown.
    pub fn adopt_token(&mut self, token: Token) -> bool {
        if !self.user_ids.contains_key(&token.user) || self.revoked_tokens.contains(&token.id) {
            return false;
        }
        if !self.tokens.contains_key(&token.id) {
            self.insert_token(token);
        }
        true
    }

    /// Mints another token for a user, with a label. Only the owner mints tokens for the
    /// owner and for admins; admins mint for members, guests and themselves (R22).
    pub fn mint_token(
        &mut self,
        now: i64,
        actor: &Actor,
        username: &str,
        label: &str,
        token: NewToken,
        batch: &mut Batch,
    ) -> Result<String, ErrorBody> {
        self.advance(now, batch);
        let username = normalized(username);
        let checked = self.check_mint(actor, &username, label);
        let user = batch.audit_refusal(now, actor, Action::UserToken, &username, None, checked)?;
        let id = token_id(&token.hash);
        let label = label.trim().to_string();
        let detail = format!("token {id} {label:?}");
        let token = Token {
            id: id.clone(),
            hash: token.hash,
            user,
            label,
            created_at: now,
            last_used: None,
        };
        self.insert_token(token.clone());
        batch.add_token(token);
        batch.audit(now, actor, Action::UserToken, &username, None, Ok(&detail));
        Ok(id)
    }

    fn check_mint(&self, actor: &Actor, username: &str, label: &str) -> Result<u64, ErrorBody> {
        require_admin(actor, "issue tokens")?;
        if label.chars().count() > MAX_LABEL || label.chars().any(char::is_control) {
            return Err(ErrorBody::invalid(format!(
                "a token label has at most {MAX_LABEL} characters and no control characters"
            )));
        }
        let user = self.user(username)?;
        let allowed = match user.role {
            Role::Owner | Role::Admin => {
                actor.role == Role::Owner || user.username == actor.username
            }
            Role::Member | Role::Guest => true,
        };
        if !allowed {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                format!(
                    "only the owner mints tokens for the owner or another admin, and {username} is {} {}",
                    article(user.role),
                    user.role.as_str()
                ),
            ));
        }
        Ok(user.id)
    }

    /// A user's tokens. Admins see anyone's, everyone their own.
    pub fn tokens_of(
        &self,
        now: i64,
        actor: &Actor,
        username: &str,
        batch: &mut Batch,
    ) -> Result<Vec<TokenInfo>, ErrorBody> {
        let username = normalized(username);
        let checked = if username == actor.username {
            self.user(&username)
        } else {
            require_admin(actor, "list another user's tokens").and_then(|()| self.user(&username))
        };
        let checked = checked.map(|user| user.id);
        let user = batch.audit_refusal(now, actor, Action::UserTokens, &username, None, checked)?;
        Ok(self
            .tokens
            .values()
            .filter(|t| t.user == user)
            .map(|t| TokenInfo {
                id: t.id.clone(),
                label: t.label.clone(),
                created_at: t.created_at,
                last_used: t.last_used,
            })
            .collect())
    }

    /// Revokes one token; the connections signed in with it end once this is committed.
    /// Whoever may mint a user's tokens may revoke them, and everyone their own.
    pub fn revoke_token(
        &mut self,
        now: i64,
        actor: &Actor,
        id: &str,
        batch: &mut Batch,
    ) -> Result<String, ErrorBody> {
        self.advance(now, batch);
        let id = id.trim().to_ascii_lowercase();
        let checked = self.check_token_revoke(actor, &id);
        let username = batch.audit_refusal(now, actor, Action::TokenRevoke, &id, None, checked)?;
        if let Some(token) = self.tokens.remove(&id) {
            self.token_hashes.remove(&token.hash);
        }
        self.revoked_tokens.insert(id.clone());
        batch.remove_token(&id);
        let detail = format!("token {id} of {username}");
        batch.audit(now, actor, Action::TokenRevoke, &id, None, Ok(&detail));
        Ok(id)
    }

    fn check_token_revoke(&self, actor: &Actor, id: &str) -> Result<String, ErrorBody> {
        let not_found = || {
            ErrorBody::not_found(format!(
                "no token {id}; `tally user tokens EMAIL` lists a user's tokens"
            ))
        };
        let token = self.tokens.get(id).ok_or_else(not_found)?;
        let user = self
            .user_ids
            .get(&token.user)
            .and_then(|name| self.users.get(name))
            .ok_or_else(not_found)?;
        if user.username == actor.username {
            return Ok(user.username.clone());
        }
        if !actor.role.is_admin() {
            // Members learn nothing of other people's tokens.
            return Err(not_found());
        }
        self.check_mint(actor, &user.username, "")?;
        Ok(user.username.clone())
    }

    pub(super) fn insert_token(&mut self, token: Token) {
        self.token_hashes.insert(token.hash, token.id.clone());
        self.tokens.insert(token.id.clone(), token);
    }

    /// Forgets a removed user's tokens.
    pub(super) fn remove_tokens_of(&mut self, user: u64) {
        let hashes = &mut self.token_hashes;
        self.tokens.retain(|_, token| {
            let keep = token.user != user;
            if !keep {
                hashes.remove(&token.hash);
            }
            keep
        });
    }
}

fn article(role: Role) -> &'static str {
    match role {
        Role::Owner | Role::Admin => "an",
        Role::Member | Role::Guest => "a",
    }
}
