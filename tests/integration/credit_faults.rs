//! The daemon killed with SIGKILL at random moments while clients consume credits (R21):
//! after each restart, every acknowledged consumption is still answered as it was, the
//! consumption in flight when the server died is consumed once when retried with its
//! request id (whether or not it had been committed), and the meter's consumed figure is
//! exactly the sum of the consumptions clients were told of.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_protocol::{
    ClientMessage, Consume, Consumed, Outcome, Request, RequestId, Response, ServerMessage,
};

use crate::harness::*;

/// What one consuming client knows: the answers it was given, by request id, and the
/// consumption it had in flight when the server died.
#[derive(Debug, Default)]
struct Consumer {
    acknowledged: BTreeMap<RequestId, (u64, Consumed)>,
    in_flight: Option<(RequestId, u64)>,
    /// Answers that were not grants (the pool is large enough that none should be).
    refusals: Vec<String>,
}

const TASKS: usize = 4;

async fn consume_load(
    addr: std::net::SocketAddr,
    ca: Vec<u8>,
    token: String,
    host: String,
    state: Arc<Mutex<Consumer>>,
) {
    let Ok(mut raw) = RawConn::signed_in_to(addr, &ca, &token, &host).await else {
        return;
    };
    let mut id = 0;
    loop {
        id += 1;
        let request_id = RequestId(rand::random());
        let amount = 1 + rand::random::<u64>() % 5;
        state.lock().unwrap().in_flight = Some((request_id, amount));
        let body = Request::Consume(Consume {
            request_id,
            meter: "cloud".into(),
            amount,
        });
        if raw
            .conn
            .send(&ClientMessage::Request { id, body })
            .await
            .is_err()
        {
            return;
        }
        let reply = raw.conn.recv::<ServerMessage>().await;
        let mut state = state.lock().unwrap();
        match reply {
            Ok(Some(ServerMessage::Response {
                outcome: Outcome::Ok(Response::Consumed(done)),
                ..
            })) => {
                state.acknowledged.insert(request_id, (amount, done));
            }
            Ok(Some(ServerMessage::Response {
                outcome: Outcome::Err(err),
                ..
            })) => state
                .refusals
                .push(format!("{:?}: {}", err.code, err.message)),
            // The server died: the consumption's fate is unknown.
            _ => return,
        }
        state.in_flight = None;
    }
}

#[tokio::test]
async fn sigkill_while_consuming_takes_each_request_id_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), "60s", "1s");
    let owner = tally_client::Client::connect(daemon.client_config())
        .await
        .unwrap();
    let bought = 10_000_000;
    buy_credits(&owner, "cloud", bought).await;
    let me = owner.username().to_string();
    owner.set_quota(&me, "cloud", None).await.unwrap();
    drop(owner);
    let ca = std::fs::read(daemon.data_dir.join("tls/ca.pem")).unwrap();
    let token = std::fs::read_to_string(daemon.data_dir.join("owner.token"))
        .unwrap()
        .trim()
        .to_string();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], daemon.port).into();
    let consumers: Vec<Arc<Mutex<Consumer>>> = (0..TASKS).map(|_| Arc::default()).collect();

    let mut in_flight_retried = 0;
    for round in 0..4 {
        let tasks: Vec<_> = consumers
            .iter()
            .enumerate()
            .map(|(i, state)| {
                tokio::spawn(consume_load(
                    addr,
                    ca.clone(),
                    token.clone(),
                    format!("render{i}"),
                    state.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150 + rand::random::<u64>() % 600)).await;
        daemon.kill9();
        for task in tasks {
            task.await.unwrap();
        }
        daemon.restart();

        let owner = tally_client::Client::connect(daemon.client_config())
            .await
            .unwrap();
        for (i, state) in consumers.iter().enumerate() {
            let (in_flight, sample) = {
                let mut state = state.lock().unwrap();
                assert!(
                    state.refusals.is_empty(),
                    "round {round}: {:?}",
                    state.refusals
                );
                let sample: Vec<(RequestId, (u64, Consumed))> = state
                    .acknowledged
                    .iter()
                    .rev()
                    .take(20)
                    .map(|(id, answer)| (*id, answer.clone()))
                    .collect();
                (state.in_flight.take(), sample)
            };
            // The retry of the consumption in flight: consumed now, or answered as first if
            // the server had committed it before it died; once either way.
            if let Some((id, amount)) = in_flight {
                let done = owner.consume_with_id("cloud", amount, id).await.unwrap();
                assert_eq!(done.consumed, amount);
                let again = owner.consume_with_id("cloud", amount, id).await.unwrap();
                assert_eq!(again, done, "round {round}: a second retry differs");
                state
                    .lock()
                    .unwrap()
                    .acknowledged
                    .insert(id, (amount, done));
                in_flight_retried += 1;
            }
            // The latest acknowledged consumptions, retried: each its first answer.
            for (id, (amount, first)) in sample {
                let again = owner.consume_with_id("cloud", amount, id).await.unwrap();
                assert_eq!(again, first, "round {round}: task {i}'s answer changed");
            }
        }
        let told: u64 = consumers
            .iter()
            .flat_map(|s| {
                let s = s.lock().unwrap();
                s.acknowledged
                    .values()
                    .map(|(amount, _)| *amount)
                    .collect::<Vec<_>>()
            })
            .sum();
        let meter = &owner.credits_status(Some("cloud")).await.unwrap()[0];
        assert_eq!(
            (meter.consumed, meter.balance),
            (told, bought - told),
            "round {round}: the meter is not what clients were told"
        );
    }
    let acknowledged: usize = consumers
        .iter()
        .map(|s| s.lock().unwrap().acknowledged.len())
        .sum();
    assert!(
        acknowledged > 4 * TASKS,
        "too little load to say anything: {acknowledged} consumptions"
    );
    eprintln!("{acknowledged} consumptions acknowledged, {in_flight_retried} retried after a kill");
}
