//! The scenarios. Each returns its figures as JSON.

mod bundle;
mod history;

use anyhow::{Result, bail};
use serde_json::Value;

use crate::Args;

/// Every scenario, in the order `cargo xtask bench` runs them.
pub const ALL: &[&str] = &["bundle", "history"];

pub async fn run(args: &Args) -> Result<Value> {
    match args.scenario.as_str() {
        "bundle" => bundle::run(args),
        "history" => history::run(args).await,
        other => bail!("unknown scenario {other}; known: {}", ALL.join(", ")),
    }
}
