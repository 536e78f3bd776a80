//! One WebSocket connection: a reader that speaks the protocol and a writer
//! that drains the connection's bounded queue, run together and torn down
//! together. What happens to the membership when the connection ends is
//! decided here, once.
//!
//! The WebSocket framing is ours (`frame.rs`) over the plain `TcpStream`, so
//! an idle connection holds no read or write buffer: reads go through a
//! buffer on the stack, and a write buffer exists only while a batch is
//! being written.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use natter_shared::{
    ClientMsg, ClientMsgId, ErrorCode, ErrorMsg, Hello, HistoryRequest, MessageText, PROTOCOL_VERSION, ResumeToken,
    RoomName, Say, ServerMsg, UserName, ValidationError, close,
    limits::{CID_MAX_LEN, HISTORY_PAGE_MAX},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, warn};

use crate::app::{App, SessionCount};
use crate::frame::{self, Decoder, Event, FrameError};
use crate::heartbeat::{Beat, Heartbeat};
use crate::hub::HubError;
use crate::outbound::{self, Batch, CloseReason, ConnHandle, ConnId, ConnReceiver};
use crate::rate_limit::{TokenBucket, Verdict};
use crate::room::{JoinError, JoinKind, JoinRequest, Membership, NotMember, Room};

/// Bytes read from the socket per read call (a stack buffer, not kept).
const READ_CHUNK: usize = 4096;
/// Most bytes read and discarded while waiting for a peer to finish closing.
const LINGER_MAX_BYTES: usize = 1024 * 1024;
/// Size of the buffer used to discard those bytes.
const LINGER_BUF_BYTES: usize = 4096;
/// The largest write buffer a worker thread keeps between writes (a larger
/// one, grown for a big batch, is freed after it).
const SCRATCH_KEEP_BYTES: usize = 256 * 1024;

