//! The in-memory store (`--history memory`): a bounded ring of events per
//! room, written by a Tokio task, forgotten on restart.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use natter_shared::{ClientMsgId, RoomEvent, RoomName, Seq, Timestamp};
use tokio::sync::mpsc;

use super::writer::{WriteQueue, WriterMsg};
use super::{Draft, HistoryError, HistoryStore, Outcome, Replay, now_ms, replay_of};
use crate::metrics::Metrics;

/// Keeps the latest events of each room in memory; forgets on restart, so
/// every process gets a new random history id.
#[derive(Debug)]
pub struct MemoryStore {
    per_room: usize,
    /// This process's random id, the first part of every history id. There
    /// is no eviction here: a room's history is forgotten when the hub drops
    /// the room (`forget`), and the hub bounds how many rooms it holds.
    id: String,
    rooms: Mutex<HashMap<RoomName, MemoryHistory>>,
    /// Numbers each room history this store starts (part of its history id).
    generations: AtomicU64,
    /// Reads at once (see `store::blocking`).
    read_slots: Arc<tokio::sync::Semaphore>,
}

/// Reads of the memory store at once: they are short, but each takes a
/// blocking thread while it runs.
pub const MEMORY_READ_SLOTS: usize = 4;

impl MemoryStore {
    /// A store keeping at most `per_room` events per room, without a writer.
    /// A room's history lives while the server holds the room (the hub
    /// bounds how many it holds); a room dropped and joined again starts a
    /// new history with a new id.
    pub fn new(per_room: usize) -> Arc<Self> {
        let id = crate::random::random_hex(8).unwrap_or_else(|| format!("m{}", now_ms().0));
        Arc::new(Self {
            per_room: per_room.max(1),
            id,
            rooms: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(1),
            read_slots: Arc::new(tokio::sync::Semaphore::new(MEMORY_READ_SLOTS)),
        })
    }

    /// A store and its writer task (needs a Tokio runtime).
    pub fn start(per_room: usize, queue: usize, metrics: Arc<Metrics>) -> (Arc<Self>, WriteQueue) {
        let store = Self::new(per_room);
        let (tx, mut rx) = mpsc::channel::<WriterMsg>(queue.max(1));
        let writer = store.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                match msg {
                    WriterMsg::Write(write) => {
                        let began = std::time::Instant::now();
                        let outcome = writer.apply(write.room.room_name(), &write.draft);
                        metrics.committed(1, began.elapsed());
                        write.room.committed(write.draft, outcome);
                    }
                    WriterMsg::Probe(answer) => {
                        let _ = answer.send(Ok(()));
                    }
                    // Nothing here outlives the process: the members are not kept.
                    WriterMsg::Stop { done, .. } => {
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
            history.generation = self.generations.fetch_add(1, Ordering::Relaxed);
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
        let ts = history.last_ts.max(now_ms());
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

    fn read_slots(&self) -> Arc<tokio::sync::Semaphore> {
        self.read_slots.clone()
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

/// A memory store that runs a hook before it opens a room or reads a
/// replay, for tests of what happens while storage is being read.
#[cfg(test)]
pub struct HookedStore {
    pub inner: Arc<MemoryStore>,
    pub on_open: Box<dyn Fn() + Send + Sync>,
    pub on_after: Box<dyn Fn() -> Result<(), HistoryError> + Send + Sync>,
}

#[cfg(test)]
impl HookedStore {
    /// A store over `inner` whose hooks do nothing yet.
    pub fn over(inner: Arc<MemoryStore>) -> Self {
        Self { inner, on_open: Box::new(|| {}), on_after: Box::new(|| Ok(())) }
    }
}

#[cfg(test)]
impl std::fmt::Debug for HookedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedStore").field("inner", &self.inner).finish_non_exhaustive()
    }
}

#[cfg(test)]
impl HistoryStore for HookedStore {
    fn history_id(&self, room: &RoomName) -> String {
        self.inner.history_id(room)
    }
    fn forget(&self, room: &RoomName) {
        self.inner.forget(room);
    }
    fn keeps(&self) -> Option<usize> {
        self.inner.keeps()
    }
    fn open_room(&self, room: &RoomName, limit: usize) -> Result<(Seq, Vec<RoomEvent>), HistoryError> {
        (self.on_open)();
        self.inner.open_room(room, limit)
    }
    fn after(&self, room: &RoomName, after: Seq, upto: Seq, limit: usize) -> Result<Replay, HistoryError> {
        (self.on_after)()?;
        self.inner.after(room, after, upto, limit)
    }
    fn before(&self, room: &RoomName, before: Seq, limit: usize) -> Result<Vec<RoomEvent>, HistoryError> {
        self.inner.before(room, before, limit)
    }
    fn read_slots(&self) -> Arc<tokio::sync::Semaphore> {
        self.inner.read_slots()
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
}
