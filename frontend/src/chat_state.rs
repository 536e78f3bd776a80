//! The chat as the page shows it, as a plain type: events ordered by seq and
//! deduplicated, the outbox of the user's own messages, members, typing, and
//! unread counting. No DOM and no signals: the socket client feeds it server
//! messages and the components render it. Native unit tests cover it.

use std::collections::VecDeque;

use natter_shared::{
    ChatMessage, ClientMsgId, Color, ErrorCode, Member, MessageText, Notice, NoticeKind, ResumeToken, RoomEvent,
    RoomName, Seq, ServerMsg, Timestamp, UserName, ValidationError, Welcome, limits::TYPING_TTL_MS,
};
use serde::{Deserialize, Serialize};

use crate::name_key::name_key;

/// Events kept in the page; older ones are dropped so a long session stays small.
pub const MAX_ENTRIES: usize = 2000;

/// One event of the room, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Message { seq: Seq, ts: Timestamp, name: UserName, color: Color, text: String, mine: bool },
    Notice { seq: Seq, ts: Timestamp, kind: NoticeKind, name: UserName, color: Color },
}

impl Entry {
    pub fn seq(&self) -> Seq {
        match self {
            Self::Message { seq, .. } | Self::Notice { seq, .. } => *seq,
        }
    }
}

/// Where one of the user's own messages is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendStatus {
    /// Not sent yet (offline or not joined); sent when the connection is up.
    Waiting,
    /// Sent; waiting for the server's `ack`.
    Sending,
    /// Refused by the server; `retry` sends it again.
    Failed(String),
}

/// The room's events by seq, oldest first: a sorted deque (events arrive
/// mostly in order, older pages at the front), searched by binary search.
/// Not a `BTreeMap`, whose code costs the bundle ~3 KB gzipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entries(VecDeque<Entry>);

impl Entries {
    fn find(&self, seq: Seq) -> Result<usize, usize> {
        self.0.binary_search_by_key(&seq, Entry::seq)
    }

    fn contains(&self, seq: Seq) -> bool {
        self.find(seq).is_ok()
    }

    fn first_seq(&self) -> Option<Seq> {
        self.0.front().map(Entry::seq)
    }

    /// Inserts the entry, replacing one with the same seq.
    fn insert(&mut self, entry: Entry) {
        match self.find(entry.seq()) {
            Ok(i) => self.0[i] = entry,
            Err(i) => self.0.insert(i, entry),
        }
    }

    /// Inserts the entry unless one with its seq is there.
    fn insert_new(&mut self, entry: Entry) {
        if let Err(i) = self.find(entry.seq()) {
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

/// A message the user wrote that the server has not acknowledged yet.
/// Kept (with its `cid`) across reconnects and reloads, so it is sent until
/// acknowledged and shown exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub cid: String,
    pub text: String,
    pub status: SendStatus,
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
            Self::Event(e, epoch) => format!("e{epoch}-{}", e.seq()),
            Self::Restarted(epoch) => format!("r{epoch}"),
            Self::Gap { before, .. } => format!("g{before}"),
            Self::Pending(p) => format!("p{}", p.cid),
        }
    }
}

/// The whole client-side chat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatState {
    pub room: Option<RoomName>,
    pub me: Option<Member>,
    pub members: Vec<Member>,
    pub resume_token: Option<ResumeToken>,
    /// The server history the seqs belong to.
    pub history_id: Option<String>,
    /// Events of earlier histories of this room, still shown, oldest first.
    archive: Vec<(u32, Entry)>,
    /// Counts history changes; part of each line's key.
    epoch: u32,
    entries: Entries,
    /// Known holes in `entries`: (the seq after the hole, how many are
    /// missing), sorted by seq. There are a few at most, so a sorted `Vec`
    /// (a second `BTreeMap` type would add ~2 KB to the bundle).
    gaps: Vec<(Seq, u64)>,
    pending: Vec<Pending>,
    /// The latest seq received; the next `hello` resumes after it.
    pub last_seq: Option<Seq>,
    /// Who is typing, with when (ms) it expires.
    typing: Vec<(UserName, f64)>,
    hidden: bool,
    /// Messages from others that arrived while the page was hidden.
    pub unread: u32,
    /// The server has nothing older than what is shown.
    older_complete: bool,
    /// A page of older events was asked for and has not arrived.
    loading_older: bool,
}

