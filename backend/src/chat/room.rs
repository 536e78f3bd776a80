//! One room: its members, its recent events, and the order of its events.
//!
//! Every change to a room happens under its lock, and every message it sends is
//! queued (never awaited) under that lock. Events get their seq from the
//! history writer; the writer hands each stored event back through
//! [`Committed::committed`] in seq order, which acknowledges and broadcasts it, so
//! all members see the same events in the same order and nothing is
//! acknowledged before it is stored. The lock is a plain mutex held for
//! microseconds and never across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use natter_shared::{
    Ack, ClientMsgId, Color, ErrorCode, ErrorMsg, HistoryPage, Member, MessageText, NoticeKind, ResumeToken, RoomEvent,
    RoomName, Seq, ServerMsg, TypingUpdate, UserName, color_for, limits::TYPING_REFRESH_MIN_MS,
};
use tokio::time::Instant;
use tracing::warn;

use super::welcome;
use crate::config::RoomLimits;
use crate::store::{Committed, Draft, HistoryError, HistoryStore, MemberId, Outcome, Replay};
use crate::ws::outbound::{CloseReason, ConnHandle, ConnId, Encoded, encode};

/// A welcome's bytes besides its members and events (the type, the joiner,
/// the room, the token and the history id), for sizing its buffer.
const WELCOME_FIXED_BYTES: usize = 256;

/// What a session holds to act as a member of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub member_id: MemberId,
    /// The name's case-insensitive key.
    pub key: String,
    pub name: UserName,
}

/// A `hello` that passed validation.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub name: UserName,
    pub resume_token: Option<ResumeToken>,
    pub last_seq: Option<Seq>,
    /// The history `last_seq` belongs to (from the client's last welcome).
    pub history_id: Option<String>,
}

/// How a join went.
#[derive(Debug, Clone)]
pub enum JoinKind {
    /// A new member: the `joined` notice to store and announce.
    Joined(Draft),
    /// The same browser took its session back with its token; nothing announced.
    Resumed,
}

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the name is taken in this room")]
    NameTaken,
    #[error("the room is full")]
    RoomFull,
    #[error(transparent)]
    Storage(#[from] HistoryError),
}

/// The membership ended (timed out) while a request was in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no longer a member of this room")]
pub struct NotMember;

#[derive(Debug)]
struct MemberEntry {
    id: MemberId,
    name: UserName,
    color: Color,
    token: ResumeToken,
    /// `None` while the member's connection is gone and the grace period runs.
    conn: Option<ConnHandle>,
    /// Changes whenever a connection attaches or detaches, so a stale grace
    /// timer can tell that the member came back.
    epoch: u64,
    typing_since: Option<Instant>,
    /// The member's JSON for welcomes, made once.
    json: Box<str>,
}

impl MemberEntry {
    fn notice(&self, kind: NoticeKind) -> Draft {
        Draft::Notice { kind, name: self.name.clone(), color: self.color.clone() }
    }
}

/// A stored event as encoded for its broadcast: welcomes and replays from
/// memory copy it instead of serializing the event again.
#[derive(Debug)]
struct RecentEvent {
    seq: Seq,
    encoded: Encoded,
}

impl From<RoomEvent> for RecentEvent {
    fn from(event: RoomEvent) -> Self {
        Self { seq: event.seq(), encoded: encode(&event.into()) }
    }
}

/// The events a resuming member missed: encoded ones from memory, or a
/// replay read from the store.
enum Replayed<'a> {
    Recent { encoded: Vec<&'a Encoded>, missed: u64 },
    Stored(Replay),
}

#[derive(Debug)]
struct RoomState {
    members: HashMap<String, MemberEntry>,
    /// The latest stored events (for welcomes and short replays).
    recent: VecDeque<RecentEvent>,
    /// The latest stored seq this room has announced.
    head: Seq,
}

/// A chat room.
#[derive(Debug)]
pub struct Room {
    pub name: RoomName,
    store: Arc<dyn HistoryStore>,
    /// The id of this room's history, fixed while the room is held.
    history_id: String,
    limits: RoomLimits,
    /// Events kept in `recent`: what a welcome shows, never more than the store keeps.
    recent_max: usize,
    state: Mutex<RoomState>,
}

