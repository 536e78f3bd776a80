//! The scenarios. Each returns its figures as JSON.

mod bundle;
mod floor;
mod history;
mod load;

use anyhow::{Result, bail};
use serde_json::Value;

use crate::args::Args;

/// Every scenario, in the order `cargo xtask bench` runs them.
pub const ALL: &[&str] = &["bundle", "idle", "storm", "fanout", "rooms", "slow", "history", "floor"];

pub async fn run(args: &Args) -> Result<Value> {
    match args.scenario.as_str() {
        "bundle" => bundle::run(args),
        "history" => history::run(args).await,
        "idle" => load::idle(args).await,
        "storm" => load::storm(args).await,
        "fanout" => load::fanout(args).await,
        "slow" => load::slow(args).await,
        "rooms" => load::rooms(args).await,
        "floor" => floor::run(args).await,
        other => bail!("unknown scenario {other}; known: {}", ALL.join(", ")),
    }
}
