//! Command-line flags and environment variables → [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use natter_shared::{RoomName, Seq};

use super::names::Names;
use super::origin::OriginPolicy;
use crate::config::{
    self, Config, ConfigError, ConnLimits, HistoryKind, RateConfig, RedisConfig, RedisDurability, RoomLimits,
    StorageConfig, Timing, WsConfig,
};

/// Natter: a self-hosted real-time group chat server.
///
/// Serves the chat page from --bundle-dir and the WebSocket endpoint at /ws.
/// Every flag can also be set with the environment variable shown.
/// Durations take a unit: 500ms, 20s, 5m (a bare number means seconds).
#[derive(Debug, Clone, Parser)]
#[command(name = "natter", version, about, long_about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Tasks besides serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Write a room's history to stdout as NDJSON (one event per line, the wire JSON).
    Export(ExportArgs),
    /// Read NDJSON events (as written by export) from stdin into a room of an empty database.
    Import(ImportArgs),
    /// Copy the database to a new file while the server runs (SQLite's online backup).
    Backup(BackupArgs),
}

impl Command {
    /// The subcommand's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Export(_) => "export",
            Self::Import(_) => "import",
            Self::Backup(_) => "backup",
        }
    }
}

/// `natter export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Directory holding the database.
    #[arg(long, env = "NATTER_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The room to export.
    #[arg(long, value_parser = parse_room)]
    pub room: RoomName,
    /// Only events after this seq.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
}

impl ExportArgs {
    /// The `--since` seq.
    pub fn since(&self) -> Seq {
        Seq(self.since)
    }
}

/// `natter backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// Directory holding the database.
    #[arg(long, env = "NATTER_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The backup file to write (must not exist yet). To restore: stop natter,
    /// put this file in an empty data directory as natter.db, start natter.
    pub dest: PathBuf,
}

/// `natter import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// Directory holding the database (created if missing; must hold no events).
    #[arg(long, env = "NATTER_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The room to import into.
    #[arg(long, value_parser = parse_room)]
    pub room: RoomName,
}

fn parse_room(raw: &str) -> Result<RoomName, String> {
    RoomName::parse(raw).map_err(|e| e.to_string())
}

