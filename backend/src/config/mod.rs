//! Server configuration: every limit, timeout and bound in one plain struct,
//! with the defaults as named constants. [`cli`] fills it from flags and the
//! environment; tests build it directly.

pub mod cli;
pub mod names;
pub mod origin;
pub mod paths;

use std::path::PathBuf;
use std::time::Duration;

use natter_shared::limits::MAX_FRAME_BYTES;

pub use crate::address::Network;
use names::{BadName, Names};
use origin::{BadOrigin, OriginPolicy};

/// Default listen address: loopback only, so a fresh start exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default directory of the built page (trunk's output).
pub const DEFAULT_BUNDLE_DIR: &str = "dist";
/// `/healthz` says only `{"status":"ok"}`; counts of sessions and rooms are opt-in.
pub const DEFAULT_HEALTHZ_DETAIL: bool = false;
/// Open TCP connections (HTTP and WebSocket) above which new ones get 503.
/// Stays below the 20,000 open-file limit of our machines.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_000;
/// Messages queued for one connection before it counts as lagged and is closed
/// with the `lagged` code (policy: close and let it resume; never grow, never drop silently).
/// Room for a whole group commit (at most [`DEFAULT_WRITE_BATCH`] events,
/// broadcast together when the commit lands): a disk that stalls an fsync
/// for a second must not make every member of a busy room "lag". 32 bytes
/// per queued message (the text is shared), and only while queued.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 4096;
/// Bytes queued for one connection, or being written to it, before it
/// counts as lagged and is closed (the connection's output budget). The
/// connection's reader answers no further request while more than half of
/// it is in use, and no single reply (a `history` page, a welcome) is larger
/// than half: so a client that asks for more than it reads costs at most
/// this much. A busy room's member that falls further behind resumes.
pub const DEFAULT_OUTPUT_BUDGET: usize = 1024 * 1024;
/// The most bytes one member takes in a welcome's member list:
/// `{"name":"…","color":"#rrggbb"}` with a name of 24 four-byte characters.
pub const MEMBER_JSON_MAX_BYTES: usize = 128;
/// Room in the output budget beside a full room's member list, for the rest
/// of a welcome (at least one event of the longest kind).
pub const WELCOME_BESIDE_MEMBERS_BYTES: usize = 16 * 1024;
/// The smallest output budget: a welcome or a page of a few full-length
/// messages must fit in half of it.
pub const MIN_OUTPUT_BUDGET: usize = 64 * 1024;

