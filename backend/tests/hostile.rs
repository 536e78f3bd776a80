//! A client that means harm: it asks for more than it reads, stalls, floods,
//! or trickles bytes. Each gets a bounded cost and a clear close, and the
//! server stays responsive for everyone else.

mod common;

use std::time::Duration;

use common::{Client, Ended, TestServer, client_frame, config};
use natter_shared::{ClientMsg, HistoryRequest, Seq, ServerMsg, close};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn text(msg: &ClientMsg) -> Vec<u8> {
    client_frame(0x1, serde_json::to_string(msg).expect("json").as_bytes())
}

/// A raw WebSocket connection, upgraded (the 101 read and discarded).
async fn raw(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(upgrade.as_bytes()).await.expect("upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.expect("101");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// The server's frames (text as strings) until its close frame's code.
async fn frames_until_close(stream: &mut TcpStream, limit: Duration) -> (Vec<String>, Option<u16>) {
    let mut texts = Vec::new();
    let read = async {
        loop {
            let mut head = [0u8; 2];
            if stream.read_exact(&mut head).await.is_err() {
                return None;
            }
            let len = match head[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    stream.read_exact(&mut l).await.ok()?;
                    usize::from(u16::from_be_bytes(l))
                }
                127 => {
                    let mut l = [0u8; 8];
                    stream.read_exact(&mut l).await.ok()?;
                    usize::try_from(u64::from_be_bytes(l)).ok()?
                }
                n => usize::from(n),
            };
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).await.ok()?;
            match head[0] & 0x0f {
                0x1 => texts.push(String::from_utf8(payload).expect("utf-8")),
                0x8 => return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])),
                _ => {}
            }
        }
    };
    let code = tokio::time::timeout(limit, read).await.expect("the server closes in time");
    (texts, code)
}

#[tokio::test]
async fn a_history_page_is_no_larger_than_half_the_output_budget() {
    let mut cfg = config();
    cfg.conn.output_budget = 64 * 1024;
    cfg.limits.max_members_per_room = 100;
    cfg.rate.burst = 1_000;
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "big").await;
    let long = "😀".repeat(2000);
    for i in 0..50 {
        ada.say(&format!("c{i}"), &long).await;
        assert!(matches!(ada.recv().await, ServerMsg::Ack(_)));
    }
    ada.send(&ClientMsg::History(HistoryRequest { before: Seq(100), limit: 50 })).await;
    let Some(ServerMsg::History(page)) = ada.try_recv(Duration::from_secs(5)).await else {
        panic!("expected a history page")
    };
    let bytes = serde_json::to_string(&page).expect("json").len();
    assert!(bytes <= 32 * 1024, "a page of {bytes} bytes for a 64 KiB budget");
    assert!(!page.events.is_empty() && !page.complete, "fewer events, and more to fetch");
    assert_eq!(page.events.last().map(|e| e.seq()), Some(Seq(51)), "the latest of them");
}

#[tokio::test]
async fn a_reader_that_stalls_costs_about_its_budget_then_is_closed_as_lagged() {
    let mut cfg = config();
    cfg.conn.output_budget = 64 * 1024;
    cfg.limits.max_members_per_room = 100;
    cfg.rate.per_sec = 100_000;
    cfg.rate.burst = 100_000;
    cfg.ws.write_coalesce = Duration::ZERO;
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "busy").await;
    // A client with a small receive buffer that joins, then reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small buffer");
    let stream = socket.connect(server.addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(server.url(), tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .expect("upgrade");
    let mut stalled = Client { ws };
    stalled.hello("Stalled", "busy").await;
    stalled.own_join("Stalled").await;
    ada.recv().await; // Stalled joined
    let kilobyte = "k".repeat(1000);
    for i in 0..2_000 {
        ada.say(&format!("m{i}"), &kilobyte).await;
        // Its ack (the stalled client's leave may come in between).
        while !matches!(ada.recv().await, ServerMsg::Ack(_)) {}
    }
    // Now read what reached the stalled client: about its budget and the
    // kernel's buffers, then the lagged close (4096 messages, 4 MB, before).
    let mut messages = 0;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(&mut stalled.ws)).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_)))) => messages += 1,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame)))) => {
                break frame.map(|f| u16::from(f.code));
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("unexpected end: {other:?}"),
        }
    };
    assert_eq!(end, Some(close::LAGGED));
    assert!(messages < 500, "{messages} messages of 1 KB reached a client with a 64 KiB budget");
}

