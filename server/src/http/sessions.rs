//! The dashboard's sign-in sessions: a random cookie value per sign-in, kept only as its
//! SHA-256, each with who signed in and until when. The session holds no rights of its
//! own: every page asks the engine with the token it was opened with, so a revoked token
//! or a deactivated account ends it at the next page.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::header::COOKIE;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::core::{Holder, SignedIn};

/// How long a session lasts from its sign-in, on the daemon's clock.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// The name of the session cookie.
pub const COOKIE_NAME: &str = "tally_session";

/// Sessions kept at most; past it, the one that ends soonest is dropped.
const MAX_SESSIONS: usize = 10_000;

/// Who signed in, as every page asks the engine.
#[derive(Debug, Clone)]
pub struct Session {
    pub signed_in: Arc<SignedIn>,
    pub holder: Arc<Holder>,
    /// When it ends, in Unix milliseconds.
    pub expires_at: i64,
}

/// Why a request has no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// No cookie, or one this server does not know (it restarted, or the user signed out).
    Missing,
    /// The session's lifetime ran out.
    Expired,
}

/// The open sessions, by the SHA-256 of their cookie value.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
}

fn key(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

impl Sessions {
    /// Opens a session at `now`; returns the cookie value that finds it.
    pub fn open(&self, now: i64, session: Session) -> String {
        let value = hex::encode(rand::random::<[u8; 32]>());
        let mut open = self.open.lock().expect("sessions lock");
        open.retain(|_, s| s.expires_at > now);
        if open.len() >= MAX_SESSIONS {
            let soonest = open
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k);
            if let Some(soonest) = soonest {
                open.remove(&soonest);
            }
        }
        open.insert(key(&value), session);
        value
    }

    /// The session of the request's cookie at `now`; an expired one is closed.
    pub fn find(&self, now: i64, headers: &HeaderMap) -> Result<Session, Lost> {
        let value = cookie(headers).ok_or(Lost::Missing)?;
        let key = key(value);
        let mut open = self.open.lock().expect("sessions lock");
        let session = open.get(&key).ok_or(Lost::Missing)?;
        if session.expires_at <= now {
            open.remove(&key);
            return Err(Lost::Expired);
        }
        Ok(session.clone())
    }

    /// Closes the session of the request's cookie, if any.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(value) = cookie(headers) {
            self.open.lock().expect("sessions lock").remove(&key(value));
        }
    }

    /// How many sessions are open (expired ones not yet dropped included).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.lock().expect("sessions lock").len()
    }
}

/// The value of the session cookie among the request's `Cookie` headers.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// The `Set-Cookie` value that hands `value` to the browser for `lifetime`: never to
/// scripts, only over HTTPS, never on a request another site starts.
pub fn set_cookie(value: &str, lifetime: Duration) -> String {
    format!(
        "{COOKIE_NAME}={value}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        lifetime.as_secs()
    )
}

/// The `Set-Cookie` value that makes the browser forget the session.
pub fn clear_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Peer;
    use tally_protocol::{ClientId, Role};

    fn session(expires_at: i64) -> Session {
        Session {
            signed_in: Arc::new(SignedIn {
                user_id: 1,
                username: "alice".into(),
                role: Role::Member,
                token: "t1".into(),
            }),
            holder: Arc::new(Holder {
                client: ClientId([0; 16]),
                host: "dashboard".into(),
                peer: Peer::default(),
            }),
            expires_at,
        }
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            format!("theme=dark; {COOKIE_NAME}={value}")
                .parse()
                .unwrap(),
        );
        headers
    }

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_expires() {
        let sessions = Sessions::default();
        let value = sessions.open(1_000, session(2_000));
        let headers = with_cookie(&value);
        assert_eq!(
            sessions.find(1_999, &headers).unwrap().signed_in.username,
            "alice"
        );
        assert_eq!(sessions.find(2_000, &headers).unwrap_err(), Lost::Expired);
        // Once expired, it is gone.
        assert_eq!(sessions.find(1_500, &headers).unwrap_err(), Lost::Missing);
    }

    #[test]
    fn unknown_missing_and_closed_cookies_find_nothing() {
        let sessions = Sessions::default();
        let value = sessions.open(0, session(10));
        assert_eq!(
            sessions.find(1, &HeaderMap::new()).unwrap_err(),
            Lost::Missing
        );
        assert_eq!(
            sessions.find(1, &with_cookie("00")).unwrap_err(),
            Lost::Missing
        );
        assert_eq!(
            sessions.find(1, &with_cookie("")).unwrap_err(),
            Lost::Missing
        );
        sessions.close(&with_cookie(&value));
        assert_eq!(
            sessions.find(1, &with_cookie(&value)).unwrap_err(),
            Lost::Missing
        );
    }

    #[test]
    fn the_cookie_values_are_random_and_not_kept() {
        let sessions = Sessions::default();
        let a = sessions.open(0, session(10));
        let b = sessions.open(0, session(10));
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let raw: [u8; 32] = hex::decode(&a).unwrap().try_into().unwrap();
        let open = sessions.open.lock().unwrap();
        assert!(!open.contains_key(&raw));
        assert!(open.contains_key(&key(&a)));
    }

    #[test]
    fn opening_drops_expired_sessions() {
        let sessions = Sessions::default();
        sessions.open(0, session(10));
        sessions.open(20, session(30));
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn the_cookie_is_http_only_secure_and_strict() {
        let set = set_cookie("abc", SESSION_LIFETIME);
        assert_eq!(
            set,
            "tally_session=abc; Path=/; Max-Age=28800; HttpOnly; Secure; SameSite=Strict"
        );
        assert!(clear_cookie().contains("Max-Age=0"));
    }
}
