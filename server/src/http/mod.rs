//! The HTTPS side of `tallyd` (SPEC §10): `/metrics`, `/healthz`, `/readyz` and the
//! dashboard, served with the server's own certificate (the rustls configuration of the
//! protocol listener, swapped on reload) on the daemon's runtime. Nothing here changes the
//! pool.
//!
//! [`serve`] is the accept loop: a task per connection, the TLS handshake within
//! `limits.handshake_timeout`, then hyper's HTTP/1.1 connection serving [`router`], at most
//! [`MAX_CONNECTIONS`] at once, each finishing its request in flight when the daemon stops.
//! Routes are added to [`router`]; what they share is [`Http`].
//!
//! - `metrics`: the counters the engine adds to, and the encoding of a scrape.
//! - `dashboard`: the signed-in pages, asking the engine what the protocol asks.
//! - `sessions`: the dashboard's sign-in sessions and their cookie.
//! - `chart`: the geometry of the dashboard's usage chart.

mod chart;
mod dashboard;
mod metrics;
mod sessions;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use metrics::{Metrics, NodeFigures};
pub use sessions::SESSION_LIFETIME;

use crate::clock::Clock;
use crate::config::Secret;
use crate::engine::Job;
use crate::ha::Serving;
use crate::limiter::Throttle;
use crate::shared::Shared;

/// The most HTTP connections open at once; more are closed as they come. Scrapers and
/// load balancers hold a few.
pub const MAX_CONNECTIONS: usize = 64;

/// How long `/readyz` waits for the database to answer.
pub const PING_WITHIN: Duration = Duration::from_secs(2);

/// How long `/metrics` waits for the engine's figures; past it, only the node's own
/// metrics are exported.
pub const ENGINE_WITHIN: Duration = Duration::from_secs(5);

/// While connections are refused or `accept` fails, one warning of each kind per this long.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// What the routes share.
pub struct Http {
    /// The TLS configuration, limits, open protocol connections, the engine's queue, the
    /// node's serving state and the store.
    shared: Arc<Shared>,
    /// The counters the engine adds to.
    metrics: Arc<Metrics>,
    /// SHA-256 of `http.metrics_token`, when `/metrics` needs it; swapped on reload.
    token: RwLock<Option<[u8; 32]>>,
    /// The daemon's time, which dashboard sessions expire by.
    clock: Clock,
    /// The dashboard's open sessions.
    sessions: sessions::Sessions,
}

impl Http {
    pub fn new(
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
        token: Option<&Secret>,
        clock: Clock,
    ) -> Self {
        let http = Self {
            shared,
            metrics,
            token: RwLock::new(None),
            clock,
            sessions: sessions::Sessions::default(),
        };
        http.set_token(token);
        http
    }

    /// The token `/metrics` asks for from now on (`None`: none).
    pub fn set_token(&self, token: Option<&Secret>) {
        let hash = token.map(|t| Sha256::digest(t.0.as_bytes()).into());
        *self.token.write().expect("token lock") = hash;
    }

    /// Whether the request may read `/metrics`: no token is configured, or it carries
    /// `Authorization: Bearer TOKEN` with the right one (compared in constant time, as
    /// hashes, so that neither its bytes nor its length show in the time taken).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = *self.token.read().expect("token lock") else {
            return true;
        };
        let Some(value) = headers.get(AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        let given: [u8; 32] = Sha256::digest(value[7..].trim_ascii()).into();
        let differ = given
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(differ) == 0
    }

    /// What this node knows of itself.
    fn node(&self) -> NodeFigures {
        let (leader, epoch) = match &*self.shared.serving.borrow() {
            Serving::Leader { epoch } => (true, Some(*epoch)),
            Serving::Standby { .. } => (false, None),
        };
        NodeFigures {
            connections: self.shared.connections.load(Ordering::Relaxed) as u64,
            leader,
            epoch,
        }
    }
}

/// The largest request body taken: the sign-in form's.
const MAX_BODY: usize = 4096;

/// The routes. Each handler reads; none changes the pool (signing in and out of the
/// dashboard changes only its sessions).
pub fn router(http: Arc<Http>) -> Router {
    Router::new()
        .route("/", get(dashboard::status))
        .route("/leases", get(dashboard::leases))
        .route("/queue", get(dashboard::queue))
        .route("/usage", get(dashboard::usage))
        .route("/entitlements", get(dashboard::entitlements))
        .route("/nodes", get(dashboard::nodes))
        .route(
            "/signin",
            get(dashboard::sign_in_form).post(dashboard::sign_in_post),
        )
        .route("/signout", post(dashboard::sign_out))
        .route("/style.css", get(dashboard::style))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(http)
}

