//! Acknowledged means durable: clients send without pause while the real
//! server is killed with SIGKILL, several times; afterwards every message
//! that was acknowledged is in the history, once, at its acknowledged seq.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use natter_e2e::{Natter, RemoveOnDrop, WsClient, natter_bin, temp_data_dir};
use natter_shared::{ClientMsg, RoomEvent, Say, ServerMsg};
use tokio_tungstenite::tungstenite::Message;

const ROUNDS: usize = 3;
const SENDERS: usize = 3;
/// How long the clients send before the kill (grows a little each round).
const SEND_FOR: Duration = Duration::from_millis(400);
/// How long a sender may take to notice the dead server.
const DRAIN: Duration = Duration::from_secs(10);

/// Sends as fast as possible until the connection dies; returns (cid, seq) of every ack.
async fn sender(url: String, round: usize, index: usize) -> Vec<(String, u64)> {
    let mut client = WsClient::connect(&url).await;
    let name = format!("r{round}s{index}");
    assert!(matches!(client.hello(&name, "crash").await, ServerMsg::Welcome(_)));
    let (mut tx, mut rx) = client.ws.split();
    let writer = tokio::spawn(async move {
        for i in 0.. {
            let say = ClientMsg::Say(Say::new(format!("{name}-{i}"), format!("message {i} of {name}")));
            let json = serde_json::to_string(&say).expect("json");
            if tx.send(Message::text(json)).await.is_err() {
                break;
            }
            if i % 16 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut acks = Vec::new();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(DRAIN, rx.next()).await {
        if let Message::Text(text) = frame
            && let Ok(ServerMsg::Ack(ack)) = serde_json::from_str::<ServerMsg>(&text)
        {
            acks.push((ack.cid.as_str().to_owned(), ack.seq.0));
        }
    }
    writer.abort();
    acks
}

#[tokio::test]
async fn every_acknowledged_message_survives_sigkill() {
    let data = temp_data_dir();
    let _cleanup = RemoveOnDrop(data.clone());
    let data_arg = data.display().to_string();
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--data-dir", &data_arg, "--rate-per-sec", "1000000", "--rate-burst", "1000000", "--history", "sqlite"];
    let mut acked: HashMap<String, u64> = HashMap::new();
    for round in 0..ROUNDS {
        let mut natter = Natter::start_on(&listen, &args);
        let url = natter.ws_url();
        let senders: Vec<_> = (0..SENDERS).map(|i| tokio::spawn(sender(url.clone(), round, i))).collect();
        tokio::time::sleep(SEND_FOR + Duration::from_millis(150 * round as u64)).await;
        natter.signal("KILL");
        let status = natter.wait();
        assert!(!status.success(), "killed, not exited");
        for task in senders {
            for (cid, seq) in task.await.expect("sender task") {
                assert!(acked.insert(cid.clone(), seq).is_none(), "{cid} acknowledged twice");
            }
        }
    }
    assert!(acked.len() > 100, "the test must exercise the writer: only {} acks", acked.len());

    let out = Command::new(natter_bin())
        .args(["export", "--data-dir", &data_arg, "--room", "crash"])
        .output()
        .expect("run natter export");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<RoomEvent> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("an event per line"))
        .collect();
    assert!(events.windows(2).all(|w| w[0].seq() < w[1].seq()), "in order, no seq twice");
    let mut stored: HashMap<String, u64> = HashMap::new();
    for event in &events {
        if let RoomEvent::Message(m) = event {
            let cid = m.cid.as_ref().expect("messages keep their cid").as_str().to_owned();
            assert!(stored.insert(cid.clone(), m.seq.0).is_none(), "{cid} stored twice");
        }
    }
    for (cid, seq) in &acked {
        assert_eq!(stored.get(cid), Some(seq), "acknowledged {cid} at seq {seq} is missing or moved");
    }
}
