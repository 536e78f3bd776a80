//! The server under test (`natter`, or the floor server in its place), and
//! what `/proc` says about it.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long the server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the start checks whether the server listens.
const LISTEN_POLL: Duration = Duration::from_millis(20);
/// How long a stopped server may take to exit after SIGTERM before it is
/// killed (natter's own shutdown is bounded by 5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a stop checks whether the server has exited.
const STOP_POLL: Duration = Duration::from_millis(20);
/// Open files the server may use (our machines' hard limit is 20,000).
pub const FD_LIMIT: u32 = 20_000;

/// What `natter` logs for a history transaction over 100 ms (an fsync stall
/// on a slow disk delays every message of that moment).
const SLOW_COMMIT_LOG: &str = "slow history transaction";

/// A running server, killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Process,
    pub addr: SocketAddr,
    /// The shell command that started it: a restart runs it again (same
    /// binary, flags, port and data directory).
    line: String,
    cpu: Option<u32>,
    /// The data directory made for this server, removed with it.
    owned_dir: Option<PathBuf>,
    /// Slow commits the server has logged so far (over restarts).
    slow_commits: Arc<AtomicU64>,
}

/// What a restart took.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    /// From SIGTERM until the old process had exited.
    pub stop: Duration,
    /// Whether it had not exited within [`STOP_TIMEOUT`] and was killed.
    pub killed: bool,
    /// From the new start until it listened.
    pub start: Duration,
}

/// A fresh temporary directory.
pub fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("natter-bench-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The load generator is one address: natter's per-address caps, lifted.
const PER_ADDRESS_CAPS_LIFTED: &str =
    "--max-connections-per-ip 1000000 --max-joins-per-ip 1000000 --max-rooms-per-ip 1000000";

/// A free port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    /// Starts `natter` with `args` (plus a listen address and, unless given,
    /// a fresh data directory), pinned to `cpu` when `taskset` exists, with
    /// its open-file limit raised.
    pub fn start(natter: &Path, args: &[&str], cpu: Option<u32>, data_dir: Option<PathBuf>) -> Result<Self> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let owned_dir = data_dir.is_none().then(|| temp_dir("data"));
        let dir = data_dir.as_ref().or(owned_dir.as_ref()).context("a data directory")?;
        // All load comes from one address: lift the per-address caps, which
        // exist to keep one host from taking what belongs to everyone.
        let mut line =
            format!("{} --listen {addr} --data-dir {} {PER_ADDRESS_CAPS_LIFTED}", natter.display(), dir.display());
        for a in args {
            line.push(' ');
            line.push_str(a);
        }
        Self::launch(line, addr, cpu, owned_dir)
    }

    /// Starts the floor server (this binary, `floor-server --mode join`) in
    /// natter's place: a fixed `101`, one client frame read, one fixed
    /// welcome, then nothing until the client closes.
    pub fn floor(cpu: Option<u32>) -> Result<Self> {
        let port = free_port()?;
        let exe = std::env::current_exe().context("the bench binary's path")?;
        let line = format!("'{}' floor-server --port {port} --mode join", exe.display());
        Self::launch(line, SocketAddr::from(([127, 0, 0, 1], port)), cpu, None)
    }

    fn launch(line: String, addr: SocketAddr, cpu: Option<u32>, owned_dir: Option<PathBuf>) -> Result<Self> {
        let slow_commits = Arc::new(AtomicU64::new(0));
        let child = spawn_logged(&line, cpu, &slow_commits)?;
        let server = Self { child, addr, line, cpu, owned_dir, slow_commits };
        wait_listening(addr)?;
        Ok(server)
    }

    /// Stops the server as an operator would (SIGTERM; natter closes every
    /// WebSocket with 1012 and exits) and starts it again with the same
    /// command: same binary, flags, port and data directory. Async, so that
    /// the clients keep reading (and see their close frames) meanwhile.
    pub async fn restart(&mut self) -> Result<Restart> {
        let began = Instant::now();
        let killed = self.terminate().await?;
        let stop = began.elapsed();
        let began = Instant::now();
        self.child = spawn_logged(&self.line, self.cpu, &self.slow_commits)?;
        let deadline = began + START_TIMEOUT;
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("the restarted server did not listen on {}", self.addr);
            }
            tokio::time::sleep(LISTEN_POLL).await;
        }
        Ok(Restart { stop, killed, start: began.elapsed() })
    }

    /// Sends SIGTERM and waits for the exit, killing the process after
    /// [`STOP_TIMEOUT`]; true if it had to be killed.
    async fn terminate(&mut self) -> Result<bool> {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.child.0.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.end();
                return Ok(true);
            }
            tokio::time::sleep(STOP_POLL).await;
        }
        Ok(false)
    }

    /// Transactions over 100 ms the server has logged since it started.
    pub fn slow_commits(&self) -> u64 {
        self.slow_commits.load(Ordering::Relaxed)
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("VmRSS")
    }

    /// User + system CPU time consumed so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        cpu_time_of(&self.pid().to_string())
    }
}

