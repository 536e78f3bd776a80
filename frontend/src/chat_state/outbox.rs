//! The user's own messages until acknowledged: queued, sent a window at a time, matched by `cid`.

use natter_shared::{ErrorCode, MessageText, Say, Seq, ValidationError};
use serde::{Deserialize, Serialize};

/// Where one of the user's own messages is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendStatus {
    /// Not sent yet (offline or not joined); sent when the connection is up.
    Waiting,
    /// Sent; waiting for the server's `ack`.
    Sending,
    /// Refused by the server; `retry` sends it again.
    Failed(String),
}

/// A message the user wrote that the server has not acknowledged yet.
/// Kept (with its `cid`) across reconnects and reloads, so it is sent until
/// acknowledged and shown exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub cid: String,
    pub text: String,
    pub status: SendStatus,
    /// The room's latest seq the page had when it first sent this message
    /// (`None` until then): every later send carries it as `say.after`, so
    /// the server looks for the original after it. Saved with the outbox,
    /// so a reloaded page's re-send carries it too.
    #[serde(default)]
    pub after: Option<Seq>,
}

/// The pending messages, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Outbox(Vec<Pending>);

impl Outbox {
    /// An outbox saved by an earlier page: what was in flight waits to be sent again.
    pub(super) fn reloaded(pending: Vec<Pending>) -> Self {
        let pending = pending
            .into_iter()
            .map(|p| Pending {
                status: if matches!(p.status, SendStatus::Failed(_)) { p.status } else { SendStatus::Waiting },
                ..p
            })
            .collect();
        Self(pending)
    }

    pub(super) fn pending(&self) -> &[Pending] {
        &self.0
    }

    /// Adds a message. The text is checked with the protocol's rules.
    pub(super) fn queue(&mut self, cid: String, text: &str) -> Result<(), ValidationError> {
        MessageText::parse(text)?;
        self.0.push(Pending { cid, text: text.to_owned(), status: SendStatus::Waiting, after: None });
        Ok(())
    }

    /// Marks waiting messages as sending, oldest first, so that at most
    /// `window` are unacknowledged at once, and returns them. A first send
    /// records `latest` (the room's latest seq the page has); a message sent
    /// before goes with the seq its first send recorded.
    pub(super) fn take_outgoing(&mut self, window: usize, latest: Seq) -> Vec<Say> {
        let in_flight = self.0.iter().filter(|p| p.status == SendStatus::Sending).count();
        self.0
            .iter_mut()
            .filter(|p| p.status == SendStatus::Waiting)
            .take(window.saturating_sub(in_flight))
            .map(|p| {
                p.status = SendStatus::Sending;
                let after = p.after;
                p.after.get_or_insert(latest);
                Say { after, ..Say::new(p.cid.clone(), p.text.clone()) }
            })
            .collect()
    }

    /// What was sent and not acknowledged waits to be sent again (the server
    /// deduplicates by `cid`).
    pub(super) fn resend_in_flight(&mut self) {
        for p in &mut self.0 {
            if p.status == SendStatus::Sending {
                p.status = SendStatus::Waiting;
            }
        }
    }

    /// Takes out the message the server acknowledged, if it is here.
    pub(super) fn acked(&mut self, cid: &str) -> Option<Pending> {
        let index = self.0.iter().position(|p| p.cid == cid)?;
        Some(self.0.remove(index))
    }

    /// The server refused the message: transient refusals send it again
    /// later, the others fail it with `message`.
    pub(super) fn refused(&mut self, cid: &str, code: ErrorCode, message: &str) {
        if let Some(p) = self.0.iter_mut().find(|p| p.cid == cid) {
            p.status = match code {
                // Transient: send again when possible.
                ErrorCode::RateLimited | ErrorCode::NotJoined | ErrorCode::Internal | ErrorCode::StorageUnavailable => {
                    SendStatus::Waiting
                }
                _ => SendStatus::Failed(message.to_owned()),
            };
        }
    }

