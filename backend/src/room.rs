//! One room: its members, its history and the order of its events.
//!
//! Every change to a room happens under its lock, and every frame it sends is
//! queued (never awaited) under that lock, so all members see the same events
//! in the same seq order. The lock is a plain mutex held for microseconds and
//! never across an `.await`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use natter_shared::{
    Ack, ChatMessage, ClientMsgId, Color, Member, MessageText, Notice, NoticeKind, ResumeToken,
    RoomEvent, RoomName, Seq, ServerMsg, Timestamp, TypingUpdate, UserName, Welcome, color_for,
    limits::TYPING_REFRESH_MS,
};
use tokio::time::Instant;

use crate::config::RoomLimits;
use crate::history::{HistoryError, RoomHistory, SenderKey};
use crate::outbound::{CloseReason, ConnHandle, ConnId, encode};

/// Identifies one membership (a name in a room, across resumes).
pub type MemberId = u64;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// A new member; `joined` was announced.
    Joined,
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

/// The outcome of a `say`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Said {
    /// Stored and delivered under this seq.
    New(Seq),
    /// Already stored under this seq (a re-send): acknowledged again only.
    Duplicate(Seq),
}

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
}

impl MemberEntry {
    fn wire(&self) -> Member {
        Member {
            name: self.name.clone(),
            color: self.color.clone(),
        }
    }
}

#[derive(Debug)]
struct RoomState {
    members: HashMap<String, MemberEntry>,
    history: Box<dyn RoomHistory>,
    last_ts: Timestamp,
}

/// A chat room.
#[derive(Debug)]
pub struct Room {
    pub name: RoomName,
    history_id: String,
    limits: RoomLimits,
    state: Mutex<RoomState>,
}

