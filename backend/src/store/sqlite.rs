//! The durable history: SQLite in WAL mode, with one writer thread that
//! stores everything queued in one transaction (group commit) and only then
//! reports each event back to its room. `kill -9` at any moment loses nothing
//! that was acknowledged, because nothing is acknowledged before its commit.
//!
//! Schema versions live in `PRAGMA user_version` and [`MIGRATIONS`]; a
//! database is migrated forward on start, and a newer or unreadable one is
//! refused with an error naming the file, never replaced.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natter_shared::wire_name::{WireName, from_name};
use natter_shared::{
    ChatMessage, ClientMsgId, Color, MessageText, Notice, NoticeKind, RoomEvent, RoomName, Seq, Timestamp, UserName,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::writer::{Sequencer, Write, WriteQueue, WriterMsg};
use super::{Draft, HistoryError, HistoryStore, Outcome, Replay, now_ms, replay_of};
use crate::config::StorageConfig;

/// The database file inside the data directory.
pub const DB_FILE: &str = "natter.db";
/// A lock file held while a server uses the data directory: the writer
/// assumes it is the only one.
pub const LOCK_FILE: &str = "natter.lock";
/// How long a connection waits for a lock held by another (e.g. `natter export`).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Events deleted per retention transaction, so the writer is never held up long.
pub const RETENTION_CHUNK: usize = 1_000;
/// Failed notices kept for a retry (policy: beyond it the oldest is dropped and logged).
pub const NOTICE_RETRY_MAX: usize = 10_000;
/// The writer's page cache in KiB. It only appends (the hot pages are the
/// right edges of the b-trees), so SQLite's default 2 MiB buys nothing.
pub const WRITER_CACHE_KIB: i64 = 512;
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

/// Reads a row of [`EVENT_COLUMNS`] back into an event.
fn event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RoomEvent> {
    let bad = |what: &str| rusqlite::Error::InvalidColumnType(0, what.to_owned(), rusqlite::types::Type::Text);
    let seq = Seq(u64::try_from(row.get::<_, i64>(0)?).map_err(|_| bad("seq"))?);
    let ts = Timestamp(u64::try_from(row.get::<_, i64>(1)?).map_err(|_| bad("ts"))?);
    let kind: String = row.get(2)?;
    let name = UserName::parse(&row.get::<_, String>(3)?).map_err(|_| bad("name"))?;
    let color = Color(row.get(4)?);
    if kind == MESSAGE_KIND {
        let text = MessageText::parse(&row.get::<_, String>(5)?).map_err(|_| bad("text"))?;
        let cid =
            row.get::<_, Option<String>>(6)?.map(|c| ClientMsgId::parse(&c)).transpose().map_err(|_| bad("cid"))?;
        return Ok(RoomEvent::Message(ChatMessage { seq, ts, name, color, text, cid }));
    }
    let kind = from_name::<NoticeKind>(&kind).ok_or_else(|| bad("kind"))?;
    Ok(RoomEvent::Notice(Notice { seq, ts, kind, name, color }))
}

/// Stores one event (used by the writer and by `import`).
pub fn insert_event(tx: &Transaction<'_>, room: &RoomName, event: &RoomEvent) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO events (room, seq, ts, kind, name, name_key, color, text, cid) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let (seq, ts) = (event.seq().0 as i64, event.ts().0 as i64);
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
pub fn set_head(tx: &Transaction<'_>, room: &RoomName, head: Seq) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO rooms (room, head) VALUES (?1, ?2) ON CONFLICT (room) DO UPDATE SET head = excluded.head",
    )?
    .execute(params![room.as_str(), head.0 as i64])?;
    Ok(())
}

fn head_of(conn: &Connection, room: &RoomName) -> rusqlite::Result<Seq> {
    let head: Option<i64> = conn
        .prepare_cached("SELECT head FROM rooms WHERE room = ?1")?
        .query_row([room.as_str()], |r| r.get(0))
        .optional()?;
    Ok(Seq(head.map_or(0, |h| u64::try_from(h).unwrap_or(0))))
}

/// A room's head and the time of its latest stored event.
fn last_of(conn: &Connection, room: &RoomName) -> rusqlite::Result<(Seq, Timestamp)> {
    let head = head_of(conn, room)?;
    let ts: Option<i64> = conn
        .prepare_cached("SELECT ts FROM events WHERE room = ?1 ORDER BY seq DESC LIMIT 1")?
        .query_row([room.as_str()], |r| r.get(0))
        .optional()?;
    Ok((head, Timestamp(ts.map_or(0, |t| u64::try_from(t).unwrap_or(0)))))
}

/// Events of `room` with `lo < seq <= hi`, the latest `limit`, oldest first.
pub fn range(conn: &Connection, room: &RoomName, lo: Seq, hi: Seq, limit: usize) -> rusqlite::Result<Vec<RoomEvent>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE room = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq DESC LIMIT ?4"
    ))?;
    let rows = stmt.query_map(params![room.as_str(), lo.0 as i64, hi.0 as i64, limit as i64], event_from_row)?;
    let mut events = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    events.reverse();
    Ok(events)
}