/// Serving flags (the default command).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (use 0.0.0.0:8080 to accept connections from other machines).
    #[arg(long, env = "NATTER_LISTEN", default_value = config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Address to serve Prometheus metrics on, at /metrics (off unless given; keep it private, e.g. 127.0.0.1:9100).
    #[arg(long, env = "NATTER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log lines as text (for people) or json (one object per line, for log shippers).
    #[arg(long, env = "NATTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Where history is kept: sqlite (durable, in --data-dir) or memory (lost on restart).
    #[arg(long, env = "NATTER_HISTORY", value_enum, default_value_t = HistoryArg::Sqlite)]
    pub history: HistoryArg,

    /// Directory for the database (created on first start).
    #[arg(long, env = "NATTER_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Keep history in Redis instead of SQLite, e.g. redis://127.0.0.1:6379/0 (one natter per
    /// Redis database for now; --retain-count and --retain-age apply).
    #[arg(long, env = "NATTER_REDIS", conflicts_with = "history")]
    pub redis: Option<String>,

    /// strict: refuse to start unless Redis fsyncs every write before answering (appendonly yes,
    /// appendfsync always, maxmemory-policy noeviction); relaxed: start anyway with a warning.
    #[arg(long, env = "NATTER_REDIS_DURABILITY", value_enum, default_value_t = DurabilityArg::Strict)]
    pub redis_durability: DurabilityArg,

    /// How long Redis may take to answer before a message gets storage_unavailable.
    #[arg(long, env = "NATTER_REDIS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// How long this instance counts as alive on Redis after its last renewal (renewed three
    /// times per period); past it, other instances may give its members' names to others.
    #[arg(long, env = "NATTER_REDIS_INSTANCE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub redis_instance_ttl: Duration,

    /// Keep at most this many events per room; older ones are deleted (in the background with
    /// sqlite, at each write with redis).
    #[arg(long, env = "NATTER_RETAIN_COUNT")]
    pub retain_count: Option<u64>,

    /// Delete events older than this, e.g. 720h (sqlite; redis trims a room's oldest at its writes).
    #[arg(long, env = "NATTER_RETAIN_AGE", value_parser = parse_duration)]
    pub retain_age: Option<Duration>,

    /// How often retention runs.
    #[arg(long, env = "NATTER_RETENTION_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// Most megabytes the database may use; beyond it new messages are refused
    /// with storage_unavailable until space is freed (sqlite).
    #[arg(long, env = "NATTER_MAX_DB_MB")]
    pub max_db_mb: Option<u64>,

    /// Read-only database connections for replays and history pages (sqlite); more reads wait.
    #[arg(long, env = "NATTER_READ_CONNECTIONS", default_value_t = config::DEFAULT_READ_CONNECTIONS)]
    pub read_connections: usize,

    /// Directory of the built chat page (trunk's output, holding index.html), served instead of
    /// the page built into the binary. Default: the built-in page, or ./dist if there is none.
    #[arg(long, env = "NATTER_BUNDLE_DIR")]
    pub bundle_dir: Option<PathBuf>,

    /// Another origin whose pages may connect, e.g. https://chat.example.com (repeatable,
    /// or comma-separated in the variable). The server's own origin is always allowed;
    /// '*' allows any page (development only).
    #[arg(long = "allow-origin", env = "NATTER_ALLOW_ORIGINS", value_delimiter = ',')]
    pub allow_origins: Vec<String>,

    /// A URL browsers reach this server at, e.g. https://chat.example.com (repeatable, or
    /// comma-separated in the variable): requests must name it in Host (else HTTP 421), and
    /// pages must come from it, scheme included. Without it or --server-name, only the listen
    /// address and localhost, 127.0.0.1, [::1] with the listening port are accepted.
    #[arg(long = "public-url", env = "NATTER_PUBLIC_URLS", value_delimiter = ',')]
    pub public_urls: Vec<String>,

    /// A host name requests may name in Host, any port (or name:port), e.g. chat.internal
    /// (repeatable, or comma-separated in the variable). See --public-url.
    #[arg(long = "server-name", env = "NATTER_SERVER_NAMES", value_delimiter = ',')]
    pub server_names: Vec<String>,

    /// Let /healthz also report the numbers of sessions and rooms (to requests naming this server).
    #[arg(
        long,
        env = "NATTER_HEALTHZ_DETAIL",
        default_value_t = config::DEFAULT_HEALTHZ_DETAIL,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub healthz_detail: bool,

    /// Most open connections; more get HTTP 503.
    #[arg(long, env = "NATTER_MAX_CONNECTIONS", default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Most open connections from one client address (an IPv4 address or an IPv6 /64); more get HTTP 429.
    #[arg(long = "max-connections-per-ip", env = "NATTER_MAX_CONNECTIONS_PER_IP", default_value_t = config::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
    pub max_connections_per_ip: u32,

    /// Most joined chat sessions from one client address; more get error too_many_joins.
    #[arg(long = "max-joins-per-ip", env = "NATTER_MAX_JOINS_PER_IP", default_value_t = config::DEFAULT_MAX_JOINS_PER_ADDRESS)]
    pub max_joins_per_ip: u32,

    /// Most rooms held at once that one client address created; more get error too_many_rooms.
    #[arg(long = "max-rooms-per-ip", env = "NATTER_MAX_ROOMS_PER_IP", default_value_t = config::DEFAULT_MAX_ROOMS_PER_ADDRESS)]
    pub max_rooms_per_ip: u32,

    /// A reverse proxy (address or network, e.g. 10.0.0.0/8; repeatable, or comma-separated in the
    /// variable) whose X-Forwarded-For names the client address the per-address limits count.
    /// Without it the header is ignored.
    #[arg(long = "trusted-proxy", env = "NATTER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// Most rooms at once; joining a new room beyond it is refused.
    #[arg(long, env = "NATTER_MAX_ROOMS", default_value_t = config::DEFAULT_MAX_ROOMS)]
    pub max_rooms: usize,

    /// Most members in one room.
    #[arg(long, env = "NATTER_MAX_MEMBERS_PER_ROOM", default_value_t = config::DEFAULT_MAX_MEMBERS_PER_ROOM)]
    pub max_members_per_room: usize,

    /// Members above which a room announces joins and leaves in batches (a `presence` frame per
    /// interval, not stored) instead of a stored notice line each.
    #[arg(long, env = "NATTER_PRESENCE_THRESHOLD", default_value_t = config::DEFAULT_PRESENCE_THRESHOLD)]
    pub presence_threshold: usize,

    /// Shortest time between two presence batches of a big room (longer in bigger rooms).
    #[arg(long, env = "NATTER_PRESENCE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub presence_interval: Duration,

    /// Events kept per room by the in-memory history (--history memory).
    #[arg(long, env = "NATTER_HISTORY_PER_ROOM", default_value_t = config::DEFAULT_HISTORY_PER_ROOM)]
    pub history_per_room: usize,

    /// Recent events sent to someone joining.
    #[arg(long, env = "NATTER_WELCOME_HISTORY", default_value_t = config::DEFAULT_WELCOME_HISTORY)]
    pub welcome_history: usize,

    /// Most events replayed when a client resumes; beyond it the latest plus a count of missed ones.
    #[arg(long, env = "NATTER_REPLAY_MAX", default_value_t = config::DEFAULT_REPLAY_MAX)]
    pub replay_max: usize,

    /// Frames queued for one slow client before it is closed as lagged (code 4000) and must resume.
    #[arg(long, env = "NATTER_OUTBOUND_QUEUE", default_value_t = config::DEFAULT_OUTBOUND_QUEUE)]
    pub outbound_queue: usize,

    /// KiB queued for one client, or being written to it, before it is closed as lagged
    /// (code 4000); no single reply is larger than half of it.
    #[arg(long, env = "NATTER_OUTPUT_BUDGET_KIB", default_value_t = config::DEFAULT_OUTPUT_BUDGET / 1024)]
    pub output_budget_kib: usize,

    /// Messages per second one connection may send, sustained.
    #[arg(long, env = "NATTER_RATE_PER_SEC", default_value_t = config::DEFAULT_RATE_PER_SEC)]
    pub rate_per_sec: u32,

    /// Messages one connection may send in a burst.
    #[arg(long, env = "NATTER_RATE_BURST", default_value_t = config::DEFAULT_RATE_BURST)]
    pub rate_burst: u32,

    /// Refused messages in a row (error rate_limited) before the connection is closed with 1008.
    #[arg(long, env = "NATTER_RATE_STRIKES", default_value_t = config::DEFAULT_RATE_STRIKES)]
    pub rate_strikes: u32,

    /// Write coalescing: a client written to less than this long ago gets its
    /// next frames together once the time is up (0ms: every frame at once).
    /// The acks of its own messages do not wait.
    #[arg(long, env = "NATTER_WRITE_COALESCE", default_value = "25ms", value_parser = parse_duration)]
    pub write_coalesce: Duration,

    /// How often to ping each client.
    #[arg(long, env = "NATTER_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// How long to wait for an answer to a ping before dropping the client.
    #[arg(long, env = "NATTER_PONG_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub pong_timeout: Duration,

    /// How long one frame (or all fragments of one message) may take to arrive once begun;
    /// a client that trickles bytes is closed with 1008.
    #[arg(long, env = "NATTER_FRAME_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub frame_timeout: Duration,

    /// How long a dropped client may take to reconnect before others see "timed out".
    #[arg(long, env = "NATTER_LEAVE_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub leave_grace: Duration,

    /// After a restart, how long the members saved at the last stop have to resume before others
    /// see "timed out".
    #[arg(long, env = "NATTER_RESTART_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub restart_grace: Duration,

    /// On SIGINT/SIGTERM, how long to wait for connections to close.
    #[arg(long, env = "NATTER_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// `--log-format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Plain text lines, for people.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `--history`: where history is kept (clap's side of [`HistoryKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryArg {
    /// SQLite in the data directory: survives restarts and crashes.
    Sqlite,
    /// In memory, bounded per room: lost on restart (tests, ephemeral rooms).
    Memory,
}

