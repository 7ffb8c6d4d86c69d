//! The real counterparts of the notification sinks (SPEC §9, R20), run inside the test
//! process: an SMTP server speaking the protocol (EHLO, STARTTLS, AUTH; mailin-embedded),
//! optionally behind a TLS-terminating relay for `smtps://`, whose messages are parsed with
//! mail-parser; and an HTTP receiver (axum) that checks each body's `Tally-Signature` and
//! records the bodies, and can be set down (503).
//!
//! Each runs on threads of its own (the receiver and the relay with their own tokio
//! runtime), so the tests' runtime and the daemon never share a thread with them. `wait_for`
//! blocks the calling thread: call it from a test whose daemon is a process, or from
//! `spawn_blocking`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use mailin_embedded::{response, AuthMechanism, Handler, Response, Server, SslConfig};
use sha2::Sha256;

/// One message the SMTP server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The envelope sender (`MAIL FROM`).
    pub from: String,
    /// The envelope recipients (`RCPT TO`), in the order given.
    pub to: Vec<String>,
    /// The `Subject:` header, decoded.
    pub subject: String,
    /// The first text body part.
    pub body: String,
    /// The `Message-ID:` header, without the angle brackets.
    pub message_id: String,
}

/// What an SMTP session of the server saw, and what every session shares.
#[derive(Clone)]
struct MailHandler {
    /// Messages accepted, shared by every session.
    shared: Arc<(Mutex<Vec<Mail>>, Condvar)>,
    /// The credentials AUTH must give, when the server asks for them.
    credentials: Option<(String, String)>,
    /// This session's envelope sender and recipients.
    envelope: Option<(String, Vec<String>)>,
    /// This session's message so far.
    data: Vec<u8>,
}

impl Handler for MailHandler {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.envelope = Some((from.to_string(), to.to_vec()));
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let Some((from, to)) = self.envelope.take() else {
            return response::INTERNAL_ERROR;
        };
        let Some(message) = mail_parser::MessageParser::default().parse(&self.data) else {
            return response::INTERNAL_ERROR;
        };
        let mail = Mail {
            from,
            to,
            subject: message.subject().unwrap_or_default().to_string(),
            body: message
                .body_text(0)
                .map(|body| body.into_owned())
                .unwrap_or_default(),
            message_id: message.message_id().unwrap_or_default().to_string(),
        };
        let (mails, arrived) = &*self.shared;
        mails.lock().unwrap().push(mail);
        arrived.notify_all();
        response::OK
    }

    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        self.check(user, password)
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.check(user, password)
    }
}

impl MailHandler {
    fn check(&self, user: &str, password: &str) -> Response {
        match &self.credentials {
            Some((u, p)) if u == user && p == password => response::AUTH_OK,
            _ => response::INVALID_CREDENTIALS,
        }
    }
}

/// A test CA and a certificate for `127.0.0.1` and `localhost` signed by it, as files.
struct TestPki {
    /// Holds the files.
    dir: tempfile::TempDir,
}

impl TestPki {
    fn new() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Tally test mail CA");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        TestPki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Installs ring as rustls' process-wide provider, which mailin-embedded's TLS uses (the
/// tests' build has more than one provider, so none is chosen by itself).
fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An SMTP server on 127.0.0.1 that offers STARTTLS (a certificate of its own test CA),
/// optionally requires AUTH, and optionally has a relay in front that speaks implicit TLS
/// (`smtps://`).
pub struct MailServer {
    /// The port of the SMTP server itself (plain, STARTTLS offered).
    port: u16,
    /// The port of the implicit-TLS relay, when there is one.
    tls_port: Option<u16>,
    /// The credentials AUTH needs, when it is required.
    credentials: Option<(String, String)>,
    /// The CA and the server's certificate.
    pki: TestPki,
    /// Messages accepted.
    shared: Arc<(Mutex<Vec<Mail>>, Condvar)>,
}

impl MailServer {
    /// Plain SMTP with STARTTLS offered, no AUTH.
    pub fn start() -> MailServer {
        MailServer::launch(None, false)
    }

