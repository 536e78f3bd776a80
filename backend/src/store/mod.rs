//! Room history: the store layer. Events get their seq and become durable
//! here, below the rooms, which it only knows as [`Committed`].
//!
//! Every event goes through one writer per store (a [`WriteQueue`]): the
//! writer gives it the room's next seq and a timestamp, stores it, and only
//! then hands it back to the room ([`Committed::committed`]), which
//! acknowledges and broadcasts it. So `ack` means stored, and every member
//! sees events in seq order. Reads (welcome, replay, older pages) go to the
//! store directly.
//!
//! Three stores implement [`HistoryStore`]: [`memory::MemoryStore`] (bounded,
//! lost on restart), [`sqlite::SqliteStore`] (durable, the default) and
//! [`redis::RedisStore`] (`--redis`, shared by several instances: it also
//! hands rooms the events other instances stored, [`Committed::deliver`]).
//! [`transfer`] is `natter export` / `natter import`.

pub mod backup;
pub mod memory;
pub mod redis;
pub mod sqlite;
pub mod transfer;
pub mod writer;

use std::sync::Arc;

use natter_shared::{
    ChatMessage, ClientMsgId, Color, MessageText, Notice, NoticeKind, ResumeToken, RoomEvent, RoomName, Seq, Timestamp,
    UserName,
};

use crate::ws::outbound::ConnHandle;
pub use writer::WriteQueue;

/// Events a room holds back waiting for an earlier seq (a shared store
/// delivers other instances' events and its own writer's reports on
/// separate paths). Past it the buffer is dropped and the room reads its
/// history afresh, its members resuming: memory stays bounded even when a
/// gap cannot be filled for a long time.
pub const PENDING_MAX: usize = 4096;

/// Identifies one membership (a name in a room, across resumes).
pub type MemberId = u64;

/// Milliseconds since the Unix epoch, for event timestamps.
pub fn now_ms() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}

/// What the writer reports each stored (or refused) draft to: the room it
/// belongs to. The store never names the room type; rooms implement this.
pub trait Committed: Send + Sync + std::fmt::Debug + 'static {
    /// The room's name, for storing its events.
    fn room_name(&self) -> &RoomName;
    /// The writer stored (or refused) these drafts of one commit, in seq
    /// order: acknowledge and broadcast them. Called in seq order for each room.
    fn committed_all(&self, writes: Vec<(Draft, Outcome)>);

    /// [`Committed::committed_all`] for one draft.
    fn committed(&self, draft: Draft, outcome: Outcome) {
        self.committed_all(vec![(draft, outcome)]);
    }

    /// The store read the room's history afresh: a new history (the storage
    /// lost the old one), or the same one with events the writer stored but
    /// never reported (a round whose answer was lost). Only stores whose
    /// history can change under a held room call it (see
    /// [`HistoryStore::history_can_restart`]).
    fn reload(&self, _fresh: FreshHistory) {}

    /// Events of the room's history `history_id` that did not come from
    /// this instance's writer with their acks: another instance's writes
    /// from the room's channel, this instance's own seen on the channel
    /// before the writer reported them, or a gap filled from the store.
    /// Only a shared store (Redis) calls it; the room delivers them in seq
    /// order with its own writes (see [`Committed::follow_up`]).
    fn deliver(&self, _history_id: &str, _events: Vec<RoomEvent>, _arrival: Arrival) {}

    /// What the room needs from a shared store to go on delivering in
    /// order: events it knows exist but has not got (a gap), or its history
    /// read afresh (its reorder buffer overflowed).
    fn follow_up(&self) -> Option<FollowUp> {
        None
    }

    /// A member of the room joined or left on another instance (a shared
    /// store; this instance's own changes come too, for their version).
    /// Returns when to send the presence batch it started, if it started
    /// one ([`Committed::flush_batched`]).
    fn member_elsewhere(&self, _change: MemberChange) -> Option<std::time::Duration> {
        None
    }
    /// The room's members on other instances as read afresh.
    fn members_reset(&self, _elsewhere: Elsewhere) {}
    /// Sends the room's presence batch if it is due; else when to call again.
    fn flush_batched(&self) -> Option<std::time::Duration> {
        None
    }
    /// Someone on another instance started or stopped typing.
    fn typing_from_elsewhere(&self, _name: UserName, _active: bool) {}

    /// The room's history id and the latest seq it delivered.
    fn position(&self) -> (String, Seq) {
        (String::new(), Seq(0))
    }
}

