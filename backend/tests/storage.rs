//! Durable history in SQLite: restarts, migrations, refusals at startup,
//! storage failure and recovery, paging, retention, export and import.

mod common;

use std::time::Duration;

use common::{TestServer, config, resume, sqlite_config, temp_dir};
use natter_backend::config::DEFAULT_RESEND_CHECKS_PER_CONNECTION as RESEND_CHECKS_PER_CONNECTION;
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
    let token = welcome.resume_token.as_str();
    let hello = natter_shared::Hello {
        history_id: Some(welcome.history_id.clone()),
        ..resume("Ada", "lobby", first, Some(token))
    };
    let back = match ada.hello_with(hello).await {
        ServerMsg::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    };
    let seqs: Vec<u64> = back.history.iter().map(|e| e.seq().0).collect();
    assert_eq!(seqs, [first.0 + 1], "only Bob's join, once");
    // A re-send from before the restart is recognised after its hint (the
    // seq Ada had when she first sent it); new messages continue the seqs.
    ada.resend("c1", "before the restart", welcome.seq_head).await;
    assert_eq!(ack_seq(ada.recv().await), first, "deduplicated across the restart");
    ada.say("c2", "after the restart").await;
    let second = ack_seq(ada.recv().await);
    // The resend took no seq: the next one follows Bob's join directly.
    assert_eq!(second, Seq(first.0 + 2), "no seq skipped or reused");
    let events = export(&dir, "lobby");
    assert_eq!(texts(&events), ["before the restart", "after the restart"]);
    assert!(events.windows(2).all(|w| w[0].seq() < w[1].seq()), "seqs never go back");
}

/// An SQLite server whose frame rate lets a test re-send as fast as it likes.
fn resend_config(name: &str) -> (natter_backend::Config, common::TempDir) {
    let (mut cfg, dir) = sqlite_config(name);
    cfg.rate.burst = 1_000;
    cfg.rate.per_sec = 1_000;
    (cfg, dir)
}

