//! The Redis store's writer: a Tokio task that takes every queued draft,
//! sends them all in one round trip (a pipeline of one `BATCH` call per
//! room, in queue order), and reports each back to its room only after Redis
//! answered. One round at a time, as SQLite's writer: batches grow by
//! themselves while Redis is slow.
//!
//! A round that fails in transport (Redis down, a timeout) may or may not
//! have stored its drafts: messages get `storage_unavailable`, and the page
//! sends them again with the same cid, which `BATCH` acknowledges with the
//! seq it already has; notices are kept and sent again with the dedupe key
//! they were given, so they are stored once either way.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ::redis::{ServerErrorKind, Value};
use natter_shared::Seq;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::conn::Mode;
use super::scripts::{self, BATCH, BatchReply};
use super::{AGE_TRIM_SCAN, Failure, Known, RedisStore, RoomKeys, save_members, within};
use crate::config::StorageConfig;
use crate::metrics::Metrics;
use crate::store::writer::{Write, WriterMsg};
use crate::store::{Committed, Draft, FreshHistory, HistoryError, Outcome, SavedMember};

/// Drafts of one room in one `BATCH` call: a bigger batch of one room is
/// split into several calls in the same pipeline, so no single script runs
/// long enough to hold Redis up.
pub const ROOM_CALL_MAX: usize = 256;
/// Writes kept for the next round (notices of a failed round, writes that
/// failed on their own); beyond it the oldest is dropped, as failed.
pub const RETRY_MAX: usize = 10_000;
/// How often one write may fail on its own (a script error) before it is
/// dropped with an error to its sender.
pub const WRITE_ATTEMPTS: u32 = 3;
/// Pause before sending kept writes again when no new work comes, so an
/// outage is retried at a pace, not in a busy loop.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Sends of one round: after a room's history was read afresh, or the
/// scripts loaded again (Redis restarted), its drafts go again at once.
pub const ROUND_SENDS: usize = 3;

/// A write in the writer's hands.
#[derive(Debug)]
struct Pending {
    write: Write,
    /// The dedupe key: a message's `name key \n cid`; a notice's own, fixed
    /// for all its sends.
    key: String,
    /// `m` or `n`, and the event's JSON after its time (see [`scripts::draft_tail`]).
    kind: &'static str,
    tail: String,
    failures: u32,
}

impl Pending {
    fn fail(self, error: HistoryError) {
        self.write.room.committed(self.write.draft, Outcome::Failed(error));
    }
}

/// One room's drafts of a round, in queue order.
struct RoomBatch {
    room: Arc<dyn Committed>,
    drafts: Vec<Pending>,
}

/// What became of one room's drafts in one send.
#[derive(Default)]
struct Sent {
    outcomes: Vec<(Draft, Outcome)>,
    /// Stored now, in order (their seqs).
    stored: Vec<Seq>,
    /// Drafts to send again at once (after reading the history afresh, or loading the script).
    again: Vec<Pending>,
    /// The room's history is not the one believed: its epoch now.
    epoch: Option<String>,
}

/// The writer task's state.
pub struct Writer {
    store: Arc<RedisStore>,
    instance: String,
    write_batch: usize,
    maxlen: u64,
    max_age_ms: u64,
    reload_events: usize,
    retry: VecDeque<Pending>,
    next_notice: u64,
    /// Redis failed the last round: the next success is logged.
    outage: bool,
    metrics: Arc<Metrics>,
}

