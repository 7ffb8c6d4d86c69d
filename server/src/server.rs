//! `run`: prepares the data directory, loads the pool, starts the engine and accepts
//! connections until told to stop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tally_protocol::{Welcome, PROTOCOL_VERSION};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::{Config, Limits};
use crate::core::{Policy, Pool};
use crate::engine::{Cluster, Engine, Signer};
use crate::error::{Context, Error, Result};
use crate::ha::{Elector, ElectorConfig};
use crate::http::{self, Http, Metrics};
use crate::init::{self, DataDir, OWNER_USERNAME};
use crate::limiter::{AuthLimiter, PreAuth, PreAuthPermit, Prefix, Throttle};
use crate::notices::Notices;
use crate::notify;
use crate::shared::{Node, Shared};
use crate::store::Store;

/// While connections are refused or `accept` fails, one warning of each kind per this long.
const OVERLOAD_LOG_EVERY: Duration = Duration::from_secs(5);

/// How many jobs may wait for the engine before connections wait to send more.
const ENGINE_QUEUE: usize = 65_536;

/// How the caller controls a running server.
#[derive(Debug, Default)]
pub struct Control {
    /// Cancel to stop: no new connections, in-flight requests finish, the store is flushed.
    pub shutdown: CancellationToken,
    /// A new configuration to apply (TLS files and limits) on SIGHUP.
    pub reload: Option<watch::Receiver<Config>>,
    /// Told once the server is serving (for `sd_notify`).
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
    /// How often the engine pings the systemd watchdog (half of `WATCHDOG_USEC`); `None`
    /// without one.
    pub watchdog: Option<Duration>,
    /// Where the engine takes the time from: the system clock by default; tests pass a
    /// [`Clock::manual`] they step.
    pub clock: Clock,
    /// The HTTPS listener of `[http]`, bound by the caller (tests bind port 0 and read the
    /// address); `None`: `run` binds `http.listen` itself. Unused without `[http]`.
    pub http: Option<TcpListener>,
}

