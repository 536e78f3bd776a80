//! One room: its members, its recent events, and the order of its events.
//!
//! Every change to a room happens under its lock, and every message it sends is
//! queued (never awaited) under that lock. Events get their seq from the
//! history writer; the writer hands each stored event back through
//! [`Committed::committed`] in seq order, which acknowledges and broadcasts it, so
//! all members see the same events in the same order and nothing is
//! acknowledged before it is stored. The lock is a plain mutex held for
//! microseconds and never across an `.await`.
//!
//! With a shared store (Redis, several instances) other instances' events
//! arrive too ([`Committed::deliver`]), on another path than the writer's
//! reports: every stored event goes through a reorder buffer keyed by seq,
//! delivered from while its first seq follows the head; what is missing is
//! asked of the store ([`Committed::follow_up`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use natter_shared::limits::{MEMBERS_PAGE_MAX, PRESENCE_NAMES_MAX, TYPING_REFRESH_MIN_MS};
use natter_shared::{
    Ack, ClientMsgId, Color, ErrorCode, ErrorMsg, HistoryPage, Member, MembersPage, MessageText, Notice, NoticeBatch,
    NoticeKind, Presence, ResumeToken, RoomEvent, RoomName, Seq, ServerMsg, TypingUpdate, UserName, color_for,
};
use subtle::ConstantTimeEq;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::claims::NameLocks;
use super::elsewhere::{Applied, Elsewhere, Remote};
use super::names::{glyph_key, member_key};
use super::welcome;
use crate::config::RoomLimits;
use crate::metrics::Metrics;
use crate::store::{
    self, Arrival, Claimed, Committed, Draft, FollowUp, FreshHistory, HistoryError, HistoryStore, MemberChange,
    MemberId, NameClaim, Outcome, PENDING_MAX, Replay,
};
use crate::ws::outbound::{CloseReason, ConnHandle, ConnId, Encoded, encode};

/// A welcome's bytes besides its members and events (the type, the joiner,
/// the room, the token and the history id), for sizing its buffer.
const WELCOME_FIXED_BYTES: usize = 256;

/// What a session holds to act as a member of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub member_id: MemberId,
    /// The room's key for the name ([`member_key`]): case, composition and
    /// look-alike letters folded.
    pub key: String,
    pub name: UserName,
}

/// A `hello` that passed validation.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub name: UserName,
    pub resume_token: Option<ResumeToken>,
    pub last_seq: Option<Seq>,
    /// The most bytes of events the welcome may carry (the joiner's
    /// connection's reply limit); older ones are left out (counted as
    /// `missed` in a replay; a fresh join can page back for them).
    pub history_max_bytes: usize,
    /// The history `last_seq` belongs to (from the client's last welcome).
    pub history_id: Option<String>,
    /// What a resume needs from the store, read before joining ([`Room::enter`]).
    pub prefetched: Option<Prefetched>,
}

/// Stored events read for a resume before taking the room's lock: those
/// with `after < seq <= upto` (the latest of them, and how many are left out).
#[derive(Debug, Clone)]
pub struct Prefetched {
    pub after: Seq,
    pub upto: Seq,
    pub replay: Replay,
}

/// How a presence change (a join, a leave, a time-out) is announced.
#[derive(Debug, Clone)]
pub enum Announce {
    /// A small room: this notice, to be stored and announced by the writer.
    Notice(Draft),
    /// A big room: the change waits in the room's presence batch, which
    /// [`Room::flush_presence`] sends. `Some(delay)`: the first change of a
    /// batch; call it after `delay`. `None`: a flush is already due.
    Batched(Option<std::time::Duration>),
}

/// How a join went.
#[derive(Debug, Clone)]
pub enum JoinKind {
    /// A new member, announced so.
    Joined(Announce),
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

/// How a membership ends ([`Room::depart`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A deliberate leave from this connection (ignored if the member has
    /// another connection by now): `left`.
    Leave(ConnId),
    /// The grace period since the detach at this epoch ran out (ignored if
    /// the member came back meanwhile): `timed_out`.
    Expire(u64),
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
}

/// A member in the room's list order: what a welcome copies.
#[derive(Debug)]
struct Listed {
    /// The member's key in [`RoomState::members`].
    key: Box<str>,
    /// The member's JSON, made once when they join.
    json: Box<str>,
}

impl MemberEntry {
    fn notice(&self, kind: NoticeKind) -> Draft {
        Draft::Notice { kind, name: self.name.clone(), color: self.color.clone(), once: None }
    }

    fn member(&self) -> Member {
        Member { name: self.name.clone(), color: self.color.clone() }
    }
}

/// A big room's presence changes not yet sent.
#[derive(Debug, Default)]
struct PendingPresence {
    /// The changes so far (its `count` is filled in when sent).
    batch: Presence,
    /// A flush is due (its timer runs).
    scheduled: bool,
    /// When the last batch went out.
    last_sent: Option<Instant>,
}

impl PendingPresence {
    /// Adds one change. A `left` or `timed_out` of someone whose `joined`
    /// is still waiting cancels it instead: nobody needs to hear of a visit
    /// shorter than a batch.
    fn note(&mut self, kind: NoticeKind, member: Member) {
        let b = &mut self.batch;
        if kind != NoticeKind::Joined
            && let Some(i) = b.joined.iter().position(|m| m.name == member.name)
        {
            b.joined.remove(i);
            return;
        }
        let (listed, more) = match kind {
            NoticeKind::Joined => (&mut b.joined, &mut b.more_joined),
            NoticeKind::Left => (&mut b.left, &mut b.more_left),
            NoticeKind::TimedOut => (&mut b.timed_out, &mut b.more_timed_out),
        };
        if listed.len() < PRESENCE_NAMES_MAX {
            listed.push(member);
        } else {
            *more = more.saturating_add(1);
        }
    }

