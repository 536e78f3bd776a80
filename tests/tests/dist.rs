//! The release tarball as a user gets it (`cargo xtask dist` builds it and
//! runs this with `NATTER_DIST_TARBALL` naming it): unpacked into an empty
//! directory, its systemd unit checked, its binary started with nothing
//! beside it, the page served and a chat held through it; and its
//! Dockerfile built with podman and the image run as documented.

use std::path::{Path, PathBuf};
use std::process::Command;

use natter_e2e::{Natter, RemoveOnDrop, WsClient, fresh_temp_path};
use natter_shared::{ClientMsg, RoomEvent, Say, ServerMsg, close};

const FILES: &[&str] = &["natter", "README.md", "natter.env.example", "natter.service", "Dockerfile"];

/// The tarball under test.
fn tarball() -> PathBuf {
    let path = std::env::var_os("NATTER_DIST_TARBALL")
        .map(PathBuf::from)
        .expect("NATTER_DIST_TARBALL names the tarball; `cargo xtask dist` builds it and runs this test");
    assert!(path.is_file(), "{} is not a file", path.display());
    path
}

/// Unpacks `tarball` into `into`; returns the directory it holds.
fn unpack(tarball: &Path, into: &Path) -> PathBuf {
    std::fs::create_dir_all(into).expect("create");
    let status = Command::new("tar").arg("-xzf").arg(tarball).arg("-C").arg(into).status().expect("run tar");
    assert!(status.success(), "tar -xzf failed");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(into).expect("read").map(|e| e.expect("entry").path()).collect();
    assert_eq!(dirs.len(), 1, "one top directory: {dirs:?}");
    dirs.remove(0)
}

#[tokio::test]
#[ignore = "run by `cargo xtask dist` (and `cargo xtask test`), which builds the tarball"]
async fn the_tarball_unpacks_to_a_server_that_serves_its_page_and_chats() {
    let scratch = RemoveOnDrop(fresh_temp_path("dist"));
    let dir = unpack(&tarball(), &scratch.0);
    for file in FILES {
        assert!(dir.join(file).is_file(), "the tarball lacks {file}");
    }
    let bin = dir.join("natter");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&bin).expect("natter").permissions());
    assert_eq!(mode & 0o111, 0o111, "natter is executable");

    // The unit is one systemd accepts, every option known to it.
    let unit = std::fs::read_to_string(dir.join("natter.service")).expect("unit");
    for option in ["DynamicUser=yes", "StateDirectory=natter", "NoNewPrivileges=yes", "ProtectSystem=strict"] {
        assert!(unit.contains(option), "the unit lacks {option}");
    }
    let checked = scratch.0.join("natter.service");
    std::fs::write(&checked, unit.replace("/usr/local/bin/natter", &bin.display().to_string())).expect("write");
    let verify = Command::new("systemd-analyze").arg("verify").arg(&checked).output().expect("run systemd-analyze");
    let complaints = String::from_utf8_lossy(&verify.stderr).into_owned();
    assert!(verify.status.success() && complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");
    let docker = std::fs::read_to_string(dir.join("Dockerfile")).expect("Dockerfile");
    for line in ["USER 10001", "HEALTHCHECK", "COPY natter /usr/local/bin/natter"] {
        assert!(docker.contains(line), "the Dockerfile lacks {line}");
    }
    assert!(docker.matches("\nFROM ").count() >= 2, "a multi-stage build");

    // The binary alone: it serves the page it holds, and a chat.
    let data = scratch.0.join("data");
    let mut natter = Natter::start_binary(&bin, "127.0.0.1:0", &["--data-dir", &data.display().to_string()]);
    assert!(
        natter.startup.iter().any(|l| l.contains("serving the page built into this binary")),
        "{:?}",
        natter.startup
    );
    let page = http_get(natter.addr, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>"), "{page}");
    let (mut ada, _bo) = two_chatting(&natter.ws_url(), "from the tarball").await;
    natter.signal("TERM");
    assert_eq!(ada.close_code().await, Some(close::SERVICE_RESTART));
    assert!(natter.wait().success());
    assert!(data.join("natter.db").is_file(), "the history was kept in --data-dir");
}

/// Ada and Bo join the lobby at `url` and Ada says `text`, which Bo hears.
async fn two_chatting(url: &str, text: &str) -> (WsClient, WsClient) {
    let mut ada = WsClient::connect(url).await;
    let mut bo = WsClient::connect(url).await;
    ada.join("Ada", "lobby").await;
    bo.join("Bo", "lobby").await;
    ada.send(&ClientMsg::Say(Say::new("1", text))).await;
    loop {
        if let ServerMsg::Message(m) = bo.recv().await {
            assert_eq!(m.text.as_str(), text);
            return (ada, bo);
        }
    }
}

/// A GET of `path` (the raw response, body included).
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// A GET of `path`, or the I/O error that stopped it.
fn try_http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(natter_e2e::WAIT))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// The base image the Dockerfile names, as `cargo xtask dist` provides it
/// on a machine that cannot pull images: made by `debootstrap --variant=
/// minbase bookworm` from Debian's packages and imported under this name.
const BASE_IMAGE: &str = "localhost/debian:bookworm-slim";
/// The limits the container is started with. podman asks by default for
/// more open files and processes than a process may raise itself to without
/// `CAP_SYS_RESOURCE` (which this machine's root lacks); limits at or under
/// the current ones are accepted everywhere, and a chat needs few.
const CONTAINER_NOFILE: &str = "nofile=4096:4096";
const CONTAINER_NPROC: &str = "nproc=1024:1024";
/// How long `podman stop` lets natter drain before it kills it.
const STOP_GRACE_SECS: &str = "10";

