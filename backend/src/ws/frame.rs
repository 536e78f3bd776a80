//! WebSocket framing (RFC 6455), server side, on plain bytes: a decoder for
//! the client's frames and an encoder for ours. No I/O here; the session
//! moves the bytes.
//!
//! The decoder keeps no buffer while it is between messages: the payload of
//! an unfinished message (or control frame) is held only until it completes,
//! so an idle connection costs nothing here. Every rule is checked at the
//! first byte that can break it — the header byte by byte, UTF-8 as the
//! text arrives — so bad input fails fast and is never buffered.

use std::mem;

/// Continuation of a fragmented message.
pub const OP_CONTINUATION: u8 = 0x0;
/// A text frame.
pub const OP_TEXT: u8 = 0x1;
/// A binary frame (refused: the protocol is JSON text).
pub const OP_BINARY: u8 = 0x2;
/// Close.
pub const OP_CLOSE: u8 = 0x8;
/// Ping.
pub const OP_PING: u8 = 0x9;
/// Pong.
pub const OP_PONG: u8 = 0xA;
/// Longest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Longest frame header the server writes (2 + 8 length bytes, no mask).
pub const MAX_HEADER: usize = 10;
/// Longest frame header a client writes (2 + 8 length bytes + the mask).
pub const MAX_CLIENT_HEADER: usize = 14;

/// What a client said, frame by frame (messages reassembled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete text message (valid UTF-8).
    Text(String),
    /// A ping; its payload goes back in the pong.
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// A close frame and its status code, if it had one.
    Close(Option<u16>),
}

/// Why a client's bytes were refused; each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("binary frames are not supported")]
    Binary,
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("message longer than {0} bytes")]
    TooBig(usize),
    #[error("WebSocket protocol violation: {0}")]
    Protocol(&'static str),
}

/// Decodes the client's side of a connection.
///
/// Bytes are taken as they come: a header is checked byte by byte as it
/// arrives, and a text frame's payload is unmasked straight into the
/// message it belongs to and checked as UTF-8 at the end of every `feed`,
/// so a frame that breaks a rule fails at the first byte that shows it,
/// not when it ends. The decoder holds at most the message so far (within
/// the limit) and one control frame's payload; the header of the frame now
/// arriving lives in the decoder itself.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// The header of the frame now arriving, while it is incomplete.
    head: [u8; MAX_CLIENT_HEADER],
    head_len: u8,
    /// The frame whose payload is arriving (its header was complete and valid).
    frame: Option<Frame>,
    /// The payload so far of the control frame now arriving.
    control: Vec<u8>,
    /// The text message so far, unmasked (over all its fragments).
    message: Vec<u8>,
    /// How much of `message` is known to be valid UTF-8; after it come at
    /// most three bytes of a character that has not fully arrived.
    checked: usize,
    /// A fragmented message has begun and not ended.
    in_message: bool,
}

/// A frame whose header has arrived.
#[derive(Debug, Clone, Copy)]
struct Frame {
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    /// The payload's length.
    len: usize,
    /// Payload bytes taken so far.
    taken: usize,
}

impl Frame {
    fn is_control(&self) -> bool {
        self.opcode & 0x08 != 0
    }
}

