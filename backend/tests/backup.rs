//! `natter backup`: a copy taken while the server runs restores to exactly
//! the history it held at that moment.

mod common;

use common::{TestServer, sqlite_config, temp_dir};
use natter_backend::store::backup::{BackupError, PARTIAL_SUFFIX, backup};
use natter_shared::{RoomEvent, ServerMsg};

/// The chat messages' texts in a welcome's history.
fn texts(history: &[RoomEvent]) -> Vec<String> {
    history
        .iter()
        .filter_map(|e| match e {
            RoomEvent::Message(m) => Some(m.text.as_str().to_owned()),
            RoomEvent::Notice(_) => None,
        })
        .collect()
}

/// Says `text` and waits for its ack (so it is stored).
async fn say_stored(c: &mut common::Client, cid: &str, text: &str) {
    c.say(cid, text).await;
    loop {
        if let ServerMsg::Ack(ack) = c.recv().await {
            assert_eq!(ack.cid.as_str(), cid);
            return;
        }
    }
}

#[tokio::test]
async fn a_backup_taken_while_the_server_runs_restores_to_that_moment() {
    let (cfg, dir) = sqlite_config("backup-live");
    let server = TestServer::start(cfg).await;
    let (mut ada, live) = server.joined("ada", "lobby").await;
    let live_history_id = live.history_id.clone();
    for i in 0..3 {
        say_stored(&mut ada, &format!("b{i}"), &format!("before {i}")).await;
    }

    let out = temp_dir("backup-out");
    let dest = out.join("natter-backup.db");
    let report = backup(&dir, &dest).expect("backup while the server runs");
    assert_eq!(report.rooms, 1);
    assert_eq!(report.events, 4, "ada's join and three messages");
    assert!(report.bytes > 0);
    let mut partial = dest.as_os_str().to_owned();
    partial.push(PARTIAL_SUFFIX);
    assert!(!std::path::Path::new(&partial).exists(), "no partial file is left behind");

    // The server goes on after the backup; the backup does not see it.
    say_stored(&mut ada, "a0", "after").await;
    drop(ada);
    server.shutdown().await.expect("clean stop");

    // Restore: the backup as natter.db of an empty data directory.
    let (mut restored_cfg, restored_dir) = sqlite_config("backup-restored");
    std::fs::copy(&dest, natter_backend::store::sqlite::db_path(&restored_dir)).expect("restore the file");
    restored_cfg.storage.data_dir = restored_dir.to_path_buf();
    let restored = TestServer::start(restored_cfg).await;
    let mut bo = restored.client().await;
    let welcome = bo.hello("bo", "lobby").await;
    assert_eq!(texts(&welcome.history), ["before 0", "before 1", "before 2"]);
    // Another history than the live one: a page that saw "after" resumes
    // into a fresh welcome, not into seqs that now mean other messages.
    assert_ne!(welcome.history_id, live_history_id);
    // Seqs go on from the backup's head.
    let head = welcome.seq_head;
    say_stored(&mut bo, "r0", "restored").await;
    let mut again = restored.client().await;
    let w = again.hello("cy", "lobby").await;
    assert!(w.seq_head > head);
}

#[tokio::test]
async fn a_backup_never_overwrites_and_says_why_it_cannot_start() {
    let empty = temp_dir("backup-empty");
    let out = temp_dir("backup-refused");
    let dest = out.join("b.db");
    assert!(matches!(backup(&empty, &dest), Err(BackupError::NoDatabase(_))));
    assert!(!dest.exists());

    let (cfg, dir) = sqlite_config("backup-exists");
    let server = TestServer::start(cfg).await;
    let (_ada, _) = server.joined("ada", "lobby").await;
    std::fs::write(&dest, b"precious").expect("write");
    let err = backup(&dir, &dest).expect_err("refuses an existing file");
    assert!(matches!(err, BackupError::Exists(_)), "{err}");
    assert_eq!(std::fs::read(&dest).expect("read"), b"precious", "the file is untouched");

    // A partial file left by an interrupted backup is not taken over silently.
    let dest2 = out.join("c.db");
    let mut partial = dest2.as_os_str().to_owned();
    partial.push(PARTIAL_SUFFIX);
    std::fs::write(&partial, b"half").expect("write");
    let err = backup(&dir, &dest2).expect_err("refuses while a partial file is there");
    assert!(matches!(err, BackupError::Partial(_)), "{err}");
    assert!(err.to_string().contains("remove it"), "{err}");
    std::fs::remove_file(&partial).expect("remove");
    backup(&dir, &dest2).expect("then it works");
}
