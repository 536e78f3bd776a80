//! The Natter chat server.
//!
//! [`run`] is the whole server: give it a [`Config`], a bound listener and a
//! shutdown future. The binary (`main.rs`) only parses flags, sets up logging,
//! binds and calls it; tests call it with port 0.
//!
//! The folders are the layers, outside in; each uses only those below it
//! (docs/ARCHITECTURE.md has the table, and `cargo xtask test` checks it):
//! * [`net`] — the accept loop, static files, `/healthz` and `/readyz`, the `/ws` handshake, `/metrics`.
//! * [`session`] — one WebSocket: reader + writer, the requests, how it ends.
//! * [`app`] — what every connection of a running server shares.
//! * [`chat`] — the hub and its rooms: members, presence, ordering, welcomes.
//! * [`store`] — history: the writer queue, the memory, SQLite and Redis stores, export/import.
//! * [`ws`] — RFC 6455 framing and each connection's bounded outbound queue.
//! * [`config`] — every bound and timeout with defaults as constants, the flags, `Origin` policy.
//! * [`address`] — per-address keys, counted slots, trusted proxies' `X-Forwarded-For`.
//! * [`metrics`] — what the server counts, rendered for `/metrics`.
//! * [`random`] — random ids and tokens.

pub mod address;
pub mod app;
pub mod chat;
pub mod config;
pub mod metrics;
pub mod net;
pub mod random;
pub mod session;
pub mod store;
pub mod ws;

pub use config::Config;
pub use net::server::{Listeners, ServerError, run, run_with};
