//! Folding of repeated identical refusals in the audit log (SPEC R11), so that no client can
//! grow the log without bound by asking for the same refused thing again and again.
//!
//! Refusals of admins are never folded: they are few, and each tells what an admin tried.
//! Other refusals are identical when actor, action, outcome (the error code), subject and feature
//! agree; for refusals of what a peer made up (`invalid`, `unauthenticated`, `forbidden`,
//! `rate_limited`) subject and feature are not compared, so that varying them does not
//! escape the folding. The first one of a window is written as it comes; the ones after it within
//! [`WINDOW_MS`] are only counted, and when the window ends one summary event says how many
//! there were and between which times. Every event is also bounded in size before it is
//! stored, whatever a peer sent.

use std::collections::HashMap;

use tally_protocol::{AuditEvent, ErrorCode};

use crate::core::AuditOutcome;
use tally_protocol::format_time as rfc3339;

/// How long identical refusals are folded into one summary.
pub const WINDOW_MS: i64 = 60_000;

/// Open windows at most; past it every window is closed at once.
const MAX_OPEN: usize = 10_000;

/// The longest actor, action, subject, feature and reason stored, in bytes.
const MAX_SHORT: usize = 320;
const MAX_REASON: usize = 1024;

type Key = (String, String, String, Option<String>, Option<String>);

/// Refusals whose subject and feature are whatever the peer sent.
const PEER_MADE: [ErrorCode; 4] = [
    ErrorCode::Invalid,
    ErrorCode::Unauthenticated,
    ErrorCode::Forbidden,
    ErrorCode::RateLimited,
];

#[derive(Debug)]
struct Window {
    started: i64,
    last: i64,
    /// Refusals counted but not written.
    folded: u64,
    /// The first refusal of the window, as written.
    first: AuditEvent,
}

/// Folds repeated refusals; owned by the engine.
#[derive(Debug, Default)]
pub struct RefusalFolder {
    open: HashMap<Key, Window>,
}

impl RefusalFolder {
    /// Bounds every event and drops the refusals that repeat one written less than a
    /// window ago, counting them; `is_admin` tells which actors are never folded.
    pub fn fold(
        &mut self,
        now: i64,
        events: &mut Vec<AuditEvent>,
        is_admin: impl Fn(&str) -> bool,
    ) {
        let mut summaries = Vec::new();
        events.retain_mut(|event| {
            bound(event);
            let outcome = AuditOutcome::parse(&event.outcome);
            if outcome == Some(AuditOutcome::Ok) || is_admin(&event.actor) {
                return true;
            }
            let specific =
                !matches!(outcome, Some(AuditOutcome::Refused(code)) if PEER_MADE.contains(&code));
            let key = (
                event.actor.clone(),
                event.action.clone(),
                event.outcome.clone(),
                specific.then(|| event.subject.clone()),
                event.feature.clone().filter(|_| specific),
            );
            match self.open.get_mut(&key) {
                Some(window) if now - window.started < WINDOW_MS => {
                    window.folded += 1;
                    window.last = event.at;
                    false
                }
                _ => {
                    let window = Window {
                        started: now,
                        last: event.at,
                        folded: 0,
                        first: event.clone(),
                    };
                    if let Some(old) = self.open.insert(key, window) {
                        summaries.extend(summary(old));
                    }
                    true
                }
            }
        });
        events.extend(summaries);
        if self.open.len() > MAX_OPEN {
            self.flush(i64::MAX, events);
        }
    }

    /// Closes the windows that ended by `now`, adding their summaries to `events`.
    pub fn flush(&mut self, now: i64, events: &mut Vec<AuditEvent>) {
        let ended: Vec<Key> = self
            .open
            .iter()
            .filter(|(_, w)| now.saturating_sub(w.started) >= WINDOW_MS)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            if let Some(window) = self.open.remove(&key) {
                events.extend(summary(window));
            }
        }
    }
}

/// The event that stands for a window's folded refusals, if there were any.
fn summary(window: Window) -> Option<AuditEvent> {
    if window.folded == 0 {
        return None;
    }
    let first = window.first;
    let mut event = AuditEvent {
        at: window.last,
        reason: format!(
            "{} more identical refusal(s) from {} to {}, folded into this event; the first: {}",
            window.folded,
            rfc3339(window.started),
            rfc3339(window.last),
            first.reason
        ),
        ..first
    };
    bound(&mut event);
    Some(event)
}

/// Cuts every field of an event to its bound, on a character boundary, and replaces NUL
/// (which a refused request may carry into a reason, and which PostgreSQL's text cannot
/// hold) with U+FFFD.
fn bound(event: &mut AuditEvent) {
    for field in [&mut event.actor, &mut event.action, &mut event.subject] {
        truncate(field, MAX_SHORT);
    }
    if let Some(feature) = &mut event.feature {
        truncate(feature, MAX_SHORT);
    }
    truncate(&mut event.outcome, MAX_SHORT);
    truncate(&mut event.reason, MAX_REASON);
    let fields = [
        &mut event.actor,
        &mut event.action,
        &mut event.subject,
        &mut event.outcome,
        &mut event.reason,
    ];
    for field in fields.into_iter().chain(event.feature.as_mut()) {
        if field.contains('\0') {
            *field = field.replace('\0', "\u{FFFD}");
        }
    }
}

