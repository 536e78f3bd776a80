//! The durable history: SQLite in WAL mode, with one writer thread that
//! stores everything queued in one transaction (group commit) and only then
//! reports each event back to its room. `kill -9` at any moment loses nothing
//! that was acknowledged, because nothing is acknowledged before its commit.
//! A batch is tried as one plain transaction; should one write in it fail
//! on its own, it is stored again with a savepoint per write, so that write
//! fails alone, and only a failure of the storage itself fails the batch.
//!
//! Stored rows are read back as they were stored, without today's
//! validation: a rule tightened later never makes an old room unreadable.
//!
//! Schema versions live in `PRAGMA user_version` and [`MIGRATIONS`]; a
//! database is migrated forward on start, and a newer or unreadable one is
//! refused with an error naming the file, never replaced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natter_shared::wire_name::{WireName, from_name};
use natter_shared::{
    ChatMessage, ClientMsgId, Color, MessageText, Notice, NoticeKind, ResumeToken, RoomEvent, RoomName, Seq, Timestamp,
    UserName, color_for,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::writer::{Sequencer, Write, WriteQueue, WriterMsg};
use super::{Committed, Draft, HistoryError, HistoryStore, Outcome, Replay, SavedMember, now_ms, replay_of};
use crate::config::StorageConfig;
use crate::metrics::Metrics;

/// The database file inside the data directory.
pub const DB_FILE: &str = "natter.db";
/// A lock file held while a server uses the data directory: the writer
/// assumes it is the only one.
pub const LOCK_FILE: &str = "natter.lock";
/// How long a connection waits for a lock held by another (e.g. `natter export`).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Events deleted per retention transaction, so the writer is never held up long.
pub const RETENTION_CHUNK: usize = 1_000;
/// Writes kept for a retry: notices of failed transactions, and writes that
/// failed on their own (policy: beyond it the oldest is dropped, as failed).
pub const RETRY_MAX: usize = 10_000;
/// How often one write may fail on its own (in its savepoint: a constraint,
/// a value SQLite refuses) before it is dropped with an error to its sender,
/// so a write that can never be stored cannot hold up the writer for good.
pub const WRITE_ATTEMPTS: u32 = 3;
/// The writer's page cache in KiB, once per server. It was raised from 512
/// KiB when a sender index (schema 2, dropped in 4) put each active sender's
/// message ids at their own place in the file (`bench history`: CPU per
/// acknowledged message at the offered 50,000/s 25.6 → 23.9 µs then); the
/// events table only appends, and re-sends read the room's latest pages.
pub const WRITER_CACHE_KIB: i64 = 4096;
/// Events of a room a re-send's original is looked for in: those right
/// after the re-send's hint (`say.after`, the room's latest seq the page had
/// when it first sent the message). The original's seq is above the hint by
/// the events the page had not received yet when it sent (its connection's
/// queue, 4,096 frames by default, before it is closed as lagged) and those
/// of its room stored ahead of it; a re-send whose original is further on is
/// stored again. About 0.5 ms of the writer's time per look-up over short
/// messages (125 ns per event, measured on a 300,000-event room with
/// Python's sqlite3); long messages spill into overflow pages that the
/// look-up reads too (the `cid` column comes after the text): 13.5–30.9 ms
/// over 4,096 events of 6,000-byte messages (Python's sqlite3, the file in
/// the OS cache; 10.3–11.7 ms with `cid` before the text, whose leaf pages
/// still hold only a few such rows each, so the columns stay as they are).
/// [`RESEND_LOOKUP_BUDGET`] bounds their sum whatever they cost.
pub const RESEND_SCAN_EVENTS: u64 = 4_096;
/// The writer's time for re-send look-ups in each [`RESEND_LOOKUP_PERIOD`],
/// whoever sends them: once spent, a re-send is answered `rate_limited`
/// (the page sends it again 1.5 s later), never stored without a look-up.
/// A tenth of the writer, so look-ups cannot starve every room's writes.
pub const RESEND_LOOKUP_BUDGET: Duration = Duration::from_millis(100);
/// See [`RESEND_LOOKUP_BUDGET`].
pub const RESEND_LOOKUP_PERIOD: Duration = Duration::from_secs(1);

/// The writer's time spent on re-send look-ups in the current period.
#[derive(Debug)]
pub struct LookupBudget {
    budget: Duration,
    period: Duration,
    started: Instant,
    spent: Duration,
}

impl LookupBudget {
    /// `budget` of look-up time in every `period`, from `now`.
    pub fn new(budget: Duration, period: Duration, now: Instant) -> Self {
        Self { budget, period, started: now, spent: Duration::ZERO }
    }

    /// Whether a look-up may start at `now`. Each whole period that has
    /// passed pays back one budget of what was spent, so a look-up that
    /// overran the budget (or the period) is paid for by the next periods.
    pub fn allows(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= self.period && !self.period.is_zero() {
            let periods = (elapsed.as_nanos() / self.period.as_nanos()).min(u128::from(u32::MAX)) as u32;
            self.started += self.period * periods;
            self.spent = self.spent.saturating_sub(self.budget.saturating_mul(periods));
        }
        self.spent < self.budget
    }

    /// Counts a look-up that took `took`.
    pub fn spend(&mut self, took: Duration) {
        self.spent += took;
    }
}
/// A transaction slower than this is logged: every ack and broadcast of its
/// batch waited for it.
pub const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// Schema migrations; entry `i` takes a database from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: events by room and seq, each room's head, and the history id.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE rooms (room TEXT PRIMARY KEY, head INTEGER NOT NULL);
     CREATE TABLE events (
         room TEXT NOT NULL,
         seq INTEGER NOT NULL,
         ts INTEGER NOT NULL,
         kind TEXT NOT NULL,
         name TEXT NOT NULL,
         name_key TEXT NOT NULL,
         color TEXT NOT NULL,
         text TEXT,
         cid TEXT,
         PRIMARY KEY (room, seq)
     ) WITHOUT ROWID;",
    // 2: find a sender's message by client id (deduplication across restarts).
    "CREATE UNIQUE INDEX events_sender ON events (room, name_key, cid) WHERE cid IS NOT NULL;",
    // 3: the members of each room when the server stopped, so their browsers
    // resume after a restart; read and emptied at the next start.
    "CREATE TABLE saved_members (room TEXT NOT NULL, name TEXT NOT NULL, token TEXT NOT NULL);",
    // 4: re-sends are looked for after their hint (`say.after`, see
    // `RESEND_SCAN_EVENTS`) by the primary key instead: the index put every
    // sender's ids at their own place in the file, and its pages were most
    // of each commit's WAL (`bench history`: ack p99 at the offered 50,000/s
    // 42–157 → 11–17 ms without it).
    "DROP INDEX IF EXISTS events_sender;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Why the store could not be opened. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("{path} is not a Natter database or is damaged: {source}")]
    Corrupt { path: PathBuf, source: rusqlite::Error },
    #[error(
        "{path} has schema version {found}, newer than this natter understands ({SCHEMA_VERSION}); run a newer natter"
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error("cannot migrate {path} to schema version {to}: {source}")]
    Migrate { path: PathBuf, to: i64, source: rusqlite::Error },
    #[error("cannot start the history writer: {0}")]
    Thread(std::io::Error),
    #[error("another natter is using {path} (it holds {LOCK_FILE}); stop it or choose another --data-dir")]
    Locked { path: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
}

