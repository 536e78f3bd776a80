//! The `welcome` message, assembled from JSON the room already holds.
//!
//! A join into a busy room sends the member list and the latest events. The
//! room keeps each member's JSON (made when they join) and each recent
//! event as encoded for its broadcast, so a welcome, fresh or
//! resuming from memory, is mostly copying: only the joiner's own fields
//! and a replay read from the store are serialized here. The output is byte
//! for byte serde's JSON of `ServerMsg::Welcome` (tests here and in
//! `room.rs` check it).

use std::io::Write;

use natter_shared::{Member, ResumeToken, RoomEvent, RoomName, Seq};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::ws::outbound::{Encoded, encode_json};

/// A member's JSON, made once when they join.
pub fn member_json(member: &Member) -> Box<str> {
    serde_json::to_string(member).unwrap_or_default().into_boxed_str()
}

/// A welcome's events: as encoded for their broadcasts and kept in memory,
/// or a replay read from the store.
#[derive(Debug)]
pub enum History<'a> {
    Encoded(Vec<&'a Encoded>),
    Events(Vec<RoomEvent>),
}

impl History<'_> {
    /// The bytes the encoded events take in the welcome (0 for events, which
    /// are serialized as they are written).
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Encoded(encoded) => encoded.iter().map(|e| e.len() + 1).sum(),
            Self::Events(_) => 0,
        }
    }
}

/// Everything a welcome holds, borrowed from the room.
#[derive(Debug)]
pub struct Parts<'a, M> {
    /// The joiner's own member JSON.
    pub you: &'a str,
    pub room: &'a RoomName,
    pub seq_head: Seq,
    /// The first page of members' JSON, in the page's order.
    pub members: M,
    /// How many members the room has.
    pub member_count: usize,
    pub history: History<'a>,
    pub resume_token: &'a ResumeToken,
    pub history_id: &'a str,
    pub missed: u64,
}

/// Writes the welcome.
pub fn encode<'a, M>(parts: Parts<'a, M>, size_hint: usize) -> Encoded
where
    M: Iterator<Item = &'a str>,
{
    let mut out = Vec::with_capacity(size_hint);
    match write(&mut out, parts) {
        Ok(()) => match String::from_utf8(out) {
            Ok(json) => Utf8Bytes::from(json),
            Err(_) => failed("not UTF-8"),
        },
        Err(e) => failed(&e.to_string()),
    }
}

fn write<'a, M>(out: &mut Vec<u8>, parts: Parts<'a, M>) -> std::io::Result<()>
where
    M: Iterator<Item = &'a str>,
{
    out.extend_from_slice(br#"{"type":"welcome","you":"#);
    out.extend_from_slice(parts.you.as_bytes());
    out.extend_from_slice(br#","room":"#);
    serde_json::to_writer(&mut *out, parts.room)?;
    write!(out, r#","seq_head":{},"members":["#, parts.seq_head.0)?;
    join(out, parts.members.map(str::as_bytes));
    write!(out, r#"],"member_count":{},"history":["#, parts.member_count)?;
    match parts.history {
        History::Encoded(encoded) => join(out, encoded.into_iter().map(|e| e.as_str().as_bytes())),
        History::Events(events) => {
            for (i, event) in events.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, event)?;
            }
        }
    }
    out.extend_from_slice(br#"],"resume_token":"#);
    serde_json::to_writer(&mut *out, parts.resume_token)?;
    out.extend_from_slice(br#","history_id":"#);
    serde_json::to_writer(&mut *out, parts.history_id)?;
    if parts.missed > 0 {
        write!(out, r#","missed":{}"#, parts.missed)?;
    }
    out.push(b'}');
    Ok(())
}

fn join<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a [u8]>) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
}

/// Our types always serialize; should one not, the joiner gets an error
/// rather than a broken welcome.
fn failed(why: &str) -> Encoded {
    tracing::error!(error = why, "failed to write a welcome");
    encode_json(&natter_shared::ServerMsg::error(natter_shared::ErrorCode::Internal, "server error"))
}

#[cfg(test)]
mod tests {
    use natter_shared::{
        ChatMessage, ClientMsgId, Color, MessageText, Notice, NoticeKind, ServerMsg, Timestamp, UserName, Welcome,
    };

    use super::*;
    use crate::ws::outbound::encode;

    fn member(name: &str) -> Member {
        Member { name: UserName::parse(name).expect("valid"), color: Color("#1e77d0".into()) }
    }

    fn events() -> Vec<RoomEvent> {
        vec![
            RoomEvent::Notice(Notice {
                seq: Seq(7),
                ts: Timestamp(70),
                kind: NoticeKind::TimedOut,
                name: UserName::parse("Bob").expect("valid"),
                color: Color("#e12b2b".into()),
            }),
            RoomEvent::Message(ChatMessage {
                seq: Seq(8),
                ts: Timestamp(80),
                name: UserName::parse("Zoë \"Z\"").expect("valid"),
                color: Color("#1e77d0".into()),
                text: MessageText::parse("a \\ b\nc </script>").expect("valid"),
                cid: Some(ClientMsgId::parse("c-1").expect("valid")),
            }),
        ]
    }

    /// The owned welcome, and the same one written from parts.
    fn both(members: &[Member], history: Vec<RoomEvent>, from_memory: bool, missed: u64) -> (String, String) {
        let room = RoomName::parse("dev-team").expect("valid");
        let token = ResumeToken::parse("tok_1").expect("valid");
        let owned = ServerMsg::Welcome(Welcome {
            you: members.first().cloned().unwrap_or_else(|| member("Ada")),
            room: room.clone(),
            seq_head: Seq(8),
            members: members.to_vec(),
            member_count: members.len() as u32,
            history: history.clone(),
            resume_token: token.clone(),
            history_id: "h\"1".into(),
            missed: (missed > 0).then_some(missed),
        });
        let you = member_json(&members.first().cloned().unwrap_or_else(|| member("Ada")));
        let member_jsons: Vec<Box<str>> = members.iter().map(member_json).collect();
        let encoded: Vec<Encoded> = history.iter().map(|e| encode(&e.clone().into())).collect();
        let history = if from_memory { History::Encoded(encoded.iter().collect()) } else { History::Events(history) };
        let parts = Parts {
            you: &you,
            room: &room,
            seq_head: Seq(8),
            members: member_jsons.iter().map(|m| &**m),
            member_count: members.len(),
            history,
            resume_token: &token,
            history_id: "h\"1",
            missed,
        };
        (encode(&owned).to_string(), super::encode(parts, 0).to_string())
    }

    #[test]
    fn written_welcomes_are_serdes_json_byte_for_byte() {
        let members = [member("Ada"), member("bob"), member("Zoë \"Z\"")];
        for from_memory in [false, true] {
            for missed in [0, 3] {
                let (owned, written) = both(&members, events(), from_memory, missed);
                assert_eq!(written, owned, "from memory {from_memory}, missed {missed}");
            }
        }
        let (owned, written) = both(&[], vec![], true, 0);
        assert_eq!(written, owned);
        assert!(written.contains(r#""members":[],"member_count":0,"history":[]"#), "{written}");
    }
}