/// Runs the daemon on `listener` until `control.shutdown` is cancelled.
///
/// On first start with an empty data directory this initialises it: the signing key, a
/// private CA and server certificate (unless the config names one), the owner account,
/// `owner.token` and `client.toml`.
///
/// On a store that a cluster shares (PostgreSQL, SPEC §7) the node first takes the
/// cluster's identity into its data directory (or makes it, on an empty database), then
/// serves as a standby; its elector decides when it leads, and its engine loads the pool
/// then.
pub async fn run(
    listener: TcpListener,
    config: Config,
    store: Box<dyn Store>,
    mut control: Control,
) -> Result<()> {
    let store: Arc<dyn Store> = Arc::from(store);
    let cluster = store.clone().cluster();
    let dir = init::prepare_data_dir(&config)?;
    // Held until `run` returns: a second daemon on this directory refuses to start.
    let _lock = init::lock_data_dir(&dir)?;
    let port = listener.local_addr()?.port();
    let node = match &cluster {
        Some(cluster) => {
            init::join_cluster(&config, &dir, cluster.as_ref()).await?;
            let address = config
                .ha
                .advertised(listener.local_addr()?)
                .map_err(Error::Invalid)?;
            Some((init::node_id(&dir)?, address))
        }
        None => None,
    };
    let signing_key = init::signing_key(&dir)?;
    init::ensure_certificates(&config, &dir)?;
    let signing_chain = init::signing_chain(&config, &dir, &signing_key)?;
    let tls = init::tls_config(&config, &dir)?;
    let http_listener = match (&config.http, control.http.take()) {
        (None, _) => None,
        (Some(_), Some(listener)) => Some(listener),
        (Some(http), None) => Some(
            crate::listen(http.listen)
                .with_context(|| format!("cannot listen on http.listen = {}", http.listen))?,
        ),
    };
    let identity = initialize_owner(&config, &dir, store.as_ref(), port, &control.clock).await?;

    let started = Instant::now();
    let ttl_ms = config.leases.ttl.as_millis() as i64;
    let policy = Policy {
        guests_use_floating: config.users.guests_use_floating,
        max_active: config.users.max_active,
        borrow_max_ms: config.borrow.max.as_millis() as i64,
        max_leases_per_client: config.limits.max_leases_per_client,
    };
    // A cluster's node loads the pool when it becomes the leader, not before.
    let snapshot = match cluster {
        Some(_) => Default::default(),
        None => store
            .load()
            .await
            .context("cannot load the pool from the store")?,
    };
    let loaded = started.elapsed();
    let pool = Pool::restore(snapshot, ttl_ms, policy, control.clock.now_millis());
    tracing::debug!(
        load_ms = loaded.as_millis() as u64,
        restore_ms = (started.elapsed() - loaded).as_millis() as u64,
        "pool restored from the snapshot"
    );
    if cluster.is_none() {
        tracing::info!(
            leases = pool.lease_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pool loaded; every online lease has one ttl to be renewed"
        );
    }

    let sinks = notify::SinkSet::from_config(&config.notify).map_err(Error::Invalid)?;
    let notifier = notify::Notifier::new(store.clone(), control.clock.clone(), sinks);

    let (engine_tx, engine_rx) = mpsc::channel(ENGINE_QUEUE);
    let (sign_outs, _) = broadcast::channel(1024);
    let outbox = Arc::new(Notify::new());
    let notices = Arc::new(Notices::default());
    let public_key = init::public_key(&signing_key);
    let metrics = Arc::new(Metrics::default());
    let signer = Signer {
        key: signing_key,
        server_id: identity.clone(),
        chain: signing_chain,
    };
    let engine = Engine::new(
        pool,
        store.clone(),
        signer,
        config.leases.sweep,
        outbox.clone(),
        sign_outs.clone(),
    )
    .with_watchdog(control.watchdog)
    .with_clock(control.clock.clone())
    .with_notices(notices.clone())
    .with_notifier(notifier.clone())
    .with_metrics(metrics.clone())
    .with_history_keep(config.history.keep);
    let (engine, elector) = match (&cluster, &node) {
        (Some(cluster), Some((id, address))) => {
            let elector = Elector::start(
                cluster.connect_options(),
                ElectorConfig {
                    node: id.clone(),
                    address: address.clone(),
                    lease: config.ha.lease,
                },
            )
            .map_err(|err| Error::Invalid(err.to_string()))?;
            let engine = engine.in_cluster(Cluster {
                role: elector.role(),
                store: cluster.clone(),
                address: address.clone(),
                // Within a lease a leader is elected, or the database is out of reach.
                hold: config.ha.lease / 2,
            });
            (engine, Some(elector))
        }
        _ => (engine, None),
    };
    let serving = engine.serving();
    let mut engine_task = tokio::spawn(engine.run(engine_rx));
    let notifier_stop = CancellationToken::new();
    let mut notifier_task = tokio::spawn(notify::run(
        notifier.clone(),
        outbox,
        serving.clone(),
        notifier_stop.clone(),
    ));

    let shared = Arc::new(Shared {
        tls: RwLock::new(tls),
        limits: RwLock::new(config.limits.clone()),
        connections: AtomicUsize::new(0),
        engine: engine_tx,
        sign_outs,
        store: store.clone(),
        welcome: Welcome {
            protocol_version: PROTOCOL_VERSION,
            server_id: identity,
            signing_key: public_key,
            heartbeat_interval_ms: config.heartbeat_interval().as_millis() as u64,
            lease_ttl_ms: ttl_ms as u64,
            server_version: env!("CARGO_PKG_VERSION").to_string(),
        },
        started,
        ttl: config.leases.ttl,
        listen: listener.local_addr()?,
        auth_limiter: AuthLimiter::new(config.limits.signin_failures),
        preauth: PreAuth::default(),
        serving: serving.clone(),
        node: match (&cluster, &node) {
            (Some(cluster), Some((id, _))) => Some(Node {
                id: id.clone(),
                store: cluster.clone(),
            }),
            _ => None,
        },
        notices,
    });
    let http = match (http_listener, &config.http) {
        (Some(listener), Some(settings)) => {
            let http = Arc::new(Http::new(
                shared.clone(),
                metrics,
                settings.metrics_token.as_ref(),
                control.clock.clone(),
            ));
            tracing::info!(addr = %listener.local_addr()?, metrics_token = settings.metrics_token.is_some(), "serving the dashboard, /metrics, /healthz and /readyz over HTTPS");
            let task = tokio::spawn(http::serve(
                listener,
                http.clone(),
                control.shutdown.clone(),
            ));
            Some((http, task))
        }
        _ => None,
    };
    match &node {
        Some((id, address)) => {
            tracing::info!(addr = %listener.local_addr()?, store = store.backend(), data_dir = %dir.root.display(), node = %id, advertise = %address, lease = ?config.ha.lease, "tallyd serving as a node of a cluster: a standby until it leads")
        }
        None => {
            tracing::info!(addr = %listener.local_addr()?, store = store.backend(), data_dir = %dir.root.display(), "tallyd serving")
        }
    }
    if let Some(ready) = control.ready.take() {
        let _ = ready.send(());
    }

    // What a reload compares the new file with: the configuration in effect.
    let mut running = config.clone();
    let tracker = TaskTracker::new();
    let mut accept_failed = Throttle::new(OVERLOAD_LOG_EVERY);
    let mut overloaded = Throttle::new(OVERLOAD_LOG_EVERY);
    let mut crowded = Throttle::new(OVERLOAD_LOG_EVERY);
    loop {
        tokio::select! {
            _ = control.shutdown.cancelled() => break,
            // Neither ends while the server runs: if one does (a panic), stop and fail, so
            // that the process exits non-zero and systemd restarts it.
            ended = &mut engine_task => {
                notifier_stop.cancel();
                return Err(task_ended("engine", ended, &control.shutdown));
            }
            ended = &mut notifier_task => return Err(task_ended("notifier", ended, &control.shutdown)),
            changed = wait_reload(&mut control.reload) => {
                if let Some(new) = changed {
                    let http = http.as_ref().map(|(http, _)| http.as_ref());
                    running = apply_reload(&shared, &notifier, http, &running, &new, &dir);
                }
            }
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning,
                        // and say so once in a while, not every time.
                        if let Some(held_back) = accept_failed.ready(Instant::now()) {
                            tracing::warn!(error = %err, held_back, "accept failed; retrying every 50ms");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let limits = shared.limits();
                let max = limits.max_connections;
                if shared.connections.load(Ordering::Relaxed) >= max {
                    if let Some(held_back) = overloaded.ready(Instant::now()) {
                        tracing::warn!(%peer, max, held_back, "refusing connection: limits.max_connections reached");
                    }
                    drop(tcp);
                    continue;
                }
                let admitted = shared.preauth.admit(
                    peer.ip(),
                    limits.max_unauthenticated_per_address,
                    PreAuth::total_share(max),
                );
                let permit = match admitted {
                    Ok(permit) => permit,
                    Err(why) => {
                        if let Some(held_back) = crowded.ready(Instant::now()) {
                            tracing::warn!(address = %Prefix(peer.ip()), held_back, "refusing connection: {why}");
                        }
                        drop(tcp);
                        continue;
                    }
                };
                spawn_connection(&tracker, tcp, peer, permit, shared.clone(), control.shutdown.clone());
            }
        }
    }

    tracing::info!("shutting down: no new connections, finishing requests in flight");
    drop(listener);
    tracker.close();
    tracker.wait().await;
    // The HTTP side holds the engine's queue too: the engine ends once it is gone.
    if let Some((http, task)) = http {
        drop(http);
        if let Err(err) = task.await {
            tracing::error!(error = %err, "the HTTP listener ended abnormally");
        }
    }
    drop(shared);
    engine_task
        .await
        .map_err(|err| task_ended("engine", Err(err), &control.shutdown))?;
    // A delivery in flight is abandoned unrecorded: it is sent again after the next start
    // (at least once). Nothing else is lost: the outbox and each sink's state are stored.
    notifier_stop.cancel();
    notifier_task
        .await
        .map_err(|err| task_ended("notifier", Err(err), &control.shutdown))?;
    // After the engine's last commit: a leader gives the leadership up at once, so that a
    // standby takes over without waiting for the lease to lapse.
    if let Some(elector) = elector {
        elector.shutdown().await;
    }
    store.close().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The error for a task the server cannot run without that ended: its panic message, if it
/// panicked. Cancels `shutdown`, so that connections stop instead of answering "shutting down"
/// for ever. Not logged here: `run` returns it, and the caller logs it once.
fn task_ended(
    task: &str,
    ended: Result<(), tokio::task::JoinError>,
    shutdown: &CancellationToken,
) -> Error {
    shutdown.cancel();
    let why = match ended {
        Ok(()) => "it returned".to_string(),
        Err(err) if err.is_panic() => {
            let panic = err.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            format!("it panicked: {message}")
        }
        Err(err) => err.to_string(),
    };
    Error::TaskEnded {
        task: task.to_string(),
        why,
    }
}

fn spawn_connection(
    tracker: &TaskTracker,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    permit: PreAuthPermit,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    shared.connections.fetch_add(1, Ordering::Relaxed);
    tracker.spawn(async move {
        crate::conn::serve(tcp, peer, permit, shared.clone(), shutdown).await;
        shared.connections.fetch_sub(1, Ordering::Relaxed);
    });
}

async fn wait_reload(reload: &mut Option<watch::Receiver<Config>>) -> Option<Config> {
    match reload {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => {
                *reload = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

/// Applies what can change while running: the TLS files (`tls.cert`, `tls.key`,
/// `tls.client_ca`, read again even when their paths did not change, so that a renewed
/// certificate is served, over HTTPS too), the limits but `limits.max_leases_per_client`,
/// and `http.metrics_token` (while HTTP is served; `http.listen` needs a restart). Connections
/// stay. Logs every key whose value changed from `running`, with its old and new value,
/// saying whether it was applied or needs a restart; returns the configuration now in
/// effect, which the next reload compares with.
fn apply_reload(
    shared: &Shared,
    notifier: &notify::Notifier,
    http: Option<&Http>,
    running: &Config,
    new: &Config,
    dir: &DataDir,
) -> Config {
    let tls = match init::tls_config(new, dir) {
        Ok(tls) => {
            *shared.tls.write().expect("tls lock") = tls;
            true
        }
        Err(err) => {
            tracing::error!(error = %err, "reload: keeping the TLS certificates in use");
            false
        }
    };
    let mut effective = in_effect(running, new, tls);
    if running.notify != new.notify {
        match notify::SinkSet::from_config(&new.notify) {
            Ok(sinks) => {
                notifier.replace(sinks);
                effective.notify = new.notify.clone();
            }
            Err(err) => {
                tracing::error!(error = %err, "reload: keeping the notification sinks in use");
            }
        }
    }
    *shared.limits.write().expect("limits lock") = effective.limits.clone();
    if let (Some(http), Some(settings)) = (http, &effective.http) {
        http.set_token(settings.metrics_token.as_ref());
    }
    shared
        .auth_limiter
        .set_max_failures(effective.limits.signin_failures);
    let pending: Vec<String> = effective
        .changes(new)
        .into_iter()
        .map(|change| change.key)
        .collect();
    let (mut applied, mut needs_restart) = (0, 0);
    for change in running.changes(new) {
        let (key, old, new) = (&change.key, &change.old, &change.new);
        if !pending.contains(key) {
            applied += 1;
            tracing::info!(%key, %old, %new, "reload: applied");
        } else if key == "tls.names" {
            needs_restart += 1;
            tracing::warn!(%key, %old, %new, "reload: needs a restart to take effect, after removing DATA_DIR/tls/server.pem and server.key so that a certificate for the new names is made; still running with the old value");
        } else if key.starts_with("notify") {
            // The sinks could not be made: the error above says why.
            tracing::warn!(%key, %old, %new, "reload: not applied, the notification sinks cannot be made; still running with the old ones");
        } else if key.starts_with("tls.") {
            // tls.cert, tls.key, tls.client_ca: the error above says why.
            tracing::warn!(%key, %old, %new, "reload: not applied, the TLS files are not usable; still running with the old value");
        } else {
            needs_restart += 1;
            tracing::warn!(%key, %old, %new, "reload: needs a restart to take effect; still running with the old value");
        }
    }
    if tls && running.tls.cert.is_some() != new.tls.cert.is_some() {
        tracing::warn!("reload: tls.cert was set or unset; borrow tokens keep the signing certificate chosen at start until a restart");
    }
    tracing::info!(
        applied,
        needs_restart,
        tls_files_read = tls,
        "configuration reloaded"
    );
    effective
}

/// The configuration in effect after a reload from `running` to `new`: what
/// [`apply_reload`] applies taken from `new` (the TLS files only when `tls`, they were
/// usable), everything else still `running`'s.
fn in_effect(running: &Config, new: &Config, tls: bool) -> Config {
    let mut effective = running.clone();
    if tls {
        effective.tls.cert = new.tls.cert.clone();
        effective.tls.key = new.tls.key.clone();
        effective.tls.client_ca = new.tls.client_ca.clone();
    }
    effective.limits = Limits {
        // Part of the pool's policy, fixed when the pool is made.
        max_leases_per_client: running.limits.max_leases_per_client,
        ..new.limits.clone()
    };
    // The listener stays where it was bound; who may read the metrics changes at once.
    if let (Some(effective), Some(new)) = (&mut effective.http, &new.http) {
        effective.metrics_token = new.metrics_token.clone();
    }
    effective
}

/// Makes the owner account on first start and writes its token and client file.
async fn initialize_owner(
    config: &Config,
    dir: &DataDir,
    store: &dyn Store,
    port: u16,
    clock: &Clock,
) -> Result<String> {
    let token = init::new_token();
    let identity = store
        .initialize(
            OWNER_USERNAME,
            &init::token_hash(&token),
            clock.now_millis(),
        )
        .await
        .context("cannot initialise the store")?;
    if identity.owner_created {
        init::write_owner_files(config, dir, &token, port)?;
        tracing::info!(
            owner = OWNER_USERNAME,
            token_file = %dir.owner_token().display(),
            client_config = %dir.client_config().display(),
            "initialised a new data directory"
        );
    }
    Ok(identity.server_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys a reload applies are the TLS files and the limits but
    /// `limits.max_leases_per_client`; every other changed key stays as it was started
    /// (and is logged as needing a restart).
    #[test]
    fn a_reload_applies_the_tls_files_and_the_limits_and_nothing_else() {
        let running = Config::parse("").unwrap();
        let every_key_changed = Config::parse(
            r#"
            listen = "127.0.0.1:1"
            data_dir = "/elsewhere"
            database = "postgres://u:p@h/d"
            [tls]
            cert = "/c.pem"
            key = "/k.pem"
            client_ca = "/ca.pem"
            names = ["lic1"]
            [leases]
            ttl = "90s"
            sweep = "1s"
            [borrow]
            max = "1h"
            signing_cert = "/s.pem"
            [users]
            max_active = 5
            guests_use_floating = true
            [limits]
            max_connections = 5
            max_frame = 2048
            handshake_timeout = "1s"
            signin_failures = 1
            max_unauthenticated_per_address = 1
            max_leases_per_client = 1
            [log]
            format = "json"
            [ha]
            advertise = "lic1:27010"
            lease = "10s"
            "#,
        )
        .unwrap();
        let keys = |changes: Vec<crate::config::Change>| -> Vec<String> {
            changes.into_iter().map(|c| c.key).collect()
        };
        let all = keys(running.changes(&every_key_changed));
        let effective = in_effect(&running, &every_key_changed, true);
        let pending = keys(effective.changes(&every_key_changed));
        let applied: Vec<&String> = all.iter().filter(|k| !pending.contains(k)).collect();
        assert_eq!(
            applied,
            [
                "limits.handshake_timeout",
                "limits.max_connections",
                "limits.max_frame",
                "limits.max_unauthenticated_per_address",
                "limits.signin_failures",
                "tls.cert",
                "tls.client_ca",
                "tls.key",
            ]
        );
        assert_eq!(
            pending,
            [
                "borrow.max",
                "borrow.signing_cert",
                "data_dir",
                "database",
                "ha.advertise",
                "ha.lease",
                "leases.sweep",
                "leases.ttl",
                "limits.max_leases_per_client",
                "listen",
                "log.format",
                "tls.names",
                "users.guests_use_floating",
                "users.max_active",
            ]
        );
        // TLS files that are not usable are not applied.
        let without_tls =
            keys(in_effect(&running, &every_key_changed, false).changes(&every_key_changed));
        for key in ["tls.cert", "tls.key", "tls.client_ca"] {
            assert!(without_tls.iter().any(|k| k == key), "{key}");
        }
    }

    /// `http.metrics_token` is applied on reload; `http.listen`, and `[http]` added or
    /// removed, need a restart.
    #[test]
    fn a_reload_applies_the_metrics_token_and_not_the_http_listener() {
        let http = |listen: &str, token: &str| {
            Config::parse(&format!(
                "[http]\nlisten = \"{listen}\"\nmetrics_token = \"{token}\"\n"
            ))
            .unwrap()
        };
        let keys = |changes: Vec<crate::config::Change>| -> Vec<String> {
            changes.into_iter().map(|c| c.key).collect()
        };
        let running = http("127.0.0.1:27080", "first-token-0123456789");
        let new = http("127.0.0.1:27081", "second-token-0123456789");
        let effective = in_effect(&running, &new, true);
        assert_eq!(
            keys(running.changes(&new)),
            ["http.listen", "http.metrics_token"]
        );
        assert_eq!(keys(effective.changes(&new)), ["http.listen"]);
        let token = effective.http.unwrap().metrics_token.unwrap();
        assert_eq!(token.0, "second-token-0123456789");
        let none = Config::parse("").unwrap();
        assert_eq!(
            keys(in_effect(&none, &new, true).changes(&new)),
            ["http.listen", "http.metrics_token"]
        );
        assert!(in_effect(&running, &none, true).http.is_some());
    }
}
