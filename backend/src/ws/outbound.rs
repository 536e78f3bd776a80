//! The way into a connection: a bounded queue of encoded server messages
//! (JSON text, framed only when written) plus a "kick" that makes its writer close it.
//!
//! The queue is bounded twice: in messages, and in bytes queued or being
//! written (the connection's output budget). Policy when a message does not
//! fit: the connection is closed with [`close::LAGGED`] and its client
//! resumes from `last_seq`. Nothing is dropped silently and nothing grows:
//! a message that does not fit is not queued, and the lagged client learns
//! from the close code that it must resume. The connection's own reader
//! waits for the queue to drain ([`ConnHandle::drained`]) before it answers
//! another request, so a client cannot ask for more than it reads.
//!
//! Who writes to the socket: the connection's writer task, or the
//! coalescer's tick ([`super::coalesce`]) while the writer is not writing.
//! The tick writes with the queue locked and only what the socket takes at
//! once; the rest of a write it started ([`Started`]) goes to the writer,
//! first. The writer marks the socket its own from taking a batch until it
//! is written (or for good, once it closes), so the two never interleave
//! bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use natter_shared::{ServerMsg, close};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::coalesce::Coalescer;
use super::frame;

/// Identifies one WebSocket connection for the server's lifetime.
pub type ConnId = u64;

/// A server message serialized once as JSON text, shared by every recipient.
/// Not yet a WebSocket frame: the connection's writer frames it as it writes.
pub type Encoded = Utf8Bytes;

/// Why the server closes a connection, with the close code the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The outbound queue filled.
    Lagged,
    /// The same browser resumed on a newer connection.
    Replaced,
    /// The peer sent a Close (with this code); answer it, echoing the code.
    PeerClosed(Option<u16>),
    /// A binary frame.
    Binary,
    /// A text frame that was not UTF-8.
    InvalidUtf8,
    /// A message over the size limit.
    TooBig,
    /// A frame that broke the WebSocket protocol.
    Protocol,
    /// Still flooding after `rate_limited`.
    Flooding,
    /// A frame or a fragmented message took longer than the frame timeout.
    SlowFrame,
    /// The server is shutting down.
    Shutdown,
    /// No `hello` within the hello timeout.
    NoHello,
}

impl CloseReason {
    /// The close code and reason text sent to the client. `None` for a
    /// reply to a peer's Close that had no code (the reply has none either).
    pub fn frame(self) -> Option<(u16, &'static str)> {
        Some(match self {
            Self::Lagged => (close::LAGGED, close::LAGGED_REASON),
            Self::Replaced => (close::REPLACED, close::REPLACED_REASON),
            Self::PeerClosed(code) => return code.map(|code| (code, "")),
            Self::Binary => (close::UNSUPPORTED_DATA, "binary frames are not supported; send JSON text"),
            Self::InvalidUtf8 => (close::INVALID_PAYLOAD, "text frame is not valid UTF-8"),
            Self::TooBig => (close::MESSAGE_TOO_BIG, "message too big"),
            Self::Protocol => (close::PROTOCOL_ERROR, "WebSocket protocol error"),
            Self::Flooding => (close::POLICY_VIOLATION, "too many messages; slow down"),
            Self::SlowFrame => (close::POLICY_VIOLATION, "a message took too long to arrive"),
            Self::Shutdown => (close::SERVICE_RESTART, "server restarting; reconnect and resume"),
            Self::NoHello => (close::POLICY_VIOLATION, "no hello; send hello to join a room"),
        })
    }

    /// A short name for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Lagged => "lagged",
            Self::Replaced => "replaced",
            Self::PeerClosed(_) => "peer_closed",
            Self::Binary => "binary",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::TooBig => "too_big",
            Self::Protocol => "protocol_error",
            Self::Flooding => "flooding",
            Self::SlowFrame => "slow_frame",
            Self::Shutdown => "shutdown",
            Self::NoHello => "no_hello",
        }
    }
}

/// The first close reason wins; the writer waits on it.
#[derive(Debug, Default)]
pub struct Kick {
    reason: OnceLock<CloseReason>,
    notify: Notify,
}

