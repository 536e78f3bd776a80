//! All rooms of the server, created on first use, up to the configured number
//! of rooms with members (empty rooms are dropped when room is needed), and
//! up to a number per address of the rooms it created that the hub holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use natter_shared::RoomName;

use super::room::Membership;
use super::room::Room;
use crate::address::{AddressKey, PerAddress, Slot};
use crate::config::RoomLimits;
use crate::metrics::Metrics;
use crate::store::{self, HistoryError, HistoryStore, SavedMember};

/// Why a room could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("the server holds its maximum number of rooms")]
    TooManyRooms,
    #[error("{0} created its maximum number of rooms")]
    TooManyRoomsFrom(AddressKey),
    #[error(transparent)]
    Storage(#[from] HistoryError),
}

/// Who the rooms the server opens itself (to restore members) count for.
const SERVER: AddressKey = AddressKey::SERVER;

/// The room registry. Lock order: the registry before any room, never the
/// reverse; neither is held across an `.await`.
#[derive(Debug)]
pub struct Hub {
    /// Each room, and the slot it takes from the address that created it
    /// (given back when the room is dropped).
    rooms: Mutex<HashMap<RoomName, (Arc<Room>, Slot)>>,
    created_by: Arc<PerAddress>,
    /// Rooms being opened, each with the lock its opening holds.
    opening: Mutex<HashMap<RoomName, Arc<tokio::sync::Mutex<()>>>>,
    store: Arc<dyn HistoryStore>,
    limits: RoomLimits,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// An empty hub whose rooms keep their history in `store`.
    pub fn new(store: Arc<dyn HistoryStore>, limits: RoomLimits, metrics: Arc<Metrics>) -> Self {
        let created_by = PerAddress::new(limits.max_rooms_per_address);
        Self {
            rooms: Mutex::new(HashMap::new()),
            created_by,
            opening: Mutex::new(HashMap::new()),
            store,
            limits,
            next_id: AtomicU64::new(1),
            metrics,
        }
    }

    /// A fresh id for a connection or a membership.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The room called `name`, created (on behalf of `creator`) if it does
    /// not exist yet. A new room's stored state is read on a blocking
    /// thread, without the registry's lock.
    pub async fn room(&self, name: &RoomName, creator: AddressKey) -> Result<Arc<Room>, HubError> {
        self.room_for(name, Some(creator)).await
    }

    /// The room called `name`, opened on the server's own account (outside
    /// every address's room cap) if it does not exist yet.
    pub async fn server_room(&self, name: &RoomName) -> Result<Arc<Room>, HubError> {
        self.room_for(name, None).await
    }

    /// Where the rooms keep their history.
    pub fn store(&self) -> &Arc<dyn HistoryStore> {
        &self.store
    }

    async fn room_for(&self, name: &RoomName, creator: Option<AddressKey>) -> Result<Arc<Room>, HubError> {
        if let Some((room, _)) = self.lock().get(name) {
            return Ok(room.clone());
        }
        // One opening per room: those who come meanwhile wait for it and
        // find the room, instead of each reading it from the store again.
        let opening = self
            .opening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        let _opening = opening.lock().await;
        let opened = self.open(name, creator).await;
        self.opening.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        opened
    }

