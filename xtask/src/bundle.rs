//! Building the chat page into `dist/`: `cargo xtask bundle`, and the first
//! step of `run`, `test` and `bench`.

use std::path::Path;

use anyhow::Result;

use crate::process::cmd;
use crate::report::step;
use crate::tools::ToolEnv;

/// Fetches the crates, then builds the release page with trunk (offline).
pub fn build(root: &Path, env: &ToolEnv) -> Result<()> {
    step("fetching crates for the offline page build (cargo fetch --locked)");
    cmd(root, env, "cargo", &["fetch", "--locked"])?;
    step("building the chat page into dist/ (trunk build --release --offline)");
    cmd(root, env, "trunk", &["build", "--release", "--offline"])
}
