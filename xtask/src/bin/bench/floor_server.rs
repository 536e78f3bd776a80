//! The floor server: the least a WebSocket chat server could do on this
//! machine, to show what the kernel alone costs. `bench floor` and every
//! scenario run with `--floor` start it in place of `natter`, pinned to the
//! same core.
//!
//! It answers the handshake with a fixed `101`, reads one client frame (the
//! hello, fresh or resuming) and writes one fixed welcome; nothing is
//! parsed, stored or announced. It keeps no state, so a restart (SIGTERM
//! ends it) loses nothing. In `fanout` mode, once its members are in, it writes canned
//! message frames to every member on a fixed grid, `window` ms apart, as many
//! per write as the rate has made due, and reports its own CPU per step:
//! the cost of the writes alone for each number of frames per write.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::server::own_cpu_time;

/// Listen backlog (natter's default too).
const BACKLOG: u32 = 4096;
/// The largest request or hello accepted.
const MAX_REQUEST: usize = 4096;
/// Size of the fixed welcome payload: about what natter sends a member
/// joining a room of 100 halfway through the storm.
pub const WELCOME_BYTES: usize = 4096;
/// How long the fanout mode waits for its members.
const MEMBERS_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the fanout mode checks whether its members are in.
const MEMBERS_POLL: Duration = Duration::from_millis(10);
/// Length of a fan-out step unless `--step-ms` says otherwise.
const DEFAULT_STEP: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors), so that the
/// failure does not spin the core being measured.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Failed accepts after which the floor server gives up.
const ACCEPT_ERRORS_MAX: u32 = 100;

/// The fixed upgrade response (the load generator does not check the key).
const RESPONSE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// A canned chat message like natter's (125 bytes; 127 framed). The reader
/// counts frames that start like this one.
const MESSAGE: &str = r##"{"type":"message","seq":1234567,"ts":1795000000000,"name":"u1234","color":"#1f77b4","text":"t=0;load","cid":"fanout-1-12345"}"##;

/// What the floor server is asked to do.
#[derive(Debug, Clone)]
pub struct FloorArgs {
    pub port: u16,
    /// `join` (handshakes only) or `fanout`.
    pub mode: Mode,
    pub members: usize,
    /// Messages per second to every member.
    pub rate: f64,
    /// The write grids to step through, in ms.
    pub windows_ms: Vec<u64>,
    pub step: Duration,
}

impl FloorArgs {
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Self> {
        let mut parsed =
            Self { port: 0, mode: Mode::Join, members: 0, rate: 0.0, windows_ms: Vec::new(), step: DEFAULT_STEP };
        while let Some(flag) = args.next() {
            let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--port" => parsed.port = value()?.parse()?,
                "--mode" => {
                    parsed.mode = match value()?.as_str() {
                        "join" => Mode::Join,
                        "fanout" => Mode::Fanout,
                        other => bail!("unknown floor-server mode {other}; known: join, fanout"),
                    }
                }
                "--members" => parsed.members = value()?.parse()?,
                "--rate" => parsed.rate = value()?.parse()?,
                "--windows-ms" => {
                    parsed.windows_ms = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?;
                }
                "--step-ms" => parsed.step = Duration::from_millis(value()?.parse()?),
                other => bail!("unknown floor-server flag {other}"),
            }
        }
        if parsed.port == 0 {
            bail!("floor-server needs --port");
        }
        Ok(parsed)
    }
}

/// What the floor server does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Join,
    Fanout,
}

/// A server frame (unmasked) with `payload` as text.
fn server_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n => match u16::try_from(n) {
            Ok(n) => {
                out.push(126);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Err(_) => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        },
    }
    out.extend_from_slice(payload);
    out
}

/// The fixed welcome frame.
fn welcome() -> Vec<u8> {
    let mut payload = br#"{"type":"welcome","padding":""#.to_vec();
    payload.resize(WELCOME_BYTES - 2, b'x');
    payload.extend_from_slice(br#""}"#);
    server_frame(&payload)
}

/// Reads into `buf` until `done(buf)` says how much was wanted.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, done: impl Fn(&[u8]) -> Option<usize>) -> Result<()> {
    loop {
        if let Some(n) = done(buf) {
            buf.drain(..n);
            return Ok(());
        }
        if buf.len() > MAX_REQUEST {
            bail!("request too long");
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("closed");
        }
    }
}

