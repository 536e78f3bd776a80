//! Durable history in SQLite: restarts, migrations, refusals at startup,
//! storage failure and recovery, paging, retention, export and import.

mod common;

use std::time::Duration;

use common::{TestServer, config, resume, sqlite_config, temp_dir};
use natter_backend::config::HistoryKind;
use natter_backend::store::sqlite::{DB_FILE, MIGRATIONS, SCHEMA_VERSION};
use natter_shared::{ClientMsg, ErrorCode, HistoryRequest, RoomEvent, RoomName, Seq, ServerMsg};

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

/// Exports a room of a data directory (the server may be running: WAL readers are fine).
fn export(dir: &std::path::Path, room: &str) -> Vec<RoomEvent> {
    let mut out = Vec::new();
    natter_backend::store::transfer::export(dir, &RoomName::parse(room).expect("valid"), Seq(0), &mut out)
        .expect("export");
    String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("an event per line"))
        .collect()
}

#[tokio::test]
async fn history_survives_a_restart_and_seqs_and_dedupe_continue() {
    let (cfg, _dir) = sqlite_config("restart");
    let dir = cfg.storage.data_dir.clone();
    let server = TestServer::start(cfg.clone()).await;
    let (mut ada, welcome) = server.joined("Ada", "lobby").await;
    ada.say("c1", "before the restart").await;
    let first = ack_seq(ada.recv().await);
    server.shutdown().await.expect("clean shutdown");

    let server = TestServer::start(cfg).await;
    let (_bob, bob_welcome) = server.joined("Bob", "lobby").await;
    assert_eq!(texts(&bob_welcome.history), ["before the restart"], "history served after the restart");
    assert_eq!(bob_welcome.history_id, welcome.history_id, "the same history");

    // Ada comes back and resumes from her last seq: exactly what she missed.
    let mut ada = server.client().await;
    let hello =
        natter_shared::Hello { history_id: Some(welcome.history_id.clone()), ..resume("Ada", "lobby", first, None) };
    let back = match ada.hello_with(hello).await {
        ServerMsg::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    };
    let seqs: Vec<u64> = back.history.iter().map(|e| e.seq().0).collect();
    assert_eq!(seqs, [first.0 + 1], "only Bob's join, once");
    ada.own_join("Ada").await;
    // A re-send from before the restart is recognised; new messages continue the seqs.
    ada.say("c1", "before the restart").await;
    assert_eq!(ack_seq(ada.recv().await), first, "deduplicated across the restart");
    ada.say("c2", "after the restart").await;
    let second = ack_seq(ada.recv().await);
    assert!(second > first);
    let events = export(&dir, "lobby");
    assert_eq!(texts(&events), ["before the restart", "after the restart"]);
    assert!(events.windows(2).all(|w| w[0].seq() < w[1].seq()), "seqs never go back");
}

#[tokio::test]
async fn an_empty_file_becomes_a_new_database() {
    let (cfg, _dir) = sqlite_config("empty");
    std::fs::write(cfg.storage.data_dir.join(DB_FILE), b"").expect("create empty file");
    let server = TestServer::start(cfg).await;
    let (_ada, w) = server.joined("Ada", "lobby").await;
    assert_eq!(w.seq_head, Seq(1));
}

#[tokio::test]
async fn a_database_of_the_previous_schema_is_migrated_and_kept() {
    let (cfg, _dir) = sqlite_config("migrate");
    let path = cfg.storage.data_dir.join(DB_FILE);
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch(MIGRATIONS[0]).expect("schema v1");
        conn.execute_batch(
            "INSERT INTO meta VALUES ('history_id', 'old1');
             INSERT INTO rooms VALUES ('lobby', 2);
             INSERT INTO events VALUES ('lobby', 1, 1000, 'joined', 'Old', 'old', '#e12b2b', NULL, NULL);
             INSERT INTO events VALUES ('lobby', 2, 1001, 'message', 'Old', 'old', '#e12b2b', 'from v1', 'c9');
             PRAGMA user_version = 1;",
        )
        .expect("v1 data");
    }
    let server = TestServer::start(cfg).await;
    let (mut old, w) = server.joined("Old", "lobby").await;
    assert_eq!(texts(&w.history), ["from v1"]);
    assert_eq!(w.history_id, "old1");
    assert_eq!(w.seq_head, Seq(3), "seqs continue after the migrated ones");
    // The index added by version 2 deduplicates the old message.
    old.say("c9", "from v1").await;
    assert_eq!(ack_seq(old.recv().await), Seq(2));
    server.shutdown().await.expect("stops");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
    assert_eq!(version, SCHEMA_VERSION);
}

async fn start_error(cfg: natter_backend::Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    match tokio::time::timeout(Duration::from_secs(10), natter_backend::run(cfg, listener, std::future::pending()))
        .await
        .expect("fails fast")
    {
        Err(e) => e.to_string(),
        Ok(()) => panic!("the server must refuse to start"),
    }
}