// A full room's welcome (its first page of members and one event of the
// longest kind) fits in any joiner's reply limit (half the budget), whatever
// the room's size, or every joiner would be closed as lagged, resume, and be
// closed again.
const _: () = assert!(
    natter_shared::limits::MEMBERS_PAGE_MAX as usize * MEMBER_JSON_MAX_BYTES + WELCOME_BESIDE_MEMBERS_BYTES
        <= MIN_OUTPUT_BUDGET / 2
);
/// Events the in-memory history keeps per room (older ones are forgotten).
pub const DEFAULT_HISTORY_PER_ROOM: usize = 500;
/// Events sent in `welcome` on a fresh join.
pub const DEFAULT_WELCOME_HISTORY: usize = 100;
/// Most events replayed on a resume; beyond it the latest ones plus `missed`.
pub const DEFAULT_REPLAY_MAX: usize = 500;
/// Rooms the server holds at once; `hello` to a new room beyond it gets `too_many_rooms`.
pub const DEFAULT_MAX_ROOMS: usize = 2_000;
/// Open connections from one client address (an IPv4 address or an IPv6
/// /64): beyond it new ones get 429, so one host cannot take the slots that
/// belong to everyone. Room for an office behind one NAT address.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: u32 = 256;
/// Joined sessions from one client address; beyond it `hello` gets `too_many_joins`.
pub const DEFAULT_MAX_JOINS_PER_ADDRESS: u32 = 256;
/// Rooms one client address created that the server holds at once; beyond
/// it `hello` to a new room gets `too_many_rooms` (its empty ones are let go first).
pub const DEFAULT_MAX_ROOMS_PER_ADDRESS: u32 = 50;
/// Members one room holds; beyond it `hello` gets `room_full`.
pub const DEFAULT_MAX_MEMBERS_PER_ROOM: usize = 5_000;
/// Rooms with more members than this announce presence in batches
/// (`presence` frames, shown as lines but not stored) instead of a stored
/// notice per join and leave. A stored notice costs each join a row, a
/// share of an fsync and a frame to every member: in a storm into
/// 100-member rooms, 88–93 µs of server CPU per join with 50 here, 59–61
/// with 20, 50–54 with 10 (docs/BENCHMARKS.md). Past a team's size, who
/// opened the page when is not worth keeping in the history.
pub const DEFAULT_PRESENCE_THRESHOLD: usize = 20;
/// The shortest time between two `presence` frames of a big room.
pub const DEFAULT_PRESENCE_INTERVAL: Duration = Duration::from_secs(1);
/// A big room's presence frames per second, on average, whatever its size:
/// its interval grows with it (members / this, in seconds, when longer than
/// the configured interval), so filling a room of N costs O(N) frames.
pub const PRESENCE_FRAMES_PER_SEC: usize = 500;
/// Token bucket: sustained client frames per second.
pub const DEFAULT_RATE_PER_SEC: u32 = 5;
/// Token bucket: burst size.
pub const DEFAULT_RATE_BURST: u32 = 10;
/// Frames refused in a row with `rate_limited` before the connection is closed with 1008.
pub const DEFAULT_RATE_STRIKES: u32 = 10;
/// Re-sends (a `say` with `after`) whose original is looked up at once per
/// connection, and per second after that ([`DEFAULT_RESEND_CHECKS_PER_CONNECTION_PER_SEC`]).
/// A page re-sends its in-flight window (5) after a reconnect, and a refused
/// message again 1.5 s later. Beyond it a re-send is refused `rate_limited`
/// (the page sends it again shortly), never stored without a look-up.
/// Only the SQLite store looks re-sends up; the others check every message.
pub const DEFAULT_RESEND_CHECKS_PER_CONNECTION: u32 = 16;
/// See [`DEFAULT_RESEND_CHECKS_PER_CONNECTION`].
pub const DEFAULT_RESEND_CHECKS_PER_CONNECTION_PER_SEC: u32 = 1;
/// Re-sends looked up at once per client address (a NAT'd office
/// reconnecting together), and per second after that. Beyond it a re-send
/// is refused `rate_limited`, as above. Each look-up reads at most
/// [`crate::store::sqlite::RESEND_SCAN_EVENTS`] events, and the writer's
/// time for all of them is bounded by [`crate::store::sqlite::RESEND_LOOKUP_BUDGET`].
pub const DEFAULT_RESEND_CHECKS_PER_ADDRESS_BURST: u32 = 256;
/// See [`DEFAULT_RESEND_CHECKS_PER_ADDRESS_BURST`].
pub const DEFAULT_RESEND_CHECKS_PER_ADDRESS_PER_SEC: u32 = 32;
/// How often the server pings a connection.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(20);
/// How long the server waits for any frame (normally the pong) after a ping.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dropped connection may take to resume before `timed_out` is announced.
pub const DEFAULT_LEAVE_GRACE: Duration = Duration::from_secs(5);
/// On shutdown, how long to wait for connections to flush and close.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// After a restart, how long the members saved at the stop have to resume
/// (a browser reconnects within seconds of a 1012; a deploy may take longer).
pub const DEFAULT_RESTART_GRACE: Duration = Duration::from_secs(30);
/// How long a close handshake (our close frame out, the peer's back) may take.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client closed as lagged gets to read up to its close frame
/// (only the rest of the frame it was in the middle of comes before it; the
/// connection holds nothing else meanwhile and has already left its room).
pub const DEFAULT_LAGGED_CLOSE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a write to a client may go without the socket taking a byte
/// before the client counts as gone (progress, not the whole write: a slow
/// but steady reader of a long replay is not cut off).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one frame, or all the fragments of one message, may take to
/// arrive once begun: a client that trickles bytes holds decoder buffers and
/// looks alive, so it is closed (1008) instead.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an open WebSocket may take to send `hello`.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may take to send its HTTP request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of queued frames gathered into one write call. The buffer
/// exists only while a batch is being written (an idle connection has none).
pub const DEFAULT_WS_WRITE_BATCH_BYTES: usize = 64 * 1024;
/// The kernel's send buffer for a WebSocket connection (Linux doubles it).
/// Left to autotuning it grows to megabytes, which a client that stops
/// reading fills silently for minutes before the outbound queue sees
/// anything; bounded, a stalled client is found lagging within seconds.
pub const DEFAULT_WS_SEND_BUFFER: usize = 64 * 1024;
/// Write coalescing: a connection that was written to less than this long ago
/// waits out the rest before its next write, so a busy room's frames go out
/// several per system call. The first frame after a quiet spell goes out at
/// once; zero turns coalescing off.
pub const DEFAULT_WS_WRITE_COALESCE: Duration = Duration::from_millis(25);
/// The longest write coalescing accepted: beyond it a room would feel slow.
pub const MAX_WS_WRITE_COALESCE: Duration = Duration::from_secs(1);