/// Takes the data directory's lock file, exclusively.
pub fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Lock { path: path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path: data_dir.to_owned() }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Lock { path, source }),
    }
}

/// The path of the database in `data_dir`.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}

/// Opens the database with `flags` and reads its schema version, refusing
/// one that is unreadable or newer than this build.
fn open_checked(path: &Path, flags: OpenFlags) -> Result<(Connection, i64), StoreError> {
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
    let corrupt = |source| StoreError::Corrupt { path: path.to_owned(), source };
    conn.busy_timeout(BUSY_TIMEOUT).map_err(corrupt)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(corrupt)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew { path: path.to_owned(), found: version });
    }
    Ok((conn, version))
}

/// Opens (creating if needed) and migrates the database for writing.
pub fn open_for_writing(path: &Path) -> Result<Connection, StoreError> {
    let (conn, version) = open_checked(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)?;
    let corrupt = |source| StoreError::Corrupt { path: path.to_owned(), source };
    // A file that is not empty but has no schema is someone else's database.
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0)).map_err(corrupt)?;
    if version == 0 && tables > 0 {
        return Err(StoreError::Corrupt { path: path.to_owned(), source: rusqlite::Error::InvalidQuery });
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(corrupt)?;
    if !mode.eq_ignore_ascii_case("wal") {
        warn!(path = %path.display(), mode, "the database is not in WAL mode");
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;").map_err(corrupt)?;
    migrate(&conn, path, version)?;
    Ok(conn)
}

fn migrate(conn: &Connection, path: &Path, from: i64) -> Result<(), StoreError> {
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(from).unwrap_or(0)) {
        let to = index as i64 + 1;
        let err = |source| StoreError::Migrate { path: path.to_owned(), to, source };
        let tx = conn.unchecked_transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        if to == 1 {
            let id = crate::random::random_hex(8).unwrap_or_else(|| format!("s{}", now_ms().0));
            tx.execute("INSERT INTO meta (key, value) VALUES ('history_id', ?1)", [id]).map_err(err)?;
        }
        tx.execute_batch(&format!("PRAGMA user_version = {to}")).map_err(err)?;
        tx.commit().map_err(err)?;
        info!(path = %path.display(), version = to, "database schema migrated");
    }
    Ok(())
}

/// Opens the database read-only (for reads beside the writer, and `export`).
pub fn open_for_reading(path: &Path) -> Result<Connection, StoreError> {
    open_checked(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map(|(conn, _)| conn)
}

fn storage_error(e: rusqlite::Error) -> HistoryError {
    HistoryError::Unavailable(e.to_string())
}

/// The `kind` column of a chat message; a notice's is its kind's wire name.
const MESSAGE_KIND: &str = "message";

const EVENT_COLUMNS: &str = "seq, ts, kind, name, color, text, cid";

/// Reads a row of [`EVENT_COLUMNS`] back into an event, as it was stored:
/// names, texts and ids are not validated again. Fails, naming the column,
/// only for a row that cannot be an event at all (a missing or non-integer
/// seq or time, a message without text, a kind no version ever wrote).
fn event_from_row(row: &rusqlite::Row<'_>) -> Result<RoomEvent, &'static str> {
    let unsigned = |column| row.get_ref(column).ok().and_then(|v| v.as_i64().ok()).and_then(|v| u64::try_from(v).ok());
    let seq = Seq(unsigned(0).ok_or("seq")?);
    let ts = Timestamp(unsigned(1).ok_or("ts")?);
    let kind: String = row.get(2).map_err(|_| "kind")?;
    let name = UserName::from_stored(row.get(3).map_err(|_| "name")?);
    // The colour is the name's anyway; only a missing one is made up.
    let color = row.get::<_, String>(4).map_or_else(|_| color_for(&name), Color);
    if kind == MESSAGE_KIND {
        let text = MessageText::from_stored(row.get::<_, Option<String>>(5).ok().flatten().ok_or("text")?);
        let cid = row.get::<_, Option<String>>(6).ok().flatten().map(ClientMsgId::from_stored);
        return Ok(RoomEvent::Message(ChatMessage { seq, ts, name, color, text, cid }));
    }
    let kind = from_name::<NoticeKind>(&kind).ok_or("kind")?;
    Ok(RoomEvent::Notice(Notice { seq, ts, kind, name, color }))
}

/// A seq or time as SQLite's integer: one above `i64::MAX` is refused, never wrapped.
fn sql_int(value: u64) -> rusqlite::Result<i64> {
    i64::try_from(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// A seq as a bound of a query (one above `i64::MAX` is above every stored one).
fn sql_bound(seq: Seq) -> i64 {
    i64::try_from(seq.0).unwrap_or(i64::MAX)
}

/// The seq and time of `key`'s message `cid` among the
/// [`RESEND_SCAN_EVENTS`] events of `room` after `after`, if stored there
/// (this transaction's own inserts included).
fn find_resent(
    conn: &Connection,
    room: &RoomName,
    after: Seq,
    key: &str,
    cid: &ClientMsgId,
) -> rusqlite::Result<Option<(Seq, Timestamp)>> {
    let upto = after.0.saturating_add(RESEND_SCAN_EVENTS);
    let found: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT seq, ts FROM events WHERE room = ?1 AND seq > ?2 AND seq <= ?3 AND name_key = ?4 AND cid = ?5 \
             LIMIT 1",
        )?
        .query_row(params![room.as_str(), sql_bound(after), sql_bound(Seq(upto)), key, cid.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(found.map(|(seq, ts)| (Seq(unsigned(seq)), Timestamp(unsigned(ts)))))
}

/// Stores one event (the writer's, and `import`'s).
pub fn insert_event(conn: &Connection, room: &RoomName, event: &RoomEvent) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO events (room, seq, ts, kind, name, name_key, color, text, cid) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let (seq, ts) = (sql_int(event.seq().0)?, sql_int(event.ts().0)?);
    match event {
        RoomEvent::Message(m) => stmt.execute(params![
            room.as_str(),
            seq,
            ts,
            MESSAGE_KIND,
            m.name.as_str(),
            m.name.key(),
            m.color.as_str(),
            m.text.as_str(),
            m.cid.as_ref().map(ClientMsgId::as_str)
        ])?,
        RoomEvent::Notice(n) => stmt.execute(params![
            room.as_str(),
            seq,
            ts,
            n.kind.wire_name(),
            n.name.as_str(),
            n.name.key(),
            n.color.as_str(),
            None::<String>,
            None::<String>
        ])?,
    };
    Ok(())
}

/// Sets a room's head (used by the writer and by `import`).
pub fn set_head(conn: &Connection, room: &RoomName, head: Seq) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO rooms (room, head) VALUES (?1, ?2) ON CONFLICT (room) DO UPDATE SET head = excluded.head",
    )?
    .execute(params![room.as_str(), sql_int(head.0)?])?;
    Ok(())
}

/// A room's head as stored in `rooms` (0 for a room without one).
pub fn head_of(conn: &Connection, room: &RoomName) -> rusqlite::Result<Seq> {
    let head: Option<i64> = conn
        .prepare_cached("SELECT head FROM rooms WHERE room = ?1")?
        .query_row([room.as_str()], |r| r.get(0))
        .optional()?;
    Ok(Seq(head.map_or(0, |h| u64::try_from(h).unwrap_or(0))))
}

/// A room's last seq and the time of its latest stored event, for numbering
/// new ones: the head, or a stored seq above it should `rooms` lag behind
/// `events` (a hand-edited file), so a new seq never clashes with an old one.
/// A time that cannot be read counts as 0.
fn last_of(conn: &Connection, room: &RoomName) -> rusqlite::Result<(Seq, Timestamp)> {
    let head = head_of(conn, room)?;
    let last = conn
        .prepare_cached(
            "SELECT seq, ts FROM events WHERE room = ?1 AND typeof(seq) = 'integer' ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([room.as_str()], |r| Ok((r.get_ref(0)?.as_i64().ok(), r.get_ref(1)?.as_i64().ok())))
        .optional()?;
    let (seq, ts) = last.unwrap_or((None, None));
    let unsigned = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0);
    Ok((head.max(Seq(unsigned(seq))), Timestamp(unsigned(ts))))
}

/// Events of `room` with `lo < seq <= hi`, the latest `limit`, oldest first.
pub fn range(conn: &Connection, room: &RoomName, lo: Seq, hi: Seq, limit: usize) -> rusqlite::Result<Vec<RoomEvent>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE room = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq DESC LIMIT ?4"
    ))?;
    let bounds = params![room.as_str(), sql_bound(lo), sql_bound(hi), i64::try_from(limit).unwrap_or(i64::MAX)];
    let rows = stmt.query_map(bounds, |row| {
        Ok(event_from_row(row)
            .inspect_err(|column| {
                let seq = row.get_ref(0).ok().and_then(|v| v.as_i64().ok());
                warn!(room = %room, seq, column, "a stored event cannot be read; it is skipped");
            })
            .ok())
    })?;
    let mut events = rows.filter_map(Result::transpose).collect::<rusqlite::Result<Vec<_>>>()?;
    events.reverse();
    Ok(events)
}