    /// Sends a failed message again.
    pub(super) fn retry(&mut self, cid: &str) {
        if let Some(p) = self.0.iter_mut().find(|p| p.cid == cid) {
            p.status = SendStatus::Waiting;
        }
    }

    /// Drops the message (discarded, or already stored by the server).
    pub(super) fn remove(&mut self, cid: &str) {
        self.0.retain(|p| p.cid != cid);
    }
}

#[cfg(test)]
mod tests {
    use natter_shared::{Ack, ClientMsgId, ErrorMsg, RoomEvent, Seq, ServerMsg, Timestamp};

    use super::*;
    use crate::chat_state::tests::{msg, seqs, welcome};
    use crate::chat_state::{ChatState, Entry, Line};

    #[test]
    fn the_outbox_goes_waiting_sending_acked() {
        let mut s = ChatState::default();
        s.queue("c1".into(), "hello").expect("valid");
        assert_eq!(s.queue("c2".into(), "  "), Err(ValidationError::MessageEmpty));
        assert!(matches!(s.lines().last(), Some(Line::Pending(p)) if p.status == SendStatus::Waiting));
        // Offline: nothing to send until joined... the client decides; here we join.
        s.apply(welcome(1, vec![], None), 0.0);
        assert_eq!(s.take_outgoing(usize::MAX), vec![Say::new("c1", "hello")], "a first send: no hint");
        assert_eq!(s.take_outgoing(usize::MAX), vec![], "sent once");
        assert_eq!(s.pending()[0].status, SendStatus::Sending);
        let ack = Ack { cid: ClientMsgId::parse("c1").expect("valid"), seq: Seq(2), ts: Timestamp(5) };
        s.apply(ServerMsg::Ack(ack.clone()), 0.0);
        assert!(s.pending().is_empty());
        assert!(matches!(s.lines().last(), Some(Line::Event(Entry::Message { mine: true, seq: Seq(2), .. }, _))));
        // A second ack for the same cid changes nothing.
        s.apply(ServerMsg::Ack(ack), 0.0);
        assert_eq!(seqs(&s), vec![2]);
    }

    #[test]
    fn a_long_outbox_is_sent_a_window_at_a_time() {
        let mut s = ChatState::default();
        s.apply(welcome(1, vec![], None), 0.0);
        for i in 0..7 {
            s.queue(format!("c{i}"), "x").expect("valid");
        }
        let first: Vec<String> = s.take_outgoing(3).into_iter().map(|say| say.cid).collect();
        assert_eq!(first, ["c0", "c1", "c2"]);
        assert!(s.take_outgoing(3).is_empty(), "the window is full");
        s.apply(
            ServerMsg::Ack(Ack { cid: ClientMsgId::parse("c0").expect("valid"), seq: Seq(2), ts: Timestamp(2) }),
            0.0,
        );
        let next: Vec<String> = s.take_outgoing(3).into_iter().map(|say| say.cid).collect();
        assert_eq!(next, ["c3"], "one acked, one more sent, in order");
    }

