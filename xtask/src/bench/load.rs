//! Building blocks of the load scenarios: members that read (counting frames
//! cheaply, or decoding a sample of them for latency) and senders that send
//! at a steady rate with a timestamp in the text.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Ws, connect, join, source};
use crate::stats::Samples;

/// Latency samples a reader keeps before adding them to the shared list.
const LATENCY_FLUSH: usize = 32;

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

    pub fn take_latency(&self) -> Samples {
        std::mem::take(&mut *self.latency.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The microseconds since `epoch` a sender wrote into a message's text.
fn stamp_of(frame: &str) -> Option<u64> {
    let at = frame.find(r#""text":"t="#)? + r#""text":"t="#.len();
    let digits: &str = &frame[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

/// Reads until the connection ends; every member counts messages, sampled
/// ones also measure latency from the timestamp in the text.
pub async fn read(mut rx: SplitStream<Ws>, sample: bool, counters: Arc<Counters>, epoch: Instant) {
    let mut local = Samples::default();
    while let Some(frame) = rx.next().await {
        match frame {
            Ok(Message::Text(t)) => {
                if t.starts_with(r#"{"type":"message""#) {
                    counters.messages.fetch_add(1, Ordering::Relaxed);
                    if sample && let Some(sent) = stamp_of(&t) {
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
            }
            Ok(Message::Close(frame)) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                counters.closes.lock().unwrap_or_else(|p| p.into_inner()).push(code);
                break;
            }
            Ok(_) => {}
            Err(_) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    counters.latency.lock().unwrap_or_else(|p| p.into_inner()).extend(local);
}

/// Opens `count` connections joined to rooms `room(i)` as `name(i)`, at most
/// `parallel` handshakes at a time. Returns them in order and the elapsed time.
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

/// Sends `rate` messages per second until `until`, each stamped with the
/// microseconds since `epoch`. Returns how many were sent.
pub async fn send_at(mut tx: SplitSink<Ws, Message>, rate: f64, until: Instant, epoch: Instant, tag: usize) -> u64 {
    const TICK: Duration = Duration::from_millis(10);
    let per_tick = rate * TICK.as_secs_f64();
    let mut owed = 0.0;
    let mut sent = 0u64;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < until {
        ticker.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let t = epoch.elapsed().as_micros();
            let frame = format!(r#"{{"type":"say","cid":"s{tag}-{sent}","text":"t={t};load"}}"#);
            if tx.feed(Message::text(frame)).await.is_err() {
                return sent;
            }
            sent += 1;
        }
        if tx.flush().await.is_err() {
            return sent;
        }
    }
    sent
}
