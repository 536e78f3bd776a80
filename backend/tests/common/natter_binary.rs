//! The natter binary as a child process, for tests that kill it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::free_port;

/// The natter binary, killed with SIGKILL when dropped.
pub struct Natter {
    child: Child,
    pub addr: SocketAddr,
}

impl Natter {
    /// Starts `natter --redis <url>` (answering Redis within 1 s, alive on
    /// it for 1 s after each renewal) and waits (bounded) until it answers.
    pub fn start(redis_url: &str) -> Self {
        Self::start_with(redis_url, &[])
    }

    /// [`Natter::start`] with more flags.
    pub fn start_with(redis_url: &str, extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let bundle = std::env::temp_dir().join("natter-test-no-bundle");
        let child = Command::new(env!("CARGO_BIN_EXE_natter"))
            .args(["--listen", &addr.to_string(), "--redis", redis_url, "--redis-timeout", "1s"])
            .args(["--redis-instance-ttl", "1s"])
            .args(extra)
            .arg("--bundle-dir")
            .arg(bundle)
            .env_remove("NATTER_HISTORY")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the natter binary");
        // It binds before it opens the history, so wait for an answer, not a listener.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !healthy(addr) {
            assert!(Instant::now() < deadline, "natter did not answer on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// SIGKILL: nothing is flushed, nothing given back.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Natter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `/healthz` answers 200 at `addr`.
fn healthy(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 12];
    stream.write_all(request.as_bytes()).is_ok() && stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}