/// A short text answer.
fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    body.push('\n');
    (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found")
}

/// 200 while the process runs.
async fn healthz() -> Response {
    text(StatusCode::OK, "ok")
}

/// 200 while this node serves the pool and its store answers now; else 503, saying why.
async fn readyz(State(http): State<Arc<Http>>) -> Response {
    let standby = match &*http.shared.serving.borrow() {
        Serving::Leader { .. } => None,
        Serving::Standby {
            leader: Some(leader),
        } => Some(format!(
            "not ready: this node is a standby; the leader is at {leader}"
        )),
        Serving::Standby { leader: None } => {
            Some("not ready: this node is a standby and no leader is known".to_string())
        }
    };
    if let Some(why) = standby {
        return text(StatusCode::SERVICE_UNAVAILABLE, why);
    }
    match tokio::time::timeout(PING_WITHIN, http.shared.store.ping()).await {
        Ok(Ok(())) => text(StatusCode::OK, "ready"),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readyz: the database does not answer");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the database does not answer (the log says why)",
            )
        }
        Err(_) => {
            tracing::warn!(within = ?PING_WITHIN, "readyz: the database did not answer in time");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: the database did not answer within {}s",
                    PING_WITHIN.as_secs()
                ),
            )
        }
    }
}

/// The Prometheus scrape: the node's metrics, and the pool's while this node serves it.
async fn metrics(State(http): State<Arc<Http>>, headers: HeaderMap) -> Response {
    if !http.authorized(&headers) {
        let mut response = text(
            StatusCode::UNAUTHORIZED,
            "unauthorized: /metrics needs the header Authorization: Bearer TOKEN with http.metrics_token",
        );
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, "Bearer".parse().expect("a header value"));
        return response;
    }
    let node = http.node();
    let pool = match node.leader {
        true => gauges(&http).await,
        false => None,
    };
    let body = http.metrics.encode(node, pool.as_ref());
    (
        StatusCode::OK,
        [(CONTENT_TYPE, metrics::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

/// The pool's figures, from the engine as any read is answered; `None` when it does not
/// answer in time (a standby now, or a commit that failed or hangs).
async fn gauges(http: &Http) -> Option<crate::core::Gauges> {
    let (tx, rx) = oneshot::channel();
    let asked = async {
        http.shared.engine.send(Job::Gauges(tx)).await.ok()?;
        rx.await.ok()
    };
    match tokio::time::timeout(ENGINE_WITHIN, asked).await {
        Ok(gauges) => gauges,
        Err(_) => {
            tracing::warn!(within = ?ENGINE_WITHIN, "metrics: the engine did not answer in time; exporting the node's own metrics only");
            None
        }
    }
}

/// Accepts HTTPS connections on `listener` until `shutdown`, then waits for the requests
/// in flight.
pub async fn serve(listener: TcpListener, http: Arc<Http>, shutdown: CancellationToken) {
    let router = router(http.clone());
    let tracker = TaskTracker::new();
    let open = Arc::new(AtomicUsize::new(0));
    let mut accept_failed = Throttle::new(WARN_EVERY);
    let mut overloaded = Throttle::new(WARN_EVERY);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                if let Some(held_back) = accept_failed.ready(Instant::now()) {
                    tracing::warn!(error = %err, held_back, "http: accept failed; retrying every 50ms");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            if let Some(held_back) = overloaded.ready(Instant::now()) {
                tracing::warn!(%peer, max = MAX_CONNECTIONS, held_back, "http: refusing connection: too many open");
            }
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (open, router, shutdown) = (open.clone(), router.clone(), shutdown.clone());
        let acceptor = TlsAcceptor::from(http.shared.tls());
        let within = http.shared.limits().handshake_timeout;
        tracker.spawn(async move {
            connection(tcp, peer, acceptor, within, router, shutdown).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// One connection: the TLS handshake within `within` (given up at once when the daemon
/// stops), then HTTP/1.1 until the peer closes, a request's head takes longer than
/// `within`, or the daemon stops (after the request in flight).
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    within: Duration,
    router: Router,
    shutdown: CancellationToken,
) {
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(within, acceptor.accept(tcp)) => handshake,
        _ = shutdown.cancelled() => return,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "http: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, ?within, "http: TLS handshake not finished in time");
            return;
        }
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(within);
    let router = router.layer(Extension(dashboard::ClientAddr(peer)));
    let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(router));
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = served {
        tracing::debug!(%peer, error = %err, "http: connection ended with an error");
    }
}
