//! The network edge: our accept loop, plain HTTP (the page, `/healthz`) and
//! the `/ws` handshake that hands an upgraded connection to a session.

pub mod http;
pub mod server;
pub mod upgrade;
