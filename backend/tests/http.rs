//! Plain HTTP: static files with caching, SPA fallback, health, and the
//! helpful page when no bundle has been built.

mod common;

use common::{TempDir, TestServer, config, header, http_get, http_request, temp_dir};

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