/// Default directory for the database.
pub const DEFAULT_DATA_DIR: &str = "natter-data";
/// Writes queued for the history writer before senders wait.
pub const DEFAULT_WRITE_QUEUE: usize = 65_536;
/// Most events the writer stores in one transaction (group commit).
pub const DEFAULT_WRITE_BATCH: usize = 4_096;
/// Read-only database connections (WAL readers on blocking threads) for
/// replays, history pages and rooms being opened; more reads wait for one.
pub const DEFAULT_READ_CONNECTIONS: usize = 4;
/// How often retention looks for events to delete.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// How long Redis may take to answer one request (a round of writes, a
/// read, a connection attempt) before it counts as unavailable: a `say`
/// then gets `storage_unavailable`. The `redis` crate's own default (500 ms)
/// is shorter than an fsync stall of a busy disk.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an instance on Redis counts as alive after its last renewal
/// (it renews three times per period): past it, the names its members hold
/// may be taken by joiners on other instances.
pub const DEFAULT_INSTANCE_TTL: Duration = Duration::from_secs(15);
/// The shortest instance TTL: renewed every third of it, a shorter one
/// would declare instances dead over an ordinary pause.
pub const MIN_INSTANCE_TTL: Duration = Duration::from_secs(1);
/// URL schemes `--redis` accepts (TLS is not built in).
pub const REDIS_URL_SCHEMES: &[&str] = &["redis://", "redis+unix://", "unix://"];

/// Where history is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HistoryKind {
    /// SQLite in the data directory: survives restarts and crashes.
    #[default]
    Sqlite,
    /// In memory, bounded per room: lost on restart (tests, ephemeral rooms).
    Memory,
    /// Redis (`--redis`): durable if Redis is (see [`RedisDurability`]).
    Redis(RedisConfig),
}

/// How sure natter must be that Redis keeps what it acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisDurability {
    /// Refuse to start unless Redis writes every change to its append-only
    /// file and fsyncs it before answering (`appendonly yes`, `appendfsync
    /// always`) and never evicts keys (`maxmemory-policy noeviction`): then
    /// an ack means stored, as with SQLite.
    #[default]
    Strict,
    /// Start anyway, with a warning naming what is missing: an ack may be
    /// lost if Redis crashes.
    Relaxed,
}

/// Redis settings (`--redis`, `--redis-durability`, `--redis-timeout`).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db`; may hold a password, so never logged as is
    /// (see [`RedisConfig::display_url`]).
    pub url: String,
    pub durability: RedisDurability,
    pub timeout: Duration,
    /// See [`DEFAULT_INSTANCE_TTL`].
    pub instance_ttl: Duration,
}

