//! The release tarball as a user gets it (`cargo xtask dist` builds it and
//! runs this with `NATTER_DIST_TARBALL` naming it): unpacked into an empty
//! directory, its systemd unit checked, its binary started with nothing
//! beside it, the page served and a chat held through it.

use std::path::{Path, PathBuf};
use std::process::Command;

use natter_e2e::{Natter, RemoveOnDrop, WsClient, fresh_temp_path};
use natter_shared::{ClientMsg, Say, ServerMsg, close};

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
    let mut ada = WsClient::connect(&natter.ws_url()).await;
    let mut bo = WsClient::connect(&natter.ws_url()).await;
    ada.join("Ada", "lobby").await;
    bo.join("Bo", "lobby").await;
    ada.send(&ClientMsg::Say(Say { cid: "1".into(), text: "from the tarball".into() })).await;
    loop {
        if let ServerMsg::Message(m) = bo.recv().await {
            assert_eq!(m.text.as_str(), "from the tarball");
            break;
        }
    }
    natter.signal("TERM");
    assert_eq!(ada.close_code().await, Some(close::SERVICE_RESTART));
    assert!(natter.wait().success());
    assert!(data.join("natter.db").is_file(), "the history was kept in --data-dir");
}

/// A GET of `path` (the raw response, body included).
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(natter_e2e::WAIT)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response");
    String::from_utf8_lossy(&raw).into_owned()
}
