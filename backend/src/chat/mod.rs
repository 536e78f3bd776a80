//! Rooms: the hub that holds them, each room's members, presence and order
//! of events, and the welcome a joiner gets. Below the sessions, above the
//! store, which it hands drafts to and hears back from through
//! [`crate::store::Committed`].

pub mod claims;
pub mod elsewhere;
pub mod hub;
pub mod names;
pub mod reaper;
pub mod room;
pub mod welcome;