impl RedisConfig {
    /// Settings for `url` with the default durability and timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            durability: RedisDurability::default(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            instance_ttl: DEFAULT_INSTANCE_TTL,
        }
    }

    /// The URL with any user and password replaced by `***`, for logs and errors.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// `url` with its user information (before an `@` in the authority) hidden.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.display_url())
            .field("durability", &self.durability)
            .field("timeout", &self.timeout)
            .field("instance_ttl", &self.instance_ttl)
            .finish()
    }
}

/// Durable storage settings.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub write_queue: usize,
    pub write_batch: usize,
    /// Keep at most this many events per room (older ones are deleted).
    pub retain_count: Option<u64>,
    /// Delete events older than this.
    pub retain_age: Option<Duration>,
    pub retention_interval: Duration,
    /// Most bytes the database may use; beyond it writes fail with
    /// `storage_unavailable` until space is freed.
    pub max_db_bytes: Option<u64>,
    /// Read-only connections for replays, pages and room loads.
    pub read_connections: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            write_queue: DEFAULT_WRITE_QUEUE,
            write_batch: DEFAULT_WRITE_BATCH,
            retain_count: None,
            retain_age: None,
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            max_db_bytes: None,
            read_connections: DEFAULT_READ_CONNECTIONS,
        }
    }
}

/// Everything the server needs to know. `Default` is the documented default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the built page; served at `/` when it holds `index.html`.
    pub bundle_dir: PathBuf,
    /// Serve the page built into the binary, when it has one, instead of
    /// `bundle_dir` (the flags set this unless `--bundle-dir` is given).
    pub embedded_page: bool,
    /// Which browser origins may open a WebSocket.
    pub origins: OriginPolicy,
    /// The names (`Host`) the server answers to; empty: its listen address and loopback names.
    pub names: Names,
    /// `/healthz` also reports session and room counts (to requests naming the server).
    pub healthz_detail: bool,
    pub max_connections: usize,
    /// Reverse proxies whose `X-Forwarded-For` names the client address
    /// that per-address limits count; everyone else's header is ignored.
    pub trusted_proxies: Vec<Network>,
    pub history: HistoryKind,
    pub storage: StorageConfig,
    pub conn: ConnLimits,
    pub limits: RoomLimits,
    pub rate: RateConfig,
    pub timing: Timing,
    pub ws: WsConfig,
}

/// Bounds on one connection.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Messages queued for the connection before it is closed as lagged.
    pub outbound_queue: usize,
    /// Bytes queued or being written before it is closed as lagged.
    pub output_budget: usize,
    /// Open connections (HTTP or WebSocket) from one client address.
    pub max_connections_per_address: u32,
    /// Joined WebSocket sessions from one client address.
    pub max_joins_per_address: u32,
}

impl ConnLimits {
    /// The largest reply to one request (a `history` page, a welcome), and
    /// the output in use above which the reader waits before the next request.
    pub fn reply_max_bytes(&self) -> usize {
        self.output_budget / 2
    }
}

/// Bounds on rooms, members and history.
#[derive(Debug, Clone)]
pub struct RoomLimits {
    pub history_per_room: usize,
    pub welcome_history: usize,
    pub replay_max: usize,
    pub max_rooms: usize,
    pub max_members_per_room: usize,
    /// Rooms held by the hub that one client address created.
    pub max_rooms_per_address: u32,
    /// Members above which a room's presence goes out in batches, unstored.
    pub presence_threshold: usize,
    /// The shortest time between two presence batches of a big room.
    pub presence_interval: Duration,
}

impl RoomLimits {
    /// How long a room of `members` waits between presence batches.
    pub fn presence_interval_for(&self, members: usize) -> Duration {
        let scaled = Duration::from_millis((members as u64).saturating_mul(1000) / PRESENCE_FRAMES_PER_SEC as u64);
        self.presence_interval.max(scaled)
    }
}

