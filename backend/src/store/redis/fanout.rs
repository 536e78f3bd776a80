//! Cross-instance fan-out: every held room is subscribed to its shard
//! channel (`SSUBSCRIBE natter:{room}:c`), on which `BATCH` publishes each
//! batch it stores, so every instance on one Redis hears every room's
//! events, serializes each once and hands it to its own members.
//!
//! The subscription is a RESP3 connection with a push sender (the `redis`
//! crate's `PubSub` has no `SSUBSCRIBE`). Pushes are dispatched where they
//! arrive: a map lookup and the room's lock for microseconds, so nothing
//! queues up here. The room puts events into its reorder buffer
//! ([`Committed::deliver`]); what it still misses (a gap, a write of this
//! instance whose report was lost) is read from the Stream after
//! [`GAP_WAIT`] ([`Committed::follow_up`]). After the connection drops,
//! every held room is subscribed again and read up to Redis's head, so
//! nothing published meanwhile is missed.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use ::redis::{IntoConnectionInfo, PushInfo, PushKind, Value};
use natter_shared::{RoomEvent, Seq, UserName};
use tracing::{debug, info, warn};

use super::conn::{Mode, Sub};
use super::keys::RoomKeys;
use super::scripts::{self, event_from_json};
use super::{Failure, Known, RedisStartError, RedisStore, within};
use crate::metrics::Metrics;
use crate::store::{Arrival, Committed, FollowUp, FreshHistory, MemberChange};

/// How long a room waits for a missing seq before reading it from the
/// Stream: a write's reply and its publication reach this instance on two
/// connections, in either order, normally within a millisecond or two.
pub const GAP_WAIT: Duration = Duration::from_millis(100);
/// The most events one gap fill reads (`XRANGE … COUNT`); a longer gap
/// takes several reads.
pub const FILL_MAX: usize = crate::store::PENDING_MAX;
/// Reads one follow-up task makes before it pauses ([`GAP_WAIT`]) and
/// looks again: every read moves the room's head on, but a room that keeps
/// falling behind must not keep a task reading in a tight loop.
pub const FOLLOW_ROUNDS: usize = 8;
/// Batches kept for a room being opened (subscribed, not yet held); past
/// it they are dropped and the room is read up to Redis's head once held.
pub const EARLY_MAX: usize = 64;
/// Pause before subscribing again after a failed attempt while Redis is
/// away, and before retrying a fill that failed.
pub const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(500);
/// Channels of rooms let go that may stay subscribed. A bare
/// `SUNSUBSCRIBE` cannot be sent through the `redis` crate yet (its reply
/// is not matched, redis-rs/redis-rs#2533), so past this the subscription
/// connection is replaced by one subscribed to the held rooms only. Until
/// then a let-go room's batches cost one map lookup each.
pub const STALE_SUBSCRIPTIONS_MAX: usize = 64;

/// A batch heard on a room's channel before the room was held.
#[derive(Debug)]
struct Early {
    epoch: String,
    events: Vec<RoomEvent>,
    own: bool,
}

/// One subscribed room.
#[derive(Debug, Default)]
struct Slot {
    room: Option<Weak<dyn Committed>>,
    early: Vec<Early>,
    /// More than [`EARLY_MAX`] batches came before the room was held.
    early_lost: bool,
    /// A change of the room's members came before the room was held: its
    /// members elsewhere are read again once it is.
    members_early: bool,
    /// A follow-up task runs for this room.
    following: bool,
}

#[derive(Debug, Default)]
struct Slots {
    /// Held rooms (and rooms being opened) by channel.
    rooms: HashMap<String, Slot>,
    /// Channels subscribed on the current connection. A room let go keeps
    /// its subscription until the connection is replaced (see
    /// [`STALE_SUBSCRIPTIONS_MAX`]); its batches are dropped at the lookup.
    subscribed: HashSet<String>,
}

/// The subscriber of one natter instance.
pub(crate) struct Fanout {
    instance: String,
    /// Opens subscription connections (RESP3), to a server or a cluster.
    client: ::redis::Client,
    url: String,
    mode: Mode,
    /// The subscription connection (pushes to [`Fanout::push`]), and the
    /// generation its pushes carry: a replaced one's are ignored.
    sub: Mutex<Sub>,
    generation: AtomicU64,
    /// Where pushes go (set once the fan-out exists).
    target: Arc<OnceLock<Weak<Fanout>>>,
    /// Held while subscribing, and while the connection is replaced.
    subscribing: tokio::sync::Mutex<()>,
    replacing: AtomicBool,
    /// The store, for reads (`XRANGE`, `OPEN`) on its command connection.
    store: OnceLock<Weak<RedisStore>>,
    slots: Mutex<Slots>,
    timeout: Duration,
    reload_events: usize,
    resubscribing: AtomicBool,
    lost_again: AtomicBool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").field("instance", &self.instance).finish_non_exhaustive()
    }
}