/// The length of the masked client frame at the start of `buf`, if complete.
fn client_frame_len(buf: &[u8]) -> Option<usize> {
    let (head, len) = match *buf.get(1)? & 0x7f {
        126 => (8, u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize),
        127 => (14, usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?),
        n => (6, n as usize),
    };
    (buf.len() >= head + len).then_some(head + len)
}

/// Handshake, hello, welcome.
async fn join(mut stream: TcpStream, welcome: &[u8]) -> Result<TcpStream> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    read_until(&mut stream, &mut buf, |b| b.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)).await?;
    stream.write_all(RESPONSE).await?;
    read_until(&mut stream, &mut buf, client_frame_len).await?;
    stream.write_all(welcome).await?;
    Ok(stream)
}

/// Runs the floor server until its work is done (fanout) or it is killed
/// (join), printing its figures as JSON on stdout in fanout mode.
pub fn serve(args: FloorArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], args.port)))?;
        let listener = socket.listen(BACKLOG)?;
        let welcome: Arc<[u8]> = welcome().into();
        let members: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let fanout = args.mode == Mode::Fanout;
        let accept = {
            let members = members.clone();
            async move {
                let mut errors = 0;
                loop {
                    let (stream, _) = match listener.accept().await {
                        Ok(s) => s,
                        Err(e) => {
                            errors += 1;
                            eprintln!("floor server: accept failed: {e}");
                            if errors >= ACCEPT_ERRORS_MAX {
                                return Err(anyhow::anyhow!("{errors} accepts failed; last: {e}"));
                            }
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    let (welcome, members) = (welcome.clone(), members.clone());
                    tokio::spawn(async move {
                        let Ok(mut stream) = join(stream, &welcome).await else { return };
                        if fanout {
                            members.lock().unwrap_or_else(|p| p.into_inner()).push(stream);
                        } else {
                            // Hold the connection until the peer closes it.
                            let mut sink = [0u8; 256];
                            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                        }
                    });
                }
            }
        };
        if !fanout {
            return accept.await;
        }
        let accepting = tokio::spawn(accept);
        let deadline = Instant::now() + MEMBERS_TIMEOUT;
        while members.lock().unwrap_or_else(|p| p.into_inner()).len() < args.members {
            if accepting.is_finished() {
                bail!("the floor server stopped accepting before its members were in");
            }
            if Instant::now() > deadline {
                bail!("members did not arrive within {MEMBERS_TIMEOUT:?}");
            }
            tokio::time::sleep(MEMBERS_POLL).await;
        }
        let members = std::mem::take(&mut *members.lock().unwrap_or_else(|p| p.into_inner()));
        let mut steps = Vec::new();
        for &window in &args.windows_ms {
            steps.push(step(&members, args.rate, Duration::from_millis(window.max(1)), args.step).await?);
        }
        println!("{}", serde_json::to_string(&json!({ "steps": steps }))?);
        Ok(())
    })
}

