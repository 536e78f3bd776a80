//! The room's events as shown: by seq, deduplicated, bounded, with gaps and earlier histories.
//! A big room's presence lines have no seq: each stands after the latest seq
//! seen when it arrived, numbered among the lines there.

use std::collections::VecDeque;

use natter_shared::{Color, Member, NoticeKind, RoomEvent, Seq, Timestamp, UserName};

use super::outbox::Pending;

/// Events kept in the page; older ones are dropped so a long session stays small.
pub const MAX_ENTRIES: usize = 2000;

/// One event of the room, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Message {
        seq: Seq,
        ts: Timestamp,
        name: UserName,
        color: Color,
        text: String,
        mine: bool,
    },
    Notice {
        seq: Seq,
        ts: Timestamp,
        kind: NoticeKind,
        name: UserName,
        color: Color,
    },
    /// One kind of change of a `presence` frame: `who` by name and `more`
    /// counted. `seq` is the latest seen on arrival, `n` (from 1) orders it
    /// after that event; `ts` is the page's clock.
    Presence {
        seq: Seq,
        n: u32,
        ts: Timestamp,
        kind: NoticeKind,
        who: Vec<Member>,
        more: u32,
    },
}

impl Entry {
    /// The entry that shows a server event; `mine` says whether the user
    /// wrote it (only messages carry it).
    pub fn from_event(event: RoomEvent, mine: bool) -> Self {
        match event {
            RoomEvent::Message(m) => {
                Self::Message { seq: m.seq, ts: m.ts, name: m.name, color: m.color, text: m.text.to_string(), mine }
            }
            RoomEvent::Notice(n) => Self::Notice { seq: n.seq, ts: n.ts, kind: n.kind, name: n.name, color: n.color },
        }
    }

    /// The event's seq; for a presence line, the seq it stands after.
    pub fn seq(&self) -> Seq {
        match self {
            Self::Message { seq, .. } | Self::Notice { seq, .. } | Self::Presence { seq, .. } => *seq,
        }
    }

    /// Where the entry sorts: events by seq, presence lines after theirs.
    fn order(&self) -> (Seq, u32) {
        match self {
            Self::Presence { seq, n, .. } => (*seq, *n),
            _ => (self.seq(), 0),
        }
    }

    /// The first seq not before this line: gaps up to it come first.
    fn position(&self) -> Seq {
        match self {
            Self::Presence { seq, .. } => seq.next(),
            _ => self.seq(),
        }
    }
}

/// One line of the message list, with a key that stays stable across updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// An event of the history numbered `epoch` (seqs restart with each history).
    Event(Entry, u32),
    /// The server's history started afresh (an in-memory server restarted):
    /// lines above it are kept on this page only.
    Restarted(u32),
    /// Events that happened but are not shown (older than the server keeps).
    Gap {
        before: Seq,
        missed: u64,
    },
    Pending(Pending),
}

impl Line {
    /// A key unique within the list.
    pub fn key(&self) -> String {
        match self {
            Self::Event(Entry::Presence { seq, n, .. }, epoch) => format!("e{epoch}-{seq}.{n}"),
            Self::Event(e, epoch) => format!("e{epoch}-{}", e.seq()),
            Self::Restarted(epoch) => format!("r{epoch}"),
            Self::Gap { before, .. } => format!("g{before}"),
            Self::Pending(p) => format!("p{}", p.cid),
        }
    }
}

/// The room's events by seq, oldest first: a sorted deque (events arrive
/// mostly in order, older pages at the front), searched by binary search.
/// Not a `BTreeMap`, whose code costs the bundle ~3 KB gzipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entries(VecDeque<Entry>);

impl Entries {
    fn find(&self, order: (Seq, u32)) -> Result<usize, usize> {
        self.0.binary_search_by_key(&order, Entry::order)
    }

    fn contains(&self, seq: Seq) -> bool {
        self.find((seq, 0)).is_ok()
    }

    /// The oldest seq shown or known to be gone: a presence line in front
    /// means the events up to its seq are not here.
    fn first_seq(&self) -> Option<Seq> {
        self.0.front().map(Entry::position)
    }

    /// Inserts the entry, replacing one with the same seq.
    fn insert(&mut self, entry: Entry) {
        match self.find(entry.order()) {
            Ok(i) => self.0[i] = entry,
            Err(i) => self.0.insert(i, entry),
        }
    }

    /// Inserts the entry unless one with its seq is there.
    fn insert_new(&mut self, entry: Entry) {
        if let Err(i) = self.find(entry.order()) {
            self.0.insert(i, entry);
        }
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn pop_oldest(&mut self) -> Option<Entry> {
        self.0.pop_front()
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.0.iter()
    }
}

/// The events shown, with what is known to be missing between them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Timeline {
    /// Events of earlier histories of this room, still shown, oldest first.
    archive: Vec<(u32, Entry)>,
    /// Counts history changes; part of each line's key.
    epoch: u32,
    entries: Entries,
    /// Known holes in `entries`: (the seq after the hole, how many are
    /// missing), sorted by seq. There are a few at most, so a sorted `Vec`
    /// (a second `BTreeMap` type would add ~2 KB to the bundle).
    gaps: Vec<(Seq, u64)>,
    /// Presence lines so far: the `n` of the next is one more (never reset,
    /// so their keys stay unique across histories).
    presence_lines: u32,
}