/// The header of a batch `BATCH` publishes: `e <epoch> <first seq> <origin>`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header<'a> {
    pub epoch: &'a str,
    pub first: Seq,
    pub origin: &'a str,
}

/// Reads a change of a room's members a script published:
/// `m <instance> <version> +|- <name>`.
pub(crate) fn parse_member_change(payload: &str, me: &str) -> Option<MemberChange> {
    let rest = payload.strip_prefix("m ")?;
    let (instance, rest) = rest.split_once(' ')?;
    let (version, rest) = rest.split_once(' ')?;
    let (sign, name) = rest.split_once(' ')?;
    let joined = match sign {
        "+" => true,
        "-" => false,
        _ => return None,
    };
    Some(MemberChange {
        version: version.parse().ok()?,
        own: instance == me,
        instance: instance.to_owned(),
        joined,
        name: UserName::parse(name).ok()?,
    })
}

/// Reads a typing change another instance published: `t <instance> 0|1 <name>`.
pub(crate) fn parse_typing(payload: &str) -> Option<(&str, bool, UserName)> {
    let rest = payload.strip_prefix("t ")?;
    let (instance, rest) = rest.split_once(' ')?;
    let (active, name) = rest.split_once(' ')?;
    let active = match active {
        "1" => true,
        "0" => false,
        _ => return None,
    };
    Some((instance, active, UserName::parse(name).ok()?))
}

/// Splits a published batch into its header and its events' JSON lines.
pub(crate) fn parse_batch(payload: &str) -> Option<(Header<'_>, std::str::Split<'_, char>)> {
    let (head, body) = payload.split_once('\n')?;
    let mut words = head.split(' ');
    if words.next()? != "e" {
        return None;
    }
    let (epoch, first, origin) = (words.next()?, words.next()?.parse().ok()?, words.next()?);
    Some((Header { epoch, first: Seq(first), origin }, body.split('\n')))
}

impl Fanout {
    /// Connects the subscription connection.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        url: &str,
        display_url: &str,
        mode: Mode,
        instance: String,
        timeout: Duration,
        reload_events: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, RedisStartError> {
        let failed = |reason: String| RedisStartError::Connect { url: display_url.to_owned(), reason };
        let info = url.into_connection_info().map_err(|e| failed(e.to_string()))?;
        let resp3 = info.redis_settings().clone().set_protocol(::redis::ProtocolVersion::RESP3);
        let client = ::redis::Client::open(info.set_redis_settings(resp3)).map_err(|e| failed(e.to_string()))?;
        // Pushes go to the fan-out once it exists (none matter before).
        let target: Arc<OnceLock<Weak<Fanout>>> = Arc::default();
        let sub = match connect(&client, url, mode, timeout, &target, 0).await {
            Ok(sub) => sub,
            Err(e) => return Err(failed(format!("subscription connection (RESP3): {e}"))),
        };
        let fanout = Arc::new(Self {
            instance,
            client,
            url: url.to_owned(),
            mode,
            sub: Mutex::new(sub),
            generation: AtomicU64::new(0),
            target: target.clone(),
            subscribing: tokio::sync::Mutex::new(()),
            replacing: AtomicBool::new(false),
            store: OnceLock::new(),
            slots: Mutex::default(),
            timeout,
            reload_events,
            resubscribing: AtomicBool::new(false),
            lost_again: AtomicBool::new(false),
            metrics,
        });
        let _ = target.set(Arc::downgrade(&fanout));
        Ok(fanout)
    }

    pub(crate) fn set_store(&self, store: &Arc<RedisStore>) {
        let _ = self.store.set(Arc::downgrade(store));
    }

