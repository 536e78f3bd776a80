//! WebSocket clients for the load generator, spread over several loopback
//! source addresses so tens of thousands of connections do not run out of
//! ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use natter_shared::{ClientMsg, Hello, PROTOCOL_VERSION};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Connections per loopback source address.
pub const PER_SOURCE: usize = 1_000;

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The source address for connection number `n`: 127.0.0.2, 127.0.0.3, …
pub fn source(n: usize) -> IpAddr {
    let k = 2 + (n / PER_SOURCE) % 250;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, k as u8))
}

/// Opens a WebSocket to `server` from `source`.
pub async fn connect(server: SocketAddr, source: IpAddr) -> Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("bind {source}"))?;
    let stream = socket.connect(server).await.with_context(|| format!("connect to {server}"))?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{server}/ws"), MaybeTlsStream::Plain(stream)).await?;
    Ok(ws)
}

/// The JSON of a `hello`.
pub fn hello(name: &str, room: &str) -> String {
    let hello = Hello {
        v: PROTOCOL_VERSION,
        room: Some(room.to_owned()),
        name: name.to_owned(),
        last_seq: None,
        resume_token: None,
        history_id: None,
    };
    serde_json::to_string(&ClientMsg::Hello(hello)).unwrap_or_default()
}

/// Sends `hello` and waits for the welcome (skipping nothing else: the
/// welcome is the first frame on a fresh connection).
pub async fn join(ws: &mut Ws, name: &str, room: &str) -> Result<()> {
    ws.send(Message::text(hello(name, room))).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with(r#"{"type":"welcome""#) => return Ok(()),
            Some(Ok(Message::Text(t))) if t.starts_with(r#"{"type":"error""#) => bail!("join refused: {t}"),
            Some(Ok(_)) => continue,
            other => bail!("connection ended before welcome: {other:?}"),
        }
    }
}
