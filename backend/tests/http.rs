//! Plain HTTP: static files with caching, SPA fallback, health, and the
//! helpful page when no bundle has been built.

mod common;

use common::{TempDir, TestServer, config, header, http_get, http_request, temp_dir};
use natter_backend::config::names::Names;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fresh bundle directory with an index, a hashed asset and a plain file
/// (removed when the returned guard is dropped).
fn bundle() -> TempDir {
    let dir = temp_dir("bundle");
    std::fs::write(dir.join("index.html"), "<!doctype html><title>Natter</title>").expect("write");
    std::fs::write(dir.join("natter-frontend-0123456789abcdef_bg.wasm"), b"\0asm\x01\0\0\0").expect("write");
    std::fs::write(dir.join("natter-frontend-0123456789abcdef.js"), "export {}").expect("write");
    std::fs::write(dir.join("robots.txt"), "User-agent: *").expect("write");
    dir
}

#[tokio::test]
async fn healthz_reports_ok() {
    let server = TestServer::start(config()).await;
    let (status, headers, body) = http_get(server.addr, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["status"], "ok");
}

#[tokio::test]
async fn without_a_bundle_the_page_says_how_to_build_it() {
    let server = TestServer::start(config()).await;
    for path in ["/", "/r/lobby"] {
        let (status, headers, body) = http_get(server.addr, path).await;
        assert_eq!(status, 503, "{path}");
        assert!(header(&headers, "content-type").is_some_and(|c| c.starts_with("text/html")));
        assert!(body.contains("cargo xtask run"), "{body}");
        assert!(body.contains("trunk build --release"), "{body}");
    }
    let (status, _, _) = http_get(server.addr, "/app.js").await;
    assert_eq!(status, 404, "a missing asset is a plain 404");
}

#[tokio::test]
async fn the_bundle_is_served_with_types_and_caching() {
    let mut cfg = config();
    let dir = bundle();
    cfg.bundle_dir = dir.to_path_buf();
    let server = TestServer::start(cfg).await;

    let (status, headers, body) = http_get(server.addr, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>Natter</title>"));
    assert!(header(&headers, "content-type").is_some_and(|c| c.starts_with("text/html")));
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));

    let (status, headers, _) = http_get(server.addr, "/natter-frontend-0123456789abcdef_bg.wasm").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/wasm"));
    assert_eq!(header(&headers, "cache-control"), Some("public, max-age=31536000, immutable"));

    let (status, headers, _) = http_get(server.addr, "/natter-frontend-0123456789abcdef.js").await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").is_some_and(|c| c.contains("javascript")));

    let (status, headers, _) = http_get(server.addr, "/robots.txt").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));

    // Page routes fall back to index.html; missing files do not.
    let (status, headers, body) = http_get(server.addr, "/r/lobby").await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>Natter</title>"));
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    let (status, _, _) = http_get(server.addr, "/missing.js").await;
    assert_eq!(status, 404);
    let (status, _, _) = http_get(server.addr, "/../Cargo.toml").await;
    assert_ne!(status, 200, "no path traversal");
}

#[tokio::test]
async fn other_methods_and_plain_requests_to_ws_get_clear_answers() {
    let mut cfg = config();
    let dir = bundle();
    cfg.bundle_dir = dir.to_path_buf();
    let server = TestServer::start(cfg).await;
    let host = server.addr;
    let (status, _, _) = http_request(
        host,
        &format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 405);
    let (status, headers, body) = http_get(server.addr, "/ws").await;
    assert_eq!(status, 426, "{body}");
    assert_eq!(header(&headers, "upgrade"), Some("websocket"));
    assert!(body.contains("WebSocket"));
}