    fn store(&self) -> Option<Arc<RedisStore>> {
        self.store.get().and_then(Weak::upgrade)
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current subscription connection (clones share its socket).
    fn sub(&self) -> Sub {
        self.sub.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Subscribes to `room`'s channel (if not yet) and waits for Redis to
    /// confirm it: called before the room's history is read, so nothing
    /// published in between is missed (what the read already has is
    /// dropped by seq).
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<(), Failure> {
        let _subscribing = self.subscribing.lock().await;
        {
            let mut slots = self.lock();
            slots.rooms.entry(channel.to_owned()).or_default();
            if slots.subscribed.contains(channel) {
                return Ok(());
            }
        }
        let mut sub = self.sub();
        // One channel per command: each is confirmed by its own push, which
        // the crate takes as that command's reply.
        let subscribed = sub.ssubscribe(channel, self.timeout).await;
        let mut slots = self.lock();
        match subscribed {
            Ok(()) => {
                slots.subscribed.insert(channel.to_owned());
                Ok(())
            }
            Err(e) => {
                if slots.rooms.get(channel).is_some_and(|s| s.room.is_none()) {
                    slots.rooms.remove(channel);
                }
                Err(e)
            }
        }
    }

    /// The room is held: batches heard while it was opened are delivered,
    /// and what it misses is followed up.
    pub(crate) fn attach(self: &Arc<Self>, room: Arc<dyn Committed>) {
        let channel = RoomKeys::of(room.room_name()).channel;
        let (early, lost) = {
            let mut slots = self.lock();
            let slot = slots.rooms.entry(channel).or_default();
            slot.room = Some(Arc::downgrade(&room));
            if std::mem::take(&mut slot.members_early) {
                self.spawn_members(room.clone());
            }
            (std::mem::take(&mut slot.early), std::mem::take(&mut slot.early_lost))
        };
        for batch in early {
            let arrival = if batch.own { Arrival::Own } else { Arrival::Remote };
            room.deliver(&batch.epoch, batch.events, arrival);
        }
        if lost {
            self.spawn_resync(room);
        } else {
            self.follow(room);
        }
    }

    /// The room is let go: its batches are no longer delivered, and past
    /// [`STALE_SUBSCRIPTIONS_MAX`] such rooms the connection is replaced.
    pub(crate) fn forget(self: &Arc<Self>, channel: &str) {
        let stale = {
            let mut slots = self.lock();
            slots.rooms.remove(channel);
            slots.subscribed.iter().filter(|c| !slots.rooms.contains_key(*c)).count()
        };
        if stale > STALE_SUBSCRIPTIONS_MAX && !self.replacing.swap(true, Ordering::SeqCst) {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.replace().await {
                    warn!(error = %e, "cannot replace the subscription connection; let-go rooms stay subscribed");
                }
                this.replacing.store(false, Ordering::SeqCst);
            });
        }
    }

    /// Replaces the subscription connection by one subscribed to the held
    /// rooms only. The new one is subscribed before the old one goes, so
    /// nothing falls in between; what both deliver is dropped by seq.
    async fn replace(&self) -> Result<(), Failure> {
        let _subscribing = self.subscribing.lock().await;
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        let mut new = connect(&self.client, &self.url, self.mode, self.timeout, &self.target, generation).await?;
        let live: Vec<String> = self.lock().rooms.keys().cloned().collect();
        for channel in &live {
            new.ssubscribe(channel, self.timeout).await?;
        }
        self.generation.store(generation, Ordering::SeqCst);
        let old = std::mem::replace(&mut *self.sub.lock().unwrap_or_else(|p| p.into_inner()), new);
        let dropped = {
            let mut slots = self.lock();
            let before = slots.subscribed.len();
            slots.subscribed = live.into_iter().collect();
            before.saturating_sub(slots.subscribed.len())
        };
        drop(old);
        info!(unsubscribed = dropped, "subscription connection replaced: rooms let go are unsubscribed");
        Ok(())
    }

    /// A push from the subscription connection of `generation`.
    fn push(self: Arc<Self>, info: PushInfo, generation: u64) {
        if generation != self.generation.load(Ordering::SeqCst) {
            return;
        }
        match info.kind {
            PushKind::SMessage => {
                if let Some(msg) = ::redis::Msg::from_push_info(info) {
                    self.message(msg.get_channel_name(), msg.get_payload_bytes());
                }
            }
            PushKind::Disconnection => self.lost(),
            // A cluster node gave up a room's slot (it moved): subscribed
            // again, on the node that has it now.
            PushKind::SUnsubscribe if self.mode == Mode::Cluster => self.lost(),
            _ => {}
        }
    }

