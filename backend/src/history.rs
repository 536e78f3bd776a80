//! Room history: where events get their seq and become durable.
//!
//! Every event goes through one writer per store (a [`WriteQueue`]): the
//! writer gives it the room's next seq and a timestamp, stores it, and only
//! then hands it back to the room ([`Room::committed`]), which acknowledges
//! and broadcasts it. So `ack` means stored, and every member sees events in
//! seq order. Reads (welcome, replay, older pages) go to the store directly.
//!
//! Two stores implement [`HistoryStore`]: [`MemoryStore`] (bounded, lost on
//! restart) and [`crate::sqlite::SqliteStore`] (durable, the default).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use natter_shared::{
    ChatMessage, ClientMsgId, Color, MessageText, Notice, NoticeKind, RoomEvent, RoomName, Seq, Timestamp, UserName,
};
use tokio::sync::mpsc;

use crate::outbound::ConnHandle;
use crate::room::{MemberId, Room};

/// A history operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    #[error("history storage is unavailable: {0}")]
    Unavailable(String),
}

/// Events replayed for a resume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Oldest first.
    pub events: Vec<RoomEvent>,
    /// Events after the requested seq that are not in `events`.
    pub missed: u64,
}

/// An event before the writer has given it a seq and a time.
#[derive(Debug, Clone)]
pub enum Draft {
    Message {
        name: UserName,
        color: Color,
        text: MessageText,
        cid: ClientMsgId,
        /// Who to acknowledge, and whom not to echo the message to.
        sender: ConnHandle,
        member: MemberId,
    },
    Notice {
        kind: NoticeKind,
        name: UserName,
        color: Color,
    },
}

impl Draft {
    /// The stored event this draft becomes under `seq` at `ts`.
    pub fn into_event(self, seq: Seq, ts: Timestamp) -> RoomEvent {
        match self {
            Draft::Message { name, color, text, cid, .. } => {
                RoomEvent::Message(ChatMessage { seq, ts, name, color, text, cid: Some(cid) })
            }
            Draft::Notice { kind, name, color } => RoomEvent::Notice(Notice { seq, ts, kind, name, color }),
        }
    }

    /// For messages: (name key, cid), the deduplication key.
    pub fn sender_key(&self) -> Option<(String, &ClientMsgId)> {
        match self {
            Draft::Message { name, cid, .. } => Some((name.key(), cid)),
            Draft::Notice { .. } => None,
        }
    }
}

/// What the writer did with a draft.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Stored under the event's seq.
    Stored(RoomEvent),
    /// The same sender already stored this cid: this seq and time.
    Duplicate(Seq, Timestamp),
    /// Not stored.
    Failed(HistoryError),
}

/// One write for the writer: a draft and the room to report back to.
#[derive(Debug)]
pub struct Write {
    pub room: Arc<Room>,
    pub draft: Draft,
}

/// What the writer receives.
#[derive(Debug)]
pub enum WriterMsg {
    Write(Write),
    /// Finish everything queued before this, then stop and say so.
    Stop(tokio::sync::oneshot::Sender<()>),
}

/// The way to the writer. Bounded: when it is full, senders wait (the
/// connection's reader pauses, so TCP pushes back on the client); nothing is
/// dropped.
#[derive(Debug, Clone)]
pub struct WriteQueue(pub mpsc::Sender<WriterMsg>);

impl WriteQueue {
    /// Hands a draft to the writer; fails only if the writer has stopped.
    pub async fn submit(&self, room: Arc<Room>, draft: Draft) -> Result<(), HistoryError> {
        self.0
            .send(WriterMsg::Write(Write { room, draft }))
            .await
            .map_err(|_| HistoryError::Unavailable("the history writer has stopped".into()))
    }

    /// Lets the writer finish what is queued, then stops it; waits at most `limit`.
    pub async fn stop(&self, limit: std::time::Duration) -> bool {
        let (done, finished) = tokio::sync::oneshot::channel();
        let sent = tokio::time::timeout(limit, self.0.send(WriterMsg::Stop(done))).await;
        matches!(sent, Ok(Ok(()))) && tokio::time::timeout(limit, finished).await.is_ok()
    }
}

