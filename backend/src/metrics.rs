//! What a running server counts, for `GET /metrics` on the separate
//! `--metrics-listen` address (OpenMetrics text, which Prometheus scrapes).
//!
//! One [`Metrics`] per running server (tests run several in one process),
//! shared by every layer through an `Arc`. Counting is an atomic add; a
//! broadcast adds its recipients once, not once per member. Every label
//! takes its value from a fixed set ([`close_code_label`], the refusal
//! reasons): a client cannot grow the metrics by sending odd close codes.

use std::fmt;
use std::time::Duration;

use natter_shared::close;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Every metric's name starts with this (`natter_…`).
pub const PREFIX: &str = "natter";
/// Commit latency buckets: 100 µs doubling to about 3.3 s.
const COMMIT_SECONDS_START: f64 = 0.000_1;
const COMMIT_SECONDS_BUCKETS: u16 = 16;
/// Batch size buckets: 1 doubling to 4,096 writes.
const BATCH_BUCKETS: u16 = 13;
/// Outbound queue high-water buckets: 256 bytes doubling to 16 MiB.
const QUEUE_BYTES_START: f64 = 256.0;
const QUEUE_BYTES_BUCKETS: u16 = 17;
/// Connection duration buckets: 100 ms doubling to about 9 days.
const DURATION_SECONDS_START: f64 = 0.1;
const DURATION_SECONDS_BUCKETS: u16 = 24;

/// A label set of one fixed label.
type Label = [(&'static str, &'static str); 1];

/// Why a WebSocket handshake (or a connection before it) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeRefusal {
    /// A `Host` that is not one of the server's names (DNS rebinding), or none.
    Host,
    /// A browser `Origin` the server does not serve.
    Origin,
    /// Not a valid WebSocket upgrade request.
    BadRequest,
    /// The server's connection cap.
    ServerFull,
    /// The client address's connection cap.
    AddressFull,
}

impl HandshakeRefusal {
    fn label(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Origin => "origin",
            Self::BadRequest => "bad_request",
            Self::ServerFull => "server_full",
            Self::AddressFull => "address_full",
        }
    }
}

/// The label of a close code: the codes natter sends or expects by name,
/// `other` for any other code a peer sent, `1005` for a Close frame without
/// a code, `none` when no close frame was exchanged (a dropped connection,
/// a heartbeat timeout).
pub fn close_code_label(code: Option<u16>) -> &'static str {
    match code {
        None => "none",
        Some(close::NORMAL) => "1000",
        Some(close::GOING_AWAY) => "1001",
        Some(close::PROTOCOL_ERROR) => "1002",
        Some(close::UNSUPPORTED_DATA) => "1003",
        Some(close::NO_STATUS) => "1005",
        Some(close::INVALID_PAYLOAD) => "1007",
        Some(close::POLICY_VIOLATION) => "1008",
        Some(close::MESSAGE_TOO_BIG) => "1009",
        Some(close::SERVICE_RESTART) => "1012",
        Some(close::LAGGED) => "4000",
        Some(close::REPLACED) => "4001",
        Some(close::CLIENT_RECONNECTING) => "4002",
        Some(_) => "other",
    }
}

