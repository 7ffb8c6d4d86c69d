//! The read-only dashboard (SPEC §10): sign-in with a user token, then pages of status,
//! leases, queue, usage, entitlements and nodes, rendered on the server from templates
//! (`server/templates/`), with no script.
//!
//! Every page asks the engine the protocol's own requests (`Figures`, `LeasesPage`,
//! `Queue`, `EntitlementList`, `ReportUsage`, `ServerInfo`, `ServerNodes`) as the session's
//! user, so the role checks are the protocol's: admins see everything, members their own
//! leases and queue entries, and a refusal (a member's usage report) is shown as such. Nothing
//! here changes state. A failed sign-in counts toward the protocol's limit for its address.

// A page ends early with an axum `Response` (a redirect to the sign-in page, an error):
// one per request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, LOCATION, ORIGIN, SET_COOKIE,
    USER_AGENT,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use serde::Deserialize;
use tally_protocol::{
    format_time, ClientId, Entitlement, EntitlementKind, EntitlementQuery, ErrorBody, ErrorCode,
    FeatureFigures, LeaseKind, LeaseSource, LeasesPageQuery, LeasesQuery, NodeRole, Outcome,
    QueueQuery, ReportPeriod, Request, Response as Answer, StatusQuery, UsageQuery, HOUR_MS,
};

use super::chart::{chart, Chart};
use super::sessions::{clear_cookie, set_cookie, Lost, Session, SESSION_LIFETIME};
use super::Http;
use crate::conn::{answer, session_client, sign_in, truncate};
use crate::core::{Holder, Peer, EXPIRING_BEFORE};
use crate::init::token_hash;
use crate::limiter::{Prefix, FAILURE_PAUSE};

/// The address a request came from, put on each connection's requests by `serve`.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The longest token the sign-in form takes.
const MAX_TOKEN: usize = 512;
/// Leases listed at most on the leases page.
const LEASES_SHOWN: u32 = 500;
/// An entitlement ending within this long is shown as expiring: from R20's first notice
/// (`entitlement_expiring`), so that the page and the notification agree.
const EXPIRING_WITHIN_MS: i64 = EXPIRING_BEFORE[0].0;
/// The range of the usage chart.
const CHART_HOURS: i64 = 7 * 24;

/// The style sheet, the only thing served besides the pages.
const STYLE: &str = include_str!("../../templates/style.css");

/// What a page handler ends with: the page, or a response that replaces it (a redirect to
/// the sign-in page, an error).
type Page = Result<Response, Response>;

/// What every page's frame shows: who is signed in, and which page this is.
pub struct Frame {
    pub username: String,
    pub role: &'static str,
    pub active: &'static str,
}

impl Frame {
    pub fn tabs(&self) -> [(&'static str, &'static str, bool); 6] {
        [
            ("/", "Status", self.active == "status"),
            ("/leases", "Leases", self.active == "leases"),
            ("/queue", "Queue", self.active == "queue"),
            ("/usage", "Usage", self.active == "usage"),
            (
                "/entitlements",
                "Entitlements",
                self.active == "entitlements",
            ),
            ("/nodes", "Nodes", self.active == "nodes"),
        ]
    }
}

/// A page's answer to show in place of its table, when the server refused the request.
fn refusal(err: &ErrorBody) -> String {
    format!("{}: {}", err.code.as_str(), err.message)
}

/// What a page lists: the items, or none and the refusal.
fn shown<T>(asked: Result<Vec<T>, ErrorBody>) -> (Vec<T>, Option<String>) {
    match asked {
        Ok(items) => (items, None),
        Err(err) => (Vec::new(), Some(refusal(&err))),
    }
}

/// A signed-in request: its session.
struct Viewer {
    session: Session,
}

impl Viewer {
    fn frame(&self, active: &'static str) -> Frame {
        Frame {
            username: self.session.signed_in.username.clone(),
            role: self.session.signed_in.role.as_str(),
            active,
        }
    }

