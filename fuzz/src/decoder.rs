//! The frame decoder under arbitrary bytes in arbitrary chunks.
//!
//! An input is `[mode, seed, stream…]`: the low three bits of `mode` pick
//! the message limit, the next three the longest chunk, and `seed` drives
//! where the stream is cut. Besides not panicking, each input checks:
//!
//! * every `feed` answers — events, or an error that ends the stream;
//! * the decoder never holds more than the limit, a frame header and a
//!   control frame (`Decoder::buffered`, after every chunk);
//! * what comes out keeps the rules: text within the limit, control
//!   payloads within 125 bytes, close codes a peer may send;
//! * the answer does not depend on the cutting: the stream fed whole and
//!   fed in chunks give the same events and the same error.

use crate::frame::{Decoder, Event, FrameError, MAX_CONTROL_PAYLOAD};

/// Message limits to decode with: the server's, and edges around lengths.
const LIMITS: [usize; 8] = [16 * 1024, 0, 1, 2, 125, 126, 1000, 70_000];
/// Longest chunk a stream is cut into.
const CHUNKS: [usize; 8] = [1, 2, 3, 7, 64, 1000, 4096, usize::MAX];
/// Longest client frame header: two bytes, a 64-bit length, the mask.
const MAX_CLIENT_HEADER: usize = 14;

/// What decoding a stream gave: the events, then the error that ended it.
type Outcome = (Vec<Event>, Option<FrameError>);

/// Checks one input (see the module's doc).
pub fn check(data: &[u8]) {
    let [mode, seed, stream @ ..] = data else { return };
    let limit = LIMITS[usize::from(mode & 7)];
    let longest = CHUNKS[usize::from((mode >> 3) & 7)];
    let whole = decode(stream, limit, |rest| rest);
    let mut state = u32::from(*seed) | 0x9e37_7900;
    let cut = decode(stream, limit, |rest| {
        // xorshift32: a cheap, deterministic cutting from the seed.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + (state as usize) % longest.min(rest)
    });
    assert_eq!(whole, cut, "the outcome depends on how the stream was cut");
}

/// Feeds `stream` in chunks of `next(bytes left)` bytes, checking after each.
fn decode(stream: &[u8], limit: usize, mut next: impl FnMut(usize) -> usize) -> Outcome {
    let mut decoder = Decoder::new(limit);
    let mut events = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(next(rest.len()).clamp(1, rest.len()));
        rest = after;
        let seen = events.len();
        let result = decoder.feed(chunk, &mut events);
        for event in &events[seen..] {
            check_event(event, limit);
        }
        let held = decoder.buffered();
        assert!(
            held <= limit + MAX_CLIENT_HEADER + MAX_CONTROL_PAYLOAD,
            "the decoder holds {held} bytes with a limit of {limit}"
        );
        if let Err(e) = result {
            return (events, Some(e));
        }
    }
    (events, None)
}

fn check_event(event: &Event, limit: usize) {
    match event {
        Event::Text(text) => assert!(text.len() <= limit, "a text of {} bytes passed a limit of {limit}", text.len()),
        Event::Ping(payload) => assert!(payload.len() <= MAX_CONTROL_PAYLOAD, "a ping of {} bytes", payload.len()),
        Event::Pong => {}
        Event::Close(None) => {}
        Event::Close(Some(code)) => {
            assert!(matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999), "close code {code} passed")
        }
    }
}
