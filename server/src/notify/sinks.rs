//! The sinks a notification is delivered to: the log (always), webhooks (a signed JSON
//! POST) and e-mail (through one SMTP relay), made from `[notify]` by [`build`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::Sha256;

use crate::config::{webhook_url, EmailConfig, NotifyConfig, Secret, WebhookConfig};
use crate::core::{Notification, NotificationKind};
use crate::logtext::peer;

/// Where notifications go.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// The sink as people read it, and the key of its deliveries in the store: `log`,
    /// `email`, `webhook https://host/path`. Never a secret or a URL's credentials.
    fn name(&self) -> &str;

    /// Whether notifications of this kind go to it (its `kinds`).
    fn wants(&self, _kind: &str) -> bool {
        true
    }

    /// Delivers one notification; an error says why, for the log and `notify status`.
    async fn deliver(&self, notification: &Notification) -> Result<(), String>;
}

/// The kinds a sink takes: `None` for every kind.
#[derive(Debug, Clone, Default)]
struct Kinds(Option<Vec<String>>);

impl Kinds {
    fn wants(&self, kind: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|kinds| kinds.iter().any(|k| k == kind))
    }
}

/// Writes each notification to the log at `info`.
#[derive(Debug, Default)]
pub struct LogSink;

#[async_trait]
impl Sink for LogSink {
    fn name(&self) -> &str {
        "log"
    }

    async fn deliver(&self, n: &Notification) -> Result<(), String> {
        tracing::info!(id = %n.id, kind = %n.kind, subject = %peer(&n.subject), feature = %peer(n.feature.as_deref().unwrap_or("")), text = %peer(&n.text), at = n.at, "notification");
        Ok(())
    }
}

/// `POST`s each notification as JSON to a URL, signed with HMAC-SHA256.
pub struct WebhookSink {
    /// `webhook https://host/path`.
    name: String,
    /// Where to post.
    url: reqwest::Url,
    /// The HMAC key of `Tally-Signature`.
    secret: Secret,
    kinds: Kinds,
    /// No redirects, a timeout, TLS on ring with the configured roots.
    client: reqwest::Client,
}

/// The JSON body a webhook gets: `{"id", "kind", "at", "subject", "feature", "text"}`, `at`
/// in RFC 3339 UTC and `feature` null when there is none.
pub fn webhook_body(n: &Notification) -> Vec<u8> {
    let body = serde_json::json!({
        "id": n.id,
        "kind": n.kind,
        "at": rfc3339(n.at),
        "subject": n.subject,
        "feature": n.feature,
        "text": n.text,
    });
    serde_json::to_vec(&body).expect("JSON of strings serializes")
}

/// `sha256=HEX(HMAC-SHA256(secret, body))`, the `Tally-Signature` header.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A Unix-milliseconds time in RFC 3339, UTC.
fn rfc3339(at: i64) -> String {
    tally_protocol::format_time_millis(at)
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn wants(&self, kind: &str) -> bool {
        self.kinds.wants(kind)
    }

    async fn deliver(&self, n: &Notification) -> Result<(), String> {
        let body = webhook_body(n);
        let signed = signature(self.secret.0.as_bytes(), &body);
        let response = self
            .client
            .post(self.url.clone())
            .header("Content-Type", "application/json")
            .header("Tally-Signature", signed)
            .body(body)
            .send()
            .await
            .map_err(|err| http_error(&err))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered HTTP {status}"))
        }
    }
}

/// A request error with its causes, and never the URL (it may hold credentials).
fn http_error(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "timed out".to_string()
    } else if err.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sends each notification by e-mail through one relay to the responsible people, and