/// Where rooms keep their events.
pub trait HistoryStore: Send + Sync + std::fmt::Debug + 'static {
    /// Identifies `room`'s history: seqs from a history with another id are
    /// unrelated (the history started afresh).
    fn history_id(&self, room: &RoomName) -> String;
    /// The room is no longer held by the server (nobody is in it).
    fn forget(&self, room: &RoomName);
    /// The most events a room keeps, if bounded by count (older ones are gone).
    fn keeps(&self) -> Option<usize>;
    /// The room's latest seq and its latest `limit` events (oldest first).
    fn open_room(&self, room: &RoomName, limit: usize) -> Result<(Seq, Vec<RoomEvent>), HistoryError>;
    /// Events with `after < seq <= upto`, the latest `limit` of them, and how
    /// many of that range are not included.
    fn after(&self, room: &RoomName, after: Seq, upto: Seq, limit: usize) -> Result<Replay, HistoryError>;
    /// Up to `limit` events with `seq < before`, the latest of them, oldest first.
    fn before(&self, room: &RoomName, before: Seq, limit: usize) -> Result<Vec<RoomEvent>, HistoryError>;
}

/// Counts a replay's `missed` from the range asked for and what was found.
pub fn replay_of(after: Seq, upto: Seq, events: Vec<RoomEvent>) -> Replay {
    let wanted = upto.0.saturating_sub(after.0);
    Replay { missed: wanted.saturating_sub(events.len() as u64), events }
}

/// Gives each room's drafts seqs and times, in order, for a writer.
#[derive(Debug, Default)]
pub struct Sequencer {
    rooms: HashMap<RoomName, (Seq, Timestamp)>,
}

impl Sequencer {
    /// The next seq and a time for `room` (never earlier than the room's
    /// last), without taking them yet. `stored` gives the room's head and
    /// last time when the sequencer does not know the room yet.
    pub fn peek(
        &mut self,
        room: &RoomName,
        stored: impl FnOnce() -> (Seq, Timestamp),
        now: Timestamp,
    ) -> (Seq, Timestamp) {
        let (seq, ts) = *self.rooms.entry(room.clone()).or_insert_with(stored);
        (seq.next(), ts.max(now))
    }

    /// Records that `seq` at `ts` was used in `room`.
    pub fn take(&mut self, room: &RoomName, seq: Seq, ts: Timestamp) {
        self.rooms.insert(room.clone(), (seq, ts));
    }

    /// Forgets rooms whose last transaction failed: their next seq is read
    /// from storage again, so a rolled-back seq is reused and none is skipped.
    pub fn forget<'a>(&mut self, rooms: impl IntoIterator<Item = &'a RoomName>) {
        for room in rooms {
            self.rooms.remove(room);
        }
    }
}

/// Keeps the latest events of each room in memory; forgets on restart, so
/// every process gets a new random history id.
#[derive(Debug)]
pub struct MemoryStore {
    per_room: usize,
    /// Rooms whose history is kept; beyond it the least recently written
    /// room's history is forgotten (policy: memory stays bounded).
    id: String,
    rooms: Mutex<HashMap<RoomName, MemoryHistory>>,
    /// Numbers each room history this store starts (part of its history id).
    generations: std::sync::atomic::AtomicU64,
}

