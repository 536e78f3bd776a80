//! `cargo xtask run --instances N`: N natter servers sharing rooms through one
//! private redis-server, the way a deployment with several instances runs
//! (docs/OPERATIONS.md, "Several instances").
//!
//! Redis gets a free loopback port and a directory of its own under
//! `target/xtask-instances/`, with the append-only file fsynced on every
//! write (natter refuses a Redis that could lose an acknowledged message);
//! the directory is removed when the run ends, so each run starts a fresh
//! history. The servers listen on consecutive ports from `--listen` (default
//! 127.0.0.1:8080), and their log lines are prefixed with their names.
//!
//! Every process started here runs in a process group of its own, so a
//! Ctrl-C in the terminal reaches only xtask, which then stops them by PID
//! in order: the servers first (SIGTERM: they tell their browsers to
//! reconnect and save their members in Redis), then Redis. The same happens
//! on SIGTERM or SIGHUP, when one of them exits by itself, and when xtask
//! fails or panics (the processes are held by guards that stop them when
//! dropped).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::report::step;
use crate::tools::REDIS_SERVER;

/// The most servers `--instances` starts: each is a whole natter, and this
/// is for trying shared rooms on one machine, not for load.
pub const MAX_INSTANCES: u16 = 8;
/// How long redis-server and each natter may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopped natter may take to exit: its own `--shutdown-timeout`
/// (5 s by default) and then some.
const NATTER_STOP: Duration = Duration::from_secs(10);
/// How long redis-server may take to exit after SIGTERM (it fsyncs first).
const REDIS_STOP: Duration = Duration::from_secs(5);
/// How often the processes are checked for having exited.
const POLL: Duration = Duration::from_millis(100);

/// Takes `--instances N` (or `--instances=N`) out of `cargo xtask run`'s
/// arguments before a `--`; the rest stays as it was, in order. Without
/// the flag, one instance.
pub fn split_args(args: &[String]) -> Result<(u16, Vec<String>)> {
    let mut instances = None;
    let mut rest = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            rest.push(arg.clone());
            rest.extend(iter.by_ref().cloned());
            break;
        }
        let value = if arg == "--instances" {
            iter.next().context("--instances needs a number, e.g. --instances 2")?
        } else if let Some(value) = arg.strip_prefix("--instances=") {
            value
        } else {
            rest.push(arg.clone());
            continue;
        };
        instances = Some(parse_instances(value)?);
    }
    Ok((instances.unwrap_or(1), rest))
}

fn parse_instances(value: &str) -> Result<u16> {
    let n: u16 = value.parse().with_context(|| format!("--instances {value}: expected a number"))?;
    if n == 0 {
        bail!("--instances 0: at least one natter is needed");
    }
    if n > MAX_INSTANCES {
        bail!("--instances {n}: at most {MAX_INSTANCES} (each is a whole server; this is for trying shared rooms)");
    }
    Ok(n)
}

/// The addresses of `n` servers: `first`, then the ports after it.
fn listen_addresses(first: &str, n: u16) -> Result<Vec<SocketAddr>> {
    let first: SocketAddr =
        first.parse().with_context(|| format!("--listen {first}: expected an address such as 127.0.0.1:8080"))?;
    if first.port() == 0 {
        bail!("--listen {first}: with --instances, name a port (the servers take it and the ones after it)");
    }
    (0..n)
        .map(|i| {
            let port = first.port().checked_add(i).with_context(|| format!("no port {i} after {first}"))?;
            Ok(SocketAddr::new(first.ip(), port))
        })
        .collect()
}

/// natter's flags for every instance: `--listen` is set per instance here,
/// and `--redis` names the private Redis, so neither may be given.
fn shared_flags<'a>(extra: &[&'a str]) -> Result<Vec<&'a str>> {
    let mut flags = Vec::with_capacity(extra.len());
    let mut iter = extra.iter();
    while let Some(&flag) = iter.next() {
        if flag == "--redis" || flag.starts_with("--redis=") {
            bail!("--redis: with --instances, xtask starts a Redis of its own for the servers");
        }
        if flag == "--listen" {
            iter.next();
        } else if !flag.starts_with("--listen=") {
            flags.push(flag);
        }
    }
    Ok(flags)
}

