//! Helpers for end-to-end tests: the real `natter` binary as a child process,
//! a WebSocket client that speaks the protocol, and a private redis-server
//! for servers that share rooms (`redis_server`).
//!
//! The binary is `$NATTER_BIN` if set, else `target/debug/natter` of this
//! workspace (built by `cargo test --workspace` and by `cargo xtask test`).

pub mod browser;
pub mod redis_server;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use natter_shared::{ClientMsg, Hello, ServerMsg};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the binary may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a test waits for one frame or for the process to exit.
pub const WAIT: Duration = Duration::from_secs(10);
/// The line the server logs once it listens; the address follows it.
const READY_MARKER: &str = "Natter is running at http://";

/// The `natter` binary under test.
pub fn natter_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATTER_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/natter")
}

/// A fresh path in the temporary directory, `natter-e2e-<label>-<pid>-<n>`
/// (anything left there by an earlier process with the same pid removed).
pub fn fresh_temp_path(label: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "natter-e2e-{label}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A fresh directory for a server's database (natter creates it).
pub fn temp_data_dir() -> PathBuf {
    fresh_temp_path("data")
}

/// The built page (`dist/` of the workspace), which `cargo xtask test` builds first.
pub fn bundle_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist");
    assert!(
        dir.join("index.html").exists(),
        "{} has no index.html: build the page with `cargo xtask bundle` (cargo xtask test does)",
        dir.display()
    );
    dir
}

/// A directory removed (with everything in it) when dropped.
#[derive(Debug)]
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `natter` process, killed when dropped.
#[derive(Debug)]
pub struct Natter {
    pub child: Child,
    pub addr: SocketAddr,
    /// The data directory: a fresh temporary one unless `--data-dir` was given.
    pub data_dir: PathBuf,
    /// Log lines the process printed (stdout and stderr) after it said it runs.
    pub lines: mpsc::Receiver<String>,
    /// The lines it printed before that.
    pub startup: Vec<String>,
    /// Removes the data directory this process was given, if it made it
    /// (after the process is killed: fields drop after `Drop::drop`).
    _made_dir: Option<RemoveOnDrop>,
}

/// Forwards a child's output lines to `tx`.
fn forward(out: impl std::io::Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// Removes ANSI colour codes from a log line.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Natter {
    /// Starts the binary on a free loopback port with `args`, waiting until it listens.
    pub fn start(args: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", args)
    }

    /// Starts the binary listening on `listen` (e.g. to restart on the same port).
    pub fn start_on(listen: &str, args: &[&str]) -> Self {
        Self::start_binary(&natter_bin(), listen, args)
    }

    /// Starts the natter binary at `bin` (one unpacked from the tarball, say)
    /// listening on `listen`.
    pub fn start_binary(bin: &Path, listen: &str, args: &[&str]) -> Self {
        let given = args.windows(2).find(|w| w[0] == "--data-dir").map(|w| PathBuf::from(w[1]));
        let data_dir = given.clone().unwrap_or_else(temp_data_dir);
        // Made here, so removed even if the start fails below.
        let made_dir = given.is_none().then(|| RemoveOnDrop(data_dir.clone()));
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        if given.is_none() {
            args.extend(["--data-dir".to_owned(), data_dir.display().to_string()]);
        }
        assert!(bin.exists(), "{} not found: run `cargo build -p natter-backend` or `cargo xtask test`", bin.display());
        let mut child = Command::new(bin)
            .args(["--listen", listen])
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn natter");
        let (tx, lines) = mpsc::channel();
        forward(child.stdout.take().expect("stdout"), tx.clone());
        forward(child.stderr.take().expect("stderr"), tx);
        let deadline = Instant::now() + START_TIMEOUT;
        let mut seen = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => plain(&line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("natter did not start listening; output:\n{}", seen.join("\n"));
                }
            };
            if let Some(rest) = line.split(READY_MARKER).nth(1) {
                // A text line ends with the URL; a JSON line has `/"}` after it.
                let addr = rest.split(['/', '"']).next().unwrap_or_default().trim();
                match addr.parse() {
                    Ok(addr) => break addr,
                    Err(_) => {
                        // Never leave the process behind a failed start.
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("bad address in {line:?}");
                    }
                }
            }
            seen.push(line);
        };
        Self { child, addr, data_dir, lines, startup: seen, _made_dir: made_dir }
    }

    /// The WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Sends a signal (by name, e.g. `TERM`) to the process.
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").args([format!("-{name}"), self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "natter did not exit within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Natter {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A protocol client for end-to-end tests.
#[derive(Debug)]
pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connects");
        Self { ws }
    }

    /// Sends a protocol message.
    pub async fn send(&mut self, msg: &ClientMsg) {
        let json = serde_json::to_string(msg).expect("serialize");
        self.ws.send(Message::text(json)).await.expect("send");
    }

    /// Joins `room` as `name`.
    pub async fn hello(&mut self, name: &str, room: &str) -> ServerMsg {
        self.send(&ClientMsg::Hello(Hello::new(name, room))).await;
        self.recv().await
    }

    /// Joins `room` as `name` and waits until its own `joined` is announced.
    pub async fn join(&mut self, name: &str, room: &str) {
        assert!(matches!(self.hello(name, room).await, ServerMsg::Welcome(_)), "welcome");
        loop {
            if let ServerMsg::Notice(n) = self.recv().await
                && n.name.as_str() == name
            {
                return;
            }
        }
    }

    /// The next protocol message, or a panic after [`WAIT`].
    pub async fn recv(&mut self) -> ServerMsg {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("a frame in time") {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(&t).expect("valid server message");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The close code the server sent, skipping other frames.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("closed in time") {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    }
}
