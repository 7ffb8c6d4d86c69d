//! Bulk administration (SPEC R19): the rows of one CSV file applied one by one, in file
//! order, through the same functions as the single-row requests (`add_user`,
//! `remove_user`, `deactivate_user`, `assign`, `revoke`), so that every rule, audit event
//! and notification is the same as for one row. A row's refusal is noted and the next row
//! goes on; each of those functions checks everything before it changes anything, so a
//! refused row leaves nothing of itself behind. A dry run applies the rows to a scratch
//! copy of the pool whose batch is dropped: the same checks, nothing stored.
//!
//! Also the user listing with each user's last sign-in (`UsersSeen`).

use std::collections::HashMap;

use tally_protocol::{
    Bulk, BulkFailure, BulkOutcome, BulkRows, BulkToken, ErrorBody, UserSeen, MAX_BULK_REASON,
};

use super::checks::require_admin;
use super::{Action, Actor, Batch, NewToken, Pool};

impl Pool {
    /// Applies every row of a bulk file (admins; the role is checked before anything else).
    /// `mint` makes the first token of each user an import creates, when the request asks
    /// for tokens; a dry run mints none.
    pub fn bulk(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &Bulk,
        mint: &mut dyn FnMut() -> NewToken,
        batch: &mut Batch,
    ) -> Result<BulkOutcome, ErrorBody> {
        let checked = require_admin(actor, "apply a bulk file");
        let action = Action::of_bulk(&request.rows);
        batch.audit_refusal(now, actor, action, "csv", None, checked)?;
        if request.dry_run {
            let mut scratch = self.clone();
            let mut discarded = Batch::default();
            return Ok(scratch.apply_rows(now, actor, &request.rows, None, &mut discarded));
        }
        let mint = request.tokens.then_some(mint);
        Ok(self.apply_rows(now, actor, &request.rows, mint, batch))
    }

    /// Each row through its single-row function, in order.
    fn apply_rows(
        &mut self,
        now: i64,
        actor: &Actor,
        rows: &BulkRows,
        mut mint: Option<&mut dyn FnMut() -> NewToken>,
        batch: &mut Batch,
    ) -> BulkOutcome {
        let mut outcome = BulkOutcome::default();
        let note = |outcome: &mut BulkOutcome, line, email: &str, result| match result {
            Ok(()) => outcome.applied += 1,
            Err(err) => outcome.failed.push(failure(line, email, err)),
        };
        match rows {
            BulkRows::Import(rows) => {
                for row in rows {
                    let token = mint.as_mut().map(|mint| mint());
                    let added = self.add_user_with(now, actor, &row.row, token, batch);
                    let added = added.map(|(user, token)| {
                        if let Some(token) = token {
                            outcome.tokens.push(BulkToken {
                                line: row.line,
                                email: user.username,
                                token,
                            });
                        }
                    });
                    note(&mut outcome, row.line, &row.row.username, added);
                }
            }
            BulkRows::Remove(rows) => {
                for row in rows {
                    let removed = self.remove_user(now, actor, &row.row.username, batch);
                    note(&mut outcome, row.line, &row.row.username, removed.map(drop));
                }
            }
            BulkRows::Deactivate(rows) => {
                for row in rows {
                    let done = self.deactivate_user(now, actor, &row.row.username, batch);
                    note(&mut outcome, row.line, &row.row.username, done.map(drop));
                }
            }
            BulkRows::Assign(rows) => {
                for row in rows {
                    let assigned = self.assign(now, actor, &row.row, batch);
                    note(
                        &mut outcome,
                        row.line,
                        &row.row.username,
                        assigned.map(drop),
                    );
                }
            }
            BulkRows::Revoke(rows) => {
                for row in rows {
                    let revoked = self.revoke(now, actor, &row.row, batch);
                    note(&mut outcome, row.line, &row.row.username, revoked.map(drop));
                }
            }
        }
        outcome
    }

    /// Every user, by username, with the latest sign-in of any of their tokens (admins).
    pub fn users_seen(
        &self,
        now: i64,
        actor: &Actor,
        batch: &mut Batch,
    ) -> Result<Vec<UserSeen>, ErrorBody> {
        let users = self.users(now, actor, batch)?;
        let mut seen: HashMap<u64, i64> = HashMap::new();
        for token in self.tokens.values() {
            if let Some(used) = token.last_used {
                let latest = seen.entry(token.user).or_insert(used);
                *latest = (*latest).max(used);
            }
        }
        Ok(users
            .into_iter()
            .map(|user| {
                let last_seen = self.users.get(&user.username).and_then(|u| seen.get(&u.id));
                UserSeen {
                    last_seen: last_seen.copied(),
                    user,
                }
            })
            .collect())
    }
}

/// A refused row, its reason cut to [`MAX_BULK_REASON`] characters.
fn failure(line: u64, email: &str, err: ErrorBody) -> BulkFailure {
    let reason = match err.message.char_indices().nth(MAX_BULK_REASON) {
        Some((cut, _)) => format!("{}…", &err.message[..cut]),
        None => err.message,
    };
    BulkFailure {
        line,
        email: email.to_string(),
        code: err.code,
        reason,
    }
}