/// Starts Redis and `n` natter servers (`binary`, with `extra` flags) on
/// it, the first on `listen`, and runs until Ctrl-C or until one of them
/// exits; then stops them all.
pub fn run(root: &Path, binary: &Path, listen: &str, n: u16, extra: &[&str]) -> Result<()> {
    let addrs = listen_addresses(listen, n)?;
    let flags = shared_flags(extra)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        // Before anything starts: from here on Ctrl-C is xtask's to handle.
        let mut stop = StopSignals::new()?;
        let dir = root.join("target/xtask-instances").join(std::process::id().to_string());
        let mut group = Group::new(RemoveOnDrop::create(dir)?);
        let result = tokio::select! {
            result = serve(&mut group, binary, &addrs, &flags) => result,
            name = stop.recv() => {
                step(&format!("{name}: stopping the servers, then Redis"));
                Ok(())
            }
        };
        // Stopped here, while the runtime lives; `Drop` would do it too.
        group.stop();
        result
    })
}

/// Starts everything, then watches it: returns (an error) only when a
/// process exits by itself; a signal ends it from outside.
async fn serve(group: &mut Group, binary: &Path, addrs: &[SocketAddr], flags: &[&str]) -> Result<()> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    step(&format!("starting redis-server on 127.0.0.1:{port} (append-only file fsynced on every write)"));
    let redis = Process::redis(port, group.dir.path())?;
    let redis = group.redis.insert(redis);
    redis_ready(redis, port, &group.dir.path().join("redis.log")).await?;
    let url = format!("redis://127.0.0.1:{port}/0");
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("natter-{}", i + 1);
        step(&format!("starting {name} on {addr} with --redis {url}"));
        group.natters.push(Process::natter(&name, binary, *addr, &url, flags)?);
    }
    for (natter, addr) in group.natters.iter_mut().zip(addrs) {
        natter_ready(natter, *addr).await?;
    }
    println!();
    for (natter, addr) in group.natters.iter().zip(addrs) {
        println!("  {:<9} http://{addr}/", natter.name);
    }
    println!("  open one tab on each: they share rooms (through Redis on 127.0.0.1:{port})");
    println!("  (history in Redis for this run only; Ctrl-C stops them all)");
    println!();
    loop {
        tokio::time::sleep(POLL).await;
        for process in group.natters.iter_mut().chain(group.redis.as_mut()) {
            if let Some(status) = process.exited()? {
                bail!("{} (pid {}) exited by itself ({status}); the others are stopped", process.name, process.pid());
            }
        }
    }
}

