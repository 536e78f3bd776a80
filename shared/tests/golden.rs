//! Golden JSON for every message: these strings are the protocol. A change
//! here is a protocol change and needs a new `PROTOCOL_VERSION`.

use natter_shared::*;

fn name(s: &str) -> UserName {
    UserName::parse(s).expect("valid name")
}

fn color(s: &str) -> Color {
    Color(s.to_owned())
}

/// Serializes, compares with the golden string, and decodes it back.
fn golden_server(msg: ServerMsg, json: &str) {
    assert_eq!(serde_json::to_string(&msg).expect("serialize"), json);
    let back: ServerMsg = serde_json::from_str(json).expect("decode golden");
    assert_eq!(back, msg);
    assert_eq!(ServerMsg::from_json(json).expect("from_json golden"), msg);
    // Object keys have no order: the tag may come last.
    let tag_last = tag_moved_last(json);
    assert_ne!(tag_last, json);
    assert_eq!(ServerMsg::from_json(&tag_last).expect("from_json, tag last"), msg);
    assert_eq!(serde_json::from_str::<ServerMsg>(&tag_last).expect("decode, tag last"), msg);
}

/// The same JSON object with its leading `"type":"…"` moved to the end.
fn tag_moved_last(json: &str) -> String {
    let rest = json.strip_prefix(r#"{"type":""#).expect("golden JSON starts with its tag");
    let end = rest.find('"').expect("tag ends");
    let (tag, fields) = (&rest[..end], &rest[end + 1..]);
    match fields.strip_prefix(',') {
        Some(fields) => format!(r#"{{{},"type":"{tag}"}}"#, fields.strip_suffix('}').expect("object ends")),
        None => format!(r#"{{"type":"{tag}" }}"#),
    }
}

fn golden_client(msg: ClientMsg, json: &str) {
    assert_eq!(serde_json::to_string(&msg).expect("serialize"), json);
    let back: ClientMsg = serde_json::from_str(json).expect("decode golden");
    assert_eq!(back, msg);
}

fn chat_message() -> ChatMessage {
    ChatMessage {
        seq: Seq(42),
        ts: Timestamp(1_764_000_000_123),
        name: name("Ada"),
        color: color("#1e77d0"),
        text: MessageText::parse("hello <b>world</b> \"quoted\"\nline 2").expect("valid"),
        cid: Some(ClientMsgId::parse("c-1").expect("valid")),
    }
}

fn notice(kind: NoticeKind) -> Notice {
    Notice { seq: Seq(7), ts: Timestamp(1000), kind, name: name("Bob"), color: color("#e12b2b") }
}

#[test]
fn hello_minimal_and_full() {
    golden_client(
        ClientMsg::Hello(Hello {
            v: PROTOCOL_VERSION,
            room: None,
            name: "Ada".into(),
            last_seq: None,
            resume_token: None,
            history_id: None,
        }),
        r##"{"type":"hello","v":2,"name":"Ada"}"##,
    );
    golden_client(
        ClientMsg::Hello(Hello {
            v: PROTOCOL_VERSION,
            room: Some("dev-team".into()),
            name: "Ada".into(),
            last_seq: Some(Seq(17)),
            resume_token: Some("tok_1".into()),
            history_id: Some("h1".into()),
        }),
        r##"{"type":"hello","v":2,"room":"dev-team","name":"Ada","last_seq":17,"resume_token":"tok_1","history_id":"h1"}"##,
    );
}

#[test]
fn hello_new_is_a_fresh_join() {
    golden_client(
        ClientMsg::Hello(Hello::new("Ada", "dev-team")),
        r##"{"type":"hello","v":2,"room":"dev-team","name":"Ada"}"##,
    );
}

#[test]
fn say_and_typing() {
    golden_client(ClientMsg::Say(Say::new("c-1", "hi ✓")), r##"{"type":"say","cid":"c-1","text":"hi ✓"}"##);
    golden_client(
        ClientMsg::Say(Say { cid: "c-1".into(), text: "hi".into(), after: Some(Seq(41)) }),
        r##"{"type":"say","cid":"c-1","text":"hi","after":41}"##,
    );
    golden_client(ClientMsg::Typing(Typing { active: true }), r##"{"type":"typing","active":true}"##);
}

#[test]
fn welcome() {
    let ada = Member { name: name("Ada"), color: color("#1e77d0") };
    let bob = Member { name: name("Bob"), color: color("#e12b2b") };
    golden_server(
        ServerMsg::Welcome(Welcome {
            you: ada.clone(),
            room: RoomName::parse("lobby").expect("valid"),
            seq_head: Seq(42),
            members: vec![bob, ada],
            member_count: 2,
            history: vec![RoomEvent::Notice(notice(NoticeKind::Joined)), RoomEvent::Message(chat_message())],
            resume_token: ResumeToken::parse("abc123").expect("valid"),
            history_id: "h1".into(),
            missed: Some(3),
        }),
        concat!(
            r##"{"type":"welcome","you":{"name":"Ada","color":"#1e77d0"},"room":"lobby","seq_head":42,"##,
            r##""members":[{"name":"Bob","color":"#e12b2b"},{"name":"Ada","color":"#1e77d0"}],"member_count":2,"##,
            r##""history":[{"type":"notice","seq":7,"ts":1000,"kind":"joined","name":"Bob","color":"#e12b2b"},"##,
            r##"{"type":"message","seq":42,"ts":1764000000123,"name":"Ada","color":"#1e77d0","text":"hello <b>world</b> \"quoted\"\nline 2","cid":"c-1"}],"##,
            r##""resume_token":"abc123","history_id":"h1","missed":3}"##
        ),
    );
}

#[test]
fn welcome_without_missed_omits_the_field() {
    let json = serde_json::to_string(&ServerMsg::Welcome(Welcome {
        you: Member { name: name("Ada"), color: color("#1e77d0") },
        room: RoomName::default(),
        seq_head: Seq(0),
        members: vec![],
        member_count: 0,
        history: vec![],
        resume_token: ResumeToken::parse("t").expect("valid"),
        history_id: "h".into(),
        missed: None,
    }))
    .expect("serialize");
    assert!(!json.contains("missed"), "{json}");
}

#[test]
fn ack() {
    golden_server(
        ServerMsg::Ack(Ack { cid: ClientMsgId::parse("c-9").expect("valid"), seq: Seq(43), ts: Timestamp(5) }),
        r##"{"type":"ack","cid":"c-9","seq":43,"ts":5}"##,
    );
}

#[test]
fn message_with_and_without_cid() {
    golden_server(
        ServerMsg::Message(chat_message()),
        r##"{"type":"message","seq":42,"ts":1764000000123,"name":"Ada","color":"#1e77d0","text":"hello <b>world</b> \"quoted\"\nline 2","cid":"c-1"}"##,
    );
    let mut m = chat_message();
    m.cid = None;
    golden_server(
        ServerMsg::Message(m),
        r##"{"type":"message","seq":42,"ts":1764000000123,"name":"Ada","color":"#1e77d0","text":"hello <b>world</b> \"quoted\"\nline 2"}"##,
    );
}

#[test]
fn notices_of_every_kind() {
    for (kind, wire) in
        [(NoticeKind::Joined, "joined"), (NoticeKind::Left, "left"), (NoticeKind::TimedOut, "timed_out")]
    {
        golden_server(
            ServerMsg::Notice(notice(kind)),
            &format!(r##"{{"type":"notice","seq":7,"ts":1000,"kind":"{wire}","name":"Bob","color":"#e12b2b"}}"##),
        );
    }
}

#[test]
fn notices_of_one_commit() {
    golden_server(
        ServerMsg::Notices(NoticeBatch { notices: vec![notice(NoticeKind::Joined), notice(NoticeKind::Left)] }),
        concat!(
            r##"{"type":"notices","notices":[{"seq":7,"ts":1000,"kind":"joined","name":"Bob","color":"#e12b2b"},"##,
            r##"{"seq":7,"ts":1000,"kind":"left","name":"Bob","color":"#e12b2b"}]}"##
        ),
    );
}

#[test]
fn typing_update() {
    golden_server(
        ServerMsg::Typing(TypingUpdate { name: name("Bob"), active: false }),
        r##"{"type":"typing","name":"Bob","active":false}"##,
    );
}

#[test]
fn errors_with_and_without_cid() {
    golden_server(
        ServerMsg::error(ErrorCode::NameTaken, "someone in lobby is already called Ada"),
        r##"{"type":"error","code":"name_taken","message":"someone in lobby is already called Ada"}"##,
    );
    golden_server(
        ServerMsg::Error(ErrorMsg { code: ErrorCode::TooLong, message: "too long".into(), cid: Some("c-2".into()) }),
        r##"{"type":"error","code":"too_long","message":"too long","cid":"c-2"}"##,
    );
}

#[test]
fn room_events_have_the_same_json_as_live_frames() {
    let event = RoomEvent::Message(chat_message());
    let live = ServerMsg::from(event.clone());
    assert_eq!(serde_json::to_string(&event).expect("json"), serde_json::to_string(&live).expect("json"));
    assert_eq!(event.seq(), Seq(42));
    assert_eq!(event.ts(), Timestamp(1_764_000_000_123));
    let n = RoomEvent::Notice(notice(NoticeKind::Left));
    assert_eq!(n.seq(), Seq(7));
}

#[test]
fn decoding_refuses_bad_input() {
    for bad in [
        "",
        "not json",
        "[]",
        r##"{"type":"shout","text":"x"}"##,
        r##"{"text":"no type"}"##,
        r##"{"type":"say","cid":"c"}"##,
        r##"{"type":"say","cid":1,"text":"x"}"##,
        r##"{"type":"hello","v":"one","name":"x"}"##,
        r##"{"type":"typing","active":"yes"}"##,
    ] {
        assert!(serde_json::from_str::<ClientMsg>(bad).is_err(), "{bad:?} should not decode");
    }
    // Unknown extra fields are ignored (forward compatibility).
    let msg: ClientMsg = serde_json::from_str(r##"{"type":"typing","active":true,"future":1}"##).expect("decode");
    assert_eq!(msg, ClientMsg::Typing(Typing { active: true }));
}

#[test]
fn server_messages_with_invalid_fields_do_not_decode() {
    // A validated field that breaks its rule is refused, not trusted.
    let bad = r##"{"type":"notice","seq":1,"ts":1,"kind":"joined","name":"","color":"#000000"}"##;
    assert!(serde_json::from_str::<ServerMsg>(bad).is_err());
    let bad_kind = r##"{"type":"notice","seq":1,"ts":1,"kind":"exploded","name":"a","color":"#000000"}"##;
    assert!(serde_json::from_str::<ServerMsg>(bad_kind).is_err());
}

#[test]
fn history_stored_under_older_rules_still_decodes() {
    // A name today's rules refuse (an invisible joiner, more than 24
    // characters), a long text and an odd cid, as an older server stored
    // them: a page must still read its room.
    let long_name = "n".repeat(100);
    let old = format!(
        r##"{{"type":"message","seq":1,"ts":1,"name":"A\u200db {long_name}","color":"#000000","text":"{}","cid":"c id!"}}"##,
        "x".repeat(5000)
    );
    match serde_json::from_str::<ServerMsg>(&old) {
        Ok(ServerMsg::Message(m)) => {
            assert!(m.name.as_str().starts_with("A\u{200d}b"));
            assert_eq!(m.cid.as_ref().map(|c| c.as_str()), Some("c id!"));
        }
        other => panic!("expected the stored message, got {other:?}"),
    }
}

#[test]
fn members_request_and_page() {
    golden_client(
        ClientMsg::Members(MembersRequest { after: Some("Ada".into()), limit: 100 }),
        r#"{"type":"members","after":"Ada","limit":100}"#,
    );
    golden_client(ClientMsg::Members(MembersRequest { after: None, limit: 5 }), r#"{"type":"members","limit":5}"#);
    golden_server(
        ServerMsg::Members(MembersPage {
            after: Some("Ada".into()),
            members: vec![Member { name: name("Bob"), color: color("#e12b2b") }],
            complete: false,
            count: 4200,
        }),
        r##"{"type":"members","after":"Ada","members":[{"name":"Bob","color":"#e12b2b"}],"complete":false,"count":4200}"##,
    );
}

#[test]
fn presence_lists_names_and_counts_the_rest() {
    let ada = Member { name: name("Ada"), color: color("#1e77d0") };
    let bob = Member { name: name("Bob"), color: color("#e12b2b") };
    golden_server(
        ServerMsg::Presence(Presence {
            count: 120,
            joined: vec![ada],
            left: vec![bob],
            more_joined: 12,
            ..Presence::default()
        }),
        concat!(
            r##"{"type":"presence","count":120,"joined":[{"name":"Ada","color":"#1e77d0"}],"##,
            r##""left":[{"name":"Bob","color":"#e12b2b"}],"more_joined":12}"##
        ),
    );
    golden_server(
        ServerMsg::Presence(Presence { count: 3, ..Presence::default() }),
        r#"{"type":"presence","count":3}"#,
    );
}

#[test]
fn history_request_and_page() {
    golden_client(
        ClientMsg::History(HistoryRequest { before: Seq(101), limit: 50 }),
        r##"{"type":"history","before":101,"limit":50}"##,
    );
    golden_server(
        ServerMsg::History(HistoryPage {
            before: Seq(8),
            events: vec![RoomEvent::Notice(notice(NoticeKind::Joined))],
            complete: true,
        }),
        r##"{"type":"history","before":8,"events":[{"type":"notice","seq":7,"ts":1000,"kind":"joined","name":"Bob","color":"#e12b2b"}],"complete":true}"##,
    );
}

#[test]
fn storage_unavailable_is_a_stable_code() {
    golden_server(
        ServerMsg::Error(ErrorMsg {
            code: ErrorCode::StorageUnavailable,
            message: "not stored".into(),
            cid: Some("c-3".into()),
        }),
        r##"{"type":"error","code":"storage_unavailable","message":"not stored","cid":"c-3"}"##,
    );
}

#[test]
fn ping_and_pong() {
    golden_client(ClientMsg::Ping, r##"{"type":"ping"}"##);
    golden_server(ServerMsg::Pong, r##"{"type":"pong"}"##);
}

#[test]
fn from_json_rejects_what_the_derive_rejects() {
    for bad in [
        "",
        "[]",
        r#"{"seq":1}"#,
        r#"{"type":"nonsense"}"#,
        r#"{"type":"ack","cid":"c-1","seq":1}"#,
        r#"{"type":"ack","cid":"c-1","seq":1,"ts":5} trailing"#,
        r##"{"type":"welcome","you":{"name":"Ada","color":"#1e77d0"}}"##,
    ] {
        assert!(serde_json::from_str::<ServerMsg>(bad).is_err(), "derive accepted {bad:?}");
        assert!(ServerMsg::from_json(bad).is_err(), "from_json accepted {bad:?}");
    }
}

#[test]
fn room_event_fields_must_fit_its_type() {
    let no_text = r##"{"type":"message","seq":1,"ts":2,"name":"Ada","color":"#1e77d0"}"##;
    let err = serde_json::from_str::<RoomEvent>(no_text).expect_err("a message needs text");
    assert!(err.to_string().contains("no `text`"), "{err}");
    let no_kind = r##"{"type":"notice","seq":1,"ts":2,"name":"Ada","color":"#1e77d0"}"##;
    let err = serde_json::from_str::<RoomEvent>(no_kind).expect_err("a notice needs a kind");
    assert!(err.to_string().contains("no `kind`"), "{err}");
    let bad_text = r##"{"type":"message","seq":1,"ts":2,"name":"Ada","color":"#1e77d0","text":"  "}"##;
    assert!(serde_json::from_str::<RoomEvent>(bad_text).is_err(), "a message's text is validated");
    let bad_kind = r##"{"type":"notice","seq":1,"ts":2,"name":"Ada","color":"#1e77d0","kind":"exploded"}"##;
    let err = serde_json::from_str::<RoomEvent>(bad_kind).expect_err("an unknown kind");
    assert!(err.to_string().contains("unknown notice kind `exploded`"), "{err}");
    // Fields of the other kind are ignored, as serde's derive ignored them.
    let extra =
        r##"{"type":"notice","seq":1,"ts":2,"name":"Ada","color":"#1e77d0","kind":"left","text":"","cid":"!"}"##;
    assert!(matches!(serde_json::from_str::<RoomEvent>(extra), Ok(RoomEvent::Notice(_))));
    let extra = r##"{"type":"message","seq":1,"ts":2,"name":"Ada","color":"#1e77d0","text":"hi","kind":"new"}"##;
    assert!(matches!(serde_json::from_str::<RoomEvent>(extra), Ok(RoomEvent::Message(_))));
    let tag_last = r##"{"seq":1,"ts":2,"name":"Ada","color":"#1e77d0","kind":"left","type":"notice"}"##;
    assert_eq!(
        serde_json::from_str::<RoomEvent>(tag_last).expect("tag last"),
        RoomEvent::Notice(Notice {
            seq: Seq(1),
            ts: Timestamp(2),
            kind: NoticeKind::Left,
            name: name("Ada"),
            color: color("#1e77d0")
        })
    );
}