    fn is_empty(&self) -> bool {
        let b = &self.batch;
        b.joined.is_empty() && b.left.is_empty() && b.timed_out.is_empty() && b.is_complete()
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
/// replay read from the store before the join, then what memory holds after it.
enum Replayed<'a> {
    Recent { encoded: Vec<&'a Encoded>, missed: u64 },
    Stored { replay: Replay, then: Vec<&'a Encoded> },
}

#[derive(Debug)]
struct RoomState {
    members: HashMap<String, MemberEntry>,
    /// Every member by their lower-cased name ([`UserName::key`]): the
    /// member list in the page's order, for welcomes (copied straight from
    /// here, no lookup per member) and `members` pages, without a sort.
    by_order: BTreeMap<Box<str>, Listed>,
    /// A big room's presence changes waiting for their batch.
    presence: PendingPresence,
    /// Every member's [`glyph_key`]: a newcomer with one of them is refused
    /// (a set, so a join into a big room does not look at every member).
    glyphs: HashSet<Box<str>>,
    /// The latest stored events (for welcomes and short replays).
    recent: VecDeque<RecentEvent>,
    /// The latest stored seq this room has announced.
    head: Seq,
    /// The id of this room's history: fixed while the room is held, unless
    /// the store lost it and started a new one ([`Room::take_history`]).
    history_id: String,
    /// Events past `head + 1`, waiting for the ones before them (at most
    /// [`PENDING_MAX`]). Only a shared store leaves anything here: with one
    /// writer every report is `head + 1`.
    pending: BTreeMap<Seq, Held>,
    /// Acks of re-sent messages whose event this room has not delivered
    /// yet: a page must not hear of a seq before the events up to it.
    late_acks: Vec<(Seq, ConnHandle, Ack)>,
    /// The highest seq known to be stored (a duplicate's): a gap up to it
    /// is filled from the store.
    expected: Seq,
    /// `pending` overflowed and was dropped: the history is read afresh.
    overflowed: bool,
    /// The room's members on other instances (names shared through a
    /// shared store), never one of `members`' names.
    elsewhere: Elsewhere,
}

/// A member in the list's order: here, or on another instance.
enum Entry<'a> {
    Here(&'a Listed),
    Elsewhere(&'a Remote),
}

impl Entry<'_> {
    fn json(&self) -> &str {
        match self {
            Entry::Here(listed) => &listed.json,
            Entry::Elsewhere(remote) => &remote.json,
        }
    }
}

/// An event waiting in [`RoomState::pending`].
#[derive(Debug)]
enum Held {
    /// Reported by this instance's writer: acked to its sender when delivered.
    Local(Draft, RoomEvent),
    /// From another instance, or read from the store.
    Remote(RoomEvent),
    /// This instance's own write seen on the channel before the writer's
    /// report: it waits for the report (which carries the ack), or for a fill.
    Own(RoomEvent),
}

impl Held {
    fn event(&self) -> &RoomEvent {
        match self {
            Held::Local(_, e) | Held::Remote(e) | Held::Own(e) => e,
        }
    }
}

/// A chat room.
#[derive(Debug)]
pub struct Room {
    pub name: RoomName,
    store: Arc<dyn HistoryStore>,
    limits: RoomLimits,
    /// Events kept in `recent`: what a welcome shows, never more than the store keeps.
    recent_max: usize,
    state: Mutex<RoomState>,
    metrics: Arc<Metrics>,
    /// With names shared across instances: one claim or release of a name
    /// at a time ([`Room::enter`], [`Room::depart`]).
    names: NameLocks,
}

impl Room {
    /// Opens a room over `store`, loading its latest events.
    pub fn open(
        name: RoomName,
        store: Arc<dyn HistoryStore>,
        limits: RoomLimits,
        metrics: Arc<Metrics>,
    ) -> Result<Self, HistoryError> {
        let recent_max = limits.welcome_history.min(store.keeps().unwrap_or(usize::MAX)).max(1);
        let (head, latest) = store.open_room(&name, recent_max)?;
        let history_id = store.history_id(&name);
        let mut elsewhere = Elsewhere::default();
        if store.names_shared() {
            match store.members_elsewhere(&name) {
                Ok(read) => elsewhere.reset(read, |_| false),
                Err(e) => {
                    warn!(room = %name, error = %e, "the room's members on other instances cannot be read yet");
                    elsewhere.missed();
                }
            }
        }
        Ok(Self {
            name,
            store,
            limits,
            recent_max,
            state: Mutex::new(RoomState {
                members: HashMap::new(),
                by_order: BTreeMap::new(),
                presence: PendingPresence::default(),
                glyphs: HashSet::new(),
                recent: latest.into_iter().map(RecentEvent::from).collect(),
                head,
                history_id,
                pending: BTreeMap::new(),
                late_acks: Vec::new(),
                expected: head,
                overflowed: false,
                elsewhere,
            }),
            metrics,
            names: NameLocks::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a single step), so keep serving instead of cascading.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins (or resumes) as [`Room::join`] does, reading first, on a
    /// blocking thread and without the room's lock, what a resume needs from
    /// the store.
    pub async fn enter(
        &self,
        mut req: JoinRequest,
        conn: &ConnHandle,
        new_member_id: MemberId,
        token: ResumeToken,
    ) -> Result<(Membership, JoinKind), JoinError> {
        if self.store.history_can_restart() {
            self.check_history().await;
        }
        if !self.store.names_shared() {
            self.prefetch(&mut req).await?;
            return self.join(req, conn, new_member_id, token);
        }
        // Names shared across instances: the store says who holds the
        // name, under the name's lock (see `claims`).
        let (key, glyph) = (member_key(&req.name), glyph_key(&req.name));
        let _name = self.names.lock(&key).await;
        let claim = NameClaim {
            name: req.name.clone(),
            key: key.clone(),
            glyph: glyph.clone(),
            member: new_member_id,
            token: token.clone(),
            presented: req.resume_token.clone(),
        };
        let asked = claim.clone();
        let (claimed, reachable) = match self.on_store(move |store, room| store.claim_name(room, &asked)).await {
            Ok(Claimed::Taken) => return Err(JoinError::NameTaken),
            Ok(claimed) => (claimed, true),
            // The store cannot be asked: a member of this room may take its
            // session back (the name was this instance's), nobody else joins.
            Err(e) if self.holds(&key, req.resume_token.as_ref()) => {
                debug!(room = %self.name, error = %e, "a resume goes on without asking the store");
                (Claimed::Here, false)
            }
            Err(e) => return Err(JoinError::Storage(e)),
        };
        let joined = match self.prefetch(&mut req).await {
            Ok(()) => self.join_claimed(req, conn, new_member_id, token.clone(), claimed),
            Err(e) => Err(e.into()),
        };
        match (&joined, claimed) {
            // The store holds the claim under the new member's id: a
            // member this room had (a resume) is recorded under its own.
            (Ok((member, _)), _) if reachable && (claimed == Claimed::Here || member.member_id != new_member_id) => {
                let admitted = NameClaim { member: member.member_id, presented: None, ..claim };
                let confirmed = self.on_store(move |store, room| store.confirm_name(room, &admitted));
                if let Err(e) = confirmed.await {
                    warn!(room = %self.name, error = %e, "a name's new token was not recorded in the store");
                }
            }
            (Err(_), Claimed::Free | Claimed::Moved) => {
                let released =
                    self.on_store(move |store, room| store.release_name(room, &key, &glyph, new_member_id)).await;
                if let Err(e) = released {
                    warn!(room = %self.name, error = %e, "the name of a refused join was not given back");
                }
            }
            _ => {}
        }
        joined
    }

    /// Reads, on a blocking thread and without the room's lock, what a
    /// resume needs from the store and memory no longer holds.
    async fn prefetch(&self, req: &mut JoinRequest) -> Result<(), HistoryError> {
        if let Some((after, upto)) = self.to_read(req) {
            let (store, name, max) = (self.store.clone(), self.name.clone(), self.limits.replay_max);
            let replay = store::blocking(&self.store, move || store.after(&name, after, upto, max)).await?;
            req.prefetched = Some(Prefetched { after, upto, replay });
        }
        Ok(())
    }

    /// Runs `call` with the store and this room's name on a blocking thread
    /// (see [`store::blocking`]).
    async fn on_store<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn HistoryStore, &RoomName) -> Result<T, HistoryError> + Send + 'static,
    ) -> Result<T, HistoryError> {
        let (store, name) = (self.store.clone(), self.name.clone());
        store::blocking(&self.store, move || call(&*store, &name)).await
    }

    /// Whether the member under `key` is here and `token` is its token.
    fn holds(&self, key: &str, token: Option<&ResumeToken>) -> bool {
        let state = self.lock();
        token.is_some_and(|t| state.members.get(key).is_some_and(|m| token_matches(t, &m.token)))
    }

    /// Asks the store whether this room's history is still the one it
    /// holds, and takes the new one if not (its members then resume). A
    /// store that cannot tell now (Redis down) holds the join up at most its
    /// timeout; the join then goes on, and the writer finds a new history
    /// at its next write.
    async fn check_history(&self) {
        let known = self.lock().history_id.clone();
        let (store, name, limit) = (self.store.clone(), self.name.clone(), self.recent_max);
        match store::blocking(&self.store, move || store.check_history(&name, &known, limit)).await {
            Ok(Some(fresh)) => self.take_history(fresh, false),
            Ok(None) => {}
            Err(e) => debug!(room = %self.name, error = %e, "cannot check the history before a join"),
        }
    }

    /// Takes a history the store read afresh: every member's connection is
    /// closed as lagged (4000), so each page resumes and gets a welcome of
    /// the new history (a new id: a fresh welcome under a divider; the same
    /// id: the replay of what it missed). Members stay; nobody is announced.
    /// `same_too`: the same history with events this room never announced
    /// (the writer's report of them was lost); else only a new history is
    /// taken. A read older than what the room announced since is ignored.
    pub fn take_history(&self, fresh: FreshHistory, same_too: bool) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let same = fresh.id == state.history_id;
        // Asked for after an overflow: answered either way (a read older
        // than the room's head finds the buffer already dropped).
        state.overflowed = false;
        if same && (!same_too || fresh.head < state.head) {
            return;
        }
        warn!(
            room = %self.name,
            history = %fresh.id,
            head = fresh.head.0,
            new = !same,
            "the room's history was read afresh; members resume"
        );
        if !same {
            state.pending.clear();
            state.expected = Seq(0);
        }
        state.history_id = fresh.id;
        state.head = fresh.head;
        state.expected = state.expected.max(fresh.head);
        state.pending.retain(|seq, _| *seq > fresh.head);
        let head = state.head;
        // Acks of events now in the history go; the pages resume anyway.
        state.late_acks.retain(|(seq, sender, ack)| {
            let due = *seq <= head || !same;
            if due {
                sender.send_reply(&ServerMsg::Ack(ack.clone()));
            }
            !due
        });
        state.recent = fresh.latest.into_iter().map(RecentEvent::from).collect();
        while state.recent.len() > self.recent_max {
            state.recent.pop_front();
        }
        for member in state.members.values() {
            if let Some(conn) = &member.conn {
                conn.kick(CloseReason::Lagged);
            }
        }
    }

    /// The stored range a resume needs that memory does not hold.
    /// Nothing for a `hello` the room will refuse anyway (its name is
    /// another member's), so a refused join costs no read.
    fn to_read(&self, req: &JoinRequest) -> Option<(Seq, Seq)> {
        let key = member_key(&req.name);
        let state = self.lock();
        let last = resume_after(&state, req)?;
        let refused = state
            .members
            .get(&key)
            .is_some_and(|m| !req.resume_token.as_ref().is_some_and(|t| token_matches(t, &m.token)));
        (!refused && last < state.head && !state.covers(last)).then_some((last, state.head))
    }

    /// Joins (or resumes) and queues the `welcome` on `conn`. A new member's
    /// `joined` notice is returned, to be stored and announced (to everyone,
    /// the joiner included) by the writer. `token` is a fresh resume token:
    /// the new member's, or the resumed member's next one (each works once).
    pub fn join(
        &self,
        req: JoinRequest,
        conn: &ConnHandle,
        new_member_id: MemberId,
        token: ResumeToken,
    ) -> Result<(Membership, JoinKind), JoinError> {
        self.join_claimed(req, conn, new_member_id, token, Claimed::Here)
    }

    /// [`Room::join`] after the store said who holds the name (see [`Claimed`]).
    fn join_claimed(
        &self,
        mut req: JoinRequest,
        conn: &ConnHandle,
        new_member_id: MemberId,
        token: ResumeToken,
        claimed: Claimed,
    ) -> Result<(Membership, JoinKind), JoinError> {
        let max_bytes = req.history_max_bytes;
        let prefetched = req.prefetched.take();
        let mut guard = self.lock();
        let state = &mut *guard;
        let resume_after = resume_after(state, &req);
        let (membership, kind) = self.admit(state, req, conn, new_member_id, token, claimed)?;
        self.send_welcome(state, &membership.key, resume_after, prefetched, max_bytes, conn);
        Ok((membership, kind))
    }

    /// Takes a new member in, or gives a member's session back to the browser
    /// holding its token (kicking an older connection still attached). A
    /// name the store gave this instance ([`Claimed::Free`],
    /// [`Claimed::Moved`]) is taken from whatever member this room still
    /// holds under it (a ghost: it moved to another instance, which it
    /// left since) unless the presented token is that member's; a moved
    /// member is taken in without a notice, as a resume.
    fn admit(
        &self,
        state: &mut RoomState,
        req: JoinRequest,
        conn: &ConnHandle,
        new_member_id: MemberId,
        token: ResumeToken,
        claimed: Claimed,
    ) -> Result<(Membership, JoinKind), JoinError> {
        let key = member_key(&req.name);
        let resumes_here = state
            .members
            .get(&key)
            .is_some_and(|m| req.resume_token.as_ref().is_some_and(|t| token_matches(t, &m.token)));
        // A member whose token is presented is no ghost, whatever the store
        // says (Redis lost the claims: it was flushed, or is a new one).
        if matches!(claimed, Claimed::Free | Claimed::Moved) && !resumes_here {
            state.evict_ghosts(&key, &glyph_key(&req.name));
        }
        match state.members.get_mut(&key) {
            Some(existing) if req.resume_token.as_ref().is_some_and(|t| token_matches(t, &existing.token)) => {
                // Take the session back; an older connection still attached is replaced.
                if let Some(old) = existing.conn.replace(conn.clone()) {
                    old.kick(CloseReason::Replaced);
                }
                // A token works once: the welcome carries its successor.
                existing.token = token;
                existing.epoch += 1;
                existing.typing_since = None;
                let m = Membership { member_id: existing.id, key, name: existing.name.clone() };
                Ok((m, JoinKind::Resumed))
            }
            Some(_) => Err(JoinError::NameTaken),
            None => {
                let glyph_key: Box<str> = glyph_key(&req.name).into();
                if state.glyphs.contains(&glyph_key) {
                    return Err(JoinError::NameTaken);
                }
                if state.count() >= self.limits.max_members_per_room {
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
                };
                state.elsewhere.forget(&req.name);
                state.by_order.insert(req.name.key().into(), Listed { key: key.clone().into(), json });
                state.members.insert(key.clone(), entry);
                state.glyphs.insert(glyph_key);
                let kind = if claimed == Claimed::Moved {
                    JoinKind::Resumed
                } else {
                    JoinKind::Joined(self.announce(state, &key, NoticeKind::Joined))
                };
                let m = Membership { member_id: new_member_id, key, name: req.name };
                Ok((m, kind))
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
        prefetched: Option<Prefetched>,
        max_bytes: usize,
        conn: &ConnHandle,
    ) {
        let replay = match resume_after {
            Some(last) if last <= state.head => Some(self.replay(state, last, prefetched)),
            _ => None,
        };
        // A replay read from the store, encoded here (those from memory are
        // already); the welcome borrows them.
        let stored: Vec<Encoded>;
        let me = &state.members[key];
        // The first page of members in the order of their lower-cased names,
        // as the page keeps them (not of the map's keys: a skeleton orders
        // `m` as `rn`), each made once when the member joined.
        let members: Vec<Entry<'_>> = state.page_after(None, MEMBERS_PAGE_MAX as usize).collect();
        let you = state.by_order.get(me.name.key().as_str()).map_or("", |l| &l.json);
        // The history gets what the member list leaves of the reply's bytes.
        let members_bytes = WELCOME_FIXED_BYTES + members.iter().map(|m| m.json().len() + 1).sum::<usize>();
        let max_bytes = max_bytes.saturating_sub(members_bytes);
        let (history, missed) = match replay {
            Some(Replayed::Stored { replay, then }) => {
                stored = replay.events.into_iter().map(|e| encode(&e.into())).collect();
                let mut encoded: Vec<&Encoded> = stored.iter().chain(then).collect();
                let over = encoded.len().saturating_sub(self.limits.replay_max);
                encoded.drain(..over);
                let left_out = fit_encoded(&mut encoded, max_bytes);
                (welcome::History::Encoded(encoded), replay.missed + (over + left_out) as u64)
            }
            Some(Replayed::Recent { mut encoded, missed }) => {
                let left_out = fit_encoded(&mut encoded, max_bytes);
                (welcome::History::Encoded(encoded), missed + left_out as u64)
            }
            // A fresh join: the latest events, copied from memory.
            None => {
                let mut encoded = state.latest_iter(self.limits.welcome_history).map(|r| &r.encoded).collect();
                fit_encoded(&mut encoded, max_bytes);
                (welcome::History::Encoded(encoded), 0)
            }
        };
        let size = members_bytes + history.encoded_len();
        let parts = welcome::Parts {
            you,
            room: &self.name,
            seq_head: state.head,
            members: members.iter().map(Entry::json),
            member_count: state.count(),
            history,
            resume_token: &me.token,
            history_id: &state.history_id,
            missed,
        };
        conn.send(&welcome::encode(parts, size));
    }

    /// The events after `last` up to the announced head: from memory when
    /// recent enough, else the store's part read before the join and
    /// memory's after it. Never reads the store (this runs under the lock):
    /// if nothing was read, or memory moved on too far since, the latest
    /// from memory go, and the rest count as missed (the client pages back).
    fn replay<'a>(&self, state: &'a RoomState, last: Seq, prefetched: Option<Prefetched>) -> Replayed<'a> {
        let after = |seq: Seq| state.recent.iter().filter(move |r| r.seq > seq).map(|r| &r.encoded);
        if !state.covers(last)
            && let Some(p) = prefetched.filter(|p| p.after == last && state.covers(p.upto))
        {
            return Replayed::Stored { replay: p.replay, then: after(p.upto).collect() };
        }
        let mut encoded: Vec<&Encoded> = after(last).collect();
        encoded.drain(..encoded.len().saturating_sub(self.limits.replay_max));
        let missed = state.head.0.saturating_sub(last.0).saturating_sub(encoded.len() as u64);
        Replayed::Recent { encoded, missed }
    }

    /// The draft of a chat message from `who`, for the writer. Stops the
    /// member's typing indicator.
    pub fn say(
        &self,
        who: &Membership,
        conn: &ConnHandle,
        cid: ClientMsgId,
        text: MessageText,
        resent_after: Option<Seq>,
    ) -> Result<Draft, NotMember> {
        let mut guard = self.lock();
        let member = guard.members.get_mut(&who.key).filter(|m| m.id == who.member_id).ok_or(NotMember)?;
        member.typing_since = None;
        Ok(Draft::Message {
            name: member.name.clone(),
            color: member.color.clone(),
            text,
            cid,
            resent_after,
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
        let sent = state.broadcast(&encode(&update), Some(who.member_id));
        self.metrics.broadcast(sent);
        self.store.typing_elsewhere(&self.name, &who.name, active);
        true
    }

    /// Ends the membership at once, if `conn` is still the member's
    /// connection (a resumed session is left alone); returns the `left` notice.
    pub fn leave(&self, who: &Membership, conn: ConnId) -> Option<Announce> {
        self.end(who, End::Leave(conn), true)
    }

    /// Ends the membership as `end` says ([`Room::leave`], [`Room::expire`]).
    /// With names shared across instances, first gives the name back to the
    /// store: a name another instance holds by now means the member moved
    /// there, and its end here is no news (nothing is announced).
    pub async fn depart(&self, who: &Membership, end: End) -> Option<Announce> {
        if !self.store.names_shared() {
            return self.end(who, end, true);
        }
        let _name = self.names.lock(&who.key).await;
        if !self.lock().ends(who, end) {
            return None;
        }
        let (key, glyph, id) = (who.key.clone(), glyph_key(&who.name), who.member_id);
        let ours = match self.on_store(move |store, room| store.release_name(room, &key, &glyph, id)).await {
            Ok(ours) => ours,
            Err(e) => {
                warn!(room = %self.name, error = %e, "a name was not given back: other instances refuse it until this one stops");
                true
            }
        };
        self.end(who, end, ours)
    }

    /// Ends the membership if `end` applies, announcing it (`announce`) or not.
    fn end(&self, who: &Membership, end: End, announce: bool) -> Option<Announce> {
        let mut guard = self.lock();
        if !guard.ends(who, end) {
            return None;
        }
        if !announce {
            guard.remove(&who.key);
            return None;
        }
        let kind = match end {
            End::Leave(_) => NoticeKind::Left,
            End::Expire(_) => NoticeKind::TimedOut,
        };
        Some(self.announce_and_remove(&mut guard, &who.key, kind))
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
    /// removes it and returns how its `timed_out` is announced.
    pub fn expire(&self, who: &Membership, epoch: u64) -> Option<Announce> {
        self.end(who, End::Expire(epoch), true)
    }

    /// How the change of the member under `key` (present) is announced: a
    /// stored notice in a small room, a presence batch in one with more than
    /// [`RoomLimits::presence_threshold`] members (counting them).
    fn announce(&self, state: &mut RoomState, key: &str, kind: NoticeKind) -> Announce {
        let member = &state.members[key];
        if state.count() <= self.limits.presence_threshold {
            return Announce::Notice(member.notice(kind));
        }
        let member = member.member();
        match self.batch(state, kind, member) {
            None => Announce::Batched(None),
            delay => Announce::Batched(delay),
        }
    }

    /// Notes a big room's presence change in its batch; the first change of
    /// a batch returns when to send it ([`Room::flush_presence`]).
    fn batch(&self, state: &mut RoomState, kind: NoticeKind, member: Member) -> Option<std::time::Duration> {
        let interval = self.limits.presence_interval_for(state.count());
        let pending = &mut state.presence;
        pending.note(kind, member);
        if pending.scheduled {
            return None;
        }
        pending.scheduled = true;
        let due = pending.last_sent.map_or(Instant::now(), |sent| sent + interval);
        Some(due.saturating_duration_since(Instant::now()))
    }

    fn announce_and_remove(&self, state: &mut RoomState, key: &str, kind: NoticeKind) -> Announce {
        let announce = self.announce(state, key, kind);
        state.remove(key);
        announce
    }

    /// Sends a big room's waiting presence changes to every member, as one
    /// `presence` frame, unless the room grew since the send was scheduled
    /// so that its interval (which grows with the room) has not passed yet:
    /// then nothing is sent and the time still to wait is returned (call
    /// again then). So a room's batches cost about
    /// [`crate::config::PRESENCE_FRAMES_PER_SEC`] frames a second even
    /// while it fills up.
    pub fn flush_presence(&self) -> Option<std::time::Duration> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let interval = self.limits.presence_interval_for(state.count());
        let pending = &mut state.presence;
        let now = Instant::now();
        if let Some(due) = pending.last_sent.map(|sent| sent + interval).filter(|due| *due > now) {
            return Some(due - now);
        }
        pending.scheduled = false;
        if pending.is_empty() {
            return None;
        }
        pending.last_sent = Some(now);
        let mut batch = std::mem::take(&mut pending.batch);
        batch.count = u32::try_from(state.count()).unwrap_or(u32::MAX);
        let sent = state.broadcast(&encode(&ServerMsg::Presence(batch)), None);
        self.metrics.broadcast(sent);
        None
    }

    /// Up to `limit` members (at most [`MEMBERS_PAGE_MAX`]) whose names sort
    /// after `after` (lower-cased), the answer to `members`.
    pub fn members_page(&self, after: Option<&str>, limit: usize) -> MembersPage {
        let limit = limit.clamp(1, MEMBERS_PAGE_MAX as usize);
        let after_key = after.map(str::to_lowercase);
        let state = self.lock();
        let mut page: Vec<Member> = state
            .page_after(after_key.as_deref(), limit + 1)
            .filter_map(|entry| match entry {
                Entry::Here(l) => state.members.get(&*l.key).map(MemberEntry::member),
                Entry::Elsewhere(r) => Some(Member { name: r.name.clone(), color: color_for(&r.name) }),
            })
            .collect();
        let complete = page.len() <= limit;
        page.truncate(limit);
        MembersPage {
            after: after.map(str::to_owned),
            members: page,
            complete,
            count: u32::try_from(state.count()).unwrap_or(u32::MAX),
        }
    }

    /// Up to `limit` stored events before `before` (capped at the head this
    /// room has announced), oldest first, and no more than fit in
    /// `max_bytes` of JSON (the latest of them; the client pages on).
    /// Read on a blocking thread, without the room's lock.
    pub async fn history(&self, before: Seq, limit: usize, max_bytes: usize) -> Result<HistoryPage, HistoryError> {
        let head = self.head();
        let before_capped = before.min(head.next());
        let (store, name) = (self.store.clone(), self.name.clone());
        let mut events = store::blocking(&self.store, move || store.before(&name, before_capped, limit)).await?;
        let left_out = fit_events(&mut events, max_bytes);
        let complete = left_out == 0 && (events.len() < limit || events.first().is_some_and(|e| e.seq() <= Seq(1)));
        Ok(HistoryPage { before, events, complete })
    }

    /// Every member's name and current token, to be saved at shutdown.
    pub fn saved_members(&self) -> Vec<(UserName, ResumeToken)> {
        self.lock().members.values().map(|m| (m.name.clone(), m.token.clone())).collect()
    }

    /// Takes back members saved when the server last stopped, detached as if
    /// their connections had just dropped: each browser resumes with its
    /// token (no presence traffic), and one that does not come back within
    /// its grace period times out as usual. Returns each restored
    /// membership (for its grace timer, epoch 0); a name someone holds
    /// already (here, or on another instance when names are shared) is skipped.
    pub async fn restore(
        &self,
        saved: Vec<(UserName, ResumeToken)>,
        mut next_id: impl FnMut() -> MemberId,
    ) -> Vec<Membership> {
        let saved: Vec<_> = saved.into_iter().map(|(name, token)| (name, token, next_id())).collect();
        if !self.store.names_shared() {
            return self.take_back(saved);
        }
        let mut kept = Vec::new();
        for (name, token, id) in saved {
            // The saved token is the name's current one: the name comes
            // over from the stopped instance, whichever instance this is.
            let claim = NameClaim {
                name: name.clone(),
                key: member_key(&name),
                glyph: glyph_key(&name),
                member: id,
                token: token.clone(),
                presented: Some(token.clone()),
            };
            match self.on_store(move |store, room| store.claim_name(room, &claim)).await {
                Ok(Claimed::Taken) => debug!(room = %self.name, "a saved member's name is taken; not restored"),
                Ok(_) => kept.push((name, token, id)),
                Err(e) => warn!(room = %self.name, error = %e, "a saved member's name cannot be claimed; not restored"),
            }
        }
        self.take_back(kept)
    }

    /// [`Room::restore`] of the members whose names are this instance's.
    fn take_back(&self, saved: Vec<(UserName, ResumeToken, MemberId)>) -> Vec<Membership> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut restored = Vec::new();
        for (name, token, id) in saved {
            let key = member_key(&name);
            let glyph: Box<str> = glyph_key(&name).into();
            if state.members.contains_key(&key)
                || state.glyphs.contains(&glyph)
                || state.count() >= self.limits.max_members_per_room
            {
                continue;
            }
            let color = color_for(&name);
            let json = welcome::member_json(&Member { name: name.clone(), color: color.clone() });
            let entry = MemberEntry { id, name: name.clone(), color, token, conn: None, epoch: 0, typing_since: None };
            state.elsewhere.forget(&name);
            state.by_order.insert(name.key().into(), Listed { key: key.clone().into(), json });
            state.members.insert(key.clone(), entry);
            state.glyphs.insert(glyph);
            restored.push(Membership { member_id: id, key, name });
        }
        restored
    }

    /// Members of this instance (attached or in their grace period).
    pub fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// The room's latest announced seq.
    pub fn head(&self) -> Seq {
        self.lock().head
    }
}

/// The seq a `hello` resumes after, if it belongs to the room's history
/// (a seq of another history, say of an in-memory server that restarted,
/// or of a Redis that lost the room, means nothing here).
fn resume_after(state: &RoomState, req: &JoinRequest) -> Option<Seq> {
    let same_history = req.history_id.as_deref().is_none_or(|id| id == state.history_id);
    req.last_seq.filter(|_| same_history)
}

/// Whether a presented resume token is the member's, compared in constant
/// time so the answer's timing tells nothing about how much of it matched.
fn token_matches(presented: &ResumeToken, held: &ResumeToken) -> bool {
    presented.as_str().as_bytes().ct_eq(held.as_str().as_bytes()).into()
}

/// Keeps the latest events whose JSON fits in `max_bytes` (always at least
/// one), dropping the oldest; returns how many were dropped.
fn fit_events(events: &mut Vec<RoomEvent>, max_bytes: usize) -> usize {
    let sizes: Vec<usize> = events.iter().map(|e| serde_json::to_string(e).map_or(0, |j| j.len()) + 1).collect();
    let keep_from = fit_from(&sizes, max_bytes);
    events.drain(..keep_from);
    keep_from
}

/// [`fit_events`] for events kept encoded.
fn fit_encoded(encoded: &mut Vec<&Encoded>, max_bytes: usize) -> usize {
    let sizes: Vec<usize> = encoded.iter().map(|e| e.len() + 1).collect();
    let keep_from = fit_from(&sizes, max_bytes);
    encoded.drain(..keep_from);
    keep_from
}

/// The first index from which the sizes, summed from the end, fit in
/// `max_bytes` (never past the last one).
fn fit_from(sizes: &[usize], max_bytes: usize) -> usize {
    let mut total = 0;
    let mut keep_from = sizes.len();
    for (i, size) in sizes.iter().enumerate().rev() {
        if total + size > max_bytes && keep_from < sizes.len() {
            break;
        }
        total += size;
        keep_from = i;
    }
    keep_from
}

impl Room {
    /// Puts an event into the reorder buffer. One this room delivered
    /// already is dropped (a Local one still gets its ack); a Local report
    /// replaces a copy from elsewhere (it carries the ack), and a copy from
    /// the store replaces an [`Held::Own`] echo.
    fn hold(&self, state: &mut RoomState, held: Held) {
        let seq = held.event().seq();
        if seq <= state.head {
            if let Held::Local(Draft::Message { cid, sender, .. }, event) = held {
                sender.send_reply(&ServerMsg::Ack(Ack { cid, seq, ts: event.ts() }));
            }
            return;
        }
        match state.pending.entry(seq) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(held);
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                let replace = matches!(held, Held::Local(..)) || matches!(slot.get(), Held::Own(_));
                if replace {
                    slot.insert(held);
                }
            }
        }
        if state.pending.len() > PENDING_MAX {
            // Policy: drop the buffer and read the history afresh (the
            // store's follow-up); members resume from the store.
            warn!(room = %self.name, held = state.pending.len(), head = state.head.0, "reorder buffer full; the room's history is read afresh");
            state.pending.clear();
            state.overflowed = true;
        }
    }

    /// Delivers the buffered events that follow the head, in seq order: an
    /// own write's ack with it, stored notices gathered in `notices` (sent
    /// before the next message). `force_own`: an own write seen only on
    /// the channel goes without waiting for its report.
    fn drain(&self, state: &mut RoomState, notices: &mut Vec<(Notice, Encoded)>, force_own: bool) {
        while let Some(entry) = state.pending.first_entry() {
            let seq = *entry.key();
            if seq != state.head.next() || (!force_own && matches!(entry.get(), Held::Own(_))) {
                break;
            }
            let held = entry.remove();
            state.head = seq;
            let recent = RecentEvent::from(held.event().clone());
            let encoded = recent.encoded.clone();
            state.recent.push_back(recent);
            while state.recent.len() > self.recent_max {
                state.recent.pop_front();
            }
            match held {
                Held::Local(Draft::Message { cid, sender, member, .. }, event) => {
                    state.send_notices(notices, &self.metrics);
                    sender.send_reply(&ServerMsg::Ack(Ack { cid, seq: event.seq(), ts: event.ts() }));
                    self.metrics.messages_in.inc();
                    self.metrics.broadcast(state.broadcast(&encoded, Some(member)));
                }
                Held::Local(_, RoomEvent::Notice(notice))
                | Held::Remote(RoomEvent::Notice(notice))
                | Held::Own(RoomEvent::Notice(notice)) => notices.push((notice, encoded)),
                Held::Local(_, RoomEvent::Message(_)) | Held::Remote(_) | Held::Own(_) => {
                    state.send_notices(notices, &self.metrics);
                    self.metrics.broadcast(state.broadcast(&encoded, None));
                }
            }
        }
        let head = state.head;
        state.expected = state.expected.max(head);
        state.late_acks.retain(|(seq, sender, ack)| {
            let due = *seq <= head;
            if due {
                sender.send_reply(&ServerMsg::Ack(ack.clone()));
            }
            !due
        });
    }
}

/// The writer reports here: acknowledge and broadcast what it stored.
impl Committed for Room {
    fn room_name(&self) -> &RoomName {
        &self.name
    }