impl Room {
    /// Opens a room over `store`, loading its latest events.
    pub fn open(name: RoomName, store: Arc<dyn HistoryStore>, limits: RoomLimits) -> Result<Self, HistoryError> {
        let recent_max = limits.welcome_history.min(store.keeps().unwrap_or(usize::MAX)).max(1);
        let (head, latest) = store.open_room(&name, recent_max)?;
        Ok(Self {
            history_id: store.history_id(&name),
            name,
            store,
            limits,
            recent_max,
            state: Mutex::new(RoomState {
                members: HashMap::new(),
                recent: latest.into_iter().map(RecentEvent::from).collect(),
                head,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a single step), so keep serving instead of cascading.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins (or resumes) and queues the `welcome` on `conn`. A new member's
    /// `joined` notice is returned, to be stored and announced (to everyone,
    /// the joiner included) by the writer.
    pub fn join(
        &self,
        req: JoinRequest,
        conn: &ConnHandle,
        new_member_id: MemberId,
        token: ResumeToken,
    ) -> Result<(Membership, JoinKind), JoinError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        // A seq of another history (an in-memory server that restarted)
        // means nothing here.
        let same_history = req.history_id.as_deref().is_none_or(|id| id == self.history_id);
        let resume_after = req.last_seq.filter(|_| same_history);
        let (membership, kind) = self.admit(state, req, conn, new_member_id, token)?;
        self.send_welcome(state, &membership.key, resume_after, conn)?;
        Ok((membership, kind))
    }

    /// Takes a new member in, or gives a member's session back to the browser
    /// holding its token (kicking an older connection still attached).
    fn admit(
        &self,
        state: &mut RoomState,
        req: JoinRequest,
        conn: &ConnHandle,
        new_member_id: MemberId,
        token: ResumeToken,
    ) -> Result<(Membership, JoinKind), JoinError> {
        let key = req.name.key();
        match state.members.get_mut(&key) {
            Some(existing) if req.resume_token.as_ref() == Some(&existing.token) => {
                // Take the session back; an older connection still attached is replaced.
                if let Some(old) = existing.conn.replace(conn.clone()) {
                    old.kick(CloseReason::Replaced);
                }
                existing.epoch += 1;
                existing.typing_since = None;
                let m = Membership { member_id: existing.id, key, name: existing.name.clone() };
                Ok((m, JoinKind::Resumed))
            }
            Some(_) => Err(JoinError::NameTaken),
            None => {
                if state.members.len() >= self.limits.max_members_per_room {
                    return Err(JoinError::RoomFull);
                }
                let color = color_for(&req.name);
                let json = welcome::member_json(&Member { name: req.name.clone(), color: color.clone() });
                let entry = MemberEntry {
                    id: new_member_id,
                    name: req.name.clone(),
                    color,
                    token,
                    conn: Some(conn.clone()),
                    epoch: 0,
                    typing_since: None,
                    json,
                };
                let notice = entry.notice(NoticeKind::Joined);
                state.members.insert(key.clone(), entry);
                let m = Membership { member_id: new_member_id, key, name: req.name };
                Ok((m, JoinKind::Joined(notice)))
            }
        }
    }

    /// Queues the welcome of the member under `key` on `conn`: the events
    /// after `resume_after` (a resume), or the latest ones (a fresh join, or
    /// a seq beyond the head, which means nothing here).
    fn send_welcome(
        &self,
        state: &RoomState,
        key: &str,
        resume_after: Option<Seq>,
        conn: &ConnHandle,
    ) -> Result<(), HistoryError> {
        let replay = match resume_after {
            Some(last) if last <= state.head => Some(self.replay(state, last)?),
            _ => None,
        };
        let me = &state.members[key];
        // Members in the order of their keys (the map's keys): no clones.
        let mut members: Vec<(&String, &MemberEntry)> = state.members.iter().collect();
        members.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let (history, missed) = match replay {
            Some(Replayed::Stored(stored)) => (welcome::History::Events(stored.events), stored.missed),
            Some(Replayed::Recent { encoded, missed }) => (welcome::History::Encoded(encoded), missed),
            // A fresh join: the latest events, copied from memory.
            None => {
                let encoded = state.latest_iter(self.limits.welcome_history).map(|r| &r.encoded).collect();
                (welcome::History::Encoded(encoded), 0)
            }
        };
        let size =
            WELCOME_FIXED_BYTES + members.iter().map(|(_, m)| m.json.len() + 1).sum::<usize>() + history.encoded_len();
        let parts = welcome::Parts {
            you: &me.json,
            room: &self.name,
            seq_head: state.head,
            members: members.iter().map(|(_, m)| &*m.json),
            history,
            resume_token: &me.token,
            history_id: &self.history_id,
            missed,
        };
        conn.send(&welcome::encode(parts, size));
        Ok(())
    }

    /// The events after `last` up to the announced head: from memory when
    /// recent enough, else from the store.
    fn replay<'a>(&self, state: &'a RoomState, last: Seq) -> Result<Replayed<'a>, HistoryError> {
        let covered = state.recent.front().is_some_and(|first| first.seq <= last.next()) || state.head == last;
        if covered {
            let mut encoded: Vec<&Encoded> = state.recent.iter().filter(|r| r.seq > last).map(|r| &r.encoded).collect();
            encoded.drain(..encoded.len().saturating_sub(self.limits.replay_max));
            let missed = state.head.0.saturating_sub(last.0).saturating_sub(encoded.len() as u64);
            return Ok(Replayed::Recent { encoded, missed });
        }
        Ok(Replayed::Stored(self.store.after(&self.name, last, state.head, self.limits.replay_max)?))
    }

    /// The draft of a chat message from `who`, for the writer. Stops the
    /// member's typing indicator.
    pub fn say(
        &self,
        who: &Membership,
        conn: &ConnHandle,
        cid: ClientMsgId,
        text: MessageText,
    ) -> Result<Draft, NotMember> {
        let mut guard = self.lock();
        let member = guard.members.get_mut(&who.key).filter(|m| m.id == who.member_id).ok_or(NotMember)?;
        member.typing_since = None;
        Ok(Draft::Message {
            name: member.name.clone(),
            color: member.color.clone(),
            text,
            cid,
            sender: conn.clone(),
            member: member.id,
        })
    }

    /// Tells the others that `who` started or stopped typing, dropping
    /// refreshes that come sooner than [`TYPING_REFRESH_MIN_MS`] (clients send
    /// them every [`natter_shared::limits::TYPING_REFRESH_MS`]) and repeated stops.
    pub fn typing(&self, who: &Membership, active: bool, now: Instant) -> bool {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(member) = state.members.get_mut(&who.key).filter(|m| m.id == who.member_id) else {
            return false;
        };
        let refresh = std::time::Duration::from_millis(TYPING_REFRESH_MIN_MS);
        let send = match (active, member.typing_since) {
            (true, Some(since)) => now.saturating_duration_since(since) >= refresh,
            (true, None) => true,
            (false, Some(_)) => true,
            (false, None) => false,
        };
        if !send {
            return false;
        }
        member.typing_since = active.then_some(now);
        let update = ServerMsg::Typing(TypingUpdate { name: who.name.clone(), active });
        state.broadcast(&encode(&update), Some(who.member_id));
        true
    }

    /// Ends the membership at once, if `conn` is still the member's
    /// connection (a resumed session is left alone); returns the `left` notice.
    pub fn leave(&self, who: &Membership, conn: ConnId) -> Option<Draft> {
        let mut guard = self.lock();
        let attached = guard
            .members
            .get(&who.key)
            .is_some_and(|m| m.id == who.member_id && m.conn.as_ref().is_some_and(|c| c.id == conn));
        if !attached {
            return None;
        }
        guard.members.remove(&who.key).map(|m| m.notice(NoticeKind::Left))
    }

    /// Detaches the member's connection and starts its grace period. Returns
    /// the epoch to pass to [`Room::expire`], or `None` if `conn` was not the
    /// member's connection any more.
    pub fn detach(&self, who: &Membership, conn: ConnId) -> Option<u64> {
        let mut guard = self.lock();
        let member = guard.members.get_mut(&who.key).filter(|m| m.id == who.member_id)?;
        if member.conn.as_ref().is_none_or(|c| c.id != conn) {
            return None;
        }
        member.conn = None;
        member.typing_since = None;
        member.epoch += 1;
        Some(member.epoch)
    }

    /// After the grace period: if the member is still detached since `epoch`,
    /// removes it and returns the `timed_out` notice.
    pub fn expire(&self, who: &Membership, epoch: u64) -> Option<Draft> {
        let mut guard = self.lock();
        let still_gone =
            guard.members.get(&who.key).is_some_and(|m| m.id == who.member_id && m.epoch == epoch && m.conn.is_none());
        if !still_gone {
            return None;
        }
        guard.members.remove(&who.key).map(|m| m.notice(NoticeKind::TimedOut))
    }

    /// Up to `limit` stored events before `before` (capped at the head this
    /// room has announced), oldest first.
    pub fn history(&self, before: Seq, limit: usize) -> Result<HistoryPage, HistoryError> {
        let head = self.head();
        let before_capped = before.min(head.next());
        let events = self.store.before(&self.name, before_capped, limit)?;
        let complete = events.len() < limit || events.first().is_some_and(|e| e.seq() <= Seq(1));
        Ok(HistoryPage { before, events, complete })
    }

    /// Members (attached or in their grace period).
    pub fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// The room's latest announced seq.
    pub fn head(&self) -> Seq {
        self.lock().head
    }
}

/// The writer reports here: acknowledge and broadcast what it stored.
impl Committed for Room {
    fn room_name(&self) -> &RoomName {
        &self.name
    }