impl ChatState {
    /// A chat whose outbox starts with `pending` (from a previous page load).
    pub fn with_outbox(pending: Vec<Pending>) -> Self {
        let pending = pending
            .into_iter()
            .map(|p| Pending {
                status: if matches!(p.status, SendStatus::Failed(_)) { p.status } else { SendStatus::Waiting },
                ..p
            })
            .collect();
        Self { pending, ..Self::default() }
    }

    fn my_key(&self) -> Option<String> {
        self.me.as_ref().map(|m| name_key(&m.name))
    }

    fn is_me(&self, name: &UserName) -> bool {
        self.my_key().is_some_and(|k| k == name_key(name))
    }

    /// Applies one server message. `now_ms` is the page's clock.
    pub fn apply(&mut self, msg: ServerMsg, now_ms: f64) {
        match msg {
            ServerMsg::Welcome(w) => self.welcome(w),
            ServerMsg::Ack(ack) => self.ack(&ack.cid, ack.seq, ack.ts),
            ServerMsg::Message(m) => self.message(m),
            ServerMsg::Notice(n) => self.notice(n),
            ServerMsg::Typing(t) => self.set_typing(t.name, t.active, now_ms),
            ServerMsg::Error(e) => {
                match e.cid {
                    Some(cid) => self.refused(&cid, e.code, &e.message),
                    // A refused history page (storage trouble): allow asking again.
                    None => self.loading_older = false,
                }
            }
            ServerMsg::History(page) => self.older(page),
            ServerMsg::Pong => {}
        }
    }

    fn welcome(&mut self, w: Welcome) {
        if self.room.as_ref().is_some_and(|r| *r != w.room) {
            // Another room: its own list.
            self.entries.clear();
            self.gaps.clear();
            self.archive.clear();
            self.last_seq = None;
        } else if self.history_id.as_ref().is_some_and(|h| *h != w.history_id) {
            // The server's history started afresh: keep what we saw above a
            // divider, and number the new events separately.
            let epoch = self.epoch;
            let old = std::mem::take(&mut self.entries);
            self.archive.extend(old.0.into_iter().map(|e| (epoch, e)));
            let excess = self.archive.len().saturating_sub(MAX_ENTRIES);
            self.archive.drain(..excess);
            self.gaps.clear();
            self.epoch += 1;
            self.last_seq = None;
        }
        self.history_id = Some(w.history_id);
        self.loading_older = false;
        self.room = Some(w.room);
        self.me = Some(w.you);
        self.members = w.members;
        self.resume_token = Some(w.resume_token);
        self.typing.clear();
        if let Some(missed) = w.missed.filter(|m| *m > 0) {
            let before = w.history.first().map_or(w.seq_head.next(), RoomEvent::seq);
            match self.gaps.binary_search_by_key(&before, |&(g, _)| g) {
                Ok(i) => self.gaps[i].1 = missed,
                Err(i) => self.gaps.insert(i, (before, missed)),
            }
        }
        for event in w.history {
            self.event(event);
        }
        self.last_seq = Some(self.last_seq.map_or(w.seq_head, |l| l.max(w.seq_head)));
        // Whatever was in flight is sent again; the server deduplicates.
        for p in &mut self.pending {
            if p.status == SendStatus::Sending {
                p.status = SendStatus::Waiting;
            }
        }
    }

    fn event(&mut self, event: RoomEvent) {
        match event {
            RoomEvent::Message(m) => self.message(m),
            RoomEvent::Notice(n) => self.notice(n),
        }
    }

    fn seen(&mut self, seq: Seq) {
        self.last_seq = Some(self.last_seq.map_or(seq, |l| l.max(seq)));
    }

    fn insert(&mut self, entry: Entry) {
        self.seen(entry.seq());
        self.entries.insert(entry);
        while self.entries.len() > MAX_ENTRIES {
            if let Some(oldest) = self.entries.pop_oldest().map(|e| e.seq()) {
                self.gaps.retain(|&(g, _)| g > oldest);
            }
        }
    }