/// Per-connection flood control (a token bucket).
#[derive(Debug, Clone, Copy)]
pub struct RateConfig {
    pub per_sec: u32,
    pub burst: u32,
    pub strikes: u32,
    /// Re-send look-ups per connection and per client address: at once,
    /// and per second after that ([`DEFAULT_RESEND_CHECKS_PER_CONNECTION`]
    /// and its kin by default; no flag).
    pub resend_checks_per_connection: u32,
    pub resend_checks_per_connection_per_sec: u32,
    pub resend_checks_burst: u32,
    pub resend_checks_per_sec: u32,
}

/// Heartbeats, grace periods and timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub leave_grace: Duration,
    pub restart_grace: Duration,
    pub shutdown_timeout: Duration,
    pub close_timeout: Duration,
    pub lagged_close_timeout: Duration,
    pub write_timeout: Duration,
    pub header_read_timeout: Duration,
    pub hello_timeout: Duration,
    pub frame_timeout: Duration,
}

/// WebSocket framing limits and how frames are written.
#[derive(Debug, Clone, Copy)]
pub struct WsConfig {
    pub max_message_bytes: usize,
    pub write_batch_bytes: usize,
    pub write_coalesce: Duration,
    pub send_buffer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bundle_dir: PathBuf::from(DEFAULT_BUNDLE_DIR),
            embedded_page: false,
            origins: OriginPolicy::default(),
            names: Names::default(),
            healthz_detail: DEFAULT_HEALTHZ_DETAIL,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            trusted_proxies: Vec::new(),
            history: HistoryKind::default(),
            storage: StorageConfig::default(),
            conn: ConnLimits::default(),
            limits: RoomLimits::default(),
            rate: RateConfig::default(),
            timing: Timing::default(),
            ws: WsConfig::default(),
        }
    }
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            output_budget: DEFAULT_OUTPUT_BUDGET,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_joins_per_address: DEFAULT_MAX_JOINS_PER_ADDRESS,
        }
    }
}

impl Default for RoomLimits {
    fn default() -> Self {
        Self {
            history_per_room: DEFAULT_HISTORY_PER_ROOM,
            welcome_history: DEFAULT_WELCOME_HISTORY,
            replay_max: DEFAULT_REPLAY_MAX,
            max_rooms: DEFAULT_MAX_ROOMS,
            max_members_per_room: DEFAULT_MAX_MEMBERS_PER_ROOM,
            max_rooms_per_address: DEFAULT_MAX_ROOMS_PER_ADDRESS,
            presence_threshold: DEFAULT_PRESENCE_THRESHOLD,
            presence_interval: DEFAULT_PRESENCE_INTERVAL,
        }
    }
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            per_sec: DEFAULT_RATE_PER_SEC,
            burst: DEFAULT_RATE_BURST,
            strikes: DEFAULT_RATE_STRIKES,
            resend_checks_per_connection: DEFAULT_RESEND_CHECKS_PER_CONNECTION,
            resend_checks_per_connection_per_sec: DEFAULT_RESEND_CHECKS_PER_CONNECTION_PER_SEC,
            resend_checks_burst: DEFAULT_RESEND_CHECKS_PER_ADDRESS_BURST,
            resend_checks_per_sec: DEFAULT_RESEND_CHECKS_PER_ADDRESS_PER_SEC,
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            leave_grace: DEFAULT_LEAVE_GRACE,
            restart_grace: DEFAULT_RESTART_GRACE,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            lagged_close_timeout: DEFAULT_LAGGED_CLOSE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: MAX_FRAME_BYTES,
            write_batch_bytes: DEFAULT_WS_WRITE_BATCH_BYTES,
            write_coalesce: DEFAULT_WS_WRITE_COALESCE,
            send_buffer: DEFAULT_WS_SEND_BUFFER,
        }
    }
}

