//! `natter export` and `natter import`: a room's history as NDJSON, one event
//! per line, each exactly the JSON the server sends on the wire.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use natter_shared::{RoomEvent, RoomName, Seq};

use super::sqlite::{self, StoreError};
use crate::config::cli::Command;

/// Events read per query while exporting.
pub const EXPORT_PAGE: usize = 10_000;
/// Events stored per transaction while importing.
pub const IMPORT_BATCH: usize = 10_000;

/// Why an export or import failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no database at {0}; nothing to export")]
    NoDatabase(PathBuf),
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot write the export: {0}")]
    Output(std::io::Error),
    #[error("cannot read the import: {0}")]
    Input(std::io::Error),
    #[error("line {line}: not an event: {error}")]
    BadLine { line: usize, error: serde_json::Error },
    #[error("line {line}: seq {seq} does not follow seq {previous}; events must be in increasing seq order")]
    OutOfOrder { line: usize, seq: u64, previous: u64 },
    #[error("the database at {0} already holds events; import only into an empty database")]
    NotEmpty(PathBuf),
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
    }
}

/// Writes `room`'s events after `since` to `out`, oldest first; returns how many.
pub fn export(data_dir: &Path, room: &RoomName, since: Seq, out: &mut impl Write) -> Result<u64, TransferError> {
    let path = sqlite::db_path(data_dir);
    if !path.exists() {
        return Err(TransferError::NoDatabase(path));
    }
    let conn = sqlite::open_for_reading(&path)?;
    let last: Option<i64> =
        conn.query_row("SELECT max(seq) FROM events WHERE room = ?1", [room.as_str()], |r| r.get(0))?;
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
pub fn import(data_dir: &Path, room: &RoomName, input: impl BufRead) -> Result<u64, TransferError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir { path: data_dir.to_owned(), source })?;
    let _lock = sqlite::lock_data_dir(data_dir)?;
    let path = sqlite::db_path(data_dir);
    let mut conn = sqlite::open_for_writing(&path)?;
    let existing: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    if existing > 0 {
        return Err(TransferError::NotEmpty(path));
    }
    let mut previous = 0u64;
    let mut count = 0u64;
    let mut batch: Vec<RoomEvent> = Vec::with_capacity(IMPORT_BATCH);
    let flush = |batch: &mut Vec<RoomEvent>, conn: &mut rusqlite::Connection| -> Result<(), TransferError> {
        let tx = conn.transaction()?;
        for event in batch.iter() {
            sqlite::insert_event(&tx, room, event)?;
        }
        if let Some(last) = batch.last() {
            sqlite::set_head(&tx, room, last.seq())?;
        }
        tx.commit()?;
        batch.clear();
        Ok(())
    };
    for (index, line) in input.lines().enumerate() {
        let line = line.map_err(TransferError::Input)?;
        if line.trim().is_empty() {
            continue;
        }
        let event: RoomEvent =
            serde_json::from_str(&line).map_err(|error| TransferError::BadLine { line: index + 1, error })?;
        let seq = event.seq().0;
        if seq <= previous {
            return Err(TransferError::OutOfOrder { line: index + 1, seq, previous });
        }
        previous = seq;
        batch.push(event);
        count += 1;
        if batch.len() >= IMPORT_BATCH {
            flush(&mut batch, &mut conn)?;
        }
    }
    flush(&mut batch, &mut conn)?;
    Ok(count)
}