thread_local! {
    /// Where a worker thread gathers a connection's frames for one write.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Why the reader stopped (the text is for the debug log).
#[derive(Debug)]
#[allow(dead_code)] // fields are read through Debug
enum ReaderEnd {
    /// The peer sent a Close frame (with this code): a deliberate leave.
    PeerClosed(Option<u16>),
    /// The peer closed with [`close::CLIENT_RECONNECTING`]: it will resume.
    PeerReconnecting,
    /// The peer's Close came while we were closing: an answer, not a leave.
    CloseReply(Option<u16>),
    /// The TCP connection ended or failed without a Close frame.
    Dropped(String),
    /// The peer broke a rule; close with this reason.
    Violation(CloseReason),
}

/// Why the writer stopped (the fields are for the debug log).
#[derive(Debug)]
#[allow(dead_code)] // fields are read through Debug
enum WriterEnd {
    /// Kicked (replaced, a violation) or shut down: a close frame went out (or was tried).
    Closed(CloseReason),
    /// Its queue filled: the close frame still has to go out, after what
    /// was already on its way.
    Lagged(Outgoing),
    /// No answer to a ping in time.
    TimedOut,
    /// Writing failed or stalled.
    WriteFailed(String),
}

/// When the peer was last heard from (any bytes), for the heartbeat.
#[derive(Debug)]
struct LastHeard {
    start: Instant,
    /// Microseconds after `start`, rounded up so bytes heard just after a
    /// ping never look older than the ping.
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

/// Runs one upgraded connection to its end. `early` holds bytes the client
/// sent right after its handshake, already read by the HTTP server.
pub async fn run(mut stream: TcpStream, early: Bytes, app: Arc<App>, peer: SocketAddr) {
    let _count = SessionCount::new(app.clone());
    let conn_id: ConnId = app.hub.next_id();
    let (handle, receiver) = outbound::channel(conn_id, app.config.limits.outbound_queue);
    let session = Session { app: app.clone(), conn: handle, peer, joined: Mutex::new(None) };
    let heard = LastHeard::new();
    if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(app.config.ws.send_buffer) {
        debug!(conn = conn_id, error = %e, "could not bound the send buffer");
    }
    debug!(conn = conn_id, %peer, "websocket open");

    let linger = {
        let reader = session.read_loop(&stream, early, &heard);
        let writer = write_loop(&stream, &receiver, &app, &heard);
        tokio::pin!(reader, writer);
        tokio::select! {
            end = &mut reader => {
                debug!(conn = conn_id, ?end, "reader ended");
                let (leave, close) = match end {
                    ReaderEnd::PeerClosed(code) => (true, Some(CloseReason::PeerClosed(code))),
                    ReaderEnd::PeerReconnecting => {
                        (false, Some(CloseReason::PeerClosed(Some(close::CLIENT_RECONNECTING))))
                    }
                    ReaderEnd::CloseReply(code) => (false, Some(CloseReason::PeerClosed(code))),
                    ReaderEnd::Violation(reason) => (false, Some(reason)),
                    ReaderEnd::Dropped(_) => (false, None),
                };
                match close {
                    Some(reason) => {
                        // Ignored if a kick came first (that reason's close goes out).
                        session.conn.kick(reason);
                        // The close frame goes out while the membership is
                        // settled (which may wait for the history writer).
                        let (_, written) = tokio::join!(
                            Box::pin(session.finish(leave)),
                            Box::pin(timeout(app.config.timing.close_timeout, &mut writer)),
                        );
                        match written {
                            Ok(WriterEnd::Lagged(out)) => {
                                drop(receiver.take());
                                Box::pin(send_lagged_close(&stream, out, &app)).await
                            }
                            _ => !matches!(reason, CloseReason::PeerClosed(_)),
                        }
                    }
                    None => {
                        Box::pin(session.finish(leave)).await;
                        false
                    }
                }
            }
            end = &mut writer => {
                debug!(conn = conn_id, ?end, "writer ended");
                Box::pin(session.finish(false)).await;
                match end {
                    WriterEnd::Lagged(out) => {
                        // What is still queued will never be sent: free it now.
                        drop(receiver.take());
                        Box::pin(send_lagged_close(&stream, out, &app)).await
                    }
                    WriterEnd::Closed(_) => true,
                    WriterEnd::TimedOut | WriterEnd::WriteFailed(_) => false,
                }
            }
        }
    };

    if linger {
        // We sent a close frame: read until the peer answers and closes, so
        // the close frame is not lost to a reset caused by unread input.
        let drain = async {
            // Close our side first: the peer (a browser especially) waits
            // for the server to end the TCP connection after the close
            // handshake, and answers our FIN with its own.
            let _ = stream.shutdown().await;
            let mut buf = vec![0u8; LINGER_BUF_BYTES];
            let mut total = 0;
            while total < LINGER_MAX_BYTES {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        };
        let _ = Box::pin(timeout(app.config.timing.close_timeout, drain)).await;
    }
    debug!(conn = conn_id, "websocket closed");
}

impl Session {
    /// True once the connection is being closed: no more requests are handled.
    fn closing(&self) -> bool {
        self.conn.kick_reason().is_some() || self.app.shutdown.is_cancelled()
    }

    async fn read_loop(&self, stream: &TcpStream, early: Bytes, heard: &LastHeard) -> ReaderEnd {
        let mut bucket = TokenBucket::new(self.app.config.rate, Instant::now());
        let hello_by = Instant::now() + self.app.config.timing.hello_timeout;
        let mut decoder = Decoder::new(self.app.config.ws.max_message_bytes);
        let mut events = Vec::new();
        // A frame error ends the connection, after the events decoded before it.
        let mut failed = decoder.feed(&early, &mut events).err();
        drop(early);
        loop {
            for event in std::mem::take(&mut events) {
                if self.closing() {
                    // Closing: wait for the peer's Close, ignore everything else.
                    match event {
                        Event::Close(Some(close::CLIENT_RECONNECTING)) => return ReaderEnd::PeerReconnecting,
                        Event::Close(code) => return ReaderEnd::CloseReply(code),
                        _ => continue,
                    }
                }
                match event {
                    Event::Text(text) => match bucket.take(Instant::now()) {
                        // Boxed: the request futures are large and an idle
                        // connection should not carry their space.
                        Verdict::Allow => Box::pin(self.handle_text(&text)).await,
                        Verdict::Refuse => self.reply(
                            ErrorCode::RateLimited,
                            "too many messages; wait a moment and try again",
                            cid_of(&text),
                        ),
                        Verdict::Disconnect => return ReaderEnd::Violation(CloseReason::Flooding),
                    },
                    Event::Ping(payload) => {
                        // Counted so pings cannot flood.
                        if bucket.take(Instant::now()) == Verdict::Disconnect {
                            return ReaderEnd::Violation(CloseReason::Flooding);
                        }
                        self.conn.pong(payload);
                    }
                    Event::Pong => {}
                    Event::Close(Some(close::CLIENT_RECONNECTING)) => return ReaderEnd::PeerReconnecting,
                    Event::Close(code) => return ReaderEnd::PeerClosed(code),
                }
            }
            if let Some(e) = failed {
                return violation(e);
            }
            // Read what has arrived into a buffer that is not kept.
            let got = {
                let mut chunk = [0u8; READ_CHUNK];
                match stream.try_read(&mut chunk) {
                    Ok(0) => return ReaderEnd::Dropped("stream ended".into()),
                    Ok(n) => decoder.feed(&chunk[..n], &mut events).map(|()| true).map_err(Some),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                    Err(e) => return ReaderEnd::Dropped(e.to_string()),
                }
            };
            match got {
                Ok(true) => {
                    heard.touch();
                    // Reading never waits while bytes keep coming: let the
                    // runtime's fairness budget interrupt a flooding client.
                    tokio::task::consume_budget().await;
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    // Handle what came before the bad frame first.
                    failed = e;
                    continue;
                }
            }
            // A connection must join within the hello timeout.
            let ready = if self.joined().is_some() || self.closing() {
                stream.readable().await
            } else {
                // Boxed: only a connection that has not joined yet waits with a deadline.
                match Box::pin(tokio::time::timeout_at(hello_by, stream.readable())).await {
                    Ok(ready) => ready,
                    Err(_) => return ReaderEnd::Violation(CloseReason::NoHello),
                }
            };
            if let Err(e) = ready {
                return ReaderEnd::Dropped(e.to_string());
            }
        }
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

/// The close reason for bytes that broke the protocol.
fn violation(e: FrameError) -> ReaderEnd {
    debug!(error = %e, "refused a frame");
    ReaderEnd::Violation(match e {
        FrameError::Binary => CloseReason::Binary,
        FrameError::InvalidUtf8 => CloseReason::InvalidUtf8,
        FrameError::TooBig(_) => CloseReason::TooBig,
        FrameError::Protocol(_) => CloseReason::Protocol,
    })
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

/// Bytes on their way to the socket. Empty (no allocation) between writes;
/// whatever a cancelled write left is written before anything else, so a
/// close frame never lands inside another frame.
#[derive(Debug, Default)]
struct Outgoing {
    buf: Vec<u8>,
    written: usize,
}

impl Outgoing {
    fn push(&mut self, opcode: u8, payload: &[u8]) {
        frame::encode(opcode, payload, &mut self.buf);
    }

    /// Drops the frames not yet begun, keeping the rest of the one being
    /// written (a frame cut short would break the stream).
    fn drop_unstarted(&mut self) {
        let mut at = 0;
        while at < self.buf.len() {
            let Some(len) = frame::encoded_frame_len(&self.buf[at..]) else { break };
            if at + len > self.written {
                let keep = if at < self.written { at + len } else { at };
                self.buf.truncate(keep);
                break;
            }
            at += len;
        }
    }

    /// Bytes not yet written (a frame the socket has not taken, a ping).
    fn has_unwritten(&self) -> bool {
        self.written < self.buf.len()
    }

    /// Writes as much of `batch` as the socket takes now, without waiting:
    /// frames are gathered (at most `max_bytes` per write call) in a buffer
    /// shared by the thread's connections, so a write that completes
    /// allocates nothing. Returns what is left if the socket is full: the
    /// bytes it did not take are then this connection's own (`buf`, with
    /// `written` marking how far it got), and the frames not yet gathered.
    fn try_write_batch(&mut self, stream: &TcpStream, mut batch: Batch, max_bytes: usize) -> io::Result<Option<Batch>> {
        if self.has_unwritten() {
            // Something is already waiting (a ping): keep the order.
            return Ok(Some(batch));
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let result = loop {
                scratch.clear();
                gather(&mut batch, scratch, max_bytes);
                if scratch.is_empty() {
                    break Ok(None);
                }
                let taken = match stream.try_write(scratch) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => break Err(e),
                };
                if taken < scratch.len() {
                    self.buf = scratch.clone();
                    self.written = taken;
                    break Ok(Some(batch));
                }
            };
            if scratch.capacity() > SCRATCH_KEEP_BYTES {
                *scratch = Vec::new();
            }
            result
        })
    }

    /// Writes everything buffered. Safe to cancel: progress is kept.
    async fn flush(&mut self, stream: &TcpStream) -> io::Result<()> {
        while self.written < self.buf.len() {
            stream.writable().await?;
            match stream.try_write(&self.buf[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        // Done: give the memory back.
        *self = Self::default();
        Ok(())
    }

    /// Writes a batch after whatever is still unwritten, waiting for the
    /// socket as needed (the path of a write the socket did not take whole).
    async fn write_batch(&mut self, stream: &TcpStream, mut batch: Batch, max_bytes: usize) -> io::Result<()> {
        loop {
            gather(&mut batch, &mut self.buf, max_bytes);
            if !self.has_unwritten() {
                return Ok(());
            }
            self.flush(stream).await?;
        }
    }
}

/// Moves the pong, then frames, from `batch` into `buf` as WebSocket frames,
/// up to `max_bytes` (at least one frame) for one write call.
fn gather(batch: &mut Batch, buf: &mut Vec<u8>, max_bytes: usize) {
    if let Some(payload) = batch.pong.take() {
        frame::encode(frame::OP_PONG, &payload, buf);
    }
    while let Some(text) = batch.frames.front() {
        if !buf.is_empty() && buf.len() + frame::encoded_len(text.len()) > max_bytes {
            break;
        }
        frame::encode(frame::OP_TEXT, text.as_bytes(), buf);
        batch.frames.pop_front();
    }
}

/// What cut a delivery short.
enum Interrupt {
    Kicked(CloseReason),
    Shutdown,
    Failed(WriterEnd),
}

/// Drains the queue into the socket in batches, pings, and sends the close
/// frame when kicked or on shutdown.
///
/// Coalescing: a frame for a connection written to less than
/// `write_coalesce` ago waits for the rest of that window, and everything
/// queued by then goes out in one write; a frame for a connection quiet
/// longer goes out at once.
///
/// The futures the writer waits on (kick, shutdown, one timer) live across
/// the loop instead of being made anew for each wait, and a write that the
/// socket takes whole is done without waiting; only a write that blocks is
/// boxed (with its timeout). An idle connection's task holds only what
/// waiting needs.
async fn write_loop(stream: &TcpStream, receiver: &ConnReceiver, app: &App, heard: &LastHeard) -> WriterEnd {
    let timing = &app.config.timing;
    let coalesce = app.config.ws.write_coalesce;
    let mut heartbeat = Heartbeat::new(timing.ping_interval, timing.pong_timeout, Instant::now());
    let mut out = Outgoing::default();
    let mut last_write: Option<Instant> = None;
    // Frames are waiting for the end of the window that ends then.
    let mut window_end: Option<Instant> = None;
    let kicked = receiver.kick().kicked();
    let cancelled = app.shutdown.cancelled();
    let timer = sleep_until(heartbeat.deadline());
    tokio::pin!(kicked, cancelled, timer);
    let interrupt = loop {
        let write = tokio::select! {
            biased;
            reason = &mut kicked => break Interrupt::Kicked(reason),
            () = &mut cancelled => break Interrupt::Shutdown,
            () = receiver.ready(), if window_end.is_none() => {
                window_end = last_write.map(|at| at + coalesce).filter(|end| *end > Instant::now());
                window_end.is_none()
            }
            () = &mut timer => {
                let now = Instant::now();
                let window_ended = window_end.is_some_and(|end| end <= now);
                if window_ended {
                    window_end = None;
                }
                if heartbeat.deadline() <= now {
                    match heartbeat.on_deadline(now, heard.get()) {
                        Beat::Ping => out.push(frame::OP_PING, &[]),
                        Beat::TimedOut => return WriterEnd::TimedOut,
                        Beat::Wait => {}
                    }
                }
                window_ended || out.has_unwritten()
            }
        };
        if write {
            match deliver(stream, &mut out, receiver, app, kicked.as_mut(), cancelled.as_mut()).await {
                // Only frames open a window: a ping alone does not hold back the next message.
                Ok(true) => last_write = Some(Instant::now()),
                Ok(false) => {}
                Err(interrupt) => break interrupt,
            }
            // A write the socket takes at once never waits: with no window
            // (`write_coalesce` 0) a busy queue must still let other tasks run.
            tokio::task::consume_budget().await;
        }
        let next = window_end.map_or(heartbeat.deadline(), |end| end.min(heartbeat.deadline()));
        if timer.is_elapsed() || timer.deadline() != next {
            timer.as_mut().reset(next);
        }
    };
    match interrupt {
        Interrupt::Kicked(reason) => Box::pin(close_for(stream, out, reason, timing.close_timeout)).await,
        Interrupt::Shutdown => {
            Box::pin(send_close(stream, &mut out, CloseReason::Shutdown, timing.close_timeout)).await
        }
        Interrupt::Failed(end) => end,
    }
}

/// Writes everything queued (and a ping `out` may hold): at once if the
/// socket takes it, otherwise waiting for the socket up to the write timeout.
/// Returns whether it wrote any frame.
async fn deliver(
    stream: &TcpStream,
    out: &mut Outgoing,
    receiver: &ConnReceiver,
    app: &App,
    kicked: Pin<&mut impl Future<Output = CloseReason>>,
    cancelled: Pin<&mut impl Future<Output = ()>>,
) -> Result<bool, Interrupt> {
    let ws = &app.config.ws;
    let batch = receiver.take();
    let frames = !batch.frames.is_empty();
    let rest = match out.try_write_batch(stream, batch, ws.write_batch_bytes) {
        Ok(None) => return Ok(frames),
        Ok(Some(rest)) => rest,
        Err(e) => return Err(Interrupt::Failed(WriterEnd::WriteFailed(e.to_string()))),
    };
    // The socket is full: wait for it, boxed, since few writes get here.
    Box::pin(async {
        tokio::select! {
            r = timeout(app.config.timing.write_timeout, out.write_batch(stream, rest, ws.write_batch_bytes)) => match r {
                Ok(Ok(())) => Ok(frames),
                Ok(Err(e)) => Err(Interrupt::Failed(WriterEnd::WriteFailed(e.to_string()))),
                Err(_) => Err(Interrupt::Failed(WriterEnd::WriteFailed("write stalled".into()))),
            },
            reason = kicked => Err(Interrupt::Kicked(reason)),
            () = cancelled => Err(Interrupt::Shutdown),
        }
    })
    .await
}

/// Ends the writer for a kick: a lagged connection's close frame is sent
/// by the caller after the membership is settled; any other goes out now.
async fn close_for(stream: &TcpStream, mut out: Outgoing, reason: CloseReason, limit: Duration) -> WriterEnd {
    if reason == CloseReason::Lagged {
        return WriterEnd::Lagged(out);
    }
    send_close(stream, &mut out, reason, limit).await
}

/// Sends a lagged connection's close frame right after the frame it was in
/// the middle of (everything after that is dropped: the client resumes from
/// the last seq it got). A client that reads nothing gets the lagged close
/// timeout to get there. Returns whether the close frame went out.
async fn send_lagged_close(stream: &TcpStream, mut out: Outgoing, app: &App) -> bool {
    out.drop_unstarted();
    let reason = CloseReason::Lagged;
    let (code, text) = reason.frame().unwrap_or((close::LAGGED, close::LAGGED_REASON));
    out.push(frame::OP_CLOSE, &frame::close_payload(code, text));
    tokio::select! {
        r = timeout(app.config.timing.lagged_close_timeout, out.flush(stream)) => {
            let sent = matches!(r, Ok(Ok(())));
            if !sent {
                debug!("lagged close frame not sent");
            }
            sent
        }
        () = app.shutdown.cancelled() => false,
    }
}

/// Sends our close frame (or the reply to the peer's) within `limit`, after
/// whatever an interrupted write left.
async fn send_close(stream: &TcpStream, out: &mut Outgoing, reason: CloseReason, limit: Duration) -> WriterEnd {
    let payload = match reason.frame() {
        Some((code, text)) => frame::close_payload(code, text),
        None => Vec::new(),
    };
    out.push(frame::OP_CLOSE, &payload);
    match timeout(limit, out.flush(stream)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "close frame not sent"),
        Err(_) => debug!("close frame not sent in time"),
    }
    WriterEnd::Closed(reason)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    use super::*;
    use crate::config::{Config, HistoryKind};

    #[tokio::test]
    async fn a_batch_is_written_as_frames_in_order_and_the_buffer_is_freed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let frames: VecDeque<Utf8Bytes> = ["a", &"b".repeat(300), "c"].into_iter().map(Utf8Bytes::from).collect();
        let mut out = Outgoing::default();
        // A tiny batch limit: one write call per frame.
        out.write_batch(&server, Batch { frames, pong: Some(b"p".to_vec()) }, 16).await.expect("written");
        assert_eq!(out.buf.capacity(), 0);
        let mut expected = Vec::new();
        frame::encode(frame::OP_PONG, b"p", &mut expected);
        frame::encode(frame::OP_TEXT, b"a", &mut expected);
        frame::encode(frame::OP_TEXT, "b".repeat(300).as_bytes(), &mut expected);
        frame::encode(frame::OP_TEXT, b"c", &mut expected);
        let mut got = vec![0u8; expected.len()];
        let mut client = client;
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(got, expected);
    }

    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (server, client)
    }

    fn text_frames(texts: &[&str]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for text in texts {
            frame::encode(frame::OP_TEXT, text.as_bytes(), &mut bytes);
        }
        bytes
    }

    #[tokio::test]
    async fn a_write_the_socket_cannot_take_whole_continues_where_it_stopped() {
        let (server, mut client) = socket_pair().await;
        socket2::SockRef::from(&server).set_send_buffer_size(4096).expect("small send buffer");
        let texts: Vec<String> = (0..300).map(|i| format!("{i:04}{}", "x".repeat(996))).collect();
        let frames: VecDeque<Utf8Bytes> = texts.iter().map(|t| Utf8Bytes::from(t.clone())).collect();
        let mut out = Outgoing::default();
        // The client reads nothing yet: the socket fills.
        let rest = out
            .try_write_batch(&server, Batch { frames, pong: None }, 16 * 1024)
            .expect("no error")
            .expect("the socket could not take 300 KB");
        assert!(out.has_unwritten(), "the bytes the socket did not take are the connection's own");
        let expected = text_frames(&texts.iter().map(String::as_str).collect::<Vec<_>>());
        let mut got = vec![0u8; expected.len()];
        let (written, read) = tokio::join!(out.write_batch(&server, rest, 16 * 1024), client.read_exact(&mut got));
        written.expect("written");
        read.expect("read");
        assert!(got == expected, "every frame arrives once, whole and in order");
        assert!(!out.has_unwritten());
    }

    #[tokio::test(start_paused = true)]
    async fn frames_queued_soon_after_a_write_go_out_together_when_the_window_ends() {
        const WINDOW: Duration = Duration::from_millis(500);
        let mut config = Config { history: HistoryKind::Memory, ..Config::default() };
        config.ws.write_coalesce = WINDOW;
        let app = App::new(config).expect("app");
        let (server, mut client) = socket_pair().await;
        let (handle, receiver) = outbound::channel(1, 16);
        let heard = LastHeard::new();
        let frame = |text: &'static str| Utf8Bytes::from_static(text);
        let test = async {
            let mut buf = vec![0u8; 1024];
            // Quiet so far: the first frame goes out at once.
            let start = Instant::now();
            handle.send(&frame("a"));
            let n = client.read(&mut buf).await.expect("read");
            assert_eq!(&buf[..n], &text_frames(&["a"])[..]);
            assert!(start.elapsed() < WINDOW);
            // Within the window: held back until it ends, then one write.
            handle.send(&frame("b"));
            tokio::time::sleep(WINDOW / 5).await;
            handle.send(&frame("c"));
            let early = timeout(WINDOW / 5, client.read(&mut buf)).await;
            assert!(early.is_err(), "nothing is written before the window ends");
            let expected = text_frames(&["b", "c"]);
            let mut got = vec![0u8; expected.len()];
            client.read_exact(&mut got).await.expect("read");
            assert_eq!(got, expected);
            assert!(start.elapsed() >= WINDOW);
            // Quiet again for longer than the window: at once.
            tokio::time::sleep(WINDOW * 2).await;
            let again = Instant::now();
            handle.send(&frame("d"));
            let n = client.read(&mut buf).await.expect("read");
            assert_eq!(&buf[..n], &text_frames(&["d"])[..]);
            assert!(again.elapsed() < WINDOW);
        };
        tokio::select! {
            end = write_loop(&server, &receiver, &app, &heard) => panic!("the writer ended: {end:?}"),
            () = test => {}
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_write_the_socket_is_not_taking() {
        let app = App::new(Config { history: HistoryKind::Memory, ..Config::default() }).expect("app");
        let (server, _client) = socket_pair().await;
        socket2::SockRef::from(&server).set_send_buffer_size(4096).expect("small send buffer");
        let (handle, receiver) = outbound::channel(1, 1024);
        let heard = LastHeard::new();
        let text = Utf8Bytes::from("x".repeat(1000));
        for _ in 0..1000 {
            handle.send(&text);
        }
        let started = Instant::now();
        // The client reads nothing: the writer is stuck in its slow path.
        let shutdown = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            app.shutdown.cancel();
        };
        let (end, ()) = tokio::join!(write_loop(&server, &receiver, &app, &heard), shutdown);
        assert!(matches!(end, WriterEnd::Closed(CloseReason::Shutdown)), "ended with {end:?}");
        assert!(started.elapsed() < app.config.timing.write_timeout, "shutdown did not wait for the write timeout");
    }

    #[test]
    fn a_lagged_close_comes_right_after_the_frame_being_written() {
        let mut out = Outgoing::default();
        out.push(frame::OP_TEXT, b"first");
        out.push(frame::OP_TEXT, &[b'x'; 300]);
        out.push(frame::OP_TEXT, b"never started");
        let second_end = frame::encoded_len(5) + frame::encoded_len(300);
        out.written = frame::encoded_len(5) + 3; // inside the second frame
        out.drop_unstarted();
        assert_eq!(out.buf.len(), second_end);
        out.written = second_end; // exactly between frames
        out.push(frame::OP_TEXT, b"later");
        out.drop_unstarted();
        assert_eq!(out.buf.len(), second_end);
    }
}

#[cfg(test)]
mod footprint {
    use super::*;
    use crate::config::{Config, HistoryKind};

    /// Every idle connection's task holds the session future: large request
    /// futures must stay boxed (heaptrack found 8.7 KB per task before).
    const SESSION_FUTURE_MAX: usize = 2048;

    #[tokio::test]
    async fn the_session_future_stays_small() {
        let app = App::new(Config { history: HistoryKind::Memory, ..Config::default() }).expect("app");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let run = super::run(stream, Bytes::new(), app, peer);
        let size = std::mem::size_of_val(&run);
        assert!(size <= SESSION_FUTURE_MAX, "the session future is {size} bytes (at most {SESSION_FUTURE_MAX})");
    }
}