impl Room {
    /// An empty room over `history`.
    pub fn new(
        name: RoomName,
        history: Box<dyn RoomHistory>,
        history_id: String,
        limits: RoomLimits,
    ) -> Self {
        Self {
            name,
            history_id,
            limits,
            state: Mutex::new(RoomState {
                members: HashMap::new(),
                history,
                last_ts: Timestamp(0),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a single step), so keep serving instead of cascading.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins (or resumes) and queues the `welcome` on `conn`. A new member is
    /// announced to the others with a `joined` notice, which is also the last
    /// event of the joiner's welcome history.
    pub fn join(
        &self,
        req: JoinRequest,
        conn: &ConnHandle,
        new_member_id: MemberId,
        token: ResumeToken,
        now: Timestamp,
    ) -> Result<(Membership, JoinKind), JoinError> {
        let key = req.name.key();
        let mut guard = self.lock();
        let state = &mut *guard;

        let (membership, kind) = match state.members.get_mut(&key) {
            Some(existing) if req.resume_token.as_ref() == Some(&existing.token) => {
                // Take the session back; an older connection still attached is replaced.
                if let Some(old) = existing.conn.replace(conn.clone()) {
                    old.kick(CloseReason::Replaced);
                }
                existing.epoch += 1;
                existing.typing_since = None;
                let m = Membership {
                    member_id: existing.id,
                    key: key.clone(),
                    name: existing.name.clone(),
                };
                (m, JoinKind::Resumed)
            }
            Some(_) => return Err(JoinError::NameTaken),
            None => {
                if state.members.len() >= self.limits.max_members_per_room {
                    return Err(JoinError::RoomFull);
                }
                let color = color_for(&req.name);
                let notice = RoomEvent::Notice(Notice {
                    seq: state.history.head().next(),
                    ts: state.stamp(now),
                    kind: NoticeKind::Joined,
                    name: req.name.clone(),
                    color: color.clone(),
                });
                state.history.append(notice.clone(), None)?;
                state.broadcast(&encode(&notice.into()), None);
                state.members.insert(
                    key.clone(),
                    MemberEntry {
                        id: new_member_id,
                        name: req.name.clone(),
                        color,
                        token,
                        conn: Some(conn.clone()),
                        epoch: 0,
                        typing_since: None,
                    },
                );
                let m = Membership {
                    member_id: new_member_id,
                    key: key.clone(),
                    name: req.name,
                };
                (m, JoinKind::Joined)
            }
        };

        let same_history = req
            .history_id
            .as_deref()
            .is_none_or(|id| id == self.history_id);
        let replay = match req.last_seq {
            // A seq of another history (an in-memory server that restarted),
            // or beyond the head, means nothing here: start afresh.
            Some(last) if same_history && last <= state.history.head() => {
                state.history.after(last, self.limits.replay_max)
            }
            _ => crate::history::Replay {
                events: state.history.latest(self.limits.welcome_history),
                missed: 0,
            },
        };
        let me = &state.members[&key];
        let mut members: Vec<Member> = state.members.values().map(MemberEntry::wire).collect();
        members.sort_by_key(|m| m.name.key());
        let welcome = ServerMsg::Welcome(Welcome {
            you: me.wire(),
            room: self.name.clone(),
            seq_head: state.history.head(),
            members,
            history: replay.events,
            resume_token: me.token.clone(),
            history_id: self.history_id.clone(),
            missed: (replay.missed > 0).then_some(replay.missed),
        });
        conn.send_msg(&welcome);
        Ok((membership, kind))
    }

    /// Stores and delivers a message: `ack` to the sender, `message` to the
    /// others. A re-sent `cid` is acknowledged with its original seq only.
    pub fn say(
        &self,
        who: &Membership,
        conn: &ConnHandle,
        cid: ClientMsgId,
        text: MessageText,
        now: Timestamp,
    ) -> Result<Said, HistoryError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let sender: SenderKey = (who.key.clone(), cid);
        if let Some((seq, ts)) = state.history.find_sent(&sender) {
            conn.send_msg(&ServerMsg::Ack(Ack {
                cid: sender.1,
                seq,
                ts,
            }));
            return Ok(Said::Duplicate(seq));
        }
        let Some(member) = state
            .members
            .get_mut(&who.key)
            .filter(|m| m.id == who.member_id)
        else {
            // The membership ended (timed out) while this frame was in flight.
            return Err(HistoryError::Unavailable("membership ended".into()));
        };
        member.typing_since = None;
        let color = member.color.clone();
        let seq = state.history.head().next();
        let ts = state.stamp(now);
        let message = ChatMessage {
            seq,
            ts,
            name: who.name.clone(),
            color,
            text,
            cid: Some(sender.1.clone()),
        };
        let cid = sender.1.clone();
        state
            .history
            .append(RoomEvent::Message(message.clone()), Some(sender))?;
        conn.send_msg(&ServerMsg::Ack(Ack { cid, seq, ts }));
        state.broadcast(&encode(&ServerMsg::Message(message)), Some(who.member_id));
        Ok(Said::New(seq))
    }

    /// Tells the others that `who` started or stopped typing, dropping
    /// refreshes that come faster than [`TYPING_REFRESH_MS`] and repeated stops.
    pub fn typing(&self, who: &Membership, active: bool, now: Instant) -> bool {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(member) = state
            .members
            .get_mut(&who.key)
            .filter(|m| m.id == who.member_id)
        else {
            return false;
        };
        let refresh = std::time::Duration::from_millis(TYPING_REFRESH_MS);
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
        let update = ServerMsg::Typing(TypingUpdate {
            name: who.name.clone(),
            active,
        });
        state.broadcast(&encode(&update), Some(who.member_id));
        true
    }

    /// Ends the membership at once with a `left` notice, if `conn` is still
    /// the member's connection (a resumed session is left alone).
    pub fn leave(
        &self,
        who: &Membership,
        conn: ConnId,
        now: Timestamp,
    ) -> Result<bool, HistoryError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let attached = state.members.get(&who.key).is_some_and(|m| {
            m.id == who.member_id && m.conn.as_ref().is_some_and(|c| c.id == conn)
        });
        if !attached {
            return Ok(false);
        }
        state.remove_and_announce(&who.key, NoticeKind::Left, now)?;
        Ok(true)
    }

    /// Detaches the member's connection and starts its grace period. Returns
    /// the epoch to pass to [`Room::expire`], or `None` if `conn` was not the
    /// member's connection any more.
    pub fn detach(&self, who: &Membership, conn: ConnId) -> Option<u64> {
        let mut guard = self.lock();
        let member = guard
            .members
            .get_mut(&who.key)
            .filter(|m| m.id == who.member_id)?;
        if member.conn.as_ref().is_none_or(|c| c.id != conn) {
            return None;
        }
        member.conn = None;
        member.typing_since = None;
        member.epoch += 1;
        Some(member.epoch)
    }

    /// After the grace period: if the member is still detached since `epoch`,
    /// removes it and announces `timed_out`.
    pub fn expire(
        &self,
        who: &Membership,
        epoch: u64,
        now: Timestamp,
    ) -> Result<bool, HistoryError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let still_gone = state
            .members
            .get(&who.key)
            .is_some_and(|m| m.id == who.member_id && m.epoch == epoch && m.conn.is_none());
        if !still_gone {
            return Ok(false);
        }
        state.remove_and_announce(&who.key, NoticeKind::TimedOut, now)?;
        Ok(true)
    }

