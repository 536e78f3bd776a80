//! `cargo xtask`: Natter's one task runner.
//!
//! * `cargo xtask run [--instances N] [-- natter flags]` — install what is
//!   missing, build the chat page and the server, start it, print the URL;
//!   with `--instances N` (up to 8), N servers sharing rooms through a
//!   private Redis (`instances.rs`).
//! * `cargo xtask test` — install what is missing, then formatting, the
//!   backend's layering, clippy (host and wasm32), every test, the release
//!   tarball and its test, the proxy checks, and a minute of fuzzing per
//!   fuzz target.
//! * `cargo xtask bundle` — build only the chat page into `dist/`.
//! * `cargo xtask dist` — the release tarball (binary with the page inside,
//!   README, example settings, systemd unit, Dockerfile), then its test.
//! * `cargo xtask check-deploy` — docs/deploy/'s nginx, Caddy and HAProxy
//!   configurations run in front of natter, one instance or two on a private
//!   Redis, and the page served apart by nginx, in Chromium (the proxies,
//!   redis-server and Chromium installed from Debian if missing).
//! * `cargo xtask bench` — see `bench.rs`; the load generator it runs is the
//!   separate `bench` binary in `src/bin/bench/`.
//! * `cargo xtask layers` — only the backend's layering check (`layers.rs`).
//! * `cargo xtask fuzz [TARGET] [--time SECS]` — coverage-guided fuzzing of
//!   the targets in `fuzz/` with AFL++ (`fuzz.rs`).
//!
//! Every step says what it does; installs happen only when a tool is missing
//! or has the wrong version.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a CLI whose job is to report

mod bench;
mod bundle;
mod dist;
mod fuzz;
mod instances;
mod layers;
mod process;
mod report;
mod scratch;
mod tools;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

use process::cmd;
use report::step;
use scratch::ScratchDir;

