//! RFC 6455 conformance of `/ws`, case by case, in the groups of the
//! Autobahn|Testsuite: 1 framing and lengths, 2 ping/pong, 3 reserved bits,
//! 4 opcodes, 5 fragmentation, 6 UTF-8, 7 close handling, 9 limits, 12/13
//! compression (declined). Each case is raw bytes on a plain TCP socket
//! against the real server — our own upgrade request, hand-built masked
//! frames — and the answers it must get back: a pong echoing the ping, a
//! JSON reply, a close frame with a given code, the connection closed. A case
//! that does not end in a close ends with a clean close of ours, so every
//! frame the server sent is accounted for, and every server frame is checked
//! (final, unmasked, no reserved bits, shortest length).
//!
//! The chat protocol on top makes text visible: `{"type":"ping"}` is answered
//! with `{"type":"pong"}` before any `hello` (extra fields are ignored), and
//! any other text with `error bad_request`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestServer, config};
use natter_shared::close;
use natter_shared::limits::MAX_FRAME_BYTES;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

const MASK: [u8; 4] = [0x9a, 0x3c, 0x51, 0xe7];
/// The chat's own ping: a text message that is always answered.
const PING_JSON: &[u8] = br#"{"type":"ping"}"#;
/// The RFC 6455 (§1.3) example key and the accept value it must get.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// How long a case waits for one expected frame.
const WAIT: Duration = Duration::from_secs(5);
/// How long a case watches that nothing arrives.
const QUIET: Duration = Duration::from_millis(300);
/// The pause between the pieces of trickled bytes, so the server reads them apart.
const TRICKLE_PAUSE: Duration = Duration::from_millis(2);
/// The most one case may take.
const CASE_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- frames

/// How a client frame writes its length.
#[derive(Debug, Clone, Copy)]
enum Len {
    /// The shortest form, as RFC 6455 requires.
    Shortest,
    /// The 16-bit form, whatever the length.
    Bits16,
    /// The 64-bit form, whatever the length.
    Bits64,
}

/// A masked client frame; `first` is its first byte (FIN, RSV, opcode).
fn frame_as(first: u8, payload: &[u8], len: Len) -> Vec<u8> {
    let n = payload.len();
    let mut out = vec![first];
    match len {
        Len::Shortest if n < 126 => out.push(0x80 | n as u8),
        Len::Shortest | Len::Bits16 if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    frame_as(first, payload, Len::Shortest)
}

/// A client frame without a mask (which a server must refuse).
fn unmasked(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![first, payload.len() as u8];
    out.extend_from_slice(payload);
    out
}

/// A masked header announcing `len` payload bytes in the 64-bit form, and no payload.
fn header64(first: u8, len: u64) -> Vec<u8> {
    let mut out = vec![first, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&MASK);
    out
}

fn text(payload: &[u8]) -> Vec<u8> {
    frame(FIN | TEXT, payload)
}

fn ping(payload: &[u8]) -> Vec<u8> {
    frame(FIN | PING, payload)
}

/// A close frame with a code and reason.
fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    frame(FIN | CLOSE, &payload)
}

/// `{"type":"ping"}` padded with JSON whitespace to `len` bytes.
fn ping_json(len: usize) -> Vec<u8> {
    let mut out = PING_JSON.to_vec();
    out.resize(len.max(PING_JSON.len()), b' ');
    out
}

