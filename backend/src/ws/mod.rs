//! The WebSocket layer below everything else: RFC 6455 framing, each
//! connection's bounded outbound queue, and the write window they share.
//! It knows nothing of rooms or storage.

pub mod coalesce;
pub mod frame;
pub mod outbound;
