//! Installs the pinned build tools when they are missing: the wasm32 target,
//! trunk, wasm-bindgen-cli (the exact version in Cargo.lock) and wasm-opt
//! (binaryen from the npm registry); and, from Debian's archive, Chromium
//! for the browser tests, redis-server for the Redis store's tests (and
//! `cargo xtask run --instances`), nginx, Caddy and HAProxy for the proxy
//! checks, and podman, runc and debootstrap for the Dockerfile's test.
//! Nothing is downloaded from anywhere else.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::report::step;

/// The trunk release that builds with our Rust (0.22 needs a newer rustc).
pub const TRUNK_VERSION: &str = "0.21.14";
/// The binaryen release trunk's `[tools] wasm_opt` names (npm package `binaryen@132.0.0`).
pub const WASM_OPT_VERSION: &str = "132";
/// The wasm target the page is built for.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// The environment the tools run in: `PATH` with cargo's bin directory and
/// the npm tools first.
#[derive(Debug, Clone)]
pub struct ToolEnv {
    pub path: std::ffi::OsString,
    /// `TMPDIR` for the tools, when a run keeps its temporary files apart.
    pub tmpdir: Option<std::path::PathBuf>,
    /// The built page to embed into `natter` (`NATTER_EMBED_BUNDLE`, read by
    /// backend/build.rs), once it has been built.
    pub embed: Option<std::path::PathBuf>,
}

impl ToolEnv {
    /// `program` with this environment.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("PATH", &self.path);
        if let Some(tmpdir) = &self.tmpdir {
            command.env("TMPDIR", tmpdir);
        }
        if let Some(bundle) = &self.embed {
            command.env("NATTER_EMBED_BUNDLE", bundle);
        }
        command
    }
}

fn output(program: &str, args: &[&str], path: &std::ffi::OsStr) -> Option<String> {
    let out = Command::new(program).args(args).env("PATH", path).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Cargo's release profile for the tools we `cargo install` (trunk,
/// wasm-bindgen-cli): their own profiles ask for fat LTO and one codegen
/// unit, which compiles their last crate on one core for minutes. Neither
/// tool's own speed matters (trunk runs cargo and the others; wasm-bindgen
/// rewrites one file): built unoptimized they install in 2.1 and 0.8
/// minutes instead of 4.3 and 2.8 here, and a page build with them took
/// 24.5 s against 23.2 s, its output byte for byte the same.
const INSTALL_PROFILE: &[(&str, &str)] = &[
    ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0"),
    ("CARGO_PROFILE_RELEASE_LTO", "off"),
    ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"),
    ("CARGO_PROFILE_RELEASE_DEBUG", "false"),
    ("CARGO_PROFILE_RELEASE_INCREMENTAL", "false"),
];

/// Runs `program ARGS` in `dir`; whether it succeeded.
pub fn run(dir: &Path, program: &str, args: &[&str], path: &std::ffi::OsStr) -> Result<bool> {
    let mut command = Command::new(program);
    command.args(args).current_dir(dir).env("PATH", path);
    if program == "cargo" && args.first() == Some(&"install") {
        command.envs(INSTALL_PROFILE.iter().copied());
    }
    let status = command.status().with_context(|| format!("could not start {program}"))?;
    Ok(status.success())
}

/// The version of `name` recorded in Cargo.lock.
pub fn locked_version(root: &Path, name: &str) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let header = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == header
            && let Some(version) = lines.next().and_then(|l| l.trim().strip_prefix("version = \""))
        {
            return Ok(version.trim_end_matches('"').to_owned());
        }
    }
    bail!("{name} is not in Cargo.lock")
}

/// Makes sure every tool is installed at its pinned version: those that
/// build the page ([`ensure_build`]) and those the tests need (Chromium,
/// redis-server).
pub fn ensure_all(root: &Path) -> Result<ToolEnv> {
    let env = ensure_build(root)?;
    ensure_chromium(root, &env.path)?;
    ensure_redis(root, &env.path)?;
    Ok(env)
}

