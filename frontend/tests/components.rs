//! Components in headless Chromium: mount, act, tick, assert.

#![cfg(target_arch = "wasm32")]

mod common;

use common::*;
use leptos::mount::mount_to;
use leptos::prelude::*;
use leptos::task::tick;
use natter_frontend::chat_state::{Entry, Line, Pending, SendStatus};
use natter_frontend::client::{Field, JoinProblem, Status};
use natter_frontend::components::composer::Composer;
use natter_frontend::components::header::ChatHeader;
use natter_frontend::components::join::JoinForm;
use natter_frontend::components::members::MembersPanel;
use natter_frontend::components::message_list::MessageList;
use natter_shared::limits::MESSAGE_MAX_CHARS;
use natter_shared::{Color, Member, NoticeKind, RoomName, Seq, Timestamp, UserName};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
async fn join_form_checks_fields_and_shows_errors_next_to_them() {
    let root = container();
    let joined = RwSignal::new(None::<(UserName, RoomName)>);
    let problem = RwSignal::new(None::<JoinProblem>);
    let _mounted = mount_to(root.clone(), move || {
        view! {
            <JoinForm
                initial_name=String::new()
                initial_room="lobby".to_owned()
                problem=problem
                busy=false
                note={ None::<String> }
                on_join=Callback::new(move |j| joined.set(Some(j)))
            />
        }
    });
    tick().await;
    assert_eq!(get(&root, "#join-room").get_attribute("id").as_deref(), Some("join-room"));
    click(&root, "form.join button[type=submit]");
    tick().await;
    assert!(text(&root, "#join-name-error").contains("at least one visible character"));
    assert_eq!(get(&root, "#join-name").get_attribute("aria-invalid").as_deref(), Some("true"));
    assert!(joined.get_untracked().is_none(), "nothing sent for an empty name");

    type_into(&root, "#join-name", &"x".repeat(25));
    click(&root, "form.join button[type=submit]");
    tick().await;
    assert!(text(&root, "#join-name-error").contains("at most 24"));

    type_into(&root, "#join-name", "Ada");
    type_into(&root, "#join-room", "Bad Room");
    click(&root, "form.join button[type=submit]");
    tick().await;
    assert_eq!(text(&root, "#join-name-error"), "");
    assert!(text(&root, "#join-room-error").contains("a–z"));

    type_into(&root, "#join-room", "dev-team");
    click(&root, "form.join button[type=submit]");
    tick().await;
    let (name, room) = joined.get_untracked().expect("joined");
    assert_eq!((name.as_str(), room.as_str()), ("Ada", "dev-team"));

    // The server's refusal shows next to its field.
    problem.set(Some(JoinProblem { field: Field::Name, message: "someone in #dev-team is already called Ada".into() }));
    tick().await;
    assert!(text(&root, "#join-name-error").contains("already called Ada"));
}

#[wasm_bindgen_test]
async fn composer_counts_sends_on_enter_and_says_why_it_cannot_send() {
    let root = container();
    let sent = RwSignal::new(Vec::<String>::new());
    let blocked = RwSignal::new(None::<String>);
    let _mounted = mount_to(root.clone(), move || {
        view! {
            <Composer
                blocked=blocked
                offline=false
                on_send=Callback::new(move |t: String| {
                    sent.update(|s| s.push(t));
                    Ok(())
                })
                on_typing=Callback::new(|_: bool| {})
            />
        }
    });
    tick().await;
    assert_eq!(text(&root, ".counter"), format!("0 / {MESSAGE_MAX_CHARS}"));
    type_into(&root, "#composer-text", "héllo");
    tick().await;
    assert_eq!(text(&root, ".counter"), format!("5 / {MESSAGE_MAX_CHARS}"), "characters, not bytes");

    // Shift+Enter is a new line, Enter sends.
    assert!(key(&root, "#composer-text", "Enter", true), "Shift+Enter is not swallowed");
    assert!(sent.get_untracked().is_empty());
    assert!(!key(&root, "#composer-text", "Enter", false), "Enter is handled");
    tick().await;
    assert_eq!(sent.get_untracked(), ["héllo"]);
    assert_eq!(text(&root, ".counter"), format!("0 / {MESSAGE_MAX_CHARS}"), "cleared after sending");

    type_into(&root, "#composer-text", &"a".repeat(MESSAGE_MAX_CHARS + 2));
    tick().await;
    assert!(get(&root, "button[type=submit]").has_attribute("disabled"));
    assert!(text(&root, ".composer-problem").contains("2 characters too long"));
    assert_eq!(count(&root, ".counter.over"), 1);
    key(&root, "#composer-text", "Enter", false);
    tick().await;
    assert_eq!(sent.get_untracked().len(), 1, "over the limit is not sent");

    blocked.set(Some("This chat is open in another tab or window.".into()));
    tick().await;
    assert!(get(&root, "#composer-text").has_attribute("disabled"));
    assert!(text(&root, ".composer-problem").contains("another tab"));
}

