//! A private `redis-server` for a test: on a free loopback port, in a
//! temporary directory, with the append-only file fsynced on every write.
//! It is killed by its PID (and reaped) when dropped. Without Debian's
//! `redis-server` the test fails, saying how to get it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, temp_dir};

/// How long a started redis-server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running redis-server child process.
pub struct RedisServer {
    pub port: u16,
    dir: TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

/// A port nothing listens on now (the kernel's next free one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().expect("addr").port()
}

impl RedisServer {
    /// Starts one with the durable settings natter's strict mode wants.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with `extra` arguments after the defaults (they win).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut server = Self {
            port: free_port(),
            dir: temp_dir("redis"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.to_str().expect("utf-8 temp dir").to_owned();
        let mut args: Vec<&str> = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        let child = match Command::new("redis-server").args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed, and the Redis store's tests need it: run `cargo xtask test` \
                 (it installs it) or `apt-get install redis-server`"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING in {START_TIMEOUT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Sends one command and returns the first line of the reply (`+OK`,
    /// `:1`, `$5`…), or `None` if the server cannot be reached.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            if stream.read(&mut byte).ok()? == 0 {
                return None;
            }
            reply.push(byte[0]);
        }
        Some(String::from_utf8_lossy(&reply[..reply.len() - 2]).into_owned())
    }

    /// Kills the server (SIGKILL: what `appendfsync always` must survive)
    /// and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (its AOF is read back).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long a new cluster may take to agree that every slot is served.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// A Redis Cluster of three masters (no replicas) on loopback, built with
/// `redis-cli --cluster create`; every node is killed when dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let cluster_flags =
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"];
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_with(&cluster_flags)).collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli (Debian's redis-tools, installed with redis-server)");
        assert!(created.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        for node in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&info.stdout).lines().any(|l| l.trim() == "cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not reach state ok in {CLUSTER_TIMEOUT:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes }
    }

    /// The first node's URL: natter finds the others through it.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }
}
