//! `natter export` and `natter import`: a room's history as NDJSON, one event
//! per line, each exactly the JSON the server sends on the wire. Also where
//! `natter backup` (see [`super::backup`]) is dispatched.
//!
//! An import is checked like client input (every field, with an error naming
//! the line and the field) and stored in one transaction: it is stored whole
//! or not at all.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use natter_shared::wire_name::from_name;
use natter_shared::{
    ChatMessage, ClientMsgId, Color, MessageText, Notice, NoticeKind, RoomEvent, RoomName, Seq, Timestamp, UserName,
};
use serde_json::{Map, Value};
use tracing::warn;

use super::backup::{self, BackupError};
use super::now_ms;
use super::sqlite::{self, StoreError};
use crate::config::cli::Command;

/// Events read per query while exporting.
pub const EXPORT_PAGE: usize = 10_000;
/// The highest seq an import accepts: 2^53 − 1, so any JSON reader
/// (JavaScript's included) reads every seq exactly, and the room's seqs can
/// go on from there for ages below SQLite's `i64::MAX`.
pub const IMPORT_MAX_SEQ: u64 = (1 << 53) - 1;
/// How far an imported time may be ahead of this machine's clock. A room's
/// new events never get a time before its last one, so a time far in the
/// future would stamp every later message with it.
pub const IMPORT_MAX_AHEAD: Duration = Duration::from_secs(60 * 60);

/// Why an export or import failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("no database at {0}; nothing to export")]
    NoDatabase(PathBuf),
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot write the export: {0}")]
    Output(std::io::Error),
    #[error("line {line}: cannot read the import: {source}")]
    Input { line: usize, source: std::io::Error },
    #[error("line {line}: not JSON: {error}")]
    NotJson { line: usize, error: serde_json::Error },
    #[error("line {line}: an event is a JSON object, not {found}")]
    NotAnObject { line: usize, found: &'static str },
    #[error("line {line}, field `{field}`: {problem}")]
    BadField { line: usize, field: &'static str, problem: String },
    #[error("line {line}: cannot store the event: {source}")]
    Insert { line: usize, source: rusqlite::Error },
    #[error("the database at {0} already holds events; import only into an empty database")]
    NotEmpty(PathBuf),
    #[error("#{room} in {path} already had events up to seq {head}; import only into a room that never had any")]
    RoomUsed { path: PathBuf, room: RoomName, head: Seq },
}

/// Runs `natter export` (to stdout) or `natter import` (from stdin);
/// returns the line that reports what was done.
pub fn run(command: &Command) -> Result<String, TransferError> {
    match command {
        Command::Export(args) => {
            let n = export(&args.data_dir, &args.room, args.since(), &mut std::io::stdout().lock())?;
            Ok(format!("exported {n} events of #{}", args.room))
        }
        Command::Import(args) => {
            let n = import(&args.data_dir, &args.room, std::io::stdin().lock())?;
            Ok(format!("imported {n} events into #{}", args.room))
        }
        Command::Backup(args) => {
            let report = backup::backup(&args.data_dir, &args.dest)?;
            Ok(format!(
                "backed up {} events of {} rooms ({} bytes) to {}",
                report.events,
                report.rooms,
                report.bytes,
                args.dest.display()
            ))
        }
    }
}

/// Writes `room`'s events after `since` to `out`, oldest first; returns how many.
pub fn export(data_dir: &Path, room: &RoomName, since: Seq, out: &mut impl Write) -> Result<u64, TransferError> {
    let path = sqlite::db_path(data_dir);
    if !path.exists() {
        return Err(TransferError::NoDatabase(path));
    }
    let conn = sqlite::open_for_reading(&path)?;
    let last: Option<i64> = conn.query_row(
        "SELECT max(seq) FROM events WHERE room = ?1 AND typeof(seq) = 'integer'",
        [room.as_str()],
        |r| r.get(0),
    )?;
    let head = Seq(last.map_or(0, |l| u64::try_from(l).unwrap_or(0)));
    // Windows of EXPORT_PAGE seqs hold at most EXPORT_PAGE events each.
    let mut lo = since;
    let mut count = 0;
    while lo < head {
        let hi = Seq(lo.0.saturating_add(EXPORT_PAGE as u64).min(head.0));
        for event in sqlite::range(&conn, room, lo, hi, EXPORT_PAGE)? {
            let line = serde_json::to_string(&event).map_err(|e| TransferError::Output(e.into()))?;
            writeln!(out, "{line}").map_err(TransferError::Output)?;
            count += 1;
        }
        lo = hi;
    }
    out.flush().map_err(TransferError::Output)?;
    Ok(count)
}

/// Reads NDJSON events into `room` of an empty database; returns how many.
/// All or nothing: an import refused at any line leaves the database as it
/// was (and a database it created is removed again).
pub fn import(data_dir: &Path, room: &RoomName, input: impl BufRead) -> Result<u64, TransferError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir { path: data_dir.to_owned(), source })?;
    let _lock = sqlite::lock_data_dir(data_dir)?;
    let path = sqlite::db_path(data_dir);
    let created = !path.exists();
    let result = import_into(&path, room, input);
    if result.is_err() && created {
        remove_database(&path);
    }
    result
}

