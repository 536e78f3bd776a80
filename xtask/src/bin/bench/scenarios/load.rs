//! The load scenarios: idle, storm, fanout, slow, rooms. `idle` and `storm`
//! also run against the floor server (`--floor`, see `target`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::args::Args;
use crate::client::{OP_CLOSE, Ws, close_code, parse, read_more};
use crate::load::{Counters, open_many, read, send_at};
use crate::server::{Server, cpu_time_of, own_cpu_time};
use crate::stats::Samples;

/// Server flags for load: no rate limit in the way.
const LOAD_FLAGS: &[&str] = &["--rate-per-sec", "1000000", "--rate-burst", "1000000"];
/// Members a room may have (`--max-members-per-room`): room for `bigroom`.
pub const MAX_MEMBERS_PER_ROOM: usize = 5_000;
/// Handshakes in flight in a connect storm (`storm`, `bigroom`, `resume`).
pub const STORM_PARALLEL: usize = 1_000;
/// Clients of `storm`, and with `--quick`.
const STORM_CLIENTS: usize = 10_000;
const STORM_QUICK_CLIENTS: usize = 2_000;
/// Members of `fanout` (and of the floor's fan-out).
pub const FANOUT_MEMBERS: usize = 1_000;
/// `fanout`'s first step, messages/s: 100,000 deliveries/s to its members.
const FANOUT_FIRST_RATE: f64 = 100.0;
/// Length of a `fanout` step, and with `--quick`.
const FANOUT_STEP: Duration = Duration::from_secs(5);
const FANOUT_QUICK_STEP: Duration = Duration::from_secs(2);
/// After a step, how long in-flight deliveries get to land.
const DRAIN: Duration = Duration::from_millis(500);
/// Handshakes in flight while opening many connections.
const PARALLEL_CONNECTS: usize = 256;

fn server(args: &Args, extra: &[&str]) -> Result<Server> {
    let members = MAX_MEMBERS_PER_ROOM.to_string();
    let mut flags: Vec<&str> = LOAD_FLAGS.to_vec();
    flags.extend_from_slice(&["--max-members-per-room", &members]);
    flags.extend_from_slice(extra);
    Server::start(&args.natter, &flags, args.server_cpu, None)
}

/// The server a scenario runs against: natter with the load flags and
/// `extra`, or with `--floor` the floor server in its place (same core).
pub fn target(args: &Args, extra: &[&str]) -> Result<Server> {
    if args.floor { Server::floor(args.server_cpu) } else { server(args, extra) }
}

/// Length of a `fanout` step (the floor's fan-out beside it uses the same).
pub fn fanout_step(quick: bool) -> Duration {
    if quick { FANOUT_QUICK_STEP } else { FANOUT_STEP }
}

/// Starts a reader per socket and returns the sockets for sending.
fn start_readers(
    sockets: Vec<Ws>,
    sample_every: usize,
    counters: &Arc<Counters>,
    epoch: Instant,
) -> Vec<Arc<TcpStream>> {
    let mut sinks = Vec::with_capacity(sockets.len());
    for (i, ws) in sockets.into_iter().enumerate() {
        sinks.push(ws.stream.clone());
        tokio::spawn(read(ws, sample_every > 0 && i % sample_every == 0, counters.clone(), epoch));
    }
    sinks
}

/// `idle`: connections joined to 150 rooms, doing nothing: RSS per connection.
pub async fn idle(args: &Args) -> Result<Value> {
    let count = if args.quick { 2_000 } else { 15_000 };
    let rooms = 150;
    let server = target(args, &[])?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib()?;
    let (sockets, took, _) =
        open_many(server.addr, count, PARALLEL_CONNECTS, |i| format!("idle-{}", i % rooms), |i| format!("u{i}"))
            .await?;
    let counters = Arc::new(Counters::default());
    let _sinks = start_readers(sockets, 0, &counters, Instant::now());
    // Let the joined notices drain and the server settle.
    tokio::time::sleep(Duration::from_secs(if args.quick { 2 } else { 5 })).await;
    let after = server.rss_kib()?;
    let closed = counters.closes.lock().map(|c| c.len()).unwrap_or(0);
    server.stop()?;
    Ok(json!({
        "connections": count,
        "rooms": rooms,
        "connects_per_sec": count as f64 / took.as_secs_f64(),
        "rss_before_mib": before as f64 / 1024.0,
        "rss_after_mib": after as f64 / 1024.0,
        "rss_per_connection_kb": (after.saturating_sub(before)) as f64 * 1.024 / count as f64,
        "closed_during_idle": closed,
    }))
}

/// `storm`: clients connect and join as fast as possible.
pub async fn storm(args: &Args) -> Result<Value> {
    storm_on(target(args, &[])?, args.quick).await
}

