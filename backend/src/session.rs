//! One WebSocket connection: a reader that speaks the protocol and a writer
//! that drains the connection's bounded queue, run together and torn down
//! together. What happens to the membership when the connection ends is
//! decided here, once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use natter_shared::{
    ClientMsg, ClientMsgId, ErrorCode, ErrorMsg, Hello, HistoryRequest, MessageText, PROTOCOL_VERSION, ResumeToken,
    RoomName, Say, ServerMsg, UserName, ValidationError, close,
    limits::{CID_MAX_LEN, HISTORY_PAGE_MAX},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, info, warn};

use crate::app::{App, SessionCount};
use crate::heartbeat::{Beat, Heartbeat};
use crate::hub::HubError;
use crate::outbound::{self, CloseReason, ConnHandle, ConnId, ConnReceiver};
use crate::rate_limit::{TokenBucket, Verdict};
use crate::room::{JoinError, JoinKind, JoinRequest, Membership, NotMember, Room};

/// The upgraded connection.
pub type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Frames written to the socket per flush.
const WRITE_BATCH: usize = 64;
/// Most bytes read and discarded while waiting for a peer to finish closing.
const LINGER_MAX_BYTES: usize = 1024 * 1024;
/// Size of the buffer used to discard those bytes.
const LINGER_BUF_BYTES: usize = 4096;

/// Why the reader stopped (the text is for the debug log).
#[derive(Debug)]
#[allow(dead_code)] // fields are read through Debug
enum ReaderEnd {
    /// The peer sent a Close frame: a deliberate leave.
    PeerClosed,
    /// The peer closed with [`close::CLIENT_RECONNECTING`]: it will resume.
    PeerReconnecting,
    /// The TCP connection ended or failed without a Close frame.
    Dropped(String),
    /// The peer broke a rule; close with this reason.
    Violation(CloseReason),
}

/// Why the writer stopped (the fields are for the debug log).
#[derive(Debug)]
#[allow(dead_code)] // fields are read through Debug
enum WriterEnd {
    /// Kicked (lagged, replaced) or shut down: a close frame went out (or was tried).
    Closed(CloseReason),
    /// No answer to a ping in time.
    TimedOut,
    /// Writing failed or stalled.
    WriteFailed(String),
}

/// When the peer was last heard from (any frame), for the heartbeat.
#[derive(Debug)]
struct LastHeard {
    start: Instant,
    /// Microseconds after `start`, rounded up so a frame heard just after a
    /// ping never looks older than the ping.
    micros: AtomicU64,
}

impl LastHeard {
    fn new() -> Self {
        Self { start: Instant::now(), micros: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let micros = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX - 1) + 1;
        self.micros.store(micros, Ordering::Relaxed);
    }

    fn get(&self) -> Instant {
        self.start + Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }
}

/// A connection's protocol state.
#[derive(Debug)]
struct Session {
    app: Arc<App>,
    conn: ConnHandle,
    peer: SocketAddr,
    joined: Mutex<Option<(Arc<Room>, Membership)>>,
}

