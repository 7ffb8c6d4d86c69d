//! One client connection: TLS, `Hello`/`Welcome`, `Authenticate`, then pipelined requests.
//!
//! The connection task only moves messages: it forwards each request to the engine and
//! writes the answers back in the order the requests came. Anything malformed closes this
//! connection with an error naming what was wrong; it never affects anyone else.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::FutureExt;
use tally_protocol::{
    Authenticated, ClientId, ClientMessage, ClusterInfo, Connection, ErrorBody, ErrorCode,
    FrameError, Hello, NodeInfo, NodeRole, Outcome, Request, Response, ServerInfo, ServerMessage,
    MAX_RESPONSE_FRAME, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::core::{require_admin, Actor, Holder, Peer, SignOut, SignedIn};
use crate::engine::{Job, RequestJob, SignInJob, SignInOutcome};
use crate::ha::Serving;
use crate::init::token_hash;
use crate::limiter::{PreAuthPermit, Prefix, FAILURE_PAUSE};
use crate::logtext;
use crate::route::{route, Route};
use crate::shared::Shared;

/// Most requests of one connection waiting for their answers; past it, reading pauses.
const MAX_IN_FLIGHT: usize = 64;

/// Serves one accepted TCP connection until it closes. `permit` holds its place among the
/// connections not signed in yet until it signs in.
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    permit: PreAuthPermit,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("conn", %peer, user = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let limits = shared.limits();
        let deadline = Instant::now() + limits.handshake_timeout;
        let acceptor = TlsAcceptor::from(shared.tls());
        let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(
                    "TLS handshake not finished within {:?}",
                    limits.handshake_timeout
                );
                return;
            }
        };
        let conn = Connection::with_limits(tls, limits.max_frame, MAX_RESPONSE_FRAME);
        if let Err(reason) = session(conn, &shared, peer.ip(), permit, deadline, &shutdown).await {
            tracing::debug!(%reason, "connection closed");
        }
    }
    .instrument(span)
    .await
}

/// Refuses the peer with a connection-level error, then closes.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    error: ErrorBody,
) -> String {
    let text = error.to_string();
    let _ = conn.send(&ServerMessage::Error(error)).await;
    let _ = conn.close().await;
    text
}

/// What a frame error means for the peer, if anything can be told.
fn frame_refusal(err: &FrameError) -> Option<ErrorBody> {
    match err {
        FrameError::Oversize { max } => Some(ErrorBody::invalid(format!(
            "frame larger than the limit of {max} bytes"
        ))),
        FrameError::Decode(why) => Some(ErrorBody::invalid(format!("malformed message: {why}"))),
        _ => None,
    }
}

