//! `history`: acknowledged messages per second with 100 senders on the
//! default SQLite store (and the p99 time to `ack`), each keeping 32
//! unacknowledged (closed loop: latency is then in-flight / rate, Little's
//! law); the ack latency at a fixed offered rate of 50,000 messages/s (open
//! loop, each message timed from when it was due, so a slow server is not
//! hidden by a generator that waits); then the time to serve a `welcome`
//! with 100 events from a 1,000,000-message database.

use std::collections::VecDeque;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use natter_shared::{ChatMessage, ClientMsgId, Color, MessageText, RoomEvent, Seq, Timestamp, UserName};
use serde_json::{Value, json};

use crate::args::Args;
use crate::client::{OP_TEXT, Ws, connect, join, parse, read_more, source, text, write_all};
use crate::server::{Server, temp_dir};
use crate::stats::Samples;

pub(super) const SENDERS: usize = 100;
pub(super) const ROOMS: usize = 10;
/// Messages each sender keeps unacknowledged.
pub(super) const WINDOW: usize = 32;
const BIG_ROOM_MESSAGES: u64 = 1_000_000;
/// The offered rate of the open-loop phase, in messages/s (all senders).
const OFFERED_RATE: u64 = 50_000;
/// How long a sender waits for its outstanding acks after its last send.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// How a sender paces its messages.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pace {
    /// Keep this many unacknowledged, sending as acks come back.
    Window(usize),
    /// Send one every this long, whatever comes back.
    Every(Duration),
}

pub(super) struct SenderResult {
    pub acked: u64,
    pub latency: Samples,
}

