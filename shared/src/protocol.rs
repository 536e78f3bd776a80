//! The messages. Every frame is one JSON object tagged by `"type"`.
//!
//! Client input carries raw strings (`Hello::name`, `Say::text`, …) so the
//! server can answer each invalid field with its own error code; the server
//! turns them into the validated types of [`crate::ids`] with `parse`. Server
//! messages carry validated types only.

use serde::{Deserialize, Serialize};

use crate::color::Color;
use crate::error::ErrorCode;
use crate::ids::{ClientMsgId, MessageText, ResumeToken, RoomName, Seq, Timestamp, UserName};
use crate::wire_name::{WireName, serde_by_wire_name};

/// The protocol version a client states in `hello`. Bumped on any change an
/// older peer could misread.
pub const PROTOCOL_VERSION: u32 = 2;

/// Client → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    Hello(Hello),
    Say(Say),
    Typing(Typing),
    History(HistoryRequest),
    /// Asks for a page of the room's member list (a big room's welcome
    /// carries only the first).
    Members(MembersRequest),
    /// Asks for a `pong`: lets a page find out that its connection is dead
    /// (browsers do not expose WebSocket pings to scripts).
    Ping,
}

/// Join a room (first message on a connection), or rejoin after a drop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client speaks: [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The room; [`crate::limits::DEFAULT_ROOM`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The display name, validated by [`UserName::parse`].
    pub name: String,
    /// The last seq this client has seen in this room: the server replays
    /// every event after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<Seq>,
    /// The token from an earlier `welcome`: reclaims the name at once after a
    /// dropped connection, without a leave/join notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
    /// The `history_id` of the welcome that `last_seq` belongs to. When it is
    /// not the server's current one (e.g. an in-memory server restarted), the
    /// server ignores `last_seq` and sends a fresh welcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_id: Option<String>,
}

impl Hello {
    /// A fresh join of `room` as `name` in this protocol version: no resume.
    pub fn new(name: impl Into<String>, room: impl Into<String>) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            room: Some(room.into()),
            name: name.into(),
            last_seq: None,
            resume_token: None,
            history_id: None,
        }
    }
}

/// Send a chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Say {
    /// Client-chosen id; a re-send with the same id is acknowledged again
    /// with the original seq and not delivered twice.
    pub cid: String,
    pub text: String,
    /// Present on a re-send of a message that may already be stored (it was
    /// sent before and not acknowledged): the room's latest seq the page had
    /// when it first sent the message, below the stored one's seq. The
    /// SQLite history looks for the original only after it, and only when
    /// this is present (a first send is simply stored); the memory and
    /// Redis histories look up every message. Absent on a first send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Seq>,
}

impl Say {
    /// A first send of `text` under `cid`.
    pub fn new(cid: impl Into<String>, text: impl Into<String>) -> Self {
        Self { cid: cid.into(), text: text.into(), after: None }
    }
}

/// Asks for older events: up to `limit` events with a seq below `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRequest {
    pub before: Seq,
    /// At most [`crate::limits::HISTORY_PAGE_MAX`]; more is capped.
    pub limit: u32,
}

/// Asks for up to `limit` members whose names sort after `after` (by
/// [`UserName::key`]); from the first when absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most [`crate::limits::MEMBERS_PAGE_MAX`]; more is capped.
    pub limit: u32,
}

/// The user started (`true`) or stopped (`false`) typing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typing {
    pub active: bool,
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Welcome(Welcome),
    Ack(Ack),
    /// A chat message (the tutorial's `usermsg`).
    Message(ChatMessage),
    /// A system notice (the tutorial's `system`).
    Notice(Notice),
    /// Several notices stored in one commit, in seq order: one frame for a
    /// room's joins and leaves of one commit window.
    Notices(NoticeBatch),
    Typing(TypingUpdate),
    Error(ErrorMsg),
    History(HistoryPage),
    /// Members who joined or left a big room since the last one. Ephemeral:
    /// no seq, not stored.
    Presence(Presence),
    /// A page of the member list, the answer to `members`.
    Members(MembersPage),
    /// The answer to `ping`.
    Pong,
}

/// A room event with a seq: what history holds and resume replays. Its JSON
/// is exactly the live `message` / `notice` frame.
///
/// Decoded through [`RawRoomEvent`], one flat struct, rather than serde's
/// internally tagged enum support, which buffers every event of a welcome
/// into an intermediate tree first and costs the page's bundle ~15 KB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", try_from = "RawRoomEvent")]
pub enum RoomEvent {
    Message(ChatMessage),
    Notice(Notice),
}

impl RoomEvent {
    /// The event's seq.
    pub fn seq(&self) -> Seq {
        match self {
            Self::Message(m) => m.seq,
            Self::Notice(n) => n.seq,
        }
    }

