//! `cluster`: the `history` scenario's closed-loop load (100 senders in 10
//! rooms, 32 unacknowledged each; every message goes to the 9 other
//! senders of its room) against one natter on SQLite, one natter on Redis,
//! and two natter instances on the same Redis (senders alternating between
//! them, so each room spans both). Per setup: acknowledged messages/s,
//! deliveries/s, ack p50/p99, natter's CPU per ack and per delivery (both
//! instances together), and Redis's CPU per ack: the cost of the Redis hop.
//!
//! Redis is a private `redis-server` on a free loopback port with
//! `appendonly yes` and `appendfsync always` (what natter requires), in a
//! temporary directory, stopped when the scenario ends. The server side
//! (natter's instances and Redis) runs on the server's core and the load
//! generator on the other, as in the other scenarios: on a 2-core machine
//! these figures show what each setup costs per message, not how far
//! several instances on several machines would scale.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::history::{Pace, ROOMS, SENDERS, WINDOW, gather, sender};
use crate::args::Args;
use crate::server::{Server, cpu_time_of, free_port, temp_dir};

/// How long redis-server may take to listen.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A private redis-server, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    /// Starts it, on `cpu` if given (else it would share the load
    /// generator's core, whose affinity children inherit).
    fn start(cpu: Option<u32>) -> Result<Self> {
        let port = free_port()?;
        let dir = temp_dir("redis");
        std::fs::create_dir_all(&dir)?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", &cpu.to_string(), "redis-server"]);
                taskset
            }
            None => Command::new("redis-server"),
        };
        let child = command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting redis-server (cargo xtask test installs it; or apt-get install redis-server)")?;
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, port, dir })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn cpu_time(&self) -> Result<Duration> {
        cpu_time_of(&self.child.id().to_string())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The flags every natter of this scenario runs with.
const LOAD_FLAGS: [&str; 6] = ["--rate-per-sec", "1000000", "--rate-burst", "1000000", "--outbound-queue", "4096"];

/// One setup's figures: `servers` under the load, `redis` beside them if any.
async fn measure(args: &Args, servers: Vec<Server>, redis: Option<&Redis>) -> Result<Value> {
    let (warmup, window) = if args.quick { (1, 3) } else { (2, 10) };
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(warmup);
    let until = measure_from + Duration::from_secs(window);
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    let tasks: Vec<_> = (0..SENDERS)
        .map(|i| {
            // Alternate, so each room has senders on every instance.
            let addr = addrs[(i / ROOMS) % addrs.len()];
            tokio::spawn(sender((addr, i, measure_from, until, Pace::Window(WINDOW))))
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before: Vec<Duration> = servers.iter().map(Server::cpu_time).collect::<Result<_>>()?;
    let redis_before = redis.map(Redis::cpu_time).transpose()?;
    let (acked, latency) = gather(tasks).await?;
    // CPU over the measured window and the senders' last acks.
    let cpu: Duration = servers.iter().zip(cpu_before).map(|(s, b)| s.cpu_time().map(|c| c - b)).sum::<Result<_>>()?;
    let redis_cpu = match (redis, redis_before) {
        (Some(r), Some(b)) => Some(r.cpu_time()? - b),
        _ => None,
    };
    for server in servers {
        server.stop()?;
    }
    let acked = acked.max(1) as f64;
    let per_room = (SENDERS / ROOMS) as f64;
    let deliveries = acked * (per_room - 1.0);
    Ok(json!({
        "acked_per_sec": acked / window as f64,
        "deliveries_per_sec": deliveries / window as f64,
        "ack_p50_ms": latency.percentile_ms(50.0),
        "ack_p99_ms": latency.percentile_ms(99.0),
        "natter_cpu_us_per_ack": cpu.as_secs_f64() * 1e6 / acked,
        "natter_cpu_us_per_delivery": cpu.as_secs_f64() * 1e6 / deliveries,
        "redis_cpu_us_per_ack": redis_cpu.map(|c| c.as_secs_f64() * 1e6 / acked),
    }))
}

pub async fn run(args: &Args) -> Result<Value> {
    let mut figures = serde_json::Map::new();
    let sqlite_flags: Vec<&str> = ["--history", "sqlite"].into_iter().chain(LOAD_FLAGS).collect();
    let sqlite = Server::start(&args.natter, &sqlite_flags, args.server_cpu, None)?;
    figures.insert("sqlite".into(), measure(args, vec![sqlite], None).await?);

    for instances in [1, 2] {
        // The server side (instances and Redis) on the server's core, as
        // SQLite's natter is: the same core for every setup.
        let redis = Redis::start(args.server_cpu)?;
        let url = redis.url();
        let flags: Vec<&str> = ["--redis", url.as_str()].into_iter().chain(LOAD_FLAGS).collect();
        let servers = (0..instances)
            .map(|_| Server::start(&args.natter, &flags, args.server_cpu, None))
            .collect::<Result<_>>()?;
        let key = if instances == 1 { "redis_1" } else { "redis_2" };
        figures.insert(key.into(), measure(args, servers, Some(&redis)).await?);
    }
    // Flattened, as the other scenarios' figures are.
    let mut flat = serde_json::Map::new();
    for (setup, values) in figures {
        if let Some(values) = values.as_object() {
            for (name, value) in values {
                flat.insert(format!("{setup}_{name}"), value.clone());
            }
        }
    }
    Ok(Value::Object(flat))
}
