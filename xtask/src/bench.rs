//! `cargo xtask bench [SCENARIO] [--runs N] [--quick]`, the driver: builds the
//! server, the page and the load generator (the separate `bench` binary in
//! `src/bin/bench/`) in release mode, runs each scenario `N` times (default 3)
//! with the server pinned to core 0 and the load generator to core 1, prints
//! medians with min–max, and writes `target/bench/*.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::process::cmd;
use crate::report::step;
use crate::{bundle, tools};

/// Scenarios in the order they run (see the bench binary).
const SCENARIOS: &[&str] = &["bundle", "idle", "storm", "fanout", "rooms", "slow", "history", "floor"];
/// Runs per scenario for the medians.
const DEFAULT_RUNS: usize = 3;

fn has_taskset() -> bool {
    Command::new("taskset").arg("--version").output().is_ok()
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
            name if SCENARIOS.contains(&name) => only = Some(name.to_owned()),
            other => bail!("unknown bench argument {other}; scenarios: {}", SCENARIOS.join(", ")),
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
    let scenarios: Vec<&str> = match &only {
        Some(name) => vec![name.as_str()],
        None => SCENARIOS.to_vec(),
    };
    let mut table = Vec::new();
    for scenario in scenarios {
        let mut results = Vec::new();
        for run in 1..=runs {
            step(&format!("bench {scenario}: run {run} of {runs}"));
            // The load generator needs many open files: raise its limit to
            // the hard limit (the server raises its own the same way).
            let mut line = String::from("ulimit -n $(ulimit -Hn) 2>/dev/null; exec ");
            if pin {
                line.push_str("taskset -c 1 ");
            }
            line.push_str(&format!(
                "'{}' {scenario} --natter '{}' --bundle '{}'",
                root.join("target/release/bench").display(),
                root.join("target/release/natter").display(),
                root.join("dist").display()
            ));
            if pin {
                line.push_str(" --server-cpu 0");
            }
            if quick {
                line.push_str(" --quick");
            }
            let out = Command::new("sh")
                .args(["-c", &line])
                .stderr(std::process::Stdio::inherit())
                .output()
                .context("running the load generator")?;
            if !out.status.success() {
                bail!("bench {scenario} failed ({})", out.status);
            }
            let figures: Value = serde_json::from_slice(&out.stdout).context("the load generator's figures")?;
            results.push(figures);
        }
        let summary = summarize(&results);
        let doc = json!({ "scenario": scenario, "runs": results, "median": summary, "quick": quick, "pinned": pin });
        std::fs::write(out_dir.join(format!("{scenario}.json")), serde_json::to_string_pretty(&doc)?)?;
        table.push((scenario.to_owned(), summary));
    }
    println!();
    println!("{:<10} {:<28} {:>14} {:>24}", "scenario", "figure", "median", "min – max");
    for (scenario, summary) in table {
        for (name, (median, min, max)) in summary {
            println!("{scenario:<10} {name:<28} {median:>14.3} {:>24}", format!("{min:.3} – {max:.3}"));
        }
    }
    println!();
    println!("figures written to {}", out_dir.display());
    Ok(())
}

/// Median, min and max of every numeric figure across runs.
fn summarize(runs: &[Value]) -> BTreeMap<String, (f64, f64, f64)> {
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