    fn message(&mut self, m: ChatMessage) {
        let mine = self.is_me(&m.name);
        if mine {
            // Our own message, e.g. replayed after a lost ack: it is stored.
            if let Some(cid) = &m.cid {
                self.pending.retain(|p| p.cid != cid.as_str());
            }
        } else if !self.entries.contains(m.seq) && self.hidden {
            self.unread += 1;
        }
        let key = name_key(&m.name);
        self.typing.retain(|(n, _)| name_key(n) != key);
        self.insert(Entry::Message {
            seq: m.seq,
            ts: m.ts,
            name: m.name,
            color: m.color,
            text: m.text.to_string(),
            mine,
        });
    }

    fn notice(&mut self, n: Notice) {
        if !self.entries.contains(n.seq) {
            let key = name_key(&n.name);
            match n.kind {
                NoticeKind::Joined => {
                    if !self.members.iter().any(|m| name_key(&m.name) == key) {
                        // Kept sorted by key, as the server sends it (by insertion:
                        // a sort function would add ~3 KB to the bundle).
                        let at = self.members.partition_point(|m| name_key(&m.name) < key);
                        self.members.insert(at, Member { name: n.name.clone(), color: n.color.clone() });
                    }
                }
                NoticeKind::Left | NoticeKind::TimedOut => {
                    self.members.retain(|m| name_key(&m.name) != key);
                    self.typing.retain(|(t, _)| name_key(t) != key);
                }
            }
        }
        self.insert(Entry::Notice { seq: n.seq, ts: n.ts, kind: n.kind, name: n.name, color: n.color });
    }

    fn ack(&mut self, cid: &ClientMsgId, seq: Seq, ts: Timestamp) {
        let Some(index) = self.pending.iter().position(|p| p.cid == cid.as_str()) else {
            return;
        };
        let p = self.pending.remove(index);
        if let Some(me) = self.me.clone() {
            self.insert(Entry::Message { seq, ts, name: me.name, color: me.color, text: p.text, mine: true });
        }
    }