impl Kick {
    /// Asks the writer to close with `reason` (ignored if already kicked).
    pub fn kick(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            // Everyone waiting (a reader waiting for the queue to drain, a
            // writer in a blocked write); a waiter registers before it checks
            // the reason, so none misses this. An idle writer is woken by
            // [`ConnHandle::kick`] on its queue's wake-up.
            self.notify.notify_waiters();
        }
    }

    /// The reason, once kicked.
    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }

    /// Waits until kicked.
    pub async fn kicked(&self) -> CloseReason {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.reason() {
                return reason;
            }
            notified.await;
        }
    }
}

/// What happened to a message offered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The queue was full; the connection is being closed as lagged.
    Lagged,
    /// The connection is already gone.
    Gone,
}

/// The queue between everyone who sends to a connection and its writer.
/// It holds no memory while empty: the writer takes the whole deque.
#[derive(Debug, Default)]
struct Queue {
    encoded: VecDeque<Encoded>,
    /// Bytes of `encoded`.
    queued_bytes: usize,
    /// Bytes the writer took and has not finished writing.
    taken_bytes: usize,
    /// The most bytes queued and being written at once (for `/metrics`).
    high_water: usize,
    /// The payload of the latest ping still to answer.
    pong: Option<Vec<u8>>,
    /// When frames were last taken to be written (a pong alone does not count).
    taken_at: Option<Instant>,
    /// Frames wait for the coalescer's next tick (the connection is
    /// listed for it: at most once until the tick).
    scheduled: bool,
    /// A reply was queued while frames waited for the tick: everything
    /// queued goes out now, though the connection stays listed.
    flush: bool,
    /// The socket, for the coalescer's tick to write to while the writer
    /// is not writing; dropped with the writer's end.
    socket: Option<Arc<TcpStream>>,
    /// The writer took a batch and has not finished writing it (or is
    /// closing): nobody else writes to the socket meanwhile.
    writing: bool,
    /// A write the tick started and the socket did not take whole: the
    /// writer finishes it before anything else.
    started: Option<Box<Started>>,
    /// The writer is gone.
    closed: bool,
}

impl Queue {
    /// The writer has something to write now: the rest of a started write
    /// or a pong at once, frames unless they wait for a tick (and no reply
    /// takes them along, see [`ConnHandle::send_now`]).
    fn ready(&self) -> bool {
        self.started.is_some() || self.pong.is_some() || (!self.encoded.is_empty() && (!self.scheduled || self.flush))
    }
}

/// Frames the coalescer's tick began to write: `buf` from `written` on is
/// still to go, and goes before anything else.
#[derive(Debug)]
pub struct Started {
    pub buf: Vec<u8>,
    pub written: usize,
}

/// How far the tick got.
enum Written {
    /// All of it: its bytes left the budget.
    Whole,
    /// The writer has the rest to write.
    Partly,
}

/// What a send asks of the writer.
enum Wake {
    /// Nothing: it is already woken, or scheduled.
    No,
    /// Write now.
    Now,
    /// List the connection for the coalescer's next tick.
    AtTick,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    capacity: usize,
    /// Most bytes queued or being written.
    budget: usize,
    /// Wakes the writer (a stored permit if it is not waiting yet).
    ready: Notify,
    /// Wakes a reader waiting for the queue to drain.
    released: Notify,
    /// Requests whose reply (an ack or an error) the connection still awaits
    /// from elsewhere (the history writer).
    awaited: std::sync::atomic::AtomicUsize,
    /// Wakes a reader waiting for those replies.
    replied: Notify,
    kick: Kick,
    /// The server's write window; `None`: every write goes out at once.
    coalescer: Option<Arc<Coalescer>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending_bytes(&self) -> usize {
        let queue = self.lock();
        queue.queued_bytes + queue.taken_bytes
    }
}

/// A cheap, cloneable handle to one connection's outbound side.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    shared: Arc<Shared>,
}

/// The writer's end of a connection's queue; dropping it makes later sends `Gone`.
#[derive(Debug)]
pub struct ConnReceiver {
    shared: Arc<Shared>,
}

/// What the writer takes from the queue in one go.
#[derive(Debug, Default)]
pub struct Batch {
    /// The rest of a write the coalescer's tick started (goes first).
    pub started: Option<Box<Started>>,
    pub encoded: VecDeque<Encoded>,
    pub pong: Option<Vec<u8>>,
}