/// Makes sure what builds the page is installed (the wasm32 target, trunk,
/// wasm-bindgen-cli, wasm-opt): all `run`, `bundle` and `dist` need.
pub fn ensure_build(root: &Path) -> Result<ToolEnv> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let npm_bin = root.join("xtask/tools/node_modules/.bin");
    let mut dirs = vec![home.join("bin"), npm_bin.clone()];
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    let path = std::env::join_paths(dirs).context("building PATH")?;

    let targets = output("rustup", &["target", "list", "--installed"], &path).unwrap_or_default();
    if !targets.lines().any(|t| t.trim() == WASM_TARGET) {
        step(&format!("installing the {WASM_TARGET} Rust target (rustup target add)"));
        if !run(root, "rustup", &["target", "add", WASM_TARGET], &path)? {
            bail!("rustup could not add {WASM_TARGET}");
        }
    }

    let trunk = output("trunk", &["--version"], &path).unwrap_or_default();
    if !trunk.split_whitespace().any(|w| w == TRUNK_VERSION) {
        step(&format!("installing trunk {TRUNK_VERSION} (cargo install, unoptimized; about 2 minutes, once)"));
        // No default features: no TLS stack and no update check, which a
        // trunk that only builds offline never uses (fewer crates to build).
        let args = ["install", "trunk", "--version", TRUNK_VERSION, "--locked", "--no-default-features"];
        if !run(root, "cargo", &args, &path)? {
            bail!("cargo install trunk {TRUNK_VERSION} failed");
        }
    }

    let bindgen_version = locked_version(root, "wasm-bindgen")?;
    let bindgen = output("wasm-bindgen", &["--version"], &path).unwrap_or_default();
    if !bindgen.split_whitespace().any(|w| w == bindgen_version) {
        step(&format!(
            "installing wasm-bindgen-cli {bindgen_version} to match Cargo.lock (cargo install, unoptimized; about a minute, once)"
        ));
        let v = bindgen_version.as_str();
        // No default features: no TLS stack (rustls and ring, C and
        // assembly to compile); the test runner only speaks plain HTTP, to
        // a chromedriver on loopback.
        let install = ["install", "wasm-bindgen-cli", "--version", v, "--no-default-features", "--force"];
        let locked_args: Vec<&str> = install.iter().copied().chain(["--locked"]).collect();
        if !run(root, "cargo", &locked_args, &path)? {
            step("retrying without --locked (this crates.io mirror lacks some locked versions)");
            if !run(root, "cargo", &install, &path)? {
                bail!("cargo install wasm-bindgen-cli {v} failed");
            }
        }
    }

    let wasm_opt = output("wasm-opt", &["--version"], &path).unwrap_or_default();
    if !npm_bin.join("wasm-opt").exists() || !wasm_opt.contains(&format!("version {WASM_OPT_VERSION}")) {
        step(&format!("installing wasm-opt {WASM_OPT_VERSION} (npm ci of binaryen in xtask/tools)"));
        if !run(&root.join("xtask/tools"), "npm", &["ci", "--no-audit", "--no-fund"], &path)? {
            bail!("npm ci in xtask/tools failed; is Node.js with npm installed?");
        }
    }
    Ok(ToolEnv { path, tmpdir: None, embed: None })
}

/// Debian's Chromium and its WebDriver, for the browser tests.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// chromedriver from Debian's `chromium-driver`.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub fn ensure_chromium(root: &Path, path: &std::ffi::OsStr) -> Result<()> {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return Ok(());
    }
    step(
        "installing Chromium and chromedriver for the browser tests (apt-get install chromium chromium-driver; about a minute)",
    );
    apt_install(root, path, &["chromium", "chromium-driver"])
}

/// Debian's Redis server, which the Redis store's tests start privately.
pub const REDIS_SERVER: &str = "redis-server";

/// Installs Debian's `redis-server` when it is not on `PATH`: the backend's
/// Redis tests, the two-instance proxy check and `cargo xtask run
/// --instances` start their own and fail without it.
pub fn ensure_redis(root: &Path, path: &std::ffi::OsStr) -> Result<()> {
    if output(REDIS_SERVER, &["--version"], path).is_some() {
        return Ok(());
    }
    step(
        "installing redis-server for the Redis store (apt-get install redis-server; the tests and `cargo xtask run --instances` start their own, no service is enabled for them)",
    );
    apt_install(root, path, &["redis-server"])
}

