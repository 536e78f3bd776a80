//! The bench binary's command line: what `cargo xtask bench` passes for one scenario.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// What the bench binary needs from `cargo xtask bench`.
#[derive(Debug, Clone)]
pub struct Args {
    pub scenario: String,
    pub natter: PathBuf,
    pub bundle: PathBuf,
    /// Shorter runs (for a smoke test of the harness).
    pub quick: bool,
    /// Core to pin the server to, if any.
    pub server_cpu: Option<u32>,
    /// Run the scenario against the floor server instead of natter.
    pub floor: bool,
}

impl Args {
    /// Parses `SCENARIO --natter PATH --bundle DIR [--quick] [--server-cpu N]
    /// [--floor]` (the arguments after the program name).
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Self> {
        let scenario = args
            .next()
            .context("usage: bench SCENARIO --natter PATH --bundle DIR [--quick] [--server-cpu N] [--floor]")?;
        let mut natter = None;
        let mut bundle = None;
        let mut quick = false;
        let mut server_cpu = None;
        let mut floor = false;
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--natter" => natter = args.next().map(Into::into),
                "--bundle" => bundle = args.next().map(Into::into),
                "--quick" => quick = true,
                "--server-cpu" => server_cpu = args.next().and_then(|c| c.parse().ok()),
                "--floor" => floor = true,
                other => bail!("unknown flag {other}"),
            }
        }
        Ok(Self {
            scenario,
            natter: natter.context("--natter is required")?,
            bundle: bundle.context("--bundle is required")?,
            quick,
            server_cpu,
            floor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Args> {
        Args::parse(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn a_scenario_with_its_flags_parses() {
        let args = parse("storm --natter /t/natter --bundle /t/dist --quick --server-cpu 0").expect("valid");
        assert_eq!(args.scenario, "storm");
        assert_eq!(args.natter, PathBuf::from("/t/natter"));
        assert_eq!(args.bundle, PathBuf::from("/t/dist"));
        assert!(args.quick);
        assert_eq!(args.server_cpu, Some(0));
        assert!(!args.floor);
        assert!(parse("storm --natter /t/natter --bundle /t/dist --floor").expect("valid").floor);
    }

    #[test]
    fn missing_or_unknown_flags_are_errors() {
        assert!(parse("").is_err());
        assert!(parse("storm --bundle /t/dist").is_err());
        assert!(parse("storm --natter /t/natter").is_err());
        assert!(parse("storm --natter /t/natter --bundle /t/dist --fast").is_err());
    }
}