impl Batch {
    /// Nothing to write.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.started.is_none() && self.encoded.is_empty() && self.pong.is_none()
    }

    /// Moves the pong, then the encoded messages, into `buf` as WebSocket
    /// frames, up to `max_bytes` (at least one frame) for one write call.
    /// (`started` is not framed: it is bytes already.)
    pub fn gather(&mut self, buf: &mut Vec<u8>, max_bytes: usize) {
        if let Some(payload) = self.pong.take() {
            frame::encode(frame::OP_PONG, &payload, buf);
        }
        while let Some(text) = self.encoded.front() {
            if !buf.is_empty() && buf.len() + frame::encoded_len(text.len()) > max_bytes {
                break;
            }
            frame::encode(frame::OP_TEXT, text.as_bytes(), buf);
            self.encoded.pop_front();
        }
    }
}

/// A connection's queue with room for `capacity` messages and `budget`
/// bytes queued or being written.
pub fn bounded(id: ConnId, capacity: usize, budget: usize) -> (ConnHandle, ConnReceiver) {
    with_window(id, capacity, budget, None)
}

/// A bounded queue whose messages within `coalescer`'s window of the last
/// write wait for its next tick, which writes them to `socket` itself
/// (`None`: it wakes the writer instead).
pub fn coalesced(
    id: ConnId,
    capacity: usize,
    budget: usize,
    coalescer: Arc<Coalescer>,
    socket: Option<Arc<TcpStream>>,
) -> (ConnHandle, ConnReceiver) {
    let (handle, receiver) = with_window(id, capacity, budget, Some(coalescer));
    handle.shared.lock().socket = socket;
    (handle, receiver)
}

fn with_window(
    id: ConnId,
    capacity: usize,
    budget: usize,
    coalescer: Option<Arc<Coalescer>>,
) -> (ConnHandle, ConnReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::default(),
        capacity,
        budget,
        ready: Notify::new(),
        released: Notify::new(),
        awaited: std::sync::atomic::AtomicUsize::new(0),
        replied: Notify::new(),
        kick: Kick::default(),
        coalescer,
    });
    (ConnHandle { id, shared: shared.clone() }, ConnReceiver { shared })
}

/// A queue bounded in messages only (tests of everything but the budget).
#[cfg(test)]
pub fn channel(id: ConnId, capacity: usize) -> (ConnHandle, ConnReceiver) {
    bounded(id, capacity, usize::MAX)
}

/// Serializes a message once; the bytes are shared by every recipient.
pub fn encode(msg: &ServerMsg) -> Encoded {
    encode_json(msg)
}

