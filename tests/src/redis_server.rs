//! A private `redis-server` for an end-to-end test: on a free loopback port,
//! in a fresh temporary directory, with the append-only file fsynced on
//! every write (what natter's strict durability check wants). Killed by its
//! PID, and its directory removed, when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{RemoveOnDrop, WAIT, fresh_temp_path};

/// A running redis-server.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    child: Child,
    /// Removed after the process is killed (fields drop after `Drop::drop`).
    _dir: RemoveOnDrop,
}

impl RedisServer {
    /// Starts one and waits until it answers PING.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let dir = RemoveOnDrop(fresh_temp_path("redis"));
        std::fs::create_dir_all(&dir.0).expect("create the redis directory");
        let child = match Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(&dir.0)
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server is not installed: run `cargo xtask check-deploy` (it installs it)")
            }
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let mut server = Self { port, child, _dir: dir };
        let deadline = Instant::now() + WAIT;
        while !server.answers_ping() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("redis-server exited while starting ({status})");
            }
            assert!(Instant::now() < deadline, "redis-server on port {port} did not answer PING in {WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