/// A chat ping carrying `note` in a field the server ignores: answered with
/// a pong only if the text arrived whole.
fn ping_with(note: &[u8]) -> Vec<u8> {
    let mut out = br#"{"type":"ping","note":""#.to_vec();
    out.extend_from_slice(note);
    out.extend_from_slice(br#""}"#);
    out
}

/// `payload` as a text message in fragments of `piece` bytes (at least one fragment).
fn fragmented(payload: &[u8], piece: usize) -> Vec<u8> {
    let pieces: Vec<&[u8]> = if payload.is_empty() { vec![&[]] } else { payload.chunks(piece).collect() };
    fragments(&pieces)
}

/// A text message made of these fragments.
fn fragments(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = if i == 0 { TEXT } else { CONT };
        let fin = if i + 1 == pieces.len() { FIN } else { 0 };
        out.extend(frame(fin | opcode, piece));
    }
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------- cases

/// What a case does, in order.
#[derive(Debug)]
enum Step {
    Send(Vec<u8>),
    /// The bytes in pieces of this size, with a pause between.
    Trickle(Vec<u8>, usize),
    Expect(Want),
    /// All of these answers, in any order (RFC 6455 orders a server's pongs
    /// neither before nor after its replies to messages).
    ExpectAll(Vec<Want>),
}

/// An answer the server must give.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// A pong echoing this payload.
    Pong(Vec<u8>),
    /// Pongs for pings sent with these payloads, in order: some may go
    /// unanswered but the last (RFC 6455 §5.5.3 lets a server answer only the
    /// most recent ping when several wait).
    Pongs(Vec<Vec<u8>>),
    /// A text frame holding a JSON object of this `type`.
    Reply(&'static str),
    /// A JSON `error` with this code.
    Error(&'static str),
    /// A close frame with this code (`None`: an empty payload). The case
    /// ends: a close of ours answers it if the server began the closing
    /// handshake, and the server must then end the TCP connection.
    Close(Option<u16>),
    /// Nothing, for a moment.
    Nothing,
}

#[derive(Debug)]
struct Case {
    id: String,
    title: String,
    /// A `Sec-WebSocket-Extensions` offer in the handshake.
    offer: Option<&'static str>,
    steps: Vec<Step>,
    /// The client began the closing handshake (so it does not answer the server's close).
    client_closes: bool,
}

fn case(id: impl Into<String>, title: impl Into<String>) -> Case {
    Case { id: id.into(), title: title.into(), offer: None, steps: Vec::new(), client_closes: false }
}

impl Case {
    fn send(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.steps.push(Step::Send(bytes.into()));
        self
    }

    fn trickle(mut self, bytes: impl Into<Vec<u8>>, piece: usize) -> Self {
        self.steps.push(Step::Trickle(bytes.into(), piece));
        self
    }

    /// Sends bytes that hold a close frame of ours.
    fn send_close(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.client_closes = true;
        self.send(bytes)
    }

    fn expect(mut self, want: Want) -> Self {
        self.steps.push(Step::Expect(want));
        self
    }

    fn expect_all(mut self, wants: Vec<Want>) -> Self {
        self.steps.push(Step::ExpectAll(wants));
        self
    }

    /// Expects the chat's `pong`.
    fn pong_reply(self) -> Self {
        self.expect(Want::Reply("pong"))
    }

    fn offering(mut self, extensions: &'static str) -> Self {
        self.offer = Some(extensions);
        self
    }
}

/// The server for the suite: every case opens its own connection.
fn suite_config() -> natter_backend::Config {
    let mut config = config();
    // Cases send many frames at once; the rate limit has tests of its own.
    config.rate.per_sec = 1_000_000;
    config.rate.burst = 1_000_000;
    // Cases speak WebSocket, not the chat: most never send hello.
    config.timing.hello_timeout = Duration::from_secs(120);
    config
}

/// Runs a group's cases one after another, then fails naming every case that failed.
async fn run_group(cases: Vec<Case>) {
    let server = TestServer::start(suite_config()).await;
    let total = cases.len();
    let mut failures = Vec::new();
    for case in cases {
        let name = format!("{} {}", case.id, case.title);
        match tokio::time::timeout(CASE_LIMIT, run_case(server.addr, case)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{name}: {e}")),
            Err(_) => failures.push(format!("{name}: not done within {CASE_LIMIT:?}")),
        }
    }
    assert!(failures.is_empty(), "{} of {total} cases failed:\n{}", failures.len(), failures.join("\n"));
}

async fn run_case(addr: SocketAddr, case: Case) -> Result<(), String> {
    let mut conn = Conn::open(addr, case.offer).await?;
    let mut closed = None;
    for step in case.steps {
        if closed.is_some() {
            return Err(format!("the case goes on after the close: {step:?}"));
        }
        match step {
            Step::Send(bytes) => conn.send(&bytes).await,
            Step::Trickle(bytes, piece) => {
                for chunk in bytes.chunks(piece) {
                    conn.send(chunk).await;
                    tokio::time::sleep(TRICKLE_PAUSE).await;
                }
            }
            Step::Expect(Want::Close(code)) => {
                conn.expect_all(vec![Want::Close(code)]).await?;
                closed = Some(code);
            }
            Step::Expect(want) => conn.expect_all(vec![want]).await?,
            Step::ExpectAll(wants) => conn.expect_all(wants).await?,
        }
    }
    match closed {
        Some(code) if !case.client_closes => {
            // Answer the server's close, echoing its code.
            let reply = match code {
                Some(code) => close_frame(code, b""),
                None => frame(FIN | CLOSE, b""),
            };
            conn.send(&reply).await;
        }
        Some(_) => {}
        None => {
            // The connection must still work: a clean close of ours.
            conn.send(&close_frame(close::NORMAL, b"")).await;
            conn.expect_all(vec![Want::Close(Some(close::NORMAL))]).await?;
        }
    }
    conn.expect_end().await
}

/// A frame from the server.
#[derive(Debug)]
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.opcode {
            TEXT => write!(f, "text {}", String::from_utf8_lossy(&self.payload)),
            CLOSE if self.payload.len() >= 2 => write!(
                f,
                "close {} {:?}",
                u16::from_be_bytes([self.payload[0], self.payload[1]]),
                String::from_utf8_lossy(&self.payload[2..])
            ),
            CLOSE => write!(f, "close without a code"),
            PONG => write!(f, "pong {:?}", self.payload),
            other => write!(f, "opcode {other} {:?}", self.payload),
        }
    }
}

/// One raw WebSocket connection.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
    /// A write that failed (the server may have closed first; what it sent decides).
    send_error: Option<String>,
}

impl Conn {
    /// Connects and upgrades, checking the 101 answer.
    async fn open(addr: SocketAddr, offer: Option<&str>) -> Result<Self, String> {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let extensions = offer.map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n")).unwrap_or_default();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extensions}\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send the upgrade: {e}"))?;
        let mut buf = Vec::new();
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .map_err(|_| "no answer to the upgrade".to_owned())?
                .map_err(|e| format!("read the upgrade answer: {e}"))?;
            if n == 0 {
                return Err("closed during the handshake".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut lines = head.lines();
        if !lines.next().is_some_and(|l| l.starts_with("HTTP/1.1 101")) {
            return Err(format!("expected 101, got {head:?}"));
        }
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        if header("sec-websocket-accept") != Some(ACCEPT) {
            return Err(format!("wrong Sec-WebSocket-Accept in {head:?}"));
        }
        if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
            return Err(format!("no Upgrade: websocket in {head:?}"));
        }
        // Natter negotiates no extension and no subprotocol, whatever is offered.
        if header("sec-websocket-extensions").is_some() || header("sec-websocket-protocol").is_some() {
            return Err(format!("the server accepted an extension or subprotocol: {head:?}"));
        }
        Ok(Self { stream, buf, send_error: None })
    }

    async fn send(&mut self, bytes: &[u8]) {
        if self.send_error.is_none()
            && let Err(e) = self.stream.write_all(bytes).await
        {
            self.send_error = Some(e.to_string());
        }
    }

    /// The next server frame within `limit`, skipping the server's pings;
    /// `Ok(None)` when the connection ended, `Err` on a malformed frame or
    /// a reset.
    async fn next(&mut self, limit: Duration) -> Result<Option<Frame>, Timeout> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(frame) = self.parse().map_err(Timeout::Broken)? {
                if frame.opcode == PING {
                    continue;
                }
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(Timeout::Elapsed),
                Ok(Ok(0)) if self.buf.is_empty() => return Ok(None),
                Ok(Ok(0)) => {
                    return Err(Timeout::Broken(format!("the connection ended inside a frame: {:?}", self.buf)));
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(Timeout::Broken(format!("read failed: {e}{}", self.sent()))),
            }
        }
    }

    /// Parses one server frame off `buf`, checking what RFC 6455 asks of a server's frame.
    fn parse(&mut self) -> Result<Option<Frame>, String> {
        let [b0, b1, ..] = self.buf[..] else { return Ok(None) };
        if b0 & 0x80 == 0 || b0 & 0x70 != 0 {
            return Err(format!("a server frame that is not final or has reserved bits: {b0:#04x}"));
        }
        if b1 & 0x80 != 0 {
            return Err("a masked server frame".into());
        }
        let opcode = b0 & 0x0f;
        if !matches!(opcode, TEXT | BINARY | CLOSE | PING | PONG) {
            return Err(format!("a server frame with opcode {opcode}"));
        }
        let (len, head) = match b1 & 0x7f {
            126 => match self.buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match self.buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(b) => (u64::from_be_bytes(b), 10),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let shortest = match head {
            4 => len >= 126,
            10 => len > 0xffff,
            _ => true,
        };
        if !shortest || (opcode >= CLOSE && len > 125) {
            return Err(format!("a server frame with a bad length {len} (opcode {opcode})"));
        }
        let end = head + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let payload = self.buf[head..end].to_vec();
        self.buf.drain(..end);
        if opcode == TEXT && std::str::from_utf8(&payload).is_err() {
            return Err("a server text frame that is not UTF-8".into());
        }
        Ok(Some(Frame { opcode, payload }))
    }

    fn sent(&self) -> String {
        self.send_error.as_ref().map(|e| format!(" (a write failed before: {e})")).unwrap_or_default()
    }

    /// Reads frames until each of `wants` has been seen; a frame that none
    /// of them expects fails the case.
    async fn expect_all(&mut self, mut wants: Vec<Want>) -> Result<(), String> {
        if wants == [Want::Nothing] {
            return match self.next(QUIET).await {
                Err(Timeout::Elapsed) => Ok(()),
                Ok(Some(frame)) => Err(format!("expected nothing yet, got {frame}")),
                Ok(None) => Err("expected nothing yet, but the connection ended".into()),
                Err(Timeout::Broken(e)) => Err(e),
            };
        }
        while !wants.is_empty() {
            let frame = match self.next(WAIT).await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Err(format!("expected {wants:?}, but the connection ended{}", self.sent())),
                Err(Timeout::Elapsed) => return Err(format!("expected {wants:?}, got nothing within {WAIT:?}")),
                Err(Timeout::Broken(e)) => return Err(format!("expected {wants:?}: {e}")),
            };
            let Some(at) = wants.iter_mut().position(|want| want.take(&frame)) else {
                return Err(format!("expected {wants:?}, got {frame}"));
            };
            if !matches!(&wants[at], Want::Pongs(rest) if !rest.is_empty()) {
                wants.remove(at);
            }
        }
        Ok(())
    }

    /// After the closing handshake the server ends the TCP connection, and sends nothing more.
    async fn expect_end(&mut self) -> Result<(), String> {
        match self.next(WAIT).await {
            Ok(None) => Ok(()),
            Ok(Some(frame)) => Err(format!("a frame after the close: {frame}")),
            Err(Timeout::Elapsed) => Err(format!("the server did not end the connection within {WAIT:?}")),
            Err(Timeout::Broken(e)) => Err(format!("no clean end after the close: {e}")),
        }
    }
}

