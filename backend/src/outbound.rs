//! The way into a connection: a bounded queue of ready-to-send frames plus a
//! "kick" that makes its writer close it.
//!
//! Policy when the queue is full: the connection is closed with
//! [`close::LAGGED`] and its client resumes from `last_seq`. Nothing is
//! dropped silently and nothing grows: a frame that does not fit is not
//! queued, and the lagged client learns from the close code that it must resume.

use std::sync::{Arc, OnceLock};

use natter_shared::{ServerMsg, close};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Identifies one WebSocket connection for the server's lifetime.
pub type ConnId = u64;

/// Why the server closes a connection, with the close code the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The outbound queue filled.
    Lagged,
    /// The same browser resumed on a newer connection.
    Replaced,
    /// The peer sent a Close; answer it.
    PeerClosed,
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
    /// The server is shutting down.
    Shutdown,
    /// No `hello` within the hello timeout.
    NoHello,
}

impl CloseReason {
    /// The close code and reason text sent to the client. `None` for a
    /// reply to the peer's own Close (tungstenite echoes it).
    pub fn frame(self) -> Option<(u16, &'static str)> {
        Some(match self {
            Self::Lagged => (close::LAGGED, close::LAGGED_REASON),
            Self::Replaced => (close::REPLACED, close::REPLACED_REASON),
            Self::PeerClosed => return None,
            Self::Binary => (close::UNSUPPORTED_DATA, "binary frames are not supported; send JSON text"),
            Self::InvalidUtf8 => (close::INVALID_PAYLOAD, "text frame is not valid UTF-8"),
            Self::TooBig => (close::MESSAGE_TOO_BIG, "message too big"),
            Self::Protocol => (1002, "WebSocket protocol error"),
            Self::Flooding => (close::POLICY_VIOLATION, "too many messages; slow down"),
            Self::Shutdown => (close::SERVICE_RESTART, "server restarting; reconnect and resume"),
            Self::NoHello => (close::POLICY_VIOLATION, "no hello; send hello to join a room"),
        })
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
            // notify_one stores a permit if the writer is not waiting yet.
            self.notify.notify_one();
        }
    }

    /// The reason, once kicked.
    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }

    /// Waits until kicked.
    pub async fn kicked(&self) -> CloseReason {
        loop {
            if let Some(reason) = self.reason() {
                return reason;
            }
            self.notify.notified().await;
        }
    }
}

/// What happened to a frame offered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The queue was full; the connection is being closed as lagged.
    Lagged,
    /// The connection is already gone.
    Gone,
}

/// A cheap, cloneable handle to one connection's outbound side.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    tx: mpsc::Sender<Utf8Bytes>,
    kick: Arc<Kick>,
}

/// The writer's end of a connection's queue.
#[derive(Debug)]
pub struct ConnReceiver {
    pub rx: mpsc::Receiver<Utf8Bytes>,
    pub kick: Arc<Kick>,
}

/// A connection's queue with room for `capacity` frames.
pub fn channel(id: ConnId, capacity: usize) -> (ConnHandle, ConnReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    let kick = Arc::new(Kick::default());
    (ConnHandle { id, tx, kick: kick.clone() }, ConnReceiver { rx, kick })
}

/// Serializes a message once; the bytes are shared by every recipient.
pub fn encode(msg: &ServerMsg) -> Utf8Bytes {
    match serde_json::to_string(msg) {
        Ok(json) => Utf8Bytes::from(json),
        // Our message types always serialize; never send a broken frame.
        Err(e) => {
            tracing::error!(error = %e, "failed to serialize a server message");
            Utf8Bytes::from_static(r#"{"type":"error","code":"internal","message":"server error"}"#)
        }
    }
}

impl ConnHandle {
    /// Queues a frame without waiting; a full queue closes the connection as lagged.
    pub fn send(&self, frame: &Utf8Bytes) -> Delivery {
        match self.tx.try_send(frame.clone()) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kick.kick(CloseReason::Lagged);
                Delivery::Lagged
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Gone,
        }
    }

    /// Serializes and queues a message for this connection only.
    pub fn send_msg(&self, msg: &ServerMsg) -> Delivery {
        self.send(&encode(msg))
    }

    /// Closes the connection with `reason`.
    pub fn kick(&self, reason: CloseReason) {
        self.kick.kick(reason);
    }

    /// Why the connection is being closed, once it is.
    pub fn kick_reason(&self) -> Option<CloseReason> {
        self.kick.reason()
    }
}

#[cfg(test)]
mod tests {
    use natter_shared::ErrorCode;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_kicks_the_connection_as_lagged() {
        let (handle, mut receiver) = channel(1, 2);
        let frame = Utf8Bytes::from_static("x");
        assert_eq!(handle.send(&frame), Delivery::Queued);
        assert_eq!(handle.send(&frame), Delivery::Queued);
        assert_eq!(handle.send(&frame), Delivery::Lagged);
        assert_eq!(receiver.kick.kicked().await, CloseReason::Lagged);
        assert_eq!(receiver.rx.recv().await.as_deref(), Some("x"));
        drop(receiver);
        assert_eq!(handle.send(&frame), Delivery::Gone);
    }

    #[tokio::test]
    async fn the_first_kick_wins() {
        let (handle, receiver) = channel(1, 2);
        handle.kick(CloseReason::Replaced);
        handle.kick(CloseReason::Lagged);
        assert_eq!(receiver.kick.kicked().await, CloseReason::Replaced);
        assert_eq!(CloseReason::Replaced.frame(), Some((close::REPLACED, close::REPLACED_REASON)));
    }

    #[test]
    fn encode_produces_the_wire_json() {
        let frame = encode(&ServerMsg::error(ErrorCode::NotJoined, "say hello first"));
        assert_eq!(frame.as_str(), r#"{"type":"error","code":"not_joined","message":"say hello first"}"#);
    }
}
