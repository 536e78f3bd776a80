//! A lean WebSocket client for the load generator: the handshake and the
//! frames are written and parsed by hand over a plain `TcpStream`, so the
//! generator spends its one core on reading and counting, not on a general
//! WebSocket library. Connections are spread over several loopback source
//! addresses so tens of thousands of them do not run out of ephemeral ports.
//!
//! Client frames are masked with the all-zero key (valid: RFC 6455 only asks
//! the key to be unpredictable, which a benchmark does not need), so payloads
//! are written as they are.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use natter_shared::{ClientMsg, Hello};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connections per loopback source address.
pub const PER_SOURCE: usize = 1_000;
/// The largest handshake response accepted.
const MAX_RESPONSE: usize = 4096;
/// Free space kept in a reader's buffer before each read.
pub const READ_CHUNK: usize = 16 * 1024;
/// How long a join may take before it counts as failed.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_PONG: u8 = 0xA;
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;

/// An open WebSocket: the socket (shared by a reader and a sender) and the
/// bytes already read but not yet parsed.
#[derive(Debug)]
pub struct Ws {
    pub stream: Arc<TcpStream>,
    pub buf: Vec<u8>,
}

/// The source address for connection number `n`: 127.0.0.2, 127.0.0.3, …
pub fn source(n: usize) -> IpAddr {
    let k = 2 + (n / PER_SOURCE) % 250;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, k as u8))
}

/// Opens a WebSocket to `server` from `source`.
pub async fn connect(server: SocketAddr, source: IpAddr) -> Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("bind {source}"))?;
    let mut stream = socket.connect(server).await.with_context(|| format!("connect to {server}"))?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_RESPONSE {
            bail!("handshake response too long");
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("connection closed during the handshake");
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        bail!("upgrade refused: {}", String::from_utf8_lossy(&buf[..end]).lines().next().unwrap_or_default());
    }
    buf.drain(..end);
    Ok(Ws { stream: Arc::new(stream), buf })
}

/// Appends a masked (all-zero key) client frame with `opcode` to `out`.
pub fn frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0x80 | 126);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
}

/// A text frame.
pub fn text(payload: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    frame(OP_TEXT, payload.as_bytes(), &mut out);
    out
}

/// One server frame at the start of a buffer: its opcode, whether it is
/// final, where its payload is, and how many bytes it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub opcode: u8,
    pub fin: bool,
    pub payload: (usize, usize),
    pub len: usize,
}

/// Parses the frame at the start of `buf`, or `None` if it is not complete.
/// Server frames are never masked.
pub fn parse(buf: &[u8]) -> Option<Parsed> {
    if buf.len() < 2 {
        return None;
    }
    let (fin, opcode) = (buf[0] & 0x80 != 0, buf[0] & 0x0f);
    let (head, len) = match buf[1] & 0x7f {
        126 => (4, u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize),
        127 => (10, usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?),
        n => (2, n as usize),
    };
    let total = head + len;
    (buf.len() >= total).then_some(Parsed { opcode, fin, payload: (head, total), len: total })
}

/// Writes all of `data` through a shared socket.
pub async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads more bytes into `buf`; `Ok(0)` when the peer closed.
pub async fn read_more(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    loop {
        stream.readable().await?;
        match stream.try_read_buf(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// The JSON of a `hello`.
pub fn hello(name: &str, room: &str) -> String {
    serde_json::to_string(&ClientMsg::Hello(Hello::new(name, room))).unwrap_or_default()
}

/// Sends `hello` and waits for the welcome's first frame (the welcome is the
/// first message on a fresh connection; the rest of a fragmented one stays in
/// the buffer for the reader, which skips continuation frames).
pub async fn join(ws: &mut Ws, name: &str, room: &str) -> Result<()> {
    write_all(&ws.stream, &text(&hello(name, room))).await?;
    tokio::time::timeout(JOIN_TIMEOUT, async {
        loop {
            while let Some(f) = parse(&ws.buf) {
                let payload = &ws.buf[f.payload.0..f.payload.1];
                if f.opcode == OP_TEXT && payload.starts_with(br#"{"type":"welcome""#) {
                    ws.buf.drain(..f.len);
                    return Ok(());
                }
                if f.opcode == OP_TEXT && payload.starts_with(br#"{"type":"error""#) {
                    bail!("join refused: {}", String::from_utf8_lossy(payload));
                }
                if f.opcode == OP_CLOSE {
                    bail!("closed before welcome: {}", close_code(payload));
                }
                ws.buf.drain(..f.len);
            }
            if read_more(&ws.stream, &mut ws.buf).await? == 0 {
                bail!("connection ended before welcome");
            }
        }
    })
    .await
    .context("no welcome in time")?
}

/// The status code of a close frame's payload (1005 when it has none).
pub fn close_code(payload: &[u8]) -> u16 {
    payload.get(..2).map_or(1005, |b| u16::from_be_bytes([b[0], b[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_parser_once_unmasked() {
        for n in [0, 5, 125, 126, 70_000] {
            let payload = vec![b'a'; n];
            let mut out = Vec::new();
            frame(OP_TEXT, &payload, &mut out);
            // A server frame is the same without the mask bit and key.
            let head = out.len() - n - 4;
            let mut server: Vec<u8> = out[..head].to_vec();
            server[1] &= 0x7f;
            server.extend_from_slice(&payload);
            let parsed = parse(&server).expect("complete");
            assert_eq!((parsed.opcode, parsed.fin, parsed.len), (OP_TEXT, true, server.len()));
            assert_eq!(&server[parsed.payload.0..parsed.payload.1], &payload[..]);
            assert_eq!(parse(&server[..server.len() - 1]), None);
        }
    }
}
