//! A run's own temporary directory, so `cargo xtask test` leaves nothing in /tmp.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A run's own temporary directory, removed with everything in it when
/// dropped: the tests' data directories, the browsers' profiles and
/// Chromium's scoped directories (each run left ~150 MB in /tmp before).
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn create() -> Result<Self> {
        // Short, under the system's temporary directory: Chromium puts a
        // Unix socket path (at most 108 bytes) below it.
        let dir = std::env::temp_dir().join(format!("natter-xtask-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        Ok(Self(dir))
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
