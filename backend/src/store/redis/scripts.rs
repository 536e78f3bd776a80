//! The Lua scripts natter runs in Redis, the arguments they take and the
//! replies they give, as plain functions with unit tests.
//!
//! A script runs atomically: `BATCH` checks the room's history, dedupes,
//! takes seqs and appends in one step, so no seq is handed out twice and a
//! re-sent message never gets a second one. Every number that goes back
//! into Redis is formatted with `%d`: Lua's `tostring` writes large numbers
//! as `9.007199254741e+15`.

use std::sync::LazyLock;

use ::redis::{Script, Value};
use natter_shared::wire_name::from_name;
use natter_shared::{
    ChatMessage, ClientMsgId, Color, MessageText, Notice, NoticeKind, RoomEvent, Seq, Timestamp, UserName,
};

use crate::store::Draft;

/// Stores one room's drafts. KEYS: meta, stream, dedupe. ARGV: the epoch the
/// writer believes in, the count to keep (0: all), the channel, this
/// instance's id, the highest seq this instance reported (a Redis behind it
/// lost acknowledged writes), the age to keep in ms (0: all), how many old
/// entries to look at for age trimming, then per draft: dedupe key (empty:
/// none), kind (`m` or `n`), and the JSON after `"ts":<ts>` ([`draft_tail`]).
/// Replies `{'ok', {{stored 0|1, seq, ts}, ...}}` or `{'epoch', current}`
/// (current is empty when the room has no history at all).
pub const BATCH_LUA: &str = r#"
local meta, stream, dedupe = KEYS[1], KEYS[2], KEYS[3]
local function fmt(n) return string.format('%d', n) end
local epoch = redis.call('HGET', meta, 'epoch')
local head = tonumber(redis.call('HGET', meta, 'seq') or '0')
if epoch ~= ARGV[1] or (head > 0 and redis.call('EXISTS', stream) == 0) or head < tonumber(ARGV[5]) then
  return {'epoch', epoch or ''}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ts = math.max(tonumber(redis.call('HGET', meta, 'ts') or '0'), now)
local open = { m = '{"type":"message","seq":', n = '{"type":"notice","seq":' }
local maxlen, max_age = tonumber(ARGV[2]), tonumber(ARGV[6])
local out, events, first = {}, {}, head + 1
for i = 8, #ARGV, 3 do
  local key = ARGV[i]
  local dup = false
  if key ~= '' then dup = redis.call('ZSCORE', dedupe, key) end
  if dup then
    local e = redis.call('XRANGE', stream, dup, dup)
    local dts = 0
    if e[1] then dts = tonumber(e[1][2][4]) or 0 end
    out[#out + 1] = {0, tonumber(dup), dts}
  else
    head = head + 1
    local json = open[ARGV[i + 1]] .. fmt(head) .. ',"ts":' .. fmt(ts) .. ARGV[i + 2]
    if maxlen > 0 then
      redis.call('XADD', stream, 'MAXLEN', fmt(maxlen), fmt(head) .. '-0', 'e', json, 't', fmt(ts))
    else
      redis.call('XADD', stream, fmt(head) .. '-0', 'e', json, 't', fmt(ts))
    end
    if key ~= '' then redis.call('ZADD', dedupe, fmt(head), key) end
    out[#out + 1] = {1, head, ts}
    events[#events + 1] = json
  end
end
if #events > 0 then
  redis.call('HSET', meta, 'seq', fmt(head), 'ts', fmt(ts))
  if max_age > 0 then
    local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', ARGV[7])
    local keep = false
    for _, entry in ipairs(old) do
      if tonumber(entry[2][4]) >= ts - max_age then keep = entry[1]; break end
    end
    if not keep and #old > 0 then keep = fmt(tonumber(string.match(old[#old][1], '^%d+')) + 1) end
    if keep then redis.call('XTRIM', stream, 'MINID', keep) end
  end
  if maxlen > 0 or max_age > 0 then
    local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
    if oldest then
      redis.call('ZREMRANGEBYSCORE', dedupe, '-inf', '(' .. string.match(oldest[1], '^%d+'))
    end
  end
  redis.call('SPUBLISH', ARGV[3], 'e ' .. ARGV[1] .. ' ' .. fmt(first) .. ' ' .. ARGV[4] .. '\n'
                                   .. table.concat(events, '\n'))
end
return {'ok', out}
"#;

/// Opens a room's history, starting a new one (a new epoch) if there is
/// none or the stream under a head was lost. KEYS: meta, stream, dedupe.
/// ARGV: a new epoch to use if needed, how many latest events to return,
/// `1` to replace the history if its epoch is ARGV[4] (a Redis behind what
/// this instance saw), the epoch the caller knows (the latest events come
/// back only when the epoch is another). Replies `{epoch, head, latest}`
/// with latest newest first, as `XREVRANGE` gives them.
pub const OPEN_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local head = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local lost = epoch and head > 0 and redis.call('EXISTS', KEYS[2]) == 0
if not epoch or lost or (ARGV[3] == '1' and epoch == ARGV[4]) then
  epoch = ARGV[1]
  head = 0
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', '0')
end
local latest = {}
if epoch ~= ARGV[5] and tonumber(ARGV[2]) > 0 then
  latest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])
end
return {epoch, string.format('%d', head), latest}
"#;

pub static BATCH: LazyLock<Script> = LazyLock::new(|| Script::new(BATCH_LUA));
pub static OPEN: LazyLock<Script> = LazyLock::new(|| Script::new(OPEN_LUA));

/// Every script, to load at start.
pub fn all() -> [&'static Script; 2] {
    [&BATCH, &OPEN]
}

/// What `BATCH` answered for one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchReply {
    /// Per draft, in order: stored now (`true`) or found already stored, its seq and time.
    Ok(Vec<(bool, Seq, Timestamp)>),
    /// The room's history is not the one the writer believed in: this is
    /// its epoch now (empty: none at all).
    Epoch(String),
}

