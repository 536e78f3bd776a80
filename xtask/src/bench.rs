//! `cargo xtask bench [SCENARIO] [--runs N] [--quick]`, the driver: builds the
//! server, the page and the load generator (the separate `bench` binary in
//! `src/bin/bench/`) in release mode, runs each scenario `N` times (default 3)
//! with the server pinned to core 0 and the load generator to core 1, prints
//! medians with min–max, and writes `target/bench/<scenario>.json`.
//!
//! A scenario with a floor counterpart ([`WITH_FLOOR`]) runs, after each of
//! its runs against natter, the same load against the floor server in
//! natter's place (`bench SCENARIO --floor`), so the machine's drift hits
//! both alike; the table sets natter, the floor and natter/floor side by
//! side (the ratio is the median of each run's natter/floor pair). Naming
//! one scenario runs it and its floor. `floor` (the floor server's own
//! storm and fan-out at 1 to 10 frames per write) runs only when named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::process::cmd;
use crate::report::step;
use crate::{bundle, tools};

/// Scenarios in the order a full run runs them (see the bench binary).
const SCENARIOS: &[&str] =
    &["bundle", "idle", "storm", "bigroom", "resume", "fanout", "rooms", "slow", "history", "cluster"];
/// Scenarios that run only when named.
const NAMED_ONLY: &[&str] = &["floor"];
/// Scenarios whose every run is followed by a run against the floor server.
const WITH_FLOOR: &[&str] = &["idle", "storm", "bigroom", "resume", "fanout"];
/// Runs per scenario for the medians.
const DEFAULT_RUNS: usize = 3;

/// Median, min and max of each figure across runs.
type Summary = BTreeMap<String, (f64, f64, f64)>;

fn has_taskset() -> bool {
    Command::new("taskset").arg("--version").output().is_ok()
}

/// How the load generator is run.
#[derive(Debug)]
struct Runner<'a> {
    root: &'a Path,
    quick: bool,
    pin: bool,
}

impl Runner<'_> {
    /// One run of `scenario` (against the floor server if `floor`): its figures.
    fn run(&self, scenario: &str, floor: bool) -> Result<Value> {
        // The load generator needs many open files: raise its limit to
        // the hard limit (the server raises its own the same way).
        let mut line = String::from("ulimit -n $(ulimit -Hn) 2>/dev/null; exec ");
        if self.pin {
            line.push_str("taskset -c 1 ");
        }
        line.push_str(&format!(
            "'{}' {scenario} --natter '{}' --bundle '{}'",
            self.root.join("target/release/bench").display(),
            self.root.join("target/release/natter").display(),
            self.root.join("dist").display()
        ));
        if self.pin {
            line.push_str(" --server-cpu 0");
        }
        if self.quick {
            line.push_str(" --quick");
        }
        if floor {
            line.push_str(" --floor");
        }
        let out = Command::new("sh")
            .args(["-c", &line])
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running the load generator")?;
        let against = if floor { " against the floor server" } else { "" };
        if !out.status.success() {
            bail!("bench {scenario}{against} failed ({})", out.status);
        }
        serde_json::from_slice(&out.stdout).context("the load generator's figures")
    }
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut runs = DEFAULT_RUNS;
    let mut quick = false;
    let mut only = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|n| n.parse().ok()).context("--runs N")?,
            "--quick" => quick = true,
            name if SCENARIOS.contains(&name) || NAMED_ONLY.contains(&name) => only = Some(name.to_owned()),
            other => {
                let known = [SCENARIOS, NAMED_ONLY].concat().join(", ");
                bail!("unknown bench argument {other}; scenarios: {known}")
            }
        }
    }
    let env = tools::ensure_all(root)?;
    bundle::build(root, &env)?;
    step("building the server and the load generator in release mode");
    cmd(root, &env, "cargo", &["build", "--release", "--locked", "-p", "natter-backend", "--bin", "natter"])?;
    cmd(root, &env, "cargo", &["build", "--release", "--locked", "-p", "xtask", "--bin", "bench"])?;
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let pin = has_taskset();
    if !pin {
        step("taskset not found: server and load generator share the cores");
    }
    let runner = Runner { root, quick, pin };
    let scenarios: Vec<&str> = match &only {
        Some(name) => vec![name.as_str()],
        None => SCENARIOS.to_vec(),
    };
    let mut table = Vec::new();
    for scenario in scenarios {
        let with_floor = WITH_FLOOR.contains(&scenario);
        let (mut results, mut floors, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for run in 1..=runs {
            step(&format!("bench {scenario}: run {run} of {runs}"));
            let figures = runner.run(scenario, false)?;
            if with_floor {
                step(&format!("bench {scenario} against the floor server: run {run} of {runs}"));
                let floor = runner.run(scenario, true)?;
                ratios.push(ratio(&figures, &floor));
                floors.push(floor);
            }
            results.push(figures);
        }
        let summary = summarize(&results);
        let (floor, ratio) = (summarize(&floors), summarize(&ratios));
        let mut doc =
            json!({ "scenario": scenario, "runs": results, "median": summary, "quick": quick, "pinned": pin });
        if with_floor {
            doc["floor"] = json!({ "runs": floors, "median": floor });
            doc["ratio"] = json!(ratio);
        }
        std::fs::write(out_dir.join(format!("{scenario}.json")), serde_json::to_string_pretty(&doc)?)?;
        table.push((scenario.to_owned(), summary, floor, ratio));
    }
    println!();
    println!("medians [min – max]; natter/floor is the median of each run's pair");
    println!("{:<10} {:<36} {:>34} {:>34} {:>28}", "scenario", "figure", "natter", "floor", "natter/floor");
    for (scenario, natter, floor, ratio) in table {
        let figures: BTreeSet<&String> = natter.keys().chain(floor.keys()).collect();
        for name in figures {
            println!(
                "{scenario:<10} {name:<36} {:>34} {:>34} {:>28}",
                cell(natter.get(name)),
                cell(floor.get(name)),
                cell(ratio.get(name))
            );
        }
    }
    println!();
    println!("figures written to {}", out_dir.display());
    Ok(())
}