impl Want {
    /// Whether `frame` is (the next part of) this answer; a run of pongs
    /// keeps what it still expects.
    fn take(&mut self, frame: &Frame) -> bool {
        let json = || serde_json::from_slice::<serde_json::Value>(&frame.payload).ok();
        match self {
            Self::Pong(payload) => frame.opcode == PONG && frame.payload == *payload,
            Self::Pongs(payloads) => {
                let Some(at) = payloads.iter().position(|p| frame.opcode == PONG && frame.payload == *p) else {
                    return false;
                };
                payloads.drain(..=at);
                true
            }
            Self::Reply(kind) => frame.opcode == TEXT && json().is_some_and(|j| j["type"] == *kind),
            Self::Error(code) => {
                frame.opcode == TEXT && json().is_some_and(|j| j["type"] == "error" && j["code"] == *code)
            }
            Self::Close(None) => frame.opcode == CLOSE && frame.payload.is_empty(),
            Self::Close(Some(code)) => {
                frame.opcode == CLOSE
                    && frame.payload.get(..2) == Some(&code.to_be_bytes()[..])
                    && std::str::from_utf8(&frame.payload[2..]).is_ok()
            }
            Self::Nothing => false,
        }
    }
}

#[derive(Debug)]
enum Timeout {
    Elapsed,
    Broken(String),
}

// ---------------------------------------------------------------- 1 framing

