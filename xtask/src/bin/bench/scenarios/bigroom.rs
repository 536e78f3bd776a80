//! `bigroom`: 5,000 clients join one room, 1,000 handshakes in flight (as
//! `storm`), and every client reads everything from its first byte: how
//! many frames the server sends for the joins. Announcing each join to
//! every member costs ~N²/2 `joined` notices; the target (issue 14) is at
//! most 3 frames per client. Against the floor server (`--floor`) a client
//! gets its welcome and nothing else: N frames.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use super::load::{MAX_MEMBERS_PER_ROOM, STORM_PARALLEL, target};
use crate::args::Args;
use crate::member::{self, Kind, Member, Plan};
use crate::server::own_cpu_time;

/// Clients, and with `--quick`.
const CLIENTS: usize = 5_000;
const QUICK_CLIENTS: usize = 1_000;
/// The one room.
const ROOM: &str = "big";
/// Counting goes on this long after the last welcome, so that presence a
/// server batches and sends later is counted.
pub const SETTLE: Duration = Duration::from_secs(3);
/// After the settle time, counting goes on until no frame arrived for this long…
const QUIET: Duration = Duration::from_secs(1);
/// …but ends this long after the last welcome at the latest (the figures
/// then say frames were still arriving).
const COUNT_DEADLINE: Duration = Duration::from_secs(60);
/// How long the joins may take in all.
const JOIN_DEADLINE: Duration = Duration::from_secs(120);

const _: () = assert!(CLIENTS <= MAX_MEMBERS_PER_ROOM, "the server must admit every client to the room");

pub async fn run(args: &Args) -> Result<Value> {
    let count = if args.quick { QUICK_CLIENTS } else { CLIENTS };
    let server = target(args, &[])?;
    let cpu_before = server.cpu_time()?;
    let own_before = own_cpu_time()?;
    let started = Instant::now();
    let plan = Plan {
        addr: server.addr,
        parallel: STORM_PARALLEL,
        keep_seqs: false,
        senders: 0,
        deadline: started + JOIN_DEADLINE,
    };
    let members = (0..count).map(|i| Member::new(i, ROOM.to_owned(), format!("u{i}"))).collect();
    let crowd = member::open(&plan, members).await;
    tokio::time::sleep_until((crowd.last_welcome + SETTLE).into()).await;
    let hard = crowd.last_welcome + COUNT_DEADLINE;
    let mut counted = crowd.tally.total();
    let still_arriving = loop {
        let now = Instant::now();
        if now >= hard {
            break true;
        }
        tokio::time::sleep(QUIET.min(hard - now)).await;
        let total = crowd.tally.total();
        if total == counted {
            break false;
        }
        counted = total;
    };
    let counting = started.elapsed();
    let tally = crowd.tally.clone();
    let frames = tally.total();
    let cpu = server.cpu_time()? - cpu_before;
    let own = own_cpu_time()? - own_before;
    let figures = json!({
        "clients": count,
        "welcomed": crowd.welcomed.len(),
        "refused": crowd.refused,
        "failed_joins": crowd.failed + crowd.pending + crowd.not_started,
        "first_error": crowd.first_error,
        "connects_per_sec": crowd.connects_per_sec(),
        "welcome_p50_ms": crowd.welcome.percentile_ms(50.0),
        "welcome_p99_ms": crowd.welcome.percentile_ms(99.0),
        "frames": frames,
        "frames_per_client": frames as f64 / count as f64,
        "welcome_frames": tally.get(Kind::Welcome),
        "notice_frames": tally.get(Kind::Notice) + tally.get(Kind::Notices),
        "presence_frames": tally.get(Kind::Presence),
        "message_frames": tally.get(Kind::Message),
        "control_frames": tally.get(Kind::Control),
        "other_frames": tally.get(Kind::Other) + tally.get(Kind::Ack) + tally.get(Kind::Error),
        "counting_secs": counting.as_secs_f64(),
        "frames_still_arriving": u8::from(still_arriving),
        "server_cpu_secs": cpu.as_secs_f64(),
        "generator_cpu_pct": own.as_secs_f64() * 100.0 / counting.as_secs_f64(),
        "server_slow_commits": server.slow_commits(),
    });
    let (members, _) = crowd.end(Duration::ZERO).await;
    server.stop()?;
    let mut figures = figures;
    figures["closed_by_server"] = json!(members.iter().filter(|m| m.track.close.is_some()).count());
    figures["close_codes"] = json!(member::close_codes(&members));
    Ok(figures)
}
