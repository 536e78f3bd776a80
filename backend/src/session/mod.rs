//! One WebSocket connection: a reader that speaks the protocol and a writer
//! that drains the connection's bounded queue, run together and torn down
//! together. What happens to the membership when the connection ends is
//! decided here, once ([`ending`]).
//!
//! The WebSocket framing is ours (`ws::frame`) over the plain `TcpStream`, so
//! an idle connection holds no read or write buffer: reads go through a
//! buffer on the stack, and a write buffer exists only while a batch is
//! being written.

pub mod heartbeat;
pub mod rate_limit;
mod reader;
mod requests;
mod writer;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use natter_shared::close;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::{debug, info};

use crate::address::{AddressKey, Slot};
use crate::app::{App, SessionCount};
use crate::chat::room::{End, Membership, Room};
use crate::ws::outbound::{self, CloseReason, ConnHandle, ConnId, ConnReceiver};
use writer::WriteBuf;

/// Most bytes read and discarded while waiting for a peer to finish closing.
const LINGER_MAX_BYTES: usize = 1024 * 1024;
/// Size of the buffer used to discard those bytes.
const LINGER_BUF_BYTES: usize = 4096;
/// The reason logged for a connection dropped for a missing pong.
const HEARTBEAT_TIMEOUT: &str = "heartbeat_timeout";

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
    Lagged(WriteBuf),
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
    /// What per-address limits count this client under (the peer, or the
    /// address a trusted proxy forwarded).
    client: AddressKey,
    joined: Mutex<Option<(Arc<Room>, Membership)>>,
    /// The joined session's slot under the per-address join cap.
    join_slot: Mutex<Option<Slot>>,
    /// The connection's rate of re-send look-ups
    /// ([`crate::config::DEFAULT_RESEND_CHECKS_PER_CONNECTION`]), made at its first re-send.
    resend_checks: Mutex<Option<Box<crate::address::Bucket>>>,
}

/// Runs one upgraded connection to its end. `early` holds bytes the client
/// sent right after its handshake, already read by the HTTP server; `held`
/// (the connection's slots under the server's limits) is dropped at the end.
///
/// The connection's state is set up here and moved into the returned
/// future once: an idle connection's task is that future, so nothing in it
/// is kept twice.
pub fn run(
    stream: TcpStream,
    early: Bytes,
    app: Arc<App>,
    peer: SocketAddr,
    client: IpAddr,
    held: impl Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    // Shared with the coalescer's tick, which writes to it while the writer is not writing.
    let stream = Arc::new(stream);
    let count = SessionCount::new(app.clone());
    let conn_id: ConnId = app.hub.next_id();
    let limits = &app.config.conn;
    let (handle, receiver) = match &app.coalescer {
        Some(coalescer) => outbound::coalesced(
            conn_id,
            limits.outbound_queue,
            limits.output_budget,
            coalescer.clone(),
            Some(stream.clone()),
        ),
        None => outbound::bounded(conn_id, limits.outbound_queue, limits.output_budget),
    };
    if let Err(e) = socket2::SockRef::from(&*stream).set_send_buffer_size(app.config.ws.send_buffer) {
        debug!(conn = conn_id, error = %e, "could not bound the send buffer");
    }
    debug!(conn = conn_id, %peer, "websocket open");
    let session = Session {
        app,
        conn: handle,
        peer,
        client: AddressKey::of(client),
        joined: Mutex::new(None),
        join_slot: Mutex::new(None),
        resend_checks: Mutex::new(None),
    };
    let heard = LastHeard::new();
    let mut read_state = reader::ReadState::new(&session.app, &early);
    drop(early);
    async move {
        let app = &session.app;
        let peer = &session.peer;
        let conn_id = session.conn.id;
        let (ended, linger) = {
            let reader = session.read_loop(&stream, &mut read_state, &heard);
            let writer = writer::write_loop(&stream, &receiver, app, &heard);
            tokio::pin!(reader, writer);
            // The ends are boxed: an idle connection's task holds no room for them.
            tokio::select! {
                end = &mut reader => Box::pin(session.after_reader(end, writer, &receiver, &stream)).await,
                end = &mut writer => Box::pin(session.after_writer(end, &receiver, &stream)).await,
            }
        };

        if linger {
            // We sent a close frame: read until the peer answers and closes, so
            // the close frame is not lost to a reset caused by unread input.
            let drain = async {
                // Close our side first: the peer (a browser especially) waits
                // for the server to end the TCP connection after the close
                // handshake, and answers our FIN with its own.
                let _ = socket2::SockRef::from(&*stream).shutdown(std::net::Shutdown::Write);
                let mut buf = vec![0u8; LINGER_BUF_BYTES];
                let mut total = 0;
                while total < LINGER_MAX_BYTES {
                    if stream.readable().await.is_err() {
                        break;
                    }
                    match stream.try_read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                }
            };
            let _ = Box::pin(timeout(app.config.timing.close_timeout, drain)).await;
        }
        let (reason, code) = ended;
        let lasted = heard.start.elapsed();
        app.metrics.session_ended(code, lasted, session.conn.high_water_bytes());
        if reason == CloseReason::Lagged.label() {
            app.metrics.lagged_closes.inc();
        } else if reason == HEARTBEAT_TIMEOUT {
            app.metrics.heartbeat_timeouts.inc();
        }
        // Never the room, the name or anything the client said: the reason and the code.
        info!(
            conn = conn_id,
            %peer,
            reason,
            code = crate::metrics::close_code_label(code),
            duration_ms = u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX),
            "connection ended"
        );
        drop((count, held));
    }
}