/// A room and its writes of one commit, in seq order.
type RoomWrites = (Arc<dyn Committed>, Vec<(Draft, Outcome)>);

/// Each room's head before a committed batch, for the rooms the batch
/// stored events in (the seq below its first stored one), by the room's
/// address.
fn heads_before(batch: &[Pending], results: &[rusqlite::Result<Outcome>]) -> Vec<(*const (), Seq)> {
    let mut heads: Vec<(*const (), Seq)> = Vec::new();
    for (pending, result) in batch.iter().zip(results) {
        if let Ok(Outcome::Stored(event)) = result {
            let room = Arc::as_ptr(&pending.write.room).cast::<()>();
            let below = Seq(event.seq().0.saturating_sub(1));
            match heads.iter_mut().find(|(r, _)| *r == room) {
                Some((_, head)) => *head = (*head).min(below),
                None => heads.push((room, below)),
            }
        }
    }
    heads
}

/// Records `seq` as the latest of `room` in this transaction.
fn note_head(heads: &mut Vec<(RoomName, Seq)>, room: &RoomName, seq: Seq) {
    match heads.iter_mut().find(|(r, _)| r == room) {
        Some((_, h)) => *h = seq,
        None => heads.push((room.clone(), seq)),
    }
}

/// Replaces the saved members with `members`, in one transaction.
fn save_members(conn: &mut Connection, members: &[SavedMember]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM saved_members", [])?;
    {
        let mut insert = tx.prepare_cached("INSERT INTO saved_members (room, name, token) VALUES (?1, ?2, ?3)")?;
        for m in members {
            insert.execute(params![m.room.as_str(), m.name.as_str(), m.token.as_str()])?;
        }
    }
    tx.commit()
}

/// Reads and removes the saved members, in one transaction: they are good
/// for one start only (a crash after it must not bring them back). Rows
/// that are no longer valid (a rule tightened since) are skipped.
fn take_members(conn: &mut Connection) -> rusqlite::Result<Vec<SavedMember>> {
    let tx = conn.transaction()?;
    let members = {
        let mut stmt = tx.prepare("SELECT room, name, token FROM saved_members")?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
        let mut members = Vec::new();
        for row in rows {
            let (room, name, token) = row?;
            match (RoomName::parse(&room), UserName::parse(&name), ResumeToken::parse(&token)) {
                (Ok(room), Ok(name), Ok(token)) => members.push(SavedMember { room, name, token }),
                _ => warn!(room, "a saved member is not valid any more; skipped"),
            }
        }
        members
    };
    tx.execute("DELETE FROM saved_members", [])?;
    tx.commit()?;
    Ok(members)
}

/// The durable store.
#[derive(Debug)]
pub struct SqliteStore {
    history_id: String,
    keeps: Option<usize>,
    /// Reads run beside the writer (WAL), on blocking threads, each on a
    /// connection of its own from a small pool.
    readers: ReadPool,
    /// One per read connection: reads beyond them wait on the async side.
    read_slots: Arc<tokio::sync::Semaphore>,
    /// The members saved at the last stop, until taken.
    saved: Mutex<Vec<SavedMember>>,
}

/// Read-only connections, each used by one read at a time. A read takes an
/// idle one or waits for one (policy: the pool is small and reads are short,
/// so a burst of reads queues here instead of opening more files).
#[derive(Debug)]
pub struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    returned: std::sync::Condvar,
}

