//! `cargo xtask dist`: the release tarball, then its test.
//!
//! `target/dist/natter-VERSION-ARCH-linux.tar.gz` holds one directory with
//! the `natter` binary (the page inside it), the README, an example
//! environment file, a systemd unit and a Dockerfile (`xtask/package/`).
//! The tarball is then tested as a user would use it: `tests/tests/dist.rs`
//! unpacks it into a temporary directory, checks the unit with
//! `systemd-analyze verify`, starts the binary and chats through it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::bundle;
use crate::process::cmd;
use crate::report::step;
use crate::tools::{self, ToolEnv};

/// Files of `xtask/package/` that go into the tarball as they are.
const PACKAGED: &[&str] = &["natter.service", "natter.env.example", "Dockerfile"];

/// Builds the tarball and tests it; returns its path.
pub fn dist(root: &Path) -> Result<PathBuf> {
    let env = tools::ensure_build(root)?;
    bundle::build(root, &env)?;
    let tarball = package(root, &env)?;
    test(root, &env, &tarball)?;
    step(&format!("the tarball is {}", tarball.display()));
    Ok(tarball)
}

/// Builds the release binary with the page (already built in `dist/`)
/// inside it, and the tarball.
pub fn package(root: &Path, env: &ToolEnv) -> Result<PathBuf> {
    let env = ToolEnv { embed: Some(root.join("dist")), ..env.clone() };
    step("building the release binary with the page inside it (cargo build --release -p natter-backend)");
    cmd(root, &env, "cargo", &["build", "--release", "--locked", "-p", "natter-backend", "--bin", "natter"])?;
    let name = format!("natter-{}-{}-linux", env!("CARGO_PKG_VERSION"), std::env::consts::ARCH);
    let out = root.join("target/dist");
    let dir = out.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing the old {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    step(&format!("packing {name}.tar.gz"));
    let copy = |from: PathBuf, to: &str| {
        std::fs::copy(&from, dir.join(to)).with_context(|| format!("copying {}", from.display())).map(|_| ())
    };
    copy(root.join("target/release/natter"), "natter")?;
    copy(root.join("README.md"), "README.md")?;
    for file in PACKAGED {
        copy(root.join("xtask/package").join(file), file)?;
    }
    let tarball = out.join(format!("{name}.tar.gz"));
    cmd(&out, &env, "tar", &["--owner=0", "--group=0", "-czf", &format!("{name}.tar.gz"), &name])?;
    Ok(tarball)
}

/// Runs the tarball's test (`tests/tests/dist.rs`, ignored unless given a tarball).
pub fn test(root: &Path, env: &ToolEnv, tarball: &Path) -> Result<()> {
    step("testing the tarball: unpack, check the unit, start natter, chat (cargo test --test dist)");
    let status = env
        .command("cargo")
        .args(["test", "--locked", "-p", "natter-e2e", "--test", "dist", "--", "--ignored"])
        .env("NATTER_DIST_TARBALL", tarball)
        .current_dir(root)
        .status()
        .context("could not start cargo")?;
    anyhow::ensure!(status.success(), "the tarball's test failed ({status})");
    Ok(())
}
