//! Chatting, rooms, names, colours, ordering and typing against a real server.

mod common;

use std::time::Duration;

use common::{TestServer, config};
use natter_shared::{ClientMsg, ErrorCode, NoticeKind, RoomEvent, Seq, ServerMsg, Typing, UserName, color_for};

fn expect_message(msg: ServerMsg) -> natter_shared::ChatMessage {
    match msg {
        ServerMsg::Message(m) => m,
        other => panic!("expected message, got {other:?}"),
    }
}

fn expect_notice(msg: ServerMsg, kind: NoticeKind, name: &str) -> natter_shared::Notice {
    match msg {
        ServerMsg::Notice(n) if n.kind == kind && n.name.as_str() == name => n,
        other => panic!("expected {kind:?} notice for {name}, got {other:?}"),
    }
}

#[tokio::test]
async fn two_clients_chat_both_ways() {
    let server = TestServer::start(config()).await;
    let (mut ada, welcome) = server.joined("Ada", "lobby").await;
    assert_eq!(welcome.room.as_str(), "lobby");
    assert_eq!(welcome.you.name.as_str(), "Ada");
    assert_eq!(welcome.members.len(), 1);
    // The joiner's own "joined" notice is the last event of its welcome.
    assert!(matches!(welcome.history.last(), Some(RoomEvent::Notice(n)) if n.kind == NoticeKind::Joined));
    assert_eq!(welcome.seq_head, Seq(1));

    let (mut bob, bob_welcome) = server.joined("Bob", "lobby").await;
    assert_eq!(bob_welcome.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["Ada", "Bob"]);
    let joined = expect_notice(ada.recv().await, NoticeKind::Joined, "Bob");
    assert_eq!(joined.seq, Seq(2));

    ada.say("a1", "hello <b>Bob</b>").await;
    let ack = match ada.recv().await {
        ServerMsg::Ack(ack) => ack,
        other => panic!("expected ack, got {other:?}"),
    };
    assert_eq!(ack.cid.as_str(), "a1");
    assert_eq!(ack.seq, Seq(3));
    let m = expect_message(bob.recv().await);
    assert_eq!((m.seq, m.name.as_str(), m.text.as_str()), (Seq(3), "Ada", "hello <b>Bob</b>"));
    assert_eq!(m.ts, ack.ts);
    assert_eq!(m.cid.as_ref().map(|c| c.as_str()), Some("a1"));

    bob.say("b1", "hi Ada").await;
    assert!(matches!(bob.recv().await, ServerMsg::Ack(a) if a.seq == Seq(4)));
    let m = expect_message(ada.recv().await);
    assert_eq!((m.name.as_str(), m.text.as_str()), ("Bob", "hi Ada"));
    // The sender gets its ack, not an echo.
    ada.expect_quiet().await;
}

#[tokio::test]
async fn three_rooms_stay_separate() {
    let server = TestServer::start(config()).await;
    let (mut a, _) = server.joined("Ann", "red").await;
    let (mut b, _) = server.joined("Ben", "green").await;
    let (mut c, _) = server.joined("Cal", "blue").await;
    let (mut a2, _) = server.joined("Ana", "red").await;
    expect_notice(a.recv().await, NoticeKind::Joined, "Ana");

    a.say("1", "for red").await;
    b.say("1", "for green").await;
    c.say("1", "for blue").await;
    for client in [&mut a, &mut b, &mut c] {
        assert!(matches!(client.recv().await, ServerMsg::Ack(_)));
    }
    assert_eq!(expect_message(a2.recv().await).text.as_str(), "for red");
    for client in [&mut a, &mut b, &mut c, &mut a2] {
        client.expect_quiet().await;
    }
    // Seqs are per room: each room's first message follows its own notices.
    let (_, welcome) = server.joined("Dee", "green").await;
    assert_eq!(welcome.seq_head, Seq(3), "green: Ben joined, Ben's message, Dee joined");
}

#[tokio::test]
async fn names_are_unique_per_room_case_insensitively() {
    let server = TestServer::start(config()).await;
    let (_ada, _) = server.joined("Ada", "lobby").await;
    let mut other = server.client().await;
    match other.hello_with(common::hello("  aDA ", "lobby")).await {
        ServerMsg::Error(e) => {
            assert_eq!(e.code, ErrorCode::NameTaken);
            assert!(e.message.contains("lobby"), "{}", e.message);
        }
        other => panic!("expected name_taken, got {other:?}"),
    }
    // The connection stays usable: another name works.
    let w = other.hello("Ada Lovelace", "lobby").await;
    assert_eq!(w.you.name.as_str(), "Ada Lovelace");
    // The same name in another room is fine.
    let (_, w) = server.joined("ADA", "elsewhere").await;
    assert_eq!(w.you.name.as_str(), "ADA");
}

#[tokio::test]
async fn colours_are_stable_per_name() {
    let server = TestServer::start(config()).await;
    let (ada, w1) = server.joined("Ada", "one").await;
    let expected = color_for(&UserName::parse("Ada").expect("valid"));
    assert_eq!(w1.you.color, expected);
    ada.close().await;
    let (_, w2) = server.joined("ada", "two").await;
    assert_eq!(w2.you.color, expected, "same name, any case, any room: same colour");
    let (_, w3) = server.joined("Ada", "one").await;
    assert_eq!(w3.you.color, expected, "and after leaving and rejoining");
    assert!(natter_shared::color::PALETTE.contains(&expected.as_str()));
}

