//! The network edge: our accept loop (with the `Host` check), plain HTTP (the
//! page, `/healthz`), the `/ws` handshake that hands an upgraded connection to
//! a session, and the security headers of every response.

pub mod headers;
pub mod http;
pub mod server;
pub mod upgrade;