#[tokio::test]
async fn a_newer_or_corrupt_database_is_refused_naming_the_file() {
    let (newer, _dir) = sqlite_config("newer");
    let path = newer.storage.data_dir.join(DB_FILE);
    rusqlite::Connection::open(&path).expect("create").execute_batch("PRAGMA user_version = 99").expect("set");
    let message = start_error(newer).await;
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("version 99"), "{message}");

    let (corrupt, _dir) = sqlite_config("corrupt");
    let path = corrupt.storage.data_dir.join(DB_FILE);
    std::fs::write(&path, vec![0x5a; 8192]).expect("write garbage");
    let message = start_error(corrupt).await;
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("not a Natter database or is damaged"), "{message}");
    assert_eq!(std::fs::read(&path).expect("still there"), vec![0x5a; 8192], "never replaced");

    let (foreign, _dir) = sqlite_config("foreign");
    let path = foreign.storage.data_dir.join(DB_FILE);
    rusqlite::Connection::open(&path).expect("create").execute_batch("CREATE TABLE t (x)").expect("table");
    assert!(start_error(foreign).await.contains("not a Natter database"));
}

#[tokio::test]
async fn a_data_dir_that_cannot_be_used_is_refused_naming_it() {
    let (mut cfg, _dir) = sqlite_config("not-a-dir");
    let file = cfg.storage.data_dir.join("plain-file");
    std::fs::write(&file, b"not a directory").expect("write");
    cfg.storage.data_dir = file.clone();
    let message = start_error(cfg).await;
    assert!(message.contains(&file.display().to_string()), "{message}");

    let (mut cfg, _dir) = sqlite_config("db-is-dir");
    std::fs::create_dir(cfg.storage.data_dir.join(DB_FILE)).expect("a directory where the database should be");
    let path = cfg.storage.data_dir.join(DB_FILE);
    cfg.storage.data_dir = path.parent().expect("parent").to_owned();
    let message = start_error(cfg).await;
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let (cfg, _dir) = sqlite_config("locked");
    let first = TestServer::start(cfg.clone()).await;
    let _ada = first.joined("Ada", "lobby").await; // the first server is up and holds the lock
    let message = start_error(cfg).await;
    assert!(message.contains("another natter is using"), "{message}");
}

