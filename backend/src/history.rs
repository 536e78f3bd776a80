//! Room history behind a trait, so the in-memory store here can be replaced by
//! a durable one without touching rooms or sessions.
//!
//! A store opens one [`RoomHistory`] per room; the room calls it while holding
//! its own lock, which is what makes every member see events in seq order.

use std::collections::{HashMap, VecDeque};

use natter_shared::{ClientMsgId, RoomEvent, RoomName, Seq, Timestamp};

/// A history operation failed (storage errors; the memory store never fails).
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history storage is unavailable: {0}")]
    Unavailable(String),
}

/// Creates the history of each room.
pub trait HistoryStore: Send + Sync + std::fmt::Debug + 'static {
    /// Identifies this history: seqs from a history with another id are unrelated.
    fn history_id(&self) -> &str;

    /// Opens (or creates) the history of `room`.
    fn open(&self, room: &RoomName) -> Result<Box<dyn RoomHistory>, HistoryError>;
}

/// Events replayed for a resume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Oldest first.
    pub events: Vec<RoomEvent>,
    /// Events after the requested seq that are not in `events`.
    pub missed: u64,
}

/// Who sent a message, for deduplicating re-sends: (name key, client id).
pub type SenderKey = (String, ClientMsgId);

/// One room's events. Seqs are dense: the room gives every event `head + 1`.
pub trait RoomHistory: Send + std::fmt::Debug {
    /// The latest seq (0 before the first event).
    fn head(&self) -> Seq;
    /// Stores the next event; `sender` is set for chat messages.
    fn append(&mut self, event: RoomEvent, sender: Option<SenderKey>) -> Result<(), HistoryError>;
    /// The latest `limit` events, oldest first.
    fn latest(&self, limit: usize) -> Vec<RoomEvent>;
    /// The events after `after`, at most `limit` (the latest ones), and how
    /// many of the events after `after` are not included.
    fn after(&self, after: Seq, limit: usize) -> Replay;
    /// The seq and time of a message already stored from this sender with this id.
    fn find_sent(&self, sender: &SenderKey) -> Option<(Seq, Timestamp)>;
}

/// Keeps the latest events of each room in memory; forgets on restart.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    per_room: usize,
    id: String,
}

impl MemoryStore {
    /// A store keeping at most `per_room` events per room, with a new random
    /// history id (its seqs mean nothing to another process).
    pub fn new(per_room: usize) -> Self {
        let id =
            crate::random::random_hex(8).unwrap_or_else(|| format!("m{}", crate::app::now_ms().0));
        Self {
            per_room: per_room.max(1),
            id,
        }
    }
}

impl HistoryStore for MemoryStore {
    fn history_id(&self) -> &str {
        &self.id
    }

    fn open(&self, _room: &RoomName) -> Result<Box<dyn RoomHistory>, HistoryError> {
        Ok(Box::new(MemoryHistory::new(self.per_room)))
    }
}

/// A bounded ring of events plus an index of the senders of the kept messages.
/// Deduplication covers exactly the kept messages: the index shrinks with the ring.
#[derive(Debug)]
pub struct MemoryHistory {
    capacity: usize,
    head: Seq,
    events: VecDeque<(RoomEvent, Option<SenderKey>)>,
    sent: HashMap<SenderKey, (Seq, Timestamp)>,
}

impl MemoryHistory {
    /// An empty history keeping at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            head: Seq(0),
            events: VecDeque::new(),
            sent: HashMap::new(),
        }
    }
}

impl RoomHistory for MemoryHistory {
    fn head(&self) -> Seq {
        self.head
    }

    fn append(&mut self, event: RoomEvent, sender: Option<SenderKey>) -> Result<(), HistoryError> {
        debug_assert_eq!(event.seq(), self.head.next(), "seqs are dense");
        self.head = event.seq();
        if let Some(key) = &sender {
            self.sent.insert(key.clone(), (event.seq(), event.ts()));
        }
        self.events.push_back((event, sender));
        while self.events.len() > self.capacity {
            if let Some((_, Some(key))) = self.events.pop_front() {
                self.sent.remove(&key);
            }
        }
        Ok(())
    }

    fn latest(&self, limit: usize) -> Vec<RoomEvent> {
        let skip = self.events.len().saturating_sub(limit);
        self.events
            .iter()
            .skip(skip)
            .map(|(e, _)| e.clone())
            .collect()
    }

    fn after(&self, after: Seq, limit: usize) -> Replay {
        if after >= self.head {
            return Replay::default();
        }
        let wanted = self.head.0 - after.0;
        // Kept events are a contiguous seq range ending at head.
        let kept_after = self.events.iter().filter(|(e, _)| e.seq() > after).count();
        let take = kept_after.min(limit);
        let skip = self.events.len() - take;
        let events: Vec<RoomEvent> = self
            .events
            .iter()
            .skip(skip)
            .map(|(e, _)| e.clone())
            .collect();
        Replay {
            missed: wanted - events.len() as u64,
            events,
        }
    }

    fn find_sent(&self, sender: &SenderKey) -> Option<(Seq, Timestamp)> {
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
            h.append(notice(seq), None).expect("memory never fails");
        }
        h
    }

    fn seqs(events: &[RoomEvent]) -> Vec<u64> {
        events.iter().map(|e| e.seq().0).collect()
    }

    #[test]
    fn keeps_only_the_latest_events() {
        let h = filled(3, 5);
        assert_eq!(h.head(), Seq(5));
        assert_eq!(seqs(&h.latest(10)), vec![3, 4, 5]);
        assert_eq!(seqs(&h.latest(2)), vec![4, 5]);
    }

    #[test]
    fn after_replays_exactly_the_missing_events() {
        let h = filled(10, 6);
        assert_eq!(
            h.after(Seq(4), 100),
            Replay {
                events: vec![notice(5), notice(6)],
                missed: 0
            }
        );
        assert_eq!(h.after(Seq(6), 100), Replay::default());
        assert_eq!(h.after(Seq(0), 100).events.len(), 6);
    }

    #[test]
    fn after_beyond_the_kept_window_reports_missed() {
        let h = filled(3, 10);
        // Wants 3..=10 (8 events); keeps 8, 9, 10.
        let r = h.after(Seq(2), 100);
        assert_eq!(seqs(&r.events), vec![8, 9, 10]);
        assert_eq!(r.missed, 5);
    }

    #[test]
    fn after_caps_the_replay_at_the_limit() {
        let h = filled(100, 50);
        let r = h.after(Seq(10), 5);
        assert_eq!(seqs(&r.events), vec![46, 47, 48, 49, 50]);
        assert_eq!(r.missed, 35);
    }

    #[test]
    fn a_seq_from_the_future_replays_nothing() {
        let h = filled(10, 3);
        assert_eq!(h.after(Seq(99), 10), Replay::default());
    }

    #[test]
    fn senders_are_found_while_their_message_is_kept() {
        let mut h = MemoryHistory::new(2);
        let key: SenderKey = ("ada".into(), ClientMsgId::parse("c1").expect("valid"));
        h.append(notice(1), Some(key.clone())).expect("ok");
        assert_eq!(h.find_sent(&key), Some((Seq(1), Timestamp(10))));
        h.append(notice(2), None).expect("ok");
        assert_eq!(h.find_sent(&key), Some((Seq(1), Timestamp(10))));
        h.append(notice(3), None).expect("ok");
        assert_eq!(h.find_sent(&key), None, "forgotten with its event");
    }
}
