//! A real server on port 0 and real WebSocket clients, for the integration tests.
//! Every wait is bounded, so a broken server fails a test instead of hanging it.

#![allow(dead_code)] // each test file uses a different part

pub mod natter_binary;
pub mod redis_server;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use natter_backend::Config;
use natter_shared::{ClientMsg, Hello, Say, Seq, ServerMsg, Welcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one expected frame.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure that nothing arrives.
pub const QUIET: Duration = Duration::from_millis(300);

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The `/metrics` listener's address, when started with one.
    pub metrics: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), natter_backend::ServerError>>>,
}

/// A config for tests: fast timings are set by each test that needs them.
pub fn config() -> Config {
    Config {
        bundle_dir: std::env::temp_dir().join("natter-test-no-bundle"),
        history: natter_backend::config::HistoryKind::Memory,
        ..Config::default()
    }
}

/// A fresh, empty temporary directory, removed with everything in it when
/// dropped. Declared before the test's server, it outlives it; a dropped
/// server's history writer may still hold its files open for a moment,
/// which Linux allows.
pub struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty directory for a test's database.
pub fn temp_dir(label: &str) -> TempDir {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "natter-test-{label}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    TempDir(dir)
}

/// A config with durable history in a fresh directory, and that directory
/// (keep it for as long as the config is used).
pub fn sqlite_config(label: &str) -> (Config, TempDir) {
    let mut config = config();
    config.history = natter_backend::config::HistoryKind::Sqlite;
    let dir = temp_dir(label);
    config.storage.data_dir = dir.to_path_buf();
    (config, dir)
}