/// Waits until Redis answers PING.
async fn redis_ready(redis: &mut Process, port: u16, log: &Path) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while !ping(port) {
        if let Some(status) = redis.exited()? {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            bail!("redis-server exited ({status}) while starting; its log:\n{log}");
        }
        if Instant::now() > deadline {
            bail!("redis-server did not answer PING on 127.0.0.1:{port} within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Whether a Redis on loopback `port` answers PING.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Waits until the natter takes connections on `addr`.
async fn natter_ready(natter: &mut Process, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(addr).is_err() {
        if let Some(status) = natter.exited()? {
            bail!("{} exited ({status}) while starting; its log is above", natter.name);
        }
        if Instant::now() > deadline {
            bail!("{} did not listen on {addr} within {START_TIMEOUT:?}", natter.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Ctrl-C, SIGTERM and SIGHUP (the terminal closed), as one stream.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    fn new() -> Result<Self> {
        let listen = |kind| signal(kind).context("listening for signals");
        Ok(Self {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
            hangup: listen(SignalKind::hangup())?,
        })
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "Ctrl-C",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// What a run started, stopped in order when dropped: the servers, then
/// Redis, then Redis's directory is removed (fields drop in this order).
struct Group {
    natters: Vec<Process>,
    redis: Option<Process>,
    dir: RemoveOnDrop,
}

impl Group {
    fn new(dir: RemoveOnDrop) -> Self {
        Self { natters: Vec::new(), redis: None, dir }
    }

    /// Stops every server at once (each shuts down in parallel), then Redis.
    fn stop(&mut self) {
        for natter in &mut self.natters {
            natter.terminate();
        }
        for mut natter in self.natters.drain(..) {
            natter.wait_or_kill(NATTER_STOP);
        }
        if let Some(mut redis) = self.redis.take() {
            redis.terminate();
            redis.wait_or_kill(REDIS_STOP);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child process in a process group of its own, stopped by its PID when
/// dropped (SIGTERM, then SIGKILL if it has not exited in time).
struct Process {
    name: String,
    child: Child,
    stop_within: Duration,
    stopped: bool,
}

impl Process {
    fn redis(port: u16, dir: &Path) -> Result<Self> {
        let log = dir.join("redis.log");
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(dir)
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--logfile"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .context("could not start redis-server (Debian package redis-server)")?;
        Ok(Self { name: "redis-server".to_owned(), child, stop_within: REDIS_STOP, stopped: false })
    }

    fn natter(name: &str, binary: &Path, addr: SocketAddr, redis: &str, flags: &[&str]) -> Result<Self> {
        let mut child = Command::new(binary)
            .args(["--listen", &addr.to_string(), "--redis", redis])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let prefix = format!("[{name}]");
        if let Some(out) = child.stdout.take() {
            prefix_lines(out, prefix.clone());
        }
        if let Some(err) = child.stderr.take() {
            prefix_lines(err, prefix);
        }
        Ok(Self { name: name.to_owned(), child, stop_within: NATTER_STOP, stopped: false })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once it has exited (then it needs no stopping).
    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        let status = self.child.try_wait().with_context(|| format!("checking on {}", self.name))?;
        self.stopped |= status.is_some();
        Ok(status)
    }

    /// SIGTERM by PID, unless it has exited already.
    fn terminate(&mut self) {
        if !self.stopped && matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        }
    }

    /// Waits until it has exited, killing it (SIGKILL) after `within`.
    fn wait_or_kill(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.stopped {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => self.stopped = true,
                Ok(None) if Instant::now() > deadline => {
                    step(&format!("{} (pid {}) did not stop within {within:?}: killing it", self.name, self.pid()));
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    self.stopped = true;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
        self.wait_or_kill(self.stop_within);
    }
}

/// Copies a child's output to stderr, each line after `prefix`.
fn prefix_lines(out: impl Read + Send + 'static, prefix: String) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            eprintln!("{prefix} {}", String::from_utf8_lossy(&line).trim_end());
            line.clear();
        }
    });
}

/// A directory created for the run, removed with its contents when dropped.
struct RemoveOnDrop(PathBuf);

impl RemoveOnDrop {
    fn create(dir: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn one_instance_and_the_arguments_untouched_without_the_flag() {
        let given = args(&["--listen", "0.0.0.0:8080", "--", "--instances", "3"]);
        assert_eq!(split_args(&given).expect("valid"), (1, given.clone()));
        assert_eq!(split_args(&[]).expect("valid"), (1, vec![]));
    }

    #[test]
    fn the_flag_is_taken_out_in_either_form() {
        let expected = (2, args(&["--", "--allow-origin", "*"]));
        assert_eq!(split_args(&args(&["--instances", "2", "--", "--allow-origin", "*"])).expect("valid"), expected);
        assert_eq!(split_args(&args(&["--instances=2", "--", "--allow-origin", "*"])).expect("valid"), expected);
        assert_eq!(split_args(&args(&["--instances", "1"])).expect("valid"), (1, vec![]));
    }

    #[test]
    fn none_too_many_and_non_numbers_are_refused() {
        let too_many = (MAX_INSTANCES + 1).to_string();
        for bad in [&["--instances", "0"][..], &["--instances", &too_many], &["--instances", "two"], &["--instances"]] {
            let err = split_args(&args(bad)).expect_err("refused");
            assert!(err.to_string().contains("--instances"), "{bad:?}: {err}");
        }
        let err = split_args(&args(&["--instances", "0"])).expect_err("refused").to_string();
        assert!(err.contains("at least one"), "{err}");
        let err = split_args(&args(&["--instances", &too_many])).expect_err("refused").to_string();
        assert!(err.contains(&format!("at most {MAX_INSTANCES}")), "{err}");
    }

    #[test]
    fn servers_take_consecutive_ports_from_the_first() {
        let addrs = listen_addresses("127.0.0.1:8080", 3).expect("valid");
        let ports: Vec<u16> = addrs.iter().map(SocketAddr::port).collect();
        assert_eq!(ports, [8080, 8081, 8082]);
        assert!(listen_addresses("127.0.0.1:0", 2).is_err(), "port 0 cannot be counted from");
        assert!(listen_addresses("127.0.0.1:65535", 2).is_err(), "no port after 65535");
        assert!(listen_addresses("localhost", 2).is_err());
    }

    #[test]
    fn listen_is_set_per_server_and_redis_by_xtask() {
        let flags = shared_flags(&["--listen", "127.0.0.1:9000", "--allow-origin", "*", "--listen=x"]).expect("valid");
        assert_eq!(flags, ["--allow-origin", "*"]);
        assert!(shared_flags(&["--redis", "redis://elsewhere/0"]).is_err());
        assert!(shared_flags(&["--redis=redis://elsewhere/0"]).is_err());
    }
}