/// A summary's cell: `median [min – max]`, or blank.
fn cell(figure: Option<&(f64, f64, f64)>) -> String {
    match figure {
        Some((median, min, max)) if min == max => format!("{median:.3}"),
        Some((median, min, max)) => format!("{median:.3} [{min:.3} – {max:.3}]"),
        None => String::new(),
    }
}

/// natter/floor of every top-level figure both runs have (and the floor's is not 0).
fn ratio(natter: &Value, floor: &Value) -> Value {
    let mut ratios = Map::new();
    for (key, value) in natter.as_object().into_iter().flatten() {
        if let (Some(n), Some(f)) = (value.as_f64(), floor[key].as_f64())
            && f != 0.0
        {
            ratios.insert(key.clone(), json!(n / f));
        }
    }
    Value::Object(ratios)
}

/// Median, min and max of every numeric figure across runs.
fn summarize(runs: &[Value]) -> Summary {
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in runs {
        if let Some(obj) = run.as_object() {
            collect(obj, &mut values);
        }
    }
    values
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            let median = v[v.len() / 2];
            (k, (median, v[0], v[v.len() - 1]))
        })
        .collect()
}

fn collect(obj: &Map<String, Value>, into: &mut BTreeMap<String, Vec<f64>>) {
    for (k, v) in obj {
        if let Some(n) = v.as_f64() {
            into.entry(k.clone()).or_default().push(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_taken_of_the_figures_both_runs_have() {
        let natter = json!({ "connects_per_sec": 5000.0, "frames": 30, "lost": 0, "name": "x" });
        let floor = json!({ "connects_per_sec": 20000.0, "frames": 10, "lost": 0 });
        assert_eq!(ratio(&natter, &floor), json!({ "connects_per_sec": 0.25, "frames": 3.0 }));
    }

    #[test]
    fn a_summary_is_the_median_and_the_range() {
        let runs = [json!({ "a": 3.0 }), json!({ "a": 1.0 }), json!({ "a": 2.0, "b": 7 })];
        let summary = summarize(&runs);
        assert_eq!(summary.get("a"), Some(&(2.0, 1.0, 3.0)));
        assert_eq!(summary.get("b"), Some(&(7.0, 7.0, 7.0)));
        assert_eq!(cell(summary.get("a")), "2.000 [1.000 – 3.000]");
        assert_eq!(cell(summary.get("b")), "7.000");
        assert_eq!(cell(None), "");
    }
}
