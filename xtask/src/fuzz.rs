//! `cargo xtask fuzz [TARGET] [--time SECS]`: coverage-guided fuzzing of the
//! targets in `fuzz/` with AFL++ through cargo-afl, on our stable Rust (its
//! instrumentation takes only stable `-C` flags; no nightly, no
//! `RUSTC_BOOTSTRAP`).
//!
//! Installs cargo-afl at a pinned version when missing (`cargo install`,
//! which builds AFL++ from the source the crate ships), builds the targets
//! into `target/fuzz`, and runs each for the given time from its seed corpus
//! `fuzz/corpus/<target>`. A crash or a hang fails the run; its input is kept
//! in `target/fuzz/crashes/<target>/` and replays with
//! `target/fuzz/debug/<target> < FILE`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::cmd;
use crate::report::step;
use crate::tools::ToolEnv;

/// The cargo-afl release (`fuzz/Cargo.toml` pins the `afl` crate to match).
pub const CARGO_AFL_VERSION: &str = "0.18.2";
/// The targets: binaries of `fuzz/`, each with a seed corpus in `fuzz/corpus/<name>`.
pub const TARGETS: &[&str] = &["frame_decoder", "client_msg"];
/// How long `cargo xtask test` fuzzes each target.
pub const TEST_TIME: Duration = Duration::from_secs(60);
/// How long `cargo xtask fuzz` fuzzes each target without `--time`.
pub const DEFAULT_TIME: Duration = Duration::from_secs(60);
/// An input that runs longer than this many milliseconds is a hang (the
/// targets take microseconds; the margin is for a busy machine).
const HANG_MS: &str = "2000";
/// Where the targets are built and the findings go, under the repository root.
const TARGET_DIR: &str = "target/fuzz";
/// AFL++'s settings for a run nobody watches, on a machine it does not own.
const AFL_ENV: &[(&str, &str)] = &[
    // Status lines into the log instead of a full-screen display.
    ("AFL_NO_UI", "1"),
    // CI machines do not let us set the CPU governor or bind to a core.
    ("AFL_SKIP_CPUFREQ", "1"),
    ("AFL_NO_AFFINITY", "1"),
    // A crash handler in core_pattern only delays crash reports.
    ("AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES", "1"),
    // The first crash fails the run: no need to go on.
    ("AFL_BENCH_UNTIL_CRASH", "1"),
];

/// What `cargo xtask fuzz` was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub targets: Vec<&'static str>,
    pub time: Duration,
}

/// Parses `[TARGET] [--time SECS]`.
pub fn parse_args(args: &[String]) -> Result<Request> {
    let mut targets = Vec::new();
    let mut time = DEFAULT_TIME;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--time" {
            let secs = args.next().context("--time needs a number of seconds")?;
            let secs: u64 = secs
                .parse()
                .ok()
                .filter(|s| *s > 0)
                .with_context(|| format!("--time takes a whole number of seconds above 0, not {secs:?}"))?;
            time = Duration::from_secs(secs);
        } else if let Some(target) = TARGETS.iter().find(|t| **t == arg) {
            targets.push(*target);
        } else {
            bail!("unknown fuzz target {arg:?}; the targets are {}", TARGETS.join(", "));
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    Ok(Request { targets, time })
}

/// `cargo xtask fuzz`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let request = parse_args(args)?;
    fuzz(root, &tool_env()?, &request.targets, request.time)
}

/// Installs what is missing, builds the targets and fuzzes each for `time`.
pub fn fuzz(root: &Path, env: &ToolEnv, targets: &[&str], time: Duration) -> Result<()> {
    ensure_cargo_afl(root, env)?;
    step("building the fuzz targets with AFL++'s instrumentation (cargo afl build, into target/fuzz)");
    let build = ["afl", "build", "--locked", "--manifest-path", "fuzz/Cargo.toml", "--target-dir", TARGET_DIR];
    cmd(root, env, "cargo", &build)?;
    for target in targets {
        fuzz_target(root, env, target, time)?;
    }
    Ok(())
}