/// for the kinds that concern a user (`assignment_changed`, `user_removed`) to that user.
pub struct EmailSink {
    kinds: Kinds,
    from: Mailbox,
    to: Vec<Mailbox>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl EmailSink {
    /// The message for `n`: the subject names the kind and subject, the body the text,
    /// feature, time and id, and the `Message-ID` is made from the notification's id, so
    /// that every retry sends the same one.
    pub fn message(&self, n: &Notification) -> Result<Message, String> {
        let domain = self.from.email.domain().to_string();
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(format!("[Tally] {}: {}", n.kind, n.subject))
            .message_id(Some(format!("<{}@{domain}>", n.id)))
            .date(UNIX_EPOCH + Duration::from_millis(u64::try_from(n.at).unwrap_or(0)))
            .header(ContentType::TEXT_PLAIN);
        let mut recipients: Vec<Address> = Vec::new();
        for to in &self.to {
            if !recipients.contains(&to.email) {
                recipients.push(to.email.clone());
                builder = builder.to(to.clone());
            }
        }
        let concerned = NotificationKind::parse(&n.kind).is_some_and(|kind| kind.to_subject());
        if concerned {
            if let Ok(user) = n.subject.parse::<Address>() {
                if !recipients.contains(&user) {
                    builder = builder.to(Mailbox::new(None, user));
                }
            }
        }
        let body = format!(
            "{text}\n\nKind:    {kind}\nSubject: {subject}\nFeature: {feature}\nTime:    {at}\nId:      {id}\n",
            text = n.text,
            kind = n.kind,
            subject = n.subject,
            feature = n.feature.as_deref().unwrap_or("-"),
            at = rfc3339(n.at),
            id = n.id,
        );
        builder.body(body).map_err(|err| err.to_string())
    }
}

#[async_trait]
impl Sink for EmailSink {
    fn name(&self) -> &str {
        "email"
    }

    fn wants(&self, kind: &str) -> bool {
        self.kinds.wants(kind)
    }