    fn committed_all(&self, writes: Vec<(Draft, Outcome)>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        // The commit's stored notices go out together (one frame per member
        // for a run of them), messages one by one, all in seq order.
        let mut notices: Vec<(Notice, Encoded)> = Vec::new();
        for (draft, outcome) in writes {
            match (draft, outcome) {
                (draft, Outcome::Stored(event)) => {
                    self.hold(state, Held::Local(draft, event));
                    self.drain(state, &mut notices, false);
                }
                (Draft::Message { cid, sender, .. }, Outcome::Duplicate(seq, ts)) => {
                    let ack = Ack { cid, seq, ts };
                    if seq <= state.head {
                        sender.send_reply(&ServerMsg::Ack(ack));
                    } else {
                        // Stored by a round whose answer was lost, or on
                        // another instance: acked once it is delivered here.
                        state.expected = state.expected.max(seq);
                        state.late_acks.push((seq, sender, ack));
                    }
                }
                (Draft::Message { cid, sender, .. }, Outcome::Failed(HistoryError::Busy)) => {
                    debug!(room = %self.name, conn = sender.id, "re-send not looked up: the writer is busy");
                    self.metrics.rate_limited.inc();
                    sender.send_reply(&ServerMsg::Error(ErrorMsg {
                        code: ErrorCode::RateLimited,
                        message: "the server is busy; the message will be sent again shortly".into(),
                        cid: Some(cid.to_string()),
                    }));
                }
                (Draft::Message { cid, sender, .. }, Outcome::Failed(e)) => {
                    // The details are for the log, not for clients.
                    warn!(room = %self.name, conn = sender.id, error = %e, "message not stored");
                    sender.send_reply(&ServerMsg::Error(ErrorMsg {
                        code: ErrorCode::StorageUnavailable,
                        message: "the message was not stored; it will be sent again".into(),
                        cid: Some(cid.to_string()),
                    }));
                }
                (Draft::Notice { kind, .. }, Outcome::Failed(e)) => {
                    warn!(room = %self.name, ?kind, error = %e, "notice not stored");
                }
                (Draft::Notice { .. }, Outcome::Duplicate(seq, _)) => state.expected = state.expected.max(seq),
            }
        }
        state.send_notices(&mut notices, &self.metrics);
    }

