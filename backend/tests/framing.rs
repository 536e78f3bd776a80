//! The server's own WebSocket framing against a real server, byte by byte:
//! what a browser may send (fragments, control frames between them, bytes
//! right behind the handshake) and how it closes.

mod common;

use std::time::Duration;

use common::{TestServer, config};
use natter_shared::close;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);
const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// A client frame (masked, short payload).
fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![first, if masked { 0x80 } else { 0 } | payload.len() as u8];
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads the next server frame: (opcode, payload); `None` at EOF.
async fn server_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    loop {
        if buf.len() >= 2 {
            let (head, len) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
                127 if buf.len() >= 10 => (10, u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize),
                126 | 127 => (usize::MAX, 0),
                n => (2, usize::from(n)),
            };
            if head != usize::MAX && buf.len() >= head + len {
                let opcode = buf[0] & 0x0f;
                let payload = buf[head..head + len].to_vec();
                buf.drain(..head + len);
                return Some((opcode, payload));
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("server answers in time").ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Connects, sends the handshake plus `after` in the same write, and returns
/// the stream and the bytes read past the 101 response.
async fn open(server: &TestServer, after: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
    .into_bytes();
    request.extend_from_slice(after);
    stream.write_all(&request).await.expect("write");
    let mut buf = Vec::new();
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("101 in time").expect("read");
        assert!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert!(buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buf[..end]));
    buf.drain(..end);
    (stream, buf)
}

#[tokio::test]
async fn a_fragmented_hello_right_behind_the_handshake_joins_and_a_close_is_echoed() {
    let server = TestServer::start(config()).await;
    let hello = br#"{"type":"hello","v":2,"room":"lobby","name":"Ada"}"#;
    let (first, rest) = hello.split_at(20);
    let mut bytes = client_frame(0x01, first, true); // text, not final
    bytes.extend(client_frame(0x89, b"p", true)); // a ping between the fragments
    bytes.extend(client_frame(0x80, rest, true)); // continuation, final
    let (mut stream, mut buf) = open(&server, &bytes).await;

    let mut got_pong = false;
    loop {
        let (opcode, payload) = server_frame(&mut stream, &mut buf).await.expect("frames");
        match opcode {
            0xA => got_pong = payload == b"p",
            0x1 if payload.starts_with(br#"{"type":"welcome""#) => break,
            0x1 => panic!("unexpected {}", String::from_utf8_lossy(&payload)),
            other => panic!("unexpected opcode {other}"),
        }
    }
    assert!(got_pong, "the ping between the fragments was answered before the welcome");

    let mut close_frame = 4002u16.to_be_bytes().to_vec();
    close_frame.extend_from_slice(b"bye");
    stream.write_all(&client_frame(0x88, &close_frame, true)).await.expect("write");
    let echoed = loop {
        match server_frame(&mut stream, &mut buf).await {
            Some((0x8, payload)) => break payload,
            Some(_) => continue, // the own join notice may come first
            None => panic!("closed without a close frame"),
        }
    };
    assert_eq!(echoed, 4002u16.to_be_bytes(), "the code is echoed");
    assert!(server_frame(&mut stream, &mut buf).await.is_none(), "then the server closes the connection");
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let server = TestServer::start(config()).await;
    let (mut stream, mut buf) = open(&server, &client_frame(0x81, b"{}", false)).await;
    match server_frame(&mut stream, &mut buf).await {
        Some((0x8, payload)) => assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), close::PROTOCOL_ERROR),
        other => panic!("expected a close frame, got {other:?}"),
    }
}