/// The import in one transaction (the connection is closed on return).
fn import_into(path: &Path, room: &RoomName, input: impl BufRead) -> Result<u64, TransferError> {
    let mut conn = sqlite::open_for_writing(path)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let existing: i64 = tx.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    if existing > 0 {
        return Err(TransferError::NotEmpty(path.to_owned()));
    }
    // Retention may have deleted every event of a room whose seqs went on:
    // importing below its head would hand out its seqs a second time.
    let head = sqlite::head_of(&tx, room)?;
    if head > Seq(0) {
        return Err(TransferError::RoomUsed { path: path.to_owned(), room: room.clone(), head });
    }
    // A sender's message id once: checked by a unique index for the import
    // only (the server finds re-sends by their hint instead; the database
    // is empty, so the index costs the import's own rows).
    tx.execute_batch(IMPORT_SENDER_INDEX)?;
    let latest_ts = now_ms().0.saturating_add(u64::try_from(IMPORT_MAX_AHEAD.as_millis()).unwrap_or(u64::MAX));
    let mut last = Seq(0);
    let mut count = 0u64;
    for (index, text) in input.lines().enumerate() {
        let line = index + 1;
        let text = text.map_err(|source| TransferError::Input { line, source })?;
        if text.trim().is_empty() {
            continue;
        }
        let event = parse_event(line, &text, Timestamp(latest_ts))?;
        if event.seq() <= last {
            let problem =
                format!("{} does not follow seq {}; events must be in increasing seq order", event.seq(), last);
            return Err(TransferError::BadField { line, field: "seq", problem });
        }
        sqlite::insert_event(&tx, room, &event).map_err(|source| insert_error(line, &event, source))?;
        last = event.seq();
        count += 1;
    }
    if count > 0 {
        sqlite::set_head(&tx, room, last)?;
    }
    tx.execute_batch("DROP INDEX import_sender")?;
    tx.commit()?;
    Ok(count)
}

/// The index that refuses a sender's message id seen on an earlier line.
const IMPORT_SENDER_INDEX: &str =
    "CREATE UNIQUE INDEX import_sender ON events (room, name_key, cid) WHERE cid IS NOT NULL";

/// An insert that failed: the one constraint a checked, increasing line can
/// break is the sender's unique cid.
fn insert_error(line: usize, event: &RoomEvent, source: rusqlite::Error) -> TransferError {
    match (event, source.sqlite_error_code()) {
        (RoomEvent::Message(m), Some(rusqlite::ErrorCode::ConstraintViolation)) => TransferError::BadField {
            line,
            field: "cid",
            problem: format!("{} already sent a message with this cid on an earlier line", m.name),
        },
        _ => TransferError::Insert { line, source },
    }
}

/// Removes a database that a refused import created (and its WAL files).
fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %Path::new(&file).display(), error = %e, "cannot remove the refused import"),
        }
    }
}

/// One line's event, every field checked as the server checks client input.
/// Fields of the other kind of event, and unknown ones, are ignored (as the
/// wire decoder ignores them).
fn parse_event(line: usize, text: &str, latest_ts: Timestamp) -> Result<RoomEvent, TransferError> {
    let value: Value = serde_json::from_str(text).map_err(|error| TransferError::NotJson { line, error })?;
    let Value::Object(map) = value else {
        return Err(TransferError::NotAnObject { line, found: json_type(&value) });
    };
    let fields = Fields { line, map: &map };
    let event_type = fields.string("type")?;
    let seq = Seq(fields.unsigned("seq", IMPORT_MAX_SEQ, "the largest seq an import takes")?);
    let ts = Timestamp(fields.unsigned("ts", latest_ts.0, "an hour from now")?);
    let name = UserName::parse(fields.string("name")?).map_err(|e| fields.bad("name", e.to_string()))?;
    let color =
        Color::parse(fields.string("color")?).ok_or_else(|| fields.bad("color", "a colour is #rrggbb".into()))?;
    match event_type {
        "message" => {
            let text = MessageText::parse(fields.string("text")?).map_err(|e| fields.bad("text", e.to_string()))?;
            let cid = match fields.optional_string("cid")? {
                Some(cid) => Some(ClientMsgId::parse(cid).map_err(|e| fields.bad("cid", e.to_string()))?),
                None => None,
            };
            Ok(RoomEvent::Message(ChatMessage { seq, ts, name, color, text, cid }))
        }
        "notice" => {
            let kind = fields.string("kind")?;
            let kind = from_name::<NoticeKind>(kind)
                .ok_or_else(|| fields.bad("kind", format!("{kind:?} is not a kind of notice")))?;
            Ok(RoomEvent::Notice(Notice { seq, ts, kind, name, color }))
        }
        other => Err(fields.bad("type", format!("{other:?} is neither \"message\" nor \"notice\""))),
    }
}

/// The fields of one line, read with errors that name the line and field.
struct Fields<'a> {
    line: usize,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn bad(&self, field: &'static str, problem: String) -> TransferError {
        TransferError::BadField { line: self.line, field, problem }
    }

    fn string(&self, field: &'static str) -> Result<&str, TransferError> {
        self.optional_string(field)?.ok_or_else(|| self.bad(field, "missing".into()))
    }

    /// A string, or `None` when absent or null.
    fn optional_string(&self, field: &'static str) -> Result<Option<&str>, TransferError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.bad(field, format!("must be a string, not {}", json_type(other)))),
        }
    }

    /// A whole number from 0 to `max` (`max_is` says what `max` is).
    fn unsigned(&self, field: &'static str, max: u64, max_is: &str) -> Result<u64, TransferError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Err(self.bad(field, "missing".into())),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if v <= max => Ok(v),
                Some(v) => Err(self.bad(field, format!("{v} is above {max} ({max_is})"))),
                None => Err(self.bad(field, format!("{n} is not a whole number from 0 to {max}"))),
            },
            Some(other) => Err(self.bad(field, format!("must be a number, not {}", json_type(other)))),
        }
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