/// Debian's nginx, Caddy and HAProxy, for `cargo xtask check-deploy` (the
/// proxy configurations of docs/deploy/ run in front of natter).
pub fn ensure_proxies(root: &Path, path: &std::ffi::OsStr) -> Result<()> {
    let installed = |paths: &[&str]| paths.iter().any(|p| Path::new(p).exists());
    let nginx = installed(&["/usr/sbin/nginx", "/usr/bin/nginx"]);
    let caddy = output("caddy", &["version"], path).is_some();
    let haproxy = installed(&["/usr/sbin/haproxy", "/usr/bin/haproxy"]);
    // The TLS check makes its self-signed certificate with openssl.
    let openssl = output("openssl", &["version"], path).is_some();
    let present = [("nginx", nginx), ("caddy", caddy), ("haproxy", haproxy), ("openssl", openssl)];
    install_missing(
        root,
        path,
        &present,
        "for the proxy checks (apt-get install; the checks start their own on loopback)",
    )
}

/// Installs the packages of `present` that are not (`(package, present)`),
/// saying what they are `for`.
fn install_missing(root: &Path, path: &std::ffi::OsStr, present: &[(&str, bool)], what_for: &str) -> Result<()> {
    let missing: Vec<&str> = present.iter().filter(|(_, ok)| !ok).map(|(p, _)| *p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("installing {} {what_for}", missing.join(", ")));
    apt_install(root, path, &missing)
}

/// Debian's podman (with runc, its network backend and iptables) and
/// debootstrap, for the Dockerfile's test (`tests/tests/dist.rs`): no
/// Docker engine runs here and no image can be pulled, so the test builds
/// the Dockerfile with podman on a base image made from Debian's packages
/// (`dist::base_image`).
pub fn ensure_containers(root: &Path, path: &std::ffi::OsStr) -> Result<()> {
    let has = |program: &str, args: &[&str]| output(program, args, path).is_some();
    // By path: iptables and debootstrap live in /usr/sbin.
    let at = |path: &str| Path::new(path).exists();
    let present = [
        ("podman", has("podman", &["--version"])),
        ("runc", has("runc", &["--version"])),
        ("netavark", at("/usr/lib/podman/netavark")),
        ("iptables", at("/usr/sbin/iptables")),
        ("debootstrap", at("/usr/sbin/debootstrap")),
    ];
    let what_for = "for the Dockerfile's test (apt-get install; no Docker engine runs here, podman builds the image)";
    install_missing(root, path, &present, what_for)
}

/// Whether this process runs as root.
pub fn is_root(path: &std::ffi::OsStr) -> bool {
    output("id", &["-u"], path).is_some_and(|id| id.trim() == "0")
}

/// Runs `program ARGS` as root: directly when root, else through sudo.
fn as_root(dir: &Path, program: &str, args: &[&str], path: &std::ffi::OsStr) -> Result<bool> {
    if is_root(path) {
        return run(dir, program, args, path);
    }
    let all: Vec<&str> = std::iter::once(program).chain(args.iter().copied()).collect();
    run(dir, "sudo", &all, path)
}

/// `apt-get install -y --no-install-recommends PACKAGES` (through sudo
/// unless root), refreshing the package lists and retrying once if it fails.
fn apt_install(root: &Path, path: &std::ffi::OsStr, packages: &[&str]) -> Result<()> {
    let apt = |args: &[&str]| as_root(root, "apt-get", args, path);
    let install: Vec<&str> = ["install", "-y", "--no-install-recommends"].iter().chain(packages).copied().collect();
    if !apt(&install)? {
        step("refreshing the package lists (apt-get update) and retrying");
        if !apt(&["update"])? || !apt(&install)? {
            bail!("could not install {} with apt-get", packages.join(" "));
        }
    }
    Ok(())
}