/// The server's counters, gauges and histograms.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket sessions.
    pub connections_open: Gauge,
    /// Ended WebSocket sessions, by the close code that ended them.
    pub connections_closed: Family<Label, Counter>,
    /// How long sessions lasted.
    pub connection_seconds: Histogram,
    /// Sessions closed because their outbound queue filled.
    pub lagged_closes: Counter,
    /// Sessions dropped because no pong came in time.
    pub heartbeat_timeouts: Counter,
    /// The most bytes each session had queued or being written, at its end.
    pub queue_high_water_bytes: Histogram,
    /// Handshakes (and connections before one) refused, by reason.
    pub handshake_refusals: Family<Label, Counter>,
    /// Rooms open (set when scraped).
    pub rooms: Gauge,
    /// Members of all rooms, connected or in their grace period (set when scraped).
    pub members: Gauge,
    /// `say` requests accepted and stored.
    pub messages_in: Counter,
    /// Room events broadcast (each serialized once).
    pub messages_out: Counter,
    /// Broadcast events queued to members (one per recipient).
    pub deliveries: Counter,
    /// Requests refused with `rate_limited`.
    pub rate_limited: Counter,
    /// Time from a storage batch's start to its commit.
    pub commit_seconds: Histogram,
    /// Writes per storage batch.
    pub commit_batch_writes: Histogram,
    /// Batches of other instances heard on rooms' Redis channels.
    pub fanout_batches: Counter,
    /// Gaps in a room's events read from the Redis stream.
    pub gap_fills: Counter,
    /// Times the Redis subscription connection was restored after a drop.
    pub resubscribes: Counter,
}