/// `storm` against `server`: connects/s, time to welcome, and the CPU the
/// server and the load generator spent per connection.
pub async fn storm_on(server: Server, quick: bool) -> Result<Value> {
    let count = if quick { STORM_QUICK_CLIENTS } else { STORM_CLIENTS };
    let pid = server.pid().to_string();
    let cpu_before = cpu_time_of(&pid)?;
    let own_before = own_cpu_time()?;
    let (sockets, took, welcome) =
        open_many(server.addr, count, STORM_PARALLEL, |i| format!("storm-{}", i % 100), |i| format!("u{i}")).await?;
    let cpu = cpu_time_of(&pid)? - cpu_before;
    let own = own_cpu_time()? - own_before;
    drop(sockets);
    let slow_commits = server.slow_commits();
    server.stop()?;
    Ok(json!({
        "clients": count,
        "connects_per_sec": count as f64 / took.as_secs_f64(),
        "welcome_p50_ms": welcome.percentile_ms(50.0),
        "welcome_p99_ms": welcome.percentile_ms(99.0),
        "server_cpu_us_per_connection": cpu.as_secs_f64() * 1e6 / count as f64,
        "server_cpu_pct": cpu.as_secs_f64() / took.as_secs_f64() * 100.0,
        "generator_cpu_pct": own.as_secs_f64() / took.as_secs_f64() * 100.0,
        "server_slow_commits": slow_commits,
    }))
}

/// `fanout`: 1,000 members of one room, 10 of them sending; the rate steps up
/// until p99 latency passes 50 ms or messages are lost.
pub async fn fanout(args: &Args) -> Result<Value> {
    let members = FANOUT_MEMBERS;
    let senders = 10;
    let step_len = fanout_step(args.quick);
    let rates: &[f64] = if args.quick {
        &[FANOUT_FIRST_RATE, 400.0]
    } else {
        &[
            FANOUT_FIRST_RATE,
            250.0,
            500.0,
            1_000.0,
            1_500.0,
            2_000.0,
            2_500.0,
            3_000.0,
            4_000.0,
            5_000.0,
            6_000.0,
            8_000.0,
            10_000.0,
        ]
    };
    let server = server(args, &["--outbound-queue", "4096"])?;
    let (sockets, _, _) =
        open_many(server.addr, members, PARALLEL_CONNECTS, |_| "fanout".to_owned(), |i| format!("m{i}")).await?;
    let epoch = Instant::now();
    let counters = Arc::new(Counters::default());
    let sinks = start_readers(sockets, 20, &counters, epoch);
    let senders_socks: Vec<_> = sinks[..senders].to_vec();
    tokio::time::sleep(Duration::from_secs(2)).await; // join notices drain
    let mut steps = Vec::new();
    let mut best = 0.0f64;
    for &rate in rates {
        let before_msgs = counters.messages();
        counters.take_latency();
        let cpu_before = server.cpu_time()?;
        let own_before = own_cpu_time()?;
        let closed_before = counters.closed();
        let slow_before = server.slow_commits();
        let until = Instant::now() + step_len;
        let sent = send_at(senders_socks.clone(), rate, until, epoch, &format!("r{rate}")).await;
        tokio::time::sleep(DRAIN).await; // in-flight deliveries land
        let cpu = server.cpu_time()? - cpu_before;
        let own_cpu = own_cpu_time()? - own_before;
        let delivered = counters.messages() - before_msgs;
        let expected = sent * (members as u64 - 1);
        let latency = counters.take_latency();
        let secs = step_len.as_secs_f64();
        let p99 = latency.percentile_ms(99.0).unwrap_or(f64::MAX);
        let step = json!({
            "rate_msgs_per_sec": rate,
            "deliveries_per_sec": delivered as f64 / secs,
            "p50_ms": latency.percentile_ms(50.0),
            "p99_ms": p99,
            "lost": expected.saturating_sub(delivered),
            "server_cpu_us_per_delivery": cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64,
            "server_cpu_pct": cpu.as_secs_f64() * 100.0 / (secs + DRAIN.as_secs_f64()),
            "generator_cpu_pct": own_cpu.as_secs_f64() * 100.0 / (secs + DRAIN.as_secs_f64()),
            "connections_closed": counters.closed() - closed_before,
            "server_slow_commits": server.slow_commits() - slow_before,
        });
        let ok = p99 <= 50.0 && expected <= delivered;
        steps.push(step);
        if !ok {
            break;
        }
        best = best.max(delivered as f64 / secs);
    }
    server.stop()?;
    // The first step, flat, to set beside the floor's fan-out at the same rate.
    let first = steps.first().cloned().unwrap_or_default();
    Ok(json!({
        "members": members,
        "senders": senders,
        "max_sustained_deliveries_per_sec": best,
        "server_cpu_us_per_delivery_at_100k": first["server_cpu_us_per_delivery"],
        "server_cpu_pct_at_100k": first["server_cpu_pct"],
        "p99_ms_at_100k": first["p99_ms"],
        "steps": steps,
    }))
}