/// Writes `rate` frames per second to every member for `length`, on a grid
/// `window` apart, as many frames per write as are due; returns its figures.
/// A member whose socket does not take a write whole gets nothing more
/// until its unwritten tail is out (so its stream stays whole), and is
/// counted in `short_writes`; `writes` counts the writes that reached the
/// kernel.
async fn step(members: &[TcpStream], rate: f64, window: Duration, length: Duration) -> Result<Value> {
    let one = server_frame(MESSAGE.as_bytes());
    let most = (rate * window.as_secs_f64()).ceil() as usize + 1;
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * most).collect();
    let mut grid = tokio::time::interval(window);
    grid.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut frames, mut writes, mut short) = (0u64, 0u64, 0u64);
    // Each member's bytes not yet taken by its socket.
    let mut tails: Vec<Vec<u8>> = vec![Vec::new(); members.len()];
    let mut sent = 0u64;
    grid.tick().await;
    let cpu_before = own_cpu_time()?;
    let started = Instant::now();
    while started.elapsed() < length {
        grid.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        let now = usize::try_from(due.saturating_sub(sent)).unwrap_or(usize::MAX).min(most);
        if now == 0 {
            continue;
        }
        sent += now as u64;
        let bytes = &batch[..one.len() * now];
        for (member, tail) in members.iter().zip(&mut tails) {
            if !tail.is_empty() {
                match member.try_write(tail) {
                    Ok(n) => {
                        writes += 1;
                        tail.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
                if !tail.is_empty() {
                    short += 1;
                    continue;
                }
            }
            match member.try_write(bytes) {
                Ok(n) => {
                    writes += 1;
                    frames += now as u64;
                    if n < bytes.len() {
                        short += 1;
                        tail.extend_from_slice(&bytes[n..]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => short += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    let took = started.elapsed();
    let cpu = own_cpu_time()? - cpu_before;
    Ok(json!({
        "window_ms": window.as_millis() as u64,
        "seconds": took.as_secs_f64(),
        "frames_written": frames,
        "writes": writes,
        "short_writes": short,
        "frames_per_write": frames as f64 / writes.max(1) as f64,
        "deliveries_per_sec": frames as f64 / took.as_secs_f64(),
        "cpu_pct": cpu.as_secs_f64() / took.as_secs_f64() * 100.0,
        "cpu_us_per_delivery": cpu.as_secs_f64() * 1e6 / frames.max(1) as f64,
        "cpu_us_per_write": cpu.as_secs_f64() * 1e6 / writes.max(1) as f64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{frame, parse};

    #[test]
    fn the_floor_frames_parse_as_the_generator_reads_them() {
        let w = welcome();
        let parsed = parse(&w).expect("complete");
        assert_eq!(parsed.len, w.len());
        assert_eq!(parsed.payload.1 - parsed.payload.0, WELCOME_BYTES);
        assert!(w[parsed.payload.0..].starts_with(br#"{"type":"welcome""#));
        let m = server_frame(MESSAGE.as_bytes());
        let parsed = parse(&m).expect("complete");
        assert!(m[parsed.payload.0..].starts_with(br#"{"type":"message""#));
    }

    /// A send buffer far smaller than one tick's frames.
    const SMALL_SEND_BUFFER: u32 = 8 * 1024;

    #[tokio::test]
    async fn a_member_that_reads_slowly_still_gets_a_whole_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        // The member's side with a small send buffer, so that writes go short.
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_send_buffer_size(SMALL_SEND_BUFFER).expect("send buffer");
        let member = socket.connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (mut client, _) = listener.accept().await.expect("accept");
        // A reader slower than the writer: its socket fills, writes go short,
        // and later writes must start with the unwritten rest.
        let reader = tokio::spawn(async move {
            let (mut received, mut chunk) = (Vec::new(), [0u8; 4096]);
            loop {
                match client.read(&mut chunk).await {
                    Ok(0) | Err(_) => break received,
                    Ok(n) => received.extend_from_slice(&chunk[..n]),
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let figures =
            step(std::slice::from_ref(&member), 2_000_000.0, Duration::from_millis(1), Duration::from_millis(300))
                .await
                .expect("step");
        assert!(figures["short_writes"].as_u64().unwrap_or(0) > 0, "{figures}");
        drop(member);
        let received = reader.await.expect("reader");
        let one = server_frame(MESSAGE.as_bytes());
        let whole = received.len() / one.len();
        assert!(whole > 0);
        for (i, chunk) in received.chunks(one.len()).enumerate() {
            assert_eq!(chunk, &one[..chunk.len()], "frame {i} of {whole} is broken");
        }
    }

    #[test]
    fn a_client_frame_is_measured_whole() {
        for n in [5, 125, 126, 600] {
            let mut out = Vec::new();
            frame(0x1, &vec![b'a'; n], &mut out);
            assert_eq!(client_frame_len(&out), Some(out.len()));
            assert_eq!(client_frame_len(&out[..out.len() - 1]), None);
        }
    }
}
