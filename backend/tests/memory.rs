//! A client that asks for more than it reads cannot grow the server's
//! memory: the connection's output budget bounds what it costs. Alone in its
//! file, so the process's resident memory is this test's alone.

mod common;

use std::time::Duration;

use common::{TestServer, client_frame, config};
use natter_shared::{ClientMsg, HistoryRequest, Seq};
use tokio::io::AsyncWriteExt;

/// Clients that ask for history and never read a byte.
const CLIENTS: usize = 20;
/// Messages of the longest kind (2000 four-byte characters) in the room.
const MESSAGES: usize = 200;
/// How long they keep asking.
const ASKING: Duration = Duration::from_secs(4);
/// The most the server may grow meanwhile: each client's output budget (1 MiB)
/// and what the allocator keeps around it, with room to spare. Without the
/// budget this grew by more than a gigabyte (issue 13).
const MAX_GROWTH_BYTES: u64 = 200 * 1024 * 1024;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_asking_for_history_without_reading_cannot_grow_the_server() {
    let mut cfg = config();
    cfg.rate.per_sec = 100_000;
    cfg.rate.burst = 100_000;
    cfg.limits.history_per_room = MESSAGES + 10;
    cfg.ws.write_coalesce = Duration::ZERO;
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "big").await;
    let text = "😀".repeat(2000);
    for i in 0..MESSAGES {
        ada.say(&format!("c{i}"), &text).await;
        assert!(matches!(ada.recv().await, natter_shared::ServerMsg::Ack(_)));
    }

    let before = resident_bytes();
    let mut askers = Vec::new();
    for n in 0..CLIENTS {
        let addr = server.addr;
        askers.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let upgrade = format!(
                "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            stream.write_all(upgrade.as_bytes()).await.expect("upgrade");
            let hello =
                serde_json::to_string(&ClientMsg::Hello(common::hello(&format!("asker{n}"), "big"))).expect("json");
            stream.write_all(&client_frame(0x1, hello.as_bytes())).await.expect("hello");
            let ask = serde_json::to_string(&ClientMsg::History(HistoryRequest { before: Seq(1_000), limit: 200 }))
                .expect("json");
            let ask = client_frame(0x1, ask.as_bytes());
            // Ask again and again, reading nothing, until the server stops
            // taking the requests (TCP pushes back) or the time is up.
            let deadline = tokio::time::Instant::now() + ASKING;
            while tokio::time::Instant::now() < deadline {
                match tokio::time::timeout_at(deadline, stream.write_all(&ask)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            stream
        }));
    }
    let mut streams = Vec::new();
    for asker in askers {
        streams.push(asker.await.expect("asker"));
    }
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown <= MAX_GROWTH_BYTES,
        "{CLIENTS} clients that do not read grew the server by {} MiB (at most {} MiB)",
        grown / (1024 * 1024),
        MAX_GROWTH_BYTES / (1024 * 1024)
    );
    drop(streams);
}