impl Writer {
    pub fn new(
        store: Arc<RedisStore>,
        instance: String,
        options: &StorageConfig,
        reload_events: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            instance,
            write_batch: options.write_batch.max(1),
            maxlen: options.retain_count.unwrap_or(0),
            max_age_ms: options.retain_age.map_or(0, |age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX).max(1)),
            reload_events,
            retry: VecDeque::new(),
            next_notice: 0,
            outage: false,
            metrics,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        loop {
            let first = if self.retry.is_empty() {
                match rx.recv().await {
                    Some(msg) => Some(msg),
                    None => return self.finish(None).await,
                }
            } else {
                match tokio::time::timeout(RETRY_PAUSE, rx.recv()).await {
                    Ok(Some(msg)) => Some(msg),
                    Ok(None) => return self.finish(None).await,
                    Err(_) => None,
                }
            };
            let mut batch: Vec<Pending> = self.retry.drain(..).collect();
            let mut stop = None;
            let mut probes = Vec::new();
            let mut next = first;
            while let Some(msg) = next {
                match msg {
                    WriterMsg::Write(write) => {
                        if let Some(pending) = self.pending(write) {
                            batch.push(pending);
                        }
                    }
                    WriterMsg::Probe(answer) => probes.push(answer),
                    WriterMsg::Stop { members, done } => {
                        stop = Some((members, done));
                        break;
                    }
                }
                if batch.len() >= self.write_batch {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !batch.is_empty() {
                let (writes, began) = (batch.len(), std::time::Instant::now());
                self.round(batch).await;
                self.metrics.committed(writes, began.elapsed());
            }
            if !probes.is_empty() {
                let result = self.probe().await;
                for answer in probes {
                    let _ = answer.send(result.clone());
                }
            }
            if stop.is_some() {
                return self.finish(stop).await;
            }
        }
    }

    /// Whether a write would be taken now (for `/readyz`): Redis answers
    /// within the timeout.
    async fn probe(&self) -> Result<(), String> {
        let mut conn = self.store.conn();
        let ping = ::redis::cmd("PING");
        within(self.store.timeout(), ping.query_async::<String>(&mut conn)).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// A new write with its dedupe key and tail.
    fn pending(&mut self, write: Write) -> Option<Pending> {
        let key = match (write.draft.sender_key(), &write.draft) {
            (Some((name_key, cid)), _) => format!("{name_key}\n{}", cid.as_str()),
            (None, Draft::Notice { once: Some(key), .. }) => key.clone(),
            (None, _) => {
                self.next_notice += 1;
                format!("~{}:{}", self.instance, self.next_notice)
            }
        };
        match scripts::draft_tail(&write.draft) {
            Ok((kind, tail)) => Some(Pending { write, key, kind, tail, failures: 0 }),
            Err(e) => {
                warn!(room = %write.room.room_name(), error = %e, "a write cannot be stored; it is dropped");
                write.room.committed(write.draft, Outcome::Failed(HistoryError::Unavailable(e.to_string())));
                None
            }
        }
    }

    /// Sends `pipes` at once and gives their replies in order.
    async fn query(&self, pipes: &[::redis::Pipeline]) -> Result<Vec<Value>, Failure> {
        let timeout = self.store.timeout();
        let sent = pipes.iter().map(|pipe| {
            let mut conn = self.store.conn();
            async move { within(timeout, pipe.query_async::<Vec<Value>>(&mut conn)).await }
        });
        let mut replies = Vec::new();
        for reply in futures_util::future::join_all(sent).await {
            replies.extend(reply?);
        }
        Ok(replies)
    }

    /// Stores a batch: every room's drafts in one pipeline, sent again at
    /// once for the rooms that need it (at most [`ROUND_SENDS`] sends).
    async fn round(&mut self, batch: Vec<Pending>) {
        let mut rooms = by_room(batch);
        for _ in 0..ROUND_SENDS {
            rooms = self.send(rooms).await;
            if rooms.is_empty() {
                return;
            }
        }
        for pending in rooms.into_iter().flat_map(|r| r.drafts) {
            self.keep_for_retry(pending);
        }
    }

    /// One pipeline for `rooms`; returns the rooms whose drafts should go again now.
    async fn send(&mut self, rooms: Vec<RoomBatch>) -> Vec<RoomBatch> {
        let store = self.store.clone();
        let _round = store.rounds().write().await;
        // One pipeline for every room on one server; one per room in a
        // cluster, where a pipeline may not mix slots (sent at once).
        let per_room = self.store.conn().mode() == Mode::Cluster;
        let mut pipes: Vec<::redis::Pipeline> = Vec::new();
        // Per call: the room's index and how many drafts it carries.
        let mut calls: Vec<(usize, usize)> = Vec::new();
        let mut believed: Vec<Known> = Vec::with_capacity(rooms.len());
        for (at, batch) in rooms.iter().enumerate() {
            if pipes.is_empty() || per_room {
                let mut pipe = ::redis::pipe();
                pipe.ignore_errors();
                pipes.push(pipe);
            }
            let Some(pipe) = pipes.last_mut() else { break };
            let name = batch.room.room_name();
            // A room the store does not hold is sent with no epoch: `BATCH`
            // answers with the current one, and the room reads it afresh.
            let known = self.store.known(name).unwrap_or(Known { epoch: String::new(), head: Seq(0) });
            let keys = RoomKeys::of(name);
            for chunk in batch.drafts.chunks(ROOM_CALL_MAX) {
                let mut cmd = ::redis::cmd("EVALSHA");
                cmd.arg(BATCH.get_hash()).arg(3).arg(&keys.meta).arg(&keys.stream).arg(&keys.dedupe);
                cmd.arg(&known.epoch)
                    .arg(self.maxlen)
                    .arg(&keys.channel)
                    .arg(&self.instance)
                    .arg(known.head.0)
                    .arg(self.max_age_ms)
                    .arg(AGE_TRIM_SCAN);
                for pending in chunk {
                    cmd.arg(&pending.key).arg(pending.kind).arg(&pending.tail);
                }
                pipe.add_command(cmd);
                calls.push((at, chunk.len()));
            }
            believed.push(known);
        }
        let replies = match self.query(&pipes).await {
            Ok(replies) if replies.len() == calls.len() => Some(replies),
            Ok(replies) => {
                let counts = format!("{} replies to {} calls", replies.len(), calls.len());
                self.round_failed(&Failure::Reply(scripts::BadReply(counts)));
                None
            }
            Err(e) => {
                self.round_failed(&e);
                None
            }
        };
        let Some(replies) = replies else {
            let error = HistoryError::Unavailable("Redis is unavailable".into());
            self.unavailable(rooms.into_iter().flat_map(|r| r.drafts).collect(), &error);
            return Vec::new();
        };
        if self.outage {
            self.outage = false;
            info!("Redis answers again: messages are stored");
        }

        let mut sent: Vec<Sent> = rooms.iter().map(|_| Sent::default()).collect();
        let mut drafts: Vec<std::vec::IntoIter<Pending>> = Vec::with_capacity(rooms.len());
        let mut heads: Vec<Arc<dyn Committed>> = Vec::with_capacity(rooms.len());
        for batch in rooms {
            heads.push(batch.room);
            drafts.push(batch.drafts.into_iter());
        }
        let mut load_script = false;
        for ((at, count), reply) in calls.into_iter().zip(replies) {
            let chunk: Vec<Pending> = drafts[at].by_ref().take(count).collect();
            let s = &mut sent[at];
            match reply {
                Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript) => {
                    load_script = true;
                    s.again.extend(chunk);
                }
                Value::ServerError(e) if is_unavailable(e.code()) => {
                    self.round_failed(&Failure::Refused(e.to_string()));
                    self.unavailable(chunk, &HistoryError::Unavailable(e.to_string()));
                }
                Value::ServerError(e) => {
                    for pending in chunk {
                        self.failed_alone(pending, e.to_string());
                    }
                }
                reply => match scripts::parse_batch(&reply) {
                    Ok(BatchReply::Ok(rows)) if rows.len() == chunk.len() => {
                        for (pending, (stored, seq, ts)) in chunk.into_iter().zip(rows) {
                            let draft = pending.write.draft;
                            let outcome = if stored {
                                s.stored.push(seq);
                                Outcome::Stored(draft.clone().into_event(seq, ts))
                            } else {
                                Outcome::Duplicate(seq, ts)
                            };
                            s.outcomes.push((draft, outcome));
                        }
                    }
                    Ok(BatchReply::Epoch(current)) => {
                        s.epoch = Some(current);
                        s.again.extend(chunk);
                    }
                    Ok(BatchReply::Ok(_)) | Err(_) => {
                        // The script ran, but its answer makes no sense:
                        // whether it stored them is unknown.
                        warn!(room = %heads[at].room_name(), reply = ?reply, "unexpected answer from the write script");
                        let error = HistoryError::Unavailable("unexpected answer from Redis".into());
                        self.unavailable(chunk, &error);
                    }
                },
            }
        }
        if load_script {
            let mut conn = self.store.conn();
            if let Err(e) = within(self.store.timeout(), BATCH.load_async(&mut conn)).await {
                debug!(error = %e, "the write script could not be loaded again");
            }
        }

        let mut again = Vec::new();
        for ((room, s), known) in heads.into_iter().zip(sent).zip(believed) {
            let name = room.room_name().clone();
            if let Some(&last) = s.stored.last() {
                self.store.advance(&name, &known.epoch, last);
            }
            if !s.outcomes.is_empty() {
                room.committed_all(s.outcomes);
                // Seqs between the room's head and these are other
                // instances' (on their way through the channel) or this
                // one's from a round whose answer was lost: the room waits
                // for them a moment, then reads them from the stream.
                self.store.fanout().follow(room.clone());
            }
            if s.epoch.is_some() {
                // The epoch Redis named is replaced only if it is the one
                // believed: then Redis is behind what this instance saw.
                let replace = s.epoch.as_deref().filter(|current| *current == known.epoch);
                match self.store.open(&name, self.reload_events, replace, "").await {
                    Ok(opened) => {
                        self.store.remember(&name, Known { epoch: opened.epoch.clone(), head: opened.head });
                        room.reload(FreshHistory { id: opened.epoch, head: opened.head, latest: opened.latest });
                    }
                    Err(e) => {
                        warn!(room = %name, error = %e, "the room's history could not be read afresh");
                        let error = HistoryError::from(e);
                        self.unavailable(s.again, &error);
                        continue;
                    }
                }
            }
            if !s.again.is_empty() {
                again.push(RoomBatch { room, drafts: s.again });
            }
        }
        again
    }

    /// Logs a failed round, once per outage.
    fn round_failed(&mut self, error: &Failure) {
        if self.outage {
            debug!(error = %error, "Redis is still unavailable");
        } else {
            self.outage = true;
            warn!(error = %error, "Redis is unavailable: messages get storage_unavailable until it answers again");
        }
    }

    /// Writes whose round failed in transport: messages are refused (the
    /// page sends them again), notices kept for the next round.
    fn unavailable(&mut self, writes: Vec<Pending>, error: &HistoryError) {
        for pending in writes {
            match pending.write.draft {
                Draft::Notice { .. } => self.keep_for_retry(pending),
                Draft::Message { .. } => pending.fail(error.clone()),
            }
        }
    }

    /// A write the script refused: tried again with the next round until
    /// it has failed [`WRITE_ATTEMPTS`] times.
    fn failed_alone(&mut self, pending: Pending, error: String) {
        let failures = pending.failures + 1;
        let room = pending.write.room.room_name().clone();
        if failures >= WRITE_ATTEMPTS {
            warn!(room = %room, failures, error = %error, "a write cannot be stored; it is dropped");
            pending.fail(HistoryError::Unavailable(error));
        } else {
            debug!(room = %room, failures, error = %error, "a write failed on its own; it will be tried again");
            self.keep_for_retry(Pending { failures, ..pending });
        }
    }

    /// Queues a write for the next round; when [`RETRY_MAX`] are waiting,
    /// the oldest is dropped as failed.
    fn keep_for_retry(&mut self, pending: Pending) {
        if self.retry.len() >= RETRY_MAX
            && let Some(oldest) = self.retry.pop_front()
        {
            warn!(room = %oldest.write.room.room_name(), "retry queue full; dropping the oldest write");
            oldest.fail(HistoryError::Unavailable("too many writes are waiting to be stored".into()));
        }
        self.retry.push_back(pending);
    }

    /// Stops: fails what is still kept, saves the members (a graceful
    /// stop), lets the lock go, then says so.
    async fn finish(mut self, stop: Option<(Vec<SavedMember>, oneshot::Sender<()>)>) {
        if !self.retry.is_empty() {
            warn!(writes = self.retry.len(), "writes not stored at shutdown");
            for pending in self.retry.drain(..) {
                pending.fail(HistoryError::Unavailable("the server is shutting down".into()));
            }
        }
        let mut conn = self.store.conn();
        let timeout = self.store.timeout();
        // Only a graceful stop saves members (a dropped queue is not one).
        let (members, done) = stop.map_or((None, None), |(members, done)| (Some(members), Some(done)));
        if let Some(members) = members {
            match within(timeout, save_members(&mut conn, &members)).await {
                Ok(()) if !members.is_empty() => {
                    info!(members = members.len(), "members saved in Redis for the next start")
                }
                Ok(()) => {}
                Err(e) => warn!(error = %e, "members not saved: they will rejoin as new after the restart"),
            }
        }
        // Its members' names stay this instance's until the liveness key
        // expires: the browsers take them over with their tokens meanwhile.
        self.store.stop_renewing();
        debug!("history writer stopped");
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// Error codes with which Redis refuses every write for now, not this one:
/// still loading its data after a restart, a script running too long, a
/// replica, out of memory, unable to persist (`MISCONF`). The writes are
/// treated as in an outage: messages refused, notices kept.
const UNAVAILABLE_CODES: &[&str] =
    &["LOADING", "BUSY", "READONLY", "MASTERDOWN", "OOM", "MISCONF", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN"];

/// Whether a server error with this code is Redis's trouble rather than the write's.
fn is_unavailable(code: &str) -> bool {
    UNAVAILABLE_CODES.contains(&code)
}

/// Groups a batch by room (the same room object), rooms in the order of
/// their first write, each room's writes in queue order.
fn by_room(batch: Vec<Pending>) -> Vec<RoomBatch> {
    let mut rooms: Vec<RoomBatch> = Vec::new();
    let mut index: HashMap<*const (), usize> = HashMap::new();
    for pending in batch {
        let at = *index.entry(Arc::as_ptr(&pending.write.room).cast::<()>()).or_insert_with(|| {
            rooms.push(RoomBatch { room: pending.write.room.clone(), drafts: Vec::new() });
            rooms.len() - 1
        });
        rooms[at].drafts.push(pending);
    }
    rooms
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("instance", &self.instance).field("retry", &self.retry.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_in_trouble_is_told_from_a_write_it_refuses() {
        assert!(is_unavailable("LOADING") && is_unavailable("MISCONF") && is_unavailable("OOM"));
        assert!(!is_unavailable("ERR") && !is_unavailable("WRONGTYPE") && !is_unavailable("NOSCRIPT"));
    }
}
