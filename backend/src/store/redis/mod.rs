//! History in Redis (`--redis`), stages 1 and 2 of scale-out: Redis is the
//! durable history of every natter instance that uses it, and each room's
//! events reach all of them in one order.
//!
//! Each room is a Stream of its events (`XADD <seq>-0`) beside a hash with
//! its epoch (the history id), head and latest time, and a sorted set that
//! deduplicates re-sent messages; the keys share the hash tag `{room}`
//! ([`keys`]). One writer task ([`writer`]) sends every pending draft of the
//! instance in one round trip: a pipeline of one `BATCH` script call per room
//! ([`scripts`]), which dedupes, takes seqs and appends atomically. A draft
//! is reported (acknowledged, broadcast) only after Redis answered, and a
//! start refuses a Redis that would not keep what it answered
//! ([`durability`]). Reads run `XREVRANGE` on a blocking thread, as
//! SQLite's do. A lost stream (FLUSHALL, a new Redis) becomes a new epoch,
//! so pages get a fresh welcome instead of a replay of unrelated seqs.
//!
//! Each instance subscribes to the channel of every room it holds
//! ([`fanout`]) and delivers the batches other instances store in seq order
//! with its own writes (the room's reorder buffer), filling gaps from the
//! Stream.
//!
//! A name is claimed in Redis for the instance its member joins ([`names`]),
//! so it is unique in its room across instances, and a browser's resume
//! token takes it over on any instance.
//!
//! When an instance dies, a survivor announces its members who did not
//! resume elsewhere (`chat::reaper`).
//!
//! Each claim or release publishes the change of the room's members, so
//! every instance lists the members of all (`chat::elsewhere`); typing is
//! published too.
//!
//! A Redis Cluster works the same way, found through the `--redis` node
//! ([`conn`]): every script and pipeline names only one room's keys.

mod conn;
mod durability;
mod fanout;
mod keys;
mod names;
mod scripts;
mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_shared::{ResumeToken, RoomEvent, RoomName, Seq, UserName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::writer::{WriteQueue, WriterMsg};
use super::{
    Claimed, Elsewhere, FreshHistory, HistoryError, HistoryStore, MemberId, NameClaim, Orphan, Replay, SavedMember,
    now_ms, replay_of,
};
use crate::config::{RedisConfig, RedisDurability, StorageConfig};
use crate::metrics::Metrics;
pub use fanout::{EARLY_MAX, FILL_MAX, FOLLOW_ROUNDS, GAP_WAIT, RESUBSCRIBE_PAUSE, STALE_SUBSCRIPTIONS_MAX};
pub use keys::RoomKeys;

/// The first pause before reconnecting to Redis after the connection
/// dropped; each failed attempt doubles it (with jitter) up to
/// [`RECONNECT_MAX_DELAY`].
pub const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between reconnection attempts: Redis back from a
/// restart is found within this.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);
/// Reconnection attempts in one round; when they all fail, the next
/// command (a write round, a lock renewal) starts another round.
pub const RECONNECT_ATTEMPTS: usize = 10;
/// How long the members saved at a graceful stop wait in Redis for the
/// next start (they hold resume tokens: not forever).
pub const SAVED_MEMBERS_TTL: Duration = Duration::from_secs(24 * 3600);
/// Old stream entries `BATCH` looks at per call for `--retain-age`: it
/// trims at most this many per write, more than a room gains per write.
pub const AGE_TRIM_SCAN: usize = 64;

/// Why the Redis store could not start. Every variant names the Redis (its
/// URL without the password) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RedisStartError {
    #[error("--redis {url}: {source}")]
    Url { url: String, source: ::redis::RedisError },
    #[error("cannot reach Redis at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error(
        "Redis at {url} would not keep acknowledged messages: {}; set that in redis.conf (or with CONFIG SET, then \
         CONFIG REWRITE), or start natter with --redis-durability relaxed to accept losing acknowledged messages \
         when Redis crashes",
        .problems.join("; ")
    )]
    NotDurable { url: String, problems: Vec<String> },
    #[error(
        "cannot read the persistence settings of Redis at {url} (CONFIG GET: {reason}); if appendonly is yes, \
         appendfsync always and maxmemory-policy noeviction, start natter with --redis-durability relaxed"
    )]
    CannotCheck { url: String, reason: String },
    #[error("Redis at {url} refused a start-up command: {reason}")]
    Command { url: String, reason: String },
}

