//! Names across instances (issue 15, stage 3): which instance holds each
//! name of a room, claimed atomically in Redis, so that a name is unique in
//! its room across every instance and a browser's resume token takes its
//! name over on whichever instance it reaches.
//!
//! A claim is a field of the room's names hash ([`RoomKeys::names`]):
//! `<instance> <member id> <sha1 of the member's current token> <name>`, with its
//! glyph key in a second hash so look-alikes are refused across instances
//! too. Tokens are random, so their hashes are kept instead of the tokens.
//! Each instance keeps a liveness key with a TTL ([`keys::instance`],
//! renewed by [`keep_alive`]); a claim whose instance's key is gone (it
//! died, or stalled past its TTL) may be taken by anyone.

use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use ::redis::{Script, Value};
use natter_shared::{RoomName, UserName};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::scripts::BadReply;
use super::{Failure, RedisStore, RoomKeys, keys, within};
use crate::store::{Claimed, Elsewhere, MemberId, NameClaim, Orphan};

/// Publishes a change of a room's members on its channel, numbered by the
/// room's member version (`mv` in its meta hash): `m <instance> <version>
/// +|- <name>`. Prepended to the scripts that change claims; KEYS[3] is the
/// meta hash.
const PUBLISH_MEMBER_LUA: &str = r#"
local function publish_member(channel, instance, change, name)
  local v = redis.call('HINCRBY', KEYS[3], 'mv', 1)
  redis.call('SPUBLISH', channel, 'm ' .. instance .. ' ' .. string.format('%d', v) .. ' ' .. change .. ' ' .. name)
end
"#;

/// Claims a name. KEYS: names, glyphs, meta. ARGV: key, glyph, this
/// instance, member id, the member's token, the presented token (empty:
/// none), an instance known dead (empty: none), the name as written, the
/// room's channel. Replies `{'free'|'here'|'moved'|'taken', holder}`; a
/// free or moved name is published as a member of this instance.
pub const CLAIM_LUA: &str = r#"
local names, glyphs = KEYS[1], KEYS[2]
local key, glyph, me, member, token, presented, dead, name, channel =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local function claim()
  redis.call('HSET', names, key, me .. ' ' .. member .. ' ' .. redis.sha1hex(token) .. ' ' .. name)
  redis.call('HSET', glyphs, glyph, key)
  publish_member(channel, me, '+', name)
end
local held = redis.call('HGET', names, key)
if held then
  local who, _, hash = string.match(held, '^(%S+) (%S+) (%S+)')
  if who == me then return {'here', who} end
  if presented ~= '' and redis.sha1hex(presented) == hash then
    claim()
    return {'moved', who}
  end
  if who ~= dead then return {'taken', who} end
  redis.call('HDEL', names, key)
  publish_member(channel, who, '-', string.match(held, '^%S+ %S+ %S+ (.*)$') or '')
end
local other = redis.call('HGET', glyphs, glyph)
if other and other ~= key then
  local looks = redis.call('HGET', names, other)
  if looks then
    local who = string.match(looks, '^(%S+)')
    if who == me then return {'here', who} end
    if who ~= dead then return {'taken', who} end
    redis.call('HDEL', names, other)
    publish_member(channel, who, '-', string.match(looks, '^%S+ %S+ %S+ (.*)$') or '')
  end
end
claim()
return {'free', ''}
"#;

/// Records this instance's member and token under a name it holds (or
/// nobody does). KEYS: names, glyphs, meta. ARGV: key, glyph, this
/// instance, member id, token, name, the room's channel. Replies 1, or 0 if
/// another instance holds it.
pub const CONFIRM_LUA: &str = r#"
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and string.match(held, '^(%S+)') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. redis.sha1hex(ARGV[5]) .. ' ' .. ARGV[6])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
if not held then publish_member(ARGV[7], ARGV[3], '+', ARGV[6]) end
return 1
"#;

/// Gives a name back. KEYS: names, glyphs, meta. ARGV: key, glyph, this
/// instance, member id, the room's channel. Replies 1 (given back), 2
/// (nobody held it: Redis lost it) or 0 (another membership holds it: the
/// member moved).
pub const RELEASE_LUA: &str = r#"
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then return 2 end
local who, member, name = string.match(held, '^(%S+) (%S+) %S+ (.*)$')
if who ~= ARGV[3] or member ~= ARGV[4] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
publish_member(ARGV[5], who, '-', name)
return 1
"#;