/// What `OPEN` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub epoch: String,
    pub head: Seq,
    /// Oldest first.
    pub latest: Vec<RoomEvent>,
}

/// A reply that is not what the script returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub struct BadReply(pub String);

fn bad(what: &str, value: &Value) -> BadReply {
    BadReply(format!("{what}: {value:?}"))
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn whole(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// Reads `BATCH`'s reply.
pub fn parse_batch(value: &Value) -> Result<BatchReply, BadReply> {
    let Value::Array(parts) = value else { return Err(bad("batch", value)) };
    match (parts.first().and_then(text), parts.get(1)) {
        (Some("ok"), Some(Value::Array(rows))) => rows
            .iter()
            .map(|row| match row {
                Value::Array(f) if f.len() == 3 => match (whole(&f[0]), whole(&f[1]), whole(&f[2])) {
                    (Some(stored), Some(seq), Some(ts)) => Ok((stored == 1, Seq(seq), Timestamp(ts))),
                    _ => Err(bad("batch row", row)),
                },
                _ => Err(bad("batch row", row)),
            })
            .collect::<Result<_, _>>()
            .map(BatchReply::Ok),
        // An empty table comes back as an empty array (or nil in RESP2).
        (Some("ok"), Some(Value::Nil)) | (Some("ok"), None) => Ok(BatchReply::Ok(Vec::new())),
        (Some("epoch"), Some(epoch)) => {
            text(epoch).map(|e| BatchReply::Epoch(e.to_owned())).ok_or_else(|| bad("epoch", epoch))
        }
        _ => Err(bad("batch", value)),
    }
}

/// Reads `OPEN`'s reply.
pub fn parse_open(value: &Value) -> Result<Opened, BadReply> {
    let Value::Array(parts) = value else { return Err(bad("open", value)) };
    let epoch = parts.first().and_then(text).ok_or_else(|| bad("open epoch", value))?;
    let head = parts.get(1).and_then(whole).ok_or_else(|| bad("open head", value))?;
    let mut latest = match parts.get(2) {
        Some(entries) => parse_entries(entries)?,
        None => Vec::new(),
    };
    latest.reverse();
    Ok(Opened { epoch: epoch.to_owned(), head: Seq(head), latest })
}

/// Reads stream entries (`XRANGE`/`XREVRANGE`) as events, in the order
/// given. An entry whose event cannot be read is skipped with a warning,
/// as SQLite's unreadable rows are.
pub fn parse_entries(value: &Value) -> Result<Vec<RoomEvent>, BadReply> {
    let entries = match value {
        Value::Array(entries) => entries,
        Value::Nil => return Ok(Vec::new()),
        other => return Err(bad("stream entries", other)),
    };
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else { return Err(bad("stream entry", entry)) };
        let (Some(id), Some(Value::Array(fields))) = (parts.first().and_then(text), parts.get(1)) else {
            return Err(bad("stream entry", entry));
        };
        let json = fields.chunks(2).find(|pair| pair.first().and_then(text) == Some("e")).and_then(|pair| pair.get(1));
        match json.and_then(text).and_then(event_from_json) {
            Some(event) => events.push(event),
            None => tracing::warn!(id, "a stored event cannot be read; it is skipped"),
        }
    }
    Ok(events)
}

/// An event's JSON as stored: every field a raw string, read back as it
/// was stored (names, texts and ids are not validated again, so a rule
/// tightened later never makes an old room unreadable).
#[derive(serde::Deserialize)]
struct StoredEvent {
    #[serde(rename = "type")]
    event_type: String,
    seq: u64,
    ts: u64,
    name: String,
    color: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    cid: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// The event stored as `json`, or `None` if it cannot be one.
pub fn event_from_json(json: &str) -> Option<RoomEvent> {
    let e: StoredEvent = serde_json::from_str(json).ok()?;
    let (seq, ts, name, color) = (Seq(e.seq), Timestamp(e.ts), UserName::from_stored(e.name), Color(e.color));
    match e.event_type.as_str() {
        MESSAGE_TYPE => {
            let text = MessageText::from_stored(e.text?);
            let cid = e.cid.map(ClientMsgId::from_stored);
            Some(RoomEvent::Message(ChatMessage { seq, ts, name, color, text, cid }))
        }
        NOTICE_TYPE => {
            let kind = from_name::<NoticeKind>(&e.kind?)?;
            Some(RoomEvent::Notice(Notice { seq, ts, kind, name, color }))
        }
        _ => None,
    }
}

const MESSAGE_TYPE: &str = "message";
const NOTICE_TYPE: &str = "notice";
/// How serde starts a message's JSON with seq and ts 0; `BATCH` writes the
/// same with the real seq and ts (`open.m`), then the draft's tail.
const MESSAGE_HEAD: &str = r#"{"type":"message","seq":0,"ts":0"#;
const NOTICE_HEAD: &str = r#"{"type":"notice","seq":0,"ts":0"#;

/// A draft as `BATCH` takes it: its kind (`m`, `n`) and the JSON of its
/// event after `"ts":<ts>`, so that the script, which alone knows the seq
/// and the time, builds the whole event without parsing JSON.
pub fn draft_tail(draft: &Draft) -> Result<(&'static str, String), BadReply> {
    let event = draft.clone().into_event(Seq(0), Timestamp(0));
    let (kind, head) = match event {
        RoomEvent::Message(_) => ("m", MESSAGE_HEAD),
        RoomEvent::Notice(_) => ("n", NOTICE_HEAD),
    };
    let json = serde_json::to_string(&event).map_err(|e| BadReply(format!("an event that cannot be JSON: {e}")))?;
    json.strip_prefix(head)
        .map(|tail| (kind, tail.to_owned()))
        .ok_or_else(|| BadReply(format!("an event's JSON starts unexpectedly: {json}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::outbound::channel;

    /// What `BATCH` does with a tail (`open[kind] .. seq .. ',"ts":' .. ts .. tail`).
    fn as_lua_builds_it(kind: &str, seq: u64, ts: u64, tail: &str) -> String {
        let open = if kind == "m" { r#"{"type":"message","seq":"# } else { r#"{"type":"notice","seq":"# };
        format!(r#"{open}{seq},"ts":{ts}{tail}"#)
    }

    fn drafts() -> Vec<Draft> {
        let (sender, _rx) = channel(1, 4);
        let name = UserName::parse("Zoë \"the\" 🦀").expect("valid");
        let color = natter_shared::color_for(&name);
        vec![
            Draft::Message {
                name: name.clone(),
                color: color.clone(),
                text: MessageText::parse("line one\nline \"two\" \\ </script>").expect("valid"),
                cid: ClientMsgId::parse("c-1").expect("valid"),
                resent_after: None,
                sender,
                member: 7,
            },
            Draft::Notice { kind: NoticeKind::TimedOut, name, color, once: None },
        ]
    }

    #[test]
    fn the_script_builds_exactly_serdes_json_of_each_event() {
        for draft in drafts() {
            let (kind, tail) = draft_tail(&draft).expect("a tail");
            let (seq, ts) = (9_007_199_254_740_991, 1_765_000_000_123);
            let built = as_lua_builds_it(kind, seq, ts, &tail);
            let event = draft.into_event(Seq(seq), Timestamp(ts));
            assert_eq!(built, serde_json::to_string(&event).expect("json"));
            assert!(!built.contains('\n'), "one event a line in the channel: serde escapes newlines");
            assert_eq!(event_from_json(&built), Some(event), "and it reads back");
        }
    }

    #[test]
    fn stored_events_are_read_back_without_todays_validation() {
        let json =
            r##"{"type":"message","seq":3,"ts":5,"name":"an old\u0007name","color":"#000000","text":"","cid":"x y"}"##;
        match event_from_json(json) {
            Some(RoomEvent::Message(m)) => {
                assert_eq!((m.seq, m.name.as_str(), m.text.as_str()), (Seq(3), "an old\u{7}name", ""));
            }
            other => panic!("expected a message, got {other:?}"),
        }
        assert_eq!(
            event_from_json(r##"{"type":"notice","seq":1,"ts":1,"name":"a","color":"#000000","kind":"waved"}"##),
            None
        );
        assert_eq!(
            event_from_json(r##"{"type":"message","seq":1,"ts":1,"name":"a","color":"#000000"}"##),
            None,
            "no text"
        );
        assert_eq!(event_from_json("not json"), None);
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn batch_replies_are_read_row_by_row() {
        let ok = Value::Array(vec![
            bulk("ok"),
            Value::Array(vec![
                Value::Array(vec![Value::Int(1), Value::Int(12), Value::Int(1_765_000_000_000)]),
                Value::Array(vec![Value::Int(0), Value::Int(4), Value::Int(1_764_000_000_000)]),
            ]),
        ]);
        assert_eq!(
            parse_batch(&ok),
            Ok(BatchReply::Ok(vec![
                (true, Seq(12), Timestamp(1_765_000_000_000)),
                (false, Seq(4), Timestamp(1_764_000_000_000)),
            ]))
        );
        assert_eq!(parse_batch(&Value::Array(vec![bulk("epoch"), bulk("ab12")])), Ok(BatchReply::Epoch("ab12".into())));
        assert_eq!(parse_batch(&Value::Array(vec![bulk("epoch"), bulk("")])), Ok(BatchReply::Epoch(String::new())));
        assert!(parse_batch(&Value::Array(vec![bulk("ok"), Value::Array(vec![Value::Int(1)])])).is_err());
        assert!(parse_batch(&Value::Int(1)).is_err());
        assert!(parse_batch(&Value::Array(vec![bulk("what")])).is_err());
    }

    #[test]
    fn open_replies_give_the_latest_oldest_first_and_skip_unreadable_entries() {
        let entry = |id: &str, json: &str| {
            Value::Array(vec![bulk(id), Value::Array(vec![bulk("e"), bulk(json), bulk("t"), bulk("5")])])
        };
        let notice = |seq: u64| {
            format!(r##"{{"type":"notice","seq":{seq},"ts":5,"kind":"joined","name":"Ada","color":"#000000"}}"##)
        };
        let reply = Value::Array(vec![
            bulk("e1"),
            bulk("3"),
            Value::Array(vec![entry("3-0", &notice(3)), entry("2-0", "{broken"), entry("1-0", &notice(1))]),
        ]);
        let opened = parse_open(&reply).expect("reads");
        assert_eq!((opened.epoch.as_str(), opened.head), ("e1", Seq(3)));
        assert_eq!(opened.latest.iter().map(|e| e.seq().0).collect::<Vec<_>>(), [1, 3]);
        let empty = Value::Array(vec![bulk("e2"), bulk("0"), Value::Array(vec![])]);
        assert_eq!(parse_open(&empty), Ok(Opened { epoch: "e2".into(), head: Seq(0), latest: Vec::new() }));
        assert!(parse_open(&Value::Array(vec![bulk("e2")])).is_err());
    }

    #[test]
    fn every_number_going_back_into_redis_is_formatted_as_a_whole_number() {
        // Lua's tostring() writes 2^53 as 9.007199254741e+15; every seq, time
        // and count the scripts hand to redis.call goes through fmt (%d).
        for lua in [BATCH_LUA, OPEN_LUA] {
            assert!(!lua.contains("tostring"), "{lua}");
        }
        assert!(BATCH_LUA.contains("for i = 8, #ARGV, 3 do"), "drafts start after the seven fixed arguments");
    }
}