/// What the store knows of a held room: the history it belongs to and the
/// latest seq reported to it (a Redis found behind it lost acknowledged
/// writes; one found ahead holds events the room never heard of).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Known {
    pub epoch: String,
    pub head: Seq,
}

/// A Redis request that failed: the transport, the server, or the reply.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error(transparent)]
    Reply(#[from] scripts::BadReply),
    #[error("Redis refuses writes for now: {0}")]
    Refused(String),
}

impl From<Failure> for HistoryError {
    fn from(failure: Failure) -> Self {
        HistoryError::Unavailable(failure.to_string())
    }
}

/// History in Redis.
#[derive(Debug)]
pub struct RedisStore {
    conn: conn::Conn,
    /// The runtime the connection lives on: the synchronous reads run on
    /// blocking threads and wait for it there.
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    keeps: Option<usize>,
    rooms: Mutex<HashMap<RoomName, Known>>,
    read_slots: Arc<tokio::sync::Semaphore>,
    saved: Mutex<Vec<SavedMember>>,
    fanout: Arc<fanout::Fanout>,
    /// Held exclusively by the writer while a round is out and being
    /// reported, shared by gap fills: a fill never delivers (to everyone,
    /// as if from elsewhere) a write whose report, with its ack, is on its way.
    rounds: tokio::sync::RwLock<()>,
    /// This instance's id: in its publications, its name claims and its
    /// liveness key.
    instance: String,
    /// Cancelled when the store stops: the liveness key is not renewed.
    renewing: CancellationToken,
    /// How long the liveness key lasts after a renewal (`--redis-instance-ttl`).
    instance_ttl: Duration,
}

impl RedisStore {
    /// Connects, checks durability (refusing as `redis.durability` says),
    /// loads the scripts, connects the subscriber, and starts the writer. `reload_events`: how many latest events the writer reads
    /// when a room's history must be read afresh (a room's welcome history).
    pub async fn start(
        redis: &RedisConfig,
        options: &StorageConfig,
        reload_events: usize,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<Self>, WriteQueue), RedisStartError> {
        let url = redis.display_url();
        let client = ::redis::Client::open(redis.url.as_str())
            .map_err(|source| RedisStartError::Url { url: url.clone(), source })?;
        // One plain connection first: an unreachable Redis is reported with
        // its cause (refused, unknown host) rather than as the manager's
        // retries running out of time; and a cluster node says so in `INFO
        // cluster` (natter then finds the other nodes through it).
        let reason = |e: Failure| match e {
            Failure::Redis(e) => e.to_string(),
            other => other.to_string(),
        };
        let mode = match conn::mode_of(&client, redis.timeout).await {
            Ok(mode) => mode,
            Err(e) => return Err(RedisStartError::Connect { url, reason: reason(e) }),
        };
        let mut conn = match conn::commands(&client, &redis.url, mode, redis.timeout).await {
            Ok(conn) => conn,
            Err(e) => return Err(RedisStartError::Connect { url, reason: reason(e) }),
        };
        let command = |e: Failure| RedisStartError::Command { url: url.clone(), reason: e.to_string() };

        match conn.durability(redis.timeout).await {
            Ok(nodes) => {
                let problems: Vec<String> = nodes
                    .iter()
                    .flat_map(|(node, settings)| {
                        durability::problems(settings).into_iter().map(move |p| match mode {
                            conn::Mode::Single => p,
                            conn::Mode::Cluster => format!("{node}: {p}"),
                        })
                    })
                    .collect();
                match (problems.is_empty(), redis.durability) {
                    (true, _) => info!(redis = %url, "Redis fsyncs every write before answering"),
                    (false, RedisDurability::Strict) => return Err(RedisStartError::NotDurable { url, problems }),
                    (false, RedisDurability::Relaxed) => warn!(
                        redis = %url,
                        problems = %problems.join("; "),
                        "Redis may lose acknowledged messages if it crashes (--redis-durability relaxed)"
                    ),
                }
            }
            Err(e) if redis.durability == RedisDurability::Strict => {
                return Err(RedisStartError::CannotCheck { url, reason: e.to_string() });
            }
            Err(e) => {
                warn!(redis = %url, error = %e, "cannot read the persistence settings of Redis (--redis-durability relaxed)")
            }
        }
        for script in scripts::all().into_iter().chain(names::scripts()) {
            within(redis.timeout, script.load_async(&mut conn)).await.map_err(command)?;
        }

        let instance = crate::random::random_hex(8).unwrap_or_else(|| format!("p{}", std::process::id()));
        let fanout = fanout::Fanout::start(
            &redis.url,
            &url,
            mode,
            instance.clone(),
            redis.timeout,
            reload_events,
            metrics.clone(),
        )
        .await?;
        let saved = within(redis.timeout, take_saved_members(&mut conn)).await.map_err(command)?;

        let store = Arc::new(Self {
            conn: conn.clone(),
            runtime: tokio::runtime::Handle::current(),
            timeout: redis.timeout,
            keeps: options.retain_count.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            rooms: Mutex::new(HashMap::new()),
            read_slots: Arc::new(tokio::sync::Semaphore::new(options.read_connections.max(1))),
            saved: Mutex::new(saved),
            fanout,
            rounds: tokio::sync::RwLock::new(()),
            instance: instance.clone(),
            renewing: CancellationToken::new(),
            instance_ttl: redis.instance_ttl,
        });
        store.fanout.set_store(&store);
        // Alive before the first join claims a name.
        let ttl_ms = u64::try_from(redis.instance_ttl.as_millis()).unwrap_or(u64::MAX);
        names::renew(&store, ttl_ms).await.map_err(command)?;
        tokio::spawn(names::keep_alive(Arc::downgrade(&store), redis.instance_ttl, store.renewing.clone()));
        let (tx, rx) = mpsc::channel::<WriterMsg>(options.write_queue.max(1));
        let writer = writer::Writer::new(store.clone(), instance.clone(), options, reload_events, metrics);
        tokio::spawn(writer.run(rx));
        info!(redis = %url, instance = %instance, "history in Redis, shared with the other instances on it");
        info!(
            redis = %url,
            "rooms, names, members, presence and typing are shared with the other natter instances on this Redis; \
             connection and per-address limits are this instance's own"
        );
        Ok((store, WriteQueue(tx)))
    }

