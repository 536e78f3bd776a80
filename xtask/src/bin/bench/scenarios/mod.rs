//! The scenarios. Each returns its figures as JSON; with `--floor` (those
//! in [`WITH_FLOOR`]) the same load runs against the floor server in natter's
//! place, for the ratios `cargo xtask bench` prints.

mod bigroom;
mod bundle;
mod cluster;
mod floor;
mod history;
mod load;
mod resume;

use anyhow::{Result, bail};
use serde_json::Value;

use crate::args::Args;

/// Every scenario, in the order `cargo xtask bench` runs them.
pub const ALL: &[&str] =
    &["bundle", "idle", "storm", "bigroom", "resume", "fanout", "rooms", "slow", "history", "cluster", "floor"];
/// The scenarios that also run against the floor server (`--floor`).
pub const WITH_FLOOR: &[&str] = &["idle", "storm", "bigroom", "resume", "fanout"];

pub async fn run(args: &Args) -> Result<Value> {
    if args.floor && !WITH_FLOOR.contains(&args.scenario.as_str()) {
        bail!("{} has no floor counterpart; these have: {}", args.scenario, WITH_FLOOR.join(", "));
    }
    match args.scenario.as_str() {
        "bundle" => bundle::run(args),
        "history" => history::run(args).await,
        "cluster" => cluster::run(args).await,
        "idle" => load::idle(args).await,
        "storm" => load::storm(args).await,
        "bigroom" => bigroom::run(args).await,
        "resume" => resume::run(args).await,
        "fanout" if args.floor => floor::fanout_beside_natter(args).await,
        "fanout" => load::fanout(args).await,
        "slow" => load::slow(args).await,
        "rooms" => load::rooms(args).await,
        "floor" => floor::run(args).await,
        other => bail!("unknown scenario {other}; known: {}", ALL.join(", ")),
    }
}
