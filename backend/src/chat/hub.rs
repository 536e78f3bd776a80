//! All rooms of the server, created on first use, up to the configured number
//! of rooms with members (empty rooms are dropped when room is needed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use natter_shared::RoomName;

use super::room::Room;
use crate::config::RoomLimits;
use crate::store::{HistoryError, HistoryStore};

/// Why a room could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("the server holds its maximum number of rooms")]
    TooManyRooms,
    #[error(transparent)]
    Storage(#[from] HistoryError),
}

/// The room registry. Lock order: the registry before any room, never the
/// reverse; neither is held across an `.await`.
#[derive(Debug)]
pub struct Hub {
    rooms: Mutex<HashMap<RoomName, Arc<Room>>>,
    store: Arc<dyn HistoryStore>,
    limits: RoomLimits,
    next_id: AtomicU64,
}

impl Hub {
    /// An empty hub whose rooms keep their history in `store`.
    pub fn new(store: Arc<dyn HistoryStore>, limits: RoomLimits) -> Self {
        Self { rooms: Mutex::new(HashMap::new()), store, limits, next_id: AtomicU64::new(1) }
    }

    /// A fresh id for a connection or a membership.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The room called `name`, created if it does not exist yet.
    pub fn room(&self, name: &RoomName) -> Result<Arc<Room>, HubError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(room) = rooms.get(name) {
            return Ok(room.clone());
        }
        if rooms.len() >= self.limits.max_rooms {
            // Rooms nobody is in are only a cache of their stored history:
            // let them go before refusing a new room.
            rooms.retain(|name, room| {
                let keep = room.member_count() > 0;
                if !keep {
                    self.store.forget(name);
                }
                keep
            });
            if rooms.len() >= self.limits.max_rooms {
                return Err(HubError::TooManyRooms);
            }
        }
        let room = Arc::new(Room::open(name.clone(), self.store.clone(), self.limits.clone())?);
        rooms.insert(name.clone(), room.clone());
        Ok(room)
    }

    /// How many rooms exist.
    pub fn room_count(&self) -> usize {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