impl Metrics {
    /// Every metric at zero, registered under [`PREFIX`].
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let connections_open = Gauge::default();
        let connections_closed = Family::<Label, Counter>::default();
        let connection_seconds =
            Histogram::new(exponential_buckets(DURATION_SECONDS_START, 2.0, DURATION_SECONDS_BUCKETS));
        let lagged_closes = Counter::default();
        let heartbeat_timeouts = Counter::default();
        let queue_high_water_bytes = Histogram::new(exponential_buckets(QUEUE_BYTES_START, 2.0, QUEUE_BYTES_BUCKETS));
        let handshake_refusals = Family::<Label, Counter>::default();
        let rooms = Gauge::default();
        let members = Gauge::default();
        let messages_in = Counter::default();
        let messages_out = Counter::default();
        let deliveries = Counter::default();
        let rate_limited = Counter::default();
        let commit_seconds = Histogram::new(exponential_buckets(COMMIT_SECONDS_START, 2.0, COMMIT_SECONDS_BUCKETS));
        let commit_batch_writes = Histogram::new(exponential_buckets(1.0, 2.0, BATCH_BUCKETS));
        let fanout_batches = Counter::default();
        let gap_fills = Counter::default();
        let resubscribes = Counter::default();
        registry.register("connections_open", "Open WebSocket sessions", connections_open.clone());
        registry.register(
            "connections_closed",
            "Ended WebSocket sessions by close code (none: no close frame)",
            connections_closed.clone(),
        );
        registry.register("connection_seconds", "How long WebSocket sessions lasted", connection_seconds.clone());
        registry.register(
            "lagged_closes",
            "Sessions closed because their outbound queue filled",
            lagged_closes.clone(),
        );
        registry.register("heartbeat_timeouts", "Sessions dropped for a missing pong", heartbeat_timeouts.clone());
        registry.register(
            "queue_high_water_bytes",
            "Most bytes a session had queued or being written, observed at its end",
            queue_high_water_bytes.clone(),
        );
        registry.register(
            "handshake_refusals",
            "WebSocket handshakes and connections refused, by reason",
            handshake_refusals.clone(),
        );
        registry.register("rooms", "Rooms open", rooms.clone());
        registry.register("members", "Members of all rooms, connected or within their grace period", members.clone());
        registry.register("messages_in", "Chat messages accepted and stored", messages_in.clone());
        registry.register("messages_out", "Room events broadcast", messages_out.clone());
        registry.register("deliveries", "Broadcast events queued to members", deliveries.clone());
        registry.register("rate_limited", "Requests refused with rate_limited", rate_limited.clone());
        registry.register("commit_seconds", "Storage batch time to commit", commit_seconds.clone());
        registry.register("commit_batch_writes", "Writes per storage batch", commit_batch_writes.clone());
        registry.register(
            "fanout_batches",
            "Batches of other instances heard on rooms' Redis channels",
            fanout_batches.clone(),
        );
        registry.register("gap_fills", "Gaps in a room's events read from the Redis stream", gap_fills.clone());
        registry.register(
            "resubscribes",
            "Times the Redis subscription connection was restored after a drop",
            resubscribes.clone(),
        );
        Self {
            registry,
            connections_open,
            connections_closed,
            connection_seconds,
            lagged_closes,
            heartbeat_timeouts,
            queue_high_water_bytes,
            handshake_refusals,
            rooms,
            members,
            messages_in,
            messages_out,
            deliveries,
            rate_limited,
            commit_seconds,
            commit_batch_writes,
            fanout_batches,
            gap_fills,
            resubscribes,
        }
    }

    /// Counts a session's end: its close code, how long it lasted, its queue's high-water mark.
    pub fn session_ended(&self, code: Option<u16>, lasted: Duration, high_water_bytes: usize) {
        self.connections_closed.get_or_create(&[("code", close_code_label(code))]).inc();
        self.connection_seconds.observe(lasted.as_secs_f64());
        self.queue_high_water_bytes.observe(high_water_bytes as f64);
    }

    /// Counts a refused handshake.
    pub fn refused(&self, reason: HandshakeRefusal) {
        self.handshake_refusals.get_or_create(&[("reason", reason.label())]).inc();
    }

    /// Counts a storage batch of `writes` that took `took` to commit.
    pub fn committed(&self, writes: usize, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.commit_batch_writes.observe(writes as f64);
    }

    /// Counts an event broadcast to `recipients` members.
    pub fn broadcast(&self, recipients: usize) {
        self.messages_out.inc();
        self.deliveries.inc_by(recipients as u64);
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `line_start` (the name with its labels).
    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(line_start).and_then(|rest| rest.trim().parse().ok()))
    }

    #[test]
    fn counters_and_labels_render_in_openmetrics_text() {
        let m = Metrics::new();
        m.session_ended(Some(close::NORMAL), Duration::from_secs(3), 1_000);
        m.session_ended(Some(close::NORMAL), Duration::from_secs(1), 10);
        m.session_ended(None, Duration::from_millis(5), 0);
        m.refused(HandshakeRefusal::Origin);
        m.broadcast(9);
        m.committed(4, Duration::from_millis(2));
        let text = m.render();
        assert_eq!(sample(&text, "natter_connections_closed_total{code=\"1000\"}"), Some(2.0), "{text}");
        assert_eq!(sample(&text, "natter_connections_closed_total{code=\"none\"}"), Some(1.0));
        assert_eq!(sample(&text, "natter_handshake_refusals_total{reason=\"origin\"}"), Some(1.0));
        assert_eq!(sample(&text, "natter_messages_out_total"), Some(1.0));
        assert_eq!(sample(&text, "natter_deliveries_total"), Some(9.0));
        assert_eq!(sample(&text, "natter_commit_batch_writes_count"), Some(1.0));
        assert_eq!(sample(&text, "natter_commit_batch_writes_sum"), Some(4.0));
        assert_eq!(sample(&text, "natter_connection_seconds_count"), Some(3.0));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_peers_odd_close_codes_share_one_label() {
        let m = Metrics::new();
        for code in [3000, 3001, 4999, 4321] {
            m.session_ended(Some(code), Duration::ZERO, 0);
        }
        let text = m.render();
        assert_eq!(sample(&text, "natter_connections_closed_total{code=\"other\"}"), Some(4.0), "{text}");
        assert_eq!(text.matches("natter_connections_closed_total{").count(), 1, "{text}");
    }

    #[test]
    fn every_close_code_natter_sends_has_its_own_label() {
        for code in [
            close::NORMAL,
            close::PROTOCOL_ERROR,
            close::UNSUPPORTED_DATA,
            close::NO_STATUS,
            close::INVALID_PAYLOAD,
            close::POLICY_VIOLATION,
            close::MESSAGE_TOO_BIG,
            close::SERVICE_RESTART,
            close::LAGGED,
            close::REPLACED,
        ] {
            assert_eq!(close_code_label(Some(code)), code.to_string());
        }
    }
}
