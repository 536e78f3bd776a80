//! WebSocket close codes the server sends, and what a client should do.
//! Codes 4000–4999 are application codes (RFC 6455 §7.4.2).

/// The client could not keep up and its outbound queue filled. Nothing was
/// dropped silently: reconnect and resume with `last_seq`.
pub const LAGGED: u16 = 4000;
/// The reason text sent with [`LAGGED`].
pub const LAGGED_REASON: &str = "lagged, please resume";
/// Another connection resumed this session with its resume token (the same
/// browser reconnected); this older connection is no longer needed.
pub const REPLACED: u16 = 4001;
/// The reason text sent with [`REPLACED`].
pub const REPLACED_REASON: &str = "replaced by a newer connection";
/// Sent by a client that closes a connection it believes dead and reconnects
/// at once: the server keeps the session for the grace period (no "left").
pub const CLIENT_RECONNECTING: u16 = 4002;
/// Normal closure (RFC 6455).
pub const NORMAL: u16 = 1000;
/// The server is going away (RFC 6455 "going away").
pub const GOING_AWAY: u16 = 1001;
/// The peer broke the WebSocket protocol (e.g. an unmasked client frame).
pub const PROTOCOL_ERROR: u16 = 1002;
/// RFC 6455's "no status received": never sent, it reports a Close frame
/// that carried no code.
pub const NO_STATUS: u16 = 1005;
/// A binary frame arrived; Natter speaks JSON text frames only.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// A text frame was not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// The client kept flooding after `error rate_limited`.
pub const POLICY_VIOLATION: u16 = 1008;
/// A message exceeded [`crate::limits::MAX_FRAME_BYTES`].
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The server is restarting (shutdown); reconnect with backoff and resume.
pub const SERVICE_RESTART: u16 = 1012;
