//! Validated newtypes for everything that identifies something on the wire.
//! A value of one of these types has passed its rules, so code that holds a
//! `UserName` never re-checks it. Raw client input is turned into them with
//! `parse`, which returns the precise [`ValidationError`].

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::limits::{
    CID_MAX_LEN, DEFAULT_ROOM, MESSAGE_MAX_CHARS, NAME_MAX_CHARS, RESUME_TOKEN_MAX_LEN, ROOM_MAX_CHARS,
};

/// Implements string serde for a validated newtype: serialize the inner
/// string, deserialize through `parse` so invalid values never get in.
///
/// `as_stored`: for values only servers send (clients send raw strings,
/// checked by `parse` on the server), deserialize what the server stored
/// under its rules of the time, refusing only an empty value. A rule
/// tightened later must not make a page unable to read older history.
macro_rules! string_newtype_serde {
    ($ty:ident, as_stored) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                match $ty::parse(&raw) {
                    Ok(valid) => Ok(valid),
                    Err(_) if !raw.trim().is_empty() => Ok($ty::from_stored(raw)),
                    Err(e) => Err(serde::de::Error::custom(e)),
                }
            }
        }

        string_newtype_serde!($ty, common);
    };
    ($ty:ident) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                $ty::parse(&raw).map_err(serde::de::Error::custom)
            }
        }

        string_newtype_serde!($ty, common);
    };
    ($ty:ident, common) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $ty {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// A room name: 1–32 characters of `[a-z0-9-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

impl RoomName {
    /// Validates a room name exactly as given (no case folding: `Lobby` is refused,
    /// so two spellings can never name the same room).
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let ok = !raw.is_empty()
            && raw.len() <= ROOM_MAX_CHARS
            && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok { Ok(Self(raw.to_owned())) } else { Err(ValidationError::RoomInvalid) }
    }

    /// The room joined when none is named: [`DEFAULT_ROOM`].
    pub fn default_room() -> Self {
        Self(DEFAULT_ROOM.to_owned())
    }
}

impl Default for RoomName {
    fn default() -> Self {
        Self::default_room()
    }
}

string_newtype_serde!(RoomName);

/// A user's display name: trimmed, 1–24 characters, no control, invisible or
/// text-direction characters. Never compare the display form: two names are
/// the same person when their [`UserName::key`] is equal (the server's rooms
/// also fold composition and look-alike letters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserName(String);

/// Characters a name may not hold, as sorted inclusive ranges: every
/// Default_Ignorable_Code_Point of Unicode's DerivedCoreProperties (zero-width
/// characters, fillers, variation selectors, tags, invisible operators; all
/// bidi controls are among them), plus U+2800 BRAILLE PATTERN BLANK and the
/// interlinear annotation marks U+FFF9–FFFB, which show blank or hide text. Any
/// of them lets two names look the same or a name reorder its neighbours.
/// One range to a `u32` ([`range`]): the page's wasm carries this table, and
/// packed it costs less there than a `match` or a table of pairs (measured).
const NAME_REFUSED: [u32; 18] = [
    range(0x00AD, 0x00AD),
    range(0x034F, 0x034F),
    range(0x061C, 0x061C),
    range(0x115F, 0x1160),
    range(0x17B4, 0x17B5),
    range(0x180B, 0x180F),
    range(0x200B, 0x200F),
    range(0x202A, 0x202E),
    range(0x2060, 0x206F),
    range(0x2800, 0x2800),
    range(0x3164, 0x3164),
    range(0xFE00, 0xFE0F),
    range(0xFEFF, 0xFEFF),
    range(0xFFA0, 0xFFA0),
    range(0xFFF0, 0xFFFB),
    range(0x1BCA0, 0x1BCA3),
    range(0x1D173, 0x1D17A),
    range(0xE0000, 0xE0FFF),
];

/// `first..=last` as one number: `first` in the high 20 bits, `last - first`
/// in the low 12 (checked when the table is compiled).
const fn range(first: u32, last: u32) -> u32 {
    assert!(first <= 0xF_FFFF && first <= last && last - first <= 0xFFF);
    first << 12 | (last - first)
}

