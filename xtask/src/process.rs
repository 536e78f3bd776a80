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

/// A command running beside the steps that follow it, its output going to
/// a log file (two commands' progress lines would interleave); if dropped
/// before [`Background::finish`] (a step after it failed), it and the
/// processes it started (cargo's rustc and build scripts) are killed by PID.
/// It stays in xtask's process group, so Ctrl-C reaches it as well.
#[derive(Debug)]
pub struct Background {
    child: Option<std::process::Child>,
    what: String,
    log: std::path::PathBuf,
}

/// How many lines of a failed background command's log are shown.
const LOG_TAIL_LINES: usize = 40;

impl Background {
    /// Starts `command` (already given its program, arguments and
    /// environment) with its output in `log`; `what` names it in messages.
    pub fn start(mut command: std::process::Command, what: &str, log: &Path) -> Result<Self> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log's handle")?;
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("could not start {what}"))?;
        Ok(Self { child: Some(child), what: what.to_owned(), log: log.to_path_buf() })
    }

    /// Waits for the command; on failure, the error carries the end of its log.
    pub fn finish(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let status = child.wait().with_context(|| format!("waiting for {}", self.what))?;
        if status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        bail!("{} failed ({status}); the end of {}:\n{tail}", self.what, self.log.display())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // Its descendants first (read from /proc while they still have
            // their parent), then itself; a process already gone is fine.
            let mut pids = Vec::new();
            descendants(child.id(), &mut pids);
            for pid in pids {
                let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The processes started by `pid` and by them, from Linux's /proc (none
/// elsewhere).
fn descendants(pid: u32, out: &mut Vec<u32>) {
    let Ok(list) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) else { return };
    for child in list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
        out.push(child);
        descendants(child, out);
    }
}