/// A connection taken from the pool; dropping it gives it back.
#[derive(Debug)]
pub struct PooledConnection<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl ReadPool {
    /// `size` read-only connections to the database at `path`.
    pub fn open(path: &Path, size: usize) -> Result<Self, StoreError> {
        let conns = (0..size.max(1)).map(|_| open_for_reading(path)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { idle: Mutex::new(conns), returned: std::sync::Condvar::new() })
    }

    /// An idle connection, waiting for one if all are in use. Blocks: call
    /// it on a blocking thread.
    pub fn get(&self) -> PooledConnection<'_> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = idle.pop() {
                return PooledConnection { pool: self, conn: Some(conn) };
            }
            idle = self.returned.wait(idle).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl std::ops::Deref for PooledConnection<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // Present until dropped.
        self.conn.as_ref().unwrap_or_else(|| unreachable!("a pooled connection is taken only on drop"))
    }
}

impl Drop for PooledConnection<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            self.pool.returned.notify_one();
        }
    }
}

impl SqliteStore {
    /// Opens the database in the data directory (creating and migrating it) and
    /// starts the writer thread.
    pub fn start(options: &StorageConfig, metrics: Arc<Metrics>) -> Result<(Arc<Self>, WriteQueue), StoreError> {
        let data_dir = options.data_dir.as_path();
        let options = options.clone();
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::CreateDir { path: data_dir.to_owned(), source })?;
        let lock = lock_data_dir(data_dir)?;
        let path = db_path(data_dir);
        let mut writer = open_for_writing(&path)?;
        if let Some(bytes) = options.max_db_bytes {
            let page: i64 = writer.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap_or(4096);
            let pages = (bytes as i64 / page.max(512)).max(1);
            writer
                .execute_batch(&format!("PRAGMA max_page_count = {pages}"))
                .map_err(|source| StoreError::Open { path: path.clone(), source })?;
        }
        let history_id: String = writer
            .query_row("SELECT value FROM meta WHERE key = 'history_id'", [], |r| r.get(0))
            .map_err(|source| StoreError::Corrupt { path: path.clone(), source })?;
        writer
            .execute_batch(&format!("PRAGMA cache_size = -{WRITER_CACHE_KIB}"))
            .map_err(|source| StoreError::Open { path: path.clone(), source })?;
        let readers = ReadPool::open(&path, options.read_connections)?;
        let read_slots = Arc::new(tokio::sync::Semaphore::new(options.read_connections.max(1)));
        let keeps = options.retain_count.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let saved = take_members(&mut writer).map_err(|source| StoreError::Corrupt { path: path.clone(), source })?;
        let store = Arc::new(Self { history_id, keeps, readers, read_slots, saved: Mutex::new(saved) });
        let (tx, rx) = mpsc::channel::<WriterMsg>(options.write_queue.max(1));
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("natter-history-writer".into())
            .spawn(move || Writer::new(writer, lock, options, metrics).run(rx, &runtime))
            .map_err(StoreError::Thread)?;
        info!(path = %path.display(), "history in SQLite");
        Ok((store, WriteQueue(tx)))
    }

    fn read(&self) -> PooledConnection<'_> {
        self.readers.get()
    }
}

impl HistoryStore for SqliteStore {
    fn history_id(&self, _room: &RoomName) -> String {
        self.history_id.clone()
    }

    fn forget(&self, _room: &RoomName) {
        // Everything is on disk; nothing is held per room.
    }

    fn keeps(&self) -> Option<usize> {
        self.keeps
    }

    fn open_room(&self, room: &RoomName, limit: usize) -> Result<(Seq, Vec<RoomEvent>), HistoryError> {
        let conn = self.read();
        let head = head_of(&conn, room).map_err(storage_error)?;
        let events = range(&conn, room, Seq(0), head, limit).map_err(storage_error)?;
        Ok((head, events))
    }

    fn after(&self, room: &RoomName, after: Seq, upto: Seq, limit: usize) -> Result<Replay, HistoryError> {
        let events = range(&self.read(), room, after, upto, limit).map_err(storage_error)?;
        Ok(replay_of(after, upto, events))
    }

    fn before(&self, room: &RoomName, before: Seq, limit: usize) -> Result<Vec<RoomEvent>, HistoryError> {
        range(&self.read(), room, Seq(0), Seq(before.0.saturating_sub(1)), limit).map_err(storage_error)
    }

    fn read_slots(&self) -> Arc<tokio::sync::Semaphore> {
        self.read_slots.clone()
    }

    fn take_saved_members(&self) -> Vec<SavedMember> {
        std::mem::take(&mut *self.saved.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    /// The data directory's lock: held while the writer runs, given back
    /// before it says it has stopped, so a server started right after this
    /// one stops finds the directory free.
    lock: std::fs::File,
    options: StorageConfig,
    seqs: Sequencer,
    lookups: LookupBudget,
    /// Writes to store again with the next batch: notices whose transaction
    /// failed, and writes that failed on their own.
    retry: std::collections::VecDeque<Pending>,
    next_retention: Instant,
    retention_busy: bool,
    metrics: Arc<Metrics>,
}

/// A write in the writer's hands, and how often it failed on its own.
#[derive(Debug)]
struct Pending {
    write: Write,
    failures: u32,
}

impl Pending {
    /// Tells the write's room that it was not stored (the sender of a
    /// message gets `storage_unavailable`; a notice is logged).
    fn fail(self, error: HistoryError) {
        self.write.room.committed(self.write.draft, Outcome::Failed(error));
    }
}

/// Whether an error is the storage's own (the disk, the file, a lock, the
/// `--max-db-mb` quota): then the whole batch fails, as it would for any
/// write in it. Any other error (a constraint, a value SQLite refuses, a
/// trigger) belongs to the write that met it, which then fails alone.
fn is_storage_failure(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if matches!(f.code,
        C::DiskFull | C::SystemIoFailure | C::DatabaseBusy | C::DatabaseLocked | C::OutOfMemory | C::ReadOnly
        | C::DatabaseCorrupt | C::NotADatabase | C::CannotOpen | C::FileLockingProtocolFailed
        | C::NoLargeFileSupport | C::PermissionDenied | C::OperationInterrupted | C::InternalMalfunction))
}

/// Stores one draft inside the batch's transaction (in the write's own
/// savepoint): finds a re-send's original (only a re-send's, after its
/// hint), or gives the draft its seq and inserts it. The seq is only peeked
/// at; the caller takes it once the savepoint holds.
fn store_one(
    conn: &Connection,
    seqs: &mut Sequencer,
    lookups: &mut LookupBudget,
    room: &RoomName,
    draft: &Draft,
    now: Timestamp,
) -> rusqlite::Result<Outcome> {
    if let Draft::Message { name, cid, resent_after: Some(after), .. } = draft {
        let started = Instant::now();
        if !lookups.allows(started) {
            return Ok(Outcome::Failed(HistoryError::Busy));
        }
        let found = find_resent(conn, room, *after, &name.key(), cid);
        lookups.spend(started.elapsed());
        if let Some((seq, ts)) = found? {
            // The original is stored: acknowledged with its seq and time.
            return Ok(Outcome::Duplicate(seq, ts));
        }
    }
    let (seq, ts) = seqs.try_peek(room, || last_of(conn, room), now)?;
    let event = draft.clone().into_event(seq, ts);
    insert_event(conn, room, &event)?;
    Ok(Outcome::Stored(event))
}

impl Writer {
    fn new(conn: Connection, lock: std::fs::File, options: StorageConfig, metrics: Arc<Metrics>) -> Self {
        let next_retention = Instant::now() + options.retention_interval;
        Self {
            conn,
            lock,
            options,
            seqs: Sequencer::default(),
            lookups: LookupBudget::new(RESEND_LOOKUP_BUDGET, RESEND_LOOKUP_PERIOD, Instant::now()),
            retry: Default::default(),
            next_retention,
            retention_busy: false,
            metrics,
        }
    }