    /// A re-send carries the room's latest seq the page had at the first
    /// send (`after`), however much the page has seen since, and a reloaded
    /// outbox keeps it.
    #[test]
    fn unacknowledged_messages_are_resent_after_a_reconnect_with_the_first_sends_seq() {
        let mut s = ChatState::default();
        s.apply(welcome(4, vec![], None), 0.0);
        s.queue("c1".into(), "hi").expect("valid");
        assert_eq!(s.take_outgoing(usize::MAX), vec![Say::new("c1", "hi")]);
        s.disconnected();
        assert_eq!(s.pending()[0].status, SendStatus::Waiting);
        s.apply(welcome(9, vec![], None), 0.0);
        let again = Say { after: Some(Seq(4)), ..Say::new("c1", "hi") };
        assert_eq!(s.take_outgoing(usize::MAX), vec![again.clone()]);
        // Saved and reloaded (another page): the hint goes with it.
        let saved = serde_json::to_string(s.pending()).expect("json");
        let mut reloaded = ChatState::with_outbox(serde_json::from_str(&saved).expect("json"));
        reloaded.apply(welcome(12, vec![], None), 0.0);
        assert_eq!(reloaded.take_outgoing(usize::MAX), vec![again]);
        // An outbox saved before the hint existed reads as never sent with one.
        let old: Vec<Pending> =
            serde_json::from_str(r#"[{"cid":"c2","text":"x","status":"Waiting"}]"#).expect("an old outbox");
        assert_eq!(old[0].after, None);
    }

    /// A message refused for a while (`rate_limited`) is sent again with
    /// the seq of its first send, whatever the page has seen since.
    #[test]
    fn a_refused_message_goes_again_with_its_first_sends_seq() {
        let mut s = ChatState::default();
        s.apply(welcome(3, vec![], None), 0.0);
        s.queue("c1".into(), "hi").expect("valid");
        assert_eq!(s.take_outgoing(usize::MAX), vec![Say::new("c1", "hi")]);
        s.apply(ServerMsg::Message(msg(4, "bo", "yo", Some("b1"))), 0.0);
        let refused = ErrorMsg { code: ErrorCode::RateLimited, message: "wait".into(), cid: Some("c1".into()) };
        s.apply(ServerMsg::Error(refused), 0.0);
        s.queue("c2".into(), "next").expect("valid");
        assert_eq!(
            s.take_outgoing(usize::MAX),
            vec![Say { after: Some(Seq(3)), ..Say::new("c1", "hi") }, Say::new("c2", "next")],
            "the refused one marked as sent before, with its first send's seq; the new one not"
        );
    }

    #[test]
    fn a_replayed_own_message_clears_the_outbox_entry_once() {
        let mut s = ChatState::default();
        s.apply(welcome(1, vec![], None), 0.0);
        s.queue("c1".into(), "hi").expect("valid");
        s.take_outgoing(usize::MAX);
        s.disconnected();
        // The ack was lost, but the replay holds the stored message.
        s.apply(welcome(2, vec![RoomEvent::Message(msg(2, "me", "hi", Some("c1")))], None), 0.0);
        assert!(s.pending().is_empty());
        assert_eq!(s.lines().len(), 1);
        assert!(matches!(&s.lines()[0], Line::Event(Entry::Message { mine: true, .. }, _)));
    }

    #[test]
    fn refusals_fail_or_requeue_the_message() {
        let mut s = ChatState::default();
        s.apply(welcome(1, vec![], None), 0.0);
        s.queue("c1".into(), "a").expect("valid");
        s.queue("c2".into(), "b").expect("valid");
        s.take_outgoing(usize::MAX);
        let refuse =
            |code, cid: &str| ServerMsg::Error(ErrorMsg { code, message: "nope".into(), cid: Some(cid.into()) });
        s.apply(refuse(ErrorCode::TooLong, "c1"), 0.0);
        s.apply(refuse(ErrorCode::RateLimited, "c2"), 0.0);
        assert_eq!(s.pending()[0].status, SendStatus::Failed("nope".into()));
        assert_eq!(s.pending()[1].status, SendStatus::Waiting);
        s.retry("c1");
        assert_eq!(s.take_outgoing(usize::MAX).len(), 2);
        s.discard("c1");
        assert_eq!(s.pending().len(), 1);
    }

    #[test]
    fn a_reloaded_outbox_is_waiting_again() {
        let saved = vec![
            Pending { cid: "a".into(), text: "x".into(), status: SendStatus::Sending, after: None },
            Pending { cid: "b".into(), text: "y".into(), status: SendStatus::Failed("too long".into()), after: None },
        ];
        let s = ChatState::with_outbox(saved);
        assert_eq!(s.pending()[0].status, SendStatus::Waiting);
        assert!(matches!(s.pending()[1].status, SendStatus::Failed(_)));
    }
}