/// How events reached [`Committed::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Another instance's writes, from the room's channel.
    Remote,
    /// This instance's own writes seen on the channel: they wait (a
    /// while) for the writer's report, which carries the sender's ack.
    Own,
    /// Read from the store to fill a gap up to and including `upto`:
    /// delivered at once; what the store no longer has is skipped, and the
    /// room's members resume (their replay counts it as missed).
    Filled { upto: Seq },
}

/// What a room asks of a shared store (see [`Committed::follow_up`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowUp {
    /// Read the events `after < seq <= upto` of history `history_id` and
    /// deliver them as [`Arrival::Filled`].
    Fill { history_id: String, after: Seq, upto: Seq },
    /// Read the history afresh ([`Committed::reload`]): the room dropped
    /// its reorder buffer.
    Reload,
    /// Read the room's members on other instances afresh
    /// ([`Committed::members_reset`]): it missed a change of them.
    Members,
}

/// A room's history as read afresh from the store (see [`Committed::reload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshHistory {
    pub id: String,
    pub head: Seq,
    /// The latest events, oldest first.
    pub latest: Vec<RoomEvent>,
}

/// Why the history store could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Sqlite(#[from] sqlite::StoreError),
    #[error(transparent)]
    Redis(#[from] redis::RedisStartError),
}

/// A history operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    #[error("history storage is unavailable: {0}")]
    Unavailable(String),
    /// The writer has spent its time for looking up re-sends (SQLite's
    /// [`sqlite::RESEND_LOOKUP_BUDGET`]): the sender is told `rate_limited`
    /// and sends it again shortly. Nothing was stored.
    #[error("the history writer is busy looking up re-sent messages")]
    Busy,
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
        /// A re-send's hint (`say.after`): the original, if stored, has a
        /// seq above this one. `None` for a first send, which a store that
        /// looks originals up by the hint (SQLite) simply stores.
        resent_after: Option<Seq>,
        /// Who to acknowledge, and whom not to echo the message to.
        sender: ConnHandle,
        member: MemberId,
    },
    Notice {
        kind: NoticeKind,
        name: UserName,
        color: Color,
        /// A key under which a shared store keeps this notice at most once
        /// however often it is written (the clean-up of a dead instance may
        /// run twice); `None`: each write is a notice of its own.
        once: Option<String>,
    },
}

impl Draft {
    /// The stored event this draft becomes under `seq` at `ts`.
    pub fn into_event(self, seq: Seq, ts: Timestamp) -> RoomEvent {
        match self {
            Draft::Message { name, color, text, cid, .. } => {
                RoomEvent::Message(ChatMessage { seq, ts, name, color, text, cid: Some(cid) })
            }
            Draft::Notice { kind, name, color, .. } => RoomEvent::Notice(Notice { seq, ts, kind, name, color }),
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

/// A member of a room when the server stopped, kept so that its browser can
/// resume after the restart (same token, no presence traffic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedMember {
    pub room: RoomName,
    pub name: UserName,
    pub token: ResumeToken,
}

/// A name a joiner asks to hold in a room, across every instance of a
/// shared store ([`HistoryStore::claim_name`]).
#[derive(Debug, Clone)]
pub struct NameClaim {
    pub name: UserName,
    /// The room's key for the name (case, composition and look-alikes folded).
    pub key: String,
    /// The name as it looks (a capital `I` and a small `l` alike).
    pub glyph: String,
    /// The membership that holds it here if the claim is granted.
    pub member: MemberId,
    /// The resume token the member's welcome carries.
    pub token: ResumeToken,
    /// The token the `hello` presented, if any: the holder's current one
    /// takes the name over from whichever instance holds it.
    pub presented: Option<ResumeToken>,
}

/// A member of an instance that died, whose name it still holds
/// ([`HistoryStore::orphans`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub name: UserName,
    /// The room's key for the name.
    pub key: String,
    /// Its membership on the dead instance.
    pub member: MemberId,
}

/// The members a room has on other instances, as of a member version
/// ([`HistoryStore::members_elsewhere`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Elsewhere {
    /// The room's member version: every change of its claims counts one.
    pub version: u64,
    /// Each member's instance and name.
    pub members: Vec<(String, UserName)>,
}

