//! Every kind of bad input gets its exact answer and harms no one else.

mod common;

use common::{Client, Ended, TestServer, config, hello};
use natter_shared::limits::{MAX_FRAME_BYTES, MESSAGE_MAX_CHARS, NAME_MAX_CHARS};
use natter_shared::{ClientMsg, ErrorCode, Hello, ServerMsg, Typing, close};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

async fn expect_error(client: &mut Client, code: ErrorCode) -> natter_shared::ErrorMsg {
    match client.recv().await {
        ServerMsg::Error(e) if e.code == code => e,
        other => panic!("expected error {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_json_and_unknown_types_are_bad_requests_and_the_connection_stays() {
    let server = TestServer::start(config()).await;
    let mut c = server.client().await;
    for bad in ["not json", "{}", r#"{"type":"shout","text":"hi"}"#, r#"{"type":"say","cid":5}"#, "[1,2]", ""] {
        c.send_text(bad).await;
        let e = expect_error(&mut c, ErrorCode::BadRequest).await;
        assert!(!e.message.is_empty());
    }
    // Still usable.
    let w = c.hello("Ada", "lobby").await;
    assert_eq!(w.you.name.as_str(), "Ada");
}

#[tokio::test]
async fn anything_before_hello_is_not_joined() {
    let server = TestServer::start(config()).await;
    let mut c = server.client().await;
    c.say("c1", "too early").await;
    let e = expect_error(&mut c, ErrorCode::NotJoined).await;
    assert_eq!(e.cid.as_deref(), Some("c1"), "the refused message is named");
    c.send(&ClientMsg::Typing(Typing { active: true })).await;
    expect_error(&mut c, ErrorCode::NotJoined).await;
}

#[tokio::test]
async fn hello_is_validated_field_by_field() {
    let mut cfg = config();
    cfg.rate.burst = 100;
    let server = TestServer::start(cfg).await;
    let mut c = server.client().await;
    let cases: Vec<(Hello, ErrorCode)> = vec![
        (Hello { v: 99, ..hello("Ada", "lobby") }, ErrorCode::UnsupportedVersion),
        // An open page of the previous protocol is told to reload.
        (Hello { v: 1, ..hello("Ada", "lobby") }, ErrorCode::UnsupportedVersion),
        (hello("   ", "lobby"), ErrorCode::InvalidName),
        (hello("bad\u{0}name", "lobby"), ErrorCode::InvalidName),
        (hello("zero\u{200B}width", "lobby"), ErrorCode::InvalidName),
        (hello(&"n".repeat(NAME_MAX_CHARS + 1), "lobby"), ErrorCode::NameTooLong),
        (hello(&"é".repeat(NAME_MAX_CHARS + 1), "lobby"), ErrorCode::NameTooLong),
        (hello("Ada", "Lobby"), ErrorCode::InvalidRoom),
        (hello("Ada", ""), ErrorCode::InvalidRoom),
        (hello("Ada", &"r".repeat(33)), ErrorCode::InvalidRoom),
        (hello("Ada", "no spaces"), ErrorCode::InvalidRoom),
        (Hello { resume_token: Some("not a token!".into()), ..hello("Ada", "lobby") }, ErrorCode::BadRequest),
    ];
    for (h, code) in cases {
        let answer = c.hello_with(h.clone()).await;
        assert!(matches!(&answer, ServerMsg::Error(e) if e.code == code), "{h:?} → {answer:?}, wanted {code}");
    }
    // 24 multi-byte characters is a valid name; no room means the lobby.
    let name = "é".repeat(NAME_MAX_CHARS);
    let answer = c.hello_with(natter_shared::Hello { room: None, ..hello(&name, "x") }).await;
    match answer {
        ServerMsg::Welcome(w) => assert_eq!((w.you.name.as_str(), w.room.as_str()), (name.as_str(), "lobby")),
        other => panic!("expected welcome, got {other:?}"),
    }
    c.own_join(&name).await;
    let again = c.hello_with(hello("Other", "lobby")).await;
    assert!(matches!(again, ServerMsg::Error(e) if e.code == ErrorCode::AlreadyJoined));
}

#[tokio::test]
async fn look_alike_names_are_taken_and_invisible_ones_refused() {
    let server = TestServer::start(config()).await;
    let (mut ada, _) = server.joined("Ada", "lobby").await;
    let mut c = server.client().await;
    // A Cyrillic А (U+0410) for the Latin A.
    let answer = c.hello_with(hello("\u{410}da", "lobby")).await;
    assert!(matches!(&answer, ServerMsg::Error(e) if e.code == ErrorCode::NameTaken), "{answer:?}");
    // Tag characters (U+E0041 TAG LATIN CAPITAL LETTER A) render as nothing.
    let answer = c.hello_with(hello("Ada\u{E0041}", "lobby")).await;
    match answer {
        ServerMsg::Error(e) if e.code == ErrorCode::InvalidName => assert!(e.message.contains("invisible"), "{e:?}"),
        other => panic!("expected invalid_name, got {other:?}"),
    }
    // Ada saw no one join; a name of its own still does.
    ada.expect_quiet().await;
    let w = c.hello("Ana", "lobby").await;
    assert_eq!(w.members.len(), 2);
}

#[tokio::test]
async fn say_is_validated_and_refusals_name_the_message() {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.joined("Ada", "lobby").await;
    let (mut watcher, _) = server.joined("Bob", "lobby").await;
    let _ = c.recv().await;
    let cases = [
        ("c1", "".to_owned(), ErrorCode::EmptyMessage),
        ("c2", " \n\t".to_owned(), ErrorCode::EmptyMessage),
        ("c3", "x".repeat(MESSAGE_MAX_CHARS + 1), ErrorCode::TooLong),
        ("c4", "bell\u{7}".to_owned(), ErrorCode::InvalidText),
        ("bad id", "hello".to_owned(), ErrorCode::InvalidCid),
        ("", "hello".to_owned(), ErrorCode::InvalidCid),
    ];
    for (cid, text, code) in cases {
        c.say(cid, &text).await;
        let e = expect_error(&mut c, code).await;
        assert_eq!(e.cid.as_deref(), Some(cid));
    }
    // Exactly at the limit, counted in characters (2000 × 4 bytes).
    c.say("c5", &"😀".repeat(MESSAGE_MAX_CHARS)).await;
    assert!(matches!(c.recv().await, ServerMsg::Ack(_)));
    // Only the valid one reached the others.
    assert!(
        matches!(watcher.recv().await, ServerMsg::Message(m) if m.text.as_str().chars().count() == MESSAGE_MAX_CHARS)
    );
    watcher.expect_quiet().await;
}

#[tokio::test]
async fn a_binary_frame_closes_with_1003() {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.joined("Ada", "lobby").await;
    let (mut other, _) = server.joined("Bob", "lobby").await;
    let _ = c.recv().await;
    futures_util::SinkExt::send(&mut c.ws, Message::binary(vec![1u8, 2, 3])).await.expect("send");
    assert!(matches!(c.closed().await, Ended::Close(code, _) if code == close::UNSUPPORTED_DATA));
    // Others are unaffected.
    other.say("o1", "still here").await;
    assert!(matches!(other.recv().await, ServerMsg::Ack(_)));
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let server = TestServer::start(config()).await;
    let mut c = server.client().await;
    let frame = Frame::message(vec![0x7b, 0xff, 0xfe, 0x7d], OpCode::Data(Data::Text), true);
    futures_util::SinkExt::send(&mut c.ws, Message::Frame(frame)).await.expect("send");
    assert!(matches!(c.closed().await, Ended::Close(code, _) if code == close::INVALID_PAYLOAD));
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_with_1009() {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.joined("Ada", "lobby").await;
    let huge = format!(r#"{{"type":"say","cid":"c","text":"{}"}}"#, "x".repeat(MAX_FRAME_BYTES));
    c.send_text(&huge).await;
    assert!(matches!(c.closed().await, Ended::Close(code, _) if code == close::MESSAGE_TOO_BIG));
}

#[tokio::test]
async fn flooding_is_refused_then_disconnected_with_1008() {
    let mut cfg = config();
    cfg.rate.per_sec = 1;
    cfg.rate.burst = 3;
    cfg.rate.strikes = 4;
    let server = TestServer::start(cfg).await;
    let (mut c, _) = server.joined("Ada", "lobby").await; // hello used one token
    let (mut other, _) = server.joined("Bob", "lobby").await;
    let _ = c.recv().await;
    for i in 0..2 {
        c.say(&format!("ok{i}"), "fine").await;
        assert!(matches!(c.recv().await, ServerMsg::Ack(_)));
    }
    for i in 0..4 {
        c.say(&format!("x{i}"), "flood").await;
        let e = expect_error(&mut c, ErrorCode::RateLimited).await;
        assert_eq!(e.cid, Some(format!("x{i}")));
    }
    c.say("x4", "flood").await;
    assert!(matches!(c.closed().await, Ended::Close(code, _) if code == close::POLICY_VIOLATION));
    // Bob got the two accepted messages and then Ada's leave after the grace period, nothing else.
    for _ in 0..2 {
        assert!(matches!(other.recv().await, ServerMsg::Message(m) if m.text.as_str() == "fine"));
    }
    other.expect_quiet().await;
}