/// Serializes anything that serializes like a [`ServerMsg`] (a borrowed view
/// of one, built without cloning).
pub fn encode_json<T: serde::Serialize + ?Sized>(msg: &T) -> Encoded {
    match serde_json::to_string(msg) {
        Ok(json) => Utf8Bytes::from(json),
        // Our message types always serialize; never send broken JSON.
        Err(e) => {
            tracing::error!(error = %e, "failed to serialize a server message");
            Utf8Bytes::from_static(r#"{"type":"error","code":"internal","message":"server error"}"#)
        }
    }
}

impl ConnHandle {
    /// Queues a message without waiting; a full queue closes the connection
    /// as lagged. It waits for the write window (see [`super::coalesce`]).
    pub fn send(&self, encoded: &Encoded) -> Delivery {
        self.queue(encoded, false)
    }

    /// Queues the answer to this connection's `say` (its ack, or the error
    /// in its place; [`ConnHandle::send_reply`]): it does not wait for the
    /// write window, and takes whatever waits for it along (in order). A
    /// sender waits for its acks; the window is there for what others send
    /// it. Acks come in bursts, one per history commit, so this usually
    /// adds one write per commit to a sending connection (at most one per
    /// ack, when its writer takes the queue between two acks of a commit).
    pub fn send_now(&self, encoded: &Encoded) -> Delivery {
        self.queue(encoded, true)
    }

    fn queue(&self, encoded: &Encoded, now: bool) -> Delivery {
        let wake = {
            let mut queue = self.shared.lock();
            if queue.closed {
                return Delivery::Gone;
            }
            let bytes = queue.queued_bytes + queue.taken_bytes + encoded.len();
            if queue.encoded.len() >= self.shared.capacity || bytes > self.shared.budget {
                drop(queue);
                self.kick(CloseReason::Lagged);
                return Delivery::Lagged;
            }
            queue.queued_bytes += encoded.len();
            queue.high_water = queue.high_water.max(bytes);
            queue.encoded.push_back(encoded.clone());
            // The writer takes everything at once: only the first message
            // wakes it (or the first reply while the rest waits for a tick).
            let woken = queue.pong.is_some() || queue.flush || (queue.encoded.len() > 1 && !queue.scheduled);
            if woken {
                Wake::No
            } else if now {
                queue.flush = queue.scheduled;
                Wake::Now
            } else if queue.scheduled {
                Wake::No
            } else if self.shared.coalescer.as_ref().is_some_and(|c| c.holds(queue.taken_at)) {
                queue.scheduled = true;
                Wake::AtTick
            } else {
                Wake::Now
            }
        };
        match wake {
            Wake::No => {}
            Wake::Now => self.shared.ready.notify_one(),
            Wake::AtTick => {
                if let Some(coalescer) = &self.shared.coalescer {
                    coalescer.schedule(self.clone());
                }
            }
        }
        Delivery::Queued
    }

    /// The coalescer's tick: frames held for it go out now, written here
    /// when the writer is not writing (no wake-up of its task); what the
    /// socket does not take whole is left to the writer. `scratch` is the
    /// tick's buffer, `max_bytes` the most bytes per write call.
    pub(super) fn tick(&self, scratch: &mut Vec<u8>, max_bytes: usize) {
        let done = {
            let mut queue = self.shared.lock();
            queue.scheduled = false;
            let free = !queue.writing && !queue.closed && queue.started.is_none() && self.kick_reason().is_none();
            match queue.socket.take() {
                // Taken out for the write and put back: no reference count moves per tick.
                Some(socket) if free && queue.ready() => {
                    let done = Self::write_now(&mut queue, &socket, scratch, max_bytes);
                    queue.socket = Some(socket);
                    done
                }
                socket => {
                    queue.socket = socket;
                    if !queue.ready() {
                        return;
                    }
                    Written::Partly
                }
            }
        };
        match done {
            Written::Whole => self.shared.released.notify_waiters(),
            Written::Partly => self.shared.ready.notify_one(),
        }
    }

    /// Writes what is queued to `socket` as far as it takes it without
    /// waiting, with the queue locked (so nobody writes in between).
    fn write_now(queue: &mut Queue, socket: &TcpStream, scratch: &mut Vec<u8>, max_bytes: usize) -> Written {
        let mut batch = Batch { started: None, encoded: std::mem::take(&mut queue.encoded), pong: queue.pong.take() };
        let bytes = std::mem::take(&mut queue.queued_bytes);
        queue.flush = false;
        if !batch.encoded.is_empty() {
            queue.taken_at = Some(Instant::now());
        }
        let left = loop {
            scratch.clear();
            batch.gather(scratch, max_bytes);
            if scratch.is_empty() {
                break None;
            }
            // On an error (or a full socket) nothing was taken: the writer
            // meets the error itself.
            let taken = socket.try_write(scratch).unwrap_or_default();
            if taken < scratch.len() {
                break Some(Started { buf: scratch.clone(), written: taken });
            }
        };
        let Some(started) = left else {
            return Written::Whole;
        };
        // The frames not yet gathered go back to the front of the queue;
        // the started write's bytes stay counted until the writer is done.
        let rest: usize = batch.encoded.iter().map(|e| e.len()).sum();
        queue.queued_bytes = rest;
        queue.taken_bytes += bytes - rest;
        batch.encoded.append(&mut queue.encoded);
        queue.encoded = batch.encoded;
        queue.started = Some(Box::new(started));
        Written::Partly
    }

    /// The most bytes this connection had queued and being written at once.
    pub fn high_water_bytes(&self) -> usize {
        self.shared.lock().high_water
    }

    /// Serializes and queues a message for this connection only.
    pub fn send_msg(&self, msg: &ServerMsg) -> Delivery {
        self.send(&encode(msg))
    }

    /// Asks the writer to answer a ping (only the latest one is answered, as
    /// RFC 6455 §5.5.3 allows).
    pub fn pong(&self, payload: Vec<u8>) {
        {
            let mut queue = self.shared.lock();
            if queue.closed {
                return;
            }
            queue.pong = Some(payload);
        }
        self.shared.ready.notify_one();
    }

    /// Bytes queued or being written.
    pub fn pending_bytes(&self) -> usize {
        self.shared.pending_bytes()
    }

    /// Waits until at most `bytes` are queued or being written (the writer
    /// has written the rest), or the connection is closing.
    pub async fn drained(&self, bytes: usize) {
        loop {
            let released = self.shared.released.notified();
            tokio::pin!(released);
            // Registered before the check: a release after it is not missed.
            released.as_mut().enable();
            if self.pending_bytes() <= bytes || self.kick_reason().is_some() || self.shared.lock().closed {
                return;
            }
            tokio::select! {
                () = released => {}
                _ = self.shared.kick.kicked() => return,
            }
        }
    }

    /// Counts a request whose reply will come from elsewhere (a `say`, whose
    /// ack or error the history writer's report sends).
    pub fn expect_reply(&self) {
        self.shared.awaited.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// One awaited reply was queued (or will never come).
    pub fn replied(&self) {
        let previous = self.shared.awaited.fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |n| Some(n.saturating_sub(1)),
        );
        if previous.is_ok_and(|n| n <= 1) {
            self.shared.replied.notify_waiters();
        }
    }

    /// Queues the reply to a request counted by [`ConnHandle::expect_reply`].
    /// It does not wait for the write window ([`ConnHandle::send_now`]).
    pub fn send_reply(&self, msg: &ServerMsg) -> Delivery {
        let delivery = self.send_now(&encode(msg));
        self.replied();
        delivery
    }

    /// Waits until every awaited reply is queued.
    pub async fn replies_settled(&self) {
        loop {
            let replied = self.shared.replied.notified();
            tokio::pin!(replied);
            replied.as_mut().enable();
            if self.shared.awaited.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            replied.await;
        }
    }

    /// Closes the connection with `reason`.
    pub fn kick(&self, reason: CloseReason) {
        self.shared.kick.kick(reason);
        // The writer waits for its kick and its queue on one wake-up.
        self.shared.ready.notify_one();
    }

    /// Why the connection is being closed, once it is.
    pub fn kick_reason(&self) -> Option<CloseReason> {
        self.shared.kick.reason()
    }
}

impl ConnReceiver {
    /// Takes everything queued (possibly nothing), the rest of a write the
    /// tick started first. Its bytes count against the budget, and the
    /// socket is the writer's alone, until [`ConnReceiver::written`].
    pub fn take(&self) -> Batch {
        let mut queue = self.shared.lock();
        queue.taken_bytes += std::mem::take(&mut queue.queued_bytes);
        if !queue.encoded.is_empty() && self.shared.coalescer.is_some() {
            queue.taken_at = Some(Instant::now());
        }
        queue.writing = true;
        queue.flush = false;
        Batch { started: queue.started.take(), encoded: std::mem::take(&mut queue.encoded), pong: queue.pong.take() }
    }

    /// Everything taken so far has been written: its bytes leave the budget,
    /// and the coalescer's tick may write again.
    pub fn written(&self) {
        {
            let mut queue = self.shared.lock();
            queue.taken_bytes = 0;
            queue.writing = false;
        }
        self.shared.released.notify_waiters();
    }

    /// Waits until the connection is kicked (its reason) or something is to
    /// be written now (`None`; frames held for the coalescer's tick wait
    /// for it, unless an ack takes them along). One wait for both: an idle
    /// writer holds one wake-up.
    pub async fn next(&self) -> Option<CloseReason> {
        loop {
            if let Some(reason) = self.shared.kick.reason() {
                return Some(reason);
            }
            if self.shared.lock().ready() {
                return None;
            }
            // A send or a kick after the checks above leaves a permit: no wake-up is lost.
            self.shared.ready.notified().await;
        }
    }

    /// The connection's kick.
    pub fn kick(&self) -> &Kick {
        &self.shared.kick
    }
}

impl Drop for ConnReceiver {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.closed = true;
        queue.socket = None;
        queue.started = None;
        queue.encoded = VecDeque::new();
        queue.queued_bytes = 0;
        queue.taken_bytes = 0;
        drop(queue);
        self.shared.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use natter_shared::ErrorCode;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_kicks_the_connection_as_lagged() {
        let (handle, receiver) = channel(1, 2);
        let encoded = Utf8Bytes::from_static("x");
        assert_eq!(handle.send(&encoded), Delivery::Queued);
        assert_eq!(handle.send(&encoded), Delivery::Queued);
        assert_eq!(handle.send(&encoded), Delivery::Lagged);
        assert_eq!(receiver.kick().kicked().await, CloseReason::Lagged);
        assert_eq!(receiver.next().await, Some(CloseReason::Lagged), "the kick comes before the queue");
        let batch = receiver.take();
        assert_eq!(batch.encoded.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["x", "x"]);
        assert!(receiver.take().is_empty());
        drop(receiver);
        assert_eq!(handle.send(&encoded), Delivery::Gone);
    }

    #[tokio::test]
    async fn bytes_beyond_the_budget_kick_the_connection_as_lagged() {
        let (handle, receiver) = bounded(1, 100, 10);
        let four = Utf8Bytes::from_static("1234");
        assert_eq!(handle.send(&four), Delivery::Queued);
        assert_eq!(handle.send(&four), Delivery::Queued);
        assert_eq!(handle.pending_bytes(), 8);
        // Taken but not yet written: still counted.
        let batch = receiver.take();
        assert_eq!(batch.encoded.len(), 2);
        assert_eq!(handle.pending_bytes(), 8);
        assert_eq!(handle.send(&four), Delivery::Lagged, "8 + 4 bytes is over the 10-byte budget");
        assert_eq!(receiver.kick().kicked().await, CloseReason::Lagged);
    }

    #[tokio::test]
    async fn written_bytes_leave_the_budget_and_wake_a_waiting_reader() {
        let (handle, receiver) = bounded(1, 100, 10);
        let four = Utf8Bytes::from_static("1234");
        handle.send(&four);
        handle.send(&four);
        let _batch = receiver.take();
        let waiting = handle.drained(4);
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending(), "8 bytes are still being written");
        receiver.written();
        waiting.await;
        assert_eq!(handle.pending_bytes(), 0);
        assert_eq!(handle.send(&four), Delivery::Queued);
    }

    #[tokio::test]
    async fn a_kick_wakes_every_waiter() {
        let (handle, receiver) = bounded(1, 100, 10);
        handle.send(&Utf8Bytes::from_static("12345678"));
        // A reader waiting for the queue to drain registers first, the writer after.
        let reader = handle.drained(0);
        tokio::pin!(reader);
        assert!(futures_util::poll!(reader.as_mut()).is_pending());
        let writer = receiver.kick().kicked();
        tokio::pin!(writer);
        assert!(futures_util::poll!(writer.as_mut()).is_pending());
        handle.kick(CloseReason::Flooding);
        let woke =
            tokio::time::timeout(std::time::Duration::from_secs(1), async { tokio::join!(reader, writer).1 }).await;
        assert_eq!(woke.ok(), Some(CloseReason::Flooding), "both the reader and the writer wake");
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_for_its_queue_and_for_a_kick() {
        let (handle, receiver) = channel(1, 2);
        let next = receiver.next();
        tokio::pin!(next);
        assert!(futures_util::poll!(next.as_mut()).is_pending(), "nothing yet");
        handle.send(&Utf8Bytes::from_static("x"));
        assert_eq!(next.await, None, "something to write");
        drop(receiver.take());
        let next = receiver.next();
        tokio::pin!(next);
        assert!(futures_util::poll!(next.as_mut()).is_pending());
        handle.kick(CloseReason::Replaced);
        let woke = tokio::time::timeout(std::time::Duration::from_secs(1), next).await;
        assert_eq!(woke.ok(), Some(Some(CloseReason::Replaced)), "the kick wakes the waiting writer");
    }

    #[tokio::test]
    async fn the_first_kick_wins() {
        let (handle, receiver) = channel(1, 2);
        handle.kick(CloseReason::Replaced);
        handle.kick(CloseReason::Lagged);
        assert_eq!(receiver.kick().kicked().await, CloseReason::Replaced);
        assert_eq!(CloseReason::Replaced.frame(), Some((close::REPLACED, close::REPLACED_REASON)));
    }

    #[tokio::test]
    async fn a_pong_wakes_the_writer_and_only_the_latest_is_kept() {
        let (handle, receiver) = channel(1, 2);
        handle.pong(b"a".to_vec());
        handle.pong(b"b".to_vec());
        assert_eq!(receiver.next().await, None, "something to write");
        let batch = receiver.take();
        assert_eq!(batch.pong.as_deref(), Some(&b"b"[..]));
        assert!(batch.encoded.is_empty());
    }

    #[test]
    fn encode_produces_the_wire_json() {
        let encoded = encode(&ServerMsg::error(ErrorCode::NotJoined, "say hello first"));
        assert_eq!(encoded.as_str(), r#"{"type":"error","code":"not_joined","message":"say hello first"}"#);
    }
}