impl From<HistoryArg> for HistoryKind {
    fn from(arg: HistoryArg) -> Self {
        match arg {
            HistoryArg::Sqlite => Self::Sqlite,
            HistoryArg::Memory => Self::Memory,
        }
    }
}

/// `--redis-durability` (clap's side of [`RedisDurability`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityArg {
    /// Refuse to start unless every write is fsynced before Redis answers.
    Strict,
    /// Start with a warning: an acknowledged message may be lost if Redis crashes.
    Relaxed,
}

impl From<DurabilityArg> for RedisDurability {
    fn from(arg: DurabilityArg) -> Self {
        match arg {
            DurabilityArg::Strict => Self::Strict,
            DurabilityArg::Relaxed => Self::Relaxed,
        }
    }
}

/// Parses `500ms`, `20s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{raw:?} is not a duration like 500ms, 20s or 5m"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        other => Err(format!("unknown unit {other:?} in {raw:?}; use ms, s, m or h")),
    }
}

impl Cli {
    /// The server configuration the serving flags describe.
    pub fn config(&self) -> Result<Config, ConfigError> {
        self.serve.config()
    }
}

impl ServeArgs {
    /// The server configuration these flags describe. Its bounds are checked
    /// where every configuration is, when the server starts (`run`).
    pub fn config(&self) -> Result<Config, ConfigError> {
        let defaults = Config::default();
        Ok(Config {
            bundle_dir: self.bundle_dir.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_BUNDLE_DIR)),
            embedded_page: self.bundle_dir.is_none(),
            origins: OriginPolicy::new(&self.allow_origins)?,
            names: Names::parse(&self.public_urls, &self.server_names)?,
            healthz_detail: self.healthz_detail,
            max_connections: self.max_connections,
            trusted_proxies: self.trusted_proxies.iter().map(|raw| raw.parse()).collect::<Result<_, _>>()?,
            history: match &self.redis {
                Some(url) => HistoryKind::Redis(RedisConfig {
                    url: url.clone(),
                    durability: self.redis_durability.into(),
                    timeout: self.redis_timeout,
                    instance_ttl: self.redis_instance_ttl,
                }),
                None => self.history.into(),
            },
            storage: StorageConfig {
                data_dir: self.data_dir.clone(),
                retain_count: self.retain_count,
                retain_age: self.retain_age,
                retention_interval: self.retention_interval,
                max_db_bytes: self.max_db_mb.map(|mb| mb.saturating_mul(1024 * 1024)),
                read_connections: self.read_connections,
                ..StorageConfig::default()
            },
            conn: ConnLimits {
                outbound_queue: self.outbound_queue,
                output_budget: self.output_budget_kib.saturating_mul(1024),
                max_connections_per_address: self.max_connections_per_ip,
                max_joins_per_address: self.max_joins_per_ip,
            },
            limits: RoomLimits {
                history_per_room: self.history_per_room,
                welcome_history: self.welcome_history,
                replay_max: self.replay_max,
                max_rooms: self.max_rooms,
                max_members_per_room: self.max_members_per_room,
                max_rooms_per_address: self.max_rooms_per_ip,
                presence_threshold: self.presence_threshold,
                presence_interval: self.presence_interval,
            },
            rate: RateConfig {
                per_sec: self.rate_per_sec,
                burst: self.rate_burst,
                strikes: self.rate_strikes,
                ..RateConfig::default()
            },
            timing: Timing {
                ping_interval: self.ping_interval,
                pong_timeout: self.pong_timeout,
                leave_grace: self.leave_grace,
                restart_grace: self.restart_grace,
                shutdown_timeout: self.shutdown_timeout,
                frame_timeout: self.frame_timeout,
                ..defaults.timing
            },
            ws: WsConfig { write_coalesce: self.write_coalesce, ..defaults.ws },
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::config::names::HostMatch;

    #[test]
    fn the_command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_need_sensible_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn defaults_match_the_config_defaults() {
        let cli = Cli::try_parse_from(["natter"]).expect("parses");
        let config = cli.config().expect("valid");
        let defaults = Config::default();
        assert_eq!(cli.serve.listen.to_string(), config::DEFAULT_LISTEN);
        assert_eq!(config.history, HistoryKind::Sqlite);
        assert_eq!(config.storage.data_dir, PathBuf::from(config::DEFAULT_DATA_DIR));
        assert_eq!(config.timing.ping_interval, defaults.timing.ping_interval);
        assert_eq!(config.timing.pong_timeout, defaults.timing.pong_timeout);
        assert_eq!(config.timing.leave_grace, defaults.timing.leave_grace);
        assert_eq!(config.rate.per_sec, defaults.rate.per_sec);
        assert_eq!(config.conn.outbound_queue, defaults.conn.outbound_queue);
        assert_eq!(config.ws.write_coalesce, defaults.ws.write_coalesce);
    }

    #[test]
    fn export_and_import_are_subcommands() {
        let cli = Cli::try_parse_from(["natter", "export", "--room", "lobby", "--since", "5"]).expect("parses");
        match cli.command {
            Some(Command::Export(e)) => assert_eq!((e.room.as_str(), e.since()), ("lobby", Seq(5))),
            other => panic!("expected export, got {other:?}"),
        }
        assert!(Cli::try_parse_from(["natter", "export", "--room", "Bad Room"]).is_err());
        assert!(Cli::try_parse_from(["natter", "import", "--room", "lobby", "--data-dir", "/tmp/x"]).is_ok());
        let mem = Cli::try_parse_from(["natter", "--history", "memory", "--max-db-mb", "2"]).expect("parses");
        let config = mem.config().expect("valid");
        assert_eq!(config.history, HistoryKind::Memory);
        assert_eq!(config.storage.max_db_bytes, Some(2 * 1024 * 1024));
    }

    #[test]
    fn redis_flags_reach_the_config() {
        let cli = Cli::try_parse_from(["natter", "--redis", "redis://127.0.0.1:6379/3"]).expect("parses");
        let expected = RedisConfig::new("redis://127.0.0.1:6379/3");
        assert_eq!(cli.config().expect("valid").history, HistoryKind::Redis(expected));
        let relaxed = Cli::try_parse_from([
            "natter",
            "--redis",
            "redis://h/0",
            "--redis-durability",
            "relaxed",
            "--redis-timeout",
            "750ms",
            "--redis-instance-ttl",
            "4s",
        ])
        .expect("parses");
        match relaxed.config().expect("valid").history {
            HistoryKind::Redis(r) => {
                assert_eq!((r.durability, r.timeout), (RedisDurability::Relaxed, Duration::from_millis(750)));
                assert_eq!(r.instance_ttl, Duration::from_secs(4));
            }
            other => panic!("expected redis, got {other:?}"),
        }
        // Two places for history at once is a mistake, not a choice.
        assert!(Cli::try_parse_from(["natter", "--history", "memory", "--redis", "redis://h/0"]).is_err());
    }

    #[test]
    fn flags_reach_the_config_and_bad_values_are_refused() {
        let cli = Cli::try_parse_from([
            "natter",
            "--allow-origin",
            "https://a.example,https://b.example",
            "--leave-grace",
            "250ms",
        ])
        .expect("parses");
        let config = cli.config().expect("valid");
        assert_eq!(config.timing.leave_grace, Duration::from_millis(250));
        let host = HostMatch { authority: "x".into(), public_origins: Vec::new() };
        assert!(config.origins.check(Some("https://b.example"), &host).is_ok());
        let bad = Cli::try_parse_from(["natter", "--allow-origin", "b.example"]).expect("parses");
        assert!(bad.config().is_err());
        assert!(Cli::try_parse_from(["natter", "--listen", "nowhere"]).is_err());
        let zero = Cli::try_parse_from(["natter", "--rate-per-sec", "0"]).expect("parses");
        assert!(zero.config().expect("builds").validate().is_err());
    }

    #[test]
    fn metrics_are_off_and_logs_are_text_unless_asked_for() {
        let defaults = Cli::try_parse_from(["natter"]).expect("parses");
        assert_eq!(defaults.serve.metrics_listen, None);
        assert_eq!(defaults.serve.log_format, LogFormat::Text);
        let set = Cli::try_parse_from(["natter", "--metrics-listen", "127.0.0.1:9100", "--log-format", "json"])
            .expect("parses");
        assert_eq!(set.serve.metrics_listen, Some("127.0.0.1:9100".parse().expect("addr")));
        assert_eq!(set.serve.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["natter", "--log-format", "xml"]).is_err());
        assert!(Cli::try_parse_from(["natter", "--metrics-listen", "9100"]).is_err());
    }

    #[test]
    fn public_names_and_healthz_detail_reach_the_config() {
        let defaults = Cli::try_parse_from(["natter"]).expect("parses").config().expect("valid");
        assert!(defaults.names.is_empty(), "no names: the listen address and loopback");
        assert!(!defaults.healthz_detail);
        let cli = Cli::try_parse_from([
            "natter",
            "--public-url",
            "https://chat.example.com,http://10.0.0.5:8080",
            "--server-name",
            "chat.internal",
            "--server-name",
            "probe.internal:9000",
            "--healthz-detail",
        ])
        .expect("parses");
        let config = cli.config().expect("valid");
        assert_eq!(config.names.public_urls.len(), 2);
        assert_eq!(config.names.server_names.len(), 2);
        assert!(config.healthz_detail);
        for bad in [["--public-url", "chat.example.com"], ["--server-name", "https://chat.example.com"]] {
            let cli = Cli::try_parse_from(["natter", bad[0], bad[1]]).expect("parses");
            assert!(matches!(cli.config(), Err(ConfigError::BadName(_))), "{bad:?}");
        }
    }
}
