//! The properties Natter's fuzz targets check, one module a target; the
//! binaries in `targets/` only hand AFL++'s inputs to them.
//!
//! * [`decoder`] — the server's WebSocket frame decoder, fed arbitrary bytes
//!   in arbitrary chunks.
//! * [`client_msg`] — the client-message parser and the validating
//!   constructors of `natter-shared`, fed arbitrary text.
//!
//! A crash (a panic, which the targets turn into an abort) or a hang is a
//! finding; `cargo xtask fuzz` keeps it under `target/fuzz/crashes/`, and the
//! target binary replays one from its standard input.

// The decoder is compiled from the server's own source file rather than
// through `natter-backend`: the `ws` layer uses nothing else of the crate
// (`cargo xtask layers` holds it to that), and instrumenting all of the
// server's dependencies (tokio, warp, hyper, SQLite) would multiply the
// fuzz build's time for code the target never runs.
#[path = "../../backend/src/ws/frame.rs"]
pub mod frame;

pub mod client_msg;
pub mod decoder;