    /// What a room's channel carries: batches of events, changes of its
    /// members, typing.
    fn message(self: &Arc<Self>, channel: &str, payload: &[u8]) {
        match payload.first() {
            Some(b'm') => self.member_change(channel, payload),
            Some(b't') => self.typing(channel, payload),
            _ => self.batch(channel, payload),
        }
    }

    /// The held room of `channel`, if it is held yet (else `early` is
    /// called with its slot).
    fn held(&self, channel: &str, early: impl FnOnce(&mut Slot)) -> Option<Arc<dyn Committed>> {
        let mut slots = self.lock();
        let slot = slots.rooms.get_mut(channel)?;
        let room = slot.room.as_ref().and_then(Weak::upgrade);
        if room.is_none() {
            early(slot);
        }
        room
    }

    /// A change of a room's members (this instance's own included: each
    /// counts one in the room's member version).
    fn member_change(self: &Arc<Self>, channel: &str, payload: &[u8]) {
        let Some(change) = std::str::from_utf8(payload).ok().and_then(|p| parse_member_change(p, &self.instance))
        else {
            warn!(channel, "a published member change cannot be read; the room reads its members again");
            if let Some(room) = self.held(channel, |slot| slot.members_early = true) {
                self.spawn_members(room);
            }
            return;
        };
        let Some(room) = self.held(channel, |slot| slot.members_early = true) else { return };
        if let Some(delay) = room.member_elsewhere(change) {
            tokio::spawn(async move {
                let mut wait = Some(delay);
                while let Some(delay) = wait {
                    tokio::time::sleep(delay).await;
                    wait = room.flush_batched();
                }
            });
        } else {
            self.follow(room);
        }
    }

    /// Someone on another instance started or stopped typing.
    fn typing(&self, channel: &str, payload: &[u8]) {
        let Some((instance, active, name)) = std::str::from_utf8(payload).ok().and_then(parse_typing) else {
            debug!(channel, "a published typing change cannot be read");
            return;
        };
        if instance == self.instance {
            return;
        }
        if let Some(room) = self.held(channel, |_| {}) {
            room.typing_from_elsewhere(name, active);
        }
    }