    /// Opens the room called `name` unless someone did meanwhile, on behalf
    /// of `creator` (`None`: the server itself, uncapped).
    async fn open(&self, name: &RoomName, creator: Option<AddressKey>) -> Result<Arc<Room>, HubError> {
        if let Some((room, _)) = self.lock().get(name) {
            return Ok(room.clone());
        }
        self.make_room(creator)?;
        let (store, limits, opened, metrics) =
            (self.store.clone(), self.limits.clone(), name.clone(), self.metrics.clone());
        let room = Arc::new(store::blocking(&self.store, move || Room::open(opened, store, limits, metrics)).await?);
        // Places are checked again: others may have come meanwhile.
        let mut rooms = self.lock();
        if let Some((existing, _)) = rooms.get(name) {
            return Ok(existing.clone());
        }
        let slot = self.place(&mut rooms, creator)?;
        rooms.insert(name.clone(), (room.clone(), slot));
        drop(rooms);
        self.store.attach(room.clone());
        Ok(room)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, (Arc<Room>, Slot)>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses early a room that would not get a place.
    fn make_room(&self, creator: Option<AddressKey>) -> Result<(), HubError> {
        let mut rooms = self.lock();
        self.place(&mut rooms, creator).map(drop)
    }

    /// A place for one more room from `creator`: under the server's room cap
    /// and the creator's, letting rooms nobody is in go first (they are only
    /// a cache of their stored history).
    fn place(
        &self,
        rooms: &mut HashMap<RoomName, (Arc<Room>, Slot)>,
        creator: Option<AddressKey>,
    ) -> Result<Slot, HubError> {
        if rooms.len() >= self.limits.max_rooms {
            self.let_go(rooms, |_| true);
            if rooms.len() >= self.limits.max_rooms {
                return Err(HubError::TooManyRooms);
            }
        }
        let Some(creator) = creator else {
            return Ok(self.created_by.take_uncapped(SERVER));
        };
        if let Some(slot) = self.created_by.try_take(creator) {
            return Ok(slot);
        }
        // Its own empty rooms count against it too: let them go first.
        self.let_go(rooms, |slot| slot.key() == creator);
        self.created_by.try_take(creator).ok_or(HubError::TooManyRoomsFrom(creator))
    }

    /// Drops the rooms nobody is in, and nothing else holds, whose
    /// creator's slot matches. A room someone still holds (a join on its
    /// way in, a grace timer, a write the history writer will report to it)
    /// stays: dropping it would split the room in two, or lose that event.
    fn let_go(&self, rooms: &mut HashMap<RoomName, (Arc<Room>, Slot)>, which: impl Fn(&Slot) -> bool) {
        rooms.retain(|name, (room, slot)| {
            let held = Arc::strong_count(room) > 1;
            let keep = held || room.member_count() > 0 || !which(slot);
            if !keep {
                self.store.forget(name);
            }
            keep
        });
    }

    /// Every member of every room, to be saved at shutdown.
    pub fn saved_members(&self) -> Vec<SavedMember> {
        let rooms: Vec<Arc<Room>> = self.lock().values().map(|(room, _)| room.clone()).collect();
        rooms
            .iter()
            .flat_map(|room| {
                room.saved_members().into_iter().map(|(name, token)| SavedMember {
                    room: room.name.clone(),
                    name,
                    token,
                })
            })
            .collect()
    }

    /// Takes back the members the store saved at the last stop (see
    /// [`Room::restore`]). Their rooms are opened on the server's own
    /// account, outside every address's room cap; a room that cannot be
    /// opened is logged and its members rejoin as new.
    pub async fn restore(&self) -> Vec<(Arc<Room>, Membership)> {
        let mut by_room: HashMap<RoomName, Vec<_>> = HashMap::new();
        for saved in self.store.take_saved_members() {
            by_room.entry(saved.room).or_default().push((saved.name, saved.token));
        }
        let mut restored = Vec::new();
        for (name, members) in by_room {
            match self.open(&name, None).await {
                Ok(room) => {
                    let memberships = room.restore(members, || self.next_id()).await;
                    restored.extend(memberships.into_iter().map(|m| (room.clone(), m)));
                }
                Err(e) => tracing::warn!(room = %name, error = %e, "saved members not restored"),
            }
        }
        restored
    }

    /// How many rooms exist.
    pub fn room_count(&self) -> usize {
        self.lock().len()
    }

    /// How many rooms exist, and their members in all (each room locked
    /// in turn, not all at once).
    pub fn counts(&self) -> (usize, usize) {
        let rooms: Vec<Arc<Room>> = self.lock().values().map(|(room, _)| room.clone()).collect();
        let members = rooms.iter().map(|room| room.member_count()).sum();
        (rooms.len(), members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::{HookedStore, MemoryStore};

    fn key(ip: &str) -> AddressKey {
        AddressKey::of(ip.parse().expect("ip"))
    }

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).expect("valid")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joiners_of_a_room_being_opened_wait_for_it_instead_of_reading_it_again() {
        // Each opening is counted, and takes a while.
        let opens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut store = HookedStore::over(MemoryStore::new(10));
        let counted = opens.clone();
        store.on_open = Box::new(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
        });
        let hub = Arc::new(Hub::new(Arc::new(store), RoomLimits::default(), Arc::default()));
        let joiners: Vec<_> = (0..20)
            .map(|i| {
                let hub = hub.clone();
                tokio::spawn(async move { hub.room(&room("busy"), key(&format!("10.0.0.{i}"))).await })
            })
            .collect();
        let mut rooms = Vec::new();
        for joiner in joiners {
            rooms.push(joiner.await.expect("task").expect("opens"));
        }
        assert_eq!(opens.load(std::sync::atomic::Ordering::SeqCst), 1, "the room is read once");
        assert!(rooms.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])), "and everyone has the same room");
    }

    #[tokio::test]
    async fn an_empty_room_someone_still_holds_is_not_let_go() {
        let limits = RoomLimits { max_rooms: 1, ..RoomLimits::default() };
        let hub = Hub::new(MemoryStore::new(10), limits, Arc::default());
        // A join on its way in holds the room, not yet a member of it.
        let held = hub.room(&room("first"), key("10.0.0.1")).await.expect("opens");
        assert!(matches!(hub.room(&room("second"), key("10.0.0.2")).await, Err(HubError::TooManyRooms)));
        let again = hub.room(&room("first"), key("10.0.0.3")).await.expect("the same room");
        assert!(Arc::ptr_eq(&held, &again), "one room, not two");
        drop((held, again));
        // Nobody holds it now: it makes way.
        hub.room(&room("second"), key("10.0.0.2")).await.expect("an empty room let go");
    }
}
