//! Natter's load generator: runs one scenario against a real `natter`
//! process (or, with `--floor`, against the floor server in its place) and
//! prints its figures as one JSON object on stdout. `cargo xtask
//! bench` builds everything, pins processes to cores, runs the scenarios and
//! writes the table and `target/bench/*.json`. Every scenario is bounded in
//! time and connects only to 127.0.0.0/8.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a measuring tool reports on stdout/stderr

mod args;
mod client;
mod floor_server;
mod load;
mod member;
mod scenarios;
mod server;
mod stats;

use anyhow::Result;

use args::Args;

fn main() -> Result<()> {
    // `bench floor` and the `--floor` runs start this binary as the floor
    // server in natter's place.
    if std::env::args().nth(1).as_deref() == Some("floor-server") {
        return floor_server::serve(floor_server::FloorArgs::parse(std::env::args().skip(2))?);
    }
    let args = Args::parse(std::env::args().skip(1))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let figures = runtime.block_on(scenarios::run(&args))?;
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}