fn name(s: &str) -> UserName {
    UserName::parse(s).expect("valid")
}

#[wasm_bindgen_test]
async fn message_list_renders_text_as_text_and_offers_retry() {
    let root = container();
    let retried = RwSignal::new(Vec::<String>::new());
    let lines = RwSignal::new(vec![
        Line::Event(
            Entry::Notice {
                seq: Seq(1),
                ts: Timestamp(0),
                kind: NoticeKind::Joined,
                name: name("Bob"),
                color: Color("#e12b2b".into()),
            },
            0,
        ),
        Line::Event(
            Entry::Message {
                seq: Seq(2),
                ts: Timestamp(0),
                name: name("Bob"),
                color: Color("#e12b2b".into()),
                text: "<img src=x onerror=alert(1)>".into(),
                mine: false,
            },
            0,
        ),
        Line::Pending(Pending {
            cid: "c1".into(),
            text: "too long".into(),
            status: SendStatus::Failed("nope".into()),
            after: None,
        }),
    ]);
    let _mounted = mount_to(root.clone(), move || {
        view! {
            <MessageList
                lines=lines
                on_retry=Callback::new(move |cid: String| retried.update(|r| r.push(cid)))
                on_discard=Callback::new(|_: String| {})
            />
        }
    });
    tick().await;
    assert_eq!(get(&root, ".messages").get_attribute("role").as_deref(), Some("log"));
    assert_eq!(get(&root, ".messages").get_attribute("aria-live").as_deref(), Some("polite"));
    assert_eq!(text(&root, ".notice-text"), "Bob joined");
    assert_eq!(text(&root, ".msg .text"), "<img src=x onerror=alert(1)>");
    assert_eq!(count(&root, "img"), 0, "never parsed as HTML");
    assert!(text(&root, ".failed .state").contains("not sent: nope"));
    click(&root, ".failed .retry");
    tick().await;
    assert_eq!(retried.get_untracked(), ["c1"]);

    // A new line is rendered once, in order.
    lines.update(|l| {
        l.insert(
            2,
            Line::Event(
                Entry::Message {
                    seq: Seq(3),
                    ts: Timestamp(0),
                    name: name("Cat"),
                    color: Color("#138383".into()),
                    text: "third".into(),
                    mine: false,
                },
                0,
            ),
        )
    });
    tick().await;
    assert_eq!(count(&root, ".messages > li"), 4);
}

fn message(seq: u64) -> Line {
    Line::Event(
        Entry::Message {
            seq: Seq(seq),
            ts: Timestamp(0),
            name: name("Bob"),
            color: Color("#e12b2b".into()),
            text: format!("message {seq}"),
            mine: false,
        },
        0,
    )
}