    async fn deliver(&self, n: &Notification) -> Result<(), String> {
        let message = self.message(n)?;
        self.transport
            .send(message)
            .await
            .map(drop)
            .map_err(|err| smtp_error(&err))
    }
}

/// An SMTP error with its causes.
fn smtp_error(err: &lettre::transport::smtp::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The sinks of a configuration, the log first.
pub fn build(config: &NotifyConfig) -> Result<Vec<Arc<dyn Sink>>, String> {
    let mut sinks: Vec<Arc<dyn Sink>> = vec![Arc::new(LogSink)];
    for (i, hook) in config.webhook.iter().enumerate() {
        sinks.push(Arc::new(
            webhook(hook, config.timeout).map_err(|why| format!("notify.webhook[{i}]: {why}"))?,
        ));
    }
    if let Some(email) = &config.email {
        sinks.push(Arc::new(
            self::email(email, config.timeout).map_err(|why| format!("notify.email: {why}"))?,
        ));
    }
    Ok(sinks)
}

fn webhook(config: &WebhookConfig, timeout: Duration) -> Result<WebhookSink, String> {
    let name = webhook_url(&config.url).map_err(|why| format!("url {why}"))?;
    let url = reqwest::Url::parse(&config.url).map_err(|_| "url is not a URL".to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca {
        Some(path) => {
            for cert in read_pem_certs(path).map_err(|err| format!("ca: {err}"))? {
                roots
                    .add(cert)
                    .map_err(|err| format!("ca {}: {err}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| err.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("tallyd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| format!("cannot make the HTTP client: {err}"))?;
    Ok(WebhookSink {
        name,
        url,
        secret: config.secret.clone(),
        kinds: Kinds(config.kinds.clone()),
        client,
    })
}

fn email(config: &EmailConfig, timeout: Duration) -> Result<EmailSink, String> {
    let relay = config.relay()?;
    let mut tls = TlsParameters::builder(relay.host.clone());
    if let Some(path) = &config.ca {
        let pem = read_pem(path).map_err(|err| format!("ca: {err}"))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|err| format!("ca {}: not a PEM certificate: {err}", path.display()))?;
        tls = tls
            .certificate_store(CertificateStore::None)
            .add_root_certificate(cert);
    }
    let tls = tls.build_rustls().map_err(|err| err.to_string())?;
    let tls = if relay.implicit_tls {
        Tls::Wrapper(tls)
    } else {
        Tls::Opportunistic(tls)
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&relay.host)
        .port(relay.port)
        .tls(tls)
        .timeout(Some(timeout));
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        transport = transport.credentials(Credentials::new(user.clone(), password.0.clone()));
    }
    let from = config
        .from
        .parse()
        .map_err(|_| format!("from = {:?} is not an e-mail address", config.from))?;
    let to = config
        .to
        .iter()
        .map(|to| {
            to.parse()
                .map_err(|_| format!("to: {to:?} is not an e-mail address"))
        })
        .collect::<Result<_, _>>()?;
    Ok(EmailSink {
        kinds: Kinds(config.kinds.clone()),
        from,
        to,
        transport: transport.build(),
    })
}

/// A PEM file, read whole (a CA bundle is small).
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))
}

/// The certificates of a PEM file; at least one.
pub fn read_pem_certs(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let pem = read_pem(path)?;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{}: {err}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(kind: &str, subject: &str) -> Notification {
        Notification {
            id: "0123456789abcdef0123456789abcdef".into(),
            at: 1_700_000_000_000,
            kind: kind.into(),
            subject: subject.into(),
            feature: Some("vray".into()),
            text: "ana@studio.com was assigned 2 seats of vray".into(),
        }
    }

    #[test]
    fn the_webhook_body_and_its_signature() {
        let body = webhook_body(&notification("assignment_changed", "ana@studio.com"));
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            r#"{"id":"0123456789abcdef0123456789abcdef","kind":"assignment_changed","at":"2023-11-14T22:13:20.000Z","subject":"ana@studio.com","feature":"vray","text":"ana@studio.com was assigned 2 seats of vray"}"#
        );
        let mut none = notification("user_removed", "ana@studio.com");
        none.feature = None;
        let value: serde_json::Value = serde_json::from_slice(&webhook_body(&none)).unwrap();
        assert!(value["feature"].is_null());
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn an_email_goes_to_the_responsible_people_and_to_the_user_concerned() {
        let config: NotifyConfig = toml::from_str(
            "[email]\nsmtp = \"smtp://127.0.0.1:2525\"\nfrom = \"tally@studio.com\"\nto = [\"it@studio.com\"]\n",
        )
        .unwrap();
        let sink = email(config.email.as_ref().unwrap(), Duration::from_secs(1)).unwrap();
        let formatted =
            |n: &Notification| String::from_utf8(sink.message(n).unwrap().formatted()).unwrap();
        let mail = formatted(&notification("assignment_changed", "ana@studio.com"));
        assert!(
            mail.contains("To: it@studio.com, ana@studio.com\r\n"),
            "{mail}"
        );
        assert!(
            mail.contains("Subject: [Tally] assignment_changed: ana@studio.com\r\n"),
            "{mail}"
        );
        assert!(
            mail.contains("Message-ID: <0123456789abcdef0123456789abcdef@studio.com>\r\n"),
            "{mail}"
        );
        assert!(mail.contains("Feature: vray"), "{mail}");
        let mail = formatted(&notification("pool_exhausted", "vray"));
        assert!(mail.contains("To: it@studio.com\r\n"), "{mail}");
        // A subject that is no address (a feature, a node) goes to no one more.
        let mail = formatted(&notification("user_removed", "not an address"));
        assert!(mail.contains("To: it@studio.com\r\n"), "{mail}");
    }

    #[tokio::test]
    async fn kinds_filter_and_names_hide_credentials() {
        let config: NotifyConfig = toml::from_str(
            "[[webhook]]\nurl = \"https://u:pw@hooks.studio.lan:8443/tally?token=x\"\nsecret = \"s\"\nkinds = [\"pool_exhausted\"]\n",
        )
        .unwrap();
        let sinks = build(&config).unwrap();
        let names: Vec<&str> = sinks.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            ["log", "webhook https://hooks.studio.lan:8443/tally"]
        );
        assert!(sinks[1].wants("pool_exhausted"));
        assert!(!sinks[1].wants("user_removed"));
        assert!(sinks[0].wants("user_removed"));
    }
}
