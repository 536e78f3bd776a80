//! Resume after a drop: replay from `last_seq`, reclaiming a name with the
//! resume token, and deduplicating re-sent messages.

mod common;

use std::time::Duration;

use common::{Ended, TestServer, config, resume};
use natter_shared::{NoticeKind, RoomEvent, Seq, ServerMsg, close};

fn texts(events: &[RoomEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            RoomEvent::Message(m) => m.text.as_str().to_owned(),
            RoomEvent::Notice(n) => format!("{:?} {}", n.kind, n.name),
        })
        .collect()
}

#[tokio::test]
async fn resume_with_last_seq_replays_exactly_the_missed_events() {
    let server = TestServer::start(config()).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let (bob, bob_welcome) = server.joined("Bob", "lobby").await;
    let _ = ada.recv().await; // Bob joined
    let last_seen = bob_welcome.seq_head;
    let token = bob_welcome.resume_token.as_str().to_owned();
    bob.drop_connection();

    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        ada.say(&format!("a{i}"), text).await;
        assert!(matches!(ada.recv().await, ServerMsg::Ack(_)));
    }
    let mut bob = server.client().await;
    let welcome = match bob.hello_with(resume("Bob", "lobby", last_seen, Some(&token))).await {
        ServerMsg::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    };
    assert_eq!(texts(&welcome.history), ["one", "two", "three"]);
    assert_eq!(welcome.history.first().map(RoomEvent::seq), Some(last_seen.next()));
    assert_eq!(welcome.seq_head, Seq(last_seen.0 + 3));
    assert_eq!(welcome.missed, None);

    // And live events continue right after.
    ada.say("a9", "four").await;
    match bob.recv().await {
        ServerMsg::Message(m) => {
            assert_eq!((m.seq, m.text.as_str()), (Seq(last_seen.0 + 4), "four"))
        }
        other => panic!("expected message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_resume_token_reclaims_the_name_without_a_leave_or_join() {
    let mut cfg = config();
    cfg.timing.leave_grace = Duration::from_millis(600);
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let (bob, w) = server.joined("Bob", "lobby").await;
    let _ = ada.recv().await;
    let token = w.resume_token.as_str().to_owned();
    bob.drop_connection();

    // Without the token the name is still taken during the grace period.
    let mut impostor = server.client().await;
    assert!(matches!(
        impostor.hello_with(common::hello("bob", "lobby")).await,
        ServerMsg::Error(e) if e.code == natter_shared::ErrorCode::NameTaken
    ));

    let mut bob = server.client().await;
    let welcome = match bob.hello_with(resume("Bob", "lobby", w.seq_head, Some(&token))).await {
        ServerMsg::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    };
    assert_eq!(welcome.you, w.you);
    assert_eq!(welcome.members.len(), 2);
    assert!(welcome.history.is_empty(), "nothing happened meanwhile");
    // Well past the grace period: Ada saw neither a leave nor a join.
    assert!(ada.try_recv(Duration::from_millis(1200)).await.is_none());
    // Bob is fully back.
    bob.say("b1", "back").await;
    assert!(matches!(bob.recv().await, ServerMsg::Ack(_)));
    assert!(matches!(ada.recv().await, ServerMsg::Message(m) if m.text.as_str() == "back"));
}

#[tokio::test]
async fn resuming_replaces_a_connection_that_is_still_open() {
    let server = TestServer::start(config()).await;
    let (mut old, w) = server.joined("Ada", "lobby").await;
    let mut new = server.client().await;
    let token = w.resume_token.as_str();
    assert!(matches!(new.hello_with(resume("Ada", "lobby", w.seq_head, Some(token))).await, ServerMsg::Welcome(_)));
    assert_eq!(old.closed().await, Ended::Close(close::REPLACED, close::REPLACED_REASON.into()));
    // The replaced connection's end announces nothing; the new one works.
    let (mut bob, bw) = server.joined("Bob", "lobby").await;
    assert_eq!(bw.members.len(), 2);
    assert!(matches!(new.recv().await, ServerMsg::Notice(n) if n.kind == NoticeKind::Joined));
    bob.expect_quiet().await;
}

#[tokio::test]
async fn a_resent_message_is_acknowledged_again_and_not_delivered_twice() {
    let server = TestServer::start(config()).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let (mut bob, w) = server.joined("Bob", "lobby").await;
    let _ = ada.recv().await;

    bob.say("same-id", "only once").await;
    let first = match bob.recv().await {
        ServerMsg::Ack(a) => a,
        other => panic!("expected ack, got {other:?}"),
    };
    assert!(matches!(ada.recv().await, ServerMsg::Message(_)));
    // The ack was "lost": Bob reconnects and re-sends from his outbox.
    bob.drop_connection();
    let mut bob = server.client().await;
    let token = w.resume_token.as_str();
    let _ = bob.hello_with(resume("Bob", "lobby", w.seq_head, Some(token))).await;
    bob.resend("same-id", "only once", w.seq_head).await;
    match bob.recv().await {
        ServerMsg::Ack(a) => assert_eq!(a, first, "same seq and time as the first ack"),
        other => panic!("expected ack, got {other:?}"),
    }
    ada.expect_quiet().await;
    // Another user may use the same cid: dedupe is per sender.
    ada.say("same-id", "mine").await;
    assert!(matches!(ada.recv().await, ServerMsg::Ack(a) if a.seq > first.seq));
}

#[tokio::test]
async fn a_resume_beyond_history_gets_the_latest_events_and_a_missed_count() {
    let mut cfg = config();
    cfg.limits.history_per_room = 5;
    cfg.rate.burst = 100;
    let server = TestServer::start(cfg).await;
    let (mut ada, w) = server.joined("Ada", "lobby").await; // seq 1
    for i in 0..10 {
        ada.say(&format!("m{i}"), &format!("{i}")).await; // seqs 2..=11
        assert!(matches!(ada.recv().await, ServerMsg::Ack(_)));
    }
    let mut again = server.client().await;
    let token = w.resume_token.as_str();
    let welcome = match again.hello_with(resume("Ada", "lobby", Seq(1), Some(token))).await {
        ServerMsg::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    };
    assert_eq!(texts(&welcome.history), ["5", "6", "7", "8", "9"]);
    assert_eq!(welcome.missed, Some(5), "seqs 2..=6 are gone");
}

#[tokio::test]
async fn resume_without_a_token_after_timing_out_rejoins_with_the_gap_filled() {
    let mut cfg = config();
    cfg.timing.leave_grace = Duration::from_millis(200);
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let (bob, w) = server.joined("Bob", "lobby").await;
    let _ = ada.recv().await;
    bob.drop_connection();
    assert!(matches!(ada.recv().await, ServerMsg::Notice(n) if n.kind == NoticeKind::TimedOut));
    ada.say("x", "while you were away").await;
    let _ = ada.recv().await;
    let mut bob = server.client().await;
    let welcome = match bob.hello_with(resume("Bob", "lobby", w.seq_head, Some(w.resume_token.as_str()))).await {
        ServerMsg::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    };
    // A stale token just joins again: the replay covers the gap, then the new join is announced.
    assert_eq!(texts(&welcome.history), ["TimedOut Bob", "while you were away"]);
    bob.own_join("Bob").await;
    assert!(matches!(ada.recv().await, ServerMsg::Notice(n) if n.kind == NoticeKind::Joined));
}

#[tokio::test]
async fn every_resume_rotates_the_token_and_a_stale_token_is_refused() {
    let mut cfg = config();
    cfg.timing.leave_grace = Duration::from_secs(30);
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let (bob, first) = server.joined("Bob", "lobby").await;
    let _ = ada.recv().await; // Bob joined
    let welcome = |msg: ServerMsg| match msg {
        ServerMsg::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    };
    let name_taken =
        |msg: ServerMsg| matches!(msg, ServerMsg::Error(e) if e.code == natter_shared::ErrorCode::NameTaken);
    let mut tokens = vec![first.resume_token.as_str().to_owned()];
    let mut bob = Some(bob);

    for _ in 0..2 {
        // Dropped, then back with the latest token: a new one each time.
        if let Some(gone) = bob.take() {
            gone.drop_connection();
        }
        let latest = tokens.last().expect("a token").clone();
        let mut back = server.client().await;
        let w = welcome(back.hello_with(resume("Bob", "lobby", first.seq_head, Some(&latest))).await);
        let rotated = w.resume_token.as_str().to_owned();
        assert!(!tokens.contains(&rotated), "the welcome of a resume carries a new token");
        tokens.push(rotated);
        bob = Some(back);
    }
    // Every earlier token is dead, and trying one does not disturb Bob.
    let mut bob = bob.expect("attached");
    for stale in &tokens[..tokens.len() - 1] {
        let mut thief = server.client().await;
        assert!(name_taken(thief.hello_with(resume("Bob", "lobby", first.seq_head, Some(stale))).await));
    }
    bob.say("b1", "still me").await;
    assert!(matches!(bob.recv().await, ServerMsg::Ack(_)));
    assert!(matches!(ada.recv().await, ServerMsg::Message(m) if m.text.as_str() == "still me"));
    // Dropped again: a stale token cannot take the name in the grace period either.
    bob.drop_connection();
    let mut thief = server.client().await;
    assert!(name_taken(thief.hello_with(resume("Bob", "lobby", first.seq_head, Some(&tokens[1]))).await));
    let mut bob = server.client().await;
    let latest = tokens.last().expect("a token");
    assert!(matches!(
        bob.hello_with(resume("Bob", "lobby", first.seq_head, Some(latest))).await,
        ServerMsg::Welcome(_)
    ));
    ada.expect_quiet().await;
}