#[tokio::test]
async fn a_flood_close_comes_after_the_replies_to_what_came_before() {
    let mut cfg = config();
    cfg.rate.per_sec = 1;
    cfg.rate.burst = 3;
    cfg.rate.strikes = 4;
    let server = TestServer::start(cfg).await;
    let mut stream = raw(server.addr).await;
    stream.write_all(&text(&ClientMsg::Hello(common::hello("Flood", "lobby")))).await.expect("hello");
    let mut burst = Vec::new();
    for i in 0..10 {
        let say = ClientMsg::Say(natter_shared::Say::new(format!("c{i}"), "hi"));
        burst.extend(text(&say));
    }
    stream.write_all(&burst).await.expect("flood");
    let (texts, code) = frames_until_close(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(code, Some(close::POLICY_VIOLATION));
    let msgs: Vec<ServerMsg> = texts.iter().map(|t| serde_json::from_str(t).expect("a message")).collect();
    let acks = msgs.iter().filter(|m| matches!(m, ServerMsg::Ack(_))).count();
    let refused = msgs
        .iter()
        .filter(|m| matches!(m, ServerMsg::Error(e) if e.code == natter_shared::ErrorCode::RateLimited))
        .count();
    // hello took the first token: two says were stored, four refused, then the close.
    assert_eq!(acks, 2, "the stored messages are acknowledged before the close: {texts:?}");
    assert_eq!(refused, 4, "every refusal arrives before the close: {texts:?}");
}

#[tokio::test]
async fn a_frame_trickled_byte_by_byte_is_closed_after_the_frame_timeout() {
    let mut cfg = config();
    cfg.timing.frame_timeout = Duration::from_millis(600);
    cfg.rate.burst = 1_000;
    let server = TestServer::start(cfg).await;
    let mut stream = raw(server.addr).await;
    stream.write_all(&text(&ClientMsg::Hello(common::hello("Slow", "lobby")))).await.expect("hello");
    let ping = text(&ClientMsg::Ping);
    let trickle = async {
        for byte in &ping {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    };
    // The frame would take several seconds; the server gives it 600 ms.
    let _ = tokio::time::timeout(Duration::from_millis(1500), trickle).await;
    let (_, code) = frames_until_close(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(code, Some(close::POLICY_VIOLATION));
}

#[tokio::test]
async fn unsolicited_pongs_cost_rate_limit_tokens() {
    let mut cfg = config();
    cfg.rate.per_sec = 1;
    cfg.rate.burst = 5;
    cfg.rate.strikes = 5;
    let server = TestServer::start(cfg).await;
    let mut stream = raw(server.addr).await;
    stream.write_all(&text(&ClientMsg::Hello(common::hello("Pong", "lobby")))).await.expect("hello");
    let mut pongs = Vec::new();
    for _ in 0..50 {
        pongs.extend(client_frame(0xA, b"x"));
    }
    stream.write_all(&pongs).await.expect("pongs");
    let (_, code) = frames_until_close(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(code, Some(close::POLICY_VIOLATION));
}

#[tokio::test]
async fn the_hello_deadline_fires_while_the_client_keeps_the_socket_busy() {
    let mut cfg = config();
    cfg.timing.hello_timeout = Duration::from_millis(500);
    cfg.rate.per_sec = 1_000_000;
    cfg.rate.burst = 1_000_000;
    let server = TestServer::start(cfg).await;
    let mut stream = raw(server.addr).await;
    let (mut read, mut write) = stream.split();
    let busy = async {
        // Pongs as fast as the socket takes them, never a hello.
        let pongs: Vec<u8> = (0..1000).flat_map(|_| client_frame(0xA, b"")).collect();
        loop {
            if write.write_all(&pongs).await.is_err() {
                break;
            }
        }
    };
    let closed = async {
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.len() >= 2 && got[0] == 0x88 && got.len() >= 2 + usize::from(got[1] & 0x7f) {
                break got;
            }
        }
    };
    // The flood goes on while the close frame is read. The server stops
    // reading a flooding peer after a bounded linger and resets the
    // connection, which may fail a write before this task has read the
    // frame: then what the server sent is read to its end.
    tokio::pin!(closed);
    let got = tokio::select! {
        // Reading first: whatever has arrived is read before the next write.
        biased;
        got = tokio::time::timeout(Duration::from_secs(5), &mut closed) => got.expect("closed within 5 s"),
        () = busy => tokio::time::timeout(Duration::from_secs(5), closed).await.expect("read to the end"),
    };
    assert_eq!(got.first(), Some(&0x88), "a close frame, not a connection ended without one: {got:?}");
    assert_eq!(got.get(2..4).map(|c| u16::from_be_bytes([c[0], c[1]])), Some(close::POLICY_VIOLATION));
    let reason = String::from_utf8_lossy(&got[4..2 + usize::from(got[1] & 0x7f)]).into_owned();
    assert!(reason.contains("hello"), "closed for the missing hello, not for flooding: {reason:?}");
}

#[tokio::test]
async fn an_honest_client_keeps_chatting_beside_a_flooding_one() {
    let mut cfg = config();
    cfg.rate.strikes = 3;
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let mut flood = Client::connect(&server.url()).await;
    flood.hello("Flood", "lobby").await;
    for i in 0..30 {
        flood.say(&format!("f{i}"), "spam").await;
    }
    assert!(matches!(flood.closed().await, Ended::Close(close::POLICY_VIOLATION, _)));
    ada.say("a1", "still here").await;
    loop {
        match ada.recv().await {
            ServerMsg::Ack(a) if a.cid.as_str() == "a1" => break,
            _ => continue,
        }
    }
}

/// A WebSocket client connecting from `source` (any 127.0.0.0/8 address),
/// with extra request headers; the handshake's HTTP status if refused.
async fn connect_from(server: &TestServer, source: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{source}:0").parse().expect("address")).expect("bind the source address");
    let stream = socket.connect(server.addr).await.expect("connect");
    let mut req = server.url().into_client_request().expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).expect("name"), v.parse().expect("value"));
    }
    match tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await {
        Ok((ws, _)) => Ok(Client { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// `who` says something and sees it acknowledged.
async fn chats(who: &mut Client) {
    who.say("still-here", "hello").await;
    loop {
        match who.recv().await {
            ServerMsg::Ack(a) if a.cid.as_str() == "still-here" => return,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn one_address_at_its_connection_cap_leaves_room_for_others() {
    let mut cfg = config();
    cfg.conn.max_connections_per_address = 3;
    let server = TestServer::start(cfg).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(&server, "127.0.0.1", &[]).await.expect("within the cap"));
    }
    assert_eq!(connect_from(&server, "127.0.0.1", &[]).await.err(), Some(429), "a fourth from the same address");
    let mut other = connect_from(&server, "127.0.0.2", &[]).await.expect("another address connects");
    other.hello("Other", "lobby").await;
    chats(&mut other).await;
    // A slot given back can be taken again.
    held.pop().expect("held").close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(connect_from(&server, "127.0.0.1", &[]).await.is_ok(), "a freed slot");
}

#[tokio::test]
async fn one_address_at_its_join_cap_leaves_room_for_others() {
    let mut cfg = config();
    cfg.conn.max_joins_per_address = 2;
    let server = TestServer::start(cfg).await;
    let mut a = connect_from(&server, "127.0.0.1", &[]).await.expect("connects");
    a.hello("A1", "lobby").await;
    let mut b = connect_from(&server, "127.0.0.1", &[]).await.expect("connects");
    b.hello("A2", "lobby").await;
    let mut c = connect_from(&server, "127.0.0.1", &[]).await.expect("connects");
    match c.hello_with(common::hello("A3", "lobby")).await {
        ServerMsg::Error(e) => assert_eq!(e.code, natter_shared::ErrorCode::TooManyJoins),
        other => panic!("expected too_many_joins, got {other:?}"),
    }
    let mut other = connect_from(&server, "127.0.0.3", &[]).await.expect("connects");
    other.hello("Other", "lobby").await;
    chats(&mut other).await;
    a.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.hello("A3", "lobby").await;
}

#[tokio::test]
async fn one_address_at_its_room_cap_leaves_room_for_others() {
    let mut cfg = config();
    cfg.limits.max_rooms_per_address = 1;
    let server = TestServer::start(cfg).await;
    let mut a = connect_from(&server, "127.0.0.1", &[]).await.expect("connects");
    a.hello("A1", "first").await;
    let mut b = connect_from(&server, "127.0.0.1", &[]).await.expect("connects");
    match b.hello_with(common::hello("A2", "second")).await {
        ServerMsg::Error(e) => assert_eq!(e.code, natter_shared::ErrorCode::TooManyRooms),
        other => panic!("expected too_many_rooms, got {other:?}"),
    }
    // Joining a room that exists is not creating one.
    b.hello("A2", "first").await;
    let mut other = connect_from(&server, "127.0.0.4", &[]).await.expect("connects");
    other.hello("Other", "second").await;
    chats(&mut other).await;
}

#[tokio::test]
async fn a_trusted_proxy_is_counted_per_forwarded_client_and_others_are_not_believed() {
    let mut cfg = config();
    cfg.conn.max_connections_per_address = 2;
    cfg.trusted_proxies = vec!["127.0.0.5".parse().expect("network")];
    let server = TestServer::start(cfg).await;
    let one = [("x-forwarded-for", "203.0.113.1")];
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_from(&server, "127.0.0.5", &one).await.expect("within the cap"));
    }
    assert_eq!(connect_from(&server, "127.0.0.5", &one).await.err(), Some(429), "the same forwarded client");
    let two = [("x-forwarded-for", "203.0.113.2")];
    let mut other = connect_from(&server, "127.0.0.5", &two).await.expect("another forwarded client");
    other.hello("Other", "lobby").await;
    chats(&mut other).await;
    // A client's own unreadable header before the hop the proxy appended
    // does not hide it; nor does a request that names no client at all.
    let garbage = [("x-forwarded-for", "\u{e9}t\u{e9}, 203.0.113.1")];
    assert_eq!(connect_from(&server, "127.0.0.5", &garbage).await.err(), Some(429), "counted as 203.0.113.1");
    let mut unnamed = Vec::new();
    for _ in 0..2 {
        unnamed.push(connect_from(&server, "127.0.0.5", &[]).await.expect("the proxy's own share"));
    }
    assert_eq!(connect_from(&server, "127.0.0.5", &[]).await.err(), Some(429), "counted under the proxy itself");
    // An untrusted peer's header is ignored: it counts as itself.
    let mut spoofed = Vec::new();
    for n in 0..2 {
        let header = [("x-forwarded-for", if n == 0 { "198.51.100.1" } else { "198.51.100.2" })];
        spoofed.push(connect_from(&server, "127.0.0.6", &header).await.expect("within the cap"));
    }
    let header = [("x-forwarded-for", "198.51.100.3")];
    assert_eq!(connect_from(&server, "127.0.0.6", &header).await.err(), Some(429));
}