    fn committed(&self, draft: Draft, outcome: Outcome) {
        let mut guard = self.lock();
        let state = &mut *guard;
        match (draft, outcome) {
            (draft, Outcome::Stored(event)) => {
                state.head = state.head.max(event.seq());
                let recent = RecentEvent::from(event.clone());
                let encoded = recent.encoded.clone();
                state.recent.push_back(recent);
                while state.recent.len() > self.recent_max {
                    state.recent.pop_front();
                }
                match draft {
                    Draft::Message { cid, sender, member, .. } => {
                        sender.send_msg(&ServerMsg::Ack(Ack { cid, seq: event.seq(), ts: event.ts() }));
                        state.broadcast(&encoded, Some(member));
                    }
                    Draft::Notice { .. } => state.broadcast(&encoded, None),
                }
            }
            (Draft::Message { cid, sender, .. }, Outcome::Duplicate(seq, ts)) => {
                sender.send_msg(&ServerMsg::Ack(Ack { cid, seq, ts }));
            }
            (Draft::Message { cid, sender, .. }, Outcome::Failed(e)) => {
                sender.send_msg(&ServerMsg::Error(ErrorMsg {
                    code: ErrorCode::StorageUnavailable,
                    message: format!("the message was not stored ({e}); it will be sent again"),
                    cid: Some(cid.to_string()),
                }));
            }
            (Draft::Notice { kind, .. }, Outcome::Failed(e)) => {
                warn!(room = %self.name, ?kind, error = %e, "notice not stored");
            }
            (Draft::Notice { .. }, Outcome::Duplicate(..)) => {}
        }
    }
}

impl RoomState {
    fn latest_iter(&self, limit: usize) -> std::iter::Skip<std::collections::vec_deque::Iter<'_, RecentEvent>> {
        let skip = self.recent.len().saturating_sub(limit);
        self.recent.iter().skip(skip)
    }

