//! Names across instances (issue 15, stage 3): which instance holds each
//! name of a room, claimed atomically in Redis, so that a name is unique in
//! its room across every instance and a browser's resume token takes its
//! name over on whichever instance it reaches.
//!
//! A claim is a field of the room's names hash ([`RoomKeys::names`]):
//! `<instance> <member id> <sha1 of the member's current token>`, with its
//! glyph key in a second hash so look-alikes are refused across instances
//! too. Tokens are random, so their hashes are kept instead of the tokens.
//! Each instance keeps a liveness key with a TTL ([`keys::instance`],
//! renewed by [`keep_alive`]); a claim whose instance's key is gone (it
//! died, or stalled past its TTL) may be taken by anyone.

use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use ::redis::{Script, Value};
use natter_shared::RoomName;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::scripts::BadReply;
use super::{Failure, RedisStore, RoomKeys, keys, within};
use crate::store::{Claimed, MemberId, NameClaim};

/// Claims a name. KEYS: names, glyphs. ARGV: key, glyph, this instance,
/// member id, the member's token, the presented token (empty: none), an
/// instance known dead (empty: none). Replies `{'free'|'here'|'moved'|'taken', holder}`.
pub const CLAIM_LUA: &str = r#"
local names, glyphs = KEYS[1], KEYS[2]
local key, glyph, me, member, token, presented, dead =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local function claim()
  redis.call('HSET', names, key, me .. ' ' .. member .. ' ' .. redis.sha1hex(token))
  redis.call('HSET', glyphs, glyph, key)
end
local held = redis.call('HGET', names, key)
if held then
  local who, _, hash = string.match(held, '^(%S+) (%S+) (%S+)$')
  if who == me then return {'here', who} end
  if presented ~= '' and redis.sha1hex(presented) == hash then
    claim()
    return {'moved', who}
  end
  if who ~= dead then return {'taken', who} end
  redis.call('HDEL', names, key)
end
local other = redis.call('HGET', glyphs, glyph)
if other and other ~= key then
  local looks = redis.call('HGET', names, other)
  if looks then
    local who = string.match(looks, '^(%S+)')
    if who == me then return {'here', who} end
    if who ~= dead then return {'taken', who} end
    redis.call('HDEL', names, other)
  end
end
claim()
return {'free', ''}
"#;

/// Records this instance's member and token under a name it holds (or
/// nobody does). KEYS: names, glyphs. ARGV: key, glyph, this instance,
/// member id, token. Replies 1, or 0 if another instance holds it.
pub const CONFIRM_LUA: &str = r#"
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and string.match(held, '^(%S+)') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. redis.sha1hex(ARGV[5]))
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 1
"#;

/// Gives a name back. KEYS: names, glyphs. ARGV: key, glyph, this
/// instance, member id. Replies 1 (given back), 2 (nobody held it: Redis
/// lost it) or 0 (another membership holds it: the member moved).
pub const RELEASE_LUA: &str = r#"
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then return 2 end
local who, member = string.match(held, '^(%S+) (%S+) ')
if who ~= ARGV[3] or member ~= ARGV[4] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
return 1
"#;

pub static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_LUA));
pub static CONFIRM: LazyLock<Script> = LazyLock::new(|| Script::new(CONFIRM_LUA));
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// The scripts of this module, to load at start.
pub fn scripts() -> [&'static Script; 3] {
    [&CLAIM, &CONFIRM, &RELEASE]
}

/// What `CLAIM` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimReply {
    Free,
    Here,
    Moved,
    /// Held by the instance named.
    Taken(String),
}

/// Reads `CLAIM`'s reply.
pub fn parse_claim(value: &Value) -> Result<ClaimReply, BadReply> {
    let bad = || BadReply(format!("claim: {value:?}"));
    let Value::Array(parts) = value else { return Err(bad()) };
    let text = |i: usize| match parts.get(i) {
        Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).ok(),
        Some(Value::SimpleString(s)) => Some(s.as_str()),
        _ => None,
    };
    match (text(0), text(1)) {
        (Some("free"), _) => Ok(ClaimReply::Free),
        (Some("here"), _) => Ok(ClaimReply::Here),
        (Some("moved"), _) => Ok(ClaimReply::Moved),
        (Some("taken"), Some(holder)) if !holder.is_empty() => Ok(ClaimReply::Taken(holder.to_owned())),
        _ => Err(bad()),
    }
}