/// Where `cargo xtask run` serves by default.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Where `cargo xtask run` builds the server (apart from `target/`, where
/// the page builds at the same time), and the log of that build.
const RUN_TARGET_DIR: &str = "target/run";
const RUN_BUILD_LOG: &str = "target/run/build.log";
/// How long the test server may take to start listening.
const SERVER_START: std::time::Duration = std::time::Duration::from_secs(20);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("test") => test(),
        Some("bundle") => tools::ensure_build(&root()).and_then(|env| bundle::build(&root(), &env)),
        Some("dist") => dist::dist(&root()).map(|_| ()),
        Some("check-deploy") => check_deploy(),
        Some("bench") => bench::run(&root(), &args[1..]),
        Some("layers") => layers::check_repo(&root()),
        Some("fuzz") => fuzz::run(&root(), &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <run [--instances N] [-- natter flags] | test | bundle | dist | check-deploy | bench [SCENARIO] [--runs N] [--quick] | layers | fuzz [TARGET] [--time SECS]>"
            );
            eprintln!("  run     build the page and the server, start Natter, print its URL");
            eprintln!(
                "          --instances N: N servers (at most {}) sharing rooms through a private Redis",
                instances::MAX_INSTANCES
            );
            eprintln!("  test    fmt, backend layering, clippy (host and wasm32) and every test");
            eprintln!("  bundle  build only the chat page into dist/");
            eprintln!("  dist    build the release tarball into target/dist/ and test it");
            eprintln!("  check-deploy  run docs/deploy/'s nginx, Caddy and HAProxy configurations in front of natter");
            eprintln!("  bench   build in release mode and print performance figures (target/bench/)");
            eprintln!("  layers  only check the backend's module layering against docs/ARCHITECTURE.md");
            eprintln!("  fuzz    fuzz the frame decoder and the message parser with AFL++ (60 s a target)");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The repository root (the parent of `xtask/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn run(args: &[String]) -> Result<()> {
    // Checked before anything is built; `extra` is what it was before the flag existed.
    let (instances, extra) = instances::split_args(args)?;
    let root = root();
    // The server builds while the page's tools install and the page builds:
    // it serves dist/ from disk (nothing embedded), so it does not wait for
    // the page, and its own target directory keeps the two cargo runs from
    // waiting on each other's lock. On two cores the page's one-core
    // stretches (its tools' last crates and links, the page's LTO, wasm-opt)
    // leave a core to it.
    step(&format!(
        "building the server meanwhile (cargo build --profile quick-release -p natter-backend, in {RUN_TARGET_DIR}/; its output in {RUN_BUILD_LOG})"
    ));
    let mut build = Command::new("cargo");
    build
        .args(["build", "--profile", "quick-release", "--locked", "-p", "natter-backend", "--bin", "natter"])
        .arg("--target-dir")
        .arg(root.join(RUN_TARGET_DIR))
        // Set and empty: embed nothing (backend/build.rs), whatever dist/ holds.
        .env("NATTER_EMBED_BUNDLE", "")
        .current_dir(&root);
    let server = process::Background::start(build, "the server's build", &root.join(RUN_BUILD_LOG))?;
    let env = tools::ensure_build(&root)?;
    if instances > 1 {
        tools::ensure_redis(&root, &env.path)?;
    }
    bundle::build(&root, &env)?;
    step("waiting for the server's build to finish");
    server.finish()?;
    let mut extra: Vec<&str> = extra.iter().map(String::as_str).skip_while(|a| *a == "--").collect();
    // The server has no page inside it: it serves dist/, named whole so that
    // every instance finds it whatever directory xtask was started in.
    let bundle = root.join("dist").display().to_string();
    if !extra.iter().any(|a| a.starts_with("--bundle-dir")) {
        extra.splice(0..0, ["--bundle-dir", bundle.as_str()]);
    }
    let listen = extra
        .windows(2)
        .find(|w| w[0] == "--listen")
        .map(|w| w[1].to_owned())
        .or_else(|| std::env::var("NATTER_LISTEN").ok())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let binary = root.join(RUN_TARGET_DIR).join("quick-release/natter");
    if instances > 1 {
        return instances::run(&root, &binary, &listen, instances, &extra);
    }
    println!();
    println!("  Natter is starting at  http://{listen}/");
    println!("  (history in ./natter-data; Ctrl-C stops it)");
    println!();
    let status = Command::new(&binary)
        .args(&extra)
        .current_dir(&root)
        .status()
        .with_context(|| format!("could not start {}", binary.display()))?;
    if !status.success() {
        bail!("natter exited with {status}");
    }
    Ok(())
}

fn test() -> Result<()> {
    let root = root();
    let scratch = ScratchDir::create()?;
    let env = tools::ToolEnv { tmpdir: Some(scratch.path().to_path_buf()), ..tools::ensure_all(&root)? };
    step(&format!("temporary files go to {} (removed at the end)", scratch.path().display()));
    step("checking formatting (cargo fmt --check)");
    cmd(&root, &env, "cargo", &["fmt", "--all", "--", "--check"])?;
    cmd(&root, &env, "cargo", &["fmt", "--all", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"])?;
    layers::check_repo(&root)?;
    step("linting the host build (cargo clippy --workspace --all-targets -D warnings)");
    let host = ["clippy", "--locked", "--workspace", "--all-targets", "--", "-D", "warnings"];
    cmd(&root, &env, "cargo", &host)?;
    step("linting the wasm32 build (cargo clippy --target wasm32-unknown-unknown -D warnings)");
    let wasm = [
        "clippy",
        "--locked",
        "-p",
        "natter-frontend",
        "-p",
        "natter-shared",
        "--all-targets",
        "--target",
        "wasm32-unknown-unknown",
        "--",
        "-D",
        "warnings",
    ];
    cmd(&root, &env, "cargo", &wasm)?;
    bundle::build(&root, &env)?;
    // From here on the page is built: natter embeds it.
    let env = tools::ToolEnv { embed: Some(root.join("dist")), ..env };
    step(
        "building the natter binary the end-to-end tests start, with the page inside it (cargo build -p natter-backend)",
    );
    let build = ["build", "--locked", "-p", "natter-backend", "--bin", "natter"];
    cmd(&root, &env, "cargo", &build)?;
    step("running the unit, integration and end-to-end tests (cargo test --workspace)");
    cmd(&root, &env, "cargo", &["test", "--locked", "--workspace"])?;
    browser_tests(&root, &env)?;
    let tarball = dist::package(&root, &env)?;
    dist::test(&root, &env, &tarball)?;
    tools::ensure_proxies(&root, &env.path)?;
    deploy_tests(&root, &env)?;
    step(&format!("fuzzing each target in fuzz/ for {} s (cargo xtask fuzz)", fuzz::TEST_TIME.as_secs()));
    fuzz::fuzz(&root, &env, fuzz::TARGETS, fuzz::TEST_TIME)?;
    step("all checks passed");
    Ok(())
}

/// `cargo xtask check-deploy`: installs nginx, Caddy, HAProxy,
/// redis-server and Chromium if missing, builds natter with the page
/// inside, and runs the proxy configurations of docs/deploy/ in front of
/// it, one instance or two sharing a private Redis, and the page served
/// apart by nginx in a browser (`tests/tests/deploy.rs`). `test` runs it too.
fn check_deploy() -> Result<()> {
    let root = root();
    let env = tools::ensure_build(&root)?;
    tools::ensure_proxies(&root, &env.path)?;
    tools::ensure_redis(&root, &env.path)?;
    // The page served apart is checked in a browser.
    tools::ensure_chromium(&root, &env.path)?;
    bundle::build(&root, &env)?;
    let env = tools::ToolEnv { embed: Some(root.join("dist")), ..env };
    step("building natter with the page inside it (cargo build -p natter-backend)");
    cmd(&root, &env, "cargo", &["build", "--locked", "-p", "natter-backend", "--bin", "natter"])?;
    deploy_tests(&root, &env)
}

/// The proxy checks (`tests/tests/deploy.rs`, ignored unless asked for).
fn deploy_tests(root: &Path, env: &tools::ToolEnv) -> Result<()> {
    step(
        "running nginx, Caddy and HAProxy as docs/deploy/ configures them, in front of natter, and the page served apart by nginx in Chromium (cargo test --test deploy)",
    );
    let status = env
        .command("cargo")
        .args(["test", "--locked", "-p", "natter-e2e", "--test", "deploy", "--", "--ignored"])
        .env("NATTER_DEPLOY_CHECK", "1")
        .current_dir(root)
        .status()
        .context("could not start cargo")?;
    if !status.success() {
        bail!("the proxy checks failed ({status})");
    }
    Ok(())
}

/// Runs the page's wasm-bindgen tests in headless Chromium, with a natter
/// server for the socket client to talk to.
fn browser_tests(root: &Path, env: &tools::ToolEnv) -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    step(&format!("starting natter on {listen} for the page's browser tests"));
    let mut server = Command::new(root.join("target/debug/natter"))
        .args(["--listen", &listen, "--allow-origin", "*", "--history", "memory"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("could not start target/debug/natter")?;
    let result = run_browser_tests(root, env, &listen);
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn run_browser_tests(root: &Path, env: &tools::ToolEnv, listen: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + SERVER_START;
    while std::net::TcpStream::connect(listen).is_err() {
        if std::time::Instant::now() > deadline {
            bail!("natter did not listen on {listen} within {SERVER_START:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    step("running the page's tests in headless Chromium (wasm-bindgen-test)");
    let args = [
        "test",
        "--locked",
        "-p",
        "natter-frontend",
        "--target",
        "wasm32-unknown-unknown",
        "--test",
        "components",
        "--test",
        "client",
    ];
    let status = env
        .command("cargo")
        .args(args)
        .current_dir(root)
        .env("CHROMEDRIVER", tools::CHROMEDRIVER)
        .env("WASM_BINDGEN_TEST_WEBDRIVER_JSON", root.join("frontend/webdriver.json"))
        .env("NATTER_TEST_WS", format!("ws://{listen}/ws"))
        .status()
        .context("could not start cargo")?;
    if !status.success() {
        bail!("the page's browser tests failed ({status})");
    }
    Ok(())
}