    /// Members (attached or in their grace period).
    pub fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// The room's latest seq.
    pub fn head(&self) -> Seq {
        self.lock().history.head()
    }
}

impl RoomState {
    /// A timestamp for the next event: never earlier than the previous one,
    /// even if the wall clock steps back.
    fn stamp(&mut self, now: Timestamp) -> Timestamp {
        self.last_ts = self.last_ts.max(now);
        self.last_ts
    }

    /// Queues one shared frame for every attached member except `except`.
    fn broadcast(
        &self,
        frame: &tokio_tungstenite::tungstenite::Utf8Bytes,
        except: Option<MemberId>,
    ) {
        for member in self.members.values() {
            if Some(member.id) == except {
                continue;
            }
            if let Some(conn) = &member.conn {
                conn.send(frame);
            }
        }
    }

    fn remove_and_announce(
        &mut self,
        key: &str,
        kind: NoticeKind,
        now: Timestamp,
    ) -> Result<(), HistoryError> {
        let Some(member) = self.members.remove(key) else {
            return Ok(());
        };
        let notice = RoomEvent::Notice(Notice {
            seq: self.history.head().next(),
            ts: self.stamp(now),
            kind,
            name: member.name,
            color: member.color,
        });
        self.history.append(notice.clone(), None)?;
        self.broadcast(&encode(&notice.into()), None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use natter_shared::RoomEvent;

    use super::*;
    use crate::history::MemoryHistory;
    use crate::outbound::{ConnReceiver, channel};

    fn room() -> Room {
        Room::new(
            RoomName::default(),
            Box::new(MemoryHistory::new(100)),
            "h1".into(),
            RoomLimits::default(),
        )
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

    /// Every frame queued so far, decoded.
    fn drain(rx: &mut ConnReceiver) -> Vec<ServerMsg> {
        let mut out = Vec::new();
        while let Ok(frame) = rx.rx.try_recv() {
            out.push(serde_json::from_str(frame.as_str()).expect("valid frame"));
        }
        out
    }

    fn join(room: &Room, id: u64, name: &str, tok: &str) -> (Membership, ConnHandle, ConnReceiver) {
        let (conn, mut rx) = channel(id, 64);
        let (m, kind) = room
            .join(
                request(name, None, None),
                &conn,
                id,
                token(tok),
                Timestamp(id),
            )
            .expect("joins");
        assert_eq!(kind, JoinKind::Joined);
        assert!(matches!(drain(&mut rx).as_slice(), [ServerMsg::Welcome(_)]));
        (m, conn, rx)
    }

    #[test]
    fn a_join_is_announced_to_others_and_ends_the_joiners_welcome() {
        let room = room();
        let (_, _, mut ada_rx) = join(&room, 1, "Ada", "t1");
        let (bob_conn, mut bob_rx) = channel(2, 64);
        room.join(
            request("Bob", None, None),
            &bob_conn,
            2,
            token("t2"),
            Timestamp(5),
        )
        .expect("joins");
        match drain(&mut bob_rx).as_slice() {
            [ServerMsg::Welcome(w)] => {
                assert_eq!(w.seq_head, Seq(2));
                assert_eq!(w.members.len(), 2);
                assert!(
                    matches!(w.history.last(), Some(RoomEvent::Notice(n)) if n.name.as_str() == "Bob")
                );
            }
            other => panic!("expected one welcome, got {other:?}"),
        }
        assert!(
            matches!(drain(&mut ada_rx).as_slice(), [ServerMsg::Notice(n)] if n.kind == NoticeKind::Joined && n.seq == Seq(2))
        );
    }

    #[test]
    fn a_taken_name_is_refused_whatever_its_case() {
        let room = room();
        let _ada = join(&room, 1, "Ada", "t1");
        let (conn, _rx) = channel(2, 8);
        let err = room.join(
            request("ADA", None, None),
            &conn,
            2,
            token("t2"),
            Timestamp(0),
        );
        assert!(matches!(err, Err(JoinError::NameTaken)));
        let wrong = room.join(
            request("ada", Some("wrong"), None),
            &conn,
            2,
            token("t2"),
            Timestamp(0),
        );
        assert!(
            matches!(wrong, Err(JoinError::NameTaken)),
            "a wrong token does not help"
        );
    }

    #[test]
    fn a_full_room_refuses_new_members() {
        let limits = RoomLimits {
            max_members_per_room: 1,
            ..RoomLimits::default()
        };
        let room = Room::new(
            RoomName::default(),
            Box::new(MemoryHistory::new(10)),
            "h1".into(),
            limits,
        );
        let _ada = join(&room, 1, "Ada", "t1");
        let (conn, _rx) = channel(2, 8);
        assert!(matches!(
            room.join(
                request("Bob", None, None),
                &conn,
                2,
                token("t2"),
                Timestamp(0)
            ),
            Err(JoinError::RoomFull)
        ));
        assert_eq!(JoinError::RoomFull.to_string(), "the room is full");
    }

    #[test]
    fn say_acks_the_sender_delivers_to_others_and_dedupes() {
        let room = room();
        let (ada, ada_conn, mut ada_rx) = join(&room, 1, "Ada", "t1");
        let (_, _, mut bob_rx) = join(&room, 2, "Bob", "t2");
        drain(&mut ada_rx);
        let cid = ClientMsgId::parse("c1").expect("valid");
        let text = MessageText::parse("hi").expect("valid");
        assert_eq!(
            room.say(&ada, &ada_conn, cid.clone(), text.clone(), Timestamp(10))
                .expect("stored"),
            Said::New(Seq(3))
        );
        assert!(matches!(drain(&mut ada_rx).as_slice(), [ServerMsg::Ack(a)] if a.seq == Seq(3)));
        assert!(
            matches!(drain(&mut bob_rx).as_slice(), [ServerMsg::Message(m)] if m.seq == Seq(3))
        );
        assert_eq!(
            room.say(&ada, &ada_conn, cid, text, Timestamp(20))
                .expect("ok"),
            Said::Duplicate(Seq(3))
        );
        assert!(
            matches!(drain(&mut ada_rx).as_slice(), [ServerMsg::Ack(a)] if a.seq == Seq(3) && a.ts == Timestamp(10))
        );
        assert!(drain(&mut bob_rx).is_empty());
        assert_eq!(room.head(), Seq(3));
    }

    #[test]
    fn timestamps_never_go_back() {
        let room = room();
        let (ada, conn, mut rx) = join(&room, 100, "Ada", "t1");
        let said = |cid: &str, ts: u64| {
            room.say(
                &ada,
                &conn,
                ClientMsgId::parse(cid).expect("valid"),
                MessageText::parse("x").expect("valid"),
                Timestamp(ts),
            )
            .expect("stored")
        };
        said("a", 50); // the clock stepped back below the join's 100
        said("b", 200);
        let acks: Vec<u64> = drain(&mut rx)
            .into_iter()
            .filter_map(|m| {
                if let ServerMsg::Ack(a) = m {
                    Some(a.ts.0)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(acks, vec![100, 200]);
    }

    #[test]
    fn leave_is_announced_at_once_and_only_for_the_current_connection() {
        let room = room();
        let (ada, ada_conn, _ada_rx) = join(&room, 1, "Ada", "t1");
        let (_, _, mut bob_rx) = join(&room, 2, "Bob", "t2");
        assert!(
            !room
                .leave(&ada, ada_conn.id + 100, Timestamp(0))
                .expect("ok"),
            "a stale connection does nothing"
        );
        assert!(room.leave(&ada, ada_conn.id, Timestamp(0)).expect("ok"));
        assert!(
            matches!(drain(&mut bob_rx).as_slice(), [ServerMsg::Notice(n)] if n.kind == NoticeKind::Left)
        );
        assert_eq!(room.member_count(), 1);
    }

    #[test]
    fn a_detached_member_times_out_unless_it_resumes() {
        let room = room();
        let (ada, ada_conn, _ada_rx) = join(&room, 1, "Ada", "t1");
        let (_, _, mut bob_rx) = join(&room, 2, "Bob", "t2");
        let epoch = room.detach(&ada, ada_conn.id).expect("was attached");
        assert!(
            drain(&mut bob_rx).is_empty(),
            "nothing announced during the grace period"
        );

        // Resume with the token: no notice, and the old timer becomes stale.
        let (new_conn, mut new_rx) = channel(3, 8);
        let (again, kind) = room
            .join(
                request("ada", Some("t1"), Some(2)),
                &new_conn,
                99,
                token("unused"),
                Timestamp(0),
            )
            .expect("resumes");
        assert_eq!(kind, JoinKind::Resumed);
        assert_eq!(again.member_id, ada.member_id);
        assert!(
            matches!(drain(&mut new_rx).as_slice(), [ServerMsg::Welcome(w)] if w.you.name.as_str() == "Ada")
        );
        assert!(!room.expire(&ada, epoch, Timestamp(0)).expect("ok"));
        assert!(drain(&mut bob_rx).is_empty());

        // Dropped again and not back: timed out.
        let epoch = room.detach(&again, new_conn.id).expect("attached");
        assert!(room.expire(&again, epoch, Timestamp(0)).expect("ok"));
        assert!(
            matches!(drain(&mut bob_rx).as_slice(), [ServerMsg::Notice(n)] if n.kind == NoticeKind::TimedOut)
        );
    }

    #[test]
    fn resuming_kicks_a_connection_that_is_still_attached() {
        let room = room();
        let (_, old_conn, _old_rx) = join(&room, 1, "Ada", "t1");
        let (new_conn, _new_rx) = channel(2, 8);
        room.join(
            request("Ada", Some("t1"), None),
            &new_conn,
            2,
            token("x"),
            Timestamp(0),
        )
        .expect("resumes");
        assert_eq!(old_conn.kick_reason(), Some(CloseReason::Replaced));
        assert_eq!(new_conn.kick_reason(), None);
    }

    #[test]
    fn typing_goes_to_others_with_refreshes_limited() {
        let room = room();
        let (ada, _, mut ada_rx) = join(&room, 1, "Ada", "t1");
        let (_, _, mut bob_rx) = join(&room, 2, "Bob", "t2");
        drain(&mut ada_rx);
        let t0 = Instant::now();
        assert!(room.typing(&ada, true, t0));
        assert!(!room.typing(&ada, true, t0 + std::time::Duration::from_millis(100)));
        assert!(room.typing(
            &ada,
            true,
            t0 + std::time::Duration::from_millis(TYPING_REFRESH_MS)
        ));
        assert!(room.typing(&ada, false, t0));
        assert!(!room.typing(&ada, false, t0));
        assert_eq!(drain(&mut bob_rx).len(), 3);
        assert!(drain(&mut ada_rx).is_empty(), "no echo to the typist");
    }

    #[test]
    fn a_last_seq_of_another_history_id_is_ignored() {
        let room = room();
        let (ada, conn, mut rx) = join(&room, 1, "Ada", "t1");
        for cid in ["a", "b", "c"] {
            room.say(
                &ada,
                &conn,
                ClientMsgId::parse(cid).expect("valid"),
                MessageText::parse("x").expect("valid"),
                Timestamp(0),
            )
            .expect("stored");
        }
        drain(&mut rx);
        let (other, mut other_rx) = channel(2, 8);
        let mut req = request("Bob", None, Some(2));
        req.history_id = Some("another".into());
        room.join(req, &other, 2, token("t2"), Timestamp(0))
            .expect("joins");
        match drain(&mut other_rx).as_slice() {
            [ServerMsg::Welcome(w)] => {
                assert_eq!(
                    w.history.len(),
                    5,
                    "the latest events, not a replay after seq 2"
                );
                assert_eq!(w.history_id, "h1");
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        let (third, mut third_rx) = channel(3, 8);
        let mut req = request("Cat", None, Some(3));
        req.history_id = Some("h1".into());
        room.join(req, &third, 3, token("t3"), Timestamp(0))
            .expect("joins");
        assert!(
            matches!(drain(&mut third_rx).as_slice(), [ServerMsg::Welcome(w)] if w.history.len() == 3),
            "same history: replay after 3"
        );
    }

    #[test]
    fn a_stale_last_seq_from_another_history_gets_a_fresh_welcome() {
        let room = room();
        let (conn, mut rx) = channel(1, 8);
        room.join(
            request("Ada", None, Some(500)),
            &conn,
            1,
            token("t"),
            Timestamp(0),
        )
        .expect("joins");
        match drain(&mut rx).as_slice() {
            [ServerMsg::Welcome(w)] => {
                assert_eq!(w.seq_head, Seq(1));
                assert_eq!(w.history.len(), 1, "the latest events instead of a replay");
                assert_eq!(w.missed, None);
            }
            other => panic!("expected welcome, got {other:?}"),
        }
    }
}