    /// What the store knows of `room`, if it holds it.
    pub(crate) fn known(&self, room: &RoomName) -> Option<Known> {
        self.lock().get(room).cloned()
    }

    /// Records what the store knows of `room`.
    pub(crate) fn remember(&self, room: &RoomName, known: Known) {
        self.lock().insert(room.clone(), known);
    }

    /// Records that events up to `head` of `room`'s history `epoch` were
    /// reported to the room (unless the room has another history by now).
    pub(crate) fn advance(&self, room: &RoomName, epoch: &str, head: Seq) {
        if let Some(known) = self.lock().get_mut(room).filter(|k| k.epoch == epoch) {
            known.head = known.head.max(head);
        }
    }

    /// See [`RedisStore::rounds`].
    pub(crate) fn rounds(&self) -> &tokio::sync::RwLock<()> {
        &self.rounds
    }

    /// The subscriber, for the writer's follow-ups.
    pub(crate) fn fanout(&self) -> &Arc<fanout::Fanout> {
        &self.fanout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, Known>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection (clones share one socket).
    pub(crate) fn conn(&self) -> conn::Conn {
        self.conn.clone()
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// This instance's id.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// The store stopped: its liveness key is left to expire.
    pub(crate) fn stop_renewing(&self) {
        self.renewing.cancel();
    }

    /// Runs `OPEN` for `room`: its history (a new one if it has none, or
    /// lost its stream, or `replace` names its epoch), with its latest
    /// `limit` events if its epoch is not `known`.
    pub(crate) async fn open(
        &self,
        room: &RoomName,
        limit: usize,
        replace: Option<&str>,
        known: &str,
    ) -> Result<scripts::Opened, Failure> {
        let keys = RoomKeys::of(room);
        let proposed = crate::random::random_hex(8).unwrap_or_else(|| format!("r{}", now_ms().0));
        let mut invocation = scripts::OPEN.key(&keys.meta);
        invocation
            .key(&keys.stream)
            .key(&keys.dedupe)
            .arg(proposed)
            .arg(limit)
            .arg(if replace.is_some() { "1" } else { "0" })
            .arg(replace.unwrap_or(""))
            .arg(known);
        let mut conn = self.conn();
        let reply: ::redis::Value = within(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(scripts::parse_open(&reply)?)
    }

    /// Runs `work` on the runtime from a blocking thread (the store's
    /// synchronous reads run on blocking threads, see `store::blocking`).
    fn block<T>(&self, work: impl Future<Output = Result<T, Failure>>) -> Result<T, HistoryError> {
        self.runtime.block_on(work).map_err(HistoryError::from)
    }

    /// Stream entries of `room` with `XREVRANGE hi lo COUNT limit`, oldest first.
    fn range(&self, room: &RoomName, hi: String, lo: String, limit: usize) -> Result<Vec<RoomEvent>, HistoryError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = RoomKeys::of(room);
        self.block(async {
            let mut cmd = ::redis::cmd("XREVRANGE");
            cmd.arg(&keys.stream).arg(hi).arg(lo).arg("COUNT").arg(limit);
            let mut conn = self.conn();
            let reply: ::redis::Value = within(self.timeout, cmd.query_async(&mut conn)).await?;
            let mut events = scripts::parse_entries(&reply)?;
            events.reverse();
            Ok(events)
        })
    }
}

/// `request`, failing as [`Failure::Timeout`] after `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    request: impl Future<Output = ::redis::RedisResult<T>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, request).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Failure::Timeout(limit)),
    }
}