    /// The event's server timestamp.
    pub fn ts(&self) -> Timestamp {
        match self {
            Self::Message(m) => m.ts,
            Self::Notice(n) => n.ts,
        }
    }
}

/// The wire form of a [`RoomEvent`]: every field of both kinds, in any order.
/// The fields only one kind has are read as plain strings and validated for
/// that kind alone, so (as with serde's derive) a field meant for the other
/// kind is ignored rather than refused.
#[derive(Deserialize)]
struct RawRoomEvent {
    #[serde(rename = "type")]
    event_type: RoomEventType,
    seq: Seq,
    ts: Timestamp,
    name: UserName,
    color: Color,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    cid: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum RoomEventType {
    Message,
    Notice,
}

impl WireName for RoomEventType {
    const WHAT: &'static str = "room event type";
    const ALL: &'static [Self] = &[Self::Message, Self::Notice];

    fn wire_name(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Notice => "notice",
        }
    }
}

serde_by_wire_name!(RoomEventType, decode_only);

/// A room event whose fields do not fit its `type`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomEventError {
    #[error("a message event has no `text`")]
    MessageWithoutText,
    #[error("a notice event has no `kind`")]
    NoticeWithoutKind,
    #[error("unknown notice kind `{0}`")]
    UnknownKind(String),
    #[error(transparent)]
    Invalid(#[from] crate::error::ValidationError),
}

impl TryFrom<RawRoomEvent> for RoomEvent {
    type Error = RoomEventError;

    fn try_from(raw: RawRoomEvent) -> Result<Self, Self::Error> {
        let RawRoomEvent { event_type, seq, ts, name, color, text, cid, kind } = raw;
        Ok(match event_type {
            RoomEventType::Message => {
                let text = MessageText::parse(&text.ok_or(RoomEventError::MessageWithoutText)?)?;
                let cid = cid.as_deref().map(ClientMsgId::parse).transpose()?;
                RoomEvent::Message(ChatMessage { seq, ts, name, color, text, cid })
            }
            RoomEventType::Notice => {
                let kind = kind.ok_or(RoomEventError::NoticeWithoutKind)?;
                let kind = crate::wire_name::from_name(&kind).ok_or(RoomEventError::UnknownKind(kind))?;
                RoomEvent::Notice(Notice { seq, ts, kind, name, color })
            }
        })
    }
}

impl From<RoomEvent> for ServerMsg {
    fn from(event: RoomEvent) -> Self {
        match event {
            RoomEvent::Message(m) => ServerMsg::Message(m),
            RoomEvent::Notice(n) => ServerMsg::Notice(n),
        }
    }
}

/// A member of a room as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: UserName,
    pub color: Color,
}

/// The answer to a successful `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The joined user, as the room sees them.
    pub you: Member,
    pub room: RoomName,
    /// The room's latest seq at the moment of joining; every later event
    /// arrives live, in order.
    pub seq_head: Seq,
    /// The first members by [`UserName::key`] (all of them, `you` included,
    /// unless the room has more than [`crate::limits::MEMBERS_PAGE_MAX`]).
    pub members: Vec<Member>,
    /// How many members the room has (attached or in their grace period).
    pub member_count: u32,
    /// Recent events (a fresh join) or the events after `last_seq` (a resume),
    /// oldest first.
    pub history: Vec<RoomEvent>,
    /// Present this in the next `hello` after a dropped connection.
    pub resume_token: ResumeToken,
    /// Identifies the history the seqs belong to. It changes only when the
    /// server's history starts afresh; seqs of different ids are unrelated.
    pub history_id: String,
    /// How many events after `last_seq` are not in `history` (older than the
    /// server keeps, or more than one replay holds). Absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
}

/// The sender's confirmation that a `say` is stored under `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub cid: ClientMsgId,
    pub seq: Seq,
    pub ts: Timestamp,
}

/// A chat message as delivered to the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub seq: Seq,
    pub ts: Timestamp,
    pub name: UserName,
    pub color: Color,
    pub text: MessageText,
    /// The sender's client id, so the sender recognises its own message
    /// even when the `ack` was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<ClientMsgId>,
}

/// What a notice reports. On the wire: its [`WireName`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    /// Someone joined the room.
    Joined,
    /// Someone closed their page or left on purpose.
    Left,
    /// Someone's connection dropped and did not come back within the grace period.
    TimedOut,
}

impl WireName for NoticeKind {
    const WHAT: &'static str = "notice kind";
    const ALL: &'static [Self] = &[Self::Joined, Self::Left, Self::TimedOut];

    fn wire_name(self) -> &'static str {
        match self {
            Self::Joined => "joined",
            Self::Left => "left",
            Self::TimedOut => "timed_out",
        }
    }
}

serde_by_wire_name!(NoticeKind);

const _: () = assert!(NoticeKind::ALL.len() == NoticeKind::TimedOut as usize + 1);