impl Timeline {
    /// Forgets everything (another room).
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.gaps.clear();
        self.archive.clear();
    }

    /// The server's history started afresh: keeps what was shown above a
    /// divider, and numbers the new events separately.
    pub(super) fn restart(&mut self) {
        let epoch = self.epoch;
        let old = std::mem::take(&mut self.entries);
        self.archive.extend(old.0.into_iter().map(|e| (epoch, e)));
        let excess = self.archive.len().saturating_sub(MAX_ENTRIES);
        self.archive.drain(..excess);
        self.gaps.clear();
        self.epoch += 1;
    }

    /// Notes that `missed` events just before `before` are not shown.
    pub(super) fn add_gap(&mut self, before: Seq, missed: u64) {
        match self.gaps.binary_search_by_key(&before, |&(g, _)| g) {
            Ok(i) => self.gaps[i].1 = missed,
            Err(i) => self.gaps.insert(i, (before, missed)),
        }
    }

    pub(super) fn contains(&self, seq: Seq) -> bool {
        self.entries.contains(seq)
    }

    /// The oldest seq shown of the current history.
    pub(super) fn first_seq(&self) -> Option<Seq> {
        self.entries.first_seq()
    }

    /// Inserts the entry, replacing one with the same seq; beyond
    /// [`MAX_ENTRIES`] the oldest go, with the gaps before them.
    pub(super) fn insert(&mut self, entry: Entry) {
        self.entries.insert(entry);
        while self.entries.len() > MAX_ENTRIES {
            if let Some(oldest) = self.entries.pop_oldest().map(|e| e.position()) {
                self.gaps.retain(|&(g, _)| g > oldest);
            }
        }
    }

    /// Adds a presence line after the events up to `after` (and after the
    /// presence lines already there).
    pub(super) fn insert_presence(&mut self, after: Seq, ts: Timestamp, kind: NoticeKind, who: Vec<Member>, more: u32) {
        self.presence_lines += 1;
        self.insert(Entry::Presence { seq: after, n: self.presence_lines, ts, kind, who, more });
    }

    /// Inserts an older event unless it is there already.
    pub(super) fn insert_older(&mut self, entry: Entry) {
        self.entries.insert_new(entry);
    }

    /// Closes each gap whose events are now all here.
    pub(super) fn close_filled_gaps(&mut self) {
        let entries = &self.entries;
        self.gaps.retain(|(before, missed)| {
            let first_missing = before.0.saturating_sub(*missed);
            !(first_missing..before.0).all(|s| entries.contains(Seq(s)))
        });
    }

    /// Everything to show, oldest first: events (with gaps) then `pending`
    /// (the outbox).
    pub(super) fn lines(&self, pending: &[Pending]) -> Vec<Line> {
        let mut lines =
            Vec::with_capacity(self.archive.len() + self.entries.len() + self.gaps.len() + pending.len() + 1);
        for (epoch, entry) in &self.archive {
            lines.push(Line::Event(entry.clone(), *epoch));
        }
        if self.epoch > 0 {
            lines.push(Line::Restarted(self.epoch));
        }
        let mut gaps = self.gaps.iter().peekable();
        for entry in self.entries.iter() {
            let seq = entry.position();
            while let Some(&(before, missed)) = gaps.next_if(|&&(g, _)| g <= seq) {
                lines.push(Line::Gap { before, missed });
            }
            lines.push(Line::Event(entry.clone(), self.epoch));
        }
        lines.extend(gaps.map(|&(before, missed)| Line::Gap { before, missed }));
        lines.extend(pending.iter().cloned().map(Line::Pending));
        lines
    }
}

#[cfg(test)]
mod tests {
    use natter_shared::{RoomName, ServerMsg};

    use super::*;
    use crate::chat_state::ChatState;
    use crate::chat_state::tests::{msg, notice, presence, seqs, welcome, welcome_of};

    #[test]
    fn events_are_ordered_by_seq_and_deduplicated() {
        let mut s = ChatState::default();
        s.apply(welcome(2, vec![RoomEvent::Message(msg(2, "Bob", "b", None))], None), 0.0);
        s.apply(ServerMsg::Message(msg(4, "Bob", "four", None)), 0.0);
        s.apply(ServerMsg::Message(msg(3, "Bob", "three", None)), 0.0);
        s.apply(ServerMsg::Message(msg(3, "Bob", "three", None)), 0.0);
        assert_eq!(seqs(&s), vec![2, 3, 4]);
        assert_eq!(s.last_seq, Some(Seq(4)));
    }

