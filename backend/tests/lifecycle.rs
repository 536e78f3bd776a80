//! Connection lifecycle: heartbeats, lagging clients, the Host and Origin
//! checks, the connection cap, graceful shutdown and refusing to start.

mod common;

use std::time::Duration;

use common::{Client, Ended, TestServer, config, resume};
use futures_util::StreamExt;
use natter_backend::config::ConfigError;
use natter_shared::{NoticeKind, ServerMsg, close};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

#[tokio::test]
async fn a_silent_peer_is_found_by_heartbeat_and_times_out() {
    let mut cfg = config();
    cfg.timing.ping_interval = Duration::from_millis(200);
    cfg.timing.pong_timeout = Duration::from_millis(300);
    cfg.timing.leave_grace = Duration::from_millis(100);
    let server = TestServer::start(cfg).await;
    let (mut watcher, _) = server.joined("Watcher", "lobby").await;
    // Joins, then never reads again: tungstenite only answers pings while reading.
    let (_silent, _) = server.joined("Silent", "lobby").await;
    assert!(matches!(watcher.recv().await, ServerMsg::Notice(n) if n.kind == NoticeKind::Joined));
    let started = tokio::time::Instant::now();
    match watcher.recv().await {
        ServerMsg::Notice(n) => {
            assert_eq!((n.kind, n.name.as_str()), (NoticeKind::TimedOut, "Silent"))
        }
        other => panic!("expected timed_out, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(500), "not before ping + pong timeout");
    // The watcher answers pings (it reads) and so stays connected through many intervals.
    assert!(watcher.try_recv(Duration::from_millis(1500)).await.is_none());
    watcher.say("w1", "still here").await;
    assert!(matches!(watcher.recv().await, ServerMsg::Ack(_)));
}

/// A client whose socket receive buffer is tiny, so it stalls fast when it stops reading.
async fn small_buffer_client(server: &TestServer) -> Client {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("set SO_RCVBUF");
    let stream = socket.connect(server.addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(server.url(), tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .expect("handshake");
    Client { ws }
}

#[tokio::test]
async fn a_lagging_client_is_closed_with_the_lagged_code_and_can_resume() {
    const MESSAGES: usize = 3000;
    let mut cfg = config();
    cfg.conn.outbound_queue = 16;
    // This test is about the queue's message cap; the byte budget must hold
    // the whole 3 MB replay in one welcome (no reply is over half of it).
    cfg.conn.output_budget = 16 * 1024 * 1024;
    // The sender waits for each batch's acks: write coalescing would pace
    // this lock-step exchange at one round per coalescing window.
    cfg.ws.write_coalesce = Duration::ZERO;
    cfg.limits.history_per_room = MESSAGES + 10;
    cfg.limits.replay_max = MESSAGES + 10;
    cfg.rate.per_sec = 1_000_000;
    cfg.rate.burst = 1_000_000;
    cfg.timing.close_timeout = Duration::from_secs(20);
    let server = TestServer::start(cfg).await;

    let mut stalled = small_buffer_client(&server).await;
    let stalled_welcome = stalled.hello("Stalled", "lobby").await;
    let (mut watcher, _) = server.joined("Watcher", "lobby").await;
    let (sender, _) = server.joined("Sender", "lobby").await;
    assert!(matches!(watcher.recv().await, ServerMsg::Notice(n) if n.name.as_str() == "Sender"));

    // The sender sends in small batches that the watcher reads before the
    // next, so the watcher keeps up while the stalled client falls behind.
    let mut sender = sender;
    const BATCH: usize = 8;
    let text = "x".repeat(1000);
    for batch in 0..MESSAGES / BATCH {
        for i in batch * BATCH..(batch + 1) * BATCH {
            sender.say(&format!("m{i}"), &format!("{i} {text}")).await;
        }
        for i in batch * BATCH..(batch + 1) * BATCH {
            assert!(matches!(sender.recv().await, ServerMsg::Ack(a) if a.cid.as_str() == format!("m{i}")));
            match watcher.recv().await {
                ServerMsg::Message(m) => assert!(m.text.as_str().starts_with(&format!("{i} ")), "message {i} in order"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    // The stalled client now reads: what was queued, then the lagged close.
    let mut seen = Vec::new();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(20), stalled.ws.next()).await.expect("frames or close") {
            Some(Ok(Message::Text(t))) => {
                if let Ok(ServerMsg::Message(m)) = serde_json::from_str::<ServerMsg>(&t) {
                    seen.push(m.seq);
                }
            }
            Some(Ok(Message::Close(Some(frame)))) => {
                break Ended::Close(frame.code.into(), frame.reason.to_string());
            }
            Some(Ok(_)) => {}
            other => break Ended::Error(format!("{other:?}")),
        }
    };
    assert_eq!(ended, Ended::Close(close::LAGGED, close::LAGGED_REASON.into()));
    assert!(seen.len() < MESSAGES, "the stalled client was cut off before the end");

    // It resumes from the last seq it saw and gets every remaining message exactly once.
    let last = seen.last().copied().unwrap_or(stalled_welcome.seq_head);
    let mut back = server.client().await;
    let welcome =
        match back.hello_with(resume("Stalled", "lobby", last, Some(stalled_welcome.resume_token.as_str()))).await {
            ServerMsg::Welcome(w) => w,
            other => panic!("expected welcome, got {other:?}"),
        };
    assert_eq!(welcome.missed, None);
    for e in &welcome.history {
        if let natter_shared::RoomEvent::Message(m) = e {
            seen.push(m.seq);
        }
    }
    assert_eq!(seen.len(), MESSAGES, "every message exactly once");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, no duplicates");
}

#[tokio::test]
async fn a_foreign_origin_is_refused_with_403_before_the_upgrade() {
    let mut cfg = config();
    cfg.origins = natter_backend::config::origin::OriginPolicy::new(&["https://pages.example"]).expect("valid");
    let server = TestServer::start(cfg).await;
    match Client::try_connect_with(&server.url(), &[("origin", "http://evil.example")]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 403),
        Err(other) => panic!("expected HTTP 403, got {other}"),
        Ok(_) => panic!("a foreign origin must be refused"),
    }
    let own = format!("http://{}", server.addr);
    assert!(Client::try_connect_with(&server.url(), &[("origin", &own)]).await.is_ok(), "own origin");
    assert!(
        Client::try_connect_with(&server.url(), &[("origin", "https://pages.example")]).await.is_ok(),
        "listed origin"
    );
    assert!(Client::try_connect_with(&server.url(), &[]).await.is_ok(), "no origin: not a browser");
}

#[tokio::test]
async fn connections_over_the_cap_get_503() {
    let mut cfg = config();
    cfg.max_connections = 3;
    let server = TestServer::start(cfg).await;
    let a = server.client().await;
    let _b = server.client().await;
    let _c = server.client().await;
    match Client::try_connect_with(&server.url(), &[]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 503),
        Err(other) => panic!("expected HTTP 503, got {other}"),
        Ok(_) => panic!("a fourth connection must be refused"),
    }
    let (status, _, body) = common::http_get(server.addr, "/healthz").await;
    assert_eq!(status, 503, "plain HTTP is capped too: {body}");
    // Closing one frees its slot.
    a.close().await;
    let mut admitted = false;
    for _ in 0..50 {
        if Client::try_connect_with(&server.url(), &[]).await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "a slot frees up after a close");
}

#[tokio::test]
async fn shutdown_closes_every_client_with_1012_and_run_returns() {
    let mut cfg = config();
    cfg.timing.shutdown_timeout = Duration::from_secs(2);
    cfg.timing.close_timeout = Duration::from_secs(1);
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let (mut bob, _) = server.joined("Bob", "other").await;
    // A client that never reads must not hold shutdown up beyond its timeout.
    let (_stalled, _) = server.joined("Stalled", "lobby").await;
    let _ = ada.recv().await;
    let addr = server.addr;
    let started = tokio::time::Instant::now();
    let stopping = tokio::spawn(server.shutdown());
    assert!(matches!(ada.closed().await, Ended::Close(code, _) if code == close::SERVICE_RESTART));
    assert!(matches!(bob.closed().await, Ended::Close(code, _) if code == close::SERVICE_RESTART));
    stopping.await.expect("shutdown task").expect("run returns Ok");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by the shutdown timeout");
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_ping_gets_a_pong() {
    let server = TestServer::start(config()).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    ada.send(&natter_shared::ClientMsg::Ping).await;
    assert_eq!(ada.recv().await, ServerMsg::Pong);
}

#[tokio::test]
async fn a_connection_that_never_says_hello_is_closed() {
    let mut cfg = config();
    cfg.timing.hello_timeout = Duration::from_millis(300);
    let server = TestServer::start(cfg).await;
    let mut idle = server.client().await;
    assert!(matches!(idle.closed().await, Ended::Close(code, _) if code == close::POLICY_VIOLATION));
    // One that joins in time stays.
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    assert!(ada.try_recv(Duration::from_millis(600)).await.is_none());
    ada.send(&natter_shared::ClientMsg::Ping).await;
    assert_eq!(ada.recv().await, ServerMsg::Pong);
}

#[tokio::test]
async fn a_client_closing_to_reconnect_is_not_announced_as_leaving() {
    let mut cfg = config();
    cfg.timing.leave_grace = Duration::from_millis(800);
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let (bob, w) = server.joined("Bob", "lobby").await;
    assert!(matches!(ada.recv().await, ServerMsg::Notice(n) if n.kind == NoticeKind::Joined));
    let mut ws = bob.ws;
    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: close::CLIENT_RECONNECTING.into(),
        reason: "reconnecting".into(),
    };
    futures_util::SinkExt::send(&mut ws, Message::Close(Some(frame))).await.expect("close");
    let mut bob = server.client().await;
    let back = bob.hello_with(resume("Bob", "lobby", w.seq_head, Some(w.resume_token.as_str()))).await;
    assert!(matches!(back, ServerMsg::Welcome(_)));
    assert!(ada.try_recv(Duration::from_millis(1200)).await.is_none(), "no left, no join");
}

#[tokio::test]
async fn empty_rooms_make_way_for_new_ones() {
    let mut cfg = config();
    cfg.limits.max_rooms = 2;
    let server = TestServer::start(cfg).await;
    let (a, first) = server.joined("Ann", "one").await;
    let (b, _) = server.joined("Ben", "two").await;
    let mut c = server.client().await;
    assert!(matches!(
        c.hello_with(common::hello("Cal", "three")).await,
        ServerMsg::Error(e) if e.code == natter_shared::ErrorCode::TooManyRooms
    ));
    a.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let w = c.hello("Cal", "three").await;
    assert_eq!(w.room.as_str(), "three", "the empty room one made way");
    // With the in-memory store, a dropped room starts a new history when
    // joined again, under a new history id (clients then start afresh).
    let first_id = first.history_id.clone();
    b.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, again) = server.joined("Ann", "one").await;
    assert_ne!(again.history_id, first_id);
}

/// A handshake to `server` naming `host` in `Host`, with an `Origin`.
async fn connect_as(server: &TestServer, host: &str, origin: &str) -> Result<Client, WsError> {
    Client::try_connect_with(&server.url(), &[("host", host), ("origin", origin)]).await
}

/// The HTTP status of a refused handshake.
fn refused_with(result: Result<Client, WsError>) -> u16 {
    match result {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the handshake must be refused"),
    }
}

#[tokio::test]
async fn dns_rebinding_a_foreign_host_is_refused_even_when_origin_matches_it() {
    let server = TestServer::start(config()).await;
    let port = server.addr.port();
    // The attacker's page at http://evil.example:PORT, its name now resolving to us.
    let evil = format!("evil.example:{port}");
    assert_eq!(refused_with(connect_as(&server, &evil, &format!("http://{evil}")).await), 421);
    // The server's own names, as a page of its own sends them.
    for host in [server.addr.to_string(), format!("localhost:{port}")] {
        assert!(connect_as(&server, &host, &format!("http://{host}")).await.is_ok(), "{host}");
    }
}

#[tokio::test]
async fn with_a_public_url_an_origin_of_another_scheme_is_foreign() {
    let mut cfg = config();
    cfg.names = natter_backend::config::names::Names::parse(&["https://chat.example.com"], &[]).expect("valid");
    cfg.origins = natter_backend::config::origin::OriginPolicy::new(&["https://pages.example"]).expect("valid");
    let server = TestServer::start(cfg).await;
    let host = "chat.example.com";
    assert_eq!(refused_with(connect_as(&server, host, "http://chat.example.com").await), 403);
    assert_eq!(refused_with(connect_as(&server, host, "https://chat.example.com:8443").await), 403);
    assert!(connect_as(&server, host, "https://chat.example.com").await.is_ok(), "its own origin");
    assert!(connect_as(&server, host, "https://pages.example").await.is_ok(), "--allow-origin still works");
    assert_eq!(refused_with(connect_as(&server, &server.addr.to_string(), "https://chat.example.com").await), 421);
}

#[tokio::test]
async fn a_data_directory_inside_the_bundle_directory_is_refused_at_start() {
    let bundle = common::temp_dir("bundle-with-data");
    for data in [bundle.join("natter-data"), bundle.to_path_buf(), bundle.join("x/../natter-data")] {
        let mut cfg = config();
        cfg.history = natter_backend::config::HistoryKind::Sqlite;
        cfg.bundle_dir = bundle.to_path_buf();
        cfg.storage.data_dir = data.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let result = tokio::time::timeout(Duration::from_secs(5), natter_backend::run(cfg, listener, async {}))
            .await
            .expect("returns at once");
        match result {
            Err(natter_backend::ServerError::Config(e @ ConfigError::DataInsideBundle { .. })) => {
                assert!(e.to_string().contains("inside the bundle directory"), "{e}");
            }
            other => panic!("{}: expected DataInsideBundle, got {other:?}", data.display()),
        }
        assert!(!bundle.join("natter-data").exists(), "nothing was created");
        assert!(!bundle.join("natter.db").exists(), "nothing was created");
    }
    // Beside the bundle is fine.
    let mut cfg = config();
    cfg.history = natter_backend::config::HistoryKind::Sqlite;
    cfg.bundle_dir = bundle.join("dist");
    cfg.storage.data_dir = bundle.join("natter-data");
    let server = TestServer::start(cfg).await;
    assert!(server.shutdown().await.is_ok());
}
