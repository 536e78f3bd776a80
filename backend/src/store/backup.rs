//! `natter backup DEST`: a consistent copy of the history database, made
//! with SQLite's online backup API while the server keeps running.
//!
//! The copy is taken in one step inside one read transaction: in WAL mode a
//! reader never blocks the server's writer, so the server goes on storing
//! messages while the copy is made, and the copy is the database as it was
//! when the step began (a backup taken page by page would start over each
//! time the server wrote, and might never finish on a busy server). It is
//! written beside `DEST`, checked, given a history id of its own (see
//! [`backup`]), made one self-contained file, and only then renamed to
//! `DEST`: `DEST` is a whole, checked backup or nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::sqlite::{self, StoreError};

/// How often a copy that finds the database locked (a checkpoint or a
/// migration under way) tries again, and how long it waits between tries.
pub const BACKUP_BUSY_RETRIES: u32 = 100;
pub const BACKUP_BUSY_PAUSE: Duration = Duration::from_millis(50);
/// What is appended to `DEST` for the copy in progress.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Why a backup failed. Nothing is left at `DEST` when it does.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no database at {0}; nothing to back up")]
    NoDatabase(PathBuf),
    #[error("{0} already exists; a backup never overwrites a file (choose a new name)")]
    Exists(PathBuf),
    #[error("{0} exists, left by a backup that did not finish; remove it and try again")]
    Partial(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("copying the database failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the database stayed locked through {0} tries; try again")]
    Busy(u32),
    #[error("the copy failed its integrity check: {0}")]
    Check(String),
}

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupReport {
    pub events: u64,
    pub rooms: u64,
    pub bytes: u64,
}

/// Copies the database in `data_dir` to `dest` (a new file).
pub fn backup(data_dir: &Path, dest: &Path) -> Result<BackupReport, BackupError> {
    let source = sqlite::db_path(data_dir);
    if !source.exists() {
        return Err(BackupError::NoDatabase(source));
    }
    if dest.exists() {
        return Err(BackupError::Exists(dest.to_owned()));
    }
    let mut partial = dest.as_os_str().to_owned();
    partial.push(PARTIAL_SUFFIX);
    let partial = PathBuf::from(partial);
    // Claimed before SQLite opens it, so two backups never share one.
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&partial) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(BackupError::Partial(partial)),
        Err(source) => return Err(BackupError::Write { path: partial, source }),
    }
    let copied = copy(&source, &partial);
    match copied {
        Ok(report) => {
            std::fs::rename(&partial, dest).map_err(|source| BackupError::Write { path: dest.to_owned(), source })?;
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Copies `source` into the empty file `to`, checks it and makes it one file.
fn copy(source: &Path, to: &Path) -> Result<BackupReport, BackupError> {
    let from = sqlite::open_for_reading(source)?;
    let mut copy = Connection::open_with_flags(to, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    {
        let backup = Backup::new(&from, &mut copy)?;
        let mut tries = 0;
        // All pages in one step: one read transaction, one consistent copy.
        while backup.step(-1)? != StepResult::Done {
            tries += 1;
            if tries >= BACKUP_BUSY_RETRIES {
                return Err(BackupError::Busy(tries));
            }
            std::thread::sleep(BACKUP_BUSY_PAUSE);
        }
    }
    let check: String = copy.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(BackupError::Check(check));
    }
    // A restored backup is another history: its rooms go on from the
    // backup's seqs, which pages that saw later ones must not take for the
    // seqs they knew (they get a fresh welcome instead). Members saved at a
    // stop, with their resume tokens, are not part of a backup.
    let id = crate::random::random_hex(8).ok_or_else(|| BackupError::Check("no randomness for a history id".into()))?;
    let tx = copy.transaction()?;
    tx.execute("UPDATE meta SET value = ?1 WHERE key = 'history_id'", [&id])?;
    let saved: i64 =
        tx.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'saved_members'", [], |r| {
            r.get(0)
        })?;
    if saved > 0 {
        tx.execute("DELETE FROM saved_members", [])?;
    }
    tx.commit()?;
    // One file to keep or move: natter turns WAL back on when it opens it.
    copy.pragma_update(None, "journal_mode", "DELETE")?;
    let events: i64 = copy.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    let rooms: i64 = copy.query_row("SELECT count(DISTINCT room) FROM events", [], |r| r.get(0))?;
    drop(copy);
    let file = std::fs::File::open(to).map_err(|source| BackupError::Write { path: to.to_owned(), source })?;
    file.sync_all().map_err(|source| BackupError::Write { path: to.to_owned(), source })?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(BackupReport { events: u64::try_from(events).unwrap_or(0), rooms: u64::try_from(rooms).unwrap_or(0), bytes })
}
