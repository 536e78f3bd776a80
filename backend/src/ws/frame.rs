//! WebSocket framing (RFC 6455), server side, on plain bytes: a decoder for
//! the client's frames and an encoder for ours. No I/O here; the session
//! moves the bytes.
//!
//! The decoder keeps no buffer while it is between frames: bytes of an
//! unfinished frame (and the parts of a fragmented message) are held only
//! until it completes, so an idle connection costs nothing here.

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
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// Bytes of a frame that has not fully arrived.
    partial: Vec<u8>,
    /// The payload so far of a fragmented text message.
    message: Vec<u8>,
    in_message: bool,
}

impl Decoder {
    /// A decoder that refuses messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self { max_message, partial: Vec::new(), message: Vec::new(), in_message: false }
    }

    /// Bytes held for unfinished frames or messages (0 between messages).
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.partial.capacity() + self.message.capacity()
    }

    /// Takes the next bytes from the socket; complete messages and control
    /// frames are appended to `out`. After an error the connection must be closed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Event>) -> Result<(), FrameError> {
        if self.partial.is_empty() {
            let used = self.parse_all(input, out)?;
            self.partial.extend_from_slice(&input[used..]);
        } else {
            let mut data = mem::take(&mut self.partial);
            data.extend_from_slice(input);
            let used = self.parse_all(&data, out)?;
            if used < data.len() {
                // Keep only the unfinished frame. Without a complete frame
                // nothing moves: a frame trickling in byte by byte is not
                // copied again per byte.
                if used > 0 {
                    data.drain(..used);
                }
                self.partial = data;
            }
        }
        Ok(())
    }

    fn parse_all(&mut self, data: &[u8], out: &mut Vec<Event>) -> Result<usize, FrameError> {
        let mut at = 0;
        while let Some(used) = self.parse_one(&data[at..], out)? {
            at += used;
        }
        Ok(at)
    }

    /// Parses one frame at the start of `buf`: `None` until it is complete.
    fn parse_one(&mut self, buf: &[u8], out: &mut Vec<Event>) -> Result<Option<usize>, FrameError> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set without an extension"));
        }
        let opcode = b0 & 0x0f;
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let control = opcode & 0x08 != 0;
        if !matches!(opcode, OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
            return Err(FrameError::Protocol("unknown opcode"));
        }
        if opcode == OP_BINARY {
            return Err(FrameError::Binary);
        }
        let (len, len_end) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => (u64::from_be_bytes(b.try_into().unwrap_or([0xff; 8])), 10),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if control {
            if !fin {
                return Err(FrameError::Protocol("fragmented control frame"));
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(FrameError::Protocol("control frame longer than 125 bytes"));
            }
        } else {
            let so_far = if opcode == OP_CONTINUATION { self.message.len() as u64 } else { 0 };
            if so_far.saturating_add(len) > self.max_message as u64 {
                return Err(FrameError::TooBig(self.max_message));
            }
        }
        // Bounded by the checks above.
        let len = len as usize;
        let start = len_end + 4;
        let Some(masked) = buf.get(start..start + len) else { return Ok(None) };
        let mask = [buf[len_end], buf[len_end + 1], buf[len_end + 2], buf[len_end + 3]];
        let payload = || unmask(masked, mask);
        match opcode {
            OP_TEXT => {
                if self.in_message {
                    return Err(FrameError::Protocol("a new message began before the last one ended"));
                }
                if fin {
                    out.push(Event::Text(String::from_utf8(payload()).map_err(|_| FrameError::InvalidUtf8)?));
                } else {
                    self.message = payload();
                    self.in_message = true;
                }
            }
            OP_CONTINUATION => {
                if !self.in_message {
                    return Err(FrameError::Protocol("continuation frame outside a message"));
                }
                self.message.extend(masked.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
                if fin {
                    self.in_message = false;
                    let message = mem::take(&mut self.message);
                    out.push(Event::Text(String::from_utf8(message).map_err(|_| FrameError::InvalidUtf8)?));
                }
            }
            OP_CLOSE => out.push(Event::Close(close_code(&payload())?)),
            OP_PING => out.push(Event::Ping(payload())),
            _ => out.push(Event::Pong),
        }
        Ok(Some(start + len))
    }
}

fn unmask(masked: &[u8], mask: [u8; 4]) -> Vec<u8> {
    masked.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect()
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
}