    /// Plain SMTP with STARTTLS offered and AUTH (PLAIN, LOGIN) required, which the server
    /// accepts only once TLS is on.
    pub fn start_with_auth(user: &str, password: &str) -> MailServer {
        MailServer::launch(Some((user.to_string(), password.to_string())), false)
    }

    /// The same server behind a relay that speaks implicit TLS: `url()` is `smtps://`.
    pub fn start_implicit_tls() -> MailServer {
        MailServer::launch(None, true)
    }

    fn launch(credentials: Option<(String, String)>, implicit_tls: bool) -> MailServer {
        install_ring();
        let pki = TestPki::new();
        let shared = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let handler = MailHandler {
            shared: shared.clone(),
            credentials: credentials.clone(),
            envelope: None,
            data: Vec::new(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = Server::new(handler);
        server
            .with_name("mail.test")
            .with_num_threads(16)
            .with_ssl(SslConfig::SelfSigned {
                cert_path: pki.path("cert.pem").to_str().unwrap().to_string(),
                key_path: pki.path("key.pem").to_str().unwrap().to_string(),
            })
            .unwrap()
            .with_tcp_listener(listener);
        if credentials.is_some() {
            server
                .with_auth(AuthMechanism::Plain)
                .with_auth(AuthMechanism::Login);
        }
        std::thread::Builder::new()
            .name("test-smtp".into())
            .spawn(move || {
                let _ = server.serve();
            })
            .unwrap();
        let tls_port = implicit_tls.then(|| start_tls_relay(&pki, port));
        MailServer {
            port,
            tls_port,
            credentials,
            pki,
            shared,
        }
    }

    /// `smtp://127.0.0.1:PORT`, or `smtps://127.0.0.1:PORT` for the relay.
    pub fn url(&self) -> String {
        match self.tls_port {
            Some(port) => format!("smtps://127.0.0.1:{port}"),
            None => format!("smtp://127.0.0.1:{}", self.port),
        }
    }

    /// The CA that signed the server's certificate: the sink's `ca`.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.pki.path("ca.pem")
    }

    /// The credentials AUTH needs, when the server requires it.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.credentials.clone()
    }

    /// The first message received (before or within `timeout`) for which `pred` holds.
    pub fn wait_for(&self, pred: impl Fn(&Mail) -> bool, timeout: Duration) -> Option<Mail> {
        let deadline = Instant::now() + timeout;
        let (mails, arrived) = &*self.shared;
        let mut mails = mails.lock().unwrap();
        loop {
            if let Some(mail) = mails.iter().find(|m| pred(m)) {
                return Some(mail.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            mails = arrived.wait_timeout(mails, left).unwrap().0;
        }
    }

    /// Every message received so far, in order.
    pub fn received(&self) -> Vec<Mail> {
        self.shared.0.lock().unwrap().clone()
    }
}

/// Accepts implicit TLS on a port of its own and passes the plain bytes on to `port`.
fn start_tls_relay(pki: &TestPki, port: u16) -> u16 {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("cert.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.path("key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let tls_port = listener.local_addr().unwrap().port();
    serve_in_thread("test-smtps-relay", async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut inner) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut inner).await;
            });
        }
    });
    tls_port
}

/// Runs `server` on a runtime of its own in a thread named `name`, for the rest of the test
/// process.
fn serve_in_thread(name: &str, server: impl std::future::Future<Output = ()> + Send + 'static) {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(server)
        })
        .unwrap();
}

/// What the webhook receiver shares between its handler and the test.
#[derive(Default)]
struct HookState {
    /// Bodies whose signature verified, in arrival order.
    bodies: Vec<serde_json::Value>,
    /// Requests refused for a missing or wrong signature, a wrong content type or a body
    /// that is not JSON, each with why.
    failures: Vec<String>,
    /// Answer 503 while set.
    down: bool,
    /// Requests answered 503 because it was down.
    refused: usize,
}

/// An HTTP server on 127.0.0.1 that takes webhook POSTs and checks their signature.
pub struct WebhookReceiver {
    /// Where it listens.
    addr: SocketAddr,
    /// What it received, and whether it is down.
    state: Arc<(Mutex<HookState>, Condvar)>,
}

