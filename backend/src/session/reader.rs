//! The reader half of a session: decodes the client's frames, applies the
//! rate limit and the hello deadline, and hands each message to its
//! request handler. Reads go through a buffer on the stack.

use std::collections::VecDeque;
use std::io;

use natter_shared::{ErrorCode, close};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::rate_limit::{TokenBucket, Verdict};
use super::requests::cid_of;
use super::{LastHeard, ReaderEnd, Session};
use crate::app::App;
use crate::ws::frame::{Decoder, Event, FrameError};
use crate::ws::outbound::CloseReason;

/// Bytes read from the socket per read call (a stack buffer, not kept).
const READ_CHUNK: usize = 4096;

/// What the reader keeps from one read to the next. Made before the
/// session's future and lent to [`Session::read_loop`], so the connection's
/// task stores it once, not once per place the reader can wait.
#[derive(Debug)]
pub(super) struct ReadState {
    bucket: TokenBucket,
    hello_by: Instant,
    /// When the frame or fragmented message now arriving began.
    partial_since: Option<Instant>,
    decoder: Decoder,
    /// Decoded, not yet handled (in order).
    events: VecDeque<Event>,
    /// A frame error ends the connection, after the events decoded before it.
    failed: Option<FrameError>,
}

impl ReadState {
    /// The state of a new connection, with the bytes that came with its handshake decoded.
    pub(super) fn new(app: &App, early: &[u8]) -> Self {
        let now = Instant::now();
        let mut decoder = Decoder::new(app.config.ws.max_message_bytes);
        let mut events = Vec::new();
        let failed = decoder.feed(early, &mut events).err();
        Self {
            bucket: TokenBucket::new(app.config.rate, now),
            hello_by: now + app.config.timing.hello_timeout,
            partial_since: None,
            decoder,
            events: events.into(),
            failed,
        }
    }
}

impl Session {
    /// Reads and handles the client's frames until the connection ends.
    pub(super) async fn read_loop(&self, stream: &TcpStream, state: &mut ReadState, heard: &LastHeard) -> ReaderEnd {
        let frame_timeout = self.app.config.timing.frame_timeout;
        loop {
            while let Some(event) = state.events.pop_front() {
                // Boxed: the request futures are large and an idle
                // connection should not carry their space.
                let end = match self.on_event(event, &mut state.bucket) {
                    Step::Next => None,
                    Step::Request(text) => {
                        Box::pin(self.request(&text)).await;
                        None
                    }
                    Step::Flooded => Some(Box::pin(self.flooded()).await),
                    Step::End(end) => Some(end),
                };
                if let Some(end) = end {
                    return end;
                }
            }
            // Handled: an idle connection keeps no event buffer.
            state.events = VecDeque::new();
            if let Some(e) = state.failed {
                return violation(e);
            }
            // The deadlines are checked on every pass, not only when the
            // socket would block, so a client that keeps it busy (or trickles
            // a frame byte by byte) cannot outrun them.
            let now = Instant::now();
            let hello_due = (self.joined().is_none() && !self.closing()).then_some(state.hello_by);
            if hello_due.is_some_and(|by| now >= by) {
                return ReaderEnd::Violation(CloseReason::NoHello);
            }
            let partial_by = if state.decoder.in_progress() {
                Some(*state.partial_since.get_or_insert(now) + frame_timeout)
            } else {
                state.partial_since = None;
                None
            };
            if partial_by.is_some_and(|by| now >= by) {
                return ReaderEnd::Violation(CloseReason::SlowFrame);
            }
            // Read what has arrived into a buffer that is not kept.
            let got = {
                let mut chunk = [0u8; READ_CHUNK];
                match stream.try_read(&mut chunk) {
                    Ok(0) => return ReaderEnd::Dropped("stream ended".into()),
                    Ok(n) => {
                        // The handled events' buffer was freed: this one becomes the next.
                        let mut decoded = Vec::new();
                        let fed = state.decoder.feed(&chunk[..n], &mut decoded);
                        state.events = decoded.into();
                        fed.map(|()| true).map_err(Some)
                    }
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
                    state.failed = e;
                    continue;
                }
            }
            // Wait for bytes, up to the next deadline (checked above).
            let deadline = match (hello_due, partial_by) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let ready = match deadline {
                None => stream.readable().await,
                // Boxed: only a connection with a deadline running waits with a timer.
                Some(by) => match Box::pin(tokio::time::timeout_at(by, stream.readable())).await {
                    Ok(ready) => ready,
                    Err(_) => continue,
                },
            };
            if let Err(e) = ready {
                return ReaderEnd::Dropped(e.to_string());
            }
        }
    }

    /// Decides what one decoded event asks for (without waiting: what
    /// waits, the reader does, boxed).
    fn on_event(&self, event: Event, bucket: &mut TokenBucket) -> Step {
        if self.closing() {
            // Closing: wait for the peer's Close, ignore everything else.
            return match event {
                Event::Close(Some(close::CLIENT_RECONNECTING)) => Step::End(ReaderEnd::PeerReconnecting),
                Event::Close(code) => Step::End(ReaderEnd::CloseReply(code)),
                _ => Step::Next,
            };
        }
        match event {
            Event::Text(text) => match bucket.take(Instant::now()) {
                Verdict::Allow => return Step::Request(text),
                Verdict::Refuse => {
                    self.app.metrics.rate_limited.inc();
                    self.reply(ErrorCode::RateLimited, "too many messages; wait a moment and try again", cid_of(&text))
                }
                Verdict::Disconnect => return Step::Flooded,
            },
            Event::Ping(payload) => {
                // Counted so pings cannot flood.
                if bucket.take(Instant::now()) == Verdict::Disconnect {
                    return Step::Flooded;
                }
                self.conn.pong(payload);
            }
            Event::Pong => {
                // Counted too: unsolicited pongs are frames like any other.
                if bucket.take(Instant::now()) == Verdict::Disconnect {
                    return Step::Flooded;
                }
            }
            Event::Close(Some(close::CLIENT_RECONNECTING)) => return Step::End(ReaderEnd::PeerReconnecting),
            Event::Close(code) => return Step::End(ReaderEnd::PeerClosed(code)),
        }
        Step::Next
    }

    /// Handles a request once the replies to earlier ones have drained: a
    /// client that asks for more than it reads waits here, and TCP pushes back.
    async fn request(&self, text: &str) {
        self.conn.drained(self.app.config.conn.reply_max_bytes()).await;
        if !self.closing() {
            self.handle_text(text).await;
        }
    }

    /// Ends a flooding client's connection (1008), once the replies to what
    /// it sent before the flood (the acks of its stored messages) are queued
    /// ahead of the close frame, so it learns what was stored. Bounded by
    /// the close timeout.
    async fn flooded(&self) -> ReaderEnd {
        let limit = self.app.config.timing.close_timeout;
        if tokio::time::timeout(limit, self.conn.replies_settled()).await.is_err() {
            debug!(conn = self.conn.id, "replies still pending at a flood close");
        }
        ReaderEnd::Violation(CloseReason::Flooding)
    }
}

/// What a decoded event asks of the reader.
enum Step {
    /// Nothing more: on to the next event.
    Next,
    /// Handle this request.
    Request(String),
    /// Close the connection for flooding.
    Flooded,
    /// The reader ends.
    End(ReaderEnd),
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
