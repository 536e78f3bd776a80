//! The socket client in headless Chromium against a real natter server,
//! whose URL `cargo xtask test` passes in `NATTER_TEST_WS` at build time.

#![cfg(target_arch = "wasm32")]

mod common;

use common::*;
use leptos::prelude::*;
use natter_frontend::chat_state::{Entry, Line, SendStatus};
use natter_frontend::client::{Client, Phase, Status};
use natter_shared::{RoomName, UserName};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn server() -> String {
    match option_env!("NATTER_TEST_WS") {
        Some(url) => url.to_owned(),
        None => panic!("NATTER_TEST_WS is not set: run these tests with `cargo xtask test`, which starts a server"),
    }
}

fn room(s: &str) -> RoomName {
    RoomName::parse(s).expect("valid room")
}

fn name(s: &str) -> UserName {
    UserName::parse(s).expect("valid name")
}

fn texts(client: Client) -> Vec<String> {
    client.chat.with_untracked(|c| {
        c.lines()
            .into_iter()
            .filter_map(|l| match l {
                Line::Event(Entry::Message { text, .. }, _) => Some(text),
                _ => None,
            })
            .collect()
    })
}

/// A unique room per test run, so reruns against one server do not mix.
fn fresh_room(label: &str) -> RoomName {
    room(&format!("{label}-{}", (js_sys::Math::random() * 1e9) as u64))
}

#[wasm_bindgen_test]
async fn two_clients_join_chat_and_acknowledge() {
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let owner = Owner::new();
    owner.set();
    let room = fresh_room("client");
    let ada = Client::new(server());
    let bob = Client::new(server());
    ada.join(name("Ada"), room.clone());
    until("Ada connected", || ada.status.get_untracked() == Status::Connected).await;
    assert_eq!(ada.phase.get_untracked(), Phase::Chat);
    bob.join(name("Bob"), room.clone());
    until("Bob connected", || bob.status.get_untracked() == Status::Connected).await;
    until("Ada sees two members", || ada.chat.with_untracked(|c| c.member_count()) == 2).await;

    ada.send("hello from the browser").expect("valid");
    until("Bob receives it", || texts(bob).contains(&"hello from the browser".to_owned())).await;
    until("Ada's copy is acknowledged", || {
        ada.chat.with_untracked(|c| c.pending().is_empty()) && texts(ada) == ["hello from the browser"]
    })
    .await;
    assert!(ada.send("   ").is_err(), "blank messages are refused before sending");

    bob.leave();
    until("Ada sees Bob leave", || ada.chat.with_untracked(|c| c.member_count()) == 1).await;
    ada.leave();
    assert_eq!(ada.status.get_untracked(), Status::Idle);
}

#[wasm_bindgen_test]
async fn a_taken_name_returns_to_the_join_view_with_the_reason() {
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let owner = Owner::new();
    owner.set();
    let room = fresh_room("taken");
    let first = Client::new(server());
    first.join(name("Ada"), room.clone());
    until("first connected", || first.status.get_untracked() == Status::Connected).await;
    // Another browser: it does not hold the first one's resume token.
    let session = web_sys::window().and_then(|w| w.session_storage().ok().flatten()).expect("sessionStorage");
    session.clear().expect("clear sessionStorage");
    let second = Client::new(server());
    second.join(name("ada"), room.clone());
    until("refused", || matches!(second.phase.get_untracked(), Phase::Join(Some(_)))).await;
    let Phase::Join(Some(problem)) = second.phase.get_untracked() else { unreachable!() };
    assert!(problem.message.contains("already called"), "{}", problem.message);
    assert_eq!(second.status.get_untracked(), Status::Idle, "no reconnect loop after a refusal");
    first.leave();
}

#[wasm_bindgen_test]
async fn an_unreachable_server_schedules_a_reconnect_and_keeps_the_outbox() {
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let owner = Owner::new();
    owner.set();
    // Port 9 (discard) on loopback: nothing listens, the connection fails fast.
    let client = Client::new("ws://127.0.0.1:9/ws".to_owned());
    let room = fresh_room("offline");
    client.join(name("Offline"), room.clone());
    until("reconnecting", || matches!(client.status.get_untracked(), Status::Reconnecting { .. })).await;
    client.send("written offline").expect("valid");
    assert_eq!(client.chat.with_untracked(|c| c.pending()[0].status.clone()), SendStatus::Waiting);
    // The outbox is saved for the next page load.
    sleep(50).await;
    let saved = natter_frontend::storage::load_outbox(room.as_str(), "offline");
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].text, "written offline");
    client.leave();
    natter_frontend::storage::save_outbox(room.as_str(), "offline", &[]);
}
