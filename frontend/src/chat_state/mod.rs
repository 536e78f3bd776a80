//! The chat as the page shows it, as a plain type: no DOM and no signals.
//!
//! The socket client feeds [`ChatState`] server messages and the components
//! render it. It keeps members (a big room's a page at a time), typing and
//! unread counting itself, and holds
//! the `timeline` (the events by seq, deduplicated, with gaps) and the
//! `outbox` (the user's own messages until acknowledged). Native unit tests
//! cover each part.

mod outbox;
mod timeline;

use natter_shared::{
    ChatMessage, ClientMsgId, Color, HistoryPage, Member, MembersPage, Notice, NoticeKind, Presence, ResumeToken,
    RoomEvent, RoomName, Say, Seq, ServerMsg, Timestamp, UserName, ValidationError, Welcome, limits::TYPING_TTL_MS,
};

pub use outbox::{Pending, SendStatus};
pub use timeline::{Entry, Line, MAX_ENTRIES};

use crate::name_key::{name_key, text_key};
use outbox::Outbox;
use timeline::Timeline;

/// The whole client-side chat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatState {
    pub room: Option<RoomName>,
    pub me: Option<Member>,
    /// The members known by name, by key: all of them when
    /// `members_complete`, else the first pages (a big room's welcome
    /// carries one; more come on request).
    pub members: Vec<Member>,
    /// How many members the room has (the server's count).
    member_count: u32,
    /// `members` lists every member.
    members_complete: bool,
    /// A page of members was asked for and has not arrived.
    loading_members: bool,
    pub resume_token: Option<ResumeToken>,
    /// The server history the seqs belong to.
    pub history_id: Option<String>,
    timeline: Timeline,
    outbox: Outbox,
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
        Self { outbox: Outbox::reloaded(pending), ..Self::default() }
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
            ServerMsg::Message(m) => self.event(RoomEvent::Message(m), true),
            ServerMsg::Notice(n) => self.event(RoomEvent::Notice(n), true),
            ServerMsg::Notices(batch) => {
                for n in batch.notices {
                    self.event(RoomEvent::Notice(n), true);
                }
            }
            ServerMsg::Typing(t) => self.set_typing(t.name, t.active, now_ms),
            ServerMsg::Error(e) => {
                match e.cid {
                    Some(cid) => self.outbox.refused(&cid, e.code, &e.message),
                    // A refused history or members page (storage trouble, rate
                    // limit; the error does not say which): allow asking again.
                    None => {
                        self.older_request_failed();
                        self.loading_members = false;
                    }
                }
            }
            ServerMsg::History(page) => self.older(page),
            ServerMsg::Presence(p) => self.presence(p, now_ms),
            ServerMsg::Members(page) => self.members_page(page),
            ServerMsg::Pong => {}
        }
    }

    fn welcome(&mut self, w: Welcome) {
        if self.room.as_ref().is_some_and(|r| *r != w.room) {
            // Another room: its own list.
            self.timeline.clear();
            self.last_seq = None;
        } else if self.history_id.as_ref().is_some_and(|h| *h != w.history_id) {
            // The server's history started afresh.
            self.timeline.restart();
            self.last_seq = None;
        }
        self.history_id = Some(w.history_id);
        self.loading_older = false;
        self.loading_members = false;
        self.room = Some(w.room);
        self.me = Some(w.you);
        // The members as of `seq_head`: the history's notices are in it.
        self.members_complete = w.members.len() == w.member_count as usize;
        self.members = w.members;
        self.member_count = w.member_count;
        self.resume_token = Some(w.resume_token);
        self.typing.clear();
        if let Some(missed) = w.missed.filter(|m| *m > 0) {
            let before = w.history.first().map_or(w.seq_head.next(), RoomEvent::seq);
            self.timeline.add_gap(before, missed);
        }
        for event in w.history {
            self.event(event, false);
        }
        self.last_seq = Some(self.last_seq.map_or(w.seq_head, |l| l.max(w.seq_head)));
        // Whatever was in flight is sent again; the server deduplicates.
        self.outbox.resend_in_flight();
    }

    /// A live event (`live`) or one of a welcome's history: what it
    /// changes, then its line. The welcome's members already reflect the
    /// notices of its history.
    fn event(&mut self, event: RoomEvent, live: bool) {
        let mine = match &event {
            RoomEvent::Message(m) => self.message(m),
            RoomEvent::Notice(n) => {
                if live {
                    self.notice(n);
                }
                false
            }
        };
        self.insert(Entry::from_event(event, mine));
    }

    fn seen(&mut self, seq: Seq) {
        self.last_seq = Some(self.last_seq.map_or(seq, |l| l.max(seq)));
    }

    fn insert(&mut self, entry: Entry) {
        self.seen(entry.seq());
        self.timeline.insert(entry);
    }

    /// What a message changes besides its line; returns whether the user wrote it.
    fn message(&mut self, m: &ChatMessage) -> bool {
        let mine = self.is_me(&m.name);
        if mine {
            // Our own message, e.g. replayed after a lost ack: it is stored.
            if let Some(cid) = &m.cid {
                self.outbox.remove(cid.as_str());
            }
        } else if !self.timeline.contains(m.seq) && self.hidden {
            self.unread += 1;
        }
        let key = name_key(&m.name);
        self.typing.retain(|(n, _)| name_key(n) != key);
        mine
    }

    /// What a notice changes besides its line: members and typing, once.
    fn notice(&mut self, n: &Notice) {
        if !self.timeline.contains(n.seq) {
            self.change_member(&n.name, (n.kind == NoticeKind::Joined).then_some(&n.color));
        }
    }

    /// Applies a join (with the member's colour) or a leave to the list,
    /// the count and typing. The list stays in key order, as the server
    /// sends it (by insertion: a sort function would add ~3 KB to the
    /// bundle). The count moves only when the list does, as a notice may
    /// name a change the welcome's snapshot already holds; past the last
    /// member listed in an incomplete list nobody is listed (a later page
    /// brings them) and the count moves blindly, except for the user, whom
    /// the welcome counted.
    fn change_member(&mut self, name: &UserName, joined: Option<&Color>) {
        let key = name_key(name);
        if joined.is_none() {
            self.typing.retain(|(t, _)| name_key(t) != key);
        }
        let at = self.members.partition_point(|m| name_key(&m.name) < key);
        let listed = self.members.get(at).is_some_and(|m| name_key(&m.name) == key);
        let changed = match joined {
            _ if !self.members_complete && at == self.members.len() => !self.is_me(name),
            Some(color) if !listed => {
                self.members.insert(at, Member { name: name.clone(), color: color.clone() });
                true
            }
            None if listed => {
                self.members.remove(at);
                true
            }
            _ => false,
        };
        if changed {
            self.member_count = if joined.is_some() {
                self.member_count.saturating_add(1)
            } else {
                self.member_count.saturating_sub(1)
            };
        }
    }

    /// A big room's batch of joins and leaves: members, count, and a line
    /// per kind of change, leaves first (a name in both came back).
    fn presence(&mut self, p: Presence, now_ms: f64) {
        let complete = p.is_complete();
        let after = self.last_seq.unwrap_or_default();
        let changes = [
            (NoticeKind::Left, p.left, p.more_left),
            (NoticeKind::TimedOut, p.timed_out, p.more_timed_out),
            (NoticeKind::Joined, p.joined, p.more_joined),
        ];
        for (kind, who, more) in changes {
            if who.is_empty() && more == 0 {
                continue;
            }
            for m in &who {
                self.change_member(&m.name, (kind == NoticeKind::Joined).then_some(&m.color));
            }
            self.timeline.insert_presence(after, Timestamp(now_ms as u64), kind, who, more);
        }
        self.member_count = p.count;
        // Changes not named may have been anyone's: only the count can vouch.
        self.members_complete &= complete || self.members.len() == p.count as usize;
    }

    /// A page of members: it replaces what is listed after its cursor, up
    /// to its last member (to the end when it is the last page).
    fn members_page(&mut self, page: MembersPage) {
        self.loading_members = false;
        let from = page.after.as_deref().map_or(0, |after| {
            let after = text_key(after);
            self.members.partition_point(|m| name_key(&m.name) <= after)
        });
        let to = match page.members.last() {
            _ if page.complete => self.members.len(),
            Some(last) => {
                let last = name_key(&last.name);
                self.members.partition_point(|m| name_key(&m.name) <= last)
            }
            None => from,
        };
        let mut rest = self.members.split_off(to.max(from));
        self.members.truncate(from);
        self.members.extend(page.members);
        self.members.append(&mut rest);
        self.member_count = page.count;
        self.members_complete = page.complete;
    }

    /// The name to ask the next page of members after (`None`: the first),
    /// if the list is incomplete and no page is being fetched; marks the
    /// fetch as under way.
    pub fn begin_members(&mut self) -> Option<Option<String>> {
        if !self.can_load_members() {
            return None;
        }
        self.loading_members = true;
        Some(self.members.last().map(|m| m.name.to_string()))
    }

    /// The fetch [`begin_members`](Self::begin_members) started could not be
    /// sent: members may be asked for again.
    pub fn members_request_failed(&mut self) {
        self.loading_members = false;
    }

    /// Whether asking for more members makes sense now.
    pub fn can_load_members(&self) -> bool {
        !self.members_complete && !self.loading_members
    }

    /// How many members are not listed, if the list is incomplete.
    pub fn members_left_out(&self) -> Option<u32> {
        (!self.members_complete).then(|| self.member_count.saturating_sub(self.members.len() as u32))
    }

    fn ack(&mut self, cid: &ClientMsgId, seq: Seq, ts: Timestamp) {
        let Some(p) = self.outbox.acked(cid.as_str()) else {
            return;
        };
        if let Some(me) = self.me.clone() {
            self.insert(Entry::Message { seq, ts, name: me.name, color: me.color, text: p.text, mine: true });
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
    fn older(&mut self, page: HistoryPage) {
        self.loading_older = false;
        self.older_complete |= page.complete;
        let my_key = self.my_key();
        for event in page.events {
            let mine =
                matches!(&event, RoomEvent::Message(m) if my_key.as_ref().is_some_and(|k| *k == name_key(&m.name)));
            self.timeline.insert_older(Entry::from_event(event, mine));
        }
        self.timeline.close_filled_gaps();
    }

    /// The seq to ask older events before, if there may be any and none are
    /// being fetched; marks the fetch as under way.
    pub fn begin_older(&mut self) -> Option<Seq> {
        let oldest = self.timeline.first_seq()?;
        if self.older_complete || self.loading_older || oldest <= Seq(1) {
            return None;
        }
        self.loading_older = true;
        Some(oldest)
    }

    /// The fetch [`begin_older`](Self::begin_older) started failed or could
    /// not be sent: older events may be asked for again.
    pub fn older_request_failed(&mut self) {
        self.loading_older = false;
    }

    /// Whether "load older messages" makes sense now.
    pub fn can_load_older(&self) -> bool {
        !self.older_complete && !self.loading_older && self.timeline.first_seq().is_some_and(|s| s > Seq(1))
    }

    /// Adds a message to the outbox. The text is checked with the protocol's rules.
    pub fn queue(&mut self, cid: String, text: &str) -> Result<(), ValidationError> {
        self.outbox.queue(cid, text)
    }

    /// Marks waiting messages as sending, oldest first, so that at most
    /// `window` are unacknowledged at once, and returns them. Sending more as
    /// acks arrive keeps a long outbox within the server's rate limit.
    pub fn take_outgoing(&mut self, window: usize) -> Vec<Say> {
        self.outbox.take_outgoing(window, self.last_seq.unwrap_or_default())
    }

    /// The connection dropped: anything not acknowledged is sent again later.
    pub fn disconnected(&mut self) {
        self.outbox.resend_in_flight();
        self.typing.clear();
    }

    /// Sends a failed message again.
    pub fn retry(&mut self, cid: &str) {
        self.outbox.retry(cid);
    }

    /// Drops a message from the outbox.
    pub fn discard(&mut self, cid: &str) {
        self.outbox.remove(cid);
    }

    /// The outbox, oldest first (to persist it).
    pub fn pending(&self) -> &[Pending] {
        self.outbox.pending()
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
        self.timeline.lines(self.outbox.pending())
    }

    /// The document title: `(3) #lobby — Natter` while messages are unread.
    pub fn title(&self) -> String {
        let room = self.room.as_ref().map_or_else(String::new, |r| format!("#{r} — "));
        if self.unread > 0 { format!("({}) {room}Natter", self.unread) } else { format!("{room}Natter") }
    }

    /// Number of members in the room, listed or not.
    pub fn member_count(&self) -> usize {
        self.member_count as usize
    }
}

#[cfg(test)]
mod tests {
    use natter_shared::{Ack, Color, ErrorCode, MessageText, TypingUpdate};

    use super::*;

    // Builders shared with the tests of `timeline` and `outbox`.

    fn name(s: &str) -> UserName {
        UserName::parse(s).expect("valid")
    }

    fn member(s: &str) -> Member {
        Member { name: name(s), color: Color("#123456".into()) }
    }

    pub(super) fn welcome(head: u64, history: Vec<RoomEvent>, missed: Option<u64>) -> ServerMsg {
        welcome_of("h1", head, history, missed)
    }

    pub(super) fn welcome_of(id: &str, head: u64, history: Vec<RoomEvent>, missed: Option<u64>) -> ServerMsg {
        ServerMsg::Welcome(Welcome {
            you: member("Me"),
            room: RoomName::default(),
            seq_head: Seq(head),
            members: vec![member("Bob"), member("Me")],
            member_count: 2,
            history,
            resume_token: ResumeToken::parse("tok").expect("valid"),
            history_id: id.into(),
            missed,
        })
    }

    pub(super) fn msg(seq: u64, from: &str, text: &str, cid: Option<&str>) -> ChatMessage {
        ChatMessage {
            seq: Seq(seq),
            ts: Timestamp(seq * 1000),
            name: name(from),
            color: Color("#123456".into()),
            text: MessageText::parse(text).expect("valid"),
            cid: cid.map(|c| ClientMsgId::parse(c).expect("valid")),
        }
    }

    pub(super) fn notice(seq: u64, kind: NoticeKind, who: &str) -> Notice {
        Notice { seq: Seq(seq), ts: Timestamp(seq), kind, name: name(who), color: Color("#123456".into()) }
    }

    /// A welcome to a big room: `members` listed, `count` in all.
    pub(super) fn big_welcome(members: &[&str], count: u32) -> ServerMsg {
        let ServerMsg::Welcome(mut w) = welcome(1, vec![], None) else { unreachable!("welcome() builds a welcome") };
        w.members = members.iter().map(|m| member(m)).collect();
        w.member_count = count;
        ServerMsg::Welcome(w)
    }

    pub(super) fn presence(count: u32, joined: &[&str], left: &[&str], more_joined: u32) -> ServerMsg {
        ServerMsg::Presence(Presence {
            count,
            joined: joined.iter().map(|m| member(m)).collect(),
            left: left.iter().map(|m| member(m)).collect(),
            more_joined,
            ..Presence::default()
        })
    }

    fn page(after: Option<&str>, members: &[&str], complete: bool, count: u32) -> ServerMsg {
        ServerMsg::Members(MembersPage {
            after: after.map(str::to_owned),
            members: members.iter().map(|m| member(m)).collect(),
            complete,
            count,
        })
    }

    fn names(s: &ChatState) -> Vec<String> {
        s.members.iter().map(|m| m.name.to_string()).collect()
    }

    pub(super) fn seqs(state: &ChatState) -> Vec<u64> {
        let event_seq = |l: &Line| match l {
            Line::Event(Entry::Presence { .. }, _) => None,
            Line::Event(e, _) => Some(e.seq().0),
            _ => None,
        };
        state.lines().iter().filter_map(event_seq).collect()
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

    #[test]
    fn a_failed_older_request_can_be_made_again() {
        let mut s = ChatState::default();
        s.apply(welcome(10, vec![RoomEvent::Message(msg(9, "Bob", "a", None))], Some(3)), 0.0);
        let idle = s.clone();
        assert_eq!(s.begin_older(), Some(Seq(9)));
        assert!(!s.can_load_older());
        s.older_request_failed();
        assert_eq!(s, idle, "only the fetch is forgotten: no line, no other change");
        assert!(s.can_load_older());
        // A history request the server refused (no cid) does the same.
        assert_eq!(s.begin_older(), Some(Seq(9)));
        s.apply(ServerMsg::error(ErrorCode::StorageUnavailable, "try later"), 0.0);
        assert_eq!(s, idle);
    }

    #[test]
    fn notices_already_in_the_welcome_change_nothing() {
        let mut s = ChatState::default();
        // Bob left and came back: the welcome's history holds his old leave,
        // its member list the room as it is now.
        let history = vec![RoomEvent::Notice(notice(1, NoticeKind::Left, "Bob"))];
        s.apply(welcome(1, history, None), 0.0);
        assert_eq!(names(&s), ["Bob", "Me"]);
        // The user's own join, stored after the welcome, counts once.
        s.apply(ServerMsg::Notice(notice(2, NoticeKind::Joined, "Me")), 0.0);
        assert_eq!(s.member_count(), 2);
        // So does a leave the welcome already left out.
        s.apply(ServerMsg::Notice(notice(3, NoticeKind::Left, "Zed")), 0.0);
        assert_eq!(s.member_count(), 2);
    }

    #[test]
    fn a_big_welcome_counts_more_than_it_lists() {
        let mut s = ChatState::default();
        s.apply(big_welcome(&["Ada", "Me"], 120), 0.0);
        assert_eq!(s.member_count(), 120);
        assert_eq!(s.members_left_out(), Some(118));
        assert!(s.can_load_members());
        // A small room's welcome lists everyone.
        s.apply(welcome(1, vec![], None), 0.0);
        assert_eq!(s.members_left_out(), None);
        assert!(!s.can_load_members());
        assert_eq!(s.begin_members(), None);
    }

    #[test]
    fn presence_updates_members_count_and_typing() {
        let mut s = ChatState::default();
        s.apply(welcome(1, vec![], None), 0.0);
        s.apply(ServerMsg::Typing(TypingUpdate { name: name("Bob"), active: true }), 0.0);
        // Bob left and came back, Cy left for good: leaves go first.
        let p = Presence {
            count: 4,
            joined: vec![member("Zoe"), member("bob"), member("Al")],
            left: vec![member("Bob")],
            timed_out: vec![member("Cy")],
            ..Presence::default()
        };
        s.apply(ServerMsg::Presence(p), 0.0);
        assert_eq!(names(&s), ["Al", "bob", "Me", "Zoe"]);
        assert_eq!(s.member_count(), 4);
        assert!(s.typing_names(0.0).is_empty(), "a leaver's typing goes");
        assert_eq!(s.members_left_out(), None, "every change named: still complete");
    }

    #[test]
    fn unnamed_changes_make_the_list_incomplete_unless_the_count_agrees() {
        let mut s = ChatState::default();
        s.apply(welcome(1, vec![], None), 0.0);
        s.apply(presence(14, &["Ada"], &[], 11), 0.0);
        assert_eq!(names(&s), ["Ada", "Bob", "Me"]);
        assert_eq!(s.members_left_out(), Some(11));
        let mut t = ChatState::default();
        t.apply(welcome(1, vec![], None), 0.0);
        t.apply(presence(3, &["Ada"], &[], 0), 0.0);
        let with_others = Presence { count: 3, more_joined: 2, more_left: 2, ..Presence::default() };
        t.apply(ServerMsg::Presence(with_others), 0.0);
        assert_eq!(t.members_left_out(), None, "as many listed as counted");
    }

    #[test]
    fn an_incomplete_list_takes_joins_only_before_its_last_name() {
        let mut s = ChatState::default();
        s.apply(big_welcome(&["Bob", "Dan", "Me"], 200), 0.0);
        s.apply(presence(203, &["Al", "Cy", "Zed"], &["dan"], 0), 0.0);
        assert_eq!(names(&s), ["Al", "Bob", "Cy", "Me"], "Zed comes with a later page");
        assert_eq!(s.member_count(), 203);
        // Notices past the last name count blindly.
        s.apply(ServerMsg::Notice(notice(2, NoticeKind::Joined, "Zak")), 0.0);
        assert_eq!(s.member_count(), 204);
        s.apply(ServerMsg::Notice(notice(3, NoticeKind::Joined, "Bo")), 0.0);
        assert_eq!((s.member_count(), s.members.len()), (205, 5));
    }

    #[test]
    fn members_pages_continue_after_the_last_name_one_at_a_time() {
        let mut s = ChatState::default();
        s.apply(big_welcome(&["Ada", "Me"], 5), 0.0);
        assert_eq!(s.begin_members(), Some(Some("Me".into())));
        assert_eq!(s.begin_members(), None, "one request at a time");
        assert!(!s.can_load_members());
        s.apply(page(Some("Me"), &["Ned", "Ola"], false, 5), 0.0);
        assert_eq!(names(&s), ["Ada", "Me", "Ned", "Ola"]);
        assert_eq!(s.members_left_out(), Some(1));
        assert_eq!(s.begin_members(), Some(Some("Ola".into())));
        // A refused request (no cid) or one that could not be sent can be made again.
        s.apply(ServerMsg::error(ErrorCode::RateLimited, "slow down"), 0.0);
        assert_eq!(s.begin_members(), Some(Some("Ola".into())));
        s.members_request_failed();
        assert_eq!(s.begin_members(), Some(Some("Ola".into())));
        s.apply(page(Some("Ola"), &["Pam"], true, 5), 0.0);
        assert_eq!(names(&s), ["Ada", "Me", "Ned", "Ola", "Pam"]);
        assert_eq!(s.members_left_out(), None);
        assert_eq!(s.begin_members(), None, "complete");
        // A reconnect forgets a request in flight and starts from the welcome's page.
        let mut t = ChatState::default();
        t.apply(big_welcome(&["Ada", "Me"], 5), 0.0);
        assert!(t.begin_members().is_some());
        t.apply(big_welcome(&["Ada", "Me"], 5), 0.0);
        assert!(t.can_load_members());
    }

    #[test]
    fn a_members_page_replaces_its_range_once_by_key() {
        let mut s = ChatState::default();
        s.apply(big_welcome(&["Ada", "Me"], 6), 0.0);
        // While the page was under way, Ada left and Cy (before "Me") joined.
        s.apply(presence(6, &["Cy"], &["Ada"], 0), 0.0);
        // The page lists Cy too (as "cy": another visit) and "Me" again.
        s.apply(page(Some("Ada"), &["cy", "Me", "Ned", "Ola"], false, 6), 0.0);
        assert_eq!(names(&s), ["cy", "Me", "Ned", "Ola"], "one per key");
        // A members page in another case of the cursor.
        s.apply(page(Some("OLA"), &["Pat", "Quy"], true, 6), 0.0);
        assert_eq!(names(&s), ["cy", "Me", "Ned", "Ola", "Pat", "Quy"]);
        // A last page drops members listed after its cursor that it does not hold.
        s.apply(page(Some("Ola"), &["Quy"], true, 5), 0.0);
        assert_eq!(names(&s), ["cy", "Me", "Ned", "Ola", "Quy"]);
        assert_eq!(s.member_count(), 5);
        // A first page (no cursor) replaces from the start.
        s.apply(page(None, &["Abe", "cy"], false, 7), 0.0);
        assert_eq!(names(&s), ["Abe", "cy", "Me", "Ned", "Ola", "Quy"]);
    }

    #[test]
    fn presence_lines_follow_the_latest_seq() {
        let mut s = ChatState::default();
        s.apply(welcome(2, vec![RoomEvent::Message(msg(2, "Bob", "hi", None))], None), 0.0);
        let p = Presence {
            count: 3,
            joined: vec![member("Ada")],
            left: vec![member("Bob")],
            more_left: 2,
            ..Presence::default()
        };
        s.apply(ServerMsg::Presence(p), 5_000.0);
        s.apply(ServerMsg::Message(msg(3, "Ada", "hello", None)), 0.0);
        s.apply(presence(3, &[], &[], 4), 6_000.0);
        let keys: Vec<String> = s.lines().iter().map(Line::key).collect();
        assert_eq!(keys, ["e0-2", "e0-2.1", "e0-2.2", "e0-3", "e0-3.3"]);
        let Line::Event(Entry::Presence { kind, who, more, ts, .. }, _) = &s.lines()[1] else {
            panic!("a presence line")
        };
        assert_eq!((*kind, who.len(), *more, *ts), (NoticeKind::Left, 1, 2, Timestamp(5_000)));
        assert!(matches!(&s.lines()[2], Line::Event(Entry::Presence { kind: NoticeKind::Joined, .. }, _)));
        assert_eq!(s.last_seq, Some(Seq(3)), "presence has no seq of its own");
        // A message that arrives late still goes before the line after it.
        s.apply(ServerMsg::Message(msg(1, "Bob", "late", None)), 0.0);
        assert_eq!(seqs(&s), [1, 2, 3]);
        assert_eq!(s.lines()[1].key(), "e0-2");
    }
}