    /// Reads the room's members on other instances afresh (in a task).
    fn spawn_members(self: &Arc<Self>, room: Arc<dyn Committed>) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.reset_members(&room).await {
                warn!(room = %room.room_name(), error = %e, "cannot read the room's members on other instances");
                this.follow(room);
            }
        });
    }

    async fn reset_members(&self, room: &Arc<dyn Committed>) -> Result<(), Failure> {
        let Some(store) = self.store() else { return Ok(()) };
        let read = store.elsewhere(room.room_name()).await?;
        room.members_reset(read);
        Ok(())
    }

    /// A batch published on a room's channel.
    fn batch(self: &Arc<Self>, channel: &str, payload: &[u8]) {
        let Some((header, lines)) = std::str::from_utf8(payload).ok().and_then(parse_batch) else {
            warn!(channel, "a published batch cannot be read; the room fills the gap from the stream");
            return;
        };
        let events: Vec<RoomEvent> = lines.filter_map(event_from_json).collect();
        if events.first().map(RoomEvent::seq) != Some(header.first) {
            // A line that does not parse: the room fills the gap from the stream.
            debug!(channel, first = header.first.0, "a published batch has an unreadable event");
        }
        let own = header.origin == self.instance;
        if !own {
            self.metrics.fanout_batches.inc();
        }
        let room = {
            let mut slots = self.lock();
            let Some(slot) = slots.rooms.get_mut(channel) else { return };
            match slot.room.as_ref().and_then(Weak::upgrade) {
                Some(room) => room,
                None => {
                    if slot.early.len() < EARLY_MAX {
                        slot.early.push(Early { epoch: header.epoch.to_owned(), events, own });
                    } else {
                        slot.early_lost = true;
                    }
                    return;
                }
            }
        };
        if room.position().0 != header.epoch {
            // Another history: the room's own is read afresh if it changed.
            self.spawn_resync(room);
            return;
        }
        room.deliver(header.epoch, events, if own { Arrival::Own } else { Arrival::Remote });
        self.follow(room);
    }

    /// If the room misses something, reads it after [`GAP_WAIT`] (one task
    /// per room at a time).
    pub(crate) fn follow(self: &Arc<Self>, room: Arc<dyn Committed>) {
        if room.follow_up().is_none() {
            return;
        }
        let channel = RoomKeys::of(room.room_name()).channel;
        {
            let mut slots = self.lock();
            let Some(slot) = slots.rooms.get_mut(&channel) else { return };
            if slot.following {
                return;
            }
            slot.following = true;
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(GAP_WAIT).await;
            let mut failed = false;
            for _ in 0..FOLLOW_ROUNDS {
                let Some(up) = room.follow_up() else { break };
                let done = match up {
                    FollowUp::Fill { history_id, after, upto } => this.fill(&room, &history_id, after, upto).await,
                    FollowUp::Reload => this.reload(&room, None).await,
                    FollowUp::Members => this.reset_members(&room).await,
                };
                if let Err(e) = done {
                    warn!(room = %room.room_name(), error = %e, "cannot read what the room misses; trying again");
                    failed = true;
                    break;
                }
            }
            if let Some(slot) = this.lock().rooms.get_mut(&channel) {
                slot.following = false;
            }
            if failed {
                tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
            }
            this.follow(room);
        });
    }

    /// Reads `after < seq <= upto` (at most [`FILL_MAX`]) of the room's
    /// stream and delivers it, if the stream still belongs to `history_id`.
    async fn fill(&self, room: &Arc<dyn Committed>, history_id: &str, after: Seq, upto: Seq) -> Result<(), Failure> {
        let Some(store) = self.store() else { return Ok(()) };
        let upto = upto.min(Seq(after.0.saturating_add(FILL_MAX as u64)));
        let keys = RoomKeys::of(room.room_name());
        let mut pipe = ::redis::pipe();
        // Atomic: the epoch read is the one the entries belong to.
        pipe.atomic().cmd("HGET").arg(&keys.meta).arg("epoch").cmd("XRANGE").arg(&keys.stream);
        pipe.arg(format!("({}-0", after.0)).arg(format!("{}-0", upto.0));
        // After the writer's round in flight, if any, was reported: what
        // this reads is then either reported already or not this
        // instance's to report (another's, or a round whose answer was lost).
        let _quiet = store.rounds().read().await;
        let mut conn = store.conn();
        let (epoch, entries): (Option<String>, Value) = within(self.timeout, pipe.query_async(&mut conn)).await?;
        if epoch.as_deref() != Some(history_id) {
            return self.reload(room, Some(history_id)).await;
        }
        let events = scripts::parse_entries(&entries)?;
        self.metrics.gap_fills.inc();
        debug!(room = %room.room_name(), after = after.0, upto = upto.0, read = events.len(), "gap filled from the stream");
        room.deliver(history_id, events, Arrival::Filled { upto });
        Ok(())
    }

    /// Reads the room's history afresh (`OPEN`). `only_if_not`: take it
    /// only if its epoch is not this one (else nothing changed).
    async fn reload(&self, room: &Arc<dyn Committed>, only_if_not: Option<&str>) -> Result<(), Failure> {
        let Some(store) = self.store() else { return Ok(()) };
        let name = room.room_name();
        let opened = store.open(name, self.reload_events, None, "").await?;
        if only_if_not == Some(opened.epoch.as_str()) {
            return Ok(());
        }
        store.remember(name, Known { epoch: opened.epoch.clone(), head: opened.head });
        room.reload(FreshHistory { id: opened.epoch, head: opened.head, latest: opened.latest });
        Ok(())
    }

    /// Brings a room up to Redis's head: a new history is taken, missed
    /// events of the same one are read.
    async fn resync(self: &Arc<Self>, room: &Arc<dyn Committed>) -> Result<(), Failure> {
        let Some(store) = self.store() else { return Ok(()) };
        let (history, head) = room.position();
        let opened = store.open(room.room_name(), self.reload_events, None, &history).await?;
        if opened.epoch != history {
            store.remember(room.room_name(), Known { epoch: opened.epoch.clone(), head: opened.head });
            room.reload(FreshHistory { id: opened.epoch, head: opened.head, latest: opened.latest });
        } else if opened.head > head {
            self.fill(room, &history, head, opened.head).await?;
        }
        self.reset_members(room).await?;
        self.follow(room.clone());
        Ok(())
    }

    fn spawn_resync(self: &Arc<Self>, room: Arc<dyn Committed>) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.resync(&room).await {
                warn!(room = %room.room_name(), error = %e, "cannot bring the room up to date");
            }
        });
    }

    /// The subscription connection dropped: the crate reconnects; every
    /// held room is subscribed again, then read up to Redis's head.
    fn lost(self: &Arc<Self>) {
        self.lost_again.store(true, Ordering::SeqCst);
        if self.resubscribing.swap(true, Ordering::SeqCst) {
            return;
        }
        warn!("the Redis subscription connection dropped; subscribing again");
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.resubscribe().await;
                this.resubscribing.store(false, Ordering::SeqCst);
                // A drop noticed after the last round but before the flag
                // fell: this task handles it too.
                if !this.lost_again.load(Ordering::SeqCst) || this.resubscribing.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
            let rooms: Vec<Arc<dyn Committed>> =
                this.lock().rooms.values().filter_map(|s| s.room.as_ref().and_then(Weak::upgrade)).collect();
            this.metrics.resubscribes.inc();
            info!(rooms = rooms.len(), "subscribed again; reading what the rooms missed");
            for room in rooms {
                this.spawn_resync(room);
            }
        });
    }

    /// Subscribes every held room's channel again, until it works.
    async fn resubscribe(&self) {
        while self.lost_again.swap(false, Ordering::SeqCst) {
            if self.mode == Mode::Cluster {
                // A new connection with each held room subscribed on its
                // own (the crate's resubscription sends several slots'
                // channels in one command, which a cluster refuses).
                loop {
                    match self.replace().await {
                        Ok(()) => break,
                        Err(_) if self.store().is_none() => return,
                        Err(e) => {
                            debug!(error = %e, "a new subscription connection failed; retrying");
                            tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                        }
                    }
                }
                continue;
            }
            self.lock().subscribed.clear();
            loop {
                let channels: Vec<String> = self.lock().rooms.keys().cloned().collect();
                let mut failed = None;
                for channel in &channels {
                    if let Err(e) = self.subscribe(channel).await {
                        failed = Some(e);
                        break;
                    }
                }
                match failed {
                    None => break,
                    // The server stopped: nothing to subscribe for.
                    Some(_) if self.store().is_none() => return,
                    Some(e) => {
                        debug!(error = %e, "subscribing again failed; retrying");
                        tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                    }
                }
            }
        }
    }
}