impl HistoryStore for RedisStore {
    fn history_id(&self, room: &RoomName) -> String {
        self.known(room).map(|k| k.epoch).unwrap_or_default()
    }

    fn forget(&self, room: &RoomName) {
        self.lock().remove(room);
        self.fanout.forget(&RoomKeys::of(room).channel);
    }

    fn attach(&self, room: Arc<dyn crate::store::Committed>) {
        self.fanout.attach(room);
    }

    fn keeps(&self) -> Option<usize> {
        self.keeps
    }

    fn open_room(&self, room: &RoomName, limit: usize) -> Result<(Seq, Vec<RoomEvent>), HistoryError> {
        // Subscribed first, read second: nothing published falls in between.
        let channel = RoomKeys::of(room).channel;
        self.block(self.fanout.subscribe(&channel))?;
        let opened = match self.block(self.open(room, limit, None, "")) {
            Ok(opened) => opened,
            Err(e) => {
                // Not held after all: nothing to deliver to.
                self.fanout.forget(&channel);
                return Err(e);
            }
        };
        self.remember(room, Known { epoch: opened.epoch, head: opened.head });
        Ok((opened.head, opened.latest))
    }

    fn after(&self, room: &RoomName, after: Seq, upto: Seq, limit: usize) -> Result<Replay, HistoryError> {
        if upto <= after {
            return Ok(replay_of(after, upto, Vec::new()));
        }
        // Entry ids are `<seq>-0`; a bare `N` as the upper bound means
        // `N-<max>`, so exclusive bounds name the `-0` entry itself.
        let events = self.range(room, format!("{}-0", upto.0), format!("({}-0", after.0), limit)?;
        Ok(replay_of(after, upto, events))
    }

    fn before(&self, room: &RoomName, before: Seq, limit: usize) -> Result<Vec<RoomEvent>, HistoryError> {
        if before.0 <= 1 {
            return Ok(Vec::new());
        }
        self.range(room, format!("({}-0", before.0), "-".into(), limit)
    }

    fn read_slots(&self) -> Arc<tokio::sync::Semaphore> {
        self.read_slots.clone()
    }

