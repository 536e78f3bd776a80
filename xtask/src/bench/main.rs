//! Natter's load generator: runs one scenario against a real `natter`
//! process and prints its figures as one JSON object on stdout. `cargo xtask
//! bench` builds everything, pins processes to cores, runs the scenarios and
//! writes the table and `target/bench/*.json`. Every scenario is bounded in
//! time and connects only to 127.0.0.0/8.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a measuring tool reports on stdout/stderr

mod client;
mod floor_server;
mod load;
mod scenarios;
mod server;
mod stats;

use anyhow::{Context, Result, bail};

/// What the bench binary needs from `cargo xtask bench`.
#[derive(Debug, Clone)]
pub struct Args {
    pub scenario: String,
    pub natter: std::path::PathBuf,
    pub bundle: std::path::PathBuf,
    /// Shorter runs (for a smoke test of the harness).
    pub quick: bool,
    /// Core to pin the server to, if any.
    pub server_cpu: Option<u32>,
}

fn parse() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let scenario =
        args.next().context("usage: bench SCENARIO --natter PATH --bundle DIR [--quick] [--server-cpu N]")?;
    let mut natter = None;
    let mut bundle = None;
    let mut quick = false;
    let mut server_cpu = None;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--natter" => natter = args.next().map(Into::into),
            "--bundle" => bundle = args.next().map(Into::into),
            "--quick" => quick = true,
            "--server-cpu" => server_cpu = args.next().and_then(|c| c.parse().ok()),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(Args {
        scenario,
        natter: natter.context("--natter is required")?,
        bundle: bundle.context("--bundle is required")?,
        quick,
        server_cpu,
    })
}

fn main() -> Result<()> {
    // `bench floor` runs this binary as the floor server in natter's place.
    if std::env::args().nth(1).as_deref() == Some("floor-server") {
        return floor_server::serve(floor_server::FloorArgs::parse(std::env::args().skip(2))?);
    }
    let args = parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let figures = runtime.block_on(scenarios::run(&args))?;
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}