/// A subscription connection whose pushes go to the fan-out in `target`,
/// marked with `generation`.
async fn connect(
    client: &::redis::Client,
    url: &str,
    mode: Mode,
    timeout: Duration,
    target: &Arc<OnceLock<Weak<Fanout>>>,
    generation: u64,
) -> Result<Sub, Failure> {
    let to = target.clone();
    let sender = move |info: PushInfo| -> Result<(), Infallible> {
        if let Some(fanout) = to.get().and_then(Weak::upgrade) {
            fanout.push(info, generation);
        }
        Ok(())
    };
    Sub::connect(client, url, mode, timeout, sender).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_changes_and_typing_are_read_with_names_that_have_spaces() {
        let change = parse_member_change("m i2 41 + Ada Lovelace", "i1").expect("a change");
        assert_eq!((change.version, change.instance.as_str(), change.own, change.joined), (41, "i2", false, true));
        assert_eq!(change.name.as_str(), "Ada Lovelace");
        assert!(parse_member_change("m i1 42 - Bo", "i1").is_some_and(|c| c.own && !c.joined));
        assert!(parse_member_change("m i1 x + Bo", "i1").is_none(), "the version is a number");
        assert!(parse_member_change("m i1 3 * Bo", "i1").is_none(), "+ or -");
        assert!(parse_member_change("m i1 3 + ", "i1").is_none(), "a valid name");
        let (instance, active, name) = parse_typing("t i3 1 Cy Young").expect("typing");
        assert_eq!((instance, active, name.as_str()), ("i3", true, "Cy Young"));
        assert!(parse_typing("t i3 2 Cy").is_none());
    }

    #[test]
    fn a_published_batch_splits_into_its_header_and_events() {
        let (header, lines) = parse_batch("e ab12 7 inst9\n{\"a\":1}\n{\"b\":2}").expect("a batch");
        assert_eq!(header, Header { epoch: "ab12", first: Seq(7), origin: "inst9" });
        assert_eq!(lines.collect::<Vec<_>>(), ["{\"a\":1}", "{\"b\":2}"]);
        assert!(parse_batch("p 1 2 j x\n{}").is_none(), "other kinds are not batches");
        assert!(parse_batch("e ab12 x inst9\n{}").is_none(), "the seq is a number");
        assert!(parse_batch("e ab12 7 inst9").is_none(), "a batch has events");
    }
}
