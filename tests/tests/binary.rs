//! The real `natter` binary: flags, startup errors, chat, and signals.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use natter_e2e::{Natter, RemoveOnDrop, WAIT, WsClient, fresh_temp_path, natter_bin};
use natter_shared::{ClientMsg, Say, ServerMsg, close};

#[test]
fn help_explains_every_flag_and_its_variable() {
    let out = Command::new(natter_bin()).arg("--help").output().expect("run natter --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--bundle-dir",
        "--allow-origin",
        "--public-url",
        "--server-name",
        "--healthz-detail",
        "--metrics-listen",
        "--log-format",
        "--max-connections",
        "--max-rooms",
        "--outbound-queue",
        "--write-coalesce",
        "--rate-per-sec",
        "--rate-burst",
        "--ping-interval",
        "--pong-timeout",
        "--leave-grace",
        "--shutdown-timeout",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    for var in ["NATTER_LISTEN", "NATTER_BUNDLE_DIR", "NATTER_ALLOW_ORIGINS", "NATTER_PING_INTERVAL"] {
        assert!(help.contains(var), "--help lacks {var}");
    }
    assert!(help.contains("127.0.0.1:8080"), "the default address is shown");
}

#[test]
fn a_taken_port_is_a_clear_error_and_exit_code_1() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = Command::new(natter_bin()).args(["--listen", &addr]).output().expect("run natter");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = Command::new(natter_bin())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", &addr])
        .output()
        .expect("run natter");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot listen for metrics on {addr}")), "{stderr}");
}

#[test]
fn a_data_directory_inside_the_bundle_directory_is_refused_with_exit_code_2() {
    let bundle = RemoveOnDrop(fresh_temp_path("bundle"));
    std::fs::create_dir_all(&bundle.0).expect("create the bundle directory");
    let data = bundle.0.join("natter-data");
    let mut child = Command::new(natter_bin())
        .args(["--listen", "127.0.0.1:0", "--bundle-dir"])
        .arg(&bundle.0)
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run natter");
    // A server that starts instead would never exit: bound the wait.
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("natter's output");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is inside the bundle directory"), "{stderr}");
    assert!(!stderr.contains("is running at"), "{stderr}");
    assert!(!data.exists(), "nothing was created in the bundle directory");
}

#[test]
fn a_data_directory_in_use_is_a_clear_error_without_a_url() {
    let first = Natter::start(&[]);
    let data = first.data_dir.display().to_string();
    let out = Command::new(natter_bin())
        .args(["--listen", "127.0.0.1:0", "--data-dir", &data])
        .env("RUST_LOG", "info")
        .output()
        .expect("run natter");
    assert_eq!(out.status.code(), Some(1));
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(output.contains("another natter is using"), "{output}");
    assert!(!output.contains("is running at"), "no URL for a server that did not start: {output}");
    assert!(!output.contains("panicked"), "{output}");
}

#[test]
fn an_invalid_flag_value_is_a_clear_error() {
    let out = Command::new(natter_bin()).args(["--allow-origin", "not-an-origin"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-origin"));
    let out = Command::new(natter_bin()).args(["--ping-interval", "soon"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("soon"));
}

#[tokio::test]
async fn two_clients_chat_through_the_binary_and_sigterm_closes_with_1012() {
    let mut natter = Natter::start(&[]);
    let mut ada = WsClient::connect(&natter.ws_url()).await;
    let mut bob = WsClient::connect(&natter.ws_url()).await;
    ada.join("Ada", "lobby").await;
    bob.join("Bob", "lobby").await;
    assert!(matches!(ada.recv().await, ServerMsg::Notice(n) if n.name.as_str() == "Bob"));
    ada.send(&ClientMsg::Say(Say::new("1", "secret words"))).await;
    assert!(matches!(ada.recv().await, ServerMsg::Ack(_)));
    assert!(matches!(bob.recv().await, ServerMsg::Message(m) if m.text.as_str() == "secret words"));

    natter.signal("TERM");
    assert_eq!(ada.close_code().await, Some(close::SERVICE_RESTART));
    assert_eq!(bob.close_code().await, Some(close::SERVICE_RESTART));
    let status = natter.wait();
    assert!(status.success(), "exit 0 after SIGTERM, got {status}");
    // The log never contains message text.
    let log: Vec<String> = natter.lines.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("SIGTERM")), "{log:?}");
    assert!(!log.iter().any(|l| l.contains("secret words")), "message text must not be logged");
}

#[tokio::test]
async fn sigint_stops_the_server_too() {
    let mut natter = Natter::start(&[]);
    let mut ada = WsClient::connect(&natter.ws_url()).await;
    assert!(matches!(ada.hello("Ada", "lobby").await, ServerMsg::Welcome(_)));
    natter.signal("INT");
    assert_eq!(ada.close_code().await, Some(close::SERVICE_RESTART));
    assert!(natter.wait().success());
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_with_a_line_per_connection_end_and_nothing_said() {
    let mut natter = Natter::start(&["--log-format", "json"]);
    let mut ada = WsClient::connect(&natter.ws_url()).await;
    let ServerMsg::Welcome(welcome) = ada.hello("Ada", "lobby").await else { panic!("welcome") };
    ada.send(&ClientMsg::Say(Say::new("1", "secret words"))).await;
    loop {
        if matches!(ada.recv().await, ServerMsg::Ack(_)) {
            break;
        }
    }
    ada.ws.close(None).await.expect("close");
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ada.ws.next()).await {}
    // The end is logged once the server has settled the connection.
    let deadline = Instant::now() + WAIT;
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("connection ended")) {
        let left = deadline.checked_duration_since(Instant::now()).expect("a `connection ended` line in time");
        log.push(natter.lines.recv_timeout(left).expect("a log line"));
    }
    natter.signal("TERM");
    assert!(natter.wait().success());
    log.extend(natter.lines.try_iter());

    let objects: Vec<serde_json::Value> = log
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect();
    assert!(objects.iter().all(|o| o["level"].is_string() && o["message"].is_string()), "{log:?}");
    let ended = objects.iter().find(|o| o["message"] == "connection ended").expect("a connection end line");
    assert_eq!(ended["reason"], "peer_closed", "{ended}");
    assert_eq!(ended["code"], "1005", "{ended}");
    assert!(ended["duration_ms"].is_u64(), "{ended}");
    for secret in ["secret words", "Ada", welcome.resume_token.as_str()] {
        assert!(!log.iter().any(|l| l.contains(secret)), "{secret:?} must not be logged: {log:?}");
    }
}