fn group_1() -> Vec<Case> {
    let mut cases = vec![
        case("1.1.1", "empty text message").send(text(b"")).expect(Want::Error("bad_request")),
        case("1.1.2", "text of 125 bytes (7-bit length)").send(text(&ping_json(125))).pong_reply(),
        case("1.1.3", "text of 126 bytes (16-bit length)").send(text(&ping_json(126))).pong_reply(),
        case("1.1.4", "text of 127 bytes").send(text(&ping_json(127))).pong_reply(),
        case("1.1.5", "text of 128 bytes").send(text(&ping_json(128))).pong_reply(),
        case("1.1.6", "text of 16 KiB, the limit").send(text(&ping_json(MAX_FRAME_BYTES))).pong_reply(),
        case("1.1.7", "text of 16 KiB in chunks of 997 bytes")
            .trickle(text(&ping_json(MAX_FRAME_BYTES)), 997)
            .pong_reply(),
        case("1.1.8", "a short text one byte per write").trickle(text(PING_JSON), 1).pong_reply(),
        case("1.1.9", "two messages in one write")
            .send(cat(&[&text(PING_JSON), &text(b"nonsense")]))
            .pong_reply()
            .expect(Want::Error("bad_request")),
        case("1.1.10", "text with extra JSON fields").send(text(&ping_with("ok".as_bytes()))).pong_reply(),
        case("1.1.11", "a zero mask key")
            .send(
                // Masking with zeros leaves the payload as it is.
                cat(&[&[FIN | TEXT, 0x80 | PING_JSON.len() as u8], &[0; 4], PING_JSON]),
            )
            .pong_reply(),
        case("1.1.12", "hello joins: welcome, then the joined notice")
            .send(text(br#"{"type":"hello","v":2,"room":"lobby","name":"Ada"}"#))
            .expect(Want::Reply("welcome"))
            .expect(Want::Reply("notice")),
        case("1.1.13", "bytes right behind a frame header wait for the payload")
            .send(frame(FIN | TEXT, PING_JSON)[..6].to_vec())
            .expect(Want::Nothing)
            .send(frame(FIN | TEXT, PING_JSON)[6..].to_vec())
            .pong_reply(),
        case("1.2.1", "empty binary message").send(frame(FIN | BINARY, b"")).expect(Want::Close(Some(1003))),
        case("1.2.2", "binary message of 125 bytes")
            .send(frame(FIN | BINARY, &[0xfe; 125]))
            .expect(Want::Close(Some(1003))),
        case("1.2.3", "binary message of 16 KiB")
            .send(frame(FIN | BINARY, &[0x00; MAX_FRAME_BYTES]))
            .expect(Want::Close(Some(1003))),
        case("1.2.4", "binary refused from its header alone")
            .send(header64(FIN | BINARY, 65_536))
            .expect(Want::Close(Some(1003))),
        case("1.3.1", "unmasked text").send(unmasked(FIN | TEXT, PING_JSON)).expect(Want::Close(Some(1002))),
        case("1.3.2", "unmasked ping").send(unmasked(FIN | PING, b"x")).expect(Want::Close(Some(1002))),
        case("1.3.3", "unmasked close")
            .send(unmasked(FIN | CLOSE, &1000u16.to_be_bytes()))
            .expect(Want::Close(Some(1002))),
        case("1.3.4", "a valid message, then an unmasked one")
            .send(cat(&[&text(PING_JSON), &unmasked(FIN | TEXT, PING_JSON)]))
            .pong_reply()
            .expect(Want::Close(Some(1002))),
    ];
    // Lengths must use the shortest form (RFC 6455 §5.2): 126 and 127 are
    // escapes for lengths that do not fit the shorter field.
    cases.extend([
        case("1.4.1", "16-bit length form for 15 bytes")
            .send(frame_as(FIN | TEXT, PING_JSON, Len::Bits16))
            .expect(Want::Close(Some(1002))),
        case("1.4.2", "64-bit length form for 15 bytes")
            .send(frame_as(FIN | TEXT, PING_JSON, Len::Bits64))
            .expect(Want::Close(Some(1002))),
        case("1.4.3", "64-bit length form for 200 bytes")
            .send(frame_as(FIN | TEXT, &ping_json(200), Len::Bits64))
            .expect(Want::Close(Some(1002))),
        case("1.4.4", "64-bit length form for 65,535 bytes, refused from its header")
            .send(header64(FIN | TEXT, 0xffff))
            .expect(Want::Close(Some(1002))),
        case("1.4.5", "16-bit length form for a 5-byte ping")
            .send(frame_as(FIN | PING, b"hello", Len::Bits16))
            .expect(Want::Close(Some(1002))),
        case("1.4.6", "64-bit length with the most significant bit set")
            .send(header64(FIN | TEXT, 1 << 63))
            .expect(Want::Close(Some(1002))),
        case("1.4.7", "64-bit length of all ones").send(header64(FIN | TEXT, u64::MAX)).expect(Want::Close(Some(1002))),
        case("1.4.8", "shortest 16-bit length (126) is fine")
            .send(frame_as(FIN | TEXT, &ping_json(126), Len::Bits16))
            .pong_reply(),
    ]);
    cases
}

// ---------------------------------------------------------------- 2 ping/pong

fn group_2() -> Vec<Case> {
    let binary: Vec<u8> = (0..=255u8).step_by(37).collect();
    let pings: Vec<Vec<u8>> = (0..10).map(|i| format!("ping {i}").into_bytes()).collect();
    let ten: Vec<u8> = pings.iter().flat_map(|p| ping(p)).collect();
    let ten_pongs = case("2.10", "ten pings in one write: pongs in order, the last one answered")
        .send(ten.clone())
        .expect(Want::Pongs(pings.clone()));
    let ten_trickled = case("2.11", "ten pings in chunks of 1 byte").trickle(ten, 1).expect(Want::Pongs(pings));
    vec![
        case("2.1", "ping without payload").send(ping(b"")).expect(Want::Pong(vec![])),
        case("2.2", "ping with a text payload")
            .send(ping(b"Hello, world!"))
            .expect(Want::Pong(b"Hello, world!".to_vec())),
        case("2.3", "ping with a binary payload").send(ping(&binary)).expect(Want::Pong(binary.clone())),
        case("2.4", "ping with 125 bytes").send(ping(&[0xfe; 125])).expect(Want::Pong(vec![0xfe; 125])),
        case("2.5", "ping with 126 bytes").send(ping(&[0xfe; 126])).expect(Want::Close(Some(1002))),
        case("2.6", "ping with 125 bytes, one byte per write")
            .trickle(ping(&[0x55; 125]), 1)
            .expect(Want::Pong(vec![0x55; 125])),
        case("2.7", "unsolicited pong without payload").send(frame(FIN | PONG, b"")).expect(Want::Nothing),
        case("2.8", "unsolicited pong with payload")
            .send(frame(FIN | PONG, b"unsolicited pong payload"))
            .expect(Want::Nothing),
        case("2.9", "unsolicited pong, then a ping")
            .send(cat(&[&frame(FIN | PONG, b"unsolicited"), &ping(b"ping payload")]))
            .expect(Want::Pong(b"ping payload".to_vec())),
        ten_pongs,
        ten_trickled,
        case("2.12", "a ping between two chat pings")
            .send(cat(&[&text(PING_JSON), &ping(b"between"), &text(PING_JSON)]))
            .expect_all(vec![Want::Reply("pong"), Want::Pong(b"between".to_vec()), Want::Reply("pong")]),
    ]
}

// ---------------------------------------------------------------- 3 reserved bits

fn group_3() -> Vec<Case> {
    // Autobahn numbers the three bits as one value: 1 = RSV3 … 4 = RSV1.
    let rsv = |n: u8| n << 4;
    let good_then = |id: &str, title: &str, bad: Vec<u8>| {
        case(id, title)
            .send(cat(&[&text(PING_JSON), &bad, &ping(b"after")]))
            .pong_reply()
            .expect(Want::Close(Some(1002)))
    };
    vec![
        case("3.1", "text with RSV = 1").send(frame(FIN | rsv(1) | TEXT, PING_JSON)).expect(Want::Close(Some(1002))),
        good_then("3.2", "text, then text with RSV = 2, then ping", frame(FIN | rsv(2) | TEXT, PING_JSON)),
        good_then("3.3", "text, then text with RSV = 3, then ping", frame(FIN | rsv(3) | TEXT, PING_JSON)),
        case("3.4", "as 3.3, one byte per write")
            .trickle(cat(&[&text(PING_JSON), &frame(FIN | rsv(4) | TEXT, PING_JSON), &ping(b"after")]), 1)
            .pong_reply()
            .expect(Want::Close(Some(1002))),
        case("3.5", "binary with RSV = 5")
            .send(frame(FIN | rsv(5) | BINARY, &[1, 2, 3]))
            .expect(Want::Close(Some(1002))),
        case("3.6", "ping with RSV = 6").send(frame(FIN | rsv(6) | PING, b"x")).expect(Want::Close(Some(1002))),
        case("3.7", "close with RSV = 7")
            .send(frame(FIN | rsv(7) | CLOSE, &1000u16.to_be_bytes()))
            .expect(Want::Close(Some(1002))),
        case("3.8", "a continuation with RSV2 inside a message")
            .send(cat(&[&frame(TEXT, b"{\"type\""), &frame(FIN | RSV2 | CONT, b":\"ping\"}")]))
            .expect(Want::Close(Some(1002))),
        case("3.9", "RSV3 on the first byte alone is refused before the rest arrives")
            .send(vec![FIN | RSV3 | TEXT])
            .expect(Want::Close(Some(1002))),
    ]
}

// ---------------------------------------------------------------- 4 opcodes

fn group_4() -> Vec<Case> {
    let mut cases = Vec::new();
    for (group, opcodes) in [(1, [3u8, 4, 5, 6, 7]), (2, [11, 12, 13, 14, 15])] {
        for (i, opcode) in opcodes.into_iter().enumerate() {
            let id = format!("4.{group}.{}", i + 1);
            let reserved = frame(FIN | opcode, if i % 2 == 1 { b"reserved payload" } else { b"" });
            cases.push(match i {
                0 | 1 => case(id, format!("reserved opcode {opcode}")).send(reserved).expect(Want::Close(Some(1002))),
                _ => case(id, format!("text, reserved opcode {opcode}, ping"))
                    .send(cat(&[&text(PING_JSON), &reserved, &ping(b"after")]))
                    .pong_reply()
                    .expect(Want::Close(Some(1002))),
            });
        }
    }
    cases
}

// ---------------------------------------------------------------- 5 fragmentation

fn group_5() -> Vec<Case> {
    let (a, b) = PING_JSON.split_at(7);
    let two = || fragments(&[a, b]);
    let with_ping = cat(&[&frame(TEXT, a), &ping(b"between"), &frame(FIN | CONT, b)]);
    let five: Vec<&[u8]> = PING_JSON.chunks(3).collect();
    let five_with_pings: Vec<u8> = five
        .iter()
        .enumerate()
        .flat_map(|(i, piece)| {
            let first = if i == 0 { TEXT } else { CONT };
            let fin = if i + 1 == five.len() { FIN } else { 0 };
            cat(&[&frame(fin | first, piece), &ping(format!("p{i}").as_bytes())])
        })
        .collect();
    let five_pongs = || {
        let pings = (0..five.len()).map(|i| format!("p{i}").into_bytes()).collect();
        vec![Want::Pongs(pings), Want::Reply("pong")]
    };
    let five_case = case("5.19", "text in 5 fragments with a ping after each")
        .send(five_with_pings.clone())
        .expect_all(five_pongs());
    let five_trickled =
        case("5.20", "as 5.19, one byte per write").trickle(five_with_pings, 1).expect_all(five_pongs());
    vec![
        case("5.1", "ping in 2 fragments")
            .send(cat(&[&frame(PING, b"frag"), &frame(FIN | CONT, b"ment")]))
            .expect(Want::Close(Some(1002))),
        case("5.2", "pong in 2 fragments")
            .send(cat(&[&frame(PONG, b"frag"), &frame(FIN | CONT, b"ment")]))
            .expect(Want::Close(Some(1002))),
        case("5.3", "text in 2 fragments").send(two()).pong_reply(),
        case("5.4", "text in 2 fragments, one byte per write").trickle(two(), 1).pong_reply(),
        case("5.5", "text in 2 fragments, one fragment per write")
            .send(frame(TEXT, a))
            .expect(Want::Nothing)
            .send(frame(FIN | CONT, b))
            .pong_reply(),
        case("5.6", "text in 2 fragments with a ping between")
            .send(with_ping.clone())
            .expect_all(vec![Want::Pong(b"between".to_vec()), Want::Reply("pong")]),
        case("5.7", "as 5.6, one byte per write")
            .trickle(with_ping, 1)
            .expect_all(vec![Want::Pong(b"between".to_vec()), Want::Reply("pong")]),
        case("5.8", "as 5.6, one frame per write")
            .send(frame(TEXT, a))
            .send(ping(b"between"))
            .expect(Want::Pong(b"between".to_vec()))
            .send(frame(FIN | CONT, b))
            .pong_reply(),
        case("5.9", "a final continuation with nothing to continue, then a message")
            .send(cat(&[&frame(FIN | CONT, b"x"), &two()]))
            .expect(Want::Close(Some(1002))),
        case("5.10", "a non-final continuation with nothing to continue")
            .send(cat(&[&frame(CONT, b"x"), &two()]))
            .expect(Want::Close(Some(1002))),
        case("5.11", "as 5.9, one byte per write")
            .trickle(cat(&[&frame(FIN | CONT, b"x"), &two()]), 1)
            .expect(Want::Close(Some(1002))),
        case("5.12", "a message, then a stray continuation")
            .send(cat(&[&two(), &frame(FIN | CONT, b"x")]))
            .pong_reply()
            .expect(Want::Close(Some(1002))),
        case("5.13", "a new text frame begins before the message ends")
            .send(cat(&[&frame(TEXT, a), &frame(TEXT, b)]))
            .expect(Want::Close(Some(1002))),
        case("5.14", "a final text frame before the message ends")
            .send(cat(&[&frame(TEXT, a), &frame(FIN | TEXT, b)]))
            .expect(Want::Close(Some(1002))),
        case("5.15", "a binary frame inside a text message")
            .send(cat(&[&frame(TEXT, a), &frame(FIN | BINARY, b)]))
            .expect(Want::Close(Some(1002))),
        case("5.16", "a new message's header alone is refused before its payload")
            .send(cat(&[&frame(TEXT, a), &[FIN | TEXT, 0x80 | 100]]))
            .expect(Want::Close(Some(1002))),
        case("5.17", "a stray continuation's header alone is refused before its payload")
            .send(vec![FIN | CONT, 0x80 | 100])
            .expect(Want::Close(Some(1002))),
        case("5.18", "empty fragments around the text").send(fragments(&[b"", b"", PING_JSON, b"", b""])).pong_reply(),
        five_case,
        five_trickled,
        case("5.21", "a message in one-byte fragments").send(fragmented(PING_JSON, 1)).pong_reply(),
        case("5.22", "a 16 KiB message in 1,000-byte fragments")
            .send(fragmented(&ping_json(MAX_FRAME_BYTES), 1000))
            .pong_reply(),
        case("5.23", "a close between fragments ends the connection")
            .send_close(cat(&[&frame(TEXT, a), &close_frame(1000, b"")]))
            .expect(Want::Close(Some(1000))),
    ]
}

// ---------------------------------------------------------------- 6 UTF-8

/// Valid UTF-8 sequences, from Markus Kuhn's decoder test as Autobahn uses
/// it: boundaries of every length, noncharacters, the last code point.
const VALID_UTF8: &[(&str, &[u8])] = &[
    ("κόσμε", "κόσμε".as_bytes()),
    ("Hello-µ@ßöäüàá-UTF-8!!", "Hello-µ@ßöäüàá-UTF-8!!".as_bytes()),
    ("first of 2 bytes U+0080", b"\xc2\x80"),
    ("first of 3 bytes U+0800", b"\xe0\xa0\x80"),
    ("first of 4 bytes U+10000", b"\xf0\x90\x80\x80"),
    ("last of 1 byte U+007F", b"\x7f"),
    ("last of 2 bytes U+07FF", b"\xdf\xbf"),
    ("last of 3 bytes U+FFFF", b"\xef\xbf\xbf"),
    ("last code point U+10FFFF", b"\xf4\x8f\xbf\xbf"),
    ("before the surrogates U+D7FF", b"\xed\x9f\xbf"),
    ("after the surrogates U+E000", b"\xee\x80\x80"),
    ("replacement character U+FFFD", b"\xef\xbf\xbd"),
    ("noncharacter U+FFFE", b"\xef\xbf\xbe"),
    ("emoji and CJK", "😀 你好 🇫🇷".as_bytes()),
];

/// Invalid UTF-8 sequences (each alone, and inside valid text).
const INVALID_UTF8: &[(&str, &[u8])] = &[
    (
        "κόσμε with a code point above U+10FFFF",
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64",
    ),
    ("5-byte sequence", b"\xf8\x88\x80\x80\x80"),
    ("6-byte sequence", b"\xfc\x84\x80\x80\x80\x80"),
    ("U+110000", b"\xf4\x90\x80\x80"),
    ("largest 4-byte form U+1FFFFF", b"\xf7\xbf\xbf\xbf"),
    ("lone continuation 0x80", b"\x80"),
    ("lone continuation 0xbf", b"\xbf"),
    ("two continuations", b"\x80\xbf"),
    ("2-byte start then a space", b"\xc0 "),
    ("3-byte start then a space", b"\xe0 "),
    ("4-byte start then a space", b"\xf0 "),
    ("2-byte sequence missing its last byte", b"\xc2"),
    ("3-byte sequence missing its last byte", b"\xe0\xa0"),
    ("4-byte sequence missing its last byte", b"\xf0\x90\x80"),
    ("byte 0xfe", b"\xfe"),
    ("byte 0xff", b"\xff"),
    ("bytes fe fe ff ff", b"\xfe\xfe\xff\xff"),
    ("overlong slash, 2 bytes", b"\xc0\xaf"),
    ("overlong slash, 3 bytes", b"\xe0\x80\xaf"),
    ("overlong slash, 4 bytes", b"\xf0\x80\x80\xaf"),
    ("largest overlong 2-byte", b"\xc1\xbf"),
    ("largest overlong 3-byte", b"\xe0\x9f\xbf"),
    ("largest overlong 4-byte", b"\xf0\x8f\xbf\xbf"),
    ("overlong NUL", b"\xc0\x80"),
    ("surrogate U+D800", b"\xed\xa0\x80"),
    ("surrogate U+DB7F", b"\xed\xad\xbf"),
    ("surrogate U+DFFF", b"\xed\xbf\xbf"),
    ("surrogate pair", b"\xed\xa0\x80\xed\xb0\x80"),
];

/// Where a client's text first becomes impossible to complete as UTF-8: the
/// index of the byte after which no continuation can make it valid, or
/// `None` if only its end is missing.
fn first_bad_byte(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find(|&k| matches!(std::str::from_utf8(&bytes[..=k]), Err(e) if e.error_len().is_some()))
}

fn group_6() -> Vec<Case> {
    let kosme = "κόσμε".as_bytes();
    let mut cases = vec![
        case("6.1.1", "empty text in 3 empty fragments")
            .send(fragments(&[b"", b"", b""]))
            .expect(Want::Error("bad_request")),
        case("6.1.2", "3 fragments, the first and last empty").send(fragments(&[b"", PING_JSON, b""])).pong_reply(),
        case("6.2.1", "valid UTF-8 in one frame").send(text(&ping_with(kosme))).pong_reply(),
        case("6.2.2", "valid UTF-8 in 2 fragments at a character boundary")
            .send(fragmented(&ping_with(kosme), 24))
            .pong_reply(),
        case("6.2.3", "valid UTF-8, one byte per fragment (characters split)")
            .send(fragmented(&ping_with("Hello-µ@ßöäüàá-UTF-8!!".as_bytes()), 1))
            .pong_reply(),
        case("6.2.4", "κόσμε, one byte per fragment").send(fragmented(&ping_with(kosme), 1)).pong_reply(),
        // Fail fast: the close comes after the fragment that makes the text
        // impossible, before the message's other fragments are sent.
        case("6.4.1", "fail fast: a fragment with a code point above U+10FFFF")
            .send(cat(&[&frame(TEXT, kosme), &frame(CONT, b"\xf4\x90\x80\x80")]))
            .expect(Want::Close(Some(1007))),
        case("6.4.2", "fail fast: a lone 0xf4 may continue, its next byte 0x90 may not")
            .send(cat(&[&frame(TEXT, kosme), &frame(CONT, b"\xf4")]))
            .expect(Want::Nothing)
            .send(frame(CONT, b"\x90\x80\x80edited"))
            .expect(Want::Close(Some(1007))),
        case("6.4.3", "fail fast: invalid bytes in the first fragment")
            .send(frame(TEXT, b"\xce\xba\xff"))
            .expect(Want::Close(Some(1007))),
        case("6.4.4", "fail fast: a surrogate split across fragments")
            .send(cat(&[&frame(TEXT, b"ab\xed"), &frame(CONT, b"\xa0")]))
            .expect(Want::Close(Some(1007))),
        case("6.4.5", "a fragment ending inside a character is not an error")
            .send(cat(&[&frame(TEXT, b"{\"type\":\"ping\",\"note\":\"\xce"), &frame(CONT, b"\xba")]))
            .expect(Want::Nothing)
            .send(frame(FIN | CONT, br#""}"#))
            .pong_reply(),
        case("6.4.6", "a message ending inside a character")
            .send(fragments(&[b"abc", b"\xe2\x82"]))
            .expect(Want::Close(Some(1007))),
        case("6.4.7", "invalid UTF-8 in one frame, in chunks of 8 bytes")
            .trickle(text(INVALID_UTF8[0].1), 8)
            .expect(Want::Close(Some(1007))),
        case("6.4.8", "fail fast inside a frame: refused before the rest of its payload")
            .send({
                let payload = cat(&[b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80", &[b'a'; 85]]);
                frame(FIN | TEXT, &payload)[..6 + 20].to_vec()
            })
            .expect(Want::Close(Some(1007))),
    ];
    for (i, (name, bytes)) in VALID_UTF8.iter().enumerate() {
        let n = i + 1;
        cases.push(case(format!("6.5.{n}"), format!("valid: {name}")).send(text(&ping_with(bytes))).pong_reply());
        cases.push(
            case(format!("6.6.{n}"), format!("valid, one byte per fragment: {name}"))
                .send(fragmented(&ping_with(bytes), 1))
                .pong_reply(),
        );
    }
    for (i, (name, bytes)) in INVALID_UTF8.iter().enumerate() {
        let n = i + 1;
        cases.push(
            case(format!("6.7.{n}"), format!("invalid: {name}")).send(text(bytes)).expect(Want::Close(Some(1007))),
        );
        // The same inside a chat ping, one byte per fragment: the close must
        // follow the fragment with the first impossible byte, so only the
        // fragments up to it are sent, none of them final (all of them when
        // only the end is missing).
        let message = ping_with(bytes);
        let sent: Vec<u8> = match first_bad_byte(&message) {
            Some(k) => message[..=k]
                .iter()
                .enumerate()
                .flat_map(|(j, byte)| frame(if j == 0 { TEXT } else { CONT }, &[*byte]))
                .collect(),
            None => fragmented(&message, 1),
        };
        cases.push(
            case(format!("6.8.{n}"), format!("invalid, one byte per fragment, fail fast: {name}"))
                .send(sent)
                .expect(Want::Close(Some(1007))),
        );
    }
    cases
}

// ---------------------------------------------------------------- 7 close handling

fn group_7() -> Vec<Case> {
    let mut cases = vec![
        case("7.1.1", "a message, then a close")
            .send_close(cat(&[&text(PING_JSON), &close_frame(1000, b"")]))
            .pong_reply()
            .expect(Want::Close(Some(1000))),
        case("7.1.2", "two closes: one answer")
            .send_close(cat(&[&close_frame(1000, b""), &close_frame(1001, b"")]))
            .expect(Want::Close(Some(1000))),
        case("7.1.3", "a ping after the close is not answered")
            .send_close(cat(&[&close_frame(1000, b""), &ping(b"late")]))
            .expect(Want::Close(Some(1000))),
        case("7.1.4", "a message after the close is not answered")
            .send_close(cat(&[&close_frame(1000, b""), &text(PING_JSON)]))
            .expect(Want::Close(Some(1000))),
        case("7.1.5", "the first fragment, a close, the last fragment")
            .send_close(cat(&[&frame(TEXT, b"{\"type\""), &close_frame(1000, b""), &frame(FIN | CONT, b":\"ping\"}")]))
            .expect(Want::Close(Some(1000))),
        case("7.1.6", "a 16 KiB message, a close, a ping")
            .send_close(cat(&[&text(&ping_json(MAX_FRAME_BYTES)), &close_frame(1000, b""), &ping(b"late")]))
            .pong_reply()
            .expect(Want::Close(Some(1000))),
        case("7.3.1", "close without payload").send_close(frame(FIN | CLOSE, b"")).expect(Want::Close(None)),
        case("7.3.2", "close with a 1-byte payload").send(frame(FIN | CLOSE, b"\x03")).expect(Want::Close(Some(1002))),
        case("7.3.3", "close 1000 without reason").send_close(close_frame(1000, b"")).expect(Want::Close(Some(1000))),
        case("7.3.4", "close 1000 with a reason")
            .send_close(close_frame(1000, b"Hello World!"))
            .expect(Want::Close(Some(1000))),
        case("7.3.5", "close 1000 with a 123-byte reason")
            .send_close(close_frame(1000, &[b'*'; 123]))
            .expect(Want::Close(Some(1000))),
        case("7.3.6", "close 1000 with a 124-byte reason (payload over 125)")
            .send(close_frame(1000, &[b'*'; 124]))
            .expect(Want::Close(Some(1002))),
        case("7.3.7", "close reason in UTF-8")
            .send_close(close_frame(1000, "κόσμε".as_bytes()))
            .expect(Want::Close(Some(1000))),
        case("7.5.1", "close reason that is not UTF-8")
            .send(close_frame(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"))
            .expect(Want::Close(Some(1007))),
        case("7.5.2", "close frame in 2 fragments")
            .send(cat(&[&frame(CLOSE, b"\x03"), &frame(FIN | CONT, b"\xe8")]))
            .expect(Want::Close(Some(1002))),
    ];
    // Codes a peer may send are echoed (RFC 6455 §7.4; 1012-1014 registered since).
    let valid = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999];
    for (i, code) in valid.into_iter().enumerate() {
        cases.push(
            case(format!("7.7.{}", i + 1), format!("close {code} is echoed"))
                .send_close(close_frame(code, b""))
                .expect(Want::Close(Some(code))),
        );
    }
    cases.push(
        case("7.7.17", "close 4002 (reconnecting) is echoed")
            .send_close(close_frame(close::CLIENT_RECONNECTING, b"bye"))
            .expect(Want::Close(Some(close::CLIENT_RECONNECTING))),
    );
    // Codes no peer may send: reserved, unassigned or out of range.
    let invalid = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65_535];
    for (i, code) in invalid.into_iter().enumerate() {
        cases.push(
            case(format!("7.9.{}", i + 1), format!("close {code} is a protocol error"))
                .send(close_frame(code, b""))
                .expect(Want::Close(Some(1002))),
        );
    }
    cases
}

// ---------------------------------------------------------------- 9 limits

fn group_9() -> Vec<Case> {
    let many_pings = 500;
    let mut chat_pings =
        case("9.2.1", format!("{many_pings} chat pings in one write")).send(text(PING_JSON).repeat(many_pings));
    for _ in 0..many_pings {
        chat_pings = chat_pings.pong_reply();
    }
    let payloads: Vec<Vec<u8>> = (0..many_pings as u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let ws_pings = case("9.2.2", format!("{many_pings} pings in one write"))
        .send(payloads.iter().flat_map(|p| ping(p)).collect::<Vec<u8>>())
        .expect(Want::Pongs(payloads));
    let full: Vec<&[u8]> = vec![&[b' '; 1024]; 16];
    let mut full = full.concat();
    full[..PING_JSON.len()].copy_from_slice(PING_JSON);
    vec![
        case("9.1.1", "text of exactly 16 KiB").send(text(&full)).pong_reply(),
        case("9.1.2", "text of 16 KiB + 1").send(text(&ping_json(MAX_FRAME_BYTES + 1))).expect(Want::Close(Some(1009))),
        case("9.1.3", "16 KiB in 16 fragments").send(fragmented(&full, 1024)).pong_reply(),
        case("9.1.4", "16 KiB + 1 in fragments: refused at the header that crosses the limit")
            .send(cat(&[&frame(TEXT, &full), &[FIN | CONT, 0x80 | 1]]))
            .expect(Want::Close(Some(1009))),
        case("9.1.5", "a 64-bit length of 2^40, refused from its header")
            .send(header64(FIN | TEXT, 1 << 40))
            .expect(Want::Close(Some(1009))),
        case("9.1.6", "a 64-bit length just over the 16-bit form")
            .send(header64(FIN | TEXT, 65_536))
            .expect(Want::Close(Some(1009))),
        case("9.1.7", "a 16-bit length over the limit, refused from its header")
            .send(vec![FIN | TEXT, 0x80 | 126, 0xff, 0xff])
            .expect(Want::Close(Some(1009))),
        chat_pings,
        ws_pings,
        case("9.3.1", "a 16 KiB message in one-byte fragments").send(fragmented(&full, 1)).pong_reply(),
        case("9.3.2", "a 4 KiB message in chunks of 64 bytes").trickle(text(&ping_json(4096)), 64).pong_reply(),
    ]
}

// ---------------------------------------------------------------- 12/13 compression

fn group_12_13() -> Vec<Case> {
    // `{"type":"ping"}` compressed as permessage-deflate would send it (raw
    // DEFLATE, the final empty block's 00 00 ff ff removed).
    let deflated: &[u8] = b"\xaa\x56\x2a\xa9\x2c\x48\x55\xb2\x52\x2a\xc8\xcc\x4b\x57\xaa\x05\x00";
    let offers = [
        "permessage-deflate",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits=9, permessage-deflate",
        "x-webkit-deflate-frame",
    ];
    let mut cases: Vec<Case> = offers
        .into_iter()
        .enumerate()
        .map(|(i, offer)| {
            case(format!("12.1.{}", i + 1), format!("offer `{offer}`: declined, plain text works"))
                .offering(offer)
                .send(text(PING_JSON))
                .pong_reply()
        })
        .collect();
    cases.extend([
        case("13.1.1", "declined, then a compressed text (RSV1)")
            .offering("permessage-deflate")
            .send(frame(FIN | RSV1 | TEXT, deflated))
            .expect(Want::Close(Some(1002))),
        case("13.1.2", "declined, then a compressed message's first fragment")
            .offering("permessage-deflate; client_max_window_bits")
            .send(frame(RSV1 | TEXT, &deflated[..8]))
            .expect(Want::Close(Some(1002))),
        case("13.1.3", "declined, then RSV1 on a continuation")
            .offering("permessage-deflate")
            .send(cat(&[&frame(TEXT, b"{\"type\""), &frame(FIN | RSV1 | CONT, b":\"ping\"}")]))
            .expect(Want::Close(Some(1002))),
        case("13.1.4", "declined, then RSV1 on a ping")
            .offering("permessage-deflate")
            .send(frame(FIN | RSV1 | PING, b"x"))
            .expect(Want::Close(Some(1002))),
        case("13.1.5", "nothing offered, then a compressed text")
            .send(frame(FIN | RSV1 | TEXT, deflated))
            .expect(Want::Close(Some(1002))),
    ]);
    cases
}

// ---------------------------------------------------------------- the tests

#[tokio::test]
async fn group_1_framing_and_lengths() {
    run_group(group_1()).await;
}

#[tokio::test]
async fn group_2_ping_and_pong() {
    run_group(group_2()).await;
}

#[tokio::test]
async fn group_3_reserved_bits() {
    run_group(group_3()).await;
}

#[tokio::test]
async fn group_4_opcodes() {
    run_group(group_4()).await;
}

#[tokio::test]
async fn group_5_fragmentation() {
    run_group(group_5()).await;
}

#[tokio::test]
async fn group_6_utf8() {
    run_group(group_6()).await;
}

#[tokio::test]
async fn group_7_close_handling() {
    run_group(group_7()).await;
}

#[tokio::test]
async fn group_9_limits() {
    run_group(group_9()).await;
}

#[tokio::test]
async fn group_12_13_compression_is_declined() {
    run_group(group_12_13()).await;
}

/// The suite's own oracle: where a text becomes impossible as UTF-8.
#[test]
fn first_bad_byte_finds_where_a_text_cannot_continue() {
    assert_eq!(first_bad_byte("κόσμε".as_bytes()), None);
    assert_eq!(first_bad_byte(b"ab\xc2"), None, "only the end is missing");
    assert_eq!(first_bad_byte(b"ab\x80"), Some(2));
    assert_eq!(first_bad_byte(b"\xf4\x90\x80"), Some(1), "0xf4 may start a character, 0x90 may not follow it");
    assert_eq!(first_bad_byte(b"\xed\xa0\x80"), Some(1), "a surrogate is known at its second byte");
}