    fn take_saved_members(&self) -> Vec<SavedMember> {
        std::mem::take(&mut *self.saved.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn history_can_restart(&self) -> bool {
        true
    }

    fn names_shared(&self) -> bool {
        true
    }

    fn claim_name(&self, room: &RoomName, claim: &NameClaim) -> Result<Claimed, HistoryError> {
        self.block(self.claim(room, claim))
    }

    fn confirm_name(&self, room: &RoomName, claim: &NameClaim) -> Result<(), HistoryError> {
        if !self.block(self.confirm(room, claim))? {
            warn!(room = %room, "a name this instance admitted is held by another instance");
        }
        Ok(())
    }

    fn release_name(&self, room: &RoomName, key: &str, glyph: &str, member: MemberId) -> Result<bool, HistoryError> {
        self.block(self.release(room, key, glyph, member))
    }

    fn members_elsewhere(&self, room: &RoomName) -> Result<Elsewhere, HistoryError> {
        self.block(self.elsewhere(room))
    }

    fn typing_elsewhere(&self, room: &RoomName, name: &UserName, active: bool) {
        let mut publish = ::redis::cmd("SPUBLISH");
        let flag = if active { "1" } else { "0" };
        publish.arg(RoomKeys::of(room).channel).arg(format!("t {} {flag} {}", self.instance, name.as_str()));
        let (mut conn, timeout) = (self.conn(), self.timeout);
        // Typing is ephemeral: sent once, not waited for, lost if Redis is.
        self.runtime.spawn(async move {
            if let Err(e) = within(timeout, publish.query_async::<i64>(&mut conn)).await {
                tracing::debug!(error = %e, "typing not published");
            }
        });
    }

    fn dead_instances(&self, grace: Duration) -> Result<Vec<(String, Vec<RoomName>)>, HistoryError> {
        self.block(self.dead(grace, self.instance_ttl))
    }

    fn orphans(&self, instance: &str, room: &RoomName) -> Result<(Vec<Orphan>, usize), HistoryError> {
        self.block(self.find_orphans(instance, room))
    }

    fn bury(
        &self,
        instance: &str,
        room: &RoomName,
        orphans: &[(String, String, MemberId)],
    ) -> Result<(), HistoryError> {
        self.block(self.give_back(instance, room, orphans))
    }

    fn buried(&self, instance: &str) -> Result<(), HistoryError> {
        self.block(self.forget_instance(instance))
    }

    fn check_history(&self, room: &RoomName, known: &str, limit: usize) -> Result<Option<FreshHistory>, HistoryError> {
        let opened = self.block(self.open(room, limit, None, known))?;
        if opened.epoch == known {
            return Ok(None);
        }
        self.remember(room, Known { epoch: opened.epoch.clone(), head: opened.head });
        Ok(Some(FreshHistory { id: opened.epoch, head: opened.head, latest: opened.latest }))
    }
}

/// A saved member as kept in Redis (in a JSON array, one per stopped
/// instance, in the list [`keys::SAVED_MEMBERS`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedRecord {
    room: String,
    name: String,
    token: String,
}

/// Saves the members at a graceful stop beside those other instances
/// saved, all kept for [`SAVED_MEMBERS_TTL`] from the latest stop.
pub(crate) async fn save_members(conn: &mut conn::Conn, members: &[SavedMember]) -> ::redis::RedisResult<()> {
    if members.is_empty() {
        return Ok(());
    }
    let records: Vec<SavedRecord> = members
        .iter()
        .map(|m| SavedRecord {
            room: m.room.as_str().to_owned(),
            name: m.name.as_str().to_owned(),
            token: m.token.as_str().to_owned(),
        })
        .collect();
    let json = serde_json::to_string(&records)
        .map_err(|e| ::redis::RedisError::from((::redis::ErrorKind::Client, "saved members", e.to_string())))?;
    let ttl_ms = u64::try_from(SAVED_MEMBERS_TTL.as_millis()).unwrap_or(u64::MAX);
    let mut pipe = ::redis::pipe();
    pipe.atomic().cmd("RPUSH").arg(keys::SAVED_MEMBERS).arg(json).ignore();
    pipe.cmd("PEXPIRE").arg(keys::SAVED_MEMBERS).arg(ttl_ms).ignore();
    pipe.exec_async(conn).await
}

/// Reads and removes every member saved at the last stops, atomically (a
/// crash after it must not bring them back, and two instances starting at
/// once must not both take them). Ones no longer valid are skipped.
async fn take_saved_members(conn: &mut conn::Conn) -> ::redis::RedisResult<Vec<SavedMember>> {
    let mut pipe = ::redis::pipe();
    pipe.atomic().cmd("LRANGE").arg(keys::SAVED_MEMBERS).arg(0).arg(-1);
    pipe.cmd("DEL").arg(keys::SAVED_MEMBERS).ignore();
    let (lists,): (Vec<String>,) = pipe.query_async(conn).await?;
    // Another key (another cluster slot): a command of its own.
    let v1: Option<String> = ::redis::cmd("GETDEL").arg(keys::SAVED_MEMBERS_V1).query_async(conn).await?;
    let mut records: Vec<SavedRecord> = Vec::new();
    for json in lists.iter().chain(v1.iter()) {
        match serde_json::from_str::<Vec<SavedRecord>>(json) {
            Ok(saved) => records.extend(saved),
            Err(e) => warn!(error = %e, "saved members cannot be read; they rejoin as new"),
        }
    }
    Ok(records
        .into_iter()
        .filter_map(|r| match (RoomName::parse(&r.room), UserName::parse(&r.name), ResumeToken::parse(&r.token)) {
            (Ok(room), Ok(name), Ok(token)) => Some(SavedMember { room, name, token }),
            _ => {
                warn!(room = %r.room, "a saved member is not valid any more; skipped");
                None
            }
        })
        .collect())
}