/// Whether `c` renders as nothing or steers the direction of text. A plain
/// scan: 18 ranges, names of at most 24 characters.
fn is_invisible(c: char) -> bool {
    NAME_REFUSED.iter().any(|&r| (c as u32).wrapping_sub(r >> 12) <= r & 0xFFF)
}

impl UserName {
    /// Trims surrounding whitespace, then checks length and characters.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(ValidationError::NameEmpty);
        }
        if name.chars().any(|c| c.is_control() || is_invisible(c)) {
            return Err(ValidationError::NameInvalidChar);
        }
        if name.chars().count() > NAME_MAX_CHARS {
            return Err(ValidationError::NameTooLong);
        }
        Ok(Self(name.to_owned()))
    }

    /// The case-insensitive identity of the name: what re-sent messages are
    /// deduplicated by, and what the page matches names by. (A room's
    /// uniqueness check folds more, on the server.)
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }

    /// A name read back from the server's own storage, taken as stored and
    /// not checked again: it passed the rules of its day, and a rule
    /// tightened since must not make old history unreadable. Never for
    /// input from a client; that goes through [`UserName::parse`].
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }
}

string_newtype_serde!(UserName, as_stored);

/// The text of a chat message: 1–2000 characters with at least one that is
/// not whitespace; no control characters except newline, carriage return and tab.
/// Stored and delivered exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    /// Checks a message as typed by the user.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.trim().is_empty() {
            return Err(ValidationError::MessageEmpty);
        }
        if raw.chars().count() > MESSAGE_MAX_CHARS {
            return Err(ValidationError::MessageTooLong);
        }
        if raw.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
            return Err(ValidationError::MessageInvalidChar);
        }
        Ok(Self(raw.to_owned()))
    }

    /// A text read back from the server's own storage, not checked again
    /// (see [`UserName::from_stored`]). Never for input from a client.
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }
}

string_newtype_serde!(MessageText, as_stored);

/// True when `raw` is 1..=`max` bytes of `[A-Za-z0-9_-]`.
fn is_token(raw: &str, max: usize) -> bool {
    !raw.is_empty() && raw.len() <= max && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A client-chosen message id (`cid`), unique per browser; the server
/// deduplicates re-sent messages by (user name, cid).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    /// Checks an id: 1–64 characters of `[A-Za-z0-9_-]`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if is_token(raw, CID_MAX_LEN) { Ok(Self(raw.to_owned())) } else { Err(ValidationError::CidInvalid) }
    }

    /// An id read back from the server's own storage, not checked again
    /// (see [`UserName::from_stored`]). Never for input from a client.
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }
}

string_newtype_serde!(ClientMsgId, as_stored);

/// The secret a browser presents to take its session back after a dropped
/// connection. Generated by the server; opaque to clients.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ResumeToken(String);

impl ResumeToken {
    /// Accepts a token of the server's format (1–64 characters of
    /// `[A-Za-z0-9_-]`). Whether it is *valid* only the server knows.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if is_token(raw, RESUME_TOKEN_MAX_LEN) { Ok(Self(raw.to_owned())) } else { Err(ValidationError::CidInvalid) }
    }
}

/// Never print a secret into logs.
impl std::fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeToken(..)")
    }
}

impl Serialize for ResumeToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ResumeToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        ResumeToken::parse(&raw).map_err(|_| serde::de::Error::custom("malformed resume token"))
    }
}