/// How a connection ended, for the log and the metrics (see [`summary`]).
type Ended = (&'static str, Option<u16>);

/// Why a connection ended, for the log and the metrics: a short reason and
/// the close code that went out or came in (none when the TCP connection
/// ended without one). `kicked` is why the server was closing it, if it was.
fn summary(stopped: Stopped<'_>, kicked: Option<CloseReason>) -> Ended {
    let ours = |reason: CloseReason| (reason.label(), reason.frame().map(|(code, _)| code));
    match stopped {
        Stopped::Reader(ReaderEnd::PeerClosed(code)) => ("peer_closed", Some(code.unwrap_or(close::NO_STATUS))),
        Stopped::Reader(ReaderEnd::PeerReconnecting) => ("peer_reconnecting", Some(close::CLIENT_RECONNECTING)),
        Stopped::Reader(ReaderEnd::CloseReply(code)) => match kicked {
            Some(reason) => ours(reason),
            None => ("peer_closed", Some(code.unwrap_or(close::NO_STATUS))),
        },
        Stopped::Reader(ReaderEnd::Violation(reason)) => ours(*reason),
        Stopped::Reader(ReaderEnd::Dropped(_)) => ("dropped", None),
        Stopped::Writer(WriterEnd::Closed(reason)) => ours(*reason),
        Stopped::Writer(WriterEnd::Lagged(_)) => ours(CloseReason::Lagged),
        Stopped::Writer(WriterEnd::TimedOut) => (HEARTBEAT_TIMEOUT, None),
        Stopped::Writer(WriterEnd::WriteFailed(_)) => ("write_failed", None),
    }
}

impl Session {
    /// The connection's end when the reader stopped first: settles the
    /// membership while the writer sends the close frame. Returns the end
    /// for the log and whether to wait for the peer's close.
    async fn after_reader(
        &self,
        end: ReaderEnd,
        mut writer: Pin<&mut impl Future<Output = WriterEnd>>,
        receiver: &ConnReceiver,
        stream: &TcpStream,
    ) -> (Ended, bool) {
        debug!(conn = self.conn.id, ?end, "reader ended");
        let ended = summary(Stopped::Reader(&end), self.conn.kick_reason());
        let ending = self.ending(Stopped::Reader(&end));
        let linger = match ending.close {
            Some(reason) => {
                // Ignored if a kick came first (that reason's close goes out).
                self.conn.kick(reason);
                // The close frame goes out while the membership is
                // settled (which may wait for the history writer).
                let (_, written) = tokio::join!(
                    Box::pin(self.finish(ending.membership)),
                    Box::pin(timeout(self.app.config.timing.close_timeout, writer.as_mut())),
                );
                match written {
                    Ok(WriterEnd::Lagged(mut out)) => {
                        out.absorb(receiver.take().started);
                        Box::pin(writer::send_lagged_close(stream, out, &self.app)).await
                    }
                    _ => !matches!(reason, CloseReason::PeerClosed(_)),
                }
            }
            None => {
                Box::pin(self.finish(ending.membership)).await;
                false
            }
        };
        (ended, linger)
    }

    /// The connection's end when the writer stopped first (kicked, shut
    /// down, timed out or failed). Returns as [`Session::after_reader`].
    async fn after_writer(&self, end: WriterEnd, receiver: &ConnReceiver, stream: &TcpStream) -> (Ended, bool) {
        debug!(conn = self.conn.id, ?end, "writer ended");
        let ended = summary(Stopped::Writer(&end), self.conn.kick_reason());
        let ending = self.ending(Stopped::Writer(&end));
        Box::pin(self.finish(ending.membership)).await;
        let linger = match end {
            WriterEnd::Lagged(mut out) => {
                // What is still queued will never be sent: free it
                // now (a write the tick started is finished first).
                out.absorb(receiver.take().started);
                Box::pin(writer::send_lagged_close(stream, out, &self.app)).await
            }
            WriterEnd::Closed(_) => true,
            WriterEnd::TimedOut | WriterEnd::WriteFailed(_) => false,
        };
        (ended, linger)
    }

    /// True once the connection is being closed: no more requests are handled.
    fn closing(&self) -> bool {
        self.conn.kick_reason().is_some() || self.app.shutdown.is_cancelled()
    }

    /// How this connection's end settles its membership, decided once by [`ending`].
    fn ending(&self, stopped: Stopped<'_>) -> Ending {
        ending(stopped, self.conn.kick_reason(), self.app.shutdown.is_cancelled())
    }

    /// Settles the membership when the connection ends: a deliberate leave is
    /// announced at once; a detach starts the grace period, after which
    /// `timed_out` is announced unless the browser resumed.
    async fn finish(&self, settle: Settle) {
        let Some((room, me)) = self.joined.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        match settle {
            Settle::Keep => return,
            Settle::Leave => {
                if let Some(announce) = room.depart(&me, End::Leave(self.conn.id)).await {
                    info!(conn = self.conn.id, room = %room.name, "left");
                    self.announce(room, announce).await;
                }
                return;
            }
            Settle::Detach => {}
        }
        let Some(epoch) = room.detach(&me, self.conn.id) else {
            return;
        };
        debug!(conn = self.conn.id, room = %room.name, "detached; grace period begins");
        self.app.expire_after(room, me, epoch, self.app.config.timing.leave_grace);
    }
}

/// Which half of a connection stopped first, and why.
#[derive(Debug, Clone, Copy)]
enum Stopped<'a> {
    Reader(&'a ReaderEnd),
    Writer(&'a WriterEnd),
}

/// What becomes of the membership when its connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// A deliberate leave: `left` is announced at once.
    Leave,
    /// The grace period starts; `timed_out` after it unless the browser resumes.
    Detach,
    /// Nothing: the member lives on (in a newer connection, or after a restart).
    Keep,
}

/// How a connection ends: what becomes of its membership, and the close
/// frame the server still sends when the reader stopped first (the writer
/// sends its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ending {
    membership: Settle,
    close: Option<CloseReason>,
}

