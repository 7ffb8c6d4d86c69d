//! The daemon killed with SIGKILL at random moments under checkout load (R1, R5): after each
//! restart every acknowledged lease is there, no lease appears that no request asked for, and
//! the pool is never over-allocated. `scripts/fault-soak.sh` runs this many more times.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_protocol::{
    Checkin, Checkout, LeaseId, Outcome, Request, RequestId, Response, ServerMessage,
};

use crate::harness::*;

/// What one load task knows: the leases it was told it holds, and the request it had in
/// flight when the server died.
#[derive(Debug, Default)]
struct Ledger {
    held: BTreeSet<LeaseId>,
    in_flight: Option<Request>,
}

const TASKS: usize = 8;
const SEATS: u32 = 40;

async fn load(
    addr: std::net::SocketAddr,
    ca: Vec<u8>,
    token: String,
    host: String,
    ledger: Arc<Mutex<Ledger>>,
) {
    let Ok(mut raw) = RawConn::signed_in_to(addr, &ca, &token, &host).await else {
        return;
    };
    let mut id = 0;
    loop {
        id += 1;
        let held: Vec<LeaseId> = ledger.lock().unwrap().held.iter().copied().collect();
        let request = if !held.is_empty() && (held.len() >= 6 || rand::random::<bool>()) {
            Request::Checkin(Checkin {
                lease: held[rand::random::<usize>() % held.len()],
            })
        } else {
            Request::Checkout(Checkout {
                request_id: RequestId(rand::random()),
                feature: "vray".into(),
                seats: 1,
            })
        };
        ledger.lock().unwrap().in_flight = Some(request.clone());
        let answer = raw
            .conn
            .send(&tally_protocol::ClientMessage::Request {
                id,
                body: request.clone(),
            })
            .await;
        let reply = match answer {
            Ok(()) => raw.conn.recv::<ServerMessage>().await,
            Err(_) => return,
        };
        let mut ledger = ledger.lock().unwrap();
        match reply {
            Ok(Some(ServerMessage::Response {
                outcome: Outcome::Ok(Response::Lease(lease)),
                ..
            })) => {
                ledger.held.insert(lease.id);
            }
            Ok(Some(ServerMessage::Response {
                outcome: Outcome::Ok(Response::CheckedIn(lease)),
                ..
            })) => {
                ledger.held.remove(&lease);
            }
            Ok(Some(ServerMessage::Response {
                outcome: Outcome::Err(_),
                ..
            })) => {}
            // The server died: the request's fate is unknown.
            _ => return,
        }
        ledger.in_flight = None;
    }
}

#[tokio::test]
async fn sigkill_under_checkout_load_keeps_every_acknowledged_lease_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), "60s", "1s");
    let owner = tally_client::Client::connect(daemon.client_config())
        .await
        .unwrap();
    add_entitlement(&owner, "vray", SEATS, None).await;
    drop(owner);
    let ca = std::fs::read(daemon.data_dir.join("tls/ca.pem")).unwrap();
    let token = std::fs::read_to_string(daemon.data_dir.join("owner.token"))
        .unwrap()
        .trim()
        .to_string();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], daemon.port).into();
    let ledgers: BTreeMap<String, Arc<Mutex<Ledger>>> = (0..TASKS)
        .map(|i| (format!("task{i}"), Arc::new(Mutex::new(Ledger::default()))))
        .collect();

    for round in 0..4 {
        let tasks: Vec<_> = ledgers
            .iter()
            .map(|(host, ledger)| {
                tokio::spawn(load(
                    addr,
                    ca.clone(),
                    token.clone(),
                    host.clone(),
                    ledger.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150 + rand::random::<u64>() % 600)).await;
        daemon.kill9();
        for task in tasks {
            task.await.unwrap();
        }
        daemon.restart();

        let out = cli(&[
            "--config",
            daemon.client_toml().to_str().unwrap(),
            "--json",
            "leases",
        ]);
        let doc = stdout_json(&out);
        let on_server: Vec<(LeaseId, String)> = doc["leases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["id"].as_str().unwrap().parse().unwrap(),
                    l["host"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(
            on_server.len() <= SEATS as usize,
            "round {round}: R1 broken, {} leases",
            on_server.len()
        );
        let ids: BTreeSet<LeaseId> = on_server.iter().map(|(id, _)| *id).collect();
        for (host, ledger) in &ledgers {
            let mut ledger = ledger.lock().unwrap();
            let mine: BTreeSet<LeaseId> = on_server
                .iter()
                .filter(|(_, h)| h == host)
                .map(|(id, _)| *id)
                .collect();
            // Every acknowledged lease is there, except one whose check-in was in flight.
            for lease in &ledger.held {
                let checkin_in_flight =
                    matches!(&ledger.in_flight, Some(Request::Checkin(c)) if c.lease == *lease);
                assert!(
                    ids.contains(lease) || checkin_in_flight,
                    "round {round}: acknowledged lease {lease} of {host} lost"
                );
            }
            // Nothing appears that no request asked for: at most the one checkout in flight.
            let extra: Vec<&LeaseId> = mine.difference(&ledger.held).collect();
            let checkout_in_flight = matches!(ledger.in_flight, Some(Request::Checkout(_)));
            assert!(
                extra.is_empty() || (extra.len() == 1 && checkout_in_flight),
                "round {round}: {host} has leases nobody was told of: {extra:?}"
            );
            // Carry on from what the server holds.
            ledger.held = mine;
            ledger.in_flight = None;
        }
        let owner = tally_client::Client::connect(daemon.client_config())
            .await
            .unwrap();
        assert_eq!(
            status(&owner, "vray").await.in_use as usize,
            on_server.len(),
            "round {round}"
        );
    }
}