    /// Queues one shared encoded message for every attached member except `except`.
    fn broadcast(&self, encoded: &Encoded, except: Option<MemberId>) {
        for member in self.members.values() {
            if Some(member.id) == except {
                continue;
            }
            if let Some(conn) = &member.conn {
                conn.send(encoded);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::ws::outbound::{ConnReceiver, channel};

    /// A room over a memory store whose writer the test drives by hand.
    struct Fixture {
        store: Arc<MemoryStore>,
        room: Room,
    }

    impl Fixture {
        fn new() -> Self {
            Self::with_limits(RoomLimits::default())
        }

        fn with_limits(limits: RoomLimits) -> Self {
            let store = MemoryStore::new(100);
            let room = Room::open(RoomName::default(), store.clone(), limits).expect("opens");
            Self { store, room }
        }

        /// What the writer does: store, then report back.
        fn commit(&self, draft: Draft) -> Outcome {
            let outcome = self.store.apply(&self.room.name, &draft);
            self.room.committed(draft, outcome.clone());
            outcome
        }

        fn join(&self, id: u64, name: &str, tok: &str) -> (Membership, ConnHandle, ConnReceiver) {
            let (conn, mut rx) = channel(id, 64);
            let (m, kind) = self.room.join(request(name, None, None), &conn, id, token(tok)).expect("joins");
            assert!(matches!(drain(&mut rx).as_slice(), [ServerMsg::Welcome(_)]));
            let JoinKind::Joined(notice) = kind else { panic!("expected a new member") };
            self.commit(notice);
            assert!(matches!(drain(&mut rx).as_slice(), [ServerMsg::Notice(n)] if n.kind == NoticeKind::Joined));
            (m, conn, rx)
        }

        fn say(&self, who: &Membership, conn: &ConnHandle, cid: &str, text: &str) -> Outcome {
            let draft = self
                .room
                .say(who, conn, ClientMsgId::parse(cid).expect("valid"), MessageText::parse(text).expect("valid"))
                .expect("a member");
            self.commit(draft)
        }
    }

    fn token(s: &str) -> ResumeToken {
        ResumeToken::parse(s).expect("valid token")
    }

    fn request(name: &str, resume_token: Option<&str>, last_seq: Option<u64>) -> JoinRequest {
        JoinRequest {
            name: UserName::parse(name).expect("valid name"),
            resume_token: resume_token.map(token),
            last_seq: last_seq.map(Seq),
            history_id: None,
        }
    }

    /// Every message queued so far, decoded.
    fn drain(rx: &mut ConnReceiver) -> Vec<ServerMsg> {
        rx.take().encoded.iter().map(|encoded| serde_json::from_str(encoded.as_str()).expect("valid JSON")).collect()
    }

    #[test]
    fn a_join_is_announced_to_everyone_after_it_is_stored() {
        let f = Fixture::new();
        let (_, _, mut ada_rx) = f.join(1, "Ada", "t1");
        let (bob_conn, mut bob_rx) = channel(2, 64);
        let (_, kind) = f.room.join(request("Bob", None, None), &bob_conn, 2, token("t2")).expect("joins");
        match drain(&mut bob_rx).as_slice() {
            [ServerMsg::Welcome(w)] => {
                assert_eq!(w.seq_head, Seq(1), "the welcome holds only stored events");
                assert_eq!(w.members.len(), 2);
            }
            other => panic!("expected one welcome, got {other:?}"),
        }
        assert!(drain(&mut ada_rx).is_empty(), "nothing announced before it is stored");
        let JoinKind::Joined(notice) = kind else { panic!("new member") };
        f.commit(notice);
        for rx in [&mut ada_rx, &mut bob_rx] {
            assert!(
                matches!(drain(rx).as_slice(), [ServerMsg::Notice(n)] if n.kind == NoticeKind::Joined && n.seq == Seq(2))
            );
        }
    }

    #[test]
    fn a_taken_name_is_refused_whatever_its_case() {
        let f = Fixture::new();
        let _ada = f.join(1, "Ada", "t1");
        let (conn, _rx) = channel(2, 8);
        assert!(matches!(f.room.join(request("ADA", None, None), &conn, 2, token("t2")), Err(JoinError::NameTaken)));
        let wrong = f.room.join(request("ada", Some("wrong"), None), &conn, 2, token("t2"));
        assert!(matches!(wrong, Err(JoinError::NameTaken)), "a wrong token does not help");
    }

    #[test]
    fn a_full_room_refuses_new_members() {
        let f = Fixture::with_limits(RoomLimits { max_members_per_room: 1, ..RoomLimits::default() });
        let _ada = f.join(1, "Ada", "t1");
        let (conn, _rx) = channel(2, 8);
        assert!(matches!(f.room.join(request("Bob", None, None), &conn, 2, token("t2")), Err(JoinError::RoomFull)));
    }

    #[test]
    fn a_stored_message_is_acked_to_the_sender_and_delivered_to_others_once() {
        let f = Fixture::new();
        let (ada, ada_conn, mut ada_rx) = f.join(1, "Ada", "t1");
        let (_, _, mut bob_rx) = f.join(2, "Bob", "t2");
        drain(&mut ada_rx);
        assert!(matches!(f.say(&ada, &ada_conn, "c1", "hi"), Outcome::Stored(e) if e.seq() == Seq(3)));
        assert!(matches!(drain(&mut ada_rx).as_slice(), [ServerMsg::Ack(a)] if a.seq == Seq(3)));
        assert!(matches!(drain(&mut bob_rx).as_slice(), [ServerMsg::Message(m)] if m.seq == Seq(3)));
        assert!(matches!(f.say(&ada, &ada_conn, "c1", "hi"), Outcome::Duplicate(Seq(3), _)));
        assert!(matches!(drain(&mut ada_rx).as_slice(), [ServerMsg::Ack(a)] if a.seq == Seq(3)));
        assert!(drain(&mut bob_rx).is_empty());
        assert_eq!(f.room.head(), Seq(3));
    }

    #[test]
    fn a_failed_store_is_refused_to_the_sender_and_not_delivered() {
        let f = Fixture::new();
        let (ada, ada_conn, mut ada_rx) = f.join(1, "Ada", "t1");
        let (_, _, mut bob_rx) = f.join(2, "Bob", "t2");
        drain(&mut ada_rx);
        let draft = f
            .room
            .say(&ada, &ada_conn, ClientMsgId::parse("c1").expect("valid"), MessageText::parse("x").expect("valid"))
            .expect("member");
        f.room.committed(draft, Outcome::Failed(HistoryError::Unavailable("disk full".into())));
        match drain(&mut ada_rx).as_slice() {
            [ServerMsg::Error(e)] => {
                assert_eq!(e.code, ErrorCode::StorageUnavailable);
                assert_eq!(e.cid.as_deref(), Some("c1"));
            }
            other => panic!("expected storage_unavailable, got {other:?}"),
        }
        assert!(drain(&mut bob_rx).is_empty());
        assert_eq!(f.room.head(), Seq(2));
    }

    #[test]
    fn leave_returns_the_notice_only_for_the_current_connection() {
        let f = Fixture::new();
        let (ada, ada_conn, _ada_rx) = f.join(1, "Ada", "t1");
        let (_, _, mut bob_rx) = f.join(2, "Bob", "t2");
        assert!(f.room.leave(&ada, ada_conn.id + 100).is_none(), "a stale connection does nothing");
        let notice = f.room.leave(&ada, ada_conn.id).expect("left");
        assert_eq!(f.room.member_count(), 1);
        f.commit(notice);
        assert!(matches!(drain(&mut bob_rx).as_slice(), [ServerMsg::Notice(n)] if n.kind == NoticeKind::Left));
    }

    #[test]
    fn a_detached_member_times_out_unless_it_resumes() {
        let f = Fixture::new();
        let (ada, ada_conn, _ada_rx) = f.join(1, "Ada", "t1");
        let (_, _, mut bob_rx) = f.join(2, "Bob", "t2");
        let epoch = f.room.detach(&ada, ada_conn.id).expect("was attached");

        // Resume with the token: no notice, and the old timer becomes stale.
        let (new_conn, mut new_rx) = channel(3, 8);
        let (again, kind) =
            f.room.join(request("ada", Some("t1"), Some(2)), &new_conn, 99, token("unused")).expect("resumes");
        assert!(matches!(kind, JoinKind::Resumed));
        assert_eq!(again.member_id, ada.member_id);
        assert!(matches!(drain(&mut new_rx).as_slice(), [ServerMsg::Welcome(w)] if w.you.name.as_str() == "Ada"));
        assert!(f.room.expire(&ada, epoch).is_none());
        assert!(drain(&mut bob_rx).is_empty());

        // Dropped again and not back: timed out.
        let epoch = f.room.detach(&again, new_conn.id).expect("attached");
        f.commit(f.room.expire(&again, epoch).expect("expires"));
        assert!(matches!(drain(&mut bob_rx).as_slice(), [ServerMsg::Notice(n)] if n.kind == NoticeKind::TimedOut));
    }

    #[test]
    fn resuming_kicks_a_connection_that_is_still_attached() {
        let f = Fixture::new();
        let (_, old_conn, _old_rx) = f.join(1, "Ada", "t1");
        let (new_conn, _new_rx) = channel(2, 8);
        f.room.join(request("Ada", Some("t1"), None), &new_conn, 2, token("x")).expect("resumes");
        assert_eq!(old_conn.kick_reason(), Some(CloseReason::Replaced));
        assert_eq!(new_conn.kick_reason(), None);
    }

    #[test]
    fn typing_goes_to_others_with_refreshes_limited() {
        let f = Fixture::new();
        let (ada, _, mut ada_rx) = f.join(1, "Ada", "t1");
        let (_, _, mut bob_rx) = f.join(2, "Bob", "t2");
        drain(&mut ada_rx);
        let t0 = Instant::now();
        assert!(f.room.typing(&ada, true, t0));
        assert!(!f.room.typing(&ada, true, t0 + std::time::Duration::from_millis(100)));
        assert!(f.room.typing(&ada, true, t0 + std::time::Duration::from_millis(TYPING_REFRESH_MIN_MS)));
        assert!(f.room.typing(&ada, false, t0));
        assert!(!f.room.typing(&ada, false, t0));
        assert_eq!(drain(&mut bob_rx).len(), 3);
        assert!(drain(&mut ada_rx).is_empty(), "no echo to the typist");
    }

    #[test]
    fn a_welcome_is_byte_for_byte_the_json_of_the_owned_message() {
        let limits = RoomLimits { welcome_history: 3, replay_max: 2, ..RoomLimits::default() };
        let f = Fixture::with_limits(limits);
        let (ada, conn, mut rx) = f.join(1, "Zoë", "t1");
        f.join(2, "ada", "t2");
        f.join(9, "Q\"uo\\te", "t9");
        for i in 0..6 {
            f.say(&ada, &conn, &format!("c{i}"), "x \"quoted\" é");
        }
        drain(&mut rx);
        // A fresh join (recent events in place) and a replay with `missed`.
        for (id, last_seq) in [(3, None), (4, Some(3))] {
            let (other, other_rx) = channel(id, 8);
            f.room
                .join(request(&format!("u{id}"), None, last_seq), &other, id, token(&format!("t{id}")))
                .expect("joins");
            let queued = other_rx.take().encoded;
            let [welcome] = &queued.iter().collect::<Vec<_>>()[..] else { panic!("one welcome") };
            let owned: ServerMsg = serde_json::from_str(welcome.as_str()).expect("a welcome");
            let ServerMsg::Welcome(w) = &owned else { panic!("a welcome") };
            assert_eq!(w.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>()[..3], ["ada", "Q\"uo\\te", "u3"]);
            assert!(!w.history.is_empty());
            assert_eq!(w.missed.is_some(), last_seq.is_some(), "missed only on the replay");
            assert_eq!(encode(&owned).as_str(), welcome.as_str());
        }
    }

    #[test]
    fn replays_come_from_memory_or_the_store_and_respect_the_history_id() {
        let limits = RoomLimits { welcome_history: 3, ..RoomLimits::default() };
        let f = Fixture::with_limits(limits);
        let (ada, conn, mut rx) = f.join(1, "Ada", "t1");
        for i in 0..6 {
            f.say(&ada, &conn, &format!("c{i}"), "x");
        }
        drain(&mut rx);
        // head 7; memory keeps 5..=7; a replay after 2 reads the store.
        let (other, mut other_rx) = channel(2, 8);
        f.room.join(request("Bob", None, Some(2)), &other, 2, token("t2")).expect("joins");
        match drain(&mut other_rx).as_slice() {
            [ServerMsg::Welcome(w)] => {
                assert_eq!(w.history.iter().map(|e| e.seq().0).collect::<Vec<_>>(), [3, 4, 5, 6, 7])
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        let (third, mut third_rx) = channel(3, 8);
        let mut req = request("Cat", None, Some(2));
        req.history_id = Some("another".into());
        f.room.join(req, &third, 3, token("t3")).expect("joins");
        match drain(&mut third_rx).as_slice() {
            [ServerMsg::Welcome(w)] => {
                assert_eq!(w.history.len(), 3, "the latest events, not a replay after seq 2");
                assert_eq!(w.history_id, f.store.history_id(&f.room.name));
            }
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    #[test]
    fn older_pages_stop_at_the_first_event() {
        let f = Fixture::new();
        let (ada, conn, _rx) = f.join(1, "Ada", "t1");
        for i in 0..5 {
            f.say(&ada, &conn, &format!("c{i}"), "x");
        }
        let page = f.room.history(Seq(6), 3).expect("reads");
        assert_eq!(page.events.iter().map(|e| e.seq().0).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(!page.complete);
        let page = f.room.history(Seq(3), 3).expect("reads");
        assert_eq!(page.events.iter().map(|e| e.seq().0).collect::<Vec<_>>(), [1, 2]);
        assert!(page.complete);
    }
}