#[tokio::test]
async fn natter_backup_copies_the_database_of_a_running_server() {
    let natter = Natter::start(&[]);
    let mut ada = WsClient::connect(&natter.ws_url()).await;
    ada.join("Ada", "lobby").await;
    ada.send(&ClientMsg::Say(Say::new("1", "keep me"))).await;
    loop {
        if matches!(ada.recv().await, ServerMsg::Ack(_)) {
            break;
        }
    }
    let out = RemoveOnDrop(fresh_temp_path("backup"));
    std::fs::create_dir_all(&out.0).expect("create");
    let dest = out.0.join("natter-backup.db");
    let run = || {
        Command::new(natter_bin())
            .arg("backup")
            .arg("--data-dir")
            .arg(&natter.data_dir)
            .arg(&dest)
            .output()
            .expect("run natter backup")
    };
    let first = run();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("backed up 2 events of 1 rooms"), "{stderr}");
    assert!(dest.exists());
    let again = run();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

/// A GET of `path` with `extra` header lines: status, lower-cased headers, raw body.
fn get(addr: std::net::SocketAddr, path: &str, extra: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n").expect("request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn the_page_built_into_the_binary_is_served_compressed_with_etags_and_caching() {
    use std::io::Read;
    let natter = Natter::start(&[]);
    let log = &natter.startup;
    assert!(
        log.iter().any(|l| l.contains("serving the page built into this binary")),
        "this natter has no page inside (cargo xtask test builds it with one): {log:?}"
    );
    let dist = natter_e2e::bundle_dir();

    // The page, gzip-compressed: exactly dist/index.html once inflated.
    let (status, headers, body) = get(natter.addr, "/", "Accept-Encoding: gzip\r\n");
    assert_eq!(status, 200);
    assert_eq!(header_of(&headers, "content-encoding"), Some("gzip"));
    assert_eq!(header_of(&headers, "cache-control"), Some("no-cache"));
    assert!(header_of(&headers, "content-security-policy").is_some_and(|c| c.contains("'sha256-")));
    let mut page = Vec::new();
    flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut page).expect("valid gzip");
    assert_eq!(page, std::fs::read(dist.join("index.html")).expect("dist/index.html"));
    // An app route is the page too; a missing asset is a 404.
    assert_eq!(get(natter.addr, "/r/lobby", "").0, 200);
    assert_eq!(get(natter.addr, "/missing-0123456789abcdef.js", "").0, 404);

    // The wasm: brotli for a browser that takes it, cached for good, 304 when unchanged.
    let wasm = std::fs::read_dir(&dist)
        .expect("dist")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.ends_with(".wasm"))
        .expect("a wasm file");
    let (status, headers, body) = get(natter.addr, &format!("/{wasm}"), "Accept-Encoding: gzip, deflate, br\r\n");
    assert_eq!(status, 200);
    assert_eq!(header_of(&headers, "content-encoding"), Some("br"));
    assert_eq!(header_of(&headers, "content-type"), Some("application/wasm"));
    assert_eq!(header_of(&headers, "cache-control"), Some("public, max-age=31536000, immutable"));
    let raw = std::fs::metadata(dist.join(&wasm)).expect("wasm").len();
    assert!((body.len() as u64) < raw / 2, "brotli: {} of {raw} bytes", body.len());
    let etag = header_of(&headers, "etag").expect("an etag").to_owned();
    let (status, _, body) = get(natter.addr, &format!("/{wasm}"), &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(status, 304);
    assert!(body.is_empty());
}