/// The names a dead instance holds in a room. KEYS: names. ARGV: the
/// instance. Replies `{count of all claims, {key, member id, name}, ...}`.
pub const ORPHANS_LUA: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local out = {#all / 2}
for i = 1, #all, 2 do
  local who, member, name = string.match(all[i + 1], '^(%S+) (%S+) %S+ (.*)$')
  if who == ARGV[1] then out[#out + 1] = {all[i], member, name} end
end
return out
"#;

/// Gives back names a dead instance still holds. KEYS: names, glyphs,
/// meta. ARGV: the instance, the room's channel, then key, glyph key,
/// member id per name. Replies how many it gave back.
pub const BURY_LUA: &str = r#"
local n = 0
for i = 3, #ARGV, 3 do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held then
    local who, member, name = string.match(held, '^(%S+) (%S+) %S+ (.*)$')
    if who == ARGV[1] and member == ARGV[i + 2] then
      redis.call('HDEL', KEYS[1], ARGV[i])
      if redis.call('HGET', KEYS[2], ARGV[i + 1]) == ARGV[i] then redis.call('HDEL', KEYS[2], ARGV[i + 1]) end
      publish_member(ARGV[2], who, '-', name)
      n = n + 1
    end
  end
end
return n
"#;

/// A room's members of other instances and its member version, read
/// together. KEYS: names, meta. ARGV: this instance. Replies `{version,
/// {instance, name}, ...}`.
pub const MEMBERS_LUA: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local out = {tonumber(redis.call('HGET', KEYS[2], 'mv') or '0')}
for i = 2, #all, 2 do
  local who, name = string.match(all[i], '^(%S+) %S+ %S+ (.*)$')
  if who and who ~= ARGV[1] then out[#out + 1] = {who, name} end
end
return out
"#;

/// How long the clean-up of a dead instance is one survivor's: if that
/// one dies too, another takes it over after this.
pub const REAP_LEASE: Duration = Duration::from_secs(60);
/// The most dead instances one look finds (the rest wait for the next).
pub const DEAD_MAX: usize = 16;

/// A script that publishes member changes ([`PUBLISH_MEMBER_LUA`]).
fn publishing(body: &str) -> Script {
    Script::new(&format!("{PUBLISH_MEMBER_LUA}{body}"))
}

pub static CLAIM: LazyLock<Script> = LazyLock::new(|| publishing(CLAIM_LUA));
pub static ORPHANS: LazyLock<Script> = LazyLock::new(|| Script::new(ORPHANS_LUA));
pub static BURY: LazyLock<Script> = LazyLock::new(|| publishing(BURY_LUA));
pub static CONFIRM: LazyLock<Script> = LazyLock::new(|| publishing(CONFIRM_LUA));
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| publishing(RELEASE_LUA));
pub static MEMBERS: LazyLock<Script> = LazyLock::new(|| Script::new(MEMBERS_LUA));

/// The scripts of this module, to load at start.
pub fn scripts() -> [&'static Script; 6] {
    [&CLAIM, &CONFIRM, &RELEASE, &ORPHANS, &BURY, &MEMBERS]
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
        let claimed = self.claim_once_more(room, claim).await?;
        if matches!(claimed, Claimed::Free | Claimed::Moved) {
            // The survivors' clean-up looks in these rooms if this instance dies.
            let mut sadd = ::redis::cmd("SADD");
            sadd.arg(keys::instance_rooms(self.instance())).arg(room.as_str());
            let mut conn = self.conn();
            within(self.timeout(), sadd.query_async::<i64>(&mut conn)).await?;
        }
        Ok(claimed)
    }

    async fn claim_once_more(&self, room: &RoomName, claim: &NameClaim) -> Result<Claimed, Failure> {
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
            .key(&keys.meta)
            .arg(&claim.key)
            .arg(&claim.glyph)
            .arg(self.instance())
            .arg(claim.member)
            .arg(claim.token.as_str())
            .arg(claim.presented.as_ref().map_or("", |t| t.as_str()))
            .arg(dead)
            .arg(claim.name.as_str())
            .arg(&keys.channel);
        let mut conn = self.conn();
        let reply: Value = within(self.timeout(), invocation.invoke_async(&mut conn)).await?;
        Ok(parse_claim(&reply)?)
    }

    /// See [`crate::store::HistoryStore::confirm_name`].
    pub(crate) async fn confirm(&self, room: &RoomName, claim: &NameClaim) -> Result<bool, Failure> {
        let keys = RoomKeys::of(room);
        let mut invocation = CONFIRM.key(&keys.names);
        invocation
            .key(&keys.glyphs)
            .key(&keys.meta)
            .arg(&claim.key)
            .arg(&claim.glyph)
            .arg(self.instance())
            .arg(claim.member)
            .arg(claim.token.as_str())
            .arg(claim.name.as_str())
            .arg(&keys.channel);
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
        invocation.key(&keys.glyphs).key(&keys.meta).arg(key).arg(glyph).arg(self.instance()).arg(member);
        invocation.arg(&keys.channel);
        let mut conn = self.conn();
        let released: i64 = within(self.timeout(), invocation.invoke_async(&mut conn)).await?;
        Ok(released != 0)
    }
}

impl RedisStore {
    /// See [`crate::store::HistoryStore::dead_instances`].
    pub(crate) async fn dead(&self, grace: Duration, ttl: Duration) -> Result<Vec<(String, Vec<RoomName>)>, Failure> {
        let cutoff = super::now_ms().0.saturating_sub(u64::try_from((ttl + grace).as_millis()).unwrap_or(u64::MAX));
        let mut conn = self.conn();
        let mut range = ::redis::cmd("ZRANGEBYSCORE");
        range.arg(keys::INSTANCES).arg("-inf").arg(cutoff).arg("LIMIT").arg(0).arg(DEAD_MAX);
        let candidates: Vec<String> = within(self.timeout(), range.query_async(&mut conn)).await?;
        let lease_ms = u64::try_from(REAP_LEASE.as_millis()).unwrap_or(u64::MAX);
        let mut dead = Vec::new();
        for instance in candidates.into_iter().filter(|i| i != self.instance()) {
            let mut exists = ::redis::cmd("EXISTS");
            exists.arg(keys::instance(&instance));
            if within(self.timeout(), exists.query_async::<bool>(&mut conn)).await? {
                continue;
            }
            let mut lease = ::redis::cmd("SET");
            lease.arg(keys::instance_reaper(&instance)).arg(self.instance()).arg("NX").arg("PX").arg(lease_ms);
            let taken: Option<String> = within(self.timeout(), lease.query_async(&mut conn)).await?;
            if taken.is_none() {
                continue;
            }
            let mut members = ::redis::cmd("SMEMBERS");
            members.arg(keys::instance_rooms(&instance));
            let rooms: Vec<String> = within(self.timeout(), members.query_async(&mut conn)).await?;
            dead.push((instance, rooms.iter().filter_map(|r| RoomName::parse(r).ok()).collect()));
        }
        Ok(dead)
    }

    /// See [`crate::store::HistoryStore::orphans`].
    pub(crate) async fn find_orphans(&self, instance: &str, room: &RoomName) -> Result<(Vec<Orphan>, usize), Failure> {
        let keys = RoomKeys::of(room);
        let mut invocation = ORPHANS.key(&keys.names);
        invocation.arg(instance);
        let mut conn = self.conn();
        let reply: Value = within(self.timeout(), invocation.invoke_async(&mut conn)).await?;
        Ok(parse_orphans(&reply)?)
    }

    /// See [`crate::store::HistoryStore::bury`].
    pub(crate) async fn give_back(
        &self,
        instance: &str,
        room: &RoomName,
        orphans: &[(String, String, MemberId)],
    ) -> Result<(), Failure> {
        let keys = RoomKeys::of(room);
        let mut invocation = BURY.key(&keys.names);
        invocation.key(&keys.glyphs).key(&keys.meta).arg(instance).arg(&keys.channel);
        for (key, glyph, member) in orphans {
            invocation.arg(key).arg(glyph).arg(*member);
        }
        let mut conn = self.conn();
        within(self.timeout(), invocation.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// See [`crate::store::HistoryStore::buried`].
    pub(crate) async fn forget_instance(&self, instance: &str) -> Result<(), Failure> {
        // Three keys of three cluster slots: three commands.
        let mut conn = self.conn();
        let mut rooms = ::redis::cmd("DEL");
        rooms.arg(keys::instance_rooms(instance));
        within(self.timeout(), rooms.exec_async(&mut conn)).await?;
        let mut seen = ::redis::cmd("ZREM");
        seen.arg(keys::INSTANCES).arg(instance);
        within(self.timeout(), seen.exec_async(&mut conn)).await?;
        let mut lease = ::redis::cmd("DEL");
        lease.arg(keys::instance_reaper(instance));
        within(self.timeout(), lease.exec_async(&mut conn)).await
    }
}

impl RedisStore {
    /// See [`crate::store::HistoryStore::members_elsewhere`].
    pub(crate) async fn elsewhere(&self, room: &RoomName) -> Result<Elsewhere, Failure> {
        let keys = RoomKeys::of(room);
        let mut invocation = MEMBERS.key(&keys.names);
        invocation.key(&keys.meta).arg(self.instance());
        let mut conn = self.conn();
        let reply: Value = within(self.timeout(), invocation.invoke_async(&mut conn)).await?;
        Ok(parse_members(&reply)?)
    }
}

/// Reads a reply of `MEMBERS` or `ORPHANS`: a count, then rows of
/// `width` strings (`what` names the script in errors).
fn counted_rows(value: &Value, what: &str, width: usize) -> Result<(u64, Vec<Vec<String>>), BadReply> {
    let bad = || BadReply(format!("{what}: {value:?}"));
    let Value::Array(parts) = value else { return Err(bad()) };
    let count = match parts.first() {
        Some(Value::Int(n)) => u64::try_from(*n).map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    let text = |v: &Value| match v {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        _ => None,
    };
    let rows = parts[1..]
        .iter()
        .map(|row| match row {
            Value::Array(fields) if fields.len() == width => fields.iter().map(text).collect::<Option<Vec<_>>>(),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)?;
    Ok((count, rows))
}

/// Reads `MEMBERS`'s reply.
pub fn parse_members(value: &Value) -> Result<Elsewhere, BadReply> {
    let (version, rows) = counted_rows(value, "members", 2)?;
    let members = rows
        .into_iter()
        .filter_map(|row| match (&row[0], UserName::parse(&row[1])) {
            (instance, Ok(name)) => Some((instance.clone(), name)),
            (_, Err(_)) => {
                warn!("a claim in Redis names no valid name; it is not listed");
                None
            }
        })
        .collect();
    Ok(Elsewhere { version, members })
}

/// Reads `ORPHANS`'s reply.
pub fn parse_orphans(value: &Value) -> Result<(Vec<Orphan>, usize), BadReply> {
    let (count, rows) = counted_rows(value, "orphans", 3)?;
    let orphans = rows
        .into_iter()
        .filter_map(|row| match (row[1].parse(), UserName::parse(&row[2])) {
            (Ok(member), Ok(name)) => Some(Orphan { name, key: row[0].clone(), member }),
            _ => {
                warn!(key = %row[0], "a claim in Redis cannot be read; it is left as it is");
                None
            }
        })
        .collect();
    Ok((orphans, usize::try_from(count).unwrap_or(usize::MAX)))
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
    let now = super::now_ms().0;
    let mut cmd = ::redis::cmd("SET");
    cmd.arg(keys::instance(store.instance())).arg(now).arg("PX").arg(ttl_ms).arg("GET");
    let mut conn = store.conn();
    let previous: Option<String> = within(store.timeout(), cmd.query_async(&mut conn)).await?;
    let mut seen = ::redis::cmd("ZADD");
    seen.arg(keys::INSTANCES).arg(now).arg(store.instance());
    within(store.timeout(), seen.query_async::<i64>(&mut conn)).await?;
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

    #[test]
    fn orphans_come_with_the_rooms_claim_count_and_names_with_spaces() {
        let row = |key: &str, member: &str, name: &str| Value::Array(vec![bulk(key), bulk(member), bulk(name)]);
        let reply = Value::Array(vec![Value::Int(5), row("ada", "7", "Ada"), row("ada lovelace", "9", "Ada Lovelace")]);
        let (orphans, count) = parse_orphans(&reply).expect("reads");
        assert_eq!(count, 5);
        let read: Vec<(&str, MemberId, &str)> =
            orphans.iter().map(|o| (o.key.as_str(), o.member, o.name.as_str())).collect();
        assert_eq!(read, [("ada", 7, "Ada"), ("ada lovelace", 9, "Ada Lovelace")]);
        // A row that is not a name is skipped; a reply of another shape is refused.
        let odd = Value::Array(vec![Value::Int(1), row("x", "not a number", "X")]);
        assert_eq!(parse_orphans(&odd).expect("reads").0, []);
        assert!(parse_orphans(&Value::Array(vec![bulk("5")])).is_err());
    }
}