    fn deliver(&self, history_id: &str, events: Vec<RoomEvent>, arrival: Arrival) {
        let mut guard = self.lock();
        let state = &mut *guard;
        if history_id != state.history_id {
            debug!(room = %self.name, history = %history_id, "events of another history are ignored");
            return;
        }
        for event in events {
            let held = if arrival == Arrival::Own { Held::Own(event) } else { Held::Remote(event) };
            self.hold(state, held);
        }
        let mut notices: Vec<(Notice, Encoded)> = Vec::new();
        let filled = matches!(arrival, Arrival::Filled { .. });
        self.drain(state, &mut notices, filled);
        if let Arrival::Filled { upto } = arrival
            && state.head < upto
        {
            // The store no longer has them (retention): skip them, and let
            // the members resume, so each replay counts them as missed.
            warn!(room = %self.name, from = state.head.0 + 1, to = upto.0, "events no longer stored are skipped; members resume");
            for member in state.members.values() {
                if let Some(conn) = &member.conn {
                    conn.kick(CloseReason::Lagged);
                }
            }
            while state.head < upto {
                // Each turn skips to just before the next held event and
                // delivers from there: the head moves on every turn.
                let to = state.pending.first_key_value().map_or(upto, |(first, _)| Seq(first.0 - 1)).min(upto);
                state.head = state.head.max(to);
                self.drain(state, &mut notices, true);
            }
        }
        state.send_notices(&mut notices, &self.metrics);
    }