    fn retention_enabled(&self) -> bool {
        self.options.retain_count.is_some() || self.options.retain_age.is_some()
    }

    fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>, runtime: &tokio::runtime::Handle) {
        loop {
            // Wait for work, waking for retention when it is due.
            let until_retention =
                self.retention_enabled().then(|| self.next_retention.saturating_duration_since(Instant::now()));
            let wait = next_wait(self.retention_busy, until_retention, !self.retry.is_empty());
            let first = if wait.is_zero() {
                rx.try_recv().ok()
            } else {
                match runtime.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                    Ok(Some(msg)) => Some(msg),
                    Ok(None) => return self.finish(None),
                    Err(_) => None,
                }
            };
            let mut batch: Vec<Pending> = self.retry.drain(..).collect();
            let mut stop = None;
            let mut probes = Vec::new();
            let mut next = first;
            while let Some(msg) = next {
                match msg {
                    WriterMsg::Write(write) => batch.push(Pending { write, failures: 0 }),
                    WriterMsg::Probe(answer) => probes.push(answer),
                    WriterMsg::Stop { members, done } => {
                        stop = Some((members, done));
                        break;
                    }
                }
                if batch.len() >= self.options.write_batch {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !batch.is_empty() {
                let (writes, began) = (batch.len(), std::time::Instant::now());
                self.store(batch);
                self.metrics.committed(writes, began.elapsed());
            }
            if !probes.is_empty() {
                // A write lock taken and given back: the database takes writes now.
                let result = self.conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").map_err(|e| e.to_string());
                for answer in probes {
                    let _ = answer.send(result.clone());
                }
            }
            if stop.is_some() {
                return self.finish(stop);
            }
            if self.retention_enabled() && (self.retention_busy || Instant::now() >= self.next_retention) {
                self.retention_busy = self.retention_step();
                if !self.retention_busy {
                    self.next_retention = Instant::now() + self.options.retention_interval;
                }
            }
        }
    }

    fn finish(mut self, stop: Option<(Vec<SavedMember>, tokio::sync::oneshot::Sender<()>)>) {
        if !self.retry.is_empty() {
            warn!(writes = self.retry.len(), "writes not stored at shutdown");
            for pending in self.retry.drain(..) {
                pending.fail(HistoryError::Unavailable("the server is shutting down".into()));
            }
        }
        let (members, stop) = stop.map_or((Vec::new(), None), |(members, done)| (members, Some(done)));
        match save_members(&mut self.conn, &members) {
            Ok(()) if !members.is_empty() => info!(members = members.len(), "members saved for the next start"),
            Ok(()) => {}
            Err(e) => warn!(error = %e, "members not saved: they will rejoin as new after the restart"),
        }
        // Fold the WAL into the database so the next start reads one file.
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            debug!(error = %e, "checkpoint at shutdown failed");
        }
        debug!("history writer stopped");
        // The database closed and the directory unlocked before saying so.
        let Writer { conn, lock, .. } = self;
        drop(conn);
        drop(lock);
        if let Some(done) = stop {
            let _ = done.send(());
        }
    }

    /// Stores a batch in one transaction, then reports every outcome in
    /// order. A write that failed on its own is retried with the next batch
    /// until it has failed [`WRITE_ATTEMPTS`] times; if the transaction
    /// fails, nothing of the batch was stored.
    fn store(&mut self, batch: Vec<Pending>) {
        match self.store_batch(&batch) {
            Ok(results) => {
                // Each room hears of its writes of this commit at once, so
                // it can send its notices of the commit as one frame.
                let mut rooms: Vec<RoomWrites> = Vec::new();
                let mut index: HashMap<*const (), usize> = HashMap::new();
                let before = heads_before(&batch, &results);
                for (pending, result) in batch.into_iter().zip(results) {
                    match result {
                        Ok(outcome) => {
                            let Pending { write: Write { room, draft }, .. } = pending;
                            let at = *index.entry(Arc::as_ptr(&room).cast::<()>()).or_insert_with(|| {
                                rooms.push((room.clone(), Vec::new()));
                                rooms.len() - 1
                            });
                            rooms[at].1.push((draft, outcome));
                        }
                        Err(e) => {
                            let room = Arc::as_ptr(&pending.write.room).cast::<()>();
                            let before = before.iter().find(|(r, _)| *r == room).map(|(_, seq)| *seq);
                            self.failed_alone(pending, e, before);
                        }
                    }
                }
                for (room, writes) in rooms {
                    room.committed_all(writes);
                }
            }
            Err(e) => {
                warn!(error = %e, events = batch.len(), "history transaction failed");
                // Nothing of the batch was stored: its seqs are free again.
                self.seqs.forget(batch.iter().map(|p| p.write.room.room_name()));
                let error = storage_error(e);
                for pending in batch {
                    match pending.write.draft {
                        // Not the notice's fault: kept for the next batch.
                        Draft::Notice { .. } => self.keep_for_retry(pending),
                        // The page keeps the message and sends it again.
                        Draft::Message { .. } => pending.fail(error.clone()),
                    }
                }
            }
        }
    }