    /// Asks the engine as this session's user, and takes what the page shows from the
    /// answer with `pick`. `Err`: the page cannot go on (the session ended, the node stopped
    /// serving, or the answer is not of the request's kind); `Ok(Err)`: a refusal the page
    /// shows.
    async fn ask<T>(
        &self,
        http: &Http,
        headers: &HeaderMap,
        request: Request,
        pick: impl FnOnce(Answer) -> Option<T>,
    ) -> Result<Result<T, ErrorBody>, Response> {
        let session = &self.session;
        let name = request.name();
        match answer(&http.shared, &session.signed_in, &session.holder, request)
            .await
            .await
            .map(Outcome::into_result)
        {
            Some(Ok(answer)) => pick(answer).map(Ok).ok_or_else(|| unexpected(name)),
            Some(Err(err)) if err.code == ErrorCode::Unauthenticated => {
                http.sessions.close(headers);
                Err(to_sign_in(Some("revoked")))
            }
            Some(Err(err)) => Ok(Err(err)),
            None => Err(unavailable(
                "this node stopped serving while answering; reload the page",
            )),
        }
    }
}

/// The session of the request, or the redirect to the sign-in page.
fn viewer(http: &Http, headers: &HeaderMap) -> Result<Viewer, Response> {
    match http.sessions.find(http.clock.now_millis(), headers) {
        Ok(session) => Ok(Viewer { session }),
        Err(Lost::Missing) => Err(to_sign_in(None)),
        Err(Lost::Expired) => Err(to_sign_in(Some("expired"))),
    }
}

/// 303 to `location`.
fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_str(location).expect("a path"));
    response
}

/// To the sign-in page, saying why (`ended`), with the session cookie cleared.
fn to_sign_in(ended: Option<&str>) -> Response {
    let mut response = match ended {
        Some(why) => see_other(&format!("/signin?ended={why}")),
        None => see_other("/signin"),
    };
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&clear_cookie()).expect("a cookie"),
    );
    response
}

/// The headers of every page: never cached, no script, no framing, no referrer to others.
fn page(status: StatusCode, template: &impl Template) -> Response {
    let body = match template.render() {
        Ok(body) => body,
        Err(err) => {
            tracing::error!(error = %err, "dashboard: a page did not render");
            return super::text(StatusCode::INTERNAL_SERVER_ERROR, "the page did not render");
        }
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it, a browser sends `Origin: null` with the page's own forms.
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    response
}

fn unavailable(why: &str) -> Response {
    super::text(StatusCode::SERVICE_UNAVAILABLE, why)
}

/// An answer of a kind the request does not get: a bug, logged.
fn unexpected(request: &str) -> Response {
    tracing::error!(
        request,
        "dashboard: the engine answered with another kind of response"
    );
    super::text(StatusCode::INTERNAL_SERVER_ERROR, "internal error (logged)")
}

pub async fn style() -> Response {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, "max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

// ----- sign-in and sign-out -----

#[derive(Template)]
#[template(path = "signin.html")]
struct SignInPage {
    notice: Option<&'static str>,
    error: Option<String>,
}

#[derive(Deserialize)]
pub struct Ended {
    ended: Option<String>,
}

/// The sign-in form; a browser with a session goes on to the status page.
pub async fn sign_in_form(
    State(http): State<Arc<Http>>,
    headers: HeaderMap,
    Query(query): Query<Ended>,
) -> Response {
    if viewer(&http, &headers).is_ok() {
        return see_other("/");
    }
    let notice = match query.ended.as_deref() {
        Some("expired") => Some("Your session expired. Sign in again."),
        Some("revoked") => {
            Some("Your token was revoked or your account deactivated. Sign in with a valid token.")
        }
        Some("signed-out") => Some("Signed out."),
        _ => None,
    };
    page(
        StatusCode::OK,
        &SignInPage {
            notice,
            error: None,
        },
    )
}

#[derive(Deserialize)]
pub struct SignInForm {
    token: String,
}

/// Whether a form was posted from a page of this server: a browser sends `Origin` with a
/// POST, and it must name the host the request went to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    origin
        .strip_prefix("https://")
        .is_some_and(|o| Some(o) == host)
}

/// Signs the token in as the protocol does (the engine checks it, the store is asked for a
/// token added meanwhile), then opens a session; a refusal counts toward the address's
/// limit of failed sign-ins, and past it is answered slowly, naming the wait.
pub async fn sign_in_post(
    State(http): State<Arc<Http>>,
    Extension(ClientAddr(peer)): Extension<ClientAddr>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if !same_origin(&headers) {
        return super::text(
            StatusCode::FORBIDDEN,
            "forbidden: the form was sent from another site",
        );
    }
    let refused = |status, error: String| {
        page(
            status,
            &SignInPage {
                notice: None,
                error: Some(error),
            },
        )
    };
    let token = form.token.trim();
    if token.is_empty() {
        return refused(StatusCode::BAD_REQUEST, "Enter a token.".into());
    }
    if token.len() > MAX_TOKEN {
        return refused(
            StatusCode::BAD_REQUEST,
            format!("That is not a token: it is longer than {MAX_TOKEN} characters."),
        );
    }
    let ip = peer.ip();
    let agent = headers
        .get(USER_AGENT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("a browser");
    let who = format!("{ip} dashboard ({})", truncate(agent, 64));
    match sign_in(&http.shared, token_hash(token), ip, who).await {
        Ok(signed_in) => {
            tracing::info!(user = %signed_in.username, %ip, "dashboard: signed in");
            let now = http.clock.now_millis();
            let holder = Holder {
                client: session_client(signed_in.user_id, ClientId(rand::random())),
                host: "dashboard".into(),
                peer: Peer {
                    program: truncate(agent, 255),
                    pid: 0,
                    address: ip.to_canonical().to_string(),
                },
            };
            let value = http.sessions.open(
                now,
                Session {
                    signed_in: Arc::new(signed_in),
                    holder: Arc::new(holder),
                    expires_at: now.saturating_add(SESSION_LIFETIME.as_millis() as i64),
                },
            );
            let mut response = see_other("/");
            response.headers_mut().insert(
                SET_COOKIE,
                HeaderValue::from_str(&set_cookie(&value, SESSION_LIFETIME)).expect("a cookie"),
            );
            response
        }
        Err(err) if err.code == ErrorCode::Unauthenticated => {
            tracing::info!(%ip, reason = %err.message, "dashboard: sign-in refused");
            // The protocol's refusal ends with advice for a client file, not for a form.
            let reason = err
                .message
                .split_once("; check ")
                .map_or(err.message.as_str(), |(reason, _)| reason);
            match http
                .shared
                .auth_limiter
                .failed(ip, std::time::Instant::now())
            {
                Ok(()) => refused(
                    StatusCode::UNAUTHORIZED,
                    format!("Not signed in: {reason}."),
                ),
                Err(wait) => {
                    tokio::time::sleep(FAILURE_PAUSE).await;
                    refused(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "Not signed in: {reason}. Too many sign-ins from {} failed, so failures are answered slowly for another {} s (a valid token still signs in).",
                            Prefix(ip),
                            wait.as_secs().max(1)
                        ),
                    )
                }
            }
        }
        Err(err) => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Not signed in: {}", refusal(&err)),
        ),
    }
}