impl MemoryStore {
    /// A store keeping at most `per_room` events per room, without a writer.
    /// A room's history lives while the server holds the room (the hub
    /// bounds how many it holds); a room dropped and joined again starts a
    /// new history with a new id.
    pub fn new(per_room: usize) -> Arc<Self> {
        let id = crate::random::random_hex(8).unwrap_or_else(|| format!("m{}", crate::app::now_ms().0));
        Arc::new(Self {
            per_room: per_room.max(1),
            id,
            rooms: Mutex::new(HashMap::new()),
            generations: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// A store and its writer task (needs a Tokio runtime).
    pub fn start(per_room: usize, queue: usize) -> (Arc<Self>, WriteQueue) {
        let store = Self::new(per_room);
        let (tx, mut rx) = mpsc::channel::<WriterMsg>(queue.max(1));
        let writer = store.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                match msg {
                    WriterMsg::Write(write) => {
                        let outcome = writer.apply(&write.room.name, &write.draft);
                        write.room.committed(write.draft, outcome);
                    }
                    WriterMsg::Stop(done) => {
                        let _ = done.send(());
                        break;
                    }
                }
            }
        });
        (store, WriteQueue(tx))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, MemoryHistory>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The room's history, started if there is none.
    fn history<'a>(&self, rooms: &'a mut HashMap<RoomName, MemoryHistory>, room: &RoomName) -> &'a mut MemoryHistory {
        rooms.entry(room.clone()).or_insert_with(|| {
            let mut history = MemoryHistory::new(self.per_room);
            history.generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            history
        })
    }

    /// Stores a draft in `room` (the writer's work; public for tests).
    pub fn apply(&self, room: &RoomName, draft: &Draft) -> Outcome {
        let mut rooms = self.lock();
        let history = self.history(&mut rooms, room);
        if let Some((key, cid)) = draft.sender_key()
            && let Some((seq, ts)) = history.find_sent(&(key, cid.clone()))
        {
            return Outcome::Duplicate(seq, ts);
        }
        let ts = history.last_ts.max(crate::app::now_ms());
        let event = draft.clone().into_event(history.head.next(), ts);
        let sender = draft.sender_key().map(|(k, c)| (k, c.clone()));
        history.append(event.clone(), sender);
        Outcome::Stored(event)
    }
}

impl HistoryStore for MemoryStore {
    fn history_id(&self, room: &RoomName) -> String {
        let mut rooms = self.lock();
        format!("{}.{}", self.id, self.history(&mut rooms, room).generation)
    }

    fn forget(&self, room: &RoomName) {
        self.lock().remove(room);
    }

    fn keeps(&self) -> Option<usize> {
        Some(self.per_room)
    }

    fn open_room(&self, room: &RoomName, limit: usize) -> Result<(Seq, Vec<RoomEvent>), HistoryError> {
        let rooms = self.lock();
        Ok(rooms.get(room).map_or((Seq(0), Vec::new()), |h| (h.head, h.latest(limit))))
    }

    fn after(&self, room: &RoomName, after: Seq, upto: Seq, limit: usize) -> Result<Replay, HistoryError> {
        let rooms = self.lock();
        let events = rooms.get(room).map(|h| h.range(after, upto, limit)).unwrap_or_default();
        Ok(replay_of(after, upto, events))
    }

    fn before(&self, room: &RoomName, before: Seq, limit: usize) -> Result<Vec<RoomEvent>, HistoryError> {
        let rooms = self.lock();
        Ok(rooms.get(room).map(|h| h.range(Seq(0), Seq(before.0.saturating_sub(1)), limit)).unwrap_or_default())
    }
}

/// Who sent a message, for deduplicating re-sends: (name key, client id).
pub type SenderKey = (String, ClientMsgId);

/// A bounded ring of events plus an index of the senders of the kept messages.
/// Deduplication covers exactly the kept messages: the index shrinks with the ring.
#[derive(Debug)]
pub struct MemoryHistory {
    capacity: usize,
    /// Which history of its room this is (see [`MemoryStore::new`]).
    generation: u64,
    head: Seq,
    last_ts: Timestamp,
    events: VecDeque<(RoomEvent, Option<SenderKey>)>,
    sent: HashMap<SenderKey, (Seq, Timestamp)>,
}

impl MemoryHistory {
    /// An empty history keeping at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            generation: 0,
            head: Seq(0),
            last_ts: Timestamp(0),
            events: VecDeque::new(),
            sent: HashMap::new(),
        }
    }

    /// Stores the next event; `sender` is set for chat messages.
    pub fn append(&mut self, event: RoomEvent, sender: Option<SenderKey>) {
        debug_assert_eq!(event.seq(), self.head.next(), "seqs are dense");
        self.head = event.seq();
        self.last_ts = event.ts();
        if let Some(key) = &sender {
            self.sent.insert(key.clone(), (event.seq(), event.ts()));
        }
        self.events.push_back((event, sender));
        while self.events.len() > self.capacity {
            if let Some((_, Some(key))) = self.events.pop_front() {
                self.sent.remove(&key);
            }
        }
    }

    /// The latest `limit` events, oldest first.
    pub fn latest(&self, limit: usize) -> Vec<RoomEvent> {
        let skip = self.events.len().saturating_sub(limit);
        self.events.iter().skip(skip).map(|(e, _)| e.clone()).collect()
    }

    /// Kept events with `after < seq <= upto`, the latest `limit` of them.
    pub fn range(&self, after: Seq, upto: Seq, limit: usize) -> Vec<RoomEvent> {
        let in_range: Vec<&RoomEvent> =
            self.events.iter().map(|(e, _)| e).filter(|e| e.seq() > after && e.seq() <= upto).collect();
        let skip = in_range.len().saturating_sub(limit);
        in_range.into_iter().skip(skip).cloned().collect()
    }

    /// The seq and time of a message already stored from this sender with this id.
    pub fn find_sent(&self, sender: &SenderKey) -> Option<(Seq, Timestamp)> {
        self.sent.get(sender).copied()
    }
}