/// Runs one upgraded connection to its end.
pub async fn run(ws: Ws, app: Arc<App>, peer: SocketAddr) {
    let _count = SessionCount::new(app.clone());
    let conn_id: ConnId = app.hub.next_id();
    let timing = app.config.timing;
    let (handle, mut receiver) = outbound::channel(conn_id, app.config.limits.outbound_queue);
    let session = Session { app: app.clone(), conn: handle, peer, joined: Mutex::new(None) };
    let heard = LastHeard::new();
    let (mut sink, mut stream) = ws.split();
    debug!(conn = conn_id, %peer, "websocket open");

    let linger = {
        let reader = session.read_loop(&mut stream, &heard);
        let writer = write_loop(&mut sink, &mut receiver, &app, &heard);
        tokio::pin!(reader, writer);
        tokio::select! {
            end = &mut reader => {
                debug!(conn = conn_id, ?end, "reader ended");
                let (leave, close) = match end {
                    ReaderEnd::PeerClosed => (true, Some(CloseReason::PeerClosed)),
                    ReaderEnd::PeerReconnecting => (false, Some(CloseReason::PeerClosed)),
                    ReaderEnd::Violation(reason) => (false, Some(reason)),
                    ReaderEnd::Dropped(_) => (false, None),
                };
                session.finish(leave).await;
                match close {
                    Some(reason) => {
                        session.conn.kick(reason);
                        let _ = timeout(timing.close_timeout, &mut writer).await;
                        reason != CloseReason::PeerClosed
                    }
                    None => false,
                }
            }
            end = &mut writer => {
                debug!(conn = conn_id, ?end, "writer ended");
                session.finish(false).await;
                matches!(end, WriterEnd::Closed(_))
            }
        }
    };

    if linger {
        // We sent a close frame: read until the peer answers and closes, so
        // the close frame is not lost to a reset caused by unread input.
        if let Ok(ws) = stream.reunite(sink) {
            let mut io = ws.into_inner();
            let drain = async {
                // Close our side first: the peer (a browser especially) waits
                // for the server to end the TCP connection after the close
                // handshake, and answers our FIN with its own.
                let _ = io.shutdown().await;
                let mut buf = [0u8; LINGER_BUF_BYTES];
                let mut total = 0;
                while total < LINGER_MAX_BYTES {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
            };
            let _ = timeout(timing.close_timeout, drain).await;
        }
    }
    debug!(conn = conn_id, "websocket closed");
}

impl Session {
    /// True once the connection is being closed: no more requests are handled.
    fn closing(&self) -> bool {
        self.conn.kick_reason().is_some() || self.app.shutdown.is_cancelled()
    }

    async fn read_loop(&self, stream: &mut SplitStream<Ws>, heard: &LastHeard) -> ReaderEnd {
        let mut bucket = TokenBucket::new(self.app.config.rate, Instant::now());
        let hello_by = Instant::now() + self.app.config.timing.hello_timeout;
        loop {
            // A connection must join within the hello timeout.
            let next = if self.joined().is_some() || self.closing() {
                stream.next().await
            } else {
                match tokio::time::timeout_at(hello_by, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => return ReaderEnd::Violation(CloseReason::NoHello),
                }
            };
            let Some(item) = next else { break };
            heard.touch();
            let msg = match item {
                Ok(msg) => msg,
                Err(e) => return classify(e),
            };
            if self.closing() {
                // Closing: wait for the peer's Close, ignore everything else.
                if let Message::Close(_) = msg {
                    return ReaderEnd::PeerClosed;
                }
                continue;
            }
            match msg {
                Message::Text(text) => match bucket.take(Instant::now()) {
                    Verdict::Allow => self.handle_text(&text).await,
                    Verdict::Refuse => self.reply(
                        ErrorCode::RateLimited,
                        "too many messages; wait a moment and try again",
                        cid_of(&text),
                    ),
                    Verdict::Disconnect => return ReaderEnd::Violation(CloseReason::Flooding),
                },
                Message::Binary(_) => return ReaderEnd::Violation(CloseReason::Binary),
                Message::Ping(_) => {
                    // Answered by tungstenite; counted so pings cannot flood.
                    if bucket.take(Instant::now()) == Verdict::Disconnect {
                        return ReaderEnd::Violation(CloseReason::Flooding);
                    }
                }
                Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(Some(frame)) if u16::from(frame.code) == close::CLIENT_RECONNECTING => {
                    return ReaderEnd::PeerReconnecting;
                }
                Message::Close(_) => return ReaderEnd::PeerClosed,
            }
        }
        ReaderEnd::Dropped("stream ended".into())
    }

    async fn handle_text(&self, text: &str) {
        match serde_json::from_str::<ClientMsg>(text) {
            Ok(ClientMsg::Hello(hello)) => self.hello(hello).await,
            Ok(ClientMsg::Say(say)) => self.say(say).await,
            Ok(ClientMsg::Typing(typing)) => self.typing(typing.active),
            Ok(ClientMsg::History(request)) => self.history(request),
            Ok(ClientMsg::Ping) => {
                self.conn.send_msg(&ServerMsg::Pong);
            }
            Err(e) => self.reply(ErrorCode::BadRequest, &format!("could not read that message: {e}"), None),
        }
    }

    fn reply(&self, code: ErrorCode, message: &str, cid: Option<String>) {
        debug!(conn = self.conn.id, %code, "refused a request");
        self.conn.send_msg(&ServerMsg::Error(ErrorMsg { code, message: message.to_owned(), cid }));
    }

    fn refuse(&self, err: &ValidationError, cid: Option<String>) {
        self.reply(err.code(), &err.to_string(), cid);
    }

    fn joined(&self) -> Option<(Arc<Room>, Membership)> {
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
        let Some(token) = new_token() else {
            return self.reply(ErrorCode::Internal, "the server could not create a session; try again", None);
        };
        let hub = &self.app.hub;
        let room = match hub.room(&room) {
            Ok(room) => room,
            Err(HubError::TooManyRooms) => {
                return self.reply(
                    ErrorCode::TooManyRooms,
                    "the server has no room for another room; join an existing one",
                    None,
                );
            }
            Err(HubError::Storage(e)) => {
                warn!(conn = self.conn.id, error = %e, "history unavailable");
                return self.reply(ErrorCode::Internal, "the server could not open that room; try again", None);
            }
        };
        let request = JoinRequest { name, resume_token, last_seq: hello.last_seq, history_id: hello.history_id };
        match room.join(request, &self.conn, hub.next_id(), token) {
            Ok((membership, kind)) => {
                let resumed = matches!(kind, JoinKind::Resumed);
                info!(conn = self.conn.id, peer = %self.peer, room = %room.name, resumed, "joined");
                *self.joined.lock().unwrap_or_else(|p| p.into_inner()) = Some((room.clone(), membership));
                if let JoinKind::Joined(notice) = kind {
                    self.store(room, notice).await;
                }
            }
            Err(JoinError::NameTaken) => {
                let message =
                    format!("someone in #{} is already called {}; pick another name", room.name, hello.name.trim());
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
        match room.say(&me, &self.conn, cid, text) {
            Ok(draft) => {
                if let Err(e) = self.app.submit(room, draft).await {
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

    /// Hands a notice to the writer; a stopped writer is logged (the
    /// membership change itself already happened).
    async fn store(&self, room: Arc<Room>, draft: crate::history::Draft) {
        if let Err(e) = self.app.submit(room, draft).await {
            warn!(conn = self.conn.id, error = %e, "notice not stored");
        }
    }

    fn history(&self, request: HistoryRequest) {
        let Some((room, _)) = self.joined() else {
            return self.reply(ErrorCode::NotJoined, "send hello to join a room first", None);
        };
        let limit = request.limit.clamp(1, HISTORY_PAGE_MAX) as usize;
        match room.history(request.before, limit) {
            Ok(page) => {
                self.conn.send_msg(&ServerMsg::History(page));
            }
            Err(e) => {
                warn!(conn = self.conn.id, error = %e, "history not readable");
                self.reply(ErrorCode::StorageUnavailable, "older messages cannot be read right now; try again", None);
            }
        }
    }

    fn typing(&self, active: bool) {
        let Some((room, me)) = self.joined() else {
            return self.reply(ErrorCode::NotJoined, "send hello to join a room first", None);
        };
        room.typing(&me, active, Instant::now());
    }

    /// Settles the membership when the connection ends: a deliberate close
    /// (`leave`) is announced at once; anything else starts the grace period,
    /// after which `timed_out` is announced unless the browser resumed.
    async fn finish(&self, leave: bool) {
        let Some((room, me)) = self.joined.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        if self.app.shutdown.is_cancelled() {
            // The server is stopping; clients resume after the restart.
            return;
        }
        if leave {
            if let Some(notice) = room.leave(&me, self.conn.id) {
                info!(conn = self.conn.id, room = %room.name, "left");
                self.store(room, notice).await;
            }
            return;
        }
        let Some(epoch) = room.detach(&me, self.conn.id) else {
            return;
        };
        let grace = self.app.config.timing.leave_grace;
        let app = self.app.clone();
        let conn = self.conn.id;
        self.app.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {
                    if let Some(notice) = room.expire(&me, epoch) {
                        info!(conn, room = %room.name, "timed out");
                        if let Err(e) = app.submit(room, notice).await {
                            warn!(conn, error = %e, "notice not stored");
                        }
                    }
                }
                () = app.shutdown.cancelled() => {}
            }
        });
    }
}

/// Maps a read error to how the connection ends.
fn classify(e: WsError) -> ReaderEnd {
    match e {
        WsError::Utf8(_) => ReaderEnd::Violation(CloseReason::InvalidUtf8),
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => ReaderEnd::Violation(CloseReason::TooBig),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            ReaderEnd::Dropped("reset without close".into())
        }
        WsError::Protocol(e) => {
            debug!(error = %e, "protocol violation");
            ReaderEnd::Violation(CloseReason::Protocol)
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed => ReaderEnd::PeerClosed,
        other => ReaderEnd::Dropped(other.to_string()),
    }
}

/// The `cid` of a `say` refused before it was read (rate limit), so the
/// client knows which message to retry. Cheap: only looks for the field.
fn cid_of(text: &str) -> Option<String> {
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

/// Drains the queue into the socket in batches, pings, and sends the close
/// frame when kicked or on shutdown.
async fn write_loop(
    sink: &mut SplitSink<Ws, Message>,
    receiver: &mut ConnReceiver,
    app: &App,
    heard: &LastHeard,
) -> WriterEnd {
    let timing = app.config.timing;
    let mut heartbeat = Heartbeat::new(timing.ping_interval, timing.pong_timeout, Instant::now());
    // Grows only as far as a connection's batches do (an idle one stays small).
    let mut batch = Vec::new();
    let fragment = app.config.ws.fragment;
    let kick = receiver.kick.clone();
    loop {
        let deadline = heartbeat.deadline();
        tokio::select! {
            biased;
            reason = kick.kicked() => return send_close(sink, reason, timing.close_timeout).await,
            () = app.shutdown.cancelled() => return send_close(sink, CloseReason::Shutdown, timing.close_timeout).await,
            n = receiver.rx.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    return WriterEnd::WriteFailed("queue closed".into());
                }
                let written = {
                    let write = async {
                        for frame in batch.drain(..) {
                            if frame.len() <= fragment {
                                sink.feed(Message::Text(frame)).await?;
                            } else {
                                // Written out fragment by fragment, so the
                                // write buffer never holds the whole message.
                                for part in fragments(frame, fragment) {
                                    sink.send(part).await?;
                                }
                            }
                        }
                        sink.flush().await
                    };
                    tokio::select! {
                        r = timeout(timing.write_timeout, write) => Ok(r),
                        reason = kick.kicked() => Err(reason),
                    }
                };
                match written {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => return WriterEnd::WriteFailed(e.to_string()),
                    Ok(Err(_)) => return WriterEnd::WriteFailed("write stalled".into()),
                    Err(reason) => return send_close(sink, reason, timing.close_timeout).await,
                }
            }
            () = sleep_until(deadline) => match heartbeat.on_deadline(Instant::now(), heard.get()) {
                Beat::Ping => {
                    match timeout(timing.write_timeout, sink.send(Message::Ping(Default::default()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return WriterEnd::WriteFailed(e.to_string()),
                        Err(_) => return WriterEnd::WriteFailed("ping stalled".into()),
                    }
                }
                Beat::TimedOut => return WriterEnd::TimedOut,
                Beat::Wait => {}
            },
        }
    }
}

/// A long text message as WebSocket frames of at most `max` payload bytes:
/// a text frame and continuation frames (RFC 6455 §5.4). tungstenite keeps its
/// outgoing buffer at the largest size it ever held, so without this one large
/// `welcome` would pin that much memory to the connection for its lifetime.
fn fragments(frame: Utf8Bytes, max: usize) -> impl Iterator<Item = Message> {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let bytes = bytes::Bytes::from(frame);
    let max = max.max(1);
    let parts = bytes.len().div_ceil(max);
    (0..parts).map(move |i| {
        let chunk = bytes.slice(i * max..((i + 1) * max).min(bytes.len()));
        let opcode = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        Message::Frame(Frame::message(chunk, opcode, i + 1 == parts))
    })
}

/// Sends our close frame (or completes the reply to the peer's) within `limit`.
async fn send_close(sink: &mut SplitSink<Ws, Message>, reason: CloseReason, limit: Duration) -> WriterEnd {
    let result = match reason.frame() {
        Some((code, text)) => {
            let frame = CloseFrame { code: code.into(), reason: text.into() };
            timeout(limit, sink.send(Message::Close(Some(frame)))).await
        }
        None => timeout(limit, sink.close()).await,
    };
    if let Ok(Err(e)) = result {
        debug!(error = %e, "close frame not sent");
    }
    WriterEnd::Closed(reason)
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    use super::*;

    #[test]
    fn long_messages_become_a_text_frame_and_continuations() {
        let text: String = "é".repeat(5) + "abc"; // 13 bytes; a split may fall inside a character
        let parts: Vec<Message> = fragments(Utf8Bytes::from(text.clone()), 4).collect();
        assert_eq!(parts.len(), 4);
        let mut joined = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let Message::Frame(frame) = part else { panic!("raw frames") };
            let expected = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
            assert_eq!(frame.header().opcode, expected);
            assert_eq!(frame.header().is_final, i == 3);
            joined.extend_from_slice(frame.payload());
        }
        assert_eq!(String::from_utf8(joined).expect("valid once joined"), text);
    }
}