/// A config with history in the Redis at `url`, answering within a second
/// (so a stopped Redis is found quickly).
pub fn redis_config(url: &str) -> Config {
    let mut config = config();
    let mut redis = natter_backend::config::RedisConfig::new(url);
    redis.timeout = Duration::from_secs(1);
    config.history = natter_backend::config::HistoryKind::Redis(redis);
    config
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        Self::start_serving(config, false).await
    }

    /// A server that also serves `/metrics` on a listener of its own.
    pub async fn start_with_metrics(config: Config) -> Self {
        Self::start_serving(config, true).await
    }

    async fn start_serving(config: Config, with_metrics: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let metrics_listener =
            if with_metrics { Some(TcpListener::bind("127.0.0.1:0").await.expect("bind port 0")) } else { None };
        let metrics = metrics_listener.as_ref().map(|l| l.local_addr().expect("local addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = natter_backend::Listeners { main: listener, metrics: metrics_listener };
        let handle = tokio::spawn(natter_backend::run_with(config, listeners, async {
            let _ = stopped.await;
        }));
        Self { addr, metrics, stop: Some(stop), handle: Some(handle) }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Signals shutdown and waits (bounded) for `run` to return.
    pub async fn shutdown(mut self) -> Result<(), natter_backend::ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let handle = self.handle.take().expect("not yet shut down");
        tokio::time::timeout(Duration::from_secs(15), handle)
            .await
            .expect("server stops within 15 s")
            .expect("server task did not panic")
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// A client that has joined `room` as `name` and seen its own join
    /// announced (so the join is stored and every member has been told).
    /// The welcome is returned as the client then knows the room: its own
    /// `joined` notice appended to the history and `seq_head` at that notice.
    pub async fn joined(&self, name: &str, room: &str) -> (Client, Welcome) {
        let mut c = self.client().await;
        let mut w = c.hello(name, room).await;
        let notice = c.own_join(name).await;
        w.seq_head = notice.seq;
        w.history.push(natter_shared::RoomEvent::Notice(notice));
        (c, w)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking the protocol.
pub struct Client {
    pub ws: Socket,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Close(u16, String),
    CloseWithoutFrame,
    Eof,
    Error(String),
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("websocket connects");
        Self { ws }
    }

    /// Connects with extra request headers; returns the handshake error if refused.
    pub async fn try_connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Self, WsError> {
        let mut req = url.into_client_request().expect("valid url");
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake in time")?;
        Ok(Self { ws })
    }

    pub async fn send(&mut self, msg: &ClientMsg) {
        let json = serde_json::to_string(msg).expect("serialize");
        self.send_text(&json).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn hello_with(&mut self, hello: Hello) -> ServerMsg {
        self.send(&ClientMsg::Hello(hello)).await;
        self.recv().await
    }

    /// Joins and returns the welcome (panics on anything else).
    pub async fn hello(&mut self, name: &str, room: &str) -> Welcome {
        match self.hello_with(hello(name, room)).await {
            ServerMsg::Welcome(w) => w,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Waits for the `joined` notice of `name` (after a fresh join).
    pub async fn own_join(&mut self, name: &str) -> natter_shared::Notice {
        match self.recv().await {
            ServerMsg::Notice(n) if n.kind == natter_shared::NoticeKind::Joined && n.name.as_str() == name.trim() => n,
            other => panic!("expected {name}'s joined notice, got {other:?}"),
        }
    }

    pub async fn say(&mut self, cid: &str, text: &str) {
        self.send(&ClientMsg::Say(Say::new(cid, text))).await;
    }

    /// Sends a message again, as a page does after a reconnect: `after` is
    /// the room's latest seq it had when it first sent it.
    pub async fn resend(&mut self, cid: &str, text: &str, after: Seq) {
        self.send(&ClientMsg::Say(Say { after: Some(after), ..Say::new(cid, text) })).await;
    }

    /// The next protocol message (skipping pings); panics on timeout or close.
    pub async fn recv(&mut self) -> ServerMsg {
        match self.try_recv(RECV_TIMEOUT).await {
            Some(msg) => msg,
            None => panic!("no message within {RECV_TIMEOUT:?}"),
        }
    }

    /// The next protocol message within `limit`, or `None`.
    pub async fn try_recv(&mut self, limit: Duration) -> Option<ServerMsg> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            match next {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(&t).unwrap_or_else(|e| panic!("bad frame {t}: {e}")));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => panic!("connection ended"),
            }
        }
    }

    /// Asserts that no protocol message arrives for `QUIET`.
    pub async fn expect_quiet(&mut self) {
        if let Some(msg) = self.try_recv(QUIET).await {
            panic!("expected silence, got {msg:?}");
        }
    }

    /// Every protocol message that still arrives until the connection ends
    /// (however it ends: a killed server resets it).
    pub async fn until_gone(&mut self) -> Vec<ServerMsg> {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT * 3;
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("connection not ended in time"),
                Ok(Some(Ok(Message::Text(t)))) => {
                    got.push(serde_json::from_str(&t).unwrap_or_else(|e| panic!("bad frame {t}: {e}")));
                }
                Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => return got,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Reads until the connection ends, skipping other frames; returns how it ended.
    pub async fn closed(&mut self) -> Ended {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT * 3;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("connection not closed in time"),
                Ok(None) => return Ended::Eof,
                Ok(Some(Ok(Message::Close(Some(CloseFrame { code, reason }))))) => {
                    return Ended::Close(code.into(), reason.to_string());
                }
                Ok(Some(Ok(Message::Close(None)))) => return Ended::CloseWithoutFrame,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Ended::Error(e.to_string()),
            }
        }
    }

    /// Sends a Close frame and waits for the server's answer.
    pub async fn close(mut self) {
        self.ws.close(None).await.expect("close");
        let _ = tokio::time::timeout(RECV_TIMEOUT, async { while let Some(Ok(_)) = self.ws.next().await {} }).await;
    }

    /// Drops the TCP connection without a Close frame (a crash or lost network).
    pub fn drop_connection(self) {
        drop(self.ws);
    }
}

/// A `hello` for `name` in `room`.
pub fn hello(name: &str, room: &str) -> Hello {
    Hello::new(name, room)
}

/// A `hello` that resumes after `last_seq`.
pub fn resume(name: &str, room: &str, last_seq: Seq, token: Option<&str>) -> Hello {
    Hello { last_seq: Some(last_seq), resume_token: token.map(str::to_owned), ..hello(name, room) }
}

/// A minimal HTTP/1.1 GET: status, headers (lowercased names) and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    http_request(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")).await
}

/// Sends a raw request and parses the response (read until the server closes).
pub async fn http_request(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// The value of a header from [`http_get`].
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A masked client frame, for tests that speak WebSocket on a raw socket.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [7u8, 1, 9, 3];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}