    fn follow_up(&self) -> Option<FollowUp> {
        let state = self.lock();
        if state.overflowed {
            return Some(FollowUp::Reload);
        }
        let waiting = state.pending.last_key_value().map(|(seq, _)| *seq);
        let acks = state.late_acks.iter().map(|(seq, ..)| *seq).max();
        let upto = waiting.into_iter().chain(acks).fold(state.expected, Seq::max);
        if upto > state.head {
            return Some(FollowUp::Fill { history_id: state.history_id.clone(), after: state.head, upto });
        }
        state.elsewhere.gap().then_some(FollowUp::Members)
    }

    fn member_elsewhere(&self, change: MemberChange) -> Option<std::time::Duration> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let members = &state.members;
        let applied = state.elsewhere.apply(change, |key| members.contains_key(key));
        match applied {
            Applied::Nothing => None,
            // Another instance holds the name now: the member here moved
            // there (and its end here is no news).
            Applied::Joined { key, member } if state.members.contains_key(&key) => {
                state.evict_ghosts(&key, &glyph_key(&member.name));
                None
            }
            // A small room's joins and leaves are stored notices, which
            // reach everyone through the store; a big room's are batched
            // by each instance for its own members.
            Applied::Joined { member, .. } if state.count() > self.limits.presence_threshold => {
                self.batch(state, NoticeKind::Joined, member)
            }
            Applied::Left(member) if state.count() >= self.limits.presence_threshold => {
                self.batch(state, NoticeKind::Left, member)
            }
            Applied::Joined { .. } | Applied::Left(_) => None,
        }
    }

    fn members_reset(&self, read: store::Elsewhere) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let members = &state.members;
        state.elsewhere.reset(read, |key| members.contains_key(key));
    }

    fn flush_batched(&self) -> Option<std::time::Duration> {
        self.flush_presence()
    }

    fn typing_from_elsewhere(&self, name: UserName, active: bool) {
        let state = self.lock();
        let sent = state.broadcast(&encode(&ServerMsg::Typing(TypingUpdate { name, active })), None);
        self.metrics.broadcast(sent);
    }

    fn position(&self) -> (String, Seq) {
        let state = self.lock();
        (state.history_id.clone(), state.head)
    }

    fn reload(&self, fresh: FreshHistory) {
        self.take_history(fresh, true);
    }
}

impl RoomState {
    /// Whether `end` ends `who`'s membership: a leave from its current
    /// connection, or a grace period it did not come back within.
    fn ends(&self, who: &Membership, end: End) -> bool {
        self.members.get(&who.key).is_some_and(|m| {
            m.id == who.member_id
                && match end {
                    End::Leave(conn) => m.conn.as_ref().is_some_and(|c| c.id == conn),
                    End::Expire(epoch) => m.epoch == epoch && m.conn.is_none(),
                }
        })
    }

    /// Drops, without a word, the members under `key` or with the glyph
    /// key `glyph`: ghosts of a name the store gave this instance afresh.
    /// Their connections, if any, are closed as replaced.
    fn evict_ghosts(&mut self, key: &str, glyph: &str) {
        let mut ghosts = Vec::new();
        if self.members.contains_key(key) {
            ghosts.push(key.to_owned());
        }
        if self.glyphs.contains(glyph) {
            ghosts.extend(self.members.iter().filter(|(_, m)| glyph_key(&m.name) == glyph).map(|(k, _)| k.clone()));
        }
        for ghost in ghosts {
            if let Some(member) = self.remove(&ghost) {
                debug!(member = member.id, "a member that moved to another instance is dropped");
                if let Some(conn) = member.conn {
                    conn.kick(CloseReason::Replaced);
                }
            }
        }
    }

    /// Removes a member, and its name's glyph key and place in the order with it.
    fn remove(&mut self, key: &str) -> Option<MemberEntry> {
        let member = self.members.remove(key)?;
        self.glyphs.remove(glyph_key(&member.name).as_str());
        self.by_order.remove(member.name.key().as_str());
        Some(member)
    }