#[tokio::test]
async fn when_storage_fails_nothing_is_acked_reads_go_on_and_it_recovers() {
    let (mut cfg, _dir) = sqlite_config("full");
    cfg.storage.max_db_bytes = Some(256 * 1024);
    cfg.rate.per_sec = 10_000;
    cfg.rate.burst = 10_000;
    let dir = cfg.storage.data_dir.clone();
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let big = "x".repeat(1900);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        let cid = format!("m{i}");
        ada.say(&cid, &big).await;
        match ada.recv().await {
            ServerMsg::Ack(a) => acked.push((cid, a.seq)),
            ServerMsg::Error(e) => {
                assert_eq!(e.code, ErrorCode::StorageUnavailable);
                assert_eq!(e.cid.as_deref(), Some(cid.as_str()));
                refused = Some(cid);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let refused = refused.expect("the quota is reached");
    // Reads are still served.
    let (_bob, w) = server.joined("Bob", "lobby").await;
    assert!(!w.history.is_empty());
    // Nothing false was acknowledged: every ack is stored, the refused one is not.
    let stored = export(&dir, "lobby");
    for (cid, seq) in &acked {
        assert!(stored.iter().any(|e| e.seq() == *seq
            && matches!(e, RoomEvent::Message(m) if m.cid.as_ref().is_some_and(|c| c.as_str() == cid))));
    }
    assert!(
        !stored
            .iter()
            .any(|e| matches!(e, RoomEvent::Message(m) if m.cid.as_ref().is_some_and(|c| c.as_str() == refused)))
    );

    // An operator frees space; the client's retry is then stored.
    let conn = rusqlite::Connection::open(dir.join(DB_FILE)).expect("open");
    conn.busy_timeout(Duration::from_secs(5)).expect("timeout");
    conn.execute("DELETE FROM events WHERE seq < ?1", [acked[acked.len() / 2].1.0 as i64]).expect("delete");
    drop(conn);
    ada.say(&refused, &big).await;
    let seq = loop {
        match ada.recv().await {
            ServerMsg::Ack(a) => break a.seq,
            ServerMsg::Notice(_) => continue,
            other => panic!("expected the retry to be acked, got {other:?}"),
        }
    };
    let last = acked.last().map(|(_, s)| *s).expect("some acked");
    assert!(seq > last, "seqs continue after the failure");
}

#[tokio::test]
async fn older_messages_come_page_by_page() {
    let (mut cfg, _dir) = sqlite_config("paging");
    cfg.limits.welcome_history = 10;
    cfg.rate.burst = 1000;
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await; // seq 1
    for i in 0..30 {
        ada.say(&format!("c{i}"), &format!("{i}")).await; // seqs 2..=31
        ack_seq(ada.recv().await);
    }
    let (mut bob, w) = server.joined("Bob", "lobby").await; // seq 32
    assert_eq!(w.history.len(), 11, "the latest 10 before Bob, and his join");
    let oldest = w.history[0].seq();
    assert_eq!(oldest, Seq(22));
    bob.send(&ClientMsg::History(HistoryRequest { before: oldest, limit: 15 })).await;
    let page = match bob.recv().await {
        ServerMsg::History(p) => p,
        other => panic!("expected a page, got {other:?}"),
    };
    assert_eq!(page.events.iter().map(|e| e.seq().0).collect::<Vec<_>>(), (7..22).collect::<Vec<_>>());
    assert!(!page.complete);
    bob.send(&ClientMsg::History(HistoryRequest { before: Seq(7), limit: 500 })).await;
    let page = match bob.recv().await {
        ServerMsg::History(p) => p,
        other => panic!("expected a page, got {other:?}"),
    };
    assert_eq!(page.events.len(), 6, "seqs 1..=6; the limit is capped at the protocol maximum");
    assert!(page.complete);
}

#[tokio::test]
async fn paging_works_on_the_memory_store_too() {
    let mut cfg = config();
    cfg.history = HistoryKind::Memory;
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    ada.send(&ClientMsg::History(HistoryRequest { before: Seq(2), limit: 10 })).await;
    assert!(matches!(ada.recv().await, ServerMsg::History(p) if p.events.len() == 1 && p.complete));
}

#[tokio::test]
async fn retention_deletes_old_events_in_the_background() {
    let (mut cfg, _dir) = sqlite_config("retention");
    cfg.storage.retain_count = Some(5);
    cfg.storage.retention_interval = Duration::from_millis(100);
    cfg.rate.burst = 1000;
    let dir = cfg.storage.data_dir.clone();
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let mut last = Seq(0);
    for i in 0..20 {
        ada.say(&format!("c{i}"), &format!("{i}")).await;
        last = ack_seq(ada.recv().await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = export(&dir, "lobby");
        if events.len() <= 5 {
            assert_eq!(events.last().map(RoomEvent::seq), Some(last), "the newest are kept");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "retention did not run: {} events", events.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Seqs go on from the head, not from what is left.
    ada.say("next", "next").await;
    assert_eq!(ack_seq(ada.recv().await), last.next());
}

#[tokio::test]
async fn retention_by_age() {
    let (mut cfg, _dir) = sqlite_config("age");
    cfg.storage.retain_age = Some(Duration::from_millis(600));
    cfg.storage.retention_interval = Duration::from_millis(100);
    let dir = cfg.storage.data_dir.clone();
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    ada.say("old", "old").await;
    ack_seq(ada.recv().await);
    tokio::time::sleep(Duration::from_millis(900)).await;
    ada.say("new", "new").await;
    ack_seq(ada.recv().await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while texts(&export(&dir, "lobby")) != ["new"] {
        assert!(tokio::time::Instant::now() < deadline, "old events were not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn export_then_import_round_trips_exactly() {
    let (mut cfg, _dir) = sqlite_config("export");
    cfg.rate.burst = 100;
    let dir = cfg.storage.data_dir.clone();
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    for (i, text) in ["plain", "quotes \" and \\ backslash", "multi\nline", "emoji 😀 <b>html</b>"].iter().enumerate()
    {
        ada.say(&format!("c{i}"), text).await;
        ack_seq(ada.recv().await);
    }
    server.shutdown().await.expect("stops");
    let room = RoomName::parse("lobby").expect("valid");
    let mut first = Vec::new();
    let count = natter_backend::store::transfer::export(&dir, &room, Seq(0), &mut first).expect("export");
    assert_eq!(count, 5);

    let copy = temp_dir("import");
    assert_eq!(natter_backend::store::transfer::import(&copy, &room, &first[..]).expect("import"), 5);
    let mut second = Vec::new();
    natter_backend::store::transfer::export(&copy, &room, Seq(0), &mut second).expect("export again");
    assert_eq!(String::from_utf8(first.clone()).expect("utf-8"), String::from_utf8(second).expect("utf-8"));

    // --since, a non-empty target and bad input are handled.
    let mut tail = Vec::new();
    natter_backend::store::transfer::export(&dir, &room, Seq(3), &mut tail).expect("export since");
    assert_eq!(String::from_utf8(tail).expect("utf-8").lines().count(), 2);
    let again = natter_backend::store::transfer::import(&copy, &room, &first[..]).expect_err("not empty");
    assert!(again.to_string().contains("already holds events"), "{again}");
    let bad = natter_backend::store::transfer::import(&temp_dir("bad"), &room, &b"{\"type\":\"nope\"}\n"[..])
        .expect_err("bad line");
    assert!(bad.to_string().starts_with("line 1"), "{bad}");

    // The imported database serves a server: history and seqs continue.
    let (mut cfg, _dir) = sqlite_config("imported");
    cfg.storage.data_dir = copy.to_path_buf();
    let server = TestServer::start(cfg).await;
    let (_bob, w) = server.joined("Bob", "lobby").await;
    assert_eq!(texts(&w.history).len(), 4);
    assert_eq!(w.seq_head, Seq(6));
}