/// A change of a room's members on another instance, heard on its channel
/// ([`Committed::member_elsewhere`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    /// The member version this change made.
    pub version: u64,
    /// The instance the member is (`joined`) or was (`!joined`) on.
    pub instance: String,
    /// That instance is this one: the change counts for the version only.
    pub own: bool,
    pub joined: bool,
    pub name: UserName,
}

/// Who holds a claimed name now ([`HistoryStore::claim_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// Nobody held it (or an instance that died did): this instance does
    /// now. A member the room still has under it is a ghost.
    Free,
    /// This instance holds it: the room decides (a resume, a name taken),
    /// and [`HistoryStore::confirm_name`] records what it admitted.
    Here,
    /// Another instance held it and the presented token was its holder's:
    /// the browser moved here, and this instance holds it now.
    Moved,
    /// Another live instance holds it.
    Taken,
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
    /// How many reads may run at once (see [`blocking`]).
    fn read_slots(&self) -> Arc<tokio::sync::Semaphore>;
    /// The members saved when the server last stopped, once (later calls
    /// get none). A store that does not outlive the process saves none.
    fn take_saved_members(&self) -> Vec<SavedMember> {
        Vec::new()
    }
    /// `room` is now held under this name (after [`HistoryStore::open_room`]):
    /// a shared store delivers other instances' events to it.
    fn attach(&self, _room: Arc<dyn Committed>) {}
    /// Whether a held room's history can start afresh under it (Redis lost
    /// its keys): then every join first asks [`HistoryStore::check_history`].
    fn history_can_restart(&self) -> bool {
        false
    }
    /// Whether names are held across instances (a shared store): then a
    /// join claims its name ([`HistoryStore::claim_name`]) and a member's end
    /// gives it back ([`HistoryStore::release_name`]). A store of one
    /// instance leaves names to its rooms alone.
    fn names_shared(&self) -> bool {
        false
    }
    /// Claims a name in `room` for this instance (see [`Claimed`]).
    fn claim_name(&self, _room: &RoomName, _claim: &NameClaim) -> Result<Claimed, HistoryError> {
        Ok(Claimed::Here)
    }
    /// Records that this instance's member `claim.member` holds the name
    /// with `claim.token` now (after a join the room admitted under another
    /// claim than the store recorded: a [`Claimed::Here`], or a resume).
    fn confirm_name(&self, _room: &RoomName, _claim: &NameClaim) -> Result<(), HistoryError> {
        Ok(())
    }
    /// Gives back the name `member` held in `room`. `false`: another
    /// instance holds it by now (the member moved there): its end is no
    /// news to announce.
    fn release_name(
        &self,
        _room: &RoomName,
        _key: &str,
        _glyph: &str,
        _member: MemberId,
    ) -> Result<bool, HistoryError> {
        Ok(true)
    }
    /// The members `room` has on other instances (a shared store), read
    /// after the room subscribed to their changes.
    fn members_elsewhere(&self, _room: &RoomName) -> Result<Elsewhere, HistoryError> {
        Ok(Elsewhere::default())
    }
    /// Tells the other instances that `name` started or stopped typing in `room` (a shared store; never waits).
    fn typing_elsewhere(&self, _room: &RoomName, _name: &UserName, _active: bool) {}
    /// Instances on a shared store that died (their liveness lapsed) at
    /// least `grace` ago, and whose clean-up this instance took on (a lease:
    /// another takes it over if this one dies too); with the rooms each
    /// held names in.
    fn dead_instances(&self, _grace: std::time::Duration) -> Result<Vec<(String, Vec<RoomName>)>, HistoryError> {
        Ok(Vec::new())
    }
    /// The members whose names the dead `instance` still holds in `room`,
    /// and how many names the room's members hold in all.
    fn orphans(&self, _instance: &str, _room: &RoomName) -> Result<(Vec<Orphan>, usize), HistoryError> {
        Ok((Vec::new(), 0))
    }
    /// Gives back the names of `orphans` (key, glyph key, membership) that
    /// the dead `instance` still holds in `room`.
    fn bury(
        &self,
        _instance: &str,
        _room: &RoomName,
        _orphans: &[(String, String, MemberId)],
    ) -> Result<(), HistoryError> {
        Ok(())
    }
    /// The clean-up of the dead `instance` is done: it is forgotten.
    fn buried(&self, _instance: &str) -> Result<(), HistoryError> {
        Ok(())
    }
    /// `None` if `room`'s history is still the one called `known`; else the
    /// history it has now, with its latest `limit` events.
    fn check_history(
        &self,
        _room: &RoomName,
        _known: &str,
        _limit: usize,
    ) -> Result<Option<FreshHistory>, HistoryError> {
        Ok(None)
    }
}

