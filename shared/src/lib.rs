//! Natter's wire protocol, shared by the server (`natter-backend`) and the page
//! (`natter-frontend`) so that both agree on every message, id and limit.
//!
//! * [`protocol`] — the JSON messages (`ClientMsg`, `ServerMsg`), tagged by `type`.
//! * [`ids`] — validated newtypes: room and user names, seqs, client message ids.
//! * [`limits`] — every protocol limit as a named constant.
//! * [`error`] — validation errors and the stable error codes sent on the wire.
//! * [`color`] — the name colour palette and the stable name → colour mapping.
//! * [`close`] — WebSocket close codes the server uses, with their meaning.
//! * [`wire_name`] — fieldless enums as their names on the wire.
//!
//! No I/O lives here: only types, serde and validation.

pub mod close;
pub mod color;
pub mod error;
pub mod ids;
pub mod limits;
pub mod protocol;
pub mod wire_name;

pub use color::{Color, color_for};
pub use error::{ErrorCode, ValidationError};
pub use ids::{ClientMsgId, MessageText, ResumeToken, RoomName, Seq, Timestamp, UserName};
pub use protocol::{
    Ack, ChatMessage, ClientMsg, ErrorMsg, Hello, HistoryPage, HistoryRequest, Member, MembersPage, MembersRequest,
    Notice, NoticeBatch, NoticeKind, PROTOCOL_VERSION, Presence, RoomEvent, Say, ServerMsg, Typing, TypingUpdate,
    Welcome,
};
