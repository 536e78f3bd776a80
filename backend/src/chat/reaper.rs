//! The clean-up after an instance that died, with names shared across
//! instances (issue 15, stage 4): its members who did not resume on another
//! instance are announced `timed_out` once, and their names given back.
//!
//! One survivor takes each dead instance's clean-up (a lease in the store,
//! [`crate::store::HistoryStore::dead_instances`]); if it dies too, another
//! takes it over and runs it again. Each notice is written under a key of
//! its own (the dead instance, the name, the membership), so the store
//! keeps it once however often it is written; a name is given back only
//! after its notice is stored, so a clean-up cut short leaves nothing
//! unannounced. Big rooms (over the presence threshold, counting every
//! instance's names) announce nothing: their presence is batched per
//! instance, never stored.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_shared::{NoticeKind, RoomEvent, RoomName, Seq, UserName, color_for};
use tokio::sync::oneshot;
use tracing::info;

use super::hub::{Hub, HubError};
use super::names::glyph_key;
use super::room::Room;
use crate::store::{
    self, Arrival, Committed, Draft, Elsewhere, FollowUp, FreshHistory, HistoryError, MemberChange, MemberId, Outcome,
    WriteQueue,
};

/// How long the clean-up waits for the notices of one room to be stored
/// before it gives up for this round (the lease lets it, or another
/// survivor, try again).
pub const NOTICES_WAIT: Duration = Duration::from_secs(30);

/// Why a clean-up stopped before its end; it is tried again later.
#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    #[error(transparent)]
    Storage(#[from] HistoryError),
    #[error(transparent)]
    Room(#[from] HubError),
    #[error("the time-out notices of #{0} were not stored")]
    NotStored(RoomName),
}

/// Cleans up after the dead `instance` in each of `rooms`; `threshold`:
/// the most names a room may hold for its members' departures to be
/// announced (`--presence-threshold`). Returns how many were announced.
pub async fn bury(
    hub: &Hub,
    writes: &WriteQueue,
    instance: &str,
    rooms: Vec<RoomName>,
    threshold: usize,
) -> Result<usize, ReapError> {
    let store = hub.store().clone();
    let mut announced = 0;
    for name in rooms {
        let (reader, dead, room_name) = (store.clone(), instance.to_owned(), name.clone());
        let (orphans, names) = store::blocking(&store, move || reader.orphans(&dead, &room_name)).await?;
        if orphans.is_empty() {
            continue;
        }
        if names <= threshold {
            let room = hub.server_room(&name).await?;
            let (tracked, stored) = Tracked::new(room, orphans.len());
            for orphan in &orphans {
                let draft = Draft::Notice {
                    kind: NoticeKind::TimedOut,
                    color: color_for(&orphan.name),
                    name: orphan.name.clone(),
                    once: Some(format!("~dead:{instance}:{}:{}", orphan.key, orphan.member)),
                };
                writes.submit(tracked.clone(), draft).await?;
            }
            if !matches!(tokio::time::timeout(NOTICES_WAIT, stored).await, Ok(Ok(true))) {
                return Err(ReapError::NotStored(name));
            }
            announced += orphans.len();
        }
        let given: Vec<(String, String, MemberId)> =
            orphans.iter().map(|o| (o.key.clone(), glyph_key(&o.name), o.member)).collect();
        let (writer, dead, room_name) = (store.clone(), instance.to_owned(), name.clone());
        store::blocking(&store, move || writer.bury(&dead, &room_name, &given)).await?;
        info!(room = %name, instance = %instance, members = orphans.len(), "members of an instance that died are gone");
    }
    let (writer, dead) = (store.clone(), instance.to_owned());
    store::blocking(&store, move || writer.buried(&dead)).await?;
    Ok(announced)
}

/// A room whose writes the clean-up waits for: reports go on to the room
/// (which acknowledges and broadcasts as usual), and once all `expected`
/// drafts are reported, `stored` says whether every one was stored.
#[derive(Debug)]
struct Tracked {
    room: Arc<Room>,
    expected: usize,
    /// Reported so far, whether one failed, and who waits.
    progress: Mutex<(usize, bool, Option<oneshot::Sender<bool>>)>,
}

impl Tracked {
    fn new(room: Arc<Room>, expected: usize) -> (Arc<Self>, oneshot::Receiver<bool>) {
        let (tx, rx) = oneshot::channel();
        (Arc::new(Self { room, expected, progress: Mutex::new((0, false, Some(tx))) }), rx)
    }
}

impl Committed for Tracked {
    fn room_name(&self) -> &RoomName {
        self.room.room_name()
    }

    fn committed_all(&self, writes: Vec<(Draft, Outcome)>) {
        {
            let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            for (_, outcome) in &writes {
                progress.0 += 1;
                progress.1 |= matches!(outcome, Outcome::Failed(_));
            }
            if progress.0 >= self.expected
                && let Some(done) = progress.2.take()
            {
                // The clean-up may have given up waiting: nobody to tell.
                let _ = done.send(!progress.1);
            }
        }
        self.room.committed_all(writes);
    }

    fn reload(&self, fresh: FreshHistory) {
        self.room.reload(fresh);
    }

    fn deliver(&self, history_id: &str, events: Vec<RoomEvent>, arrival: Arrival) {
        self.room.deliver(history_id, events, arrival);
    }

    fn follow_up(&self) -> Option<FollowUp> {
        self.room.follow_up()
    }

    fn position(&self) -> (String, Seq) {
        self.room.position()
    }

    fn member_elsewhere(&self, change: MemberChange) -> Option<Duration> {
        self.room.member_elsewhere(change)
    }

    fn members_reset(&self, read: Elsewhere) {
        self.room.members_reset(read);
    }

    fn flush_batched(&self) -> Option<Duration> {
        self.room.flush_batched()
    }

    fn typing_from_elsewhere(&self, name: UserName, active: bool) {
        self.room.typing_from_elsewhere(name, active);
    }
}