    fn refused(&mut self, cid: &str, code: ErrorCode, message: &str) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.cid == cid) {
            p.status = match code {
                // Transient: send again when possible.
                ErrorCode::RateLimited | ErrorCode::NotJoined | ErrorCode::Internal | ErrorCode::StorageUnavailable => {
                    SendStatus::Waiting
                }
                _ => SendStatus::Failed(message.to_owned()),
            };
        }
    }

    fn set_typing(&mut self, name: UserName, active: bool, now_ms: f64) {
        let key = name_key(&name);
        self.typing.retain(|(n, _)| name_key(n) != key);
        if active && !self.is_me(&name) {
            self.typing.push((name, now_ms + TYPING_TTL_MS as f64));
        }
    }

    /// Names of others typing at `now_ms`.
    pub fn typing_names(&self, now_ms: f64) -> Vec<String> {
        self.typing.iter().filter(|(_, until)| *until > now_ms).map(|(n, _)| n.to_string()).collect()
    }

    /// Whether anyone's typing indicator is held (expired or not).
    pub fn has_typing(&self) -> bool {
        !self.typing.is_empty()
    }

    /// Forgets expired typing indicators.
    pub fn expire_typing(&mut self, now_ms: f64) {
        self.typing.retain(|(_, until)| *until > now_ms);
    }

    /// Older events arrived: shown above the rest; they never change
    /// membership, unread counts or typing.
    fn older(&mut self, page: natter_shared::HistoryPage) {
        self.loading_older = false;
        self.older_complete |= page.complete;
        let my_key = self.my_key();
        for event in page.events {
            let entry = match event {
                RoomEvent::Message(m) => {
                    let mine = my_key.as_ref().is_some_and(|k| *k == name_key(&m.name));
                    Entry::Message {
                        seq: m.seq,
                        ts: m.ts,
                        name: m.name,
                        color: m.color,
                        text: m.text.to_string(),
                        mine,
                    }
                }
                RoomEvent::Notice(n) => {
                    Entry::Notice { seq: n.seq, ts: n.ts, kind: n.kind, name: n.name, color: n.color }
                }
            };
            self.entries.insert_new(entry);
        }
        // A gap whose events are now all here is closed.
        let entries = &self.entries;
        self.gaps.retain(|(before, missed)| {
            let first_missing = before.0.saturating_sub(*missed);
            !(first_missing..before.0).all(|s| entries.contains(Seq(s)))
        });
    }

    /// The seq to ask older events before, if there may be any and none are
    /// being fetched; marks the fetch as under way.
    pub fn begin_older(&mut self) -> Option<Seq> {
        let oldest = self.entries.first_seq()?;
        if self.older_complete || self.loading_older || oldest <= Seq(1) {
            return None;
        }
        self.loading_older = true;
        Some(oldest)
    }

    /// Whether "load older messages" makes sense now.
    pub fn can_load_older(&self) -> bool {
        !self.older_complete && !self.loading_older && self.entries.first_seq().is_some_and(|s| s > Seq(1))
    }

    /// Adds a message to the outbox. The text is checked with the protocol's rules.
    pub fn queue(&mut self, cid: String, text: &str) -> Result<(), ValidationError> {
        MessageText::parse(text)?;
        self.pending.push(Pending { cid, text: text.to_owned(), status: SendStatus::Waiting });
        Ok(())
    }

    /// Marks waiting messages as sending, oldest first, so that at most
    /// `window` are unacknowledged at once, and returns them. Sending more as
    /// acks arrive keeps a long outbox within the server's rate limit.
    pub fn take_outgoing(&mut self, window: usize) -> Vec<(String, String)> {
        let in_flight = self.pending.iter().filter(|p| p.status == SendStatus::Sending).count();
        self.pending
            .iter_mut()
            .filter(|p| p.status == SendStatus::Waiting)
            .take(window.saturating_sub(in_flight))
            .map(|p| {
                p.status = SendStatus::Sending;
                (p.cid.clone(), p.text.clone())
            })
            .collect()
    }

    /// The connection dropped: anything not acknowledged is sent again later.
    pub fn disconnected(&mut self) {
        for p in &mut self.pending {
            if p.status == SendStatus::Sending {
                p.status = SendStatus::Waiting;
            }
        }
        self.typing.clear();
    }

    /// Sends a failed message again.
    pub fn retry(&mut self, cid: &str) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.cid == cid) {
            p.status = SendStatus::Waiting;
        }
    }

    /// Drops a message from the outbox.
    pub fn discard(&mut self, cid: &str) {
        self.pending.retain(|p| p.cid != cid);
    }

    /// The outbox, oldest first (to persist it).
    pub fn pending(&self) -> &[Pending] {
        &self.pending
    }

    /// The page became hidden or visible; becoming visible clears the unread count.
    pub fn set_hidden(&mut self, hidden: bool) {
        self.hidden = hidden;
        if !hidden {
            self.unread = 0;
        }
    }

    /// Everything to show, oldest first: events (with gaps) then the outbox.
    pub fn lines(&self) -> Vec<Line> {
        let mut lines =
            Vec::with_capacity(self.archive.len() + self.entries.len() + self.gaps.len() + self.pending.len() + 1);
        for (epoch, entry) in &self.archive {
            lines.push(Line::Event(entry.clone(), *epoch));
        }
        if self.epoch > 0 {
            lines.push(Line::Restarted(self.epoch));
        }
        let mut gaps = self.gaps.iter().peekable();
        for entry in self.entries.iter() {
            let seq = entry.seq();
            while let Some(&(before, missed)) = gaps.next_if(|&&(g, _)| g <= seq) {
                lines.push(Line::Gap { before, missed });
            }
            lines.push(Line::Event(entry.clone(), self.epoch));
        }
        lines.extend(gaps.map(|&(before, missed)| Line::Gap { before, missed }));
        lines.extend(self.pending.iter().cloned().map(Line::Pending));
        lines
    }

    /// The document title: `(3) #lobby — Natter` while messages are unread.
    pub fn title(&self) -> String {
        let room = self.room.as_ref().map_or_else(String::new, |r| format!("#{r} — "));
        if self.unread > 0 { format!("({}) {room}Natter", self.unread) } else { format!("{room}Natter") }
    }

    /// Number of members in the room.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use natter_shared::{Ack, ErrorMsg, TypingUpdate};

    use super::*;

    fn name(s: &str) -> UserName {
        UserName::parse(s).expect("valid")
    }

    fn member(s: &str) -> Member {
        Member { name: name(s), color: Color("#123456".into()) }
    }

    fn welcome(head: u64, history: Vec<RoomEvent>, missed: Option<u64>) -> ServerMsg {
        welcome_of("h1", head, history, missed)
    }

    fn welcome_of(id: &str, head: u64, history: Vec<RoomEvent>, missed: Option<u64>) -> ServerMsg {
        ServerMsg::Welcome(Welcome {
            you: member("Me"),
            room: RoomName::default(),
            seq_head: Seq(head),
            members: vec![member("Me"), member("Bob")],
            history,
            resume_token: ResumeToken::parse("tok").expect("valid"),
            history_id: id.into(),
            missed,
        })
    }

    fn msg(seq: u64, from: &str, text: &str, cid: Option<&str>) -> ChatMessage {
        ChatMessage {
            seq: Seq(seq),
            ts: Timestamp(seq * 1000),
            name: name(from),
            color: Color("#123456".into()),
            text: MessageText::parse(text).expect("valid"),
            cid: cid.map(|c| ClientMsgId::parse(c).expect("valid")),
        }
    }

    fn notice(seq: u64, kind: NoticeKind, who: &str) -> Notice {
        Notice { seq: Seq(seq), ts: Timestamp(seq), kind, name: name(who), color: Color("#123456".into()) }
    }

    fn seqs(state: &ChatState) -> Vec<u64> {
        state.lines().iter().filter_map(|l| if let Line::Event(e, _) = l { Some(e.seq().0) } else { None }).collect()
    }

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
    fn the_outbox_goes_waiting_sending_acked() {
        let mut s = ChatState::default();
        s.queue("c1".into(), "hello").expect("valid");
        assert_eq!(s.queue("c2".into(), "  "), Err(ValidationError::MessageEmpty));
        assert!(matches!(s.lines().last(), Some(Line::Pending(p)) if p.status == SendStatus::Waiting));
        // Offline: nothing to send until joined... the client decides; here we join.
        s.apply(welcome(1, vec![], None), 0.0);
        assert_eq!(s.take_outgoing(usize::MAX), vec![("c1".to_owned(), "hello".to_owned())]);
        assert_eq!(s.take_outgoing(usize::MAX), vec![], "sent once");
        assert_eq!(s.pending()[0].status, SendStatus::Sending);
        let ack = Ack { cid: ClientMsgId::parse("c1").expect("valid"), seq: Seq(2), ts: Timestamp(5) };
        s.apply(ServerMsg::Ack(ack.clone()), 0.0);
        assert!(s.pending().is_empty());
        assert!(matches!(s.lines().last(), Some(Line::Event(Entry::Message { mine: true, seq: Seq(2), .. }, _))));
        // A second ack for the same cid changes nothing.
        s.apply(ServerMsg::Ack(ack), 0.0);
        assert_eq!(seqs(&s), vec![2]);
    }

    #[test]
    fn a_long_outbox_is_sent_a_window_at_a_time() {
        let mut s = ChatState::default();
        s.apply(welcome(1, vec![], None), 0.0);
        for i in 0..7 {
            s.queue(format!("c{i}"), "x").expect("valid");
        }
        let first: Vec<String> = s.take_outgoing(3).into_iter().map(|(c, _)| c).collect();
        assert_eq!(first, ["c0", "c1", "c2"]);
        assert!(s.take_outgoing(3).is_empty(), "the window is full");
        s.apply(
            ServerMsg::Ack(Ack { cid: ClientMsgId::parse("c0").expect("valid"), seq: Seq(2), ts: Timestamp(2) }),
            0.0,
        );
        let next: Vec<String> = s.take_outgoing(3).into_iter().map(|(c, _)| c).collect();
        assert_eq!(next, ["c3"], "one acked, one more sent, in order");
    }

    #[test]
    fn unacknowledged_messages_are_resent_after_a_reconnect() {
        let mut s = ChatState::default();
        s.apply(welcome(1, vec![], None), 0.0);
        s.queue("c1".into(), "hi").expect("valid");
        assert_eq!(s.take_outgoing(usize::MAX).len(), 1);
        s.disconnected();
        assert_eq!(s.pending()[0].status, SendStatus::Waiting);
        s.apply(welcome(1, vec![], None), 0.0);
        assert_eq!(s.take_outgoing(usize::MAX), vec![("c1".to_owned(), "hi".to_owned())]);
    }

    #[test]
    fn a_replayed_own_message_clears_the_outbox_entry_once() {
        let mut s = ChatState::default();
        s.apply(welcome(1, vec![], None), 0.0);
        s.queue("c1".into(), "hi").expect("valid");
        s.take_outgoing(usize::MAX);
        s.disconnected();
        // The ack was lost, but the replay holds the stored message.
        s.apply(welcome(2, vec![RoomEvent::Message(msg(2, "me", "hi", Some("c1")))], None), 0.0);
        assert!(s.pending().is_empty());
        assert_eq!(s.lines().len(), 1);
        assert!(matches!(&s.lines()[0], Line::Event(Entry::Message { mine: true, .. }, _)));
    }

    #[test]
    fn refusals_fail_or_requeue_the_message() {
        let mut s = ChatState::default();
        s.apply(welcome(1, vec![], None), 0.0);
        s.queue("c1".into(), "a").expect("valid");
        s.queue("c2".into(), "b").expect("valid");
        s.take_outgoing(usize::MAX);
        let refuse =
            |code, cid: &str| ServerMsg::Error(ErrorMsg { code, message: "nope".into(), cid: Some(cid.into()) });
        s.apply(refuse(ErrorCode::TooLong, "c1"), 0.0);
        s.apply(refuse(ErrorCode::RateLimited, "c2"), 0.0);
        assert_eq!(s.pending()[0].status, SendStatus::Failed("nope".into()));
        assert_eq!(s.pending()[1].status, SendStatus::Waiting);
        s.retry("c1");
        assert_eq!(s.take_outgoing(usize::MAX).len(), 2);
        s.discard("c1");
        assert_eq!(s.pending().len(), 1);
    }

    #[test]
    fn a_reloaded_outbox_is_waiting_again() {
        let saved = vec![
            Pending { cid: "a".into(), text: "x".into(), status: SendStatus::Sending },
            Pending { cid: "b".into(), text: "y".into(), status: SendStatus::Failed("too long".into()) },
        ];
        let s = ChatState::with_outbox(saved);
        assert_eq!(s.pending()[0].status, SendStatus::Waiting);
        assert!(matches!(s.pending()[1].status, SendStatus::Failed(_)));
    }

    #[test]
    fn members_follow_join_and_leave_notices() {
        let mut s = ChatState::default();
        s.apply(welcome(1, vec![], None), 0.0);
        assert_eq!(s.member_count(), 2);
        s.apply(ServerMsg::Notice(notice(2, NoticeKind::Joined, "Cat")), 0.0);
        assert_eq!(s.member_count(), 3);
        s.apply(ServerMsg::Notice(notice(3, NoticeKind::TimedOut, "bob")), 0.0);
        s.apply(ServerMsg::Notice(notice(4, NoticeKind::Left, "Cat")), 0.0);
        assert_eq!(s.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["Me"]);
        // A replayed notice does not change membership twice.
        s.apply(ServerMsg::Notice(notice(2, NoticeKind::Joined, "Cat")), 0.0);
        assert_eq!(s.member_count(), 1);
    }

    #[test]
    fn unread_counts_only_others_while_hidden() {
        let mut s = ChatState::default();
        s.apply(welcome(1, vec![], None), 0.0);
        s.apply(ServerMsg::Message(msg(2, "Bob", "seen", None)), 0.0);
        s.set_hidden(true);
        s.apply(ServerMsg::Message(msg(3, "Bob", "1", None)), 0.0);
        s.apply(ServerMsg::Message(msg(4, "Bob", "2", None)), 0.0);
        s.apply(ServerMsg::Message(msg(4, "Bob", "2", None)), 0.0);
        s.apply(ServerMsg::Notice(notice(5, NoticeKind::Joined, "Cat")), 0.0);
        s.queue("c".into(), "mine").expect("valid");
        s.take_outgoing(usize::MAX);
        s.apply(
            ServerMsg::Ack(Ack { cid: ClientMsgId::parse("c").expect("valid"), seq: Seq(6), ts: Timestamp(6) }),
            0.0,
        );
        assert_eq!(s.unread, 2);
        assert_eq!(s.title(), "(2) #lobby — Natter");
        s.set_hidden(false);
        assert_eq!(s.unread, 0);
        assert_eq!(s.title(), "#lobby — Natter");
    }

    #[test]
    fn typing_expires_and_clears_on_a_message() {
        let mut s = ChatState::default();
        s.apply(welcome(1, vec![], None), 0.0);
        s.apply(ServerMsg::Typing(TypingUpdate { name: name("Bob"), active: true }), 1000.0);
        assert_eq!(s.typing_names(1000.0), ["Bob"]);
        assert!(s.typing_names(1000.0 + TYPING_TTL_MS as f64).is_empty(), "expires by itself");
        s.apply(ServerMsg::Typing(TypingUpdate { name: name("Bob"), active: true }), 2000.0);
        s.apply(ServerMsg::Message(msg(2, "Bob", "done", None)), 2100.0);
        assert!(s.typing_names(2100.0).is_empty());
        s.apply(ServerMsg::Typing(TypingUpdate { name: name("Me"), active: true }), 0.0);
        assert!(s.typing_names(0.0).is_empty(), "never shows myself");
    }

    #[test]
    fn older_pages_go_above_without_touching_members_or_unread() {
        let mut s = ChatState::default();
        s.apply(
            welcome(
                10,
                vec![RoomEvent::Message(msg(9, "Bob", "a", None)), RoomEvent::Message(msg(10, "Bob", "b", None))],
                Some(3),
            ),
            0.0,
        );
        s.set_hidden(true);
        assert!(s.can_load_older());
        assert_eq!(s.begin_older(), Some(Seq(9)));
        assert_eq!(s.begin_older(), None, "one fetch at a time");
        assert!(!s.can_load_older());
        let page = natter_shared::HistoryPage {
            before: Seq(9),
            events: vec![
                RoomEvent::Notice(notice(6, NoticeKind::Left, "Me")),
                RoomEvent::Message(msg(7, "Cat", "x", None)),
                RoomEvent::Message(msg(8, "me", "mine", None)),
            ],
            complete: false,
        };
        s.apply(ServerMsg::History(page), 0.0);
        assert_eq!(seqs(&s), vec![6, 7, 8, 9, 10]);
        assert_eq!(s.member_count(), 2, "an old leave notice changes nothing now");
        assert_eq!(s.unread, 0);
        assert!(s.lines().iter().all(|l| !matches!(l, Line::Gap { .. })), "the gap 6..=8 is filled");
        assert!(matches!(&s.lines()[2], Line::Event(Entry::Message { mine: true, .. }, _)));
        assert_eq!(s.begin_older(), Some(Seq(6)));
        s.apply(ServerMsg::History(natter_shared::HistoryPage { before: Seq(6), events: vec![], complete: true }), 0.0);
        assert!(!s.can_load_older(), "nothing older exists");
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
    fn joined_members_are_kept_in_key_order() {
        let mut s = ChatState::default();
        let mut w = welcome(1, vec![], None);
        if let ServerMsg::Welcome(w) = &mut w {
            w.members = vec![member("ada"), member("Me")];
        }
        s.apply(w, 0.0);
        for (seq, who) in [(2, "Zed"), (3, "Carl"), (4, "bob"), (5, "BOB"), (6, "Ä")] {
            s.apply(ServerMsg::Notice(notice(seq, NoticeKind::Joined, who)), 0.0);
        }
        let names = |s: &ChatState| s.members.iter().map(|m| m.name.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&s), ["ada", "bob", "Carl", "Me", "Zed", "Ä"], "by lowercase key, one per key");
        s.apply(ServerMsg::Notice(notice(7, NoticeKind::Left, "CARL")), 0.0);
        assert_eq!(names(&s), ["ada", "bob", "Me", "Zed", "Ä"]);
    }
}