fn truncate(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str("...");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(at: i64, actor: &str, feature: &str) -> AuditEvent {
        AuditEvent {
            at,
            actor: actor.into(),
            action: "checkout".into(),
            subject: feature.into(),
            feature: Some(feature.into()),
            outcome: "no_seat".into(),
            reason: "no seat".into(),
        }
    }

    /// PostgreSQL's text cannot hold NUL: a refused request that carried one (in a feature
    /// name, say) must not make the commit of its audit event fail.
    #[test]
    fn nul_in_any_field_is_replaced() {
        let mut folder = RefusalFolder::default();
        let mut events = vec![refusal(0, "a\0na", "v\0ray")];
        events[0].reason = "feature \"v\0ray\" is not a feature name".into();
        folder.fold(0, &mut events, |_| true);
        let event = &events[0];
        for field in [&event.actor, &event.subject, &event.reason] {
            assert!(!field.contains('\0'), "{field:?}");
            assert!(field.contains('\u{FFFD}'), "{field:?}");
        }
        assert_eq!(event.feature.as_deref(), Some("v\u{FFFD}ray"));
    }

    #[test]
    fn identical_refusals_within_a_window_become_one_summary() {
        let mut folder = RefusalFolder::default();
        let mut events: Vec<AuditEvent> = (0..1000).map(|i| refusal(i, "ana", "vray")).collect();
        events.push(refusal(1000, "ben", "vray"));
        folder.fold(0, &mut events, |_| false);
        assert_eq!(events.len(), 2, "the first of each and nothing else");
        let mut more = vec![refusal(2000, "ana", "vray")];
        folder.fold(2000, &mut more, |_| false);
        assert!(more.is_empty());
        let mut closing = Vec::new();
        folder.flush(WINDOW_MS - 1, &mut closing);
        assert!(closing.is_empty(), "the window is still open");
        folder.flush(WINDOW_MS, &mut closing);
        assert_eq!(closing.len(), 1, "ben's window had nothing folded");
        assert!(
            closing[0]
                .reason
                .starts_with("1000 more identical refusal(s)"),
            "{}",
            closing[0].reason
        );
        assert_eq!(closing[0].at, 2000);
    }

    #[test]
    fn a_refusal_after_the_window_opens_a_new_one_and_summarises_the_old() {
        let mut folder = RefusalFolder::default();
        let mut events = vec![refusal(0, "ana", "vray"), refusal(1, "ana", "vray")];
        folder.fold(0, &mut events, |_| false);
        let mut later = vec![refusal(WINDOW_MS, "ana", "vray")];
        folder.fold(WINDOW_MS, &mut later, |_| false);
        assert_eq!(
            later.len(),
            2,
            "the new refusal and the old window's summary"
        );
    }

    #[test]
    fn refusals_of_admins_and_of_different_things_are_kept_apart() {
        let mut folder = RefusalFolder::default();
        let mut events = vec![
            refusal(0, "owner", "vray"),
            refusal(1, "owner", "vray"),
            refusal(2, "ana", "vray"),
            refusal(3, "ana", "nuke"),
        ];
        folder.fold(0, &mut events, |actor| actor == "owner");
        assert_eq!(events.len(), 4);
        // What a peer made up is folded whatever subject and feature it names.
        let mut junk: Vec<AuditEvent> = (0..100)
            .map(|i| AuditEvent {
                outcome: "invalid".into(),
                ..refusal(i, "ana", &format!("bad{i}"))
            })
            .collect();
        folder.fold(0, &mut junk, |actor| actor == "owner");
        assert_eq!(junk.len(), 1);
    }

    #[test]
    fn events_are_bounded_whatever_a_peer_sent() {
        let mut folder = RefusalFolder::default();
        let huge = "x".repeat(65_536);
        let mut event = refusal(0, &huge, &huge);
        event.reason = format!("invalid feature {huge}");
        event.outcome = "ok".into();
        let mut events = vec![event];
        folder.fold(0, &mut events, |_| false);
        let event = &events[0];
        assert!(event.actor.len() <= MAX_SHORT && event.subject.len() <= MAX_SHORT);
        assert!(event.feature.as_ref().unwrap().len() <= MAX_SHORT);
        assert!(event.reason.len() <= MAX_REASON);
    }

    #[test]
    fn the_table_of_open_windows_stays_bounded() {
        let mut folder = RefusalFolder::default();
        for i in 0..(MAX_OPEN as i64 + 10) {
            let mut events = vec![refusal(i, &format!("user{i}"), "vray")];
            folder.fold(i, &mut events, |_| false);
        }
        assert!(folder.open.len() <= MAX_OPEN + 1);
    }
}