/// Reads one message of the opening exchange before `deadline`; anything but a message
/// refuses the peer (when something can be said) and ends the connection.
async fn handshake_message<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    deadline: Instant,
    expected: &str,
) -> Result<ClientMessage, String> {
    match tokio::time::timeout_at(deadline, conn.recv::<ClientMessage>()).await {
        Ok(Ok(Some(message))) => Ok(message),
        Ok(Ok(None)) => Err(format!("closed before {expected}")),
        Ok(Err(err)) => Err(match frame_refusal(&err) {
            Some(body) => refuse(conn, body).await,
            None => err.to_string(),
        }),
        Err(_) => {
            let err = ErrorBody::invalid(format!("no {expected} within the handshake timeout"));
            Err(refuse(conn, err).await)
        }
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Connection<S>,
    shared: &Shared,
    ip: std::net::IpAddr,
    permit: PreAuthPermit,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    // Hello, within the handshake timeout.
    let hello: Hello = match handshake_message(&mut conn, deadline, "Hello").await? {
        ClientMessage::Hello(hello) => hello,
        _ => {
            let err = ErrorBody::new(
                ErrorCode::Unauthenticated,
                "the first message must be Hello",
            );
            return Err(refuse(&mut conn, err).await);
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let err = ErrorBody::new(
            ErrorCode::VersionUnsupported,
            format!(
                "client speaks protocol version {}, this server speaks {PROTOCOL_VERSION}; upgrade the older side",
                hello.protocol_version
            ),
        );
        return Err(refuse(&mut conn, err).await);
    }
    conn.send(&ServerMessage::Welcome(shared.welcome.clone()))
        .await
        .map_err(|e| e.to_string())?;

    // Authenticate, within the same deadline.
    let token = match handshake_message(&mut conn, deadline, "Authenticate").await? {
        ClientMessage::Authenticate(auth) => auth.token,
        _ => {
            let err = ErrorBody::new(
                ErrorCode::Unauthenticated,
                "authenticate before sending requests",
            );
            return Err(refuse(&mut conn, err).await);
        }
    };
    // Subscribed before signing in, so that a revocation committed meanwhile is seen.
    let sign_outs = shared.sign_outs.subscribe();
    let peer = format!(
        "{ip} {} ({}, pid {})",
        truncate(&hello.client.host, 255),
        truncate(&hello.client.agent, 64),
        hello.client.pid
    );
    let session = match sign_in(shared, token_hash(&token), ip, peer).await {
        Ok(session) => Arc::new(session),
        // A refused token (unknown, revoked, or its account deactivated) counts toward the
        // sign-in limit of its address; a valid one always signs in.
        Err(err) if err.code == ErrorCode::Unauthenticated => {
            tracing::info!(agent = %logtext::peer(&hello.client.agent), host = %logtext::peer(&hello.client.host), reason = %logtext::peer(&err.message), "sign-in refused");
            return Err(sign_in_failed(&mut conn, shared, ip, err, shutdown).await);
        }
        Err(err) => {
            tracing::warn!(reason = %err.message, "sign-in failed");
            return Err(refuse(&mut conn, err).await);
        }
    };
    drop(permit);
    tracing::Span::current().record(
        "user",
        tracing::field::display(logtext::peer(&session.username)),
    );
    let holder = Arc::new(Holder {
        client: session_client(session.user_id, hello.client.instance),
        host: truncate(&hello.client.host, 255),
        peer: Peer {
            program: truncate(&hello.client.agent, 255),
            pid: hello.client.pid,
            address: ip.to_canonical().to_string(),
        },
    });
    conn.send(&ServerMessage::Authenticated(Authenticated {
        username: session.username.clone(),
        role: session.role,
    }))
    .await
    .map_err(|e| e.to_string())?;
    tracing::debug!(agent = %logtext::peer(&hello.client.agent), host = %logtext::peer(&holder.host), "signed in");
    // An admin may send a whole bulk file (SPEC R19) as one request, larger than anyone
    // else's frames; every request is still checked against the role the pool holds now.
    if session.role.is_admin() {
        conn.set_max_read(
            shared
                .limits()
                .max_frame
                .max(tally_protocol::MAX_BULK_FRAME),
        );
    }

    // A connection opened while this node serves ends when that serving ends (a cluster's
    // leader stepping down), so that its client moves on to the new leader.
    let mut serving = shared.serving.clone();
    let serving_epoch = match &*serving.borrow_and_update() {
        Serving::Leader { epoch } => Some(*epoch),
        Serving::Standby { .. } => None,
    };

    // Queue notices (R17) for this client instance come from the engine through here.
    let mut notices = shared.notices.register(holder.client);

    // What ends a connection from outside waits in futures made once, not at every turn of
    // the loop: each turn (a request read, answers written) then costs no timer, lock or
    // waiter list. The idle limit is one timer, moved on only when it fires.
    let ended = serving_ended(&mut serving, serving_epoch);
    let cancelled = shutdown.cancelled();
    let signed_out = signed_out(sign_outs, &session);
    let idle = shared.ttl;
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(ended, cancelled, signed_out, idle_timer);
    let mut last_frame = Instant::now();
    let mut signed_out_open = true;

    // Requests, pipelined; answers go back in order.
    let mut pending = VecDeque::new();
    let mut closing = false;
    loop {
        if closing && pending.is_empty() {
            let _ = conn.close().await;
            return Ok(());
        }
        tokio::select! {
            biased;
            () = &mut ended => {
                let _ = conn.close().await;
                return Err("this node stopped leading; closing so that the client moves to the new leader".into());
            }
            first = oldest_answer(&mut pending), if !pending.is_empty() => {
                // Every answer ready now goes out in one write, in order: with many requests
                // in flight, those of one group commit are usually ready together.
                let mut ready = Some(first);
                while let Some((id, outcome)) = ready.take() {
                    // The engine dropped the request unanswered: it stopped serving with the
                    // request's commit in flight, whose outcome the new leader knows.
                    let Some(outcome) = outcome else {
                        let _ = conn.close().await;
                        return Err("this node stopped serving with a request in flight; closing unanswered".into());
                    };
                    // The account was deactivated or removed since it signed in: answer,
                    // then close, so the client stops using the connection.
                    let signed_out = match &outcome {
                        Outcome::Err(err) if err.code == ErrorCode::Unauthenticated => Some(err.clone()),
                        _ => None,
                    };
                    conn.feed(&ServerMessage::Response { id, outcome }).await.map_err(|e| e.to_string())?;
                    if let Some(err) = signed_out {
                        return Err(refuse(&mut conn, err).await);
                    }
                    // Polled without waiting: the oldest is polled again with the loop's own
                    // waker at the next `select!`, so no wake-up is lost.
                    ready = oldest_answer(&mut pending).now_or_never();
                }
                conn.flush().await.map_err(|e| e.to_string())?;
            }
            Some(notice) = notices.messages.recv() => {
                conn.send(&*notice).await.map_err(|e| e.to_string())?;
            }
            () = &mut cancelled, if !closing => closing = true,
            ended = &mut signed_out, if signed_out_open => match ended {
                Some(err) => return Err(refuse(&mut conn, err).await),
                // No more sign-outs can come (the engine is gone): close once answered.
                None => {
                    signed_out_open = false;
                    closing = true;
                }
            },
            () = &mut idle_timer, if !closing => {
                let due = last_frame + idle;
                let now = Instant::now();
                if due > now {
                    idle_timer.as_mut().reset(due);
                } else if !pending.is_empty() {
                    // Waiting for its own answers is not idle.
                    idle_timer.as_mut().reset(now + idle);
                } else {
                    let err = ErrorBody::invalid(format!("no heartbeat within {idle:?}; closing the idle connection"));
                    return Err(refuse(&mut conn, err).await);
                }
            }
            message = conn.recv::<ClientMessage>(), if !closing && pending.len() < MAX_IN_FLIGHT => {
                last_frame = Instant::now();
                match message {
                    Ok(Some(ClientMessage::Request { id, body })) => {
                        let answer = answer(shared, &session, &holder, body).await;
                        pending.push_back((id, answer));
                    }
                    Ok(Some(_)) => {
                        let err = ErrorBody::invalid("Hello and Authenticate are sent once, at the start");
                        return Err(refuse(&mut conn, err).await);
                    }
                    Ok(None) => closing = true,
                    Err(err) => return Err(match frame_refusal(&err) {
                        Some(body) => refuse(&mut conn, body).await,
                        None => err.to_string(),
                    }),
                }
            }
        }
    }
}

/// Resolves with the refusal to send when this connection's token is revoked or its account
/// deactivated or removed (`None` once no sign-out can come any more). Made once per
/// connection, so it stays registered with the channel instead of joining its waiters at
/// every turn of the connection's loop.
async fn signed_out(
    mut sign_outs: broadcast::Receiver<SignOut>,
    session: &SignedIn,
) -> Option<ErrorBody> {
    loop {
        match sign_outs.recv().await {
            Ok(SignOut::Token(id)) if id == session.token => {
                return Some(ErrorBody::new(
                    ErrorCode::Unauthenticated,
                    "the token of this connection was revoked",
                ));
            }
            Ok(SignOut::User(id)) if id == session.user_id => {
                return Some(ErrorBody::new(
                    ErrorCode::Unauthenticated,
                    format!(
                        "the account {} was deactivated or removed",
                        session.username
                    ),
                ));
            }
            // Missed notices: every request is still checked against the pool.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// Refuses a failed sign-in and counts it. Past `limits.signin_failures` from this address
/// the refusal is `rate_limited`, naming the wait, and comes after [`FAILURE_PAUSE`]: with
/// the connections an address may have before signing in capped, that keeps guessing slow,
/// while a valid token from the same address still signs in at once.
async fn sign_in_failed<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    shared: &Shared,
    ip: std::net::IpAddr,
    err: ErrorBody,
    shutdown: &CancellationToken,
) -> String {
    let Err(wait) = shared.auth_limiter.failed(ip, std::time::Instant::now()) else {
        return refuse(conn, err).await;
    };
    tokio::select! {
        _ = tokio::time::sleep(FAILURE_PAUSE) => {}
        _ = shutdown.cancelled() => {}
    }
    let limited = ErrorBody::new(
        ErrorCode::RateLimited,
        format!(
            "{}; too many sign-ins from {} failed, so failures are answered slowly for another {} s (a valid token still signs in)",
            err.message,
            Prefix(ip),
            wait.as_secs().max(1)
        ),
    );
    refuse(conn, limited).await
}

/// Resolves when the node no longer serves under `epoch` (or the engine is gone); never for
/// a connection opened while it did not serve. Made once per connection.
async fn serving_ended(serving: &mut watch::Receiver<Serving>, epoch: Option<i64>) {
    let Some(epoch) = epoch else {
        return std::future::pending().await;
    };
    loop {
        if serving.changed().await.is_err() {
            return;
        }
        if *serving.borrow_and_update() != (Serving::Leader { epoch }) {
            return;
        }
    }
}

/// One request's answer to come: handed to the engine, whose answer comes through a
/// oneshot, or answered here (`ServerInfo`, `ServerNodes`). A future (`None`: the engine
/// dropped the request unanswered) that a connection keeps in its queue of requests in
/// flight, in order, polling only the oldest; nothing is boxed or allocated for the
/// engine's requests beyond the oneshot.
pub(crate) struct Answer {
    name: &'static str,
    started: std::time::Instant,
    waiting: Waiting,
}

/// Small, as a connection's queue keeps room for several: what is not the engine's oneshot
/// is boxed.
enum Waiting {
    Engine(oneshot::Receiver<Outcome>),
    Here(futures::future::BoxFuture<'static, Outcome>),
}

impl Future for Answer {
    type Output = Option<Outcome>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let outcome = match &mut self.waiting {
            Waiting::Engine(answer) => match std::pin::Pin::new(answer).poll(cx) {
                Poll::Ready(outcome) => outcome.ok(),
                Poll::Pending => return Poll::Pending,
            },
            Waiting::Here(answer) => match answer.as_mut().poll(cx) {
                Poll::Ready(outcome) => Some(outcome),
                Poll::Pending => return Poll::Pending,
            },
        };
        tracing::debug!(
            request = self.name,
            elapsed_us = self.started.elapsed().as_micros() as u64,
            ok = matches!(outcome, Some(Outcome::Ok(_))),
            "request"
        );
        Poll::Ready(outcome)
    }
}

/// Starts one request of a signed-in session, a protocol connection's or the dashboard's:
/// answered here (`ServerInfo`, `ServerNodes`, which a standby answers too) or handed to
/// the engine, which checks the token, the account and its role as they are now. Waits
/// only while the engine's queue is full, so a connection's requests reach the engine in
/// the order they came.
pub(crate) async fn answer(
    shared: &Shared,
    session: &Arc<SignedIn>,
    holder: &Arc<Holder>,
    request: Request,
) -> Answer {
    let started = std::time::Instant::now();
    let request = match route(request) {
        Route::Engine(request) => request,
        Route::ServerInfo => {
            let info = server_info(shared);
            return Answer {
                name: "server_info",
                started,
                waiting: Waiting::Here(Box::pin(info)),
            };
        }
        Route::ServerNodes => {
            let nodes = server_nodes(shared, session);
            return Answer {
                name: "server_nodes",
                started,
                waiting: Waiting::Here(Box::pin(nodes)),
            };
        }
    };
    let name = request.name;
    let (reply, answer) = oneshot::channel();
    let job = Job::Request(RequestJob {
        session: session.clone(),
        holder: holder.clone(),
        request,
        reply,
    });
    let waiting = match shared.engine.send(job).await {
        Ok(()) => Waiting::Engine(answer),
        Err(_) => Waiting::Here(Box::pin(std::future::ready(Outcome::Err(shutting_down())))),
    };
    Answer {
        name,
        started,
        waiting,
    }
}

/// The answer of the oldest request in flight, when it comes; answers go back in the
/// order the requests came, so only the oldest is polled.
async fn oldest_answer(pending: &mut VecDeque<(u32, Answer)>) -> (u32, Option<Outcome>) {
    std::future::poll_fn(|cx| {
        let Some((_, answer)) = pending.front_mut() else {
            return std::task::Poll::Pending;
        };
        let outcome = std::task::ready!(std::pin::Pin::new(answer).poll(cx));
        let (id, _) = pending.pop_front().expect("the oldest was just polled");
        std::task::Poll::Ready((id, outcome))
    })
    .await
}

/// Signs a token in through the engine, asking the store about a hash the pool does not
/// know (a token `tallyd owner-token` added while this server ran).
pub(crate) async fn sign_in(
    shared: &Shared,
    hash: [u8; 32],
    ip: std::net::IpAddr,
    peer: String,
) -> Result<SignedIn, ErrorBody> {
    let mut looked_up = None;
    loop {
        let (reply, answer) = oneshot::channel();
        let job = Job::SignIn(SignInJob {
            hash,
            address: ip.to_canonical().to_string(),
            peer: peer.clone(),
            looked_up: looked_up.clone(),
            reply,
        });
        shared.engine.send(job).await.map_err(|_| shutting_down())?;
        match answer.await.map_err(|_| shutting_down())? {
            SignInOutcome::Ok(session) => return Ok(session),
            SignInOutcome::Refused(err) => return Err(err),
            SignInOutcome::Unknown if looked_up.is_none() => {
                let found = shared.store.find_token(&hash).await.map_err(|err| {
                    tracing::error!(error = %err, "token look-up failed");
                    ErrorBody::internal()
                })?;
                looked_up = Some(found);
            }
            SignInOutcome::Unknown => return Err(ErrorBody::internal()),
        }
    }
}

/// The client instance as the pool knows it: bound to the account, so that another user
/// presenting the same instance id never shares its session or its leases.
pub(crate) fn session_client(user_id: u64, instance: ClientId) -> ClientId {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"tally session");
    hasher.update(user_id.to_be_bytes());
    hasher.update(instance.0);
    let digest = hasher.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    ClientId(id)
}

fn shutting_down() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Internal,
        "the server is shutting down; retry against another server or in a moment",
    )
}

/// What a peer says of itself (host, program), cut to `max` bytes, with control characters
/// (NUL among them, which PostgreSQL's text cannot hold) made U+FFFD: it is stored with
/// leases and shown to admins.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end]
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

/// The answer to `ServerInfo`, from what the connection tasks share; on a cluster's node
/// also its role, and the epoch and leader as the database has them.
fn server_info(shared: &Shared) -> impl std::future::Future<Output = Outcome> + Send + 'static {
    let mut info = ServerInfo {
        id: shared.welcome.server_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL_VERSION,
        store: shared.store.backend().to_string(),
        uptime_secs: shared.started.elapsed().as_secs(),
        connections: shared.connections.load(Ordering::Relaxed) as u64,
        cluster: None,
        listen: shared.listen.to_string(),
        lease_ttl_ms: shared.ttl.as_millis() as u64,
    };
    let node = shared
        .node
        .as_ref()
        .map(|node| (node.id.clone(), node.store.clone()));
    let serving = shared.serving.borrow().clone();
    async move {
        let Some((id, store)) = node else {
            return Outcome::Ok(Response::ServerInfo(info));
        };
        let nodes = match store.nodes().await {
            Ok(nodes) => nodes,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the cluster's nodes");
                return Outcome::Err(ErrorBody::internal());
            }
        };
        let leader = nodes.iter().find(|node| node.leads);
        let (role, epoch) = match serving {
            Serving::Leader { epoch } => (NodeRole::Leader, epoch),
            Serving::Standby { .. } => (
                NodeRole::Standby,
                nodes.first().map_or(0, |node| node.epoch),
            ),
        };
        info.cluster = Some(ClusterInfo {
            node: id,
            role,
            epoch,
            leader: leader.map(|node| node.address.clone()),
        });
        Outcome::Ok(Response::ServerInfo(info))
    }
}

