//! Running the tools xtask drives (cargo, trunk, …) as child processes.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::tools::ToolEnv;

/// Runs a command in `dir` with extra environment, failing on a non-zero exit.
pub fn cmd(dir: &Path, env: &ToolEnv, program: &str, args: &[&str]) -> Result<()> {
    let status = env
        .command(program)
        .args(args)
        .current_dir(dir)
        .status()
        .with_context(|| format!("could not start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