    /// The batch's transaction. Tried first without savepoints (two more
    /// statements per write, each parsed anew by SQLite: most of a write's
    /// cost beside its insert); if a write fails on its own, that attempt is
    /// rolled back and the batch is stored again with one savepoint per
    /// write, so the failing write fails alone. Returns each write's
    /// outcome, or the error it failed with on its own; fails as a whole
    /// (nothing stored) if the storage fails.
    fn store_batch(&mut self, batch: &[Pending]) -> rusqlite::Result<Vec<rusqlite::Result<Outcome>>> {
        let now = now_ms();
        let started = Instant::now();
        let results = match self.store_all(batch, now)? {
            Some(results) => results,
            None => {
                // Nothing of that attempt was stored: its seqs are free again.
                self.seqs.forget(batch.iter().map(|p| p.write.room.room_name()));
                self.store_each(batch, now)?
            }
        };
        let took = started.elapsed();
        if took > SLOW_COMMIT {
            warn!(events = batch.len(), total_ms = took.as_millis() as u64, "slow history transaction");
        }
        Ok(results)
    }

    /// Stores the whole batch in one transaction without savepoints.
    /// `Ok(None)`: a write failed on its own and nothing was stored.
    fn store_all(
        &mut self,
        batch: &[Pending],
        now: Timestamp,
    ) -> rusqlite::Result<Option<Vec<rusqlite::Result<Outcome>>>> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(batch.len());
        let mut heads: Vec<(RoomName, Seq)> = Vec::new();
        for pending in batch {
            let room = pending.write.room.room_name();
            match store_one(&tx, &mut self.seqs, &mut self.lookups, room, &pending.write.draft, now) {
                Ok(outcome) => {
                    if let Outcome::Stored(event) = &outcome {
                        self.seqs.take(room, event.seq(), event.ts());
                        note_head(&mut heads, room, event.seq());
                    }
                    results.push(Ok(outcome));
                }
                Err(e) if is_storage_failure(&e) => return Err(e),
                Err(_) => {
                    // Dropping the transaction rolls it back.
                    drop(tx);
                    return Ok(None);
                }
            }
        }
        for (room, head) in &heads {
            set_head(&tx, room, *head)?;
        }
        tx.commit()?;
        Ok(Some(results))
    }

    /// Stores the batch with one savepoint per write, so a write that fails
    /// on its own is undone alone.
    fn store_each(&mut self, batch: &[Pending], now: Timestamp) -> rusqlite::Result<Vec<rusqlite::Result<Outcome>>> {
        let mut tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(batch.len());
        let mut heads: Vec<(RoomName, Seq)> = Vec::new();
        for pending in batch {
            let room = pending.write.room.room_name();
            let savepoint = tx.savepoint()?;
            match store_one(&savepoint, &mut self.seqs, &mut self.lookups, room, &pending.write.draft, now) {
                Ok(outcome) => {
                    savepoint.commit()?;
                    if let Outcome::Stored(event) = &outcome {
                        // Only now is the seq used: a write that failed took none.
                        self.seqs.take(room, event.seq(), event.ts());
                        note_head(&mut heads, room, event.seq());
                    }
                    results.push(Ok(outcome));
                }
                Err(e) => {
                    // Undo this write alone. If the storage failed, or SQLite
                    // already rolled the whole transaction back, the batch fails.
                    let undone = savepoint.finish();
                    if is_storage_failure(&e) || undone.is_err() || tx.is_autocommit() {
                        return Err(e);
                    }
                    results.push(Err(e));
                }
            }
        }
        for (room, head) in &heads {
            set_head(&tx, room, *head)?;
        }
        tx.commit()?;
        Ok(results)
    }

    /// A write failed on its own: retried with the next batch, or, after
    /// [`WRITE_ATTEMPTS`] failures, dropped with an error to its sender.
    /// `before` is its room's head before the batch if the batch stored
    /// events there (else the head read now is the same).
    fn failed_alone(&mut self, pending: Pending, error: rusqlite::Error, before: Option<Seq>) {
        let failures = pending.failures + 1;
        let room = pending.write.room.room_name().clone();
        if failures >= WRITE_ATTEMPTS {
            warn!(room = %room, failures, error = %error, "a write cannot be stored; it is dropped");
            pending.fail(storage_error(error));
        } else {
            debug!(room = %room, failures, error = %error, "a write failed on its own; it will be tried again");
            let mut pending = pending;
            if let Draft::Message { resent_after: hint @ None, .. } = &mut pending.write.draft {
                // Its page may send it again meanwhile (later in this batch,
                // or after), and that copy be stored first: the retry looks
                // for it after the head this batch started from.
                match before.map_or_else(|| head_of(&self.conn, &room), Ok) {
                    Ok(head) => *hint = Some(head),
                    Err(e) => {
                        // Without a head to look after, the page sends it again.
                        return pending.fail(storage_error(e));
                    }
                }
            }
            self.keep_for_retry(Pending { failures, ..pending });
        }
    }

    /// Queues a write for the next batch; when [`RETRY_MAX`] are waiting,
    /// the oldest is dropped as failed.
    fn keep_for_retry(&mut self, pending: Pending) {
        if self.retry.len() >= RETRY_MAX
            && let Some(oldest) = self.retry.pop_front()
        {
            warn!(room = %oldest.write.room.room_name(), "retry queue full; dropping the oldest write");
            oldest.fail(HistoryError::Unavailable("too many writes are waiting to be stored".into()));
        }
        self.retry.push_back(pending);
    }

    /// Deletes one chunk of events past retention; true if more may remain.
    fn retention_step(&mut self) -> bool {
        let result = (|| -> rusqlite::Result<usize> {
            let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut deleted = 0;
            let rooms: Vec<(String, i64)> = tx
                .prepare_cached("SELECT room, head FROM rooms")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (room, head) in rooms {
                let budget = RETENTION_CHUNK.saturating_sub(deleted);
                if budget == 0 {
                    break;
                }
                if let Some(keep) = self.options.retain_count {
                    let cutoff = head - keep as i64;
                    deleted += tx.prepare_cached(
                        "DELETE FROM events WHERE room = ?1 AND seq IN (SELECT seq FROM events WHERE room = ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3)",
                    )?
                    .execute(params![room, cutoff, budget as i64])?;
                }
                if let Some(age) = self.options.retain_age {
                    let cutoff = now_ms().0.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)) as i64;
                    let budget = RETENTION_CHUNK.saturating_sub(deleted);
                    deleted += tx.prepare_cached(
                        "DELETE FROM events WHERE room = ?1 AND seq IN (SELECT seq FROM events WHERE room = ?1 AND ts < ?2 ORDER BY seq LIMIT ?3)",
                    )?
                    .execute(params![room, cutoff, budget as i64])?;
                }
            }
            tx.commit()?;
            Ok(deleted)
        })();
        match result {
            Ok(deleted) => {
                if deleted > 0 {
                    debug!(deleted, "retention deleted old events");
                }
                deleted >= RETENTION_CHUNK
            }
            Err(e) => {
                warn!(error = %e, "retention failed");
                false
            }
        }
    }
}

