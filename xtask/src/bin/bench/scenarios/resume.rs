//! `resume`: a resume storm. 10,000 clients join 100-member rooms (as
//! `storm`), each keeping what a page keeps from its welcome and after (the
//! resume token, the history id, the highest seq seen); one member per room
//! sends a few messages; then the bench restarts natter as an operator would
//! (SIGTERM: it closes every WebSocket with 1012 and exits; then the same
//! binary, flags, port and data directory) and every client reconnects with
//! a resuming `hello`, 1,000 in flight. Then each sender sends once more.
//!
//! Figures: resume connects/s and time to welcome; the events in each
//! replay and after it; whether every client saw every seq of its room from
//! its state before the restart exactly once (`lost`, `duplicated`); and the
//! presence frames the restart caused (`notice`s of any kind, or `presence`
//! frames): the target is none. A server that forgets its members on a
//! restart announces every resume as a join; that is reported, not a failure.
//!
//! Against the floor server (`--floor`), which keeps no state: the same
//! clients join it, it is restarted the same way (SIGTERM ends it; the same
//! command and port), and the same reconnect storm runs with the same
//! hellos. Only the connection figures are measured there: it sends no
//! events, so there are no messages and no seqs to check.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Map, Value, json};

use super::bigroom::SETTLE;
use super::load::{STORM_PARALLEL, target};
use crate::args::Args;
use crate::client::{text, write_all};
use crate::member::{self, Check, Crowd, Kind, Member, Plan};
use crate::server::Server;

/// Clients, and with `--quick`.
const CLIENTS: usize = 10_000;
const QUICK_CLIENTS: usize = 2_000;
/// Rooms the clients are spread over (as `storm`).
const ROOMS: usize = 100;
/// Messages each room's sender sends before the restart, and after it.
const SAYS_BEFORE: u64 = 2;
const SAYS_AFTER: u64 = 1;
/// How long each storm of joins may take in all.
const JOIN_DEADLINE: Duration = Duration::from_secs(120);
/// How long the senders wait for their acks.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Before the restart, time for the messages' deliveries to land.
const PRE_RESTART_SETTLE: Duration = Duration::from_secs(1);
/// After the old server exited, how long its clients get to see their
/// connections end.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long every client gets to see its room's last message.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the waits above look.
const POLL: Duration = Duration::from_millis(20);
/// natter's close code for a server restart.
const SERVICE_RESTART: u16 = natter_shared::close::SERVICE_RESTART;

