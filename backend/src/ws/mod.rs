//! The WebSocket layer below everything else: RFC 6455 framing and each
//! connection's bounded outbound queue. It knows nothing of rooms or storage.

pub mod coalesce;
pub mod frame;
pub mod outbound;
