//! The Natter chat server.
//!
//! [`run`] is the whole server: give it a [`Config`], a bound listener and a
//! shutdown future. The binary (`main.rs`) only parses flags, sets up logging,
//! binds and calls it; tests call it with port 0.
//!
//! Layout, outside in:
//! * [`server`] — the accept loop: connection cap, TCP_NODELAY, hyper per connection, shutdown.
//! * [`http`] — static files of the built page, SPA fallback, `/healthz`.
//! * [`upgrade`] — the `/ws` handshake and `Origin` check, with our WebSocket config.
//! * [`session`] — one WebSocket: reader + writer, protocol handling, how it ends.
//! * [`outbound`] — a connection's bounded queue and its close "kick".
//! * [`hub`] and [`room`] — rooms, members, presence, ordering, dedupe.
//! * [`history`] — the `HistoryStore` trait, the writer queue, the in-memory store.
//! * [`sqlite`] — the durable store: SQLite (WAL), one group-committing writer thread.
//! * [`rate_limit`], [`heartbeat`], [`origin`] — plain policies with unit tests.
//! * [`config`] and [`cli`] — every bound and timeout, with defaults as constants.

pub mod app;
pub mod cli;
pub mod config;
pub mod frame;
pub mod heartbeat;
pub mod history;
pub mod http;
pub mod hub;
pub mod origin;
pub mod outbound;
pub mod random;
pub mod rate_limit;
pub mod room;
pub mod server;
pub mod session;
pub mod sqlite;
pub mod transfer;
pub mod upgrade;
pub mod welcome;

pub use config::Config;
pub use server::{ServerError, run};