    #[test]
    fn a_replay_after_reconnect_fills_in_without_duplicates() {
        let mut s = ChatState::default();
        s.apply(welcome(3, vec![RoomEvent::Message(msg(3, "Bob", "x", None))], None), 0.0);
        s.disconnected();
        // Resume: the server replays 4..=5 and the live stream continues.
        s.apply(
            welcome(
                5,
                vec![RoomEvent::Message(msg(4, "Bob", "y", None)), RoomEvent::Message(msg(5, "Bob", "z", None))],
                None,
            ),
            0.0,
        );
        s.apply(ServerMsg::Message(msg(5, "Bob", "z", None)), 0.0);
        assert_eq!(seqs(&s), vec![3, 4, 5]);
    }

    #[test]
    fn missed_events_show_as_a_gap_before_the_replay() {
        let mut s = ChatState::default();
        s.apply(
            welcome(
                10,
                vec![RoomEvent::Message(msg(9, "Bob", "a", None)), RoomEvent::Message(msg(10, "Bob", "b", None))],
                Some(7),
            ),
            0.0,
        );
        let lines = s.lines();
        assert_eq!(lines[0], Line::Gap { before: Seq(9), missed: 7 });
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].key(), "g9");
    }

    #[test]
    fn a_new_server_history_keeps_the_old_lines_above_a_divider() {
        let mut s = ChatState::default();
        let old = vec![RoomEvent::Message(msg(50, "Bob", "old", None))];
        s.apply(welcome_of("h1", 50, old, None), 0.0);
        let fresh = vec![RoomEvent::Notice(notice(1, NoticeKind::Joined, "Me"))];
        s.apply(welcome_of("h2", 1, fresh, None), 0.0);
        let keys: Vec<String> = s.lines().iter().map(Line::key).collect();
        assert_eq!(keys, ["e0-50", "r1", "e1-1"]);
        assert_eq!(s.last_seq, Some(Seq(1)));
        assert_eq!(s.history_id.as_deref(), Some("h2"));
        // The same history again is a plain resume.
        let next = vec![RoomEvent::Message(msg(2, "Bob", "new", None))];
        s.apply(welcome_of("h2", 2, next, None), 0.0);
        assert_eq!(s.lines().len(), 4);
    }

    #[test]
    fn another_room_starts_its_own_list() {
        let mut s = ChatState::default();
        s.apply(welcome(5, vec![RoomEvent::Message(msg(5, "Bob", "x", None))], None), 0.0);
        let ServerMsg::Welcome(mut other) = welcome(1, vec![], None) else {
            unreachable!("welcome() builds a welcome")
        };
        other.room = RoomName::parse("other").expect("valid");
        s.apply(ServerMsg::Welcome(other), 0.0);
        assert!(seqs(&s).is_empty());
        assert_eq!(s.last_seq, Some(Seq(1)));
    }

    #[test]
    fn the_list_stays_bounded() {
        let mut s = ChatState::default();
        s.apply(welcome(0, vec![], None), 0.0);
        for seq in 1..=(MAX_ENTRIES as u64 + 10) {
            s.apply(ServerMsg::Message(msg(seq, "Bob", "x", None)), 0.0);
        }
        let shown = seqs(&s);
        assert_eq!(shown.len(), MAX_ENTRIES);
        assert_eq!(shown[0], 11);
    }

    #[test]
    fn presence_lines_come_after_gaps_and_count_towards_the_bound() {
        let mut s = ChatState::default();
        // Nothing shown and three events missed: the line comes after the gap,
        // and older events can be asked for from before it.
        s.apply(welcome(10, vec![], Some(3)), 0.0);
        s.apply(presence(3, &["Ada"], &[], 0), 0.0);
        let keys: Vec<String> = s.lines().iter().map(Line::key).collect();
        assert_eq!(keys, ["g11", "e0-10.1"]);
        assert!(s.can_load_older());
        for seq in 11..(MAX_ENTRIES as u64 + 11) {
            s.apply(ServerMsg::Message(msg(seq, "Bob", "x", None)), 0.0);
        }
        let lines = s.lines();
        assert_eq!(lines.len(), MAX_ENTRIES, "the oldest line went, with the gap before it");
        assert_eq!(lines[0].key(), "e0-11");
    }

    #[test]
    fn presence_lines_stay_above_a_new_history_with_their_keys() {
        let mut s = ChatState::default();
        s.apply(welcome_of("h1", 5, vec![RoomEvent::Message(msg(5, "Bob", "old", None))], None), 0.0);
        s.apply(presence(3, &["Ada"], &[], 0), 0.0);
        s.apply(welcome_of("h2", 1, vec![RoomEvent::Notice(notice(1, NoticeKind::Joined, "Me"))], None), 0.0);
        s.apply(presence(4, &["Bo"], &[], 0), 0.0);
        let keys: Vec<String> = s.lines().iter().map(Line::key).collect();
        assert_eq!(keys, ["e0-5", "e0-5.1", "r1", "e1-1", "e1-1.2"]);
    }
}