#[wasm_bindgen_test]
async fn the_list_follows_new_messages_only_at_the_bottom() {
    let document = web_sys::window().and_then(|w| w.document()).expect("document");
    let style = document.create_element("style").expect("style");
    style.set_text_content(Some(
        ".messages { display: block; height: 120px; overflow-y: auto; } .messages li { height: 30px; }",
    ));
    document.head().expect("head").append_child(&style).expect("append");
    let root = container();
    let lines = RwSignal::new((1..=20).map(message).collect::<Vec<_>>());
    let _mounted = mount_to(root.clone(), move || {
        view! { <MessageList lines=lines on_retry=Callback::new(|_: String| {}) on_discard=Callback::new(|_: String| {}) /> }
    });
    let list = get(&root, ".messages");
    let gap = || f64::from(list.scroll_height() - list.scroll_top() - list.client_height());
    until("the list starts at the bottom", || gap() <= 1.0).await;

    // At the bottom: a new message scrolls into view.
    lines.update(|l| l.push(message(21)));
    until("following the new message", || gap() <= 1.0 && count(&root, ".messages > li") == 21).await;
    assert_eq!(count(&root, ".new-messages"), 0);

    // Scrolled up: new messages are counted, not scrolled to.
    list.set_scroll_top(0);
    list.dispatch_event(&web_sys::Event::new("scroll").expect("event")).expect("dispatch");
    lines.update(|l| l.extend([message(22), message(23)]));
    until("the new-messages button", || find(&root, ".new-messages").is_some()).await;
    assert_eq!(text(&root, ".new-messages"), "2 new messages ↓");
    assert_eq!(list.scroll_top(), 0, "the reader stays where they were");

    click(&root, ".new-messages");
    until("jumped to the bottom", || gap() <= 1.0 && find(&root, ".new-messages").is_none()).await;
}

#[wasm_bindgen_test]
async fn the_list_offers_older_messages_while_there_may_be_some() {
    let root = container();
    let asked = RwSignal::new(0);
    let more = RwSignal::new(true);
    let _mounted = mount_to(root.clone(), move || {
        view! {
            <MessageList
                lines=RwSignal::new(vec![message(40)])
                on_retry=Callback::new(|_: String| {})
                on_discard=Callback::new(|_: String| {})
                can_load_older=more
                on_load_older=Callback::new(move |()| asked.update(|n| *n += 1))
            />
        }
    });
    tick().await;
    assert_eq!(text(&root, ".load-older button"), "Load older messages");
    click(&root, ".load-older button");
    tick().await;
    assert_eq!(asked.get_untracked(), 1);
    more.set(false);
    tick().await;
    assert_eq!(count(&root, ".load-older"), 0, "hidden when nothing older is kept");
}

/// Names and message texts are bidi-isolated by the page's own stylesheet,
/// so right-to-left letters in a name cannot reorder the rest of its line.
#[wasm_bindgen_test]
async fn names_and_texts_are_isolated_from_the_rest_of_their_line() {
    let document = web_sys::window().and_then(|w| w.document()).expect("document");
    let style = document.create_element("style").expect("style");
    style.set_text_content(Some(include_str!("../style.css")));
    document.head().expect("head").append_child(&style).expect("append");
    let root = container();
    let rtl = "\u{5D0}\u{5D1}\u{5D2}!"; // Hebrew alef, bet, gimel, then "!"
    let color = || Color("#e12b2b".into());
    let lines = vec![
        Line::Event(
            Entry::Notice { seq: Seq(1), ts: Timestamp(0), kind: NoticeKind::Joined, name: name(rtl), color: color() },
            0,
        ),
        Line::Event(
            Entry::Message {
                seq: Seq(2),
                ts: Timestamp(0),
                name: name(rtl),
                color: color(),
                text: "\u{5E9}\u{5DC}\u{5D5}\u{5DD}, world".into(),
                mine: false,
            },
            0,
        ),
    ];
    let _mounted = mount_to(root.clone(), move || {
        view! { <MessageList lines=lines on_retry=Callback::new(|_: String| {}) on_discard=Callback::new(|_: String| {}) /> }
    });
    tick().await;
    let window = web_sys::window().expect("window");
    for css in [".notice .name", ".msg .name", ".msg .text"] {
        let computed = window.get_computed_style(&get(&root, css)).expect("style").expect("a computed style");
        assert_eq!(computed.get_property_value("unicode-bidi").expect("property"), "plaintext", "{css}");
    }
    // In effect: read right to left inside its isolate, the name ends with
    // its "!" on the left, instead of the "!" joining " joined" on the right.
    let letters = get(&root, ".notice .name").first_child().expect("the name's text");
    let left = |from: u32, to: u32| {
        let range = document.create_range().expect("range");
        range.set_start(&letters, from).expect("start");
        range.set_end(&letters, to).expect("end");
        range.get_bounding_client_rect().left()
    };
    assert!(left(3, 4) < left(0, 3), "the name's own \"!\" stays at its end");
    style.remove();
}

