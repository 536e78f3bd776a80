//! The network edge: our accept loop (with the `Host` check), plain HTTP (the
//! page, from the binary or a directory, `/healthz`, `/readyz`), the `/ws` handshake that hands an upgraded
//! connection to a session, the security headers of every response, and the
//! separate `/metrics` listener.

pub mod embedded;
pub mod headers;
pub mod http;
pub mod metrics;
pub mod server;
pub mod upgrade;