/// `PATH` with cargo's bin directory first, where `cargo install` puts cargo-afl.
fn tool_env() -> Result<ToolEnv> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let mut dirs = vec![home.join("bin")];
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    Ok(ToolEnv { path: std::env::join_paths(dirs).context("building PATH")?, tmpdir: None, embed: None })
}

/// What `cargo afl --version` says, if cargo-afl is installed.
fn cargo_afl_version(env: &ToolEnv) -> String {
    let out = env.command("cargo").args(["afl", "--version"]).stderr(Stdio::null()).output();
    out.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// cargo-afl at [`CARGO_AFL_VERSION`], with AFL++ built for the current Rust.
fn ensure_cargo_afl(root: &Path, env: &ToolEnv) -> Result<()> {
    if !cargo_afl_version(env).split_whitespace().any(|w| w == CARGO_AFL_VERSION) {
        step(&format!(
            "installing cargo-afl {CARGO_AFL_VERSION} (cargo install; it builds AFL++ from the source it ships; about 2 minutes, once)"
        ));
        cmd(root, env, "cargo", &["install", "cargo-afl", "--version", CARGO_AFL_VERSION, "--locked", "--force"])?;
    }
    // AFL++ is built per Rust version: a new toolchain needs it built again.
    if !cargo_afl_version(env).contains("AFL++ version") {
        step("building AFL++ for this Rust version (cargo afl config --build)");
        cmd(root, env, "cargo", &["afl", "config", "--build", "--force"])?;
    }
    Ok(())
}

/// Fuzzes one target from its seeds for `time`; fails on a crash or a hang.
fn fuzz_target(root: &Path, env: &ToolEnv, target: &str, time: Duration) -> Result<()> {
    let runs = root.join(TARGET_DIR).join("out");
    let out = runs.join(target);
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("could not remove {}", out.display()))?;
    }
    fs::create_dir_all(&runs).with_context(|| format!("could not create {}", runs.display()))?;
    let log_path = runs.join(format!("{target}.log"));
    let log = fs::File::create(&log_path).with_context(|| format!("could not create {}", log_path.display()))?;
    step(&format!(
        "fuzzing {target} for {} s (AFL++; its log: {})",
        time.as_secs(),
        log_path.strip_prefix(root).unwrap_or(&log_path).display()
    ));
    let corpus = root.join("fuzz/corpus").join(target);
    let binary = root.join(TARGET_DIR).join("debug").join(target);
    replay_seeds(root, &binary, &corpus)?;
    let mut command = env.command("cargo");
    command.args(["afl", "fuzz", "-V", &time.as_secs().to_string(), "-t", HANG_MS]).arg("-i").arg(&corpus);
    command.arg("-o").arg(&out);
    let dict = root.join("fuzz").join(format!("{target}.dict"));
    if dict.exists() {
        command.arg("-x").arg(&dict);
    }
    command.arg(&binary);
    let status = command
        .envs(AFL_ENV.iter().copied())
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("could not start cargo afl fuzz")?;
    let found = out.join("default");
    let findings: Vec<PathBuf> = ["crashes", "hangs"].iter().flat_map(|kind| inputs_in(&found.join(kind))).collect();
    if !findings.is_empty() {
        let kept = root.join(TARGET_DIR).join("crashes").join(target);
        fs::create_dir_all(&kept)?;
        let mut lines = Vec::new();
        for input in &findings {
            let name = input.file_name().map(|n| n.to_string_lossy().replace(':', "_")).unwrap_or_default();
            let copy = kept.join(name);
            fs::copy(input, &copy)?;
            lines.push(format!(
                "  {}/debug/{target} < {}",
                TARGET_DIR,
                copy.strip_prefix(root).unwrap_or(&copy).display()
            ));
        }
        bail!(
            "fuzzing {target} found {} input(s) that crash or hang it; replay each with:\n{}",
            findings.len(),
            lines.join("\n")
        );
    }
    if !status.success() {
        bail!("cargo afl fuzz failed for {target} ({status}); see {}", log_path.display());
    }
    let stats = fs::read_to_string(found.join("fuzzer_stats")).unwrap_or_default();
    step(&format!("{target}: {}", summary(&stats)));
    Ok(())
}

