//! `bundle`: the release page's wasm and JavaScript, raw and gzipped.

use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::args::Args;

fn gzipped(path: &std::path::Path) -> Result<u64> {
    let out = Command::new("gzip").args(["-9", "-c"]).arg(path).output().context("gzip")?;
    Ok(out.stdout.len() as u64)
}

pub fn run(args: &Args) -> Result<Value> {
    let (mut wasm, mut js) = ((0, 0), (0, 0));
    for entry in std::fs::read_dir(&args.bundle).context("reading the bundle")? {
        let path = entry?.path();
        let raw = std::fs::metadata(&path)?.len();
        match path.extension().and_then(|e| e.to_str()) {
            Some("wasm") => wasm = (wasm.0 + raw, wasm.1 + gzipped(&path)?),
            Some("js") => js = (js.0 + raw, js.1 + gzipped(&path)?),
            _ => {}
        }
    }
    Ok(json!({
        "wasm_raw_kb": wasm.0 as f64 / 1024.0,
        "wasm_gzip_kb": wasm.1 as f64 / 1024.0,
        "js_raw_kb": js.0 as f64 / 1024.0,
        "js_gzip_kb": js.1 as f64 / 1024.0,
        "total_gzip_kb": (wasm.1 + js.1) as f64 / 1024.0,
    }))
}