    /// Up to `limit` members after the lower-cased name `after` (from the
    /// first when `None`), in that order.
    /// The members here and elsewhere are disjoint by name, so merging
    /// the two orders lists each once.
    fn page_after<'a>(&'a self, after: Option<&str>, limit: usize) -> impl Iterator<Item = Entry<'a>> + 'a {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut here = self.by_order.range::<str, _>((from, Bound::Unbounded)).peekable();
        let mut there = self.elsewhere.range_after(after).peekable();
        let after_elsewhere = |here: &str, elsewhere: &str| here > elsewhere;
        std::iter::from_fn(move || match (here.peek(), there.peek()) {
            (Some((h, _)), Some((t, _))) if after_elsewhere(h, t) => there.next().map(|(_, r)| Entry::Elsewhere(r)),
            (Some(_), _) => here.next().map(|(_, l)| Entry::Here(l)),
            (None, _) => there.next().map(|(_, r)| Entry::Elsewhere(r)),
        })
        .take(limit)
    }

    /// Members here and on other instances.
    fn count(&self) -> usize {
        self.members.len() + self.elsewhere.len()
    }

    /// True if memory holds every event after `seq` up to the head.
    fn covers(&self, seq: Seq) -> bool {
        self.head == seq || self.recent.front().is_some_and(|first| first.seq <= seq.next())
    }

    fn latest_iter(&self, limit: usize) -> std::iter::Skip<std::collections::vec_deque::Iter<'_, RecentEvent>> {
        let skip = self.recent.len().saturating_sub(limit);
        self.recent.iter().skip(skip)
    }

    /// Sends a run of stored notices to every member: one as its own
    /// frame, several as one `notices` frame.
    fn send_notices(&self, notices: &mut Vec<(Notice, Encoded)>, metrics: &Metrics) {
        match notices.len() {
            0 => return,
            1 => metrics.broadcast(self.broadcast(&notices[0].1, None)),
            _ => {
                let notices = notices.iter().map(|(n, _)| n.clone()).collect();
                metrics.broadcast(self.broadcast(&encode(&ServerMsg::Notices(NoticeBatch { notices })), None));
            }
        }
        notices.clear();
    }

    /// Queues one shared encoded message for every attached member except
    /// `except`; returns to how many.
    fn broadcast(&self, encoded: &Encoded, except: Option<MemberId>) -> usize {
        let mut sent = 0;
        for member in self.members.values() {
            if Some(member.id) == except {
                continue;
            }
            if let Some(conn) = &member.conn {
                conn.send(encoded);
                sent += 1;
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::{HookedStore, MemoryStore};
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
            let room = Room::open(RoomName::default(), store.clone(), limits, Arc::default()).expect("opens");
            Self { store, room }
        }

        /// What the writer does: store, then report back.
        fn commit(&self, draft: impl IntoDraft) -> Outcome {
            let draft = draft.into_draft();
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
                .say(who, conn, ClientMsgId::parse(cid).expect("valid"), MessageText::parse(text).expect("valid"), None)
                .expect("a member");
            self.commit(draft)
        }
    }

    /// A small room's announcement is a notice for the writer.
    trait IntoDraft {
        fn into_draft(self) -> Draft;
    }

    impl IntoDraft for Draft {
        fn into_draft(self) -> Draft {
            self
        }
    }

    impl IntoDraft for Announce {
        fn into_draft(self) -> Draft {
            match self {
                Announce::Notice(draft) => draft,
                Announce::Batched(_) => panic!("expected a stored notice, got a batched change"),
            }
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
            history_max_bytes: usize::MAX,
            prefetched: None,
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
    fn the_notices_of_one_commit_go_out_as_one_frame_and_messages_keep_their_place() {
        let f = Fixture::new();
        let (ada, ada_conn, mut ada_rx) = f.join(1, "Ada", "t1");
        let (mut drafts, mut conns) = (Vec::new(), Vec::new());
        for (id, name) in [(2, "Bob"), (3, "Cy")] {
            let (conn, rx) = channel(id, 64);
            let (_, kind) = f.room.join(request(name, None, None), &conn, id, token(&format!("t{id}"))).expect("joins");
            let JoinKind::Joined(announce) = kind else { panic!("new member") };
            drafts.push(announce.into_draft());
            conns.push((conn, rx));
        }
        let text = MessageText::parse("hi").expect("valid");
        drafts.push(f.room.say(&ada, &ada_conn, ClientMsgId::parse("c1").expect("valid"), text, None).expect("member"));
        let (conn, rx) = channel(4, 64);
        let (_, JoinKind::Joined(dee)) = f.room.join(request("Dee", None, None), &conn, 4, token("t4")).expect("joins")
        else {
            panic!("new member")
        };
        drafts.push(dee.into_draft());
        conns.push((conn, rx));
        // One commit: two joins, a message, a join.
        let writes = drafts.into_iter().map(|d| (d.clone(), f.store.apply(&f.room.name, &d))).collect();
        f.room.committed_all(writes);
        let (_, bob_rx) = &mut conns[0];
        let got = drain(bob_rx);
        let kinds: Vec<String> = got
            .iter()
            .map(|m| match m {
                ServerMsg::Welcome(_) => "welcome".to_owned(),
                ServerMsg::Notices(b) => format!("notices {:?}", b.notices.iter().map(|n| n.seq.0).collect::<Vec<_>>()),
                ServerMsg::Message(m) => format!("message {}", m.seq.0),
                ServerMsg::Notice(n) => format!("notice {}", n.seq.0),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["welcome", "notices [2, 3]", "message 4", "notice 5"]);
        assert!(matches!(
            drain(&mut ada_rx).as_slice(),
            [ServerMsg::Notices(_), ServerMsg::Ack(_), ServerMsg::Notice(_)]
        ));
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
    fn a_name_that_looks_like_a_members_is_taken() {
        let f = Fixture::new();
        let (conn, _rx) = channel(99, 8);
        let taken = |name: &str| {
            matches!(f.room.join(request(name, None, None), &conn, 99, token("t")), Err(JoinError::NameTaken))
        };
        f.join(1, "José", "t1");
        assert!(taken("Jose\u{301}"), "composed or not, the same letters");
        assert!(taken("JOSE\u{301}"));
        f.join(2, "Ada", "t2");
        assert!(taken("ADA"));
        assert!(taken("\u{410}da"), "Cyrillic А");
        f.join(3, "paypal", "t3");
        assert!(taken("paypaI"), "capital I");
        assert!(taken("p\u{430}yp\u{430}l"), "Cyrillic а");
        f.join(4, "BiII", "t4");
        assert!(taken("Bill"), "whoever came first");
        // Names that only resemble each other still share a room.
        f.join(5, "Kai", "t5");
        f.join(6, "Kal", "t6");
        f.join(7, "Jose", "t7");
        assert_eq!(f.room.member_count(), 7);
    }

    #[test]
    fn a_resume_finds_its_member_by_the_folded_key() {
        let f = Fixture::new();
        let (jose, conn, _rx) = f.join(1, "José", "t1");
        f.room.detach(&jose, conn.id).expect("attached");
        let (back, mut back_rx) = channel(2, 8);
        let (again, kind) =
            f.room.join(request("jose\u{301}", Some("t1"), Some(1)), &back, 2, token("t2")).expect("resumes");
        assert!(matches!(kind, JoinKind::Resumed));
        assert_eq!(
            (again.member_id, again.key.as_str(), again.name.as_str()),
            (jose.member_id, jose.key.as_str(), "José")
        );
        assert!(matches!(drain(&mut back_rx).as_slice(), [ServerMsg::Welcome(w)] if w.you.name.as_str() == "José"));
    }

    #[test]
    fn a_welcome_lists_members_by_their_lower_cased_names() {
        let f = Fixture::new();
        // Keyed by skeleton, "mary" would be "rnary", after "ray".
        f.join(1, "Ray", "t1");
        f.join(2, "mary", "t2");
        f.join(3, "Émile", "t3");
        let (conn, mut rx) = channel(4, 8);
        f.room.join(request("Zed", None, None), &conn, 4, token("t4")).expect("joins");
        match drain(&mut rx).as_slice() {
            [ServerMsg::Welcome(w)] => assert_eq!(
                w.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
                ["mary", "Ray", "Zed", "Émile"]
            ),
            other => panic!("expected a welcome, got {other:?}"),
        }
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

    /// A message event of `name` at `seq`, as another instance stored it.
    fn message_at(seq: u64, name: &str, cid: &str) -> RoomEvent {
        let name = UserName::parse(name).expect("valid");
        RoomEvent::Message(natter_shared::ChatMessage {
            seq: Seq(seq),
            ts: natter_shared::Timestamp(seq),
            color: color_for(&name),
            text: MessageText::parse(&format!("{name} {seq}")).expect("valid"),
            cid: Some(ClientMsgId::parse(cid).expect("valid")),
            name,
        })
    }

    /// Decoded frames as (kind, seq) pairs, to compare orders.
    fn order(msgs: &[ServerMsg]) -> Vec<(&'static str, u64)> {
        msgs.iter()
            .filter_map(|m| match m {
                ServerMsg::Ack(a) => Some(("ack", a.seq.0)),
                ServerMsg::Message(m) => Some(("message", m.seq.0)),
                ServerMsg::Notice(n) => Some(("notice", n.seq.0)),
                _ => None,
            })
            .collect()
    }

    /// Ada's `say` as the writer reports it stored under `seq`.
    fn report(f: &Fixture, ada: &Membership, conn: &ConnHandle, cid: &str, seq: u64) {
        let text = MessageText::parse("mine").expect("valid");
        let draft = f.room.say(ada, conn, ClientMsgId::parse(cid).expect("valid"), text, None).expect("a member");
        let event = draft.clone().into_event(Seq(seq), natter_shared::Timestamp(seq));
        f.room.committed(draft, Outcome::Stored(event));
    }

    #[test]
    fn events_from_elsewhere_go_out_in_seq_order_with_own_writes_and_their_acks() {
        let f = Fixture::new();
        let (ada, ada_conn, mut ada_rx) = f.join(1, "Ada", "t1");
        let (_, _, mut bob_rx) = f.join(2, "Bob", "t2");
        drain(&mut ada_rx);
        let id = f.room.position().0;
        // Another instance's seq 4 arrives before this one's seq 3 is reported.
        f.room.deliver(&id, vec![message_at(4, "Cy", "x4")], Arrival::Remote);
        assert!(drain(&mut bob_rx).is_empty(), "4 waits for 3");
        assert_eq!(f.room.follow_up(), Some(FollowUp::Fill { history_id: id.clone(), after: Seq(2), upto: Seq(4) }));
        report(&f, &ada, &ada_conn, "c3", 3);
        assert_eq!(order(&drain(&mut ada_rx)), [("ack", 3), ("message", 4)]);
        assert_eq!(order(&drain(&mut bob_rx)), [("message", 3), ("message", 4)]);
        assert_eq!((f.room.head(), f.room.follow_up()), (Seq(4), None));
        // A copy heard again (an overlap of channel and fill) is dropped.
        f.room.deliver(&id, vec![message_at(4, "Cy", "x4")], Arrival::Filled { upto: Seq(4) });
        assert!(drain(&mut bob_rx).is_empty());
        // Events of another history are not this room's.
        f.room.deliver("other", vec![message_at(5, "Cy", "x5")], Arrival::Remote);
        assert_eq!((f.room.head(), f.room.follow_up()), (Seq(4), None));
    }

    #[test]
    fn an_own_write_heard_on_the_channel_waits_for_its_report_and_its_ack() {
        let f = Fixture::new();
        let (ada, ada_conn, mut ada_rx) = f.join(1, "Ada", "t1");
        let (_, _, mut bob_rx) = f.join(2, "Bob", "t2");
        drain(&mut ada_rx);
        let id = f.room.position().0;
        f.room.deliver(&id, vec![message_at(3, "Ada", "c3")], Arrival::Own);
        assert!(drain(&mut bob_rx).is_empty() && drain(&mut ada_rx).is_empty(), "the report carries the ack");
        report(&f, &ada, &ada_conn, "c3", 3);
        assert_eq!(order(&drain(&mut ada_rx)), [("ack", 3)], "acked, not echoed");
        assert_eq!(order(&drain(&mut bob_rx)), [("message", 3)]);
        // With no report (its round's answer was lost) a fill delivers it to everyone.
        f.room.deliver(&id, vec![message_at(4, "Ada", "c4")], Arrival::Own);
        assert_eq!(f.room.follow_up(), Some(FollowUp::Fill { history_id: id.clone(), after: Seq(3), upto: Seq(4) }));
        f.room.deliver(&id, vec![message_at(4, "Ada", "c4")], Arrival::Filled { upto: Seq(4) });
        assert_eq!(order(&drain(&mut ada_rx)), [("message", 4)]);
        assert_eq!(order(&drain(&mut bob_rx)), [("message", 4)]);
    }

    #[test]
    fn a_resent_message_stored_elsewhere_is_acked_after_its_event() {
        let f = Fixture::new();
        let (ada, ada_conn, mut ada_rx) = f.join(1, "Ada", "t1");
        drain(&mut ada_rx);
        let id = f.room.position().0;
        let draft = f
            .room
            .say(
                &ada,
                &ada_conn,
                ClientMsgId::parse("c3").expect("valid"),
                MessageText::parse("hi").expect("valid"),
                None,
            )
            .expect("a member");
        f.room.committed(draft, Outcome::Duplicate(Seq(3), natter_shared::Timestamp(3)));
        assert!(drain(&mut ada_rx).is_empty(), "no ack of a seq the page has not seen the events up to");
        assert_eq!(f.room.follow_up(), Some(FollowUp::Fill { history_id: id.clone(), after: Seq(1), upto: Seq(3) }));
        let filled = vec![message_at(2, "Cy", "x2"), message_at(3, "Ada", "c3")];
        f.room.deliver(&id, filled, Arrival::Filled { upto: Seq(3) });
        assert_eq!(order(&drain(&mut ada_rx)), [("message", 2), ("message", 3), ("ack", 3)]);
        assert_eq!(f.room.follow_up(), None);
    }

    #[test]
    fn events_the_store_no_longer_has_are_skipped_and_members_resume() {
        let f = Fixture::new();
        let (_, _, mut rx) = f.join(1, "Ada", "t1");
        let id = f.room.position().0;
        f.room.deliver(&id, vec![message_at(5, "Cy", "x5")], Arrival::Remote);
        f.room.deliver(&id, vec![message_at(3, "Cy", "x3")], Arrival::Filled { upto: Seq(4) });
        assert_eq!(f.room.head(), Seq(5), "2 and 4 are gone: skipped, 3 and 5 delivered");
        assert_eq!(order(&drain(&mut rx)), [("message", 3), ("message", 5)]);
        assert_eq!(rx.kick().reason(), Some(CloseReason::Lagged), "the page resumes and counts 4 as missed");
    }

    #[test]
    fn a_full_reorder_buffer_is_dropped_and_the_history_read_afresh() {
        let f = Fixture::new();
        let (_, _, mut rx) = f.join(1, "Ada", "t1");
        let id = f.room.position().0;
        let far: Vec<RoomEvent> = (0..=PENDING_MAX as u64).map(|i| message_at(10 + i, "Cy", "x")).collect();
        f.room.deliver(&id, far, Arrival::Remote);
        assert_eq!(f.room.follow_up(), Some(FollowUp::Reload));
        assert!(drain(&mut rx).is_empty());
        let head = Seq(10 + PENDING_MAX as u64);
        f.room.reload(FreshHistory { id: id.clone(), head, latest: vec![message_at(head.0, "Cy", "x")] });
        assert_eq!((f.room.head(), f.room.follow_up()), (head, None));
        assert_eq!(rx.kick().reason(), Some(CloseReason::Lagged), "members resume from the store");
    }

    /// A message the writer did not store is refused to its sender with
    /// the error's code (a storage failure, or the writer too busy to look
    /// a re-send up: `rate_limited`, which the page sends again) and goes to
    /// nobody else.
    #[test]
    fn a_failed_store_is_refused_to_the_sender_and_not_delivered() {
        let f = Fixture::new();
        let (ada, ada_conn, mut ada_rx) = f.join(1, "Ada", "t1");
        let (_, _, mut bob_rx) = f.join(2, "Bob", "t2");
        drain(&mut ada_rx);
        let failures = [
            (HistoryError::Unavailable("disk full".into()), ErrorCode::StorageUnavailable),
            (HistoryError::Busy, ErrorCode::RateLimited),
        ];
        for (i, (error, code)) in failures.into_iter().enumerate() {
            let cid = format!("c{i}");
            let draft = f
                .room
                .say(
                    &ada,
                    &ada_conn,
                    ClientMsgId::parse(&cid).expect("valid"),
                    MessageText::parse("x").expect("valid"),
                    Some(Seq(1)),
                )
                .expect("member");
            f.room.committed(draft, Outcome::Failed(error));
            match drain(&mut ada_rx).as_slice() {
                [ServerMsg::Error(e)] => {
                    assert_eq!(e.code, code);
                    assert_eq!(e.cid.as_deref(), Some(cid.as_str()));
                }
                other => panic!("expected {code:?}, got {other:?}"),
            }
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

    /// The token of the welcome queued on `rx`.
    fn welcome_token(rx: &mut ConnReceiver) -> String {
        match drain(rx).as_slice() {
            [ServerMsg::Welcome(w)] => w.resume_token.as_str().to_owned(),
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    #[test]
    fn a_resume_rotates_the_token_and_the_old_one_is_refused() {
        let f = Fixture::new();
        let (ada, conn, _rx) = f.join(1, "Ada", "t1");
        f.room.detach(&ada, conn.id).expect("attached");
        let (second, mut second_rx) = channel(2, 8);
        f.room.join(request("Ada", Some("t1"), None), &second, 2, token("t2")).expect("resumes");
        assert_eq!(welcome_token(&mut second_rx), "t2", "the welcome carries the new token");

        // The old token no longer works, attached or not, and kicks no one.
        let (third, _third_rx) = channel(3, 8);
        let stale = f.room.join(request("Ada", Some("t1"), None), &third, 3, token("t3"));
        assert!(matches!(stale, Err(JoinError::NameTaken)));
        assert_eq!(second.kick_reason(), None);
        f.room.detach(&ada, second.id).expect("attached");
        let stale = f.room.join(request("Ada", Some("t1"), None), &third, 3, token("t3"));
        assert!(matches!(stale, Err(JoinError::NameTaken)));

        // The new one does, once: it rotates again.
        let (fourth, mut fourth_rx) = channel(4, 8);
        let (again, kind) = f.room.join(request("Ada", Some("t2"), None), &fourth, 4, token("t4")).expect("resumes");
        assert!(matches!(kind, JoinKind::Resumed));
        assert_eq!(again.member_id, ada.member_id);
        assert_eq!(welcome_token(&mut fourth_rx), "t4");
        let (fifth, _fifth_rx) = channel(5, 8);
        assert!(matches!(
            f.room.join(request("Ada", Some("t2"), None), &fifth, 5, token("t5")),
            Err(JoinError::NameTaken)
        ));
        assert_eq!(fourth.kick_reason(), None);
    }

    #[test]
    fn a_token_dies_with_its_membership() {
        let f = Fixture::new();
        let (ada, conn, _rx) = f.join(1, "Ada", "t1");
        f.commit(f.room.leave(&ada, conn.id).expect("left"));
        // After a leave the old token is just ignored: a new member, a new token.
        let (back, mut back_rx) = channel(2, 8);
        let (again, kind) = f.room.join(request("Ada", Some("t1"), None), &back, 2, token("t2")).expect("joins");
        assert!(matches!(kind, JoinKind::Joined(_)), "not a resume");
        assert_ne!(again.member_id, ada.member_id);
        assert_eq!(welcome_token(&mut back_rx), "t2");
        // Likewise after the grace period ran out.
        let epoch = f.room.detach(&again, back.id).expect("attached");
        f.commit(f.room.expire(&again, epoch).expect("timed out"));
        let (third, _third_rx) = channel(3, 8);
        let (_, kind) = f.room.join(request("Ada", Some("t2"), None), &third, 3, token("t3")).expect("joins");
        assert!(matches!(kind, JoinKind::Joined(_)), "not a resume");
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
    fn a_history_read_afresh_replaces_the_rooms_and_sends_its_members_to_resume() {
        let f = Fixture::new();
        let (_ada, _conn, rx) = f.join(1, "Ada", "t1");
        let old = f.room.lock().history_id.clone();
        let fresh = |id: &str, head: u64| FreshHistory { id: id.into(), head: Seq(head), latest: Vec::new() };
        // A read older than what the room announced changes nothing, and a
        // join's check takes only a new history.
        f.room.take_history(fresh(&old, 0), true);
        f.room.take_history(fresh(&old, 9), false);
        assert_eq!((rx.kick().reason(), f.room.head()), (None, Seq(1)));
        f.room.take_history(fresh("new", 0), false);
        assert_eq!(rx.kick().reason(), Some(CloseReason::Lagged), "Ada's page resumes");
        assert_eq!(f.room.member_count(), 1, "and keeps its membership");
        // A newcomer's welcome is of the new history; a resume of the old one gets no replay.
        let (conn, mut bob_rx) = channel(2, 64);
        f.room.join(request("Bob", None, Some(1)), &conn, 2, token("t2")).expect("joins");
        match drain(&mut bob_rx).as_slice() {
            [ServerMsg::Welcome(w)] => {
                assert_eq!((w.history_id.as_str(), w.seq_head, w.history.len()), ("new", Seq(0), 0));
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
        // The same history with events never announced (a lost report) is taken too.
        let joined = Notice {
            seq: Seq(3),
            ts: natter_shared::Timestamp(1),
            kind: NoticeKind::Joined,
            name: UserName::parse("Cy").expect("valid"),
            color: Color("#000000".into()),
        };
        f.room.take_history(
            FreshHistory { id: "new".into(), head: Seq(3), latest: vec![RoomEvent::Notice(joined)] },
            true,
        );
        assert_eq!(f.room.head(), Seq(3));
    }

    #[tokio::test]
    async fn replays_come_from_memory_or_the_store_and_respect_the_history_id() {
        let limits = RoomLimits { welcome_history: 3, ..RoomLimits::default() };
        let f = Fixture::with_limits(limits);
        let (ada, conn, mut rx) = f.join(1, "Ada", "t1");
        for i in 0..6 {
            f.say(&ada, &conn, &format!("c{i}"), "x");
        }
        drain(&mut rx);
        // head 7; memory keeps 5..=7; a replay after 2 reads the store.
        let (other, mut other_rx) = channel(2, 8);
        f.room.enter(request("Bob", None, Some(2)), &other, 2, token("t2")).await.expect("joins");
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

    #[tokio::test]
    async fn a_replay_is_read_off_the_async_thread_and_without_the_room_lock() {
        // The replay read says which thread it runs on, then waits until
        // another thread has taken the room's lock.
        let inner = MemoryStore::new(100);
        let (reading_tx, reading_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let read_on = Arc::new(std::sync::Mutex::new(None));
        let (reading, go, on) = (std::sync::Mutex::new(reading_tx), std::sync::Mutex::new(go_rx), read_on.clone());
        let mut hooked = HookedStore::over(inner.clone());
        hooked.on_after = Box::new(move || {
            *on.lock().expect("lock") = Some(std::thread::current().id());
            let _ = reading.lock().expect("lock").send(());
            let go = go.lock().expect("lock").recv_timeout(std::time::Duration::from_secs(2));
            go.map_err(|_| HistoryError::Unavailable("the room stayed locked during the read".into()))
        });
        let store = Arc::new(hooked);
        let limits = RoomLimits { welcome_history: 2, ..RoomLimits::default() };
        let room = Arc::new(Room::open(RoomName::default(), store.clone(), limits, Arc::default()).expect("opens"));
        let (ada_conn, _ada_rx) = channel(1, 64);
        let (ada, JoinKind::Joined(notice)) =
            room.join(request("Ada", None, None), &ada_conn, 1, token("t1")).expect("joins")
        else {
            panic!("a new member")
        };
        let notice = notice.into_draft();
        let outcome = inner.apply(&room.name, &notice);
        room.committed(notice, outcome);
        for i in 0..5 {
            let draft = room
                .say(
                    &ada,
                    &ada_conn,
                    ClientMsgId::parse(&format!("c{i}")).expect("valid"),
                    MessageText::parse("x").expect("valid"),
                    None,
                )
                .expect("member");
            let outcome = inner.apply(&room.name, &draft);
            room.committed(draft, outcome);
        }
        // While the store reads, another thread takes the room's lock.
        let other = room.clone();
        let locker = std::thread::spawn(move || {
            if reading_rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok() {
                let _ = other.member_count();
                let _ = go_tx.send(());
            }
        });
        let (bob, mut bob_rx) = channel(2, 8);
        room.enter(request("Bob", None, Some(1)), &bob, 2, token("t2")).await.expect("joins while the room is usable");
        locker.join().expect("the other thread");
        assert_ne!(*read_on.lock().expect("lock"), Some(std::thread::current().id()), "read on a blocking thread");
        match drain(&mut bob_rx).as_slice() {
            [ServerMsg::Welcome(w)] => {
                assert_eq!(w.history.iter().map(|e| e.seq().0).collect::<Vec<_>>(), [2, 3, 4, 5, 6])
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn replies_keep_the_latest_events_that_fit_in_their_bytes() {
        assert_eq!(fit_from(&[10, 10, 10], 25), 1);
        assert_eq!(fit_from(&[10, 10, 10], 30), 0);
        assert_eq!(fit_from(&[50], 10), 0, "one event always goes");
        assert_eq!(fit_from(&[], 10), 0);
        let f = Fixture::new();
        let (ada, conn, _rx) = f.join(1, "Ada", "t1");
        for i in 0..5 {
            f.say(&ada, &conn, &format!("c{i}"), &"é".repeat(500));
        }
        let page = f.room.history(Seq(7), 10, 2500).await.expect("reads");
        assert_eq!(page.events.iter().map(|e| e.seq().0).collect::<Vec<_>>(), [5, 6]);
        assert!(!page.complete, "the older ones are still to fetch");
        let (other, mut other_rx) = channel(2, 8);
        let mut req = request("Bob", None, Some(1));
        // 2500 bytes of events beside the fixed part and two members.
        req.history_max_bytes = 2800;
        f.room.join(req, &other, 2, token("t2")).expect("joins");
        match drain(&mut other_rx).as_slice() {
            [ServerMsg::Welcome(w)] => {
                assert_eq!(w.history.iter().map(|e| e.seq().0).collect::<Vec<_>>(), [5, 6]);
                assert_eq!(w.missed, Some(3), "seqs 2 to 4 left out");
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    #[test]
    fn a_look_alike_name_is_free_again_once_its_member_is_gone() {
        let f = Fixture::new();
        let (ada, ada_conn, _rx) = f.join(1, "Ada", "t1");
        let (conn, _other_rx) = channel(2, 8);
        assert!(matches!(
            f.room.join(request("\u{410}da", None, None), &conn, 2, token("t2")),
            Err(JoinError::NameTaken)
        ));
        f.room.leave(&ada, ada_conn.id).expect("left");
        f.room.join(request("\u{410}da", None, None), &conn, 2, token("t2")).expect("the look-alike is free now");
    }

    #[test]
    fn a_welcome_with_its_member_list_stays_within_its_bytes() {
        // A small room (every join a stored notice) of 31.
        let f = Fixture::with_limits(RoomLimits { presence_threshold: 40, ..RoomLimits::default() });
        let (ada, conn, _rx) = f.join(1, "Ada", "t1");
        for i in 0..30 {
            f.join(10 + i, &format!("member-number-{i:04}"), &format!("t{}", 10 + i));
        }
        for i in 0..5 {
            f.say(&ada, &conn, &format!("c{i}"), &"é".repeat(500));
        }
        let (other, other_rx) = channel(2, 8);
        let mut req = request("Bob", None, None);
        req.history_max_bytes = 6000;
        f.room.join(req, &other, 2, token("t2")).expect("joins");
        let queued = other_rx.take().encoded;
        let welcome = queued.front().expect("a welcome");
        assert!(welcome.len() <= 6000, "a welcome of {} bytes for 6000", welcome.len());
        let ServerMsg::Welcome(w) = serde_json::from_str(welcome.as_str()).expect("json") else { panic!("a welcome") };
        assert!(!w.history.is_empty() && w.history.len() < 36, "the latest events that fit beside the members");
    }

    #[tokio::test]
    async fn older_pages_stop_at_the_first_event() {
        let f = Fixture::new();
        let (ada, conn, _rx) = f.join(1, "Ada", "t1");
        for i in 0..5 {
            f.say(&ada, &conn, &format!("c{i}"), "x");
        }
        let page = f.room.history(Seq(6), 3, usize::MAX).await.expect("reads");
        assert_eq!(page.events.iter().map(|e| e.seq().0).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(!page.complete);
        let page = f.room.history(Seq(3), 3, usize::MAX).await.expect("reads");
        assert_eq!(page.events.iter().map(|e| e.seq().0).collect::<Vec<_>>(), [1, 2]);
        assert!(page.complete);
    }

    /// A room that batches presence above two members.
    fn big_room() -> Fixture {
        Fixture::with_limits(RoomLimits { presence_threshold: 2, ..RoomLimits::default() })
    }

    /// Joins `name` into a room past its threshold: the join waits in the batch.
    fn join_batched(f: &Fixture, id: u64, name: &str) -> (Membership, ConnHandle, ConnReceiver, Announce) {
        let (conn, mut rx) = channel(id, 64);
        let (m, kind) = f.room.join(request(name, None, None), &conn, id, token(&format!("t{id}"))).expect("joins");
        assert!(matches!(drain(&mut rx).as_slice(), [ServerMsg::Welcome(_)]));
        let JoinKind::Joined(announce) = kind else { panic!("a new member") };
        (m, conn, rx, announce)
    }

    fn presences(rx: &mut ConnReceiver) -> Vec<Presence> {
        drain(rx)
            .into_iter()
            .map(|msg| match msg {
                ServerMsg::Presence(p) => p,
                other => panic!("expected only presence, got {other:?}"),
            })
            .collect()
    }

    fn names(members: &[Member]) -> Vec<&str> {
        members.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn past_the_threshold_joins_and_leaves_go_out_as_one_unstored_batch() {
        let f = big_room();
        let (_, _, mut ada_rx) = f.join(1, "Ada", "t1");
        let (_, _, mut bob_rx) = f.join(2, "Bob", "t2");
        drain(&mut ada_rx);
        let head = f.room.head();
        // The third member tips the room over: batched, the first of its batch
        // due at once (no batch went out before).
        let (_, _, mut cy_rx, first) = join_batched(&f, 3, "Cy");
        assert!(matches!(first, Announce::Batched(Some(d)) if d.is_zero()), "{first:?}");
        let (_, _, mut di_rx, second) = join_batched(&f, 4, "Di");
        assert!(matches!(second, Announce::Batched(None)), "the flush is already due: {second:?}");
        assert!(drain(&mut bob_rx).is_empty(), "nothing goes out before the flush");
        f.room.flush_presence();
        for rx in [&mut ada_rx, &mut bob_rx, &mut cy_rx, &mut di_rx] {
            let batches = presences(rx);
            assert_eq!(batches.len(), 1, "one frame per member for the whole batch");
            assert_eq!(names(&batches[0].joined), ["Cy", "Di"]);
            assert_eq!(batches[0].count, 4);
            assert!(batches[0].left.is_empty() && batches[0].is_complete());
        }
        assert_eq!(f.room.head(), head, "nothing stored: no seq taken");
        let stored = f.store.before(&f.room.name, Seq(u64::MAX), 100).expect("reads");
        assert_eq!(stored.len(), 2, "only the two small-room joins are stored");
        // A flush with nothing waiting sends nothing.
        f.room.flush_presence();
        assert!(drain(&mut ada_rx).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_big_rooms_next_batch_waits_its_interval_and_a_short_visit_is_not_announced() {
        let limits = RoomLimits {
            presence_threshold: 1,
            presence_interval: std::time::Duration::from_secs(2),
            ..RoomLimits::default()
        };
        let f = Fixture::with_limits(limits);
        let (_, _, mut ada_rx) = f.join(1, "Ada", "t1");
        let (_, _, _, first) = join_batched(&f, 2, "Bob");
        assert!(matches!(first, Announce::Batched(Some(d)) if d.is_zero()));
        f.room.flush_presence();
        assert_eq!(names(&presences(&mut ada_rx)[0].joined), ["Bob"]);
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        // Cy comes and goes within one batch; Di stays.
        let (cy, cy_conn, _, next) = join_batched(&f, 3, "Cy");
        assert!(
            matches!(next, Announce::Batched(Some(d)) if d == std::time::Duration::from_millis(1500)),
            "the rest of the interval since the last batch: {next:?}"
        );
        join_batched(&f, 4, "Di");
        assert!(matches!(f.room.leave(&cy, cy_conn.id), Some(Announce::Batched(None))));
        // Called early, the flush sends nothing and says how long is left.
        assert_eq!(f.room.flush_presence(), Some(std::time::Duration::from_millis(1500)));
        assert!(drain(&mut ada_rx).is_empty());
        tokio::time::advance(std::time::Duration::from_millis(1500)).await;
        assert_eq!(f.room.flush_presence(), None);
        let batch = presences(&mut ada_rx);
        assert_eq!(names(&batch[0].joined), ["Di"], "Cy's visit cancelled out");
        assert!(batch[0].left.is_empty());
        assert_eq!(batch[0].count, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_room_that_grew_since_its_batch_was_due_waits_its_longer_interval() {
        let limits = RoomLimits { presence_threshold: 1, ..RoomLimits::default() };
        let f = Fixture::with_limits(limits.clone());
        let (_, _, mut ada_rx) = f.join(1, "Ada", "t1");
        join_batched(&f, 2, "Bob");
        assert_eq!(f.room.flush_presence(), None, "the first batch goes at once");
        presences(&mut ada_rx);
        // A storm of joins after it: the next batch was due a second later,
        // but a room this size waits longer between batches.
        let crowd = 2 * crate::config::PRESENCE_FRAMES_PER_SEC;
        for i in 0..crowd {
            join_batched(&f, 10 + i as u64, &format!("user{i}"));
        }
        tokio::time::advance(limits.presence_interval).await;
        let longer = limits.presence_interval_for(crowd + 2);
        assert!(longer > limits.presence_interval);
        assert_eq!(f.room.flush_presence(), Some(longer - limits.presence_interval));
        assert!(drain(&mut ada_rx).is_empty(), "not yet");
        tokio::time::advance(longer - limits.presence_interval).await;
        assert_eq!(f.room.flush_presence(), None);
        let batch = presences(&mut ada_rx).remove(0);
        assert_eq!(batch.joined.len() as u32 + batch.more_joined, crowd as u32, "every join, in one batch");
    }

    #[test]
    fn a_batch_names_the_first_changes_and_counts_the_rest() {
        let f = Fixture::with_limits(RoomLimits { presence_threshold: 1, ..RoomLimits::default() });
        let (_, _, mut ada_rx) = f.join(1, "Ada", "t1");
        let extra = 3;
        for i in 0..PRESENCE_NAMES_MAX + extra {
            join_batched(&f, 10 + i as u64, &format!("user{i}"));
        }
        f.room.flush_presence();
        let batch = presences(&mut ada_rx).remove(0);
        assert_eq!(batch.joined.len(), PRESENCE_NAMES_MAX);
        assert_eq!(batch.more_joined, extra as u32);
        assert!(!batch.is_complete());
        assert_eq!(batch.count as usize, 1 + PRESENCE_NAMES_MAX + extra);
    }

    #[test]
    fn a_room_back_under_the_threshold_stores_its_notices_again() {
        let f = big_room();
        let (_, _, mut ada_rx) = f.join(1, "Ada", "t1");
        let (bob, bob_conn, _) = f.join(2, "Bob", "t2");
        let (cy, cy_conn, _, _) = join_batched(&f, 3, "Cy");
        // Cy leaves a room of three: batched. Bob then leaves a room of two: a
        // stored notice, as in any small room.
        assert!(matches!(f.room.leave(&cy, cy_conn.id), Some(Announce::Batched(_))));
        let left = f.room.leave(&bob, bob_conn.id).expect("left");
        assert!(matches!(&left, Announce::Notice(Draft::Notice { kind: NoticeKind::Left, .. })), "{left:?}");
        drain(&mut ada_rx);
        f.commit(left);
        assert!(matches!(drain(&mut ada_rx).as_slice(), [ServerMsg::Notice(n)] if n.kind == NoticeKind::Left));
    }

    #[test]
    fn a_welcome_lists_the_first_page_and_the_count_and_pages_walk_the_rest() {
        let f = Fixture::with_limits(RoomLimits { presence_threshold: 0, ..RoomLimits::default() });
        let total = MEMBERS_PAGE_MAX as usize + 30;
        let mut expected: Vec<String> = Vec::new();
        for i in 0..total {
            let name = format!("Member{i:03}");
            let (conn, _rx) = channel(i as u64 + 1, 8);
            f.room.join(request(&name, None, None), &conn, i as u64 + 1, token(&format!("t{i}"))).expect("joins");
            expected.push(name);
        }
        expected.sort_by_key(|n| n.to_lowercase());
        let (conn, mut rx) = channel(9999, 8);
        f.room.join(request("zed", None, None), &conn, 9999, token("tz")).expect("joins");
        expected.push("zed".into());
        let welcome = match drain(&mut rx).remove(0) {
            ServerMsg::Welcome(w) => w,
            other => panic!("{other:?}"),
        };
        assert_eq!(welcome.member_count as usize, total + 1);
        assert_eq!(
            names(&welcome.members),
            expected[..MEMBERS_PAGE_MAX as usize].iter().map(String::as_str).collect::<Vec<_>>()
        );
        // Page on from the welcome's last member, in small pages.
        let mut seen: Vec<String> = welcome.members.iter().map(|m| m.name.as_str().to_owned()).collect();
        loop {
            let page = f.room.members_page(seen.last().map(String::as_str), 7);
            assert!(page.members.len() <= 7);
            assert_eq!(page.count as usize, total + 1);
            seen.extend(page.members.iter().map(|m| m.name.as_str().to_owned()));
            if page.complete {
                break;
            }
        }
        assert_eq!(seen, expected, "every member once, in order");
        // A cursor is matched case-insensitively, and a limit is capped.
        let page = f.room.members_page(Some("MEMBER004"), 10_000);
        assert_eq!(page.members.first().map(|m| m.name.as_str()), Some("Member005"));
        assert_eq!(page.members.len(), MEMBERS_PAGE_MAX as usize);
    }
}
