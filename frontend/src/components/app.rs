//! The root: creates the client, picks the join or chat view, keeps the
//! document title in step with the unread count.

use leptos::either::Either;
use leptos::prelude::*;
use natter_shared::{RoomName, UserName};

use crate::client::{Client, Phase, server_url};
use crate::components::chat_view::ChatView;
use crate::components::header::status_text;
use crate::components::join::JoinForm;
use crate::location::room_from_url;
use crate::storage;

/// The whole page.
#[component]
pub fn App() -> impl IntoView {
    let client = Client::new(server_url());
    client.watch_page();

    let (saved_name, saved_room) = storage::last_join();
    let location = window().location();
    let url_room = room_from_url(&location.hash().unwrap_or_default(), &location.search().unwrap_or_default());
    let initial_room =
        url_room.map(|r| r.to_string()).or(saved_room).unwrap_or_else(|| RoomName::default().to_string());
    let initial_name = saved_name.unwrap_or_default();

    // A reload of a tab that was in a chat rejoins at once (same room, unless the URL names another).
    if let Some((name, room)) = storage::active() {
        let room = if room == initial_room { room } else { initial_room.clone() };
        if let (Ok(name), Ok(room)) = (UserName::parse(&name), RoomName::parse(&room)) {
            client.join(name, room);
        }
    }

    Effect::new(move |_| {
        let title = client.chat.with(|c| c.title());
        let in_chat = client.phase.with(|p| *p == Phase::Chat);
        document().set_title(if in_chat { &title } else { "Natter" });
    });

    let problem = Signal::derive(move || match client.phase.get() {
        Phase::Join(problem) => problem,
        Phase::Chat => None,
    });
    let in_chat = Memo::new(move |_| client.phase.with(|p| *p == Phase::Chat));
    let on_join = Callback::new(move |(name, room): (UserName, RoomName)| client.join(name, room));

    view! {
        <main class="app">
            {move || {
                if in_chat.get() {
                    Either::Left(view! { <ChatView client=client /> })
                } else {
                    Either::Right(view! {
                        <JoinForm
                            initial_name=initial_name.clone()
                            initial_room=initial_room.clone()
                            problem=problem
                            busy=Signal::derive(move || client.target.with(Option::is_some))
                            note=Signal::derive(move || {
                                client.target.with(Option::is_some).then(|| status_text(&client.status.get(), client.now.get()))
                            })
                            on_join=on_join
                        />
                    })
                }
            }}
        </main>
    }
}