impl Decoder {
    /// A decoder that refuses messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            head: [0; MAX_CLIENT_HEADER],
            head_len: 0,
            frame: None,
            control: Vec::new(),
            message: Vec::new(),
            checked: 0,
            in_message: false,
        }
    }

    /// True while a frame or a fragmented message has begun but not ended.
    pub fn in_progress(&self) -> bool {
        self.head_len > 0 || self.frame.is_some() || self.in_message
    }

    /// Bytes held for unfinished frames or messages (0 between messages):
    /// at most the message limit plus [`MAX_CONTROL_PAYLOAD`].
    #[cfg(any(test, fuzzing))]
    pub fn buffered(&self) -> usize {
        self.control.capacity() + self.message.capacity()
    }

    /// Takes the next bytes from the socket; complete messages and control
    /// frames are appended to `out`. After an error the connection must be closed.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<Event>) -> Result<(), FrameError> {
        while !input.is_empty() {
            match self.frame {
                None => {
                    let used = self.read_header(input)?;
                    input = &input[used..];
                }
                Some(frame) => {
                    let n = (frame.len - frame.taken).min(input.len());
                    self.take_payload(&input[..n]);
                    input = &input[n..];
                }
            }
            if let Some(frame) = self.frame
                && frame.taken == frame.len
            {
                self.frame = None;
                self.finish(frame, out)?;
            }
        }
        // Fail fast: the text so far must be able to begin valid UTF-8.
        if self.frame.is_some_and(|f| !f.is_control()) {
            self.check_utf8()?;
        }
        Ok(())
    }

    /// Takes header bytes from `input` up to the next point where something
    /// can be checked, and checks it; returns how many bytes it took.
    fn read_header(&mut self, input: &[u8]) -> Result<usize, FrameError> {
        let have = usize::from(self.head_len);
        let stop = match have {
            0 => 1,
            1 => 2,
            _ => {
                let length_end = 2 + extended_length_bytes(self.head[1]);
                if have < length_end { length_end } else { length_end + 4 }
            }
        };
        let n = (stop - have).min(input.len());
        self.head[have..have + n].copy_from_slice(&input[..n]);
        self.head_len += n as u8;
        if have + n == stop {
            self.check_header(stop)?;
        }
        Ok(n)
    }

    /// Checks the first `len` bytes of the header, all that has arrived;
    /// once the mask is there too, the frame's payload may come.
    fn check_header(&mut self, len: usize) -> Result<(), FrameError> {
        let b0 = self.head[0];
        let opcode = b0 & 0x0f;
        let control = opcode & 0x08 != 0;
        if len == 1 {
            if b0 & 0x70 != 0 {
                return Err(FrameError::Protocol("reserved bits set without an extension"));
            }
            return match opcode {
                OP_CONTINUATION if !self.in_message => {
                    Err(FrameError::Protocol("continuation frame outside a message"))
                }
                OP_TEXT | OP_BINARY if self.in_message => {
                    Err(FrameError::Protocol("a new message began before the last one ended"))
                }
                OP_BINARY => Err(FrameError::Binary),
                OP_CONTINUATION | OP_TEXT => Ok(()),
                OP_CLOSE | OP_PING | OP_PONG if b0 & 0x80 == 0 => Err(FrameError::Protocol("fragmented control frame")),
                OP_CLOSE | OP_PING | OP_PONG => Ok(()),
                _ => Err(FrameError::Protocol("unknown opcode")),
            };
        }
        let b1 = self.head[1];
        let length_end = 2 + extended_length_bytes(b1);
        if len == 2 {
            if b1 & 0x80 == 0 {
                return Err(FrameError::Protocol("client frames must be masked"));
            }
            if control && usize::from(b1 & 0x7f) > MAX_CONTROL_PAYLOAD {
                return Err(FrameError::Protocol("control frame longer than 125 bytes"));
            }
        }
        if len == length_end {
            self.check_length(opcode)?;
        }
        if len == length_end + 4 {
            let mask = [self.head[len - 4], self.head[len - 3], self.head[len - 2], self.head[len - 1]];
            // Bounded by check_length.
            let payload = self.payload_len() as usize;
            self.head_len = 0;
            self.frame = Some(Frame { opcode, fin: b0 & 0x80 != 0, mask, len: payload, taken: 0 });
        }
        Ok(())
    }

    /// The payload length the complete length field gives.
    fn payload_len(&self) -> u64 {
        let h = &self.head;
        match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        }
    }

    /// A length must take its shortest form (RFC 6455 §5.2) and fit the message limit.
    fn check_length(&self, opcode: u8) -> Result<(), FrameError> {
        let len = self.payload_len();
        match self.head[1] & 0x7f {
            127 if len >> 63 != 0 => {
                return Err(FrameError::Protocol("64-bit length with its most significant bit set"));
            }
            126 if len < 126 => return Err(FrameError::Protocol("length not in its shortest form")),
            127 if len <= 0xffff => return Err(FrameError::Protocol("length not in its shortest form")),
            _ => {}
        }
        if opcode & 0x08 == 0 {
            let so_far = if opcode == OP_CONTINUATION { self.message.len() as u64 } else { 0 };
            if so_far.saturating_add(len) > self.max_message as u64 {
                return Err(FrameError::TooBig(self.max_message));
            }
        }
        Ok(())
    }

    /// Unmasks payload bytes of the current frame into its message or control buffer.
    fn take_payload(&mut self, bytes: &[u8]) {
        let Some(frame) = self.frame.as_mut() else { return };
        let (buf, end) = if frame.is_control() {
            (&mut self.control, frame.len)
        } else {
            // The message's length when this frame ends: within the limit.
            let end = self.message.len() + (frame.len - frame.taken);
            (&mut self.message, end)
        };
        reserve_within(buf, bytes.len(), end);
        let (mask, phase) = (frame.mask, frame.taken);
        buf.extend(bytes.iter().enumerate().map(|(i, b)| b ^ mask[(phase + i) % 4]));
        frame.taken += bytes.len();
    }

    /// A frame has fully arrived: its event, if it ends one.
    fn finish(&mut self, frame: Frame, out: &mut Vec<Event>) -> Result<(), FrameError> {
        match frame.opcode {
            OP_PING => out.push(Event::Ping(mem::take(&mut self.control))),
            OP_PONG => {
                self.control = Vec::new();
                out.push(Event::Pong);
            }
            OP_CLOSE => {
                let payload = mem::take(&mut self.control);
                out.push(Event::Close(close_code(&payload)?));
            }
            _ if !frame.fin => {
                self.in_message = true;
                self.check_utf8()?;
            }
            _ => {
                self.in_message = false;
                self.checked = 0;
                let message = mem::take(&mut self.message);
                out.push(Event::Text(String::from_utf8(message).map_err(|_| FrameError::InvalidUtf8)?));
            }
        }
        Ok(())
    }

    /// Checks the message's new bytes: fails at the first byte that no
    /// continuation can make valid, while a character cut by the end of what
    /// has arrived may stay open.
    fn check_utf8(&mut self) -> Result<(), FrameError> {
        match std::str::from_utf8(&self.message[self.checked..]) {
            Ok(_) => self.checked = self.message.len(),
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(FrameError::InvalidUtf8),
        }
        Ok(())
    }
}