/// `podman ARGS` with the runc runtime (crun refuses this machine's hybrid
/// cgroup hierarchy); its stdout, or a panic with its stderr.
fn podman(args: &[&str]) -> String {
    let out = Command::new("podman").arg("--runtime").arg("runc").args(args).output().expect("run podman");
    assert!(
        out.status.success(),
        "podman {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The image, containers and volume of one test run, removed at the end
/// whatever happened.
struct PodmanThings {
    image: String,
    containers: Vec<String>,
    volume: String,
}

impl Drop for PodmanThings {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("podman").arg("--runtime").arg("runc").args(args).output();
        };
        for c in &self.containers {
            quiet(&["rm", "--force", "--time", "0", c]);
        }
        quiet(&["volume", "rm", "--force", &self.volume]);
        quiet(&["rmi", "--force", &self.image]);
    }
}

/// Starts the image as the README documents it (the data on a volume, the
/// port published), on a loopback port of the host.
fn podman_run(things: &PodmanThings, name: &str, port: u16) {
    let publish = format!("127.0.0.1:{port}:8080");
    let public = format!("NATTER_PUBLIC_URLS=http://127.0.0.1:{port}");
    let volume = format!("{}:/data", things.volume);
    let args = [
        "run",
        "--detach",
        "--name",
        name,
        "--ulimit",
        CONTAINER_NOFILE,
        "--ulimit",
        CONTAINER_NPROC,
        "--publish",
        &publish,
        "--volume",
        &volume,
        "--env",
        &public,
        &things.image,
    ];
    podman(&args);
}

/// Waits (bounded) until `/readyz` answers 200 on `port`.
fn wait_ready(port: u16, name: &str) {
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = std::time::Instant::now() + natter_e2e::START_TIMEOUT;
    loop {
        if probe_ready(addr) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let logs = Command::new("podman").args(["logs", name]).output().expect("podman logs");
            panic!(
                "the container answered no /readyz within {:?}: {}{}",
                natter_e2e::START_TIMEOUT,
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Whether `/readyz` answers 200; false on any error (the container's
/// port may accept and reset while natter starts).
fn probe_ready(addr: std::net::SocketAddr) -> bool {
    try_http_get(addr, "/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

#[tokio::test]
#[ignore = "run by `cargo xtask dist` (and `cargo xtask test`), which installs podman and makes the base image"]
async fn the_dockerfile_builds_an_image_that_runs_unprivileged_passes_its_healthcheck_and_keeps_history() {
    let scratch = RemoveOnDrop(fresh_temp_path("image"));
    let dir = unpack(&tarball(), &scratch.0);
    let id = std::process::id();
    let mut things = PodmanThings {
        image: format!("localhost/natter-dist-test:{id}"),
        containers: Vec::new(),
        volume: format!("natter-dist-test-{id}"),
    };
    // No pull: the base image is the local one (xtask makes it).
    let base = Command::new("podman").args(["image", "exists", BASE_IMAGE]).status().expect("run podman");
    assert!(base.success(), "no {BASE_IMAGE}: `cargo xtask dist` (as root) makes it with debootstrap");
    // `docker` format: the OCI format has no HEALTHCHECK. No layers kept:
    // the first stage's image would stay behind, nameless.
    let context = dir.display().to_string();
    podman(&["build", "--pull=never", "--layers=false", "--format", "docker", "--tag", &things.image, &context]);
    podman(&["volume", "create", &things.volume]);

    // The image as documented: natter runs as uid 10001, answers its
    // HEALTHCHECK, and chats on the published port.
    let first = format!("natter-dist-test-{id}-a");
    things.containers.push(first.clone());
    let port = free_port();
    podman_run(&things, &first, port);
    wait_ready(port, &first);
    // The server is the container's first process; its real uid:
    let status = podman(&["exec", &first, "cat", "/proc/1/status"]);
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
    assert_eq!(uid, Some("10001"), "natter runs unprivileged: {status}");
    // `healthcheck run` runs the image's HEALTHCHECK command once; it fails
    // (exit 1, "unhealthy") when the command does.
    podman(&["healthcheck", "run", &first]);
    assert_eq!(podman(&["inspect", "--format", "{{.State.Health.Status}}", &first]), "healthy");

    let (mut ada, mut bo) = two_chatting(&format!("ws://127.0.0.1:{port}/ws"), "from the image").await;

    // `podman stop` sends the image's STOPSIGNAL: natter closes its
    // sockets with 1012 and exits 0 well within the grace. The clients
    // answer the close meanwhile (podman waits on its own thread).
    let name = first.clone();
    let stop = tokio::task::spawn_blocking(move || podman(&["stop", "--time", STOP_GRACE_SECS, &name]));
    assert_eq!(ada.close_code().await, Some(close::SERVICE_RESTART));
    assert_eq!(bo.close_code().await, Some(close::SERVICE_RESTART));
    stop.await.expect("podman stop");
    assert_eq!(podman(&["inspect", "--format", "{{.State.ExitCode}}", &first]), "0");

    // A new container on the same volume (an upgrade) has the history.
    let second = format!("natter-dist-test-{id}-b");
    things.containers.push(second.clone());
    let port = free_port();
    podman_run(&things, &second, port);
    wait_ready(port, &second);
    let mut cy = WsClient::connect(&format!("ws://127.0.0.1:{port}/ws")).await;
    let ServerMsg::Welcome(welcome) = cy.hello("Cy", "lobby").await else { panic!("welcome") };
    let kept =
        welcome.history.iter().any(|e| matches!(e, RoomEvent::Message(m) if m.text.as_str() == "from the image"));
    assert!(kept, "the history on the volume outlives the container: {:?}", welcome.history);
}