/// The answer to `ServerNodes`: admins only; every node of the cluster, or, on a single node
/// (SQLite), a refusal saying there is no cluster.
fn server_nodes(
    shared: &Shared,
    session: &SignedIn,
) -> impl std::future::Future<Output = Outcome> + Send + 'static {
    let actor = Actor {
        username: session.username.clone(),
        role: session.role,
    };
    let store = shared.node.as_ref().map(|node| node.store.clone());
    async move {
        if let Err(refused) = require_admin(&actor, "list the nodes of the cluster") {
            return Outcome::Err(refused);
        }
        let Some(store) = store else {
            return Outcome::Err(ErrorBody::new(
                ErrorCode::Invalid,
                "this server runs on SQLite: it is a single node, not a cluster",
            ));
        };
        match store.nodes().await {
            Ok(nodes) => Outcome::Ok(Response::Nodes(
                nodes
                    .into_iter()
                    .map(|node| NodeInfo {
                        id: node.id,
                        address: node.address,
                        role: if node.leads {
                            NodeRole::Leader
                        } else {
                            NodeRole::Standby
                        },
                        epoch: node.epoch,
                        last_seen: node.last_seen,
                    })
                    .collect(),
            )),
            Err(err) => {
                tracing::error!(error = %err, "cannot read the cluster's nodes");
                Outcome::Err(ErrorBody::internal())
            }
        }
    }
}