pub(super) async fn sender(args: (std::net::SocketAddr, usize, Instant, Instant, Pace)) -> Result<SenderResult> {
    let (addr, index, measure_from, until, pace) = args;
    let mut ws = connect(addr, source(index)).await?;
    join(&mut ws, &format!("s{index}"), &format!("bench-{}", index % ROOMS)).await?;
    let Ws { stream, mut buf } = ws;
    let body = "x".repeat(100);
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(WINDOW);
    let mut result = SenderResult { acked: 0, latency: Samples::default() };
    let mut next = 0u64;
    // Open loop: senders start spread over one period, not all at once.
    let mut due = match pace {
        Pace::Every(period) => Instant::now() + period.mul_f64((index % SENDERS) as f64 / SENDERS as f64),
        Pace::Window(_) => Instant::now(),
    };
    loop {
        loop {
            let now = Instant::now();
            let go = match pace {
                Pace::Window(window) => sent.len() < window && now < until,
                Pace::Every(_) => due <= now && due < until,
            };
            if !go {
                break;
            }
            let frame = format!(r#"{{"type":"say","cid":"c{next}","text":"{body}"}}"#);
            next += 1;
            write_all(&stream, &text(&frame)).await?;
            match pace {
                Pace::Window(_) => sent.push_back(Instant::now()),
                // Timed from when it was due: a late send counts against the server's latency.
                Pace::Every(period) => {
                    sent.push_back(due);
                    due += period;
                }
            }
        }
        let sending = matches!(pace, Pace::Every(_)) && due < until;
        if sent.is_empty() && !sending {
            break;
        }
        let mut at = 0;
        while let Some(f) = parse(&buf[at..]) {
            if f.opcode == OP_TEXT && buf[at + f.payload.0..].starts_with(br#"{"type":"ack""#) {
                let now = Instant::now();
                if let Some(at) = sent.pop_front()
                    && at >= measure_from
                    // Paced: every message due in the window counts, however late its ack.
                    && (matches!(pace, Pace::Every(_)) || now <= until)
                {
                    result.acked += 1;
                    result.latency.push(now - at);
                }
            }
            at += f.len;
        }
        if at > 0 {
            buf.drain(..at);
            continue;
        }
        let wait_until = if sending { due } else { Instant::now() + ACK_WAIT };
        match tokio::time::timeout_at(wait_until.into(), read_more(&stream, &mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Err(_) if sending => {}
            other => anyhow::bail!("sender {index}: connection ended or went quiet: {other:?}"),
        }
    }
    Ok(result)
}

/// The senders' acknowledged messages and ack latencies, all together.
pub(super) async fn gather(tasks: Vec<tokio::task::JoinHandle<Result<SenderResult>>>) -> Result<(u64, Samples)> {
    let mut acked = 0;
    let mut latency = Samples::default();
    for task in tasks {
        let r = task.await??;
        acked += r.acked;
        latency.extend(r.latency);
    }
    Ok((acked, latency))
}

/// Acknowledged messages/s and ack latency with every sender paced by `pace`.
async fn throughput(args: &Args, pace: Pace) -> Result<Value> {
    let (warmup, window) = if args.quick { (1, 3) } else { (2, 10) };
    let server = Server::start(
        &args.natter,
        &["--history", "sqlite", "--rate-per-sec", "1000000", "--rate-burst", "1000000", "--outbound-queue", "4096"],
        args.server_cpu,
        None,
    )?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(warmup);
    let until = measure_from + Duration::from_secs(window);
    let tasks: Vec<_> =
        (0..SENDERS).map(|i| tokio::spawn(sender((server.addr, i, measure_from, until, pace)))).collect();
    // The server's CPU over the measured window only (not the warm-up),
    // like the acks it is divided by.
    let cpu_window = async {
        tokio::time::sleep_until(measure_from.into()).await;
        let before = server.cpu_time();
        tokio::time::sleep_until(until.into()).await;
        (before, server.cpu_time())
    };
    let (gathered, (cpu_before, cpu_after)) = tokio::join!(gather(tasks), cpu_window);
    let (acked, latency) = gathered?;
    let cpu = cpu_after? - cpu_before?;
    let rss = server.rss_kib()?;
    let slow_commits = server.slow_commits();
    server.stop()?;
    Ok(json!({
        "server_slow_commits": slow_commits,
        "senders": SENDERS,
        "acked_per_sec": acked as f64 / window as f64,
        "ack_p50_ms": latency.percentile_ms(50.0),
        "ack_p99_ms": latency.percentile_ms(99.0),
        "server_cpu_us_per_ack": cpu.as_secs_f64() * 1e6 / acked.max(1) as f64,
        "server_rss_mib": rss as f64 / 1024.0,
    }))
}

/// Builds a database with one room of `count` messages through `natter import`.
fn big_database(args: &Args, count: u64) -> Result<(std::path::PathBuf, Duration)> {
    let dir = temp_dir("big");
    let started = Instant::now();
    let mut import = Command::new(&args.natter)
        .args(["import", "--room", "big", "--data-dir"])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("natter import")?;
    {
        let mut stdin = std::io::BufWriter::new(import.stdin.take().context("stdin")?);
        let name = UserName::parse("Writer")?;
        let color = Color("#1e77d0".into());
        for seq in 1..=count {
            let event = RoomEvent::Message(ChatMessage {
                seq: Seq(seq),
                ts: Timestamp(1_700_000_000_000 + seq),
                name: name.clone(),
                color: color.clone(),
                text: MessageText::parse(&format!("message number {seq} of the big room"))?,
                cid: Some(ClientMsgId::parse(&format!("b{seq}"))?),
            });
            serde_json::to_writer(&mut stdin, &event)?;
            stdin.write_all(b"\n")?;
        }
    }
    let status = import.wait()?;
    anyhow::ensure!(status.success(), "natter import failed");
    Ok((dir, started.elapsed()))
}

async fn welcome_time(args: &Args) -> Result<Value> {
    let count = if args.quick { 100_000 } else { BIG_ROOM_MESSAGES };
    let (dir, import_time) = big_database(args, count)?;
    let server = Server::start(&args.natter, &["--history", "sqlite"], args.server_cpu, Some(dir.clone()))?;
    let trials = if args.quick { 10 } else { 100 };
    let mut samples = Samples::default();
    for i in 0..trials {
        let mut ws = connect(server.addr, source(i)).await?;
        let started = Instant::now();
        join(&mut ws, &format!("w{i}"), "big").await?;
        samples.push(started.elapsed());
        drop(ws);
    }
    server.stop()?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(json!({
        "database_messages": count,
        "import_secs": import_time.as_secs_f64(),
        "welcome_p50_ms": samples.percentile_ms(50.0),
        "welcome_p99_ms": samples.percentile_ms(99.0),
        "welcome_trials": samples.len(),
    }))
}

pub async fn run(args: &Args) -> Result<Value> {
    let mut figures = throughput(args, Pace::Window(WINDOW)).await?;
    let period = Duration::from_secs_f64(SENDERS as f64 / OFFERED_RATE as f64);
    let paced = throughput(args, Pace::Every(period)).await?;
    if let (Some(f), Some(p)) = (figures.as_object_mut(), paced.as_object()) {
        f.insert("offered_per_sec".into(), json!(OFFERED_RATE));
        for (key, value) in p {
            f.insert(format!("offered_{key}"), value.clone());
        }
    }
    let welcome = welcome_time(args).await?;
    if let (Some(f), Some(w)) = (figures.as_object_mut(), welcome.as_object()) {
        f.extend(w.clone());
    }
    Ok(figures)
}