#[cfg(test)]
mod tests {
    use natter_shared::{Color, Notice, NoticeKind, UserName};

    use super::*;

    fn notice(seq: u64) -> RoomEvent {
        RoomEvent::Notice(Notice {
            seq: Seq(seq),
            ts: Timestamp(seq * 10),
            kind: NoticeKind::Joined,
            name: UserName::parse("a").expect("valid"),
            color: Color("#000000".into()),
        })
    }

    fn filled(capacity: usize, events: u64) -> MemoryHistory {
        let mut h = MemoryHistory::new(capacity);
        for seq in 1..=events {
            h.append(notice(seq), None);
        }
        h
    }

    fn seqs(events: &[RoomEvent]) -> Vec<u64> {
        events.iter().map(|e| e.seq().0).collect()
    }

    #[test]
    fn keeps_only_the_latest_events() {
        let h = filled(3, 5);
        assert_eq!(h.head, Seq(5));
        assert_eq!(seqs(&h.latest(10)), vec![3, 4, 5]);
        assert_eq!(seqs(&h.latest(2)), vec![4, 5]);
    }

    #[test]
    fn ranges_and_replays_count_what_is_missing() {
        let h = filled(3, 10);
        // Wants 3..=10 (8 events); keeps 8, 9, 10.
        let r = replay_of(Seq(2), Seq(10), h.range(Seq(2), Seq(10), 100));
        assert_eq!(seqs(&r.events), vec![8, 9, 10]);
        assert_eq!(r.missed, 5);
        let capped = replay_of(Seq(2), Seq(10), h.range(Seq(2), Seq(10), 2));
        assert_eq!(seqs(&capped.events), vec![9, 10]);
        assert_eq!(capped.missed, 6);
        assert_eq!(replay_of(Seq(10), Seq(10), h.range(Seq(10), Seq(10), 5)), Replay::default());
        // Up to a head below the stored one (events not yet reported to the room).
        assert_eq!(seqs(&h.range(Seq(0), Seq(9), 100)), vec![8, 9]);
    }

    #[test]
    fn senders_are_found_while_their_message_is_kept() {
        let mut h = MemoryHistory::new(2);
        let key: SenderKey = ("ada".into(), ClientMsgId::parse("c1").expect("valid"));
        h.append(notice(1), Some(key.clone()));
        assert_eq!(h.find_sent(&key), Some((Seq(1), Timestamp(10))));
        h.append(notice(2), None);
        assert_eq!(h.find_sent(&key), Some((Seq(1), Timestamp(10))));
        h.append(notice(3), None);
        assert_eq!(h.find_sent(&key), None, "forgotten with its event");
    }

    #[test]
    fn the_sequencer_keeps_seqs_dense_and_times_monotonic() {
        let room = RoomName::default();
        let mut s = Sequencer::default();
        let (seq, ts) = s.peek(&room, || (Seq(41), Timestamp(90)), Timestamp(100));
        assert_eq!((seq, ts), (Seq(42), Timestamp(100)));
        s.take(&room, seq, ts);
        // The wall clock stepped back: the time does not.
        assert_eq!(s.peek(&room, || unreachable!(), Timestamp(50)), (Seq(43), Timestamp(100)));
        // After a failed transaction the stored head counts again.
        s.forget([&room]);
        assert_eq!(s.peek(&room, || (Seq(42), Timestamp(100)), Timestamp(7)), (Seq(43), Timestamp(100)));
    }
}
