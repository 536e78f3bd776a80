//! Protocol limits. Both sides validate against these, so the page can refuse
//! bad input before sending it and the server refuses it if the page did not.
//! Lengths count Unicode scalar values (Rust `char`s), not bytes.

/// Longest user name, in characters, after trimming surrounding whitespace.
pub const NAME_MAX_CHARS: usize = 24;
/// Longest chat message, in characters.
pub const MESSAGE_MAX_CHARS: usize = 2000;
/// Longest room name, in characters (all ASCII, so also bytes).
pub const ROOM_MAX_CHARS: usize = 32;
/// The room joined when `hello` names none.
pub const DEFAULT_ROOM: &str = "lobby";
/// Longest client-chosen message id, in bytes (ASCII only).
pub const CID_MAX_LEN: usize = 64;
/// Longest resume token accepted from a client, in bytes (ASCII only).
pub const RESUME_TOKEN_MAX_LEN: usize = 64;
/// Largest WebSocket message (and frame) the server accepts, in bytes.
/// A maximal message of 2000 four-byte characters plus JSON framing fits.
pub const MAX_FRAME_BYTES: usize = 16 * 1024;
/// A client should treat another member's `typing {active: true}` as expired
/// after this long without a refresh.
pub const TYPING_TTL_MS: u64 = 6_000;
/// While the user keeps typing, a client refreshes `typing {active: true}`
/// this often.
pub const TYPING_REFRESH_MS: u64 = 3_000;
/// The server drops typing refreshes that come sooner than this after the
/// last one it passed on (below [`TYPING_REFRESH_MS`], so network jitter does
/// not drop regular refreshes).
pub const TYPING_REFRESH_MIN_MS: u64 = 2_000;
/// Most events one `history` page returns.
pub const HISTORY_PAGE_MAX: u32 = 200;
/// Most members one `members` page (and a `welcome`) lists; a bigger room's
/// welcome carries the first page and the count, and the page asks for more.
pub const MEMBERS_PAGE_MAX: u32 = 100;
/// Most names a `presence` frame lists per kind of change; the rest are
/// counted (`Ada, Bo and 12 others joined`).
pub const PRESENCE_NAMES_MAX: usize = 10;
