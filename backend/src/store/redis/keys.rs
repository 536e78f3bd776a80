//! Redis key names. A room's keys share the hash tag `{room}`, so one
//! script call may touch all of them, and Redis Cluster keeps them on one node.

use natter_shared::RoomName;

/// Every key natter writes starts with this.
pub const PREFIX: &str = "natter";
/// The members saved at graceful stops, for the next start: a list, one
/// JSON array per stopping instance (several may stop at once).
pub const SAVED_MEMBERS: &str = "natter:saved-members-list";
/// Stage 1's single saved array (a string), still read once at start.
pub const SAVED_MEMBERS_V1: &str = "natter:saved-members";

/// The liveness key of the instance `id`: set with a TTL and renewed while
/// the instance runs; an instance whose key is gone is dead, and the names
/// it held may be taken.
pub fn instance(id: &str) -> String {
    format!("{PREFIX}:instance:{id}")
}

/// Sorted set: every instance by the time (ms) of its latest renewal, so
/// survivors find the instances that died.
pub const INSTANCES: &str = "natter:instances";

/// Set: the rooms the instance `id` claimed names in (for its clean-up).
pub fn instance_rooms(id: &str) -> String {
    format!("{PREFIX}:instance:{id}:rooms")
}

/// The lease of the instance that cleans up after the dead instance `id`.
pub fn instance_reaper(id: &str) -> String {
    format!("{PREFIX}:instance:{id}:reaper")
}

/// The keys of one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomKeys {
    /// Hash: `epoch` (the history id), `seq` (the head), `ts` (the latest time).
    pub meta: String,
    /// Stream: one entry per event, id `<seq>-0`, fields `e` (the wire JSON) and `t` (its time).
    pub stream: String,
    /// Sorted set: a message's `name key \n cid` (or a notice's own key), scored by its seq.
    pub dedupe: String,
    /// Shard channel the write script publishes each batch on; every
    /// instance holding the room subscribes to it.
    pub channel: String,
    /// Hash: the name claims, member key → `<instance> <member id> <sha1 of its token>`.
    pub names: String,
    /// Hash: glyph key → the member key whose claim has it.
    pub glyphs: String,
}

impl RoomKeys {
    /// The keys of `room`.
    pub fn of(room: &RoomName) -> Self {
        let tag = format!("{PREFIX}:{{{}}}", room.as_str());
        Self {
            meta: format!("{tag}:m"),
            stream: format!("{tag}:s"),
            dedupe: format!("{tag}:d"),
            channel: format!("{tag}:c"),
            names: format!("{tag}:n"),
            glyphs: format!("{tag}:g"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis Cluster hashes only what is inside the first `{...}` of a key.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').expect("a tag");
        let close = key[open..].find('}').expect("closed") + open;
        &key[open + 1..close]
    }

    #[test]
    fn a_rooms_keys_share_its_name_as_hash_tag() {
        let keys = RoomKeys::of(&RoomName::parse("team-7").expect("valid"));
        assert_eq!(keys.meta, "natter:{team-7}:m");
        assert_eq!(keys.stream, "natter:{team-7}:s");
        assert_eq!(keys.dedupe, "natter:{team-7}:d");
        assert_eq!(keys.channel, "natter:{team-7}:c");
        assert_eq!(keys.names, "natter:{team-7}:n");
        assert_eq!(keys.glyphs, "natter:{team-7}:g");
        for key in [&keys.meta, &keys.stream, &keys.dedupe, &keys.channel, &keys.names, &keys.glyphs] {
            assert_eq!(hash_tag(key), "team-7", "{key}");
        }
        let other = RoomKeys::of(&RoomName::parse("team-8").expect("valid"));
        assert_ne!(hash_tag(&other.meta), hash_tag(&keys.meta));
    }
}
