//! The client-message parser (`serde_json` into `ClientMsg`, as the server's
//! request handler does) and the validating constructors of `natter-shared`
//! under arbitrary text. Besides not panicking, each input checks:
//!
//! * every text gets an answer: a message, or an error that can be shown;
//! * a message that parses encodes to JSON that parses back to it;
//! * what a constructor accepts keeps its rule (length, characters), and
//!   parses again to the same value; what it refuses has an error code.

use natter_shared::limits::{CID_MAX_LEN, MESSAGE_MAX_CHARS, NAME_MAX_CHARS, ROOM_MAX_CHARS};
use natter_shared::{ClientMsg, ClientMsgId, MessageText, ResumeToken, RoomName, UserName, ValidationError};

/// Checks one input (see the module's doc).
pub fn check(data: &[u8]) {
    // The decoder hands the parser only valid UTF-8; other bytes still
    // exercise the validators through a lossy conversion.
    let text = String::from_utf8_lossy(data);
    match serde_json::from_str::<ClientMsg>(&text) {
        Ok(msg) => {
            let json = serde_json::to_string(&msg).expect("a parsed message encodes");
            let again: ClientMsg = serde_json::from_str(&json).expect("an encoded message parses");
            assert_eq!(again, msg, "{json} does not round-trip");
            fields(&msg);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    validators(&text);
}

/// The validators the server runs on each field of a parsed message.
fn fields(msg: &ClientMsg) {
    match msg {
        ClientMsg::Hello(hello) => {
            name(&hello.name);
            if let Some(raw) = &hello.room {
                room(raw);
            }
            if let Some(raw) = &hello.resume_token {
                token(raw);
            }
        }
        ClientMsg::Say(say) => {
            cid(&say.cid);
            message(&say.text);
        }
        // A members cursor is only compared (lower-cased) with names, never validated.
        ClientMsg::Members(request) => {
            if let Some(after) = &request.after {
                std::hint::black_box(after.to_lowercase());
            }
        }
        ClientMsg::Typing(_) | ClientMsg::History(_) | ClientMsg::Ping => {}
    }
}

/// Every validator on the raw text.
fn validators(raw: &str) {
    name(raw);
    room(raw);
    message(raw);
    cid(raw);
    token(raw);
}

fn refused(e: &ValidationError) {
    assert!(!e.code().as_str().is_empty() && !e.to_string().is_empty());
}

fn name(raw: &str) {
    match UserName::parse(raw) {
        Ok(name) => {
            let s = name.as_str();
            assert_eq!(s, raw.trim(), "a name is the trimmed input");
            assert!((1..=NAME_MAX_CHARS).contains(&s.chars().count()), "name {s:?}");
            assert!(!s.chars().any(char::is_control), "name {s:?} has a control character");
            assert_eq!(UserName::parse(s).as_ref(), Ok(&name), "a name parses again to itself");
        }
        Err(e) => refused(&e),
    }
}

fn room(raw: &str) {
    match RoomName::parse(raw) {
        Ok(room) => {
            assert!((1..=ROOM_MAX_CHARS).contains(&raw.len()), "room {raw:?}");
            assert!(raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "room {raw:?}");
            assert_eq!(room.as_str(), raw);
        }
        Err(e) => refused(&e),
    }
}

fn message(raw: &str) {
    match MessageText::parse(raw) {
        Ok(text) => {
            assert_eq!(text.as_str(), raw, "a message is kept exactly as sent");
            assert!((1..=MESSAGE_MAX_CHARS).contains(&raw.chars().count()), "message of {} chars", raw.chars().count());
            assert!(!raw.trim().is_empty(), "a blank message passed");
        }
        Err(e) => refused(&e),
    }
}

fn is_token(raw: &str) -> bool {
    raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn cid(raw: &str) {
    match ClientMsgId::parse(raw) {
        Ok(cid) => {
            assert!((1..=CID_MAX_LEN).contains(&raw.len()) && is_token(raw), "cid {raw:?}");
            assert_eq!(cid.as_str(), raw);
        }
        Err(e) => refused(&e),
    }
}

fn token(raw: &str) {
    match ResumeToken::parse(raw) {
        Ok(_) => assert!(!raw.is_empty() && is_token(raw), "resume token {raw:?}"),
        Err(e) => refused(&e),
    }
}