/// The next message is a `rate_limited` refusal of the message `cid`.
async fn expect_rate_limited(client: &mut common::Client, cid: &str) {
    match client.recv().await {
        ServerMsg::Error(e) => {
            assert_eq!(e.code, ErrorCode::RateLimited);
            assert_eq!(e.cid.as_deref(), Some(cid));
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
}

/// A connection's re-sends are looked up `RESEND_CHECKS_PER_CONNECTION` at
/// once; past that a re-send is refused `rate_limited` (the page sends it
/// again shortly), never stored without a look-up. A first send is never
/// looked up, so the same id without a hint is a new message.
#[tokio::test]
async fn re_sends_are_looked_up_at_a_bounded_rate_per_connection() {
    let (mut cfg, _dir) = resend_config("resend-per-connection");
    // The default burst, and no refill while the test runs (any time it takes).
    cfg.rate.resend_checks_per_connection_per_sec = 0;
    assert_eq!(cfg.rate.resend_checks_per_connection, RESEND_CHECKS_PER_CONNECTION);
    let server = TestServer::start(cfg).await;
    let (mut ada, w) = server.joined("Ada", "lobby").await;
    ada.say("c1", "once").await;
    let first = ack_seq(ada.recv().await);
    for i in 0..RESEND_CHECKS_PER_CONNECTION {
        ada.resend("c1", "once", w.seq_head).await;
        assert_eq!(ack_seq(ada.recv().await), first, "re-send {i} found");
    }
    ada.resend("c1", "once", w.seq_head).await;
    expect_rate_limited(&mut ada, "c1").await;
    // A first send is not limited by it, and is not looked up: the same id
    // without a hint is a new message.
    ada.say("c1", "again").await;
    assert!(ack_seq(ada.recv().await) > first, "a first send is stored");
    // A new connection has look-ups of its own.
    let (mut bo, _) = server.joined("Bo", "lobby").await;
    bo.say("d1", "x").await;
    let d1 = ack_seq(bo.recv().await);
    bo.resend("d1", "x", Seq(d1.0 - 1)).await;
    assert_eq!(ack_seq(bo.recv().await), d1);
}

/// An address's re-send look-ups are rate-limited across its connections:
/// past the burst, a re-send is refused `rate_limited` (the page sends it
/// again shortly), never stored twice.
#[tokio::test]
async fn re_sends_are_looked_up_at_a_bounded_rate_per_address() {
    let (mut cfg, _dir) = resend_config("resend-per-address");
    // The default burst, and no refill while the test runs (any time it takes).
    cfg.rate.resend_checks_per_sec = 0;
    let cfg_burst = cfg.rate.resend_checks_burst;
    assert_eq!(cfg_burst, natter_backend::config::DEFAULT_RESEND_CHECKS_PER_ADDRESS_BURST);
    let dir = cfg.storage.data_dir.clone();
    let server = TestServer::start(cfg).await;
    let (mut ada, w) = server.joined("Ada", "lobby").await;
    ada.say("c1", "once").await;
    let first = ack_seq(ada.recv().await);
    let per_conn = RESEND_CHECKS_PER_CONNECTION;
    let mut clients = Vec::new();
    let mut left = cfg_burst;
    let mut token = w.resume_token.clone();
    while left > 0 {
        let mut c = server.client().await;
        let hello = resume("Ada", "lobby", w.seq_head, Some(token.as_str()));
        match c.hello_with(hello).await {
            // Each resume gives the next token.
            ServerMsg::Welcome(back) => token = back.resume_token,
            other => panic!("expected a welcome, got {other:?}"),
        }
        for _ in 0..per_conn.min(left) {
            c.resend("c1", "once", w.seq_head).await;
            // Skip what the replaced connection's room sends; the ack is what counts.
            loop {
                match c.recv().await {
                    ServerMsg::Ack(a) => {
                        assert_eq!(a.seq, first);
                        break;
                    }
                    ServerMsg::Error(e) => panic!("refused within the burst: {e:?}"),
                    _ => {}
                }
            }
            left -= 1;
        }
        clients.push(c);
    }
    let (mut fresh, _) = server.joined("Bo", "lobby").await;
    fresh.resend("b1", "x", Seq(0)).await;
    expect_rate_limited(&mut fresh, "b1").await;
    // A first send from the same address is not limited by it; the refused
    // re-send took no seq.
    fresh.say("b2", "y").await;
    let b2 = ack_seq(fresh.recv().await);
    let texts_now = texts(&export(&dir, "lobby"));
    assert_eq!(texts_now, ["once", "y"], "nothing stored twice, nothing refused stored");
    assert!(b2 > first);
    drop(clients);
}

#[tokio::test]
async fn members_resume_after_a_restart_without_presence_and_the_absent_time_out_once() {
    let (mut cfg, _dir) = sqlite_config("restart-resume");
    cfg.timing.restart_grace = Duration::from_millis(600);
    let server = TestServer::start(cfg.clone()).await;
    let (mut ada, ada_w) = server.joined("Ada", "lobby").await;
    let (mut bob, bob_w) = server.joined("Bob", "lobby").await;
    let (_cy, _) = server.joined("Cy", "lobby").await;
    ada.say("c1", "before").await;
    let mut ada_last = Seq(0);
    let mut bob_last = Seq(0);
    // Each keeps the latest seq it saw, as a page does.
    while let Some(msg) = ada.try_recv(Duration::from_millis(200)).await {
        if let Some(seq) = seq_of(&msg) {
            ada_last = ada_last.max(seq);
        }
    }
    while let Some(msg) = bob.try_recv(Duration::from_millis(200)).await {
        if let Some(seq) = seq_of(&msg) {
            bob_last = bob_last.max(seq);
        }
    }
    server.shutdown().await.expect("clean shutdown");
    drop((ada, bob));

    // Ada and Bob come back with their tokens; Cy does not.
    let server = TestServer::start(cfg).await;
    let mut back = Vec::new();
    for (name, w, last) in [("Ada", &ada_w, ada_last), ("Bob", &bob_w, bob_last)] {
        let mut c = server.client().await;
        let hello = natter_shared::Hello {
            history_id: Some(w.history_id.clone()),
            ..resume(name, "lobby", last, Some(w.resume_token.as_str()))
        };
        match c.hello_with(hello).await {
            ServerMsg::Welcome(w) => {
                assert!(w.history.is_empty(), "{name} missed nothing: {:?}", w.history);
                assert_eq!(w.member_count, 3, "Cy is still in her grace period");
            }
            other => panic!("expected {name}'s welcome, got {other:?}"),
        }
        back.push(c);
    }
    // Nobody hears of the resumes; Cy times out once the restart's grace ends.
    for c in &mut back {
        match c.recv().await {
            ServerMsg::Notice(n) => {
                assert_eq!((n.kind, n.name.as_str()), (natter_shared::NoticeKind::TimedOut, "Cy"));
            }
            other => panic!("expected Cy's time-out and nothing before it, got {other:?}"),
        }
        c.expect_quiet().await;
    }
}

fn seq_of(msg: &ServerMsg) -> Option<Seq> {
    match msg {
        ServerMsg::Message(m) => Some(m.seq),
        ServerMsg::Notice(n) => Some(n.seq),
        ServerMsg::Ack(a) => Some(a.seq),
        _ => None,
    }
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
    // A re-send of the old message is found after its hint (version 4
    // dropped the index version 2 added; the primary key finds it).
    old.resend("c9", "from v1", Seq(1)).await;
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

/// Opens the test's database beside the server, as an operator's shell would.
fn side_connection(dir: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE)).expect("open the database");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    conn
}

/// Replies to `cids` (acks and errors), in any order, keyed by cid.
async fn replies(client: &mut common::Client, cids: &[&str]) -> Vec<(String, Result<Seq, ErrorCode>)> {
    let mut got = Vec::new();
    while got.len() < cids.len() {
        match client.recv().await {
            ServerMsg::Ack(a) => got.push((a.cid.to_string(), Ok(a.seq))),
            ServerMsg::Error(e) => got.push((e.cid.clone().expect("a say's error names its cid"), Err(e.code))),
            ServerMsg::Notice(_) | ServerMsg::Message(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    got
}

#[tokio::test]
async fn a_poisoned_message_fails_alone_and_the_rest_of_its_batch_is_stored() {
    let (mut cfg, _dir) = sqlite_config("poison-message");
    cfg.rate.burst = 100;
    let dir = cfg.storage.data_dir.clone();
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await; // seq 1
    let (mut bob, _) = server.joined("Bob", "lobby").await; // seq 2
    let _ = ada.recv().await; // Bob joined
    let db = side_connection(&dir);
    db.execute_batch(
        "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.text = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
    )
    .expect("install the trigger");
    // Holding the write lock stalls the writer on its next batch, so the
    // messages behind it queue up and share a batch with the poisoned one.
    db.execute_batch("BEGIN IMMEDIATE").expect("lock");
    ada.say("a1", "before").await;
    ada.say("a2", "poison").await;
    ada.say("a3", "after").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    db.execute_batch("COMMIT").expect("unlock");

    let got = replies(&mut ada, &["a1", "a2", "a3"]).await;
    assert_eq!(
        got,
        [
            ("a1".to_owned(), Ok(Seq(3))),
            ("a2".to_owned(), Err(ErrorCode::StorageUnavailable)),
            ("a3".to_owned(), Ok(Seq(4))), // the poisoned write took no seq
        ]
    );
    for (seq, text) in [(3, "before"), (4, "after")] {
        match bob.recv().await {
            ServerMsg::Message(m) => assert_eq!((m.seq, m.text.as_str()), (Seq(seq), text)),
            other => panic!("expected {text:?}, got {other:?}"),
        }
    }
    // Nothing keeps retrying it: later messages are stored, with dense seqs.
    ada.say("a4", "later").await;
    assert_eq!(ack_seq(ada.recv().await), Seq(5));
    assert!(matches!(bob.recv().await, ServerMsg::Message(m) if m.seq == Seq(5)));
    bob.expect_quiet().await;
    let events = export(&dir, "lobby");
    assert_eq!(texts(&events), ["before", "after", "later"]);
    assert_eq!(events.iter().map(|e| e.seq().0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_poisoned_notice_is_dropped_after_its_attempts_and_the_room_keeps_working() {
    let (mut cfg, _dir) = sqlite_config("poison-notice");
    cfg.rate.burst = 100;
    let dir = cfg.storage.data_dir.clone();
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await; // seq 1
    let db = side_connection(&dir);
    db.execute_batch(
        "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.kind = 'joined' AND NEW.name = 'Mallory'
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
    )
    .expect("install the trigger");
    let mut mallory = server.client().await;
    let welcome = mallory.hello("Mallory", "lobby").await;
    assert_eq!(welcome.members.len(), 2, "the membership itself does not depend on the notice");

    // Every later batch stores its other writes; the notice's retries (each
    // batch carries it until it has used its attempts) harm none of them.
    for i in 0..5u64 {
        ada.say(&format!("m{i}"), &format!("{i}")).await;
        assert_eq!(ack_seq(ada.recv().await), Seq(2 + i), "dense seqs: the failing notice took none");
    }
    // By now the notice was given up: even with the trigger gone it is not stored.
    db.execute_batch("DROP TRIGGER poison").expect("drop the trigger");
    ada.say("after", "after").await;
    assert_eq!(ack_seq(ada.recv().await), Seq(7));
    mallory.say("hi", "hi").await;
    assert_eq!(replies(&mut mallory, &["hi"]).await, [("hi".to_owned(), Ok(Seq(8)))]);
    let (_bob, w) = server.joined("Bob", "lobby").await;
    assert_eq!(w.seq_head, Seq(9), "Mallory's message and Bob's join follow at once");
    let events = export(&dir, "lobby");
    assert_eq!(events.iter().map(|e| e.seq().0).collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>());
    assert!(
        !events.iter().any(|e| matches!(e, RoomEvent::Notice(n) if n.name.as_str() == "Mallory")),
        "the poisoned notice was dropped, not stored late"
    );
}

/// The next frame as plain JSON, read without the protocol's validation.
async fn recv_json(client: &mut common::Client) -> serde_json::Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(common::RECV_TIMEOUT, client.ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn stored_events_that_todays_rules_refuse_are_still_served() {
    let (cfg, _dir) = sqlite_config("lenient");
    let dir = cfg.storage.data_dir.clone();
    drop(natter_backend::store::sqlite::open_for_writing(&dir.join(DB_FILE)).expect("create"));
    let zwj = "Zero\u{200D}Width";
    let long_name = "n".repeat(100);
    let long_text = "t".repeat(natter_shared::limits::MESSAGE_MAX_CHARS + 100);
    let db = side_connection(&dir);
    let insert = "INSERT INTO events (room, seq, ts, kind, name, name_key, color, text, cid)
                  VALUES ('lobby', ?1, ?2, ?3, ?4, lower(?4), '#e12b2b', ?5, ?6)";
    /// seq, ts, kind, name, text, cid
    type Row<'a> = (i64, &'a dyn rusqlite::ToSql, &'a str, &'a str, Option<&'a str>, Option<&'a str>);
    let rows: [Row<'_>; 6] = [
        // Written under older, looser rules: served as stored.
        (1, &1000, "message", zwj, Some("from the past"), Some("c1")),
        (2, &1001, "joined", long_name.as_str(), None, None),
        (3, &1002, "message", "Old", Some(long_text.as_str()), Some("not a cid!")),
        // Truly unreadable: skipped with a warning, the room still opens.
        (4, &1003, "exploded", "Old", None, None),
        (5, &1004, "message", "Old", None, Some("c5")),
        (6, &"yesterday", "message", "Old", Some("x"), Some("c6")),
    ];
    for (seq, ts, kind, name, text, cid) in rows {
        db.execute(insert, rusqlite::params![seq, ts, kind, name, text, cid]).expect("insert");
    }
    db.execute("INSERT INTO rooms (room, head) VALUES ('lobby', 6)", []).expect("head");
    drop(db);

    let server = TestServer::start(cfg).await;
    let mut ada = server.client().await;
    ada.send(&ClientMsg::Hello(common::hello("Ada", "lobby"))).await;
    let welcome = recv_json(&mut ada).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["seq_head"], 6);
    let history = welcome["history"].as_array().expect("history");
    assert_eq!(history.iter().map(|e| e["seq"].as_u64().expect("seq")).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(history[0]["name"], zwj);
    assert_eq!(history[0]["text"], "from the past");
    assert_eq!(history[1]["name"], long_name.as_str());
    assert_eq!(history[1]["kind"], "joined");
    assert_eq!(history[2]["text"], long_text.as_str());
    assert_eq!(history[2]["cid"], "not a cid!");
    let joined = recv_json(&mut ada).await;
    assert_eq!(joined["type"], "notice", "{joined}");
    assert_eq!(joined["seq"], 7, "{joined}");
    // Older pages read the same rows the same way.
    ada.send(&ClientMsg::History(HistoryRequest { before: Seq(7), limit: 10 })).await;
    let page = recv_json(&mut ada).await;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(3), "{page}");
}

/// An NDJSON message line for an import.
fn message_line(seq: u64, text: &str) -> String {
    format!(
        r##"{{"type":"message","seq":{seq},"ts":{},"name":"Ada","color":"#1e77d0","text":"{text}","cid":"c{seq}"}}"##,
        1_000 + seq
    )
}

fn event_count(dir: &std::path::Path) -> (i64, i64) {
    let db = side_connection(dir);
    let events = db.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).expect("count events");
    let rooms = db.query_row("SELECT count(*) FROM rooms", [], |r| r.get(0)).expect("count rooms");
    (events, rooms)
}

#[test]
fn an_import_that_fails_at_any_line_leaves_the_database_as_it_was() {
    use natter_backend::store::transfer::import;
    let room = RoomName::parse("lobby").expect("valid");
    // More lines than the import once committed per transaction (10,000), then a bad one.
    let mut input: String = (1..=10_001).map(|seq| message_line(seq, "x") + "\n").collect();
    input.push_str(&message_line(10_001, "the same seq again"));

    let existing = temp_dir("import-atomic");
    drop(natter_backend::store::sqlite::open_for_writing(&existing.join(DB_FILE)).expect("create"));
    let err = import(&existing, &room, input.as_bytes()).expect_err("line 10002 is refused");
    assert_eq!(event_count(&existing), (0, 0), "nothing of the import is kept");
    assert!(err.to_string().starts_with("line 10002, field `seq`"), "{err}");

    let fresh = temp_dir("import-atomic-new");
    let err = import(&fresh, &room, input.as_bytes()).expect_err("line 10002 is refused");
    assert!(err.to_string().starts_with("line 10002"), "{err}");
    assert!(!fresh.join(DB_FILE).exists(), "no database is left behind");

    // The same input without its bad line imports whole.
    let good = input.rsplit_once('\n').expect("lines").0;
    assert_eq!(import(&existing, &room, good.as_bytes()).expect("imports"), 10_001);
    assert_eq!(event_count(&existing), (10_001, 1));
}

#[test]
fn import_checks_every_field_like_the_server_and_names_the_line_and_field() {
    use natter_backend::store::transfer::import;
    let room = RoomName::parse("lobby").expect("valid");
    let notice = |fields: &str| format!(r##"{{"type":"notice","seq":2,"ts":1002,"kind":"left",{fields}}}"##);
    let message = |fields: &str| format!(r##"{{"type":"message","seq":2,"ts":1002,"cid":"c2",{fields}}}"##);
    let ada = r##""name":"Ada","color":"#1e77d0""##;
    let cases: Vec<(String, &str)> = vec![
        // seq: a number, increasing, and small enough to store and to go on from.
        (message_line(2, "x").replace("\"seq\":2", "\"seq\":9223372036854775808"), "seq"),
        (message_line(2, "x").replace("\"seq\":2", "\"seq\":18446744073709551615"), "seq"),
        (message_line(2, "x").replace("\"seq\":2", "\"seq\":9007199254740992"), "seq"),
        (message_line(2, "x").replace("\"seq\":2", "\"seq\":-2"), "seq"),
        (message_line(2, "x").replace("\"seq\":2", "\"seq\":\"2\""), "seq"),
        (message_line(2, "x").replace("\"seq\":2,", ""), "seq"),
        (message_line(1, "x"), "seq"),
        // ts: a number within i64, and not in the future.
        (message_line(2, "x").replace("\"ts\":1002", "\"ts\":9223372036854775808"), "ts"),
        (message_line(2, "x").replace("\"ts\":1002", "\"ts\":9000000000000"), "ts"),
        (message_line(2, "x").replace("\"ts\":1002", "\"ts\":-1"), "ts"),
        // The colour is #rrggbb, nothing else.
        (message(r##""name":"Ada","color":"red","text":"x""##), "color"),
        (message(r##""name":"Ada","color":"#12345","text":"x""##), "color"),
        (message(r##""name":"Ada","color":"#1e77d0; background: url(x)","text":"x""##), "color"),
        (message(r##""name":"Ada","color":"#gggggg","text":"x""##), "color"),
        // Names, texts and cids pass the rules a client's input passes.
        (message(r##""name":"","color":"#1e77d0","text":"x""##), "name"),
        (message(r##""name":"Zero\u200dWidth","color":"#1e77d0","text":"x""##), "name"),
        (message(&format!(r##""name":"{}","color":"#1e77d0","text":"x""##, "n".repeat(25))), "name"),
        (message(r##""name":7,"color":"#1e77d0","text":"x""##), "name"),
        (message(&format!("{ada},\"text\":\"  \"")), "text"),
        (message(&format!("{ada},\"text\":\"bell\\u0007\"")), "text"),
        (message(&format!("{ada},\"text\":\"{}\"", "x".repeat(2001))), "text"),
        (message(ada), "text"),
        (message(&format!("{ada},\"text\":\"x\"")).replace("\"cid\":\"c2\"", "\"cid\":\"has space\""), "cid"),
        (message(&format!("{ada},\"text\":\"x\"")).replace("\"cid\":\"c2\"", "\"cid\":\"c1\""), "cid"),
        (notice(ada).replace("\"left\"", "\"exploded\""), "kind"),
        (notice(ada).replace("\"kind\":\"left\",", ""), "kind"),
        (notice(ada).replace("\"notice\"", "\"shout\""), "type"),
    ];
    for (bad, field) in cases {
        let dir = temp_dir("import-field");
        let input = format!("{}\n{bad}\n{}\n", message_line(1, "first"), message_line(3, "third"));
        let err = import(&dir, &room, input.as_bytes()).expect_err(&bad);
        assert!(err.to_string().starts_with(&format!("line 2, field `{field}`")), "{bad}\n→ {err}");
        assert!(!dir.join(DB_FILE).exists(), "nothing is left of a refused import: {bad}");
    }
    let dir = temp_dir("import-not-json");
    let err = import(&dir, &room, &b"{\"type\":\"message\",\n"[..]).expect_err("not JSON");
    assert!(err.to_string().starts_with("line 1: not JSON"), "{err}");

    // Decided: times may go back (history merged from several clocks is still
    // history; the page orders by seq), and surrounding spaces of a name are
    // trimmed as the server trims them.
    let dir = temp_dir("import-ts-back");
    let input = format!(
        "{}\n{}\n{}\n",
        message_line(1, "x"),
        message_line(2, "y").replace("\"ts\":1002", "\"ts\":5"),
        message(r##""name":"  Ada ","color":"#1E77D0","text":"z""##)
            .replace("\"seq\":2", "\"seq\":3")
            .replace("\"cid\":\"c2\"", "\"cid\":\"c3\""),
    );
    assert_eq!(import(&dir, &room, input.as_bytes()).expect("imports"), 3);
    let events = export(&dir, "lobby");
    assert_eq!(events.iter().map(|e| e.ts().0).collect::<Vec<_>>(), [1001, 5, 1002]);
    assert!(matches!(&events[2], RoomEvent::Message(m) if m.name.as_str() == "Ada"));
}

#[test]
fn import_never_takes_a_room_below_its_head() {
    use natter_backend::store::transfer::import;
    // Retention deleted every event, but the room's seqs went up to 57.
    let dir = temp_dir("import-head");
    drop(natter_backend::store::sqlite::open_for_writing(&dir.join(DB_FILE)).expect("create"));
    side_connection(&dir).execute("INSERT INTO rooms (room, head) VALUES ('lobby', 57)", []).expect("head");
    let room = RoomName::parse("lobby").expect("valid");
    let err = import(&dir, &room, message_line(1, "x").as_bytes()).expect_err("seqs would be reused");
    assert!(err.to_string().contains("already"), "{err}");
    assert_eq!(event_count(&dir), (0, 1));
}

#[tokio::test]
async fn a_server_started_right_after_another_stops_finds_the_directory_free() {
    // The writer gives the directory's lock back before it says it stopped:
    // a restart never races the old writer for it.
    let (cfg, _dir) = sqlite_config("quick-restarts");
    for round in 0..10 {
        let server = TestServer::start(cfg.clone()).await;
        let (ada, _) = server.joined(&format!("Ada{round}"), "lobby").await;
        ada.close().await;
        server.shutdown().await.expect("clean shutdown");
    }
}