#[wasm_bindgen_test]
async fn presence_lines_show_their_sentence() {
    let root = container();
    let who = ["Ada", "Bo"].map(|n| Member { name: name(n), color: Color("#e12b2b".into()) }).to_vec();
    let lines = vec![
        message(4),
        Line::Event(
            Entry::Presence { seq: Seq(4), n: 1, ts: Timestamp(0), kind: NoticeKind::Joined, who, more: 12 },
            0,
        ),
    ];
    let _mounted = mount_to(root.clone(), move || {
        view! { <MessageList lines=lines on_retry=Callback::new(|_: String| {}) on_discard=Callback::new(|_: String| {}) /> }
    });
    tick().await;
    assert_eq!(count(&root, ".messages > li"), 2);
    assert_eq!(text(&root, ".notice-joined .presence"), "\u{2068}Ada\u{2069}, \u{2068}Bo\u{2069} and 12 others joined");
}

#[wasm_bindgen_test]
async fn members_panel_offers_the_next_page_while_incomplete() {
    let root = container();
    let asked = RwSignal::new(0);
    let more = RwSignal::new(Some("and 6 more".to_owned()));
    let can_load = RwSignal::new(true);
    let members = vec![Member { name: name("Ada"), color: Color("#e12b2b".into()) }];
    let _mounted = mount_to(root.clone(), move || {
        view! {
            <MembersPanel
                members=members
                me=Some("Ada".to_owned())
                open=RwSignal::new(false)
                more=more
                can_load_more=can_load
                on_load_more=Callback::new(move |()| asked.update(|n| *n += 1))
            />
        }
    });
    tick().await;
    assert_eq!(text(&root, ".member"), "Ada (you)");
    assert_eq!(text(&root, ".members-more span"), "and 6 more");
    click(&root, ".members-more button");
    tick().await;
    assert_eq!(asked.get_untracked(), 1);
    can_load.set(false);
    tick().await;
    assert!(get(&root, ".members-more button").has_attribute("disabled"), "one page at a time");
    more.set(None);
    tick().await;
    assert_eq!(count(&root, ".members-more"), 0, "hidden once complete");
}

#[wasm_bindgen_test]
async fn header_shows_the_countdown_and_retry_now() {
    let root = container();
    let retried = RwSignal::new(0);
    let status = RwSignal::new(Status::Reconnecting { at_ms: 10_500.0 });
    let _mounted = mount_to(root.clone(), move || {
        view! {
            <ChatHeader
                room="lobby".to_owned()
                member_count=3usize
                status=status
                now=1_000.0
                members_open=RwSignal::new(false)
                on_retry_now=Callback::new(move |()| retried.update(|n| *n += 1))
                on_leave=Callback::new(|()| {})
            />
        }
    });
    tick().await;
    assert_eq!(text(&root, ".room-name"), "#lobby");
    assert_eq!(text(&root, ".member-count"), "3 members");
    assert_eq!(text(&root, ".status"), "Reconnecting in 10 s");
    click(&root, ".retry-now");
    tick().await;
    assert_eq!(retried.get_untracked(), 1);
    status.set(Status::Connected);
    tick().await;
    assert_eq!(text(&root, ".status"), "Connected");
    assert_eq!(count(&root, ".retry-now"), 0);
}

/// The page's name key (the browser's `toLowerCase`) equals the server's
/// (`UserName::key`, Rust's Unicode lowercase), beyond ASCII too.
#[wasm_bindgen_test]
fn name_key_in_the_browser_matches_the_server() {
    use natter_frontend::name_key::name_key;
    for raw in
        ["Ada", "ÄDA", "Ωmega", "ΟΔΥΣΣΕΥΣ", "İstanbul", "Straße", "ẞig", "Ǆemal", "ĲSSEL", "Ⅻ", "Ａｄａ", "ＡＤＡ"]
    {
        let name = UserName::parse(raw).expect("valid name");
        assert_eq!(name_key(&name), name.key(), "{raw}");
    }
    let (upper, lower) = (UserName::parse("ÉLODIE").expect("valid"), UserName::parse("élodie").expect("valid"));
    assert_eq!(name_key(&upper), name_key(&lower));
}