/// A GET of `path` naming `host` in the `Host` header.
async fn get_with_host(server: &TestServer, path: &str, host: &str) -> (u16, Vec<(String, String)>, String) {
    http_request(server.addr, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")).await
}

/// A WebSocket handshake for `/ws` with these extra header lines (each ending in `\r\n`).
fn handshake(version: &str, host_line: &str, extra: &str) -> String {
    format!(
        "GET /ws {version}\r\n{host_line}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}Connection: close\r\n\r\n"
    )
}

/// The RFC 6455 example key: the base64 of 16 bytes.
const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test]
async fn healthz_says_only_ok_unless_detail_is_asked_for() {
    let server = TestServer::start(config()).await;
    let (status, _, body) = http_get(server.addr, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).expect("json"), serde_json::json!({"status": "ok"}));

    let mut cfg = config();
    cfg.healthz_detail = true;
    let detailed = TestServer::start(cfg).await;
    let (_ada, _) = detailed.joined("Ada", "lobby").await;
    let (status, _, body) = http_get(detailed.addr, "/healthz").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!((v["status"].as_str(), v["sessions"].as_u64(), v["rooms"].as_u64()), (Some("ok"), Some(1), Some(1)));
    // A probe that does not name the server is told only that it is up.
    let (status, _, body) = get_with_host(&detailed, "/healthz", "10.1.2.3:8080").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).expect("json"), serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn a_request_for_another_host_gets_421_whatever_its_path() {
    let mut cfg = config();
    let dir = bundle();
    cfg.bundle_dir = dir.to_path_buf();
    let server = TestServer::start(cfg).await;
    let port = server.addr.port();
    // DNS rebinding: the attacker's name, the server's address and port.
    let evil = format!("evil.example:{port}");
    for path in ["/", "/r/lobby", "/robots.txt", "/natter-frontend-0123456789abcdef.js", "/missing.js"] {
        let (status, _, body) = get_with_host(&server, path, &evil).await;
        assert_eq!(status, 421, "{path}: {body}");
        assert!(!body.contains("Natter</title>"), "{path}: nothing of the page");
    }
    let (status, _, _) = http_request(
        server.addr,
        &handshake("HTTP/1.1", &format!("Host: {evil}\r\n"), &format!("Origin: http://{evil}\r\n{KEY}")),
    )
    .await;
    assert_eq!(status, 421, "the socket too, even with a matching Origin");
    // The server's own names, with its port.
    for host in
        [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("LocalHost:{port}"), format!("[::1]:{port}")]
    {
        let (status, _, body) = get_with_host(&server, "/", &host).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    for host in ["localhost".to_owned(), format!("127.0.0.1:{}", port.wrapping_add(1)), format!("127.0.0.2:{port}")] {
        assert_eq!(get_with_host(&server, "/", &host).await.0, 421, "{host}");
    }
    // No Host, two, or nonsense: 400.
    let addr = server.addr;
    for request in [
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
        "GET / HTTP/1.0\r\n\r\n".to_owned(),
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\nHost: {evil}\r\nConnection: close\r\n\r\n"),
        format!("GET http://{evil}/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        "GET / HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n".to_owned(),
    ] {
        assert_eq!(http_request(addr, &request).await.0, 400, "{request:?}");
    }
    assert_eq!(http_request(addr, &handshake("HTTP/1.1", "", KEY)).await.0, 400, "a handshake without Host");
}

#[tokio::test]
async fn public_names_replace_the_defaults() {
    let mut cfg = config();
    cfg.names = Names::parse(&["https://chat.example.com"], &["chat.internal"]).expect("valid");
    let server = TestServer::start(cfg).await;
    for host in ["chat.example.com", "chat.example.com:443", "chat.internal:9000"] {
        assert_eq!(get_with_host(&server, "/", host).await.0, 503, "{host}: ours (the not-built page)");
    }
    let own = server.addr.to_string();
    for host in [own.as_str(), "localhost", "chat.example.com:8443", "chat.example.com.evil.example"] {
        assert_eq!(get_with_host(&server, "/", host).await.0, 421, "{host}");
    }
    assert_eq!(get_with_host(&server, "/healthz", &own).await.0, 200, "a probe by address");
}

#[tokio::test]
async fn the_websocket_handshake_is_checked_strictly() {
    let server = TestServer::start(config()).await;
    let addr = server.addr;
    let host = format!("Host: {addr}\r\n");
    for (key, what) in [
        ("", "no key"),
        ("Sec-WebSocket-Key: x\r\n", "not base64 of 16 bytes"),
        ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZSE=\r\n", "17 bytes"),
        ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n", "unpadded"),
        ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n", "two keys"),
    ] {
        let (status, _, body) = http_request(addr, &handshake("HTTP/1.1", &host, key)).await;
        assert_eq!(status, 400, "{what}: {body}");
    }
    let (status, _, body) = http_request(addr, &handshake("HTTP/1.0", &host, KEY)).await;
    assert_eq!(status, 400, "HTTP/1.0: {body}");

    let (status, headers, _) =
        http_request(addr, &format!("POST /ws HTTP/1.1\r\n{host}Content-Length: 0\r\nConnection: close\r\n\r\n")).await;
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET"));

    let old = handshake("HTTP/1.1", &host, KEY).replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    for request in [old, format!("GET /ws HTTP/1.1\r\n{host}Connection: close\r\n\r\n")] {
        let (status, headers, _) = http_request(addr, &request).await;
        assert_eq!(status, 426, "{request:?}");
        assert_eq!(header(&headers, "sec-websocket-version"), Some("13"), "{request:?}");
        assert_eq!(header(&headers, "upgrade"), Some("websocket"), "{request:?}");
    }
}

/// Asserts the headers every response must carry; returns its policy.
fn assert_secure(what: &str, headers: &[(String, String)]) -> String {
    assert_eq!(header(headers, "x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(header(headers, "referrer-policy"), Some("no-referrer"), "{what}");
    let csp = header(headers, "content-security-policy").unwrap_or_else(|| panic!("{what}: no CSP")).to_owned();
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(csp.starts_with("default-src 'none'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    csp
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let mut cfg = config();
    let dir = bundle();
    cfg.bundle_dir = dir.to_path_buf();
    let server = TestServer::start(cfg).await;
    let addr = server.addr;
    let host = format!("Host: {addr}\r\n");
    let requests = [
        ("page", 200, format!("GET / HTTP/1.1\r\n{host}Connection: close\r\n\r\n")),
        ("asset", 200, format!("GET /natter-frontend-0123456789abcdef.js HTTP/1.1\r\n{host}Connection: close\r\n\r\n")),
        ("healthz", 200, format!("GET /healthz HTTP/1.1\r\n{host}Connection: close\r\n\r\n")),
        ("missing", 404, format!("GET /missing.js HTTP/1.1\r\n{host}Connection: close\r\n\r\n")),
        ("post", 405, format!("POST / HTTP/1.1\r\n{host}Content-Length: 0\r\nConnection: close\r\n\r\n")),
        ("foreign host", 421, "GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_owned()),
        ("no host", 400, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned()),
        ("plain /ws", 426, format!("GET /ws HTTP/1.1\r\n{host}Connection: close\r\n\r\n")),
        ("no key", 400, handshake("HTTP/1.1", &host, "")),
        ("foreign origin", 403, handshake("HTTP/1.1", &host, &format!("Origin: http://evil.example\r\n{KEY}"))),
    ];
    for (what, expected, request) in &requests {
        let (status, headers, _) = http_request(addr, request).await;
        assert_eq!(status, *expected, "{what}");
        let csp = assert_secure(what, &headers);
        if *what == "page" {
            assert!(csp.contains(&format!("connect-src 'self' ws://{addr} wss://{addr};")), "{csp}");
        }
    }
    // The 101 of an upgrade too (read only its head: the socket stays open).
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(handshake("HTTP/1.1", &host, KEY).replace("Connection: close\r\n", "").as_bytes())
        .await
        .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await.expect("in time");
        assert_eq!(read.expect("read"), 1, "the head ends before the stream");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("ascii");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let headers: Vec<(String, String)> = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    assert_secure("101", &headers);

    // Over the connection cap, the accept loop answers 503 itself.
    let mut cfg = config();
    cfg.max_connections = 1;
    let full = TestServer::start(cfg).await;
    let _held = full.client().await;
    let (status, headers, _) = http_get(full.addr, "/").await;
    assert_eq!(status, 503);
    assert_secure("503", &headers);
}

/// The `script-src` directive of a policy.
fn script_src(csp: &str) -> &str {
    csp.split(';').map(str::trim).find(|d| d.starts_with("script-src ")).unwrap_or_else(|| panic!("{csp}"))
}

/// The base64 SHA-256 of `text`: what a browser compares with `'sha256-…'`.
fn sha256_b64(text: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(text.as_bytes()))
}

#[tokio::test]
async fn the_page_policy_allows_its_inline_loader_by_hash_even_after_a_rebuild() {
    let mut cfg = config();
    let dir = bundle();
    cfg.bundle_dir = dir.to_path_buf();
    let server = TestServer::start(cfg).await;
    // No inline script: no hash.
    let (_, headers, _) = http_get(server.addr, "/").await;
    assert_eq!(script_src(&assert_secure("page", &headers)), "script-src 'self' 'wasm-unsafe-eval'");

    // A page rebuilt while the server runs, with trunk's kind of loader.
    let loader = "\nimport init from '/natter-frontend-0123456789abcdef.js';\nawait init();\n";
    std::fs::write(
        dir.join("index.html"),
        format!("<!doctype html><title>Natter</title><script src=\"/x.js\"></script><script type=\"module\">{loader}</script>"),
    )
    .expect("write");
    for path in ["/", "/r/lobby"] {
        let (status, headers, _) = http_get(server.addr, path).await;
        assert_eq!(status, 200);
        let csp = assert_secure(path, &headers);
        let expected = format!("script-src 'self' 'wasm-unsafe-eval' 'sha256-{}'", sha256_b64(loader));
        assert_eq!(script_src(&csp), expected, "{path}");
    }
}

#[tokio::test]
async fn the_not_built_page_names_no_server_path() {
    let cfg = config();
    let path = cfg.bundle_dir.display().to_string();
    let server = TestServer::start(cfg).await;
    let (status, headers, body) = http_get(server.addr, "/").await;
    assert_eq!(status, 503);
    assert!(!body.contains(&path), "{body}");
    assert!(!body.contains("natter-test-no-bundle"), "{body}");
    assert!(body.contains("--bundle-dir"), "{body}");
    let csp = assert_secure("not built", &headers);
    assert!(csp.contains("style-src 'sha256-"), "its own style is allowed: {csp}");
}