/// `slow`: 100 members, 1,000 messages/s fanned out, one member stops reading.
pub async fn slow(args: &Args) -> Result<Value> {
    let members = 100;
    let duration = Duration::from_secs(if args.quick { 10 } else { 60 });
    // The default outbound queue (256 frames).
    let server = server(args, &[])?;
    let (mut sockets, _, _) = open_many(server.addr, members, 64, |_| "slow".to_owned(), |i| format!("m{i}")).await?;
    let stalled = sockets.remove(0); // never read
    let epoch = Instant::now();
    let counters = Arc::new(Counters::default());
    let sinks = start_readers(sockets, 10, &counters, epoch);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_start = server.rss_kib()?;
    let until = Instant::now() + duration;
    let senders = tokio::spawn(send_at(sinks[..10].to_vec(), 1_000.0, until, epoch, "slow"));
    let mut rss_samples = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(5).min(until.saturating_duration_since(Instant::now()))).await;
        rss_samples.push(server.rss_kib()? as f64 / 1024.0);
    }
    let sent = senders.await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let delivered = counters.messages();
    let expected = sent * (members as u64 - 2); // not to the sender, not to the stalled member
    let rss_end = server.rss_kib()?;
    let stalled_end = stalled_outcome(stalled).await;
    let latency = counters.take_latency();
    let slow_commits = server.slow_commits();
    server.stop()?;
    Ok(json!({
        "seconds": duration.as_secs(),
        "server_slow_commits": slow_commits,
        "messages_sent": sent,
        "rss_start_mib": rss_start as f64 / 1024.0,
        "rss_end_mib": rss_end as f64 / 1024.0,
        "rss_growth_mib": (rss_end as f64 - rss_start as f64) / 1024.0,
        "rss_samples_mib": rss_samples,
        "stalled_client": stalled_end,
        "lost_by_others": expected.saturating_sub(delivered),
        "others_closed": counters.closed(),
        "others_close_codes": counters.closes.lock().map(|c| c.clone()).unwrap_or_default(),
        "p99_ms": latency.percentile_ms(99.0),
    }))
}

/// `rooms`: 10,000 members in 1,000 rooms of 10, each sending 1 message/s.
pub async fn rooms(args: &Args) -> Result<Value> {
    let (members, per_room) = if args.quick { (2_000, 10) } else { (10_000, 10) };
    let duration = Duration::from_secs(if args.quick { 5 } else { 30 });
    let server = server(args, &[])?;
    let (sockets, _, _) =
        open_many(server.addr, members, PARALLEL_CONNECTS, |i| format!("r{}", i / per_room), |i| format!("m{i}"))
            .await?;
    let epoch = Instant::now();
    let counters = Arc::new(Counters::default());
    let sinks = start_readers(sockets, 10, &counters, epoch);
    tokio::time::sleep(Duration::from_secs(2)).await;
    counters.take_latency();
    let before = counters.messages();
    let cpu_before = server.cpu_time()?;
    let until = Instant::now() + duration;
    let sent = send_at(sinks, members as f64, until, epoch, "rooms").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = server.cpu_time()? - cpu_before;
    let delivered = counters.messages() - before;
    let latency: Samples = counters.take_latency();
    let slow_commits = server.slow_commits();
    server.stop()?;
    Ok(json!({
        "server_slow_commits": slow_commits,
        "members": members,
        "rooms": members / per_room,
        "messages_sent": sent,
        "deliveries_per_sec": delivered as f64 / duration.as_secs_f64(),
        "lost": (sent * (per_room as u64 - 1)).saturating_sub(delivered),
        "p50_ms": latency.percentile_ms(50.0),
        "p99_ms": latency.percentile_ms(99.0),
        "server_cpu_us_per_delivery": cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64,
    }))
}

/// What happened to a member that stopped reading: reads what it was sent
/// until a close frame, an error or a quiet spell.
async fn stalled_outcome(ws: Ws) -> String {
    const QUIET: Duration = Duration::from_secs(5);
    let Ws { stream, mut buf } = ws;
    loop {
        let mut at = 0;
        while let Some(f) = parse(&buf[at..]) {
            if f.opcode == OP_CLOSE {
                return format!("closed with {}", close_code(&buf[at + f.payload.0..at + f.payload.1]));
            }
            at += f.len;
        }
        buf.drain(..at);
        match tokio::time::timeout(QUIET, read_more(&stream, &mut buf)).await {
            Err(_) => return "still open".to_owned(),
            Ok(Ok(0)) => return "connection closed without a close frame".to_owned(),
            Ok(Err(e)) => return format!("connection error: {e}"),
            Ok(Ok(_)) => {}
        }
    }
}
