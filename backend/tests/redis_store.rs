//! History in Redis (`--redis`), against private redis-server instances:
//! chat and acks, resume and paging read from the stream, a killed natter
//! and a killed Redis losing nothing acknowledged, a lost Redis giving a new
//! history and the durability check. Several instances on one Redis:
//! `redis_cluster.rs`.
//!
//! Each test starts its own redis-server (see `common::redis_server`); with
//! none installed they fail, saying how to get it.

mod common;

use std::time::{Duration, Instant};

use common::natter_binary::Natter;
use common::redis_server::{RedisServer, free_port};
use common::{Client, Ended, TestServer, redis_config, resume};
use natter_backend::config::RedisDurability;
use natter_shared::{ClientMsg, ErrorCode, Hello, HistoryRequest, RoomEvent, Seq, ServerMsg, Typing, Welcome, close};

fn texts(events: &[RoomEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            RoomEvent::Message(m) => Some(m.text.as_str().to_owned()),
            RoomEvent::Notice(_) => None,
        })
        .collect()
}

fn ack_seq(msg: ServerMsg) -> Seq {
    match msg {
        ServerMsg::Ack(a) => a.seq,
        other => panic!("expected ack, got {other:?}"),
    }
}

fn welcome(msg: ServerMsg) -> Welcome {
    match msg {
        ServerMsg::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// The next ack, skipping presence and typing that may come first.
async fn next_ack(client: &mut Client) -> Seq {
    loop {
        match client.recv().await {
            ServerMsg::Notice(_) | ServerMsg::Notices(_) | ServerMsg::Typing(_) => {}
            other => return ack_seq(other),
        }
    }
}

/// A resume `hello` as a page sends it: last seq, token and history id.
fn resume_as_page(name: &str, last: Seq, w: &Welcome) -> Hello {
    Hello { history_id: Some(w.history_id.clone()), ..resume(name, "lobby", last, Some(w.resume_token.as_str())) }
}

/// `natter_backend::run` until it fails (it must, before serving).
async fn refused(config: natter_backend::Config, within: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let run = natter_backend::run(config, listener, std::future::pending::<()>());
    match tokio::time::timeout(within, run).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => panic!("the server ran and stopped instead of refusing"),
        Err(_) => panic!("the server did not refuse within {within:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_acknowledged_and_delivered_in_order() {
    let redis = RedisServer::start();
    let server = TestServer::start(redis_config(&redis.url())).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let (mut bob, bob_w) = server.joined("Bob", "lobby").await;
    let _ = ada.recv().await; // Bob joined
    let mut acked = Vec::new();
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        ada.say(&format!("a{i}"), text).await;
        acked.push(ack_seq(ada.recv().await));
    }
    let expected: Vec<Seq> = (1..=3).map(|i| Seq(bob_w.seq_head.0 + i)).collect();
    assert_eq!(acked, expected, "dense seqs after Bob's join, acknowledged in order");
    for (seq, text) in expected.iter().zip(["one", "two", "three"]) {
        match bob.recv().await {
            ServerMsg::Message(m) => assert_eq!((m.seq, m.text.as_str()), (*seq, text)),
            other => panic!("expected {text}, got {other:?}"),
        }
    }
    bob.say("b1", "and back").await;
    assert_eq!(ack_seq(bob.recv().await), Seq(bob_w.seq_head.0 + 4));
    // What was acknowledged is in Redis: a newcomer's welcome reads it there.
    server.shutdown().await.expect("clean shutdown");
    let server = TestServer::start(redis_config(&redis.url())).await;
    let (_cy, cy_w) = server.joined("Cy", "lobby").await;
    assert_eq!(texts(&cy_w.history), ["one", "two", "three", "and back"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_replays_from_the_stream_what_memory_no_longer_holds() {
    let redis = RedisServer::start();
    let mut cfg = redis_config(&redis.url());
    // The room keeps two events in memory: the replay must come from Redis.
    cfg.limits.welcome_history = 2;
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let (bob, bob_w) = server.joined("Bob", "lobby").await;
    let _ = ada.recv().await; // Bob joined
    bob.drop_connection();
    let said = ["m1", "m2", "m3", "m4", "m5"];
    for (i, text) in said.iter().enumerate() {
        ada.say(&format!("c{i}"), text).await;
        let _ = ack_seq(ada.recv().await);
    }
    let mut bob = server.client().await;
    let back = welcome(bob.hello_with(resume_as_page("Bob", bob_w.seq_head, &bob_w)).await);
    assert_eq!(texts(&back.history), said);
    assert_eq!(back.history.first().map(RoomEvent::seq), Some(bob_w.seq_head.next()));
    assert_eq!((back.missed, back.history_id), (None, bob_w.history_id.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_pages_are_read_from_the_stream() {
    let redis = RedisServer::start();
    let mut cfg = redis_config(&redis.url());
    cfg.limits.welcome_history = 2;
    cfg.rate.burst = 100;
    let server = TestServer::start(cfg).await;
    let (mut ada, w) = server.joined("Ada", "lobby").await;
    assert_eq!(w.seq_head, Seq(1), "Ada's joined notice");
    for i in 2..=6 {
        ada.say(&format!("c{i}"), &format!("m{i}")).await;
        assert_eq!(ack_seq(ada.recv().await), Seq(i));
    }
    let mut before = Seq(7);
    let mut pages = Vec::new();
    loop {
        ada.send(&ClientMsg::History(HistoryRequest { before, limit: 2 })).await;
        let page = match ada.recv().await {
            ServerMsg::History(page) => page,
            other => panic!("expected a page, got {other:?}"),
        };
        pages.push(page.events.iter().map(|e| e.seq().0).collect::<Vec<_>>());
        if page.complete {
            break;
        }
        before = page.events.first().expect("an incomplete page has events").seq();
    }
    assert_eq!(pages, [vec![5, 6], vec![3, 4], vec![1, 2]]);
}

/// Whether a server on `addr` answers `/healthz` (within a moment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_and_by_age_trims_the_stream_and_its_dedupe_set() {
    let redis = RedisServer::start();
    let mut cfg = redis_config(&redis.url());
    cfg.storage.retain_count = Some(3);
    cfg.rate.burst = 100;
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    for i in 0..6 {
        ada.say(&format!("c{i}"), &format!("m{i}")).await;
        let _ = ack_seq(ada.recv().await);
    }
    assert_eq!(redis.command(&["XLEN", "natter:{lobby}:s"]).as_deref(), Some(":3"), "exactly --retain-count kept");
    assert_eq!(redis.command(&["ZCARD", "natter:{lobby}:d"]).as_deref(), Some(":3"), "dedupe only for kept events");
    let (_bob, bob_w) = server.joined("Bob", "lobby").await;
    assert_eq!(texts(&bob_w.history), ["m3", "m4", "m5"], "the three kept events (then Bob's join)");
    server.shutdown().await.expect("clean shutdown");

    let mut cfg = redis_config(&redis.url());
    cfg.storage.retain_age = Some(Duration::from_secs(1));
    let server = TestServer::start(cfg).await;
    let mut ada = server.client().await;
    let _ = ada.hello("Ada", "aged").await;
    let _ = ada.own_join("Ada").await;
    ada.say("a1", "old").await;
    let _ = ack_seq(ada.recv().await);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ada.say("a2", "new").await;
    let _ = ack_seq(ada.recv().await);
    assert_eq!(redis.command(&["XLEN", "natter:{aged}:s"]).as_deref(), Some(":1"), "only the event younger than 1 s");
    assert_eq!(redis.command(&["ZCARD", "natter:{aged}:d"]).as_deref(), Some(":1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_seqs_continue_and_an_old_cid_gets_its_original_seq() {
    let redis = RedisServer::start();
    let natter = Natter::start(&redis.url());
    let mut ada = Client::connect(&natter.url()).await;
    let first_w = ada.hello("Ada", "lobby").await;
    let _ = ada.own_join("Ada").await;
    ada.say("c1", "before the crash").await;
    let first = ack_seq(ada.recv().await);
    natter.kill();
    // The killed instance's names are free once its liveness key expires.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let natter = Natter::start(&redis.url());
    let mut ada = Client::connect(&natter.url()).await;
    let w = ada.hello("Ada", "lobby").await;
    assert_eq!(w.history_id, first_w.history_id, "the same history");
    assert_eq!(texts(&w.history), ["before the crash"]);
    let joined = ada.own_join("Ada").await;
    assert_eq!(joined.seq, first.next(), "seqs continue");
    ada.say("c1", "before the crash").await;
    assert_eq!(ack_seq(ada.recv().await), first, "the re-sent message is acknowledged with its seq, not stored again");
    ada.say("c2", "after the crash").await;
    assert_eq!(ack_seq(ada.recv().await), joined.seq.next());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_resume_silently_after_a_graceful_restart() {
    let redis = RedisServer::start();
    let cfg = redis_config(&redis.url());
    let server = TestServer::start(cfg.clone()).await;
    let (mut ada, ada_w) = server.joined("Ada", "lobby").await;
    ada.say("c1", "hello").await;
    let last = ack_seq(ada.recv().await);
    server.shutdown().await.expect("clean shutdown");
    drop(ada);

    let server = TestServer::start(cfg).await;
    let mut ada = server.client().await;
    let back = welcome(ada.hello_with(resume_as_page("Ada", last, &ada_w)).await);
    assert!(back.history.is_empty(), "missed nothing: {:?}", back.history);
    assert_eq!((back.member_count, back.history_id.as_str()), (1, ada_w.history_id.as_str()));
    ada.expect_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_gives_a_fresh_welcome_of_a_new_history() {
    let redis = RedisServer::start();
    let server = TestServer::start(redis_config(&redis.url())).await;
    let (mut ada, ada_w) = server.joined("Ada", "lobby").await;
    ada.say("c1", "the old history").await;
    let last = ack_seq(ada.recv().await);
    assert_eq!(redis.command(&["FLUSHALL"]).as_deref(), Some("+OK"));

    let mut bob = server.client().await;
    let bob_w = bob.hello("Bob", "lobby").await;
    assert_ne!(bob_w.history_id, ada_w.history_id, "a new history");
    assert_eq!((bob_w.seq_head, bob_w.history.len()), (Seq(0), 0), "which starts empty");
    // Ada's page is told to resume, and gets the new history under a divider.
    match ada.closed().await {
        Ended::Close(code, _) => assert_eq!(code, close::LAGGED),
        other => panic!("expected close 4000, got {other:?}"),
    }
    let mut ada = server.client().await;
    let back = welcome(ada.hello_with(resume_as_page("Ada", last, &ada_w)).await);
    assert_eq!(back.history_id, bob_w.history_id);
    assert!(!texts(&back.history).contains(&"the old history".to_owned()), "{:?}", back.history);
    assert_eq!(back.member_count, 2, "Ada kept her membership");
    ada.say("c1", "the new history").await;
    let seq = next_ack(&mut ada).await;
    assert!(seq <= Seq(2), "numbered in the new history (after Bob's join): {seq:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_finds_its_stream_lost_goes_into_a_new_history() {
    let redis = RedisServer::start();
    let server = TestServer::start(redis_config(&redis.url())).await;
    let (mut ada, ada_w) = server.joined("Ada", "lobby").await;
    ada.say("c1", "old").await;
    let last = ack_seq(ada.recv().await);
    // Only the stream goes (its head stays): the write finds it, not a hello.
    assert_eq!(redis.command(&["DEL", "natter:{lobby}:s"]).as_deref(), Some(":1"));
    ada.say("c2", "new").await;
    match ada.closed().await {
        Ended::Close(code, _) => assert_eq!(code, close::LAGGED, "the page resumes into the new history"),
        other => panic!("expected close 4000, got {other:?}"),
    }
    let mut ada = server.client().await;
    let back = welcome(ada.hello_with(resume_as_page("Ada", last, &ada_w)).await);
    assert_ne!(back.history_id, ada_w.history_id);
    // The write was stored once, as the first event of the new history.
    ada.say("c2", "new").await;
    assert_eq!(next_ack(&mut ada).await, Seq(1));
    let (_cy, cy_w) = server.joined("Cy", "lobby").await;
    assert_eq!((texts(&cy_w.history), cy_w.history_id), (vec!["new".to_owned()], back.history_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_refuses_messages_typing_goes_on_and_nothing_acknowledged_is_lost() {
    let mut redis = RedisServer::start();
    let server = TestServer::start(redis_config(&redis.url())).await;
    let (mut ada, ada_w) = server.joined("Ada", "lobby").await;
    let (mut bob, _) = server.joined("Bob", "lobby").await;
    let _ = ada.recv().await; // Bob joined
    ada.say("c1", "before the outage").await;
    let first = ack_seq(ada.recv().await);
    assert!(matches!(bob.recv().await, ServerMsg::Message(m) if m.seq == first));

    let (status, _, body) = common::http_get(server.addr, "/readyz").await;
    assert_eq!(status, 200, "ready while Redis answers: {body}");

    redis.kill();
    ada.say("c2", "during the outage").await;
    match ada.recv().await {
        ServerMsg::Error(e) => assert_eq!((e.code, e.cid.as_deref()), (ErrorCode::StorageUnavailable, Some("c2"))),
        other => panic!("expected storage_unavailable, got {other:?}"),
    }
    tokio::time::sleep(natter_backend::net::http::READY_CACHE).await;
    let (status, _, body) = common::http_get(server.addr, "/readyz").await;
    assert_eq!(status, 503, "not ready while Redis is down: {body}");
    ada.send(&ClientMsg::Typing(Typing { active: true })).await;
    match bob.recv().await {
        ServerMsg::Typing(t) => assert_eq!((t.name.as_str(), t.active), ("Ada", true)),
        other => panic!("expected Ada typing, got {other:?} (nothing unacknowledged is shown)"),
    }

    redis.restart();
    // The page sends it again until it is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        ada.say("c2", "during the outage").await;
        match ada.recv().await {
            ServerMsg::Ack(a) => break a.seq,
            ServerMsg::Error(e) if e.code == ErrorCode::StorageUnavailable => {
                assert!(Instant::now() < deadline, "Redis is back, but messages are still refused");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => panic!("expected an ack or storage_unavailable, got {other:?}"),
        }
    };
    assert_eq!(second, first.next(), "no seq lost or skipped");
    loop {
        match bob.recv().await {
            ServerMsg::Message(m) => {
                assert_eq!((m.seq, m.text.as_str()), (second, "during the outage"));
                break;
            }
            ServerMsg::Typing(_) => {}
            other => panic!("expected the message, got {other:?}"),
        }
    }
    let (_cy, cy_w) = server.joined("Cy", "lobby").await;
    assert_eq!(cy_w.history_id, ada_w.history_id, "the append-only file kept the history");
    assert_eq!(texts(&cy_w.history), ["before the outage", "during the outage"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_after_its_round_gave_up_is_acknowledged_once_and_nobody_misses_it() {
    let redis = RedisServer::start();
    let server = TestServer::start(redis_config(&redis.url())).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let (mut bob, bob_w) = server.joined("Bob", "lobby").await;
    let _ = ada.recv().await; // Bob joined
    // Redis holds writes back longer than natter waits (1 s), then runs them:
    // the round fails, yet the message is stored.
    assert_eq!(redis.command(&["CLIENT", "PAUSE", "2500", "WRITE"]).as_deref(), Some("+OK"));
    ada.say("c1", "stored late").await;
    match ada.recv().await {
        ServerMsg::Error(e) => assert_eq!(e.code, ErrorCode::StorageUnavailable, "no ack before Redis answered"),
        other => panic!("expected storage_unavailable, got {other:?}"),
    }
    bob.expect_quiet().await;
    // When the pause ends Redis runs it and publishes it. No report comes
    // (the round gave up), so the room reads it from the stream and delivers
    // it to everyone, Ada too (her page then drops it from its outbox).
    let seq = bob_w.seq_head.next();
    for client in [&mut bob, &mut ada] {
        match client.recv().await {
            ServerMsg::Message(m) => assert_eq!((m.seq, m.text.as_str()), (seq, "stored late")),
            other => panic!("expected the message, got {other:?}"),
        }
    }
    // The page sends it again: acknowledged with the seq it got, not stored twice.
    ada.say("c1", "stored late").await;
    assert_eq!(next_ack(&mut ada).await, seq);
    bob.expect_quiet().await;
    assert_eq!(redis.command(&["XLEN", "natter:{lobby}:s"]).as_deref(), Some(":3"), "two joins and the message, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_durability_refuses_everysec_naming_the_setting_and_relaxed_starts() {
    let redis = RedisServer::start_with(&["--appendfsync", "everysec"]);
    let error = refused(redis_config(&redis.url()), Duration::from_secs(15)).await;
    assert!(error.contains(r#"appendfsync is "everysec" (needs "always")"#), "{error}");
    assert!(!error.contains("appendonly is"), "only what is wrong is named: {error}");

    let mut cfg = redis_config(&redis.url());
    if let natter_backend::config::HistoryKind::Redis(r) = &mut cfg.history {
        r.durability = RedisDurability::Relaxed;
    }
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    ada.say("c1", "relaxed").await;
    let _ = ack_seq(ada.recv().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_refused_with_its_cause() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let error = refused(redis_config(&url), Duration::from_secs(10)).await;
    assert!(error.contains("cannot reach Redis at") && error.contains(&url), "{error}");
    assert!(error.to_lowercase().contains("refused"), "the cause is named: {error}");
}
