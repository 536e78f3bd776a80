//! The requests a joined (or joining) client makes: `hello`, `say`,
//! `history`, `members`, `typing` and `ping`, each validated at the edge and answered
//! with a typed reply or error.

use std::sync::Arc;

use natter_shared::{
    ClientMsg, ClientMsgId, ErrorCode, ErrorMsg, Hello, HistoryRequest, MembersRequest, MessageText, PROTOCOL_VERSION,
    ResumeToken, RoomName, Say, Seq, ServerMsg, UserName, ValidationError,
    limits::{CID_MAX_LEN, HISTORY_PAGE_MAX},
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Session;
use crate::address::Bucket;
use crate::chat::hub::HubError;
use crate::chat::room::{Announce, JoinError, JoinKind, JoinRequest, Membership, NotMember, Room};
use crate::config::HistoryKind;

impl Session {
    /// Handles one text message from the client.
    pub(super) async fn handle_text(&self, text: &str) {
        match serde_json::from_str::<ClientMsg>(text) {
            Ok(ClientMsg::Hello(hello)) => self.hello(hello).await,
            Ok(ClientMsg::Say(say)) => self.say(say).await,
            Ok(ClientMsg::Typing(typing)) => self.typing(typing.active),
            Ok(ClientMsg::History(request)) => self.history(request).await,
            Ok(ClientMsg::Members(request)) => self.members(&request),
            Ok(ClientMsg::Ping) => {
                self.conn.send_msg(&ServerMsg::Pong);
            }
            Err(e) => self.reply(ErrorCode::BadRequest, &format!("could not read that message: {e}"), None),
        }
    }

    /// Refuses a request with an `error`; the connection stays open.
    pub(super) fn reply(&self, code: ErrorCode, message: &str, cid: Option<String>) {
        debug!(conn = self.conn.id, %code, "refused a request");
        self.conn.send_msg(&ServerMsg::Error(ErrorMsg { code, message: message.to_owned(), cid }));
    }

    fn refuse(&self, err: &ValidationError, cid: Option<String>) {
        self.reply(err.code(), &err.to_string(), cid);
    }

    /// The room and membership, once joined.
    pub(super) fn joined(&self) -> Option<(Arc<Room>, Membership)> {
        self.joined.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn hello(&self, hello: Hello) {
        if self.joined().is_some() {
            return self.reply(
                ErrorCode::AlreadyJoined,
                "this connection already joined a room; open a new connection to join another",
                None,
            );
        }
        if hello.v != PROTOCOL_VERSION {
            let message = format!(
                "this server speaks protocol version {PROTOCOL_VERSION}, not {}; reload the page to update it",
                hello.v
            );
            return self.reply(ErrorCode::UnsupportedVersion, &message, None);
        }
        let room = match hello.room.as_deref().map(RoomName::parse).transpose() {
            Ok(room) => room.unwrap_or_default(),
            Err(e) => return self.refuse(&e, None),
        };
        let name = match UserName::parse(&hello.name) {
            Ok(name) => name,
            Err(e) => return self.refuse(&e, None),
        };
        let resume_token = match hello.resume_token.as_deref().map(ResumeToken::parse).transpose() {
            Ok(token) => token,
            Err(_) => {
                return self.reply(ErrorCode::BadRequest, "resume_token is malformed; join without it", None);
            }
        };
        // A new member's token, or a resumed member's next one (tokens rotate).
        let Some(token) = new_token() else {
            return self.reply(ErrorCode::Internal, "the server could not create a session; try again", None);
        };
        let hub = &self.app.hub;
        let Some(join_slot) = self.app.joins_per_address.try_take(self.client) else {
            debug!(conn = self.conn.id, client = %self.client, "joins per address at the cap");
            return self.reply(
                ErrorCode::TooManyJoins,
                "too many chats are open from your network; close one and try again",
                None,
            );
        };
        let room = match hub.room(&room, self.client).await {
            Ok(room) => room,
            Err(HubError::TooManyRooms) => {
                return self.reply(
                    ErrorCode::TooManyRooms,
                    "the server has no room for another room; join an existing one",
                    None,
                );
            }
            Err(HubError::TooManyRoomsFrom(_)) => {
                return self.reply(
                    ErrorCode::TooManyRooms,
                    "your network has opened as many rooms as it may; join an existing one",
                    None,
                );
            }
            Err(HubError::Storage(e)) => {
                warn!(conn = self.conn.id, error = %e, "history unavailable");
                return self.reply(ErrorCode::Internal, "the server could not open that room; try again", None);
            }
        };
        let request = JoinRequest {
            name,
            resume_token,
            last_seq: hello.last_seq,
            history_id: hello.history_id,
            history_max_bytes: self.app.config.conn.reply_max_bytes(),
            prefetched: None,
        };
        match room.enter(request, &self.conn, hub.next_id(), token).await {
            Ok((membership, kind)) => {
                let resumed = matches!(kind, JoinKind::Resumed);
                info!(conn = self.conn.id, peer = %self.peer, room = %room.name, resumed, "joined");
                *self.joined.lock().unwrap_or_else(|p| p.into_inner()) = Some((room.clone(), membership));
                *self.join_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(join_slot);
                if let JoinKind::Joined(announce) = kind {
                    self.announce(room, announce).await;
                }
            }
            Err(JoinError::NameTaken) => {
                let message = format!(
                    "someone in #{} is already called {} or a name that looks like it; pick another name",
                    room.name,
                    hello.name.trim()
                );
                self.reply(ErrorCode::NameTaken, &message, None);
            }
            Err(JoinError::RoomFull) => self.reply(ErrorCode::RoomFull, "this room is full", None),
            Err(JoinError::Storage(e)) => {
                warn!(conn = self.conn.id, error = %e, "history unavailable");
                self.reply(ErrorCode::Internal, "the server could not join you; try again", None);
            }
        }
    }

    async fn say(&self, say: Say) {
        let Some((room, me)) = self.joined() else {
            return self.reply(ErrorCode::NotJoined, "send hello to join a room first", Some(truncate_cid(&say.cid)));
        };
        let cid = match ClientMsgId::parse(&say.cid) {
            Ok(cid) => cid,
            Err(e) => return self.refuse(&e, Some(truncate_cid(&say.cid))),
        };
        let text = match MessageText::parse(&say.text) {
            Ok(text) => text,
            Err(e) => return self.refuse(&e, Some(say.cid)),
        };
        if !self.resend_allowed(say.after) {
            self.app.metrics.rate_limited.inc();
            return self.reply(
                ErrorCode::RateLimited,
                "too many re-sent messages at once; it will be sent again shortly",
                Some(say.cid),
            );
        }
        match room.say(&me, &self.conn, cid, text, say.after) {
            Ok(draft) => {
                // Its ack (or error) comes from the writer's report.
                self.conn.expect_reply();
                if let Err(e) = self.app.submit(room, draft).await {
                    self.conn.replied();
                    warn!(conn = self.conn.id, error = %e, "message not stored");
                    self.reply(
                        ErrorCode::StorageUnavailable,
                        "the message was not stored; it will be sent again",
                        Some(say.cid),
                    );
                }
            }
            Err(NotMember) => {
                self.reply(ErrorCode::NotJoined, "your membership ended; join again", Some(say.cid));
            }
        }
    }

    /// Whether a `say` may go to the writer: a first send always; a re-send
    /// (`after`) whose original the store looks up (SQLite) only within
    /// this connection's and this address's rates of look-ups.
    fn resend_allowed(&self, after: Option<Seq>) -> bool {
        if after.is_none() || !matches!(self.app.config.history, HistoryKind::Sqlite) {
            return true;
        }
        let (burst, per_sec) = (
            self.app.config.rate.resend_checks_per_connection,
            self.app.config.rate.resend_checks_per_connection_per_sec,
        );
        let now = std::time::Instant::now();
        let mut mine = self.resend_checks.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = mine.get_or_insert_with(|| Box::new(Bucket::full(burst, now)));
        // A token is taken from each only when both have one.
        if !bucket.has(per_sec, burst, now) {
            debug!(conn = self.conn.id, "re-send refused: the connection's look-ups are spent");
            return false;
        }
        if !self.app.resend_checks.try_take(self.client, now) {
            debug!(conn = self.conn.id, "re-send refused: the address's look-ups are spent");
            return false;
        }
        bucket.take(per_sec, burst, now)
    }

    /// Announces a presence change in `room` (see [`crate::app::App::announce`]).
    pub(super) async fn announce(&self, room: Arc<Room>, announce: Announce) {
        if let Err(e) = self.app.announce(room, announce).await {
            warn!(conn = self.conn.id, error = %e, "notice not stored");
        }
    }

    async fn history(&self, request: HistoryRequest) {
        let Some((room, _)) = self.joined() else {
            return self.reply(ErrorCode::NotJoined, "send hello to join a room first", None);
        };
        let limit = request.limit.clamp(1, HISTORY_PAGE_MAX) as usize;
        match room.history(request.before, limit, self.app.config.conn.reply_max_bytes()).await {
            Ok(page) => {
                self.conn.send_msg(&ServerMsg::History(page));
            }
            Err(e) => {
                warn!(conn = self.conn.id, error = %e, "history not readable");
                self.reply(ErrorCode::StorageUnavailable, "older messages cannot be read right now; try again", None);
            }
        }
    }

    fn members(&self, request: &MembersRequest) {
        let Some((room, _)) = self.joined() else {
            return self.reply(ErrorCode::NotJoined, "send hello to join a room first", None);
        };
        let page = room.members_page(request.after.as_deref(), request.limit as usize);
        self.conn.send_msg(&ServerMsg::Members(page));
    }

    fn typing(&self, active: bool) {
        let Some((room, me)) = self.joined() else {
            return self.reply(ErrorCode::NotJoined, "send hello to join a room first", None);
        };
        room.typing(&me, active, Instant::now());
    }
}

/// The `cid` of a `say` refused before it was read (rate limit), so the
/// client knows which message to retry. Cheap: only looks for the field.
pub(super) fn cid_of(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct CidOnly {
        cid: Option<String>,
    }
    serde_json::from_str::<CidOnly>(text).ok().and_then(|c| c.cid).map(|c| truncate_cid(&c))
}

/// Echoes at most a cid's worth of a client's (possibly invalid) id.
fn truncate_cid(cid: &str) -> String {
    cid.chars().take(CID_MAX_LEN).collect()
}

/// 128 random bits as 32 hex characters.
fn new_token() -> Option<ResumeToken> {
    ResumeToken::parse(&crate::random::random_hex(16)?).ok()
}