/// The load generator's own CPU time so far (to tell when it is the limit).
pub fn own_cpu_time() -> Result<Duration> {
    cpu_time_of("self")
}

/// User + system CPU time of `/proc/{pid}`.
pub fn cpu_time_of(pid: &str) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).context("utime")?;
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).context("stime")?;
    let ticks = clock_ticks();
    Ok(Duration::from_secs_f64((utime + stime) as f64 / ticks))
}

impl Server {
    /// Stops the server (SIGTERM, then waits).
    pub fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.child.0.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.end();
                break;
            }
            std::thread::sleep(STOP_POLL);
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The process first, then its data directory.
        self.child.end();
        // Every run makes a fresh data directory; left behind, a full bench
        // leaves a gigabyte in the temporary directory.
        if let Some(dir) = &self.owned_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A server process, killed (and waited for) when dropped, so that no error
/// path leaves one running.
#[derive(Debug)]
pub struct Process(pub Child);

impl Process {
    /// Kills the process if it still runs, and reaps it.
    pub fn end(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.end();
    }
}

/// Runs a server's command line with its stderr passed through and its slow
/// commits counted into `slow_commits`.
fn spawn_logged(line: &str, cpu: Option<u32>, slow_commits: &Arc<AtomicU64>) -> Result<Process> {
    let mut child = spawn_pinned(line, cpu, Stdio::null(), Stdio::piped())?;
    if let Some(stderr) = child.0.stderr.take() {
        let count = Arc::clone(slow_commits);
        // Passes the server's log through and counts its slow commits;
        // ends when the server closes its stderr.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(SLOW_COMMIT_LOG) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        });
    }
    Ok(child)
}

/// Runs `command` (a shell command line) with its open-file limit raised to
/// [`FD_LIMIT`] (or the hard limit), pinned to `cpu` when `taskset` exists,
/// logging at `warn`.
pub fn spawn_pinned(command: &str, cpu: Option<u32>, stdout: Stdio, stderr: Stdio) -> Result<Process> {
    let line = format!("ulimit -n {FD_LIMIT} 2>/dev/null || ulimit -n $(ulimit -Hn); exec {command}");
    let line = line.as_str();
    let mut command = match cpu.filter(|_| has_taskset()) {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "sh", "-c", line]);
            c
        }
        None => {
            let mut c = Command::new("sh");
            c.args(["-c", line]);
            c
        }
    };
    let child = command.env("RUST_LOG", "warn").stdout(stdout).stderr(stderr).spawn().context("starting the server")?;
    Ok(Process(child))
}

/// Waits until something listens on `addr`.
pub fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("the server did not listen on {addr}");
        }
        std::thread::sleep(LISTEN_POLL);
    }
    Ok(())
}

fn has_taskset() -> bool {
    Command::new("taskset").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
