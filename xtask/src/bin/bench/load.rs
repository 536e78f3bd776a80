//! Building blocks of the load scenarios: members that read (counting frames
//! cheaply, or decoding a sample of them for latency) and a driver that sends
//! at a steady total rate over many connections, with a timestamp in the text.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::client::{
    OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, Ws, close_code, connect, frame, join, parse, read_more, source,
};
use crate::stats::Samples;

/// Latency samples a reader keeps before adding them to the shared list.
const LATENCY_FLUSH: usize = 32;
/// How often the send driver wakes up.
const SEND_TICK: Duration = Duration::from_millis(5);
/// The prefix of a chat message frame.
const MESSAGE_PREFIX: &[u8] = br#"{"type":"message""#;

/// What the readers saw.
#[derive(Debug, Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub latency: Mutex<Samples>,
    pub closes: Mutex<Vec<u16>>,
    pub dropped: AtomicU64,
}

impl Counters {
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Connections that ended (closed by the server or dropped).
    pub fn closed(&self) -> u64 {
        self.closes.lock().map_or(0, |c| c.len() as u64) + self.dropped.load(Ordering::Relaxed)
    }

    pub fn take_latency(&self) -> Samples {
        std::mem::take(&mut *self.latency.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The microseconds since `epoch` a sender wrote into a message's text.
fn stamp_of(frame: &[u8]) -> Option<u64> {
    const KEY: &[u8] = br#""text":"t="#;
    let at = frame.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = &frame[at..];
    let end = digits.iter().position(|c| !c.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Reads until the connection ends; every member counts messages, sampled
/// ones also measure latency from the timestamp in the text. Pings are
/// answered so the server's heartbeat keeps the connection.
pub async fn read(ws: Ws, sample: bool, counters: Arc<Counters>, epoch: Instant) {
    let Ws { stream, mut buf } = ws;
    let mut local = Samples::default();
    let mut count = 0u64;
    'outer: loop {
        let mut at = 0;
        while let Some(f) = parse(&buf[at..]) {
            let payload = &buf[at + f.payload.0..at + f.payload.1];
            match f.opcode {
                OP_TEXT if payload.starts_with(MESSAGE_PREFIX) => {
                    count += 1;
                    if sample && let Some(sent) = stamp_of(payload) {
                        let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                        local.0.push(now.saturating_sub(sent));
                        if local.len() >= LATENCY_FLUSH {
                            counters
                                .latency
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .extend(std::mem::take(&mut local));
                        }
                    }
                }
                OP_CLOSE => {
                    counters.closes.lock().unwrap_or_else(|p| p.into_inner()).push(close_code(payload));
                    break 'outer;
                }
                OP_PING => {
                    let mut pong = Vec::with_capacity(payload.len() + 6);
                    frame(OP_PONG, payload, &mut pong);
                    // Best effort: a pong that does not fit now is not owed.
                    let _ = stream.try_write(&pong);
                }
                _ => {}
            }
            at += f.len;
        }
        if count > 0 {
            counters.messages.fetch_add(count, Ordering::Relaxed);
            count = 0;
        }
        buf.drain(..at);
        match read_more(&stream, &mut buf).await {
            Ok(0) | Err(_) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Ok(_) => {}
        }
    }
    if count > 0 {
        counters.messages.fetch_add(count, Ordering::Relaxed);
    }
    counters.latency.lock().unwrap_or_else(|p| p.into_inner()).extend(local);
}

/// Opens `count` connections joined to rooms `room(i)` as `name(i)`, at most
/// `parallel` handshakes at a time. Returns them in order, the elapsed time
/// and each one's time from connect to welcome.
pub async fn open_many(
    addr: SocketAddr,
    count: usize,
    parallel: usize,
    room: impl Fn(usize) -> String,
    name: impl Fn(usize) -> String,
) -> Result<(Vec<Ws>, Duration, Samples)> {
    let gate = Arc::new(Semaphore::new(parallel));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let permit = gate.clone().acquire_owned().await?;
        let (room, name) = (room(i), name(i));
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let mut ws = connect(addr, source(i)).await?;
            join(&mut ws, &name, &room).await?;
            drop(permit);
            anyhow::Ok((ws, began.elapsed()))
        }));
    }
    let mut sockets = Vec::with_capacity(count);
    let mut welcome = Samples::default();
    for task in tasks {
        let (ws, took) = task.await??;
        welcome.push(took);
        sockets.push(ws);
    }
    Ok((sockets, started.elapsed(), welcome))
}

/// Sends `rate` messages per second in total until `until`, round-robin over
/// `senders`, each stamped with the microseconds since `epoch`. One task
/// drives every sender (a timer per sender would cost the generator more
/// than the sending). `tag` makes the message ids unique across calls (the
/// server drops a repeated id as a retry). Returns how many were sent.
pub async fn send_at(senders: Vec<Arc<TcpStream>>, rate: f64, until: Instant, epoch: Instant, tag: &str) -> u64 {
    if senders.is_empty() {
        return 0;
    }
    let started = Instant::now();
    let mut next_id = vec![0u64; senders.len()];
    let mut cursor = 0;
    let mut attempted = 0u64;
    let mut sent = 0u64;
    let mut out = Vec::with_capacity(256);
    let mut ticker = tokio::time::interval(SEND_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < until {
        ticker.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while attempted < due {
            attempted += 1;
            let s = cursor;
            cursor = (cursor + 1) % senders.len();
            let t = epoch.elapsed().as_micros();
            let payload = format!(r#"{{"type":"say","cid":"{tag}-{s}-{}","text":"t={t};load"}}"#, next_id[s]);
            next_id[s] += 1;
            out.clear();
            frame(OP_TEXT, payload.as_bytes(), &mut out);
            // A failed write is not counted as sent (nor expected by the receivers).
            if crate::client::write_all(&senders[s], &out).await.is_ok() {
                sent += 1;
            }
        }
    }
    sent
}
