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

/// The image the Dockerfile starts `FROM`, under the name podman finds
/// first for `debian:bookworm-slim` without pulling.
pub const BASE_IMAGE: &str = "localhost/debian:bookworm-slim";
/// The Debian release of the base image (the Dockerfile's `bookworm`).
const BASE_SUITE: &str = "bookworm";
/// Where debootstrap takes the packages from: Debian's archive, the source
/// apt uses on our machines.
const BASE_MIRROR: &str = "http://deb.debian.org/debian";
/// The image test's name in `tests/tests/dist.rs` (skipped unless root).
const IMAGE_TEST: &str = "the_dockerfile_builds_an_image";

/// Makes [`BASE_IMAGE`] unless podman has it: this machine cannot pull
/// images, so the base is Debian's minimal system (`debootstrap
/// --variant=minbase`, from Debian's packages), imported into podman. It
/// has what the Dockerfile uses of the official slim image (`useradd`,
/// `bash`); about 30 s, once per machine.
pub fn base_image(root: &Path, env: &ToolEnv) -> Result<()> {
    let exists = env.command("podman").args(["image", "exists", BASE_IMAGE]).status();
    if exists.is_ok_and(|s| s.success()) {
        return Ok(());
    }
    step(&format!(
        "making the Dockerfile's base image {BASE_IMAGE} from Debian's packages (debootstrap --variant=minbase {BASE_SUITE}; about 30 s, once)"
    ));
    let work = WorkDir(root.join("target/tmp/base-image"));
    // A failed earlier attempt may have left a half-made system behind.
    work.remove()?;
    std::fs::create_dir_all(&work.0).with_context(|| format!("creating {}", work.0.display()))?;
    let rootfs_arg = work.0.join("rootfs").display().to_string();
    let made =
        tools::run(root, "debootstrap", &["--variant=minbase", BASE_SUITE, &rootfs_arg, BASE_MIRROR], &env.path)?;
    anyhow::ensure!(made, "debootstrap could not make the base system in {rootfs_arg}");
    let tar = work.0.join("rootfs.tar").display().to_string();
    cmd(root, env, "tar", &["--numeric-owner", "-C", &rootfs_arg, "-cf", &tar, "."])?;
    cmd(root, env, "podman", &["import", "--quiet", &tar, BASE_IMAGE])?;
    work.remove()
}

/// The base image's scratch directory, removed whatever happens.
struct WorkDir(PathBuf);

impl WorkDir {
    fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.0.display()))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            step(&format!("could not remove the base image's scratch directory: {e:#}"));
        }
    }
}

/// Runs the tarball's tests (`tests/tests/dist.rs`, ignored unless given a
/// tarball): the unpacked directory, and the image its Dockerfile builds.
pub fn test(root: &Path, env: &ToolEnv, tarball: &Path) -> Result<()> {
    let mut args = vec!["test", "--locked", "-p", "natter-e2e", "--test", "dist", "--", "--ignored"];
    // The image test runs podman rootful (the base image, the storage and
    // the published port are root's).
    if tools::is_root(&env.path) {
        tools::ensure_containers(root, &env.path)?;
        base_image(root, env)?;
        step(
            "testing the tarball: unpack, check the unit, start natter, chat; build its Dockerfile with podman, run the image, chat (cargo test --test dist)",
        );
    } else {
        step(
            "testing the tarball: unpack, check the unit, start natter, chat (cargo test --test dist); NOT building its Dockerfile: that test runs podman as root (run xtask as root to include it)",
        );
        args.extend(["--skip", IMAGE_TEST]);
    }
    let status = env
        .command("cargo")
        .args(&args)
        .env("NATTER_DIST_TARBALL", tarball)
        .current_dir(root)
        .status()
        .context("could not start cargo")?;
    anyhow::ensure!(status.success(), "the tarball's test failed ({status})");
    Ok(())
}
