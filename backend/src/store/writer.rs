//! The way to a store's one writer, and how the writer numbers events.
//!
//! Each store runs one writer (a task or a thread) fed by a bounded
//! [`WriteQueue`]; the [`Sequencer`] gives each room's drafts dense seqs and
//! times that never go back.

use std::collections::HashMap;
use std::sync::Arc;

use natter_shared::{RoomName, Seq, Timestamp};
use tokio::sync::mpsc;

use super::{Committed, Draft, HistoryError, SavedMember};

/// One write for the writer: a draft and the room to report back to.
#[derive(Debug)]
pub struct Write {
    pub room: Arc<dyn Committed>,
    pub draft: Draft,
}

/// What the writer receives.
#[derive(Debug)]
pub enum WriterMsg {
    Write(Write),
    /// Finish everything queued before this, save these members (a store
    /// that outlives the process), then stop and say so.
    Stop {
        members: Vec<SavedMember>,
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// Check that the store takes writes now (for `/readyz`), after
    /// everything queued before it; the answer says why not.
    Probe(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// The way to the writer. Bounded: when it is full, senders wait (the
/// connection's reader pauses, so TCP pushes back on the client); nothing is
/// dropped.
#[derive(Debug, Clone)]
pub struct WriteQueue(pub mpsc::Sender<WriterMsg>);

impl WriteQueue {
    /// Hands a draft to the writer; fails only if the writer has stopped.
    pub async fn submit(&self, room: Arc<dyn Committed>, draft: Draft) -> Result<(), HistoryError> {
        self.0
            .send(WriterMsg::Write(Write { room, draft }))
            .await
            .map_err(|_| HistoryError::Unavailable("the history writer has stopped".into()))
    }

    /// Whether the store takes writes now: the writer runs, gets through
    /// its queue within `limit`, and can start a write. The error says why not.
    pub async fn probe(&self, limit: std::time::Duration) -> Result<(), String> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let asked = async {
            self.0.send(WriterMsg::Probe(answer)).await.map_err(|_| "the history writer has stopped".to_owned())?;
            answered.await.map_err(|_| "the history writer has stopped".to_owned())?
        };
        match tokio::time::timeout(limit, asked).await {
            Ok(result) => result,
            Err(_) => Err(format!("the history writer did not answer within {} ms", limit.as_millis())),
        }
    }

    /// Lets the writer finish what is queued, save `members` for the next
    /// start, then stops it; waits at most `limit`.
    pub async fn stop(&self, members: Vec<SavedMember>, limit: std::time::Duration) -> bool {
        let (done, finished) = tokio::sync::oneshot::channel();
        let sent = tokio::time::timeout(limit, self.0.send(WriterMsg::Stop { members, done })).await;
        matches!(sent, Ok(Ok(()))) && tokio::time::timeout(limit, finished).await.is_ok()
    }
}

/// Gives each room's drafts seqs and times, in order, for a writer.
#[derive(Debug, Default)]
pub struct Sequencer {
    rooms: HashMap<RoomName, (Seq, Timestamp)>,
}

impl Sequencer {
    /// The next seq and a time for `room` (never earlier than the room's
    /// last), without taking them yet. `stored` gives the room's head and
    /// last time when the sequencer does not know the room yet.
    pub fn peek(
        &mut self,
        room: &RoomName,
        stored: impl FnOnce() -> (Seq, Timestamp),
        now: Timestamp,
    ) -> (Seq, Timestamp) {
        match self.try_peek(room, || Ok::<_, std::convert::Infallible>(stored()), now) {
            Ok(next) => next,
            Err(never) => match never {},
        }
    }

    /// [`Sequencer::peek`] where reading the room's head may fail; then
    /// nothing is remembered, and the next peek reads it again.
    pub fn try_peek<E>(
        &mut self,
        room: &RoomName,
        stored: impl FnOnce() -> Result<(Seq, Timestamp), E>,
        now: Timestamp,
    ) -> Result<(Seq, Timestamp), E> {
        let (seq, ts) = match self.rooms.get(room) {
            Some(last) => *last,
            None => *self.rooms.entry(room.clone()).or_insert(stored()?),
        };
        Ok((seq.next(), ts.max(now)))
    }

    /// Records that `seq` at `ts` was used in `room`. Until then a peeked
    /// seq is not used: a write that failed gives its seq to the next one.
    pub fn take(&mut self, room: &RoomName, seq: Seq, ts: Timestamp) {
        self.rooms.insert(room.clone(), (seq, ts));
    }

    /// Forgets rooms whose last transaction failed: their next seq is read
    /// from storage again, so a rolled-back seq is reused and none is skipped.
    pub fn forget<'a>(&mut self, rooms: impl IntoIterator<Item = &'a RoomName>) {
        for room in rooms {
            self.rooms.remove(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequencer_keeps_seqs_dense_and_times_monotonic() {
        let room = RoomName::default();
        let mut s = Sequencer::default();
        let (seq, ts) = s.peek(&room, || (Seq(41), Timestamp(90)), Timestamp(100));
        assert_eq!((seq, ts), (Seq(42), Timestamp(100)));
        s.take(&room, seq, ts);
        // The wall clock stepped back: the time does not.
        assert_eq!(s.peek(&room, || unreachable!(), Timestamp(50)), (Seq(43), Timestamp(100)));
        // After a failed transaction the stored head counts again.
        s.forget([&room]);
        assert_eq!(s.peek(&room, || (Seq(42), Timestamp(100)), Timestamp(7)), (Seq(43), Timestamp(100)));
    }

    #[test]
    fn a_seq_that_was_not_taken_goes_to_the_next_write() {
        let room = RoomName::default();
        let mut s = Sequencer::default();
        // Reading the head failed: nothing is remembered.
        assert_eq!(s.try_peek(&room, || Err("disk"), Timestamp(5)), Err("disk"));
        let first = s.try_peek(&room, || Ok::<_, &str>((Seq(9), Timestamp(1))), Timestamp(5));
        assert_eq!(first, Ok((Seq(10), Timestamp(5))));
        // That write failed (never taken): the next one gets the same seq.
        assert_eq!(s.peek(&room, || unreachable!(), Timestamp(6)), (Seq(10), Timestamp(6)));
        s.take(&room, Seq(10), Timestamp(6));
        assert_eq!(s.peek(&room, || unreachable!(), Timestamp(6)), (Seq(11), Timestamp(6)));
    }
}
