//! `floor`: what this machine's kernel allows any server, measured with the
//! floor server (`floor_server.rs`) in natter's place on the same core and
//! the same load generator. Its figures bound the storm and fan-out targets
//! from below: natter cannot beat a server that does nothing but the
//! system calls. `floor` runs the storm and the fan-out at 1 to 10 frames
//! per write; `fanout --floor` runs only the step beside natter's first
//! fan-out step (same rate, same step length, natter's write window).

use std::io::Read;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::load::{FANOUT_MEMBERS, fanout_step, storm_on};
use crate::args::Args;
use crate::load::{Counters, open_many, read};
use crate::server::{Process, Server, free_port, spawn_pinned, wait_listening};

/// Messages per second each member gets: 100,000 deliveries/s in all.
const FANOUT_RATE: f64 = 100.0;
/// The write grids stepped through: 1, 2.5, 5 and 10 frames per write.
const FANOUT_WINDOWS_MS: &str = "10,25,50,100";
/// natter's write-coalescing window (its `--write-coalesce` default): at
/// 100 messages/s, 2.5 frames per write.
const NATTER_WINDOW_MS: &str = "25";
/// Length of each fan-out step.
const FANOUT_STEP: Duration = Duration::from_secs(5);
/// How long the fan-out part may take in all.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(120);
/// After the floor server exits, how long its members' readers get to see
/// the end of their streams.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the drain checks the readers.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Handshakes in flight while the fan-out members join.
const FANOUT_PARALLEL: usize = 256;
/// Step length with `--quick`.
const QUICK_STEP: Duration = Duration::from_secs(1);

/// Starts the floor server (this binary, `floor-server`) pinned like natter.
fn start(args: &Args, mode: &str, extra: &[String]) -> Result<(Process, std::net::SocketAddr)> {
    let port = free_port()?;
    let exe = std::env::current_exe().context("the bench binary's path")?;
    let mut line = format!("'{}' floor-server --port {port} --mode {mode}", exe.display());
    for a in extra {
        line.push(' ');
        line.push_str(a);
    }
    let child = spawn_pinned(&line, args.server_cpu, Stdio::piped(), Stdio::inherit())?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr)?;
    Ok((child, addr))
}

/// Runs both parts. The figures are flat (`storm_…`, `fanout_<window>ms_…`)
/// so that `cargo xtask bench` takes their medians like any scenario's.
pub async fn run(args: &Args) -> Result<Value> {
    let mut figures = serde_json::Map::new();
    let storm = storm_on(Server::floor(args.server_cpu)?, args.quick).await?;
    for (key, value) in storm.as_object().into_iter().flatten() {
        figures.insert(format!("storm_{key}"), value.clone());
    }
    let step = if args.quick { QUICK_STEP } else { FANOUT_STEP };
    let fanout = fanout(args, FANOUT_WINDOWS_MS, step).await?;
    for step in fanout["steps"].as_array().into_iter().flatten() {
        let window = step["window_ms"].as_u64().unwrap_or(0);
        for (key, value) in step.as_object().into_iter().flatten() {
            if key != "window_ms" {
                figures.insert(format!("fanout_{window}ms_{key}"), value.clone());
            }
        }
    }
    for key in ["frames_written", "frames_received"] {
        figures.insert(format!("fanout_{key}"), fanout[key].clone());
    }
    Ok(Value::Object(figures))
}

/// `fanout --floor`: the floor's fan-out beside natter's first step: the
/// same members, rate and step length, frames written on natter's window.
/// The figure names match natter's (`…_at_100k`).
pub async fn fanout_beside_natter(args: &Args) -> Result<Value> {
    let fanout = fanout(args, NATTER_WINDOW_MS, fanout_step(args.quick)).await?;
    let step = &fanout["steps"][0];
    Ok(json!({
        "members": FANOUT_MEMBERS,
        "window_ms": step["window_ms"],
        "server_cpu_us_per_delivery_at_100k": step["cpu_us_per_delivery"],
        "server_cpu_pct_at_100k": step["cpu_pct"],
        "frames_per_write": step["frames_per_write"],
        "deliveries_per_sec": step["deliveries_per_sec"],
        "frames_written": fanout["frames_written"],
        "frames_received": fanout["frames_received"],
    }))
}

/// CPU per delivery for 100,000 deliveries/s on each write grid in
/// `windows_ms` (comma-separated), `step` each.
async fn fanout(args: &Args, windows_ms: &str, step: Duration) -> Result<Value> {
    let extra = [
        "--members".to_owned(),
        FANOUT_MEMBERS.to_string(),
        "--rate".to_owned(),
        FANOUT_RATE.to_string(),
        "--windows-ms".to_owned(),
        windows_ms.to_owned(),
        "--step-ms".to_owned(),
        step.as_millis().to_string(),
    ];
    let (mut child, addr) = start(args, "fanout", &extra)?;
    let mut stdout = child.0.stdout.take().context("the floor server's stdout")?;
    let (sockets, _, _) =
        open_many(addr, FANOUT_MEMBERS, FANOUT_PARALLEL, |_| "floor".to_owned(), |i| format!("m{i}")).await?;
    let counters = Arc::new(Counters::default());
    let epoch = Instant::now();
    for ws in sockets {
        tokio::spawn(read(ws, false, counters.clone(), epoch));
    }
    // The floor server prints its figures and exits when its steps are done.
    let report = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let Ok(out) = tokio::time::timeout(FANOUT_TIMEOUT, report).await else {
        bail!("the floor server did not finish its fan-out steps within {FANOUT_TIMEOUT:?}");
    };
    let out = out??;
    let status = child.0.wait()?;
    if !status.success() {
        bail!("the floor server failed ({status})");
    }
    // Its exit closed every member: wait until each reader has seen the end.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while counters.closed() < FANOUT_MEMBERS as u64 && Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let mut figures: Value = serde_json::from_str(out.trim()).context("the floor server's figures")?;
    let written: u64 = figures["steps"]
        .as_array()
        .map(|steps| steps.iter().filter_map(|s| s["frames_written"].as_u64()).sum())
        .unwrap_or(0);
    figures["frames_received"] = json!(counters.messages());
    figures["frames_written"] = json!(written);
    Ok(figures)
}