impl ResumeToken {
    /// The token text, to store in the browser and send back in `hello`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A per-room event sequence number: strictly increasing, never reused.
/// `Seq(0)` means "before the first event".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The seq after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A server timestamp: milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_rules() {
        for ok in ["lobby", "a", "room-2", "0", "-", &"x".repeat(ROOM_MAX_CHARS)] {
            assert!(RoomName::parse(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in
            ["", "Lobby", "my room", "room_1", "café", "ｌobby", " lobby", "lobby\n", &"x".repeat(ROOM_MAX_CHARS + 1)]
        {
            assert_eq!(RoomName::parse(bad), Err(ValidationError::RoomInvalid), "{bad:?} should be refused");
        }
        assert_eq!(RoomName::default().as_str(), "lobby");
    }

    #[test]
    fn names_are_trimmed_and_counted_in_characters() {
        assert_eq!(UserName::parse("  Ada ").map(|n| n.to_string()), Ok("Ada".into()));
        // 24 four-byte characters: 96 bytes, still within the limit.
        let emoji = "😀".repeat(NAME_MAX_CHARS);
        assert_eq!(UserName::parse(&emoji).map(|n| n.to_string()), Ok(emoji.clone()));
        assert_eq!(UserName::parse(&format!("{emoji}😀")), Err(ValidationError::NameTooLong));
        // Combining sequences count per scalar value: e + U+0301 is two.
        let combining = "e\u{301}".repeat(12);
        assert!(UserName::parse(&combining).is_ok());
        assert_eq!(UserName::parse(&format!("{combining}e")), Err(ValidationError::NameTooLong));
        // Whitespace around a long name does not count.
        let padded = format!("   {}   ", "n".repeat(NAME_MAX_CHARS));
        assert!(UserName::parse(&padded).is_ok());
    }

    #[test]
    fn empty_and_invisible_names_are_refused() {
        for empty in ["", " ", "\t\n", "\u{3000}"] {
            assert_eq!(UserName::parse(empty), Err(ValidationError::NameEmpty), "{empty:?}");
        }
        for bad in
            ["a\u{0}b", "bell\u{7}", "new\nline", "zero\u{200B}width", "\u{202E}evil", "del\u{7f}", "bom\u{feff}x"]
        {
            assert_eq!(UserName::parse(bad), Err(ValidationError::NameInvalidChar), "{bad:?}");
        }
        // Inner spaces and non-Latin scripts are fine.
        assert!(UserName::parse("Grace Hopper").is_ok());
        assert!(UserName::parse("Ирина").is_ok());
        assert!(UserName::parse("李小龍").is_ok());
    }

    #[test]
    fn names_refuse_every_default_ignorable_bidi_control_and_blank() {
        let refused = [
            // Default_Ignorable_Code_Point (DerivedCoreProperties), both ends of each range.
            0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180E, 0x180F, 0x200B, 0x200F, 0x202A,
            0x202E, 0x2060, 0x2065, 0x206F, 0x3164, 0xFE00, 0xFE0F, 0xFEFF, 0xFFA0, 0xFFF0, 0xFFF8, 0x1BCA0, 0x1BCA3,
            0x1D173, 0x1D17A, 0xE0000, 0xE0001, 0xE0020, 0xE007F, 0xE0100, 0xE01EF, 0xE0FFF,
            // Bidi controls (all default-ignorable too): ALM, LRM, RLM, embeddings, overrides, isolates.
            0x061C, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069,
            // Blank-looking or hiding, though not default-ignorable.
            0x2800, 0xFFF9, 0xFFFB,
        ];
        for cp in refused {
            let c = char::from_u32(cp).expect("a scalar value");
            for name in [format!("Ada{c}"), format!("{c}Ada"), format!("A{c}da")] {
                assert_eq!(UserName::parse(&name), Err(ValidationError::NameInvalidChar), "U+{cp:04X}");
            }
        }
        // Their visible neighbours stay allowed.
        for cp in [0x00AC, 0x034E, 0x115E, 0x1161, 0x180A, 0x1810, 0x2801, 0x3165, 0xFE10, 0x1D172, 0x1D17B, 0xE1000] {
            let name = format!("Ada{}", char::from_u32(cp).expect("a scalar value"));
            assert!(UserName::parse(&name).is_ok(), "U+{cp:04X} is visible");
        }
        // Ranges sorted and apart, as the table says.
        assert!(NAME_REFUSED.windows(2).all(|w| (w[0] >> 12) + (w[0] & 0xFFF) < w[1] >> 12));
    }

    #[test]
    fn name_keys_compare_case_insensitively() {
        let a = UserName::parse("Ada").expect("valid");
        let b = UserName::parse("aDA").expect("valid");
        assert_eq!(a.key(), b.key());
        let c = UserName::parse("ÉMILE").expect("valid");
        let d = UserName::parse("émile").expect("valid");
        assert_eq!(c.key(), d.key());
        assert_ne!(a, b, "the display form keeps its case");
    }

    #[test]
    fn message_text_rules() {
        assert!(MessageText::parse("hi").is_ok());
        assert!(MessageText::parse("line one\nline two\r\n\tindented").is_ok());
        assert!(MessageText::parse("<img src=x onerror=alert(1)>").is_ok());
        assert_eq!(MessageText::parse(""), Err(ValidationError::MessageEmpty));
        assert_eq!(MessageText::parse(" \n\t "), Err(ValidationError::MessageEmpty));
        let max = "é".repeat(MESSAGE_MAX_CHARS);
        assert!(MessageText::parse(&max).is_ok(), "2000 two-byte chars fit");
        assert_eq!(MessageText::parse(&format!("{max}x")), Err(ValidationError::MessageTooLong));
        let astral = "𝄞".repeat(MESSAGE_MAX_CHARS);
        assert!(MessageText::parse(&astral).is_ok(), "8000 bytes, 2000 chars");
        assert_eq!(MessageText::parse("a\u{0}b"), Err(ValidationError::MessageInvalidChar));
        assert_eq!(MessageText::parse("esc\u{1b}[31m"), Err(ValidationError::MessageInvalidChar));
        // Surrounding whitespace is kept verbatim.
        assert_eq!(MessageText::parse("  hi  ").map(|t| t.to_string()), Ok("  hi  ".into()));
    }

    #[test]
    fn client_message_ids() {
        assert!(ClientMsgId::parse("c-1_A").is_ok());
        assert!(ClientMsgId::parse(&"a".repeat(CID_MAX_LEN)).is_ok());
        for bad in ["", "has space", "ü", "a.b", &"a".repeat(CID_MAX_LEN + 1)] {
            assert_eq!(ClientMsgId::parse(bad), Err(ValidationError::CidInvalid), "{bad:?}");
        }
    }

    #[test]
    fn stored_values_are_taken_as_stored() {
        // What today's rules refuse may have been stored under older ones.
        let zwj = "Zero\u{200D}Width";
        assert!(UserName::parse(zwj).is_err());
        let name = UserName::from_stored(zwj.to_owned());
        assert_eq!((name.as_str(), name.key().as_str()), (zwj, "zero\u{200d}width"));
        let long = "n".repeat(NAME_MAX_CHARS * 4);
        assert_eq!(UserName::from_stored(long.clone()).as_str(), long);
        let text = "x".repeat(MESSAGE_MAX_CHARS + 1);
        assert_eq!(MessageText::from_stored(text.clone()).as_str(), text);
        assert_eq!(ClientMsgId::from_stored("not a cid!".into()).as_str(), "not a cid!");
        // Serialized as stored, and a page reads them back as stored (only
        // `parse`, for what clients send, refuses them).
        let json = serde_json::to_string(&UserName::from_stored(zwj.to_owned())).expect("json");
        assert_eq!(serde_json::from_str::<UserName>(&json).expect("read as stored").as_str(), zwj);
    }

    #[test]
    fn resume_tokens_never_print() {
        let t = ResumeToken::parse("secret123").expect("valid");
        assert_eq!(format!("{t:?}"), "ResumeToken(..)");
        assert!(ResumeToken::parse("no spaces").is_err());
    }

    #[test]
    fn validated_types_refuse_invalid_json() {
        assert!(serde_json::from_str::<RoomName>("\"Lobby\"").is_err());
        assert!(serde_json::from_str::<UserName>("\"\"").is_err());
        let name: UserName = serde_json::from_str("\" Ada \"").expect("valid");
        assert_eq!(name.as_str(), "Ada");
        assert_eq!(serde_json::to_string(&Seq(7)).expect("json"), "7");
    }
}