/// Ends the session, and says so on the sign-in page.
pub async fn sign_out(State(http): State<Arc<Http>>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return super::text(
            StatusCode::FORBIDDEN,
            "forbidden: the form was sent from another site",
        );
    }
    http.sessions.close(&headers);
    to_sign_in(Some("signed-out"))
}

// ----- status -----

/// One feature's line of the status page.
pub struct FeatureLine {
    pub figures: FeatureFigures,
    /// `exhausted`, `free` or `none` (no seats at all): the colour of the line.
    pub state: &'static str,
    /// "expires in 3 days" when an entitlement of the feature ends within
    /// [`EXPIRING_WITHIN_MS`].
    pub expiring: Option<String>,
    /// The floating seats as a bar: held, reserved, free, in hundredths.
    pub held_pct: f64,
    pub reserved_pct: f64,
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage {
    frame: Frame,
    features: Vec<FeatureLine>,
    refused: Option<String>,
    exhausted: usize,
    expiring: usize,
}

/// "in 3 days", "in 5 hours", "in 20 minutes", or "now".
fn from_now(at: i64, now: i64) -> String {
    let left = at - now;
    let (n, unit) = if left >= 2 * 24 * HOUR_MS {
        (left / (24 * HOUR_MS), "days")
    } else if left >= 2 * HOUR_MS {
        (left / HOUR_MS, "hours")
    } else if left >= 60_000 {
        (left / 60_000, "minutes")
    } else {
        return "now".into();
    };
    format!("in {n} {unit}")
}

/// The soonest end of an entitlement of `feature` in force now, when it is within
/// [`EXPIRING_WITHIN_MS`].
fn expiring(feature: &str, entitlements: &[Entitlement], now: i64) -> Option<i64> {
    entitlements
        .iter()
        .filter(|e| e.feature == feature && e.starts_at <= now)
        .filter_map(|e| e.expires_at)
        .filter(|end| *end > now && *end - now <= EXPIRING_WITHIN_MS)
        .min()
}

fn feature_line(figures: FeatureFigures, entitlements: &[Entitlement], now: i64) -> FeatureLine {
    let f = &figures.status;
    let state = match (f.floating + f.assigned, f.available) {
        (0, _) => "none",
        (_, 0) if f.floating > 0 || f.queued > 0 => "exhausted",
        _ => "free",
    };
    let pct = |seats: u32| match f.floating {
        0 => 0.0,
        all => (100.0 * seats as f64 / all as f64).min(100.0),
    };
    // In use and borrowed count seats assigned by name too; the floating seats held are
    // what is neither free nor reserved.
    let held = f
        .floating
        .saturating_sub(f.available.saturating_add(figures.reserved));
    FeatureLine {
        state,
        expiring: expiring(&f.feature, entitlements, now)
            .map(|end| format!("expires {}", from_now(end, now))),
        held_pct: (pct(held) * 10.0).round() / 10.0,
        reserved_pct: (pct(figures.reserved).min(100.0 - pct(held)) * 10.0).round() / 10.0,
        figures,
    }
}

/// Every entitlement, as both the status and the entitlements page ask.
const ENTITLEMENTS: Request = Request::EntitlementList(EntitlementQuery { feature: None });

fn entitlements_of(answer: Answer) -> Option<Vec<Entitlement>> {
    match answer {
        Answer::Entitlements(list) => Some(list),
        _ => None,
    }
}

/// Status per feature: the figures of `tally status`, each line coloured by whether a seat
/// is free, and marked when an entitlement is about to end.
pub async fn status(State(http): State<Arc<Http>>, headers: HeaderMap) -> Page {
    let viewer = viewer(&http, &headers)?;
    let figures = viewer
        .ask(
            &http,
            &headers,
            Request::Figures(StatusQuery { feature: None }),
            |a| match a {
                Answer::Figures(list) => Some(list),
                _ => None,
            },
        )
        .await?;
    let (entitlements, _) = shown(
        viewer
            .ask(&http, &headers, ENTITLEMENTS, entitlements_of)
            .await?,
    );
    let now = http.clock.now_millis();
    let (figures, refused) = shown(figures);
    let features: Vec<FeatureLine> = figures
        .into_iter()
        .map(|f| feature_line(f, &entitlements, now))
        .collect();
    Ok(page(
        StatusCode::OK,
        &StatusPage {
            frame: viewer.frame("status"),
            exhausted: features.iter().filter(|f| f.state == "exhausted").count(),
            expiring: features.iter().filter(|f| f.expiring.is_some()).count(),
            features,
            refused,
        },
    ))
}

// ----- leases and queue -----

pub struct LeaseLine {
    pub feature: String,
    pub seats: u32,
    pub user: String,
    pub host: String,
    pub kind: &'static str,
    pub source: String,
    pub granted: String,
    pub expires: String,
}

#[derive(Template)]
#[template(path = "leases.html")]
struct LeasesPageView {
    frame: Frame,
    admin: bool,
    leases: Vec<LeaseLine>,
    more: bool,
    refused: Option<String>,
}

/// The leases held (a member's own), newest first, at most [`LEASES_SHOWN`].
pub async fn leases(State(http): State<Arc<Http>>, headers: HeaderMap) -> Page {
    let viewer = viewer(&http, &headers)?;
    let request = Request::LeasesPage(LeasesPageQuery {
        query: LeasesQuery {
            feature: None,
            user: None,
        },
        after: None,
        limit: Some(LEASES_SHOWN),
    });
    let asked = viewer
        .ask(&http, &headers, request, |a| match a {
            Answer::LeasesPage(page) => Some(page),
            _ => None,
        })
        .await?;
    let more = asked.as_ref().is_ok_and(|page| page.next.is_some());
    let (leases, refused) = shown(asked.map(|page| page.leases));
    let leases = leases
        .into_iter()
        .map(|l| LeaseLine {
            feature: l.feature,
            seats: l.seats,
            user: l.user,
            host: l.host,
            kind: match l.kind {
                LeaseKind::Online => "online",
                LeaseKind::Borrowed => "borrowed",
            },
            source: match l.source {
                LeaseSource::Floating => "floating".into(),
                LeaseSource::Assignment(id) => format!("assignment {id}"),
            },
            granted: format_time(l.granted_at),
            expires: format_time(l.expires_at),
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        &LeasesPageView {
            frame: viewer.frame("leases"),
            admin: viewer.session.signed_in.role.is_admin(),
            leases,
            more,
            refused,
        },
    ))
}

pub struct QueueLine {
    pub feature: String,
    pub position: u32,
    pub seats: u32,
    pub user: String,
    pub host: String,
    pub since: String,
}

#[derive(Template)]
#[template(path = "queue.html")]
struct QueuePage {
    frame: Frame,
    admin: bool,
    entries: Vec<QueueLine>,
    refused: Option<String>,
}

/// The checkouts waiting for a seat (a member's own), by feature and place.
pub async fn queue(State(http): State<Arc<Http>>, headers: HeaderMap) -> Page {
    let viewer = viewer(&http, &headers)?;
    let request = Request::Queue(QueueQuery { feature: None });
    let asked = viewer
        .ask(&http, &headers, request, |a| match a {
            Answer::Queue(list) => Some(list),
            _ => None,
        })
        .await?;
    let (entries, refused) = shown(asked);
    let entries = entries
        .into_iter()
        .map(|q| QueueLine {
            feature: q.feature,
            position: q.position,
            seats: q.seats,
            user: q.user,
            host: q.host,
            since: format_time(q.since),
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        &QueuePage {
            frame: viewer.frame("queue"),
            admin: viewer.session.signed_in.role.is_admin(),
            entries,
            refused,
        },
    ))
}

// ----- entitlements -----

pub struct EntitlementLine {
    pub id: u64,
    pub feature: String,
    pub seats: u32,
    pub kind: &'static str,
    pub starts: String,
    pub expires: String,
    /// `expiring`, `expired`, `later` (not started), or `ok`.
    pub state: &'static str,
    /// "in 3 days", "ended", "starts in 2 days", "never".
    pub when: String,
    pub borrowable: bool,
    pub reference: String,
}

#[derive(Template)]
#[template(path = "entitlements.html")]
struct EntitlementsPage {
    frame: Frame,
    entitlements: Vec<EntitlementLine>,
    refused: Option<String>,
}

fn entitlement_line(e: Entitlement, now: i64) -> EntitlementLine {
    let (state, when) = match e.expires_at {
        _ if e.starts_at > now => ("later", format!("starts {}", from_now(e.starts_at, now))),
        Some(end) if end <= now => ("expired", "ended".to_string()),
        Some(end) if end - now <= EXPIRING_WITHIN_MS => ("expiring", from_now(end, now)),
        Some(end) => ("ok", from_now(end, now)),
        None => ("ok", "never".to_string()),
    };
    EntitlementLine {
        id: e.id,
        feature: e.feature,
        seats: e.seats,
        kind: match e.kind {
            EntitlementKind::Standard => "standard",
            EntitlementKind::Trial => "trial",
        },
        starts: format_time(e.starts_at),
        expires: e.expires_at.map_or_else(|| "never".into(), format_time),
        state,
        when,
        borrowable: e.borrowable,
        reference: e.reference,
    }
}

/// Every entitlement, soonest end first, with how long it has left.
pub async fn entitlements(State(http): State<Arc<Http>>, headers: HeaderMap) -> Page {
    let viewer = viewer(&http, &headers)?;
    let (mut list, refused) = shown(
        viewer
            .ask(&http, &headers, ENTITLEMENTS, entitlements_of)
            .await?,
    );
    let now = http.clock.now_millis();
    list.sort_by_key(|e| (e.expires_at.unwrap_or(i64::MAX), e.id));
    let entitlements = list.into_iter().map(|e| entitlement_line(e, now)).collect();
    Ok(page(
        StatusCode::OK,
        &EntitlementsPage {
            frame: viewer.frame("entitlements"),
            entitlements,
            refused,
        },
    ))
}

// ----- nodes -----

pub struct NodeLine {
    pub id: String,
    pub address: String,
    pub role: &'static str,
    pub epoch: i64,
    pub last_seen: String,
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct NodesPage {
    frame: Frame,
    /// (name, value) of `tally server info`.
    server: Vec<(&'static str, String)>,
    nodes: Vec<NodeLine>,
    /// Why there is no list of nodes: a single node, or not an admin.
    no_nodes: Option<String>,
}

fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Leader => "leader",
        NodeRole::Standby => "standby",
    }
}

/// This server as `tally server info` shows it, and the nodes of its cluster (admins).
pub async fn nodes(State(http): State<Arc<Http>>, headers: HeaderMap) -> Page {
    let viewer = viewer(&http, &headers)?;
    let info = viewer
        .ask(&http, &headers, Request::ServerInfo, |a| match a {
            Answer::ServerInfo(info) => Some(info),
            _ => None,
        })
        .await?;
    let listed = viewer
        .ask(&http, &headers, Request::ServerNodes, |a| match a {
            Answer::Nodes(list) => Some(list),
            _ => None,
        })
        .await?;
    let mut server = Vec::new();
    match info {
        Ok(info) => {
            server.push(("server id", info.id));
            server.push(("version", info.version));
            server.push(("store", info.store));
            server.push(("listening on", info.listen));
            server.push((
                "up for",
                humantime::format_duration(std::time::Duration::from_secs(info.uptime_secs))
                    .to_string(),
            ));
            server.push(("connections", info.connections.to_string()));
            server.push((
                "lease time to live",
                format!("{} s", info.lease_ttl_ms / 1000),
            ));
            if let Some(cluster) = info.cluster {
                server.push(("this node", cluster.node));
                server.push(("its role", role_name(cluster.role).to_string()));
                server.push(("epoch", cluster.epoch.to_string()));
                server.push((
                    "leader",
                    cluster.leader.unwrap_or_else(|| "none known".into()),
                ));
            }
        }
        Err(err) => server.push(("refused", refusal(&err))),
    }
    let (nodes, no_nodes) = match listed {
        Ok(list) => (
            list.into_iter()
                .map(|n| NodeLine {
                    id: n.id,
                    address: n.address,
                    role: role_name(n.role),
                    epoch: n.epoch,
                    last_seen: format_time(n.last_seen),
                })
                .collect(),
            None,
        ),
        Err(err) if err.code == ErrorCode::Invalid => (Vec::new(), Some(err.message)),
        Err(err) => (Vec::new(), Some(refusal(&err))),
    };
    Ok(page(
        StatusCode::OK,
        &NodesPage {
            frame: viewer.frame("nodes"),
            server,
            nodes,
            no_nodes,
        },
    ))
}

// ----- usage -----

#[derive(Template)]
#[template(path = "usage.html")]
struct UsagePage {
    frame: Frame,
    since: String,
    until: String,
    charts: Vec<Chart>,
    refused: Option<String>,
}

/// Each feature's last 7 days by hour, as `tally report usage --by hour` counts them: the
/// peak in use against the pool, drawn on the server.
pub async fn usage(State(http): State<Arc<Http>>, headers: HeaderMap) -> Page {
    let viewer = viewer(&http, &headers)?;
    let now = http.clock.now_millis();
    // The last 7 whole days of hours, up to the end of the current one.
    let until = (now.div_euclid(HOUR_MS) + 1) * HOUR_MS;
    let since = until - CHART_HOURS * HOUR_MS;
    let asked = viewer
        .ask(
            &http,
            &headers,
            Request::ReportUsage(UsageQuery {
                feature: None,
                since: Some(since),
                until: Some(until),
                by: ReportPeriod::Hour,
            }),
            |a| match a {
                Answer::Usage(rows) => Some(rows),
                _ => None,
            },
        )
        .await?;
    let (charts, refused) = match asked {
        Ok(rows) => {
            let mut by_feature: BTreeMap<&str, Vec<&tally_protocol::UsageRow>> = BTreeMap::new();
            for row in &rows {
                by_feature.entry(&row.feature).or_default().push(row);
            }
            (
                by_feature
                    .iter()
                    .map(|(feature, rows)| chart(feature, rows))
                    .collect(),
                None,
            )
        }
        Err(err) if err.code == ErrorCode::Forbidden => (
            Vec::new(),
            Some("Usage reports are for admins: ask one for `tally report usage`.".to_string()),
        ),
        Err(err) => (Vec::new(), Some(refusal(&err))),
    };
    Ok(page(
        StatusCode::OK,
        &UsagePage {
            frame: viewer.frame("usage"),
            since: format_time(since),
            until: format_time(until),
            charts,
            refused,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_protocol::FeatureStatus;

    fn figures(
        total: u32,
        assigned: u32,
        in_use: u32,
        queued: u32,
        reserved: u32,
    ) -> FeatureFigures {
        let floating = total - assigned;
        FeatureFigures {
            status: FeatureStatus {
                feature: "nuke".into(),
                total,
                assigned,
                floating,
                in_use,
                borrowed: 0,
                available: floating.saturating_sub(in_use + reserved),
                queued,
            },
            reserved,
        }
    }

    fn entitlement(starts_at: i64, expires_at: Option<i64>) -> Entitlement {
        Entitlement {
            id: 1,
            feature: "nuke".into(),
            seats: 5,
            starts_at,
            expires_at,
            kind: EntitlementKind::Standard,
            borrowable: false,
            max_borrow_secs: 0,
            reference: String::new(),
        }
    }

    #[test]
    fn a_feature_with_no_free_seat_is_exhausted_at_a_glance() {
        let now = 1_000 * HOUR_MS;
        assert_eq!(
            feature_line(figures(5, 0, 5, 0, 0), &[], now).state,
            "exhausted"
        );
        assert_eq!(
            feature_line(figures(5, 0, 3, 0, 2), &[], now).state,
            "exhausted"
        );
        assert_eq!(feature_line(figures(5, 0, 4, 0, 0), &[], now).state, "free");
        assert_eq!(feature_line(figures(0, 0, 0, 0, 0), &[], now).state, "none");
        // All seats assigned by name: nothing floats, and nobody waits for one.
        assert_eq!(feature_line(figures(3, 3, 0, 0, 0), &[], now).state, "free");
        let line = feature_line(figures(4, 0, 3, 0, 1), &[], now);
        assert_eq!((line.held_pct, line.reserved_pct), (75.0, 25.0));
        // A seat assigned by name and in use is not a floating seat held.
        let mut assigned = figures(6, 1, 2, 0, 0);
        assigned.status.available = 3;
        assert_eq!(feature_line(assigned, &[], now).held_pct, 40.0);
    }

    #[test]
    fn an_entitlement_ending_within_two_weeks_marks_its_feature() {
        let now = 1_000 * HOUR_MS;
        let soon = [entitlement(0, Some(now + 3 * 24 * HOUR_MS))];
        let later = [entitlement(0, Some(now + 30 * 24 * HOUR_MS))];
        let not_started = [entitlement(now + HOUR_MS, Some(now + 2 * HOUR_MS))];
        let line = feature_line(figures(5, 0, 1, 0, 0), &soon, now);
        assert_eq!(line.expiring.as_deref(), Some("expires in 3 days"));
        assert!(feature_line(figures(5, 0, 1, 0, 0), &later, now)
            .expiring
            .is_none());
        assert!(feature_line(figures(5, 0, 1, 0, 0), &not_started, now)
            .expiring
            .is_none());
        assert_eq!(entitlement_line(soon[0].clone(), now).state, "expiring");
        assert_eq!(entitlement_line(later[0].clone(), now).state, "ok");
        assert_eq!(entitlement_line(not_started[0].clone(), now).state, "later");
        assert_eq!(
            entitlement_line(entitlement(0, Some(now)), now).state,
            "expired"
        );
        assert_eq!(entitlement_line(entitlement(0, None), now).when, "never");
    }

    #[test]
    fn time_left_reads_in_the_largest_sensible_unit() {
        let now = 0;
        assert_eq!(from_now(3 * 24 * HOUR_MS + 5, now), "in 3 days");
        assert_eq!(from_now(47 * HOUR_MS, now), "in 47 hours");
        assert_eq!(from_now(90 * 60_000, now), "in 90 minutes");
        assert_eq!(from_now(30_000, now), "now");
    }

    #[test]
    fn a_form_from_another_site_is_told_apart() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("tally.example:27080"));
        assert!(same_origin(&headers));
        headers.insert(
            ORIGIN,
            HeaderValue::from_static("https://tally.example:27080"),
        );
        assert!(same_origin(&headers));
        headers.insert(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&headers));
        headers.insert(
            ORIGIN,
            HeaderValue::from_static("http://tally.example:27080"),
        );
        assert!(!same_origin(&headers));
    }
}
