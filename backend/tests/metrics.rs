//! Observing a running server: `/metrics` on its own listener counts what
//! happens, and `/readyz` says whether the history store takes writes.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{RECV_TIMEOUT, TestServer, config, header, http_get, http_request, sqlite_config};
use natter_shared::{ClientMsg, ErrorCode, Say, ServerMsg};

/// The value of the sample whose name and labels are `series`, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, headers, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(header(&headers, "content-type").is_some_and(|c| c.starts_with("application/openmetrics-text")));
    body
}

/// Scrapes until `series` reaches at least `want` (counting happens as
/// connections end, a moment after the client sees the close).
async fn scrape_until(addr: SocketAddr, series: &str, want: f64) -> String {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let text = scrape(addr).await;
        if sample(&text, series).is_some_and(|v| v >= want) {
            return text;
        }
        assert!(Instant::now() < deadline, "{series} never reached {want}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_count_connections_messages_deliveries_and_commits_on_their_own_listener() {
    let (cfg, _dir) = sqlite_config("metrics");
    let server = TestServer::start_with_metrics(cfg).await;
    let metrics = server.metrics.expect("metrics listener");

    let before = scrape(metrics).await;
    assert_eq!(sample(&before, "natter_connections_open"), Some(0.0), "{before}");
    assert_eq!(sample(&before, "natter_messages_in_total"), Some(0.0));

    let (mut ada, _) = server.joined("ada", "lobby").await;
    let (mut bo, _) = server.joined("bo", "lobby").await;
    ada.say("c1", "hello").await;
    loop {
        if let ServerMsg::Message(m) = bo.recv().await {
            assert_eq!(m.text.as_str(), "hello");
            break;
        }
    }
    let during = scrape_until(metrics, "natter_messages_in_total", 1.0).await;
    assert_eq!(sample(&during, "natter_connections_open"), Some(2.0), "{during}");
    assert_eq!(sample(&during, "natter_rooms"), Some(1.0));
    assert_eq!(sample(&during, "natter_members"), Some(2.0));
    assert!(sample(&during, "natter_deliveries_total").is_some_and(|v| v >= 1.0), "{during}");
    assert!(sample(&during, "natter_messages_out_total").is_some_and(|v| v >= 1.0));
    // Two joins and a message: at least one commit, each batch of at least one write.
    assert!(sample(&during, "natter_commit_seconds_count").is_some_and(|v| v >= 1.0), "{during}");
    assert!(sample(&during, "natter_commit_batch_writes_sum").is_some_and(|v| v >= 3.0), "{during}");

    // A Close frame without a code counts as 1005 ("no status received").
    bo.close().await;
    let after = scrape_until(metrics, "natter_connections_closed_total{code=\"1005\"}", 1.0).await;
    assert_eq!(sample(&after, "natter_connections_open"), Some(1.0), "{after}");
    assert_eq!(sample(&after, "natter_connection_seconds_count"), Some(1.0));
    assert_eq!(sample(&after, "natter_queue_high_water_bytes_count"), Some(1.0));
    drop(ada);

    // The counters are only on the metrics listener.
    let (_, _, public) = http_get(server.addr, "/metrics").await;
    assert!(!public.contains("natter_"), "the public port must not serve metrics: {public}");
    // And the metrics listener serves nothing else.
    let (status, _, _) = http_get(metrics, "/").await;
    assert_eq!(status, 404);
    let (status, headers, _) =
        http_request(metrics, &format!("POST /metrics HTTP/1.1\r\nHost: {metrics}\r\nContent-Length: 0\r\n\r\n")).await;
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn refused_handshakes_and_rate_limits_are_counted_by_reason() {
    let mut cfg = config();
    cfg.rate.per_sec = 1;
    cfg.rate.burst = 2;
    cfg.rate.strikes = 100;
    let server = TestServer::start_with_metrics(cfg).await;
    let metrics = server.metrics.expect("metrics listener");
    let addr = server.addr;

    let foreign_origin = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Origin: http://evil.example\r\nConnection: close\r\n\r\n"
    );
    let (status, _, _) = http_request(addr, &foreign_origin).await;
    assert_eq!(status, 403);
    let foreign_host = "GET /ws HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    let (status, _, _) = http_request(addr, foreign_host).await;
    assert_eq!(status, 421);
    let text = scrape(metrics).await;
    assert_eq!(sample(&text, "natter_handshake_refusals_total{reason=\"origin\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "natter_handshake_refusals_total{reason=\"host\"}"), Some(1.0), "{text}");

    let mut c = server.client().await;
    c.hello("ada", "lobby").await;
    for i in 0..6 {
        c.send(&ClientMsg::Say(Say::new(format!("c{i}"), "hi"))).await;
    }
    let mut refused = 0;
    while let Some(msg) = c.try_recv(Duration::from_millis(300)).await {
        if matches!(msg, ServerMsg::Error(e) if e.code == ErrorCode::RateLimited) {
            refused += 1;
        }
    }
    assert!(refused >= 1, "the flood was refused");
    let text = scrape(metrics).await;
    assert_eq!(sample(&text, "natter_rate_limited_total"), Some(f64::from(refused)), "{text}");
}

#[tokio::test]
async fn readyz_is_ready_while_the_database_takes_writes_and_not_while_it_is_locked() {
    let (cfg, dir) = sqlite_config("readyz");
    let server = TestServer::start(cfg).await;
    let (status, headers, body) = http_get(server.addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).expect("json"), serde_json::json!({"status": "ready"}));

    // Another process holds the database's write lock.
    let db = natter_backend::store::sqlite::db_path(&dir);
    let other = rusqlite::Connection::open(&db).expect("open the database");
    other.execute_batch("BEGIN EXCLUSIVE").expect("take the write lock");
    tokio::time::sleep(natter_backend::net::http::READY_CACHE).await;
    let (status, _, body) = http_get(server.addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).expect("json"),
        serde_json::json!({"status": "not_ready", "reason": "storage"})
    );

    other.execute_batch("ROLLBACK").expect("give the lock back");
    let deadline = Instant::now() + RECV_TIMEOUT + natter_backend::store::sqlite::BUSY_TIMEOUT;
    loop {
        tokio::time::sleep(natter_backend::net::http::READY_CACHE).await;
        let (status, _, body) = http_get(server.addr, "/readyz").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still not ready after the lock was given back: {body}");
    }
}

#[tokio::test]
async fn readyz_answers_any_host_like_healthz() {
    let server = TestServer::start(config()).await;
    let request = "GET /readyz HTTP/1.1\r\nHost: 10.0.0.7:8080\r\nConnection: close\r\n\r\n";
    let (status, _, body) = http_request(server.addr, request).await;
    assert_eq!(status, 200, "{body}");
}