/// The one table of how a connection ends (docs/ARCHITECTURE.md, "Sessions").
/// `kicked` is why the server is closing the connection, if it is.
fn ending(stopped: Stopped<'_>, kicked: Option<CloseReason>, shutting_down: bool) -> Ending {
    let (membership, close) = match stopped {
        Stopped::Reader(ReaderEnd::PeerClosed(code)) => (Settle::Leave, Some(CloseReason::PeerClosed(*code))),
        Stopped::Reader(ReaderEnd::PeerReconnecting) => {
            (Settle::Detach, Some(CloseReason::PeerClosed(Some(close::CLIENT_RECONNECTING))))
        }
        Stopped::Reader(ReaderEnd::CloseReply(code)) => (Settle::Detach, Some(CloseReason::PeerClosed(*code))),
        Stopped::Reader(ReaderEnd::Violation(reason)) => (Settle::Detach, Some(*reason)),
        Stopped::Reader(ReaderEnd::Dropped(_)) => (Settle::Detach, None),
        Stopped::Writer(WriterEnd::Closed(CloseReason::Replaced | CloseReason::Shutdown)) => (Settle::Keep, None),
        Stopped::Writer(_) => (Settle::Detach, None),
    };
    // Replaced: the member lives on in the newer connection. Shutdown:
    // clients resume after the restart.
    let membership = if shutting_down || kicked == Some(CloseReason::Replaced) { Settle::Keep } else { membership };
    Ending { membership, close }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(end: ReaderEnd) -> Ending {
        ending(Stopped::Reader(&end), None, false)
    }

    fn writer(end: WriterEnd) -> Ending {
        ending(Stopped::Writer(&end), None, false)
    }

    #[test]
    fn a_close_frame_from_the_client_is_a_leave_at_once() {
        let end = reader(ReaderEnd::PeerClosed(Some(close::NORMAL)));
        assert_eq!(
            end,
            Ending { membership: Settle::Leave, close: Some(CloseReason::PeerClosed(Some(close::NORMAL))) }
        );
        assert_eq!(reader(ReaderEnd::PeerClosed(None)).membership, Settle::Leave);
    }

    #[test]
    fn a_client_reconnecting_is_not_a_leave() {
        let end = reader(ReaderEnd::PeerReconnecting);
        assert_eq!(end.membership, Settle::Detach);
        assert_eq!(end.close, Some(CloseReason::PeerClosed(Some(close::CLIENT_RECONNECTING))));
    }

    #[test]
    fn a_close_that_answers_ours_is_not_a_leave() {
        let end =
            ending(Stopped::Reader(&ReaderEnd::CloseReply(Some(close::NORMAL))), Some(CloseReason::Lagged), false);
        assert_eq!(end.membership, Settle::Detach);
        assert_eq!(end.close, Some(CloseReason::PeerClosed(Some(close::NORMAL))));
    }

    #[test]
    fn a_dropped_tcp_connection_starts_the_grace_period_without_a_close_frame() {
        assert_eq!(reader(ReaderEnd::Dropped("reset".into())), Ending { membership: Settle::Detach, close: None });
    }

    #[test]
    fn a_protocol_violation_closes_with_its_code_and_starts_the_grace_period() {
        let end = reader(ReaderEnd::Violation(CloseReason::InvalidUtf8));
        assert_eq!(end, Ending { membership: Settle::Detach, close: Some(CloseReason::InvalidUtf8) });
    }

    #[test]
    fn a_heartbeat_timeout_starts_the_grace_period() {
        assert_eq!(writer(WriterEnd::TimedOut), Ending { membership: Settle::Detach, close: None });
    }

    #[test]
    fn a_failed_write_starts_the_grace_period() {
        assert_eq!(writer(WriterEnd::WriteFailed("stalled".into())).membership, Settle::Detach);
    }

    #[test]
    fn a_lagged_connection_starts_the_grace_period() {
        assert_eq!(writer(WriterEnd::Lagged(WriteBuf::default())).membership, Settle::Detach);
        assert_eq!(writer(WriterEnd::Closed(CloseReason::Flooding)).membership, Settle::Detach);
    }

    #[test]
    fn a_replaced_connection_leaves_the_member_to_the_new_one() {
        assert_eq!(writer(WriterEnd::Closed(CloseReason::Replaced)).membership, Settle::Keep);
        let answered = ReaderEnd::CloseReply(Some(close::REPLACED));
        assert_eq!(ending(Stopped::Reader(&answered), Some(CloseReason::Replaced), false).membership, Settle::Keep);
        let closed = ReaderEnd::PeerClosed(Some(close::NORMAL));
        assert_eq!(ending(Stopped::Reader(&closed), Some(CloseReason::Replaced), false).membership, Settle::Keep);
    }

    #[test]
    fn each_end_has_a_reason_and_the_close_code_that_was_exchanged() {
        let closed = ReaderEnd::PeerClosed(Some(close::NORMAL));
        assert_eq!(summary(Stopped::Reader(&closed), None), ("peer_closed", Some(close::NORMAL)));
        let answered = ReaderEnd::CloseReply(Some(close::NORMAL));
        assert_eq!(summary(Stopped::Reader(&answered), Some(CloseReason::Flooding)), ("flooding", Some(1008)));
        let bare = ReaderEnd::PeerClosed(None);
        assert_eq!(summary(Stopped::Reader(&bare), None), ("peer_closed", Some(close::NO_STATUS)));
        let dropped = ReaderEnd::Dropped("reset".into());
        assert_eq!(summary(Stopped::Reader(&dropped), None), ("dropped", None));
        let lagged = WriterEnd::Lagged(WriteBuf::default());
        assert_eq!(summary(Stopped::Writer(&lagged), Some(CloseReason::Lagged)), ("lagged", Some(close::LAGGED)));
        assert_eq!(summary(Stopped::Writer(&WriterEnd::TimedOut), None), ("heartbeat_timeout", None));
        let shutdown = WriterEnd::Closed(CloseReason::Shutdown);
        assert_eq!(summary(Stopped::Writer(&shutdown), None), ("shutdown", Some(close::SERVICE_RESTART)));
    }

    #[test]
    fn a_server_shutdown_keeps_every_member_for_the_restart() {
        assert_eq!(writer(WriterEnd::Closed(CloseReason::Shutdown)).membership, Settle::Keep);
        let closed = ReaderEnd::PeerClosed(Some(close::NORMAL));
        assert_eq!(ending(Stopped::Reader(&closed), None, true).membership, Settle::Keep);
        assert_eq!(ending(Stopped::Writer(&WriterEnd::TimedOut), None, true).membership, Settle::Keep);
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
        let app = App::new(Config { history: HistoryKind::Memory, ..Config::default() }).await.expect("app");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let run = super::run(stream, Bytes::new(), app, peer, peer.ip(), ());
        let size = std::mem::size_of_val(&run);
        assert!(size <= SESSION_FUTURE_MAX, "the session future is {size} bytes (at most {SESSION_FUTURE_MAX})");
    }
}
