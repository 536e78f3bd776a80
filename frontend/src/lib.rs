//! The Natter chat page: a Leptos (client-side rendered) app.
//!
//! * [`chat_state`] — the chat as a plain type (ordering, dedupe, outbox, unread); native tests.
//! * [`client`] — the one owner of the WebSocket; exposes signals and methods.
//! * [`components`] — the views; they read signals and call the client.
//! * [`backoff`], [`follow`], [`location`] — small plain policies with native tests.
//! * [`name_key`] — a name's case-insensitive key (the browser's lowercase in the page).
//! * [`storage`], [`time`] — the browser's storage and clock.

pub mod backoff;
pub mod chat_state;
pub mod client;
pub mod components;
pub mod follow;
pub mod location;
pub mod name_key;
pub mod storage;
pub mod time;

pub use components::app::App;