pub async fn run(args: &Args) -> Result<Value> {
    let count = if args.quick { QUICK_CLIENTS } else { CLIENTS };
    let chat = !args.floor;
    let mut server = target(args, &[])?;
    let plan = |server: &Server| Plan {
        addr: server.addr,
        parallel: STORM_PARALLEL,
        keep_seqs: chat,
        senders: ROOMS,
        deadline: Instant::now() + JOIN_DEADLINE,
    };
    let mut figures = Map::new();
    let mut put = |key: &str, value: Value| figures.insert(key.to_owned(), value);
    put("clients", json!(count));
    put("rooms", json!(ROOMS));

    // Before: everyone joins; each room's sender sends and gets its acks.
    let members = (0..count).map(|i| Member::new(i, format!("resume-{}", i % ROOMS), format!("u{i}"))).collect();
    let mut before = member::open(&plan(&server), members).await;
    put("joined", json!(before.welcomed.len()));
    put("join_connects_per_sec", json!(before.connects_per_sec()));
    put("join_failed", json!(before.failed + before.refused + before.pending + before.not_started));
    let mut unacked = 0;
    if chat {
        unacked += say(&before, SAYS_BEFORE, "b").await;
        tokio::time::sleep(PRE_RESTART_SETTLE).await;
    }
    // Only the readers hold the sockets now, so each closes as soon as its
    // reader has the server's close frame.
    before.streams.clear();

    // The restart, while the clients read their close frames.
    let restart = server.restart().await?;
    let (members, _) = before.end(CLOSE_GRACE).await;
    put("restart_stop_ms", json!(restart.stop.as_secs_f64() * 1e3));
    put("restart_start_ms", json!(restart.start.as_secs_f64() * 1e3));
    put("server_killed", json!(u8::from(restart.killed)));
    let joined: Vec<&Member> = members.iter().filter(|m| m.track.welcomed).collect();
    let closed_1012 = joined.iter().filter(|m| m.track.close == Some(SERVICE_RESTART)).count();
    let closed_other = joined.iter().filter(|m| m.track.close.is_some_and(|c| c != SERVICE_RESTART)).count();
    put("closed_with_1012", json!(closed_1012));
    put("closed_with_other_code", json!(closed_other));
    put("ended_without_close_frame", json!(joined.len() - closed_1012 - closed_other));

    // After: every client that was in resumes, 1,000 in flight.
    let rejoining: Vec<Member> = members.into_iter().filter(|m| m.track.welcomed).collect();
    let after = member::open(&plan(&server), rejoining).await;
    put("resumed", json!(after.welcomed.len()));
    put("refused", json!(after.refused));
    put("resume_failed", json!(after.failed + after.pending + after.not_started));
    put("resume_first_error", json!(after.first_error));
    put("resume_connects_per_sec", json!(after.connects_per_sec()));
    put("resume_welcome_p50_ms", json!(after.welcome.percentile_ms(50.0)));
    put("resume_welcome_p99_ms", json!(after.welcome.percentile_ms(99.0)));
    if !chat {
        let (_, _) = after.end(Duration::ZERO).await;
        server.stop()?;
        return Ok(Value::Object(figures));
    }

    // One more message per room; its ack's seq is the room's last to check.
    unacked += say(&after, SAYS_AFTER, "a").await;
    let last: Vec<Option<u64>> = (0..ROOMS)
        .map(|r| {
            (after.streams.contains_key(&r) && after.progress.acks(r) >= SAYS_AFTER).then(|| after.progress.last_ack(r))
        })
        .collect();
    let undelivered = delivered(&after, &last).await;
    tokio::time::sleep(SETTLE).await; // presence a server sends late is counted
    let tally = after.tally.clone();
    let resumed = after.welcomed.len().max(1) as f64;
    let (members, _) = after.end(Duration::ZERO).await;

    let mut check = Check::default();
    let (mut checked, mut replayed, mut replayed_notices, mut missed, mut history_changed) = (0, 0, 0, 0, 0);
    for m in members.iter().filter(|m| m.track.resumed_from.is_some() && !m.track.refused) {
        replayed += m.track.replayed;
        replayed_notices += m.track.replayed_notices;
        missed += m.track.missed;
        history_changed += u64::from(m.track.history_changed);
        if let Some(last) = last[m.index % ROOMS] {
            let c = m.track.check(last);
            check.lost += c.lost;
            check.lost_before += c.lost_before;
            check.duplicated += c.duplicated;
            checked += 1;
        }
    }
    let events_after = tally.get(Kind::Message) + tally.get(Kind::Notice) + tally.get(Kind::Notices);
    put("unacked", json!(unacked));
    put("rooms_unchecked", json!(last.iter().filter(|l| l.is_none()).count()));
    put("clients_checked", json!(checked));
    put("clients_without_last_message", json!(undelivered));
    put("lost", json!(check.lost));
    put("duplicated", json!(check.duplicated));
    put("lost_before_restart", json!(check.lost_before));
    put("replay_events", json!(replayed));
    put("replay_events_per_client", json!(replayed as f64 / resumed));
    put("replay_notices", json!(replayed_notices));
    put("missed", json!(missed));
    put("history_id_changed", json!(history_changed));
    put("events_after", json!(events_after));
    put("events_after_per_client", json!(events_after as f64 / resumed));
    put(
        "presence_frames_after_restart",
        json!(tally.get(Kind::Notice) + tally.get(Kind::Notices) + tally.get(Kind::Presence)),
    );
    put("close_codes_after", json!(member::close_codes(&members)));
    put("server_slow_commits", json!(server.slow_commits()));
    server.stop()?;
    Ok(Value::Object(figures))
}

/// Each room's sender (member `r` of room `r`) sends `n` messages and the
/// acks are awaited; returns how many were not acknowledged in time.
async fn say(crowd: &Crowd, n: u64, tag: &str) -> u64 {
    let base: Vec<(usize, u64)> = crowd.streams.keys().map(|&r| (r, crowd.progress.acks(r))).collect();
    for (&r, stream) in &crowd.streams {
        for k in 0..n {
            let say = format!(r#"{{"type":"say","cid":"{tag}{r}-{k}","text":"resume {tag} {k}"}}"#);
            // A failed write shows as a missing ack.
            if write_all(stream, &text(&say)).await.is_err() {
                break;
            }
        }
    }
    let deadline = Instant::now() + ACK_TIMEOUT;
    loop {
        let missing: u64 = base.iter().map(|&(r, acks)| (acks + n).saturating_sub(crowd.progress.acks(r))).sum();
        if missing == 0 || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every welcomed member has seen its room's `last` seq (rooms
/// without one are skipped) or [`DELIVERY_TIMEOUT`] passed; returns how
/// many had not.
async fn delivered(crowd: &Crowd, last: &[Option<u64>]) -> usize {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let behind = crowd
            .welcomed
            .iter()
            .filter(|&&i| last[i % ROOMS].is_some_and(|seq| crowd.progress.last_seq(i) < seq))
            .count();
        if behind == 0 || Instant::now() >= deadline {
            return behind;
        }
        tokio::time::sleep(POLL).await;
    }
}