impl RedisStore {
    /// Claims `claim`'s name in `room`; a name held by an instance that
    /// is no longer alive is taken over (a second call, naming it dead).
    pub(crate) async fn claim(&self, room: &RoomName, claim: &NameClaim) -> Result<Claimed, Failure> {
        let holder = match self.run_claim(room, claim, "").await? {
            ClaimReply::Free => return Ok(Claimed::Free),
            ClaimReply::Here => return Ok(Claimed::Here),
            ClaimReply::Moved => return Ok(Claimed::Moved),
            ClaimReply::Taken(holder) => holder,
        };
        let mut conn = self.conn();
        let alive: bool =
            within(self.timeout(), ::redis::cmd("EXISTS").arg(keys::instance(&holder)).query_async(&mut conn)).await?;
        if alive {
            return Ok(Claimed::Taken);
        }
        info!(room = %room, instance = %holder, "a name held by an instance that is gone is taken over");
        Ok(match self.run_claim(room, claim, &holder).await? {
            ClaimReply::Free => Claimed::Free,
            ClaimReply::Here => Claimed::Here,
            ClaimReply::Moved => Claimed::Moved,
            ClaimReply::Taken(_) => Claimed::Taken,
        })
    }

    async fn run_claim(&self, room: &RoomName, claim: &NameClaim, dead: &str) -> Result<ClaimReply, Failure> {
        let keys = RoomKeys::of(room);
        let mut invocation = CLAIM.key(&keys.names);
        invocation
            .key(&keys.glyphs)
            .arg(&claim.key)
            .arg(&claim.glyph)
            .arg(self.instance())
            .arg(claim.member)
            .arg(claim.token.as_str())
            .arg(claim.presented.as_ref().map_or("", |t| t.as_str()))
            .arg(dead);
        let mut conn = self.conn();
        let reply: Value = within(self.timeout(), invocation.invoke_async(&mut conn)).await?;
        Ok(parse_claim(&reply)?)
    }

    /// See [`crate::store::HistoryStore::confirm_name`].
    pub(crate) async fn confirm(
        &self,
        room: &RoomName,
        key: &str,
        glyph: &str,
        member: MemberId,
        token: &str,
    ) -> Result<bool, Failure> {
        let keys = RoomKeys::of(room);
        let mut invocation = CONFIRM.key(&keys.names);
        invocation.key(&keys.glyphs).arg(key).arg(glyph).arg(self.instance()).arg(member).arg(token);
        let mut conn = self.conn();
        let done: i64 = within(self.timeout(), invocation.invoke_async(&mut conn)).await?;
        Ok(done == 1)
    }

    /// See [`crate::store::HistoryStore::release_name`].
    pub(crate) async fn release(
        &self,
        room: &RoomName,
        key: &str,
        glyph: &str,
        member: MemberId,
    ) -> Result<bool, Failure> {
        let keys = RoomKeys::of(room);
        let mut invocation = RELEASE.key(&keys.names);
        invocation.key(&keys.glyphs).arg(key).arg(glyph).arg(self.instance()).arg(member);
        let mut conn = self.conn();
        let released: i64 = within(self.timeout(), invocation.invoke_async(&mut conn)).await?;
        Ok(released != 0)
    }
}

/// Keeps `store`'s liveness key for `ttl` after each renewal, renewing it
/// every third of `ttl` until `stop` (the store stopped) or the store is
/// dropped. A renewal that finds the key gone (this instance stalled past
/// its TTL, or Redis lost it) is logged: other instances may have given
/// this instance's members' names to others meanwhile.
pub(crate) async fn keep_alive(store: Weak<RedisStore>, ttl: Duration, stop: CancellationToken) {
    let every = ttl / 3;
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let mut lapsed_logged = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let Some(store) = store.upgrade() else { return };
        match renew(&store, ttl_ms).await {
            Ok(true) => lapsed_logged = false,
            Ok(false) if !lapsed_logged => {
                lapsed_logged = true;
                warn!(
                    instance = %store.instance(),
                    "this instance's liveness key had expired: other instances may have given its members' names \
                     to others"
                );
            }
            Ok(false) => {}
            Err(e) => debug!(error = %e, "the liveness key was not renewed"),
        }
    }
}

/// Sets `store`'s liveness key for `ttl_ms`; `false` if it had expired.
pub(crate) async fn renew(store: &Arc<RedisStore>, ttl_ms: u64) -> Result<bool, Failure> {
    let mut cmd = ::redis::cmd("SET");
    cmd.arg(keys::instance(store.instance())).arg(super::now_ms().0).arg("PX").arg(ttl_ms).arg("GET");
    let mut conn = store.conn();
    let previous: Option<String> = within(store.timeout(), cmd.query_async(&mut conn)).await?;
    Ok(previous.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn claim_replies_name_who_holds_the_name() {
        let reply = |a: &str, b: &str| parse_claim(&Value::Array(vec![bulk(a), bulk(b)]));
        assert_eq!(reply("free", ""), Ok(ClaimReply::Free));
        assert_eq!(reply("here", "i1"), Ok(ClaimReply::Here));
        assert_eq!(reply("moved", "i2"), Ok(ClaimReply::Moved));
        assert_eq!(reply("taken", "i3"), Ok(ClaimReply::Taken("i3".into())));
        assert!(reply("taken", "").is_err(), "a taken name names its holder");
        assert!(reply("maybe", "i1").is_err());
        assert!(parse_claim(&Value::Int(1)).is_err());
    }
}
