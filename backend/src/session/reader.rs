//! The reader half of a session: decodes the client's frames, applies the
//! rate limit and the hello deadline, and hands each message to its
//! request handler. Reads go through a buffer on the stack.

use std::io;

use bytes::Bytes;
use natter_shared::{ErrorCode, close};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::rate_limit::{TokenBucket, Verdict};
use super::requests::cid_of;
use super::{LastHeard, ReaderEnd, Session};
use crate::ws::frame::{Decoder, Event, FrameError};
use crate::ws::outbound::CloseReason;

/// Bytes read from the socket per read call (a stack buffer, not kept).
const READ_CHUNK: usize = 4096;

impl Session {
    /// Reads and handles the client's frames until the connection ends.
    pub(super) async fn read_loop(&self, stream: &TcpStream, early: Bytes, heard: &LastHeard) -> ReaderEnd {
        let mut bucket = TokenBucket::new(self.app.config.rate, Instant::now());
        let hello_by = Instant::now() + self.app.config.timing.hello_timeout;
        let mut decoder = Decoder::new(self.app.config.ws.max_message_bytes);
        let mut events = Vec::new();
        // A frame error ends the connection, after the events decoded before it.
        let mut failed = decoder.feed(&early, &mut events).err();
        drop(early);
        loop {
            for event in std::mem::take(&mut events) {
                if let Some(end) = self.on_event(event, &mut bucket).await {
                    return end;
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

    /// Handles one decoded event; `Some` ends the reader.
    async fn on_event(&self, event: Event, bucket: &mut TokenBucket) -> Option<ReaderEnd> {
        if self.closing() {
            // Closing: wait for the peer's Close, ignore everything else.
            return match event {
                Event::Close(Some(close::CLIENT_RECONNECTING)) => Some(ReaderEnd::PeerReconnecting),
                Event::Close(code) => Some(ReaderEnd::CloseReply(code)),
                _ => None,
            };
        }
        match event {
            Event::Text(text) => match bucket.take(Instant::now()) {
                // Boxed: the request futures are large and an idle
                // connection should not carry their space.
                Verdict::Allow => Box::pin(self.handle_text(&text)).await,
                Verdict::Refuse => {
                    self.reply(ErrorCode::RateLimited, "too many messages; wait a moment and try again", cid_of(&text))
                }
                Verdict::Disconnect => return Some(ReaderEnd::Violation(CloseReason::Flooding)),
            },
            Event::Ping(payload) => {
                // Counted so pings cannot flood.
                if bucket.take(Instant::now()) == Verdict::Disconnect {
                    return Some(ReaderEnd::Violation(CloseReason::Flooding));
                }
                self.conn.pong(payload);
            }
            Event::Pong => {}
            Event::Close(Some(close::CLIENT_RECONNECTING)) => return Some(ReaderEnd::PeerReconnecting),
            Event::Close(code) => return Some(ReaderEnd::PeerClosed(code)),
        }
        None
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