/// `sha256=HEX(HMAC-SHA256(secret, body))`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookReceiver {
    /// Listens on a free port of 127.0.0.1, up.
    pub fn start(secret: &str) -> WebhookReceiver {
        let state = Arc::new((Mutex::new(HookState::default()), Condvar::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let secret = secret.to_string();
        let shared = state.clone();
        serve_in_thread("test-webhook", async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let shared = shared.clone();
                    let secret = secret.clone();
                    async move { receive(&shared, &secret, &headers, &body) }
                },
            ));
            axum::serve(listener, app).await.unwrap();
        });
        WebhookReceiver { addr, state }
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The first verified body received (before or within `timeout`) for which `pred`
    /// holds.
    pub fn wait_for(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let (state, arrived) = &*self.state;
        let mut state = state.lock().unwrap();
        loop {
            if let Some(body) = state.bodies.iter().find(|b| pred(b)) {
                return Some(body.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state = arrived.wait_timeout(state, left).unwrap().0;
        }
    }

    /// Every verified body so far, in arrival order.
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.state.0.lock().unwrap().bodies.clone()
    }

    /// Requests refused for their signature, content type or body, each with why.
    pub fn failures(&self) -> Vec<String> {
        self.state.0.lock().unwrap().failures.clone()
    }

    /// How many requests were answered 503 while it was down.
    pub fn refused(&self) -> usize {
        self.state.0.lock().unwrap().refused
    }

    /// Waits until at least `n` requests were answered 503 while down.
    pub fn wait_refused(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (state, arrived) = &*self.state;
        let mut state = state.lock().unwrap();
        loop {
            if state.refused >= n {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = arrived.wait_timeout(state, left).unwrap().0;
        }
    }

    /// While `down`, every request is answered 503 and nothing is recorded.
    pub fn set_down(&self, down: bool) {
        self.state.0.lock().unwrap().down = down;
    }
}

fn receive(
    shared: &(Mutex<HookState>, Condvar),
    secret: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    let (state, arrived) = shared;
    let mut state = state.lock().unwrap();
    if state.down {
        state.refused += 1;
        arrived.notify_all();
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let failure = if header("tally-signature") != signature(secret, body) {
        Some(format!(
            "bad signature {:?} for {}",
            header("tally-signature"),
            String::from_utf8_lossy(body)
        ))
    } else if header("content-type") != "application/json" {
        Some(format!("content type {:?}", header("content-type")))
    } else {
        match serde_json::from_slice(body) {
            Ok(value) => {
                state.bodies.push(value);
                None
            }
            Err(err) => Some(format!("not JSON: {err}")),
        }
    };
    arrived.notify_all();
    match failure {
        Some(failure) => {
            state.failures.push(failure);
            StatusCode::UNAUTHORIZED
        }
        None => StatusCode::NO_CONTENT,
    }
}

/// The `[notify]` section of a tallyd.toml sending to both: every kind to the webhook, and
/// every kind by e-mail to `it-licenses@studio.com` from `tally@studio.com`, trusting the mail
/// server's CA (and signing in when it asks for AUTH). Quick retries, so that tests of a
/// sink that is down do not wait long.
pub fn notify_config(mail: &MailServer, hook: &WebhookReceiver, secret: &str) -> String {
    let credentials = match mail.credentials() {
        Some((user, password)) => format!("user = {user:?}\npassword = {password:?}\n"),
        None => String::new(),
    };
    format!(
        "[notify]\nmax_attempts = 5\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"\n\n\
         [[notify.webhook]]\nurl = {url:?}\nsecret = {secret:?}\n\n\
         [notify.email]\nsmtp = {smtp:?}\nfrom = \"tally@studio.com\"\nto = [\"it-licenses@studio.com\"]\n\
         ca = {ca:?}\n{credentials}",
        url = hook.url(),
        smtp = mail.url(),
        ca = mail.ca_pem_path().to_str().unwrap(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends one message the way a plain SMTP client does, over STARTTLS with AUTH, and
    /// through the implicit-TLS relay; and posts to the receiver with a good and a bad
    /// signature, up and down. Talks to the counterparts with the same libraries the
    /// daemon's sinks use, so that a counterpart that does not speak the protocol fails
    /// here first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_counterparts_speak_smtp_and_http() {
        use lettre::message::Mailbox;
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

        for (server, tls_wrapper) in [
            (MailServer::start_with_auth("relay-user", "relay-pw"), false),
            (MailServer::start_implicit_tls(), true),
        ] {
            let ca = std::fs::read(server.ca_pem_path()).unwrap();
            let tls = TlsParameters::builder("127.0.0.1".into())
                .certificate_store(CertificateStore::None)
                .add_root_certificate(Certificate::from_pem(&ca).unwrap())
                .build_rustls()
                .unwrap();
            let port: u16 = server.url().rsplit(':').next().unwrap().parse().unwrap();
            let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                .port(port)
                .tls(if tls_wrapper {
                    Tls::Wrapper(tls)
                } else {
                    Tls::Required(tls)
                });
            if let Some((user, password)) = server.credentials() {
                builder = builder.credentials(Credentials::new(user, password));
            }
            let transport = builder.build();
            let message = Message::builder()
                .from("tally@studio.test".parse::<Mailbox>().unwrap())
                .to("it@studio.test".parse::<Mailbox>().unwrap())
                .subject("[Tally] test: hello")
                .message_id(Some("<abc@tally>".into()))
                .body("one line\n".to_string())
                .unwrap();
            transport.send(message).await.unwrap();
            let mail =
                tokio::task::block_in_place(|| server.wait_for(|_| true, Duration::from_secs(10)))
                    .expect("the message arrived");
            assert_eq!(mail.from, "tally@studio.test");
            assert_eq!(mail.to, ["it@studio.test"]);
            assert_eq!(mail.subject, "[Tally] test: hello");
            assert_eq!(mail.message_id, "abc@tally");
            assert_eq!(mail.body.trim_end(), "one line");
        }

        // Without the right credentials the AUTH server refuses.
        let server = MailServer::start_with_auth("relay-user", "relay-pw");
        let ca = std::fs::read(server.ca_pem_path()).unwrap();
        let tls = TlsParameters::builder("127.0.0.1".into())
            .certificate_store(CertificateStore::None)
            .add_root_certificate(Certificate::from_pem(&ca).unwrap())
            .build_rustls()
            .unwrap();
        let port: u16 = server.url().rsplit(':').next().unwrap().parse().unwrap();
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(port)
            .tls(Tls::Required(tls))
            .credentials(Credentials::new("relay-user".into(), "wrong".into()))
            .build();
        let message = Message::builder()
            .from("tally@studio.test".parse::<Mailbox>().unwrap())
            .to("it@studio.test".parse::<Mailbox>().unwrap())
            .subject("no")
            .body("no".to_string())
            .unwrap();
        assert!(transport.send(message).await.is_err());
        assert!(server.received().is_empty());

        let hook = WebhookReceiver::start("s3cret");
        let http = reqwest_free_post(&hook.url(), "s3cret", br#"{"id":"a"}"#).await;
        assert_eq!(http, 204);
        let bad = reqwest_free_post(&hook.url(), "other", br#"{"id":"b"}"#).await;
        assert_eq!(bad, 401);
        hook.set_down(true);
        assert_eq!(
            reqwest_free_post(&hook.url(), "s3cret", br#"{"id":"c"}"#).await,
            503
        );
        assert_eq!(hook.refused(), 1);
        hook.set_down(false);
        let found = tokio::task::block_in_place(|| {
            hook.wait_for(|b| b["id"] == "a", Duration::from_secs(1))
        });
        assert_eq!(found, Some(serde_json::json!({"id": "a"})));
        assert_eq!(hook.received(), [serde_json::json!({"id": "a"})]);
        assert_eq!(hook.failures().len(), 1, "{:?}", hook.failures());
        let config = notify_config(&MailServer::start(), &hook, "s3cret");
        assert!(config.contains("[[notify.webhook]]"), "{config}");
    }

    /// A bare HTTP/1.1 POST (the receiver is tested apart from the daemon's client); returns
    /// the status.
    async fn reqwest_free_post(url: &str, secret: &str, body: &[u8]) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut socket = tokio::net::TcpStream::connect(host).await.unwrap();
        let head = format!(
            "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Tally-Signature: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            signature(secret, body),
            body.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(body).await.unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).await.unwrap();
        answer.split(' ').nth(1).unwrap().parse().unwrap()
    }
}