#[tokio::test]
async fn every_member_sees_the_same_order() {
    let mut cfg = config();
    cfg.rate.per_sec = 10_000;
    cfg.rate.burst = 10_000;
    let server = TestServer::start(cfg).await;
    let names = ["m0", "m1", "m2", "m3"];
    let mut clients = Vec::new();
    for name in names {
        clients.push(server.joined(name, "order").await.0);
    }
    // Drain the join notices each client saw.
    for (i, c) in clients.iter_mut().enumerate() {
        for _ in i + 1..names.len() {
            assert!(matches!(c.recv().await, ServerMsg::Notice(_)));
        }
    }
    const PER_SENDER: usize = 50;
    // All four send concurrently, interleaving on the server.
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                c.say(&format!("c{n}"), &format!("{i}:{n}")).await;
            }
            // Everyone sees every message once: own ones as acks, others as messages.
            let mut seen = Vec::new();
            while seen.len() < PER_SENDER * 4 {
                match c.recv().await {
                    ServerMsg::Ack(a) => seen.push((a.seq, format!("{i}:{}", &a.cid.as_str()[1..]))),
                    ServerMsg::Message(m) => seen.push((m.seq, m.text.as_str().to_owned())),
                    other => panic!("unexpected {other:?}"),
                }
            }
            seen
        }));
    }
    let mut views = Vec::new();
    for t in tasks {
        views.push(t.await.expect("client task"));
    }
    for view in &views {
        assert!(view.windows(2).all(|w| w[0].0 < w[1].0), "seqs arrive in increasing order");
    }
    for view in &views[1..] {
        assert_eq!(view, &views[0], "every member saw the same events in the same order");
    }
    // Per sender, messages keep the order they were sent in.
    for i in 0..4 {
        let mine: Vec<_> =
            views[0].iter().filter(|(_, t)| t.starts_with(&format!("{i}:"))).map(|(_, t)| t.clone()).collect();
        let expected: Vec<_> = (0..PER_SENDER).map(|n| format!("{i}:{n}")).collect();
        assert_eq!(mine, expected);
    }
}

#[tokio::test]
async fn typing_is_shown_to_others_and_rate_limited() {
    let server = TestServer::start(config()).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let (mut bob, _) = server.joined("Bob", "lobby").await;
    expect_notice(ada.recv().await, NoticeKind::Joined, "Bob");

    ada.send(&ClientMsg::Typing(Typing { active: true })).await;
    match bob.recv().await {
        ServerMsg::Typing(t) => assert_eq!((t.name.as_str(), t.active), ("Ada", true)),
        other => panic!("expected typing, got {other:?}"),
    }
    // A refresh right away is dropped; so is the sender's own echo.
    ada.send(&ClientMsg::Typing(Typing { active: true })).await;
    bob.expect_quiet().await;
    ada.expect_quiet().await;
    ada.send(&ClientMsg::Typing(Typing { active: false })).await;
    match bob.recv().await {
        ServerMsg::Typing(t) => assert_eq!((t.name.as_str(), t.active), ("Ada", false)),
        other => panic!("expected typing stop, got {other:?}"),
    }
    // A repeated stop is dropped.
    ada.send(&ClientMsg::Typing(Typing { active: false })).await;
    bob.expect_quiet().await;
    // Typing has no seq: the next message follows the join notices directly.
    ada.say("t1", "done typing").await;
    assert_eq!(expect_message(bob.recv().await).seq, Seq(3));
}

#[tokio::test]
async fn a_clean_close_is_announced_within_100ms() {
    let mut cfg = config();
    // A long grace period: only the prompt path can pass this test.
    cfg.timing.leave_grace = Duration::from_secs(30);
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let (bob, _) = server.joined("Bob", "lobby").await;
    expect_notice(ada.recv().await, NoticeKind::Joined, "Bob");

    let started = tokio::time::Instant::now();
    let mut ws = bob.ws;
    futures_util::SinkExt::close(&mut ws).await.expect("send close");
    let notice = expect_notice(ada.recv().await, NoticeKind::Left, "Bob");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(100), "left announced after {elapsed:?}");
    assert_eq!(notice.seq, Seq(3));
    // The name is free again at once.
    let (_, w) = server.joined("bob", "lobby").await;
    assert_eq!(w.you.name.as_str(), "bob");
}

#[tokio::test]
async fn a_dropped_connection_times_out_after_the_grace_period() {
    let mut cfg = config();
    let grace = Duration::from_millis(800);
    cfg.timing.leave_grace = grace;
    let server = TestServer::start(cfg).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let (bob, _) = server.joined("Bob", "lobby").await;
    expect_notice(ada.recv().await, NoticeKind::Joined, "Bob");

    let started = tokio::time::Instant::now();
    bob.drop_connection();
    // Nothing during the grace period (a resume could still come)...
    assert!(ada.try_recv(grace / 2).await.is_none(), "no leave/join flicker during the grace period");
    // ...then timed_out.
    expect_notice(ada.recv().await, NoticeKind::TimedOut, "Bob");
    assert!(started.elapsed() >= grace, "not before the grace period ended");
}