/// The extended length bytes a frame's second byte announces.
fn extended_length_bytes(b1: u8) -> usize {
    match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    }
}

/// Makes room for `extra` more bytes, doubling as `Vec` does but never
/// beyond `end`, the length the buffer will have when its frame is whole:
/// a frame that trickles in is not copied again per byte, and no buffer
/// grows past what the frame announced.
fn reserve_within(buf: &mut Vec<u8>, extra: usize, end: usize) {
    let need = buf.len() + extra;
    if need > buf.capacity() {
        let target = buf.capacity().saturating_mul(2).clamp(need, end.max(need));
        buf.reserve_exact(target - buf.len());
    }
}

/// The status code of a client's close frame, checked (RFC 6455 §7.4).
fn close_code(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(FrameError::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Appends a final, unmasked server frame to `out`.
pub fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(126);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// The length of the server frame that starts `buf` (as `encode` wrote it),
/// or `None` if its header is incomplete.
pub fn encoded_frame_len(buf: &[u8]) -> Option<usize> {
    let len = match *buf.get(1)? & 0x7f {
        126 => usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        127 => usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
        n => usize::from(n),
    };
    Some(encoded_len(len))
}

/// The bytes `encode` writes for a payload of `len` bytes.
pub fn encoded_len(len: usize) -> usize {
    len + match len {
        0..126 => 2,
        126..=0xffff => 4,
        _ => MAX_HEADER,
    }
}

/// A close frame's payload: the code and as much of `reason` as fits.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame as a browser would send it.
    fn client(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let n = payload.len();
        if n < 126 {
            out.push(0x80 | n as u8);
        } else if n <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    fn decode(bytes: &[u8]) -> Result<Vec<Event>, FrameError> {
        let mut d = Decoder::new(16 * 1024);
        let mut out = Vec::new();
        d.feed(bytes, &mut out)?;
        Ok(out)
    }

    #[test]
    fn a_masked_text_frame_is_a_message() {
        assert_eq!(decode(&client(0x81, b"Hello")), Ok(vec![Event::Text("Hello".into())]));
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_nothing_stays_buffered() {
        let mut bytes = client(0x81, "héllo wörld".repeat(20).as_bytes());
        bytes.extend(client(0x89, b"p"));
        bytes.extend(client(0x81, &[b'x'; 70_00]));
        for split in [1, 2, 3, 5, 7, 100, 300, bytes.len() - 1] {
            let mut d = Decoder::new(16 * 1024);
            let mut out = Vec::new();
            for chunk in bytes.chunks(split) {
                d.feed(chunk, &mut out).expect("valid");
            }
            assert_eq!(out.len(), 3, "split {split}");
            assert_eq!(out[0], Event::Text("héllo wörld".repeat(20)));
            assert_eq!(out[1], Event::Ping(b"p".to_vec()));
            assert_eq!(d.buffered(), 0, "split {split}");
        }
    }

    #[test]
    fn fragmented_messages_are_reassembled_with_control_frames_between() {
        let mut bytes = client(0x01, "é".as_bytes()[..1].as_ref());
        bytes.extend(client(0x89, b""));
        bytes.extend(client(0x80, &"é".as_bytes()[1..]));
        assert_eq!(decode(&bytes), Ok(vec![Event::Ping(vec![]), Event::Text("é".into())]));
    }

    #[test]
    fn long_lengths_use_the_extended_fields() {
        let text = "a".repeat(70_000);
        let mut d = Decoder::new(100_000);
        let mut out = Vec::new();
        d.feed(&client(0x81, text.as_bytes()), &mut out).expect("valid");
        assert_eq!(out, vec![Event::Text(text)]);
    }

    #[test]
    fn bad_frames_are_refused_with_the_reason() {
        let unmasked = [0x81, 0x01, b'a'];
        assert_eq!(decode(&unmasked), Err(FrameError::Protocol("client frames must be masked")));
        assert_eq!(decode(&client(0x82, b"x")), Err(FrameError::Binary));
        assert_eq!(decode(&client(0x81, &[0xff, 0xfe])), Err(FrameError::InvalidUtf8));
        assert_eq!(decode(&client(0x81, &[b'a'; 16 * 1024 + 1])), Err(FrameError::TooBig(16 * 1024)));
        assert!(matches!(decode(&client(0xC1, b"x")), Err(FrameError::Protocol(_))), "reserved bit");
        assert!(matches!(decode(&client(0x83, b"x")), Err(FrameError::Protocol(_))), "unknown opcode");
        assert!(matches!(decode(&client(0x09, b"x")), Err(FrameError::Protocol(_))), "fragmented ping");
        assert!(matches!(decode(&client(0x89, &[0; 126])), Err(FrameError::Protocol(_))), "long ping");
        assert!(matches!(decode(&client(0x80, b"x")), Err(FrameError::Protocol(_))), "stray continuation");
        let mut two = client(0x01, b"a");
        two.extend(client(0x81, b"b"));
        assert!(matches!(decode(&two), Err(FrameError::Protocol(_))), "message inside a message");
    }

    #[test]
    fn an_oversized_fragmented_message_is_refused_before_it_is_buffered() {
        let mut d = Decoder::new(1024);
        let mut out = Vec::new();
        d.feed(&client(0x01, &[b'a'; 1000]), &mut out).expect("first part fits");
        // Only the header of the second part has arrived.
        let second = client(0x80, &[b'a'; 100]);
        assert_eq!(d.feed(&second[..8], &mut out), Err(FrameError::TooBig(1024)));
    }

    #[test]
    fn close_frames_carry_a_checked_code() {
        assert_eq!(decode(&client(0x88, b"")), Ok(vec![Event::Close(None)]));
        assert_eq!(decode(&client(0x88, &close_payload(4002, "bye"))), Ok(vec![Event::Close(Some(4002))]));
        assert!(decode(&client(0x88, &[3])).is_err());
        assert!(decode(&client(0x88, &close_payload(1005, ""))).is_err());
        assert!(decode(&client(0x88, &[0x03, 0xe8, 0xff])).is_err());
    }

    #[test]
    fn server_frames_have_the_shortest_length_field() {
        for (n, head) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = Vec::new();
            encode(OP_TEXT, &vec![b'a'; n], &mut out);
            assert_eq!(out.len(), n + head);
            assert_eq!(encoded_len(n), out.len());
            assert_eq!(encoded_frame_len(&out), Some(out.len()));
            assert_eq!(out[0], 0x81);
        }
        let long = "é".repeat(100);
        let payload = close_payload(1000, &long);
        assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }

    /// A client frame with its length in the 16- or 64-bit form, whatever the length.
    fn client_with_len(first: u8, payload: &[u8], bits: u32) -> Vec<u8> {
        let mut out = vec![first];
        if bits == 16 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    /// A 64-bit length header (masked) and no payload.
    fn header64(first: u8, len: u64) -> Vec<u8> {
        let mut out = vec![first, 0x80 | 127];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&MASK);
        out
    }

    /// Feeds `bytes` in pieces of `piece` bytes: the events, and the error that ended it.
    fn decode_in(bytes: &[u8], piece: usize, max: usize) -> (Vec<Event>, Option<FrameError>) {
        let mut d = Decoder::new(max);
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece) {
            if let Err(e) = d.feed(chunk, &mut out) {
                return (out, Some(e));
            }
        }
        (out, None)
    }

    #[test]
    fn lengths_must_take_their_shortest_form() {
        let not_shortest = Err(FrameError::Protocol("length not in its shortest form"));
        assert_eq!(decode(&client_with_len(0x81, b"short", 16)), not_shortest);
        assert_eq!(decode(&client_with_len(0x81, b"short", 64)), not_shortest);
        assert_eq!(decode(&client_with_len(0x81, &[b'a'; 200], 64)), not_shortest);
        assert_eq!(decode(&header64(0x81, 0xffff)), not_shortest, "known from the header alone");
        assert!(matches!(decode(&client_with_len(0x89, b"ping", 16)), Err(FrameError::Protocol(_))));
        // The shortest forms, at their edges, are fine.
        assert_eq!(decode(&client_with_len(0x81, &[b'a'; 126], 16)), Ok(vec![Event::Text("a".repeat(126))]));
        let text = "a".repeat(65_536);
        assert_eq!(
            decode_in(&client_with_len(0x81, text.as_bytes(), 64), 4096, 100_000),
            (vec![Event::Text(text)], None)
        );
    }

    #[test]
    fn a_64_bit_length_with_its_top_bit_set_is_a_protocol_error() {
        for len in [1 << 63, u64::MAX] {
            let top_bit = Err(FrameError::Protocol("64-bit length with its most significant bit set"));
            assert_eq!(decode(&header64(0x81, len)), top_bit, "{len:#x}");
        }
        assert_eq!(decode(&header64(0x81, 1 << 62)), Err(FrameError::TooBig(16 * 1024)), "merely too big");
    }

    #[test]
    fn invalid_utf8_fails_at_the_fragment_that_makes_the_text_impossible() {
        let mut d = Decoder::new(1024);
        let mut out = Vec::new();
        d.feed(&client(0x01, "κό".as_bytes()), &mut out).expect("valid so far");
        // 0xf4 may begin a character up to U+10FFFF …
        d.feed(&client(0x00, b"\xf4"), &mut out).expect("may still become valid");
        // … but not one followed by 0x90 (above U+10FFFF): the message fails
        // here, before its other fragments arrive.
        assert_eq!(d.feed(&client(0x00, b"\x90"), &mut out), Err(FrameError::InvalidUtf8));
        assert!(out.is_empty());

        assert_eq!(decode(&client(0x01, b"ab\xff")), Err(FrameError::InvalidUtf8), "in the first fragment");
        let mut surrogate = client(0x01, b"ab\xed");
        surrogate.extend(client(0x00, b"\xa0"));
        assert_eq!(decode(&surrogate), Err(FrameError::InvalidUtf8), "a surrogate, known at its second byte");
        // Before a ping that follows the bad fragment is answered.
        let mut then_ping = client(0x01, b"\xc0\xaf");
        then_ping.extend(client(0x89, b"p"));
        assert_eq!(decode_in(&then_ping, then_ping.len(), 1024), (vec![], Some(FrameError::InvalidUtf8)));
    }

    #[test]
    fn a_character_may_be_split_across_fragments_but_must_end() {
        let mut split = client(0x01, b"\xce");
        split.extend(client(0x89, b""));
        split.extend(client(0x80, b"\xba"));
        assert_eq!(decode(&split), Ok(vec![Event::Ping(vec![]), Event::Text("κ".into())]));
        let mut unfinished = client(0x01, b"abc");
        unfinished.extend(client(0x80, b"\xe2\x82"));
        assert_eq!(decode(&unfinished), Err(FrameError::InvalidUtf8));
    }

    #[test]
    fn invalid_utf8_fails_inside_a_frame_before_its_end() {
        let payload = [b"ab\xff".as_slice(), &[b'c'; 97]].concat();
        let frame = client(0x81, &payload);
        let mut out = Vec::new();
        assert_eq!(Decoder::new(1024).feed(&frame[..6 + 10], &mut out), Err(FrameError::InvalidUtf8));
        // A prefix that ends inside a character waits for the rest.
        let frame = client(0x81, "κόσμε".as_bytes());
        let mut d = Decoder::new(1024);
        d.feed(&frame[..6 + 1], &mut out).expect("half a character");
        d.feed(&frame[6 + 1..], &mut out).expect("the rest");
        assert_eq!(out, vec![Event::Text("κόσμε".into())]);
    }

    #[test]
    fn rules_are_checked_as_soon_as_the_bytes_that_break_them_arrive() {
        assert!(matches!(decode(&[0xC1]), Err(FrameError::Protocol(_))), "reserved bit, first byte alone");
        assert!(matches!(decode(&[0x83]), Err(FrameError::Protocol(_))), "unknown opcode, first byte alone");
        assert!(matches!(decode(&[0x80]), Err(FrameError::Protocol(_))), "stray continuation, first byte alone");
        assert_eq!(decode(&[0x82]), Err(FrameError::Binary), "binary, first byte alone");
        assert!(matches!(decode(&[0x89, 0x80 | 126]), Err(FrameError::Protocol(_))), "a long ping's header");
        for next in [[0x81, 0x80 | 100], [0x01, 0x80 | 100], [0x82, 0x81]] {
            let mut bytes = client(0x01, b"a");
            bytes.extend_from_slice(&next);
            assert!(matches!(decode(&bytes), Err(FrameError::Protocol(_))), "{next:02x?} inside a message");
        }
    }

    #[test]
    fn the_decoder_holds_no_more_than_what_is_unfinished() {
        // Found by fuzzing: a chunk that finished one frame and began another
        // left the whole chunk's allocation behind.
        let ping = client(0x89, &[7; 125]);
        let mut chunk = ping[10..].to_vec();
        for _ in 0..100 {
            chunk.extend(client(0x81, b"{}"));
        }
        chunk.extend_from_slice(&ping[..10]);
        let mut d = Decoder::new(16 * 1024);
        let mut out = Vec::new();
        d.feed(&ping[..10], &mut out).expect("valid");
        d.feed(&chunk, &mut out).expect("valid");
        assert_eq!(out.len(), 101);
        assert!(d.buffered() <= MAX_CONTROL_PAYLOAD, "holds {} bytes for a ping's first 4", d.buffered());

        // A 16 KiB message in 1,000-byte fragments, read 4 KiB at a time,
        // with a ping between each: never more than the message and a ping.
        let text = "é".repeat(8 * 1024);
        let mut bytes = Vec::new();
        for (i, part) in text.as_bytes().chunks(1000).enumerate() {
            let last = (i + 1) * 1000 >= text.len();
            bytes.extend(client(if i == 0 { 0x01 } else { 0x00 } | if last { 0x80 } else { 0 }, part));
            bytes.extend(client(0x89, &[1; 125]));
        }
        let mut d = Decoder::new(16 * 1024);
        let mut out = Vec::new();
        for chunk in bytes.chunks(4096) {
            d.feed(chunk, &mut out).expect("valid");
            assert!(d.buffered() <= 16 * 1024 + MAX_CONTROL_PAYLOAD, "holds {}", d.buffered());
        }
        assert_eq!(out.iter().filter(|e| **e == Event::Text(text.clone())).count(), 1);
        assert_eq!(d.buffered(), 0);
        // A message past half the limit grows to what its frames announce,
        // not to twice its size.
        let mut d = Decoder::new(16 * 1024);
        d.feed(&client(0x01, &[b'a'; 9000]), &mut out).expect("valid");
        d.feed(&client(0x00, &[b'a'; 1000]), &mut out).expect("valid");
        assert!(d.buffered() <= 16 * 1024 + MAX_CONTROL_PAYLOAD, "holds {} for 10,000 bytes", d.buffered());
    }

    #[test]
    fn the_outcome_does_not_depend_on_how_the_bytes_are_cut() {
        let streams = [
            [
                client(0x01, "κό".as_bytes()),
                client(0x89, b"x"),
                client(0x80, "σμε".as_bytes()),
                client(0x88, &[3, 232]),
            ]
            .concat(),
            [client(0x81, b"ok"), client(0x01, b"\xe2\x82"), client(0x8a, b""), client(0x80, b"\x28")].concat(),
            [client(0x81, &[b'a'; 300]), client(0x01, b"a"), header64(0x80, 20_000)].concat(),
        ];
        for stream in &streams {
            let whole = decode_in(stream, stream.len(), 16 * 1024);
            for piece in 1..=17 {
                assert_eq!(decode_in(stream, piece, 16 * 1024), whole, "pieces of {piece}");
            }
        }
    }
}