/// Runs a read of `store` on a blocking thread: storage is never read on
/// the async runtime's worker threads (nor, by the callers, under a room
/// lock). At most `store.read_slots()` reads run at once; more wait here, on
/// the async side, rather than each holding a blocking thread of its own.
pub async fn blocking<T: Send + 'static>(
    store: &Arc<dyn HistoryStore>,
    read: impl FnOnce() -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, HistoryError> {
    let slot = store
        .read_slots()
        .acquire_owned()
        .await
        .map_err(|_| HistoryError::Unavailable("the history store is closed".into()))?;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        read()
    })
    .await
    .unwrap_or_else(|e| Err(HistoryError::Unavailable(format!("a history read failed: {e}"))))
}

/// Counts a replay's `missed` from the range asked for and what was found.
pub fn replay_of(after: Seq, upto: Seq, events: Vec<RoomEvent>) -> Replay {
    let wanted = upto.0.saturating_sub(after.0);
    Replay { missed: wanted.saturating_sub(events.len() as u64), events }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A store whose page reads take a while and count how many run at once.
    #[derive(Debug)]
    struct CountingStore {
        slots: Arc<tokio::sync::Semaphore>,
        inside: AtomicUsize,
        most: AtomicUsize,
    }

    impl HistoryStore for CountingStore {
        fn history_id(&self, _: &RoomName) -> String {
            "test".into()
        }
        fn forget(&self, _: &RoomName) {}
        fn keeps(&self) -> Option<usize> {
            None
        }
        fn open_room(&self, _: &RoomName, _: usize) -> Result<(Seq, Vec<RoomEvent>), HistoryError> {
            Ok((Seq(0), Vec::new()))
        }
        fn after(&self, _: &RoomName, _: Seq, _: Seq, _: usize) -> Result<Replay, HistoryError> {
            Ok(Replay::default())
        }
        fn before(&self, _: &RoomName, _: Seq, _: usize) -> Result<Vec<RoomEvent>, HistoryError> {
            let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(50));
            self.inside.fetch_sub(1, Ordering::SeqCst);
            Ok(Vec::new())
        }
        fn read_slots(&self) -> Arc<tokio::sync::Semaphore> {
            self.slots.clone()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_reads_run_at_once_than_the_store_has_slots() {
        let counting = Arc::new(CountingStore {
            slots: Arc::new(tokio::sync::Semaphore::new(2)),
            inside: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        });
        let store: Arc<dyn HistoryStore> = counting.clone();
        let reads = (0..8).map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let reader = store.clone();
                blocking(&store, move || reader.before(&RoomName::default(), Seq(1), 1)).await
            })
        });
        for read in reads.collect::<Vec<_>>() {
            read.await.expect("task").expect("read");
        }
        assert!(counting.most.load(Ordering::SeqCst) <= 2, "at most the store's two slots at once");
    }
}