/// How long the writer sleeps between checks when idle.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// How long the writer waits for work before it looks again: not at all
/// while retention has more to delete, at most until retention is due (when
/// it is on), and at most `RETRY_PAUSE` while failed writes wait for a retry
/// — so a storage failure that lasts (disk full, the quota) is retried twice
/// a second, not in a busy loop.
fn next_wait(retention_busy: bool, until_retention: Option<Duration>, retrying: bool) -> Duration {
    if retention_busy {
        return Duration::ZERO;
    }
    let pause = if retrying { RETRY_PAUSE } else { IDLE_WAIT };
    until_retention.map_or(pause, |until| until.min(pause))
}
/// Pause before storing failed writes again when no new work comes.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lasting_storage_failure_is_retried_at_a_pace_not_in_a_busy_loop() {
        // Retention off (its deadline long past is then meaningless): the
        // writer with writes to retry pauses between attempts.
        assert_eq!(next_wait(false, None, true), RETRY_PAUSE);
        assert_eq!(next_wait(false, None, false), IDLE_WAIT);
        // Retention on: it wakes for retention when that comes first.
        assert_eq!(next_wait(false, Some(Duration::from_millis(10)), true), Duration::from_millis(10));
        assert_eq!(next_wait(false, Some(Duration::from_secs(30)), true), RETRY_PAUSE);
        assert_eq!(next_wait(true, None, true), Duration::ZERO, "retention still deleting");
    }

    /// A re-send (a message with the hint `after`) is looked for after its
    /// hint: in the same transaction or a later one it is acknowledged with
    /// the first seq and takes none; another sender may use the same id;
    /// the look-up ends `RESEND_SCAN_EVENTS` after the hint; a first send
    /// (no hint) is stored without one; notices have none; a seq already
    /// used still fails.
    #[test]
    fn a_resent_message_gets_its_first_seq_and_takes_none() {
        let dir = std::env::temp_dir().join(format!("natter-resend-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let conn = open_for_writing(&db_path(&dir)).expect("database");
        let room = RoomName::default();
        let (sender, _rx) = crate::ws::outbound::channel(1, 8);
        let message = |name: &str, cid: &str, after: Option<u64>| {
            let name = UserName::parse(name).expect("name");
            Draft::Message {
                color: color_for(&name),
                name,
                text: MessageText::parse("hi").expect("text"),
                cid: ClientMsgId::parse(cid).expect("cid"),
                resent_after: after.map(Seq),
                sender: sender.clone(),
                member: 1,
            }
        };
        let say = |name: &str, cid: &str| message(name, cid, None);
        let resend = |name: &str, cid: &str, after: u64| message(name, cid, Some(after));
        let joined = |name: &str| {
            let name = UserName::parse(name).expect("name");
            Draft::Notice { kind: NoticeKind::Joined, color: color_for(&name), name, once: None }
        };
        let mut seqs = Sequencer::default();
        let hour = Duration::from_secs(3600);
        let mut lookups = LookupBudget::new(hour, hour, Instant::now());
        let mut store = |draft: &Draft| match store_one(&conn, &mut seqs, &mut lookups, &room, draft, Timestamp(7))
            .expect("stored")
        {
            Outcome::Stored(event) => {
                seqs.take(&room, event.seq(), event.ts());
                Ok(event.seq())
            }
            Outcome::Duplicate(seq, _) => Err(seq),
            Outcome::Failed(e) => panic!("{e}"),
        };

        conn.execute_batch("BEGIN").expect("begin");
        assert_eq!(store(&say("Ada", "c1")), Ok(Seq(1)));
        assert_eq!(store(&resend("ada", "c1", 0)), Err(Seq(1)), "a re-send in the same transaction (name keys match)");
        assert_eq!(store(&resend("Bo", "c1", 0)), Ok(Seq(2)), "another sender's id");
        assert_eq!(store(&joined("Cy")), Ok(Seq(3)));
        assert_eq!(store(&joined("Cy")), Ok(Seq(4)), "notices are never duplicates");
        conn.execute_batch("COMMIT").expect("commit");
        assert_eq!(store(&resend("Ada", "c1", 0)), Err(Seq(1)), "a re-send after the commit");
        assert_eq!(store(&say("Ada", "c2")), Ok(Seq(5)), "no seq skipped");
        assert_eq!(store(&resend("Ada", "c1", 1)), Ok(Seq(6)), "the original is not after the hint");

        // The look-up covers RESEND_SCAN_EVENTS events after the hint, no more.
        let fill = RESEND_SCAN_EVENTS - 1;
        conn.execute_batch("BEGIN").expect("begin");
        for i in 0..fill {
            assert!(store(&joined(&format!("n{i}"))).is_ok());
        }
        conn.execute_batch("COMMIT").expect("commit");
        assert_eq!(store(&say("Eve", "e1")), Ok(Seq(7 + fill)));
        assert_eq!(store(&resend("Eve", "e1", 6)), Err(Seq(7 + fill)), "the last event the look-up covers");
        assert_eq!(store(&resend("Eve", "e1", 5)), Ok(Seq(8 + fill)), "one beyond it: stored again");

        // A seq already used is refused.
        let taken = say("Dee", "c9").into_event(Seq(5), Timestamp(7));
        assert!(insert_event(&conn, &room, &taken).is_err());
        let count: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).expect("count");
        assert_eq!(count, i64::try_from(8 + fill).expect("small"));

        // With the look-up time spent, a re-send is refused as busy (not
        // stored, no seq taken); a first send is stored as ever.
        let mut spent = LookupBudget::new(Duration::ZERO, hour, Instant::now());
        let mut seqs = Sequencer::default();
        let busy = store_one(&conn, &mut seqs, &mut spent, &room, &resend("Eve", "e1", 6), Timestamp(7));
        assert!(matches!(busy, Ok(Outcome::Failed(HistoryError::Busy))), "{busy:?}");
        let first = store_one(&conn, &mut seqs, &mut spent, &room, &say("Eve", "e2"), Timestamp(7));
        assert!(matches!(first, Ok(Outcome::Stored(ref e)) if e.seq() == Seq(9 + fill)), "{first:?}");
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A room that ignores what the writer reports.
    #[derive(Debug)]
    struct Quiet(RoomName);

    impl Committed for Quiet {
        fn room_name(&self) -> &RoomName {
            &self.0
        }

        fn committed_all(&self, _writes: Vec<(Draft, Outcome)>) {}
    }

    /// A message that failed on its own is kept for a retry with a look-up
    /// after the head its batch started from: its page may send it again
    /// meanwhile, and that copy be stored first (later in the same batch
    /// at the earliest). Without it the retry would store a second copy.
    #[test]
    fn a_message_kept_for_a_retry_looks_for_a_copy_stored_meanwhile() {
        let dir = std::env::temp_dir().join(format!("natter-retry-hint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let conn = open_for_writing(&db_path(&dir)).expect("database");
        let room = RoomName::default();
        let name = UserName::parse("Ada").expect("name");
        let (sender, _rx) = crate::ws::outbound::channel(1, 8);
        let draft = Draft::Message {
            color: color_for(&name),
            name,
            text: MessageText::parse("hi").expect("text"),
            cid: ClientMsgId::parse("c1").expect("cid"),
            resent_after: None,
            sender,
            member: 1,
        };
        // Seqs 1 and 2 stored before; the failing batch stored seq 3: the
        // page's re-send of c1, later in that batch.
        for seq in 1..=3 {
            insert_event(&conn, &room, &draft.clone().into_event(Seq(seq), Timestamp(seq))).expect("insert");
        }
        conn.execute("UPDATE events SET cid = 'old' || seq WHERE seq < 3", []).expect("other ids");
        set_head(&conn, &room, Seq(3)).expect("head");
        let lock = lock_data_dir(&dir).expect("lock");
        let options = StorageConfig { data_dir: dir.clone(), ..StorageConfig::default() };
        let mut writer = Writer::new(conn, lock, options, Arc::new(Metrics::new()));
        let write = Write { room: Arc::new(Quiet(room.clone())), draft };
        let stored = Write { room: write.room.clone(), draft: write.draft.clone() };
        let batch = [Pending { write: stored, failures: 0 }, Pending { write, failures: 0 }];
        let results = [
            Ok(Outcome::Stored(batch[0].write.draft.clone().into_event(Seq(3), Timestamp(3)))),
            Err(rusqlite::Error::InvalidQuery),
        ];
        let before = heads_before(&batch, &results);
        assert_eq!(before.iter().map(|(_, s)| *s).collect::<Vec<_>>(), [Seq(2)], "the head before the batch");
        let [_, failed] = batch;
        writer.failed_alone(failed, rusqlite::Error::InvalidQuery, before.first().map(|(_, s)| *s));
        let retried = writer.retry.pop_front().expect("kept for a retry");
        assert_eq!(retried.failures, 1);
        let Draft::Message { resent_after, .. } = &retried.write.draft else { panic!("a message") };
        assert_eq!(*resent_after, Some(Seq(2)), "the head its batch started from");
        let hour = Duration::from_secs(3600);
        let mut lookups = LookupBudget::new(hour, hour, Instant::now());
        let outcome =
            store_one(&writer.conn, &mut writer.seqs, &mut lookups, &room, &retried.write.draft, Timestamp(9));
        assert!(matches!(outcome, Ok(Outcome::Duplicate(Seq(3), Timestamp(3)))), "{outcome:?}");
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_lookup_budget_is_spent_and_renewed_each_period() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut budget = LookupBudget::new(ms(100), ms(1000), t);
        assert!(budget.allows(t));
        budget.spend(ms(60));
        assert!(budget.allows(t + ms(10)), "40 ms left");
        budget.spend(ms(60));
        assert!(!budget.allows(t + ms(20)), "spent (one look-up may overrun it)");
        assert!(!budget.allows(t + ms(999)));
        assert!(budget.allows(t + ms(1000)), "a new period pays back a budget: 20 ms owed");
        budget.spend(ms(100));
        assert!(!budget.allows(t + ms(1500)));
        // A look-up of 2.5 s is paid for by the periods after it.
        let mut budget = LookupBudget::new(ms(100), ms(1000), t);
        assert!(budget.allows(t));
        budget.spend(ms(2500));
        assert!(!budget.allows(t + ms(5000)), "2,000 ms still owed after five periods");
        assert!(!budget.allows(t + ms(24_999)));
        assert!(budget.allows(t + ms(25_000)), "paid back after 25 periods");
    }

    /// A database of schema 3 (with the sender index) is migrated to 4: the
    /// index is gone, its events are read as before, and a re-send of one
    /// of them is still found after its hint.
    #[test]
    fn the_sender_index_is_dropped_by_the_migration() {
        let dir = std::env::temp_dir().join(format!("natter-migrate-4-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = db_path(&dir);
        let room = RoomName::default();
        {
            let conn = Connection::open(&path).expect("open");
            // Schema 3, as an older natter left it.
            conn.execute_batch(&format!(
                "{} {} {} PRAGMA user_version = 3;",
                MIGRATIONS[0], MIGRATIONS[1], MIGRATIONS[2]
            ))
            .expect("schema 3");
            conn.execute("INSERT INTO meta (key, value) VALUES ('history_id', 'h3')", []).expect("history id");
            let name = UserName::parse("Ada").expect("name");
            let event = RoomEvent::Message(ChatMessage {
                seq: Seq(1),
                ts: Timestamp(5),
                color: color_for(&name),
                name,
                text: MessageText::parse("kept").expect("text"),
                cid: Some(ClientMsgId::parse("c1").expect("cid")),
            });
            insert_event(&conn, &room, &event).expect("insert");
            set_head(&conn, &room, Seq(1)).expect("head");
        }
        let conn = open_for_writing(&path).expect("migrated");
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        let indexes: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name = 'events_sender'", [], |r| {
                r.get(0)
            })
            .expect("schema");
        assert_eq!(indexes, 0, "the sender index is dropped");
        assert_eq!(range(&conn, &room, Seq(0), Seq(1), 10).expect("read").len(), 1);
        let cid = ClientMsgId::parse("c1").expect("cid");
        let key = UserName::parse("ada").expect("name").key();
        assert_eq!(find_resent(&conn, &room, Seq(0), &key, &cid).expect("look-up"), Some((Seq(1), Timestamp(5))));
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_read_pool_lends_each_connection_to_one_read_at_a_time() {
        let dir = std::env::temp_dir().join(format!("natter-read-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = db_path(&dir);
        drop(open_for_writing(&path).expect("database"));
        let pool = Arc::new(ReadPool::open(&path, 2).expect("pool"));
        let first = pool.get();
        let second = pool.get();
        assert!(head_of(&first, &RoomName::default()).is_ok() && head_of(&second, &RoomName::default()).is_ok());
        // A third read waits until one is given back.
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = pool.clone();
        let third = std::thread::spawn(move || {
            let conn = waiting.get();
            let _ = tx.send(());
            drop(conn);
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "both connections are in use");
        drop(first);
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok(), "a connection given back goes to the waiting read");
        third.join().expect("thread");
        drop(second);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