/// A configuration that cannot work, found before the server starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} must be at least {min} (got {value})")]
    TooSmall { name: &'static str, min: u64, value: u64 },
    #[error("{name} must be at most {max:?} (got {value:?})")]
    TooLong { name: &'static str, max: Duration, value: Duration },
    #[error(transparent)]
    BadOrigin(#[from] BadOrigin),
    #[error(transparent)]
    BadName(#[from] BadName),
    #[error(transparent)]
    BadNetwork(#[from] crate::address::BadNetwork),
    #[error(
        "the data directory {} is inside the bundle directory {}, whose files are served to everyone; \
         choose a --data-dir outside --bundle-dir",
        .data.display(),
        .bundle.display()
    )]
    DataInsideBundle { data: PathBuf, bundle: PathBuf },
    #[error("cannot tell where the data directory {} is: {error}", .data.display())]
    DataDir { data: PathBuf, error: String },
    #[error("--redis {url}: {reason}")]
    RedisUrl { url: String, reason: &'static str },
}

impl Config {
    /// Checks the bounds that would make the server misbehave rather than
    /// refuse clearly (a zero queue, a zero rate).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&'static str, u64, u64); 20] = [
            ("write queue", 1, self.storage.write_queue as u64),
            ("write batch", 1, self.storage.write_batch as u64),
            ("read connections", 1, self.storage.read_connections as u64),
            ("max connections", 1, self.max_connections as u64),
            ("outbound queue", 2, self.conn.outbound_queue as u64),
            ("output budget bytes", MIN_OUTPUT_BUDGET as u64, self.conn.output_budget as u64),
            ("history per room", 1, self.limits.history_per_room as u64),
            ("replay max", 1, self.limits.replay_max as u64),
            ("max rooms", 1, self.limits.max_rooms as u64),
            ("max members per room", 1, self.limits.max_members_per_room as u64),
            ("max rooms per address", 1, u64::from(self.limits.max_rooms_per_address)),
            ("max connections per address", 1, u64::from(self.conn.max_connections_per_address)),
            ("max joins per address", 1, u64::from(self.conn.max_joins_per_address)),
            ("frame timeout ms", 1, self.timing.frame_timeout.as_millis() as u64),
            ("presence interval ms", 1, self.limits.presence_interval.as_millis() as u64),
            ("rate per second", 1, u64::from(self.rate.per_sec)),
            ("rate burst", 1, u64::from(self.rate.burst)),
            ("max message bytes", 1024, self.ws.max_message_bytes as u64),
            ("write batch bytes", 1024, self.ws.write_batch_bytes as u64),
            ("send buffer bytes", 4096, self.ws.send_buffer as u64),
        ];
        for (name, min, value) in checks {
            if value < min {
                return Err(ConfigError::TooSmall { name, min, value });
            }
        }
        if self.ws.write_coalesce > MAX_WS_WRITE_COALESCE {
            let (max, value) = (MAX_WS_WRITE_COALESCE, self.ws.write_coalesce);
            return Err(ConfigError::TooLong { name: "write coalescing", max, value });
        }
        if let HistoryKind::Redis(redis) = &self.history {
            check_redis(redis)?;
        }
        self.check_data_dir()
    }

    /// Refuses a data directory inside the bundle directory, which would serve
    /// the database to everyone (only SQLite writes there).
    fn check_data_dir(&self) -> Result<(), ConfigError> {
        if self.history != HistoryKind::Sqlite {
            return Ok(());
        }
        let (data, bundle) = (&self.storage.data_dir, &self.bundle_dir);
        match paths::is_inside(data, bundle) {
            Ok(false) => Ok(()),
            Ok(true) => Err(ConfigError::DataInsideBundle { data: data.clone(), bundle: bundle.clone() }),
            Err(e) => Err(ConfigError::DataDir { data: data.clone(), error: e.to_string() }),
        }
    }
}

/// Refuses a Redis URL natter cannot use, and a zero timeout.
fn check_redis(redis: &RedisConfig) -> Result<(), ConfigError> {
    let refuse = |reason| Err(ConfigError::RedisUrl { url: redis.display_url(), reason });
    if redis.url.starts_with("rediss://") {
        return refuse("TLS (rediss://) is not built into this natter; reach Redis over a private network or a tunnel");
    }
    if !REDIS_URL_SCHEMES.iter().any(|scheme| redis.url.starts_with(scheme)) {
        return refuse("expected redis://host:port/db");
    }
    if redis.timeout.is_zero() {
        return Err(ConfigError::TooSmall { name: "redis timeout ms", min: 1, value: 0 });
    }
    if redis.instance_ttl < MIN_INSTANCE_TTL {
        let value = u64::try_from(redis.instance_ttl.as_millis()).unwrap_or(u64::MAX);
        let min = u64::try_from(MIN_INSTANCE_TTL.as_millis()).unwrap_or(u64::MAX);
        return Err(ConfigError::TooSmall { name: "redis instance ttl ms", min, value });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_are_checked_and_their_passwords_never_shown() {
        let mut config =
            Config { history: HistoryKind::Redis(RedisConfig::new("redis://127.0.0.1:6379/2")), ..Config::default() };
        assert_eq!(config.validate(), Ok(()));
        config.history = HistoryKind::Redis(RedisConfig::new("http://127.0.0.1:6379"));
        assert!(matches!(config.validate(), Err(ConfigError::RedisUrl { .. })));
        config.history = HistoryKind::Redis(RedisConfig::new("rediss://:pw@example.com"));
        let refused = config.validate().expect_err("no TLS").to_string();
        assert!(refused.contains("TLS") && !refused.contains("pw"), "{refused}");
        let secret = RedisConfig::new("redis://user:s3cret@db.internal:6379/0");
        assert_eq!(secret.display_url(), "redis://***@db.internal:6379/0");
        assert!(!format!("{secret:?}").contains("s3cret"));
        assert_eq!(redact_url("redis://10.0.0.1:6379/0"), "redis://10.0.0.1:6379/0");
        let zero = RedisConfig { timeout: Duration::ZERO, ..RedisConfig::new("redis://127.0.0.1") };
        config.history = HistoryKind::Redis(zero);
        assert!(matches!(config.validate(), Err(ConfigError::TooSmall { name: "redis timeout ms", .. })));
        let short = RedisConfig { instance_ttl: Duration::from_millis(200), ..RedisConfig::new("redis://127.0.0.1") };
        config.history = HistoryKind::Redis(short);
        assert!(matches!(config.validate(), Err(ConfigError::TooSmall { name: "redis instance ttl ms", .. })));
    }

    #[test]
    fn the_default_config_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn write_coalescing_beyond_a_second_is_refused() {
        let mut config = Config::default();
        config.ws.write_coalesce = Duration::from_secs(2);
        assert_eq!(
            config.validate(),
            Err(ConfigError::TooLong {
                name: "write coalescing",
                max: MAX_WS_WRITE_COALESCE,
                value: Duration::from_secs(2)
            })
        );
    }

    #[test]
    fn the_smallest_budget_takes_the_welcome_of_the_biggest_room() {
        // The welcome lists one page of members, whatever the room's size.
        let mut config = Config::default();
        config.conn.output_budget = MIN_OUTPUT_BUDGET;
        config.limits.max_members_per_room = 1_000_000;
        assert_eq!(config.validate(), Ok(()));
        config.conn.output_budget = MIN_OUTPUT_BUDGET - 1;
        assert!(matches!(config.validate(), Err(ConfigError::TooSmall { .. })));
    }

    #[test]
    fn a_zero_queue_is_refused() {
        let mut config = Config::default();
        config.conn.outbound_queue = 0;
        assert_eq!(config.validate(), Err(ConfigError::TooSmall { name: "outbound queue", min: 2, value: 0 }));
    }
}