/// The durable store.
#[derive(Debug)]
pub struct SqliteStore {
    history_id: String,
    keeps: Option<usize>,
    /// Reads run beside the writer (WAL); one connection is plenty for the
    /// occasional welcome replay or older page.
    reader: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens the database in the data directory (creating and migrating it) and
    /// starts the writer thread.
    pub fn start(options: &StorageConfig) -> Result<(Arc<Self>, WriteQueue), StoreError> {
        let data_dir = options.data_dir.as_path();
        let options = options.clone();
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::CreateDir { path: data_dir.to_owned(), source })?;
        let lock = lock_data_dir(data_dir)?;
        let path = db_path(data_dir);
        let writer = open_for_writing(&path)?;
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
        let reader = open_for_reading(&path)?;
        let keeps = options.retain_count.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let store = Arc::new(Self { history_id, keeps, reader: Mutex::new(reader) });
        let (tx, rx) = mpsc::channel::<WriterMsg>(options.write_queue.max(1));
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("natter-history-writer".into())
            .spawn(move || {
                // The lock lives as long as the writer.
                let _lock = lock;
                Writer::new(writer, options).run(rx, &runtime);
            })
            .map_err(StoreError::Thread)?;
        info!(path = %path.display(), "history in SQLite");
        Ok((store, WriteQueue(tx)))
    }

    fn read(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
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
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    options: StorageConfig,
    seqs: Sequencer,
    /// Notices whose transaction failed, stored again with the next batch.
    retry: std::collections::VecDeque<Write>,
    next_retention: Instant,
    retention_busy: bool,
}

impl Writer {
    fn new(conn: Connection, options: StorageConfig) -> Self {
        let next_retention = Instant::now() + options.retention_interval;
        Self {
            conn,
            options,
            seqs: Sequencer::default(),
            retry: Default::default(),
            next_retention,
            retention_busy: false,
        }
    }

    fn retention_enabled(&self) -> bool {
        self.options.retain_count.is_some() || self.options.retain_age.is_some()
    }

    fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>, runtime: &tokio::runtime::Handle) {
        loop {
            // Wait for work, waking for retention when it is due.
            let wait = if self.retention_busy {
                Duration::ZERO
            } else if self.retention_enabled() || !self.retry.is_empty() {
                self.next_retention.saturating_duration_since(Instant::now()).min(RETRY_PAUSE)
            } else {
                IDLE_WAIT
            };
            let first = if wait.is_zero() {
                rx.try_recv().ok()
            } else {
                match runtime.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                    Ok(Some(msg)) => Some(msg),
                    Ok(None) => return self.finish(None),
                    Err(_) => None,
                }
            };
            let mut batch: Vec<Write> = self.retry.drain(..).collect();
            let mut stop = None;
            let mut next = first;
            while let Some(msg) = next {
                match msg {
                    WriterMsg::Write(w) => batch.push(w),
                    WriterMsg::Stop(done) => {
                        stop = Some(done);
                        break;
                    }
                }
                if batch.len() >= self.options.write_batch {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !batch.is_empty() {
                self.store(batch);
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

    fn finish(self, stop: Option<tokio::sync::oneshot::Sender<()>>) {
        if !self.retry.is_empty() {
            warn!(notices = self.retry.len(), "notices not stored at shutdown");
        }
        // Fold the WAL into the database so the next start reads one file.
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            debug!(error = %e, "checkpoint at shutdown failed");
        }
        debug!("history writer stopped");
        if let Some(done) = stop {
            let _ = done.send(());
        }
    }

    /// Stores a batch in one transaction, then reports every outcome in order.
    fn store(&mut self, batch: Vec<Write>) {
        let now = now_ms();
        let started = Instant::now();
        let result = (|| -> rusqlite::Result<Vec<Outcome>> {
            let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut heads: Vec<(RoomName, Seq)> = Vec::new();
            for write in &batch {
                let room = write.room.room_name();
                if let Some((key, cid)) = write.draft.sender_key() {
                    let found: Option<(i64, i64)> = tx
                        .prepare_cached("SELECT seq, ts FROM events WHERE room = ?1 AND name_key = ?2 AND cid = ?3")?
                        .query_row(params![room.as_str(), key, cid.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?;
                    if let Some((seq, ts)) = found {
                        outcomes.push(Outcome::Duplicate(Seq(seq as u64), Timestamp(ts as u64)));
                        continue;
                    }
                }
                let stored = || last_of(&tx, room).unwrap_or((Seq(0), Timestamp(0)));
                let (seq, ts) = self.seqs.peek(room, stored, now);
                let event = write.draft.clone().into_event(seq, ts);
                insert_event(&tx, room, &event)?;
                self.seqs.take(room, seq, ts);
                match heads.iter_mut().find(|(r, _)| r == room) {
                    Some((_, h)) => *h = seq,
                    None => heads.push((room.clone(), seq)),
                }
                outcomes.push(Outcome::Stored(event));
            }
            for (room, head) in &heads {
                set_head(&tx, room, *head)?;
            }
            let commit_started = Instant::now();
            tx.commit()?;
            let took = started.elapsed();
            if took > SLOW_COMMIT {
                warn!(
                    events = batch.len(),
                    total_ms = took.as_millis() as u64,
                    commit_ms = commit_started.elapsed().as_millis() as u64,
                    "slow history transaction"
                );
            }
            Ok(outcomes)
        })();
        match result {
            Ok(outcomes) => {
                for (write, outcome) in batch.into_iter().zip(outcomes) {
                    write.room.committed(write.draft, outcome);
                }
            }
            Err(e) => {
                warn!(error = %e, events = batch.len(), "history transaction failed");
                // Nothing of the batch was stored: its seqs are free again.
                self.seqs.forget(batch.iter().map(|w| w.room.room_name()));
                let error = storage_error(e);
                for write in batch {
                    match write.draft {
                        Draft::Notice { .. } => {
                            if self.retry.len() >= NOTICE_RETRY_MAX {
                                warn!("notice retry queue full; dropping the oldest notice");
                                self.retry.pop_front();
                            }
                            self.retry.push_back(write);
                        }
                        Draft::Message { .. } => write.room.committed(write.draft, Outcome::Failed(error.clone())),
                    }
                }
            }
        }
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
/// Pause before storing failed notices again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