/// A system notice as delivered to the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub seq: Seq,
    pub ts: Timestamp,
    pub kind: NoticeKind,
    pub name: UserName,
    pub color: Color,
}

/// Notices stored together, oldest first; each as if it came on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeBatch {
    pub notices: Vec<Notice>,
}

/// Someone else started or stopped typing. Ephemeral: no seq, not stored.
/// An `active: true` expires after [`crate::limits::TYPING_TTL_MS`] unless refreshed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingUpdate {
    pub name: UserName,
    pub active: bool,
}

/// Presence changes of a big room, gathered over the room's presence
/// interval: one frame per member however many changes. Members appear by
/// name (the first [`crate::limits::PRESENCE_NAMES_MAX`] of each kind) and
/// the rest are counted. Apply `left` and `timed_out` before `joined`: a name
/// in both left and came back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// How many members the room has now.
    pub count: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<Member>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<Member>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timed_out: Vec<Member>,
    /// Changes of each kind not listed by name.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_joined: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_left: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_timed_out: u32,
}

impl Presence {
    /// True when it lists every change by name (a page can keep an exact
    /// member list from it).
    pub fn is_complete(&self) -> bool {
        self.more_joined == 0 && self.more_left == 0 && self.more_timed_out == 0
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A page of the member list, the answer to `members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersPage {
    /// The `after` of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// By [`UserName::key`], all after `after`.
    pub members: Vec<Member>,
    /// True when no member sorts after the last one.
    pub complete: bool,
    /// How many members the room has now.
    pub count: u32,
}

/// Older events, the answer to a `history` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The `before` of the request.
    pub before: Seq,
    /// Oldest first; all below `before`.
    pub events: Vec<RoomEvent>,
    /// True when nothing older exists (or is kept).
    pub complete: bool,
}

/// A refused request. The connection stays open unless a close follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    /// Human-readable explanation, safe to show to the user.
    pub message: String,
    /// The `cid` of the `say` this error refuses, if it refuses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
}

/// `ServerMsg`'s `type` tag alone; [`ServerMsg::from_json`] reads it first.
#[derive(Deserialize)]
struct ServerMsgTag {
    #[serde(rename = "type")]
    msg_type: ServerMsgType,
}

#[derive(Debug, Clone, Copy)]
enum ServerMsgType {
    Welcome,
    Ack,
    Message,
    Notice,
    Notices,
    Typing,
    Error,
    History,
    Presence,
    Members,
    Pong,
}

impl WireName for ServerMsgType {
    const WHAT: &'static str = "server message type";
    const ALL: &'static [Self] = &[
        Self::Welcome,
        Self::Ack,
        Self::Message,
        Self::Notice,
        Self::Notices,
        Self::Typing,
        Self::Error,
        Self::History,
        Self::Presence,
        Self::Members,
        Self::Pong,
    ];

    fn wire_name(self) -> &'static str {
        match self {
            Self::Welcome => "welcome",
            Self::Ack => "ack",
            Self::Message => "message",
            Self::Notice => "notice",
            Self::Notices => "notices",
            Self::Typing => "typing",
            Self::Error => "error",
            Self::History => "history",
            Self::Presence => "presence",
            Self::Members => "members",
            Self::Pong => "pong",
        }
    }
}

serde_by_wire_name!(ServerMsgType, decode_only);

impl ServerMsg {
    /// Decodes one server frame. It gives the same result as
    /// `serde_json::from_str::<ServerMsg>` (a test checks every golden
    /// message, and `type` in any position) but reads the text twice, the
    /// tag first, instead of buffering the whole object in serde's
    /// intermediate tree: the page uses this, and it keeps ~15 KB out of
    /// its bundle.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let ServerMsgTag { msg_type } = serde_json::from_str(text)?;
        Ok(match msg_type {
            ServerMsgType::Welcome => ServerMsg::Welcome(serde_json::from_str(text)?),
            ServerMsgType::Ack => ServerMsg::Ack(serde_json::from_str(text)?),
            ServerMsgType::Message => ServerMsg::Message(serde_json::from_str(text)?),
            ServerMsgType::Notice => ServerMsg::Notice(serde_json::from_str(text)?),
            ServerMsgType::Notices => ServerMsg::Notices(serde_json::from_str(text)?),
            ServerMsgType::Typing => ServerMsg::Typing(serde_json::from_str(text)?),
            ServerMsgType::Error => ServerMsg::Error(serde_json::from_str(text)?),
            ServerMsgType::History => ServerMsg::History(serde_json::from_str(text)?),
            ServerMsgType::Presence => ServerMsg::Presence(serde_json::from_str(text)?),
            ServerMsgType::Members => ServerMsg::Members(serde_json::from_str(text)?),
            ServerMsgType::Pong => ServerMsg::Pong,
        })
    }

    /// An `error` reply that does not refer to a particular `say`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMsg::Error(ErrorMsg { code, message: message.into(), cid: None })
    }
}
