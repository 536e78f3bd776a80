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
//! Two stores implement [`HistoryStore`]: [`memory::MemoryStore`] (bounded,
//! lost on restart) and [`sqlite::SqliteStore`] (durable, the default).
//! [`transfer`] is `natter export` / `natter import`.

pub mod memory;
pub mod sqlite;
pub mod transfer;
pub mod writer;

use natter_shared::{
    ChatMessage, ClientMsgId, Color, MessageText, Notice, NoticeKind, RoomEvent, RoomName, Seq, Timestamp, UserName,
};

use crate::ws::outbound::ConnHandle;
pub use writer::WriteQueue;

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
    /// The writer stored (or refused) `draft`: acknowledge and broadcast it.
    /// Called in seq order for each room.
    fn committed(&self, draft: Draft, outcome: Outcome);
}

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

/// Runs a read of the store on a blocking thread: storage is never read on
/// the async runtime's worker threads (nor, by the callers, under a room lock).
pub async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, HistoryError> {
    tokio::task::spawn_blocking(read)
        .await
        .unwrap_or_else(|e| Err(HistoryError::Unavailable(format!("a history read failed: {e}"))))
}

/// Counts a replay's `missed` from the range asked for and what was found.
pub fn replay_of(after: Seq, upto: Seq, events: Vec<RoomEvent>) -> Replay {
    let wanted = upto.0.saturating_sub(after.0);
    Replay { missed: wanted.saturating_sub(events.len() as u64), events }
}