/// Runs the target once on each seed, as a regression test: the corpus
/// holds the inputs of earlier findings, and AFL++ would only refuse to
/// start on one that crashes.
fn replay_seeds(root: &Path, binary: &Path, corpus: &Path) -> Result<()> {
    let seeds = inputs_in(corpus);
    if seeds.is_empty() {
        bail!("no seeds in {}", corpus.display());
    }
    for seed in &seeds {
        let input = fs::File::open(seed).with_context(|| format!("could not open {}", seed.display()))?;
        let out = std::process::Command::new(binary)
            .stdin(input)
            .current_dir(root)
            .output()
            .with_context(|| format!("could not start {}", binary.display()))?;
        if !out.status.success() {
            bail!(
                "the seed {} fails ({}):
{}",
                seed.strip_prefix(root).unwrap_or(seed).display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).lines().take(5).collect::<Vec<_>>().join("\n")
            );
        }
    }
    Ok(())
}

/// The inputs AFL++ saved in one of its findings directories (not its README).
fn inputs_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut inputs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n != "README.txt"))
        .collect();
    inputs.sort();
    inputs
}

/// One line from AFL++'s `fuzzer_stats`: how much ran and what it found.
fn summary(stats: &str) -> String {
    let field = |name: &str| {
        stats
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "{} inputs in {} s ({}/s), {} in the corpus, {} of the map covered, no crash, no hang",
        field("execs_done"),
        field("run_time"),
        field("execs_per_sec"),
        field("corpus_count"),
        field("bitmap_cvg"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_target_for_a_minute_by_default() {
        let request = parse_args(&[]).expect("no arguments");
        assert_eq!(request, Request { targets: TARGETS.to_vec(), time: DEFAULT_TIME });
    }

    #[test]
    fn a_target_and_a_time_in_either_order() {
        let one = Request { targets: vec!["client_msg"], time: Duration::from_secs(20) };
        assert_eq!(parse_args(&args(&["client_msg", "--time", "20"])).expect("valid"), one);
        assert_eq!(parse_args(&args(&["--time", "20", "client_msg"])).expect("valid"), one);
    }

    #[test]
    fn unknown_targets_and_bad_times_are_refused() {
        let err = parse_args(&args(&["frames"])).expect_err("unknown target").to_string();
        assert!(err.contains("frame_decoder, client_msg"), "{err}");
        for bad in [&["--time"][..], &["--time", "0"], &["--time", "soon"]] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn findings_are_the_inputs_without_the_readme() {
        let dir = std::env::temp_dir().join(format!("natter-xtask-fuzz-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create");
        assert!(inputs_in(&dir.join("missing")).is_empty());
        fs::write(dir.join("README.txt"), "about crashes").expect("write");
        assert!(inputs_in(&dir).is_empty());
        fs::write(dir.join("id:000000,sig:06"), [0xff]).expect("write");
        assert_eq!(inputs_in(&dir), vec![dir.join("id:000000,sig:06")]);
        fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn the_summary_reads_afl_stats() {
        let stats = "start_time        : 1\nrun_time          : 60\nexecs_done        : 1199133\n\
                     execs_per_sec     : 19984.88\ncorpus_count      : 137\nbitmap_cvg        : 47.79%\n";
        assert_eq!(
            summary(stats),
            "1199133 inputs in 60 s (19984.88/s), 137 in the corpus, 47.79% of the map covered, no crash, no hang"
        );
        assert!(summary("").starts_with("? inputs"));
    }
}
